// reduce_mean_to_global_average_pool: rewrites a ReduceMean over the two
// spatial axes of a 4-D tensor as GlobalAveragePool.
//
// Both compute the mean of each [N, C] plane. ONNX Runtime has an integer
// kernel for a quantized GlobalAveragePool (QLinearGlobalAveragePool) and
// none for ReduceMean, which it runs in float between a DequantizeLinear and
// a QuantizeLinear; the plan quantizes GlobalAveragePool (op_table.cc).
//
// A ReduceMean matches when
//  - its data input is known to be 4-D and float, float16 or double: the
//    tensor has a ValueInfo entry (graph.input, graph.value_info or
//    graph.output) with a shape of exactly four dims. Nothing else tells the
//    rank: an unannotated tensor is left alone (optimize_model annotates the
//    ReduceMean inputs from ONNX shape inference before the passes run);
//  - its axes are constant and, negative ones counted from the end, exactly
//    {2, 3}: the `axes` attribute before opset 18, from opset 18 its second
//    input, an initializer not listed in graph.input. Without axes (absent
//    or empty) it reduces every axis, or with noop_with_empty_axes = 1 none,
//    so it does not match; with axes, noop_with_empty_axes has no effect.
// keepdims = 1 (the default): the node becomes GlobalAveragePool, same name
// and output. keepdims = 0: GlobalAveragePool writes a fresh tensor
// [N, C, 1, 1] and a Squeeze of axes {2, 3} (an int64 initializer from opset
// 13, an attribute before) writes the ReduceMean's output, so graph outputs
// keep their names. An axes initializer nothing else reads is removed.
#include <algorithm>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/passes/passes.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::passes {
namespace {

constexpr int kAxesAsInputOpset = 18;     // ReduceMean-18 takes axes as input
constexpr int kSqueezeAxesInputOpset = 13;  // Squeeze-13 likewise

// Tensor name -> its first ValueInfo entry that has a shape, searching
// graph.input, then graph.value_info, then graph.output.
using ShapedValueInfos =
    std::unordered_map<std::string, const pb::ValueInfoProto*>;

ShapedValueInfos CollectShapedValueInfos(const pb::GraphProto& graph) {
  ShapedValueInfos shaped;
  for (const auto* list :
       {&graph.input(), &graph.value_info(), &graph.output()}) {
    for (const pb::ValueInfoProto& v : *list) {
      if (v.type().has_tensor_type() && v.type().tensor_type().has_shape()) {
        shaped.emplace(v.name(), &v);  // keeps the first
      }
    }
  }
  return shaped;
}

// True when `name` is declared a 4-D tensor of a type GlobalAveragePool takes.
bool Is4DFloat(const ShapedValueInfos& shaped, const std::string& name) {
  auto it = shaped.find(name);
  if (it == shaped.end()) return false;
  const pb::ValueInfoProto* v = it->second;
  const auto& tensor = v->type().tensor_type();
  const int type = tensor.elem_type();
  return tensor.shape().dim_size() == 4 &&
         (type == pb::TensorProto::FLOAT || type == pb::TensorProto::FLOAT16 ||
          type == pb::TensorProto::DOUBLE);
}

// The constant axes of the ReduceMean `node`, or an empty vector when they
// are absent, empty or not constant.
std::vector<int64_t> ConstantAxes(const GraphIndex& index,
                                  const pb::NodeProto& node, int opset) {
  if (opset < kAxesAsInputOpset) {
    const pb::AttributeProto* axes = FindAttribute(node, "axes");
    if (axes == nullptr) return {};
    return std::vector<int64_t>(axes->ints().begin(), axes->ints().end());
  }
  if (node.input_size() < 2 || node.input(1).empty()) return {};
  const pb::TensorProto* axes = index.Initializer(node.input(1));
  if (axes == nullptr || index.IsGraphInput(node.input(1)) ||
      axes->data_type() != pb::TensorProto::INT64 ||
      !PayloadReadable(*axes)) {
    return {};
  }
  return ToInt64s(*axes);
}

// True when the ReduceMean at `i` averages exactly the spatial axes of a
// known 4-D float tensor.
bool Matches(const GraphIndex& index, const ShapedValueInfos& shaped, int i,
             int opset) {
  const pb::NodeProto& node = index.graph().node(i);
  if (!IsOnnxOp(node, "ReduceMean") || node.input_size() < 1 ||
      node.input(0).empty() || node.output_size() != 1 ||
      node.output(0).empty() || !Is4DFloat(shaped, node.input(0))) {
    return false;
  }
  std::vector<int64_t> axes = ConstantAxes(index, node, opset);
  for (int64_t& a : axes) a = a < 0 ? a + 4 : a;
  std::sort(axes.begin(), axes.end());
  return axes == std::vector<int64_t>{2, 3};
}

// An int64 initializer named `name` holding `values` (1-D).
pb::TensorProto Int64Vector(const std::string& name,
                            const std::vector<int64_t>& values) {
  pb::TensorProto t;
  t.set_name(name);
  t.set_data_type(pb::TensorProto::INT64);
  t.add_dims(static_cast<int64_t>(values.size()));
  for (int64_t v : values) t.add_int64_data(v);
  return t;
}

}  // namespace

bool ReduceMeanToGlobalAveragePool(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  const int opset = DefaultOpset(model);
  std::vector<bool> matched(graph->node_size(), false);
  bool any = false;
  {
    GraphIndex index(*graph);
    const ShapedValueInfos shaped = CollectShapedValueInfos(*graph);
    for (int i = 0; i < graph->node_size(); ++i) {
      matched[i] = Matches(index, shaped, i, opset);
      any = any || matched[i];
    }
  }
  if (!any) return false;
  NameAllocator names(*graph);
  std::unordered_set<std::string> old_axes;
  google::protobuf::RepeatedPtrField<pb::NodeProto> nodes;
  for (int i = 0; i < graph->node_size(); ++i) {
    pb::NodeProto& node = *graph->mutable_node(i);
    if (!matched[i]) {
      *nodes.Add() = std::move(node);
      continue;
    }
    const bool keepdims = IntAttribute(node, "keepdims", 1) != 0;
    if (node.input_size() > 1) old_axes.insert(node.input(1));
    const std::string out = node.output(0);
    pb::NodeProto* pool = nodes.Add();
    pool->set_name(node.name());
    pool->set_op_type("GlobalAveragePool");
    pool->set_domain(node.domain());
    pool->add_input(node.input(0));
    if (keepdims) {
      pool->add_output(out);
      continue;
    }
    const std::string base = node.name().empty() ? out : node.name();
    pool->add_output(names.Make(out + "_pooled"));
    pb::NodeProto* squeeze = nodes.Add();
    squeeze->set_name(names.Make(base + "_squeeze"));
    squeeze->set_op_type("Squeeze");
    squeeze->add_input(pool->output(0));
    squeeze->add_output(out);
    if (opset >= kSqueezeAxesInputOpset) {
      pb::TensorProto axes = Int64Vector(names.Make(base + "_axes"), {2, 3});
      squeeze->add_input(axes.name());
      *graph->add_initializer() = std::move(axes);
    } else {
      pb::AttributeProto* attr = squeeze->add_attribute();
      attr->set_name("axes");
      attr->set_type(pb::AttributeProto::INTS);
      attr->add_ints(2);
      attr->add_ints(3);
    }
  }
  graph->mutable_node()->Swap(&nodes);
  RemoveUnusedInitializers(old_axes, graph);
  return true;
}

}  // namespace onnxquant::passes
