// flatten_gemm_bias: gives a Gemm's constant bias C of shape [1, N] the shape
// [N].
//
// Both broadcast to the output [M, N] alike, so the Gemm computes the same.
// The plan quantizes a Gemm's bias to int32 only when it is 1-D (plan.cc);
// with a [1, N] bias the Gemm kept a float bias beside its quantized weight,
// which ONNX Runtime cannot fuse into QGemm, so it ran in float between a
// DequantizeLinear and a QuantizeLinear (the MNIST CNN of the zoo, exported
// by CNTK, has one). Old exporters write [1, N] biases.
//
// C must be an initializer not listed in graph.input. When the Gemm alone
// reads it, it is reshaped in place (and its value_info, if any, dropped);
// otherwise the Gemm gets a reshaped copy under a fresh name.
#include <string>
#include <unordered_set>
#include <vector>

#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {
namespace {

struct Change {
  int node = -1;
  std::string bias;
  bool shared = false;  // something else reads the bias too
};

}  // namespace

bool FlattenGemmBias(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<Change> changes;
  {
    GraphIndex index(*graph);
    for (int i = 0; i < graph->node_size(); ++i) {
      const pb::NodeProto& node = graph->node(i);
      if (!IsOnnxOp(node, "Gemm") || node.input_size() < 3 ||
          node.input(2).empty()) {
        continue;
      }
      const std::string& name = node.input(2);
      const pb::TensorProto* c = index.Initializer(name);
      if (c == nullptr || index.IsGraphInput(name) || c->dims_size() != 2 ||
          c->dims(0) != 1) {
        continue;
      }
      const bool shared = index.Consumers(name).size() > 1 ||
                          index.IsGraphOutput(name) ||
                          index.ReadBySubgraph(name);
      changes.push_back({i, name, shared});
    }
  }
  if (changes.empty()) return false;
  NameAllocator names(*graph);
  std::unordered_set<std::string> reshaped;
  std::vector<pb::TensorProto> copies;
  for (pb::TensorProto& t : *graph->mutable_initializer()) {
    for (const Change& change : changes) {
      if (t.name() != change.bias) continue;
      const int64_t n = t.dims(1);
      if (!change.shared) {
        t.clear_dims();
        t.add_dims(n);
        reshaped.insert(t.name());
        break;
      }
      pb::TensorProto copy = t;
      copy.set_name(names.Make(t.name() + "_1d"));
      copy.clear_dims();
      copy.add_dims(n);
      graph->mutable_node(change.node)->set_input(2, copy.name());
      copies.push_back(std::move(copy));
    }
  }
  for (pb::TensorProto& copy : copies) {
    *graph->add_initializer() = std::move(copy);
  }
  DropValueInfo(reshaped, graph);
  return true;
}

}  // namespace onnxquant::passes
