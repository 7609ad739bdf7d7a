#include "onnxquant/arithmetic.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

void ExpectRangeError(float rmin, float rmax, ActivationType type) {
  try {
    ActivationQuantParams(rmin, rmax, type);
    ADD_FAILURE() << "no error for [" << rmin << ", " << rmax << "]";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRange);
  }
}

// --- Activations -------------------------------------------------------------

TEST(ActivationQuantParams, AsymmetricRangeUint8) {
  // scale = (3 - (-1)) / 255; zp = round(0 + 1 / (4/255)) = round(63.75).
  const ActivationParams p =
      ActivationQuantParams(-1.f, 3.f, ActivationType::kUint8);
  EXPECT_EQ(p.scale, 4.f / 255.f);
  EXPECT_EQ(p.zero_point, 64);
  EXPECT_FALSE(p.floored);
}

TEST(ActivationQuantParams, AsymmetricRangeInt8) {
  // zp = round(-128 + 63.75) = round(-64.25) = -64.
  const ActivationParams p =
      ActivationQuantParams(-1.f, 3.f, ActivationType::kInt8);
  EXPECT_EQ(p.scale, 4.f / 255.f);
  EXPECT_EQ(p.zero_point, -64);
}

TEST(ActivationQuantParams, SymmetricRangeIsCenteredBitExactly) {
  // [-a, a]: scale a / 127 computed in float32, zero point 128 (uint8) or 0
  // (int8), and +-a quantize to exactly zp -+ 127.
  for (const float a : {1.f, 3.f, 0.1f, 6.02f, 1e-3f, 1234.5f}) {
    const ActivationParams u =
        ActivationQuantParams(-a, a, ActivationType::kUint8);
    const ActivationParams s =
        ActivationQuantParams(-a, a, ActivationType::kInt8);
    EXPECT_EQ(u.scale, a / 127.f) << a;
    EXPECT_EQ(s.scale, a / 127.f) << a;
    EXPECT_EQ(u.zero_point, 128) << a;
    EXPECT_EQ(s.zero_point, 0) << a;
    EXPECT_FALSE(u.floored);
    for (const float x : {-a, a}) {
      const double code = std::nearbyint(static_cast<double>(x) / u.scale);
      EXPECT_EQ(std::fabs(code), 127.0) << "a = " << a << ", x = " << x;
    }
  }
}

TEST(ActivationQuantParams, NonNegativeRangeKeepsTheLowestCode) {
  // [0, a] is not symmetric: 255 steps from the type's lowest code.
  const ActivationParams u =
      ActivationQuantParams(0.f, 2.f, ActivationType::kUint8);
  const ActivationParams s =
      ActivationQuantParams(0.f, 2.f, ActivationType::kInt8);
  EXPECT_EQ(u.scale, 2.f / 255.f);
  EXPECT_EQ(u.zero_point, 0);
  EXPECT_EQ(s.scale, 2.f / 255.f);
  EXPECT_EQ(s.zero_point, -128);
}

TEST(ActivationQuantParams, NearlySymmetricRangeIsAsymmetric) {
  // Only an exactly symmetric pair is centred.
  const ActivationParams u = ActivationQuantParams(
      -1.f, std::nextafter(1.f, 2.f), ActivationType::kUint8);
  EXPECT_EQ(u.scale, (std::nextafter(1.f, 2.f) + 1.f) / 255.f);
  EXPECT_EQ(u.zero_point, 127);
}

TEST(ActivationQuantParams, ZeroRangeIsFlooredNotAnError) {
  const ActivationParams u =
      ActivationQuantParams(0.f, 0.f, ActivationType::kUint8);
  EXPECT_TRUE(u.floored);
  EXPECT_EQ(u.scale, kMinActivationScale);
  EXPECT_EQ(u.zero_point, 0);
  const ActivationParams s =
      ActivationQuantParams(0.f, 0.f, ActivationType::kInt8);
  EXPECT_TRUE(s.floored);
  EXPECT_GT(s.scale, 0.f);
  EXPECT_EQ(s.zero_point, -128);
}

TEST(ActivationQuantParams, PositiveRangeIsWidenedToZero) {
  // [2, 5] -> [0, 5]: scale 5/255, zero maps to qmin.
  const ActivationParams u =
      ActivationQuantParams(2.f, 5.f, ActivationType::kUint8);
  EXPECT_EQ(u.scale, 5.f / 255.f);
  EXPECT_EQ(u.zero_point, 0);
  const ActivationParams s =
      ActivationQuantParams(2.f, 5.f, ActivationType::kInt8);
  EXPECT_EQ(s.scale, 5.f / 255.f);
  EXPECT_EQ(s.zero_point, -128);
}

TEST(ActivationQuantParams, NegativeRangeIsWidenedToZero) {
  // [-5, -2] -> [-5, 0]: zero maps to qmax.
  const ActivationParams u =
      ActivationQuantParams(-5.f, -2.f, ActivationType::kUint8);
  EXPECT_EQ(u.scale, 5.f / 255.f);
  EXPECT_EQ(u.zero_point, 255);
  const ActivationParams s =
      ActivationQuantParams(-5.f, -2.f, ActivationType::kInt8);
  EXPECT_EQ(s.zero_point, 127);
}

TEST(ActivationQuantParams, ZeroPointRoundsHalfToEvenUint8) {
  // Width 127.5 gives the exact scale 0.5, so -rmin/scale is exact.
  // rmin -0.25: 0.5 -> 0 (half away from zero would give 1).
  ActivationParams p =
      ActivationQuantParams(-0.25f, 127.25f, ActivationType::kUint8);
  EXPECT_EQ(p.scale, 0.5f);
  EXPECT_EQ(p.zero_point, 0);
  // rmin -1.25: 2.5 -> 2 (half away would give 3).
  p = ActivationQuantParams(-1.25f, 126.25f, ActivationType::kUint8);
  EXPECT_EQ(p.scale, 0.5f);
  EXPECT_EQ(p.zero_point, 2);
  // rmin -0.75: 1.5 -> 2.
  p = ActivationQuantParams(-0.75f, 126.75f, ActivationType::kUint8);
  EXPECT_EQ(p.zero_point, 2);
}

TEST(ActivationQuantParams, ZeroPointRoundsHalfToEvenInt8) {
  // -128 + 1.5 = -126.5 -> -126 (half away from zero would give -127).
  const ActivationParams p =
      ActivationQuantParams(-0.75f, 126.75f, ActivationType::kInt8);
  EXPECT_EQ(p.scale, 0.5f);
  EXPECT_EQ(p.zero_point, -126);
}

TEST(ActivationQuantParams, TinyRangeIsFlooredAndZeroPointStaysInRange) {
  // Width 2e-6 / 255 < 1e-8: floored; -rmin/scale = 1e-6 / 1e-8 = 100.
  const ActivationParams p =
      ActivationQuantParams(-1e-6f, 1e-6f, ActivationType::kUint8);
  EXPECT_TRUE(p.floored);
  EXPECT_EQ(p.scale, kMinActivationScale);
  EXPECT_EQ(p.zero_point, 100);
}

TEST(ActivationQuantParams, InvalidRangesThrowRangeError) {
  for (auto type : {ActivationType::kUint8, ActivationType::kInt8}) {
    ExpectRangeError(kNaN, 1.f, type);
    ExpectRangeError(-1.f, kNaN, type);
    ExpectRangeError(-kInf, 1.f, type);
    ExpectRangeError(0.f, kInf, type);
    ExpectRangeError(2.f, 1.f, type);
  }
}

// --- Weights -----------------------------------------------------------------

TEST(QuantizeWeight, PerChannelAxis0) {
  // Row 0: max 127 -> scale 1; -63.5 -> -64, 2.5 -> 2 (half to even).
  // Row 1: max 31.75 = 127/4 -> scale 0.25; 10 -> 40, 0.25 -> 1.
  const std::vector<float> w = {127.f, -63.5f, 2.5f, -31.75f, 10.f, 0.25f};
  const WeightQuant q = QuantizeWeight(w, {2, 3}, 0, 127, {});
  EXPECT_EQ(q.scales, (std::vector<float>{1.f, 0.25f}));
  EXPECT_EQ(q.values, (std::vector<int8_t>{127, -64, 2, -127, 40, 1}));
  EXPECT_FALSE(q.enlarged);
}

TEST(QuantizeWeight, PerChannelAxis1) {
  // Columns: {127, -254} -> scale 2; {-63.5, 31.75} -> 0.5;
  // {127/128, -0.5} -> 1/128.
  const std::vector<float> w = {127.f, -63.5f, 0.9921875f,
                                -254.f, 31.75f, -0.5f};
  const WeightQuant q = QuantizeWeight(w, {2, 3}, 1, 127, {});
  EXPECT_EQ(q.scales, (std::vector<float>{2.f, 0.5f, 0.0078125f}));
  // 63.5 -> 64, -127, 127 / -127, 63.5 -> 64, -64.
  EXPECT_EQ(q.values, (std::vector<int8_t>{64, -127, 127, -127, 64, -64}));
}

TEST(QuantizeWeight, MiddleAxisOfRank3) {
  // dims {2, 2, 2}, axis 1: element (o, c, i) at o*4 + c*2 + i.
  // Channel 0 = {1, -127, 5, 6}: scale 1. Channel 1 = {2, 3, 63.5, -4}:
  // scale 0.5.
  const std::vector<float> w = {1.f, -127.f, 2.f, 3.f, 5.f, 6.f, 63.5f, -4.f};
  const WeightQuant q = QuantizeWeight(w, {2, 2, 2}, 1, 127, {});
  EXPECT_EQ(q.scales, (std::vector<float>{1.f, 0.5f}));
  EXPECT_EQ(q.values, (std::vector<int8_t>{1, -127, 4, 6, 5, 6, 127, -8}));
}

TEST(QuantizeWeight, PerTensor) {
  // max 254 -> scale 2: 63.5 -> 64, -31.75 -> -32, 0.496 -> 0, -127,
  // 15.875 -> 16, -0.25 -> 0.
  const std::vector<float> w = {127.f, -63.5f, 0.9921875f,
                                -254.f, 31.75f, -0.5f};
  const WeightQuant q = QuantizeWeight(w, {2, 3}, -1, 127, {});
  EXPECT_EQ(q.scales, (std::vector<float>{2.f}));
  EXPECT_EQ(q.values, (std::vector<int8_t>{64, -32, 0, -127, 16, 0}));
}

TEST(QuantizeWeight, ReducedRange) {
  // qmax 63: max 126 -> scale 2; -63 -> -31.5 -> -32; 1.5 -> 0.75 -> 1.
  const WeightQuant q = QuantizeWeight({126.f, -63.f, 1.5f}, {3}, -1, 63, {});
  EXPECT_EQ(q.scales, (std::vector<float>{2.f}));
  EXPECT_EQ(q.values, (std::vector<int8_t>{63, -32, 1}));
  for (int8_t v : q.values) EXPECT_LE(std::abs(v), 63);
}

TEST(QuantizeWeight, DeadChannelGetsAPositiveScale) {
  const WeightQuant q = QuantizeWeight({0.f, 0.f, 127.f, -3.f}, {2, 2}, 0,
                                       127, {});
  ASSERT_EQ(q.scales.size(), 2u);
  EXPECT_GT(q.scales[0], 0.f);
  EXPECT_TRUE(std::isfinite(q.scales[0]));
  EXPECT_EQ(q.scales[1], 1.f);
  EXPECT_EQ(q.values, (std::vector<int8_t>{0, 0, 127, -3}));
  EXPECT_FALSE(q.enlarged);
}

TEST(QuantizeWeight, MinScalesEnlargeSmallChannels) {
  // Channel 0 is dead (scale 0 < 0.5), channel 1 has scale 1 >= 0.25.
  const WeightQuant q = QuantizeWeight({0.f, 0.f, 127.f, -3.f}, {2, 2}, 0,
                                       127, {0.5f, 0.25f});
  EXPECT_EQ(q.scales, (std::vector<float>{0.5f, 1.f}));
  EXPECT_EQ(q.values, (std::vector<int8_t>{0, 0, 127, -3}));
  EXPECT_TRUE(q.enlarged);
}

TEST(QuantizeWeight, AxisOutOfRangeThrows) {
  try {
    QuantizeWeight({1.f, 2.f}, {2}, 1, 127, {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  }
}

// --- Bias --------------------------------------------------------------------

TEST(QuantizeBias, ExactScalesRoundHalfToEven) {
  // Bias scales 0.5 * 0.25 = 0.125 and 0.5 * 2 = 1.
  // 1 / 0.125 = 8; -0.1875 / 0.125 = -1.5 -> -2; 2.5 / 1 -> 2.
  std::vector<float> scales;
  const std::vector<int32_t> q = QuantizeBias(
      {1.f, -0.1875f, 2.5f}, 0.5f, {0.25f, 0.25f, 2.f}, &scales);
  EXPECT_EQ(q, (std::vector<int32_t>{8, -2, 2}));
  EXPECT_EQ(scales, (std::vector<float>{0.125f, 0.125f, 1.f}));
}

TEST(QuantizeBias, ScaleIsTheFloat32ProductOfTheStoredScales) {
  const float in = 0.1f;
  const std::vector<float> ws = {0.3f, 0.07f};
  std::vector<float> scales;
  const std::vector<int32_t> q = QuantizeBias({0.5f, -0.25f}, in, ws, &scales);
  ASSERT_EQ(scales.size(), 2u);
  for (size_t c = 0; c < 2; ++c) {
    // The exact product of two floats fits a double; rounding it once to
    // float32 is what a runtime multiplying the stored scales computes.
    const float want =
        static_cast<float>(static_cast<double>(in) *
                           static_cast<double>(ws[c]));
    EXPECT_EQ(scales[c], want) << "channel " << c;
  }
  // 0.5 / 0.03 = 16.67 -> 17; -0.25 / 0.007 = -35.71 -> -36.
  EXPECT_EQ(q, (std::vector<int32_t>{17, -36}));
}

TEST(QuantizeBias, OneWeightScaleServesEveryChannel) {
  std::vector<float> scales;
  const std::vector<int32_t> q =
      QuantizeBias({1.f, -3.f}, 0.5f, {0.5f}, &scales);
  EXPECT_EQ(q, (std::vector<int32_t>{4, -12}));
  EXPECT_EQ(scales, (std::vector<float>{0.25f, 0.25f}));
}

TEST(MinWeightScalesForBias, TinyChannelIsEnlargedSoTheBiasFits) {
  // Channel 0 has weights ~1e-30: its natural scale would make the bias
  // 10 / (0.01 * 1e-32) overflow int32. Channel 1 is ordinary.
  const float in = 0.01f;
  const std::vector<float> bias = {10.f, 0.5f};
  const std::vector<float> w = {1e-30f, -1e-30f, 1.27f, -0.5f};
  const std::vector<float> mins = MinWeightScalesForBias(bias, in, 2);
  ASSERT_EQ(mins.size(), 2u);
  // need = |b| / (in * 2^30).
  EXPECT_GE(mins[0], 10.0 / (0.01 * 1073741824.0));
  EXPECT_LT(mins[0], 1.001 * 10.0 / (0.01 * 1073741824.0));
  const WeightQuant q = QuantizeWeight(w, {2, 2}, 0, 127, mins);
  EXPECT_TRUE(q.enlarged);
  EXPECT_EQ(q.scales[0], mins[0]);
  EXPECT_EQ(q.scales[1], 1.27f / 127.f);  // left alone
  std::vector<float> bs;
  const std::vector<int32_t> b = QuantizeBias(bias, in, q.scales, &bs);
  EXPECT_LE(std::abs(static_cast<int64_t>(b[0])), int64_t{1} << 30);
  EXPECT_GT(b[0], (int64_t{1} << 30) - 1000);  // enlarged just enough
  EXPECT_EQ(b[1], static_cast<int32_t>(std::nearbyint(0.5 / bs[1])));
}

TEST(MinWeightScalesForBias, ZeroBiasAsksForNoFloor) {
  // A dead channel whose bias is 0 needs no enlargement: it keeps the
  // ordinary dead-channel scale and is not reported as enlarged.
  const std::vector<float> mins = MinWeightScalesForBias({0.f, 1.f}, 0.5f, 2);
  EXPECT_EQ(mins[0], 0.f);
  const WeightQuant q =
      QuantizeWeight({0.f, 0.f, 127.f, 1.f}, {2, 2}, 0, 127, mins);
  EXPECT_FALSE(q.enlarged);
  EXPECT_GE(q.scales[0], std::numeric_limits<float>::min());  // not denormal
}

}  // namespace
}  // namespace onnxquant
