#include "onnxquant/plan_patterns.h"

#include <algorithm>
#include <string>

namespace onnxquant {
namespace {

// The producer of input `k` of node `n` when it has op type `op`, else -1.
int ProducerOf(const GraphIndex& index, const pb::NodeProto& n, int k,
               const char* op) {
  if (k >= n.input_size()) return -1;
  int p = index.Producer(n.input(k));
  if (p < 0 || index.graph().node(p).op_type() != op) return -1;
  return p;
}

// Index of the input of `n` (0 or 1) produced by op type `op`, or -1.
int InputFrom(const GraphIndex& index, const pb::NodeProto& n,
              const char* op) {
  for (int k = 0; k < 2 && k < n.input_size(); ++k) {
    if (ProducerOf(index, n, k, op) >= 0) return k;
  }
  return -1;
}

// x * sigmoid(x): a Mul whose inputs are x and Sigmoid(x).
void FindSilu(const GraphIndex& index, PatternMatches* m) {
  const auto& g = index.graph();
  for (int i = 0; i < g.node_size(); ++i) {
    const auto& n = g.node(i);
    if (n.op_type() != "Mul" || n.input_size() != 2) continue;
    const int k = InputFrom(index, n, "Sigmoid");
    if (k < 0) continue;
    const int s = index.Producer(n.input(k));
    if (g.node(s).input(0) != n.input(1 - k)) continue;
    m->silu_sigmoid.insert(s);
    m->silu_mul.insert(i);
  }
}

// Marks the GELU's tail from node `from` (its Erf or Tanh): single
// consumers Add(., 1) -> Mul -> Mul, and the Mul(x, 0.5) feeding the last
// Mul where the 0.5 * x comes first.
void MarkGeluTail(const GraphIndex& index, int from, PatternMatches* m) {
  const auto& g = index.graph();
  int cur = from;
  const char* chain[] = {"Add", "Mul", "Mul"};
  for (const char* op : chain) {
    const auto& cons = index.Consumers(g.node(cur).output(0));
    if (cons.size() != 1 || g.node(cons[0]).op_type() != op) break;
    cur = cons[0];
    m->float_blocks[cur] = "GELU";
  }
  const auto& last = g.node(cur);
  if (last.op_type() == "Mul") {
    for (int k = 0; k < last.input_size(); ++k) {
      const int p = ProducerOf(index, last, k, "Mul");
      if (p >= 0 && index.Consumers(last.input(k)).size() == 1 &&
          m->float_blocks.count(p) == 0) {
        m->float_blocks[p] = "GELU";
      }
    }
  }
}

// GELU: Div(x, c) -> Erf -> Add(., 1) -> Mul(x, .) -> Mul(., 0.5), in either
// order of the two Muls. Marks the Erf's neighbours from the Div on.
void FindGelu(const GraphIndex& index, PatternMatches* m) {
  const auto& g = index.graph();
  for (int i = 0; i < g.node_size(); ++i) {
    if (g.node(i).op_type() != "Erf") continue;
    const int div = ProducerOf(index, g.node(i), 0, "Div");
    if (div < 0) continue;
    m->float_blocks[div] = "GELU";
    m->float_blocks[i] = "GELU";
    MarkGeluTail(index, i, m);
  }
}

// GELU's tanh form (GPT-2's gelu_new, BERT's "gelu_pytorch_tanh"): Pow(x, 3)
// -> Mul(., 0.044715) -> Add(x, .) -> Mul(., sqrt(2 / pi)) -> Tanh ->
// Add(., 1) -> Mul -> Mul, the 0.5 * x first or last. Anchored on the Tanh;
// marks the chain back to the Pow and the tail. Quantized, the cube's wide
// range costs the most SQNR of GPT-2's tensors.
void FindTanhGelu(const GraphIndex& index, PatternMatches* m) {
  const auto& g = index.graph();
  for (int i = 0; i < g.node_size(); ++i) {
    if (g.node(i).op_type() != "Tanh") continue;
    const int scale = ProducerOf(index, g.node(i), 0, "Mul");
    if (scale < 0) continue;
    const int k_add = InputFrom(index, g.node(scale), "Add");
    if (k_add < 0) continue;
    const int add = index.Producer(g.node(scale).input(k_add));
    const int k_cube = InputFrom(index, g.node(add), "Mul");
    if (k_cube < 0) continue;
    const int cube = index.Producer(g.node(add).input(k_cube));
    const int k_pow = InputFrom(index, g.node(cube), "Pow");
    if (k_pow < 0) continue;
    const int pow = index.Producer(g.node(cube).input(k_pow));
    for (int n : {pow, cube, add, scale, i}) m->float_blocks[n] = "GELU";
    MarkGeluTail(index, i, m);
  }
}

// LayerNormalization decomposed: ReduceMean -> Sub -> Pow -> ReduceMean ->
// Add(eps) -> Sqrt -> Div -> Mul(gamma) -> Add(beta). Anchored on the Div
// whose divisor comes from Sqrt.
void FindLayerNorm(const GraphIndex& index, PatternMatches* m) {
  const auto& g = index.graph();
  for (int i = 0; i < g.node_size(); ++i) {
    const auto& n = g.node(i);
    if (n.op_type() != "Div") continue;
    const int sqrt = ProducerOf(index, n, 1, "Sqrt");
    if (sqrt < 0) continue;
    const int add_eps = ProducerOf(index, g.node(sqrt), 0, "Add");
    if (add_eps < 0 || InputFrom(index, g.node(add_eps), "ReduceMean") < 0) {
      continue;
    }
    m->float_blocks[i] = "LayerNormalization";
    m->float_blocks[sqrt] = "LayerNormalization";
    m->float_blocks[add_eps] = "LayerNormalization";
    int cur = i;
    const char* chain[] = {"Mul", "Add"};
    for (const char* op : chain) {
      const auto& cons = index.Consumers(g.node(cur).output(0));
      if (cons.size() != 1 || g.node(cons[0]).op_type() != op) break;
      cur = cons[0];
      m->float_blocks[cur] = "LayerNormalization";
    }
  }
}

// Whether `tensor` is read, and read only as the divisor of a Div or by
// nodes already found to compute only a divisor.
bool ReadOnlyAsDivisor(const GraphIndex& index, const std::string& tensor,
                       const PatternMatches& m) {
  const auto& cons = index.Consumers(tensor);
  if (tensor.empty() || cons.empty() || index.IsGraphOutput(tensor) ||
      index.ReadBySubgraph(tensor)) {
    return false;
  }
  for (int c : cons) {
    if (m.divisor_only.count(c)) continue;
    const auto& cn = index.graph().node(c);
    const bool divisor = cn.op_type() == "Div" && cn.domain().empty() &&
                         cn.input_size() == 2 && cn.input(1) == tensor &&
                         cn.input(0) != tensor;
    if (!divisor) return false;
  }
  return true;
}

// Reverse topological order: a node's consumers are decided before it.
void FindDivisorOnly(const GraphIndex& index, PatternMatches* m) {
  const auto& g = index.graph();
  for (int i = g.node_size() - 1; i >= 0; --i) {
    const auto& outputs = g.node(i).output();
    if (!outputs.empty() &&
        std::all_of(outputs.begin(), outputs.end(), [&](const std::string& o) {
          return ReadOnlyAsDivisor(index, o, *m);
        })) {
      m->divisor_only.insert(i);
    }
  }
}

}  // namespace

PatternMatches FindPatterns(const GraphIndex& index) {
  PatternMatches m;
  FindSilu(index, &m);
  FindGelu(index, &m);
  FindTanhGelu(index, &m);
  FindLayerNorm(index, &m);
  FindDivisorOnly(index, &m);
  return m;
}

}  // namespace onnxquant
