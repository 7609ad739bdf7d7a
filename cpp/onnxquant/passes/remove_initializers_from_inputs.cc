#include "onnxquant/error.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {

bool RemoveInitializersFromInputs(pb::ModelProto& model) {
  (void)model;
  throw InternalError("pass remove_initializers_from_inputs: not implemented yet");
}

}  // namespace onnxquant::passes
