#include "onnxquant/insert_qdq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "onnxquant/arithmetic.h"
#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/node_weights.h"
#include "onnxquant/tensor_util.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

// Activation codes of `type` as an initializer (uint8, int8 or int16).
pb::TensorProto CodeTensor(const std::string& name,
                           const std::vector<int64_t>& dims,
                           const std::vector<int32_t>& codes,
                           ActivationType type) {
  switch (type) {
    case ActivationType::kUint8:
      return Uint8Tensor(name, dims,
                         std::vector<uint8_t>(codes.begin(), codes.end()));
    case ActivationType::kInt8:
      return Int8Tensor(name, dims,
                        std::vector<int8_t>(codes.begin(), codes.end()));
    case ActivationType::kInt16:
      break;
  }
  return Int16Tensor(name, dims,
                     std::vector<int16_t>(codes.begin(), codes.end()));
}

pb::NodeProto MakeNode(const std::string& op, const std::string& name,
                       std::vector<std::string> inputs,
                       const std::string& output, int axis = -1,
                       const std::string& domain = "",
                       int64_t block_size = 0) {
  pb::NodeProto n;
  n.set_op_type(op);
  if (!domain.empty()) n.set_domain(domain);
  n.set_name(name);
  for (auto& i : inputs) n.add_input(i);
  n.add_output(output);
  if (axis >= 0) {
    auto* a = n.add_attribute();
    a->set_name("axis");
    a->set_type(pb::AttributeProto::INT);
    a->set_i(axis);
  }
  if (block_size > 0) {
    auto* a = n.add_attribute();
    a->set_name("block_size");
    a->set_type(pb::AttributeProto::INT);
    a->set_i(block_size);
  }
  return n;
}

bool IsControlFlow(const pb::NodeProto& n) {
  return (n.domain().empty() || n.domain() == "ai.onnx") &&
         (n.op_type() == "If" || n.op_type() == "Loop" ||
          n.op_type() == "Scan");
}

// What the writers of all graphs (main graph and bodies) share.
struct Shared {
  NameAllocator* names;  // over the whole model: bodies share its namespace
  // Initializers some writer replaced by a quantized copy; each graph drops
  // those of its own that nothing reads any more.
  std::unordered_set<std::string> replaced;
  // The domain of the Q/DQ nodes of 16-bit activations: "com.microsoft"
  // below opset 21 (as ONNX Runtime's quantizer writes them), else "".
  std::string int16_domain;
  WeightCache* weights = nullptr;  // quantized already (may be null)
};

// Writes the plan of one graph (the main graph or one body).
class QdqWriter {
 public:
  QdqWriter(pb::GraphProto* graph, const GraphIndex* outer,
            const QuantPlan& plan, const QuantOptions& options,
            const RangeMap& ranges, Shared* shared, QuantizeReport* report)
      : graph_(*graph), outer_(outer), plan_(plan), names_(*shared->names),
        options_(options), ranges_(ranges), replaced_(shared->replaced),
        int16_domain_(shared->int16_domain), weights_(shared->weights),
        report_(report) {}

  void Run();

 private:
  const ActivationParams& Params(const std::string& source);
  // Scale and zero-point initializers of a calibrated tensor, made once.
  std::pair<std::string, std::string> ParamTensors(const std::string& source);
  // New scale and zero-point initializers for `source` (same values).
  std::pair<std::string, std::string> NewParamTensors(
      const std::string& source);
  void AbsorbActivations();
  // The quantized weight of planned node `q` (at `node`): the one in
  // weights_ when it was computed from the same input scale, bias slot and
  // remedy, else computed here.
  NodeWeights WeightsOf(const pb::NodeProto& node, const QuantizedNode& q,
                        float input_scale);
  void QuantizeWeights(std::vector<pb::NodeProto>* head);
  void QuantizeConstants(std::vector<pb::NodeProto>* head);
  // Appends Q and DQ nodes reading `input` and writing `output`.
  // With `own_params`, the pair gets initializers of its own: ONNX
  // Runtime's common-subexpression elimination would otherwise merge
  // per-consumer pairs back into one Q with several consumers, which its
  // int8-to-uint8 conversion cannot handle.
  void AddPair(const std::string& input, const std::string& output,
               const std::string& source, bool own_params,
               std::vector<pb::NodeProto>* out);
  void QuantizeActivations(std::vector<pb::NodeProto>* head);
  void DropUnusedInitializers();
  // Index of the first node named `name`; Error(kInternal) when none is.
  int NodeByName(const std::string& name) const;
  const std::string& SourceOf(const std::string& tensor) const;

  pb::GraphProto& graph_;
  const GraphIndex* outer_;  // the enclosing graph's, for a body
  const QuantPlan& plan_;    // this graph's entries
  NameAllocator& names_;
  const QuantOptions& options_;
  const RangeMap& ranges_;
  std::unordered_set<std::string>& replaced_;  // initializers quantized
  const std::string int16_domain_;  // of 16-bit activations' Q/DQ nodes
  WeightCache* weights_;            // may be null
  // The activation type of a calibrated tensor, and its Q/DQ nodes' domain.
  ActivationType TypeOf(const std::string& source) const {
    return ActivationTypeOf(options_, source);
  }
  std::string DomainOf(ActivationType type) const {
    return type == ActivationType::kInt16 ? int16_domain_ : "";
  }
  QuantizeReport* report_;
  // The editing index of graph_: made once absorbed activations are gone
  // (no node is added or removed after that until Run() rebuilds the node
  // list), and kept current by every edit.
  std::unique_ptr<GraphIndex> index_;
  std::unordered_map<std::string, std::string> source_;
  std::unordered_map<std::string, ActivationParams> params_;
  std::unordered_map<std::string, std::pair<std::string, std::string>>
      param_tensors_;
  // Q/DQ nodes to insert right after the node producing each tensor.
  std::unordered_map<std::string, std::vector<pb::NodeProto>> after_;
};

const ActivationParams& QdqWriter::Params(const std::string& source) {
  auto it = params_.find(source);
  if (it != params_.end()) return it->second;
  auto r = ranges_.find(source);
  if (r == ranges_.end()) {
    throw RangeError("No range for planned tensor '" + source +
                     "'. Calibrate the model (Calibrator.compute_range()) "
                     "and pass every range it returns to quantize().");
  }
  ActivationParams p;
  try {
    p = ActivationQuantParams(r->second.first, r->second.second, options_,
                              TypeOf(source));
  } catch (const Error& e) {
    throw RangeError("Invalid range for tensor '" + source + "': " +
                     e.what() + ". Pass (min, max) with min <= max, finite.");
  }
  if (p.floored) report_->floored.push_back(source);
  return params_.emplace(source, p).first->second;
}

std::pair<std::string, std::string> QdqWriter::ParamTensors(
    const std::string& source) {
  auto it = param_tensors_.find(source);
  if (it != param_tensors_.end()) return it->second;
  return param_tensors_.emplace(source, NewParamTensors(source)).first->second;
}

std::pair<std::string, std::string> QdqWriter::NewParamTensors(
    const std::string& source) {
  const ActivationParams& p = Params(source);
  const std::string scale = names_.Make(source + "_scale");
  const std::string zp = names_.Make(source + "_zero_point");
  index_->AddInitializer(FloatTensor(scale, {}, {p.scale}));
  index_->AddInitializer(CodeTensor(zp, {}, {p.zero_point}, TypeOf(source)));
  return {scale, zp};
}

const std::string& QdqWriter::SourceOf(const std::string& tensor) const {
  auto it = source_.find(tensor);
  if (it == source_.end()) {
    throw InternalError("tensor '" + tensor + "' is not in the plan's QDQ set");
  }
  return it->second;
}

int QdqWriter::NodeByName(const std::string& name) const {
  const int i = index_->NodeNamed(name);
  if (i >= 0) return i;
  throw InternalError("the plan names node '" + name +
                      "', which the graph does not hold");
}

void QdqWriter::AbsorbActivations() {
  std::unordered_set<std::string> removed;
  for (const auto& a : plan_.absorbed) {
    const pb::NodeProto& act = graph_.node(NodeByName(a.node));
    graph_.mutable_node(NodeByName(a.producer))->set_output(0, act.output(0));
    removed.insert(a.node);
  }
  if (removed.empty()) return;
  index_.reset();  // node indices shift
  EraseIf(graph_.mutable_node(), [&](const pb::NodeProto& n) {
    return removed.count(n.name()) > 0;
  });
  index_ = std::make_unique<GraphIndex>(&graph_);
  index_->SetOuter(outer_);
}

NodeWeights QdqWriter::WeightsOf(const pb::NodeProto& node,
                                 const QuantizedNode& q, float input_scale) {
  if (weights_ != nullptr) {
    auto it = weights_->find(WeightKey(q.scope, q.node));
    if (it != weights_->end()) {
      CachedWeights cached = std::move(it->second);
      weights_->erase(it);
      const WeightRemedy& remedy = RemedyOf(options_, q.node);
      if (cached.bias_input == q.bias_input &&
          std::memcmp(&cached.input_scale, &input_scale, sizeof(float)) ==
              0 &&
          cached.remedy.encoding == remedy.encoding &&
          cached.remedy.channel_qmax == remedy.channel_qmax) {
        return std::move(cached.weights);
      }
    }
  }
  return QuantizeNodeWeights(*index_, node, q, input_scale, options_);
}

void QdqWriter::QuantizeWeights(std::vector<pb::NodeProto>* head) {
  for (const auto& q : plan_.quantized_nodes) {
    if (q.weight_input < 0) continue;
    const int at = NodeByName(q.node);
    const pb::NodeProto& node = graph_.node(at);
    const bool int4 = WeightTypeOf(options_, q.node) == WeightType::kInt4;
    const WeightEncoding encoding =
        int4 ? WeightEncoding::kInt8 : RemedyOf(options_, q.node).encoding;
    // A bias is quantized only where the input is: a float input (a
    // float_tensors override) keeps the bias float.
    QuantizedNode planned = q;
    if (q.bias_input >= 0 && !source_.count(node.input(0))) {
      planned.bias_input = -1;
    }
    const float in_scale = planned.bias_input >= 0
                               ? Params(SourceOf(node.input(0))).scale
                               : 0.f;
    NodeWeights nw = WeightsOf(node, planned, in_scale);
    const std::string& wname = nw.weight_name;
    const std::vector<int64_t>& dims = nw.dims;
    const std::vector<float>& bias = nw.bias;
    const WeightQuant& wq = nw.quant;
    const size_t channels = wq.scales.size();
    if (wq.enlarged) report_->enlarged.push_back(wname);
    const bool blocked = wq.block_size > 0;
    const std::vector<int64_t> sdims =
        blocked ? wq.scale_dims
        : q.weight_axis >= 0 ? std::vector<int64_t>{int64_t(channels)}
                             : std::vector<int64_t>{};
    const std::string wq_name = names_.Make(wname + "_quantized");
    const std::string ws_name = names_.Make(wname + "_scale");
    const std::string wz_name = names_.Make(wname + "_zero_point");
    const std::string wdq = names_.Make(wname + "_dequantized");
    if (encoding == WeightEncoding::kUint8Offset) {
      std::vector<uint8_t> offset(wq.values.size());
      for (size_t i = 0; i < offset.size(); ++i) {
        offset[i] = static_cast<uint8_t>(wq.values[i] + 128);
      }
      index_->AddInitializer(Uint8Tensor(wq_name, dims, offset));
      index_->AddInitializer(
          Uint8Tensor(wz_name, sdims, std::vector<uint8_t>(channels, 128)));
    } else if (int4) {
      index_->AddInitializer(Int4Tensor(wq_name, dims, wq.values));
      index_->AddInitializer(
          Int4Tensor(wz_name, sdims, std::vector<int8_t>(channels, 0)));
    } else {
      index_->AddInitializer(Int8Tensor(wq_name, dims, wq.values));
      index_->AddInitializer(
          Int8Tensor(wz_name, sdims, std::vector<int8_t>(channels, 0)));
    }
    index_->AddInitializer(FloatTensor(ws_name, sdims, wq.scales));
    // Blocks run along the reduction axis 0 of a MatMul's [K, N] weight.
    head->push_back(MakeNode("DequantizeLinear", names_.Make(wdq + "_node"),
                             {wq_name, ws_name, wz_name}, wdq,
                             blocked ? 0 : q.weight_axis, "",
                             wq.block_size));
    index_->SetInput(at, q.weight_input, wdq);
    replaced_.insert(wname);
    if (bias.empty() || planned.bias_input < 0) continue;
    std::vector<float> bias_scales;
    std::vector<int32_t> bq = QuantizeBias(bias, in_scale, wq.scales,
                                           &bias_scales);
    const std::string bname = node.input(q.bias_input);
    const bool per_channel = wq.scales.size() > 1;
    const std::vector<int64_t> bsd =
        per_channel ? std::vector<int64_t>{int64_t(bias.size())}
                    : std::vector<int64_t>{};
    if (!per_channel) bias_scales.resize(1);
    const std::string bq_name = names_.Make(bname + "_quantized");
    const std::string bs_name = names_.Make(bname + "_scale");
    const std::string bz_name = names_.Make(bname + "_zero_point");
    const std::string bdq = names_.Make(bname + "_dequantized");
    index_->AddInitializer(Int32Tensor(bq_name, {int64_t(bias.size())}, bq));
    index_->AddInitializer(FloatTensor(bs_name, bsd, bias_scales));
    index_->AddInitializer(Int32Tensor(
        bz_name, bsd, std::vector<int32_t>(per_channel ? bias.size() : 1, 0)));
    head->push_back(MakeNode("DequantizeLinear", names_.Make(bdq + "_node"),
                             {bq_name, bs_name, bz_name}, bdq,
                             per_channel ? 0 : -1));
    index_->SetInput(at, q.bias_input, bdq);
    replaced_.insert(bname);
  }
}

void QdqWriter::QuantizeConstants(std::vector<pb::NodeProto>* head) {
  if (plan_.constants.empty()) return;
  // The quantized nodes, by index (the first node of each planned name).
  std::unordered_set<int> quantized;
  for (const auto& q : plan_.quantized_nodes) {
    quantized.insert(NodeByName(q.node));
  }
  for (const auto& c : plan_.constants) {
    const auto* init = index_->Initializer(c.tensor);
    const ActivationParams p = ActivationQuantParams(c.min, c.max, options_);
    const std::vector<float> v = ToFloats(*init);
    for (float x : v) {
      if (!std::isfinite(x)) {
        throw ModelError("The constant operand '" + c.tensor +
                         "' holds a non-finite value: it cannot be "
                         "quantized. Fix the model's constants.");
      }
    }
    const auto [qmin, qmax] = ActivationCodeRange(options_.activation_type);
    std::vector<int32_t> q(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      const double x = std::nearbyint(static_cast<double>(v[i]) / p.scale) +
                       p.zero_point;
      q[i] = static_cast<int32_t>(std::clamp(x, 1.0 * qmin, 1.0 * qmax));
    }
    const std::string qn = names_.Make(c.tensor + "_quantized");
    const std::string sn = names_.Make(c.tensor + "_scale");
    const std::string zn = names_.Make(c.tensor + "_zero_point");
    const std::string dq = names_.Make(c.tensor + "_dequantized");
    index_->AddInitializer(
        CodeTensor(qn, Dims(*init), q, options_.activation_type));
    index_->AddInitializer(
        CodeTensor(zn, {}, {p.zero_point}, options_.activation_type));
    index_->AddInitializer(FloatTensor(sn, {}, {p.scale}));
    head->push_back(MakeNode("DequantizeLinear", names_.Make(dq + "_node"),
                             {qn, sn, zn}, dq, -1,
                             DomainOf(options_.activation_type)));
    // The quantized nodes among its readers read the dequantized copy
    // (copied: the edits change the list).
    const std::vector<int> readers = index_->Consumers(c.tensor);
    for (int i : readers) {
      if (quantized.count(i)) index_->ReplaceInput(i, c.tensor, dq);
    }
    replaced_.insert(c.tensor);
  }
}

void QdqWriter::AddPair(const std::string& input, const std::string& output,
                        const std::string& source, bool own_params,
                        std::vector<pb::NodeProto>* out) {
  const auto [scale, zp] =
      own_params ? NewParamTensors(source) : ParamTensors(source);
  const std::string q = names_.Make(output + "_quantized");
  const std::string domain = DomainOf(TypeOf(source));
  out->push_back(MakeNode("QuantizeLinear", names_.Make(q + "_node"),
                          {input, scale, zp}, q, -1, domain));
  out->push_back(MakeNode("DequantizeLinear", names_.Make(output + "_node"),
                          {q, scale, zp}, output, -1, domain));
}

void QdqWriter::QuantizeActivations(std::vector<pb::NodeProto>* head) {
  for (const auto& entry : plan_.qdq) {
    const std::string& t = entry.tensor;
    const std::string& src = entry.source;
    const bool per_consumer = TypeOf(src) == ActivationType::kInt8;
    std::vector<int> consumers;  // direct readers (not only through a body)
    for (int c : index_->Consumers(t)) {
      const auto& in = graph_.node(c).input();
      if (std::find(in.begin(), in.end(), t) != in.end()) {
        consumers.push_back(c);
      }
    }
    const int producer = index_->Producer(t);
    if (producer < 0) {  // a graph input: consumers read a new name
      if (!per_consumer) {
        const std::string dq = names_.Make(t + "_dequantized");
        AddPair(t, dq, src, false, head);
        for (int c : consumers) index_->ReplaceInput(c, t, dq);
      } else {
        for (size_t k = 0; k < consumers.size(); ++k) {
          const int c = consumers[k];
          const std::string dq = names_.Make(t + "_dequantized");
          AddPair(t, dq, src, k > 0, head);
          index_->ReplaceInput(c, t, dq);
        }
      }
      continue;
    }
    // A node output: the producer writes a new name and the DQ takes over
    // the tensor's own, so graph outputs and subgraph reads keep working.
    const std::string fp = names_.Make(t + "_float");
    const pb::NodeProto& p = graph_.node(producer);
    for (int k = 0; k < p.output_size(); ++k) {
      if (p.output(k) == t) index_->SetOutput(producer, k, fp);
    }
    auto& out = after_[fp];
    AddPair(fp, t, src, false, &out);
    if (!per_consumer) continue;
    const size_t first_own = index_->IsGraphOutput(t) ? 0 : 1;
    for (size_t k = first_own; k < consumers.size(); ++k) {
      const std::string dq = names_.Make(t + "_dequantized");
      AddPair(fp, dq, src, true, &out);
      index_->ReplaceInput(consumers[k], t, dq);
    }
  }
}

// The Q/DQ nodes waiting in `head` and `after_` read no replaced
// initializer, so the index (which does not hold them) tells the readers.
void QdqWriter::DropUnusedInitializers() {
  std::unordered_set<std::string> unused;
  for (const auto& name : replaced_) {
    if (index_->Consumers(name).empty() && !index_->IsGraphOutput(name)) {
      unused.insert(name);
    }
  }
  if (unused.empty()) return;
  EraseIf(graph_.mutable_initializer(), [&](const pb::TensorProto& t) {
    return unused.count(t.name()) > 0;
  });
}

void QdqWriter::Run() {
  source_.reserve(plan_.qdq.size());
  params_.reserve(plan_.calibrated.size());
  param_tensors_.reserve(plan_.calibrated.size());
  after_.reserve(plan_.qdq.size());
  for (const auto& e : plan_.qdq) source_[e.tensor] = e.source;
  index_ = std::make_unique<GraphIndex>(&graph_);
  index_->SetOuter(outer_);
  for (const auto& src : plan_.calibrated) Params(src);
  AbsorbActivations();
  std::vector<pb::NodeProto> head;
  QuantizeWeights(&head);
  QuantizeConstants(&head);
  QuantizeActivations(&head);
  DropUnusedInitializers();
  index_.reset();  // the node list is rebuilt below
  // Rebuild the node list in topological order: parameter DQs and graph
  // input pairs first, then each node followed by the pairs of its outputs.
  std::vector<pb::NodeProto> nodes = std::move(head);
  nodes.reserve(nodes.size() + 3 * graph_.node_size());
  for (auto& n : *graph_.mutable_node()) {
    std::vector<std::vector<pb::NodeProto>*> pairs;
    for (const auto& o : n.output()) {
      auto it = after_.find(o);
      if (it != after_.end()) pairs.push_back(&it->second);
    }
    nodes.push_back(std::move(n));
    for (auto* list : pairs) {
      for (auto& q : *list) nodes.push_back(std::move(q));
    }
  }
  graph_.clear_node();
  graph_.mutable_node()->Reserve(static_cast<int>(nodes.size()));
  for (auto& n : nodes) *graph_.add_node() = std::move(n);
}

// The plan's entries, by scope.
std::unordered_map<Scope, QuantPlan> ByScope(const QuantPlan& plan) {
  std::unordered_map<Scope, QuantPlan> by;
  by[""];
  for (const auto& e : plan.qdq) by[e.scope].qdq.push_back(e);
  for (const auto& e : plan.quantized_nodes) {
    by[e.scope].quantized_nodes.push_back(e);
  }
  for (const auto& e : plan.constants) by[e.scope].constants.push_back(e);
  for (const auto& e : plan.absorbed) by[e.scope].absorbed.push_back(e);
  for (auto& [scope, p] : by) {
    // A writer computes the parameters of every tensor its graph quantizes.
    std::unordered_set<std::string> seen;
    for (const auto& e : p.qdq) {
      if (seen.insert(e.source).second) p.calibrated.push_back(e.source);
    }
  }
  return by;
}

// Writes the plan of `graph` (scope `scope`) and, first, of the bodies of
// its If, Loop and Scan nodes: they read this graph's initializers before
// its own writer replaces them.
void WriteGraph(pb::GraphProto* graph, const Scope& scope,
                const GraphIndex* outer,
                const std::unordered_map<Scope, QuantPlan>& plans,
                const QuantOptions& options, const RangeMap& ranges,
                Shared* shared, QuantizeReport* report) {
  bool bodies = false;
  for (const auto& n : graph->node()) bodies = bodies || IsControlFlow(n);
  if (bodies) {
    // Read only for its initializers, which the bodies' writers leave in
    // place.
    GraphIndex here(*graph);
    here.SetOuter(outer);
    for (auto& n : *graph->mutable_node()) {
      if (!IsControlFlow(n)) continue;
      for (auto& attr : *n.mutable_attribute()) {
        if (!attr.has_g()) continue;
        const Scope body =
            (scope.empty() ? "" : scope + "/") + n.name() + "." + attr.name();
        WriteGraph(attr.mutable_g(), body, &here, plans, options, ranges,
                   shared, report);
      }
    }
  }
  auto it = plans.find(scope);
  if (it == plans.end()) return;  // a body with nothing to quantize
  QdqWriter writer(graph, outer, it->second, options, ranges, shared, report);
  writer.Run();
}

}  // namespace

QuantizeReport InsertQdq(pb::ModelProto& model, const DtypeMap& dtypes,
                         const QuantOptions& options, const RangeMap& ranges) {
  return InsertQdq(model, MakePlan(model, dtypes, options), options, ranges);
}

QuantizeReport InsertQdq(pb::ModelProto& model, QuantPlan plan,
                         const QuantOptions& options, const RangeMap& ranges,
                         WeightCache* weights) {
  QuantizeReport report;
  report.plan = std::move(plan);
  const auto plans = ByScope(report.plan);
  NameAllocator names(model.graph());
  Shared shared{&names, {}, "", weights};
  bool int16 = options.activation_type == ActivationType::kInt16;
  for (const auto& [tensor, type] : options.tensor_types) {
    int16 = int16 || type == ActivationType::kInt16;
  }
  if (int16 && DefaultOpset(model) < 21) {
    shared.int16_domain = "com.microsoft";
    bool imported = false;
    for (const auto& o : model.opset_import()) {
      imported = imported || o.domain() == "com.microsoft";
    }
    if (!imported) {
      auto* o = model.add_opset_import();
      o->set_domain("com.microsoft");
      o->set_version(1);
    }
  }
  WriteGraph(model.mutable_graph(), "", nullptr, plans, options, ranges,
             &shared, &report);
  return report;
}

}  // namespace onnxquant
