// Each range search against a brute-force search of the same candidate grid
// (docs/calibration.md): percentiles against sorted samples, MSE and SQNR
// against the error of quantize-dequantize on the raw samples, ENTROPY
// against a direct KL divergence on the same reference histogram. The
// chosen range must be within one bin width (of the search grid) of the
// brute-force optimum.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "onnxquant/arithmetic.h"
#include "onnxquant/range_search.h"
#include "onnxquant/range_search_internal.h"
#include "range_search_test_util.h"

namespace onnxquant {
namespace {

using testing_util::HistogramOf;
using testing_util::Samples;
using testing_util::Shape;
using testing_util::ShapeName;

constexpr Symmetry kSym = Symmetry::kSymmetric;
constexpr Symmetry kAsym = Symmetry::kAsymmetric;
constexpr double kInf = std::numeric_limits<double>::infinity();
const Shape kShapes[] = {Shape::kGaussian, Shape::kLaplacian, Shape::kRelu};

// The defined two-ended candidate search, written out again from the docs:
// sweep hi with lo lowest; sweep lo with hi highest; start from both
// choices (or, if invalid, the better sweep's pair); then alternate sweeps
// of lo and hi until one (not the first) leaves its end in place. A sweep
// keeps its end unless another is strictly better; else the first minimum.
std::pair<int, int> TwoEndedSearch(int num_lo, int num_hi,
                                   const std::function<double(int, int)>& f) {
  auto sweep = [&](bool low, int fixed, int current) {
    int best = current;
    double best_f = kInf;
    if (current >= 0) best_f = low ? f(current, fixed) : f(fixed, current);
    for (int k = 0; k < (low ? num_lo : num_hi); ++k) {
      const double v = low ? f(k, fixed) : f(fixed, k);
      if (v < best_f) {
        best = k;
        best_f = v;
      }
    }
    return best >= 0 ? best : (low ? 0 : num_hi - 1);
  };
  const int hi_at_lowest = sweep(false, 0, -1);
  const int lo_at_highest = sweep(true, num_hi - 1, -1);
  int lo = lo_at_highest, hi = hi_at_lowest;
  if (f(lo, hi) == kInf) {
    if (f(0, hi_at_lowest) <= f(lo_at_highest, num_hi - 1)) {
      lo = 0;
    } else {
      hi = num_hi - 1;
    }
  }
  for (int n = 0;; ++n) {
    const bool low = n % 2 == 0;
    const int before = low ? lo : hi;
    if (low) {
      lo = sweep(true, hi, lo);
    } else {
      hi = sweep(false, lo, hi);
    }
    if (n > 0 && (low ? lo : hi) == before) break;
  }
  return {lo, hi};
}

// ---------------------------------------------------------------------------
// PERCENTILE against the order statistics.
// ---------------------------------------------------------------------------

TEST(PercentileBruteForce, IsWithinOneBinOfTheSampleQuantile) {
  for (Shape shape : kShapes) {
    const std::vector<float> v = Samples(shape, 100000, 11, false);
    const Histogram h = HistogramOf(v);
    const double w = h.bin_width(), n = static_cast<double>(v.size());
    std::vector<double> sorted(v.begin(), v.end()), magnitudes;
    std::sort(sorted.begin(), sorted.end());
    for (double x : sorted) magnitudes.push_back(std::fabs(x));
    std::sort(magnitudes.begin(), magnitudes.end());
    // The k-th smallest (k from 1), k = ceil(rank).
    auto at_rank = [](const std::vector<double>& s, double rank) {
      const size_t k = static_cast<size_t>(std::max(1.0, std::ceil(rank)));
      return s[std::min(k, s.size()) - 1];
    };
    for (double p : {50.0, 99.0, 99.9, 99.99}) {
      SCOPED_TRACE(ShapeName(shape) + " " + std::to_string(p));
      const Range sym = PercentileRange(h, kSym, p);
      EXPECT_NEAR(sym.max, at_rank(magnitudes, p / 100 * n), w);
      const double tail = (100 - p) / 200 * n;
      const Range asym = PercentileRange(h, kAsym, p);
      EXPECT_NEAR(asym.min, std::min(0.0, at_rank(sorted, tail)), w);
      EXPECT_NEAR(asym.max, std::max(0.0, at_rank(sorted, n - tail)), w);
    }
  }
}

// ---------------------------------------------------------------------------
// MSE and SQNR against quantize-dequantize on the raw samples.
// ---------------------------------------------------------------------------

// The exact error of quantizing the samples with the parameters
// ActivationQuantParams gives a range: rounding error of the values inside
// the grid plus `clipping_weight` x the error of those beyond it. Sums run
// over the samples of each quantization level, from prefix sums of the
// sorted samples, which is what quantize-dequantize of each sample sums to
// (QuantizeSamples checks it).
class ExactError {
 public:
  explicit ExactError(const std::vector<float>& v) : x_(v.begin(), v.end()) {
    std::sort(x_.begin(), x_.end());
    n_.assign(x_.size() + 1, 0);
    s1_ = s2_ = n_;
    for (size_t i = 0; i < x_.size(); ++i) {
      n_[i + 1] = n_[i] + 1;
      s1_[i + 1] = s1_[i] + x_[i];
      s2_[i + 1] = s2_[i] + static_cast<long double>(x_[i]) * x_[i];
    }
    bucket_width_ = (x_.back() - x_.front()) / kBuckets;
    for (int b = 0; b <= kBuckets; ++b) {
      bucket_start_.push_back(
          std::lower_bound(x_.begin(), x_.end(), BucketEdge(b)) - x_.begin());
    }
  }

  double operator()(double lo, double hi, double clipping_weight) const {
    if (!(hi > lo)) return kInf;
    const ActivationParams p = ActivationQuantParams(
        static_cast<float>(lo), static_cast<float>(hi), ActivationType::kUint8);
    const double s = p.scale;
    const int first = -p.zero_point, last = 255 - p.zero_point;
    long double rounding = 0, clipping = 0;
    // Levels first..last take [(q - 1/2) s, (q + 1/2) s); the end levels
    // also take what lies beyond, which is clipping past q s.
    for (int q = first; q <= last; ++q) {
      const double v = q * s;
      const double a = q == first ? -kInf : (q - 0.5) * s;
      const double b = q == last ? kInf : (q + 0.5) * s;
      const double in_a = q == first ? v : a, in_b = q == last ? v : b;
      rounding += Sum(std::max(a, in_a), std::min(b, in_b), v);
      if (q == first) clipping += Sum(a, v, v);
      if (q == last) clipping += Sum(v, b, v);
    }
    return static_cast<double>(rounding + clipping_weight * clipping);
  }

  // The squared error of quantize-dequantize, sample by sample, as ONNX's
  // QuantizeLinear and DequantizeLinear compute it in float.
  double QuantizeSamples(double lo, double hi) const {
    const ActivationParams p = ActivationQuantParams(
        static_cast<float>(lo), static_cast<float>(hi), ActivationType::kUint8);
    double sum = 0;
    for (double x : x_) {
      const float q = std::clamp(
          std::nearbyint(static_cast<float>(x) / p.scale) + p.zero_point,
          0.f, 255.f);
      const double d = static_cast<double>((q - p.zero_point) * p.scale) - x;
      sum += d * d;
    }
    return sum;
  }

 private:
  static constexpr int kBuckets = 1 << 16;

  double BucketEdge(int b) const {
    return b == kBuckets ? x_.back() : x_.front() + b * bucket_width_;
  }

  // std::lower_bound over the samples, narrowed by a bucket index.
  size_t LowerBound(double a) const {
    if (!(a > x_.front())) return 0;
    if (a > x_.back()) return x_.size();
    int b = static_cast<int>(
        std::clamp((a - x_.front()) / bucket_width_, 0.0, kBuckets - 1.0));
    while (b > 0 && BucketEdge(b) > a) --b;
    while (b + 1 < kBuckets && BucketEdge(b + 1) <= a) ++b;
    return std::lower_bound(x_.begin() + bucket_start_[b],
                            x_.begin() + bucket_start_[b + 1], a) -
           x_.begin();
  }

  // Sum of (x - v)^2 over samples in [a, b).
  long double Sum(double a, double b, double v) const {
    if (!(b > a)) return 0;
    const size_t i = LowerBound(a), j = LowerBound(b);
    const long double n = n_[j] - n_[i], s1 = s1_[j] - s1_[i],
                      s2 = s2_[j] - s2_[i];
    return std::max<long double>(0, s2 - 2 * v * s1 + n * v * v);
  }

  std::vector<double> x_;
  std::vector<long double> n_, s1_, s2_;
  double bucket_width_ = 0;
  std::vector<size_t> bucket_start_;
};

// Every multiple of the bin width strictly inside (lo, hi), and lo and hi.
std::vector<double> GridEdges(double lo, double hi, double w) {
  std::vector<double> e = {lo};
  for (double k = std::floor(lo / w) + 1; k * w < hi; ++k) {
    if (k * w > lo) e.push_back(k * w);
  }
  e.push_back(hi);
  return e;
}

TEST(ExactError, SumsWhatQuantizeDequantizeGivesSampleBySample) {
  const std::vector<float> v = Samples(Shape::kLaplacian, 20000, 12, false);
  const ExactError exact(v);
  for (auto [lo, hi] : {std::pair{-3.0, 4.0}, {-0.5, 9.0}, {0.0, 2.0},
                        {-7.0, 7.0}, {-1e-3, 20.0}}) {
    EXPECT_NEAR(exact(lo, hi, 1), exact.QuantizeSamples(lo, hi),
                1e-6 * exact.QuantizeSamples(lo, hi));
  }
}

using Objective = std::function<double(double lo, double hi)>;

// The brute-force symmetric choice: the first a minimising `f` over the
// candidates every multiple of the bin width below max|x| and the extremes
// |min| and max (or, without negatives, [0, a] over the edges of x).
double BruteForceSymmetric(const Histogram& h, const Objective& f) {
  const double lo = h.min(), hi = h.max(), w = h.bin_width();
  std::vector<double> candidates;
  if (lo < 0) {
    candidates = GridEdges(0, std::max(-lo, hi), w);
    candidates.push_back(std::min(-lo, hi));
  } else {
    candidates = GridEdges(lo, hi, w);
  }
  std::sort(candidates.begin(), candidates.end());
  double best = 0, best_f = kInf;
  for (double a : candidates) {
    if (a <= 0) continue;
    const double v = f(lo < 0 ? -a : 0.0, a);
    if (v < best_f) {
      best = a;
      best_f = v;
    }
  }
  return best;
}

// The brute-force asymmetric choice: lo among 0 and the bin edges within
// the observed [min, max] that are <= 0 (min included), hi among 0 and
// those >= 0 (max included), searched by TwoEndedSearch.
std::pair<double, double> BruteForceAsymmetric(const Histogram& h,
                                               const Objective& f) {
  const double lo = h.min(), hi = h.max(), w = h.bin_width();
  auto with_zero = [](std::vector<double> e) {
    e.push_back(0);
    std::sort(e.begin(), e.end());
    e.erase(std::unique(e.begin(), e.end()), e.end());
    return e;
  };
  const std::vector<double> los =
      lo < 0 ? with_zero(GridEdges(lo, std::min(hi, 0.0), w))
             : std::vector{0.0};
  const std::vector<double> his =
      hi > 0 ? with_zero(GridEdges(std::max(lo, 0.0), hi, w))
             : std::vector{0.0};
  const auto [i, j] = TwoEndedSearch(
      static_cast<int>(los.size()), static_cast<int>(his.size()),
      [&](int i, int j) { return f(los[i], his[j]); });
  return {los[i], his[j]};
}

// The searches' model of the error, computed directly (piece by piece, with
// integrals rather than prefix sums): each histogram bin cut to [min, max]
// holds its values uniformly, the exact zeros are an atom at 0 with no
// error; a value inside the quantizer's grid costs s^2 / 12, one beyond it
// the squared distance to the grid's end, weighted `clipping_weight`.
class ModelError {
 public:
  explicit ModelError(const Histogram& h) : zeros_(h.zeros()) {
    const double w = h.bin_width();
    for (size_t j = 0; j < h.counts().size(); ++j) {
      const double k =
          static_cast<double>(h.first_bin() + static_cast<int64_t>(j));
      const double a = std::max<double>(k * w, h.min());
      const double b = std::min<double>((k + 1) * w, h.max());
      double c = static_cast<double>(h.counts()[j]);
      if (k == 0) c -= static_cast<double>(zeros_);
      if (a <= b && c > 0) bins_.push_back({a, b, c});
    }
  }

  double operator()(double lo, double hi, double clipping_weight) const {
    if (!(hi > lo)) return kInf;
    const ActivationParams p = ActivationQuantParams(
        static_cast<float>(lo), static_cast<float>(hi), ActivationType::kUint8);
    const double s = p.scale;
    const double g0 = -p.zero_point * s, g1 = (255 - p.zero_point) * s;
    double inside = 0, clipping = 0;
    for (const Bin& bin : bins_) {
      if (bin.a == bin.b) {
        if (bin.a < g0) clipping += bin.c * (g0 - bin.a) * (g0 - bin.a);
        else if (bin.a > g1) clipping += bin.c * (bin.a - g1) * (bin.a - g1);
        else inside += bin.c;
        continue;
      }
      const double density = bin.c / (bin.b - bin.a);
      if (bin.a < g0) {
        const double b = std::min(bin.b, g0);
        clipping += density *
                    (std::pow(g0 - bin.a, 3) - std::pow(g0 - b, 3)) / 3;
      }
      if (bin.b > g1) {
        const double a = std::max(bin.a, g1);
        clipping += density *
                    (std::pow(bin.b - g1, 3) - std::pow(a - g1, 3)) / 3;
      }
      inside += density *
                std::max(0.0, std::min(bin.b, g1) - std::max(bin.a, g0));
    }
    return inside * s * s / 12 + clipping_weight * clipping;
  }

 private:
  struct Bin {
    double a, b, c;
  };
  std::vector<Bin> bins_;
  int64_t zeros_;
};

struct NoiseMethod {
  std::string name;
  Range (*search)(const Histogram&, Symmetry);
  double clipping_weight;
};
const NoiseMethod kNoiseMethods[] = {{"MSE", MseRange, 1.0},
                                     {"SQNR", SqnrRange, 3.0}};

TEST(NoiseBruteForce, FindsTheOptimumOfItsModelOnTheSameGrid) {
  // The search (prefix sums, O(log n) per candidate) against a direct
  // evaluation of the same model over the same candidates: the same choice,
  // up to a tie in the objective.
  for (Shape shape : kShapes) {
    const Histogram h = HistogramOf(Samples(shape, 100000, 18, false));
    const ModelError model(h);
    const double w = h.bin_width() * (1 + 1e-9);
    for (const NoiseMethod& m : kNoiseMethods) {
      SCOPED_TRACE(ShapeName(shape) + " " + m.name);
      auto f = [&](double lo, double hi) {
        return model(lo, hi, m.clipping_weight);
      };
      const Range sym = m.search(h, kSym);
      const double a = BruteForceSymmetric(h, f);
      if (std::fabs(sym.max - a) > w) {
        EXPECT_LE(f(sym.min, sym.max), f(h.min() < 0 ? -a : 0.0, a) *
                                           (1 + 1e-12));
      }
      const Range asym = m.search(h, kAsym);
      const auto [lo, hi] = BruteForceAsymmetric(h, f);
      if (std::fabs(asym.min - lo) > w || std::fabs(asym.max - hi) > w) {
        EXPECT_LE(f(asym.min, asym.max), f(lo, hi) * (1 + 1e-12));
      }
    }
  }
}

// Checks a choice against the brute-force optimum of the exact error on the
// samples: within one bin width, or (the exact error is flat near its
// optimum, where a few samples' positions move the minimum by several bins)
// with an exact error within `tolerance` (relative) of the optimum's.
void ExpectNearExactOptimum(const Range& r, const Range& best, double w,
                            const Objective& exact, double tolerance) {
  w *= 1 + 1e-9;
  if (std::fabs(r.min - best.min) <= w && std::fabs(r.max - best.max) <= w) {
    return;
  }
  EXPECT_LE(exact(r.min, r.max), exact(best.min, best.max) * (1 + tolerance))
      << "chose [" << r.min << ", " << r.max << "], the samples' optimum is ["
      << best.min << ", " << best.max << "], bin width " << w;
}

TEST(NoiseBruteForce, IsAtTheExactOptimumOnStratifiedSamples) {
  // Stratified samples leave little sampling noise: the error the model
  // predicts is within 0.1 % of the exact one, and the choice lands on the
  // samples' optimum or on an equally good point (2.5e-4) of the flat
  // objective.
  for (Shape shape : kShapes) {
    const std::vector<float> v = Samples(shape, 1 << 18, 13, true);
    const Histogram h = HistogramOf(v);
    const ExactError exact_error(v);
    const ModelError model(h);
    for (const NoiseMethod& m : kNoiseMethods) {
      SCOPED_TRACE(ShapeName(shape) + " " + m.name);
      auto exact = [&](double lo, double hi) {
        return exact_error(lo, hi, m.clipping_weight);
      };
      const double a = BruteForceSymmetric(h, exact);
      const Range sym_best = {h.min() < 0 ? -static_cast<float>(a) : 0.f,
                              static_cast<float>(a)};
      const Range sym = m.search(h, kSym);
      ExpectNearExactOptimum(sym, sym_best, h.bin_width(), exact, 2.5e-4);
      EXPECT_NEAR(model(sym.min, sym.max, m.clipping_weight),
                  exact(sym.min, sym.max), 1e-3 * exact(sym.min, sym.max));
      const auto [lo, hi] = BruteForceAsymmetric(h, exact);
      const Range asym = m.search(h, kAsym);
      ExpectNearExactOptimum(
          asym, {static_cast<float>(lo), static_cast<float>(hi)},
          h.bin_width(), exact, 2.5e-4);
    }
  }
}

TEST(NoiseBruteForce, IsNearTheExactOptimumOnIndependentSamples) {
  // Independent samples carry sampling noise of the order of 1 / sqrt(n) in
  // the exact error, so its minimum over thousands of candidates sits below
  // the typical value by a few times that: the choice must be within 2 %.
  for (Shape shape : kShapes) {
    const std::vector<float> v = Samples(shape, 1 << 17, 15, false);
    const Histogram h = HistogramOf(v);
    const ExactError exact_error(v);
    for (const NoiseMethod& m : kNoiseMethods) {
      SCOPED_TRACE(ShapeName(shape) + " " + m.name);
      auto exact = [&](double lo, double hi) {
        return exact_error(lo, hi, m.clipping_weight);
      };
      const double a = BruteForceSymmetric(h, exact);
      ExpectNearExactOptimum(
          m.search(h, kSym),
          {h.min() < 0 ? -static_cast<float>(a) : 0.f, static_cast<float>(a)},
          h.bin_width(), exact, 2e-2);
      const auto [lo, hi] = BruteForceAsymmetric(h, exact);
      ExpectNearExactOptimum(m.search(h, kAsym),
                             {static_cast<float>(lo), static_cast<float>(hi)},
                             h.bin_width(), exact, 2e-2);
    }
  }
}

// ---------------------------------------------------------------------------
// ENTROPY against a direct KL divergence on the same reference histogram.
// ---------------------------------------------------------------------------

// KL(P || Q) for the reference slice [l, u), written out bin by bin.
double DirectKl(const std::vector<double>& ref, int l, int u, int levels) {
  const int n = u - l;
  std::vector<double> p(ref.begin() + l, ref.begin() + u);
  for (int j = 0; j < l; ++j) p.front() += ref[j];
  for (size_t j = u; j < ref.size(); ++j) p.back() += ref[j];
  std::vector<double> merged(levels, 0.0), nonzero(levels, 0.0);
  for (int t = 0; t < n; ++t) {
    const int g = static_cast<int>(static_cast<int64_t>(t) * levels / n);
    merged[g] += ref[l + t];
    nonzero[g] += p[t] > 0;
  }
  std::vector<double> q(n, 0.0);
  for (int t = 0; t < n; ++t) {
    const int g = static_cast<int>(static_cast<int64_t>(t) * levels / n);
    if (p[t] > 0) q[t] = merged[g] / nonzero[g];
  }
  double sp = 0, sq = 0;
  for (int t = 0; t < n; ++t) {
    sp += p[t];
    sq += q[t];
  }
  if (!(sq > 0)) return kInf;
  double kl = 0;
  for (int t = 0; t < n; ++t) {
    if (p[t] <= 0) continue;
    if (q[t] <= 0) return kInf;
    kl += p[t] / sp * std::log((p[t] / sp) / (q[t] / sq));
  }
  return kl;
}

TEST(EntropyBruteForce, ReferenceHistogramFollowsTheSamples) {
  // The rebinned |x| histogram's cumulative count at each of its edges is
  // within the count of one canonical bin (both signs) of the samples'.
  const std::vector<float> v = Samples(Shape::kGaussian, 100000, 16, false);
  const Histogram h = HistogramOf(v);
  const double top = std::max(-h.min(), h.max()), w = h.bin_width();
  const std::vector<double> ref = range_search_internal::Rebin(
      range_search_internal::AbsDistribution(h), 0, top, 2048, false);
  std::vector<double> mag;
  for (float x : v) mag.push_back(std::fabs(x));
  std::sort(mag.begin(), mag.end());
  auto count_below = [&](double x) {
    return static_cast<double>(std::lower_bound(mag.begin(), mag.end(), x) -
                               mag.begin());
  };
  double cum = 0;
  for (int j = 0; j <= 2048; ++j) {
    const double e = j == 2048 ? top : j * (top / 2048);
    const double cell = std::floor(e / w) * w;
    const double slack = count_below(cell + w) - count_below(cell) + 1e-6;
    const double expected =
        j == 2048 ? static_cast<double>(v.size()) : count_below(e);
    EXPECT_NEAR(cum, expected, slack) << j;
    if (j < 2048) cum += ref[j];
  }
  EXPECT_NEAR(cum, static_cast<double>(v.size()), 1e-6);
}

// The reference EntropyRange uses (docs/calibration.md) and the brute-force
// choice on it; returns the range and the reference's bin width.
struct EntropyCase {
  Range brute_force;
  double width = 0;
  std::function<double(const Range&)> kl;  // KL of a range on the grid
};

EntropyCase BruteForceEntropy(const Histogram& h, Symmetry s, bool no_spike) {
  namespace rsi = range_search_internal;
  constexpr int kBins = 2048;
  EntropyCase c;
  const double lo = std::min<double>(h.min(), 0);
  const double hi = std::max<double>(h.max(), 0);
  if (s == kSym || lo == 0) {
    const bool negatives = lo < 0;
    const int levels = negatives ? 128 : 256;
    const double top = std::max(-lo, hi);
    c.width = top / kBins;
    const std::vector<double> ref = rsi::Rebin(
        negatives ? rsi::AbsDistribution(h) : rsi::SignedDistribution(h), 0,
        top, kBins, no_spike);
    int best = kBins;
    double best_kl = kInf;
    for (int i = levels; i <= kBins; ++i) {
      const double kl = DirectKl(ref, 0, i, levels);
      if (kl < best_kl) {
        best = i;
        best_kl = kl;
      }
    }
    const float a = static_cast<float>(best == kBins ? top : best * c.width);
    c.brute_force = negatives ? Range{-a, a} : Range{0.f, a};
    c.kl = [ref, levels, w = c.width](const Range& r) {
      return DirectKl(ref, 0, static_cast<int>(std::lround(r.max / w)), levels);
    };
    return c;
  }
  c.width = (hi - lo) / kBins;
  const std::vector<double> ref =
      rsi::Rebin(rsi::SignedDistribution(h), lo, hi, kBins, no_spike);
  const double zero_at = -lo / c.width;
  const int l_max = static_cast<int>(std::floor(zero_at));
  const int u_min = static_cast<int>(std::ceil(zero_at));
  auto f = [&](int i, int j) {
    return u_min + j - i >= 256 ? DirectKl(ref, i, u_min + j, 256) : kInf;
  };
  const auto [i, j] = TwoEndedSearch(l_max + 1, kBins - u_min + 1, f);
  const double range_lo = std::min(0.0, lo + i * c.width);
  const double range_hi = std::max(0.0, lo + (u_min + j) * c.width);
  c.brute_force = {static_cast<float>(range_lo), static_cast<float>(range_hi)};
  c.kl = [ref, lo, w = c.width](const Range& r) {
    return DirectKl(ref, static_cast<int>(std::lround((r.min - lo) / w)),
                    static_cast<int>(std::lround((r.max - lo) / w)), 256);
  };
  return c;
}

TEST(EntropyBruteForce, IsWithinOneBinOfTheDirectKlOptimum) {
  for (Shape shape : kShapes) {
    const std::vector<float> v = Samples(shape, 200000, 17, false);
    const Histogram h = HistogramOf(v);
    for (Symmetry s : {kSym, kAsym}) {
      for (bool no_spike : {false, true}) {
        SCOPED_TRACE(ShapeName(shape) + (s == kSym ? " SYM" : " ASYM") +
                     (no_spike ? " ignoring zeros" : ""));
        EntropyOptions o;
        o.ignore_zero_spike = no_spike;
        const Range r = EntropyRange(h, s, o);
        const EntropyCase c = BruteForceEntropy(h, s, no_spike);
        // Equal KL up to rounding counts as the same optimum.
        const bool tie = c.kl(r) <= c.kl(c.brute_force) + 1e-12;
        if (!tie) {
          EXPECT_NEAR(r.min, c.brute_force.min, c.width * (1 + 1e-6));
          EXPECT_NEAR(r.max, c.brute_force.max, c.width * (1 + 1e-6));
        }
      }
    }
  }
}

}  // namespace
}  // namespace onnxquant
