// The hand-written passes of SummarizeNonzeroSlots, each one the CPU runs,
// against the definition computed in double.
#include "onnxquant/histogram_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace onnxquant {
namespace histogram_kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The paths this CPU runs (none on a CPU without AVX2).
std::vector<NonzeroPath> RunnablePaths() {
  std::vector<NonzeroPath> paths;
  for (NonzeroPath p : {NonzeroPath::kAvx512, NonzeroPath::kAvx2}) {
    if (static_cast<int>(p) >= static_cast<int>(BestNonzeroPath())) {
      paths.push_back(p);
    }
  }
  return paths;
}

struct Expected {
  std::vector<int32_t> slots;  // of the values that are not +-0, in order
  float lo = kInf, hi = -kInf;
  int64_t zeros = 0;
};

// The definition: slot floor(v * 2^-exponent) - first, in double (exact).
Expected Define(const std::vector<float>& v, const Grid& grid) {
  Expected e;
  for (float x : v) {
    e.lo = std::min(e.lo, x);
    e.hi = std::max(e.hi, x);
    if (x == 0.f) {
      ++e.zeros;
      continue;
    }
    const double bin = std::floor(std::ldexp(static_cast<double>(x),
                                             -grid.exponent));
    e.slots.push_back(static_cast<int32_t>(static_cast<int64_t>(bin) -
                                           grid.first));
  }
  e.lo += 0.f;  // -0.0 reads +0.0
  e.hi += 0.f;
  return e;
}

void ExpectPathsMatch(const std::vector<float>& v, const Grid& grid,
                      bool check_slots = true) {
  const Expected want = Define(v, grid);
  for (NonzeroPath path : RunnablePaths()) {
    SCOPED_TRACE(static_cast<int>(path));
    // Exactly n slots of room, in a vector so that sanitizers see overruns.
    std::vector<int32_t> slots(v.size());
    BlockSummary s{};
    const int32_t kept = SummarizeNonzeroSlotsOn(
        path, v.data(), static_cast<int32_t>(v.size()), grid, slots.data(),
        &s);
    ASSERT_EQ(kept, static_cast<int32_t>(want.slots.size()));
    EXPECT_EQ(s.zeros, want.zeros);
    EXPECT_EQ(s.nan + s.pos_inf + s.neg_inf, 0);
    EXPECT_EQ(s.lo, want.lo);
    EXPECT_EQ(s.hi, want.hi);
    EXPECT_FALSE(std::signbit(s.lo) && s.lo == 0.f);
    if (check_slots) {
      slots.resize(kept);
      EXPECT_EQ(slots, want.slots);
    }
  }
}

// Bins of width 2^-8 over [-8, 8): indices -2048 .. 2047.
constexpr Grid kEighths{-8, -2048, 4096};

TEST(SummarizeNonzeroSlots, MatchesTheDefinitionAtEveryLengthAndTail) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 2.f);
  for (int n : {0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 4095, 4096}) {
    SCOPED_TRACE(n);
    std::vector<float> v(n);
    for (float& x : v) {
      const float g = std::clamp(normal(rng), -7.9f, 7.9f);
      // A ReLU-like mix: a third zeros, some of them -0.0.
      const unsigned r = rng() % 6;
      x = r == 0 ? 0.f : r == 1 ? -0.f : g;
    }
    ExpectPathsMatch(v, kEighths);
  }
}

TEST(SummarizeNonzeroSlots, TailsOfOneSignKeepTheirMinAndMax) {
  // Lanes past the end must not pass for zeros in the min or the max.
  for (int n : {1, 5, 9, 17, 23}) {
    SCOPED_TRACE(n);
    std::vector<float> positive(n), negative(n);
    for (int i = 0; i < n; ++i) {
      positive[i] = 1.f + 0.25f * static_cast<float>(i % 5);
      negative[i] = -positive[i];
    }
    ExpectPathsMatch(positive, kEighths);
    ExpectPathsMatch(negative, kEighths);
  }
}

TEST(SummarizeNonzeroSlots, PutsBinEdgesAndNegativesInTheRightBin) {
  // Exact multiples of the width start their bin; negatives floor.
  std::vector<float> v;
  for (int k = -2048; k < 2048; k += 7) {
    v.push_back(std::ldexp(static_cast<float>(k), -8));
    v.push_back(std::nextafter(v.back(), -kInf));
  }
  v.push_back(-std::ldexp(1.f, -30));  // tiny negative: bin -1
  v.push_back(std::ldexp(1.f, -30));   // tiny positive: bin 0
  ExpectPathsMatch(v, kEighths);
}

TEST(SummarizeNonzeroSlots, NegativeValuesWhoseProductUnderflowsAreInBinMinusOne) {
  // Bins of width 4: the smallest subnormals scale to below the smallest
  // float, and their products round to +-0.
  const float denorm = std::numeric_limits<float>::denorm_min();
  std::vector<float> v = {-denorm, denorm, -2 * denorm, 3 * denorm, 0.f,
                          -0.f,    100.f,  -3.f,        -4.f,      4.f};
  for (int i = 0; i < 37; ++i) v.push_back(i % 2 ? -denorm : denorm);
  ExpectPathsMatch(v, Grid{2, -1, 27});
}

TEST(SummarizeNonzeroSlots, SummarizesBlocksThatDoNotFitTheGrid) {
  // Values beyond the grid: the slots mean nothing, the summary is exact.
  std::vector<float> v(100, 1.f);
  v[3] = -1e6f;
  v[50] = 0.f;
  v[98] = 3e7f;
  ExpectPathsMatch(v, kEighths, /*check_slots=*/false);
}

TEST(SummarizeNonzeroSlots, DeclinesBlocksWithNaNInfinityOrExtremes) {
  // 1e30 and float32's lowest: the extremes masks hold.
  for (float special : {std::numeric_limits<float>::quiet_NaN(),
                        std::numeric_limits<float>::signaling_NaN(), kInf,
                        -kInf, 1e30f, -std::numeric_limits<float>::max()}) {
    for (int at : {0, 5, 16, 39}) {  // 39: in a tail for both vector widths
      std::vector<float> v(40, 0.5f);
      v[at] = special;
      for (NonzeroPath path : RunnablePaths()) {
        std::vector<int32_t> slots(v.size());
        BlockSummary s{};
        EXPECT_EQ(SummarizeNonzeroSlotsOn(path, v.data(), 40, kEighths,
                                          slots.data(), &s),
                  -1)
            << "path " << static_cast<int>(path) << ", special at " << at;
      }
    }
  }
}

TEST(SummarizeNonzeroSlots, NoPathDeclinesEveryBlock) {
  std::vector<float> v = {1.f, 0.f};
  std::vector<int32_t> slots(2);
  BlockSummary s{};
  EXPECT_EQ(SummarizeNonzeroSlotsOn(NonzeroPath::kNone, v.data(), 2, kEighths,
                                    slots.data(), &s),
            -1);
}

}  // namespace
}  // namespace histogram_kernels
}  // namespace onnxquant
