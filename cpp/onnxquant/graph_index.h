// A read-only index of one graph: who produces and who consumes each tensor.
//
// The index is a snapshot: any rewrite of the graph invalidates it, and a
// pass rebuilds it after each change. Nodes whose subgraphs (If, Loop, Scan
// bodies) read a tensor of the outer scope count among its consumers, and the
// tensor is marked as read by a subgraph, so that no rename breaks a body.
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
  // REQUIRES: `graph` outlives the index and is not modified while in use.
  explicit GraphIndex(const pb::GraphProto& graph);

  const pb::GraphProto& graph() const { return graph_; }

  // Index of the node producing `tensor`, or -1 for graph inputs,
  // initializers and unknown names.
  int Producer(const std::string& tensor) const;

  // Indices of the nodes reading `tensor` (in node order, each node once),
  // including nodes whose subgraphs read it from the outer scope.
  const std::vector<int>& Consumers(const std::string& tensor) const;

  // The initializer named `tensor`, or nullptr.
  const pb::TensorProto* Initializer(const std::string& tensor) const;

  bool IsGraphInput(const std::string& tensor) const;
  bool IsGraphOutput(const std::string& tensor) const;
  bool ReadBySubgraph(const std::string& tensor) const;

  // True when the node has at least one subgraph attribute (If, Loop, Scan).
  static bool HasSubgraph(const pb::NodeProto& node);

 private:
  const pb::GraphProto& graph_;
  std::unordered_map<std::string, int> producer_;
  std::unordered_map<std::string, std::vector<int>> consumers_;
  std::unordered_map<std::string, const pb::TensorProto*> initializers_;
  std::unordered_set<std::string> inputs_;
  std::unordered_set<std::string> outputs_;
  std::unordered_set<std::string> read_by_subgraph_;
};

// Hands out names no tensor or node of a graph uses yet.
class NameAllocator {
 public:
  explicit NameAllocator(const pb::GraphProto& graph);
  // `base` itself when free, else `base_1`, `base_2`, ...; the name returned
  // is then taken.
  std::string Make(const std::string& base);

 private:
  std::unordered_set<std::string> used_;
};

}  // namespace onnxquant

#endif  // ONNXQUANT_GRAPH_INDEX_H_
