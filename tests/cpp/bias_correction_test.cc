// The native pieces of bias correction (bias_correction.h), against values
// computed here: per-channel dequantized weights and per-channel sums.
#include "onnxquant/bias_correction.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "graph_builder.h"
#include "onnxquant/error.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

std::vector<float> Random(size_t n, std::mt19937* gen) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(*gen);
  return v;
}

const pb::TensorProto* Find(const pb::ModelProto& m, const std::string& n) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == n) return &t;
  }
  return nullptr;
}

// x [1,2,4,4] -> Conv (no bias, 2->3, 1x1) -> Relu -> Flatten -> Gemm
// (transB = 1, [5, 48], bias [1, 5] shared with an Add) -> y.
GraphBuilder Model(std::mt19937* gen) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 5}).Output("z", {1, 5});
  g.Initializer("w", {3, 2, 1, 1}, Random(6, gen));
  g.Initializer("wg", {5, 48}, Random(240, gen));
  g.Initializer("bg", {1, 5}, Random(5, gen));
  g.Node("Conv", {"x", "w"}, {"c"}, "conv");
  g.Node("Relu", {"c"}, {"r"}, "relu");
  g.Node("Flatten", {"r"}, {"f"}, "flatten");
  GraphBuilder::IntAttr(g.Node("Gemm", {"f", "wg", "bg"}, {"y"}, "gemm"),
                        "transB", 1);
  g.Node("Add", {"y", "bg"}, {"z"}, "add");
  return g;
}

TEST(PrepareBiasCorrection, GivesEachLayerItsOwnPerChannelBias) {
  std::mt19937 gen(1);
  GraphBuilder g = Model(&gen);
  pb::ModelProto m = g.Build();
  const BiasPreparation p = PrepareBiasCorrection(m, g.Dtypes(), {});
  ASSERT_EQ(p.layers.size(), 2u);
  EXPECT_EQ(p.layers[0].node, "conv");
  EXPECT_EQ(p.layers[0].output, "c");
  EXPECT_EQ(p.layers[0].channels, 3);
  EXPECT_EQ(p.layers[1].node, "gemm");
  EXPECT_EQ(p.layers[1].channels, 5);
  // The conv got a zero bias; the shared [1, 5] Gemm bias was copied as [5].
  const pb::TensorProto* cb = Find(m, p.layers[0].bias);
  ASSERT_NE(cb, nullptr);
  EXPECT_EQ(ToFloats(*cb), std::vector<float>(3, 0.f));
  EXPECT_EQ(m.graph().node(0).input(2), p.layers[0].bias);
  ASSERT_NE(p.layers[1].bias, "bg");
  const pb::TensorProto* gb = Find(m, p.layers[1].bias);
  EXPECT_EQ(Dims(*gb), std::vector<int64_t>{5});
  EXPECT_EQ(ToFloats(*gb), ToFloats(*Find(m, "bg")));
  EXPECT_EQ(m.graph().node(4).input(1), "bg");  // the Add still reads it
}

TEST(EmulateQuantizedWeights, HoldsTheDequantizedPerChannelValues) {
  std::mt19937 gen(2);
  GraphBuilder g = Model(&gen);
  pb::ModelProto m = g.Build();
  const std::vector<float> w = ToFloats(*Find(m, "w"));
  const std::vector<float> wg = ToFloats(*Find(m, "wg"));
  const auto changed = EmulateQuantizedWeights(m, g.Dtypes(), {});
  EXPECT_EQ(changed.size(), 2u);
  const std::vector<float> e = ToFloats(*Find(m, "w"));
  for (int c = 0; c < 3; ++c) {  // [3, 2, 1, 1]: axis 0
    const double s = std::max(std::fabs(w[2 * c]), std::fabs(w[2 * c + 1])) /
                     127.0;
    for (int i = 0; i < 2; ++i) {
      EXPECT_NEAR(e[2 * c + i], std::nearbyint(w[2 * c + i] / s) * s, 1e-6);
    }
  }
  const std::vector<float> eg = ToFloats(*Find(m, "wg"));
  for (int r = 0; r < 5; ++r) {  // transB = 1: [N, K], channels on axis 0
    double a = 0.0;
    for (int k = 0; k < 48; ++k) {
      a = std::max(a, double{std::fabs(wg[r * 48 + k])});
    }
    for (int k = 0; k < 48; ++k) {
      const double s = a / 127.0;
      EXPECT_NEAR(eg[r * 48 + k], std::nearbyint(wg[r * 48 + k] / s) * s, 1e-6);
    }
  }
}

TEST(EmulateQuantizedWeights, PerTensorPowerOfTwo) {
  std::mt19937 gen(3);
  GraphBuilder g = Model(&gen);
  pb::ModelProto m = g.Build();
  const std::vector<float> w = ToFloats(*Find(m, "w"));
  QuantOptions o;
  o.per_channel = false;
  o.power_of_two = PowerOfTwo::kCeil;
  EmulateQuantizedWeights(m, g.Dtypes(), o);
  double a = 0.0;
  for (float v : w) a = std::max(a, double{std::fabs(v)});
  const double s = std::exp2(std::ceil(std::log2(a / 127.0)));
  const std::vector<float> e = ToFloats(*Find(m, "w"));
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_NEAR(e[i], std::nearbyint(w[i] / s) * s, 1e-7);
  }
}

TEST(ChannelSums, SumsAxisOne) {
  std::mt19937 gen(4);
  const std::vector<float> x = Random(2 * 3 * 5, &gen);
  const auto s = ChannelSums(x.data(), {2, 3, 5});
  for (int c = 0; c < 3; ++c) {
    double want = 0.0;
    for (int n = 0; n < 2; ++n)
      for (int i = 0; i < 5; ++i) want += x[(n * 3 + c) * 5 + i];
    EXPECT_NEAR(s[c], want, 1e-9);
  }
  EXPECT_THROW(ChannelSums(x.data(), {30}), Error);
}

}  // namespace
}  // namespace onnxquant
