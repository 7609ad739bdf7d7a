// fold_batch_norm: folds an inference BatchNormalization into the Conv,
// ConvTranspose or Gemm that feeds it.
//
// With s = gamma / sqrt(var + eps) and t = beta - mean * s per output
// channel, the producer's weight becomes w * s and its bias b * s + t (a zero
// bias when it had none; a Gemm's bias also absorbs `beta`, which becomes 1).
// Output channels: Conv weight [M, C/g, ...] axis 0; ConvTranspose weight
// [C, M/g, ...] axis 1 within each group; Gemm axis 1 of B, or 0 when
// transB = 1. The producer then writes the BatchNormalization's output name,
// so graph outputs keep their names, and the BatchNormalization goes.
//
// A fold happens only when the producer's output has no other reader and is
// no graph output, the weight, bias and BatchNormalization parameters are
// initializers not listed in graph.input, the weight and bias are float32,
// and the BatchNormalization is in inference form (training_mode 0, spatial
// 1, extra outputs unused). A Gemm's bias must be a scalar or per column. A
// weight or bias that something else also reads is copied under a fresh
// name; parameters nothing reads any more are removed.
// Throws Error(kModel) naming the BatchNormalization when its parameters do
// not fit the producer (wrong or zero length, var + eps <= 0).
#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/passes/passes.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::passes {
namespace {

// The initializer `name` when it is a constant (not overridable through
// graph.input) and, if `float32_only`, of type FLOAT; else nullptr.
const pb::TensorProto* Constant(const GraphIndex& index,
                                const std::string& name, bool float32_only) {
  const pb::TensorProto* t = index.Initializer(name);
  if (t == nullptr || index.IsGraphInput(name)) return nullptr;
  if (float32_only && t->data_type() != pb::TensorProto::FLOAT) return nullptr;
  return t;
}

// "Cannot fold BatchNormalization 'bn' after Conv 'conv'", for errors.
std::string Context(const pb::NodeProto& bn, const pb::NodeProto& producer) {
  return "Cannot fold BatchNormalization '" + bn.name() + "' after " +
         producer.op_type() + " '" + producer.name() + "'";
}

// Maps a weight element's flat index to its output channel:
// ((i / stride) % per) + per * (i / block).
struct ChannelMap {
  int64_t channels, stride, per, block;
  int64_t operator()(int64_t i) const {
    return (i / stride) % per + per * (i / block);
  }
};

// The channel map of `producer`'s weight of shape `w`. Throws Error(kModel)
// naming `bn` for a weight of the wrong rank or a `group` that does not fit.
ChannelMap WeightChannels(const pb::NodeProto& producer,
                          const std::vector<int64_t>& w,
                          const pb::NodeProto& bn) {
  const bool gemm = IsOnnxOp(producer, "Gemm");
  const int64_t total = NumElements(w);
  const int64_t group = IntAttribute(producer, "group", 1);
  if ((gemm && w.size() != 2) || w.size() < 2 || group < 1 ||
      (IsOnnxOp(producer, "ConvTranspose") && w[0] % group != 0)) {
    throw ModelError(Context(bn, producer) +
                     ": its weight does not fit its rank or group.");
  }
  if (gemm && IntAttribute(producer, "transB", 0) == 0) {
    return {w[1], 1, w[1], total};  // B is [K, N]
  }
  const int64_t rest = total / std::max<int64_t>(w[0] * w[1], 1);
  if (gemm || IsOnnxOp(producer, "Conv")) {
    return {w[0], w[1] * rest, w[0], total};  // [M, ...]
  }
  // ConvTranspose: [C, M/g, ...], group k holds input channels
  // [k*C/g, (k+1)*C/g) and output channels [k*M/g, (k+1)*M/g).
  return {w[1] * group, rest, w[1], (w[0] / group) * w[1] * rest};
}

// The per-channel scale s and shift t of `bn` (y = s * x + t) from its
// parameters gamma, beta, mean, var. Throws Error(kModel) when a parameter
// does not hold `channels` (> 0) values or var + epsilon is not positive.
void BatchNormAffine(const pb::NodeProto& bn, const pb::NodeProto& producer,
                     const std::vector<const pb::TensorProto*>& params,
                     int64_t channels, std::vector<double>* s,
                     std::vector<double>* t) {
  std::vector<std::vector<float>> v;  // gamma, beta, mean, var
  for (const pb::TensorProto* p : params) {
    v.push_back(ToFloats(*p));
    if (static_cast<int64_t>(v.back().size()) != channels || channels == 0) {
      throw ModelError(Context(bn, producer) + ": parameter '" + p->name() +
                       "' has " + std::to_string(v.back().size()) +
                       " values for " + std::to_string(channels) +
                       " output channels. The model is inconsistent.");
    }
  }
  const double eps = FloatAttribute(bn, "epsilon", 1e-5f);
  s->resize(channels);
  t->resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double d = static_cast<double>(v[3][c]) + eps;
    if (!(d > 0.0)) {
      throw ModelError(Context(bn, producer) + ": var + epsilon is " +
                       std::to_string(d) + " for channel " + std::to_string(c) +
                       ". The model is inconsistent.");
    }
    (*s)[c] = v[0][c] / std::sqrt(d);
    (*t)[c] = v[1][c] - v[2][c] * (*s)[c];
  }
}

// The producer's bias `b` (nullptr: none) as one value per output channel,
// times a Gemm's beta; nullopt for a Gemm bias that is neither a scalar nor
// one value per column. Throws Error(kModel) for a Conv bias of the wrong
// length.
std::optional<std::vector<double>> ChannelBias(const pb::NodeProto& bn,
                                               const pb::NodeProto& producer,
                                               const pb::TensorProto* b,
                                               int64_t channels) {
  std::vector<double> bias(channels, 0.0);
  if (b == nullptr) return bias;
  const bool gemm = IsOnnxOp(producer, "Gemm");
  const std::vector<float> raw = ToFloats(*b);
  const int64_t n = static_cast<int64_t>(raw.size());
  if (gemm && !(n == 1 || (n == channels && Dims(*b).back() == n))) {
    return std::nullopt;  // per row or per element
  }
  if (!gemm && n != channels) {
    throw ModelError(Context(bn, producer) + ": its bias '" + b->name() +
                     "' has " + std::to_string(n) + " values for " +
                     std::to_string(channels) + " output channels.");
  }
  const double beta = gemm ? FloatAttribute(producer, "beta", 1.0f) : 1.0;
  for (int64_t c = 0; c < channels; ++c) bias[c] = raw[n == 1 ? 0 : c] * beta;
  return bias;
}

// A fold ready to apply: the producer's new weight and bias values.
struct Fold {
  int bn = -1;
  int producer = -1;
  std::string weight, bias;  // bias "" when the producer has none
  bool weight_shared = false, bias_shared = false;
  pb::TensorProto new_weight, new_bias;  // named when applied
};

// The producer of the BatchNormalization at `i` when the pair matches the
// fold's pattern, else -1.
int MatchProducer(const GraphIndex& index, int i) {
  const pb::NodeProto& bn = index.graph().node(i);
  if (!IsOnnxOp(bn, "BatchNormalization") || bn.input_size() != 5 ||
      IntAttribute(bn, "training_mode", 0) != 0 ||
      IntAttribute(bn, "spatial", 1) != 1) {
    return -1;
  }
  for (int k = 1; k < bn.output_size(); ++k) {
    const std::string& o = bn.output(k);
    if (!o.empty() && (!index.Consumers(o).empty() || index.IsGraphOutput(o)))
      return -1;
  }
  const std::string& x = bn.input(0);
  const int p = index.Producer(x);
  if (p < 0 || index.Consumers(x).size() != 1 || index.IsGraphOutput(x))
    return -1;
  const pb::NodeProto& producer = index.graph().node(p);
  const bool op = IsOnnxOp(producer, "Conv") ||
                  IsOnnxOp(producer, "ConvTranspose") ||
                  IsOnnxOp(producer, "Gemm");
  return op && producer.input_size() >= 2 && producer.output(0) == x ? p : -1;
}

// Plans the fold of the BatchNormalization at `i`, or nullopt when it does
// not match. Throws Error(kModel) for parameters that do not fit.
std::optional<Fold> PlanFold(const GraphIndex& index, int i) {
  Fold fold;
  fold.bn = i;
  fold.producer = MatchProducer(index, i);
  if (fold.producer < 0) return std::nullopt;
  const pb::NodeProto& bn = index.graph().node(i);
  const pb::NodeProto& producer = index.graph().node(fold.producer);
  fold.weight = producer.input(1);
  if (producer.input_size() > 2) fold.bias = producer.input(2);
  const pb::TensorProto* w = Constant(index, fold.weight, true);
  const pb::TensorProto* b =
      fold.bias.empty() ? nullptr : Constant(index, fold.bias, true);
  if (w == nullptr || (!fold.bias.empty() && b == nullptr)) return std::nullopt;
  std::vector<const pb::TensorProto*> params;
  for (int k = 1; k < 5; ++k) {
    params.push_back(Constant(index, bn.input(k), false));
    if (params.back() == nullptr) return std::nullopt;
  }
  const ChannelMap map = WeightChannels(producer, Dims(*w), bn);
  std::optional<std::vector<double>> bias =
      ChannelBias(bn, producer, b, map.channels);
  if (!bias) return std::nullopt;
  std::vector<double> s, t;
  BatchNormAffine(bn, producer, params, map.channels, &s, &t);
  std::vector<float> new_bias(map.channels);
  for (int64_t c = 0; c < map.channels; ++c) {
    new_bias[c] = static_cast<float>((*bias)[c] * s[c] + t[c]);
  }
  std::vector<float> weight = ToFloats(*w);
  for (int64_t k = 0; k < static_cast<int64_t>(weight.size()); ++k) {
    weight[k] = static_cast<float>(weight[k] * s[map(k)]);
  }
  fold.new_weight = FloatTensor("", Dims(*w), weight);
  fold.new_bias = FloatTensor("", {map.channels}, new_bias);
  auto shared = [&](const std::string& name) {
    return index.Consumers(name).size() > 1 || index.IsGraphOutput(name);
  };
  fold.weight_shared = shared(fold.weight);
  fold.bias_shared = shared(fold.bias) || fold.bias == fold.weight;
  return fold;
}

}  // namespace

bool FoldBatchNorm(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<Fold> folds;
  {
    GraphIndex index(*graph);
    for (int i = 0; i < graph->node_size(); ++i) {
      if (auto fold = PlanFold(index, i)) folds.push_back(std::move(*fold));
    }
  }
  if (folds.empty()) return false;
  NameAllocator names(*graph);
  std::unordered_map<std::string, pb::TensorProto*> inits;
  for (auto& t : *graph->mutable_initializer()) inits[t.name()] = &t;
  std::unordered_set<std::string> params, gone;
  std::vector<int> removed;
  for (Fold& f : folds) {
    const pb::NodeProto& bn = graph->node(f.bn);
    pb::NodeProto* producer = graph->mutable_node(f.producer);
    // Installs `value` as input `slot` of the producer: over `old` when the
    // producer alone reads it, else under a fresh name.
    auto install = [&](pb::TensorProto* value, const std::string& old,
                       bool shared, int slot) {
      if (!old.empty() && !shared) {
        value->set_name(old);
        *inits.at(old) = std::move(*value);
        gone.insert(old);  // its value_info may hold a stale shape
        return;
      }
      value->set_name(names.Make((old.empty() ? bn.output(0) : old) +
                                 (slot == 1 ? "_bn_folded" : "_bias")));
      while (producer->input_size() <= slot) producer->add_input("");
      producer->set_input(slot, value->name());
      *graph->add_initializer() = std::move(*value);
    };
    install(&f.new_weight, f.weight, f.weight_shared, 1);
    install(&f.new_bias, f.bias, f.bias_shared, 2);
    if (IsOnnxOp(*producer, "Gemm")) SetFloatAttribute("beta", 1.0f, producer);
    gone.insert(producer->output(0));
    producer->set_output(0, bn.output(0));
    for (int k = 1; k < 5; ++k) params.insert(bn.input(k));
    for (int k = 1; k < bn.output_size(); ++k) gone.insert(bn.output(k));
    removed.push_back(f.bn);
  }
  RemoveNodes(removed, graph);
  DropValueInfo(gone, graph);
  RemoveUnusedInitializers(params, graph);
  return true;
}

}  // namespace onnxquant::passes
