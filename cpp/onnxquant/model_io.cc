#include "onnxquant/model_io.h"

#include <limits>

#include "onnxquant/error.h"

namespace onnxquant {

pb::ModelProto ParseModel(std::string_view bytes) {
  pb::ModelProto model;
  if (bytes.empty()) {
    throw ModelError(
        "Unable to parse the model: the bytes are empty. Pass the contents "
        "of an .onnx file.");
  }
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    throw ModelError(
        "Unable to parse the model: the protobuf bytes are malformed, "
        "truncated, or exceed the 2 GB limit. Re-export the model or check "
        "that the file was copied whole.");
  }
  if (!model.has_graph()) {
    throw ModelError(
        "The model holds no graph: the bytes parse but are not an ONNX "
        "model (check that the file is an .onnx model).");
  }
  return model;
}

std::string SerializeModel(const pb::ModelProto& model) {
  const size_t size = SerializedSize(model);
  std::string out(size, '\0');
  SerializeInto(model, size, out.data());
  return out;
}

size_t SerializedSize(const pb::ModelProto& model) {
  const size_t size = model.ByteSizeLong();
  if (size > static_cast<size_t>(std::numeric_limits<int>::max())) {
    throw ModelError(
        "Unable to serialize the model: it exceeds protobuf's 2 GB limit.");
  }
  return size;
}

void SerializeInto(const pb::ModelProto& model, size_t size, char* out) {
  // ByteSizeLong (in SerializedSize) cached every submessage's size: the
  // model is measured once, not again here.
  uint8_t* end = model.SerializeWithCachedSizesToArray(
      reinterpret_cast<uint8_t*>(out));
  if (static_cast<size_t>(end - reinterpret_cast<uint8_t*>(out)) != size) {
    throw Error(ErrorKind::kInternal,
                "The model changed while it was serialized.");
  }
}

int DefaultOpset(const pb::ModelProto& model) {
  for (const auto& op : model.opset_import()) {
    if (op.domain().empty() || op.domain() == "ai.onnx") {
      return static_cast<int>(op.version());
    }
  }
  return 0;
}

}  // namespace onnxquant
