#include "onnxquant/graph_edit.h"

#include <gtest/gtest.h>

#include "graph_builder.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::GraphBuilder;
using testing::OpTypes;
using Strings = std::vector<std::string>;

TEST(GraphEdit, EraseIfKeepsOrder) {
  pb::GraphProto g;
  for (const char* n : {"a", "b", "c", "d", "e"}) g.add_input()->set_name(n);
  const int removed = EraseIf(g.mutable_input(), [](const auto& v) {
    return v.name() == "b" || v.name() == "d";
  });
  EXPECT_EQ(removed, 2);
  Strings names;
  for (const auto& v : g.input()) names.push_back(v.name());
  EXPECT_EQ(names, (Strings{"a", "c", "e"}));
}

TEST(GraphEdit, RemoveNodesKeepsOrder) {
  GraphBuilder b;
  b.Node("A", {}, {"a"});
  b.Node("B", {}, {"b"});
  b.Node("C", {}, {"c"});
  b.Node("D", {}, {"d"});
  RemoveNodes({2, 0, 2}, b.model().mutable_graph());
  EXPECT_EQ(OpTypes(b.model()), (Strings{"B", "D"}));
}

TEST(GraphEdit, RemoveUnusedInitializersOnlyTouchesCandidates) {
  GraphBuilder b;
  b.Input("x", {1}).Input("listed", {1}).Output("y", {1}).Output("out", {1});
  b.Initializer("used", {1}, {1})
      .Initializer("unused", {1}, {1})
      .Initializer("not_candidate", {1}, {1})
      .Initializer("listed", {1}, {1})
      .Initializer("out", {1}, {1});
  b.Node("Add", {"x", "used"}, {"y"});
  testing::AddValueInfo(&b.model(), "unused");
  pb::GraphProto* g = b.model().mutable_graph();
  EXPECT_TRUE(RemoveUnusedInitializers(
      {"used", "unused", "listed", "out", "missing"}, g));
  EXPECT_EQ(FindInitializer(b.model(), "unused"), nullptr);
  EXPECT_NE(FindInitializer(b.model(), "used"), nullptr);
  EXPECT_NE(FindInitializer(b.model(), "not_candidate"), nullptr);
  EXPECT_NE(FindInitializer(b.model(), "listed"), nullptr);  // overridable
  EXPECT_NE(FindInitializer(b.model(), "out"), nullptr);
  EXPECT_FALSE(testing::HasValueInfo(b.model(), "unused"));
  EXPECT_FALSE(RemoveUnusedInitializers({"unused", "used"}, g));
}

TEST(GraphEdit, SetFloatAttributeReplacesOrAdds) {
  pb::NodeProto n;
  SetFloatAttribute("alpha", 2.0f, &n);
  SetFloatAttribute("alpha", 3.0f, &n);
  ASSERT_EQ(n.attribute_size(), 1);
  EXPECT_FLOAT_EQ(FloatAttribute(n, "alpha", 0.0f), 3.0f);
  EXPECT_EQ(IntAttribute(n, "missing", 7), 7);
}

TEST(GraphEdit, BypassDefersNodesSharingATensor) {
  // Two pass-through nodes in a row: the second waits for the next call.
  GraphBuilder b;
  b.Input("x", {1}).Output("y", {1});
  b.Node("Relu", {"x"}, {"a"});
  b.Node("Identity", {"a"}, {"b"});
  b.Node("Identity", {"b"}, {"c"});
  b.Node("Neg", {"c"}, {"y"});
  pb::GraphProto* g = b.model().mutable_graph();
  EXPECT_TRUE(BypassNodes({1, 2}, g));
  EXPECT_EQ(OpTypes(b.model()), (Strings{"Relu", "Identity", "Neg"}));
  EXPECT_EQ(g->node(1).input(0), "a");
  EXPECT_TRUE(BypassNodes({1}, g));
  EXPECT_EQ(OpTypes(b.model()), (Strings{"Relu", "Neg"}));
  EXPECT_EQ(g->node(1).input(0), "a");
}

TEST(GraphEdit, BypassRemovesNodesSharingOnlyTheirInputTogether) {
  // Three Identity nodes read one initializer (what torch's exporter writes
  // for shared weights): all go in one call, each reader reads W.
  GraphBuilder b;
  b.Input("x", {2}).Output("y", {2});
  b.Initializer("W", {2}, {1.f, 2.f});
  b.Node("Identity", {"W"}, {"w0"});
  b.Node("Identity", {"W"}, {"w1"});
  b.Node("Identity", {"W"}, {"w2"});
  b.Node("Add", {"x", "w0"}, {"a"});
  b.Node("Mul", {"a", "w1"}, {"m"});
  b.Node("Sub", {"m", "w2"}, {"y"});
  pb::GraphProto* g = b.model().mutable_graph();
  EXPECT_TRUE(BypassNodes({0, 1, 2}, g));
  EXPECT_EQ(OpTypes(b.model()), (Strings{"Add", "Mul", "Sub"}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(g->node(i).input(1), "W");
  EXPECT_FALSE(BypassNodes({}, g));
}

TEST(GraphEdit, BypassDefersARenameOfASharedInput) {
  // Identity(a) -> y (a graph output) renames a's producer; the other
  // Identity reading a must wait, then reads y.
  GraphBuilder b;
  b.Input("x", {1}).Output("y", {1}).Output("z", {1});
  b.Node("Relu", {"x"}, {"a"});
  b.Node("Identity", {"a"}, {"y"});
  b.Node("Identity", {"a"}, {"b"});
  b.Node("Neg", {"b"}, {"z"});
  pb::GraphProto* g = b.model().mutable_graph();
  EXPECT_TRUE(BypassNodes({1, 2}, g));
  EXPECT_EQ(OpTypes(b.model()), (Strings{"Relu", "Identity", "Neg"}));
  EXPECT_EQ(g->node(0).output(0), "y");
  EXPECT_EQ(g->node(1).input(0), "y");
  EXPECT_TRUE(BypassNodes({1}, g));
  EXPECT_EQ(OpTypes(b.model()), (Strings{"Relu", "Neg"}));
  EXPECT_EQ(g->node(1).input(0), "y");
}

TEST(GraphEdit, BypassTakesEveryOtherLinkOfAChain) {
  // x -> Relu -> t0 -> Identity -> t1 -> ... -> t8 -> Neg -> y: each call
  // removes at least half of the Identity nodes left.
  GraphBuilder b;
  b.Input("x", {1}).Output("y", {1});
  b.Node("Relu", {"x"}, {"t0"});
  for (int k = 0; k < 8; ++k) {
    b.Node("Identity", {"t" + std::to_string(k)},
           {"t" + std::to_string(k + 1)});
  }
  b.Node("Neg", {"t8"}, {"y"});
  pb::GraphProto* g = b.model().mutable_graph();
  std::vector<int> left = {1, 2, 3, 4, 5, 6, 7, 8};
  int calls = 0;
  while (!left.empty()) {
    ASSERT_TRUE(BypassNodes(left, g));
    ++calls;
    const size_t before = left.size();
    left.clear();
    for (int i = 0; i < g->node_size(); ++i) {
      if (g->node(i).op_type() == "Identity") left.push_back(i);
    }
    EXPECT_LE(left.size(), before / 2);
  }
  EXPECT_LE(calls, 4);
  EXPECT_EQ(OpTypes(b.model()), (Strings{"Relu", "Neg"}));
  EXPECT_EQ(g->node(1).input(0), "t0");
}

TEST(GraphEdit, BypassKeepsANodeWithAUsedSecondOutput) {
  GraphBuilder b;
  b.Input("x", {1}).Output("y", {1}).Output("m", {1});
  b.Node("Dropout", {"x"}, {"y", "m"});
  EXPECT_FALSE(BypassNodes({0}, b.model().mutable_graph()));
}

}  // namespace
}  // namespace onnxquant
