// Tensor payloads that travel beside the graph rather than inside it.
#ifndef ONNXQUANT_BINDING_PAYLOADS_H_
#define ONNXQUANT_BINDING_PAYLOADS_H_

#include <cstdint>
#include <string>

#include "onnxquant/model_io.h"

namespace onnxquant::binding {

// Appends the raw_data of every main-graph initializer holding at least
// `threshold` bytes of it to the file at `path` (an absolute path), and
// leaves in its place an external-data reference (location `path`, offset,
// length), so that the serialized graph stays small whatever the payloads.
// The engine reads such references back (tensor_util.h).
// REQUIRES: `path` is absolute. Throws Error(kModel) when the file cannot be
// written.
void ExternalizePayloads(pb::ModelProto* model, const std::string& path,
                         int64_t threshold);

// Reads the payload of every main-graph initializer stored as external data
// (absolute locations, as ExternalizePayloads and the Python layer write
// them) into its raw_data, so that the serialized model is whole. Throws as
// InlineExternal (tensor_util.h) does.
void InlinePayloads(pb::ModelProto* model);

}  // namespace onnxquant::binding

#endif  // ONNXQUANT_BINDING_PAYLOADS_H_
