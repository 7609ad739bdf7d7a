// The op table (op_table.h) and the plan decisions it drives for the ops it
// added: shared multi-output data movement, fused-only ops, float ops with
// reasons, input roles. tests/python/test_op_table.py runs each op in ONNX
// Runtime.
#include "onnxquant/op_table.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "onnxquant/error.h"
#include "onnxquant/plan.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

void AddConv(GraphBuilder& g, const std::string& name, const std::string& x,
             const std::string& y, int cin = 2, int cout = 2) {
  g.Initializer(name + "_W", {cout, cin, 1, 1},
                std::vector<float>(cin * cout, 0.5f));
  g.Node("Conv", {x, name + "_W"}, {y}, name);
}

std::vector<std::string> Qdq(const QuantPlan& p) {
  std::vector<std::string> out;
  for (const auto& q : p.qdq) out.push_back(q.tensor + "<-" + q.source);
  return out;
}

bool IsQuantized(const QuantPlan& p, const std::string& node) {
  for (const auto& q : p.quantized_nodes) {
    if (q.node == node) return true;
  }
  return false;
}

std::string FloatReason(const QuantPlan& p, const std::string& node) {
  for (const auto& f : p.float_nodes) {
    if (f.node == node) return f.reason;
  }
  return "";
}

TEST(OpTable, EveryEntryIsFoundByItsDomainAndOpType) {
  std::set<std::string> seen;
  for (const OpSpec& s : OpTable()) {
    EXPECT_TRUE(seen.insert(std::string(s.domain) + ":" + s.op_type).second)
        << "duplicate " << s.op_type;
    EXPECT_EQ(FindOpSpec(s.domain, s.op_type), &s) << s.op_type;
    EXPECT_NE(std::string(s.ort_runs), "") << s.op_type;
    if (s.kind == OpKind::kFloat || s.kind == OpKind::kFusedOnly) {
      EXPECT_NE(std::string(s.reason), "") << s.op_type;
    }
  }
  EXPECT_EQ(FindOpSpec("ai.onnx", "Conv"), FindOpSpec("", "Conv"));
  EXPECT_EQ(FindOpSpec("", "Cos"), nullptr);
  EXPECT_EQ(FindOpSpec("", "EmbedLayerNormalization"), nullptr);
  ASSERT_NE(FindOpSpec("com.microsoft", "EmbedLayerNormalization"), nullptr);
}

TEST(OpTable, RolesOfInputsPastTheEntry) {
  const OpSpec* concat = FindOpSpec("", "Concat");
  ASSERT_NE(concat, nullptr);
  EXPECT_EQ(RoleOfInput(*concat, 5), InputRole::kDataOrConstant);
  const OpSpec* reshape = FindOpSpec("", "Reshape");
  ASSERT_NE(reshape, nullptr);
  EXPECT_EQ(RoleOfInput(*reshape, 0), InputRole::kData);
  EXPECT_EQ(RoleOfInput(*reshape, 1), InputRole::kIndex);
  EXPECT_EQ(RoleOfInput(*reshape, 7), InputRole::kIndex);
}

// Conv -> Split -> (Conv, Conv): both Split outputs share the Conv output's
// parameters, as ONNX Runtime needs to run the Split on 8-bit data.
TEST(OpTablePlan, SplitOutputsShareTheInputsParameters) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y0", {1, 2, 4, 4});
  g.Output("y1", {1, 2, 4, 4});
  AddConv(g, "conv", "x", "c", 2, 4);
  g.Int64Initializer("split", {2}, {2, 2});
  g.Node("Split", {"c", "split"}, {"s0", "s1"}, "split");
  AddConv(g, "conv0", "s0", "y0");
  AddConv(g, "conv1", "s1", "y1");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c", "s0<-c",
                                               "s1<-c", "y0<-y0", "y1<-y1"}));
  EXPECT_TRUE(IsQuantized(p, "split"));
}

// One output needed is enough: the other output shares the parameters too.
TEST(OpTablePlan, SplitWithOneQuantizedConsumerQuantizesBothOutputs) {
  GraphBuilder g;
  g.Input("x", {1, 4, 4, 4}).Output("y0", {1, 2, 4, 4});
  g.Output("s1", {1, 2, 4, 4});
  g.Int64Initializer("split", {2}, {2, 2});
  g.Node("Split", {"x", "split"}, {"s0", "s1"}, "split");
  AddConv(g, "conv0", "s0", "y0");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "s0<-x", "s1<-x",
                                               "y0<-y0"}));
}

TEST(OpTablePlan, WhereBetweenQuantizedNeighboursIsQuantizedAnyway) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Input("mask", {1, 2, 4, 4}, pb::TensorProto::BOOL);
  g.Output("y", {1, 2, 4, 4});
  AddConv(g, "conv_a", "x", "a");
  AddConv(g, "conv_b", "x", "b");
  g.Node("Where", {"mask", "a", "b"}, {"w"}, "where");
  AddConv(g, "conv_out", "w", "y");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_TRUE(IsQuantized(p, "where"));
  EXPECT_EQ(FloatReason(p, "where"), "");
}

TEST(OpTablePlan, WhereWithAConstantFillBeforeSoftmaxStaysFloat) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Input("mask", {1, 2, 4, 4}, pb::TensorProto::BOOL);
  g.Output("y", {1, 2, 4, 4});
  AddConv(g, "conv_a", "x", "a");
  g.Initializer("fill", {}, {-1e9f});
  g.Node("Where", {"mask", "a", "fill"}, {"w"}, "where");
  g.Node("Softmax", {"w"}, {"y"}, "softmax");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_NE(FloatReason(p, "where").find("mask"), std::string::npos)
      << FloatReason(p, "where");
  EXPECT_NE(FloatReason(p, "softmax"), "");
  // The fill is not quantized, nor the Where's output.
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "a<-a"}));
  EXPECT_TRUE(p.constants.empty());
}

TEST(OpTablePlan, ArgMaxOfAQuantizedOutputIsQuantizedAnyway) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("i", {1, 4, 4}, pb::TensorProto::INT64);
  AddConv(g, "conv", "x", "c");
  g.Node("ArgMax", {"c"}, {"i"}, "argmax");
  auto dtypes = g.Dtypes();
  const QuantPlan p = MakePlan(g.model(), dtypes, {});
  EXPECT_TRUE(IsQuantized(p, "argmax"));
  // On a graph input nothing quantizes it.
  GraphBuilder h;
  h.Input("x", {1, 2, 4, 4}).Output("i", {1, 4, 4}, pb::TensorProto::INT64);
  h.Node("ArgMax", {"x"}, {"i"}, "argmax");
  const QuantPlan q = MakePlan(h.model(), h.Dtypes(), {});
  EXPECT_FALSE(IsQuantized(q, "argmax"));
  EXPECT_TRUE(q.qdq.empty());
}

TEST(OpTablePlan, LeakyReluIsQuantizedAndAbsorbsAFollowingRelu) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  g.Node("LeakyRelu", {"x"}, {"l"}, "leaky");
  g.Node("Relu", {"l"}, {"r"}, "relu");
  AddConv(g, "conv", "r", "y");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_TRUE(IsQuantized(p, "leaky"));
  ASSERT_EQ(p.absorbed.size(), 1u);
  EXPECT_EQ(p.absorbed[0].producer, "leaky");
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "r<-r", "y<-y"}));
}

TEST(OpTablePlan, OpsWithoutAnIntegerKernelAreFloatWithTheTablesReason) {
  for (const char* op : {"Sub", "Div", "PRelu", "HardSwish", "SpaceToDepth"}) {
    GraphBuilder g;
    g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
    AddConv(g, "conv_a", "x", "a");
    AddConv(g, "conv_b", "x", "b");
    const bool binary = std::string(op) == "Sub" || std::string(op) == "Div" ||
                        std::string(op) == "PRelu";
    if (binary) {
      g.Node(op, {"a", "b"}, {"o"}, "op");
    } else {
      g.Node(op, {"a"}, {"o"}, "op");
    }
    AddConv(g, "conv_out", "o", "y");
    const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
    const std::string reason = FloatReason(p, "op");
    EXPECT_NE(reason.find(std::string(op) + " is kept float"),
              std::string::npos)
        << reason;
    EXPECT_NE(reason.find("no integer kernel"), std::string::npos) << reason;
    EXPECT_FALSE(IsQuantized(p, "op"));
  }
}

TEST(OpTablePlan, ExpandTileAndDepthToSpaceShareTheirInputsParameters) {
  for (const char* op : {"Expand", "Tile", "DepthToSpace"}) {
    GraphBuilder g;
    g.Input("x", {1, 4, 4, 4}).Output("y", {1, 4, 8, 8});
    AddConv(g, "conv", "x", "c", 4, 4);
    if (std::string(op) == "DepthToSpace") {
      GraphBuilder::IntAttr(g.Node(op, {"c"}, {"m"}, "op"), "blocksize", 2);
    } else {
      g.Int64Initializer("shape", {4}, {1, 1, 2, 2});
      g.Node(op, {"c", "shape"}, {"m"}, "op");
    }
    AddConv(g, "conv_out", "m", "y", 4, 4);
    const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
    EXPECT_EQ(Qdq(p), (std::vector<std::string>{"x<-x", "c<-c", "m<-c",
                                                 "y<-y"}))
        << op;
    EXPECT_TRUE(IsQuantized(p, "op")) << op;
  }
}

// Gather(table, ids) of a constant table has no activation to share
// parameters with: float, and said so.
TEST(OpTablePlan, AGatherOfAConstantTableStaysFloat) {
  GraphBuilder g;
  g.Input("ids", {1, 3}, pb::TensorProto::INT64).Output("y", {1, 3, 2});
  g.Initializer("table", {5, 2}, std::vector<float>(10, 0.5f));
  g.Node("Gather", {"table", "ids"}, {"e"}, "gather");
  g.Initializer("W", {2, 2}, {1.f, 0.f, 0.f, 1.f});
  g.Node("MatMul", {"e", "W"}, {"y"}, "mm");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_NE(FloatReason(p, "gather").find("of a constant"), std::string::npos)
      << FloatReason(p, "gather");
  EXPECT_TRUE(IsQuantized(p, "mm"));
  EXPECT_EQ(Qdq(p), (std::vector<std::string>{"e<-e"}));  // y: float output
}

TEST(OpTablePlan, AParameterInputThatIsAnActivationKeepsTheNodeFloat) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Input("hi", {1}).Output("y", {1, 2, 4, 4});
  g.Initializer("lo", {}, {0.f});
  g.Node("Clip", {"x", "lo", "hi"}, {"y"}, "clip");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_NE(FloatReason(p, "clip").find("'hi' is not a float constant"),
            std::string::npos)
      << FloatReason(p, "clip");
}

TEST(OpTablePlan, AContribOpOfTheTableGetsItsReason) {
  GraphBuilder g;
  g.Input("ids", {1, 8}, pb::TensorProto::INT32).Output("y", {1, 8, 4});
  pb::NodeProto* n =
      g.Node("EmbedLayerNormalization", {"ids"}, {"y"}, "embed");
  n->set_domain("com.microsoft");
  pb::NodeProto* other = g.Node("FusedGemm", {"y"}, {"z"}, "fused");
  other->set_domain("com.microsoft");
  const QuantPlan p = MakePlan(g.model(), g.Dtypes(), {});
  EXPECT_NE(FloatReason(p, "embed").find("no QDQ form"), std::string::npos)
      << FloatReason(p, "embed");
  EXPECT_NE(FloatReason(p, "fused").find("custom domain"), std::string::npos);
}

TEST(OpTablePlan, OpTypesAcceptsTableOpsThatQuantizeOnly) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  g.Node("Where", {"x", "x", "x"}, {"w"}, "where");
  AddConv(g, "conv", "w", "y");
  QuantOptions options;
  options.op_types = {"Split"};
  EXPECT_NO_THROW(MakePlan(g.model(), g.Dtypes(), options));
  for (const char* op : {"Where", "Sub", "Cos"}) {
    options.op_types = {op};
    try {
      MakePlan(g.model(), g.Dtypes(), options);
      ADD_FAILURE() << op << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << op;
      EXPECT_NE(std::string(e.what()).find(op), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace onnxquant
