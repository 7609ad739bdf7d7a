#include "onnxquant/op_table.h"

#include <unordered_map>

namespace onnxquant {
namespace {

const std::unordered_map<std::string, OpRole>& Table() {
  static const std::unordered_map<std::string, OpRole> kTable = {
      {"Conv", OpRole::kWeighted},
      {"ConvTranspose", OpRole::kWeighted},
      {"Gemm", OpRole::kWeighted},
      {"MatMul", OpRole::kWeighted},
      {"Add", OpRole::kElementwise},
      {"Mul", OpRole::kElementwise},
      {"AveragePool", OpRole::kElementwise},
      {"GlobalAveragePool", OpRole::kElementwise},
      {"Relu", OpRole::kElementwise},
      {"Clip", OpRole::kElementwise},
      {"Concat", OpRole::kConcat},
      {"MaxPool", OpRole::kShared},
      {"Reshape", OpRole::kShared},
      {"Transpose", OpRole::kShared},
      {"Flatten", OpRole::kShared},
      {"Squeeze", OpRole::kShared},
      {"Unsqueeze", OpRole::kShared},
      {"Slice", OpRole::kShared},
      {"Gather", OpRole::kShared},
      {"Resize", OpRole::kShared},
      {"Pad", OpRole::kShared},
      {"Softmax", OpRole::kFloat},
      {"LayerNormalization", OpRole::kFloat},
      {"Gelu", OpRole::kFloat},
      {"Exp", OpRole::kFloat},
      {"Log", OpRole::kFloat},
      {"Div", OpRole::kFloat},
      {"Sigmoid", OpRole::kFloat},
  };
  return kTable;
}

}  // namespace

OpRole RoleOf(const std::string& op_type) {
  auto it = Table().find(op_type);
  return it == Table().end() ? OpRole::kFloat : it->second;
}

bool IsKnownOpType(const std::string& op_type) {
  return Table().count(op_type) > 0;
}

std::string FloatReason(const std::string& op_type) {
  if (op_type == "Softmax" || op_type == "LayerNormalization" ||
      op_type == "Gelu" || op_type == "Exp" || op_type == "Log" ||
      op_type == "Div" || op_type == "Sigmoid") {
    return op_type + " is kept float (sensitive to 8-bit error)";
  }
  return "op type " + op_type + " is not in the quantization table";
}

}  // namespace onnxquant
