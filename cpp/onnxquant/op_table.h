// The op table of the quantization plan: each op type described once, as
// data (docs/architecture.md, "The op table"). The planner (plan.cc) reads
// only these descriptions; adding an op is one entry in op_table.cc.
//
// The decisions follow what ONNX Runtime's CPU provider fuses into integer
// kernels (QDQSelectorActionTransformer): an op is quantized where ORT runs
// its QDQ form as an integer kernel, or moves 8-bit data through it.
#ifndef ONNXQUANT_OP_TABLE_H_
#define ONNXQUANT_OP_TABLE_H_

#include <string>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

// What the plan does with a node of an op type.
enum class OpKind {
  // A constant weight, int8 per channel (WeightAxis); its data input and
  // output per tensor; an int32 bias.
  kWeighted,
  // Its data inputs and its output are quantized per tensor, each with its
  // own calibrated range (constant operands from their own values).
  kQuantized,
  // Moves data without arithmetic: where a neighbour quantizes its input or
  // an output, every float output shares the data input's parameters (no
  // requantization), so that ORT drops the Q/DQ around it.
  kShared,
  // Kept float, unless its neighbours quantize all its data inputs and float
  // outputs anyway: ORT then runs the DQ -> op -> Q group as one integer
  // kernel, and the node is reported as quantized.
  kFusedOnly,
  // Kept float, with the reason.
  kFloat,
};

// The role of one input of an op.
enum class InputRole {
  kData,            // an activation, quantized per tensor
  kDataOrConstant,  // an activation, or a float constant quantized from its
                    // own values (the addend of an Add)
  kDataOrWeight,    // MatMul: either operand may be the constant weight
  kWeight,          // a float constant, int8 per channel
  kBias,            // a 1-D float constant, int32
  kParameter,       // a float constant never quantized (Clip's bounds); an
                    // activation here keeps the node float
  kIndex,           // shapes, indices, axes, a condition: never quantized
};

// Which axis of a kWeighted op's weight holds its output channels.
enum class WeightAxis {
  kNone,
  kZero,             // Conv
  kOneUngrouped,     // ConvTranspose: 1, per tensor when group > 1
  kGemm,             // Gemm: 1 when transB = 0, 0 when transB = 1
  kLast,             // MatMul with a constant second operand
};

// Whether a node is absorbed into a quantized producer's output range.
enum class Absorb {
  kNever,
  kAlways,          // Relu
  kIfLowerBoundZero,  // Clip whose min input is the constant 0
};

// A float constant of the model by name, or nullptr (initializers only).
class ConstantLookup {
 public:
  virtual ~ConstantLookup() = default;
  virtual const pb::TensorProto* FloatConstant(const std::string& name)
      const = 0;
};

// An op-specific condition on a node's attributes or constant inputs:
// returns why the node stays float, or "" when the entry's kind applies.
using NodeCheck = std::string (*)(const pb::NodeProto& node,
                                  const ConstantLookup& constants);

struct OpSpec {
  const char* op_type;
  const char* domain;  // "" for the default domain
  OpKind kind;
  // Role of each input by index; inputs past the end take the last role
  // when `variadic` (Concat), else are ignored.
  std::vector<InputRole> inputs;
  bool variadic = false;
  // kQuantized: inputs that feed only this node share the output's
  // parameters (Concat, which ORT runs as QLinearConcat).
  bool inputs_share_output = false;
  Absorb absorb = Absorb::kNever;
  WeightAxis weight_axis = WeightAxis::kNone;
  // kWeighted: the bias is quantized only when alpha = beta = 1 (Gemm).
  bool bias_needs_unit_alpha_beta = false;
  // Optional condition (nullptr: none).
  NodeCheck check = nullptr;
  // What ONNX Runtime 1.31's CPU provider runs the quantized (or QDQ) form
  // as, for the docs and the report.
  const char* ort_runs = "";
  // kFloat and kFusedOnly: why the node is kept float.
  const char* reason = "";
};

// The entry for an op type of a domain ("" or "ai.onnx" for the default
// one), or nullptr for an op the table does not know.
const OpSpec* FindOpSpec(const std::string& domain, const std::string& op_type);

// Every entry, in the table's order (the docs list them in this order).
const std::vector<OpSpec>& OpTable();

// The role of input `k` of a node of `spec`: kIndex where the entry says
// nothing about it.
InputRole RoleOfInput(const OpSpec& spec, int k);

// "weighted", "quantized", "shared", "fused_only" or "float".
const char* OpKindName(OpKind kind);

// "data", "data_or_constant", "data_or_weight", "weight", "bias",
// "parameter" or "index".
const char* InputRoleName(InputRole role);

// Why a node of an op type the table does not know stays float.
std::string UnknownOpReason(const std::string& op_type);

}  // namespace onnxquant

#endif  // ONNXQUANT_OP_TABLE_H_
