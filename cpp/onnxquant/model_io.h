// Reading and writing ONNX models as protobuf bytes.
#ifndef ONNXQUANT_MODEL_IO_H_
#define ONNXQUANT_MODEL_IO_H_

#include <string>
#include <string_view>

#include "onnxquant/onnx_lite.pb.h"

namespace onnxquant {

// The generated classes live in onnxquant::pb (the renamed proto package).

// Parses serialized ModelProto bytes.
// Throws Error(kModel) when the bytes are malformed or truncated, or when
// they hold no graph.
pb::ModelProto ParseModel(std::string_view bytes);

// Serializes a model. Throws Error(kModel) past protobuf's 2 GB limit.
std::string SerializeModel(const pb::ModelProto& model);

// The two halves of SerializeModel, for a caller that owns the buffer: the
// serialized size (which also caches the sizes of every submessage; throws
// Error(kModel) past protobuf's 2 GB limit), then the serialization into
// `out`, which holds that many bytes.
// REQUIRES: `model` unchanged since SerializedSize(model) returned `size`.
size_t SerializedSize(const pb::ModelProto& model);
void SerializeInto(const pb::ModelProto& model, size_t size, char* out);

// The opset version of the default ("" or "ai.onnx") domain, or 0 if absent.
int DefaultOpset(const pb::ModelProto& model);

}  // namespace onnxquant

#endif  // ONNXQUANT_MODEL_IO_H_
