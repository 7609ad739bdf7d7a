// SQNR: the noise search of range_search_mse.cc with clipping noise weighted
// 3 to 1 against rounding noise (Qualcomm's "TF-enhanced" weighting).
#include "onnxquant/range_search.h"
#include "onnxquant/range_search_internal.h"

namespace onnxquant {

namespace {

// The weight AIMET's SQNR encoding analyzer puts on clipping noise (gamma).
constexpr double kSqnrClippingWeight = 3.0;

}  // namespace

Range SqnrRange(const Histogram& h, Symmetry s) {
  return range_search_internal::NoiseSearch(h, s, kSqnrClippingWeight);
}

}  // namespace onnxquant
