#include "onnxquant/plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_set>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/op_table.h"
#include "onnxquant/plan_overrides.h"
#include "onnxquant/plan_patterns.h"
#include "onnxquant/tensor_util.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

// What the planner decided for one node.
struct Decision {
  enum Kind { kFloat, kQuantized, kShared, kAbsorbed } kind = kFloat;
  const OpSpec* spec = nullptr;  // the node's entry in the op table, if any
  std::string reason;            // kFloat
  bool fused_only = false;       // kFloat by an OpKind::kFusedOnly entry
  QuantizedNode node;            // kQuantized
  std::vector<int> act_inputs;   // inputs quantized per tensor
  bool quantize_output = false;  // kQuantized
  std::vector<int> const_inputs; // constant operands quantized per tensor
  int producer = -1;             // kAbsorbed: the node absorbing it
};

Decision Float(std::string reason) {
  Decision d;
  d.reason = std::move(reason);
  return d;
}

bool Quantizes(OpKind kind) {
  return kind == OpKind::kWeighted || kind == OpKind::kQuantized ||
         kind == OpKind::kShared;
}

std::string KeptFloat(const OpSpec& spec) {
  return std::string(spec.op_type) + " is kept float (" + spec.reason + ")";
}

bool IsControlFlow(const pb::NodeProto& n) {
  return (n.domain().empty() || n.domain() == "ai.onnx") &&
         (n.op_type() == "If" || n.op_type() == "Loop" ||
          n.op_type() == "Scan");
}

Scope BodyScope(const Scope& outer, const pb::NodeProto& node,
                const std::string& attribute) {
  return (outer.empty() ? "" : outer + "/") + node.name() + "." + attribute;
}

// Every node of `graph` and of the control-flow bodies under it, float for
// `reason`.
void FloatAll(const pb::GraphProto& graph, const Scope& scope,
              const std::string& reason, QuantPlan* plan) {
  for (const auto& n : graph.node()) {
    plan->float_nodes.push_back({n.name(), n.op_type(), reason, scope});
    if (!IsControlFlow(n)) continue;
    for (const auto& attr : n.attribute()) {
      if (attr.has_g()) {
        FloatAll(attr.g(), BodyScope(scope, n, attr.name()), reason, plan);
      }
    }
  }
}

// Appends `body` to `plan`, each calibrated tensor once.
void Merge(QuantPlan body, QuantPlan* plan) {
  std::unordered_set<std::string> have(plan->calibrated.begin(),
                                       plan->calibrated.end());
  for (auto& t : body.calibrated) {
    if (have.insert(t).second) plan->calibrated.push_back(std::move(t));
  }
  auto append = [](auto& from, auto& to) {
    for (auto& x : from) to.push_back(std::move(x));
  };
  append(body.qdq, plan->qdq);
  append(body.quantized_nodes, plan->quantized_nodes);
  append(body.float_nodes, plan->float_nodes);
  append(body.constants, plan->constants);
  append(body.absorbed, plan->absorbed);
  append(body.notes, plan->notes);
}

// Plans one graph: the main graph, or a body of an If, Loop or Scan node
// (then `outer` is the planner of the enclosing graph, whose initializers
// the body sees).
class Planner : public ConstantLookup {
 public:
  Planner(const pb::GraphProto& graph, const Planner* outer, Scope scope,
          const DtypeMap& dtypes, const QuantOptions& options,
          const std::unordered_set<std::string>& excluded,
          const std::unordered_set<std::string>& masks,
          const std::unordered_set<std::string>& kernel_float)
      : graph_(graph), index_(graph_), outer_(outer), scope_(std::move(scope)),
        dtypes_(dtypes), options_(options), excluded_(excluded), masks_(masks),
        kernel_float_(kernel_float) {}

  QuantPlan Run();

  const pb::TensorProto* FloatConstant(const std::string& t) const override {
    const auto* init = VisibleInitializer(t);
    return init && init->data_type() == pb::TensorProto::FLOAT ? init
                                                               : nullptr;
  }

  // The initializer named `t` in this graph or an enclosing one, or nullptr.
  const pb::TensorProto* VisibleInitializer(const std::string& t) const {
    const auto* init = index_.Initializer(t);
    if (init != nullptr || outer_ == nullptr || DefinesLocally(t)) {
      return init;
    }
    return outer_->VisibleInitializer(t);
  }

 private:
  bool IsFloat(const std::string& t) const {
    auto it = dtypes_.find(t);
    return !t.empty() && it != dtypes_.end() &&
           it->second == pb::TensorProto::FLOAT;
  }
  bool IsFloatActivation(const std::string& t) const {
    return IsFloat(t) && VisibleInitializer(t) == nullptr;
  }
  bool DefinesLocally(const std::string& t) const {
    return index_.Producer(t) >= 0 || index_.IsGraphInput(t) ||
           index_.Initializer(t) != nullptr;
  }
  bool ScalarConstantIs(const std::string& t, float value) const {
    const auto* init = FloatConstant(t);
    if (!init) return false;
    auto v = ToFloats(*init);
    return v.size() == 1 && v[0] == value;
  }

  void CheckOptions() const;
  Decision Decide(int i) const;
  Decision DecideBySpec(int i, const OpSpec& spec) const;
  Decision DecideWeighted(const OpSpec& spec, const pb::NodeProto& n) const;
  bool FloatOutputSuffices(const pb::NodeProto& n) const;
  Decision DecideQuantized(int i, const OpSpec& spec,
                           const pb::NodeProto& n) const;
  Decision DecideShared(const pb::NodeProto& n) const;
  int WeightAxisOf(const OpSpec& spec, const pb::NodeProto& n,
                   const pb::TensorProto& weight) const;
  void Absorb(std::vector<Decision>* d) const;
  bool QuantizedAnyway(const pb::NodeProto& n, const Decision& d,
                       const std::unordered_set<std::string>& needs) const;
  QuantPlan Assemble(const std::vector<Decision>& d) const;
  // Plans the bodies of this graph's If, Loop and Scan nodes into `plan`.
  void PlanBodies(QuantPlan* plan) const;

  const pb::GraphProto& graph_;
  GraphIndex index_;
  const Planner* outer_;  // nullptr for the main graph
  const Scope scope_;
  const DtypeMap& dtypes_;
  const QuantOptions& options_;
  const std::unordered_set<std::string>& excluded_;  // options_.exclude_nodes
  const std::unordered_set<std::string>& masks_;     // options_.mask_nodes
  // options_.kernel_float_nodes
  const std::unordered_set<std::string>& kernel_float_;
  PatternMatches patterns_;
};

// Every node name of `graph` and of the control-flow bodies under it.
void CollectNodeNames(const pb::GraphProto& graph,
                      std::unordered_set<std::string>* names) {
  for (const auto& n : graph.node()) {
    names->insert(n.name());
    if (!IsControlFlow(n)) continue;
    for (const auto& attr : n.attribute()) {
      if (attr.has_g()) CollectNodeNames(attr.g(), names);
    }
  }
}

void Planner::CheckOptions() const {
  std::unordered_set<std::string> names;
  CollectNodeNames(graph_, &names);
  for (const auto& name : options_.exclude_nodes) {
    if (names.count(name) == 0) {
      throw InvalidArgument("exclude_nodes names node '" + name +
                            "', which the model does not contain (node names "
                            "are those of the optimized model).");
    }
  }
  for (const auto& name : options_.mask_nodes) {
    if (names.count(name) == 0) {
      throw InvalidArgument("mask_nodes names node '" + name +
                            "', which the model does not contain.");
    }
  }
  for (const auto& name : options_.kernel_float_nodes) {
    if (names.count(name) == 0) {
      throw InvalidArgument("kernel_float_nodes names node '" + name +
                            "', which the model does not contain.");
    }
  }
  for (const auto& op : options_.op_types) {
    const OpSpec* spec = FindOpSpec("", op);
    if (spec == nullptr || !Quantizes(spec->kind)) {
      throw InvalidArgument("op_types names '" + op +
                            "', which onnxquant does not quantize; see the "
                            "op table in docs/architecture.md.");
    }
  }
}

Decision Planner::Decide(int i) const {
  const auto& n = graph_.node(i);
  if (excluded_.count(n.name())) {
    return Float("excluded by the user");
  }
  if (masks_.count(n.name())) {
    return Float("applies or computes an attention mask (masks='float')");
  }
  if (kernel_float_.count(n.name())) {
    return Float(
        "its integer kernel would saturate on CPUs without VNNI "
        "(kernel_remedy='float')");
  }
  const OpSpec* spec = FindOpSpec(n.domain(), n.op_type());
  if (spec == nullptr && !n.domain().empty() && n.domain() != "ai.onnx") {
    return Float("custom domain '" + n.domain() + "'");
  }
  if (IsControlFlow(n)) {
    return Float(n.op_type() + " is control flow and runs float; the nodes "
                 "of its bodies are planned on their own");
  }
  if (GraphIndex::HasSubgraph(n)) {
    return Float("has a subgraph (" + n.op_type() +
                 "); only If, Loop and Scan bodies are quantized");
  }
  auto block = patterns_.float_blocks.find(i);
  if (block != patterns_.float_blocks.end()) {
    return Float(std::string("part of a decomposed ") + block->second +
                 " (kept float)");
  }
  if (patterns_.divisor_only.count(i) && IsFloat(n.output(0))) {
    return Float("computes only the divisor of a Div, which runs float: a "
                 "quantized divisor near zero would make an unbounded error");
  }
  if (patterns_.silu_sigmoid.count(i) && !options_.quantize_silu) {
    return Float("Sigmoid of a SiLU x*sigmoid(x): no QDQ inside the SiLU");
  }
  if (spec == nullptr) return Float(UnknownOpReason(n.op_type()));
  const auto& ops = options_.op_types;
  if (!ops.empty() &&
      std::find(ops.begin(), ops.end(), n.op_type()) == ops.end() &&
      Quantizes(spec->kind)) {
    return Float("op type " + n.op_type() + " not among op_types");
  }
  Decision d = DecideBySpec(i, *spec);
  d.spec = spec;
  return d;
}

Decision Planner::DecideBySpec(int i, const OpSpec& spec) const {
  const auto& n = graph_.node(i);
  if (spec.kind == OpKind::kFloat) return Float(KeptFloat(spec));
  if (spec.kind == OpKind::kFusedOnly) {
    Decision d = Float(KeptFloat(spec));
    d.fused_only = true;
    return d;
  }
  if (spec.check != nullptr) {
    std::string why = spec.check(n, *this);
    if (!why.empty()) return Float(std::move(why));
  }
  for (int k = 0; k < n.input_size(); ++k) {
    if (RoleOfInput(spec, k) == InputRole::kParameter &&
        !n.input(k).empty() && !FloatConstant(n.input(k))) {
      return Float(n.op_type() + " input '" + n.input(k) +
                   "' is not a float constant");
    }
  }
  switch (spec.kind) {
    case OpKind::kWeighted:
      return DecideWeighted(spec, n);
    case OpKind::kQuantized:
      return DecideQuantized(i, spec, n);
    default:
      return DecideShared(n);
  }
}

int Planner::WeightAxisOf(const OpSpec& spec, const pb::NodeProto& n,
                          const pb::TensorProto& weight) const {
  if (!options_.per_channel) return -1;
  switch (spec.weight_axis) {
    case WeightAxis::kZero:
      return 0;
    case WeightAxis::kOneUngrouped:
      // With groups, output channels are spread over axis 0 and axis 1.
      return IntAttribute(n, "group", 1) == 1 ? 1 : -1;
    case WeightAxis::kGemm:
      return IntAttribute(n, "transB", 0) ? 0 : 1;
    case WeightAxis::kLast:
      return weight.dims_size() >= 2 ? weight.dims_size() - 1 : -1;
    case WeightAxis::kNone:
      return -1;
  }
  return -1;
}

// A Gemm or MatMul of the main graph whose output is a graph output and
// nothing else: ONNX Runtime fuses DQ -> op without a Q after it into a
// kernel with a float output (QGemm, MatMulIntegerToFloat).
bool Planner::FloatOutputSuffices(const pb::NodeProto& n) const {
  if (!options_.float_outputs || outer_ != nullptr) return false;
  if (n.op_type() != "Gemm" && n.op_type() != "MatMul") return false;
  const std::string& out = n.output(0);
  return index_.IsGraphOutput(out) && index_.Consumers(out).empty() &&
         !index_.ReadBySubgraph(out);
}

Decision Planner::DecideWeighted(const OpSpec& spec,
                                 const pb::NodeProto& n) const {
  const std::string& op = n.op_type();
  Decision d;
  d.kind = Decision::kQuantized;
  d.quantize_output = IsFloat(n.output(0));
  QuantizedNode& q = d.node;
  q.node = n.name();
  q.op_type = op;
  if (RoleOfInput(spec, 0) == InputRole::kDataOrWeight) {
    // Either operand may be the weight; only a constant second operand has
    // output channels (its last axis).
    const bool a_const = FloatConstant(n.input(0)) != nullptr;
    const bool b_const =
        n.input_size() > 1 && FloatConstant(n.input(1)) != nullptr;
    if (b_const && IsFloatActivation(n.input(0))) {
      q.weight_input = 1;
      q.weight_axis = WeightAxisOf(spec, n, *FloatConstant(n.input(1)));
      d.act_inputs = {0};
      if (FloatOutputSuffices(n)) d.quantize_output = false;
    } else if (a_const && n.input_size() > 1 &&
               IsFloatActivation(n.input(1))) {
      q.weight_input = 0;
      d.act_inputs = {1};
    } else if (n.input_size() > 1 && IsFloatActivation(n.input(0)) &&
               IsFloatActivation(n.input(1))) {
      if (!options_.quantize_activation_matmul) {
        return Float(op + " of two activations kept float by option");
      }
      d.act_inputs = {0, 1};
    } else {
      return Float(op + " of non-float tensors");
    }
    return d;
  }
  int data = -1, weight = -1, bias = -1;
  for (int k = 0; k < static_cast<int>(spec.inputs.size()); ++k) {
    const InputRole role = spec.inputs[k];
    if (role == InputRole::kData) data = k;
    if (role == InputRole::kWeight) weight = k;
    if (role == InputRole::kBias) bias = k;
  }
  const auto* w =
      weight < n.input_size() ? FloatConstant(n.input(weight)) : nullptr;
  if (w == nullptr) {
    return Float(op + " weight '" +
                 (weight < n.input_size() ? n.input(weight) : "") +
                 "' is not a float32 constant");
  }
  if (!IsFloatActivation(n.input(data))) {
    return Float(op + " input is not a float32 activation");
  }
  d.act_inputs = {data};
  q.weight_input = weight;
  if (FloatOutputSuffices(n)) d.quantize_output = false;
  if (spec.weight_axis == WeightAxis::kGemm && w->dims_size() != 2) {
    return Float(op + " weight is not 2-D");
  }
  q.weight_axis = WeightAxisOf(spec, n, *w);
  if (bias >= 0 && bias < n.input_size() && !n.input(bias).empty()) {
    const auto* b = FloatConstant(n.input(bias));
    bool bias_ok = b && b->dims_size() == 1;
    if (spec.bias_needs_unit_alpha_beta) {
      bias_ok = bias_ok && FloatAttribute(n, "alpha", 1.f) == 1.f &&
                FloatAttribute(n, "beta", 1.f) == 1.f;
    }
    if (bias_ok) q.bias_input = bias;
  }
  return d;
}

Decision Planner::DecideQuantized(int i, const OpSpec& spec,
                                  const pb::NodeProto& n) const {
  const std::string& op = n.op_type();
  Decision d;
  d.kind = Decision::kQuantized;
  d.node.node = n.name();
  d.node.op_type = op;
  if (!IsFloat(n.output(0))) return Float(op + " of non-float tensors");
  d.quantize_output = true;
  if (patterns_.silu_mul.count(i) && !options_.quantize_silu) {
    return d;  // output only
  }
  const int count =
      spec.variadic ? n.input_size()
                    : std::min<int>(n.input_size(), spec.inputs.size());
  for (int k = 0; k < count; ++k) {
    const std::string& in = n.input(k);
    const InputRole role = RoleOfInput(spec, k);
    if (in.empty() ||
        (role != InputRole::kData && role != InputRole::kDataOrConstant)) {
      continue;
    }
    if (IsFloatActivation(in)) {
      d.act_inputs.push_back(k);
    } else if (FloatConstant(in) == nullptr) {
      return Float(op + " of non-float tensors");
    } else if (role == InputRole::kDataOrConstant) {
      d.const_inputs.push_back(k);
    }
  }
  if (d.act_inputs.empty()) return Float(op + " of constants only");
  return d;
}

Decision Planner::DecideShared(const pb::NodeProto& n) const {
  const std::string& op = n.op_type();
  if (FloatConstant(n.input(0)) != nullptr) {
    return Float(op + " of a constant (an embedding table, say): no "
                 "activation parameters to share");
  }
  if (!IsFloatActivation(n.input(0)) || !IsFloat(n.output(0))) {
    return Float(op + " of non-float data");
  }
  Decision d;
  d.kind = Decision::kShared;
  d.node.node = n.name();
  d.node.op_type = op;
  return d;
}

// Relu, or Clip(0, max), right after a quantized node whose output has no
// other consumer and is not a graph output, is absorbed into that output.
// Not into a node that is itself absorbable, nor into one whose inputs share
// its output's parameters (Concat: they would be clipped too).
void Planner::Absorb(std::vector<Decision>* d) const {
  for (int i = 0; i < graph_.node_size(); ++i) {
    const auto& n = graph_.node(i);
    Decision& di = (*d)[i];
    if (di.kind != Decision::kQuantized || di.spec == nullptr) continue;
    if (di.spec->absorb == Absorb::kNever) continue;
    if (di.spec->absorb == Absorb::kIfLowerBoundZero &&
        (n.input_size() < 2 || !ScalarConstantIs(n.input(1), 0.f))) {
      continue;
    }
    const std::string& in = n.input(0);
    const int p = index_.Producer(in);
    if (p < 0 || (*d)[p].kind != Decision::kQuantized) continue;
    const OpSpec* pspec = (*d)[p].spec;
    if (pspec == nullptr || pspec->absorb != Absorb::kNever ||
        pspec->inputs_share_output) {
      continue;
    }
    if (graph_.node(p).output_size() != 1) continue;
    if (index_.Consumers(in).size() != 1 || index_.IsGraphOutput(in) ||
        index_.ReadBySubgraph(in) || index_.IsGraphOutput(n.output(0))) {
      continue;
    }
    di = Decision();
    di.kind = Decision::kAbsorbed;
    di.producer = p;
    (*d)[p].quantize_output = true;
  }
}

QuantPlan Planner::Run() {
  patterns_ = FindPatterns(index_);
  if (outer_ == nullptr) CheckOptions();
  for (const auto& n : graph_.node()) {
    if (n.op_type() == "QuantizeLinear" || n.op_type() == "DequantizeLinear" ||
        n.op_type() == "QLinearConv" || n.op_type() == "QLinearMatMul") {
      throw UnsupportedModelError(
          "Node '" + n.name() + "' is a " + n.op_type() +
          ": the model is already quantized. Pass the float model.");
    }
  }
  std::vector<Decision> d;
  d.reserve(graph_.node_size());
  for (int i = 0; i < graph_.node_size(); ++i) d.push_back(Decide(i));
  Absorb(&d);
  QuantPlan plan = Assemble(d);
  PlanBodies(&plan);
  return plan;
}

void Planner::PlanBodies(QuantPlan* plan) const {
  const std::unordered_set<std::string> unreached(
      options_.unreached_tensors.begin(), options_.unreached_tensors.end());
  for (const auto& n : graph_.node()) {
    if (!IsControlFlow(n)) continue;
    for (const auto& attr : n.attribute()) {
      if (!attr.has_g()) continue;
      const Scope scope = BodyScope(scope_, n, attr.name());
      Planner child(attr.g(), this, scope, dtypes_, options_, excluded_,
                    masks_, kernel_float_);
      QuantPlan body = child.Run();
      auto missed = std::find_if(
          body.calibrated.begin(), body.calibrated.end(),
          [&](const std::string& t) { return unreached.count(t) > 0; });
      if (missed == body.calibrated.end()) {
        Merge(std::move(body), plan);
        continue;
      }
      QuantPlan floats;
      FloatAll(attr.g(), scope,
               "no calibration sample ran body '" + attr.name() + "' of " +
                   n.op_type() + " '" + n.name() + "' (no range for its "
                   "tensor '" + *missed + "'), so it stays float; calibrate "
                   "with samples that take it",
               &floats);
      Merge(std::move(floats), plan);
    }
  }
}

// A node of a kFusedOnly op (Sigmoid, Softmax, Where, ArgMax) kept float
// gains nothing from being float when its neighbours quantize all its data
// inputs and float outputs anyway: ONNX Runtime then runs DQ -> op -> Q as
// one integer op (QLinearSigmoid, QLinearSoftmax, QLinearWhere, ArgMax on
// 8-bit data), and its output is 8-bit either way. Such a node is reported as
// quantized, as it runs.
bool Planner::QuantizedAnyway(
    const pb::NodeProto& n, const Decision& d,
    const std::unordered_set<std::string>& needs) const {
  if (!d.fused_only || d.spec == nullptr) return false;
  bool any = false;
  for (int k = 0; k < n.input_size(); ++k) {
    if (RoleOfInput(*d.spec, k) != InputRole::kData || n.input(k).empty()) {
      continue;
    }
    if (!needs.count(n.input(k))) return false;
    any = true;
  }
  for (const auto& o : n.output()) {
    if (IsFloat(o) && !needs.count(o)) return false;
  }
  return any;
}

QuantPlan Planner::Assemble(const std::vector<Decision>& d) const {
  QuantPlan plan;
  // The tensor each quantized output ends up in: an absorbed Relu's output
  // replaces its producer's.
  std::map<int, std::string> out_name;
  for (int i = 0; i < graph_.node_size(); ++i) {
    if (d[i].kind == Decision::kAbsorbed) {
      out_name[d[i].producer] = graph_.node(i).output(0);
      plan.absorbed.push_back({graph_.node(i).name(),
                               graph_.node(d[i].producer).name(), scope_});
    }
  }
  std::unordered_set<std::string> needs;
  std::unordered_map<std::string, std::string> source;
  std::set<std::string> constants;
  for (int i = 0; i < graph_.node_size(); ++i) {
    const auto& n = graph_.node(i);
    if (d[i].kind != Decision::kQuantized) continue;
    for (int k : d[i].act_inputs) needs.insert(n.input(k));
    for (int k : d[i].const_inputs) constants.insert(n.input(k));
    if (d[i].quantize_output) {
      auto it = out_name.find(i);
      needs.insert(it == out_name.end() ? n.output(0) : it->second);
    }
  }
  // Shared-parameter ops, in topological order: where a neighbour needs the
  // input or any output, all of them share the input's parameters (ORT drops
  // the Q/DQ around a Split only when every output has them).
  for (int i = 0; i < graph_.node_size(); ++i) {
    if (d[i].kind != Decision::kShared) continue;
    const auto& n = graph_.node(i);
    const std::string& x = n.input(0);
    std::vector<std::string> ys;  // every float output (Split has several)
    for (const auto& o : n.output()) {
      if (IsFloat(o)) ys.push_back(o);
    }
    bool needed = needs.count(x) > 0;
    for (const auto& y : ys) needed = needed || needs.count(y) > 0;
    if (!needed) continue;
    needs.insert(x);
    const std::string src = source.count(x) ? source[x] : x;
    for (const auto& y : ys) {
      needs.insert(y);
      source[y] = src;
    }
  }
  // Concat: inputs that only feed the Concat take its output's parameters.
  // Reverse order, so that a Concat feeding a Concat resolves first.
  for (int i = graph_.node_size() - 1; i >= 0; --i) {
    const auto& n = graph_.node(i);
    if (d[i].kind != Decision::kQuantized || d[i].spec == nullptr ||
        !d[i].spec->inputs_share_output) {
      continue;
    }
    const std::string& out = n.output(0);
    const std::string src = source.count(out) ? source[out] : out;
    for (int k : d[i].act_inputs) {
      const std::string& in = n.input(k);
      if (source.count(in) || index_.Consumers(in).size() != 1 ||
          index_.IsGraphOutput(in) || index_.IsGraphInput(in) ||
          index_.ReadBySubgraph(in)) {
        continue;
      }
      source[in] = src;
    }
  }
  // Emit in topological order: graph inputs, then node outputs.
  std::vector<std::string> order;
  for (const auto& in : graph_.input()) order.push_back(in.name());
  if (outer_ != nullptr) {
    // A body reads activations of enclosing graphs: they are quantized
    // where the body reads them, like graph inputs.
    std::unordered_set<std::string> seen;
    for (const auto& n : graph_.node()) {
      for (const auto& in : n.input()) {
        if (!in.empty() && !DefinesLocally(in) &&
            VisibleInitializer(in) == nullptr && seen.insert(in).second) {
          order.push_back(in);
        }
      }
    }
  }
  for (int i = 0; i < graph_.node_size(); ++i) {
    if (d[i].kind == Decision::kAbsorbed) continue;
    auto it = out_name.find(i);
    for (const auto& o : graph_.node(i).output()) {
      order.push_back(it != out_name.end() && o == graph_.node(i).output(0)
                          ? it->second
                          : o);
    }
  }
  std::unordered_set<std::string> calibrated;
  for (const auto& t : order) {
    if (!needs.count(t)) continue;
    const std::string src = source.count(t) ? source[t] : t;
    plan.qdq.push_back({t, src, scope_});
    calibrated.insert(src);
  }
  for (const auto& t : order) {
    if (calibrated.count(t)) plan.calibrated.push_back(t);
  }
  for (const auto& c : constants) {
    auto v = ToFloats(*VisibleInitializer(c));
    float lo = 0.f, hi = 0.f;
    for (float x : v) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    plan.constants.push_back({c, lo, hi, scope_});
  }
  bool subgraphs = false;
  for (int i = 0; i < graph_.node_size(); ++i) {
    const auto& n = graph_.node(i);
    if (d[i].kind == Decision::kQuantized) {
      QuantizedNode q = d[i].node;
      q.node = n.name();
      q.op_type = n.op_type();
      q.scope = scope_;
      plan.quantized_nodes.push_back(q);
    } else if (d[i].kind == Decision::kShared) {
      if (needs.count(n.output(0))) {
        plan.quantized_nodes.push_back(d[i].node);
        plan.quantized_nodes.back().scope = scope_;
      } else {
        plan.float_nodes.push_back({n.name(), n.op_type(),
                                    "its input and output stay float",
                                    scope_});
      }
    } else if (d[i].kind == Decision::kFloat) {
      if (QuantizedAnyway(n, d[i], needs)) {
        QuantizedNode q;
        q.node = n.name();
        q.op_type = n.op_type();
        q.scope = scope_;
        plan.quantized_nodes.push_back(q);
        continue;
      }
      plan.float_nodes.push_back({n.name(), n.op_type(), d[i].reason, scope_});
      subgraphs =
          subgraphs || (GraphIndex::HasSubgraph(n) && !IsControlFlow(n));
    }
  }
  if (subgraphs) {
    plan.notes.push_back(
        "subgraph bodies of ops other than If, Loop and Scan are left float "
        "and untouched");
  }
  return plan;
}

}  // namespace

QuantPlan MakePlan(const pb::ModelProto& model, const DtypeMap& dtypes,
                   const QuantOptions& options) {
  ValidateModelForPlan(model);
  const int opset = DefaultOpset(model);
  if (opset < 13) {
    throw UnsupportedModelError(
        "The model's opset is " + std::to_string(opset) +
        "; quantization needs opset 13 or later. Run "
        "onnxquant.optimize_model first, which converts it.");
  }
  CheckWeightOptions(options, opset);
  const std::unordered_set<std::string> excluded(
      options.exclude_nodes.begin(), options.exclude_nodes.end());
  const std::unordered_set<std::string> masks(options.mask_nodes.begin(),
                                              options.mask_nodes.end());
  const std::unordered_set<std::string> kernel_float(
      options.kernel_float_nodes.begin(), options.kernel_float_nodes.end());
  Planner planner(model.graph(), nullptr, "", dtypes, options, excluded, masks,
                  kernel_float);
  QuantPlan plan = planner.Run();
  DropFloatTensors(model.graph(), options, &plan);
  // Tensors of the main graph are observed by every sample; the others only
  // by the samples that reach their body.
  std::unordered_set<std::string> main;
  for (const auto& in : model.graph().input()) main.insert(in.name());
  for (const auto& n : model.graph().node()) {
    for (const auto& o : n.output()) main.insert(o);
  }
  for (const auto& t : plan.calibrated) {
    if (!main.count(t)) plan.body_calibrated.push_back(t);
  }
  return plan;
}

}  // namespace onnxquant
