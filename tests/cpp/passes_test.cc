// Tests of remove_initializers_from_inputs, lift_constants, remove_identity
// and remove_dropout (fold_batch_norm: fold_batch_norm_test.cc).
#include "onnxquant/passes/passes.h"

#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/error.h"
#include "onnxquant/pass_registry.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::FindNode;
using testing::FindProducer;
using testing::GraphBuilder;
using testing::Inputs;
using testing::OpTypes;
using Strings = std::vector<std::string>;

Strings GraphInputs(const pb::ModelProto& m) {
  Strings names;
  for (const auto& v : m.graph().input()) names.push_back(v.name());
  return names;
}

// ---------------------------------------------------------------------------
// remove_initializers_from_inputs

TEST(RemoveInitializersFromInputs, DropsOnlyInitializersAndRaisesIr3) {
  GraphBuilder b(8);
  b.model().set_ir_version(3);
  b.Input("x", {1, 2}).Input("w", {2, 2}).Output("y", {1, 2});
  b.Initializer("w", {2, 2}, {1, 0, 0, 1});
  b.Node("MatMul", {"x", "w"}, {"y"});
  pb::ModelProto m = b.Build();
  EXPECT_TRUE(passes::RemoveInitializersFromInputs(m));
  EXPECT_EQ(GraphInputs(m), Strings{"x"});
  EXPECT_EQ(m.ir_version(), 4);
  EXPECT_NE(FindInitializer(m, "w"), nullptr);
  EXPECT_FALSE(passes::RemoveInitializersFromInputs(m));
}

TEST(RemoveInitializersFromInputs, LeavesAModelWithoutThemUnchanged) {
  GraphBuilder b(13);
  b.Input("x", {1, 2}).Output("y", {1, 2});
  b.Initializer("w", {2, 2}, {1, 0, 0, 1});
  b.Node("MatMul", {"x", "w"}, {"y"});
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::RemoveInitializersFromInputs(m));
  EXPECT_EQ(m.ir_version(), 8);
}

// ---------------------------------------------------------------------------
// lift_constants

pb::NodeProto* AddConstant(GraphBuilder& b, const std::string& out) {
  return b.Node("Constant", {}, {out}, "const_" + out);
}

TEST(LiftConstants, LiftsEveryNumericForm) {
  GraphBuilder b(13);
  b.model().set_ir_version(3);
  b.Input("x", {3}).Output("y", {3});
  GraphBuilder::TensorAttr(AddConstant(b, "t"), "value",
                           FloatTensor("ignored", {3}, {1, 2, 3}));
  GraphBuilder::FloatAttr(AddConstant(b, "f"), "value_float", 2.5f);
  auto* fs = AddConstant(b, "fs");
  fs->add_attribute()->set_name("value_floats");
  fs->mutable_attribute(0)->set_type(pb::AttributeProto::FLOATS);
  fs->mutable_attribute(0)->add_floats(4);
  fs->mutable_attribute(0)->add_floats(5);
  GraphBuilder::IntAttr(AddConstant(b, "i"), "value_int", 7);
  GraphBuilder::IntsAttr(AddConstant(b, "is"), "value_ints", {8, 9});
  b.Node("Add", {"x", "t"}, {"y"});
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::LiftConstants(m));
  EXPECT_EQ(OpTypes(m), Strings{"Add"});
  EXPECT_EQ(m.ir_version(), 4);
  ASSERT_EQ(m.graph().initializer_size(), 5);
  EXPECT_EQ(ToFloats(*FindInitializer(m, "t")), (std::vector<float>{1, 2, 3}));
  const pb::TensorProto* f = FindInitializer(m, "f");
  EXPECT_EQ(f->dims_size(), 0);
  EXPECT_EQ(ToFloats(*f), std::vector<float>{2.5f});
  EXPECT_EQ(Dims(*FindInitializer(m, "fs")), std::vector<int64_t>{2});
  EXPECT_EQ(ToFloats(*FindInitializer(m, "fs")), (std::vector<float>{4, 5}));
  EXPECT_EQ(FindInitializer(m, "i")->dims_size(), 0);
  EXPECT_EQ(ToInt64s(*FindInitializer(m, "i")), std::vector<int64_t>{7});
  EXPECT_EQ(ToInt64s(*FindInitializer(m, "is")), (std::vector<int64_t>{8, 9}));
  EXPECT_FALSE(passes::LiftConstants(m));
}

TEST(LiftConstants, LeavesStringsSparseAndGraphOutputs) {
  GraphBuilder b(13);
  b.Input("x", {1}).Output("y", {1}).Output("c", {1});
  GraphBuilder::StringAttr(AddConstant(b, "s"), "value_string", "hello");
  auto* sparse = AddConstant(b, "sp");
  sparse->add_attribute()->set_name("sparse_value");
  sparse->mutable_attribute(0)->set_type(pb::AttributeProto::SPARSE_TENSOR);
  GraphBuilder::TensorAttr(AddConstant(b, "c"), "value",
                           FloatTensor("", {1}, {1}));
  b.Node("Relu", {"x"}, {"y"});
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::LiftConstants(m));
  EXPECT_EQ(m.graph().node_size(), 4);
}

TEST(LiftConstants, LiftsAConstantReadBySubgraphKeepingItsName) {
  GraphBuilder b(13);
  b.Input("cond", {}, pb::TensorProto::BOOL).Output("z", {2});
  GraphBuilder::TensorAttr(AddConstant(b, "k"), "value",
                           FloatTensor("", {2}, {1, 2}));
  auto* iff = b.Node("If", {"cond"}, {"z"}, "if");
  GraphBuilder::GraphAttr(iff, "then_branch", testing::BodyReading("k", "t"));
  GraphBuilder::GraphAttr(iff, "else_branch", testing::BodyReading("k", "e"));
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::LiftConstants(m));
  EXPECT_EQ(OpTypes(m), Strings{"If"});
  EXPECT_NE(FindInitializer(m, "k"), nullptr);
  EXPECT_EQ(m.graph().node(0).attribute(0).g().node(0).input(0), "k");
}

TEST(LiftConstants, ThrowsWhenTheNameIsAlsoAnInitializer) {
  GraphBuilder b(13);
  b.Input("x", {1}).Output("y", {1});
  b.Initializer("k", {1}, {1});
  GraphBuilder::FloatAttr(AddConstant(b, "k"), "value_float", 2);
  b.Node("Add", {"x", "k"}, {"y"});
  pb::ModelProto m = b.Build();
  try {
    passes::LiftConstants(m);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    EXPECT_NE(std::string(e.what()).find("const_k"), std::string::npos);
  }
}

// ---------------------------------------------------------------------------
// remove_identity

TEST(RemoveIdentity, ReadersReadTheInput) {
  GraphBuilder b(13);
  b.Input("x", {2}).Output("y", {2});
  b.Node("Identity", {"x"}, {"a"});
  b.Node("Relu", {"a"}, {"y"}, "relu");
  testing::AddValueInfo(&b.model(), "a");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::RemoveIdentity(m));
  EXPECT_EQ(OpTypes(m), Strings{"Relu"});
  EXPECT_EQ(Inputs(m.graph().node(0)), Strings{"x"});
  EXPECT_FALSE(testing::HasValueInfo(m, "a"));
  EXPECT_FALSE(passes::RemoveIdentity(m));
}

TEST(RemoveIdentity, RenamesTheProducerOfAGraphOutput) {
  GraphBuilder b(13);
  b.Input("x", {2}).Output("y", {2}).Output("z", {2});
  b.Node("Relu", {"x"}, {"a"}, "relu");
  b.Node("Identity", {"a"}, {"y"});
  b.Node("Neg", {"a"}, {"z"}, "neg");  // another reader of `a`
  testing::AddValueInfo(&b.model(), "a");
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::RemoveIdentity(m));
  EXPECT_EQ(OpTypes(m), (Strings{"Relu", "Neg"}));
  EXPECT_EQ(FindNode(m, "relu")->output(0), "y");
  EXPECT_EQ(Inputs(*FindNode(m, "neg")), Strings{"y"});
  EXPECT_FALSE(testing::HasValueInfo(m, "a"));
}

TEST(RemoveIdentity, KeepsWhatCannotBeRenamed) {
  GraphBuilder b(13);
  b.Input("x", {2}).Output("y", {2}).Output("a", {2}).Output("w2", {2});
  b.Output("z", {2});
  b.Initializer("w", {2}, {1, 2});
  b.Node("Identity", {"x"}, {"y"});  // graph input -> graph output
  b.Node("Relu", {"x"}, {"a"});
  b.Node("Identity", {"a"}, {"z"});   // its input is a graph output too
  b.Node("Identity", {"w"}, {"w2"});  // initializer -> graph output
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::RemoveIdentity(m));
  EXPECT_EQ(m.graph().node_size(), 4);
}

TEST(RemoveIdentity, NeverRenamesATensorReadBySubgraph) {
  // a = Relu(x) is read by a body and feeds an Identity to a graph output:
  // renaming `a` would break the body. b = Identity(x) is read by a body.
  GraphBuilder b(13);
  b.Input("x", {2}).Input("cond", {}, pb::TensorProto::BOOL);
  b.Output("y", {2}).Output("z", {2});
  b.Node("Relu", {"x"}, {"a"}, "relu");
  b.Node("Identity", {"a"}, {"y"}, "id_out");
  b.Node("Identity", {"x"}, {"bb"}, "id_body");
  auto* iff = b.Node("If", {"cond"}, {"z"}, "if");
  GraphBuilder::GraphAttr(iff, "then_branch", testing::BodyReading("a", "t"));
  GraphBuilder::GraphAttr(iff, "else_branch", testing::BodyReading("bb", "e"));
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::RemoveIdentity(m));
  EXPECT_EQ(m.graph().node_size(), 4);
  EXPECT_EQ(FindNode(m, "relu")->output(0), "a");
}

TEST(RemoveIdentity, RemovesAChainToAFixedPoint) {
  GraphBuilder b(13);
  b.Input("x", {2}).Output("y", {2});
  b.Node("Relu", {"x"}, {"t0"}, "relu");
  const int kChain = 3000;  // more than RunPasses' 1000 rounds
  for (int i = 0; i < kChain; ++i) {
    b.Node("Identity", {"t" + std::to_string(i)},
           {i + 1 == kChain ? "y" : "t" + std::to_string(i + 1)});
  }
  pb::ModelProto m = b.Build();
  EXPECT_EQ(RunPasses(m, {"remove_identity"}), Strings{"remove_identity"});
  EXPECT_EQ(OpTypes(m), Strings{"Relu"});
  EXPECT_EQ(m.graph().node(0).output(0), "y");
  EXPECT_TRUE(RunPasses(m, {"remove_identity"}).empty());
}

TEST(RemoveIdentity, ThrowsNamingAMalformedIdentity) {
  GraphBuilder b(13);
  b.Input("x", {2}).Output("y", {2});
  b.Node("Identity", {}, {"y"}, "broken");
  pb::ModelProto m = b.Build();
  try {
    passes::RemoveIdentity(m);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    EXPECT_NE(std::string(e.what()).find("'broken'"), std::string::npos);
  }
}

// ---------------------------------------------------------------------------
// remove_dropout

TEST(RemoveDropout, RemovesWithoutMaskOrWithAnUnusedOne) {
  GraphBuilder b(13);
  b.Input("x", {2}).Output("y", {2});
  b.Node("Dropout", {"x"}, {"d1"});
  b.Initializer("ratio", {}, {0.5f});
  b.Node("Dropout", {"d1", "ratio"}, {"d2", "mask"});
  b.Node("Dropout", {"d2"}, {"d3", ""});
  b.Node("Relu", {"d3"}, {"y"}, "relu");
  testing::AddValueInfo(&b.model(), "mask");
  pb::ModelProto m = b.Build();
  EXPECT_EQ(RunPasses(m, {"remove_dropout"}), Strings{"remove_dropout"});
  EXPECT_EQ(OpTypes(m), Strings{"Relu"});
  EXPECT_EQ(Inputs(m.graph().node(0)), Strings{"x"});
  EXPECT_FALSE(testing::HasValueInfo(m, "mask"));
  EXPECT_EQ(m.graph().initializer_size(), 0);  // `ratio` went with it
}

TEST(RemoveDropout, RemovesManyInOneRound) {
  GraphBuilder b(13);
  b.Input("x", {2});
  for (int i = 0; i < 5; ++i) {
    const std::string y = "y" + std::to_string(i);
    b.Output(y, {2});
    b.Node("Relu", {"x"}, {"r" + std::to_string(i)});
    b.Node("Dropout", {"r" + std::to_string(i)}, {y, ""});
  }
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::RemoveDropout(m));
  EXPECT_EQ(m.graph().node_size(), 5);
  EXPECT_FALSE(passes::RemoveDropout(m));
}

TEST(RemoveDropout, KeepsAUsedMask) {
  GraphBuilder b(13);
  b.Input("x", {2}).Output("y", {2}).Output("m2", {2});
  b.Node("Dropout", {"x"}, {"d", "mask"});
  b.Node("Relu", {"d"}, {"y"});
  b.Node("Cast", {"mask"}, {"m2"});
  pb::ModelProto m = b.Build();
  EXPECT_FALSE(passes::RemoveDropout(m));
}

TEST(RemoveDropout, RespectsTrainingMode) {
  GraphBuilder b(13);
  b.Input("x", {2}).Input("train", {}, pb::TensorProto::BOOL);
  b.Output("y", {2}).Output("z", {2});
  auto* off = b.model().mutable_graph()->add_initializer();
  off->set_name("off");
  off->set_data_type(pb::TensorProto::BOOL);
  off->add_int32_data(0);
  b.Node("Relu", {"x"}, {"a"}, "relu");
  b.Node("Dropout", {"a", "", "train"}, {"y"}, "keep");  // maybe training
  b.Node("Dropout", {"a", "", "off"}, {"z"}, "drop");    // inference
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::RemoveDropout(m));
  EXPECT_NE(FindNode(m, "keep"), nullptr);
  EXPECT_EQ(FindNode(m, "drop"), nullptr);
  // `a` is read by "keep" too, so the Relu is renamed and "keep" follows.
  EXPECT_EQ(FindNode(m, "relu")->output(0), "z");
  EXPECT_EQ(FindNode(m, "keep")->input(0), "z");
}

TEST(RemoveDropout, FeedingAGraphOutputRenamesTheProducer) {
  GraphBuilder b(7);
  b.Input("x", {2}).Output("y", {2});
  b.Node("Relu", {"x"}, {"a"}, "relu");
  b.Node("Dropout", {"a"}, {"y", "mask"});
  pb::ModelProto m = b.Build();
  ASSERT_TRUE(passes::RemoveDropout(m));
  EXPECT_EQ(OpTypes(m), Strings{"Relu"});
  EXPECT_EQ(FindProducer(m, "y"), FindNode(m, "relu"));
}

}  // namespace
}  // namespace onnxquant
