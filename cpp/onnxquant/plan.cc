#include "onnxquant/plan.h"

#include "onnxquant/error.h"

namespace onnxquant {

QuantPlan MakePlan(const pb::ModelProto&, const DtypeMap&, const QuantOptions&) {
  throw InternalError("MakePlan: not implemented yet");
}

}  // namespace onnxquant
