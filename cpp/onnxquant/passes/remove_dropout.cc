// remove_dropout: removes Dropout nodes of the main graph whose mask output
// is absent, empty or unused.
//
// In inference Dropout copies its data input, so it goes exactly as an
// Identity does (see BypassNodes in graph_edit.h, and remove_identity.cc for
// the graph-output rule). A Dropout stays when its mask is used, or when it
// has a `training_mode` input that is not a constant false initializer (in
// training mode it drops values, so removing it would change the results).
#include <vector>

#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {
namespace {

// True when the Dropout at `node` surely runs in inference mode: no
// `training_mode` input, or a constant false one.
bool InInferenceMode(const GraphIndex& index, const pb::NodeProto& node) {
  if (node.input_size() < 3 || node.input(2).empty()) return true;
  const pb::TensorProto* mode = index.Initializer(node.input(2));
  if (mode == nullptr || index.IsGraphInput(node.input(2))) return false;
  if (mode->data_type() != pb::TensorProto::BOOL) return false;
  if (mode->has_raw_data()) {
    return mode->raw_data().size() == 1 && mode->raw_data()[0] == 0;
  }
  return mode->int32_data_size() == 1 && mode->int32_data(0) == 0;
}

bool MaskUsed(const GraphIndex& index, const pb::NodeProto& node) {
  if (node.output_size() < 2 || node.output(1).empty()) return false;
  return !index.Consumers(node.output(1)).empty() ||
         index.IsGraphOutput(node.output(1));
}

}  // namespace

bool RemoveDropout(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<int> dropouts;
  {
    GraphIndex index(*graph);
    for (int i = 0; i < graph->node_size(); ++i) {
      const pb::NodeProto& node = graph->node(i);
      if (IsOnnxOp(node, "Dropout") && !MaskUsed(index, node) &&
          InInferenceMode(index, node)) {
        dropouts.push_back(i);
      }
    }
  }
  return BypassNodes(dropouts, graph);
}

}  // namespace onnxquant::passes
