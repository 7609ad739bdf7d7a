#include "onnxquant/pass_registry.h"

#include "onnxquant/error.h"
#include "onnxquant/passes/passes.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {

const std::vector<Pass>& RegisteredPasses() {
  static const std::vector<Pass> kPasses = {
      {"remove_initializers_from_inputs",
       "drop initializers listed in graph.input",
       passes::RemoveInitializersFromInputs},
      {"lift_constants", "turn Constant nodes into initializers",
       passes::LiftConstants},
      {"fold_constant_transpose",
       "replace a Transpose of a float initializer by the transposed values",
       passes::FoldConstantTranspose},
      {"remove_identity", "remove Identity nodes", passes::RemoveIdentity},
      {"remove_dropout", "remove Dropout nodes whose mask is unused",
       passes::RemoveDropout},
      {"fold_batch_norm",
       "fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm",
       passes::FoldBatchNorm},
      {"flatten_gemm_bias", "reshape a Gemm's constant [1, N] bias to [N]",
       passes::FlattenGemmBias},
      {"reduce_mean_to_global_average_pool",
       "rewrite a ReduceMean over the spatial axes of a 4-D tensor as "
       "GlobalAveragePool",
       passes::ReduceMeanToGlobalAveragePool},
  };
  return kPasses;
}

const Pass& FindPass(std::string_view name) {
  for (const auto& pass : RegisteredPasses()) {
    if (pass.name == name) return pass;
  }
  std::string known;
  for (const auto& pass : RegisteredPasses()) {
    known += (known.empty() ? "" : ", ") + std::string(pass.name);
  }
  throw InvalidArgument("Unknown pass '" + std::string(name) +
                        "'. Registered passes: " + known + ".");
}

std::vector<std::string> RunPasses(pb::ModelProto& model,
                                   const std::vector<std::string>& names) {
  constexpr int kMaxRounds = 1000;
  ValidateModel(model);
  std::vector<std::string> changed;
  for (const auto& name : names) {
    const Pass& pass = FindPass(name);
    int rounds = 0;
    while (pass.apply(model)) {
      if (++rounds == 1) changed.emplace_back(pass.name);
      if (rounds >= kMaxRounds) {
        throw InternalError("Pass '" + name + "' did not reach a fixed point "
                            "after 1000 rounds: a bug in onnxquant.");
      }
    }
  }
  return changed;
}

}  // namespace onnxquant
