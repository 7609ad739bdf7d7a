// lift_constants: turns Constant nodes of the main graph into initializers.
//
// A Constant holding a tensor (`value`) or a number or list of numbers
// (`value_float`, `value_floats`, `value_int`, `value_ints`) becomes an
// initializer with the node's output name, so that the plan sees the weight
// as a constant. Left alone:
//  - Constants holding a sparse tensor or strings (`sparse_value`,
//    `value_string(s)`): the quantizer has no use for them as initializers;
//  - Constants whose output is a graph output: not every runtime accepts an
//    initializer as a graph output.
// Constants read by a subgraph body are lifted: the name stays the same and
// an outer-scope initializer is visible inside bodies, so no body breaks.
// Constants inside bodies are not touched. The model's ir_version is raised
// to 4 when lower (IR 3 requires every initializer in graph.input).
#include <optional>
#include <unordered_set>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {
namespace {

// The tensor a Constant node holds, named `name`, or nullopt when the node
// holds something other than one numeric attribute this pass lifts.
std::optional<pb::TensorProto> ConstantValue(const pb::NodeProto& node,
                                             const std::string& name) {
  if (node.attribute_size() != 1) return std::nullopt;
  const pb::AttributeProto& a = node.attribute(0);
  if (!a.ref_attr_name().empty()) return std::nullopt;
  pb::TensorProto t;
  if (a.name() == "value" && a.has_t()) {
    t = a.t();
  } else if (a.name() == "value_float") {
    t.set_data_type(pb::TensorProto::FLOAT);
    t.add_float_data(a.f());
  } else if (a.name() == "value_floats") {
    t.set_data_type(pb::TensorProto::FLOAT);
    t.add_dims(a.floats_size());
    t.mutable_float_data()->CopyFrom(a.floats());
  } else if (a.name() == "value_int") {
    t.set_data_type(pb::TensorProto::INT64);
    t.add_int64_data(a.i());
  } else if (a.name() == "value_ints") {
    t.set_data_type(pb::TensorProto::INT64);
    t.add_dims(a.ints_size());
    t.mutable_int64_data()->CopyFrom(a.ints());
  } else {
    return std::nullopt;
  }
  t.set_name(name);
  return t;
}

}  // namespace

bool LiftConstants(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::unordered_set<std::string> defined;  // initializers and graph inputs
  for (const auto& t : graph->initializer()) defined.insert(t.name());
  for (const auto& v : graph->input()) defined.insert(v.name());
  std::unordered_set<std::string> outputs;
  for (const auto& v : graph->output()) outputs.insert(v.name());

  std::vector<int> lifted;
  for (int i = 0; i < graph->node_size(); ++i) {
    const pb::NodeProto& node = graph->node(i);
    if (!IsOnnxOp(node, "Constant") || node.output_size() != 1) continue;
    const std::string& name = node.output(0);
    if (name.empty() || outputs.count(name) > 0) continue;
    std::optional<pb::TensorProto> value = ConstantValue(node, name);
    if (!value) continue;
    if (defined.count(name) > 0) {
      throw ModelError("Constant node '" + node.name() + "' produces '" + name +
                       "', which is also an initializer or graph "
                       "input: the model defines that name twice.");
    }
    *graph->add_initializer() = std::move(*value);
    lifted.push_back(i);
  }
  if (lifted.empty()) return false;
  RemoveNodes(lifted, graph);
  AllowInitializersOutsideInputs(&model);
  return true;
}

}  // namespace onnxquant::passes
