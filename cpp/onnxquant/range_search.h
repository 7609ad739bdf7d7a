// Range search: pure functions of a histogram, one per calibration method.
//
// Each returns the range [min, max] that quantization will use. Levels: 128
// for a symmetric [-a, a] range (searched on |x|), 256 for asymmetric and
// [0, a] ranges. A `_SYM` range is [-a, a], or [0, a] when no value is
// negative. Every range contains 0. An empty histogram gives [0, 0].
// docs/calibration.md states each method's definition and formulas.
#ifndef ONNXQUANT_RANGE_SEARCH_H_
#define ONNXQUANT_RANGE_SEARCH_H_

#include "onnxquant/histogram.h"

namespace onnxquant {

struct Range {
  float min = 0.f;
  float max = 0.f;
};

enum class Symmetry { kAsymmetric, kSymmetric };

// The observed minimum and maximum (widened to contain 0).
Range MinMaxRange(const Histogram& h, Symmetry s);

// kSymmetric: the `percentage` percentile of |x|. kAsymmetric: (100 -
// percentage) / 2 percent cut from each tail. REQUIRES: 0 < percentage <= 100
// (Error(kInvalidArgument) otherwise).
Range PercentileRange(const Histogram& h, Symmetry s, double percentage);

struct EntropyOptions {
  // The reference distribution's resolution, in [256, 65536]
  // (Error(kInvalidArgument) otherwise).
  int num_bins = 2048;
  // Skip the exact-zero spike (ReLU outputs) in the KL divergence.
  bool ignore_zero_spike = false;
};
// The threshold minimising KL(P || Q) between the distribution clipped at the
// threshold and its quantized form (TensorRT's method), extended to
// asymmetric ranges.
Range EntropyRange(const Histogram& h, Symmetry s, const EntropyOptions& o);

// The range minimising the expected squared error of rounding and clipping,
// values uniform within a bin.
Range MseRange(const Histogram& h, Symmetry s);

// Signal-to-quantization-noise search: noise = 3 x clipping noise + rounding
// noise (Qualcomm's weighting).
Range SqnrRange(const Histogram& h, Symmetry s);

}  // namespace onnxquant

#endif  // ONNXQUANT_RANGE_SEARCH_H_
