// PERCENTILE: a quantile of |x| (symmetric), or equal tails cut from x
// (asymmetric), interpolating linearly within a bin.
#include <string>

#include "onnxquant/error.h"
#include "onnxquant/range_search.h"
#include "onnxquant/range_search_internal.h"

namespace onnxquant {

using range_search_internal::AbsDistribution;
using range_search_internal::Distribution;
using range_search_internal::MakeRange;
using range_search_internal::Quantile;
using range_search_internal::SignedDistribution;

Range PercentileRange(const Histogram& h, Symmetry s, double percentage) {
  if (!(percentage > 0 && percentage <= 100)) {
    throw InvalidArgument("percentile calibration: the percentage must be in "
                          "(0, 100], got " + std::to_string(percentage) +
                          "; 99.99 is the usual choice");
  }
  // 100 % keeps every value: exactly the observed extremes.
  if (h.empty() || percentage == 100) return MinMaxRange(h, s);
  const double fraction = percentage / 100;
  if (s == Symmetry::kSymmetric) {
    const bool negatives = h.min() < 0;
    const Distribution d =
        negatives ? AbsDistribution(h) : SignedDistribution(h);
    const float a = static_cast<float>(Quantile(d, fraction * d.total));
    return negatives ? Range{-a, a} : MakeRange(0, a);
  }
  const Distribution d = SignedDistribution(h);
  const double tail = (1 - fraction) / 2 * d.total;
  return MakeRange(Quantile(d, tail), Quantile(d, d.total - tail));
}

}  // namespace onnxquant
