#include "onnxquant/op_table.h"

#include <unordered_map>

#include "onnxquant/graph_edit.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

using R = InputRole;

std::string StringAttr(const pb::NodeProto& n, const std::string& name,
                       const std::string& def) {
  const pb::AttributeProto* a = FindAttribute(n, name);
  return a ? a->s() : def;
}

// ORT fuses only a nearest Resize (DQ -> Resize(linear) -> Q runs in float).
std::string ResizeIsNearest(const pb::NodeProto& n, const ConstantLookup&) {
  const std::string mode = StringAttr(n, "mode", "nearest");
  return mode == "nearest" ? "" : "Resize mode '" + mode + "' is not nearest";
}

// Padding with the value 0 keeps the input's quantization parameters exact
// (0 is representable in every range, which contains 0).
std::string PadIsConstantZero(const pb::NodeProto& n,
                              const ConstantLookup& constants) {
  if (StringAttr(n, "mode", "constant") != "constant") {
    return "Pad mode is not constant";
  }
  if (n.input_size() > 2 && !n.input(2).empty()) {
    const pb::TensorProto* v = constants.FloatConstant(n.input(2));
    const std::vector<float> values = v ? ToFloats(*v) : std::vector<float>();
    if (values.size() != 1 || values[0] != 0.f) {
      return "Pad value is not the constant 0";
    }
  }
  return "";
}

constexpr char kDrops[] = "8-bit data: ORT drops the Q/DQ around it";
constexpr char kNoKernel[] =
    "ONNX Runtime has no integer kernel for it: its QDQ form runs in float";
constexpr char kSensitive[] = "sensitive to 8-bit error";

OpSpec Weighted(const char* op, std::vector<InputRole> inputs, WeightAxis axis,
                const char* ort) {
  OpSpec s{op, "", OpKind::kWeighted, std::move(inputs)};
  s.weight_axis = axis;
  s.ort_runs = ort;
  return s;
}

OpSpec Quantized(const char* op, std::vector<InputRole> inputs,
                 const char* ort) {
  OpSpec s{op, "", OpKind::kQuantized, std::move(inputs)};
  s.ort_runs = ort;
  return s;
}

OpSpec Shared(const char* op, std::vector<InputRole> inputs,
              const char* ort = kDrops) {
  OpSpec s{op, "", OpKind::kShared, std::move(inputs)};
  s.ort_runs = ort;
  return s;
}

OpSpec FusedOnly(const char* op, std::vector<InputRole> inputs,
                 const char* ort, const char* reason) {
  OpSpec s{op, "", OpKind::kFusedOnly, std::move(inputs)};
  s.ort_runs = ort;
  s.reason = reason;
  return s;
}

OpSpec Float(const char* op, const char* reason, const char* domain = "") {
  OpSpec s{op, domain, OpKind::kFloat, {R::kData}};
  s.ort_runs = "float";
  s.reason = reason;
  return s;
}

std::vector<OpSpec> MakeTable() {
  std::vector<OpSpec> t;
  // Weighted.
  t.push_back(Weighted("Conv", {R::kData, R::kWeight, R::kBias},
                       WeightAxis::kZero, "QLinearConv"));
  t.push_back(Weighted(
      "ConvTranspose", {R::kData, R::kWeight, R::kBias},
      WeightAxis::kOneUngrouped,
      "float: no QDQ rule for it in ORT's CPU provider (the QDQ form serves "
      "readers that have one, e.g. NPUs)"));
  t.push_back(Weighted("Gemm", {R::kData, R::kWeight, R::kBias},
                       WeightAxis::kGemm, "QGemm"));
  t.back().bias_needs_unit_alpha_beta = true;
  t.push_back(Weighted("MatMul", {R::kDataOrWeight, R::kDataOrWeight},
                       WeightAxis::kLast,
                       "QLinearMatMul (MatMulIntegerToFloat before a float "
                       "consumer)"));
  // Quantized per tensor.
  t.push_back(Quantized("Add", {R::kDataOrConstant, R::kDataOrConstant},
                        "QLinearAdd"));
  t.push_back(Quantized("Mul", {R::kDataOrConstant, R::kDataOrConstant},
                        "QLinearMul"));
  t.push_back(Quantized("AveragePool", {R::kData}, "QLinearAveragePool"));
  t.push_back(
      Quantized("GlobalAveragePool", {R::kData}, "QLinearGlobalAveragePool"));
  t.push_back(Quantized("LeakyRelu", {R::kData}, "QLinearLeakyRelu"));
  static constexpr char kAbsorbed[] =
      "nothing: absorbed into its producer's output range, or removed by ORT "
      "before a QuantizeLinear whose range starts at 0";
  t.push_back(Quantized("Relu", {R::kData}, kAbsorbed));
  t.back().absorb = Absorb::kAlways;
  t.push_back(
      Quantized("Clip", {R::kData, R::kParameter, R::kParameter}, kAbsorbed));
  t.back().absorb = Absorb::kIfLowerBoundZero;
  t.push_back(Quantized("Concat", {R::kDataOrConstant}, "QLinearConcat"));
  t.back().variadic = true;
  t.back().inputs_share_output = true;
  // Data movement: the output shares the input's parameters.
  t.push_back(Shared("MaxPool", {R::kData}));
  t.push_back(Shared("ReduceMax", {R::kData, R::kIndex}));
  t.push_back(Shared("ReduceMin", {R::kData, R::kIndex}));
  t.push_back(Shared("Reshape", {R::kData, R::kIndex}));
  t.push_back(Shared("Transpose", {R::kData}));
  t.push_back(Shared("Flatten", {R::kData}));
  t.push_back(Shared("Squeeze", {R::kData, R::kIndex}));
  t.push_back(Shared("Unsqueeze", {R::kData, R::kIndex}));
  t.push_back(Shared("Slice", {R::kData, R::kIndex}));
  t.push_back(Shared("Gather", {R::kData, R::kIndex}));
  t.push_back(Shared("GatherElements", {R::kData, R::kIndex}));
  t.push_back(Shared("Expand", {R::kData, R::kIndex}));
  t.push_back(Shared("Tile", {R::kData, R::kIndex}));
  t.push_back(Shared("DepthToSpace", {R::kData}));
  t.push_back(Shared("Split", {R::kData, R::kIndex}));
  t.push_back(Shared("Resize", {R::kData, R::kIndex}));
  t.back().check = ResizeIsNearest;
  t.push_back(Shared(
      "Pad", {R::kData, R::kIndex, R::kParameter, R::kIndex},
      "float between DQ and Q: no ORT rule drops the Q/DQ around a Pad "
      "(sharing the parameters keeps the requantization exact; "
      "optimize_model folds a Pad that only a Conv reads into the Conv)"));
  t.back().check = PadIsConstantZero;
  // Float unless the neighbours quantize around them.
  t.push_back(FusedOnly("Sigmoid", {R::kData}, "QLinearSigmoid", kSensitive));
  t.push_back(FusedOnly("Softmax", {R::kData}, "QLinearSoftmax", kSensitive));
  t.push_back(FusedOnly(
      "Where", {R::kIndex, R::kData, R::kData}, "QLinearWhere",
      "its usual use fills a mask with -inf or -1e9, which an 8-bit range "
      "cannot hold"));
  t.push_back(FusedOnly(
      "ArgMax", {R::kData}, "ArgMax on 8-bit data (ORT drops the DQ)",
      "its output is an index; it reads 8-bit data where its producer's "
      "output is quantized"));
  // Float.
  t.push_back(Float("LayerNormalization", kSensitive));
  t.push_back(Float("InstanceNormalization", kSensitive));
  t.push_back(Float("BatchNormalization",
                    "no integer kernel in ONNX Runtime; optimize_model folds "
                    "it into a Conv or Gemm before it"));
  t.push_back(Float("Gelu", kSensitive));
  t.push_back(Float("Exp", kSensitive));
  t.push_back(Float("Log", kSensitive));
  t.push_back(Float("Div", kNoKernel));
  t.push_back(Float("Sub", kNoKernel));
  t.push_back(Float("PRelu",
                    "ONNX Runtime has no integer kernel for it; "
                    "optimize_model makes a PRelu with one constant slope a "
                    "LeakyRelu"));
  t.push_back(Float("HardSigmoid", kNoKernel));
  t.push_back(Float("HardSwish", kNoKernel));
  t.push_back(Float("SpaceToDepth", kNoKernel));
  t.push_back(Float("CumSum", kNoKernel));
  t.push_back(Float("TopK", kNoKernel));
  t.push_back(Float("EmbedLayerNormalization",
                    "a com.microsoft fused op with no QDQ form in ONNX "
                    "Runtime",
                    "com.microsoft"));
  return t;
}

std::string Key(const std::string& domain, const std::string& op_type) {
  return (domain == "ai.onnx" ? std::string() : domain) + ":" + op_type;
}

}  // namespace

const std::vector<OpSpec>& OpTable() {
  static const std::vector<OpSpec> kTable = MakeTable();
  return kTable;
}

const OpSpec* FindOpSpec(const std::string& domain,
                         const std::string& op_type) {
  static const std::unordered_map<std::string, const OpSpec*> kIndex = [] {
    std::unordered_map<std::string, const OpSpec*> index;
    for (const OpSpec& s : OpTable()) index[Key(s.domain, s.op_type)] = &s;
    return index;
  }();
  auto it = kIndex.find(Key(domain, op_type));
  return it == kIndex.end() ? nullptr : it->second;
}

InputRole RoleOfInput(const OpSpec& spec, int k) {
  const int n = static_cast<int>(spec.inputs.size());
  if (k < n) return spec.inputs[k];
  return spec.variadic && n > 0 ? spec.inputs.back() : InputRole::kIndex;
}

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kWeighted:
      return "weighted";
    case OpKind::kQuantized:
      return "quantized";
    case OpKind::kShared:
      return "shared";
    case OpKind::kFusedOnly:
      return "fused_only";
    case OpKind::kFloat:
      return "float";
  }
  return "float";
}

const char* InputRoleName(InputRole role) {
  switch (role) {
    case InputRole::kData:
      return "data";
    case InputRole::kDataOrConstant:
      return "data_or_constant";
    case InputRole::kDataOrWeight:
      return "data_or_weight";
    case InputRole::kWeight:
      return "weight";
    case InputRole::kBias:
      return "bias";
    case InputRole::kParameter:
      return "parameter";
    case InputRole::kIndex:
      return "index";
  }
  return "index";
}

std::string UnknownOpReason(const std::string& op_type) {
  return "op type " + op_type + " is not in the quantization table";
}

}  // namespace onnxquant
