#include "onnxquant/plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_set>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/op_table.h"
#include "onnxquant/plan_patterns.h"
#include "onnxquant/tensor_util.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

std::string StringAttr(const pb::NodeProto& n, const std::string& name,
                       const std::string& def) {
  const pb::AttributeProto* a = FindAttribute(n, name);
  return a ? a->s() : def;
}

// What the planner decided for one node.
struct Decision {
  enum Kind { kFloat, kQuantized, kShared, kAbsorbed } kind = kFloat;
  std::string reason;            // kFloat
  QuantizedNode node;            // kQuantized
  std::vector<int> act_inputs;   // inputs quantized per tensor
  bool quantize_output = false;  // kQuantized
  std::vector<int> const_inputs; // constant operands quantized per tensor
  int producer = -1;             // kAbsorbed: the node absorbing it
};

class Planner {
 public:
  Planner(const pb::ModelProto& model, const DtypeMap& dtypes,
          const QuantOptions& options)
      : graph_(model.graph()), index_(graph_), dtypes_(dtypes),
        options_(options) {}

  QuantPlan Run();

 private:
  bool IsFloat(const std::string& t) const {
    auto it = dtypes_.find(t);
    return !t.empty() && it != dtypes_.end() &&
           it->second == pb::TensorProto::FLOAT;
  }
  bool IsFloatActivation(const std::string& t) const {
    return IsFloat(t) && index_.Initializer(t) == nullptr;
  }
  const pb::TensorProto* FloatConstant(const std::string& t) const {
    const auto* init = index_.Initializer(t);
    return init && init->data_type() == pb::TensorProto::FLOAT ? init
                                                               : nullptr;
  }
  bool ScalarConstantIs(const std::string& t, float value) const {
    const auto* init = FloatConstant(t);
    if (!init) return false;
    auto v = ToFloats(*init);
    return v.size() == 1 && v[0] == value;
  }

  void CheckOptions() const;
  Decision Decide(int i) const;
  Decision DecideWeighted(const pb::NodeProto& n) const;
  Decision DecideElementwise(int i, const pb::NodeProto& n) const;
  Decision DecideShared(const pb::NodeProto& n) const;
  void Absorb(std::vector<Decision>* d) const;
  bool QuantizedAnyway(const pb::NodeProto& n, const Decision& d,
                       const std::unordered_set<std::string>& needs) const;
  QuantPlan Assemble(const std::vector<Decision>& d) const;

  const pb::GraphProto& graph_;
  GraphIndex index_;
  const DtypeMap& dtypes_;
  const QuantOptions& options_;
  PatternMatches patterns_;
};

void Planner::CheckOptions() const {
  std::unordered_set<std::string> names;
  for (const auto& n : graph_.node()) names.insert(n.name());
  for (const auto& name : options_.exclude_nodes) {
    if (names.count(name) == 0) {
      throw InvalidArgument("exclude_nodes names node '" + name +
                            "', which the model does not contain (node names "
                            "are those of the optimized model).");
    }
  }
  for (const auto& op : options_.op_types) {
    if (!IsKnownOpType(op) || RoleOf(op) == OpRole::kFloat) {
      throw InvalidArgument("op_types names '" + op +
                            "', which onnxquant does not quantize; see the "
                            "op table in docs/architecture.md.");
    }
  }
}

Decision Float(std::string reason) {
  Decision d;
  d.reason = std::move(reason);
  return d;
}

Decision Planner::Decide(int i) const {
  const auto& n = graph_.node(i);
  const auto& excl = options_.exclude_nodes;
  if (std::find(excl.begin(), excl.end(), n.name()) != excl.end()) {
    return Float("excluded by the user");
  }
  if (!n.domain().empty() && n.domain() != "ai.onnx") {
    return Float("custom domain '" + n.domain() + "'");
  }
  if (GraphIndex::HasSubgraph(n)) {
    return Float("has a subgraph; bodies are not quantized yet");
  }
  auto block = patterns_.float_blocks.find(i);
  if (block != patterns_.float_blocks.end()) {
    return Float(std::string("part of a decomposed ") + block->second +
                 " (kept float)");
  }
  if (patterns_.silu_sigmoid.count(i) && !options_.quantize_silu) {
    return Float("Sigmoid of a SiLU x*sigmoid(x): no QDQ inside the SiLU");
  }
  const auto& ops = options_.op_types;
  if (!ops.empty() &&
      std::find(ops.begin(), ops.end(), n.op_type()) == ops.end() &&
      RoleOf(n.op_type()) != OpRole::kFloat) {
    return Float("op type " + n.op_type() + " not among op_types");
  }
  switch (RoleOf(n.op_type())) {
    case OpRole::kWeighted:
      return DecideWeighted(n);
    case OpRole::kElementwise:
      return DecideElementwise(i, n);
    case OpRole::kConcat: {
      Decision d;
      d.kind = Decision::kQuantized;
      for (int k = 0; k < n.input_size(); ++k) {
        if (IsFloatActivation(n.input(k))) {
          d.act_inputs.push_back(k);
        } else if (FloatConstant(n.input(k))) {
          d.const_inputs.push_back(k);
        } else {
          return Float("Concat of non-float tensors");
        }
      }
      d.quantize_output = true;
      return d;
    }
    case OpRole::kShared:
      return DecideShared(n);
    case OpRole::kFloat:
      return Float(FloatReason(n.op_type()));
  }
  return Float(FloatReason(n.op_type()));
}

Decision Planner::DecideWeighted(const pb::NodeProto& n) const {
  const std::string& op = n.op_type();
  Decision d;
  d.kind = Decision::kQuantized;
  d.quantize_output = IsFloat(n.output(0));
  QuantizedNode& q = d.node;
  q.node = n.name();
  q.op_type = op;
  if (op == "MatMul") {
    const bool a_const = FloatConstant(n.input(0)) != nullptr;
    const bool b_const = FloatConstant(n.input(1)) != nullptr;
    if (b_const && IsFloatActivation(n.input(0))) {
      q.weight_input = 1;
      const int rank = FloatConstant(n.input(1))->dims_size();
      q.weight_axis = options_.per_channel && rank >= 2 ? rank - 1 : -1;
      d.act_inputs = {0};
    } else if (a_const && IsFloatActivation(n.input(1))) {
      q.weight_input = 0;
      d.act_inputs = {1};
    } else if (IsFloatActivation(n.input(0)) &&
               IsFloatActivation(n.input(1))) {
      if (!options_.quantize_activation_matmul) {
        return Float("MatMul of two activations kept float by option");
      }
      d.act_inputs = {0, 1};
    } else {
      return Float("MatMul of non-float tensors");
    }
    return d;
  }
  if (n.input_size() < 2 || !FloatConstant(n.input(1))) {
    return Float(op + " weight '" + (n.input_size() > 1 ? n.input(1) : "") +
                 "' is not a float32 constant");
  }
  if (!IsFloatActivation(n.input(0))) {
    return Float(op + " input is not a float32 activation");
  }
  d.act_inputs = {0};
  q.weight_input = 1;
  const auto* w = FloatConstant(n.input(1));
  if (op == "Conv") {
    q.weight_axis = options_.per_channel ? 0 : -1;
  } else if (op == "ConvTranspose") {
    // With groups, output channels are spread over axis 0 and axis 1.
    q.weight_axis =
        options_.per_channel && IntAttribute(n, "group", 1) == 1 ? 1 : -1;
  } else {  // Gemm
    if (w->dims_size() != 2) return Float("Gemm weight is not 2-D");
    q.weight_axis =
        options_.per_channel ? (IntAttribute(n, "transB", 0) ? 0 : 1) : -1;
  }
  if (n.input_size() > 2 && !n.input(2).empty()) {
    const auto* b = FloatConstant(n.input(2));
    bool bias_ok = b && b->dims_size() == 1;
    if (op == "Gemm") {
      bias_ok = bias_ok && FloatAttribute(n, "alpha", 1.f) == 1.f &&
                FloatAttribute(n, "beta", 1.f) == 1.f;
    }
    if (bias_ok) q.bias_input = 2;
  }
  return d;
}

Decision Planner::DecideElementwise(int i, const pb::NodeProto& n) const {
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
  if (op == "Clip") {
    if (!IsFloatActivation(n.input(0))) return Float("Clip of a constant");
    for (int k = 1; k < n.input_size(); ++k) {
      if (!n.input(k).empty() && !FloatConstant(n.input(k))) {
        return Float("Clip bounds are not constants");
      }
    }
    d.act_inputs = {0};
    return d;
  }
  const int num_inputs = (op == "Add" || op == "Mul") ? 2 : 1;
  for (int k = 0; k < num_inputs && k < n.input_size(); ++k) {
    if (IsFloatActivation(n.input(k))) {
      d.act_inputs.push_back(k);
    } else if (FloatConstant(n.input(k))) {
      d.const_inputs.push_back(k);
    } else {
      return Float(op + " of non-float tensors");
    }
  }
  if (d.act_inputs.empty()) return Float(op + " of constants only");
  return d;
}

Decision Planner::DecideShared(const pb::NodeProto& n) const {
  const std::string& op = n.op_type();
  if (!IsFloatActivation(n.input(0)) || !IsFloat(n.output(0))) {
    return Float(op + " of non-float data");
  }
  if (op == "Resize" && StringAttr(n, "mode", "nearest") != "nearest") {
    return Float("Resize mode '" + StringAttr(n, "mode", "") +
                 "' is not nearest");
  }
  if (op == "Pad") {
    if (StringAttr(n, "mode", "constant") != "constant") {
      return Float("Pad mode is not constant");
    }
    if (n.input_size() > 2 && !n.input(2).empty() &&
        !ScalarConstantIs(n.input(2), 0.f)) {
      return Float("Pad value is not the constant 0");
    }
  }
  Decision d;
  d.kind = Decision::kShared;
  d.node.node = n.name();
  d.node.op_type = op;
  return d;
}

// Relu, or Clip(0, max), right after a quantized node whose output has no
// other consumer and is not a graph output, is absorbed into that output.
void Planner::Absorb(std::vector<Decision>* d) const {
  for (int i = 0; i < graph_.node_size(); ++i) {
    const auto& n = graph_.node(i);
    Decision& di = (*d)[i];
    if (di.kind != Decision::kQuantized) continue;
    if (n.op_type() != "Relu" && n.op_type() != "Clip") continue;
    if (n.op_type() == "Clip" &&
        (n.input_size() < 2 || !ScalarConstantIs(n.input(1), 0.f))) {
      continue;
    }
    const std::string& in = n.input(0);
    const int p = index_.Producer(in);
    if (p < 0 || (*d)[p].kind != Decision::kQuantized) continue;
    const std::string& pop = graph_.node(p).op_type();
    if (pop == "Relu" || pop == "Clip" || pop == "Concat") continue;
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
  CheckOptions();
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
  return Assemble(d);
}

// A Sigmoid or Softmax kept float for its sensitivity to 8-bit error gains
// nothing when its neighbours quantize both its input and its output: ONNX
// Runtime then runs DQ -> op -> Q as one integer op (QLinearSigmoid,
// QLinearSoftmax), and the op's output is 8-bit either way. Such a node is
// reported as quantized, as it runs.
bool Planner::QuantizedAnyway(
    const pb::NodeProto& n, const Decision& d,
    const std::unordered_set<std::string>& needs) const {
  const std::string& op = n.op_type();
  if (op != "Sigmoid" && op != "Softmax") return false;
  if (d.reason != FloatReason(op)) return false;  // excluded, or not float
  if (n.input_size() < 1 || n.output_size() != 1) return false;
  return needs.count(n.input(0)) && needs.count(n.output(0));
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
                               graph_.node(d[i].producer).name()});
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
  // Shared-parameter ops, in topological order.
  for (int i = 0; i < graph_.node_size(); ++i) {
    if (d[i].kind != Decision::kShared) continue;
    const auto& n = graph_.node(i);
    const std::string &x = n.input(0), &y = n.output(0);
    if (!needs.count(x) && !needs.count(y)) continue;
    needs.insert(x);
    needs.insert(y);
    source[y] = source.count(x) ? source[x] : x;
  }
  // Concat: inputs that only feed the Concat take its output's parameters.
  // Reverse order, so that a Concat feeding a Concat resolves first.
  for (int i = graph_.node_size() - 1; i >= 0; --i) {
    const auto& n = graph_.node(i);
    if (d[i].kind != Decision::kQuantized || n.op_type() != "Concat") continue;
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
    plan.qdq.push_back({t, src});
    calibrated.insert(src);
  }
  for (const auto& t : order) {
    if (calibrated.count(t)) plan.calibrated.push_back(t);
  }
  for (const auto& c : constants) {
    auto v = ToFloats(*index_.Initializer(c));
    float lo = 0.f, hi = 0.f;
    for (float x : v) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    plan.constants.push_back({c, lo, hi});
  }
  bool subgraphs = false;
  for (int i = 0; i < graph_.node_size(); ++i) {
    const auto& n = graph_.node(i);
    if (d[i].kind == Decision::kQuantized) {
      QuantizedNode q = d[i].node;
      q.node = n.name();
      q.op_type = n.op_type();
      plan.quantized_nodes.push_back(q);
    } else if (d[i].kind == Decision::kShared) {
      if (needs.count(n.output(0))) {
        plan.quantized_nodes.push_back(d[i].node);
      } else {
        plan.float_nodes.push_back(
            {n.name(), n.op_type(), "its input and output stay float"});
      }
    } else if (d[i].kind == Decision::kFloat) {
      if (QuantizedAnyway(n, d[i], needs)) {
        QuantizedNode q;
        q.node = n.name();
        q.op_type = n.op_type();
        plan.quantized_nodes.push_back(q);
        continue;
      }
      plan.float_nodes.push_back({n.name(), n.op_type(), d[i].reason});
      subgraphs = subgraphs || GraphIndex::HasSubgraph(n);
    }
  }
  if (subgraphs) {
    plan.notes.push_back(
        "subgraph bodies (If/Loop/Scan) are left float and untouched");
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
  Planner planner(model, dtypes, options);
  return planner.Run();
}

}  // namespace onnxquant
