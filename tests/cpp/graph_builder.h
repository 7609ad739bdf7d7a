// A small builder of ONNX graphs for the engine's tests (the lite protobuf
// has no text format, so tests build their graphs here).
#ifndef ONNXQUANT_TESTS_GRAPH_BUILDER_H_
#define ONNXQUANT_TESTS_GRAPH_BUILDER_H_

#include <cstdint>
#include <initializer_list>
#include <string>
#include <unordered_map>
#include <vector>

#include "onnxquant/model_io.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant::testing {

class GraphBuilder {
 public:
  explicit GraphBuilder(int opset = 13) {
    model_.set_ir_version(8);
    auto* op = model_.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
    model_.mutable_graph()->set_name("test");
  }

  GraphBuilder& Input(const std::string& name, std::vector<int64_t> shape,
                      int elem_type = pb::TensorProto::FLOAT) {
    SetValueInfo(model_.mutable_graph()->add_input(), name, shape, elem_type);
    return *this;
  }
  GraphBuilder& Output(const std::string& name, std::vector<int64_t> shape,
                       int elem_type = pb::TensorProto::FLOAT) {
    SetValueInfo(model_.mutable_graph()->add_output(), name, shape, elem_type);
    return *this;
  }
  GraphBuilder& Initializer(const std::string& name, std::vector<int64_t> dims,
                            std::vector<float> values) {
    *model_.mutable_graph()->add_initializer() =
        FloatTensor(name, dims, values);
    return *this;
  }
  GraphBuilder& Int64Initializer(const std::string& name,
                                 std::vector<int64_t> dims,
                                 std::vector<int64_t> values) {
    auto* t = model_.mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(pb::TensorProto::INT64);
    for (auto d : dims) t->add_dims(d);
    for (auto v : values) t->add_int64_data(v);
    return *this;
  }
  // Adds a node; returns it so that the caller can add attributes.
  pb::NodeProto* Node(const std::string& op_type,
                      std::vector<std::string> inputs,
                      std::vector<std::string> outputs,
                      const std::string& name = "") {
    auto* n = model_.mutable_graph()->add_node();
    n->set_op_type(op_type);
    n->set_name(name.empty() ? op_type + "_" + std::to_string(
                                   model_.graph().node_size())
                             : name);
    for (auto& i : inputs) n->add_input(i);
    for (auto& o : outputs) n->add_output(o);
    return n;
  }

  static void IntAttr(pb::NodeProto* n, const std::string& name, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::INT);
    a->set_i(v);
  }
  static void FloatAttr(pb::NodeProto* n, const std::string& name, float v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::FLOAT);
    a->set_f(v);
  }
  static void IntsAttr(pb::NodeProto* n, const std::string& name,
                       std::vector<int64_t> v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::INTS);
    for (auto x : v) a->add_ints(x);
  }

  static void TensorAttr(pb::NodeProto* n, const std::string& name,
                         const pb::TensorProto& t) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::TENSOR);
    *a->mutable_t() = t;
  }

  static void StringAttr(pb::NodeProto* n, const std::string& name,
                         const std::string& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::STRING);
    a->set_s(v);
  }
  static void GraphAttr(pb::NodeProto* n, const std::string& name,
                        const pb::GraphProto& g) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::GRAPH);
    *a->mutable_g() = g;
  }

  // A dtype map (tensor name -> TensorProto.DataType) naming every tensor of
  // the main graph: inputs and outputs with their declared type,
  // initializers with theirs, other node outputs with `node_output_type`.
  std::unordered_map<std::string, int> Dtypes(
      int node_output_type = pb::TensorProto::FLOAT) const {
    std::unordered_map<std::string, int> m;
    const auto& g = model_.graph();
    for (const auto& n : g.node()) {
      for (const auto& o : n.output()) {
        if (!o.empty()) m[o] = node_output_type;
      }
    }
    for (const auto& t : g.initializer()) m[t.name()] = t.data_type();
    for (const auto& v : g.input()) {
      m[v.name()] = v.type().tensor_type().elem_type();
    }
    for (const auto& v : g.output()) {
      m[v.name()] = v.type().tensor_type().elem_type();
    }
    return m;
  }

  pb::ModelProto& model() { return model_; }
  pb::ModelProto Build() const { return model_; }

 private:
  static void SetValueInfo(pb::ValueInfoProto* vi, const std::string& name,
                           const std::vector<int64_t>& shape, int elem_type) {
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(elem_type);
    auto* s = tt->mutable_shape();
    for (auto d : shape) {
      if (d < 0) {
        s->add_dim()->set_dim_param("N");
      } else {
        s->add_dim()->set_dim_value(d);
      }
    }
  }

  pb::ModelProto model_;
};

// The weight of GemmMatMul's Gemm, [4, 3].
inline const std::vector<float>& GemmMatMulW1() {
  static const std::vector<float> w1 = {0.5f, -1.f, 0.25f, 2.f,  -0.75f, 0.125f,
                                        -1.5f, 1.f, 0.3f,  0.7f, -0.2f,  0.9f};
  return w1;
}

// x[batch, 4] -> Gemm(W1 [4,3], B1) -> h -> Relu -> r -> MatMul(W2 [3,2])
// -> y: one weighted node of each kind, for the tests of weight handling.
inline GraphBuilder GemmMatMul(int64_t batch) {
  GraphBuilder g;
  g.Input("x", {batch, 4}).Output("y", {batch, 2});
  g.Initializer("W1", {4, 3}, GemmMatMulW1());
  g.Initializer("B1", {3}, {0.1f, -0.2f, 0.3f});
  g.Initializer("W2", {3, 2}, {1.f, -0.5f, 0.25f, 0.75f, -2.f, 0.6f});
  g.Node("Gemm", {"x", "W1", "B1"}, {"h"}, "gemm");
  g.Node("Relu", {"h"}, {"r"}, "relu");
  g.Node("MatMul", {"r", "W2"}, {"y"}, "matmul");
  return g;
}

}  // namespace onnxquant::testing

#endif  // ONNXQUANT_TESTS_GRAPH_BUILDER_H_
