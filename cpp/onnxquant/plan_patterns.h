// Multi-node patterns the plan treats as a unit: SiLU (x * sigmoid(x)),
// decomposed GELU and decomposed LayerNormalization.
#ifndef ONNXQUANT_PLAN_PATTERNS_H_
#define ONNXQUANT_PLAN_PATTERNS_H_

#include <unordered_map>
#include <unordered_set>

#include "onnxquant/graph_index.h"

namespace onnxquant {

struct PatternMatches {
  std::unordered_set<int> silu_sigmoid;  // the Sigmoid of a SiLU
  std::unordered_set<int> silu_mul;      // the Mul of a SiLU
  // Nodes of a decomposed GELU or LayerNormalization -> which one.
  std::unordered_map<int, const char*> float_blocks;
};

// Finds the patterns in the main graph of `index`.
PatternMatches FindPatterns(const GraphIndex& index);

}  // namespace onnxquant

#endif  // ONNXQUANT_PLAN_PATTERNS_H_
