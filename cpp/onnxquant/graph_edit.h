// Small generic edits of a graph, shared by the passes.
//
// All functions edit the main graph only: subgraph bodies (If, Loop, Scan)
// are never touched. Callers that rename tensors check
// GraphIndex::ReadBySubgraph first.
#ifndef ONNXQUANT_GRAPH_EDIT_H_
#define ONNXQUANT_GRAPH_EDIT_H_

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

// Removes the elements of `field` for which `pred(element)` is true, keeping
// the order of the others. Returns the number removed.
template <typename T, typename Pred>
int EraseIf(google::protobuf::RepeatedPtrField<T>* field, Pred pred) {
  int kept = 0;
  for (int i = 0; i < field->size(); ++i) {
    if (pred(field->Get(i))) continue;
    if (kept != i) field->SwapElements(kept, i);
    ++kept;
  }
  const int removed = field->size() - kept;
  if (removed > 0) field->DeleteSubrange(kept, removed);
  return removed;
}

// True when `node` is the standard-domain ("" or "ai.onnx") op `op_type`.
bool IsOnnxOp(const pb::NodeProto& node, const std::string& op_type);

// The attribute `name` of `node`, or nullptr.
const pb::AttributeProto* FindAttribute(const pb::NodeProto& node,
                                        const std::string& name);
// The INT attribute `name` of `node`, or `default_value` when absent.
int64_t IntAttribute(const pb::NodeProto& node, const std::string& name,
                     int64_t default_value);
// The FLOAT attribute `name` of `node`, or `default_value` when absent.
float FloatAttribute(const pb::NodeProto& node, const std::string& name,
                     float default_value);
// Sets the FLOAT attribute `name` of `node`, adding it when absent.
void SetFloatAttribute(const std::string& name, float value,
                       pb::NodeProto* node);

// Removes the nodes at `indices` (any order, duplicates allowed), keeping the
// order of the others.
// REQUIRES: every index is in [0, graph->node_size()).
void RemoveNodes(const std::vector<int>& indices, pb::GraphProto* graph);

// Makes the nodes at `nodes` read `to` in every input slot that reads `from`.
// Subgraph bodies are not searched.
void RenameInputs(const std::vector<int>& nodes, const std::string& from,
                  const std::string& to, pb::GraphProto* graph);

// Removes the value_info entries whose name is in `names`.
void DropValueInfo(const std::unordered_set<std::string>& names,
                   pb::GraphProto* graph);

// Removes the initializers named in `candidates` that nothing reads any more:
// no node (nor a subgraph body) reads them and they are neither graph inputs
// nor graph outputs. Their value_info entries go too. Returns true if it
// removed at least one.
bool RemoveUnusedInitializers(const std::unordered_set<std::string>& candidates,
                              pb::GraphProto* graph);

// Raises model->ir_version to 4 when lower: IR 3 requires every initializer
// to be listed in graph.input, IR 4 lifts that requirement.
void AllowInitializersOutsideInputs(pb::ModelProto* model);

// Removes pass-through nodes: each node at `nodes` computes its output 0 as a
// copy of its input 0 (Identity, Dropout in inference), and its other outputs,
// if any, are unused. For each such node, with input `in` and output `out`:
//  - when `out` is not a graph output, the readers of `out` read `in`;
//  - when it is, the producer of `in` is renamed to produce `out` (and the
//    other readers of `in` follow). This needs `in` to come from a node, not
//    be a graph output itself, and not be read by a subgraph; otherwise the
//    node stays.
// A node whose `out` is read by a subgraph stays. A node whose removal
// renames a tensor that another node removed in the same call reads or
// renames (a chain of pass-through nodes, or a shared input renamed for a
// graph output) stays until the next call, so callers repeat until it
// returns false; nodes that only share their input go in one call. Value_info entries of tensors
// that disappear are dropped, and so are initializers that only removed
// nodes read through their other inputs (e.g. a Dropout's ratio).
// Returns true if it removed at least one node.
// Throws Error(kModel), naming the node, for a node with no input or output 0,
// or one that reads its own output.
bool BypassNodes(const std::vector<int>& nodes, pb::GraphProto* graph);

}  // namespace onnxquant

#endif  // ONNXQUANT_GRAPH_EDIT_H_
