// Weight range search (weight_range_search.h) against a brute force written
// here: every candidate's squared error computed channel by channel.
#include "onnxquant/weight_range_search.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "onnxquant/arithmetic.h"
#include "onnxquant/error.h"

namespace onnxquant {
namespace {

// The squared error of rounding `x` with scale `s` into [-q, q], written
// without the engine's helpers.
double BruteError(const std::vector<float>& x, double s, int q) {
  double e = 0.0;
  for (float v : x) {
    double code = std::nearbyint(v / s);
    if (code > q) code = q;
    if (code < -q) code = -q;
    e += (v - code * s) * (v - code * s);
  }
  return e;
}

// The brute-force optimum over the same candidate grid.
double BruteBest(const std::vector<float>& x, int q, bool pow2) {
  double a = 0.0;
  for (float v : x) a = std::max(a, std::fabs(static_cast<double>(v)));
  double best = -1.0, best_err = 0.0;
  if (pow2) {
    const double top = std::exp2(std::ceil(std::log2(a / q)));
    for (int j = 0; j < 12; ++j) {
      const double s = top / std::exp2(j);
      const double e = BruteError(x, s, q);
      if (best < 0 || e < best_err) best = s, best_err = e;
    }
  } else {
    for (int k = 100; k >= 10; --k) {
      const double s = static_cast<float>(static_cast<float>(a) * k / 100.f /
                                          static_cast<float>(q));
      const double e = BruteError(x, s, q);
      if (best < 0 || e < best_err) best = s, best_err = e;
    }
  }
  return best;
}

// A [4, 3, 2, 2] Conv weight: Gaussian values, one large outlier in
// channels 1 and 3.
std::vector<float> OutlierWeight() {
  std::mt19937 gen(7);
  std::normal_distribution<float> n(0.f, 0.1f);
  std::vector<float> w(4 * 12);
  for (float& v : w) v = n(gen);
  w[12 + 5] = 2.5f;
  w[36 + 2] = -4.f;
  return w;
}

TEST(WeightRangeSearch, MatchesTheBruteForcePerChannel) {
  const std::vector<float> w = OutlierWeight();
  for (bool pow2 : {false, true}) {
    const auto s = SearchWeightScales(w, {4, 3, 2, 2}, 0, {127, 127, 127, 127},
                                      pow2);
    ASSERT_EQ(s.size(), 4u);
    for (int c = 0; c < 4; ++c) {
      std::vector<float> ch(w.begin() + 12 * c, w.begin() + 12 * (c + 1));
      EXPECT_FLOAT_EQ(s[c], static_cast<float>(BruteBest(ch, 127, pow2)))
          << "channel " << c << " pow2 " << pow2;
    }
  }
}

TEST(WeightRangeSearch, ClipsOutliersAndBeatsMaxAbs) {
  // 2000 standard normal values and one at 10: with 4-bit codes, clipping
  // the outlier costs less than rounding everything else coarsely.
  std::mt19937 gen(3);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> ch(2000);
  for (float& v : ch) v = n(gen);
  ch[17] = 10.f;
  const auto s = SearchWeightScales(ch, {2000}, -1, {7}, false);
  EXPECT_LT(s[0] * 7.f, 6.f);  // clipped well below max|w|
  EXPECT_LT(BruteError(ch, s[0], 7), 0.5 * BruteError(ch, 10.0 / 7.0, 7));
  EXPECT_FLOAT_EQ(s[0], static_cast<float>(BruteBest(ch, 7, false)));
}

TEST(WeightRangeSearch, PerTensorAndInnerAxis) {
  const std::vector<float> w = OutlierWeight();
  const auto t = SearchWeightScales(w, {4, 3, 2, 2}, -1, {127}, false);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_FLOAT_EQ(t[0], static_cast<float>(BruteBest(w, 127, false)));
  // Axis 1 of a [4, 3, 4] tensor (a Gemm/MatMul-like layout).
  const auto a = SearchWeightScales(w, {4, 3, 4}, 1, {127, 127, 127}, false);
  for (int c = 0; c < 3; ++c) {
    std::vector<float> ch;
    for (int o = 0; o < 4; ++o)
      for (int i = 0; i < 4; ++i) ch.push_back(w[(o * 3 + c) * 4 + i]);
    EXPECT_FLOAT_EQ(a[c], static_cast<float>(BruteBest(ch, 127, false)));
  }
}

TEST(WeightRangeSearch, QuantizeWeightUsesTheSearchAndZeroChannels) {
  std::vector<float> w = OutlierWeight();
  for (int i = 24; i < 36; ++i) w[i] = 0.f;  // channel 2 dead
  const WeightQuant q = QuantizeWeight(w, {4, 3, 2, 2}, 0, 127, {}, {},
                                       PowerOfTwo::kCeil, WeightRange::kMse);
  const auto s = SearchWeightScales(w, {4, 3, 2, 2}, 0, {127, 127, 127, 127},
                                    true);
  EXPECT_EQ(q.scales[0], s[0]);
  EXPECT_EQ(q.scales[3], s[3]);
  EXPECT_EQ(q.scales[2], 1.f);  // an all-zero channel: any scale works
  // The codes are those of the searched scale, clamped.
  EXPECT_EQ(q.values[36 + 2],
            static_cast<int8_t>(std::max(-127.0, std::nearbyint(-4.0 / s[3]))));
}

TEST(WeightRangeSearch, RejectsWrongArguments) {
  const std::vector<float> w(12, 1.f);
  EXPECT_THROW(SearchWeightScales(w, {3, 4}, 0, {127}, false), Error);
  EXPECT_THROW(SearchWeightScales(w, {3, 4}, 2, {127, 127, 127}, false),
               Error);
  EXPECT_THROW(SearchWeightScales(w, {3, 5}, 0, {127, 127, 127}, false),
               Error);
}

}  // namespace
}  // namespace onnxquant
