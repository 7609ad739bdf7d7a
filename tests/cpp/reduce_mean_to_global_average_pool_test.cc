// Tests of reduce_mean_to_global_average_pool.
#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/passes/passes.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::FindProducer;
using testing::GraphBuilder;
using testing::Inputs;
using testing::OpTypes;
using Strings = std::vector<std::string>;

// A value_info entry for `name`: float with `rank` unknown dims.
void AddShapedValueInfo(pb::ModelProto* model, const std::string& name,
                        int rank, int elem_type = pb::TensorProto::FLOAT) {
  auto* v = model->mutable_graph()->add_value_info();
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(elem_type);
  auto* shape = t->mutable_shape();
  for (int k = 0; k < rank; ++k) shape->add_dim();
}

// x [N, 8, 5, 5] -> Relu -> r -> ReduceMean(axes) -> y; opset 13, axes as an
// attribute. `r` gets a 4-D value_info entry.
GraphBuilder Opset13(std::vector<int64_t> axes, int keepdims) {
  GraphBuilder b(13);
  b.Input("x", {-1, 8, 5, 5});
  if (keepdims) {
    b.Output("y", {-1, 8, 1, 1});
  } else {
    b.Output("y", {-1, 8});
  }
  b.Node("Relu", {"x"}, {"r"}, "relu");
  auto* mean = b.Node("ReduceMean", {"r"}, {"y"}, "mean");
  GraphBuilder::IntsAttr(mean, "axes", axes);
  if (keepdims != 1) GraphBuilder::IntAttr(mean, "keepdims", keepdims);
  AddShapedValueInfo(&b.model(), "r", 4);
  return b;
}

TEST(ReduceMeanToGlobalAveragePool, KeepdimsZeroAddsSqueezeOntoTheOutput) {
  pb::ModelProto m = Opset13({2, 3}, 0).Build();
  ASSERT_TRUE(passes::ReduceMeanToGlobalAveragePool(m));
  EXPECT_EQ(OpTypes(m), (Strings{"Relu", "GlobalAveragePool", "Squeeze"}));
  const pb::NodeProto& pool = m.graph().node(1);
  const pb::NodeProto& squeeze = m.graph().node(2);
  EXPECT_EQ(pool.name(), "mean");
  EXPECT_EQ(Inputs(pool), Strings{"r"});
  EXPECT_EQ(pool.attribute_size(), 0);
  ASSERT_EQ(squeeze.input_size(), 2);
  EXPECT_EQ(squeeze.input(0), pool.output(0));
  EXPECT_EQ(squeeze.output(0), "y");  // the graph output keeps its name
  const pb::TensorProto* axes = FindInitializer(m, squeeze.input(1));
  ASSERT_NE(axes, nullptr);
  EXPECT_EQ(ToInt64s(*axes), (std::vector<int64_t>{2, 3}));
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));  // a fixed point
}

TEST(ReduceMeanToGlobalAveragePool, KeepdimsOneAndNegativeAxesGiveThePoolOnly) {
  pb::ModelProto m = Opset13({-1, -2}, 1).Build();
  ASSERT_TRUE(passes::ReduceMeanToGlobalAveragePool(m));
  EXPECT_EQ(OpTypes(m), (Strings{"Relu", "GlobalAveragePool"}));
  EXPECT_EQ(m.graph().node(1).output(0), "y");
  EXPECT_EQ(m.graph().initializer_size(), 0);
}

TEST(ReduceMeanToGlobalAveragePool, OtherAxesStay) {
  for (const auto& axes : std::vector<std::vector<int64_t>>{
           {1, 2}, {3}, {1, 2, 3}, {2, 3, 3}, {0, 1, 2, 3}}) {
    pb::ModelProto m = Opset13(axes, 1).Build();
    EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));
    EXPECT_EQ(OpTypes(m), (Strings{"Relu", "ReduceMean"}));
  }
}

TEST(ReduceMeanToGlobalAveragePool, NoAxesAttributeReducesEverythingAndStays) {
  GraphBuilder b(13);
  b.Input("x", {1, 8, 5, 5}).Output("y", {1, 1, 1, 1});
  b.Node("ReduceMean", {"x"}, {"y"}, "mean");
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));
}

TEST(ReduceMeanToGlobalAveragePool, UnknownRankStays) {
  GraphBuilder b = Opset13({2, 3}, 0);
  b.model().mutable_graph()->clear_value_info();
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));
  testing::AddValueInfo(&m, "r");  // a type but no shape: still unknown
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));
}

TEST(ReduceMeanToGlobalAveragePool, OtherRanksAndTypesStay) {
  GraphBuilder b(13);
  b.Input("x", {2, 8, 5}).Output("y", {2, 8});
  GraphBuilder::IntsAttr(b.Node("ReduceMean", {"x"}, {"y"}, "m3"), "axes",
                         {1, 2});
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));

  GraphBuilder i(13);
  i.Input("x", {2, 8, 5, 5}, pb::TensorProto::INT32).Output("y", {2, 8});
  GraphBuilder::IntsAttr(i.Node("ReduceMean", {"x"}, {"y"}, "mi"), "axes",
                         {2, 3});
  m = i.Build();
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));
}

// Opset 18: axes are an input.
GraphBuilder Opset18(const std::string& axes_input) {
  GraphBuilder b(18);
  b.Input("x", {2, 8, 5, 5}).Output("y", {2, 8});
  b.Int64Initializer("spatial", {2}, {-2, -1});
  auto* mean = b.Node("ReduceMean", {"x", axes_input}, {"y"}, "mean");
  GraphBuilder::IntAttr(mean, "keepdims", 0);
  GraphBuilder::IntAttr(mean, "noop_with_empty_axes", 0);
  return b;
}

TEST(ReduceMeanToGlobalAveragePool, Opset18AxesInputIsReadAndRemoved) {
  pb::ModelProto m = Opset18("spatial").Build();
  ASSERT_TRUE(passes::ReduceMeanToGlobalAveragePool(m));
  EXPECT_EQ(OpTypes(m), (Strings{"GlobalAveragePool", "Squeeze"}));
  EXPECT_EQ(FindInitializer(m, "spatial"), nullptr);  // nothing reads it
  EXPECT_EQ(FindProducer(m, "y")->op_type(), "Squeeze");
}

TEST(ReduceMeanToGlobalAveragePool, SharedAxesInitializerStays) {
  GraphBuilder b = Opset18("spatial");
  b.Output("z", {2, 8});
  auto* other = b.Node("ReduceMax", {"x", "spatial"}, {"z"}, "max");
  GraphBuilder::IntAttr(other, "keepdims", 0);
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::ReduceMeanToGlobalAveragePool(m));
  EXPECT_NE(FindInitializer(m, "spatial"), nullptr);
}

TEST(ReduceMeanToGlobalAveragePool, Opset18WithoutConstantAxesStays) {
  pb::ModelProto absent = Opset18("").Build();  // reduces every axis
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(absent));

  GraphBuilder noop = Opset18("");
  GraphBuilder::IntAttr(noop.model().mutable_graph()->mutable_node(0),
                        "noop_with_empty_axes", 1);  // an identity
  pb::ModelProto m = noop.Build();
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));

  GraphBuilder overridable = Opset18("spatial");
  overridable.Input("spatial", {2}, pb::TensorProto::INT64);
  m = overridable.Build();
  EXPECT_FALSE(passes::ReduceMeanToGlobalAveragePool(m));
}

TEST(ReduceMeanToGlobalAveragePool, Opset18NoopFlagWithAxesStillMatches) {
  GraphBuilder b = Opset18("spatial");
  GraphBuilder::IntAttr(b.model().mutable_graph()->mutable_node(0),
                        "noop_with_empty_axes", 1);
  pb::ModelProto m = b.Build();
  EXPECT_TRUE(passes::ReduceMeanToGlobalAveragePool(m));
}

TEST(ReduceMeanToGlobalAveragePool, BeforeOpset13SqueezeTakesAnAttribute) {
  GraphBuilder b(11);
  b.Input("x", {2, 8, 5, 5}).Output("y", {2, 8});
  auto* mean = b.Node("ReduceMean", {"x"}, {"y"}, "mean");
  GraphBuilder::IntsAttr(mean, "axes", {2, 3});
  GraphBuilder::IntAttr(mean, "keepdims", 0);
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::ReduceMeanToGlobalAveragePool(m));
  const pb::NodeProto& squeeze = m.graph().node(1);
  ASSERT_EQ(squeeze.op_type(), "Squeeze");
  EXPECT_EQ(squeeze.input_size(), 1);
  const pb::AttributeProto* axes = FindAttribute(squeeze, "axes");
  ASSERT_NE(axes, nullptr);
  EXPECT_EQ(std::vector<int64_t>(axes->ints().begin(), axes->ints().end()),
            (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(m.graph().initializer_size(), 0);
}

TEST(ReduceMeanToGlobalAveragePool, IsRegisteredByName) {
  EXPECT_EQ(FindPass("reduce_mean_to_global_average_pool").apply,
            &passes::ReduceMeanToGlobalAveragePool);
}

}  // namespace
}  // namespace onnxquant
