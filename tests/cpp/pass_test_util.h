// Helpers for the tests of graph passes: reading a rewritten model back.
#ifndef ONNXQUANT_TESTS_PASS_TEST_UTIL_H_
#define ONNXQUANT_TESTS_PASS_TEST_UTIL_H_

#include <string>
#include <vector>

#include "onnxquant/model_io.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::testing {

// The input names of `node`, in order.
inline std::vector<std::string> Inputs(const pb::NodeProto& node) {
  return std::vector<std::string>(node.input().begin(), node.input().end());
}

// The op types of the main graph's nodes, in order.
inline std::vector<std::string> OpTypes(const pb::ModelProto& model) {
  std::vector<std::string> types;
  for (const auto& n : model.graph().node()) types.push_back(n.op_type());
  return types;
}

// The initializer `name`, or nullptr.
inline const pb::TensorProto* FindInitializer(const pb::ModelProto& model,
                                              const std::string& name) {
  for (const auto& t : model.graph().initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

// The node producing `tensor` in the main graph, or nullptr.
inline const pb::NodeProto* FindProducer(const pb::ModelProto& model,
                                         const std::string& tensor) {
  for (const auto& n : model.graph().node()) {
    for (const auto& o : n.output()) {
      if (o == tensor) return &n;
    }
  }
  return nullptr;
}

// The node named `name`, or nullptr.
inline const pb::NodeProto* FindNode(const pb::ModelProto& model,
                                     const std::string& name) {
  for (const auto& n : model.graph().node()) {
    if (n.name() == name) return &n;
  }
  return nullptr;
}

inline bool HasValueInfo(const pb::ModelProto& model, const std::string& name) {
  for (const auto& v : model.graph().value_info()) {
    if (v.name() == name) return true;
  }
  return false;
}

// A main-graph ValueInfo entry for `name` (float, shape unknown).
inline void AddValueInfo(pb::ModelProto* model, const std::string& name) {
  auto* v = model->mutable_graph()->add_value_info();
  v->set_name(name);
  v->mutable_type()->mutable_tensor_type()->set_elem_type(
      pb::TensorProto::FLOAT);
}

// A body graph with one node `op_type` reading the outer-scope tensor
// `outer` and producing its output `out`.
inline pb::GraphProto BodyReading(const std::string& outer,
                                  const std::string& out,
                                  const std::string& op_type = "Relu") {
  pb::GraphProto body;
  body.set_name("body_" + out);
  auto* n = body.add_node();
  n->set_op_type(op_type);
  n->add_input(outer);
  n->add_output(out);
  auto* o = body.add_output();
  o->set_name(out);
  o->mutable_type()->mutable_tensor_type()->set_elem_type(
      pb::TensorProto::FLOAT);
  return body;
}

}  // namespace onnxquant::testing

#endif  // ONNXQUANT_TESTS_PASS_TEST_UTIL_H_
