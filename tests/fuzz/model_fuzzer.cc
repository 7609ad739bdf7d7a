// libFuzzer target over the engine's entry points, in the order the Python
// package calls them: parse, validate, the graph passes (optimize_model,
// which then names the nodes and converts the opset to 13: mimicked here),
// the plan (Calibrator), tensor exposure (the calibration session), the
// kernel check's weight quantization and QDQ insertion (quantize, with the
// plan made once), then serialization.
//
// An onnxquant::Error of any kind but kInternal is the expected refusal of a
// malformed model. Anything else is a finding: a crash, a sanitizer report,
// another exception, an InternalError (a malformed model must be named as
// such, not blamed on onnxquant), or exceeding -rss_limit_mb / -timeout.
//
// Built by bench/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined). At
// exit it prints how many executions reached each stage.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "model_mutator.h"
#include "onnxquant/error.h"
#include "onnxquant/insert_qdq.h"
#include "onnxquant/kernel_checker.h"
#include "onnxquant/model_io.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/plan.h"
#include "onnxquant/validate_model.h"

namespace oq = onnxquant;

namespace {

enum Stage {
  kExecuted,
  kParsed,
  kValidated,
  kPassesRun,
  kPlanned,
  kExposed,
  kKernelChecked,
  kQdqInserted,
  kSerialized,
  kNumStages
};

const char* const kStageNames[kNumStages] = {
    "executed",     "parsed",          "validated",
    "passes run",   "planned",         "tensors exposed",
    "kernel check", "QDQ inserted",    "serialized"};

// The harness's statistics: process-wide by the nature of libFuzzer's C
// entry points, and only counted, never read back by the code under test.
std::atomic<uint64_t> g_stage_counts[kNumStages];

void Reach(Stage s) { g_stage_counts[s].fetch_add(1, std::memory_order_relaxed); }

void PrintStages() {
  const double total = static_cast<double>(g_stage_counts[kExecuted].load());
  std::fprintf(stderr, "onnxquant fuzz stages (of %llu executions):\n",
               static_cast<unsigned long long>(total));
  for (int s = 0; s < kNumStages; ++s) {
    const uint64_t n = g_stage_counts[s].load();
    std::fprintf(stderr, "  %-16s %12llu  %5.1f %%\n", kStageNames[s],
                 static_cast<unsigned long long>(n),
                 total > 0 ? 100.0 * n / total : 0.0);
  }
}

// What shape inference would give the engine: declared input types, the
// initializers' own, and float for every node output.
oq::DtypeMap Dtypes(const oq::pb::ModelProto& m) {
  oq::DtypeMap types;
  for (const auto& n : m.graph().node()) {
    for (const auto& o : n.output()) types[o] = oq::pb::TensorProto::FLOAT;
  }
  for (const auto& v : m.graph().input()) {
    types[v.name()] = v.type().tensor_type().elem_type();
  }
  for (const auto& t : m.graph().initializer()) types[t.name()] = t.data_type();
  return types;
}

// Options and ranges vary with the input, so that every setting is fuzzed.
oq::QuantOptions Options(uint64_t h) {
  oq::QuantOptions o;
  o.activation_type =
      (h & 1) ? oq::ActivationType::kInt8 : oq::ActivationType::kUint8;
  o.per_channel = (h & 2) == 0;
  o.reduce_weight_range = (h & 4) != 0;
  o.quantize_silu = (h & 8) != 0;
  return o;
}

oq::RangeMap Ranges(const std::vector<std::string>& tensors, uint64_t h) {
  oq::RangeMap ranges;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t k = (h >> (i % 32)) & 3;
    ranges[tensors[i]] = k == 0   ? std::pair{0.f, 0.f}
                         : k == 1 ? std::pair{0.f, 6.f}
                                  : std::pair{-1.5f, 2.5f};
  }
  return ranges;
}

// What optimize_model does in Python after the passes: every node gets a
// unique name (unnamed ones <op_type>_<index>) and the opset is at least 13
// (Python converts it; here the number alone is raised, which the plan
// checks and nothing else reads).
void NormalizeLikePython(oq::pb::ModelProto* model) {
  std::unordered_set<std::string> taken;
  auto* nodes = model->mutable_graph()->mutable_node();
  for (int i = 0; i < nodes->size(); ++i) {
    oq::pb::NodeProto* n = nodes->Mutable(i);
    std::string name = n->name().empty()
                           ? n->op_type() + "_" + std::to_string(i)
                           : n->name();
    const std::string base = name;
    for (int k = 1; taken.count(name); ++k) {
      name = base + "_" + std::to_string(k);
    }
    n->set_name(name);
    taken.insert(name);
  }
  bool found = false;
  for (auto& op : *model->mutable_opset_import()) {
    if (op.domain().empty() || op.domain() == "ai.onnx") {
      if (op.version() < 13) op.set_version(13);
      found = true;
      break;
    }
  }
  if (!found) model->add_opset_import()->set_version(13);
}

uint64_t Hash(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size && i < 64; ++i) h = (h ^ data[i]) * 1099511628211ull;
  return h ^ size;
}

void Run(const uint8_t* data, size_t size) {
  Reach(kExecuted);
  oq::pb::ModelProto model = oq::ParseModel(
      std::string_view(reinterpret_cast<const char*>(data), size));
  Reach(kParsed);
  oq::ValidateModel(model);
  Reach(kValidated);
  std::vector<std::string> passes;
  for (const auto& p : oq::RegisteredPasses()) passes.emplace_back(p.name);
  oq::RunPasses(model, passes);
  Reach(kPassesRun);
  NormalizeLikePython(&model);
  const uint64_t h = Hash(data, size);
  const oq::DtypeMap dtypes = Dtypes(model);
  const oq::QuantOptions options = Options(h);
  oq::QuantPlan plan = oq::MakePlan(model, dtypes, options);
  Reach(kPlanned);
  {
    oq::pb::ModelProto exposed = model;
    oq::ExposeTensors(exposed, plan.calibrated, dtypes);
    Reach(kExposed);
  }
  const oq::RangeMap ranges = Ranges(plan.calibrated, h);
  // quantize() plans the model once for its kernel check and its insertion
  // (the binding's PlannedModel), and the plan is the Calibrator's: that
  // plan is shared here. One input in eight takes the overloads that plan
  // again (the binding's KernelChecker and quantize).
  const bool replan = (h & 0x70) == 0;
  if (replan) {
    oq::KernelChecker checker(model, dtypes, options, ranges);
  } else {
    oq::KernelChecker checker(model, plan, options, ranges);
  }
  Reach(kKernelChecked);
  if (replan) {
    oq::InsertQdq(model, dtypes, options, ranges);
  } else {
    oq::InsertQdq(model, std::move(plan), options, ranges);
  }
  Reach(kQdqInserted);
  oq::SerializeModel(model);
  Reach(kSerialized);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::atexit(PrintStages);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Also at 2^k executions (k >= 10), like libFuzzer's pulses: a run stopped
  // by a signal exits without the atexit handler.
  const uint64_t done = g_stage_counts[kExecuted].load();
  if (done >= 1024 && (done & (done - 1)) == 0) PrintStages();
  try {
    Run(data, size);
  } catch (const oq::Error& e) {
    if (e.kind() == oq::ErrorKind::kInternal) {
      std::fprintf(stderr, "InternalError on a fuzzed model: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size,
                                          size_t max_size, unsigned int seed) {
  oq::pb::ModelProto model;
  std::mt19937_64 rng(seed);
  // One in 64 mutations is libFuzzer's own, on the bytes.
  if (size == 0 || rng() % 64 == 0 ||
      !model.ParseFromArray(data, static_cast<int>(size))) {
    return LLVMFuzzerMutate(data, size, max_size);
  }
  onnxquant::fuzz::MutateModel(rng, &model);
  std::string out;
  if (!model.SerializeToString(&out) || out.size() > max_size) return size;
  std::memcpy(data, out.data(), out.size());
  return out.size();
}
