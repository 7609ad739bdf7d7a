// Cross-layer equalization against a direct convolution written here: the
// chain's output before and after equalization, on random inputs.
#include "onnxquant/cross_layer_equalization.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "reference_conv.h"
#include "onnxquant/error.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

using testing::Conv;
using testing::GraphBuilder;
using testing::Tensor3;

Tensor3 Act(Tensor3 t, const std::string& op, const std::vector<float>& slope) {
  for (int64_t k = 0; k < t.c; ++k) {
    for (int64_t i = 0; i < t.h * t.w; ++i) {
      double& x = t.v[k * t.h * t.w + i];
      if (op == "Relu") x = std::max(x, 0.0);
      if (op == "PRelu" && x < 0) x *= slope[k];
      if (op == "Clip") x = std::min(std::max(x, 0.0), 6.0);
    }
  }
  return t;
}

std::vector<float> Random(size_t n, float scale, std::mt19937* gen) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(*gen) * scale;
  return v;
}

const pb::TensorProto& Init(const pb::ModelProto& m, const std::string& n) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == n) return t;
  }
  throw std::runtime_error("no initializer " + n);
}

// x [1,3,6,6] -> Conv a (3->4, 3x3, pad 1) -> Relu -> Conv b (depthwise 4,
// 3x3, pad 1) -> PRelu (per channel) -> Conv c (4->2, 1x1) -> y. Conv a's
// output channels have ranges spread over 3 decades.
GraphBuilder Chain(const std::string& first_act, std::mt19937* gen) {
  GraphBuilder g;
  g.Input("x", {1, 3, 6, 6}).Output("y", {1, 2, 6, 6});
  std::vector<float> wa = Random(4 * 3 * 9, 1.f, gen);
  const float spread[4] = {0.01f, 0.1f, 1.f, 10.f};
  for (int o = 0; o < 4; ++o)
    for (int i = 0; i < 27; ++i) wa[o * 27 + i] *= spread[o];
  g.Initializer("wa", {4, 3, 3, 3}, wa);
  g.Initializer("ba", {4}, Random(4, 0.5f, gen));
  g.Initializer("wb", {4, 1, 3, 3}, Random(36, 1.f, gen));
  g.Initializer("bb", {4}, Random(4, 0.5f, gen));
  g.Initializer("slope", {4, 1, 1}, {0.1f, 0.2f, 0.3f, 0.25f});
  g.Initializer("wc", {2, 4, 1, 1}, Random(8, 1.f, gen));
  g.Initializer("bc", {2}, Random(2, 0.5f, gen));
  g.Initializer("zero", {}, {0.f});
  g.Initializer("six", {}, {6.f});
  GraphBuilder::IntsAttr(g.Node("Conv", {"x", "wa", "ba"}, {"a"}, "conv_a"),
                         "pads", {1, 1, 1, 1});
  if (first_act == "Clip") {
    g.Node("Clip", {"a", "zero", "six"}, {"ra"}, "act_a");
  } else {
    g.Node(first_act, {"a"}, {"ra"}, "act_a");
  }
  auto* b = g.Node("Conv", {"ra", "wb", "bb"}, {"b"}, "conv_b");
  GraphBuilder::IntsAttr(b, "pads", {1, 1, 1, 1});
  GraphBuilder::IntAttr(b, "group", 4);
  g.Node("PRelu", {"b", "slope"}, {"rb"}, "act_b");
  g.Node("Conv", {"rb", "wc", "bc"}, {"y"}, "conv_c");
  return g;
}

// The chain's output for `x`, computed from `m`'s initializers.
Tensor3 Evaluate(const pb::ModelProto& m, const Tensor3& x,
                 const std::string& first_act) {
  auto f = [&](const std::string& n) { return ToFloats(Init(m, n)); };
  Tensor3 t = Conv(x, f("wa"), {4, 3, 3, 3}, f("ba"), 1, 1);
  t = Act(t, first_act, {});
  t = Conv(t, f("wb"), {4, 1, 3, 3}, f("bb"), 4, 1);
  t = Act(t, "PRelu", f("slope"));
  return Conv(t, f("wc"), {2, 4, 1, 1}, f("bc"), 1, 0);
}

Tensor3 RandomInput(std::mt19937* gen) {
  Tensor3 x{3, 6, 6, {}};
  for (float v : Random(3 * 36, 2.f, gen)) x.v.push_back(v);
  return x;
}

TEST(CrossLayerEqualization, PreservesTheFunctionAcrossReluAndPRelu) {
  std::mt19937 gen(3);
  pb::ModelProto before = Chain("Relu", &gen).Build();
  pb::ModelProto after = before;
  const EqualizationReport r = EqualizeCrossLayer(after, {});
  ASSERT_EQ(r.pairs.size(), 2u);
  EXPECT_EQ(r.pairs[0].first, "conv_a");
  EXPECT_EQ(r.pairs[0].second, "conv_b");
  EXPECT_EQ(r.pairs[1].activation, "act_b");
  EXPECT_TRUE(r.converged);
  EXPECT_GT(r.sweeps, 1);  // the two pairs share conv_b: they interact
  for (int trial = 0; trial < 3; ++trial) {
    const Tensor3 x = RandomInput(&gen);
    const Tensor3 y0 = Evaluate(before, x, "Relu");
    const Tensor3 y1 = Evaluate(after, x, "Relu");
    double scale = 0.0;
    for (double v : y0.v) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < y0.v.size(); ++i) {
      EXPECT_NEAR(y1.v[i], y0.v[i], 1e-5 * scale) << i;
    }
  }
}

TEST(CrossLayerEqualization, ReducesTheRangeSpreadAndEqualizesRanges) {
  std::mt19937 gen(5);
  pb::ModelProto m = Chain("Relu", &gen).Build();
  const EqualizationReport r = EqualizeCrossLayer(m, {});
  EXPECT_GT(r.pairs[0].spread_before, 100.0);
  EXPECT_LT(r.pairs[0].spread_after, r.pairs[0].spread_before / 10.0);
  // At convergence each channel's range in conv_a (output) equals that in
  // conv_b (input, depthwise: its own filter).
  const std::vector<float> wa = ToFloats(Init(m, "wa"));
  const std::vector<float> wb = ToFloats(Init(m, "wb"));
  for (int c = 0; c < 4; ++c) {
    float ra = 0.f, rb = 0.f;
    for (int i = 0; i < 27; ++i) ra = std::max(ra, std::fabs(wa[c * 27 + i]));
    for (int i = 0; i < 9; ++i) rb = std::max(rb, std::fabs(wb[c * 9 + i]));
    EXPECT_NEAR(ra / rb, 1.0, 1e-3) << c;
  }
}

TEST(CrossLayerEqualization, PowerOfTwoAlignmentKeepsTheFunction) {
  std::mt19937 gen(17);
  pb::ModelProto before = Chain("Relu", &gen).Build();
  pb::ModelProto after = before;
  EqualizationOptions o;
  o.power_of_two_qmax = 127;
  const EqualizationReport r = EqualizeCrossLayer(after, o);
  ASSERT_EQ(r.pairs.size(), 2u);
  // The first Conv of each pair: max|w| / 127 just below a power of two.
  for (const char* w : {"wa", "wb"}) {
    double m = 0.0;
    for (float v : ToFloats(Init(after, w))) {
      m = std::max(m, double{std::fabs(v)});
    }
    const double x = m / 127.0;
    const double p = std::exp2(std::ceil(std::log2(x)));
    EXPECT_GT(x / p, 1.0 - 1e-5) << w;
    EXPECT_LE(x / p, 1.0) << w;
  }
  const Tensor3 x = RandomInput(&gen);
  const Tensor3 y0 = Evaluate(before, x, "Relu");
  const Tensor3 y1 = Evaluate(after, x, "Relu");
  double scale = 0.0;
  for (double v : y0.v) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < y0.v.size(); ++i) {
    EXPECT_NEAR(y1.v[i], y0.v[i], 1e-5 * scale) << i;
  }
}

TEST(CrossLayerEqualization, ClipStopsTheChainUnlessReplaced) {
  std::mt19937 gen(9);
  pb::ModelProto stop = Chain("Clip", &gen).Build();
  pb::ModelProto original = stop;
  const EqualizationReport r = EqualizeCrossLayer(stop, {});
  ASSERT_EQ(r.pairs.size(), 1u);  // conv_b -> conv_c only
  EXPECT_EQ(r.pairs[0].first, "conv_b");
  ASSERT_EQ(r.clips_stopped.size(), 1u);
  EXPECT_EQ(r.clips_stopped[0], "act_a");
  EXPECT_EQ(ToFloats(Init(stop, "wa")), ToFloats(Init(original, "wa")));
  const Tensor3 x = RandomInput(&gen);
  const Tensor3 y0 = Evaluate(original, x, "Clip");
  const Tensor3 y1 = Evaluate(stop, x, "Clip");
  for (size_t i = 0; i < y0.v.size(); ++i) EXPECT_NEAR(y1.v[i], y0.v[i], 1e-4);

  pb::ModelProto replaced = original;
  EqualizationOptions o;
  o.clip = ClipHandling::kReplaceWithRelu;
  const EqualizationReport q = EqualizeCrossLayer(replaced, o);
  EXPECT_EQ(q.pairs.size(), 2u);
  ASSERT_EQ(q.clips_replaced.size(), 1u);
  EXPECT_EQ(replaced.graph().node(1).op_type(), "Relu");
  EXPECT_EQ(replaced.graph().node(1).input_size(), 1);
  // Now the function is that of the Relu chain.
  const Tensor3 yr = Evaluate(original, x, "Relu");
  const Tensor3 y2 = Evaluate(replaced, x, "Relu");
  for (size_t i = 0; i < yr.v.size(); ++i) EXPECT_NEAR(y2.v[i], yr.v[i], 1e-4);
}

TEST(CrossLayerEqualization, LeavesSharedAndOutputTensorsAlone) {
  std::mt19937 gen(11);
  GraphBuilder g = Chain("Relu", &gen);
  g.Output("ra", {1, 4, 6, 6});  // conv_a's activation is also an output
  pb::ModelProto m = g.Build();
  const EqualizationReport r = EqualizeCrossLayer(m, {});
  ASSERT_EQ(r.pairs.size(), 1u);
  EXPECT_EQ(r.pairs[0].first, "conv_b");
}

TEST(CrossLayerEqualization, GroupedSecondConvKeepsTheFunction) {
  // x [1,4,5,5] -> Conv a (4->4, 1x1, no bias) -> LeakyRelu -> Conv b
  // (group 2: 4->6, 3x3, pad 1) -> y.
  std::mt19937 gen(13);
  GraphBuilder g;
  g.Input("x", {1, 4, 5, 5}).Output("y", {1, 6, 5, 5});
  std::vector<float> wa = Random(16, 1.f, &gen);
  for (int i = 0; i < 4; ++i) wa[i] *= 50.f;  // channel 0 dominates
  g.Initializer("wa", {4, 4, 1, 1}, wa);
  g.Initializer("wb", {6, 2, 3, 3}, Random(108, 1.f, &gen));
  g.Node("Conv", {"x", "wa"}, {"a"}, "conv_a");
  GraphBuilder::FloatAttr(g.Node("LeakyRelu", {"a"}, {"ra"}, "act"), "alpha",
                          0.1f);
  auto* b = g.Node("Conv", {"ra", "wb"}, {"y"}, "conv_b");
  GraphBuilder::IntsAttr(b, "pads", {1, 1, 1, 1});
  GraphBuilder::IntAttr(b, "group", 2);
  pb::ModelProto before = g.Build();
  pb::ModelProto after = before;
  const EqualizationReport r = EqualizeCrossLayer(after, {});
  ASSERT_EQ(r.pairs.size(), 1u);
  EXPECT_GT(r.pairs[0].spread_before, r.pairs[0].spread_after);
  auto eval = [&](const pb::ModelProto& m, Tensor3 x) {
    Tensor3 t = Conv(x, ToFloats(Init(m, "wa")), {4, 4, 1, 1}, {}, 1, 0);
    for (double& v : t.v) v = v < 0 ? 0.1 * v : v;
    return Conv(t, ToFloats(Init(m, "wb")), {6, 2, 3, 3}, {}, 2, 1);
  };
  Tensor3 x{4, 5, 5, {}};
  for (float v : Random(100, 1.f, &gen)) x.v.push_back(v);
  const Tensor3 y0 = eval(before, x), y1 = eval(after, x);
  double scale = 0.0;
  for (double v : y0.v) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < y0.v.size(); ++i) {
    EXPECT_NEAR(y1.v[i], y0.v[i], 1e-5 * scale) << i;
  }
}

TEST(CrossLayerEqualization, WeightsThatDoNotFitTheirGroupAreModelErrors) {
  for (int64_t out_channels : {int64_t{0}, int64_t{3}}) {
    // Conv b: group 2 with 3 (not a multiple) or 0 output channels.
    GraphBuilder g;
    g.Input("x", {1, 2, 3, 3}).Output("y", {1, out_channels, 3, 3});
    g.Initializer("wa", {2, 2, 1, 1}, {1.f, 2.f, 3.f, 4.f});
    g.Initializer("wb", {out_channels, 1, 1, 1},
                  std::vector<float>(out_channels, 1.f));
    g.Node("Conv", {"x", "wa"}, {"a"}, "conv_a");
    g.Node("Relu", {"a"}, {"r"}, "relu");
    GraphBuilder::IntAttr(g.Node("Conv", {"r", "wb"}, {"y"}, "conv_b"),
                          "group", 2);
    pb::ModelProto m = g.Build();
    try {
      EqualizeCrossLayer(m, {});
      ADD_FAILURE() << "no error for " << out_channels << " channels";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kModel);
      EXPECT_NE(std::string(e.what()).find("conv_b"), std::string::npos);
    }
  }
}

TEST(CrossLayerEqualization, RejectsBadOptions) {
  std::mt19937 gen(1);
  pb::ModelProto m = Chain("Relu", &gen).Build();
  EqualizationOptions o;
  o.max_sweeps = 0;
  EXPECT_THROW(EqualizeCrossLayer(m, o), Error);
}

}  // namespace
}  // namespace onnxquant
