#include "onnxquant/plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "graph_builder.h"
#include "onnxquant/error.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

// Adds Conv `name` (1x1, `cin` -> `cout` channels) reading `x`, writing `y`,
// with weight `name`_W and, when `bias`, bias `name`_B.
pb::NodeProto* AddConv(GraphBuilder& g, const std::string& name,
                       const std::string& x, const std::string& y,
                       int cin = 2, int cout = 2, bool bias = false) {
  std::vector<float> w(cin * cout, 0.5f);
  g.Initializer(name + "_W", {cout, cin, 1, 1}, w);
  std::vector<std::string> in = {x, name + "_W"};
  if (bias) {
    g.Initializer(name + "_B", {cout}, std::vector<float>(cout, 0.1f));
    in.push_back(name + "_B");
  }
  return g.Node("Conv", in, {y}, name);
}

QuantPlan Plan(GraphBuilder& g, const QuantOptions& options = {}) {
  return MakePlan(g.model(), g.Dtypes(), options);
}

// "tensor<-source" for each QDQ entry, in plan order.
std::vector<std::string> Qdq(const QuantPlan& p) {
  std::vector<std::string> out;
  for (const auto& q : p.qdq) out.push_back(q.tensor + "<-" + q.source);
  return out;
}

const QuantizedNode* Quantized(const QuantPlan& p, const std::string& node) {
  for (const auto& q : p.quantized_nodes) {
    if (q.node == node) return &q;
  }
  return nullptr;
}

const FloatNode* Floated(const QuantPlan& p, const std::string& node) {
  for (const auto& f : p.float_nodes) {
    if (f.node == node) return &f;
  }
  return nullptr;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

ErrorKind KindOf(const std::function<void()>& f, std::string* what) {
  try {
    f();
  } catch (const Error& e) {
    *what = e.what();
    return e.kind();
  }
  ADD_FAILURE() << "no error";
  return ErrorKind::kInternal;
}

// --- Relu / Clip absorption --------------------------------------------------

TEST(Plan, ReluAfterConvIsAbsorbed) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv1", "x", "c", 2, 2, /*bias=*/true);
  g.Node("Relu", {"c"}, {"r"}, "relu");
  AddConv(g, "conv2", "r", "y");
  const QuantPlan p = Plan(g);
  ASSERT_EQ(p.absorbed.size(), 1u);
  EXPECT_EQ(p.absorbed[0].node, "relu");
  EXPECT_EQ(p.absorbed[0].producer, "conv1");
  // The Conv's output range is the Relu's: c itself gets no QDQ.
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "r<-r", "y<-y"}));
  EXPECT_EQ(p.calibrated, (std::vector<std::string>{"x", "r", "y"}));
  ASSERT_EQ(p.quantized_nodes.size(), 2u);
  EXPECT_EQ(p.quantized_nodes[0].node, "conv1");
  EXPECT_EQ(p.quantized_nodes[0].weight_input, 1);
  EXPECT_EQ(p.quantized_nodes[0].weight_axis, 0);
  EXPECT_EQ(p.quantized_nodes[0].bias_input, 2);
  EXPECT_EQ(p.quantized_nodes[1].node, "conv2");
  EXPECT_EQ(p.quantized_nodes[1].bias_input, -1);
  EXPECT_TRUE(p.float_nodes.empty());
}

TEST(Plan, ReluNotAbsorbedWhenTheConvOutputHasTwoConsumers) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "c");
  g.Node("Relu", {"c"}, {"r"}, "relu");
  g.Node("Add", {"c", "r"}, {"y"}, "add");
  const QuantPlan p = Plan(g);
  EXPECT_TRUE(p.absorbed.empty());
  EXPECT_EQ(Qdq(p),
            (std::vector<std::string>{"x<-x", "c<-c", "r<-r", "y<-y"}));
  EXPECT_NE(Quantized(p, "relu"), nullptr);
}

TEST(Plan, ReluNotAbsorbedWhenItsOutputIsAGraphOutput) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "c");
  g.Node("Relu", {"c"}, {"y"}, "relu");
  const QuantPlan p = Plan(g);
  EXPECT_TRUE(p.absorbed.empty());
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c", "y<-y"}));
}

TEST(Plan, ClipFromZeroIsAbsorbedClipFromBelowZeroIsNot) {
  for (float lo : {0.f, -1.f}) {
    SCOPED_TRACE(lo);
    GraphBuilder g;
    g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
    g.Initializer("lo", {}, {lo}).Initializer("six", {}, {6.f});
    AddConv(g, "conv1", "x", "c");
    g.Node("Clip", {"c", "lo", "six"}, {"r"}, "clip");
    AddConv(g, "conv2", "r", "y");
    const QuantPlan p = Plan(g);
    EXPECT_EQ(p.absorbed.size(), lo == 0.f ? 1u : 0u);
  }
}

// --- Weight axes -------------------------------------------------------------

TEST(Plan, ConvTransposeAxisIsOneOrPerTensorWithGroups) {
  for (int group : {1, 2}) {
    SCOPED_TRACE(group);
    GraphBuilder g;
    g.Input("x", {1, 2, 4, 4}).Output("y", {1, 3 * group, 4, 4});
    // Weight [C_in, C_out / group, kH, kW].
    g.Initializer("W", {2, 3, 1, 1}, std::vector<float>(6, 1.f));
    pb::NodeProto* n = g.Node("ConvTranspose", {"x", "W"}, {"y"}, "ct");
    GraphBuilder::IntAttr(n, "group", group);
    const QuantPlan p = Plan(g);
    ASSERT_NE(Quantized(p, "ct"), nullptr);
    EXPECT_EQ(Quantized(p, "ct")->weight_input, 1);
    EXPECT_EQ(Quantized(p, "ct")->weight_axis, group == 1 ? 1 : -1);
  }
}

TEST(Plan, GemmAxisFollowsTransB) {
  for (int trans_b : {0, 1}) {
    SCOPED_TRACE(trans_b);
    GraphBuilder g;
    g.Input("x", {1, 4}).Output("y", {1, 3});
    // transB = 0: W is [K, N] = [4, 3]; transB = 1: W is [N, K] = [3, 4].
    g.Initializer("W", trans_b ? std::vector<int64_t>{3, 4}
                               : std::vector<int64_t>{4, 3},
                  std::vector<float>(12, 1.f));
    g.Initializer("C", {3}, {1.f, 2.f, 3.f});
    pb::NodeProto* n = g.Node("Gemm", {"x", "W", "C"}, {"y"}, "gemm");
    GraphBuilder::IntAttr(n, "transB", trans_b);
    const QuantPlan p = Plan(g);
    ASSERT_NE(Quantized(p, "gemm"), nullptr);
    EXPECT_EQ(Quantized(p, "gemm")->weight_axis, trans_b ? 0 : 1);
    EXPECT_EQ(Quantized(p, "gemm")->bias_input, 2);
  }
}

TEST(Plan, GemmWithBetaKeepsBiasFloat) {
  GraphBuilder g;
  g.Input("x", {1, 4}).Output("y", {1, 3});
  g.Initializer("W", {4, 3}, std::vector<float>(12, 1.f));
  g.Initializer("C", {3}, {1.f, 2.f, 3.f});
  pb::NodeProto* n = g.Node("Gemm", {"x", "W", "C"}, {"y"}, "gemm");
  GraphBuilder::FloatAttr(n, "beta", 0.5f);
  const QuantPlan p = Plan(g);
  ASSERT_NE(Quantized(p, "gemm"), nullptr);
  EXPECT_EQ(Quantized(p, "gemm")->bias_input, -1);
}

TEST(Plan, MatMulConstantBUsesTheLastAxis) {
  for (int rank : {2, 3}) {
    SCOPED_TRACE(rank);
    GraphBuilder g;
    g.Input("x", {2, 1, 4}).Output("y", {2, 1, 3});
    g.Initializer("B", rank == 2 ? std::vector<int64_t>{4, 3}
                                 : std::vector<int64_t>{2, 4, 3},
                  std::vector<float>(rank == 2 ? 12 : 24, 1.f));
    g.Node("MatMul", {"x", "B"}, {"y"}, "mm");
    const QuantPlan p = Plan(g);
    ASSERT_NE(Quantized(p, "mm"), nullptr);
    EXPECT_EQ(Quantized(p, "mm")->weight_input, 1);
    EXPECT_EQ(Quantized(p, "mm")->weight_axis, rank - 1);
    // y is a graph output only: float by default (float_outputs).
    EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x"}));
  }
}

// A Gemm or MatMul whose output is a graph output and nothing else writes it
// float (ONNX Runtime's QGemm / MatMulIntegerToFloat); with another reader,
// in a Conv, or with float_outputs off, the output is quantized.
TEST(Plan, GraphOutputOfGemmOrMatMulStaysFloat) {
  for (const char* op : {"Gemm", "MatMul", "Conv"}) {
    for (bool option : {true, false}) {
      for (bool reader : {false, true}) {
        SCOPED_TRACE(std::string(op) + (option ? " on" : " off") +
                     (reader ? " read" : ""));
        GraphBuilder g;
        const bool conv = std::string(op) == "Conv";
        g.Input("x", conv ? std::vector<int64_t>{1, 2, 4, 4}
                          : std::vector<int64_t>{1, 2});
        g.Output("y", conv ? std::vector<int64_t>{1, 2, 4, 4}
                           : std::vector<int64_t>{1, 2});
        if (conv) {
          AddConv(g, "op", "x", "y");
        } else {
          g.Initializer("W", {2, 2}, {1.f, 2.f, 3.f, 4.f});
          g.Node(op, {"x", "W"}, {"y"}, "op");
        }
        if (reader) {
          g.Output("r", conv ? std::vector<int64_t>{1, 2, 4, 4}
                             : std::vector<int64_t>{1, 2});
          g.Node("Relu", {"y"}, {"r"}, "relu");
        }
        QuantOptions options;
        options.float_outputs = option;
        const QuantPlan p = Plan(g, options);
        ASSERT_NE(Quantized(p, "op"), nullptr);
        const auto qdq = Qdq(p);
        const bool quantized =
            std::find(qdq.begin(), qdq.end(), "y<-y") != qdq.end();
        EXPECT_EQ(quantized, conv || !option || reader);
      }
    }
  }
}

TEST(Plan, PerChannelOffGivesPerTensorWeights) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 3});
  AddConv(g, "conv", "x", "c");
  g.Node("Flatten", {"c"}, {"f"}, "flat");
  g.Initializer("W", {32, 3}, std::vector<float>(96, 1.f));
  g.Node("Gemm", {"f", "W"}, {"g"}, "gemm");
  g.Initializer("B", {3, 3}, std::vector<float>(9, 1.f));
  g.Node("MatMul", {"g", "B"}, {"y"}, "mm");
  QuantOptions o;
  o.per_channel = false;
  const QuantPlan p = Plan(g, o);
  for (const char* name : {"conv", "gemm", "mm"}) {
    ASSERT_NE(Quantized(p, name), nullptr) << name;
    EXPECT_EQ(Quantized(p, name)->weight_input, 1) << name;
    EXPECT_EQ(Quantized(p, name)->weight_axis, -1) << name;
  }
}

// --- Shared parameters -------------------------------------------------------

TEST(Plan, MaxPoolAndReshapeShareTheirInputsSource) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 2, 2});
  g.Int64Initializer("shape", {4}, {1, 2, 2, 2});
  AddConv(g, "conv1", "x", "c");
  g.Node("MaxPool", {"c"}, {"m"}, "pool");
  g.Node("Reshape", {"m", "shape"}, {"s"}, "reshape");
  AddConv(g, "conv2", "s", "y");
  const QuantPlan p = Plan(g);
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c", "m<-c", "s<-c",
                                              "y<-y"}));
  // m and s reuse c's range: they are not calibrated.
  EXPECT_EQ(p.calibrated, (std::vector<std::string>{"x", "c", "y"}));
  EXPECT_NE(Quantized(p, "pool"), nullptr);
  EXPECT_NE(Quantized(p, "reshape"), nullptr);
}

TEST(Plan, ConcatInputsTakeTheConcatOutputAsSource) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv1", "x", "a");
  AddConv(g, "conv2", "x", "b");
  pb::NodeProto* cat = g.Node("Concat", {"a", "b"}, {"cat"}, "concat");
  GraphBuilder::IntAttr(cat, "axis", 1);
  AddConv(g, "conv3", "cat", "y", 4, 2);
  const QuantPlan p = Plan(g);
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "a<-cat", "b<-cat",
                                              "cat<-cat", "y<-y"}));
  EXPECT_EQ(p.calibrated, (std::vector<std::string>{"x", "cat", "y"}));
}

TEST(Plan, ConcatInputWithAnotherConsumerKeepsItsOwnSource) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4});
  g.Output("y", {1, 2, 4, 4}).Output("a", {1, 2, 4, 4});
  AddConv(g, "conv1", "x", "a");
  AddConv(g, "conv2", "x", "b");
  pb::NodeProto* cat = g.Node("Concat", {"a", "b"}, {"cat"}, "concat");
  GraphBuilder::IntAttr(cat, "axis", 1);
  AddConv(g, "conv3", "cat", "y", 4, 2);
  const QuantPlan p = Plan(g);
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "a<-a", "b<-cat",
                                              "cat<-cat", "y<-y"}));
}

// --- Patterns and float ops --------------------------------------------------

TEST(Plan, SiluKeepsSigmoidFloatAndQuantizesTheMulOutputOnly) {
  for (bool sigmoid_first : {false, true}) {
    SCOPED_TRACE(sigmoid_first);
    GraphBuilder g;
    g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
    AddConv(g, "conv1", "x", "c");
    g.Node("Sigmoid", {"c"}, {"s"}, "sigmoid");
    g.Node("Mul", sigmoid_first ? std::vector<std::string>{"s", "c"}
                                : std::vector<std::string>{"c", "s"},
           {"m"}, "mul");
    AddConv(g, "conv2", "m", "y");
    const QuantPlan p = Plan(g);
    ASSERT_NE(Floated(p, "sigmoid"), nullptr);
    EXPECT_TRUE(Contains(Floated(p, "sigmoid")->reason, "SiLU"))
        << Floated(p, "sigmoid")->reason;
    ASSERT_NE(Quantized(p, "mul"), nullptr);
    // No QDQ between the Sigmoid and the Mul; the Mul's output has one.
    EXPECT_EQ(Qdq(p),
              (std::vector<std::string>{"x<-x", "c<-c", "m<-m", "y<-y"}));
  }
}

TEST(Plan, SigmoidAloneIsFloat) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "c");
  g.Node("Sigmoid", {"c"}, {"y"}, "sigmoid");
  const QuantPlan p = Plan(g);
  ASSERT_NE(Floated(p, "sigmoid"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "sigmoid")->reason, "Sigmoid"));
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c"}));
}

TEST(Plan, DecomposedGeluStaysFloat) {
  // x * 0.5 * (1 + erf(x / sqrt2)), with the 0.5 applied last or first.
  for (bool half_first : {false, true}) {
    SCOPED_TRACE(half_first);
    GraphBuilder g;
    g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
    g.Initializer("sqrt2", {}, {1.4142135f});
    g.Initializer("one", {}, {1.f}).Initializer("half", {}, {0.5f});
    AddConv(g, "conv1", "x", "c");
    g.Node("Div", {"c", "sqrt2"}, {"d"}, "div");
    g.Node("Erf", {"d"}, {"e"}, "erf");
    g.Node("Add", {"e", "one"}, {"a"}, "add");
    if (half_first) {
      g.Node("Mul", {"c", "half"}, {"h"}, "mul1");
      g.Node("Mul", {"h", "a"}, {"gelu"}, "mul2");
    } else {
      g.Node("Mul", {"c", "a"}, {"h"}, "mul1");
      g.Node("Mul", {"h", "half"}, {"gelu"}, "mul2");
    }
    AddConv(g, "conv2", "gelu", "y");
    const QuantPlan p = Plan(g);
    for (const char* name : {"div", "erf", "add", "mul1", "mul2"}) {
      ASSERT_NE(Floated(p, name), nullptr) << name;
      EXPECT_TRUE(Contains(Floated(p, name)->reason, "GELU"))
          << name << ": " << Floated(p, name)->reason;
    }
    EXPECT_EQ(Qdq(p),
              (std::vector<std::string>{"x<-x", "c<-c", "gelu<-gelu", "y<-y"}));
  }
}

// x / max(x * x, eps), the divisor through a Reshape: every node that only
// computes the divisor stays float, so the divisor is never rounded.
TEST(Plan, NodesComputingOnlyADivisorStayFloat) {
  for (bool shared : {false, true}) {
    SCOPED_TRACE(shared);
    GraphBuilder g;
    g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
    if (shared) g.Output("z", {1, 2, 4, 4});
    g.Initializer("eps", {}, {1e-6f}).Initializer("big", {}, {1e6f});
    g.Int64Initializer("shape", {4}, {1, 2, 4, 4});
    AddConv(g, "conv1", "x", "c");
    g.Node("Mul", {"c", "c"}, {"m"}, "mul");
    g.Node("Clip", {"m", "eps", "big"}, {"k"}, "clip");
    g.Node("Reshape", {"k", "shape"}, {"e"}, "reshape");
    g.Node("Div", {"c", "e"}, {"d"}, "div");
    AddConv(g, "conv2", "d", "y");
    if (shared) AddConv(g, "conv3", "k", "z");  // the Clip's output feeds a Conv too
    const QuantPlan p = Plan(g);
    if (!shared) {
      for (const char* name : {"mul", "clip", "reshape"}) {
        ASSERT_NE(Floated(p, name), nullptr) << name;
        EXPECT_TRUE(Contains(Floated(p, name)->reason, "divisor of a Div"))
            << name << ": " << Floated(p, name)->reason;
      }
      EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c", "d<-d", "y<-y"}));
    } else {
      EXPECT_NE(Quantized(p, "clip"), nullptr);
      EXPECT_NE(Quantized(p, "mul"), nullptr);
      ASSERT_NE(Floated(p, "reshape"), nullptr);
      EXPECT_TRUE(Contains(Floated(p, "reshape")->reason, "divisor of a Div"));
    }
  }
}

TEST(Plan, SoftmaxIsFloatWithAReason) {
  GraphBuilder g;
  g.Input("x", {1, 4}).Output("y", {1, 3});
  g.Initializer("W", {4, 3}, std::vector<float>(12, 1.f));
  g.Node("MatMul", {"x", "W"}, {"l"}, "mm");
  g.Node("Softmax", {"l"}, {"y"}, "softmax");
  const QuantPlan p = Plan(g);
  ASSERT_NE(Floated(p, "softmax"), nullptr);
  EXPECT_EQ(Floated(p, "softmax")->op_type, "Softmax");
  EXPECT_TRUE(Contains(Floated(p, "softmax")->reason, "Softmax"));
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "l<-l"}));
}

TEST(Plan, TanhGeluStaysFloat) {
  // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), as GPT-2's exporter
  // writes it (the 0.5 * x first), and with the 0.5 last.
  for (bool half_first : {true, false}) {
    SCOPED_TRACE(half_first);
    GraphBuilder g;
    g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
    g.Initializer("three", {}, {3.f}).Initializer("c", {}, {0.044715f});
    g.Initializer("s", {}, {0.7978846f}).Initializer("one", {}, {1.f});
    g.Initializer("half", {}, {0.5f});
    AddConv(g, "conv1", "x", "v");
    g.Node("Pow", {"v", "three"}, {"p"}, "pow");
    g.Node("Mul", {"p", "c"}, {"pc"}, "cube");
    g.Node("Add", {"v", "pc"}, {"inner"}, "inner_add");
    g.Node("Mul", {"inner", "s"}, {"scaled"}, "scale");
    g.Node("Tanh", {"scaled"}, {"t"}, "tanh");
    g.Node("Add", {"t", "one"}, {"a"}, "add1");
    if (half_first) {
      g.Node("Mul", {"v", "half"}, {"h"}, "mul1");
      g.Node("Mul", {"h", "a"}, {"gelu"}, "mul2");
    } else {
      g.Node("Mul", {"v", "a"}, {"h"}, "mul1");
      g.Node("Mul", {"h", "half"}, {"gelu"}, "mul2");
    }
    AddConv(g, "conv2", "gelu", "y");
    const QuantPlan p = Plan(g);
    for (const char* name :
         {"pow", "cube", "inner_add", "scale", "tanh", "add1", "mul1", "mul2"}) {
      ASSERT_NE(Floated(p, name), nullptr) << name;
      EXPECT_TRUE(Contains(Floated(p, name)->reason, "GELU"))
          << name << ": " << Floated(p, name)->reason;
    }
    EXPECT_EQ(Qdq(p),
              (std::vector<std::string>{"x<-x", "v<-v", "gelu<-gelu", "y<-y"}));
  }
}

TEST(Plan, UnknownOpIsFloatAndOtherSubgraphsAreNoted) {
  GraphBuilder g;
  g.Input("x", {4}).Input("cond", {}, pb::TensorProto::BOOL);
  g.Input("seq", {4});
  g.Output("y", {4}).Output("r", {4}).Output("mapped", {4});
  g.Node("Cos", {"x"}, {"y"}, "cos");
  pb::GraphProto body;
  body.set_name("b");
  auto* id = body.add_node();
  id->set_op_type("Identity");
  id->add_input("x");
  id->add_output("bx");
  body.add_output()->set_name("bx");
  pb::NodeProto* iff = g.Node("If", {"cond"}, {"r"}, "if");
  GraphBuilder::GraphAttr(iff, "then_branch", body);
  GraphBuilder::GraphAttr(iff, "else_branch", body);
  // Bodies of ops other than If, Loop and Scan are left alone, with a note.
  pb::NodeProto* map = g.Node("SequenceMap", {"seq"}, {"mapped"}, "map");
  GraphBuilder::GraphAttr(map, "body", body);
  const QuantPlan p = Plan(g);
  ASSERT_NE(Floated(p, "cos"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "cos")->reason, "Cos"));
  ASSERT_NE(Floated(p, "if"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "if")->reason, "control flow"));
  ASSERT_NE(Floated(p, "map"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "map")->reason, "only If, Loop and Scan"));
  EXPECT_EQ(p.notes.size(), 1u);
  EXPECT_TRUE(p.qdq.empty());
}

// --- Options -----------------------------------------------------------------

TEST(Plan, ExcludedNodeStaysFloat) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv1", "x", "c");
  AddConv(g, "conv2", "c", "y");
  QuantOptions o;
  o.exclude_nodes = {"conv2"};
  const QuantPlan p = Plan(g, o);
  ASSERT_NE(Floated(p, "conv2"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "conv2")->reason, "exclude"));
  EXPECT_EQ(Quantized(p, "conv2"), nullptr);
  EXPECT_NE(Quantized(p, "conv1"), nullptr);
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c"}));
}

TEST(Plan, MaskNodeStaysFloatWithItsOwnReason) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv1", "x", "c");
  AddConv(g, "conv2", "c", "y");
  QuantOptions o;
  o.mask_nodes = {"conv2"};
  const QuantPlan p = Plan(g, o);
  ASSERT_NE(Floated(p, "conv2"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "conv2")->reason, "attention mask"));
  EXPECT_FALSE(Contains(Floated(p, "conv2")->reason, "user"));
  EXPECT_EQ(Quantized(p, "conv2"), nullptr);
  EXPECT_NE(Quantized(p, "conv1"), nullptr);
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c"}));
  o.mask_nodes = {"no_such_node"};
  std::string what;
  EXPECT_EQ(KindOf([&] { Plan(g, o); }, &what), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(Contains(what, "no_such_node")) << what;
}

TEST(Plan, KernelFloatNodesStayFloatWithTheirOwnReason) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv1", "x", "c");
  AddConv(g, "conv2", "c", "y");
  QuantOptions o;
  o.kernel_float_nodes = {"conv1"};
  const QuantPlan p = Plan(g, o);
  ASSERT_NE(Floated(p, "conv1"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "conv1")->reason, "kernel_remedy='float'"));
  EXPECT_FALSE(Contains(Floated(p, "conv1")->reason, "user"));
  EXPECT_EQ(Quantized(p, "conv1"), nullptr);
  EXPECT_NE(Quantized(p, "conv2"), nullptr);
  o.kernel_float_nodes = {"no_such_node"};
  std::string what;
  EXPECT_EQ(KindOf([&] { Plan(g, o); }, &what), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(Contains(what, "no_such_node")) << what;
}

TEST(Plan, ExcludingAnUnknownNodeThrowsNamingIt) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv1", "x", "y");
  QuantOptions o;
  o.exclude_nodes = {"conv1", "no_such_node"};
  std::string what;
  EXPECT_EQ(KindOf([&] { Plan(g, o); }, &what), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(Contains(what, "no_such_node")) << what;
}

TEST(Plan, OpTypesLimitWhatIsQuantized) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  g.Initializer("k", {1}, {0.25f});
  AddConv(g, "conv", "x", "c");
  g.Node("Add", {"c", "k"}, {"y"}, "add");
  QuantOptions o;
  o.op_types = {"Conv"};
  const QuantPlan p = Plan(g, o);
  EXPECT_NE(Quantized(p, "conv"), nullptr);
  ASSERT_NE(Floated(p, "add"), nullptr);
  EXPECT_TRUE(Contains(Floated(p, "add")->reason, "op_types"));
  EXPECT_TRUE(p.constants.empty());
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c"}));

  // Without the filter the Add is quantized, its constant from its values.
  const QuantPlan all = Plan(g);
  EXPECT_NE(Quantized(all, "add"), nullptr);
  ASSERT_EQ(all.constants.size(), 1u);
  EXPECT_EQ(all.constants[0].tensor, "k");
  EXPECT_EQ(all.constants[0].min, 0.f);  // the range contains 0
  EXPECT_EQ(all.constants[0].max, 0.25f);
}

TEST(Plan, OpTypesNamingAFloatOrUnknownOpThrow) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "y");
  for (const char* op : {"Softmax", "Frobnicate"}) {
    QuantOptions o;
    o.op_types = {"Conv", op};
    std::string what;
    EXPECT_EQ(KindOf([&] { Plan(g, o); }, &what), ErrorKind::kInvalidArgument);
    EXPECT_TRUE(Contains(what, op)) << what;
  }
}

TEST(Plan, ActivationMatMulQuantizesBothInputsOrStaysFloat) {
  GraphBuilder g;
  g.Input("q", {1, 4, 8}).Input("k", {1, 8, 4}).Output("s", {1, 4, 4});
  g.Node("MatMul", {"q", "k"}, {"s"}, "attn");
  const QuantPlan p = Plan(g);
  ASSERT_NE(Quantized(p, "attn"), nullptr);
  EXPECT_EQ(Quantized(p, "attn")->weight_input, -1);
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"q<-q", "k<-k", "s<-s"}));

  QuantOptions o;
  o.quantize_activation_matmul = false;
  const QuantPlan f = Plan(g, o);
  ASSERT_NE(Floated(f, "attn"), nullptr);
  EXPECT_FALSE(Floated(f, "attn")->reason.empty());
  EXPECT_TRUE(f.qdq.empty());
  EXPECT_TRUE(f.calibrated.empty());
}

// --- Model checks ------------------------------------------------------------

TEST(Plan, Opset12Throws) {
  GraphBuilder g(12);
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "y");
  std::string what;
  EXPECT_EQ(KindOf([&] { Plan(g); }, &what), ErrorKind::kUnsupportedModel);
  EXPECT_TRUE(Contains(what, "12")) << what;
}

TEST(Plan, AlreadyQuantizedModelThrows) {
  GraphBuilder g;
  g.Input("x", {4}).Output("y", {4});
  g.Initializer("s", {}, {0.1f});
  g.Node("QuantizeLinear", {"x", "s"}, {"xq"}, "q");
  g.Node("DequantizeLinear", {"xq", "s"}, {"y"}, "dq");
  std::string what;
  EXPECT_EQ(KindOf([&] { Plan(g); }, &what), ErrorKind::kUnsupportedModel);
  EXPECT_TRUE(Contains(what, "already quantized")) << what;
}

// --- Types -------------------------------------------------------------------

TEST(Plan, NonFloatTensorsAreNotQuantized) {
  GraphBuilder g;
  g.Input("ids", {2}, pb::TensorProto::INT64).Input("x", {5, 3});
  g.Output("j", {2}, pb::TensorProto::INT64).Output("y", {2, 3});
  g.Int64Initializer("one", {1}, {1});
  g.Node("Add", {"ids", "one"}, {"j"}, "add");  // INT64
  g.Node("Gather", {"x", "j"}, {"gx"}, "gather");
  g.Initializer("W", {3, 3}, std::vector<float>(9, 1.f));
  g.Node("MatMul", {"gx", "W"}, {"y"}, "mm");
  DtypeMap dtypes = g.Dtypes();
  dtypes["j"] = pb::TensorProto::INT64;
  const QuantPlan p = MakePlan(g.model(), dtypes, {});
  ASSERT_NE(Floated(p, "add"), nullptr);
  // The Gather shares x's parameters; its INT64 indices get no QDQ.
  // y, the MatMul's graph output, stays float (float_outputs).
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "gx<-x"}));
  EXPECT_EQ(p.calibrated, (std::vector<std::string>{"x"}));
}

TEST(Plan, TensorsMissingFromTheDtypeMapAreNotQuantized) {
  GraphBuilder g;
  g.Input("x", {1, 2}).Input("z", {1, 2}).Output("y", {1, 2});
  g.Node("Add", {"x", "z"}, {"y"}, "add");
  DtypeMap dtypes = g.Dtypes();
  dtypes.erase("z");
  const QuantPlan p = MakePlan(g.model(), dtypes, {});
  EXPECT_NE(Floated(p, "add"), nullptr);
  EXPECT_TRUE(p.qdq.empty());
}

}  // namespace
}  // namespace onnxquant

namespace onnxquant {
namespace {

// --- Float ops between quantized neighbours ----------------------------------

// conv -> Sigmoid -> Mul(conv output, gate): the squeeze-and-excitation gate.
GraphBuilder GateGraph(bool gate_is_output) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  if (gate_is_output) g.Output("s", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "c");
  g.Node("Sigmoid", {"c"}, {"s"}, "sigmoid");
  g.Node("Mul", {"x", gate_is_output ? "c" : "s"}, {"y"}, "mul");
  return g;
}

TEST(Plan, SigmoidBetweenQuantizedTensorsIsQuantized) {
  // Its input (the Conv's output) and its output (the Mul's input) both get
  // Q/DQ: ONNX Runtime runs it as QLinearSigmoid, and the plan says so.
  GraphBuilder g = GateGraph(false);
  const QuantPlan p = Plan(g);
  EXPECT_NE(Quantized(p, "sigmoid"), nullptr);
  EXPECT_EQ(Floated(p, "sigmoid"), nullptr);
}

TEST(Plan, SigmoidWithAFloatOutputStaysFloat) {
  GraphBuilder g = GateGraph(true);
  const QuantPlan p = Plan(g);
  const FloatNode* f = Floated(p, "sigmoid");
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(Contains(f->reason, "sensitive"));
  for (const auto& q : p.qdq) EXPECT_NE(q.tensor, "s");
}

TEST(Plan, ExcludedSigmoidIsReportedFloat) {
  GraphBuilder g = GateGraph(false);
  QuantOptions options;
  options.exclude_nodes = {"sigmoid"};
  const QuantPlan p = Plan(g, options);
  EXPECT_NE(Floated(p, "sigmoid"), nullptr);
}

}  // namespace
}  // namespace onnxquant

namespace onnxquant {
namespace {

TEST(Plan, SiluIsQuantizedInsideOnlyByOption) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "c");
  g.Node("Sigmoid", {"c"}, {"s"}, "sigmoid");
  g.Node("Mul", {"c", "s"}, {"m"}, "mul");
  AddConv(g, "conv2", "m", "y");
  const QuantPlan plain = Plan(g);
  ASSERT_NE(Floated(plain, "sigmoid"), nullptr);
  for (const auto& q : plain.qdq) EXPECT_NE(q.tensor, "s");
  QuantOptions options;
  options.quantize_silu = true;
  const QuantPlan inside = Plan(g, options);
  EXPECT_NE(Quantized(inside, "sigmoid"), nullptr);
  EXPECT_NE(Quantized(inside, "mul"), nullptr);
  const std::vector<std::string> qdq = Qdq(inside);
  EXPECT_NE(std::find(qdq.begin(), qdq.end(), "s<-s"), qdq.end());
}

}  // namespace
}  // namespace onnxquant
