#include "onnxquant/validate_model.h"

#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"

namespace onnxquant {
namespace {

constexpr int kAny = -1;

// Tables of the names in a graph, keyed by views of the model's own strings
// (which outlive the check): no name is copied.
using InitTable = std::unordered_map<std::string_view, const pb::TensorProto*>;
using NameSet = std::unordered_set<std::string_view>;

// What a graph sees of the scopes around it (a body sees the initializers
// and tensors of every enclosing graph).
struct OuterScope {
  const OuterScope* parent = nullptr;
  const InitTable* inits = nullptr;
  const NameSet* defined = nullptr;

  const pb::TensorProto* Initializer(std::string_view name) const {
    for (const OuterScope* s = this; s != nullptr; s = s->parent) {
      auto it = s->inits->find(name);
      if (it != s->inits->end()) return it->second;
      if (s->defined->count(name)) return nullptr;
    }
    return nullptr;
  }
  bool Defines(std::string_view name) const {
    for (const OuterScope* s = this; s != nullptr; s = s->parent) {
      if (s->defined->count(name)) return true;
    }
    return false;
  }
};

// The initializers a graph reads: its own, then those of enclosing scopes.
struct VisibleInits {
  const InitTable& own;
  const OuterScope* outer;
  const pb::TensorProto* Find(std::string_view name) const {
    auto it = own.find(name);
    if (it != own.end()) return it->second;
    return outer ? outer->Initializer(name) : nullptr;
  }
};

// Input and output counts of the standard ops the engine reads, from their
// ONNX schemas (the union over opsets 1 to the latest).
struct Arity {
  int min_inputs, max_inputs, min_outputs, max_outputs;
};

const Arity* ArityOf(const std::string& op) {
  static const std::unordered_map<std::string, Arity> kArity = {
      {"Conv", {2, 3, 1, 1}},
      {"ConvTranspose", {2, 3, 1, 1}},
      {"Gemm", {2, 3, 1, 1}},
      {"MatMul", {2, 2, 1, 1}},
      {"Add", {2, 2, 1, 1}},
      {"Sub", {2, 2, 1, 1}},
      {"Mul", {2, 2, 1, 1}},
      {"Div", {2, 2, 1, 1}},
      {"Pow", {2, 2, 1, 1}},
      {"Relu", {1, 1, 1, 1}},
      {"Clip", {1, 3, 1, 1}},
      {"Sigmoid", {1, 1, 1, 1}},
      {"Softmax", {1, 1, 1, 1}},
      {"Exp", {1, 1, 1, 1}},
      {"Log", {1, 1, 1, 1}},
      {"Erf", {1, 1, 1, 1}},
      {"Sqrt", {1, 1, 1, 1}},
      {"Gelu", {1, 1, 1, 1}},
      {"Concat", {1, kAny, 1, 1}},
      {"MaxPool", {1, 1, 1, 2}},
      {"AveragePool", {1, 1, 1, 1}},
      {"GlobalAveragePool", {1, 1, 1, 1}},
      {"Reshape", {1, 2, 1, 1}},
      {"Transpose", {1, 1, 1, 1}},
      {"Flatten", {1, 1, 1, 1}},
      {"Squeeze", {1, 2, 1, 1}},
      {"Unsqueeze", {1, 2, 1, 1}},
      {"Slice", {1, 5, 1, 1}},
      {"Gather", {2, 2, 1, 1}},
      {"Resize", {1, 4, 1, 1}},
      {"Pad", {1, 4, 1, 1}},
      {"ReduceMean", {1, 2, 1, 1}},
      {"LayerNormalization", {2, 3, 1, 3}},
      {"BatchNormalization", {5, 5, 1, 5}},
      {"Identity", {1, 1, 1, 1}},
      {"Dropout", {1, 3, 1, 2}},
      {"Constant", {0, 0, 1, 1}},
  };
  auto it = kArity.find(op);
  return it == kArity.end() ? nullptr : &it->second;
}

bool IsStandardDomain(const pb::NodeProto& node) {
  return node.domain().empty() || node.domain() == "ai.onnx";
}

// Bytes per element of the types whose payload size the engine can check,
// and the length of the typed field (per element) that holds them otherwise;
// 0 for types not checked (strings, 4-bit and complex types).
int ElementBytes(int data_type) {
  switch (data_type) {
    case pb::TensorProto::FLOAT:
    case pb::TensorProto::INT32:
    case pb::TensorProto::UINT32:
      return 4;
    case pb::TensorProto::DOUBLE:
    case pb::TensorProto::INT64:
    case pb::TensorProto::UINT64:
      return 8;
    case pb::TensorProto::FLOAT16:
    case pb::TensorProto::BFLOAT16:
    case pb::TensorProto::INT16:
    case pb::TensorProto::UINT16:
      return 2;
    case pb::TensorProto::INT8:
    case pb::TensorProto::UINT8:
    case pb::TensorProto::BOOL:
      return 1;
    default:
      return 0;
  }
}

// The number of values a tensor holds in its typed field, or -1 when the
// type is not checked.
int64_t TypedCount(const pb::TensorProto& t) {
  switch (t.data_type()) {
    case pb::TensorProto::FLOAT:
      return t.float_data_size();
    case pb::TensorProto::DOUBLE:
      return t.double_data_size();
    case pb::TensorProto::INT64:
      return t.int64_data_size();
    case pb::TensorProto::UINT32:
    case pb::TensorProto::UINT64:
      return t.uint64_data_size();
    case pb::TensorProto::INT32:
    case pb::TensorProto::INT16:
    case pb::TensorProto::UINT16:
    case pb::TensorProto::INT8:
    case pb::TensorProto::UINT8:
    case pb::TensorProto::BOOL:
    case pb::TensorProto::FLOAT16:
    case pb::TensorProto::BFLOAT16:
      return t.int32_data_size();
    default:
      return -1;
  }
}

// CheckedNumElements over any range of dims, with the name built only for
// an error.
template <typename Dims, typename Name>
int64_t CheckedCount(const Dims& dims, const Name& name) {
  // The product of the non-zero dims is bounded too, so that no partial
  // product of a tensor with a zero dim overflows either.
  for (int64_t d : dims) {
    if (d < 0) {
      throw ModelError(name() + " has a negative dim (" + std::to_string(d) +
                       "): the model is corrupt.");
    }
  }
  bool empty = false;
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d == 0) {
      empty = true;
      continue;
    }
    if (n > kMaxTensorElements / d) {
      throw ModelError(name() + " has dims whose product exceeds 2^56 "
                       "elements: the model is corrupt.");
    }
    n *= d;
  }
  return empty ? 0 : n;
}

// Checks `t`; `name()` says what it is in an error message (built only
// then: this runs on every tensor of every model).
template <typename Name>
void CheckTensor(const pb::TensorProto& t, const Name& name) {
  if (t.data_type() == pb::TensorProto::UNDEFINED ||
      !pb::TensorProto_DataType_IsValid(t.data_type())) {
    throw ModelError(name() + " has data type " +
                     std::to_string(t.data_type()) +
                     ", which ONNX does not define: the model is corrupt.");
  }
  const int64_t n = CheckedCount(t.dims(), name);
  if (t.data_location() == pb::TensorProto::EXTERNAL) return;
  const int bytes = ElementBytes(t.data_type());
  if (bytes == 0) return;
  if (t.has_raw_data()) {
    const int64_t got = static_cast<int64_t>(t.raw_data().size());
    if (got != n * bytes) {
      throw ModelError(name() + " holds " + std::to_string(got) +
                       " bytes of raw data where its dims need " +
                       std::to_string(n * bytes) +
                       ": the model is truncated or corrupt.");
    }
    return;
  }
  const int64_t got = TypedCount(t);
  if (got != n) {
    throw ModelError(name() + " holds " + std::to_string(got) +
                     " values where its dims need " + std::to_string(n) +
                     ": the model is truncated or corrupt.");
  }
}

void CheckAttributes(const pb::NodeProto& node, int index) {
  for (const auto& a : node.attribute()) {
    const auto name = [&] {
      return "Attribute '" + a.name() + "' of " + NodeLabel(node, index);
    };
    if (a.has_t()) CheckTensor(a.t(), name);
    for (const auto& t : a.tensors()) CheckTensor(t, name);
  }
}

void CheckArity(const pb::NodeProto& node, int index) {
  if (node.output_size() < 1 || node.output(0).empty()) {
    throw ModelError(NodeLabel(node, index) +
                     " has no output: the model is corrupt.");
  }
  if (!IsStandardDomain(node)) return;
  const Arity* arity = ArityOf(node.op_type());
  if (arity == nullptr) return;
  const int in = node.input_size(), out = node.output_size();
  if (in < arity->min_inputs ||
      (arity->max_inputs != kAny && in > arity->max_inputs) ||
      out < arity->min_outputs ||
      (arity->max_outputs != kAny && out > arity->max_outputs)) {
    throw ModelError(NodeLabel(node, index) + " has " + std::to_string(in) +
                     " inputs and " + std::to_string(out) +
                     " outputs, which its ONNX schema does not allow: the "
                     "model is corrupt.");
  }
  for (int k = 0; k < arity->min_inputs; ++k) {
    if (node.input(k).empty()) {
      throw ModelError(NodeLabel(node, index) + " leaves its required input " +
                       std::to_string(k) + " empty: the model is corrupt.");
    }
  }
}

// Output channels of a Conv/ConvTranspose weight of rank >= 3 (dims checked
// by CheckTensor), or -1 when a ConvTranspose's group makes them overflow.
int64_t ConvChannels(const pb::NodeProto& node, const pb::TensorProto& w,
                     int64_t group) {
  if (node.op_type() == "Conv") return w.dims(0);
  if (w.dims(1) > kMaxTensorElements / group) return -1;
  return w.dims(1) * group;
}

void CheckConv(const pb::NodeProto& node, int index,
               const VisibleInits& inits) {
  const auto label = [&] { return NodeLabel(node, index); };
  const int64_t group = IntAttribute(node, "group", 1);
  if (group < 1 || group > (int64_t{1} << 31)) {
    throw ModelError(label() + " has group " + std::to_string(group) +
                     "; it must be in [1, 2^31].");
  }
  const pb::TensorProto* w = inits.Find(node.input(1));
  if (w == nullptr) return;
  if (w->dims_size() < 3) {
    throw ModelError(label() + " has a weight '" + node.input(1) +
                     "' of rank " + std::to_string(w->dims_size()) +
                     "; a " + node.op_type() +
                     " weight has rank 3 or more (out, in, kernel...).");
  }
  const auto& wdims = w->dims();
  if (wdims[0] % group != 0) {
    throw ModelError(label() + " has a weight '" + node.input(1) +
                     "' whose first dim (" + std::to_string(wdims[0]) +
                     ") is not a multiple of its group (" +
                     std::to_string(group) + ").");
  }
  for (int k = 2; k < wdims.size(); ++k) {
    if (wdims[k] < 1) {
      throw ModelError(label() + " has a weight '" + node.input(1) +
                       "' with an empty kernel (dim " + std::to_string(k) +
                       " is 0).");
    }
  }
  if (node.input_size() < 3 || node.input(2).empty()) return;
  const pb::TensorProto* b = inits.Find(node.input(2));
  if (b == nullptr) return;
  const int64_t channels = ConvChannels(node, *w, group);
  if (b->dims_size() != 1 || b->dims(0) != channels) {
    std::string shape;
    for (int64_t d : b->dims()) {
      shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    }
    throw ModelError(label() + " has a bias '" + node.input(2) +
                     "' of shape [" + shape + "] for " +
                     std::to_string(channels) +
                     " output channels; the bias must be 1-D with one value "
                     "per output channel.");
  }
}

void CheckGemm(const pb::NodeProto& node, int index,
               const VisibleInits& inits) {
  if (node.input_size() < 3 || node.input(2).empty()) return;
  const pb::TensorProto* w = inits.Find(node.input(1));
  const pb::TensorProto* b = inits.Find(node.input(2));
  if (w == nullptr || b == nullptr) return;
  if (w->dims_size() != 2 || b->dims_size() != 1) return;
  const int64_t n = w->dims(IntAttribute(node, "transB", 0) ? 0 : 1);
  const int64_t len = b->dims(0);
  if (len != 1 && len != n) {
    throw ModelError(NodeLabel(node, index) + " has a bias '" + node.input(2) +
                     "' of " + std::to_string(len) + " values for " +
                     std::to_string(n) +
                     " output columns; a 1-D Gemm bias has 1 or N values.");
  }
}

void CheckSingleAssignmentAndOrder(const pb::GraphProto& graph,
                                   const OuterScope* outer) {
  // Every tensor name: where it comes from (-1 graph input or initializer,
  // else the producing node's index).
  std::unordered_map<std::string_view, int> origin;
  size_t names = graph.input_size() + graph.initializer_size();
  for (const auto& node : graph.node()) names += node.output_size();
  origin.reserve(names);
  for (const auto& in : graph.input()) origin.emplace(in.name(), -1);
  for (const auto& t : graph.initializer()) origin.emplace(t.name(), -1);
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    for (const auto& o : node.output()) {
      if (o.empty()) continue;
      auto [it, inserted] = origin.emplace(o, i);
      if (!inserted) {
        throw ModelError(
            NodeLabel(node, i) + " writes tensor '" + o + "', which " +
            (it->second < 0 ? std::string("a graph input or initializer")
                            : NodeLabel(graph.node(it->second), it->second)) +
            " already provides: each tensor has one producer in ONNX.");
      }
    }
  }
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    for (const auto& name : node.input()) {
      if (name.empty()) continue;
      auto it = origin.find(name);
      if (it == origin.end() && outer != nullptr && outer->Defines(name)) {
        continue;  // a body reading a tensor of an enclosing scope
      }
      if (it == origin.end()) {
        throw ModelError(NodeLabel(node, i) + " reads tensor '" + name +
                         "', which no node, graph input or initializer "
                         "provides: the model is corrupt.");
      }
      if (it->second >= i) {
        throw ModelError(
            NodeLabel(node, i) + " reads tensor '" + name + "' before " +
            NodeLabel(graph.node(it->second), it->second) +
            " writes it: the nodes are not in topological order (ONNX "
            "requires it). Sort them, e.g. by saving the model with "
            "onnxruntime's graph optimization, and try again.");
      }
    }
  }
}

}  // namespace

int64_t CheckedNumElements(const std::vector<int64_t>& dims,
                           const std::string& what) {
  return CheckedCount(dims, [&] { return what; });
}

std::string NodeLabel(const pb::NodeProto& node, int index) {
  const std::string op = " (" + node.op_type() + ")";
  if (node.name().empty()) return "node #" + std::to_string(index) + op;
  return "node '" + node.name() + "'" + op;
}

namespace {

bool IsControlFlow(const pb::NodeProto& node) {
  return IsStandardDomain(node) &&
         (node.op_type() == "If" || node.op_type() == "Loop" ||
          node.op_type() == "Scan");
}

// Checks one graph, then the bodies of its If, Loop and Scan nodes (which
// the plan quantizes); `what` names the graph in messages ("" for the main
// graph).
void ValidateGraph(const pb::GraphProto& graph, const OuterScope* outer,
                   const std::string& what) {
  const std::string in = what.empty() ? "" : " in " + what;
  InitTable inits;
  inits.reserve(graph.initializer_size());
  for (const auto& t : graph.initializer()) {
    if (t.name().empty()) {
      throw ModelError("An initializer" + in +
                       " has no name: the model is corrupt.");
    }
    if (!inits.emplace(t.name(), &t).second) {
      throw ModelError("Initializer '" + t.name() + "'" + in +
                       " appears twice: the model is corrupt.");
    }
    CheckTensor(t, [&] { return "Initializer '" + t.name() + "'" + in; });
  }
  const VisibleInits visible{inits, outer};
  bool bodies = false;
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    CheckArity(node, i);
    CheckAttributes(node, i);
    if (!IsStandardDomain(node)) continue;
    if (node.op_type() == "Conv" || node.op_type() == "ConvTranspose") {
      CheckConv(node, i, visible);
    } else if (node.op_type() == "Gemm") {
      CheckGemm(node, i, visible);
    }
    bodies = bodies || IsControlFlow(node);
  }
  CheckSingleAssignmentAndOrder(graph, outer);
  if (!bodies) return;
  NameSet defined;
  for (const auto& v : graph.input()) defined.insert(v.name());
  for (const auto& t : graph.initializer()) defined.insert(t.name());
  for (const auto& n : graph.node()) {
    for (const auto& o : n.output()) defined.insert(o);
  }
  const OuterScope scope{outer, &inits, &defined};
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    if (!IsControlFlow(node)) continue;
    for (const auto& attr : node.attribute()) {
      if (!attr.has_g()) continue;
      const std::string body =
          "body '" + attr.name() + "' of " + NodeLabel(node, i);
      try {
        ValidateGraph(attr.g(), &scope, body);
      } catch (const Error& e) {
        // Name the body of a node's error (initializer errors name it).
        const std::string what = e.what();
        if (what.find(" in body '") != std::string::npos) throw;
        throw Error(e.kind(), what + " (in " + body + ")");
      }
    }
  }
}

void CheckUniqueNames(const pb::GraphProto& graph) {
  std::unordered_map<std::string_view, int> seen;
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    auto [it, inserted] = seen.emplace(node.name(), i);
    if (!inserted) {
      throw ModelError(NodeLabel(node, i) + " has the same name as node #" +
                       std::to_string(it->second) +
                       ": quantization needs unique node names. Run "
                       "onnxquant.optimize_model first, which names them.");
    }
    if (!IsControlFlow(node)) continue;
    for (const auto& attr : node.attribute()) {
      if (attr.has_g()) CheckUniqueNames(attr.g());
    }
  }
}

}  // namespace

void ValidateModel(const pb::ModelProto& model) {
  if (!model.has_graph()) {
    throw ModelError("The model holds no graph: it is not an ONNX model.");
  }
  ValidateGraph(model.graph(), nullptr, "");
}

void ValidateModelForPlan(const pb::ModelProto& model) {
  ValidateModel(model);
  CheckUniqueNames(model.graph());
}

}  // namespace onnxquant
