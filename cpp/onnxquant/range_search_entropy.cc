// ENTROPY: TensorRT's KL-divergence calibration (Migacz, GTC 2017), on a
// reference histogram rebinned from the canonical one, extended to
// asymmetric ranges by a defined two-ended candidate grid.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "onnxquant/error.h"
#include "onnxquant/range_search.h"
#include "onnxquant/range_search_internal.h"

namespace onnxquant {
namespace {

using range_search_internal::AbsDistribution;
using range_search_internal::Distribution;
using range_search_internal::kInfinity;
using range_search_internal::MakeRange;
using range_search_internal::Rebin;
using range_search_internal::SignedDistribution;
using range_search_internal::SweepsThenCoordinateDescent;

constexpr int kMinBins = 256;      // the most levels a search quantizes to
constexpr int kMaxBins = 1 << 16;  // cost grows as bins x levels per sweep

double XLogX(double x) { return x > 0 ? x * std::log(x) : 0.0; }

// KL(P || Q) of reference-histogram slices in O(levels) each, from prefix
// sums. For the slice of bins [l, u): P is the slice with the mass below l
// added to its first bin and the mass from u on added to its last; Q is the
// slice without those outliers merged into `levels` groups (bin l + t joins
// group floor(t * levels / (u - l))), each group's count spread evenly over
// the group's bins where P is not zero. P and Q are normalised.
class Divergence {
 public:
  Divergence(const std::vector<double>& ref, int levels)
      : ref_(ref),
        cum_(ref.size() + 1, 0.0),
        rest_(ref.size() + 1, 0.0),
        cum_xlogx_(ref.size() + 1, 0.0),
        cum_nonzero_(ref.size() + 1, 0),
        levels_(levels) {
    const size_t n = ref.size();
    for (size_t j = 0; j < n; ++j) {
      cum_[j + 1] = cum_[j] + ref[j];
      cum_xlogx_[j + 1] = cum_xlogx_[j] + XLogX(ref[j]);
      cum_nonzero_[j + 1] = cum_nonzero_[j] + (ref[j] > 0);
    }
    for (size_t j = n; j > 0; --j) rest_[j - 1] = rest_[j] + ref[j - 1];
    total_ = cum_[n];
  }

  // +inf where Q is 0 on a bin where P is not, or the slice is empty.
  // REQUIRES: 0 <= l, u - l >= levels, u <= bins.
  double operator()(int l, int u) const {
    const double below = cum_[l], above = rest_[u];
    const double slice = cum_[u] - cum_[l];
    if (!(slice > 0) || !(total_ > 0)) return kInfinity;
    const double first = ref_[l] + below, last = ref_[u - 1] + above;
    // sum over P's bins of c log c, with the end bins' outliers.
    const double p_xlogx = cum_xlogx_[u] - cum_xlogx_[l] - XLogX(ref_[l]) -
                           XLogX(ref_[u - 1]) + XLogX(first) + XLogX(last);
    // sum over P's bins of c log q (q unnormalised), group by group.
    // Group g holds bins l + ceil(g n / levels) .. l + ceil((g + 1) n /
    // levels) - 1, n = u - l; the ceiling is stepped without dividing.
    const int n = u - l;
    const int step = n / levels_, step_rest = n % levels_;
    // Invariant: b0 = l + q with q = ceil(g n / levels), rest = q levels - g n.
    int b0 = l, rest = 0;
    double p_logq = 0;
    for (int g = 0; g < levels_; ++g) {
      int b1 = b0 + step;
      rest -= step_rest;  // (b1 - l) levels - (g + 1) n
      if (rest < 0) {
        ++b1;
        rest += levels_;
      }
      const double merged = cum_[b1] - cum_[b0];
      double p_mass = merged;
      int nonzero = cum_nonzero_[b1] - cum_nonzero_[b0];
      if (b0 == l) {
        p_mass += below;
        nonzero += (first > 0) - (ref_[l] > 0);
      }
      if (b1 == u) {
        p_mass += above;
        nonzero += (last > 0) - (ref_[u - 1] > 0);
      }
      b0 = b1;
      if (!(p_mass > 0)) continue;
      if (!(merged > 0)) return kInfinity;
      p_logq += p_mass * std::log(merged / nonzero);
    }
    // KL = sum p log p - sum p log q with p = c / total, q = q' / slice.
    return (p_xlogx - p_logq) / total_ - std::log(total_) + std::log(slice);
  }

 private:
  std::vector<double> ref_;
  std::vector<double> cum_, rest_, cum_xlogx_;
  std::vector<int> cum_nonzero_;
  double total_ = 0;
  int levels_;
};

}  // namespace

Range EntropyRange(const Histogram& h, Symmetry s, const EntropyOptions& o) {
  if (o.num_bins < kMinBins || o.num_bins > kMaxBins) {
    throw InvalidArgument(
        "entropy calibration: num_bins must be in [" +
        std::to_string(kMinBins) + ", " + std::to_string(kMaxBins) +
        "], got " + std::to_string(o.num_bins) + "; 2048 is TensorRT's choice");
  }
  if (h.empty() || (h.min() == 0 && h.max() == 0)) return Range{};
  const int bins = o.num_bins;
  const double lo_value = std::min<double>(h.min(), 0);
  const double hi_value = std::max<double>(h.max(), 0);

  if (s == Symmetry::kSymmetric || lo_value == 0) {
    // One-ended: thresholds i * width on [0, max|x|], i in [levels, bins].
    const bool negatives = lo_value < 0;
    const int levels = negatives ? 128 : 256;
    const double top = std::max(-lo_value, hi_value);
    const double width = top / bins;
    if (!(width > 0)) return MinMaxRange(h, s);  // denormal extremes
    const Distribution d =
        negatives ? AbsDistribution(h) : SignedDistribution(h);
    const std::vector<double> ref = Rebin(d, 0, top, bins, o.ignore_zero_spike);
    const Divergence kl(ref, levels);
    int best = bins;
    double best_kl = kInfinity;
    for (int i = levels; i <= bins; ++i) {
      const double v = kl(0, i);
      if (v < best_kl) {
        best = i;
        best_kl = v;
      }
    }
    const double a = best == bins ? top : best * width;
    const float af = static_cast<float>(a);
    return negatives ? Range{-af, af} : MakeRange(0, a);
  }

  // Two-ended, 256 levels: slices [l, u) of the reference histogram over
  // [min(min, 0), max(max, 0)] that keep 0 inside and span >= 256 bins.
  constexpr int kLevels = 256;
  const double width = (hi_value - lo_value) / bins;
  if (!(width > 0)) return MinMaxRange(h, s);
  const std::vector<double> ref =
      Rebin(SignedDistribution(h), lo_value, hi_value, bins,
            o.ignore_zero_spike);
  const Divergence kl(ref, kLevels);
  const double zero_at = -lo_value / width;  // 0's position in bins
  const int l_max = std::clamp(static_cast<int>(std::floor(zero_at)), 0, bins);
  const int u_min = std::clamp(static_cast<int>(std::ceil(zero_at)), 0, bins);
  const auto [i, j] = SweepsThenCoordinateDescent(
      l_max + 1, bins - u_min + 1, [&](int i, int j) {
        const int u = u_min + j;
        return u - i >= kLevels ? kl(i, u) : kInfinity;
      });
  const int u = u_min + j;
  const double lo = i == 0 ? lo_value : lo_value + i * width;
  const double hi = u == bins ? hi_value : lo_value + u * width;
  return MakeRange(std::min(lo, 0.0), std::max(hi, 0.0));
}

}  // namespace onnxquant
