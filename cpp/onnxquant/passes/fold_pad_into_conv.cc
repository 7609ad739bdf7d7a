// fold_pad_into_conv: folds a Pad of zeros that only a Conv reads into the
// Conv's `pads`.
//
// Conv pads its input with zeros itself, so Conv(Pad(x)) with a constant-0
// Pad of the spatial axes equals Conv(x) with the two paddings added. ONNX
// Runtime does this fusion itself (PadFusion), but only when nothing
// separates the two nodes: in a quantized model a QuantizeLinear and a
// DequantizeLinear sit between them, ONNX Runtime has no rule that drops the
// Q/DQ around a Pad, and the Pad runs in float between integer kernels (op
// table, docs/architecture.md). TensorFlow exports write such explicit Pads.
//
// Requires: the Pad in mode constant, its pads a constant (an int64
// initializer not in graph.input, or the attribute before opset 11), no
// padding of the batch and channel axes, none negative, no `axes` input; its
// value absent or the float constant 0; its output read only by the Conv, as
// the Conv's data input, and neither a graph output nor read by a subgraph;
// the Conv's auto_pad NOTSET. The Pad and its constants go (the constants
// when nothing else reads them).
#include <string>
#include <unordered_set>
#include <vector>

#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/passes/passes.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::passes {
namespace {

std::string StringAttr(const pb::NodeProto& n, const std::string& name,
                       const std::string& def) {
  const pb::AttributeProto* a = FindAttribute(n, name);
  return a ? a->s() : def;
}

// The Pad's pads when they are constant, else empty.
std::vector<int64_t> ConstantPads(const GraphIndex& index,
                                  const pb::NodeProto& pad) {
  if (pad.input_size() > 1 && !pad.input(1).empty()) {
    const pb::TensorProto* t = index.Initializer(pad.input(1));
    if (t == nullptr || index.IsGraphInput(pad.input(1))) return {};
    if (t->data_type() != pb::TensorProto::INT64) return {};
    return ToInt64s(*t);
  }
  const pb::AttributeProto* a = FindAttribute(pad, "pads");
  if (a == nullptr) return {};
  return std::vector<int64_t>(a->ints().begin(), a->ints().end());
}

bool PadsWithZero(const GraphIndex& index, const pb::NodeProto& pad) {
  if (pad.input_size() > 2 && !pad.input(2).empty()) {
    const pb::TensorProto* v = index.Initializer(pad.input(2));
    if (v == nullptr || index.IsGraphInput(pad.input(2)) ||
        v->data_type() != pb::TensorProto::FLOAT) {
      return false;
    }
    const std::vector<float> values = ToFloats(*v);
    return values.size() == 1 && values[0] == 0.f;
  }
  return FloatAttribute(pad, "value", 0.f) == 0.f;
}

struct Fold {
  int pad = -1;
  int conv = -1;
  std::vector<int64_t> conv_pads;  // the Conv's new pads
};

// The fold of the Pad at `p` into its reader, if it can be done.
bool FindFold(const GraphIndex& index, int p, Fold* fold) {
  const pb::GraphProto& graph = index.graph();
  const pb::NodeProto& pad = graph.node(p);
  if (!IsOnnxOp(pad, "Pad") || pad.input_size() < 1 ||
      pad.output_size() != 1 || (pad.input_size() > 3 &&
                                 !pad.input(3).empty())) {
    return false;
  }
  if (StringAttr(pad, "mode", "constant") != "constant") return false;
  if (!PadsWithZero(index, pad)) return false;
  const std::vector<int64_t> pads = ConstantPads(index, pad);
  const int rank = static_cast<int>(pads.size()) / 2;
  if (rank < 3 || static_cast<int>(pads.size()) != 2 * rank) return false;
  for (int64_t v : pads) {
    if (v < 0) return false;
  }
  if (pads[0] != 0 || pads[1] != 0 || pads[rank] != 0 ||
      pads[rank + 1] != 0) {
    return false;
  }
  const std::string& out = pad.output(0);
  const std::vector<int>& readers = index.Consumers(out);
  if (readers.size() != 1 || index.IsGraphOutput(out) ||
      index.ReadBySubgraph(out)) {
    return false;
  }
  const pb::NodeProto& conv = graph.node(readers[0]);
  if (!IsOnnxOp(conv, "Conv") || conv.input_size() < 2 ||
      conv.input(0) != out) {
    return false;
  }
  for (int k = 1; k < conv.input_size(); ++k) {
    if (conv.input(k) == out) return false;
  }
  if (StringAttr(conv, "auto_pad", "NOTSET") != "NOTSET") return false;
  const int spatial = rank - 2;
  std::vector<int64_t> conv_pads(2 * spatial, 0);
  if (const pb::AttributeProto* a = FindAttribute(conv, "pads")) {
    if (a->ints_size() != 2 * spatial) return false;
    conv_pads.assign(a->ints().begin(), a->ints().end());
  }
  for (int k = 0; k < spatial; ++k) {
    conv_pads[k] += pads[2 + k];
    conv_pads[spatial + k] += pads[rank + 2 + k];
  }
  *fold = {p, readers[0], std::move(conv_pads)};
  return true;
}

void SetPads(const std::vector<int64_t>& pads, pb::NodeProto* conv) {
  pb::AttributeProto* attr = nullptr;
  for (auto& a : *conv->mutable_attribute()) {
    if (a.name() == "pads") attr = &a;
  }
  if (attr == nullptr) attr = conv->add_attribute();
  attr->Clear();
  attr->set_name("pads");
  attr->set_type(pb::AttributeProto::INTS);
  for (int64_t v : pads) attr->add_ints(v);
}

}  // namespace

bool FoldPadIntoConv(pb::ModelProto& model) {
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<Fold> folds;
  {
    GraphIndex index(*graph);
    for (int i = 0; i < graph->node_size(); ++i) {
      Fold fold;
      if (FindFold(index, i, &fold)) folds.push_back(std::move(fold));
    }
  }
  if (folds.empty()) return false;
  std::unordered_set<std::string> constants, outputs;
  std::vector<int> removed;
  for (const Fold& f : folds) {
    const pb::NodeProto& pad = graph->node(f.pad);
    for (int k = 1; k < pad.input_size(); ++k) constants.insert(pad.input(k));
    outputs.insert(pad.output(0));
    pb::NodeProto* conv = graph->mutable_node(f.conv);
    conv->set_input(0, pad.input(0));
    SetPads(f.conv_pads, conv);
    removed.push_back(f.pad);
  }
  RemoveNodes(removed, graph);
  DropValueInfo(outputs, graph);
  constants.erase("");
  RemoveUnusedInitializers(constants, graph);
  return true;
}

}  // namespace onnxquant::passes
