// An index of one graph: node names, who produces and who consumes each
// tensor, initializers, graph inputs and outputs, and the tensors that
// subgraph bodies (If, Loop, Scan) read from the outer scope.
//
// Built in one pass over the graph (O(nodes + edges); a body is walked once
// per node that holds it). Two ways to use it:
//  - a snapshot of a graph that nobody edits while the index is in use
//    (the const constructor): passes build one per round in which they look
//    for matches, and rewrite afterwards;
//  - an editing index (the pointer constructor): SetInput, SetOutput and
//    AddInitializer edit the graph and keep the index current, so a long
//    sequence of edits (QDQ insertion) needs one index, not one per step.
//    Adding or removing nodes is not supported: node indices would shift.
// Nodes whose subgraphs read a tensor of the outer scope count among its
// consumers, and the tensor is marked as read by a subgraph, so that no
// rename breaks a body.
#ifndef ONNXQUANT_GRAPH_INDEX_H_
#define ONNXQUANT_GRAPH_INDEX_H_

#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

class GraphIndex {
 public:
  // A snapshot. REQUIRES: `graph` outlives the index and is not modified
  // while in use.
  explicit GraphIndex(const pb::GraphProto& graph);
  // An editing index. REQUIRES: `graph` outlives the index and is modified
  // only through the index's edits while in use.
  explicit GraphIndex(pb::GraphProto* graph);

  GraphIndex(const GraphIndex&) = delete;
  GraphIndex& operator=(const GraphIndex&) = delete;

  const pb::GraphProto& graph() const { return *graph_; }

  // Index of the first node named `name`, or -1.
  int NodeNamed(const std::string& name) const;

  // Index of the node producing `tensor`, or -1 for graph inputs,
  // initializers and unknown names.
  int Producer(const std::string& tensor) const;

  // Indices of the nodes reading `tensor` (in node order, each node once),
  // including nodes whose subgraphs read it from the outer scope.
  const std::vector<int>& Consumers(const std::string& tensor) const;

  // The initializer named `tensor`, or nullptr. With an outer index (a
  // body's), a name the graph does not define is looked up there.
  const pb::TensorProto* Initializer(const std::string& tensor) const;

  // Makes `outer` (the index of the enclosing graph, for a subgraph body;
  // nullptr for none) answer Initializer() for names this graph does not
  // define. REQUIRES: `outer` outlives this index and its initializers stay
  // in place while in use.
  void SetOuter(const GraphIndex* outer) { outer_ = outer; }

  bool IsGraphInput(const std::string& tensor) const;
  bool IsGraphOutput(const std::string& tensor) const;
  bool ReadBySubgraph(const std::string& tensor) const;

  // Edits, for an editing index only (else Error(kInternal)).
  // Makes input `slot` of node `node` read `tensor` ("" for none).
  // REQUIRES: 0 <= node < node_size, 0 <= slot < that node's input_size.
  void SetInput(int node, int slot, const std::string& tensor);
  // Makes every input slot of node `node` that reads `from` read `to`.
  void ReplaceInput(int node, const std::string& from, const std::string& to);
  // Makes output `slot` of node `node` write `tensor`, its producer from
  // then on. REQUIRES: 0 <= node < node_size, 0 <= slot < that node's
  // output_size; `tensor` is written by no other node (ONNX's single
  // assignment).
  void SetOutput(int node, int slot, const std::string& tensor);
  // Appends `tensor` to the graph's initializers; returns it in the graph.
  const pb::TensorProto* AddInitializer(pb::TensorProto tensor);

  // True when the node has at least one subgraph attribute (If, Loop, Scan).
  static bool HasSubgraph(const pb::NodeProto& node);

 private:
  void Build();
  pb::GraphProto* Mutable(const char* edit);
  // True when node `node` reads `tensor` in an input slot or in a body.
  bool Reads(int node, const std::string& tensor) const;

  const pb::GraphProto* graph_;
  pb::GraphProto* mutable_graph_ = nullptr;  // editing index only
  const GraphIndex* outer_ = nullptr;
  std::unordered_map<std::string, int> node_named_;
  std::unordered_map<std::string, int> producer_;
  std::unordered_map<std::string, std::vector<int>> consumers_;
  std::unordered_map<std::string, const pb::TensorProto*> initializers_;
  std::unordered_set<std::string> inputs_;
  std::unordered_set<std::string> outputs_;
  std::unordered_set<std::string> read_by_subgraph_;
  // Node -> the outer-scope names its bodies read (nodes with bodies only).
  std::unordered_map<int, std::unordered_set<std::string>> body_reads_;
};

// Hands out names no tensor or node of a graph uses yet.
class NameAllocator {
 public:
  explicit NameAllocator(const pb::GraphProto& graph);
  // `base` itself when free, else `base_1`, `base_2`, ...; the name returned
  // is then taken.
  // Amortized O(1) per call, also when many names share one base.
  std::string Make(const std::string& base);

 private:
  std::unordered_set<std::string> used_;
  std::unordered_map<std::string, int> next_suffix_;  // base -> first to try
};

}  // namespace onnxquant

#endif  // ONNXQUANT_GRAPH_INDEX_H_
