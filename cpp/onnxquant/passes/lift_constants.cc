#include "onnxquant/error.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {

bool LiftConstants(pb::ModelProto& model) {
  (void)model;
  throw InternalError("pass lift_constants: not implemented yet");
}

}  // namespace onnxquant::passes
