#include "onnxquant/graph_index.h"

namespace onnxquant {
namespace {

// Collects names a subgraph reads but does not define itself (outer-scope
// reads), recursing into nested subgraphs.
void CollectOuterReads(const pb::GraphProto& body,
                       std::unordered_set<std::string>* reads) {
  std::unordered_set<std::string> defined;
  for (const auto& in : body.input()) defined.insert(in.name());
  for (const auto& init : body.initializer()) defined.insert(init.name());
  for (const auto& node : body.node()) {
    for (const auto& out : node.output()) defined.insert(out);
  }
  auto note = [&](const std::string& name) {
    if (!name.empty() && defined.count(name) == 0) reads->insert(name);
  };
  for (const auto& node : body.node()) {
    for (const auto& in : node.input()) note(in);
    for (const auto& attr : node.attribute()) {
      std::unordered_set<std::string> inner;
      if (attr.has_g()) CollectOuterReads(attr.g(), &inner);
      for (const auto& g : attr.graphs()) CollectOuterReads(g, &inner);
      for (const auto& name : inner) note(name);
    }
  }
  for (const auto& out : body.output()) note(out.name());
}

}  // namespace

GraphIndex::GraphIndex(const pb::GraphProto& graph) : graph_(graph) {
  for (const auto& init : graph.initializer()) {
    initializers_[init.name()] = &init;
  }
  for (const auto& in : graph.input()) inputs_.insert(in.name());
  for (const auto& out : graph.output()) outputs_.insert(out.name());
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    for (const auto& out : node.output()) {
      if (!out.empty()) producer_[out] = i;
    }
    std::unordered_set<std::string> seen;
    auto add = [&](const std::string& name) {
      if (!name.empty() && seen.insert(name).second) {
        consumers_[name].push_back(i);
      }
    };
    for (const auto& in : node.input()) add(in);
    for (const auto& attr : node.attribute()) {
      std::unordered_set<std::string> reads;
      if (attr.has_g()) CollectOuterReads(attr.g(), &reads);
      for (const auto& g : attr.graphs()) CollectOuterReads(g, &reads);
      for (const auto& name : reads) {
        read_by_subgraph_.insert(name);
        add(name);
      }
    }
  }
}

int GraphIndex::Producer(const std::string& tensor) const {
  auto it = producer_.find(tensor);
  return it == producer_.end() ? -1 : it->second;
}

const std::vector<int>& GraphIndex::Consumers(const std::string& tensor) const {
  static const std::vector<int> kNone;
  auto it = consumers_.find(tensor);
  return it == consumers_.end() ? kNone : it->second;
}

const pb::TensorProto* GraphIndex::Initializer(const std::string& tensor) const {
  auto it = initializers_.find(tensor);
  return it == initializers_.end() ? nullptr : it->second;
}

bool GraphIndex::IsGraphInput(const std::string& tensor) const {
  return inputs_.count(tensor) > 0;
}
bool GraphIndex::IsGraphOutput(const std::string& tensor) const {
  return outputs_.count(tensor) > 0;
}
bool GraphIndex::ReadBySubgraph(const std::string& tensor) const {
  return read_by_subgraph_.count(tensor) > 0;
}

bool GraphIndex::HasSubgraph(const pb::NodeProto& node) {
  for (const auto& attr : node.attribute()) {
    if (attr.has_g() || attr.graphs_size() > 0) return true;
  }
  return false;
}

namespace {

// Every name `graph` and its subgraphs use: ONNX forbids a subgraph to define
// a name the outer scope also defines, so new names avoid both.
void CollectNames(const pb::GraphProto& graph,
                  std::unordered_set<std::string>* used) {
  for (const auto& v : graph.input()) used->insert(v.name());
  for (const auto& v : graph.output()) used->insert(v.name());
  for (const auto& v : graph.value_info()) used->insert(v.name());
  for (const auto& t : graph.initializer()) used->insert(t.name());
  for (const auto& n : graph.node()) {
    used->insert(n.name());
    for (const auto& o : n.output()) used->insert(o);
    for (const auto& in : n.input()) used->insert(in);
    for (const auto& attr : n.attribute()) {
      if (attr.has_g()) CollectNames(attr.g(), used);
      for (const auto& g : attr.graphs()) CollectNames(g, used);
    }
  }
}

}  // namespace

NameAllocator::NameAllocator(const pb::GraphProto& graph) {
  CollectNames(graph, &used_);
}

std::string NameAllocator::Make(const std::string& base) {
  std::string name = base;
  for (int k = 1; used_.count(name) > 0; ++k) {
    name = base + "_" + std::to_string(k);
  }
  used_.insert(name);
  return name;
}

}  // namespace onnxquant
