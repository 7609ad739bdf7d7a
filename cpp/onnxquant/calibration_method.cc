#include "onnxquant/calibration_method.h"

#include <algorithm>
#include <atomic>
#include <thread>

#include "onnxquant/error.h"

namespace onnxquant {

CalibrationMethod CalibrationMethodFromInt(int value) {
  if (value < 0 || value > 9) {
    throw InvalidArgument("calibration method " + std::to_string(value) +
                          " is not one of the ten (0..9).");
  }
  return static_cast<CalibrationMethod>(value);
}

std::string CalibrationMethodName(CalibrationMethod method) {
  static const char* const kNames[] = {
      "MIN_MAX_ASYM",    "MIN_MAX_SYM",    "ENTROPY_ASYM", "ENTROPY_SYM",
      "PERCENTILE_ASYM", "PERCENTILE_SYM", "MSE_ASYM",     "MSE_SYM",
      "SQNR_ASYM",       "SQNR_SYM"};
  return kNames[static_cast<int>(method)];
}

Range ComputeRange(const Histogram& h, CalibrationMethod method,
                   const RangeOptions& options) {
  const Symmetry s = static_cast<int>(method) % 2 == 1
                         ? Symmetry::kSymmetric
                         : Symmetry::kAsymmetric;
  switch (method) {
    case CalibrationMethod::kMinMaxAsym:
    case CalibrationMethod::kMinMaxSym:
      return MinMaxRange(h, s);
    case CalibrationMethod::kEntropyAsym:
    case CalibrationMethod::kEntropySym:
      return EntropyRange(h, s, options.entropy);
    case CalibrationMethod::kPercentileAsym:
    case CalibrationMethod::kPercentileSym:
      return PercentileRange(h, s, options.percentage);
    case CalibrationMethod::kMseAsym:
    case CalibrationMethod::kMseSym:
      return MseRange(h, s);
    case CalibrationMethod::kSqnrAsym:
    case CalibrationMethod::kSqnrSym:
      return SqnrRange(h, s);
  }
  throw InternalError("unhandled calibration method");
}

std::vector<Range> ComputeRanges(const HistogramSet& set,
                                 CalibrationMethod method,
                                 const RangeOptions& options, int threads) {
  const size_t n = set.names().size();
  std::vector<Range> out(n);
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&] {
    for (size_t i = next++; i < n && !failed; i = next++) {
      try {
        out[i] = ComputeRange(set.at(static_cast<int>(i)), method, options);
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    }
  };
  const int t = std::max(1, std::min<int>(threads, static_cast<int>(n)));
  std::vector<std::thread> pool;
  for (int k = 1; k < t; ++k) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
  return out;
}

}  // namespace onnxquant
