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

TEST(GraphEdit, BypassKeepsANodeWithAUsedSecondOutput) {
  GraphBuilder b;
  b.Input("x", {1}).Output("y", {1}).Output("m", {1});
  b.Node("Dropout", {"x"}, {"y", "m"});
  EXPECT_FALSE(BypassNodes({0}, b.model().mutable_graph()));
}

}  // namespace
}  // namespace onnxquant
