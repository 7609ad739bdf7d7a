#include "onnxquant/tensor_util.h"

#include <cstring>

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

template <typename T>
std::vector<T> FromRaw(const pb::TensorProto& t, int64_t n) {
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

void CheckNotExternal(const pb::TensorProto& t) {
  if (t.data_location() == pb::TensorProto::EXTERNAL) {
    throw UnsupportedModelError(
        "Initializer '" + t.name() +
        "' is stored as external data. Load the model with "
        "onnx.load(path) (which reads external data) and pass the "
        "ModelProto.");
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

int64_t NumElements(const std::vector<int64_t>& dims) {
  return CheckedNumElements(dims, "A tensor");
}

std::vector<int64_t> Dims(const pb::TensorProto& tensor) {
  return std::vector<int64_t>(tensor.dims().begin(), tensor.dims().end());
}

std::vector<float> ToFloats(const pb::TensorProto& t) {
  CheckNotExternal(t);
  const int64_t n =
      CheckedNumElements(Dims(t), "Initializer '" + t.name() + "'");
  switch (t.data_type()) {
    case pb::TensorProto::FLOAT: {
      if (t.has_raw_data()) return FromRaw<float>(t, n);
      CheckCount(t, t.float_data_size(), n);
      return std::vector<float>(t.float_data().begin(), t.float_data().end());
    }
    case pb::TensorProto::DOUBLE: {
      std::vector<double> d;
      if (t.has_raw_data()) {
        d = FromRaw<double>(t, n);
      } else {
        CheckCount(t, t.double_data_size(), n);
        d.assign(t.double_data().begin(), t.double_data().end());
      }
      return std::vector<float>(d.begin(), d.end());
    }
    case pb::TensorProto::FLOAT16: {
      std::vector<uint16_t> h;
      if (t.has_raw_data()) {
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
  CheckNotExternal(t);
  const int64_t n =
      CheckedNumElements(Dims(t), "Initializer '" + t.name() + "'");
  switch (t.data_type()) {
    case pb::TensorProto::INT64:
      if (t.has_raw_data()) return FromRaw<int64_t>(t, n);
      CheckCount(t, t.int64_data_size(), n);
      return std::vector<int64_t>(t.int64_data().begin(), t.int64_data().end());
    case pb::TensorProto::INT32: {
      if (t.has_raw_data()) {
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
pb::TensorProto Int32Tensor(const std::string& name,
                            const std::vector<int64_t>& dims,
                            const std::vector<int32_t>& values) {
  return MakeRaw(name, dims, values, pb::TensorProto::INT32);
}

}  // namespace onnxquant
