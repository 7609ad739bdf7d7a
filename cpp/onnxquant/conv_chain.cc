#include "onnxquant/conv_chain.h"

#include "onnxquant/tensor_util.h"

namespace onnxquant {

const pb::TensorProto* OwnFloatConstant(const GraphIndex& index,
                                        const pb::NodeProto& node, int slot) {
  if (node.input_size() <= slot || node.input(slot).empty()) return nullptr;
  const std::string& name = node.input(slot);
  const pb::TensorProto* t = index.Initializer(name);
  if (t == nullptr || index.IsGraphInput(name) || index.IsGraphOutput(name) ||
      index.Consumers(name).size() != 1 ||
      t->data_type() != pb::TensorProto::FLOAT || !PayloadReadable(*t)) {
    return nullptr;
  }
  return t;
}

int SoleReader(const GraphIndex& index, const std::string& tensor) {
  const auto& readers = index.Consumers(tensor);
  if (readers.size() != 1 || index.IsGraphOutput(tensor) ||
      index.ReadBySubgraph(tensor)) {
    return -1;
  }
  return readers[0];
}

}  // namespace onnxquant
