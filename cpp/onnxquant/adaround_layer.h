// AdaRound on the layers of a model: which nodes it rounds, the Gram
// matrices of one node's inputs summed batch by batch, and the rounding of
// its weight from them (adaround.h, adaround_gram.h). The loop over layers
// and the model runs that produce the inputs live in Python
// (onnxquant.recovery.adaround): the engine has no runtime.
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

// The Gram matrices of one node's inputs (adaround_gram.h): `gram` of the
// inputs the candidate weight sees; with quantized inputs, `cross` (FP32
// inputs x quantized) and `fp_gram` (FP32), empty otherwise.
struct LayerGrams {
  GramSums gram, cross, fp_gram;
};

// Sums a node's Gram matrices batch by batch, so that the caller needs only
// one batch of its inputs in memory at a time. The sums do not depend on
// the thread count; they do on how the samples are split into batches, in
// the last bits.
class LayerGramAccumulator {
 public:
  // Throws InvalidArgument naming `node` when it is not one of
  // ListAdaRoundTargets.
  LayerGramAccumulator(const pb::ModelProto& model, const DtypeMap& dtypes,
                       const QuantOptions& options, const std::string& node);

  // Adds one batch: the node's FP32 inputs and, for the asymmetric loss, the
  // same samples' inputs in the model with the layers above quantized (given
  // for every batch or for none). Throws InvalidArgument naming the node for
  // inputs that do not fit it.
  void Add(const std::vector<InputView>& inputs,
           const std::vector<InputView>& quantized_inputs, int threads);

  const LayerGrams& grams() const { return grams_; }
  int64_t batches() const { return batches_; }

 private:
  std::string name_;
  pb::NodeProto node_;
  std::vector<int64_t> weight_dims_;
  bool conv_ = false;
  bool trans_a_ = false;
  int64_t k_ = 0;
  int64_t batches_ = 0;
  LayerGrams grams_;
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

// RoundLayer from Gram matrices summed by a LayerGramAccumulator.
LayerRounding RoundLayerFromGrams(const pb::ModelProto& model,
                                  const DtypeMap& dtypes,
                                  const QuantOptions& options,
                                  const std::string& node,
                                  const LayerGrams& grams,
                                  const AdaRoundSettings& settings,
                                  const AdaRoundProgress& progress = nullptr);

}  // namespace onnxquant

#endif  // ONNXQUANT_ADAROUND_LAYER_H_
