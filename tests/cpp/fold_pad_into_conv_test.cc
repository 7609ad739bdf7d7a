// Tests of fold_pad_into_conv.
#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/passes/passes.h"
#include "pass_test_util.h"

namespace onnxquant {
namespace {

using testing::FindInitializer;
using testing::GraphBuilder;
using testing::OpTypes;

// x [1, 2, 4, 4] -> Pad(pads) -> Conv(3x3, conv_pads) -> y.
GraphBuilder PadConv(std::vector<int64_t> pads,
                     std::vector<int64_t> conv_pads = {}) {
  GraphBuilder b(13);
  b.Input("x", {1, 2, 4, 4}).Output("y", {1, 2, 4, 4});
  b.Int64Initializer("pads", {static_cast<int64_t>(pads.size())}, pads);
  b.Initializer("W", {2, 2, 3, 3}, std::vector<float>(36, 0.1f));
  b.Node("Pad", {"x", "pads"}, {"p"}, "pad");
  pb::NodeProto* conv = b.Node("Conv", {"p", "W"}, {"y"}, "conv");
  if (!conv_pads.empty()) GraphBuilder::IntsAttr(conv, "pads", conv_pads);
  return b;
}

std::vector<int64_t> ConvPads(const pb::ModelProto& m) {
  for (const auto& n : m.graph().node()) {
    if (n.op_type() != "Conv") continue;
    for (const auto& a : n.attribute()) {
      if (a.name() == "pads") {
        return std::vector<int64_t>(a.ints().begin(), a.ints().end());
      }
    }
  }
  return {};
}

TEST(FoldPadIntoConv, AddsThePaddingToTheConvs) {
  pb::ModelProto m = PadConv({0, 0, 1, 2, 0, 0, 3, 0}, {1, 1, 1, 1}).Build();
  ASSERT_TRUE(passes::FoldPadIntoConv(m));
  EXPECT_EQ(OpTypes(m), (std::vector<std::string>{"Conv"}));
  EXPECT_EQ(m.graph().node(0).input(0), "x");
  // Conv pads are [h_begin, w_begin, h_end, w_end].
  EXPECT_EQ(ConvPads(m), (std::vector<int64_t>{2, 3, 4, 1}));
  EXPECT_EQ(FindInitializer(m, "pads"), nullptr);
  EXPECT_FALSE(passes::FoldPadIntoConv(m));  // a fixed point
}

TEST(FoldPadIntoConv, AConvWithoutPadsGetsThePadsOfThePad) {
  pb::ModelProto m = PadConv({0, 0, 1, 1, 0, 0, 1, 1}).Build();
  ASSERT_TRUE(passes::FoldPadIntoConv(m));
  EXPECT_EQ(ConvPads(m), (std::vector<int64_t>{1, 1, 1, 1}));
}

TEST(FoldPadIntoConv, LeavesWhatAConvCannotPad) {
  // Channels padded; negative pads (a crop).
  for (std::vector<int64_t> pads :
       {std::vector<int64_t>{0, 1, 1, 1, 0, 0, 1, 1},
        std::vector<int64_t>{0, 0, -1, 1, 0, 0, 1, 1}}) {
    pb::ModelProto m = PadConv(pads).Build();
    EXPECT_FALSE(passes::FoldPadIntoConv(m));
  }
  // Reflect mode.
  GraphBuilder reflect = PadConv({0, 0, 1, 1, 0, 0, 1, 1});
  GraphBuilder::StringAttr(reflect.model().mutable_graph()->mutable_node(0),
                           "mode", "reflect");
  EXPECT_FALSE(passes::FoldPadIntoConv(reflect.model()));
  // A value other than 0.
  GraphBuilder value = PadConv({0, 0, 1, 1, 0, 0, 1, 1});
  value.Initializer("v", {}, {1.f});
  value.model().mutable_graph()->mutable_node(0)->add_input("v");
  EXPECT_FALSE(passes::FoldPadIntoConv(value.model()));
  // A value of 0 folds.
  GraphBuilder zero = PadConv({0, 0, 1, 1, 0, 0, 1, 1});
  zero.Initializer("v", {}, {0.f});
  zero.model().mutable_graph()->mutable_node(0)->add_input("v");
  EXPECT_TRUE(passes::FoldPadIntoConv(zero.model()));
  EXPECT_EQ(FindInitializer(zero.model(), "v"), nullptr);
  // auto_pad set on the Conv.
  GraphBuilder same = PadConv({0, 0, 1, 1, 0, 0, 1, 1});
  GraphBuilder::StringAttr(same.model().mutable_graph()->mutable_node(1),
                           "auto_pad", "SAME_UPPER");
  EXPECT_FALSE(passes::FoldPadIntoConv(same.model()));
}

TEST(FoldPadIntoConv, APadWithAnotherReaderOrAGraphOutputStays) {
  GraphBuilder two = PadConv({0, 0, 1, 1, 0, 0, 1, 1});
  two.Output("n", {1, 2, 6, 6});
  two.Node("Neg", {"p"}, {"n"}, "neg");
  EXPECT_FALSE(passes::FoldPadIntoConv(two.model()));
  GraphBuilder out = PadConv({0, 0, 1, 1, 0, 0, 1, 1});
  out.Output("p", {1, 2, 6, 6});
  EXPECT_FALSE(passes::FoldPadIntoConv(out.model()));
  // Pads that are a graph input can change at run time.
  GraphBuilder input = PadConv({0, 0, 1, 1, 0, 0, 1, 1});
  input.Input("pads", {8}, pb::TensorProto::INT64);
  EXPECT_FALSE(passes::FoldPadIntoConv(input.model()));
}

TEST(FoldPadIntoConv, IsRegisteredByName) {
  EXPECT_EQ(FindPass("fold_pad_into_conv").apply, &passes::FoldPadIntoConv);
}

}  // namespace
}  // namespace onnxquant
