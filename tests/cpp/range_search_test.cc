// Range searches on small hand-computed histograms, and the properties every
// search keeps. range_search_brute_force_test.cc checks each search against
// a brute-force search of the same candidates on the raw samples.
#include "onnxquant/range_search.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "onnxquant/error.h"
#include "range_search_test_util.h"

namespace onnxquant {
namespace {

using testing_util::HistogramOf;
using testing_util::Samples;
using testing_util::Shape;

constexpr Symmetry kSym = Symmetry::kSymmetric;
constexpr Symmetry kAsym = Symmetry::kAsymmetric;

struct Method {
  std::string name;
  std::function<Range(const Histogram&, Symmetry)> search;
};

std::vector<Method> AllMethods() {
  EntropyOptions no_spike;
  no_spike.ignore_zero_spike = true;
  return {
      {"MinMax", MinMaxRange},
      {"Percentile99.99",
       [](const Histogram& h, Symmetry s) {
         return PercentileRange(h, s, 99.99);
       }},
      {"Entropy",
       [](const Histogram& h, Symmetry s) {
         return EntropyRange(h, s, EntropyOptions{});
       }},
      {"EntropyNoZeroSpike",
       [no_spike](const Histogram& h, Symmetry s) {
         return EntropyRange(h, s, no_spike);
       }},
      {"Mse", MseRange},
      {"Sqnr", SqnrRange},
  };
}

void ExpectRange(const Range& r, float lo, float hi) {
  EXPECT_FLOAT_EQ(r.min, lo);
  EXPECT_FLOAT_EQ(r.max, hi);
}

// ---------------------------------------------------------------------------
// Every method.
// ---------------------------------------------------------------------------

TEST(RangeSearch, EmptyAndAllZeroHistogramsGiveZeroRange) {
  const Histogram empty;
  const Histogram zeros = HistogramOf({0.f, -0.f, 0.f});
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  const Histogram only_nan = HistogramOf({kNaN, kNaN});
  for (const Method& m : AllMethods()) {
    for (Symmetry s : {kSym, kAsym}) {
      for (const Histogram* h : {&empty, &zeros, &only_nan}) {
        const Range r = m.search(*h, s);
        EXPECT_EQ(r.min, 0.f) << m.name;
        EXPECT_EQ(r.max, 0.f) << m.name;
      }
    }
  }
}

TEST(RangeSearch, EveryRangeContainsZeroAndSymmetricOnesAreSymmetric) {
  const std::vector<std::vector<float>> data = {
      Samples(Shape::kGaussian, 20000, 1, false),
      Samples(Shape::kRelu, 20000, 2, false),
      {5.f, 5.5f, 6.f, 5.25f},      // far from 0, positive
      {-6.f, -5.5f, -5.f, -5.25f},  // far from 0, negative
      {3.f},
      {-3.f},
  };
  for (const std::vector<float>& v : data) {
    const Histogram h = HistogramOf(v);
    for (const Method& m : AllMethods()) {
      for (Symmetry s : {kSym, kAsym}) {
        const Range r = m.search(h, s);
        EXPECT_LE(r.min, 0.f) << m.name;
        EXPECT_GE(r.max, 0.f) << m.name;
        EXPECT_LT(r.min, r.max) << m.name;
        if (s == kSym && h.min() < 0) EXPECT_EQ(r.min, -r.max) << m.name;
      }
    }
  }
}

TEST(RangeSearch, SymmetricWithoutNegativesGivesZeroToA) {
  const Histogram h = HistogramOf(Samples(Shape::kRelu, 50000, 3, false));
  ASSERT_EQ(h.min(), 0.f);
  for (const Method& m : AllMethods()) {
    const Range r = m.search(h, kSym);
    EXPECT_EQ(r.min, 0.f) << m.name;
    EXPECT_GT(r.max, 0.f) << m.name;
    EXPECT_LE(r.max, h.max()) << m.name;
    // Without negatives, both forms search [0, a] with 256 levels (but the
    // asymmetric percentile cuts its tails differently).
    if (m.name.rfind("Percentile", 0) == 0) continue;
    const Range asym = m.search(h, kAsym);
    EXPECT_EQ(asym.min, 0.f) << m.name;
    EXPECT_EQ(asym.max, r.max) << m.name;
  }
}

TEST(RangeSearch, IsDeterministicAndIndependentOfChunkOrder) {
  const std::vector<float> v = Samples(Shape::kLaplacian, 30000, 4, false);
  const Histogram whole = HistogramOf(v);
  Histogram chunked;
  for (int start = static_cast<int>(v.size()); start > 0; start -= 977) {
    const int begin = std::max(0, start - 977);
    chunked.Add(v.data() + begin, start - begin);  // last chunk first
  }
  Histogram merged = HistogramOf({v.begin(), v.begin() + 12345});
  merged.Merge(HistogramOf({v.begin() + 12345, v.end()}));
  ASSERT_TRUE(chunked == whole);
  ASSERT_TRUE(merged == whole);
  for (const Method& m : AllMethods()) {
    for (Symmetry s : {kSym, kAsym}) {
      const Range r = m.search(whole, s);
      for (const Histogram& h : {whole, chunked, merged}) {
        const Range again = m.search(h, s);
        EXPECT_EQ(again.min, r.min) << m.name;
        EXPECT_EQ(again.max, r.max) << m.name;
      }
    }
  }
}

TEST(RangeSearch, ExtremeValuesGiveFiniteRanges) {
  const float big = std::numeric_limits<float>::max();
  const float tiny = std::numeric_limits<float>::denorm_min();
  for (const std::vector<float>& v :
       {std::vector<float>{-big, big, 0.f, 1.f}, {tiny, 2 * tiny, 0.f},
        {-tiny, tiny}, {1e30f, -3e29f, 2e30f}}) {
    const Histogram h = HistogramOf(v);
    for (const Method& m : AllMethods()) {
      for (Symmetry s : {kSym, kAsym}) {
        const Range r = m.search(h, s);
        EXPECT_TRUE(std::isfinite(r.min) && std::isfinite(r.max)) << m.name;
        EXPECT_LE(r.min, 0.f) << m.name;
        EXPECT_GE(r.max, 0.f) << m.name;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// MIN_MAX.
// ---------------------------------------------------------------------------

TEST(MinMaxRange, IsTheObservedExtremesWidenedToZero) {
  const Histogram mixed = HistogramOf({-1.5f, 0.5f, 3.f});
  ExpectRange(MinMaxRange(mixed, kAsym), -1.5f, 3.f);
  ExpectRange(MinMaxRange(mixed, kSym), -3.f, 3.f);
  const Histogram positive = HistogramOf({0.5f, 2.f});
  ExpectRange(MinMaxRange(positive, kAsym), 0.f, 2.f);
  ExpectRange(MinMaxRange(positive, kSym), 0.f, 2.f);
  const Histogram negative = HistogramOf({-2.f, -1.f});
  ExpectRange(MinMaxRange(negative, kAsym), -2.f, 0.f);
  ExpectRange(MinMaxRange(negative, kSym), -2.f, 2.f);
}

// ---------------------------------------------------------------------------
// PERCENTILE.
// ---------------------------------------------------------------------------

std::vector<float> Range1To(int n, bool negatives_too) {
  std::vector<float> v;
  for (int i = 1; i <= n; ++i) {
    v.push_back(static_cast<float>(i));
    if (negatives_too) v.push_back(-static_cast<float>(i));
  }
  return v;
}

TEST(PercentileRange, InterpolatesWithinTheBinOfTheRank) {
  // 1..100 spans 99: bins of 1/32, each value at its bin's low end. The
  // cumulative count reaches 50 at the top of the bin of 50, 50 + 1/32.
  const Histogram h = HistogramOf(Range1To(100, false));
  ASSERT_EQ(h.bin_width(), 1.0 / 32);
  ExpectRange(PercentileRange(h, kSym, 50), 0.f, 50.03125f);
  ExpectRange(PercentileRange(h, kSym, 98.5), 0.f, 99.015625f);  // mid-bin
  ExpectRange(PercentileRange(h, kSym, 49.5), 0.f, 50.015625f);
  // -50..-1 and 1..50; 97 % cuts 1.5 % (1.5 values) from each tail: half
  // way through the bins of -49 (bin [-49, -49 + 1/32)) and of 49.
  const Histogram both = HistogramOf(Range1To(50, true));
  ASSERT_EQ(both.bin_width(), 1.0 / 32);
  ExpectRange(PercentileRange(both, kAsym, 97), -48.984375f, 49.015625f);
  // |x| takes each of 1..50 twice, -k folding into [k - 1/32, k] and k in
  // [k, k + 1/32]: 50 % is reached at the top of 25's bin.
  ExpectRange(PercentileRange(both, kSym, 50), -25.03125f, 25.03125f);
}

TEST(PercentileRange, CountsExactZerosAsAnAtom) {
  // 60 zeros and 1..40 (bins of 1/64): 50 % of |x| is 0; 69.5 % is half
  // way through 10's bin.
  std::vector<float> v(60, 0.f);
  for (float x : Range1To(40, false)) v.push_back(x);
  const Histogram h = HistogramOf(v);
  ASSERT_EQ(h.bin_width(), 1.0 / 64);
  ExpectRange(PercentileRange(h, kSym, 50), 0.f, 0.f);
  ExpectRange(PercentileRange(h, kSym, 69.5), 0.f, 10.0078125f);
}

TEST(PercentileRange, HundredPercentIsMinMax) {
  for (Shape shape : {Shape::kGaussian, Shape::kLaplacian, Shape::kRelu}) {
    const Histogram h = HistogramOf(Samples(shape, 20000, 5, false));
    for (Symmetry s : {kSym, kAsym}) {
      const Range p = PercentileRange(h, s, 100), m = MinMaxRange(h, s);
      EXPECT_EQ(p.min, m.min);
      EXPECT_EQ(p.max, m.max);
    }
  }
}

TEST(PercentileRange, GrowsWithThePercentage) {
  const Histogram h = HistogramOf(Samples(Shape::kLaplacian, 20000, 6, false));
  for (Symmetry s : {kSym, kAsym}) {
    Range last = PercentileRange(h, s, 1);
    for (double p : {10.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
      const Range r = PercentileRange(h, s, p);
      EXPECT_LE(r.min, last.min) << p;
      EXPECT_GE(r.max, last.max) << p;
      last = r;
    }
  }
}

TEST(PercentileRange, RejectsPercentagesOutsideZeroToHundred) {
  const Histogram h = HistogramOf({1.f, 2.f});
  const Histogram empty;
  for (double p : {0.0, -1.0, 100.5, std::nan("")}) {
    for (const Histogram* hist : {&h, &empty}) {
      try {
        PercentileRange(*hist, kSym, p);
        ADD_FAILURE() << "no error for " << p;
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
        EXPECT_NE(std::string(e.what()).find("percentage"), std::string::npos);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// ENTROPY.
// ---------------------------------------------------------------------------

TEST(EntropyRange, OneValueKeepsItsRange) {
  // All mass in the reference's last bin: every threshold below it leaves Q
  // empty where P is not, so only the full range is defined.
  ExpectRange(EntropyRange(HistogramOf({2.5f, 2.5f}), kSym, {}), 0.f, 2.5f);
  const Histogram negative = HistogramOf({-2.5f, -2.5f, -2.5f});
  ExpectRange(EntropyRange(negative, kSym, {}), -2.5f, 2.5f);
  ExpectRange(EntropyRange(negative, kAsym, {}), -2.5f, 0.f);
  // -1 lies at the low end of bin [-1, -1 + w), so the model spreads it
  // over that bin (|x| in [1 - w, 1]); +1, the maximum, is an atom.
  const Histogram two = HistogramOf({-1.f, 1.f, -1.f, 1.f});
  const double w = two.bin_width();
  for (Symmetry s : {kSym, kAsym}) {
    const Range r = EntropyRange(two, s, {});
    EXPECT_NEAR(r.min, -1, w);
    EXPECT_NEAR(r.max, 1, w);
  }
}

TEST(EntropyRange, IgnoringTheZeroSpikeEqualsLeavingZerosOut) {
  // ReLU-like data with 40 % exact zeros. Without the zeros the grid and the
  // reference histogram stay the same (the smallest positive value is far
  // below one reference bin), so ignoring the spike must give the range of
  // the data without zeros.
  std::vector<float> positive;
  for (float x : Samples(Shape::kRelu, 60000, 7, false)) {
    if (x > 0) positive.push_back(x);
  }
  std::vector<float> with_zeros = positive;
  with_zeros.insert(with_zeros.end(), positive.size() * 2 / 3, 0.f);
  const Histogram h = HistogramOf(with_zeros), p = HistogramOf(positive);
  ASSERT_LT(p.min(), h.max() / 2048);
  EntropyOptions ignore;
  ignore.ignore_zero_spike = true;
  const Range ignored = EntropyRange(h, kSym, ignore);
  const Range without = EntropyRange(p, kSym, {});
  EXPECT_NEAR(ignored.max, without.max, h.max() / 2048);
  EXPECT_EQ(ignored.min, 0.f);
  // The spike matters when it is not ignored: it sits in the first bin and
  // the quantized distribution smears it over its whole group.
  const Range kept = EntropyRange(h, kSym, {});
  EXPECT_GT(std::fabs(kept.max - ignored.max), h.max() / 2048);
}

TEST(EntropyRange, RejectsBinCountsOutsideItsDomain) {
  const Histogram h = HistogramOf({1.f, 2.f});
  for (int bins : {0, 128, 255, (1 << 16) + 1}) {
    EntropyOptions o;
    o.num_bins = bins;
    try {
      EntropyRange(h, kSym, o);
      ADD_FAILURE() << "no error for " << bins;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    }
  }
}

// ---------------------------------------------------------------------------
// MSE and SQNR.
// ---------------------------------------------------------------------------

// 2^16 evenly spaced values in (0, 1): 16 per bin of 2^-12, as uniform
// within each bin as the model assumes.
std::vector<float> EvenlySpacedUnit() {
  std::vector<float> v(1 << 16);
  for (size_t i = 0; i < v.size(); ++i) v[i] = (i + 0.5f) / v.size();
  return v;
}

TEST(MseRange, MatchesTheAnalyticOptimumOfAUniformDistribution) {
  // Uniform on [0, 1), range [0, a], step s = a / 255, grid [0, a]:
  // E(a) = a s^2 / 12 + (1 - a)^3 / 3, E'(a) = a^2 / (4 255^2) - (1 - a)^2,
  // zero at 1 - a = a / 510: a = 510 / 511.
  const Histogram h = HistogramOf(EvenlySpacedUnit());
  ASSERT_EQ(h.bin_width(), 1.0 / 4096);
  for (Symmetry s : {kSym, kAsym}) {
    const Range r = MseRange(h, s);
    EXPECT_EQ(r.min, 0.f);
    EXPECT_NEAR(r.max, 510.0 / 511, h.bin_width());
  }
}

TEST(SqnrRange, MatchesTheAnalyticOptimumOfAUniformDistribution) {
  // As above with 3 x clipping: a^2 / (4 255^2) = 3 (1 - a)^2, so
  // 1 - a = a / (510 sqrt(3)).
  const Histogram h = HistogramOf(EvenlySpacedUnit());
  const double a = 1 / (1 + 1 / (510 * std::sqrt(3.0)));
  for (Symmetry s : {kSym, kAsym}) {
    const Range r = SqnrRange(h, s);
    EXPECT_EQ(r.min, 0.f);
    EXPECT_NEAR(r.max, a, h.bin_width());
  }
  // Weighting clipping more keeps more range than MSE does.
  EXPECT_GT(SqnrRange(h, kSym).max, MseRange(h, kSym).max);
}

TEST(SqnrRange, NeverClipsMoreThanMseOnOneTensor) {
  // Minimising R(a) + w C(a), R rising and C falling in a, the first
  // minimiser cannot decrease as w grows from 1 to 3.
  for (Shape shape : {Shape::kGaussian, Shape::kLaplacian, Shape::kRelu}) {
    const Histogram h = HistogramOf(Samples(shape, 50000, 8, false));
    EXPECT_GE(SqnrRange(h, kSym).max, MseRange(h, kSym).max)
        << testing_util::ShapeName(shape);
  }
}

}  // namespace
}  // namespace onnxquant
