#include "onnxquant/error.h"
#include "onnxquant/passes/passes.h"

namespace onnxquant::passes {

bool FoldBatchNorm(pb::ModelProto& model) {
  (void)model;
  throw InternalError("pass fold_batch_norm: not implemented yet");
}

}  // namespace onnxquant::passes
