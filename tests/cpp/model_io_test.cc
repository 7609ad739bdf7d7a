#include "onnxquant/model_io.h"

#include <gtest/gtest.h>

#include "graph_builder.h"
#include "onnxquant/error.h"

namespace onnxquant {
namespace {

TEST(ModelIo, RoundTripsAModel) {
  testing::GraphBuilder b(13);
  b.Input("x", {1, 4}).Output("y", {1, 4});
  b.Node("Relu", {"x"}, {"y"});
  const std::string bytes = SerializeModel(b.Build());
  pb::ModelProto back = ParseModel(bytes);
  EXPECT_EQ(back.graph().node_size(), 1);
  EXPECT_EQ(back.graph().node(0).op_type(), "Relu");
  EXPECT_EQ(DefaultOpset(back), 13);
}

TEST(ModelIo, TruncatedBytesRaiseModelError) {
  testing::GraphBuilder b(13);
  b.Input("x", {1, 4}).Output("y", {1, 4});
  b.Node("Relu", {"x"}, {"y"});
  const std::string bytes = SerializeModel(b.Build());
  try {
    ParseModel(std::string_view(bytes).substr(0, bytes.size() / 2));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
  }
}

TEST(ModelIo, EmptyBytesRaiseModelError) {
  try {
    ParseModel("");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    EXPECT_NE(std::string(e.what()).find("empty"), std::string::npos);
  }
}

}  // namespace
}  // namespace onnxquant
