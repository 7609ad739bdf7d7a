// The engine's entry check: everything the engine reads from a model is
// checked here before any pass, plan or QDQ insertion reads it, so that a
// malformed model is refused by name instead of crashing the process.
#ifndef ONNXQUANT_VALIDATE_MODEL_H_
#define ONNXQUANT_VALIDATE_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

// Largest element count a tensor may declare (2^56): far beyond any payload
// protobuf or external data can hold, and small enough that no byte count
// computed from it overflows int64.
inline constexpr int64_t kMaxTensorElements = int64_t{1} << 56;

// The element count of `dims`, checked. Throws Error(kModel) naming `what`
// for a negative dim or a product above kMaxTensorElements.
int64_t CheckedNumElements(const std::vector<int64_t>& dims,
                           const std::string& what);

// "node 'name' (OpType)", or "node #index (OpType)" for an unnamed node: how
// error messages name a node.
std::string NodeLabel(const pb::NodeProto& node, int index);

// Checks the main graph of `model` (run by every engine entry point: passes,
// plan, QDQ insertion, tensor exposure, kernel check):
//  - every initializer and tensor attribute: a known data type, dims that are
//    non-negative and whose product fits, and a payload (raw_data or the
//    typed field) of exactly the size the dims need (external data is only
//    checked for its dims); initializer names unique and non-empty;
//  - every node: at least one output, a non-empty output 0; standard ops the
//    engine rewrites or quantizes have the input and output counts of their
//    ONNX schema, with their required inputs named; Conv/ConvTranspose have
//    a group >= 1 and, where their weight and bias are initializers, a
//    weight of rank >= 3 whose first dim is a multiple of the group and whose
//    kernel dims are >= 1, and a 1-D bias with one value per output channel;
//    a Gemm's 1-D constant bias has 1 or N values;
//  - single assignment: no tensor is produced twice, or produced by a node
//    and also a graph input or initializer;
//  - topological order: each node reads only graph inputs, initializers and
//    outputs of earlier nodes.
// The bodies of If, Loop and Scan nodes, which the plan quantizes, are
// checked the same way (a body may read the initializers and tensors of the
// graphs around it); bodies of other ops are left alone, as the engine
// leaves them untouched.
// Throws Error(kModel) naming the first offending node or tensor.
void ValidateModel(const pb::ModelProto& model);

// ValidateModel, plus what the plan and QDQ insertion rely on to find nodes:
// node names are unique within each graph (onnxquant.optimize_model names
// every node, bodies included).
// Throws Error(kModel) naming the repeated name.
void ValidateModelForPlan(const pb::ModelProto& model);

}  // namespace onnxquant

#endif  // ONNXQUANT_VALIDATE_MODEL_H_
