// Malformed models are refused with Error(kModel) naming the node or tensor,
// at every engine entry point, instead of crashing the process. Each case
// below crashed (or allocated without bound) before validate_model existed.
#include "onnxquant/validate_model.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "onnxquant/arithmetic.h"
#include "onnxquant/error.h"
#include "onnxquant/insert_qdq.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/plan.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

// The kind and message of the Error `f` throws; fails the test if it throws
// nothing.
struct Thrown {
  ErrorKind kind = ErrorKind::kInternal;
  std::string what;
};
Thrown Catch(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.kind(), e.what()};
  }
  ADD_FAILURE() << "no Error thrown";
  return {};
}

std::vector<std::string> AllPasses() {
  std::vector<std::string> names;
  for (const auto& p : RegisteredPasses()) names.emplace_back(p.name);
  return names;
}

// Every engine entry point refuses `model` with a ModelError whose message
// contains `needle`.
void ExpectRefusedEverywhere(const pb::ModelProto& model,
                             const std::string& needle) {
  DtypeMap dtypes;
  for (const auto& n : model.graph().node()) {
    for (const auto& o : n.output()) dtypes[o] = pb::TensorProto::FLOAT;
  }
  for (const auto& v : model.graph().input()) {
    dtypes[v.name()] = pb::TensorProto::FLOAT;
  }
  for (const auto& t : model.graph().initializer()) {
    dtypes[t.name()] = t.data_type();
  }
  RangeMap ranges;
  for (const auto& [name, type] : dtypes) ranges[name] = {-1.f, 1.f};
  const std::vector<std::function<void()>> entries = {
      [&] { pb::ModelProto m = model; RunPasses(m, AllPasses()); },
      [&] { MakePlan(model, dtypes, QuantOptions()); },
      [&] { pb::ModelProto m = model; InsertQdq(m, dtypes, {}, ranges); },
      [&] { pb::ModelProto m = model; ExposeTensors(m, {"y"}, dtypes); },
  };
  for (size_t i = 0; i < entries.size(); ++i) {
    Thrown t = Catch(entries[i]);
    EXPECT_EQ(t.kind, ErrorKind::kModel) << "entry " << i << ": " << t.what;
    EXPECT_NE(t.what.find(needle), std::string::npos)
        << "entry " << i << ": " << t.what;
  }
}

// x [1, 2, 4, 4] -> Conv(w, b) -> y, with the weight and bias given.
GraphBuilder ConvModel(const std::string& op, std::vector<int64_t> wdims,
                       std::vector<float> w, std::vector<int64_t> bdims = {},
                       std::vector<float> b = {}) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {});
  g.Initializer("w", wdims, w);
  std::vector<std::string> inputs = {"x", "w"};
  if (!bdims.empty()) {
    g.Initializer("b", bdims, b);
    inputs.push_back("b");
  }
  g.Node(op, inputs, {"y"}, "conv");
  return g;
}

TEST(ValidateModelTest, AcceptsAWellFormedConv) {
  GraphBuilder g = ConvModel("Conv", {3, 2, 1, 1}, std::vector<float>(6, 1.f),
                             {3}, {0.f, 1.f, 2.f});
  EXPECT_NO_THROW(ValidateModelForPlan(g.model()));
  pb::ModelProto m = g.Build();
  RangeMap ranges = {{"x", {-1.f, 1.f}}, {"y", {-2.f, 2.f}}};
  EXPECT_NO_THROW(InsertQdq(m, g.Dtypes(), QuantOptions(), ranges));
}

TEST(ValidateModelTest, ConvWithAScalarWeight) {
  ExpectRefusedEverywhere(ConvModel("Conv", {}, {0.5f}).Build(),
                          "node 'conv' (Conv) has a weight 'w' of rank 0");
}

TEST(ValidateModelTest, ConvTransposeWithAScalarWeight) {
  ExpectRefusedEverywhere(ConvModel("ConvTranspose", {}, {0.5f}).Build(),
                          "node 'conv' (ConvTranspose) has a weight 'w' of "
                          "rank 0");
}

TEST(ValidateModelTest, ConvWithZeroOutputChannelsAndABias) {
  ExpectRefusedEverywhere(
      ConvModel("Conv", {0, 2, 1, 1}, {}, {1}, {1.f}).Build(),
      "node 'conv' (Conv) has a bias 'b' of shape [1] for 0 output channels");
}

TEST(ValidateModelTest, BiasLongerThanTheChannels) {
  ExpectRefusedEverywhere(
      ConvModel("Conv", {2, 2, 1, 1}, std::vector<float>(4, 1.f), {5},
                std::vector<float>(5, 1.f))
          .Build(),
      "has a bias 'b' of shape [5] for 2 output channels");
}

// [2^32 + 1, 2^32 - 1, -4] multiplies to 4 in wrapping int64 arithmetic,
// which matched 4 floats of raw data; quantize then allocated 2^32 channels.
TEST(ValidateModelTest, WeightDimsWhoseProductWraps) {
  GraphBuilder g = ConvModel("Conv", {1, 2, 1, 1}, {1.f, 2.f});
  auto* w = g.model().mutable_graph()->mutable_initializer(0);
  w->clear_dims();
  for (int64_t d : {(int64_t{1} << 32) + 1, (int64_t{1} << 32) - 1,
                    int64_t{-4}}) {
    w->add_dims(d);
  }
  w->set_raw_data(std::string(16, '\0'));
  ExpectRefusedEverywhere(g.Build(), "Initializer 'w' has a negative dim");
  w->set_dims(2, 4);
  w->add_dims(1);
  ExpectRefusedEverywhere(g.Build(),
                          "Initializer 'w' has dims whose product exceeds");
}

// Found by the fuzzer: the kernel check raised InternalError ("inconsistent
// ConvGeometry") for these.
TEST(ValidateModelTest, ConvWeightNotAMultipleOfTheGroup) {
  GraphBuilder g = ConvModel("Conv", {3, 1, 1, 1}, {1.f, 2.f, 3.f});
  GraphBuilder::IntAttr(g.model().mutable_graph()->mutable_node(0), "group",
                        2);
  ExpectRefusedEverywhere(g.Build(),
                          "whose first dim (3) is not a multiple of its "
                          "group (2)");
}

TEST(ValidateModelTest, ConvWeightWithAnEmptyKernel) {
  ExpectRefusedEverywhere(ConvModel("Conv", {2, 2, 0, 1}, {}).Build(),
                          "with an empty kernel (dim 2 is 0)");
}

// Found by the fuzzer: a NaN weight was cast to int8 (undefined behaviour,
// reported by UBSan) by QuantizeWeight.
TEST(ValidateModelTest, NonFiniteWeightOrBiasIsAModelError) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (int which = 0; which < 2; ++which) {
    GraphBuilder g =
        which == 0 ? ConvModel("Conv", {2, 2, 1, 1}, {1.f, nan, 0.f, 1.f})
                   : ConvModel("Conv", {2, 2, 1, 1}, {1.f, 2.f, 0.f, 1.f}, {2},
                               {inf, 0.f});
    pb::ModelProto m = g.Build();
    RangeMap ranges = {{"x", {-1.f, 1.f}}, {"y", {-2.f, 2.f}}};
    Thrown t = Catch([&] { InsertQdq(m, g.Dtypes(), QuantOptions(), ranges); });
    EXPECT_EQ(t.kind, ErrorKind::kModel) << t.what;
    EXPECT_NE(t.what.find(std::string(which == 0 ? "weight 'w'" : "bias 'b'") +
                          " of node 'conv' (Conv) holds a non-finite value"),
              std::string::npos)
        << t.what;
  }
}

TEST(ValidateModelTest, NodesOutOfTopologicalOrder) {
  GraphBuilder g;
  g.Input("x", {1, 4}).Output("y", {1, 4});
  g.Node("Relu", {"t"}, {"y"}, "second");
  g.Node("Relu", {"x"}, {"t"}, "first");
  ExpectRefusedEverywhere(g.Build(),
                          "node 'second' (Relu) reads tensor 't' before node "
                          "'first' (Relu) writes it");
}

TEST(ValidateModelTest, RawDataOfTheWrongSize) {
  GraphBuilder g = ConvModel("Conv", {1, 2, 1, 1}, {1.f, 2.f});
  g.model().mutable_graph()->mutable_initializer(0)->set_raw_data("abc");
  ExpectRefusedEverywhere(g.Build(),
                          "Initializer 'w' holds 3 bytes of raw data where "
                          "its dims need 8");
}

TEST(ValidateModelTest, UndefinedDataType) {
  GraphBuilder g = ConvModel("Conv", {1, 2, 1, 1}, {1.f, 2.f});
  g.model().mutable_graph()->mutable_initializer(0)->set_data_type(999);
  ExpectRefusedEverywhere(g.Build(), "Initializer 'w' has data type 999");
}

TEST(ValidateModelTest, ConvWithOneInput) {
  GraphBuilder g;
  g.Input("x", {1, 2, 4, 4}).Output("y", {});
  g.Node("Conv", {"x"}, {"y"}, "conv");
  ExpectRefusedEverywhere(g.Build(),
                          "node 'conv' (Conv) has 1 inputs and 1 outputs");
}

TEST(ValidateModelTest, NodeWithoutOutputs) {
  GraphBuilder g;
  g.Input("x", {1, 4}).Output("y", {1, 4});
  g.Node("Relu", {"x"}, {"y"}, "relu");
  g.Node("Sigmoid", {"y"}, {}, "sink");
  ExpectRefusedEverywhere(g.Build(), "node 'sink' (Sigmoid) has no output");
}

TEST(ValidateModelTest, TensorWrittenTwice) {
  GraphBuilder g;
  g.Input("x", {1, 4}).Output("y", {1, 4});
  g.Node("Relu", {"x"}, {"y"}, "a");
  g.Node("Sigmoid", {"x"}, {"y"}, "b");
  ExpectRefusedEverywhere(g.Build(),
                          "node 'b' (Sigmoid) writes tensor 'y', which node "
                          "'a' (Relu) already provides");
}

TEST(ValidateModelTest, UnnamedNodeIsNamedByIndex) {
  GraphBuilder g;
  g.Input("x", {1, 4}).Output("y", {1, 4});
  g.Node("Relu", {"missing"}, {"y"})->set_name("");
  Thrown t = Catch([&] { ValidateModel(g.model()); });
  EXPECT_EQ(t.kind, ErrorKind::kModel);
  EXPECT_NE(t.what.find("node #0 (Relu) reads tensor 'missing'"),
            std::string::npos)
      << t.what;
}

TEST(ValidateModelTest, PlanNeedsUniqueNodeNames) {
  GraphBuilder g;
  g.Input("x", {1, 4}).Output("y", {1, 4});
  g.Node("Relu", {"x"}, {"t"}, "same");
  g.Node("Relu", {"t"}, {"y"}, "same");
  EXPECT_NO_THROW(ValidateModel(g.model()));
  Thrown t = Catch([&] { MakePlan(g.model(), g.Dtypes(), QuantOptions()); });
  EXPECT_EQ(t.kind, ErrorKind::kModel);
  EXPECT_NE(t.what.find("node 'same' (Relu) has the same name as node #0"),
            std::string::npos)
      << t.what;
}

TEST(ValidateModelTest, ConstantValueAttributeIsChecked) {
  GraphBuilder g;
  g.Input("x", {1, 2}).Output("y", {1, 2});
  pb::TensorProto bad = FloatTensor("", {3}, {1.f, 2.f, 3.f});
  bad.set_raw_data("xy");
  GraphBuilder::TensorAttr(g.Node("Constant", {}, {"c"}, "const"), "value",
                           bad);
  g.Node("Add", {"x", "c"}, {"y"}, "add");
  ExpectRefusedEverywhere(g.Build(),
                          "Attribute 'value' of node 'const' (Constant) "
                          "holds 2 bytes");
}

TEST(CheckedNumElementsTest, CountsAndRefuses) {
  EXPECT_EQ(CheckedNumElements({}, "t"), 1);
  EXPECT_EQ(CheckedNumElements({2, 3, 4}, "t"), 24);
  EXPECT_EQ(CheckedNumElements({int64_t{1} << 20, 0, int64_t{1} << 20}, "t"),
            0);
  // Empty, but a partial product would still overflow.
  EXPECT_THROW(
      CheckedNumElements({int64_t{1} << 40, 0, int64_t{1} << 40}, "t"), Error);
  EXPECT_THROW(CheckedNumElements({int64_t{1} << 40, int64_t{1} << 40}, "t"),
               Error);
  EXPECT_THROW(CheckedNumElements({2, -1}, "t"), Error);
}

TEST(QuantizeBiasTest, RefusesABiasLongerThanTheScales) {
  std::vector<float> scales;
  Thrown t = Catch([&] {
    QuantizeBias({1.f, 2.f, 3.f}, 0.1f, {0.5f, 0.5f}, &scales);
  });
  EXPECT_EQ(t.kind, ErrorKind::kInvalidArgument);
}

}  // namespace
}  // namespace onnxquant
