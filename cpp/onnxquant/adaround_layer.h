// AdaRound on the layers of a model: which nodes it rounds, and the rounding
// of one node's weight from its cached FP32 inputs (adaround.h,
// adaround_gram.h). The loop over layers and the model runs that cache the
// inputs live in Python (onnxquant.recovery.adaround): the engine has no
// runtime.
#ifndef ONNXQUANT_ADAROUND_LAYER_H_
#define ONNXQUANT_ADAROUND_LAYER_H_

#include <string>
#include <utility>
#include <vector>

#include "onnxquant/adaround.h"
#include "onnxquant/adaround_gram.h"
#include "onnxquant/plan.h"

namespace onnxquant {

struct AdaRoundTarget {
  std::string node;    // a Conv(Transpose), Gemm or MatMul the plan quantizes
  std::string input;   // its activation input (what the caller caches)
  std::string weight;  // its weight initializer
};

struct AdaRoundTargets {
  std::vector<AdaRoundTarget> layers;  // in graph order
  // Planned nodes with a constant weight that AdaRound leaves, with why.
  std::vector<std::pair<std::string, std::string>> skipped;
};

// The nodes of the main graph that the plan for `options` quantizes with a
// constant float weight read by no other node, and that AdaRound can round:
// Conv and ConvTranspose 1-D and 2-D (grouped and depthwise included; no
// ConvTranspose with output_shape or auto_pad SAME), Gemm with a constant B,
// MatMul with a constant rank-2 B. Throws as MakePlan.
AdaRoundTargets ListAdaRoundTargets(const pb::ModelProto& model,
                                    const DtypeMap& dtypes,
                                    const QuantOptions& options);

struct LayerRounding {
  std::string weight_name;
  std::vector<int64_t> dims;    // ONNX layout
  std::vector<float> weight;    // scale * code, ONNX layout
  std::vector<int32_t> codes;   // ONNX layout
  RoundingResult stats;         // codes there in the problem's layout
};

// Rounds the weight of node `node` (one of ListAdaRoundTargets) with the
// scales quantize() gives it under `options` (per channel or per tensor,
// power of two, int4 or int8, reduce_weight_range, weight_range, the
// node's kernel remedy; not the int32-bias floor, which needs the input
// scale), learning the rounding on `inputs` (its activation input on the
// calibration samples, FP32). Quantizing the returned weight with the same
// options gives back `codes`: the elements of each scale's group that hold
// its largest |nearest code| keep their nearest code, so max|w| (and with
// it the scale) does not move.
// `quantized_inputs` (empty: none): the same samples' input to the node in
// the model whose layers above are quantized; the loss then compares the
// FP32 output W x with W~ xq (asymmetric reconstruction, adaround.h).
// Throws InvalidArgument naming the node for a node that is not a target,
// inputs that do not fit it, or settings out of their domain;
// InvalidArgument "cancelled" when progress returns false.
LayerRounding RoundLayer(const pb::ModelProto& model, const DtypeMap& dtypes,
                         const QuantOptions& options, const std::string& node,
                         const std::vector<InputView>& inputs,
                         const AdaRoundSettings& settings,
                         const AdaRoundProgress& progress = nullptr,
                         const std::vector<InputView>& quantized_inputs = {});

}  // namespace onnxquant

#endif  // ONNXQUANT_ADAROUND_LAYER_H_
