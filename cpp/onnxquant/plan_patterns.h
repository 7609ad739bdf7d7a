// Multi-node patterns the plan treats as a unit: SiLU (x * sigmoid(x)),
// decomposed GELU and decomposed LayerNormalization; and the nodes that only
// compute the divisor of a Div.
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
  // Nodes whose every output is read only as the divisor of a Div, directly
  // or through other such nodes (x / max(||x||, eps), say). Quantized, a
  // divisor near zero turns one rounding step into an unbounded error.
  std::unordered_set<int> divisor_only;
};

// Finds the patterns in the main graph of `index`.
PatternMatches FindPatterns(const GraphIndex& index);

}  // namespace onnxquant

#endif  // ONNXQUANT_PLAN_PATTERNS_H_
