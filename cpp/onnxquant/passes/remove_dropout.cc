#include "onnxquant/error.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {

bool RemoveDropout(pb::ModelProto& model) {
  (void)model;
  throw InternalError("pass remove_dropout: not implemented yet");
}

}  // namespace onnxquant::passes
