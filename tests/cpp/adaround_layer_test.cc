// AdaRound on a model's layers (adaround_layer.h): one AdaRoundModel, parsed
// and planned once, lists the layers and gives each its accumulator, which
// keeps what it reads of the model; its rounding gives codes within one step
// of w / scale, with the scale computed here as quantize() defines it.
#include "onnxquant/adaround_layer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "onnxquant/error.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

const std::vector<float>& kW1 = testing::GemmMatMulW1();

std::unique_ptr<AdaRoundModel> Planned() {
  GraphBuilder b = testing::GemmMatMul(2);
  return std::make_unique<AdaRoundModel>(b.Build(), b.Dtypes(), QuantOptions());
}

TEST(AdaRoundModel, ListsTheWeightedNodesInGraphOrder) {
  const auto model = Planned();
  const AdaRoundTargets& t = model->targets();
  ASSERT_EQ(t.layers.size(), 2u);
  EXPECT_EQ(t.layers[0].node, "gemm");
  EXPECT_EQ(t.layers[0].input, "x");
  EXPECT_EQ(t.layers[0].weight, "W1");
  EXPECT_EQ(t.layers[1].node, "matmul");
  EXPECT_EQ(t.layers[1].input, "r");
  EXPECT_EQ(t.layers[1].weight, "W2");
  EXPECT_TRUE(t.skipped.empty());
}

TEST(LayerGramAccumulator, RoundsAfterTheModelIsGone) {
  auto model = Planned();
  LayerGramAccumulator grams(*model, "gemm");
  model.reset();  // the accumulator keeps what it read
  const std::vector<float> x = {1.f,  0.5f,  -0.25f, 2.f,
                                -1.f, 0.75f, 1.5f,   0.2f};
  grams.Add({{x.data(), {2, 4}}}, {}, 1);
  AdaRoundSettings s;
  s.iterations = 50;
  s.threads = 1;
  const LayerRounding r = grams.Round(s);
  EXPECT_EQ(r.weight_name, "W1");
  ASSERT_EQ(r.codes.size(), kW1.size());
  // Gemm with transB = 0: one scale per column (axis 1), max|w| / 127.
  for (int64_t c = 0; c < 3; ++c) {
    float peak = 0.f;
    for (int64_t k = 0; k < 4; ++k) {
      peak = std::max(peak, std::fabs(kW1[k * 3 + c]));
    }
    const float scale = peak / 127.f;
    for (int64_t k = 0; k < 4; ++k) {
      const int64_t e = k * 3 + c;
      EXPECT_LE(std::fabs(r.codes[e] - kW1[e] / scale), 1.f) << e;
      EXPECT_NEAR(r.weight[e], r.codes[e] * scale, 1e-6f) << e;
    }
  }
}

TEST(LayerGramAccumulator, NamesANodeItCannotRound) {
  const auto model = Planned();
  try {
    LayerGramAccumulator grams(*model, "relu");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'relu'"), std::string::npos);
  }
}

}  // namespace
}  // namespace onnxquant
