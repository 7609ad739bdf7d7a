// The quantization plan: what gets quantized, how, and what stays float.
//
// Computed once from a normalised model and the options; calibration observes
// exactly `calibrated`, and quantization (insert_qdq.h) applies the plan.
// The op table and the weight axes are those of docs/architecture.md.
#ifndef ONNXQUANT_PLAN_H_
#define ONNXQUANT_PLAN_H_

#include <string>
#include <unordered_map>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

// kInt16: 16-bit activations (as ONNX Runtime's own quantizer writes them:
// Q/DQ of the com.microsoft domain below opset 21); ONNX Runtime has no
// integer kernels for them and runs DQ -> float op -> Q.
enum class ActivationType { kUint8, kInt8, kInt16 };

// Scales that are powers of two (TI's TIDL, AMD's XINT8 for NPUs): every
// weight and activation scale is 2^-k.
enum class PowerOfTwo {
  kOff,
  // The smallest power of two whose range covers the tensor's (no
  // overflow).
  kCeil,
  // For weights, that or the next lower power of two, whichever gives the
  // smaller squared error over the weight's values (clipping a few);
  // activations as kCeil (their range comes from the calibration method).
  kMse,
};

// How each weight channel's clipping range is chosen.
enum class WeightRange {
  // max|w| of the channel (no clipping; power_of_two then rounds it).
  kMinMax,
  // The clipping that minimises the channel's squared quantization error
  // (weight_range_search.h); with power_of_two, the best power of two.
  kMse,
};

// How a node's quantized weight is stored.
enum class WeightEncoding {
  // int8 codes, zero point 0: ONNX Runtime's uint8 x int8 kernels.
  kInt8,
  // The kInt8 codes plus 128 as uint8, zero point 128: the same values, run
  // by ONNX Runtime's uint8 x uint8 kernels, which widen to 16 bits before
  // multiplying and so never saturate (kernel_check.h).
  kUint8Offset,
};

// The type of quantized weights.
enum class WeightType {
  // int8 codes in [-127, 127] (or a kernel remedy's range), zero point 0.
  kInt8,
  // int4 codes in [-7, 7], zero point 0 (ONNX's INT4, opset 21): symmetric
  // like the int8 codes, so -8 is never used. ONNX Runtime's CPU provider
  // runs such a weight as DequantizeLinear -> float op.
  kInt4,
};

// A change to one node's weight quantization (quantize()'s kernel remedies).
struct WeightRemedy {
  WeightEncoding encoding = WeightEncoding::kInt8;
  // Per output channel (the weight axis; one entry for a per-tensor weight),
  // the largest code, in [1, 127]; empty: the default (127, or 63 with
  // reduce_weight_range). The scale is then max|w| / qmax for that channel.
  std::vector<int32_t> channel_qmax;
};

struct QuantOptions {
  // uint8 (default) fuses into ONNX Runtime's CPU integer kernels; int8 is
  // for TFLite-style targets and NPUs, with a Q/DQ pair per consumer.
  ActivationType activation_type = ActivationType::kUint8;
  // Per-channel weight scales (on by default); off gives one scale a weight.
  bool per_channel = true;
  // Node names kept float whatever their op.
  std::vector<std::string> exclude_nodes;
  // Node names that apply or compute an attention mask, kept float whatever
  // their op (quantize()'s masks="float"); apart from exclude_nodes so that
  // the user's exclusions stay what the user passed, and the report gives
  // these their own reason.
  std::vector<std::string> mask_nodes;
  // Node names the kernel check keeps float (quantize()'s
  // kernel_remedy="float": their integer kernel would saturate on CPUs
  // without VNNI); apart from exclude_nodes for the same reasons.
  std::vector<std::string> kernel_float_nodes;
  // Op types to quantize; empty means every op of the table.
  std::vector<std::string> op_types;
  // Quantize MatMul of two activations (attention); off keeps them float.
  bool quantize_activation_matmul = true;
  // Weights use [-63, 63] instead of [-127, 127] (CPUs without VNNI).
  bool reduce_weight_range = false;
  // Power-of-two scales for weights (per channel or per tensor, as
  // per_channel says) and activations; off by default.
  PowerOfTwo power_of_two = PowerOfTwo::kOff;
  // Per weight channel (per tensor when per_channel is off), the clipping
  // range: max|w| (default) or the squared-error minimum.
  WeightRange weight_range = WeightRange::kMinMax;
  // x * sigmoid(x) (SiLU) gets Q/DQ between its Sigmoid and its Mul too, so
  // that ONNX Runtime runs both as integer ops (QLinearSigmoid, QLinearMul)
  // instead of in float; off by default (the Mul's output only).
  bool quantize_silu = false;
  // A Gemm or MatMul with a constant weight whose output is only a graph
  // output keeps that output float: ONNX Runtime runs it as QGemm or
  // MatMulIntegerToFloat, which write float directly, so the model's outputs
  // (logits, say) are not rounded to 8 bits. Off: quantized, as a target
  // with integer outputs needs.
  bool float_outputs = true;
  // Per node name, a change to its weight quantization (the kernel remedies
  // quantize() chooses; names of nodes without a weight are ignored).
  std::unordered_map<std::string, WeightRemedy> weight_remedies;
  // Weight type of every quantized weight (default int8); kInt4 needs a model
  // at opset 21 or later (Error(kUnsupportedModel) otherwise).
  WeightType weight_type = WeightType::kInt8;
  // With kInt4: MatMul weights [K, N] get one scale per block of
  // `block_size` rows of a column (blocks along the reduction axis K, the
  // last one shorter when K is not a multiple); 0 (default): per channel.
  // Conv and Gemm weights stay per channel. REQUIRES: 0 or >= 2.
  int64_t block_size = 0;
  // Per node name, its weight type instead of `weight_type`.
  std::unordered_map<std::string, WeightType> node_weight_types;
  // Per calibrated tensor (a plan's `calibrated` name: the source of a
  // shared set of parameters), its activation type instead of
  // `activation_type`.
  std::unordered_map<std::string, ActivationType> tensor_types;
  // Calibrated tensors that get no Q/DQ pair (their readers and writers see
  // float; the int32 bias of a node whose input stays float is kept float).
  std::vector<std::string> float_tensors;
  // Tensors of subgraph bodies (If, Loop, Scan) that no calibration sample
  // reached (a branch no sample takes): each body whose plan calibrates one
  // stays float, its nodes reported with the reason.
  std::vector<std::string> unreached_tensors;
};

// The activation type of the calibrated tensor `source` under `options`.
ActivationType ActivationTypeOf(const QuantOptions& options,
                                const std::string& source);

// The weight type of node `node` under `options`.
WeightType WeightTypeOf(const QuantOptions& options, const std::string& node);

// Tensor name -> ONNX element type (TensorProto.DataType), as shape
// inference found it. Tensors absent from the map are treated as unknown and
// never quantized.
using DtypeMap = std::unordered_map<std::string, int>;

// Where a plan entry lies: "" for the main graph; for a subgraph body,
// "<node>.<attribute>" (e.g. "cond_if.then_branch"), nested bodies joined
// by "/" from the outermost.
using Scope = std::string;

struct QuantizedNode {
  std::string node;
  std::string op_type;
  int weight_input = -1;  // index of the constant weight input, or -1
  int weight_axis = -1;   // per-channel axis of the weight, -1 per tensor
  int bias_input = -1;    // index of a bias quantized to int32, or -1
  Scope scope;
};

struct FloatNode {
  std::string node;
  std::string op_type;
  std::string reason;
  Scope scope;
};

// A tensor that gets a QuantizeLinear/DequantizeLinear pair.
struct QdqTensor {
  std::string tensor;  // the tensor quantized in the output model
  std::string source;  // the calibrated tensor whose range it uses
  Scope scope;         // where the pair is inserted
};

// A constant (initializer) activation operand quantized from its own values
// (e.g. the addend of an Add), per tensor.
struct ConstantOperand {
  std::string tensor;
  float min = 0.f;
  float max = 0.f;
  Scope scope;
};

struct AbsorbedActivation {
  std::string node;      // the Relu/Clip removed from the graph
  std::string producer;  // the quantized node whose output range absorbs it
  Scope scope;
};

// The plan covers the main graph and, recursively, the bodies of its If,
// Loop and Scan nodes: every entry names its scope. Tensor names are unique
// across scopes (ONNX), so calibrated names and ranges need none.
struct QuantPlan {
  std::vector<std::string> calibrated;  // in graph order, main graph first
  // The calibrated tensors defined inside bodies (body inputs and the
  // outputs of body nodes): a sample may never reach them.
  std::vector<std::string> body_calibrated;
  std::vector<QdqTensor> qdq;           // in graph order
  std::vector<QuantizedNode> quantized_nodes;
  std::vector<FloatNode> float_nodes;
  std::vector<ConstantOperand> constants;
  std::vector<AbsorbedActivation> absorbed;
  std::vector<std::string> notes;  // e.g. subgraphs left untouched
};

// Computes the plan for a normalised model: its main graph and the bodies of
// If, Loop and Scan nodes (outer-scope reads included; a body calibrating a
// tensor of options.unreached_tensors stays float).
// REQUIRES: opset >= 13 (Error(kUnsupportedModel) otherwise).
// Validates the model first (ValidateModelForPlan: Error(kModel) naming the
// node or tensor of a malformed model).
// Throws Error(kInvalidArgument) for an excluded node or op type that the
// model does not contain, naming it.
QuantPlan MakePlan(const pb::ModelProto& model, const DtypeMap& dtypes,
                   const QuantOptions& options);

}  // namespace onnxquant

#endif  // ONNXQUANT_PLAN_H_
