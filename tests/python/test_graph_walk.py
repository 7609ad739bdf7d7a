"""The one walk over a graph and its bodies (_graph_walk): every body, nested
ones included, graph attributes of either kind, in depth-first node order."""

from __future__ import annotations

from onnx import TensorProto, helper

from onnxquant._graph_walk import all_graphs, all_nodes, node_bodies


def _body(name: str, nodes=()) -> object:
    out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1])
    return helper.make_graph([helper.make_node("Identity", ["x"], [f"{name}_y"],
                                               name=f"{name}_id"), *nodes], name, [], [out])


def _tree():
    """main: If 'if1' (then: a1, a body holding If 'if2' with bodies a2/b2;
    else: b1), then a node with a list of graphs (g1, g2), then a plain node.
    make_node sorts attributes by name: else_branch comes before then_branch."""
    inner = helper.make_node("If", ["c"], ["i2"], name="if2",
                             then_branch=_body("a2"), else_branch=_body("b2"))
    outer = helper.make_node("If", ["c"], ["i1"], name="if1",
                             then_branch=_body("a1", [inner]), else_branch=_body("b1"))
    listed = helper.make_node("Custom", ["x"], ["z"], name="listed", domain="test")
    listed.attribute.append(helper.make_attribute("bodies", [_body("g1"), _body("g2")]))
    plain = helper.make_node("Relu", ["x"], ["r"], name="relu")
    return helper.make_graph([outer, listed, plain], "main", [], [])


def test_every_graph_in_depth_first_order():
    assert [g.name for g in all_graphs(_tree())] == \
        ["main", "b1", "a1", "b2", "a2", "g1", "g2"]


def test_all_nodes_and_bodies():
    graph = _tree()
    names = [n.name for n in all_nodes(graph)]
    assert names == ["if1", "listed", "relu", "b1_id", "a1_id", "if2", "b2_id", "a2_id",
                     "g1_id", "g2_id"]
    assert [b.name for b in node_bodies(graph.node[0])] == ["b1", "a1"]
    assert [b.name for b in node_bodies(graph.node[1])] == ["g1", "g2"]
    assert node_bodies(graph.node[2]) == []
