// Weight range search: per output channel, the clipping range (the scale)
// that minimises the squared quantization error of that channel's weights.
#ifndef ONNXQUANT_WEIGHT_RANGE_SEARCH_H_
#define ONNXQUANT_WEIGHT_RANGE_SEARCH_H_

#include <cstdint>
#include <vector>

namespace onnxquant {

// Candidates searched without power-of-two scales: the clipping thresholds
// max|w| * k / kWeightSearchSteps for k in [kWeightSearchMinStep,
// kWeightSearchSteps] (10 % to 100 % of max|w| in steps of 1 %).
inline constexpr int kWeightSearchSteps = 100;
inline constexpr int kWeightSearchMinStep = 10;
// With power-of-two scales: PowerOfTwoCeil(max|w| / qmax) / 2^j for j in
// [0, kWeightSearchPowerSteps).
inline constexpr int kWeightSearchPowerSteps = 12;

// For each channel c along `axis` of the weight `w` (shape `dims`, row-major;
// axis -1: the whole tensor is one channel), the scale s among the
// candidates above that minimises
//   sum over the channel's values x of (x - s * clamp(round(x / s), -q, q))^2
// with q = channel_qmax[c] (rounding half to even). Ties go to the larger
// scale (less clipping). An all-zero channel gets 0 (the caller chooses).
// `power_of_two`: search powers of two only.
// REQUIRES: channel_qmax holds one entry per channel, each in [1, 32767];
// axis < dims.size(); w.size() == product of dims (InvalidArgument
// otherwise).
std::vector<float> SearchWeightScales(const std::vector<float>& w,
                                      const std::vector<int64_t>& dims,
                                      int axis,
                                      const std::vector<int32_t>& channel_qmax,
                                      bool power_of_two);

// The squared quantization error of `values` with scale `scale` and codes in
// [-qmax, qmax] (the objective above).
double WeightQuantError(const std::vector<float>& values, float scale,
                        int32_t qmax);

}  // namespace onnxquant

#endif  // ONNXQUANT_WEIGHT_RANGE_SEARCH_H_
