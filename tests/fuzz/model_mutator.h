// Structure-aware mutations of an ONNX model for the engine's fuzzer.
//
// Byte-level mutations of a serialized model mostly yield bytes that no
// longer parse, so the fuzzer would spend its time in the protobuf parser.
// These mutations parse the model with the lite classes, change one or a few
// of the fields the engine reads (tensor dims, data types, payload sizes and
// values, node attributes, inputs, outputs, op types and order, graph inputs
// and outputs, the opset) and serialize it again.
#ifndef ONNXQUANT_TESTS_FUZZ_MODEL_MUTATOR_H_
#define ONNXQUANT_TESTS_FUZZ_MODEL_MUTATOR_H_

#include <cstdint>
#include <random>

#include "onnxquant/model_io.h"

namespace onnxquant::fuzz {

// Applies a random mutation to `model`, drawn from `rng`: seven times in
// eight one that keeps what the engine's entry check verifies (payload sizes
// follow the dims and type, inputs name earlier tensors, ops keep their
// arity, a node's weight, bias and batch-norm parameters agree) and first
// puts back what earlier mutations broke of it (tensors' types, dims and
// payloads, NaN and Inf values, those agreements), so that odd values reach
// the passes, the plan and QDQ insertion; otherwise one to three that may
// break anything. Never throws.
void MutateModel(std::mt19937_64& rng, pb::ModelProto* model);

}  // namespace onnxquant::fuzz

#endif  // ONNXQUANT_TESTS_FUZZ_MODEL_MUTATOR_H_
