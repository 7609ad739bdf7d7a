// High-bias absorption against a direct convolution written here: the
// chain's output before and after, on inputs whose pre-activations stay
// above the absorbed amounts (unchanged) and on inputs where they do not
// (changed, so the condition is what the test checks).
#include "onnxquant/high_bias_absorption.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
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

Tensor3 Relu(Tensor3 t) {
  for (double& x : t.v) x = std::max(x, 0.0);
  return t;
}

Tensor3 PRelu(Tensor3 t, const std::vector<float>& slope) {
  for (int64_t k = 0; k < t.c; ++k) {
    for (int64_t i = 0; i < t.h * t.w; ++i) {
      double& x = t.v[k * t.h * t.w + i];
      if (x < 0) x *= slope[k];
    }
  }
  return t;
}

std::vector<float> Random(size_t n, float scale, float shift,
                          std::mt19937* gen) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(*gen) * scale + shift;
  return v;
}

const pb::TensorProto& Init(const pb::ModelProto& m, const std::string& n) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == n) return t;
  }
  throw std::runtime_error("no initializer " + n);
}

// x [1,3,8,8] -> Conv a (3->4, 3x3, pad 1; biases around +4) -> Relu ->
// Conv b (depthwise 4, 3x3, no padding; biases around +3) -> PRelu ->
// Conv c (4->2, 1x1) -> y. conv_b ends the first chain and starts the second.
pb::ModelProto Chain(std::mt19937* gen) {
  GraphBuilder g;
  g.Input("x", {1, 3, 8, 8}).Output("y", {1, 2, 6, 6});
  g.Initializer("wa", {4, 3, 3, 3}, Random(108, 0.1f, 0.f, gen));
  g.Initializer("ba", {4}, Random(4, 0.5f, 4.f, gen));
  g.Initializer("wb", {4, 1, 3, 3}, Random(36, 0.3f, 0.f, gen));
  g.Initializer("bb", {4}, Random(4, 0.5f, 3.f, gen));
  g.Initializer("slope", {4, 1, 1}, {0.1f, 0.2f, 0.3f, 0.25f});
  g.Initializer("wc", {2, 4, 1, 1}, Random(8, 1.f, 0.f, gen));
  g.Initializer("bc", {2}, Random(2, 0.5f, 0.f, gen));
  GraphBuilder::IntsAttr(g.Node("Conv", {"x", "wa", "ba"}, {"a"}, "conv_a"),
                         "pads", {1, 1, 1, 1});
  g.Node("Relu", {"a"}, {"ra"}, "act_a");
  GraphBuilder::IntAttr(g.Node("Conv", {"ra", "wb", "bb"}, {"b"}, "conv_b"),
                        "group", 4);
  g.Node("PRelu", {"b", "slope"}, {"rb"}, "act_b");
  g.Node("Conv", {"rb", "wc", "bc"}, {"y"}, "conv_c");
  return g.Build();
}

struct ChainRun {
  Tensor3 a, b, y;  // the pre-activations of the two chains, the output
};

ChainRun Evaluate(const pb::ModelProto& m, const Tensor3& x) {
  auto f = [&](const std::string& n) { return ToFloats(Init(m, n)); };
  ChainRun r;
  r.a = Conv(x, f("wa"), {4, 3, 3, 3}, f("ba"), 1, 1);
  r.b = Conv(Relu(r.a), f("wb"), {4, 1, 3, 3}, f("bb"), 4, 0);
  r.y = Conv(PRelu(r.b, f("slope")), f("wc"), {2, 4, 1, 1}, f("bc"), 1, 0);
  return r;
}

Tensor3 RandomInput(float scale, std::mt19937* gen) {
  Tensor3 x{3, 8, 8, {}};
  for (float v : Random(3 * 64, scale, 0.f, gen)) x.v.push_back(v);
  return x;
}

// Per channel: `share` of the smallest value of `t`, or 0 where it is < 0.
std::vector<float> Below(const Tensor3& t, double share) {
  std::vector<float> a(t.c);
  for (int64_t k = 0; k < t.c; ++k) {
    double lo = t.v[k * t.h * t.w];
    for (int64_t i = 0; i < t.h * t.w; ++i) {
      lo = std::min(lo, t.v[k * t.h * t.w + i]);
    }
    a[k] = static_cast<float>(std::max(0.0, share * lo));
  }
  return a;
}

double MaxAbs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

TEST(HighBiasAbsorption, FindsBothChainsOfTheModel) {
  std::mt19937 gen(3);
  const std::vector<AbsorptionCandidate> c =
      FindHighBiasCandidates(Chain(&gen));
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].first, "conv_a");
  EXPECT_EQ(c[0].output, "a");
  EXPECT_EQ(c[0].activation, "act_a");
  EXPECT_EQ(c[0].second, "conv_b");
  EXPECT_EQ(c[1].first, "conv_b");
  EXPECT_EQ(c[1].activation, "act_b");
  EXPECT_EQ(c[1].second, "conv_c");
}

TEST(HighBiasAbsorption, KeepsTheFunctionWherePreActivationsStayAbove) {
  std::mt19937 gen(5);
  const pb::ModelProto before = Chain(&gen);
  // The amounts: 90 % of each channel's smallest pre-activation over the test
  // inputs, which therefore all stay above them.
  std::vector<Tensor3> inputs;
  std::vector<float> amount_a(4, 1e30f), amount_b(4, 1e30f);
  for (int trial = 0; trial < 5; ++trial) {
    inputs.push_back(RandomInput(1.f, &gen));
    const ChainRun r0 = Evaluate(before, inputs.back());
    const std::vector<float> ea = Below(r0.a, 0.9), eb = Below(r0.b, 0.9);
    for (int c = 0; c < 4; ++c) {
      amount_a[c] = std::min(amount_a[c], ea[c]);
      amount_b[c] = std::min(amount_b[c], eb[c]);
    }
  }
  ASSERT_GT(*std::min_element(amount_a.begin(), amount_a.end()), 1.f);
  ASSERT_GT(*std::max_element(amount_b.begin(), amount_b.end()), 0.5f);
  pb::ModelProto after = before;
  const AbsorptionReport r =
      AbsorbHighBias(after, {{"conv_a", amount_a}, {"conv_b", amount_b}});
  ASSERT_EQ(r.pairs.size(), 2u);
  EXPECT_TRUE(r.skipped.empty());
  // conv_a's bias went down by the amounts.
  const std::vector<float> ba0 = ToFloats(Init(before, "ba"));
  const std::vector<float> ba1 = ToFloats(Init(after, "ba"));
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(ba1[c], ba0[c] - amount_a[c], 1e-5);
  for (const Tensor3& x : inputs) {
    const ChainRun r0 = Evaluate(before, x);
    const ChainRun r1 = Evaluate(after, x);
    const double scale = MaxAbs(r0.y.v);
    for (size_t i = 0; i < r0.y.v.size(); ++i) {
      EXPECT_NEAR(r1.y.v[i], r0.y.v[i], 1e-5 * scale) << i;
    }
    // The shifted pre-activations: smaller by the amounts.
    EXPECT_LT(MaxAbs(r1.a.v), MaxAbs(r0.a.v) - 0.9);
  }
}

TEST(HighBiasAbsorption, ChangesTheFunctionWherePreActivationsFallBelow) {
  std::mt19937 gen(7);
  const pb::ModelProto before = Chain(&gen);
  const ChainRun cal = Evaluate(before, RandomInput(1.f, &gen));
  pb::ModelProto after = before;
  AbsorbHighBias(after, {{"conv_a", Below(cal.a, 0.9)}});
  // A large input pushes some pre-activations below the amounts.
  const Tensor3 x = RandomInput(20.f, &gen);
  const ChainRun r0 = Evaluate(before, x), r1 = Evaluate(after, x);
  double diff = 0.0;
  for (size_t i = 0; i < r0.y.v.size(); ++i) {
    diff = std::max(diff, std::fabs(r1.y.v[i] - r0.y.v[i]));
  }
  EXPECT_GT(diff, 1e-3 * MaxAbs(r0.y.v));
}

TEST(HighBiasAbsorption, RejectsBadAmountsAndSkipsOtherNodes) {
  std::mt19937 gen(9);
  pb::ModelProto m = Chain(&gen);
  EXPECT_THROW(AbsorbHighBias(m, {{"conv_a", {1.f, -1.f, 0.f, 0.f}}}), Error);
  EXPECT_THROW(AbsorbHighBias(m, {{"conv_a", {1.f, NAN, 0.f, 0.f}}}), Error);
  EXPECT_THROW(AbsorbHighBias(m, {{"conv_a", {1.f, 1.f}}}), Error);
  const AbsorptionReport r = AbsorbHighBias(m, {{"conv_c", {1.f, 1.f}}});
  EXPECT_TRUE(r.pairs.empty());
  ASSERT_EQ(r.skipped.size(), 1u);
  EXPECT_EQ(r.skipped[0].first, "conv_c");
  // Nothing changed.
  const pb::ModelProto fresh = [] {
    std::mt19937 g(9);
    return Chain(&g);
  }();
  EXPECT_EQ(ToFloats(Init(m, "bc")), ToFloats(Init(fresh, "bc")));
}

}  // namespace
}  // namespace onnxquant
