// MSE: the range minimising the expected squared error of rounding and
// clipping, and the search it shares with SQNR (range_search_sqnr.cc).
#include <algorithm>
#include <vector>

#include "onnxquant/range_search.h"
#include "onnxquant/range_search_internal.h"

namespace onnxquant {
namespace range_search_internal {
namespace {

// Returns the first candidate (in the order given) with the least objective.
template <typename Objective>
double FirstMinimum(const std::vector<double>& candidates, const Objective& f) {
  double best = candidates.front(), best_f = kInfinity;
  for (double c : candidates) {
    const double v = f(c);
    if (v < best_f) {
      best = c;
      best_f = v;
    }
  }
  return best;
}

std::vector<double> WithZero(std::vector<double> edges) {
  edges.push_back(0.0);
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  return edges;
}

}  // namespace

Range NoiseSearch(const Histogram& h, Symmetry s, double clipping_weight) {
  if (h.empty() || (h.min() == 0 && h.max() == 0)) return Range{};
  const double lo_value = std::min<double>(h.min(), 0);
  const double hi_value = std::max<double>(h.max(), 0);
  const Distribution signed_dist = SignedDistribution(h);
  const NoiseModel model(signed_dist);
  auto objective = [&](double lo, double hi) {
    if (!(hi > lo)) return kInfinity;
    const NoiseModel::Noise n = model.Evaluate(lo, hi);
    return n.rounding + clipping_weight * n.clipping;
  };

  if (s == Symmetry::kSymmetric) {
    const bool negatives = lo_value < 0;
    const double top = std::max(-lo_value, hi_value);
    std::vector<double> candidates =
        EdgesIn(negatives ? AbsDistribution(h) : signed_dist, 0, top);
    candidates.erase(std::remove(candidates.begin(), candidates.end(), 0.0),
                     candidates.end());
    if (candidates.empty()) candidates.push_back(top);
    const double a = FirstMinimum(candidates, [&](double a) {
      return objective(negatives ? -a : 0.0, a);
    });
    const float af = static_cast<float>(a);
    return negatives ? Range{-af, af} : MakeRange(0, a);
  }

  const std::vector<double> los = WithZero(EdgesIn(signed_dist, lo_value, 0));
  const std::vector<double> his = WithZero(EdgesIn(signed_dist, 0, hi_value));
  const auto [i, j] = SweepsThenCoordinateDescent(
      static_cast<int>(los.size()), static_cast<int>(his.size()),
      [&](int i, int j) { return objective(los[i], his[j]); });
  return MakeRange(los[i], his[j]);
}

}  // namespace range_search_internal

Range MseRange(const Histogram& h, Symmetry s) {
  return range_search_internal::NoiseSearch(h, s, /*clipping_weight=*/1.0);
}

}  // namespace onnxquant
