// The quantized weight (and float bias) of one planned node, computed the
// same way for QDQ insertion and for the kernel check (kernel_check.h).
#ifndef ONNXQUANT_NODE_WEIGHTS_H_
#define ONNXQUANT_NODE_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "onnxquant/arithmetic.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/plan.h"

namespace onnxquant {

struct NodeWeights {
  std::string weight_name;
  std::vector<int64_t> dims;  // the float weight's dims (ONNX layout)
  WeightQuant quant;          // int8 codes in [-qmax, qmax] and scales
  std::vector<float> bias;    // empty without a planned bias
};

// Weights quantized once and handed on (the kernel check quantizes every
// checked node's weight as the insertion would, so the insertion takes them
// from there), with what they were computed from besides the model and the
// options they share: the node's activation input scale, its bias input
// slot, and the remedy. Keyed by WeightKey(scope, node).
struct CachedWeights {
  float input_scale = 0.f;
  int bias_input = -1;
  WeightRemedy remedy;
  NodeWeights weights;
};
using WeightCache = std::unordered_map<std::string, CachedWeights>;

// The key of node `node` of scope `scope` ("" for the main graph).
std::string WeightKey(const std::string& scope, const std::string& node);

// The weight remedy `options` give `node` (the default one unless listed).
const WeightRemedy& RemedyOf(const QuantOptions& options,
                             const std::string& node);

// Quantizes the weight of the planned node `q` (q.weight_input >= 0), whose
// activation input has scale `input_scale` (used only when it has a bias: the
// int32 bias must fit, which may enlarge a channel's weight scale), with the
// range `options` give it (reduce_weight_range, and its remedy's per-channel
// qmax; for an int4 weight, [-7, 7] per channel, or per block of
// options.block_size rows for the [K, N] weight of a MatMul). Throws
// InternalError when the weight initializer is missing, and
// InvalidArgument naming the node for a remedy that does not fit it, and
// Error(kModel) naming the node for a weight of too low a rank for its axis
// or a bias whose length is neither 1 nor the channel count, or a weight or
// bias holding a NaN or an infinity.
NodeWeights QuantizeNodeWeights(const GraphIndex& index,
                                const pb::NodeProto& node,
                                const QuantizedNode& q, float input_scale,
                                const QuantOptions& options);

}  // namespace onnxquant

#endif  // ONNXQUANT_NODE_WEIGHTS_H_
