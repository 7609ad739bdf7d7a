#include "onnxquant/insert_qdq.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <unordered_set>

#include "graph_builder.h"
#include "onnxquant/error.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;

const pb::TensorProto* Init(const pb::GraphProto& g, const std::string& name) {
  for (const auto& t : g.initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

const pb::NodeProto* ProducerOf(const pb::GraphProto& g,
                                const std::string& tensor) {
  for (const auto& n : g.node()) {
    for (const auto& o : n.output()) {
      if (o == tensor) return &n;
    }
  }
  return nullptr;
}

const pb::NodeProto* NodeNamed(const pb::GraphProto& g,
                               const std::string& name) {
  for (const auto& n : g.node()) {
    if (n.name() == name) return &n;
  }
  return nullptr;
}

template <typename T>
std::vector<T> Raw(const pb::TensorProto& t) {
  std::vector<T> v(t.raw_data().size() / sizeof(T));
  std::memcpy(v.data(), t.raw_data().data(), v.size() * sizeof(T));
  return v;
}

int64_t AxisOf(const pb::NodeProto& n) {
  for (const auto& a : n.attribute()) {
    if (a.name() == "axis") return a.i();
  }
  return 1;  // the ONNX default
}

std::vector<std::string> OpTypes(const pb::GraphProto& g) {
  std::vector<std::string> out;
  for (const auto& n : g.node()) out.push_back(n.op_type());
  return out;
}

int CountReaders(const pb::GraphProto& g, const std::string& op,
                 const std::string& tensor) {
  int count = 0;
  for (const auto& n : g.node()) {
    if (n.op_type() == op && n.input_size() > 0 && n.input(0) == tensor) {
      ++count;
    }
  }
  return count;
}

// Every node input is a graph input, an initializer or the output of an
// earlier node; no tensor is produced twice.
void ExpectTopological(const pb::GraphProto& g) {
  std::unordered_set<std::string> known;
  for (const auto& v : g.input()) known.insert(v.name());
  for (const auto& t : g.initializer()) known.insert(t.name());
  for (const auto& n : g.node()) {
    for (const auto& in : n.input()) {
      EXPECT_TRUE(in.empty() || known.count(in))
          << "node " << n.name() << " reads " << in << " before it exists";
    }
    for (const auto& o : n.output()) {
      EXPECT_TRUE(known.insert(o).second) << o << " produced twice";
    }
  }
  for (const auto& v : g.output()) {
    EXPECT_TRUE(known.count(v.name())) << "output " << v.name();
  }
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

// x[1,1,2,2] -> Conv(W1 = {127, -63.5}, B1 = {1, -0.5}) -> c -> Relu -> r
//            -> Conv(W2 = {0.5, -0.125}) -> y
GraphBuilder ConvRelu() {
  GraphBuilder g;
  g.Input("x", {1, 1, 2, 2}).Output("y", {1, 1, 2, 2});
  g.Initializer("W1", {2, 1, 1, 1}, {127.f, -63.5f});
  g.Initializer("B1", {2}, {1.f, -0.5f});
  g.Initializer("W2", {1, 2, 1, 1}, {0.5f, -0.125f});
  g.Node("Conv", {"x", "W1", "B1"}, {"c"}, "conv1");
  g.Node("Relu", {"c"}, {"r"}, "relu");
  g.Node("Conv", {"r", "W2"}, {"y"}, "conv2");
  return g;
}

const RangeMap kConvReluRanges = {
    {"x", {-1.f, 3.f}}, {"r", {0.f, 6.f}}, {"y", {-2.f, 6.f}}};

TEST(InsertQdq, ConvReluModel) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  const QuantizeReport report = InsertQdq(m, b.Dtypes(), {}, kConvReluRanges);
  const pb::GraphProto& g = m.graph();
  ExpectTopological(g);
  // Weight and bias DQs, the input pair, then each Conv and its output pair;
  // the Relu is gone.
  EXPECT_EQ(OpTypes(g),
            (std::vector<std::string>{
                "DequantizeLinear", "DequantizeLinear", "DequantizeLinear",
                "QuantizeLinear", "DequantizeLinear", "Conv", "QuantizeLinear",
                "DequantizeLinear", "Conv", "QuantizeLinear",
                "DequantizeLinear"}));
  ASSERT_EQ(report.plan.absorbed.size(), 1u);
  EXPECT_TRUE(report.floored.empty());
  EXPECT_TRUE(report.enlarged.empty());
  // Graph interface unchanged.
  ASSERT_EQ(g.output_size(), 1);
  EXPECT_EQ(g.output(0).name(), "y");
  ASSERT_EQ(g.input_size(), 1);
  EXPECT_EQ(g.input(0).name(), "x");
  EXPECT_EQ(ProducerOf(g, "y")->op_type(), "DequantizeLinear");
  // The float weights are gone.
  EXPECT_EQ(Init(g, "W1"), nullptr);
  EXPECT_EQ(Init(g, "B1"), nullptr);
  EXPECT_EQ(Init(g, "W2"), nullptr);
}

TEST(InsertQdq, ConvReluWeightsAndBias) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  InsertQdq(m, b.Dtypes(), {}, kConvReluRanges);
  const pb::GraphProto& g = m.graph();
  const pb::NodeProto* conv1 = NodeNamed(g, "conv1");
  ASSERT_NE(conv1, nullptr);
  ASSERT_EQ(conv1->input_size(), 3);

  // Weight: channel 0 max 127 -> scale 1; channel 1 max 63.5 -> scale 0.5.
  const pb::NodeProto* wdq = ProducerOf(g, conv1->input(1));
  ASSERT_NE(wdq, nullptr);
  EXPECT_EQ(wdq->op_type(), "DequantizeLinear");
  EXPECT_EQ(AxisOf(*wdq), 0);
  const pb::TensorProto* wq = Init(g, wdq->input(0));
  ASSERT_NE(wq, nullptr);
  EXPECT_EQ(wq->data_type(), pb::TensorProto::INT8);
  EXPECT_EQ(Dims(*wq), (std::vector<int64_t>{2, 1, 1, 1}));
  EXPECT_EQ(Raw<int8_t>(*wq), (std::vector<int8_t>{127, -127}));
  EXPECT_EQ(ToFloats(*Init(g, wdq->input(1))),
            (std::vector<float>{1.f, 0.5f}));
  const pb::TensorProto* wz = Init(g, wdq->input(2));
  EXPECT_EQ(wz->data_type(), pb::TensorProto::INT8);
  EXPECT_EQ(Raw<int8_t>(*wz), (std::vector<int8_t>{0, 0}));

  // Bias: scale = (4/255) * weight scale; 1 / (4/255) = 63.75 -> 64,
  // -0.5 / (2/255) = -63.75 -> -64.
  const pb::NodeProto* bdq = ProducerOf(g, conv1->input(2));
  ASSERT_NE(bdq, nullptr);
  EXPECT_EQ(AxisOf(*bdq), 0);
  const pb::TensorProto* bq = Init(g, bdq->input(0));
  EXPECT_EQ(bq->data_type(), pb::TensorProto::INT32);
  EXPECT_EQ(Raw<int32_t>(*bq), (std::vector<int32_t>{64, -64}));
  EXPECT_EQ(ToFloats(*Init(g, bdq->input(1))),
            (std::vector<float>{4.f / 255.f, (4.f / 255.f) * 0.5f}));
  EXPECT_EQ(Init(g, bdq->input(2))->data_type(), pb::TensorProto::INT32);

  // conv2: one output channel, max 0.5: 0.5 -> 127, -0.125 -> -31.75 -> -32.
  const pb::NodeProto* conv2 = NodeNamed(g, "conv2");
  const pb::NodeProto* w2dq = ProducerOf(g, conv2->input(1));
  EXPECT_EQ(Raw<int8_t>(*Init(g, w2dq->input(0))),
            (std::vector<int8_t>{127, -32}));
  EXPECT_EQ(ToFloats(*Init(g, w2dq->input(1))),
            (std::vector<float>{0.5f / 127.f}));
}

TEST(InsertQdq, ConvReluActivationParameters) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  InsertQdq(m, b.Dtypes(), {}, kConvReluRanges);
  const pb::GraphProto& g = m.graph();
  // x: [-1, 3] -> scale 4/255, uint8 zero point 64.
  const pb::NodeProto* conv1 = NodeNamed(g, "conv1");
  const pb::NodeProto* xdq = ProducerOf(g, conv1->input(0));
  ASSERT_EQ(xdq->op_type(), "DequantizeLinear");
  const pb::NodeProto* xq = ProducerOf(g, xdq->input(0));
  ASSERT_EQ(xq->op_type(), "QuantizeLinear");
  EXPECT_EQ(xq->input(0), "x");
  EXPECT_EQ(ToFloats(*Init(g, xq->input(1))),
            (std::vector<float>{4.f / 255.f}));
  const pb::TensorProto* xzp = Init(g, xq->input(2));
  EXPECT_EQ(xzp->data_type(), pb::TensorProto::UINT8);
  EXPECT_EQ(Raw<uint8_t>(*xzp), (std::vector<uint8_t>{64}));
  // The Conv writes the Relu's range: r [0, 6] -> scale 6/255, zp 0.
  const pb::NodeProto* conv2 = NodeNamed(g, "conv2");
  EXPECT_EQ(conv2->input(0), "r");
  const pb::NodeProto* rdq = ProducerOf(g, "r");
  const pb::NodeProto* rq = ProducerOf(g, rdq->input(0));
  EXPECT_EQ(rq->input(0), conv1->output(0));
  EXPECT_EQ(ToFloats(*Init(g, rq->input(1))),
            (std::vector<float>{6.f / 255.f}));
  EXPECT_EQ(Raw<uint8_t>(*Init(g, rq->input(2))), (std::vector<uint8_t>{0}));
  // y: [-2, 6] -> scale 8/255, zp round(63.75) = 64.
  const pb::NodeProto* yq = ProducerOf(g, ProducerOf(g, "y")->input(0));
  EXPECT_EQ(Raw<uint8_t>(*Init(g, yq->input(2))), (std::vector<uint8_t>{64}));
}

TEST(InsertQdq, ReducedWeightRange) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  QuantOptions o;
  o.reduce_weight_range = true;
  InsertQdq(m, b.Dtypes(), o, kConvReluRanges);
  const pb::GraphProto& g = m.graph();
  const pb::NodeProto* wdq = ProducerOf(g, NodeNamed(g, "conv1")->input(1));
  // qmax 63: scales 127/63 and 63.5/63; values +-63.
  EXPECT_EQ(Raw<int8_t>(*Init(g, wdq->input(0))),
            (std::vector<int8_t>{63, -63}));
  EXPECT_EQ(ToFloats(*Init(g, wdq->input(1))),
            (std::vector<float>{127.f / 63.f, 63.5f / 63.f}));
}

TEST(InsertQdq, PerTensorWeightAndBias) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  QuantOptions o;
  o.per_channel = false;
  InsertQdq(m, b.Dtypes(), o, kConvReluRanges);
  const pb::GraphProto& g = m.graph();
  const pb::NodeProto* conv1 = NodeNamed(g, "conv1");
  // One scale, max 127 -> 1: -63.5 -> -64 (half to even).
  const pb::NodeProto* wdq = ProducerOf(g, conv1->input(1));
  EXPECT_EQ(Raw<int8_t>(*Init(g, wdq->input(0))),
            (std::vector<int8_t>{127, -64}));
  const pb::TensorProto* ws = Init(g, wdq->input(1));
  EXPECT_EQ(ws->dims_size(), 0);
  EXPECT_EQ(ToFloats(*ws), (std::vector<float>{1.f}));
  // Bias scale 4/255 for both: 63.75 -> 64, -31.875 -> -32.
  const pb::NodeProto* bdq = ProducerOf(g, conv1->input(2));
  EXPECT_EQ(Raw<int32_t>(*Init(g, bdq->input(0))),
            (std::vector<int32_t>{64, -32}));
  EXPECT_EQ(ToFloats(*Init(g, bdq->input(1))),
            (std::vector<float>{4.f / 255.f}));
  EXPECT_EQ(Init(g, bdq->input(1))->dims_size(), 0);
}

TEST(InsertQdq, GemmWeightPerColumnWithBias) {
  // transB = 0: W is [K = 2, N = 3], channels along axis 1.
  GraphBuilder b;
  b.Input("x", {1, 2}).Output("y", {1, 3});
  b.Initializer("W", {2, 3},
                {127.f, -63.5f, 0.9921875f, -254.f, 31.75f, -0.5f});
  b.Initializer("C", {3}, {1.f, 0.5f, 0.25f});
  b.Node("Gemm", {"x", "W", "C"}, {"y"}, "gemm");
  pb::ModelProto m = b.Build();
  InsertQdq(m, b.Dtypes(), {}, {{"x", {-1.f, 3.f}}, {"y", {-2.f, 6.f}}});
  const pb::GraphProto& g = m.graph();
  ExpectTopological(g);
  const pb::NodeProto* gemm = NodeNamed(g, "gemm");
  const pb::NodeProto* wdq = ProducerOf(g, gemm->input(1));
  EXPECT_EQ(AxisOf(*wdq), 1);
  // Columns {127, -254} -> 2, {-63.5, 31.75} -> 0.5, {127/128, -0.5} -> 1/128.
  EXPECT_EQ(ToFloats(*Init(g, wdq->input(1))),
            (std::vector<float>{2.f, 0.5f, 0.0078125f}));
  EXPECT_EQ(Raw<int8_t>(*Init(g, wdq->input(0))),
            (std::vector<int8_t>{64, -127, 127, -127, 64, -64}));
  // Bias scales (4/255) * {2, 0.5, 1/128}: 1 / (8/255) = 31.875 -> 32,
  // 0.5 / (2/255) = 63.75 -> 64, 0.25 / (4/255/128) = 2040.
  const pb::NodeProto* bdq = ProducerOf(g, gemm->input(2));
  EXPECT_EQ(Raw<int32_t>(*Init(g, bdq->input(0))),
            (std::vector<int32_t>{32, 64, 2040}));
  const float in = 4.f / 255.f;
  EXPECT_EQ(ToFloats(*Init(g, bdq->input(1))),
            (std::vector<float>{in * 2.f, in * 0.5f, in * 0.0078125f}));
}

// x -> conv1 -> c;  c -> conv2 -> y2;  c -> conv3 -> y3.
GraphBuilder Branching() {
  GraphBuilder g;
  g.Input("x", {1, 1, 2, 2});
  g.Output("y2", {1, 1, 2, 2}).Output("y3", {1, 1, 2, 2});
  g.Initializer("W1", {1, 1, 1, 1}, {1.f});
  g.Initializer("W2", {1, 1, 1, 1}, {2.f});
  g.Initializer("W3", {1, 1, 1, 1}, {-1.f});
  g.Node("Conv", {"x", "W1"}, {"c"}, "conv1");
  g.Node("Conv", {"c", "W2"}, {"y2"}, "conv2");
  g.Node("Conv", {"c", "W3"}, {"y3"}, "conv3");
  return g;
}

const RangeMap kBranchingRanges = {{"x", {-1.f, 3.f}},
                                   {"c", {-2.f, 6.f}},
                                   {"y2", {-2.f, 2.f}},
                                   {"y3", {-1.f, 1.f}}};

TEST(InsertQdq, Int8GivesEachConsumerItsOwnPair) {
  GraphBuilder b = Branching();
  pb::ModelProto m = b.Build();
  QuantOptions o;
  o.activation_type = ActivationType::kInt8;
  InsertQdq(m, b.Dtypes(), o, kBranchingRanges);
  const pb::GraphProto& g = m.graph();
  ExpectTopological(g);
  const std::string c_float = NodeNamed(g, "conv1")->output(0);
  EXPECT_NE(c_float, "c");
  EXPECT_EQ(CountReaders(g, "QuantizeLinear", c_float), 2);
  // The two consumers read different DQ outputs, each read once.
  const std::string in2 = NodeNamed(g, "conv2")->input(0);
  const std::string in3 = NodeNamed(g, "conv3")->input(0);
  EXPECT_NE(in2, in3);
  std::set<std::string> scale_names;
  for (const std::string& t : {in2, in3}) {
    const pb::NodeProto* dq = ProducerOf(g, t);
    ASSERT_NE(dq, nullptr);
    EXPECT_EQ(dq->op_type(), "DequantizeLinear");
    EXPECT_EQ(CountReaders(g, "DequantizeLinear", dq->input(0)), 1);
    const pb::NodeProto* q = ProducerOf(g, dq->input(0));
    EXPECT_EQ(q->input(0), c_float);
    // c: [-2, 6] int8 -> scale 8/255, zp round(-128 + 63.75) = -64.
    const pb::TensorProto* zp = Init(g, q->input(2));
    EXPECT_EQ(zp->data_type(), pb::TensorProto::INT8);
    EXPECT_EQ(Raw<int8_t>(*zp), (std::vector<int8_t>{-64}));
    EXPECT_EQ(ToFloats(*Init(g, q->input(1))),
              (std::vector<float>{8.f / 255.f}));
    scale_names.insert(q->input(1));
  }
  // Each pair has initializers of its own (equal values), so that ONNX
  // Runtime cannot merge the pairs back into one Q with two consumers.
  EXPECT_EQ(scale_names.size(), 2u);
  // x: [-1, 3] int8 -> zp round(-128 + 63.75) = -64.
  const pb::NodeProto* xq = ProducerOf(
      g, ProducerOf(g, NodeNamed(g, "conv1")->input(0))->input(0));
  EXPECT_EQ(Raw<int8_t>(*Init(g, xq->input(2))), (std::vector<int8_t>{-64}));
  EXPECT_EQ(g.output(0).name(), "y2");
  EXPECT_EQ(g.output(1).name(), "y3");
}

TEST(InsertQdq, Uint8SharesOnePairAmongConsumers) {
  GraphBuilder b = Branching();
  pb::ModelProto m = b.Build();
  InsertQdq(m, b.Dtypes(), {}, kBranchingRanges);
  const pb::GraphProto& g = m.graph();
  ExpectTopological(g);
  const std::string c_float = NodeNamed(g, "conv1")->output(0);
  EXPECT_EQ(CountReaders(g, "QuantizeLinear", c_float), 1);
  EXPECT_EQ(NodeNamed(g, "conv2")->input(0), "c");
  EXPECT_EQ(NodeNamed(g, "conv3")->input(0), "c");
}

TEST(InsertQdq, Int8GraphInputWithTwoConsumersGetsTwoPairs) {
  GraphBuilder b;
  b.Input("x", {1, 1, 2, 2});
  b.Output("y1", {1, 1, 2, 2}).Output("y2", {1, 1, 2, 2});
  b.Initializer("W1", {1, 1, 1, 1}, {1.f});
  b.Initializer("W2", {1, 1, 1, 1}, {2.f});
  b.Node("Conv", {"x", "W1"}, {"y1"}, "conv1");
  b.Node("Conv", {"x", "W2"}, {"y2"}, "conv2");
  const RangeMap ranges = {
      {"x", {-1.f, 3.f}}, {"y1", {-1.f, 3.f}}, {"y2", {-2.f, 6.f}}};
  for (auto type : {ActivationType::kUint8, ActivationType::kInt8}) {
    pb::ModelProto m = b.Build();
    QuantOptions o;
    o.activation_type = type;
    InsertQdq(m, b.Dtypes(), o, ranges);
    ExpectTopological(m.graph());
    EXPECT_EQ(CountReaders(m.graph(), "QuantizeLinear", "x"),
              type == ActivationType::kInt8 ? 2 : 1);
  }
}

TEST(InsertQdq, ConstantOperandIsQuantizedFromItsValues) {
  GraphBuilder b;
  b.Input("x", {1, 2}).Output("y", {1, 2});
  b.Initializer("k", {2}, {0.25f, -0.5f});
  b.Node("Add", {"x", "k"}, {"y"}, "add");
  pb::ModelProto m = b.Build();
  InsertQdq(m, b.Dtypes(), {}, {{"x", {-1.f, 1.f}}, {"y", {-2.f, 2.f}}});
  const pb::GraphProto& g = m.graph();
  ExpectTopological(g);
  EXPECT_EQ(Init(g, "k"), nullptr);
  const pb::NodeProto* kdq = ProducerOf(g, NodeNamed(g, "add")->input(1));
  ASSERT_EQ(kdq->op_type(), "DequantizeLinear");
  // [-0.5, 0.25]: scale 0.75/255, zp 0.5 / scale = 170; 0.25 -> 85 + 170.
  EXPECT_EQ(Raw<uint8_t>(*Init(g, kdq->input(0))),
            (std::vector<uint8_t>{255, 0}));
  EXPECT_EQ(Raw<uint8_t>(*Init(g, kdq->input(2))), (std::vector<uint8_t>{170}));
}

TEST(InsertQdq, MissingRangeThrowsNamingTheTensorAndLeavesTheModel) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  const std::string before = SerializeModel(m);
  RangeMap ranges = kConvReluRanges;
  ranges.erase("r");
  std::string what;
  EXPECT_EQ(KindOf([&] { InsertQdq(m, b.Dtypes(), {}, ranges); }, &what),
            ErrorKind::kRange);
  EXPECT_NE(what.find("'r'"), std::string::npos) << what;
  EXPECT_EQ(SerializeModel(m), before);
}

TEST(InsertQdq, NanOrInvertedRangeThrowsNamingTheTensor) {
  GraphBuilder b = ConvRelu();
  for (auto bad : {std::make_pair(std::numeric_limits<float>::quiet_NaN(), 1.f),
                   std::make_pair(3.f, 1.f)}) {
    pb::ModelProto m = b.Build();
    RangeMap ranges = kConvReluRanges;
    ranges["y"] = bad;
    std::string what;
    EXPECT_EQ(KindOf([&] { InsertQdq(m, b.Dtypes(), {}, ranges); }, &what),
              ErrorKind::kRange);
    EXPECT_NE(what.find("'y'"), std::string::npos) << what;
  }
}

TEST(InsertQdq, ZeroRangeIsFlooredAndReported) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  RangeMap ranges = kConvReluRanges;
  ranges["r"] = {0.f, 0.f};
  const QuantizeReport report = InsertQdq(m, b.Dtypes(), {}, ranges);
  EXPECT_EQ(report.floored, (std::vector<std::string>{"r"}));
}

TEST(ExposeTensors, AddsOutputsOnceInOrder) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  DtypeMap dtypes = b.Dtypes();
  ExposeTensors(m, {"c", "x", "c", "y", "r"}, dtypes);
  std::vector<std::string> outs;
  for (const auto& o : m.graph().output()) outs.push_back(o.name());
  EXPECT_EQ(outs, (std::vector<std::string>{"y", "c", "x", "r"}));
  EXPECT_EQ(m.graph().output(1).type().tensor_type().elem_type(),
            pb::TensorProto::FLOAT);
  EXPECT_EQ(m.graph().node_size(), 3);  // nothing else changes
}

TEST(ExposeTensors, UnknownNameThrowsModelError) {
  GraphBuilder b = ConvRelu();
  pb::ModelProto m = b.Build();
  std::string what;
  EXPECT_EQ(KindOf([&] { ExposeTensors(m, {"c", "ghost"}, b.Dtypes()); },
                   &what),
            ErrorKind::kModel);
  EXPECT_NE(what.find("ghost"), std::string::npos) << what;
}

}  // namespace
}  // namespace onnxquant
