// SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient
// Post-Training Quantization for Large Language Models", 2023): the
// arithmetic. For a MatMul Y = X W with X [rows, K] and W [K, N], the
// per-input-channel factor s_j (j < K) moves quantization difficulty from
// the activation to the weight: Y = (X / s) (s W). With
//   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
// alpha = 1 makes every activation channel's range 1 and puts all the
// spread into the weights; alpha = 0 does the reverse. Pure functions; the
// graph side (which MatMuls share one s, where X / s is folded) is in
// smooth_quant.h.
#ifndef ONNXQUANT_SMOOTH_QUANT_SEARCH_H_
#define ONNXQUANT_SMOOTH_QUANT_SEARCH_H_

#include <cstdint>
#include <vector>

namespace onnxquant {

// A weight in input-channel-major layout: values[k * cols + n] is input
// channel k, output channel n (MatMul's B, Gemm's B with transB = 0; a
// Gemm with transB = 1 is transposed by the caller). Not owned.
struct WeightView {
  const float* values = nullptr;
  int64_t cols = 0;  // output channels N
};

// The activation side of a group: `rows` sample rows of X (row-major,
// `channels` values each, not owned), and per channel the minimum and
// maximum over all calibration data (the per-tensor range the quantizer
// would choose for X / s is derived from these, MIN_MAX).
struct ActivationSample {
  const float* rows = nullptr;
  int64_t count = 0;
  int64_t channels = 0;
  std::vector<float> min, max;  // per channel
};

// How the search emulates the weights: symmetric, codes in [-qmax, qmax]
// (127: int8; 7: int4), per output channel or one scale per weight.
struct WeightEmulation {
  int qmax = 127;
  bool per_channel = true;
};

// Per channel (the last axis of `count` rows of `channels` values), the
// minimum and maximum of the finite values, merged into *min and *max
// (which start as +inf / -inf, or hold earlier chunks' values; resized to
// `channels` when empty). Throws InvalidArgument for channels < 1 or
// *min / *max of another size.
void AccumulateChannelRange(const float* data, int64_t count, int64_t channels,
                            std::vector<float>* min, std::vector<float>* max);

// Per input channel, max |w| over every weight of `weights` (each with
// `channels` rows).
std::vector<float> WeightChannelAbsMax(const std::vector<WeightView>& weights,
                                       int64_t channels);

// s_j = xmax_j^alpha / wmax_j^(1 - alpha), with xmax_j = max(|min_j|,
// |max_j|); 1 where either maximum is 0 (a dead channel keeps its scale);
// floored at 1e-5. Throws InvalidArgument for alpha outside [0, 1] or
// sizes that differ.
std::vector<float> SmoothingScales(const std::vector<float>& x_min,
                                   const std::vector<float>& x_max,
                                   const std::vector<float>& w_abs_max,
                                   double alpha);

// The error of the group's quantized MatMuls with factors `s` (all 1: the
// unsmoothed layer): X / s quantized per tensor as uint8 asymmetric over
// [min(0, min_j min_j / s_j), max(0, max_j max_j / s_j)] (zero point
// rounded half to even), each s W quantized per output channel int8
// symmetric in [-127, 127] (or as `emulation` says), their product
// against the float X W. Returns sum ||Yq - Y||^2 / sum ||Y||^2 over the
// weights (0 when Y is 0). Throws InvalidArgument for sizes that do not
// match or qmax < 1.
double QuantizedMatMulError(const ActivationSample& x,
                            const std::vector<WeightView>& weights,
                            const std::vector<float>& s,
                            const WeightEmulation& emulation = {});

struct AlphaSearch {
  double alpha = 0.0;          // the best of the grid
  double error_before = 0.0;   // QuantizedMatMulError with s = 1
  double error_after = 0.0;    // with the best alpha's factors
  std::vector<float> scales;   // the best alpha's factors
  std::vector<double> grid, errors;  // every alpha tried and its error
};

// Tries each alpha of `grid` in order and keeps the lowest error (the
// first on ties); a grid of one value is a fixed alpha. Throws
// InvalidArgument for an empty grid or an alpha outside [0, 1].
AlphaSearch SearchAlpha(const ActivationSample& x,
                        const std::vector<WeightView>& weights,
                        const std::vector<double>& grid,
                        const WeightEmulation& emulation = {});

}  // namespace onnxquant

#endif  // ONNXQUANT_SMOOTH_QUANT_SEARCH_H_
