#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/passes/passes.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::FindNode;
using testing::FindProducer;
using testing::GraphBuilder;
using testing::OpTypes;

using Strings = std::vector<std::string>;

void ExpectFloats(const std::vector<float>& actual,
                  const std::vector<float>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], 1e-6) << "at " << i;
  }
}

std::vector<float> Values(const pb::ModelProto& m, const std::string& name) {
  const pb::TensorProto* t = FindInitializer(m, name);
  EXPECT_NE(t, nullptr) << name;
  return t ? ToFloats(*t) : std::vector<float>{};
}

// BatchNormalization "bn" reading `x`, writing `y`, with parameters
// gamma, beta, mean, var under the names bn_{scale,b,mean,var}.
pb::NodeProto* AddBatchNorm(GraphBuilder& b, const std::string& x,
                            const std::string& y, std::vector<float> gamma,
                            std::vector<float> beta, std::vector<float> mean,
                            std::vector<float> var, float eps) {
  const int64_t c = static_cast<int64_t>(gamma.size());
  b.Initializer("bn_scale", {c}, gamma)
      .Initializer("bn_b", {c}, beta)
      .Initializer("bn_mean", {c}, mean)
      .Initializer("bn_var", {c}, var);
  auto* bn = b.Node("BatchNormalization",
                    {x, "bn_scale", "bn_b", "bn_mean", "bn_var"}, {y}, "bn");
  GraphBuilder::FloatAttr(bn, "epsilon", eps);
  return bn;
}

// x[1,2,3,3] -> 1x1 Conv (w = [[1,2],[3,4]], b = [0.5,-1]) -> c -> bn -> y.
// s = gamma / sqrt(var + eps) = [2, 0.5]; t = beta - mean * s = [0, -0.5].
GraphBuilder ConvBn() {
  GraphBuilder b(13);
  b.Input("x", {1, 2, 3, 3}).Output("y", {1, 2, 3, 3});
  b.Initializer("w", {2, 2, 1, 1}, {1, 2, 3, 4})
      .Initializer("cb", {2}, {0.5f, -1.0f});
  b.Node("Conv", {"x", "w", "cb"}, {"c"}, "conv");
  AddBatchNorm(b, "c", "y", {4, 0.5f}, {1, 0}, {0.5f, 1}, {3, 0}, 1.0f);
  return b;
}

TEST(FoldBatchNorm, FoldsConvWithHandComputedValues) {
  GraphBuilder b = ConvBn();
  testing::AddValueInfo(&b.model(), "c");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  EXPECT_EQ(OpTypes(m), (Strings{"Conv"}));
  const pb::NodeProto& conv = m.graph().node(0);
  EXPECT_EQ(conv.output(0), "y");  // the graph output keeps its name
  EXPECT_EQ(conv.input(1), "w");   // weights read only here: rewritten
  EXPECT_EQ(conv.input(2), "cb");
  ExpectFloats(Values(m, "w"), {2, 4, 1.5f, 2});
  // b' = (b - mean) * s + beta = [(0.5-0.5)*2+1, (-1-1)*0.5+0].
  ExpectFloats(Values(m, "cb"), {1, -1});
  EXPECT_EQ(m.graph().initializer_size(), 2);  // bn_* removed
  EXPECT_FALSE(testing::HasValueInfo(m, "c"));
  EXPECT_FALSE(passes::FoldBatchNorm(m));  // fixed point
}

TEST(FoldBatchNorm, CreatesAZeroBiasWhenConvHasNone) {
  GraphBuilder b(13);
  b.Input("x", {1, 2, 3, 3}).Output("y", {1, 2, 3, 3});
  b.Initializer("w", {2, 2, 1, 1}, {1, 2, 3, 4});
  b.Node("Conv", {"x", "w"}, {"c"}, "conv");
  AddBatchNorm(b, "c", "y", {4, 0.5f}, {1, 0}, {0.5f, 1}, {3, 0}, 1.0f);
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  const pb::NodeProto& conv = m.graph().node(0);
  ASSERT_EQ(conv.input_size(), 3);
  // b' = (0 - mean) * s + beta = [-0.5*2+1, -1*0.5+0].
  ExpectFloats(Values(m, conv.input(2)), {0, -0.5f});
}

TEST(FoldBatchNorm, FoldsConvTransposePerGroup) {
  // Weight [C_in=4, C_out/group=2, 1, 1], group 2: C_out = 4. Element
  // (ci, j) feeds output channel (ci / 2) * 2 + j.
  GraphBuilder b(13);
  b.Input("x", {1, 4, 2, 2}).Output("y", {1, 4, 2, 2});
  b.Initializer("w", {4, 2, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1});
  auto* ct = b.Node("ConvTranspose", {"x", "w"}, {"c"}, "convt");
  GraphBuilder::IntAttr(ct, "group", 2);
  AddBatchNorm(b, "c", "y", {1, 2, 3, 4}, {1, 1, 1, 1}, {1, 1, 1, 1},
               {0, 0, 0, 0}, 1.0f);
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  EXPECT_EQ(OpTypes(m), (Strings{"ConvTranspose"}));
  ExpectFloats(Values(m, "w"), {1, 2, 1, 2, 3, 4, 3, 4});
  ExpectFloats(Values(m, m.graph().node(0).input(2)), {0, -1, -2, -3});
}

TEST(FoldBatchNorm, FoldsGemmTransBOnRows) {
  // B [N=3, K=2] with transB = 1: row n is output channel n.
  GraphBuilder b(13);
  b.Input("x", {4, 2}).Output("y", {4, 3});
  b.Initializer("B", {3, 2}, {1, 1, 1, 1, 1, 1})
      .Initializer("C", {3}, {1, 2, 3});
  auto* g = b.Node("Gemm", {"x", "B", "C"}, {"g"}, "gemm");
  GraphBuilder::IntAttr(g, "transB", 1);
  AddBatchNorm(b, "g", "y", {1, 2, 3}, {0, 0, 1}, {0, 1, 0}, {0, 0, 0}, 1.0f);
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  EXPECT_EQ(OpTypes(m), (Strings{"Gemm"}));
  ExpectFloats(Values(m, "B"), {1, 1, 2, 2, 3, 3});
  // C' = (C - mean) * s + beta = [1, 2, 10].
  ExpectFloats(Values(m, "C"), {1, 2, 10});
}

TEST(FoldBatchNorm, FoldsGemmColumnsAndAbsorbsBeta) {
  // B [K=2, N=3] with transB = 0: column n is output channel n. A scalar C
  // with beta = 2 becomes a per-column C' with beta = 1.
  GraphBuilder b(13);
  b.Input("x", {4, 2}).Output("y", {4, 3});
  b.Initializer("B", {2, 3}, {1, 1, 1, 1, 1, 1}).Initializer("C", {}, {1});
  auto* g = b.Node("Gemm", {"x", "B", "C"}, {"g"}, "gemm");
  GraphBuilder::FloatAttr(g, "beta", 2.0f);
  AddBatchNorm(b, "g", "y", {1, 2, 3}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, 1.0f);
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  ExpectFloats(Values(m, "B"), {1, 2, 3, 1, 2, 3});
  ExpectFloats(Values(m, "C"), {2, 4, 6});
  EXPECT_FLOAT_EQ(FloatAttribute(m.graph().node(0), "beta", 0.0f), 1.0f);
}

TEST(FoldBatchNorm, SkipsGemmWithPerRowBias) {
  GraphBuilder b(13);
  b.Input("x", {3, 2}).Output("y", {3, 3});
  b.Initializer("B", {2, 3}, {1, 1, 1, 1, 1, 1})
      .Initializer("C", {3, 1}, {1, 2, 3});
  b.Node("Gemm", {"x", "B", "C"}, {"g"}, "gemm");
  AddBatchNorm(b, "g", "y", {1, 2, 3}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, 1.0f);
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::FoldBatchNorm(m));
}

TEST(FoldBatchNorm, SkipsConvWhoseOutputHasTwoConsumers) {
  GraphBuilder b = ConvBn();
  b.Output("r", {1, 2, 3, 3});
  b.Node("Relu", {"c"}, {"r"});
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::FoldBatchNorm(m));
  EXPECT_EQ(OpTypes(m), (Strings{"Conv", "BatchNormalization", "Relu"}));
}

TEST(FoldBatchNorm, SkipsConvOutputReadBySubgraph) {
  GraphBuilder b = ConvBn();
  b.Input("cond", {}, pb::TensorProto::BOOL).Output("z", {1, 2, 3, 3});
  auto* iff = b.Node("If", {"cond"}, {"z"}, "if");
  GraphBuilder::GraphAttr(iff, "then_branch", testing::BodyReading("c", "t"));
  GraphBuilder::GraphAttr(iff, "else_branch", testing::BodyReading("c", "e"));
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::FoldBatchNorm(m));
}

TEST(FoldBatchNorm, CopiesAWeightSharedWithAnotherNode) {
  GraphBuilder b = ConvBn();
  b.Output("z", {1, 2, 3, 3});
  b.Node("Conv", {"x", "w", "cb"}, {"z"}, "conv2");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  const pb::NodeProto* conv = FindNode(m, "conv");
  ASSERT_NE(conv, nullptr);
  EXPECT_NE(conv->input(1), "w");
  EXPECT_NE(conv->input(2), "cb");
  ExpectFloats(Values(m, conv->input(1)), {2, 4, 1.5f, 2});
  ExpectFloats(Values(m, conv->input(2)), {1, -1});
  // conv2 still reads the original values.
  EXPECT_EQ(Strings(FindNode(m, "conv2")->input().begin(),
                    FindNode(m, "conv2")->input().end()),
            (Strings{"x", "w", "cb"}));
  ExpectFloats(Values(m, "w"), {1, 2, 3, 4});
  ExpectFloats(Values(m, "cb"), {0.5f, -1});
}

TEST(FoldBatchNorm, KeepsParametersAnotherNodeReads) {
  GraphBuilder b = ConvBn();
  b.Output("z", {2});
  b.Node("Relu", {"bn_mean"}, {"z"});
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  EXPECT_NE(FindInitializer(m, "bn_mean"), nullptr);
  EXPECT_EQ(FindInitializer(m, "bn_var"), nullptr);
}

TEST(FoldBatchNorm, SkipsTrainingModeAndNonConstantParameters) {
  {  // a used running-mean output
    GraphBuilder b = ConvBn();
    b.model().mutable_graph()->mutable_node(1)->add_output("running_mean");
    b.Output("running_mean", {2});
    pb::ModelProto m = b.Build();
    EXPECT_FALSE(passes::FoldBatchNorm(m));
  }
  {  // training_mode = 1
    GraphBuilder b = ConvBn();
    GraphBuilder::IntAttr(b.model().mutable_graph()->mutable_node(1),
                          "training_mode", 1);
    pb::ModelProto m = b.Build();
    EXPECT_FALSE(passes::FoldBatchNorm(m));
  }
  {  // a parameter listed in graph.input can be overridden
    GraphBuilder b = ConvBn();
    b.Input("bn_var", {2});
    pb::ModelProto m = b.Build();
    EXPECT_FALSE(passes::FoldBatchNorm(m));
  }
  {  // weights from a graph input
    GraphBuilder b(13);
    b.Input("x", {1, 2, 3, 3})
        .Input("w", {2, 2, 1, 1})
        .Output("y", {1, 2, 3, 3});
    b.Node("Conv", {"x", "w"}, {"c"}, "conv");
    AddBatchNorm(b, "c", "y", {1, 1}, {0, 0}, {0, 0}, {1, 1}, 0.0f);
    pb::ModelProto m = b.Build();
    EXPECT_FALSE(passes::FoldBatchNorm(m));
  }
}

TEST(FoldBatchNorm, UnusedTrainingOutputsDoNotBlockTheFold) {
  GraphBuilder b = ConvBn();
  auto* bn = b.model().mutable_graph()->mutable_node(1);
  bn->add_output("");
  bn->add_output("unused_var");
  testing::AddValueInfo(&b.model(), "unused_var");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::FoldBatchNorm(m));
  EXPECT_FALSE(testing::HasValueInfo(m, "unused_var"));
}

TEST(FoldBatchNorm, ThrowsNamingTheNodeForZeroLengthParameters) {
  GraphBuilder b(13);
  b.Input("x", {1, 2, 3, 3}).Output("y", {1, 2, 3, 3});
  b.Initializer("w", {2, 2, 1, 1}, {1, 2, 3, 4});
  b.Node("Conv", {"x", "w"}, {"c"}, "conv");
  AddBatchNorm(b, "c", "y", {}, {}, {}, {}, 1.0f);
  pb::ModelProto m = b.Build();
  try {
    passes::FoldBatchNorm(m);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    EXPECT_NE(std::string(e.what()).find("'bn'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("bn_scale"), std::string::npos);
  }
}

TEST(FoldBatchNorm, ThrowsForNonPositiveVariance) {
  GraphBuilder b(13);
  b.Input("x", {1, 2, 3, 3}).Output("y", {1, 2, 3, 3});
  b.Initializer("w", {2, 2, 1, 1}, {1, 2, 3, 4});
  b.Node("Conv", {"x", "w"}, {"c"}, "conv");
  AddBatchNorm(b, "c", "y", {1, 1}, {0, 0}, {0, 0}, {1, -1}, 0.0f);
  pb::ModelProto m = b.Build();
  EXPECT_THROW(passes::FoldBatchNorm(m), Error);
}

TEST(FoldBatchNorm, ReachesAFixedPointThroughChainedBatchNorms) {
  GraphBuilder b = ConvBn();
  auto* bn = b.model().mutable_graph()->mutable_node(1);
  bn->set_output(0, "y0");
  b.Initializer("s2", {2}, {2, 2}).Initializer("z2", {2}, {0, 0});
  b.Initializer("v2", {2}, {1, 1});
  auto* bn2 = b.Node("BatchNormalization", {"y0", "s2", "z2", "z2", "v2"},
                     {"y"}, "bn2");
  GraphBuilder::FloatAttr(bn2, "epsilon", 0.0f);
  pb::ModelProto m = b.Build();
  EXPECT_EQ(RunPasses(m, {"fold_batch_norm"}), (Strings{"fold_batch_norm"}));
  EXPECT_EQ(OpTypes(m), (Strings{"Conv"}));
  EXPECT_EQ(m.graph().node(0).output(0), "y");
  ExpectFloats(Values(m, "w"), {4, 8, 3, 4});
  ExpectFloats(Values(m, "cb"), {2, -2});
  EXPECT_EQ(m.graph().initializer_size(), 2);
  EXPECT_TRUE(RunPasses(m, {"fold_batch_norm"}).empty());
}

}  // namespace
}  // namespace onnxquant
