// SmoothQuant on the graph: which MatMul/Gemm nodes share one smoothing
// factor, where X / s goes, and the rewrite (the arithmetic is in
// smooth_quant_search.h). Only the main graph.
//
// A group is every MatMul (rank-2 constant float32 B) and Gemm (transA = 0,
// rank-2 constant float32 B) that reads the same activation X as its input 0
// (Q, K and V of an attention block share one X, hence one s). X / s is
// folded into X's producer when X is read by the group alone (Shape and
// Size nodes, which read no values, aside), is no graph
// input or output and no subgraph reads it, and the producer is:
//  - LayerNormalization (axis -1): gamma and beta divided by s;
//  - Mul by a constant (one value per channel, or a scalar, which becomes a
//    vector): the constant divided by s;
//  - Add of a constant whose other input (read by the Add alone) comes from
//    one of these, recursively: both constants divided by s (the decomposed
//    LayerNorm's Mul(gamma) -> Add(beta)).
// Otherwise, with `insert_mul`, a Mul by 1 / s is inserted between X and the
// group (it stays in the graph, and the plan quantizes it like any Mul);
// without, the group is skipped and the reason recorded. A weight read by
// another node is skipped too (scaling it would change that node).
#ifndef ONNXQUANT_SMOOTH_QUANT_H_
#define ONNXQUANT_SMOOTH_QUANT_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "onnxquant/model_io.h"
#include "onnxquant/smooth_quant_search.h"

namespace onnxquant {

struct SmoothGroup {
  std::string activation;          // X
  std::vector<std::string> nodes;  // MatMul/Gemm nodes reading X, graph order
  int64_t channels = 0;            // K: X's last dimension
  // Where X / s goes: (node, input slot) of each constant divided by s;
  // empty when a Mul is inserted.
  std::vector<std::pair<std::string, int>> absorbers;
  std::string producer;  // the node that produces X ("" for a graph input)
  std::string absorb;    // "LayerNormalization", "constants", "inserted Mul"
};

struct SmoothGroups {
  std::vector<SmoothGroup> groups;  // in graph order of their first node
  // (activation, reason) of each group that cannot be smoothed.
  std::vector<std::pair<std::string, std::string>> skipped;
};

// Finds the groups of `model` (see above). Throws Error(kModel) naming the
// node for a MatMul/Gemm whose weight does not agree with the others of its
// group on K.
SmoothGroups FindSmoothGroups(const pb::ModelProto& model, bool insert_mul);

// Copies of the weights of `group`, in input-channel-major layout ([K, N]:
// a Gemm with transB = 1 transposed), in the order of group.nodes.
// Throws Error(kModel) naming a node that is gone or whose weight is not a
// float32 initializer.
std::vector<std::vector<float>> GroupWeights(const pb::ModelProto& model,
                                             const SmoothGroup& group);

// Per group, the factors s (group.channels values each, all > 0): divides
// the absorbers of the group (or inserts the Mul by 1 / s) and multiplies
// input channel j of each weight by s_j. The FP32 function is unchanged up
// to rounding. A constant read by other nodes too is copied under a fresh
// name first. REQUIRES: `groups` from FindSmoothGroups on this model, none
// twice. Throws InvalidArgument for factors of the wrong count or not > 0,
// Error(kModel) naming a node or tensor that is gone.
void ApplySmoothing(pb::ModelProto& model,
                    const std::vector<SmoothGroup>& groups,
                    const std::vector<std::vector<float>>& scales);

struct SmoothRecord {
  SmoothGroup group;
  AlphaSearch search;  // the alpha chosen, its factors, errors before/after
  bool applied = false;  // false: no alpha of the grid lowered the error
};

struct SmoothResult {
  std::vector<SmoothRecord> records;  // in group order
  std::vector<std::pair<std::string, std::string>> skipped;
};

// Where alpha is chosen: per group, or one for the whole model (the grid
// value with the lowest sum of the groups' errors).
enum class AlphaScope { kGroup, kModel };

// The whole pass: FindSmoothGroups, then per group SearchAlpha over `grid`
// (weights emulated as `emulation` says) on the statistics of its
// activation (`stats`, keyed by tensor name), alpha chosen per `scope`,
// then ApplySmoothing of the groups kept. With `only_if_better`, a group
// whose chosen error is not below its unsmoothed error is left as it is
// (applied = false); with kModel, all groups are kept or none, by the sum
// of their errors. Throws
// InvalidArgument naming a group's activation that has no statistics or
// statistics of another channel count, and as the functions above.
SmoothResult SmoothQuant(pb::ModelProto& model, bool insert_mul,
                         const std::map<std::string, ActivationSample>& stats,
                         const std::vector<double>& grid, bool only_if_better,
                         const WeightEmulation& emulation = {},
                         AlphaScope scope = AlphaScope::kGroup);

}  // namespace onnxquant

#endif  // ONNXQUANT_SMOOTH_QUANT_H_
