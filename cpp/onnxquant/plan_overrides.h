// Per-tensor and per-node overrides of the options, applied to a plan.
#ifndef ONNXQUANT_PLAN_OVERRIDES_H_
#define ONNXQUANT_PLAN_OVERRIDES_H_

#include "onnxquant/plan.h"

namespace onnxquant {

// Removes from `plan` the Q/DQ pairs (and calibrated names) of the tensors
// `options.float_tensors` lists, and keeps the Relu/Clip whose range one of
// them would have absorbed (nothing else clips there then). Throws
// Error(kInvalidArgument) naming the first listed tensor that the plan does
// not calibrate.
void DropFloatTensors(const pb::GraphProto& graph, const QuantOptions& options,
                      QuantPlan* plan);

// Throws Error(kInvalidArgument) for a block size of 1 or below 0, and
// Error(kUnsupportedModel) for int4 weights (by default or for one node)
// below opset 21.
void CheckWeightOptions(const QuantOptions& options, int opset);

}  // namespace onnxquant

#endif  // ONNXQUANT_PLAN_OVERRIDES_H_
