#include "onnxquant/pass_registry.h"

#include <unordered_set>

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
       passes::FoldConstantTranspose, {"Transpose"}},
      {"remove_identity", "remove Identity nodes", passes::RemoveIdentity,
       {"Identity"}},
      {"remove_dropout", "remove Dropout nodes whose mask is unused",
       passes::RemoveDropout, {"Dropout"}},
      {"fold_batch_norm",
       "fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm",
       passes::FoldBatchNorm, {"BatchNormalization"}},
      {"flatten_gemm_bias", "reshape a Gemm's constant [1, N] bias to [N]",
       passes::FlattenGemmBias, {"Gemm"}},
      {"reduce_mean_to_global_average_pool",
       "rewrite a ReduceMean over the spatial axes of a 4-D tensor as "
       "GlobalAveragePool",
       passes::ReduceMeanToGlobalAveragePool, {"ReduceMean"}},
      {"prelu_to_leaky_relu",
       "rewrite a PRelu with one constant slope as LeakyRelu",
       passes::PreluToLeakyRelu, {"PRelu"}},
      {"fold_pad_into_conv",
       "fold a Pad of zeros that only a Conv reads into the Conv's pads",
       passes::FoldPadIntoConv, {"Pad"}},
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

namespace {

// The op types of the main graph's nodes.
std::unordered_set<std::string> OpTypes(const pb::GraphProto& graph) {
  std::unordered_set<std::string> ops;
  for (const auto& node : graph.node()) ops.insert(node.op_type());
  return ops;
}

bool MayMatch(const Pass& pass, const std::unordered_set<std::string>& ops) {
  if (pass.anchors.empty()) return true;
  for (std::string_view op : pass.anchors) {
    if (ops.count(std::string(op))) return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> RunPasses(pb::ModelProto& model,
                                   const std::vector<std::string>& names) {
  constexpr int kMaxRounds = 1000;
  ValidateModel(model);
  std::vector<std::string> changed;
  std::unordered_set<std::string> ops = OpTypes(model.graph());
  for (const auto& name : names) {
    const Pass& pass = FindPass(name);
    if (!MayMatch(pass, ops)) continue;
    int rounds = 0;
    while (pass.apply(model)) {
      if (++rounds == 1) changed.emplace_back(pass.name);
      if (rounds >= kMaxRounds) {
        throw InternalError("Pass '" + name + "' did not reach a fixed point "
                            "after 1000 rounds: a bug in onnxquant.");
      }
    }
    if (rounds > 0) ops = OpTypes(model.graph());
  }
  return changed;
}

}  // namespace onnxquant
