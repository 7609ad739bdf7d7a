#include "onnxquant/tensor_util.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

// A tensor of `n` floats whose payload is external data at `location`.
pb::TensorProto External(const std::string& location, int64_t offset,
                         int64_t n) {
  pb::TensorProto t;
  t.set_name("w");
  t.set_data_type(pb::TensorProto::FLOAT);
  t.add_dims(n);
  t.set_data_location(pb::TensorProto::EXTERNAL);
  auto* e = t.add_external_data();
  e->set_key("location");
  e->set_value(location);
  e = t.add_external_data();
  e->set_key("offset");
  e->set_value(std::to_string(offset));
  e = t.add_external_data();
  e->set_key("length");
  e->set_value(std::to_string(n * 4));
  return t;
}

class ExternalData : public ::testing::Test {
 protected:
  void SetUp() override {
    // One file per test: CTest runs the tests of this fixture in parallel
    // processes, and each removes its file when it ends.
    path_ = ::testing::TempDir() + "tensor_util_test_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() +
            ".bin";
    std::ofstream out(path_, std::ios::binary);
    const std::vector<float> values = {9.f, 1.f, -2.f, 3.5f};
    out.write(reinterpret_cast<const char*>(values.data()), 16);
  }
  void TearDown() override { std::remove(path_.c_str()); }
  std::string path_;
};

TEST_F(ExternalData, IsReadFromAnAbsoluteLocationAtItsOffset) {
  ASSERT_EQ(path_[0], '/');
  EXPECT_TRUE(PayloadReadable(External(path_, 4, 3)));
  EXPECT_EQ(ToFloats(External(path_, 4, 3)),
            (std::vector<float>{1.f, -2.f, 3.5f}));
}

TEST_F(ExternalData, RelativeLocationIsUnsupported) {
  EXPECT_FALSE(PayloadReadable(External("weights.bin", 0, 4)));
  try {
    ToFloats(External("weights.bin", 0, 4));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupportedModel);
    EXPECT_NE(std::string(e.what()).find("'w' is stored as external data"),
              std::string::npos);
  }
}

TEST_F(ExternalData, ShortFileNamesTheFileAndTensor) {
  try {
    ToFloats(External(path_, 8, 4));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
    const std::string what = e.what();
    EXPECT_NE(what.find(path_), std::string::npos) << what;
    EXPECT_NE(what.find("initializer 'w'"), std::string::npos) << what;
  }
}

TEST_F(ExternalData, LengthThatDisagreesWithTheShapeIsAModelError) {
  pb::TensorProto t = External(path_, 0, 4);
  t.mutable_external_data(2)->set_value("12");
  try {
    ToFloats(t);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModel);
  }
}

}  // namespace
}  // namespace onnxquant
