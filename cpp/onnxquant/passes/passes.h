// The registered passes, one per file in this folder.
#ifndef ONNXQUANT_PASSES_PASSES_H_
#define ONNXQUANT_PASSES_PASSES_H_

#include "onnxquant/model_io.h"

namespace onnxquant::passes {

// Removes from graph.input every name that is also an initializer.
bool RemoveInitializersFromInputs(pb::ModelProto& model);
// Turns Constant nodes holding a tensor (`value`, `value_float(s)`,
// `value_int(s)`) into initializers.
bool LiftConstants(pb::ModelProto& model);
// Folds a BatchNormalization (inference form) that follows a Conv,
// ConvTranspose or Gemm with constant weights into that node.
bool FoldBatchNorm(pb::ModelProto& model);
// Removes Identity nodes, renaming the producer's output where the Identity
// fed a graph output.
bool RemoveIdentity(pb::ModelProto& model);
// Removes Dropout nodes whose mask output is unused.
bool RemoveDropout(pb::ModelProto& model);
// Reshapes a Gemm's constant [1, N] bias to [N] (a copy where it is shared).
bool FlattenGemmBias(pb::ModelProto& model);
// Replaces a Transpose of a float32 initializer by an initializer holding
// the transposed values (MatMul(x, Transpose(W)) gets a constant weight).
bool FoldConstantTranspose(pb::ModelProto& model);
// Rewrites a ReduceMean over axes {2, 3} of a known 4-D float tensor as
// GlobalAveragePool (then Squeeze where keepdims = 0).
bool ReduceMeanToGlobalAveragePool(pb::ModelProto& model);
// Rewrites a PRelu whose slope is one float constant as LeakyRelu(alpha).
bool PreluToLeakyRelu(pb::ModelProto& model);
// Folds a constant-0 Pad of the spatial axes that only a Conv reads into
// the Conv's pads.
bool FoldPadIntoConv(pb::ModelProto& model);

}  // namespace onnxquant::passes

#endif  // ONNXQUANT_PASSES_PASSES_H_
