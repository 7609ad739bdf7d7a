#include "onnxquant/graph_edit.h"

#include "onnxquant/error.h"
#include "onnxquant/graph_index.h"

namespace onnxquant {
namespace {

// How one pass-through node goes away.
struct Bypass {
  int node = -1;
  std::string in;
  std::string out;
  // >= 0: this node's output `in` is renamed `out` (`out` is a graph
  // output); -1: the readers of `out` read `in` instead.
  int producer = -1;
  std::vector<int> readers;  // the nodes whose inputs are renamed
};

bool IsUsed(const GraphIndex& index, const std::string& tensor) {
  return !index.Consumers(tensor).empty() || index.IsGraphOutput(tensor);
}

// Fills `plan` for node `i`. Returns false when the node must stay.
// Throws Error(kModel) for a malformed pass-through node.
bool PlanBypass(const GraphIndex& index, int i, Bypass* plan) {
  const pb::NodeProto& node = index.graph().node(i);
  if (node.input_size() < 1 || node.input(0).empty() ||
      node.output_size() < 1 || node.output(0).empty() ||
      node.input(0) == node.output(0)) {
    throw ModelError(node.op_type() + " node '" + node.name() +
                     "' needs one input and one output with distinct "
                     "names: the model is malformed.");
  }
  for (int k = 1; k < node.output_size(); ++k) {
    if (!node.output(k).empty() && IsUsed(index, node.output(k))) return false;
  }
  plan->node = i;
  plan->in = node.input(0);
  plan->out = node.output(0);
  if (index.ReadBySubgraph(plan->out)) return false;
  if (!index.IsGraphOutput(plan->out)) {
    plan->readers = index.Consumers(plan->out);
    return true;
  }
  const int producer = index.Producer(plan->in);
  if (producer < 0 || index.IsGraphInput(plan->in) ||
      index.Initializer(plan->in) != nullptr || index.IsGraphOutput(plan->in) ||
      index.ReadBySubgraph(plan->in)) {
    return false;
  }
  plan->producer = producer;
  for (int reader : index.Consumers(plan->in)) {
    if (reader != i) plan->readers.push_back(reader);
  }
  return true;
}

}  // namespace

bool IsOnnxOp(const pb::NodeProto& node, const std::string& op_type) {
  return node.op_type() == op_type &&
         (node.domain().empty() || node.domain() == "ai.onnx");
}

const pb::AttributeProto* FindAttribute(const pb::NodeProto& node,
                                        const std::string& name) {
  for (const auto& a : node.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

int64_t IntAttribute(const pb::NodeProto& node, const std::string& name,
                     int64_t default_value) {
  const pb::AttributeProto* a = FindAttribute(node, name);
  return a != nullptr ? a->i() : default_value;
}

float FloatAttribute(const pb::NodeProto& node, const std::string& name,
                     float default_value) {
  const pb::AttributeProto* a = FindAttribute(node, name);
  return a != nullptr ? a->f() : default_value;
}

void SetFloatAttribute(const std::string& name, float value,
                       pb::NodeProto* node) {
  pb::AttributeProto* attr = nullptr;
  for (auto& a : *node->mutable_attribute()) {
    if (a.name() == name) attr = &a;
  }
  if (attr == nullptr) attr = node->add_attribute();
  attr->Clear();
  attr->set_name(name);
  attr->set_type(pb::AttributeProto::FLOAT);
  attr->set_f(value);
}

void RemoveNodes(const std::vector<int>& indices, pb::GraphProto* graph) {
  std::vector<bool> drop(graph->node_size(), false);
  for (int i : indices) drop[i] = true;
  int i = 0;  // EraseIf asks about each element once, in order
  EraseIf(graph->mutable_node(),
          [&](const pb::NodeProto&) { return drop[i++]; });
}

void RenameInputs(const std::vector<int>& nodes, const std::string& from,
                  const std::string& to, pb::GraphProto* graph) {
  for (int i : nodes) {
    pb::NodeProto* node = graph->mutable_node(i);
    for (int k = 0; k < node->input_size(); ++k) {
      if (node->input(k) == from) node->set_input(k, to);
    }
  }
}

void DropValueInfo(const std::unordered_set<std::string>& names,
                   pb::GraphProto* graph) {
  EraseIf(graph->mutable_value_info(), [&](const pb::ValueInfoProto& v) {
    return names.count(v.name()) > 0;
  });
}

bool RemoveUnusedInitializers(const std::unordered_set<std::string>& candidates,
                              pb::GraphProto* graph) {
  if (candidates.empty()) return false;  // spares indexing the graph
  std::unordered_set<std::string> unused;
  {
    GraphIndex index(*graph);
    for (const auto& name : candidates) {
      if (index.Initializer(name) != nullptr && !IsUsed(index, name) &&
          !index.IsGraphInput(name)) {
        unused.insert(name);
      }
    }
  }
  if (unused.empty()) return false;
  EraseIf(graph->mutable_initializer(),
          [&](const pb::TensorProto& t) { return unused.count(t.name()) > 0; });
  DropValueInfo(unused, graph);
  return true;
}

void AllowInitializersOutsideInputs(pb::ModelProto* model) {
  if (model->ir_version() < 4) model->set_ir_version(4);
}

bool BypassNodes(const std::vector<int>& nodes, pb::GraphProto* graph) {
  if (nodes.empty()) return false;
  std::vector<Bypass> plans;
  std::unordered_set<std::string> gone;  // tensors that disappear
  {
    GraphIndex index(*graph);
    // Names that the plans taken so far rename or remove (`writes`), and
    // names they make other nodes read (`reads`). A plan that writes a name
    // another plan reads or writes, or reads a name another writes, waits
    // for the next call (a chain of pass-through nodes goes in several
    // calls, about half of what is left in each). Plans that only share
    // their input (many Identity nodes reading one initializer) go together.
    std::unordered_set<std::string> reads, writes;
    for (int i : nodes) {
      Bypass plan;
      if (!PlanBypass(index, i, &plan)) continue;
      const pb::NodeProto& node = graph->node(i);
      std::vector<std::string> plan_writes;
      for (const auto& o : node.output()) {
        if (!o.empty()) plan_writes.push_back(o);
      }
      if (plan.producer >= 0) plan_writes.push_back(plan.in);
      bool clash = plan.producer < 0 && writes.count(plan.in) > 0;
      for (const auto& n : plan_writes) {
        clash = clash || writes.count(n) > 0 || reads.count(n) > 0;
      }
      if (clash) continue;  // the next call takes it
      writes.insert(plan_writes.begin(), plan_writes.end());
      if (plan.producer < 0) reads.insert(plan.in);
      for (int k = 1; k < node.output_size(); ++k) {
        if (!node.output(k).empty()) gone.insert(node.output(k));
      }
      gone.insert(plan.producer < 0 ? plan.out : plan.in);
      plans.push_back(std::move(plan));
    }
  }
  std::vector<int> removed;
  for (const Bypass& plan : plans) {
    if (plan.producer < 0) {
      RenameInputs(plan.readers, plan.out, plan.in, graph);
    } else {
      pb::NodeProto* producer = graph->mutable_node(plan.producer);
      for (int k = 0; k < producer->output_size(); ++k) {
        if (producer->output(k) == plan.in) producer->set_output(k, plan.out);
      }
      RenameInputs(plan.readers, plan.in, plan.out, graph);
    }
    removed.push_back(plan.node);
  }
  std::unordered_set<std::string> side_inputs;  // e.g. Dropout's ratio
  for (int i : removed) {
    const pb::NodeProto& node = graph->node(i);
    side_inputs.insert(node.input().begin() + 1, node.input().end());
  }
  RemoveNodes(removed, graph);
  DropValueInfo(gone, graph);
  RemoveUnusedInitializers(side_inputs, graph);
  return !removed.empty();
}

}  // namespace onnxquant
