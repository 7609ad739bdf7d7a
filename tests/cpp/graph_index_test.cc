#include "onnxquant/graph_index.h"

#include <gtest/gtest.h>

#include <set>

#include "graph_builder.h"
#include "onnxquant/error.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

// x -> Conv(W) -> a -> Relu -> b;  Add(a, b) -> c;  Mul(b, b) -> d.
pb::ModelProto Diamond() {
  GraphBuilder g;
  g.Input("x", {1, 1, 2, 2});
  g.Output("c", {1, 1, 2, 2}).Output("d", {1, 1, 2, 2});
  g.Initializer("W", {1, 1, 1, 1}, {2.f});
  g.Node("Conv", {"x", "W"}, {"a"}, "conv");
  g.Node("Relu", {"a"}, {"b"}, "relu");
  g.Node("Add", {"a", "b"}, {"c"}, "add");
  g.Node("Mul", {"b", "b"}, {"d"}, "mul");
  return g.Build();
}

// A branch body: one Identity reading `outer` (from the enclosing scope)
// and writing `out`.
pb::GraphProto Branch(const std::string& outer, const std::string& out) {
  pb::GraphProto body;
  body.set_name("body_" + out);
  auto* n = body.add_node();
  n->set_op_type("Identity");
  n->set_name("id_" + out);
  n->add_input(outer);
  n->add_output(out);
  body.add_output()->set_name(out);
  return body;
}

TEST(GraphIndex, Producers) {
  const pb::ModelProto m = Diamond();
  GraphIndex index(m.graph());
  EXPECT_EQ(index.Producer("a"), 0);
  EXPECT_EQ(index.Producer("b"), 1);
  EXPECT_EQ(index.Producer("c"), 2);
  EXPECT_EQ(index.Producer("d"), 3);
  EXPECT_EQ(index.Producer("x"), -1);  // graph input
  EXPECT_EQ(index.Producer("W"), -1);  // initializer
  EXPECT_EQ(index.Producer("nope"), -1);
}

TEST(GraphIndex, ConsumersInNodeOrderEachNodeOnce) {
  const pb::ModelProto m = Diamond();
  GraphIndex index(m.graph());
  EXPECT_EQ(index.Consumers("x"), (std::vector<int>{0}));
  EXPECT_EQ(index.Consumers("W"), (std::vector<int>{0}));
  EXPECT_EQ(index.Consumers("a"), (std::vector<int>{1, 2}));
  // Mul reads b twice but is listed once.
  EXPECT_EQ(index.Consumers("b"), (std::vector<int>{2, 3}));
  EXPECT_TRUE(index.Consumers("c").empty());
  EXPECT_TRUE(index.Consumers("nope").empty());
}

TEST(GraphIndex, InputOutputAndInitializerFlags) {
  const pb::ModelProto m = Diamond();
  GraphIndex index(m.graph());
  EXPECT_TRUE(index.IsGraphInput("x"));
  EXPECT_FALSE(index.IsGraphInput("a"));
  EXPECT_FALSE(index.IsGraphInput("W"));
  EXPECT_TRUE(index.IsGraphOutput("c"));
  EXPECT_TRUE(index.IsGraphOutput("d"));
  EXPECT_FALSE(index.IsGraphOutput("b"));
  ASSERT_NE(index.Initializer("W"), nullptr);
  EXPECT_EQ(index.Initializer("W")->name(), "W");
  EXPECT_EQ(index.Initializer("x"), nullptr);
  EXPECT_FALSE(index.ReadBySubgraph("a"));
  EXPECT_FALSE(GraphIndex::HasSubgraph(m.graph().node(0)));
}

TEST(GraphIndex, OptionalEmptyInputsAreNoTensor) {
  GraphBuilder g;
  g.Input("x", {4}).Output("y", {4});
  g.Initializer("hi", {}, {6.f});
  g.Node("Clip", {"x", "", "hi"}, {"y"}, "clip");
  const pb::ModelProto m = g.Build();
  GraphIndex index(m.graph());
  EXPECT_TRUE(index.Consumers("").empty());
  EXPECT_EQ(index.Consumers("hi"), (std::vector<int>{0}));
}

TEST(GraphIndex, SubgraphOuterScopeReadsCount) {
  // x -> Relu -> a; x -> Neg -> b;  If(cond) then: Identity(a) else:
  // a nested If whose branch reads b.  The If's outputs feed nothing else.
  GraphBuilder g;
  g.Input("x", {2}).Input("cond", {}, pb::TensorProto::BOOL);
  g.Output("r", {2});
  g.Node("Relu", {"x"}, {"a"}, "relu");
  g.Node("Neg", {"x"}, {"b"}, "neg");
  pb::GraphProto else_body;
  else_body.set_name("else");
  {
    auto* inner = else_body.add_node();
    inner->set_op_type("If");
    inner->set_name("inner_if");
    inner->add_input("cond");
    inner->add_output("e_out");
    GraphBuilder::GraphAttr(inner, "then_branch", Branch("b", "inner_t"));
    GraphBuilder::GraphAttr(inner, "else_branch", Branch("x", "inner_e"));
    else_body.add_output()->set_name("e_out");
  }
  pb::NodeProto* iff = g.Node("If", {"cond"}, {"r"}, "if");
  GraphBuilder::GraphAttr(iff, "then_branch", Branch("a", "t_out"));
  GraphBuilder::GraphAttr(iff, "else_branch", else_body);
  const pb::ModelProto m = g.Build();
  GraphIndex index(m.graph());

  EXPECT_TRUE(GraphIndex::HasSubgraph(m.graph().node(2)));
  EXPECT_EQ(index.Consumers("a"), (std::vector<int>{2}));
  EXPECT_TRUE(index.ReadBySubgraph("a"));
  // Read by the nested If's branch: counted for the outer If.
  EXPECT_EQ(index.Consumers("b"), (std::vector<int>{2}));
  EXPECT_TRUE(index.ReadBySubgraph("b"));
  // cond is a direct input of the If and also read inside: listed once.
  EXPECT_EQ(index.Consumers("cond"), (std::vector<int>{2}));
  EXPECT_EQ(index.Consumers("x"), (std::vector<int>{0, 1, 2}));
  // Names the bodies define themselves are not outer-scope reads.
  EXPECT_FALSE(index.ReadBySubgraph("t_out"));
  EXPECT_FALSE(index.ReadBySubgraph("e_out"));
  EXPECT_FALSE(index.ReadBySubgraph("inner_t"));
  EXPECT_TRUE(index.Consumers("t_out").empty());
  EXPECT_EQ(index.Producer("t_out"), -1);
}

TEST(GraphIndex, BodyInputsShadowNothing) {
  // A Loop body defines its inputs (i, cond_in, v) and reads outer `w`.
  GraphBuilder g;
  g.Input("x", {2}).Input("n", {}, pb::TensorProto::INT64);
  g.Output("y", {2});
  g.Node("Relu", {"x"}, {"w"}, "relu");
  pb::GraphProto body;
  body.set_name("loop_body");
  body.add_input()->set_name("i");
  body.add_input()->set_name("cond_in");
  body.add_input()->set_name("v");
  auto* add = body.add_node();
  add->set_op_type("Add");
  add->add_input("v");
  add->add_input("w");
  add->add_output("v_next");
  auto* id = body.add_node();
  id->set_op_type("Identity");
  id->add_input("cond_in");
  id->add_output("cond_out");
  body.add_output()->set_name("cond_out");
  body.add_output()->set_name("v_next");
  pb::NodeProto* loop = g.Node("Loop", {"n", "", "x"}, {"y"}, "loop");
  GraphBuilder::GraphAttr(loop, "body", body);
  const pb::ModelProto m = g.Build();
  GraphIndex index(m.graph());
  EXPECT_TRUE(index.ReadBySubgraph("w"));
  EXPECT_EQ(index.Consumers("w"), (std::vector<int>{1}));
  EXPECT_FALSE(index.ReadBySubgraph("v"));
  EXPECT_FALSE(index.ReadBySubgraph("i"));
  EXPECT_FALSE(index.ReadBySubgraph("cond_in"));
  EXPECT_TRUE(index.Consumers("v").empty());
}

TEST(GraphIndex, NodeNamedFindsTheFirstOfAName) {
  GraphBuilder g;
  g.Input("x", {1}).Output("z", {1});
  g.Node("Relu", {"x"}, {"y"}, "twice");
  g.Node("Neg", {"y"}, {"z"}, "twice");
  const pb::ModelProto m = g.Build();
  GraphIndex index(m.graph());
  EXPECT_EQ(index.NodeNamed("twice"), 0);
  EXPECT_EQ(index.NodeNamed("nope"), -1);
}

// Producers and consumers of every tensor name in `names`, as a rebuilt
// snapshot index of the same graph sees them.
void ExpectSameAsRebuilt(const GraphIndex& edited, const pb::GraphProto& g,
                         const std::vector<std::string>& names) {
  GraphIndex fresh(g);
  for (const auto& name : names) {
    EXPECT_EQ(edited.Producer(name), fresh.Producer(name)) << name;
    EXPECT_EQ(edited.Consumers(name), fresh.Consumers(name)) << name;
    EXPECT_EQ(edited.Initializer(name) == nullptr,
              fresh.Initializer(name) == nullptr)
        << name;
  }
}

TEST(GraphIndex, EditsKeepTheIndexCurrent) {
  pb::ModelProto m = Diamond();
  pb::GraphProto* g = m.mutable_graph();
  GraphIndex index(g);
  // Mul(b, b): one slot moves to a, b is still read by it.
  index.SetInput(3, 0, "a");
  EXPECT_EQ(g->node(3).input(0), "a");
  EXPECT_EQ(index.Consumers("a"), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(index.Consumers("b"), (std::vector<int>{2, 3}));
  // The other slot too: Mul no longer reads b.
  index.ReplaceInput(3, "b", "x");
  EXPECT_EQ(index.Consumers("b"), (std::vector<int>{2}));
  EXPECT_EQ(index.Consumers("x"), (std::vector<int>{0, 3}));
  // Conv writes a new name: a has no producer any more.
  index.SetOutput(0, 0, "a_float");
  EXPECT_EQ(index.Producer("a_float"), 0);
  EXPECT_EQ(index.Producer("a"), -1);
  const pb::TensorProto* w2 =
      index.AddInitializer(FloatTensor("W2", {1, 1, 1, 1}, {3.f}));
  EXPECT_EQ(index.Initializer("W2"), w2);
  EXPECT_EQ(g->initializer_size(), 2);
  index.SetInput(0, 1, "W2");
  EXPECT_TRUE(index.Consumers("W").empty());
  EXPECT_EQ(index.Consumers("W2"), (std::vector<int>{0}));
  ExpectSameAsRebuilt(index, *g,
                      {"x", "W", "W2", "a", "a_float", "b", "c", "d"});
}

TEST(GraphIndex, ABodyReadKeepsANodeAConsumer) {
  // If(cond) reads x directly and in its then-branch: renaming the direct
  // input leaves it a consumer of x.
  GraphBuilder g;
  g.Input("x", {2}).Input("cond", {}, pb::TensorProto::BOOL);
  g.Output("r", {2});
  pb::NodeProto* iff = g.Node("If", {"cond"}, {"r"}, "if");
  iff->add_input("x");  // not a real If signature; enough for the index
  GraphBuilder::GraphAttr(iff, "then_branch", Branch("x", "t_out"));
  GraphBuilder::GraphAttr(iff, "else_branch", Branch("cond", "e_out"));
  pb::ModelProto m = g.Build();
  GraphIndex index(m.mutable_graph());
  index.SetInput(0, 1, "");
  EXPECT_EQ(index.Consumers("x"), (std::vector<int>{0}));
  ExpectSameAsRebuilt(index, m.graph(), {"x", "cond", "r"});
}

TEST(GraphIndex, EditsOnASnapshotAreAnInternalError) {
  const pb::ModelProto m = Diamond();
  GraphIndex index(m.graph());
  try {
    index.SetInput(1, 0, "x");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
  }
  EXPECT_EQ(m.graph().node(1).input(0), "a");
}

TEST(NameAllocator, FreeNameIsReturnedAsIs) {
  const pb::ModelProto m = Diamond();
  NameAllocator names(m.graph());
  EXPECT_EQ(names.Make("fresh"), "fresh");
  EXPECT_EQ(names.Make("fresh"), "fresh_1");  // now taken
  EXPECT_EQ(names.Make("fresh"), "fresh_2");
}

TEST(NameAllocator, AvoidsEveryKindOfNameInTheGraph) {
  GraphBuilder g;
  g.Input("x", {2}).Output("y", {2});
  g.Initializer("W", {2}, {1.f, 2.f});
  g.Node("Add", {"x", "W"}, {"x_1"}, "add");
  g.Node("Relu", {"x_1"}, {"y"}, "relu");
  g.model().mutable_graph()->add_value_info()->set_name("vi");
  const pb::ModelProto m = g.Build();
  NameAllocator names(m.graph());
  EXPECT_EQ(names.Make("x"), "x_2");  // x and x_1 are both taken
  EXPECT_EQ(names.Make("y"), "y_1");
  EXPECT_EQ(names.Make("W"), "W_1");
  EXPECT_EQ(names.Make("add"), "add_1");  // node names too
  EXPECT_EQ(names.Make("vi"), "vi_1");
  EXPECT_EQ(names.Make("x_1"), "x_1_1");
}

TEST(NameAllocator, AvoidsNamesInsideSubgraphs) {
  // A name a body defines must not be reused in the outer graph: ONNX
  // forbids an outer name that a subgraph also defines.
  GraphBuilder g;
  g.Input("cond", {}, pb::TensorProto::BOOL).Input("x", {2});
  g.Output("r", {2});
  pb::NodeProto* iff = g.Node("If", {"cond"}, {"r"}, "if");
  GraphBuilder::GraphAttr(iff, "then_branch", Branch("x", "t_out"));
  GraphBuilder::GraphAttr(iff, "else_branch", Branch("x", "e_out"));
  const pb::ModelProto m = g.Build();
  NameAllocator names(m.graph());
  EXPECT_EQ(names.Make("t_out"), "t_out_1");
  EXPECT_EQ(names.Make("e_out"), "e_out_1");
  EXPECT_EQ(names.Make("id_t_out"), "id_t_out_1");
}

TEST(NameAllocator, RepeatedBasesCountOnSkippingTakenNames) {
  GraphBuilder g;
  g.Input("w_1", {1}).Output("w_3", {1});
  g.Node("Neg", {"w_1"}, {"w_3"}, "neg");
  const pb::ModelProto m = g.Build();
  NameAllocator names(m.graph());
  std::vector<std::string> got;
  for (int k = 0; k < 5; ++k) got.push_back(names.Make("w"));
  EXPECT_EQ(got, (std::vector<std::string>{"w", "w_2", "w_4", "w_5", "w_6"}));
  EXPECT_EQ(names.Make("w_2"), "w_2_1");
  EXPECT_EQ(names.Make("w_7"), "w_7");
  EXPECT_EQ(names.Make("w"), "w_8");
}

TEST(NameAllocator, ManyNamesAreDistinct) {
  const pb::ModelProto m = Diamond();
  NameAllocator names(m.graph());
  std::set<std::string> seen = {"x", "W", "a", "b", "c", "d"};
  for (int k = 0; k < 50; ++k) {
    for (const char* base : {"a", "a_1", "q"}) {
      EXPECT_TRUE(seen.insert(names.Make(base)).second);
    }
  }
}

}  // namespace
}  // namespace onnxquant
