// prelu_to_leaky_relu: rewrites a PRelu whose slope is one constant value as
// LeakyRelu with that value as `alpha`.
//
// Both compute x for x >= 0 and slope * x otherwise. ONNX Runtime runs a
// quantized LeakyRelu as QLinearLeakyRelu and has no integer PRelu, so the
// PRelu would run in float between a DequantizeLinear and a QuantizeLinear
// (op table, docs/architecture.md). PyTorch's nn.PReLU() has one slope by
// default and exports it as a PRelu with a [1] slope.
//
// The slope must be a float32 initializer not listed in graph.input, with one
// element and rank at most 1 (so it broadcasts without changing the output's
// shape). It is removed when nothing else reads it.
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/passes/passes.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::passes {

bool PreluToLeakyRelu(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<std::pair<int, float>> changes;  // node, slope
  {
    GraphIndex index(*graph);
    for (int i = 0; i < graph->node_size(); ++i) {
      const pb::NodeProto& node = graph->node(i);
      if (!IsOnnxOp(node, "PRelu") || node.input_size() != 2) continue;
      const pb::TensorProto* slope = index.Initializer(node.input(1));
      if (slope == nullptr || index.IsGraphInput(node.input(1)) ||
          slope->data_type() != pb::TensorProto::FLOAT ||
          slope->dims_size() > 1) {
        continue;
      }
      const std::vector<float> values = ToFloats(*slope);
      if (values.size() != 1) continue;
      changes.emplace_back(i, values[0]);
    }
  }
  if (changes.empty()) return false;
  std::unordered_set<std::string> slopes;
  for (const auto& [i, alpha] : changes) {
    pb::NodeProto* node = graph->mutable_node(i);
    slopes.insert(node->input(1));
    node->set_op_type("LeakyRelu");
    node->mutable_input()->RemoveLast();
    SetFloatAttribute("alpha", alpha, node);
  }
  RemoveUnusedInitializers(slopes, graph);
  return true;
}

}  // namespace onnxquant::passes
