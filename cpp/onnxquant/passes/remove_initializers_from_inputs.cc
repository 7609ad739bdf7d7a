// remove_initializers_from_inputs: drops from graph.input every name that is
// also an initializer.
//
// Exporters of IR version 3 (opset 8 and older) list every initializer as a
// graph input. ONNX Runtime then treats those weights as inputs a caller may
// override, and neither folds nor fuses them; quantization needs them
// constant. The model's ir_version is raised to 4 when lower, since IR 3
// requires the listing.
#include <unordered_set>

#include "onnxquant/graph_edit.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {

bool RemoveInitializersFromInputs(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::unordered_set<std::string> initializers;
  for (const auto& t : graph->initializer()) initializers.insert(t.name());
  const int removed =
      EraseIf(graph->mutable_input(), [&](const pb::ValueInfoProto& v) {
        return initializers.count(v.name()) > 0;
      });
  if (removed == 0) return false;
  AllowInitializersOutsideInputs(&model);
  return true;
}

}  // namespace onnxquant::passes
