// The ten calibration methods and the dispatch to their range searches.
#ifndef ONNXQUANT_CALIBRATION_METHOD_H_
#define ONNXQUANT_CALIBRATION_METHOD_H_

#include <string>
#include <vector>

#include "onnxquant/histogram.h"
#include "onnxquant/range_search.h"

namespace onnxquant {

// Values match Python's onnxquant.CalibrationMethod.
enum class CalibrationMethod {
  kMinMaxAsym = 0,
  kMinMaxSym = 1,
  kEntropyAsym = 2,
  kEntropySym = 3,
  kPercentileAsym = 4,
  kPercentileSym = 5,
  kMseAsym = 6,
  kMseSym = 7,
  kSqnrAsym = 8,
  kSqnrSym = 9,
};

struct RangeOptions {
  double percentage = 99.99;  // PERCENTILE methods
  EntropyOptions entropy;     // ENTROPY methods
};

// Throws Error(kInvalidArgument) for a value outside 0..9.
CalibrationMethod CalibrationMethodFromInt(int value);
std::string CalibrationMethodName(CalibrationMethod method);

// The range `method` chooses for one histogram (a pure function).
Range ComputeRange(const Histogram& h, CalibrationMethod method,
                   const RangeOptions& options);

// Ranges of every histogram of `set`, in its order, with up to `threads`
// threads; identical whatever the thread count.
std::vector<Range> ComputeRanges(const HistogramSet& set,
                                 CalibrationMethod method,
                                 const RangeOptions& options, int threads);

}  // namespace onnxquant

#endif  // ONNXQUANT_CALIBRATION_METHOD_H_
