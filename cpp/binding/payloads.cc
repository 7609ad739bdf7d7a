#include "payloads.h"

#include <fstream>

#include "onnxquant/error.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::binding {

void ExternalizePayloads(pb::ModelProto* model, const std::string& path,
                         int64_t threshold) {
  std::ofstream out;
  int64_t offset = 0;
  for (pb::TensorProto& t : *model->mutable_graph()->mutable_initializer()) {
    if (!t.has_raw_data() ||
        static_cast<int64_t>(t.raw_data().size()) < threshold) {
      continue;
    }
    if (!out.is_open()) {
      out.open(path, std::ios::binary | std::ios::app);
      out.seekp(0, std::ios::end);
      offset = static_cast<int64_t>(out.tellp());
    }
    const int64_t length = static_cast<int64_t>(t.raw_data().size());
    out.write(t.raw_data().data(), length);
    if (!out) {
      throw ModelError("Cannot write the payload of initializer '" + t.name() +
                       "' to '" + path + "' (is the disk full?).");
    }
    t.clear_raw_data();
    t.clear_external_data();
    t.set_data_location(pb::TensorProto::EXTERNAL);
    auto* entry = t.add_external_data();
    entry->set_key("location");
    entry->set_value(path);
    entry = t.add_external_data();
    entry->set_key("offset");
    entry->set_value(std::to_string(offset));
    entry = t.add_external_data();
    entry->set_key("length");
    entry->set_value(std::to_string(length));
    offset += length;
  }
  if (out.is_open()) {
    out.flush();
    if (!out) {
      throw ModelError("Cannot write tensor payloads to '" + path + "'.");
    }
  }
}

void InlinePayloads(pb::ModelProto* model) {
  for (pb::TensorProto& t : *model->mutable_graph()->mutable_initializer()) {
    InlineExternal(&t);
  }
}

}  // namespace onnxquant::binding
