#include "onnxquant/graph_index.h"

#include <algorithm>

#include "onnxquant/error.h"

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

GraphIndex::GraphIndex(const pb::GraphProto& graph) : graph_(&graph) {
  Build();
}

GraphIndex::GraphIndex(pb::GraphProto* graph)
    : graph_(graph), mutable_graph_(graph) {
  // Room for the initializers an edit adds (QDQ insertion: two to four per
  // quantized tensor), so that the table is not rebuilt as it grows.
  initializers_.reserve(2 * static_cast<size_t>(graph->initializer_size()) +
                        static_cast<size_t>(graph->node_size()));
  Build();
}

void GraphIndex::Build() {
  const pb::GraphProto& graph = *graph_;
  const size_t n = static_cast<size_t>(graph.node_size());
  node_named_.reserve(n);
  producer_.reserve(n);
  consumers_.reserve(n + graph.input_size() + graph.initializer_size());
  initializers_.reserve(graph.initializer_size());
  for (const auto& init : graph.initializer()) {
    initializers_[init.name()] = &init;
  }
  for (const auto& in : graph.input()) inputs_.insert(in.name());
  for (const auto& out : graph.output()) outputs_.insert(out.name());
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    node_named_.emplace(node.name(), i);  // the first keeps the name
    for (const auto& out : node.output()) {
      if (!out.empty()) producer_[out] = i;
    }
    // A node's reads are added together, so a repeat is the last entry.
    auto add = [&](const std::string& name) {
      if (name.empty()) return;
      std::vector<int>& list = consumers_[name];
      if (list.empty() || list.back() != i) list.push_back(i);
    };
    for (const auto& in : node.input()) add(in);
    if (!HasSubgraph(node)) continue;
    std::unordered_set<std::string>& reads = body_reads_[i];
    for (const auto& attr : node.attribute()) {
      if (attr.has_g()) CollectOuterReads(attr.g(), &reads);
      for (const auto& g : attr.graphs()) CollectOuterReads(g, &reads);
    }
    for (const auto& name : reads) {
      read_by_subgraph_.insert(name);
      add(name);
    }
  }
}

int GraphIndex::NodeNamed(const std::string& name) const {
  auto it = node_named_.find(name);
  return it == node_named_.end() ? -1 : it->second;
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
  if (it != initializers_.end()) return it->second;
  if (outer_ == nullptr || producer_.count(tensor) || inputs_.count(tensor)) {
    return nullptr;
  }
  return outer_->Initializer(tensor);
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

pb::GraphProto* GraphIndex::Mutable(const char* edit) {
  if (mutable_graph_ == nullptr) {
    throw InternalError(std::string("GraphIndex::") + edit +
                        " on a snapshot index: a bug in onnxquant.");
  }
  return mutable_graph_;
}

bool GraphIndex::Reads(int node, const std::string& tensor) const {
  for (const auto& in : graph_->node(node).input()) {
    if (in == tensor) return true;
  }
  auto body = body_reads_.find(node);
  return body != body_reads_.end() && body->second.count(tensor) > 0;
}

void GraphIndex::SetInput(int node, int slot, const std::string& tensor) {
  pb::NodeProto* n = Mutable("SetInput")->mutable_node(node);
  const std::string old = n->input(slot);
  if (old == tensor) return;
  n->set_input(slot, tensor);
  if (!old.empty() && !Reads(node, old)) {
    std::vector<int>& list = consumers_[old];
    list.erase(std::lower_bound(list.begin(), list.end(), node));
    if (list.empty()) consumers_.erase(old);
  }
  if (!tensor.empty()) {
    std::vector<int>& list = consumers_[tensor];
    auto at = std::lower_bound(list.begin(), list.end(), node);
    if (at == list.end() || *at != node) list.insert(at, node);
  }
}

void GraphIndex::ReplaceInput(int node, const std::string& from,
                              const std::string& to) {
  const pb::NodeProto& n = graph_->node(node);
  for (int k = 0; k < n.input_size(); ++k) {
    if (n.input(k) == from) SetInput(node, k, to);
  }
}

void GraphIndex::SetOutput(int node, int slot, const std::string& tensor) {
  pb::NodeProto* n = Mutable("SetOutput")->mutable_node(node);
  const std::string old = n->output(slot);
  if (old == tensor) return;
  n->set_output(slot, tensor);
  auto it = producer_.find(old);
  if (it != producer_.end() && it->second == node) {
    bool still = false;  // another output slot of the node writes it too
    for (const auto& o : n->output()) still = still || o == old;
    if (!still) producer_.erase(it);
  }
  if (!tensor.empty()) producer_[tensor] = node;
}

const pb::TensorProto* GraphIndex::AddInitializer(pb::TensorProto tensor) {
  pb::TensorProto* added = Mutable("AddInitializer")->add_initializer();
  *added = std::move(tensor);
  initializers_[added->name()] = added;
  return added;
}

bool GraphIndex::HasSubgraph(const pb::NodeProto& node) {
  for (const auto& attr : node.attribute()) {
    if (attr.has_g() || attr.graphs_size() > 0) return true;
  }
  return false;
}

namespace {

// How many names (with repeats) CollectNames meets in `graph`.
size_t CountNames(const pb::GraphProto& graph) {
  size_t count = graph.input_size() + graph.output_size() +
                 graph.value_info_size() + graph.initializer_size();
  for (const auto& n : graph.node()) {
    count += 1 + n.output_size() + n.input_size();
    for (const auto& attr : n.attribute()) {
      if (attr.has_g()) count += CountNames(attr.g());
      for (const auto& g : attr.graphs()) count += CountNames(g);
    }
  }
  return count;
}

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
  // As many again for the names to come (QDQ insertion makes several per
  // quantized tensor), so that the set is not rebuilt as it fills.
  used_.reserve(2 * CountNames(graph));
  CollectNames(graph, &used_);
}

std::string NameAllocator::Make(const std::string& base) {
  if (used_.insert(base).second) return base;
  // Names are never released, so every suffix below the one last handed
  // out for `base` is still taken: start there (the same name as counting
  // from 1, without rescanning when many names share a base).
  int& next = next_suffix_[base];
  for (int k = std::max(next, 1);; ++k) {
    std::string name = base + "_" + std::to_string(k);
    if (used_.insert(name).second) {
      next = k + 1;
      return name;
    }
  }
}

}  // namespace onnxquant
