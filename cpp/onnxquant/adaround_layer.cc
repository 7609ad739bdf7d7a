#include "onnxquant/adaround_layer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <utility>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/node_weights.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

std::vector<int64_t> IntsAttribute(const pb::NodeProto& node,
                                   const std::string& name) {
  const pb::AttributeProto* a = FindAttribute(node, name);
  if (a == nullptr) return {};
  return std::vector<int64_t>(a->ints().begin(), a->ints().end());
}

std::string StringAttribute(const pb::NodeProto& node,
                            const std::string& name) {
  const pb::AttributeProto* a = FindAttribute(node, name);
  return a ? a->s() : "";
}

// Why AdaRound cannot round `node` (empty: it can).
std::string Unsupported(const GraphIndex& index, const pb::NodeProto& node,
                        const QuantizedNode& q, const QuantOptions& options) {
  const bool conv = IsOnnxOp(node, "Conv");
  const bool deconv = IsOnnxOp(node, "ConvTranspose");
  const bool gemm = IsOnnxOp(node, "Gemm");
  const bool matmul = IsOnnxOp(node, "MatMul");
  if (!conv && !deconv && !gemm && !matmul) {
    return node.op_type() + " is not supported";
  }
  if (q.weight_input != 1) return "its weight is not its second input";
  const pb::TensorProto* w = index.Initializer(node.input(1));
  if (w == nullptr || w->data_type() != pb::TensorProto::FLOAT ||
      index.IsGraphInput(node.input(1))) {
    return "its weight is not a float32 constant";
  }
  if (index.Consumers(node.input(1)).size() != 1 ||
      index.IsGraphOutput(node.input(1)) ||
      index.ReadBySubgraph(node.input(1))) {
    return "its weight is shared with other nodes";
  }
  const size_t rank = Dims(*w).size();
  if ((conv || deconv) && rank != 3 && rank != 4) {
    return "only 1-D and 2-D " + node.op_type();
  }
  if (deconv && (FindAttribute(node, "output_shape") != nullptr ||
                 StringAttribute(node, "auto_pad").rfind("SAME", 0) == 0)) {
    return "a ConvTranspose with output_shape or auto_pad SAME";
  }
  if ((gemm || matmul) && rank != 2) return "its weight is not 2-D";
  if (RemedyOf(options, q.node).encoding != WeightEncoding::kInt8) {
    return "its kernel remedy changes the weight encoding";
  }
  return "";
}

// Per ONNX element of the weight, the index of its scale in nw.quant.scales.
std::vector<int64_t> ScaleIndex(const NodeWeights& nw, int axis) {
  const int64_t total = NumElements(nw.dims);
  std::vector<int64_t> out(total, 0);
  if (nw.quant.block_size > 0) {  // [K, N], blocks along K
    const int64_t n = nw.dims[1];
    for (int64_t i = 0; i < total; ++i) {
      out[i] = (i / n) / nw.quant.block_size * n + i % n;
    }
  } else if (axis >= 0 && nw.quant.scales.size() > 1) {
    int64_t inner = 1;
    for (size_t d = axis + 1; d < nw.dims.size(); ++d) inner *= nw.dims[d];
    const int64_t channels = nw.dims[axis];
    for (int64_t i = 0; i < total; ++i) out[i] = (i / inner) % channels;
  }
  return out;
}

// The weight as rows (output channels) x cols: identity for Conv and
// Gemm transB = 1, a transpose for [K, N] weights. ConvTranspose: see
// ConvTransposeIndex.
bool Transposed(const pb::NodeProto& node) {
  return !(IsOnnxOp(node, "Conv") ||
           (IsOnnxOp(node, "Gemm") && IntAttribute(node, "transB", 0)));
}

// The ONNX index, in a ConvTranspose weight [C, O / groups, kh, kw], of
// column `col` = (c, i, j) of output channel `row` (group row / (O / groups)).
int64_t ConvTransposeIndex(const std::vector<int64_t>& dims, int64_t groups,
                           int64_t row, int64_t col) {
  const int64_t per_group = dims[1];
  const int64_t taps = NumElements(dims) / (dims[0] * dims[1]);
  const int64_t in_group = dims[0] / groups;
  const int64_t c = (row / per_group) * in_group + col / taps;
  return (c * per_group + row % per_group) * taps + col % taps;
}

ConvGeometry Geometry(const pb::NodeProto& node,
                      const std::vector<int64_t>& wdims,
                      const std::vector<InputView>& inputs) {
  ConvGeometry g;
  g.one_d = wdims.size() == 3;
  g.groups = IntAttribute(node, "group", 1);
  g.transposed = IsOnnxOp(node, "ConvTranspose");
  g.channels = g.transposed ? wdims[0] : wdims[1] * g.groups;
  const size_t sp = wdims.size() - 2;
  std::vector<int64_t> k(wdims.begin() + 2, wdims.end());
  std::vector<int64_t> s = IntsAttribute(node, "strides");
  std::vector<int64_t> d = IntsAttribute(node, "dilations");
  std::vector<int64_t> p = IntsAttribute(node, "pads");
  std::vector<int64_t> op = IntsAttribute(node, "output_padding");
  if (op.empty()) op.assign(sp, 0);
  if (op.size() != sp) {
    throw ModelError("AdaRound: the output_padding of node '" + node.name() +
                     "' does not fit its " + std::to_string(sp) + "-D kernel.");
  }
  if (s.empty()) s.assign(sp, 1);
  if (d.empty()) d.assign(sp, 1);
  if (p.empty()) p.assign(2 * sp, 0);
  if (s.size() != sp || d.size() != sp || p.size() != 2 * sp) {
    throw ModelError("AdaRound: the strides, dilations or pads of node '" +
                     node.name() + "' do not fit its " + std::to_string(sp) +
                     "-D kernel.");
  }
  const std::string pad = StringAttribute(node, "auto_pad");
  if (pad == "VALID") p.assign(2 * sp, 0);
  if (pad == "SAME_UPPER" || pad == "SAME_LOWER") {
    if (inputs.empty() || inputs[0].dims.size() != sp + 2) {
      throw InvalidArgument("AdaRound: the input of node '" + node.name() +
                            "' does not have rank " + std::to_string(sp + 2));
    }
    for (size_t a = 0; a < sp; ++a) {
      const int64_t in = inputs[0].dims[2 + a];
      const int64_t out = (in + s[a] - 1) / s[a];
      const int64_t total =
          std::max<int64_t>(0, (out - 1) * s[a] + (k[a] - 1) * d[a] + 1 - in);
      const int64_t small = total / 2;
      p[a] = pad == "SAME_UPPER" ? small : total - small;
      p[a + sp] = total - p[a];
    }
  }
  if (g.one_d) {
    g.output_pad_w = op[0];
    g.kernel_w = k[0];
    g.stride_w = s[0];
    g.dilation_w = d[0];
    g.pad_left = p[0];
    g.pad_right = p[1];
  } else {
    g.kernel_h = k[0];
    g.kernel_w = k[1];
    g.stride_h = s[0];
    g.stride_w = s[1];
    g.dilation_h = d[0];
    g.dilation_w = d[1];
    g.pad_top = p[0];
    g.pad_left = p[1];
    g.pad_bottom = p[2];
    g.pad_right = p[3];
    g.output_pad_h = op[0];
    g.output_pad_w = op[1];
  }
  return g;
}

}  // namespace

AdaRoundModel::AdaRoundModel(pb::ModelProto model, const DtypeMap& dtypes,
                             const QuantOptions& options)
    : model_(std::move(model)),
      options_(options),
      plan_(MakePlan(model_, dtypes, options_)),
      index_(std::make_unique<GraphIndex>(model_.graph())) {
  for (const QuantizedNode& q : plan_.quantized_nodes) {
    if (!q.scope.empty() || q.weight_input < 0) continue;
    const int n = index_->NodeNamed(q.node);
    if (n < 0) continue;
    const pb::NodeProto& node = model_.graph().node(n);
    const std::string why = Unsupported(*index_, node, q, options_);
    if (!why.empty()) {
      targets_.skipped.emplace_back(q.node, why);
      continue;
    }
    targets_.layers.push_back({q.node, node.input(0), node.input(1)});
  }
}

const QuantizedNode* AdaRoundModel::Planned(const std::string& name) const {
  for (const QuantizedNode& q : plan_.quantized_nodes) {
    if (q.node == name && q.scope.empty()) return &q;
  }
  return nullptr;
}

namespace {

// The planned node `name` of `model` that AdaRound can round, with its plan
// entry; throws InvalidArgument naming it otherwise.
std::pair<const pb::NodeProto*, const QuantizedNode*> Target(
    const AdaRoundModel& model, const std::string& name) {
  const QuantizedNode* q = model.Planned(name);
  const int n = model.index().NodeNamed(name);
  if (q == nullptr || n < 0 || q->weight_input < 0) {
    throw InvalidArgument("AdaRound: node '" + name +
                          "' is not a node the plan quantizes with a weight.");
  }
  const pb::NodeProto& node = model.graph().node(n);
  const std::string why =
      Unsupported(model.index(), node, *q, model.options());
  if (!why.empty()) {
    throw InvalidArgument("AdaRound cannot round node '" + name + "': " + why);
  }
  return {&node, q};
}

void AddInto(GramSums& total, const GramSums& part, const std::string& node) {
  if (total.sums.empty()) {
    total = part;
    return;
  }
  if (total.groups != part.groups || total.cols != part.cols) {
    throw InvalidArgument("AdaRound: the inputs of node '" + node +
                          "' changed shape between batches");
  }
  for (size_t i = 0; i < total.sums.size(); ++i) total.sums[i] += part.sums[i];
  total.columns += part.columns;
}

}  // namespace

LayerGramAccumulator::LayerGramAccumulator(const AdaRoundModel& model,
                                           const std::string& name)
    : name_(name) {
  const auto [node, q] = Target(model, name);
  const QuantOptions& options = model.options();
  node_ = *node;
  weight_axis_ = q->weight_axis;
  quantized_ = QuantizeNodeWeights(model.index(), *node, *q,
                                   std::numeric_limits<float>::max(), options);
  weight_ = ToFloats(*model.index().Initializer(quantized_.weight_name));
  weight_dims_ = Dims(*model.index().Initializer(node->input(1)));
  remedy_qmax_ = RemedyOf(options, name).channel_qmax;
  int4_ = WeightTypeOf(options, name) == WeightType::kInt4;
  base_qmax_ = int4_ ? 7 : (options.reduce_weight_range ? 63 : 127);
  conv_ = IsOnnxOp(*node, "Conv") || IsOnnxOp(*node, "ConvTranspose");
  const bool transposed =
      Transposed(*node) && !IsOnnxOp(*node, "ConvTranspose");
  k_ = transposed ? weight_dims_[0] : weight_dims_[1];
  trans_a_ = IsOnnxOp(*node, "Gemm") && IntAttribute(*node, "transA", 0);
}

void LayerGramAccumulator::Add(
    const std::vector<InputView>& inputs,
    const std::vector<InputView>& quantized_inputs, int threads) {
  if (inputs.empty()) {
    throw InvalidArgument("AdaRound: no cached input for node '" + name_ +
                          "'.");
  }
  const bool asym = !quantized_inputs.empty();
  if (batches_ > 0 && asym != !grams_.cross.sums.empty()) {
    throw InvalidArgument("AdaRound: node '" + name_ +
                          "' got quantized inputs for some batches only");
  }
  if (conv_) {
    const ConvGeometry g = Geometry(node_, weight_dims_, inputs);
    if (g.groups < 1 || weight_dims_[0] % g.groups != 0) {
      throw ModelError("AdaRound: node '" + name_ + "' has " +
                       std::to_string(weight_dims_[0]) +
                       (g.transposed ? " input" : " output") +
                       " channels, not a multiple of its group.");
    }
    if (asym) {
      AddInto(grams_.gram, ConvGram(g, quantized_inputs, threads, name_),
              name_);
      AddInto(grams_.cross,
              ConvGram(g, inputs, threads, name_, &quantized_inputs), name_);
      AddInto(grams_.fp_gram, ConvGram(g, inputs, threads, name_), name_);
    } else {
      AddInto(grams_.gram, ConvGram(g, inputs, threads, name_), name_);
    }
  } else if (asym) {
    AddInto(grams_.gram,
            DenseGram(k_, trans_a_, quantized_inputs, threads, name_), name_);
    AddInto(grams_.cross,
            DenseGram(k_, trans_a_, inputs, threads, name_, &quantized_inputs),
            name_);
    AddInto(grams_.fp_gram, DenseGram(k_, trans_a_, inputs, threads, name_),
            name_);
  } else {
    AddInto(grams_.gram, DenseGram(k_, trans_a_, inputs, threads, name_),
            name_);
  }
  ++batches_;
}

LayerRounding LayerGramAccumulator::Round(
    const AdaRoundSettings& settings, const AdaRoundProgress& progress) const {
  const std::string& name = name_;
  const pb::NodeProto& node = node_;
  const NodeWeights& nw = quantized_;
  const std::vector<float>& w = weight_;
  const bool deconv = IsOnnxOp(node, "ConvTranspose");
  const bool transposed = Transposed(node) && !deconv;
  const GramSums& gram = grams_.gram;
  const GramSums& cross = grams_.cross;
  const GramSums& fp_gram = grams_.fp_gram;
  const bool asym = !cross.sums.empty();
  const int64_t groups = gram.groups;
  if (gram.columns < 1) {
    throw InvalidArgument("AdaRound: the cached input of node '" + name +
                          "' holds no values.");
  }

  // The problem, in rows (output channels) x cols.
  RoundingProblem p;
  const int64_t total = NumElements(nw.dims);
  const int64_t rows_all =
      deconv ? nw.dims[1] * groups : (transposed ? nw.dims[1] : nw.dims[0]);
  p.groups = groups;
  p.rows = rows_all / groups;
  p.cols = total / rows_all;
  if (p.cols != gram.cols) {
    throw InternalError("AdaRound: node '" + name + "' weight and Gram differ");
  }
  p.gram.resize(gram.sums.size());
  for (size_t i = 0; i < gram.sums.size(); ++i) {
    p.gram[i] = static_cast<float>(gram.sums[i] / gram.columns);
  }
  auto onnx_index = [&](int64_t r, int64_t c) {
    if (deconv) return ConvTransposeIndex(nw.dims, groups, r, c);
    return transposed ? c * rows_all + r : r * p.cols + c;
  };
  const std::vector<int64_t> sidx = ScaleIndex(nw, weight_axis_);
  const std::vector<int32_t>& remedy = remedy_qmax_;
  const bool int4 = int4_;
  const int32_t base_qmax = base_qmax_;
  p.weight.resize(total);
  p.scale.resize(total);
  p.frozen.assign(total, 0);
  p.qmax.resize(rows_all);
  std::vector<int32_t> group_max(nw.quant.scales.size(), 0);
  for (int64_t i = 0; i < total; ++i) {
    group_max[sidx[i]] = std::max<int32_t>(group_max[sidx[i]],
                                           std::abs(nw.quant.values[i]));
  }
  for (int64_t r = 0; r < rows_all; ++r) {
    p.qmax[r] = base_qmax;
    if (!int4 && !remedy.empty()) {
      const size_t at = std::min<size_t>(r, remedy.size() - 1);
      p.qmax[r] = remedy.size() == 1 ? remedy[0] : remedy[at];
    }
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t e = onnx_index(r, c);
      const int64_t m = r * p.cols + c;
      p.weight[m] = w[e];
      p.scale[m] = nw.quant.scales[sidx[e]];
      p.frozen[m] = std::abs(nw.quant.values[e]) == group_max[sidx[e]];
    }
  }
  for (float& s : p.scale) {
    if (!(s > 0)) s = 1.f;  // an all-zero group: every code is 0 anyway
  }
  if (asym) {
    p.cross.resize(cross.sums.size());
    for (size_t i = 0; i < cross.sums.size(); ++i) {
      p.cross[i] = static_cast<float>(cross.sums[i] / cross.columns);
    }
    p.row_offset.assign(rows_all, 0.0);
    const int64_t k = p.cols;
    for (int64_t r = 0; r < rows_all; ++r) {
      const double* g = fp_gram.sums.data() + (r / p.rows) * k * k;
      const float* w = p.weight.data() + r * k;
      double acc = 0;
      for (int64_t i = 0; i < k; ++i) {
        double row = 0;
        for (int64_t j = 0; j < k; ++j) row += g[i * k + j] * w[j];
        acc += w[i] * row;
      }
      p.row_offset[r] = acc / fp_gram.columns;
    }
  }

  LayerRounding out;
  out.stats = OptimizeRounding(p, settings, progress);
  out.weight_name = nw.weight_name;
  out.dims = nw.dims;
  out.weight.resize(total);
  out.codes.resize(total);
  for (int64_t r = 0; r < rows_all; ++r) {
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t e = onnx_index(r, c);
      const int64_t m = r * p.cols + c;
      out.codes[e] = out.stats.codes[m];
      out.weight[e] = static_cast<float>(out.stats.codes[m]) * p.scale[m];
    }
  }
  return out;
}

}  // namespace onnxquant
