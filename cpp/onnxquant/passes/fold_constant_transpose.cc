// fold_constant_transpose: a Transpose of a float32 initializer becomes an
// initializer holding the transposed values, named as the Transpose's output.
//
// PyTorch's TorchScript exporter without constant folding writes a Linear
// layer on a 3-D input as MatMul(x, Transpose(W)). Left as it is, the plan
// sees a MatMul of two activations and quantizes the weight per tensor, with
// an activation's range; folded, the MatMul has a constant weight, quantized
// per output channel (ViT of models/cifar).
//
// The initializer must not be listed in graph.input (it could be overridden
// at run time) nor hold external data, and the Transpose's output must not be
// a graph output (an initializer as a graph output is not accepted by every
// runtime). The original initializer is removed when nothing else reads it.
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "onnxquant/graph_edit.h"
#include "onnxquant/passes/passes.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::passes {
namespace {

// `values` (row-major, `dims`) with its axes permuted: output axis k is
// input axis perm[k].
std::vector<float> Permute(const std::vector<float>& values,
                           const std::vector<int64_t>& dims,
                           const std::vector<int64_t>& perm,
                           std::vector<int64_t>* out_dims) {
  const size_t rank = dims.size();
  std::vector<int64_t> in_strides(rank, 1);
  for (size_t k = rank; k-- > 1;) in_strides[k - 1] = in_strides[k] * dims[k];
  out_dims->resize(rank);
  for (size_t k = 0; k < rank; ++k) (*out_dims)[k] = dims[perm[k]];
  std::vector<float> out(values.size());
  std::vector<int64_t> index(rank, 0);  // over the output's dims
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t src = 0;
    for (size_t k = 0; k < rank; ++k) src += index[k] * in_strides[perm[k]];
    out[i] = values[src];
    for (size_t k = rank; k-- > 0;) {
      if (++index[k] < (*out_dims)[k]) break;
      index[k] = 0;
    }
  }
  return out;
}

// The perm of `node` for a tensor of `rank`, or empty when it is not a
// permutation of [0, rank).
std::vector<int64_t> PermOf(const pb::NodeProto& node, size_t rank) {
  std::vector<int64_t> perm;
  if (const pb::AttributeProto* a = FindAttribute(node, "perm")) {
    perm.assign(a->ints().begin(), a->ints().end());
  } else {
    for (size_t k = rank; k-- > 0;) perm.push_back(static_cast<int64_t>(k));
  }
  if (perm.size() != rank) return {};
  std::vector<bool> seen(rank, false);
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(rank) || seen[p]) return {};
    seen[p] = true;
  }
  return perm;
}

// The initializers named `names`, by name (the last of a repeated name, as
// GraphIndex::Initializer finds it). A look-up of the few names Transposes
// read, without indexing every tensor of the graph.
std::unordered_map<std::string, const pb::TensorProto*> InitializersNamed(
    const pb::GraphProto& graph, const std::unordered_set<std::string>& names) {
  std::unordered_map<std::string, const pb::TensorProto*> found;
  for (const auto& t : graph.initializer()) {
    if (names.count(t.name())) found[t.name()] = &t;
  }
  return found;
}

// The names of `values` (a graph's inputs or outputs).
template <typename Values>
std::unordered_set<std::string> NamesOf(const Values& values) {
  std::unordered_set<std::string> names;
  for (const auto& v : values) names.insert(v.name());
  return names;
}

}  // namespace

bool FoldConstantTranspose(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<int> candidates;
  std::unordered_set<std::string> inputs;
  for (int i = 0; i < graph->node_size(); ++i) {
    const pb::NodeProto& node = graph->node(i);
    if (IsOnnxOp(node, "Transpose") && node.input_size() == 1 &&
        node.output_size() == 1) {
      candidates.push_back(i);
      inputs.insert(node.input(0));
    }
  }
  if (candidates.empty()) return false;
  std::vector<int> folded;
  std::vector<pb::TensorProto> tensors;
  std::unordered_set<std::string> sources;
  {
    const auto initializers = InitializersNamed(*graph, inputs);
    const auto graph_inputs = NamesOf(graph->input());
    const auto graph_outputs = NamesOf(graph->output());
    for (int i : candidates) {
      const pb::NodeProto& node = graph->node(i);
      const std::string& in = node.input(0);
      const auto it = initializers.find(in);
      if (it == initializers.end()) continue;
      const pb::TensorProto* t = it->second;
      if (graph_inputs.count(in) ||
          t->data_type() != pb::TensorProto::FLOAT ||
          !PayloadReadable(*t) ||
          graph_outputs.count(node.output(0))) {
        continue;
      }
      const std::vector<int64_t> dims = Dims(*t);
      const std::vector<int64_t> perm = PermOf(node, dims.size());
      if (perm.empty()) continue;
      std::vector<int64_t> out_dims;
      const std::vector<float> values = Permute(ToFloats(*t), dims, perm,
                                                &out_dims);
      tensors.push_back(FloatTensor(node.output(0), out_dims, values));
      folded.push_back(i);
      sources.insert(in);
    }
  }
  if (folded.empty()) return false;
  RemoveNodes(folded, graph);
  for (auto& t : tensors) *graph->add_initializer() = std::move(t);
  RemoveUnusedInitializers(sources, graph);
  return true;
}

}  // namespace onnxquant::passes
