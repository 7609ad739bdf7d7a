// ExposeTensors (insert_qdq.h): calibration outputs, threaded out of If,
// Loop and Scan bodies.
#include <unordered_map>
#include <unordered_set>

#include "onnxquant/error.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/insert_qdq.h"
#include "onnxquant/tensor_util.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

bool IsControlFlow(const pb::NodeProto& n) {
  return (n.domain().empty() || n.domain() == "ai.onnx") &&
         (n.op_type() == "If" || n.op_type() == "Loop" ||
          n.op_type() == "Scan");
}

// One step from a graph into a body: `node` (in its graph) holds `body` as
// attribute `attr`.
struct BodyLink {
  pb::NodeProto* node;
  std::string attr;
  pb::GraphProto* body;
};
using Chain = std::vector<BodyLink>;

// Where every tensor defined inside a control-flow body lies: the chain of
// bodies from the main graph down. Pointers to nodes and bodies stay valid
// while nodes and outputs are added (protobuf keeps elements in place).
void IndexBodies(pb::GraphProto* graph, Chain* chain,
                 std::unordered_map<std::string, Chain>* where) {
  for (auto& node : *graph->mutable_node()) {
    if (!IsControlFlow(node)) continue;
    for (auto& attr : *node.mutable_attribute()) {
      if (!attr.has_g()) continue;
      pb::GraphProto* body = attr.mutable_g();
      chain->push_back({&node, attr.name(), body});
      for (const auto& in : body->input()) where->emplace(in.name(), *chain);
      for (const auto& n : body->node()) {
        for (const auto& o : n.output()) {
          if (!o.empty()) where->emplace(o, *chain);
        }
      }
      IndexBodies(body, chain, where);
      chain->pop_back();
    }
  }
}

pb::ValueInfoProto* AddOutput(pb::GraphProto* graph, const std::string& name,
                              int elem_type) {
  auto* vi = graph->add_output();
  vi->set_name(name);
  vi->mutable_type()->mutable_tensor_type()->set_elem_type(elem_type);
  return vi;
}

pb::NodeProto* AddNode(pb::GraphProto* graph, const std::string& op,
                       const std::string& name, const std::string& input,
                       const std::string& output) {
  auto* n = graph->add_node();
  n->set_op_type(op);
  n->set_name(name);
  if (!input.empty()) n->add_input(input);
  n->add_output(output);
  return n;
}

// Appends 0 to the ints attribute `name` of `node`, where it is present.
void ExtendInts(pb::NodeProto* node, const std::string& name) {
  for (auto& attr : *node->mutable_attribute()) {
    if (attr.name() == name) attr.add_ints(0);
  }
}

// Threads tensor `name` out of the bodies of `chain`, innermost first;
// returns the main-graph tensor that holds its values.
std::string Thread(const std::string& name, const Chain& chain, int elem_type,
                   NameAllocator* names) {
  std::string inner = name;
  for (auto link = chain.rbegin(); link != chain.rend(); ++link) {
    pb::NodeProto* node = link->node;
    const std::string out = names->Make(name + "_observed");
    AddNode(link->body, "Identity", names->Make(out + "_node"), inner, out);
    AddOutput(link->body, out, elem_type);
    if (node->op_type() == "If") {
      // The other branch outputs nothing (an empty tensor) in its place.
      for (auto& attr : *node->mutable_attribute()) {
        if (!attr.has_g() || attr.name() == link->attr) continue;
        pb::GraphProto* other = attr.mutable_g();
        const std::string none = names->Make(name + "_not_taken");
        pb::NodeProto* c =
            AddNode(other, "Constant", names->Make(none + "_node"), "", none);
        auto* value = c->add_attribute();
        value->set_name("value");
        value->set_type(pb::AttributeProto::TENSOR);
        pb::TensorProto* t = value->mutable_t();
        t->set_data_type(elem_type);
        t->add_dims(0);
        AddOutput(other, none, elem_type);
      }
    } else if (node->op_type() == "Scan") {
      ExtendInts(node, "scan_output_axes");
      ExtendInts(node, "scan_output_directions");
    }
    // Loop and Scan: the new body output is a scan output, appended last.
    inner = names->Make(name + "_observed");
    node->add_output(inner);
  }
  return inner;
}

}  // namespace

std::vector<std::string> ExposeTensors(pb::ModelProto& model,
                                       const std::vector<std::string>& names,
                                       const DtypeMap& dtypes) {
  ValidateModel(model);
  auto* graph = model.mutable_graph();
  std::unordered_map<std::string, Chain> where;
  {
    Chain chain;
    IndexBodies(graph, &chain, &where);
  }
  GraphIndex index(*graph);
  NameAllocator allocator(*graph);
  std::unordered_map<std::string, std::string> exposed;
  for (const auto& o : graph->output()) exposed.emplace(o.name(), o.name());
  std::vector<std::string> fetch;
  fetch.reserve(names.size());
  for (const auto& name : names) {
    auto done = exposed.find(name);
    if (done != exposed.end()) {
      fetch.push_back(done->second);
      continue;
    }
    auto it = dtypes.find(name);
    const int elem_type =
        it == dtypes.end() ? pb::TensorProto::FLOAT : it->second;
    std::string output = name;
    if (index.Producer(name) < 0 && !index.IsGraphInput(name)) {
      auto body = where.find(name);
      if (body == where.end()) {
        throw ModelError("Tensor '" + name +
                         "' is produced by no node and is no graph input, "
                         "so it cannot be observed for calibration.");
      }
      output = Thread(name, body->second, elem_type, &allocator);
    }
    AddOutput(graph, output, elem_type);
    exposed.emplace(name, output);
    fetch.push_back(output);
  }
  return fetch;
}

}  // namespace onnxquant
