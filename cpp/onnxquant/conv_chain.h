// Graph queries shared by the passes that rescale Conv -> activation -> Conv
// chains in place (cross-layer equalization, high-bias absorption): which
// constants a node owns, and which node alone reads a tensor.
#ifndef ONNXQUANT_CONV_CHAIN_H_
#define ONNXQUANT_CONV_CHAIN_H_

#include <string>

#include "onnxquant/graph_index.h"
#include "onnxquant/model_io.h"

namespace onnxquant {

// The float32 initializer at input `slot` of `node` when only that node reads
// it (not a graph input or output either) and its payload is readable, so
// that a pass may rewrite it; else nullptr.
const pb::TensorProto* OwnFloatConstant(const GraphIndex& index,
                                        const pb::NodeProto& node, int slot);

// The single reader of `tensor` when it has exactly one and the tensor is
// neither a graph output nor read by a subgraph; else -1.
int SoleReader(const GraphIndex& index, const std::string& tensor);

}  // namespace onnxquant

#endif  // ONNXQUANT_CONV_CHAIN_H_
