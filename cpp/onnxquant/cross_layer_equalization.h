// Cross-layer equalization (Nagel et al., "Data-Free Quantization Through
// Weight Equalization and Bias Correction", 2019).
//
// For a chain Conv1 -> act -> Conv2 where `act` is positively homogeneous
// (act(x / s) = act(x) / s for s > 0: Relu, LeakyRelu, PRelu, or nothing),
// output channel c of Conv1 (its weights and bias) is divided by s_c and
// input channel c of Conv2 multiplied by s_c: the function is unchanged.
// With r1_c the range (max |w|) of Conv1's output channel c and r2_c that
// of Conv2's input channel c, s_c = sqrt(r1_c * r2_c) / r2_c makes both
// ranges sqrt(r1_c * r2_c), so that per-tensor weight quantization loses
// less on the channels that were small. Conv2 may be grouped or depthwise;
// a Conv that is the second of one pair and the first of the next makes the
// pairs interact, so sweeps repeat until every scale of a sweep is within
// `tolerance` of 1.
//
// Clip (ReLU6 and the like) is not positively homogeneous: clip(x / s, 0, 6)
// differs from clip(x, 0, 6) / s, and its scalar bounds cannot take a
// per-channel scale. By default a Clip stops the chain (the pair is not
// equalized); ClipHandling::kReplaceWithRelu first replaces each Clip with
// lower bound 0 that sits in such a chain by a Relu (what Nagel et al. did
// for MobileNetV2), which changes the FP32 function where values exceeded
// the upper bound. SiLU, GELU, LayerNormalization and anything else also
// stop a chain. High-bias absorption is its own pass
// (high_bias_absorption.h), run after this one.
//
// Matching: both nodes are Conv (ONNX domain) with float32 weight and bias
// initializers that no other node reads and that are not graph inputs; the
// intermediate tensors have exactly one reader and are no graph outputs and
// not read by a subgraph; the channel counts agree. Only the main graph.
#ifndef ONNXQUANT_CROSS_LAYER_EQUALIZATION_H_
#define ONNXQUANT_CROSS_LAYER_EQUALIZATION_H_

#include <string>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

enum class ClipHandling { kStop, kReplaceWithRelu };

struct EqualizationOptions {
  // Sweeps over all pairs at most (default 100).
  int max_sweeps = 100;
  // Converged when every scale of a sweep satisfies |s - 1| <= tolerance.
  double tolerance = 1e-4;
  ClipHandling clip = ClipHandling::kStop;
  // For per-tensor power-of-two weights (0: off). Equalization leaves each
  // pair a free common factor; a per-tensor power-of-two scale wastes up to
  // half its codes when max|w| / qmax falls just above a power of two. When
  // set, after the sweeps each pair in graph order is given one more factor
  // a in [1, 2) on all its channels (the first Conv divided by a, the second
  // multiplied) so that the first Conv's max|w| / power_of_two_qmax is a
  // power of two (to within 1e-6, rounded so the scale is not pushed over).
  int power_of_two_qmax = 0;
};

struct EqualizedPair {
  std::string first, second;  // Conv node names
  std::string activation;     // the node between them ("" for none)
  // Per channel: Conv1's output channel was divided by it, Conv2's input
  // channel multiplied (the product over the sweeps).
  std::vector<float> scales;
  // Of Conv1's per-output-channel ranges: max / min over nonzero channels,
  // before and after.
  double spread_before = 1.0, spread_after = 1.0;
};

struct EqualizationReport {
  std::vector<EqualizedPair> pairs;
  std::vector<std::string> clips_replaced;  // Clip nodes now Relu
  std::vector<std::string> clips_stopped;   // Clip nodes that ended a chain
  int sweeps = 0;
  bool converged = true;
};

// Equalizes every matching pair of the main graph of `model` in place.
// Validates the model first (ValidateModel: Error(kModel) naming the node or
// tensor of a malformed model).
// Throws Error(kInvalidArgument) for max_sweeps < 1, a negative
// tolerance or power_of_two_qmax, and Error(kModel) naming the node for a
// Conv whose weight does not fit its group.
EqualizationReport EqualizeCrossLayer(pb::ModelProto& model,
                                      const EqualizationOptions& options);

}  // namespace onnxquant

#endif  // ONNXQUANT_CROSS_LAYER_EQUALIZATION_H_
