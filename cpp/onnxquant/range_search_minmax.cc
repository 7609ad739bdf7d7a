// MIN_MAX: the observed extremes.
#include <algorithm>

#include "onnxquant/range_search.h"
#include "onnxquant/range_search_internal.h"

namespace onnxquant {

Range MinMaxRange(const Histogram& h, Symmetry s) {
  if (h.empty()) return Range{};
  const float lo = h.min(), hi = h.max();
  if (s == Symmetry::kAsymmetric || lo >= 0) {
    return range_search_internal::MakeRange(lo, hi);
  }
  const float a = std::max(-lo, hi);
  return Range{-a, a};
}

}  // namespace onnxquant
