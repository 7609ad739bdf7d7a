#include "onnxquant/kernel_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <vector>

#include "onnxquant/arithmetic.h"
#include "onnxquant/error.h"

namespace onnxquant {
namespace {

// The reference: every pair sum of the kernel, written out from the
// definition (channels-last reduction order, pairs (2p, 2p + 1), an odd
// length padded with a zero), with no filtering of pairs.
struct Reference {
  int64_t saturated = 0;
  int32_t peak = 0;
  void Add(const std::vector<int32_t>& a, const std::vector<int32_t>& w) {
    for (size_t k = 0; k < a.size(); k += 2) {
      const int32_t v = a[k] * w[k] + (k + 1 < a.size() ? a[k + 1] * w[k + 1] : 0);
      if (v > 32767 || v < -32768) ++saturated;
      peak = std::max(peak, std::abs(v));
    }
  }
};

Reference ReferenceConv(const std::vector<uint8_t>& x, uint8_t pad,
                        const ConvGeometry& g,
                        const std::vector<int8_t>& w) {
  Reference ref;
  const int64_t cg = g.channels / g.group, mg = g.out_channels / g.group;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t o = 0; o < g.out_channels; ++o) {
      const int64_t grp = o / mg;
      for (int64_t y = 0; y < g.OutHeight(); ++y) {
        for (int64_t z = 0; z < g.OutWidth(); ++z) {
          std::vector<int32_t> a, ww;
          for (int64_t i = 0; i < g.kernel_h; ++i) {
            for (int64_t j = 0; j < g.kernel_w; ++j) {
              for (int64_t c = 0; c < cg; ++c) {  // channel fastest
                const int64_t iy = y * g.stride_h - g.pad_top + i * g.dilation_h;
                const int64_t ix = z * g.stride_w - g.pad_left + j * g.dilation_w;
                const bool in = iy >= 0 && iy < g.height && ix >= 0 && ix < g.width;
                a.push_back(in ? x[((n * g.channels + grp * cg + c) * g.height + iy) *
                                       g.width + ix]
                               : pad);
                ww.push_back(w[((o * cg + c) * g.kernel_h + i) * g.kernel_w + j]);
              }
            }
          }
          ref.Add(a, ww);
        }
      }
    }
  }
  return ref;
}

std::vector<uint8_t> RandomCodes(size_t n, std::mt19937* rng, int lo = 0) {
  std::uniform_int_distribution<int> d(lo, 255);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(d(*rng));
  return v;
}

// Weights skewed towards large codes, so that many pairs can saturate.
std::vector<int8_t> RandomWeights(size_t n, std::mt19937* rng) {
  std::uniform_int_distribution<int> d(-127, 127);
  std::vector<int8_t> v(n);
  for (auto& x : v) {
    const int a = d(*rng), b = d(*rng);
    x = static_cast<int8_t>(std::abs(a) > std::abs(b) ? a : b);
  }
  return v;
}

TEST(ConvFilters, OrdersTheReductionChannelsLast) {
  ConvGeometry g;
  g.channels = 3;
  g.out_channels = 1;
  g.kernel_h = 1;
  g.kernel_w = 2;
  const PairedFilters f = ConvFilters(std::vector<int8_t>(6, 1), g);
  // Filter element c * taps + tap; k = tap * 3 + c; 6 slots, no padding.
  EXPECT_EQ(f.slots, (std::vector<int32_t>{0, 2, 4, 1, 3, 5}));
  g.kernel_w = 1;
  const PairedFilters odd = ConvFilters(std::vector<int8_t>(3, 1), g);
  EXPECT_EQ(odd.slots, (std::vector<int32_t>{0, 1, 2, -1}));
}

TEST(SimulateConv, MatchesEveryPairSumOfTheDefinition) {
  std::mt19937 rng(7);
  struct Case {
    int64_t c, m, group, kh, kw, stride, dilation, pad;
  };
  const Case cases[] = {{3, 4, 1, 3, 3, 1, 1, 1},  {4, 6, 1, 3, 3, 2, 1, 1},
                        {8, 8, 2, 3, 3, 1, 2, 2},  {5, 2, 1, 1, 1, 1, 1, 0},
                        {6, 6, 3, 2, 3, 2, 1, 1},  {2, 3, 1, 5, 5, 1, 1, 2}};
  for (const Case& k : cases) {
    ConvGeometry g;
    g.batch = 2;
    g.channels = k.c;
    g.height = 7;
    g.width = 6;
    g.out_channels = k.m;
    g.group = k.group;
    g.kernel_h = k.kh;
    g.kernel_w = k.kw;
    g.stride_h = g.stride_w = k.stride;
    g.dilation_h = g.dilation_w = k.dilation;
    g.pad_top = g.pad_left = g.pad_bottom = g.pad_right = k.pad;
    const auto x = RandomCodes(g.batch * g.channels * g.height * g.width, &rng, 120);
    const auto w = RandomWeights(k.m * (k.c / k.group) * k.kh * k.kw, &rng);
    const uint8_t pad = 200;
    const PairSumStats s = SimulateConv(x, pad, g, ConvFilters(w, g));
    const Reference ref = ReferenceConv(x, pad, g, w);
    EXPECT_GT(ref.saturated, 0) << "the case should saturate somewhere";
    EXPECT_EQ(s.saturated, ref.saturated) << "c=" << k.c << " group=" << k.group;
    EXPECT_EQ(s.peak, std::max(ref.peak, s.peak));
    // Pairs that cannot saturate are skipped: the peak is exact whenever
    // it exceeds what a skipped pair can reach (255 * 128).
    if (ref.peak > 255 * 128) EXPECT_EQ(s.peak, ref.peak);
    EXPECT_EQ(s.rows, g.batch * g.OutHeight() * g.OutWidth());
  }
}

TEST(SimulateGemm, MatchesEveryPairSumOfTheDefinition) {
  std::mt19937 rng(11);
  for (const int64_t k : {1, 2, 7, 64, 65}) {
    for (const bool transposed : {false, true}) {
      const int64_t rows = 9, n = 5;
      const auto a = RandomCodes(rows * k, &rng, 100);
      const auto w = RandomWeights(k * n, &rng);
      const PairSumStats s = SimulateGemm(a, rows, GemmFilters(w, k, n, transposed));
      Reference ref;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t o = 0; o < n; ++o) {
          std::vector<int32_t> av, wv;
          for (int64_t i = 0; i < k; ++i) {
            av.push_back(a[r * k + i]);
            wv.push_back(transposed ? w[o * k + i] : w[i * n + o]);
          }
          ref.Add(av, wv);
        }
      }
      EXPECT_EQ(s.saturated, ref.saturated) << "k=" << k;
      if (ref.peak > 255 * 128) EXPECT_EQ(s.peak, ref.peak) << "k=" << k;
      EXPECT_EQ(s.pair_sums, rows * n * ((k + 1) / 2));
    }
  }
}

TEST(SimulateGemm, PairsAdjacentIndicesOnly) {
  // Two weights of 127 at k = 1 and 2 are in different pairs: no pair sum
  // exceeds 255 * 127; at k = 0 and 1 they share one: 2 * 255 * 127.
  const std::vector<uint8_t> a(4, 255);
  std::vector<int8_t> apart = {0, 127, 127, 0};
  std::vector<int8_t> together = {127, 127, 0, 0};
  EXPECT_EQ(SimulateGemm(a, 1, GemmFilters(apart, 4, 1, false)).saturated, 0);
  const PairSumStats s = SimulateGemm(a, 1, GemmFilters(together, 4, 1, false));
  EXPECT_EQ(s.saturated, 1);
  EXPECT_EQ(s.peak, 2 * 255 * 127);
}

TEST(SimulateGemm, WeighsTheErrorOfEachOutput) {
  // Two saturated pairs in one output add their excess before squaring.
  const std::vector<uint8_t> a(4, 255);
  PairedFilters f = GemmFilters({127, 127, 127, 127}, 4, 1, true);
  f.unit = {0.5};
  const PairSumStats s = SimulateGemm(a, 1, f);
  const double excess = 2.0 * (2 * 255 * 127 - 32767);
  EXPECT_EQ(s.saturated, 2);
  EXPECT_DOUBLE_EQ(s.error_energy, excess * 0.5 * excess * 0.5);
  EXPECT_DOUBLE_EQ(s.max_error, excess * 0.5);
}

TEST(PairSumBounds, BoundEveryObservedPeak) {
  std::mt19937 rng(3);
  const int64_t k = 32, n = 6, rows = 50;
  const auto w = RandomWeights(k * n, &rng);
  const PairedFilters f = GemmFilters(w, k, n, false);
  const std::vector<int32_t> bounds = PairSumBounds(f, 255);
  const PairSumStats s = SimulateGemm(RandomCodes(rows * k, &rng), rows, f);
  for (int64_t o = 0; o < n; ++o) EXPECT_LE(s.filter_peak[o], bounds[o]);
  const PairedFilters two = GemmFilters({127, 127}, 2, 1, false);
  EXPECT_EQ(PairSumBounds(two, 255)[0], 2 * 255 * 127);
  const PairedFilters opposite = GemmFilters({127, -100}, 2, 1, false);
  EXPECT_EQ(PairSumBounds(opposite, 255)[0], 255 * 127);
}

TEST(FittingQmax, RequantizedWeightsFitTheObservedPairSums) {
  // Per channel, requantizing to FittingQmax(peak) leaves no saturated pair
  // sum on the data that gave the peak.
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t k = 48, n = 8, rows = 200;
  std::vector<float> w(k * n);  // [N, K], per-channel axis 0
  for (auto& v : w) v = normal(rng);
  const auto a = RandomCodes(rows * k, &rng, 150);
  const WeightQuant full = QuantizeWeight(w, {n, k}, 0, 127, {});
  const PairSumStats before =
      SimulateGemm(a, rows, GemmFilters(full.values, k, n, true));
  ASSERT_GT(before.saturated, 0);
  std::vector<int32_t> qmax(n);
  for (int64_t o = 0; o < n; ++o) qmax[o] = FittingQmax(before.filter_peak[o]);
  EXPECT_LT(*std::min_element(qmax.begin(), qmax.end()), 127);
  const WeightQuant fitted = QuantizeWeight(w, {n, k}, 0, 127, {}, qmax);
  const PairSumStats after =
      SimulateGemm(a, rows, GemmFilters(fitted.values, k, n, true));
  EXPECT_EQ(after.saturated, 0);
  for (int64_t o = 0; o < n; ++o) {
    if (before.filter_peak[o] <= 32767) EXPECT_EQ(qmax[o], 127);
  }
  EXPECT_EQ(FittingQmax(32767), 127);
  EXPECT_EQ(FittingQmax(2 * 255 * 127), 127 * (32767 - 510) / (2 * 255 * 127));
}

TEST(QuantizeWeight, TakesAQmaxPerChannel) {
  const WeightQuant q =
      QuantizeWeight({1.f, -2.f, 4.f, 8.f}, {2, 2}, 0, 127, {}, {100, 50});
  EXPECT_FLOAT_EQ(q.scales[0], 2.f / 100.f);
  EXPECT_FLOAT_EQ(q.scales[1], 8.f / 50.f);
  EXPECT_EQ(q.values, (std::vector<int8_t>{50, -100, 25, 50}));
  EXPECT_THROW(QuantizeWeight({1.f, 2.f}, {2}, 0, 127, {}, {1}), Error);
  EXPECT_THROW(QuantizeWeight({1.f, 2.f}, {2}, 0, 127, {}, {0, 127}), Error);
}

}  // namespace
}  // namespace onnxquant
