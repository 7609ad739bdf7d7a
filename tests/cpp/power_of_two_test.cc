// Power-of-two scales and 16-bit activation codes (arithmetic.h).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "onnxquant/arithmetic.h"

namespace onnxquant {
namespace {

bool IsPowerOfTwo(float x) {
  int e = 0;
  return x > 0.f && std::frexp(x, &e) == 0.5f;
}

QuantOptions Pow2(ActivationType type = ActivationType::kUint8,
                  PowerOfTwo rule = PowerOfTwo::kCeil) {
  QuantOptions o;
  o.activation_type = type;
  o.power_of_two = rule;
  return o;
}

TEST(PowerOfTwoCeil, RoundsUpToThePowerAndKeepsPowers) {
  EXPECT_EQ(PowerOfTwoCeil(1.f), 1.f);
  EXPECT_EQ(PowerOfTwoCeil(0.75f), 1.f);
  EXPECT_EQ(PowerOfTwoCeil(0.5f), 0.5f);
  EXPECT_EQ(PowerOfTwoCeil(1.f / 127.f), 1.f / 64.f);  // 2^-7 < 1/127
  EXPECT_EQ(PowerOfTwoCeil(3.f), 4.f);
  EXPECT_GT(PowerOfTwoCeil(0.f), 0.f);
}

TEST(PowerOfTwoActivations, SignedRangeIsSymmetricAndCovered) {
  for (ActivationType t : {ActivationType::kUint8, ActivationType::kInt8}) {
    const ActivationParams p = ActivationQuantParams(-3.f, 1.f, Pow2(t));
    EXPECT_TRUE(IsPowerOfTwo(p.scale)) << p.scale;
    EXPECT_EQ(p.zero_point, t == ActivationType::kUint8 ? 128 : 0);
    EXPECT_GE(p.scale * 127.f, 3.f);        // -3 is within the codes
    EXPECT_LT(p.scale / 2.f * 127.f, 3.f);  // and the smallest such power
  }
}

TEST(PowerOfTwoActivations, NonNegativeRangeUsesTheWholeType) {
  const ActivationParams u = ActivationQuantParams(0.f, 6.f, Pow2());
  EXPECT_EQ(u.zero_point, 0);
  EXPECT_EQ(u.scale, 1.f / 32.f);  // 6/255 = 0.0235 -> 2^-5 (2^-6 * 255 < 6)
  const ActivationParams s =
      ActivationQuantParams(0.f, 6.f, Pow2(ActivationType::kInt8));
  EXPECT_EQ(s.zero_point, -128);
  EXPECT_EQ(s.scale, 1.f / 32.f);
}

TEST(PowerOfTwoActivations, OffKeepsTheAffineScale) {
  QuantOptions o;
  const ActivationParams p = ActivationQuantParams(0.f, 6.f, o);
  EXPECT_FLOAT_EQ(p.scale, 6.f / 255.f);
}

TEST(Int16Activations, SymmetricAndAsymmetricRanges) {
  const ActivationParams s =
      ActivationQuantParams(-2.f, 2.f, ActivationType::kInt16);
  EXPECT_EQ(s.zero_point, 0);
  EXPECT_FLOAT_EQ(s.scale, 2.f / 32767.f);
  const ActivationParams a =
      ActivationQuantParams(0.f, 1.f, ActivationType::kInt16);
  EXPECT_EQ(a.zero_point, -32768);
  EXPECT_FLOAT_EQ(a.scale, 1.f / 65535.f);
  EXPECT_EQ(ActivationCodeRange(ActivationType::kInt16),
            std::make_pair(-32768, 32767));
}

TEST(PowerOfTwoWeights, CeilCoversTheLargestWeight) {
  const std::vector<float> w = {0.3f, -1.f, 0.2f, 0.05f, 2.5f, -0.7f};
  const WeightQuant q =
      QuantizeWeight(w, {2, 3}, 0, 127, {}, {}, PowerOfTwo::kCeil);
  ASSERT_EQ(q.scales.size(), 2u);
  for (size_t c = 0; c < 2; ++c) {
    EXPECT_TRUE(IsPowerOfTwo(q.scales[c])) << q.scales[c];
  }
  EXPECT_EQ(q.scales[0], 1.f / 64.f);  // 1/127 -> 2^-6
  EXPECT_EQ(q.scales[1], 1.f / 32.f);  // 2.5/127 = 0.0197 -> 2^-5
  for (int8_t v : q.values) EXPECT_LE(std::abs(v), 127);
  EXPECT_EQ(q.values[1], -64);  // -1 / 2^-6
}

TEST(PowerOfTwoWeights, MseTakesTheLowerPowerWhenItIsBetter) {
  // Values spread below an outlier just over 2^-7 * 127: the lower power
  // clips the outlier a little and halves everyone else's rounding error.
  std::vector<float> w = {1.f};
  for (int i = 0; i < 63; ++i) w.push_back(0.003f + 0.0071f * i);
  const WeightQuant ceil =
      QuantizeWeight(w, {64}, -1, 127, {}, {}, PowerOfTwo::kCeil);
  const WeightQuant mse =
      QuantizeWeight(w, {64}, -1, 127, {}, {}, PowerOfTwo::kMse);
  EXPECT_EQ(ceil.scales[0], 1.f / 64.f);
  EXPECT_EQ(mse.scales[0], 1.f / 128.f);
  auto error = [&](const WeightQuant& q) {
    double e = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      const double d = w[i] - q.values[i] * static_cast<double>(q.scales[0]);
      e += d * d;
    }
    return e;
  };
  EXPECT_LT(error(mse), error(ceil));
}

TEST(PowerOfTwoWeights, MseKeepsTheCeilingWhenTheLowerClipsTooMuch) {
  const std::vector<float> w = {1.f, -1.f, 0.99f, -0.98f};
  const WeightQuant q =
      QuantizeWeight(w, {4}, -1, 127, {}, {}, PowerOfTwo::kMse);
  EXPECT_EQ(q.scales[0], 1.f / 64.f);
}

}  // namespace
}  // namespace onnxquant
