// int4 weights: blockwise arithmetic, INT4 packing, per-tensor overrides
// (arithmetic.h, tensor_util.h, plan_overrides.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "onnxquant/arithmetic.h"
#include "onnxquant/error.h"
#include "onnxquant/plan_overrides.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

TEST(QuantizeWeightBlocked, OneScalePerBlockOfRowsOfAColumn) {
  // K = 5 rows, N = 2 columns, blocks of 2 rows: 3 blocks (the last of 1).
  const std::vector<float> w = {1.5f, -7.f,  //
                                -2.f, 3.5f,  //
                                0.5f, 0.f,   //
                                7.f,  0.f,   //
                                0.f,  -0.7f};
  const WeightQuant q = QuantizeWeightBlocked(w, {5, 2}, 2, 7);
  ASSERT_EQ(q.scale_dims, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(q.block_size, 2);
  // Block maxima by hand: rows 0-1 -> (2, 7); rows 2-3 -> (7, 0); row 4 ->
  // (0, 0.7). A zero block takes scale 1.
  const std::vector<float> want = {2.f / 7, 1.f, 1.f, 1.f, 1.f, 0.1f};
  ASSERT_EQ(q.scales.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_FLOAT_EQ(q.scales[i], want[i]) << i;
  }
  // 1.5 / (2/7) = 5.25 -> 5; 3.5 and 0.5 round half to even: 4 and 0.
  const std::vector<int8_t> codes = {5, -7, -7, 4, 0, 0, 7, 0, 0, -7};
  EXPECT_EQ(q.values, codes);
}

TEST(QuantizeWeightBlocked, RejectsWhatItCannotBlock) {
  EXPECT_THROW(QuantizeWeightBlocked({1.f, 2.f}, {2}, 2, 7), Error);
  EXPECT_THROW(QuantizeWeightBlocked({1.f, 2.f}, {1, 2}, 0, 7), Error);
}

TEST(Int4Tensor, PacksTwoValuesAByteLowNibbleFirst) {
  const pb::TensorProto t = Int4Tensor("w", {3}, {-7, 7, -1});
  EXPECT_EQ(t.data_type(), pb::TensorProto::INT4);
  ASSERT_EQ(t.raw_data().size(), 2u);
  EXPECT_EQ(static_cast<uint8_t>(t.raw_data()[0]), 0x79);  // 7 << 4 | 0x9
  EXPECT_EQ(static_cast<uint8_t>(t.raw_data()[1]), 0x0F);  // -1, padded
}

TEST(PlanOverrides, DropsFloatTensorsAndNamesUnknownOnes) {
  QuantPlan plan;
  plan.calibrated = {"a", "b"};
  plan.qdq = {{"a", "a", ""}, {"a2", "a", ""}, {"b", "b", ""}};
  QuantOptions o;
  plan.absorbed = {{"relu", "conv", ""}};
  pb::GraphProto graph;
  auto* relu = graph.add_node();
  relu->set_name("relu");
  relu->add_output("a");
  o.float_tensors = {"a"};
  DropFloatTensors(graph, o, &plan);
  EXPECT_TRUE(plan.absorbed.empty());  // nothing clips "a" now: Relu stays
  EXPECT_EQ(plan.calibrated, std::vector<std::string>{"b"});
  ASSERT_EQ(plan.qdq.size(), 1u);
  EXPECT_EQ(plan.qdq[0].tensor, "b");
  o.float_tensors = {"nope"};
  try {
    DropFloatTensors(graph, o, &plan);
    FAIL() << "no error for an unknown tensor";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
}

TEST(PlanOverrides, Int4NeedsOpset21) {
  QuantOptions o;
  o.weight_type = WeightType::kInt4;
  EXPECT_THROW(CheckWeightOptions(o, 13), Error);
  EXPECT_NO_THROW(CheckWeightOptions(o, 21));
  QuantOptions per_node;
  per_node.node_weight_types["conv"] = WeightType::kInt4;
  EXPECT_THROW(CheckWeightOptions(per_node, 20), Error);
  QuantOptions block;
  block.block_size = 1;
  EXPECT_THROW(CheckWeightOptions(block, 21), Error);
}

TEST(ActivationTypeOf, OverrideWinsOverTheDefault) {
  QuantOptions o;
  o.tensor_types["x"] = ActivationType::kInt16;
  EXPECT_EQ(ActivationTypeOf(o, "x"), ActivationType::kInt16);
  EXPECT_EQ(ActivationTypeOf(o, "y"), ActivationType::kUint8);
  const ActivationParams p =
      ActivationQuantParams(-1.f, 1.f, o, ActivationTypeOf(o, "x"));
  EXPECT_FLOAT_EQ(p.scale, 1.f / 32767.f);
  EXPECT_EQ(p.zero_point, 0);
}

}  // namespace
}  // namespace onnxquant
