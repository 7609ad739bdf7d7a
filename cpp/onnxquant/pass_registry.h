// Graph rewrites registered by name, and the loop that runs them.
//
// A pass is one rewrite in one file under passes/. It applies its rewrite
// wherever it matches in the main graph and says whether anything changed;
// RunPasses repeats each pass until it changes nothing, and skips a pass
// whose anchor op types are all absent from the main graph (such a pass
// could not match anything; each pass builds its own GraphIndex for the
// rounds it runs, so a graph pays for an index only where a pass has
// candidates). Passes leave subgraph
// bodies (If, Loop, Scan) untouched, and never rename a tensor that a body
// reads from the outer scope.
#ifndef ONNXQUANT_PASS_REGISTRY_H_
#define ONNXQUANT_PASS_REGISTRY_H_

#include <string>
#include <string_view>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

struct Pass {
  std::string_view name;
  std::string_view summary;
  // Applies the rewrite once over the main graph; returns true on a change.
  // Throws Error on a model it cannot rewrite safely.
  bool (*apply)(pb::ModelProto& model);
  // Op types a match starts from: the pass changes nothing in a graph that
  // has none of them. Empty: always run.
  std::vector<std::string_view> anchors = {};
};

// Every registered pass, in the order optimize_model runs them.
const std::vector<Pass>& RegisteredPasses();

// Throws Error(kInvalidArgument) naming the known passes if `name` is none.
const Pass& FindPass(std::string_view name);

// Runs the named passes in order, each until it changes nothing (at most
// 1000 rounds, then Error(kInternal)). Returns the names of the passes that
// changed the model. Validates the model first (ValidateModel: Error(kModel)
// naming the node or tensor of a malformed model).
std::vector<std::string> RunPasses(pb::ModelProto& model,
                                   const std::vector<std::string>& names);

}  // namespace onnxquant

#endif  // ONNXQUANT_PASS_REGISTRY_H_
