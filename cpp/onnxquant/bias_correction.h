// Empirical bias correction (Nagel et al. 2019, section 4.2, the empirical
// variant): the native pieces. The loop that runs the model on calibration
// samples lives in Python (onnxquant.recovery.correct_bias), since the
// engine has no runtime: for each layer in topological order, the mean
// output of the layer with quantized (emulated) weights is compared with the
// FP32 model's, per output channel, and the difference is subtracted from
// the layer's float bias. quantize() then quantizes the corrected bias.
#ifndef ONNXQUANT_BIAS_CORRECTION_H_
#define ONNXQUANT_BIAS_CORRECTION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "onnxquant/plan.h"

namespace onnxquant {

struct BiasLayer {
  std::string node;    // the Conv or Gemm
  std::string output;  // its output tensor (channels on axis 1)
  std::string bias;    // its bias initializer, one value per channel
  int64_t channels = 0;
};

struct BiasPreparation {
  std::vector<BiasLayer> layers;  // in graph (topological) order
  // Planned nodes with a weight that cannot be corrected, with the reason
  // (MatMul has no bias input; a Gemm bias that is not one per column).
  std::vector<std::pair<std::string, std::string>> skipped;
};

// For every node of the main graph that the plan for `options` quantizes
// with a constant weight and that can hold a per-output-channel bias (Conv;
// Gemm with a scalar-free [N] or absent C), makes its bias an initializer of
// its own holding one float32 value per output channel: a zero bias is added
// where the node has none, and a bias another node also reads is copied
// under a fresh name. The function of the model is unchanged.
// Throws as MakePlan, and Error(kModel) naming the node for a weight whose
// output channels cannot be told.
BiasPreparation PrepareBiasCorrection(pb::ModelProto& model,
                                      const DtypeMap& dtypes,
                                      const QuantOptions& options);

// Replaces the weight of every node the plan for `options` quantizes by its
// dequantized value (scale * int8 code, as quantize() computes them with
// these options; the int32-bias floor on weight scales is not applied, as
// the input scales are not known here). Returns the nodes changed.
std::vector<std::string> EmulateQuantizedWeights(pb::ModelProto& model,
                                                 const DtypeMap& dtypes,
                                                 const QuantOptions& options);

// Per channel (axis 1 of an array of shape `dims`, rank >= 2), the sum of
// the values, in double. REQUIRES: data holds the product of dims values.
// Throws InvalidArgument for a rank below 2.
std::vector<double> ChannelSums(const float* data,
                                const std::vector<int64_t>& dims);

}  // namespace onnxquant

#endif  // ONNXQUANT_BIAS_CORRECTION_H_
