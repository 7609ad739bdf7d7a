#include "onnxquant/bias_correction.h"

#include <limits>
#include <unordered_map>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/node_weights.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

// Output channels of node `node` with weight dims `w`, or -1 when they
// cannot be told.
int64_t OutputChannels(const pb::NodeProto& node,
                       const std::vector<int64_t>& w) {
  if (IsOnnxOp(node, "Conv")) return w.empty() ? -1 : w[0];
  if (IsOnnxOp(node, "Gemm") && w.size() == 2) {
    return IntAttribute(node, "transB", 0) ? w[0] : w[1];
  }
  return -1;
}

}  // namespace

BiasPreparation PrepareBiasCorrection(pb::ModelProto& model,
                                      const DtypeMap& dtypes,
                                      const QuantOptions& options) {
  const QuantPlan plan = MakePlan(model, dtypes, options);
  pb::GraphProto* graph = model.mutable_graph();
  BiasPreparation out;
  struct Change {
    int node;
    std::string name;  // the new bias initializer
    pb::TensorProto value;
  };
  std::vector<Change> changes;
  {
    GraphIndex index(*graph);
    NameAllocator names(*graph);
    for (const QuantizedNode& q : plan.quantized_nodes) {
      if (!q.scope.empty() || q.weight_input < 0) continue;
      const int n = index.NodeNamed(q.node);
      if (n < 0) continue;
      const pb::NodeProto& node = graph->node(n);
      if (!IsOnnxOp(node, "Conv") && !IsOnnxOp(node, "Gemm")) {
        out.skipped.emplace_back(q.node, node.op_type() + " has no bias input");
        continue;
      }
      if (IsOnnxOp(node, "Gemm") &&
          (FloatAttribute(node, "alpha", 1.f) != 1.f ||
           FloatAttribute(node, "beta", 1.f) != 1.f)) {
        out.skipped.emplace_back(q.node, "Gemm with alpha or beta not 1");
        continue;
      }
      const pb::TensorProto* w = index.Initializer(node.input(1));
      const int64_t channels = w ? OutputChannels(node, Dims(*w)) : -1;
      if (channels < 1) {
        throw ModelError("Bias correction: the output channels of node '" +
                         node.name() + "' (" + node.op_type() +
                         ") cannot be told from its weight.");
      }
      std::vector<float> bias(channels, 0.f);
      const bool has = node.input_size() > 2 && !node.input(2).empty();
      if (has) {
        const pb::TensorProto* b = index.Initializer(node.input(2));
        if (b == nullptr || index.IsGraphInput(node.input(2)) ||
            b->data_type() != pb::TensorProto::FLOAT) {
          out.skipped.emplace_back(q.node,
                                   "its bias is not a float32 constant");
          continue;
        }
        const std::vector<float> v = ToFloats(*b);
        if (static_cast<int64_t>(v.size()) == channels) {
          bias = v;
        } else {
          out.skipped.emplace_back(q.node,
                                   "its bias is not one value per channel");
          continue;
        }
      }
      const bool own = has && index.Consumers(node.input(2)).size() == 1 &&
                       !index.IsGraphOutput(node.input(2)) &&
                       Dims(*index.Initializer(node.input(2))).size() == 1;
      BiasLayer layer{q.node, node.output(0), own ? node.input(2) : "",
                      channels};
      if (!own) {
        layer.bias = names.Make(q.node + "_bias");
        changes.push_back({n, layer.bias,
                           FloatTensor(layer.bias, {channels}, bias)});
      }
      out.layers.push_back(layer);
    }
  }
  for (Change& c : changes) {
    pb::NodeProto* node = graph->mutable_node(c.node);
    while (node->input_size() < 3) node->add_input("");
    node->set_input(2, c.name);
    *graph->add_initializer() = std::move(c.value);
  }
  return out;
}

std::vector<std::string> EmulateQuantizedWeights(pb::ModelProto& model,
                                                 const DtypeMap& dtypes,
                                                 const QuantOptions& options) {
  const QuantPlan plan = MakePlan(model, dtypes, options);
  std::unordered_map<std::string, pb::TensorProto> replaced;
  std::vector<std::string> changed;
  {
    GraphIndex index(model.graph());
    for (const QuantizedNode& q : plan.quantized_nodes) {
      if (!q.scope.empty() || q.weight_input < 0) continue;
      const int n = index.NodeNamed(q.node);
      if (n < 0) continue;
      const pb::NodeProto& node = model.graph().node(n);
      const NodeWeights nw = QuantizeNodeWeights(
          index, node, q, std::numeric_limits<float>::max(), options);
      // Dequantize: code * scale of its channel along the weight axis.
      int64_t inner = 1, channels = 1;
      if (q.weight_axis >= 0) {
        channels = nw.dims[q.weight_axis];
        for (size_t d = q.weight_axis + 1; d < nw.dims.size(); ++d) {
          inner *= nw.dims[d];
        }
      } else {
        inner = static_cast<int64_t>(nw.quant.values.size());
      }
      std::vector<float> values(nw.quant.values.size());
      for (size_t i = 0; i < values.size(); ++i) {
        const int64_t c = (static_cast<int64_t>(i) / inner) % channels;
        values[i] = static_cast<float>(nw.quant.values[i]) * nw.quant.scales[c];
      }
      replaced[nw.weight_name] = FloatTensor(nw.weight_name, nw.dims, values);
      changed.push_back(q.node);
    }
  }
  for (auto& t : *model.mutable_graph()->mutable_initializer()) {
    auto it = replaced.find(t.name());
    if (it != replaced.end()) t = std::move(it->second);
  }
  return changed;
}

std::vector<double> ChannelSums(const float* data,
                                const std::vector<int64_t>& dims) {
  if (dims.size() < 2) {
    throw InvalidArgument("channel sums need an array of rank 2 or more");
  }
  const int64_t total = NumElements(dims);
  const int64_t channels = dims[1];
  int64_t inner = 1;
  for (size_t d = 2; d < dims.size(); ++d) inner *= dims[d];
  std::vector<double> sums(channels, 0.0);
  if (total == 0) return sums;
  const int64_t outer = total / (channels * inner);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const float* p = data + (o * channels + c) * inner;
      double s = 0.0;
      for (int64_t i = 0; i < inner; ++i) s += p[i];
      sums[c] += s;
    }
  }
  return sums;
}

}  // namespace onnxquant
