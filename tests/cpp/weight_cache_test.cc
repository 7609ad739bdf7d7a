// The kernel checker's quantized weights handed on to the QDQ insertion
// (WeightCache): the insertion takes an entry only where it would compute
// the same weights, and the model it writes is the one it writes alone.
#include <gtest/gtest.h>

#include <string>

#include "graph_builder.h"
#include "onnxquant/insert_qdq.h"
#include "onnxquant/kernel_checker.h"
#include "onnxquant/node_weights.h"
#include "onnxquant/plan.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

// Ranges of testing::GemmMatMul(1)'s activations.
const RangeMap kRanges = {
    {"x", {-1.f, 3.f}}, {"r", {0.f, 6.f}}, {"y", {-2.f, 6.f}}};

// The insertion's output, with `options`, given the weights a checker with
// `checked` options computed (or none, with `use_cache` false).
std::string Quantized(const QuantOptions& checked, const QuantOptions& options,
                      bool use_cache, WeightCache* cache = nullptr) {
  GraphBuilder b = testing::GemmMatMul(1);
  pb::ModelProto m = b.Build();
  QuantPlan plan = MakePlan(m, b.Dtypes(), checked);
  WeightCache own;
  if (cache == nullptr) cache = &own;
  if (use_cache && cache->empty()) {
    KernelChecker checker(m, plan, checked, kRanges, cache);
  }
  InsertQdq(m, std::move(plan), options, kRanges,
            use_cache ? cache : nullptr);
  return SerializeModel(m);
}

TEST(WeightCache, TheCheckerKeepsEveryCheckedNodesWeights) {
  GraphBuilder b = testing::GemmMatMul(1);
  pb::ModelProto m = b.Build();
  const QuantPlan plan = MakePlan(m, b.Dtypes(), {});
  WeightCache cache;
  KernelChecker checker(m, plan, {}, kRanges, &cache);
  ASSERT_EQ(cache.size(), 2u);
  const CachedWeights& gemm = cache.at(WeightKey("", "gemm"));
  EXPECT_EQ(gemm.weights.weight_name, "W1");
  EXPECT_EQ(gemm.bias_input, 2);
  EXPECT_EQ(gemm.weights.bias.size(), 3u);
  // The input range [-1, 3] in uint8: scale 4 / 255.
  EXPECT_FLOAT_EQ(gemm.input_scale, 4.f / 255.f);
  EXPECT_EQ(cache.at(WeightKey("", "matmul")).weights.weight_name, "W2");
}

TEST(WeightCache, TheInsertionWritesWhatItWritesAlone) {
  const QuantOptions options;
  WeightCache cache;
  const std::string with = Quantized(options, options, true, &cache);
  EXPECT_EQ(with, Quantized(options, options, false));
  EXPECT_TRUE(cache.empty());  // every entry taken
}

TEST(WeightCache, AnEntryIsTakenWhereItsRemedyIsTheInsertions) {
  // A tampered entry shows whether the insertion took it.
  const QuantOptions options;
  WeightCache cache;
  {
    GraphBuilder b = testing::GemmMatMul(1);
    pb::ModelProto m = b.Build();
    KernelChecker checker(m, MakePlan(m, b.Dtypes(), options), options,
                          kRanges, &cache);
  }
  for (auto& v : cache.at(WeightKey("", "matmul")).weights.quant.values) {
    v = 1;
  }
  WeightCache same = cache;
  EXPECT_NE(Quantized(options, options, true, &same),
            Quantized(options, options, false));
  // With a remedy on that node, the insertion quantizes it itself.
  QuantOptions remedied = options;
  remedied.weight_remedies["matmul"].channel_qmax = {100, 100};
  WeightCache other = cache;
  EXPECT_EQ(Quantized(options, remedied, true, &other),
            Quantized(options, remedied, false));
}

}  // namespace
}  // namespace onnxquant
