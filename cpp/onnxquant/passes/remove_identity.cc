// remove_identity: removes Identity nodes of the main graph.
//
// The readers of an Identity's output read its input instead. Where the
// output is a graph output, the producer of the input is renamed to produce
// the graph output, so the model keeps its output names; an Identity stays
// when that rename is impossible (its input is a graph input, an
// initializer, another graph output, or read by a subgraph body), and when
// its output is read by a subgraph body. See BypassNodes in graph_edit.h.
#include <vector>

#include "onnxquant/graph_edit.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {

bool RemoveIdentity(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<int> identities;
  for (int i = 0; i < graph->node_size(); ++i) {
    if (IsOnnxOp(graph->node(i), "Identity")) identities.push_back(i);
  }
  return BypassNodes(identities, graph);
}

}  // namespace onnxquant::passes
