#include "onnxquant/plan_overrides.h"

#include <algorithm>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

// Node name -> its first output, over `graph` and its bodies.
void FirstOutputs(const pb::GraphProto& graph,
                  std::unordered_map<std::string, std::string>* out) {
  for (const auto& n : graph.node()) {
    if (n.output_size() > 0) out->emplace(n.name(), n.output(0));
    for (const auto& a : n.attribute()) {
      if (a.has_g()) FirstOutputs(a.g(), out);
    }
  }
}

template <typename T, typename Pred>
void EraseIfVector(std::vector<T>* v, Pred pred) {
  v->erase(std::remove_if(v->begin(), v->end(), pred), v->end());
}

}  // namespace

ActivationType ActivationTypeOf(const QuantOptions& options,
                                const std::string& source) {
  auto it = options.tensor_types.find(source);
  return it == options.tensor_types.end() ? options.activation_type
                                          : it->second;
}

WeightType WeightTypeOf(const QuantOptions& options, const std::string& node) {
  auto it = options.node_weight_types.find(node);
  return it == options.node_weight_types.end() ? options.weight_type
                                               : it->second;
}

void DropFloatTensors(const pb::GraphProto& graph, const QuantOptions& options,
                      QuantPlan* plan) {
  if (options.float_tensors.empty()) return;
  const std::unordered_set<std::string> drop(options.float_tensors.begin(),
                                             options.float_tensors.end());
  std::unordered_set<std::string> calibrated(plan->calibrated.begin(),
                                             plan->calibrated.end());
  for (const auto& t : options.float_tensors) {
    if (!calibrated.count(t)) {
      throw InvalidArgument(
          "float_tensors names '" + t +
          "', which the plan does not calibrate: name a tensor that gets a "
          "QuantizeLinear/DequantizeLinear pair (the plan's 'calibrated' "
          "list).");
    }
  }
  auto dropped = [&](const std::string& t) { return drop.count(t) > 0; };
  EraseIfVector(&plan->calibrated, dropped);
  EraseIfVector(&plan->body_calibrated, dropped);
  EraseIfVector(&plan->qdq,
                [&](const QdqTensor& q) { return drop.count(q.source) > 0; });
  std::unordered_map<std::string, std::string> outputs;
  FirstOutputs(graph, &outputs);
  EraseIfVector(&plan->absorbed, [&](const AbsorbedActivation& a) {
    auto it = outputs.find(a.node);
    return it != outputs.end() && drop.count(it->second) > 0;
  });
}

void CheckWeightOptions(const QuantOptions& options, int opset) {
  if (options.block_size < 0 || options.block_size == 1) {
    throw InvalidArgument("block_size must be 0 (per channel) or >= 2, got " +
                          std::to_string(options.block_size));
  }
  bool int4 = options.weight_type == WeightType::kInt4;
  for (const auto& [node, type] : options.node_weight_types) {
    int4 = int4 || type == WeightType::kInt4;
  }
  if (int4 && opset < 21) {
    throw UnsupportedModelError(
        "int4 weights need opset 21 (DequantizeLinear of INT4); the model's "
        "opset is " + std::to_string(opset) +
        ". onnxquant.quantize converts the model up when asked for int4 "
        "weights.");
  }
}

}  // namespace onnxquant
