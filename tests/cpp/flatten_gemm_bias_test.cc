// Tests of flatten_gemm_bias.
#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/passes/passes.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::GraphBuilder;

// x [3, 4] -> Gemm(x, B [4, 2], C) -> y [3, 2].
GraphBuilder GemmWithBias(std::vector<int64_t> bias_dims) {
  GraphBuilder b(13);
  b.Input("x", {3, 4}).Output("y", {3, 2});
  b.Initializer("B", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  b.Initializer("C", bias_dims,
                std::vector<float>(NumElements(bias_dims), 0.5f));
  b.Node("Gemm", {"x", "B", "C"}, {"y"}, "gemm");
  return b;
}

TEST(FlattenGemmBias, ReshapesARowBiasInPlace) {
  GraphBuilder b = GemmWithBias({1, 2});
  testing::AddValueInfo(&b.model(), "C");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FlattenGemmBias(m));
  const pb::TensorProto* c = FindInitializer(m, "C");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(Dims(*c), (std::vector<int64_t>{2}));
  EXPECT_EQ(ToFloats(*c), (std::vector<float>{0.5f, 0.5f}));
  EXPECT_FALSE(testing::HasValueInfo(m, "C"));  // its shape changed
  EXPECT_EQ(m.graph().node(0).input(2), "C");
  EXPECT_FALSE(passes::FlattenGemmBias(m));  // a fixed point
}

TEST(FlattenGemmBias, ASharedBiasIsCopied) {
  GraphBuilder b = GemmWithBias({1, 2});
  b.Output("z", {1, 2});
  b.Node("Relu", {"C"}, {"z"}, "relu");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FlattenGemmBias(m));
  EXPECT_EQ(Dims(*FindInitializer(m, "C")), (std::vector<int64_t>{1, 2}));
  const std::string& copy = m.graph().node(0).input(2);
  ASSERT_NE(copy, "C");
  ASSERT_NE(FindInitializer(m, copy), nullptr);
  EXPECT_EQ(Dims(*FindInitializer(m, copy)), (std::vector<int64_t>{2}));
}

TEST(FlattenGemmBias, OtherBiasesStay) {
  for (const auto& dims : std::vector<std::vector<int64_t>>{{2}, {3, 2}, {1}}) {
    pb::ModelProto m = GemmWithBias(dims).Build();
    EXPECT_FALSE(passes::FlattenGemmBias(m));
  }
  GraphBuilder overridable = GemmWithBias({1, 2});
  overridable.Input("C", {1, 2});
  pb::ModelProto m = overridable.Build();
  EXPECT_FALSE(passes::FlattenGemmBias(m));
}

TEST(FlattenGemmBias, IsRegisteredByName) {
  EXPECT_EQ(FindPass("flatten_gemm_bias").apply, &passes::FlattenGemmBias);
}

}  // namespace
}  // namespace onnxquant
