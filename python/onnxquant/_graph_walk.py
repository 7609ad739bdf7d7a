"""The one walk over a graph and the bodies of its nodes (If, Loop, Scan, or
any node with a graph attribute), nested bodies included."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def node_bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes (a single graph or a list of
    them), in attribute order."""
    bodies: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.HasField("g"):
            bodies.append(attr.g)
        if attr.graphs:
            bodies.extend(attr.graphs)
    return bodies


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph``, then every body under it, depth first in node order (a
    body before the bodies of the nodes that follow its node). Iterative:
    deep nesting does not reach Python's recursion limit."""
    stack = [graph]
    while stack:
        current = stack.pop()
        yield current
        # Most nodes have no attribute: the cheap test first.
        stack.extend(reversed([body for node in current.node if node.attribute
                               for body in node_bodies(node)]))


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of ``graph`` and of every body under it, graph by graph in
    the order of :func:`all_graphs`."""
    for current in all_graphs(graph):
        yield from current.node
