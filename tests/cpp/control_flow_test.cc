// If, Loop and Scan bodies: planned, quantized and exposed for calibration
// like the main graph (plan.h, insert_qdq.h), and validated at entry.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "onnxquant/error.h"
#include "onnxquant/insert_qdq.h"
#include "onnxquant/kernel_checker.h"
#include "onnxquant/plan.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

pb::NodeProto* AddNode(pb::GraphProto* g, const std::string& op,
                       std::vector<std::string> in,
                       std::vector<std::string> out, const std::string& name) {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(name);
  for (auto& i : in) n->add_input(i);
  for (auto& o : out) n->add_output(o);
  return n;
}

void AddValue(google::protobuf::RepeatedPtrField<pb::ValueInfoProto>* values,
              const std::string& name, int type = pb::TensorProto::FLOAT) {
  auto* v = values->Add();
  v->set_name(name);
  v->mutable_type()->mutable_tensor_type()->set_elem_type(type);
}

// x[1,2,2,2] -> If(cond):
//   then: Conv(x, W outer) -> tc -> Relu -> tr (output)
//   else: MatMul(x, M inner) -> em (output)
// -> y
GraphBuilder IfModel() {
  GraphBuilder b;
  b.Input("x", {1, 2, 2, 2});
  b.Input("cond", {}, pb::TensorProto::BOOL);
  b.Output("y", {});
  b.Initializer("W", {2, 2, 1, 1}, {1.f, -0.5f, 0.25f, 2.f});
  pb::GraphProto then_g;
  then_g.set_name("then");
  AddNode(&then_g, "Conv", {"x", "W"}, {"tc"}, "t_conv");
  AddNode(&then_g, "Relu", {"tc"}, {"tr"}, "t_relu");
  AddValue(then_g.mutable_output(), "tr");
  pb::GraphProto else_g;
  else_g.set_name("else");
  *else_g.add_initializer() = FloatTensor("M", {2, 2}, {1.f, 2.f, 3.f, 4.f});
  AddNode(&else_g, "MatMul", {"x", "M"}, {"em"}, "e_mm");
  AddValue(else_g.mutable_output(), "em");
  auto* n = b.Node("If", {"cond"}, {"y"}, "branch");
  GraphBuilder::GraphAttr(n, "then_branch", then_g);
  GraphBuilder::GraphAttr(n, "else_branch", else_g);
  return b;
}

DtypeMap IfDtypes(const GraphBuilder& b) {
  DtypeMap d = b.Dtypes();
  for (const char* t : {"tc", "tr", "em", "M"}) d[t] = pb::TensorProto::FLOAT;
  return d;
}

const pb::GraphProto& Body(const pb::ModelProto& m, const std::string& node,
                           const std::string& attr) {
  for (const auto& n : m.graph().node()) {
    if (n.name() != node) continue;
    for (const auto& a : n.attribute()) {
      if (a.name() == attr) return a.g();
    }
  }
  ADD_FAILURE() << node << "." << attr;
  return m.graph();
}

bool Has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(ControlFlowPlan, QuantizesBothBranchesWithScopes) {
  GraphBuilder b = IfModel();
  const QuantPlan plan = MakePlan(b.Build(), IfDtypes(b), {});
  std::vector<std::string> then_nodes, else_nodes;
  for (const auto& q : plan.quantized_nodes) {
    if (q.scope == "branch.then_branch") then_nodes.push_back(q.node);
    if (q.scope == "branch.else_branch") else_nodes.push_back(q.node);
  }
  // The Relu writes the body's output, so it is not absorbed.
  EXPECT_EQ(then_nodes, (std::vector<std::string>{"t_conv", "t_relu"}));
  EXPECT_EQ(else_nodes, (std::vector<std::string>{"e_mm"}));
  // The outer-scope input x is quantized where each body reads it, and
  // calibrated once.
  EXPECT_EQ(std::count(plan.calibrated.begin(), plan.calibrated.end(), "x"),
            1);
  EXPECT_TRUE(Has(plan.calibrated, "tr"));
  EXPECT_TRUE(Has(plan.calibrated, "em"));
  EXPECT_EQ(plan.body_calibrated,
            (std::vector<std::string>{"tc", "tr", "em"}));
  int x_pairs = 0;
  for (const auto& q : plan.qdq) x_pairs += q.tensor == "x";
  EXPECT_EQ(x_pairs, 2);
}

TEST(ControlFlowPlan, UnreachedBodyStaysFloatWithReason) {
  GraphBuilder b = IfModel();
  QuantOptions options;
  options.unreached_tensors = {"em"};
  const QuantPlan plan = MakePlan(b.Build(), IfDtypes(b), options);
  for (const auto& q : plan.quantized_nodes) {
    EXPECT_NE(q.scope, "branch.else_branch") << q.node;
  }
  const auto f = std::find_if(
      plan.float_nodes.begin(), plan.float_nodes.end(),
      [](const FloatNode& n) { return n.node == "e_mm"; });
  ASSERT_NE(f, plan.float_nodes.end());
  EXPECT_NE(f->reason.find("no calibration sample ran body 'else_branch'"),
            std::string::npos)
      << f->reason;
  EXPECT_FALSE(Has(plan.calibrated, "em"));
  EXPECT_TRUE(Has(plan.calibrated, "tr"));
}

TEST(ControlFlowInsert, BodiesGetTheirOwnQdqAndWeights) {
  GraphBuilder b = IfModel();
  pb::ModelProto m = b.Build();
  const RangeMap ranges = {{"x", {-1.f, 1.f}}, {"tc", {-4.f, 4.f}},
                           {"tr", {0.f, 4.f}}, {"em", {-8.f, 8.f}}};
  const QuantizeReport report = InsertQdq(m, IfDtypes(b), {}, ranges);
  EXPECT_EQ(report.plan.quantized_nodes.size(), 3u);
  const pb::GraphProto& then_g = Body(m, "branch", "then_branch");
  int q = 0, dq = 0;
  const pb::NodeProto* conv = nullptr;
  for (const auto& n : then_g.node()) {
    q += n.op_type() == "QuantizeLinear";
    dq += n.op_type() == "DequantizeLinear";
    if (n.op_type() == "Conv") conv = &n;
  }
  EXPECT_EQ(q, 3);   // x where the body reads it, the Conv's and Relu's
  EXPECT_EQ(dq, 4);  // outputs; and the weight
  ASSERT_NE(conv, nullptr);
  EXPECT_NE(conv->input(0), "x");  // reads the dequantized copy
  EXPECT_NE(conv->input(1), "W");
  bool int8_weight = false;
  for (const auto& t : then_g.initializer()) {
    int8_weight = int8_weight || t.data_type() == pb::TensorProto::INT8;
  }
  EXPECT_TRUE(int8_weight);
  // The outer float weight, read by no one any more, is gone.
  for (const auto& t : m.graph().initializer()) EXPECT_NE(t.name(), "W");
  // The body's output name is still produced (by its DequantizeLinear).
  bool tr = false;
  for (const auto& n : then_g.node()) {
    for (const auto& o : n.output()) tr = tr || o == "tr";
  }
  EXPECT_TRUE(tr);
  ValidateModelForPlan(m);  // still a well-formed model
}

TEST(ControlFlowKernelCheck, BodyNodesAreJudgedByTheirWorstCase) {
  GraphBuilder b = IfModel();
  const RangeMap ranges = {{"x", {0.f, 1.f}}, {"tc", {-4.f, 4.f}},
                           {"tr", {0.f, 4.f}}, {"em", {-8.f, 8.f}}};
  KernelChecker checker(b.Build(), IfDtypes(b), {}, ranges);
  // Weighted nodes of both branches are checked, but their inputs are not
  // replayed: the checker asks for none.
  std::vector<std::string> nodes;
  for (const auto& r : checker.results()) {
    nodes.push_back(r.node);
    EXPECT_TRUE(r.in_body) << r.node;
  }
  EXPECT_EQ(nodes, (std::vector<std::string>{"t_conv", "e_mm"}));
  EXPECT_TRUE(checker.Inputs().empty());
  // W's second output channel pairs codes 16 and 127 (|sum| 143 >= 129): its
  // worst case saturates, so the conservative rule narrows that channel.
  const auto qmax = checker.ChannelQmax(/*bound_unobserved=*/true, 0.0);
  ASSERT_TRUE(qmax.count("t_conv"));
  EXPECT_EQ(qmax.at("t_conv")[0], 127);
  EXPECT_LT(qmax.at("t_conv")[1], 127);
  EXPECT_TRUE(checker.ChannelQmax(/*bound_unobserved=*/false, 0.0).empty());
}

TEST(ControlFlowExpose, IfBranchTensorThreadedOutWithEmptyOtherBranch) {
  GraphBuilder b = IfModel();
  pb::ModelProto m = b.Build();
  const auto outputs = ExposeTensors(m, {"x", "tc"}, IfDtypes(b));
  ASSERT_EQ(outputs.size(), 2u);
  EXPECT_EQ(outputs[0], "x");
  EXPECT_NE(outputs[1], "tc");  // a new name in the main graph
  const auto& main = m.graph();
  EXPECT_EQ(main.output(main.output_size() - 1).name(), outputs[1]);
  const pb::NodeProto& if_node = main.node(0);
  ASSERT_EQ(if_node.output_size(), 2);
  EXPECT_EQ(if_node.output(1), outputs[1]);
  const auto& then_g = Body(m, "branch", "then_branch");
  const auto& else_g = Body(m, "branch", "else_branch");
  ASSERT_EQ(then_g.output_size(), 2);
  ASSERT_EQ(else_g.output_size(), 2);
  const pb::NodeProto& id = then_g.node(then_g.node_size() - 1);
  EXPECT_EQ(id.op_type(), "Identity");
  EXPECT_EQ(id.input(0), "tc");
  EXPECT_EQ(id.output(0), then_g.output(1).name());
  const pb::NodeProto& none = else_g.node(else_g.node_size() - 1);
  EXPECT_EQ(none.op_type(), "Constant");
  ASSERT_EQ(none.attribute(0).t().dims_size(), 1);
  EXPECT_EQ(none.attribute(0).t().dims(0), 0);  // no values
  ValidateModel(m);
}

TEST(ControlFlowExpose, ScanTensorBecomesAScanOutput) {
  GraphBuilder b;
  b.Input("xs", {3, 1, 2});
  b.Output("h_last", {1, 2});
  b.Initializer("h0", {1, 2}, {0.f, 0.f});
  pb::GraphProto body;
  body.set_name("step");
  AddValue(body.mutable_input(), "h");
  AddValue(body.mutable_input(), "x_t");
  AddNode(&body, "Add", {"h", "x_t"}, {"s"}, "add");
  AddNode(&body, "Tanh", {"s"}, {"h_next"}, "tanh");
  AddValue(body.mutable_output(), "h_next");
  auto* scan = b.Node("Scan", {"h0", "xs"}, {"h_last"}, "scan");
  GraphBuilder::GraphAttr(scan, "body", body);
  GraphBuilder::IntAttr(scan, "num_scan_inputs", 1);
  GraphBuilder::IntsAttr(scan, "scan_output_axes", {});
  pb::ModelProto m = b.Build();
  DtypeMap d = b.Dtypes();
  d["s"] = pb::TensorProto::FLOAT;
  const auto outputs = ExposeTensors(m, {"s"}, d);
  const pb::NodeProto& n = m.graph().node(0);
  ASSERT_EQ(n.output_size(), 2);
  EXPECT_EQ(n.output(1), outputs[0]);
  EXPECT_EQ(Body(m, "scan", "body").output_size(), 2);
  for (const auto& a : n.attribute()) {
    if (a.name() == "scan_output_axes") EXPECT_EQ(a.ints_size(), 1);
  }
}

TEST(ControlFlowValidate, MalformedConvInsideABodyIsAModelError) {
  GraphBuilder b = IfModel();
  pb::ModelProto m = b.Build();
  // A scalar weight for the Conv in the then-branch.
  auto* w = m.mutable_graph()->mutable_initializer(0);
  *w = FloatTensor("W", {}, {1.f});
  try {
    ValidateModel(m);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    const std::string what = e.what();
    EXPECT_NE(what.find("t_conv"), std::string::npos) << what;
    EXPECT_NE(what.find("then_branch"), std::string::npos) << what;
  }
}

TEST(ControlFlowValidate, BodyReadingAnUnknownNameIsAModelError) {
  GraphBuilder b = IfModel();
  pb::ModelProto m = b.Build();
  auto* attr = m.mutable_graph()->mutable_node(0)->mutable_attribute(1);
  attr->mutable_g()->mutable_node(0)->set_input(0, "ghost");
  try {
    ValidateModel(m);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    EXPECT_NE(std::string(e.what()).find("ghost"), std::string::npos);
  }
}

}  // namespace
}  // namespace onnxquant
