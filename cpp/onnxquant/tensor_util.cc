#include "onnxquant/tensor_util.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <utility>

#include "onnxquant/error.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FFu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

bool IsExternal(const pb::TensorProto& t) {
  return t.data_location() == pb::TensorProto::EXTERNAL;
}

// The external_data entry `key` of `t`, or "" when absent.
std::string ExternalEntry(const pb::TensorProto& t, const std::string& key) {
  for (const auto& e : t.external_data()) {
    if (e.key() == key) return e.value();
  }
  return "";
}

int64_t ParseOffset(const pb::TensorProto& t, const std::string& key) {
  const std::string text = ExternalEntry(t, key);
  if (text.empty()) return -1;
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  throw ModelError("Initializer '" + t.name() + "' has external data " + key +
                   " '" + text + "', which is not a byte count.");
}

// Reads `bytes` bytes of an external payload into `out`. Only absolute
// locations are read: onnxquant's Python layer resolves a model's own
// external data to absolute paths before the engine sees it.
void ReadExternal(const pb::TensorProto& t, int64_t bytes, void* out) {
  const std::string location = ExternalEntry(t, "location");
  if (location.empty() || location[0] != '/') {
    throw UnsupportedModelError(
        "Initializer '" + t.name() +
        "' is stored as external data that was not loaded. Pass the model's "
        "path (or onnx.load(path)) so that its data files are read.");
  }
  const int64_t offset = std::max<int64_t>(ParseOffset(t, "offset"), 0);
  const int64_t length = ParseOffset(t, "length");
  if (length >= 0 && length != bytes) {
    throw ModelError("Initializer '" + t.name() + "' has " +
                     std::to_string(length) +
                     " bytes of external data where its shape needs " +
                     std::to_string(bytes) + ": the model is corrupt.");
  }
  std::ifstream in(location, std::ios::binary);
  if (in) in.seekg(offset);
  if (in && bytes > 0) in.read(static_cast<char*>(out), bytes);
  if (!in) {
    throw ModelError("Cannot read " + std::to_string(bytes) +
                     " bytes at offset " + std::to_string(offset) + " of '" +
                     location + "', the external data of initializer '" +
                     t.name() + "': the file is missing or truncated.");
  }
}

// Whether the payload is in raw_data or an external file.
bool HasRaw(const pb::TensorProto& t) {
  return t.has_raw_data() || IsExternal(t);
}

template <typename T>
std::vector<T> FromRaw(const pb::TensorProto& t, int64_t n) {
  if (IsExternal(t)) {
    std::vector<T> out(static_cast<size_t>(n));
    ReadExternal(t, n * int64_t{sizeof(T)}, out.data());
    return out;
  }
  if (static_cast<int64_t>(t.raw_data().size()) != n * int64_t{sizeof(T)}) {
    throw ModelError("Initializer '" + t.name() + "' holds " +
                     std::to_string(t.raw_data().size()) +
                     " bytes of raw data where its shape needs " +
                     std::to_string(n * sizeof(T)) +
                     ": the model is truncated or corrupt.");
  }
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0) std::memcpy(out.data(), t.raw_data().data(), n * sizeof(T));
  return out;
}

void CheckCount(const pb::TensorProto& t, int64_t got, int64_t want) {
  if (got != want) {
    throw ModelError("Initializer '" + t.name() + "' holds " +
                     std::to_string(got) + " values where its shape needs " +
                     std::to_string(want) + ": the model is corrupt.");
  }
}

template <typename T>
pb::TensorProto MakeRaw(const std::string& name,
                        const std::vector<int64_t>& dims,
                        const std::vector<T>& values, int data_type) {
  pb::TensorProto t;
  t.set_name(name);
  t.set_data_type(data_type);
  for (int64_t d : dims) t.add_dims(d);
  t.set_raw_data(std::string(reinterpret_cast<const char*>(values.data()),
                             values.size() * sizeof(T)));
  return t;
}

}  // namespace

void InlineExternal(pb::TensorProto* tensor) {
  if (!IsExternal(*tensor)) return;
  const int64_t length = ParseOffset(*tensor, "length");
  if (length < 0) {
    throw ModelError("Initializer '" + tensor->name() +
                     "' is stored as external data without a length: the "
                     "model is corrupt.");
  }
  std::string payload(static_cast<size_t>(length), '\0');
  ReadExternal(*tensor, length, payload.data());
  tensor->clear_external_data();
  tensor->clear_data_location();
  tensor->set_raw_data(std::move(payload));
}

int64_t NumElements(const std::vector<int64_t>& dims) {
  return CheckedNumElements(dims, "A tensor");
}

std::vector<int64_t> Dims(const pb::TensorProto& tensor) {
  return std::vector<int64_t>(tensor.dims().begin(), tensor.dims().end());
}

bool PayloadReadable(const pb::TensorProto& t) {
  if (!IsExternal(t)) return true;
  const std::string location = ExternalEntry(t, "location");
  return !location.empty() && location[0] == '/';
}

std::vector<float> ToFloats(const pb::TensorProto& t) {
  const int64_t n =
      CheckedNumElements(Dims(t), "Initializer '" + t.name() + "'");
  switch (t.data_type()) {
    case pb::TensorProto::FLOAT: {
      if (HasRaw(t)) return FromRaw<float>(t, n);
      CheckCount(t, t.float_data_size(), n);
      return std::vector<float>(t.float_data().begin(), t.float_data().end());
    }
    case pb::TensorProto::DOUBLE: {
      std::vector<double> d;
      if (HasRaw(t)) {
        d = FromRaw<double>(t, n);
      } else {
        CheckCount(t, t.double_data_size(), n);
        d.assign(t.double_data().begin(), t.double_data().end());
      }
      return std::vector<float>(d.begin(), d.end());
    }
    case pb::TensorProto::FLOAT16: {
      std::vector<uint16_t> h;
      if (HasRaw(t)) {
        h = FromRaw<uint16_t>(t, n);
      } else {
        CheckCount(t, t.int32_data_size(), n);
        for (int32_t v : t.int32_data()) h.push_back(static_cast<uint16_t>(v));
      }
      std::vector<float> out(h.size());
      for (size_t i = 0; i < h.size(); ++i) out[i] = HalfToFloat(h[i]);
      return out;
    }
    default:
      throw UnsupportedModelError(
          "Initializer '" + t.name() + "' has data type " +
          std::to_string(t.data_type()) +
          " where a floating-point tensor was expected.");
  }
}

std::vector<int64_t> ToInt64s(const pb::TensorProto& t) {
  const int64_t n =
      CheckedNumElements(Dims(t), "Initializer '" + t.name() + "'");
  switch (t.data_type()) {
    case pb::TensorProto::INT64:
      if (HasRaw(t)) return FromRaw<int64_t>(t, n);
      CheckCount(t, t.int64_data_size(), n);
      return std::vector<int64_t>(t.int64_data().begin(), t.int64_data().end());
    case pb::TensorProto::INT32: {
      if (HasRaw(t)) {
        auto v = FromRaw<int32_t>(t, n);
        return std::vector<int64_t>(v.begin(), v.end());
      }
      CheckCount(t, t.int32_data_size(), n);
      return std::vector<int64_t>(t.int32_data().begin(), t.int32_data().end());
    }
    default:
      throw UnsupportedModelError("Initializer '" + t.name() +
                                  "' is not an integer tensor.");
  }
}

pb::TensorProto FloatTensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<float>& values) {
  return MakeRaw(name, dims, values, pb::TensorProto::FLOAT);
}
pb::TensorProto Int8Tensor(const std::string& name,
                           const std::vector<int64_t>& dims,
                           const std::vector<int8_t>& values) {
  return MakeRaw(name, dims, values, pb::TensorProto::INT8);
}
pb::TensorProto Uint8Tensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<uint8_t>& values) {
  return MakeRaw(name, dims, values, pb::TensorProto::UINT8);
}
pb::TensorProto Int16Tensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<int16_t>& values) {
  return MakeRaw(name, dims, values, pb::TensorProto::INT16);
}
pb::TensorProto Int4Tensor(const std::string& name,
                           const std::vector<int64_t>& dims,
                           const std::vector<int8_t>& values) {
  pb::TensorProto t;
  t.set_name(name);
  t.set_data_type(pb::TensorProto::INT4);
  for (int64_t d : dims) t.add_dims(d);
  std::string raw((values.size() + 1) / 2, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    const uint8_t nibble = static_cast<uint8_t>(values[i]) & 0x0F;
    raw[i / 2] = static_cast<char>(static_cast<uint8_t>(raw[i / 2]) |
                                   (i % 2 == 0 ? nibble : nibble << 4));
  }
  t.set_raw_data(std::move(raw));
  return t;
}
pb::TensorProto Int32Tensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<int32_t>& values) {
  return MakeRaw(name, dims, values, pb::TensorProto::INT32);
}

}  // namespace onnxquant
