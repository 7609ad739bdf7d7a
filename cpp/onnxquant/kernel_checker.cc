#include "onnxquant/kernel_checker.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "onnxquant/arithmetic.h"
#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/node_weights.h"

namespace onnxquant {
namespace {

std::vector<int64_t> IntsAttribute(const pb::NodeProto& node,
                                   const std::string& name) {
  const pb::AttributeProto* a = FindAttribute(node, name);
  if (!a) return {};
  return std::vector<int64_t>(a->ints().begin(), a->ints().end());
}

std::string StringAttribute(const pb::NodeProto& node,
                            const std::string& name) {
  const pb::AttributeProto* a = FindAttribute(node, name);
  return a ? a->s() : std::string();
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

// Pads of one spatial axis for auto_pad SAME_UPPER / SAME_LOWER.
std::pair<int64_t, int64_t> SamePads(int64_t in, int64_t kernel,
                                     int64_t stride, int64_t dilation,
                                     bool upper) {
  const int64_t out = (in + stride - 1) / stride;
  const int64_t need =
      std::max<int64_t>(0, (out - 1) * stride + dilation * (kernel - 1) + 1 -
                               in);
  const int64_t small = need / 2, large = need - small;
  return upper ? std::make_pair(small, large) : std::make_pair(large, small);
}

// The graphs of a model by plan scope ("" the main graph, then If, Loop and
// Scan bodies), each with an index that sees the enclosing graphs'
// initializers, and its nodes by name.
class Scopes {
 public:
  explicit Scopes(const pb::GraphProto& main) { Add(main, "", nullptr); }

  const GraphIndex& Index(const Scope& scope) const {
    return *at(scope).index;
  }
  const pb::NodeProto& Node(const Scope& scope, const std::string& name) const {
    const Entry& e = at(scope);
    auto it = e.by_name.find(name);
    if (it == e.by_name.end()) {
      throw InternalError("the plan names node '" + name +
                          "', which the graph does not hold");
    }
    return e.index->graph().node(it->second);
  }

 private:
  struct Entry {
    std::unique_ptr<GraphIndex> index;
    std::unordered_map<std::string, int> by_name;
  };
  const Entry& at(const Scope& scope) const {
    auto it = entries_.find(scope);
    if (it == entries_.end()) {
      throw InternalError("the plan names graph '" + scope +
                          "', which the model does not hold");
    }
    return it->second;
  }
  void Add(const pb::GraphProto& graph, const Scope& scope,
           const GraphIndex* outer) {
    Entry& e = entries_[scope];
    e.index = std::make_unique<GraphIndex>(graph);
    e.index->SetOuter(outer);
    for (int i = 0; i < graph.node_size(); ++i) {
      e.by_name.emplace(graph.node(i).name(), i);
    }
    const GraphIndex* here = e.index.get();
    for (const auto& n : graph.node()) {
      const bool control_flow =
          (n.domain().empty() || n.domain() == "ai.onnx") &&
          (n.op_type() == "If" || n.op_type() == "Loop" ||
           n.op_type() == "Scan");
      if (!control_flow) continue;
      for (const auto& attr : n.attribute()) {
        if (!attr.has_g()) continue;
        Add(attr.g(),
            (scope.empty() ? "" : scope + "/") + n.name() + "." + attr.name(),
            here);
      }
    }
  }
  std::unordered_map<Scope, Entry> entries_;
};

}  // namespace

KernelChecker::KernelChecker(const pb::ModelProto& model,
                             const DtypeMap& dtypes,
                             const QuantOptions& options,
                             const RangeMap& ranges)
    : KernelChecker(model, MakePlan(model, dtypes, options), options,
                    ranges) {}

KernelChecker::KernelChecker(const pb::ModelProto& model,
                             const QuantPlan& plan,
                             const QuantOptions& options,
                             const RangeMap& ranges, WeightCache* keep) {
  std::unordered_map<std::string, std::string> source;
  for (const auto& e : plan.qdq) source[e.tensor] = e.source;
  const Scopes scopes(model.graph());
  std::unordered_map<std::string, std::string> absorbed_by;
  for (const auto& a : plan.absorbed) absorbed_by[a.producer] = a.node;
  auto params_of = [&](const std::string& tensor) {
    auto src = source.find(tensor);
    if (src == source.end()) {
      throw InternalError("tensor '" + tensor +
                          "' has no planned quantization");
    }
    auto range = ranges.find(src->second);
    if (range == ranges.end()) {
      throw RangeError("No range for planned tensor '" + src->second +
                       "'. Calibrate the model (Calibrator.compute_range()) "
                       "and pass every range it returns to quantize().");
    }
    try {
      return ActivationQuantParams(range->second.first, range->second.second,
                                   options,
                                   ActivationTypeOf(options, src->second));
    } catch (const Error& e) {
      throw RangeError("Invalid range for tensor '" + src->second +
                       "': " + e.what() +
                       ". Pass (min, max) with min <= max, finite.");
    }
  };
  for (const auto& q : plan.quantized_nodes) {
    if (q.weight_input < 0) continue;
    const pb::NodeProto& node = scopes.Node(q.scope, q.node);
    const GraphIndex& index = scopes.Index(q.scope);
    NodeKernelCheck r;
    r.node = q.node;
    r.in_body = !q.scope.empty();
    r.op_type = q.op_type;
    const int act = q.weight_input == 0 ? 1 : 0;
    r.input = node.input(act);
    Node n;
    if (!source.count(r.input)) {  // a float_tensors override
      r.kind = KernelKind::kNotFused;
      r.detail = "its input stays float";
      results_.push_back(std::move(r));
      nodes_.push_back(std::move(n));
      continue;
    }
    const ActivationType type =
        ActivationTypeOf(options, source.at(r.input));
    const ActivationParams p = params_of(r.input);
    n.scale = p.scale;
    std::string output = node.output(0);
    auto absorbed = absorbed_by.find(q.node);
    if (absorbed != absorbed_by.end()) {
      output = scopes.Node(q.scope, absorbed->second).output(0);
    }
    if (source.count(output)) n.output_scale = params_of(output).scale;
    // ONNX Runtime turns int8 activations into uint8 ones (+128) before
    // its integer kernels.
    n.zero_point = type == ActivationType::kInt8
                       ? p.zero_point + 128
                       : p.zero_point;
    const WeightEncoding encoding = RemedyOf(options, q.node).encoding;
    const float input_scale = q.bias_input >= 0 ? p.scale : 0.f;
    NodeWeights w = QuantizeNodeWeights(index, node, q, input_scale, options);
    r.per_channel = w.quant.scales.size() > 1;
    if (type == ActivationType::kInt16) {
      r.kind = KernelKind::kNotFused;
      r.detail = "int16 activations: ONNX Runtime runs DQ -> float op -> Q";
    } else if (WeightTypeOf(options, q.node) == WeightType::kInt4) {
      r.kind = KernelKind::kNotFused;
      r.detail = "int4 weights: ONNX Runtime runs DQ -> float op";
    } else if (q.op_type == "ConvTranspose") {
      r.kind = KernelKind::kNotFused;
      r.detail = "ONNX Runtime runs ConvTranspose in float";
    } else if (q.weight_input == 0) {
      r.kind = KernelKind::kNotFused;
      r.detail = "a MatMul whose constant is its first operand";
    } else if (encoding == WeightEncoding::kUint8Offset) {
      r.kind = KernelKind::kExact;
      r.detail = "uint8 weights: uint8 x uint8 kernels";
    } else if (q.op_type == "Conv") {
      if (w.dims.size() != 4) {
        r.kind = KernelKind::kNotFused;
        r.detail = "a Conv that is not 2-D is not checked";
      } else {
        n.is_conv = true;
        ConvGeometry& g = n.geometry;
        g.out_channels = w.dims[0];
        g.group = IntAttribute(node, "group", 1);
        g.kernel_h = w.dims[2];
        g.kernel_w = w.dims[3];
        const auto strides = IntsAttribute(node, "strides");
        const auto dilations = IntsAttribute(node, "dilations");
        if (strides.size() == 2) g.stride_h = strides[0], g.stride_w = strides[1];
        if (dilations.size() == 2) {
          g.dilation_h = dilations[0], g.dilation_w = dilations[1];
        }
        n.pads = IntsAttribute(node, "pads");
        n.auto_pad = StringAttribute(node, "auto_pad");
        if (g.group > 1 && w.dims[1] == 1 && g.out_channels == g.group) {
          r.kind = KernelKind::kExact;
          r.detail = "depthwise Conv: an exact int32 kernel";
        }
        n.filters.codes = w.quant.values;  // laid out once the input is known
      }
    } else {  // Gemm, MatMul with a constant second operand
      if (w.dims.size() != 2) {
        r.kind = KernelKind::kNotFused;
        r.detail = "a weight that is not 2-D is not checked";
      } else {
        const bool trans_b =
            q.op_type == "Gemm" && IntAttribute(node, "transB", 0) != 0;
        n.transpose_a =
            q.op_type == "Gemm" && IntAttribute(node, "transA", 0) != 0;
        const int64_t k = trans_b ? w.dims[1] : w.dims[0];
        const int64_t cols = trans_b ? w.dims[0] : w.dims[1];
        n.filters = GemmFilters(w.quant.values, k, cols, trans_b);
      }
    }
    if (options.reduce_weight_range && r.kind == KernelKind::kPairSums) {
      r.kind = KernelKind::kExact;
      r.detail = "7-bit weights: 255 x 2 x 63 fits in int16";
    }
    if (r.kind == KernelKind::kPairSums) {
      const auto& ws = w.quant.scales;
      const int64_t filters = n.is_conv ? w.dims[0] : n.filters.filters;
      n.filters.unit.resize(filters);
      for (int64_t f = 0; f < filters; ++f) {
        n.filters.unit[f] = static_cast<double>(p.scale) *
                            ws[ws.size() == 1 ? 0 : f];
      }
      if (n.is_conv) {
        // The bound needs only the filters' pairing, not the input size.
        ConvGeometry g = n.geometry;
        g.channels = w.dims[1] * g.group;
        PairedFilters f = ConvFilters(w.quant.values, g);
        f.unit = std::move(n.filters.unit);
        n.filters = std::move(f);
      }
      r.bounds = PairSumBounds(n.filters, 255);
      for (int32_t b : r.bounds) r.bound = std::max(r.bound, b);
      if (r.in_body) {
        r.detail = "inside body '" + q.scope +
                   "': not replayed, judged by its worst case";
      }
    }
    results_.push_back(std::move(r));
    nodes_.push_back(std::move(n));
    if (keep != nullptr) {
      (*keep)[WeightKey(q.scope, q.node)] = CachedWeights{
          input_scale, q.bias_input, RemedyOf(options, q.node), std::move(w)};
    }
  }
}

std::vector<std::string> KernelChecker::Inputs() const {
  std::vector<std::string> out;
  std::unordered_set<std::string> seen;
  for (const auto& r : results_) {
    if (r.kind == KernelKind::kPairSums && !r.in_body &&
        seen.insert(r.input).second) {
      out.push_back(r.input);
    }
  }
  return out;
}

std::vector<uint8_t> KernelChecker::Codes(const Node& n,
                                          const ActivationView& a) const {
  int64_t size = 1;
  for (int64_t d : a.shape) size *= d;
  std::vector<uint8_t> codes(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) {
    const float x = a.data[i];
    // QuantizeLinear: round half to even of x / scale (float32), plus the
    // zero point, saturated. NaN counts as 0.
    float v = std::isnan(x) ? 0.f : std::nearbyint(x / n.scale);
    v = std::clamp(v + static_cast<float>(n.zero_point), 0.f, 255.f);
    codes[i] = static_cast<uint8_t>(v);
  }
  return codes;
}

void KernelChecker::AddConv(const Node& n, const ActivationView& a,
                            NodeKernelCheck* r) {
  if (a.shape.size() != 4 ||
      a.shape[1] != n.filters.length / (n.geometry.kernel_h *
                                        n.geometry.kernel_w) *
                        n.geometry.group) {
    throw InvalidArgument("the activation '" + r->input + "' of Conv '" +
                          r->node + "' has shape " + ShapeText(a.shape) +
                          ", which the Conv's weight does not fit");
  }
  ConvGeometry g = n.geometry;
  g.batch = a.shape[0];
  g.channels = a.shape[1];
  g.height = a.shape[2];
  g.width = a.shape[3];
  if (n.auto_pad == "SAME_UPPER" || n.auto_pad == "SAME_LOWER") {
    const bool upper = n.auto_pad == "SAME_UPPER";
    std::tie(g.pad_top, g.pad_bottom) =
        SamePads(g.height, g.kernel_h, g.stride_h, g.dilation_h, upper);
    std::tie(g.pad_left, g.pad_right) =
        SamePads(g.width, g.kernel_w, g.stride_w, g.dilation_w, upper);
  } else if (n.pads.size() == 4 && n.auto_pad != "VALID") {
    g.pad_top = n.pads[0], g.pad_left = n.pads[1];
    g.pad_bottom = n.pads[2], g.pad_right = n.pads[3];
  }
  const PairSumStats s = SimulateConv(Codes(n, a),
                                      static_cast<uint8_t>(n.zero_point), g,
                                      n.filters);
  Accumulate(s, &r->observed);
  const double step = n.output_scale;
  r->noise_energy += static_cast<double>(s.rows) * n.filters.filters *
                     step * step / 12.0;
}

void KernelChecker::AddGemm(const Node& n, const ActivationView& a,
                            NodeKernelCheck* r) {
  const int64_t k = n.filters.length;
  int64_t size = 1;
  for (int64_t d : a.shape) size *= d;
  const bool fits =
      !a.shape.empty() &&
      (n.transpose_a ? (a.shape.size() == 2 && a.shape[0] == k)
                     : a.shape.back() == k);
  if (!fits) {
    throw InvalidArgument("the activation '" + r->input + "' of " +
                          r->op_type + " '" + r->node + "' has shape " +
                          ShapeText(a.shape) +
                          ", which the weight's K = " + std::to_string(k) +
                          " does not fit");
  }
  std::vector<uint8_t> codes = Codes(n, a);
  const int64_t rows = k == 0 ? 0 : size / k;
  if (n.transpose_a) {  // [K, rows] -> [rows, K]
    std::vector<uint8_t> t(codes.size());
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < rows; ++j) t[j * k + i] = codes[i * rows + j];
    }
    codes.swap(t);
  }
  const PairSumStats s = SimulateGemm(codes, rows, n.filters);
  Accumulate(s, &r->observed);
  const double step = n.output_scale;
  r->noise_energy += static_cast<double>(s.rows) * n.filters.filters *
                     step * step / 12.0;
}

std::unordered_map<std::string, std::vector<int32_t>>
KernelChecker::ChannelQmax(bool bound_unobserved, double headroom) const {
  std::unordered_map<std::string, std::vector<int32_t>> out;
  for (const auto& r : results_) {
    if (r.kind != KernelKind::kPairSums) continue;
    const bool observed = r.batches > 0;
    if (!observed && !bound_unobserved) continue;
    const std::vector<int32_t>& peaks =
        observed ? r.observed.filter_peak : r.bounds;
    std::vector<int32_t> qmax(peaks.size(), 127);
    bool changed = false;
    for (size_t f = 0; f < peaks.size(); ++f) {
      qmax[f] = FittingQmax(peaks[f], observed ? headroom : 0.0);
      changed = changed || qmax[f] < 127;
    }
    if (!changed) continue;
    if (!r.per_channel) {  // one scale: the tightest filter decides
      qmax = {*std::min_element(qmax.begin(), qmax.end())};
    }
    out.emplace(r.node, std::move(qmax));
  }
  return out;
}

void KernelChecker::Add(
    const std::unordered_map<std::string, ActivationView>& arrays) {
  for (size_t i = 0; i < results_.size(); ++i) {
    NodeKernelCheck& r = results_[i];
    if (r.kind != KernelKind::kPairSums || r.in_body) continue;
    auto it = arrays.find(r.input);
    if (it == arrays.end()) continue;
    if (nodes_[i].is_conv) {
      AddConv(nodes_[i], it->second, &r);
    } else {
      AddGemm(nodes_[i], it->second, &r);
    }
    ++r.batches;
  }
}

}  // namespace onnxquant
