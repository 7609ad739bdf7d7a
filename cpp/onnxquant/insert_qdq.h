// Applying a plan: QuantizeLinear/DequantizeLinear insertion, quantized
// weights and int32 biases, absorbed activations removed.
#ifndef ONNXQUANT_INSERT_QDQ_H_
#define ONNXQUANT_INSERT_QDQ_H_

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "onnxquant/node_weights.h"
#include "onnxquant/plan.h"

namespace onnxquant {

// Calibrated tensor name -> (min, max).
using RangeMap = std::unordered_map<std::string, std::pair<float, float>>;

struct QuantizeReport {
  QuantPlan plan;
  std::vector<std::string> floored;   // tensors whose zero range was floored
  std::vector<std::string> enlarged;  // weights with a scale enlarged for bias
};

// Quantizes `model` in place by its plan (MakePlan(model, dtypes, options)).
// Throws Error(kRange) naming the first planned tensor without a range or
// with a non-finite or inverted one, and Error(kModel) for a malformed model
// (ValidateModelForPlan, run by MakePlan).
QuantizeReport InsertQdq(pb::ModelProto& model, const DtypeMap& dtypes,
                         const QuantOptions& options, const RangeMap& ranges);

// As above, with the plan the caller already made: `plan` must be
// MakePlan(model, dtypes, options) of this very model, unchanged since, so
// that the model is not planned twice (the kernel check and the insertion
// share one plan). Throws as above, but for the plan's own errors.
// `weights` (may be null): quantized weights a KernelChecker of this very
// model and plan computed (node_weights.h); a node's entry is taken (and
// removed) where its input scale, bias slot and remedy are those the
// insertion uses, instead of quantizing that weight again.
QuantizeReport InsertQdq(pb::ModelProto& model, QuantPlan plan,
                         const QuantOptions& options, const RangeMap& ranges,
                         WeightCache* weights = nullptr);

// Makes a runtime return the named tensors for calibration; returns, per
// name, the graph output that holds its values. A tensor of the main graph
// becomes a graph output itself (once, whatever the repeats). A tensor of an
// If, Loop or Scan body is threaded out: an Identity makes it a body output,
// and the node gets a matching output, up to the main graph:
//  - If: the other branch outputs an empty float tensor (shape [0]), so a
//    sample that does not take the branch contributes no values;
//  - Loop and Scan: a new scan output, which stacks the values of every
//    iteration (statistics over the stack are those over all iterations;
//    the tensor must keep one shape over the iterations).
// Throws Error(kModel) for a name no node produces and no graph input holds,
// or one inside the body of another op, and for a malformed model
// (ValidateModel).
std::vector<std::string> ExposeTensors(pb::ModelProto& model,
                                       const std::vector<std::string>& names,
                                       const DtypeMap& dtypes);

}  // namespace onnxquant

#endif  // ONNXQUANT_INSERT_QDQ_H_
