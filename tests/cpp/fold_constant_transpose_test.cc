// Tests of fold_constant_transpose.
#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/passes/passes.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::GraphBuilder;
using testing::OpTypes;

// x [2, 3] -> MatMul(x, Transpose(W [4, 3])) -> y [2, 4].
GraphBuilder LinearWithTransposedWeight() {
  GraphBuilder b(13);
  b.Input("x", {2, 3}).Output("y", {2, 4});
  b.Initializer("W", {4, 3}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  b.Node("Transpose", {"W"}, {"Wt"}, "t");
  b.Node("MatMul", {"x", "Wt"}, {"y"}, "mm");
  return b;
}

TEST(FoldConstantTranspose, TheTransposedValuesReplaceTheNode) {
  pb::ModelProto m = LinearWithTransposedWeight().Build();
  ASSERT_TRUE(passes::FoldConstantTranspose(m));
  EXPECT_EQ(OpTypes(m), (std::vector<std::string>{"MatMul"}));
  const pb::TensorProto* wt = FindInitializer(m, "Wt");
  ASSERT_NE(wt, nullptr);
  EXPECT_EQ(Dims(*wt), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(ToFloats(*wt), (std::vector<float>{0, 3, 6, 9, 1, 4, 7, 10, 2, 5,
                                               8, 11}));
  EXPECT_EQ(FindInitializer(m, "W"), nullptr);  // nothing else read it
  EXPECT_FALSE(passes::FoldConstantTranspose(m));
}

TEST(FoldConstantTranspose, FollowsPermOfAnyRank) {
  GraphBuilder b(13);
  b.Input("x", {1}).Output("y", {3, 2, 2});
  std::vector<float> v(12);
  for (int i = 0; i < 12; ++i) v[i] = static_cast<float>(i);
  b.Initializer("W", {2, 2, 3}, v);  // W[i][j][k] = 6i + 3j + k
  pb::AttributeProto* perm =
      b.Node("Transpose", {"W"}, {"y0"}, "t")->add_attribute();
  perm->set_name("perm");
  perm->set_type(pb::AttributeProto::INTS);
  for (int64_t p : {2, 0, 1}) perm->add_ints(p);
  b.Node("Add", {"y0", "x"}, {"y"}, "add");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldConstantTranspose(m));
  const pb::TensorProto* t = FindInitializer(m, "y0");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Dims(*t), (std::vector<int64_t>{3, 2, 2}));
  const std::vector<float> got = ToFloats(*t);
  for (int k = 0; k < 3; ++k) {  // out[k][i][j] = W[i][j][k]
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        EXPECT_EQ(got[(k * 2 + i) * 2 + j], 6 * i + 3 * j + k);
      }
    }
  }
}

TEST(FoldConstantTranspose, LeavesOverridableSharedAndOutputTensorsAlone) {
  GraphBuilder input = LinearWithTransposedWeight();
  input.Input("W", {4, 3});
  pb::ModelProto m = input.Build();
  EXPECT_FALSE(passes::FoldConstantTranspose(m));

  GraphBuilder output = LinearWithTransposedWeight();
  output.Output("Wt", {3, 4});
  pb::ModelProto o = output.Build();
  EXPECT_FALSE(passes::FoldConstantTranspose(o));

  GraphBuilder shared = LinearWithTransposedWeight();
  shared.Output("z", {4, 3});
  shared.Node("Neg", {"W"}, {"z"}, "neg");
  pb::ModelProto s = shared.Build();
  ASSERT_TRUE(passes::FoldConstantTranspose(s));
  EXPECT_NE(FindInitializer(s, "W"), nullptr);  // still read by the Neg
}

TEST(FoldConstantTranspose, IsRegisteredByName) {
  EXPECT_EQ(FindPass("fold_constant_transpose").apply,
            &passes::FoldConstantTranspose);
}

}  // namespace
}  // namespace onnxquant
