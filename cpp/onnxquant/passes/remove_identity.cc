#include "onnxquant/error.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {

bool RemoveIdentity(pb::ModelProto& model) {
  (void)model;
  throw InternalError("pass remove_identity: not implemented yet");
}

}  // namespace onnxquant::passes
