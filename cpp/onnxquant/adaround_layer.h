// AdaRound on the layers of a model: which nodes it rounds, the Gram
// matrices of one node's inputs summed batch by batch, and the rounding of
// its weight from them (adaround.h, adaround_gram.h). The loop over layers
// and the model runs that produce the inputs live in Python
// (onnxquant.recovery.adaround): the engine has no runtime.
#ifndef ONNXQUANT_ADAROUND_LAYER_H_
#define ONNXQUANT_ADAROUND_LAYER_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "onnxquant/adaround.h"
#include "onnxquant/adaround_gram.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/node_weights.h"
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

// A normalised model parsed and planned once for AdaRound, shared by every
// layer's Gram accumulator (and through it the layer's rounding): the
// model, the options, the plan and an index of the main graph.
class AdaRoundModel {
 public:
  // The targets are the nodes of the main graph that the plan for `options`
  // quantizes with a constant float weight read by no other node, and that
  // AdaRound can round: Conv and ConvTranspose 1-D and 2-D (grouped and
  // depthwise included; no ConvTranspose with output_shape or auto_pad
  // SAME), Gemm with a constant B, MatMul with a constant rank-2 B. Throws
  // as MakePlan.
  AdaRoundModel(pb::ModelProto model, const DtypeMap& dtypes,
                const QuantOptions& options);
  AdaRoundModel(const AdaRoundModel&) = delete;
  AdaRoundModel& operator=(const AdaRoundModel&) = delete;

  const AdaRoundTargets& targets() const { return targets_; }
  const QuantOptions& options() const { return options_; }
  const GraphIndex& index() const { return *index_; }
  const pb::GraphProto& graph() const { return model_.graph(); }
  // The plan entry of node `name` of the main graph; nullptr for none.
  const QuantizedNode* Planned(const std::string& name) const;

 private:
  pb::ModelProto model_;
  QuantOptions options_;
  QuantPlan plan_;
  std::unique_ptr<GraphIndex> index_;  // of model_'s main graph
  AdaRoundTargets targets_;
};

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

// One layer of an AdaRoundModel: sums its Gram matrices batch by batch, so
// that the caller needs only one batch of its inputs in memory at a time,
// then rounds its weight from them. It keeps what it reads of the model
// (the node, its weight and the weight's quantization), so the model is
// neither parsed nor planned again per layer, and need not outlive it. The
// sums do not depend on the thread count; they do on how the samples are
// split into batches, in the last bits.
class LayerGramAccumulator {
 public:
  // Throws InvalidArgument naming `node` when it is not one of the model's
  // targets; Error(kModel) as QuantizeNodeWeights.
  LayerGramAccumulator(const AdaRoundModel& model, const std::string& node);

  // Adds one batch: the node's FP32 inputs and, for the asymmetric loss, the
  // same samples' inputs in the model with the layers above quantized (given
  // for every batch or for none). Throws InvalidArgument naming the node for
  // inputs that do not fit it.
  void Add(const std::vector<InputView>& inputs,
           const std::vector<InputView>& quantized_inputs, int threads);

  // Rounds the node's weight with the scales quantize() gives it under the
  // model's options (per channel or per tensor, power of two, int4 or int8,
  // reduce_weight_range, weight_range, the node's kernel remedy; not the
  // int32-bias floor, which needs the input scale), learning the rounding
  // on the Gram matrices added. Quantizing the returned weight with the
  // same options gives back `codes`: the elements of each scale's group
  // that hold its largest |nearest code| keep their nearest code, so max|w|
  // (and with it the scale) does not move. With quantized inputs the loss
  // compares the FP32 output W x with W~ xq (asymmetric reconstruction,
  // adaround.h). Throws InvalidArgument naming the node when no input was
  // added, or settings out of their domain; InvalidArgument "cancelled"
  // when progress returns false.
  LayerRounding Round(const AdaRoundSettings& settings,
                      const AdaRoundProgress& progress = nullptr) const;

  const LayerGrams& grams() const { return grams_; }
  int64_t batches() const { return batches_; }

 private:
  std::string name_;
  pb::NodeProto node_;
  int weight_axis_ = -1;
  std::vector<int64_t> weight_dims_;
  std::vector<float> weight_;  // the float weight, ONNX layout
  NodeWeights quantized_;      // its nearest codes and scales
  std::vector<int32_t> remedy_qmax_;
  int32_t base_qmax_ = 127;
  bool int4_ = false;
  bool conv_ = false;
  bool trans_a_ = false;
  int64_t k_ = 0;
  int64_t batches_ = 0;
  LayerGrams grams_;
};

}  // namespace onnxquant

#endif  // ONNXQUANT_ADAROUND_LAYER_H_
