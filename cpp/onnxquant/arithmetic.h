// The quantization arithmetic of the TFLite 8-bit spec, in ONNX QDQ form.
#ifndef ONNXQUANT_ARITHMETIC_H_
#define ONNXQUANT_ARITHMETIC_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "onnxquant/plan.h"

namespace onnxquant {

struct ActivationParams {
  float scale = 1.f;
  int32_t zero_point = 0;
  bool floored = false;  // the range was (near) zero: the scale was floored
};

// Smallest scale an activation gets; a zero range is floored to it.
inline constexpr float kMinActivationScale = 1e-8f;

// Scale and zero point for a per-tensor activation range [rmin, rmax].
// The range is first widened to contain 0. A symmetric range [-a, a] (a > 0)
// gets scale a / 127 and the zero point at the middle of the type (0 for
// int8, 128 for uint8), so that its values take codes within +-127 of the
// zero point. Any other range gets scale (rmax - rmin) / 255 and a zero point
// rounded half to even and clamped to the type's range ([0, a] thus keeps
// the type's lowest code as its zero point). REQUIRES: finite rmin <= rmax
// (Error(kRange) otherwise, naming nothing: the caller adds the tensor).
ActivationParams ActivationQuantParams(float rmin, float rmax,
                                       ActivationType type);

// The same, with the options' power-of-two rule: where `options` ask for
// power-of-two scales, a range with negative values gets the symmetric zero
// point (middle of the type) and the smallest power-of-two scale whose
// codes cover max(|rmin|, |rmax|); a non-negative range gets the type's
// lowest code as zero point and the smallest power-of-two scale covering
// rmax with the type's full span. Else as above.
ActivationParams ActivationQuantParams(float rmin, float rmax,
                                       const QuantOptions& options);

// The same for a tensor of activation type `type` (a per-tensor override)
// instead of the options' own.
ActivationParams ActivationQuantParams(float rmin, float rmax,
                                       const QuantOptions& options,
                                       ActivationType type);

// The smallest power of two >= x (x > 0, finite); 2^-126 below that.
float PowerOfTwoCeil(float x);

// The code range of an activation type: [qmin, qmax].
std::pair<int32_t, int32_t> ActivationCodeRange(ActivationType type);

struct WeightQuant {
  std::vector<int8_t> values;  // same layout as the float weight
  std::vector<float> scales;   // one per channel (or one), or per block
  bool enlarged = false;       // some channel's scale was enlarged for bias
  // Blockwise only: the scales' dims (the weight's, with the blocked axis
  // divided by the block size, rounded up) and the block size; 0 otherwise.
  std::vector<int64_t> scale_dims;
  int64_t block_size = 0;
};

// Symmetric int8 weights in [-qmax, qmax] (qmax 127, or 63 for a reduced
// range), scale = max|w| / qmax per channel along `axis` (-1: per tensor).
// `min_scales`, when not empty, gives per channel a floor on the scale (for
// the int32 bias to fit); zero-scale channels get the floor or 1.
// `channel_qmax`, when not empty, gives per channel its own qmax in
// [1, 127] instead of `qmax` (InvalidArgument for a wrong size or value).
// `power_of_two` rounds each channel's scale to a power of two (kCeil: up;
// kMse: up, or one lower where that lowers the channel's squared error).
// `weight_range` kMse replaces max|w| by the per-channel squared-error
// search of weight_range_search.h (over powers of two when power_of_two is
// on); the bias floor still applies.
WeightQuant QuantizeWeight(const std::vector<float>& w,
                           const std::vector<int64_t>& dims, int axis,
                           int qmax, const std::vector<float>& min_scales,
                           const std::vector<int32_t>& channel_qmax = {},
                           PowerOfTwo power_of_two = PowerOfTwo::kOff,
                           WeightRange weight_range = WeightRange::kMinMax);

// Symmetric weights of a 2-D [K, N] weight (a MatMul's B), one scale per
// block of `block_size` consecutive rows of a column (blocks along the
// reduction axis 0; the last block is shorter when K is not a multiple):
// scale = max|w| / qmax over the block (1 for an all-zero block), codes in
// [-qmax, qmax], scales in row-major [ceil(K / block_size), N] order.
// REQUIRES: dims of rank 2, block_size >= 1, qmax >= 1 (InvalidArgument
// otherwise).
WeightQuant QuantizeWeightBlocked(const std::vector<float>& w,
                                  const std::vector<int64_t>& dims,
                                  int64_t block_size, int qmax);

// Per channel, the smallest weight scale for which bias / (input_scale *
// weight_scale) fits in int32 with a margin.
std::vector<float> MinWeightScalesForBias(const std::vector<float>& bias,
                                          float input_scale,
                                          size_t num_channels);

// int32 bias: round(b / (input_scale * weight_scale[c])), the bias scale
// computed in float32 exactly as stored. Returns values and bias scales.
// REQUIRES: one weight scale, or one per bias value (InvalidArgument
// otherwise).
std::vector<int32_t> QuantizeBias(const std::vector<float>& bias,
                                  float input_scale,
                                  const std::vector<float>& weight_scales,
                                  std::vector<float>* bias_scales);

}  // namespace onnxquant

#endif  // ONNXQUANT_ARITHMETIC_H_
