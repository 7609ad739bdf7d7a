// The op table of the quantization plan (docs/architecture.md).
#ifndef ONNXQUANT_OP_TABLE_H_
#define ONNXQUANT_OP_TABLE_H_

#include <string>

namespace onnxquant {

enum class OpRole {
  kWeighted,     // Conv, ConvTranspose, Gemm, MatMul: weight per channel
  kElementwise,  // Add, Mul, AveragePool, GlobalAveragePool, Relu, Clip:
                 // inputs and output per tensor
  kConcat,       // inputs and output share one set of parameters
  kShared,       // MaxPool, Reshape, ...: output shares the input's
  kFloat,        // kept float (Softmax, LayerNormalization, ...)
};

// The role of an op type of the default domain in the plan.
OpRole RoleOf(const std::string& op_type);

// True for op types the table names (any role but an unknown kFloat).
bool IsKnownOpType(const std::string& op_type);

// Why an op type of role kFloat stays float, for the report.
std::string FloatReason(const std::string& op_type);

}  // namespace onnxquant

#endif  // ONNXQUANT_OP_TABLE_H_
