#include "onnxquant/node_weights.h"

#include <algorithm>
#include <cmath>

#include "onnxquant/error.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {

namespace {

// Throws Error(kModel) naming `what` of `node` when `values` holds a NaN or
// an infinity: such a tensor has no int8 (or int32) form.
void CheckFinite(const std::vector<float>& values, const std::string& what,
                 const std::string& tensor, const pb::NodeProto& node) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      throw ModelError("The " + what + " '" + tensor + "' of node '" +
                       node.name() + "' (" + node.op_type() +
                       ") holds a non-finite value (" +
                       std::to_string(values[i]) + " at index " +
                       std::to_string(i) +
                       "): it cannot be quantized. Fix the model's weights.");
    }
  }
}

}  // namespace

std::string WeightKey(const std::string& scope, const std::string& node) {
  return scope + '\n' + node;  // no name holds a line break
}

const WeightRemedy& RemedyOf(const QuantOptions& options,
                             const std::string& node) {
  static const WeightRemedy kDefault;  // immutable
  auto it = options.weight_remedies.find(node);
  return it == options.weight_remedies.end() ? kDefault : it->second;
}

NodeWeights QuantizeNodeWeights(const GraphIndex& index,
                                const pb::NodeProto& node,
                                const QuantizedNode& q, float input_scale,
                                const QuantOptions& options) {
  NodeWeights out;
  out.weight_name = node.input(q.weight_input);
  const auto* winit = index.Initializer(out.weight_name);
  if (!winit) {
    throw InternalError("weight '" + out.weight_name + "' of node '" +
                        node.name() + "' vanished");
  }
  out.dims = Dims(*winit);
  const std::vector<float> w = ToFloats(*winit);
  CheckFinite(w, "weight", out.weight_name, node);
  if (q.weight_axis >= static_cast<int>(out.dims.size())) {
    throw ModelError("The weight '" + out.weight_name + "' of node '" +
                     node.name() + "' (" + node.op_type() + ") has rank " +
                     std::to_string(out.dims.size()) +
                     ", too low for a per-channel axis " +
                     std::to_string(q.weight_axis) + ".");
  }
  const size_t channels = q.weight_axis >= 0 ? out.dims[q.weight_axis] : 1;
  if (q.bias_input >= 0) {
    const auto* binit = index.Initializer(node.input(q.bias_input));
    if (!binit) {
      throw InternalError("bias of node '" + node.name() + "' vanished");
    }
    out.bias = ToFloats(*binit);
    CheckFinite(out.bias, "bias", binit->name(), node);
    if (q.weight_axis >= 0 && out.bias.size() != channels &&
        out.bias.size() != 1) {
      throw ModelError("The bias '" + binit->name() + "' of node '" +
                       node.name() + "' (" + node.op_type() + ") has " +
                       std::to_string(out.bias.size()) + " values for " +
                       std::to_string(channels) + " output channels.");
    }
  }
  std::vector<float> min_scales;
  if (!out.bias.empty()) {
    auto per = MinWeightScalesForBias(out.bias, input_scale, out.bias.size());
    if (channels == out.bias.size()) {
      min_scales = per;
    } else {
      float m = 0.f;
      for (float s : per) m = std::max(m, s);
      min_scales.assign(channels, m);
    }
  }
  if (WeightTypeOf(options, q.node) == WeightType::kInt4) {
    // int4: [-7, 7]; no kernel remedy applies (no integer kernels).
    if (options.block_size > 0 && q.op_type == "MatMul" &&
        q.weight_input == 1 && out.dims.size() == 2) {
      out.quant = QuantizeWeightBlocked(w, out.dims, options.block_size, 7);
    } else {
      out.quant = QuantizeWeight(w, out.dims, q.weight_axis, 7, min_scales, {},
                                 options.power_of_two, options.weight_range);
    }
    return out;
  }
  const int qmax = options.reduce_weight_range ? 63 : 127;
  try {
    out.quant = QuantizeWeight(w, out.dims, q.weight_axis, qmax, min_scales,
                               RemedyOf(options, q.node).channel_qmax,
                               options.power_of_two, options.weight_range);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidArgument) throw;
    throw InvalidArgument("the weight remedy of node '" + q.node +
                          "' does not fit its weight '" + out.weight_name +
                          "': " + e.what());
  }
  return out;
}

}  // namespace onnxquant
