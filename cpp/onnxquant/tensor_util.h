// Reading and writing initializer payloads.
#ifndef ONNXQUANT_TENSOR_UTIL_H_
#define ONNXQUANT_TENSOR_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

// Number of elements of a tensor with these dims (1 for a scalar).
// Throws Error(kModel) for a negative dim or a product that does not fit
// (validate_model.h).
int64_t NumElements(const std::vector<int64_t>& dims);

std::vector<int64_t> Dims(const pb::TensorProto& tensor);

// The values of a FLOAT, FLOAT16 or DOUBLE initializer as float32.
// A payload stored as external data is read from its file when the
// location is an absolute path (the Python layer resolves a model's external
// data to absolute paths, and passes large payloads that way); a relative or
// missing location throws Error(kUnsupportedModel), a missing or short file
// Error(kModel). Throws Error(kUnsupportedModel) for other types, naming the
// tensor.
std::vector<float> ToFloats(const pb::TensorProto& tensor);

// Whether ToFloats/ToInt64s can read the payload: true unless it is external
// data with a relative (unresolved) location.
bool PayloadReadable(const pb::TensorProto& tensor);

// Reads the payload of an initializer stored as external data (an absolute
// location with its length entry, as the Python layer writes them) into its
// raw_data and drops the reference, in place; a tensor held inline is left
// as it is. Throws as ToFloats does for an unreadable payload, and
// Error(kModel) naming the tensor when the length entry is missing.
void InlineExternal(pb::TensorProto* tensor);

// The values of an INT64 or INT32 initializer (external data as above).
// Both readers throw Error(kModel) naming the tensor when its payload does not
// match its dims.
std::vector<int64_t> ToInt64s(const pb::TensorProto& tensor);

// Builders: the payload goes to raw_data, little-endian.
pb::TensorProto FloatTensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<float>& values);
pb::TensorProto Int8Tensor(const std::string& name,
                           const std::vector<int64_t>& dims,
                           const std::vector<int8_t>& values);
pb::TensorProto Uint8Tensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<uint8_t>& values);
pb::TensorProto Int16Tensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<int16_t>& values);
// INT4: two values a byte, the first in the low nibble (ONNX's packing).
// REQUIRES: values in [-8, 7].
pb::TensorProto Int4Tensor(const std::string& name,
                           const std::vector<int64_t>& dims,
                           const std::vector<int8_t>& values);
pb::TensorProto Int32Tensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<int32_t>& values);

}  // namespace onnxquant

#endif  // ONNXQUANT_TENSOR_UTIL_H_
