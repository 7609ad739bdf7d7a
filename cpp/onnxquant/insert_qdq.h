// Applying a plan: QuantizeLinear/DequantizeLinear insertion, quantized
// weights and int32 biases, absorbed activations removed.
#ifndef ONNXQUANT_INSERT_QDQ_H_
#define ONNXQUANT_INSERT_QDQ_H_

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

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

// Adds the named tensors to graph.output (once each, in the order given) so
// that a runtime returns them for calibration. Throws Error(kModel) for a
// name no node produces and no graph input holds, and for a malformed model
// (ValidateModel).
void ExposeTensors(pb::ModelProto& model, const std::vector<std::string>& names,
                   const DtypeMap& dtypes);

}  // namespace onnxquant

#endif  // ONNXQUANT_INSERT_QDQ_H_
