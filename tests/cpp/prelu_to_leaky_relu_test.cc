// Tests of prelu_to_leaky_relu.
#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/passes/passes.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::GraphBuilder;
using testing::OpTypes;

GraphBuilder PreluWithSlope(std::vector<int64_t> dims,
                            std::vector<float> values) {
  GraphBuilder b(13);
  b.Input("x", {1, 3, 4, 4}).Output("y", {1, 3, 4, 4});
  b.Initializer("slope", dims, values);
  b.Node("PRelu", {"x", "slope"}, {"y"}, "prelu");
  return b;
}

TEST(PreluToLeakyRelu, OneSlopeBecomesAlpha) {
  for (std::vector<int64_t> dims : {std::vector<int64_t>{1},
                                    std::vector<int64_t>{}}) {
    pb::ModelProto m = PreluWithSlope(dims, {0.25f}).Build();
    ASSERT_TRUE(passes::PreluToLeakyRelu(m));
    EXPECT_EQ(OpTypes(m), (std::vector<std::string>{"LeakyRelu"}));
    const pb::NodeProto& n = m.graph().node(0);
    EXPECT_EQ(n.name(), "prelu");
    EXPECT_EQ(n.input_size(), 1);
    EXPECT_EQ(n.input(0), "x");
    EXPECT_EQ(n.output(0), "y");
    EXPECT_EQ(FloatAttribute(n, "alpha", 0.01f), 0.25f);
    EXPECT_EQ(FindInitializer(m, "slope"), nullptr);  // nothing reads it
    EXPECT_FALSE(passes::PreluToLeakyRelu(m));         // a fixed point
  }
}

TEST(PreluToLeakyRelu, PerChannelSlopesAndRank3SlopesStay) {
  pb::ModelProto per_channel =
      PreluWithSlope({3, 1, 1}, {0.1f, 0.2f, 0.3f}).Build();
  EXPECT_FALSE(passes::PreluToLeakyRelu(per_channel));
  // One value of rank 3 could broadcast a lower-rank input up: left alone.
  pb::ModelProto rank3 = PreluWithSlope({1, 1, 1}, {0.1f}).Build();
  EXPECT_FALSE(passes::PreluToLeakyRelu(rank3));
  EXPECT_EQ(OpTypes(rank3), (std::vector<std::string>{"PRelu"}));
}

TEST(PreluToLeakyRelu, ASlopeThatIsAnInputOrSharedIsHandled) {
  GraphBuilder b = PreluWithSlope({1}, {0.5f});
  b.Input("slope", {1});  // overridable at run time
  pb::ModelProto overridable = b.Build();
  EXPECT_FALSE(passes::PreluToLeakyRelu(overridable));

  GraphBuilder s = PreluWithSlope({1}, {0.5f});
  s.Output("z", {1});
  s.Node("Neg", {"slope"}, {"z"}, "neg");
  pb::ModelProto shared = s.Build();
  ASSERT_TRUE(passes::PreluToLeakyRelu(shared));
  EXPECT_NE(FindInitializer(shared, "slope"), nullptr);  // Neg still reads it
}

TEST(PreluToLeakyRelu, IsRegisteredByName) {
  EXPECT_EQ(FindPass("prelu_to_leaky_relu").apply, &passes::PreluToLeakyRelu);
}

}  // namespace
}  // namespace onnxquant
