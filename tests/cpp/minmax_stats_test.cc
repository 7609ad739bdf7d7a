#include "onnxquant/minmax_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Deterministic values in about [-50, 70], with a few non-finite ones.
std::vector<float> Data(int n, int seed) {
  std::vector<float> v(n);
  uint32_t s = 2463534242u + seed;
  for (int i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    v[i] = static_cast<float>(s % 12001) / 100.f - 50.f;
  }
  if (n > 10) {
    v[3] = kNaN;
    v[7] = kInf;
    v[n - 2] = -kInf;
  }
  return v;
}

void ExpectSame(const TensorMinMax& a, const TensorMinMax& b) {
  EXPECT_EQ(a.min, b.min);
  EXPECT_EQ(a.max, b.max);
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.nan, b.nan);
  EXPECT_EQ(a.pos_inf, b.pos_inf);
  EXPECT_EQ(a.neg_inf, b.neg_inf);
}

// Chunks of `size` (the last one shorter) covering `v`.
std::vector<FloatChunk> Chunks(int tensor, const std::vector<float>& v,
                               int64_t size) {
  std::vector<FloatChunk> out;
  for (int64_t i = 0; i < static_cast<int64_t>(v.size()); i += size) {
    out.push_back({tensor, v.data() + i,
                   std::min<int64_t>(size, v.size() - i)});
  }
  return out;
}

TEST(TensorMinMax, CountsNonFiniteValuesAndLeavesThemOut) {
  const std::vector<float> v = {1.f, -2.f, kNaN, kInf, -kInf, 3.f, kNaN};
  TensorMinMax s;
  s.Update(v.data(), static_cast<int64_t>(v.size()));
  EXPECT_EQ(s.min, -2.f);
  EXPECT_EQ(s.max, 3.f);
  EXPECT_EQ(s.count, 3);
  EXPECT_EQ(s.nan, 2);
  EXPECT_EQ(s.pos_inf, 1);
  EXPECT_EQ(s.neg_inf, 1);
}

TEST(TensorMinMax, OnlyNonFiniteValuesLeaveTheRangeEmpty) {
  const std::vector<float> v = {kNaN, kInf};
  TensorMinMax s;
  s.Update(v.data(), 2);
  EXPECT_EQ(s.count, 0);
  EXPECT_GT(s.min, s.max);  // still the empty range
  EXPECT_EQ(s.nan, 1);
  EXPECT_EQ(s.pos_inf, 1);
}

TEST(TensorMinMax, AccumulatesAcrossUpdates) {
  const std::vector<float> a = {0.5f, 2.f}, b = {-7.f, 1.f};
  TensorMinMax s;
  s.Update(a.data(), 2);
  s.Update(b.data(), 2);
  EXPECT_EQ(s.min, -7.f);
  EXPECT_EQ(s.max, 2.f);
  EXPECT_EQ(s.count, 4);
}

TEST(MinMaxStats, IndexOf) {
  MinMaxStats stats({"a", "b"});
  EXPECT_EQ(stats.IndexOf("a"), 0);
  EXPECT_EQ(stats.IndexOf("b"), 1);
  EXPECT_EQ(stats.IndexOf("c"), -1);
  EXPECT_EQ(stats.names(), (std::vector<std::string>{"a", "b"}));
}

TEST(MinMaxStats, ChunkOrderAndSizeDoNotMatter) {
  const std::vector<float> v = Data(1000, 1);
  MinMaxStats whole({"t"});
  whole.Update({{0, v.data(), static_cast<int64_t>(v.size())}}, 1);

  MinMaxStats small({"t"});
  small.Update(Chunks(0, v, 7), 1);

  std::vector<FloatChunk> reversed = Chunks(0, v, 100);
  std::reverse(reversed.begin(), reversed.end());
  MinMaxStats rev({"t"});
  rev.Update(reversed, 1);

  // One chunk per call, in yet another order.
  MinMaxStats calls({"t"});
  std::vector<FloatChunk> odd = Chunks(0, v, 33);
  for (size_t k = 1; k < odd.size(); k += 2) calls.Update({odd[k]}, 1);
  for (size_t k = 0; k < odd.size(); k += 2) calls.Update({odd[k]}, 1);

  ExpectSame(small.stats(0), whole.stats(0));
  ExpectSame(rev.stats(0), whole.stats(0));
  ExpectSame(calls.stats(0), whole.stats(0));
  EXPECT_EQ(whole.stats(0).count, 997);
  EXPECT_EQ(whole.stats(0).nan, 1);
  EXPECT_EQ(whole.stats(0).pos_inf, 1);
  EXPECT_EQ(whole.stats(0).neg_inf, 1);
  // The expected range, by a plain loop over the finite values.
  float lo = kInf, hi = -kInf;
  for (float x : v) {
    if (std::isfinite(x)) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  }
  EXPECT_EQ(whole.stats(0).min, lo);
  EXPECT_EQ(whole.stats(0).max, hi);
}

TEST(MinMaxStats, ThreadCountDoesNotMatter) {
  std::vector<std::string> names;
  std::vector<std::vector<float>> data;
  for (int t = 0; t < 6; ++t) {
    names.push_back("t" + std::to_string(t));
    data.push_back(Data(5000 + 97 * t, t));
  }
  // Interleave the tensors' chunks as a calibrator would.
  std::vector<FloatChunk> chunks;
  for (int64_t off = 0; off < 6000; off += 250) {
    for (int t = 0; t < 6; ++t) {
      const int64_t n = static_cast<int64_t>(data[t].size());
      if (off < n) {
        chunks.push_back({t, data[t].data() + off,
                          std::min<int64_t>(250, n - off)});
      }
    }
  }
  MinMaxStats one(names), four(names), zero(names);
  one.Update(chunks, 1);
  four.Update(chunks, 4);
  zero.Update(chunks, 0);  // at least one thread
  for (int t = 0; t < 6; ++t) {
    SCOPED_TRACE(names[t]);
    ExpectSame(four.stats(t), one.stats(t));
    ExpectSame(zero.stats(t), one.stats(t));
    TensorMinMax direct;
    direct.Update(data[t].data(), static_cast<int64_t>(data[t].size()));
    ExpectSame(one.stats(t), direct);
  }
}

TEST(MinMaxStats, MergeEqualsWhole) {
  const std::vector<float> a = Data(800, 2), b = Data(300, 3);
  MinMaxStats whole({"x", "y"}), left({"x", "y"}), right({"x", "y"});
  whole.Update({{0, a.data(), 800}, {1, b.data(), 300}}, 2);
  left.Update({{0, a.data(), 500}, {1, b.data(), 10}}, 2);
  right.Update({{0, a.data() + 500, 300}, {1, b.data() + 10, 290}}, 2);
  left.Merge(right);
  ExpectSame(left.stats(0), whole.stats(0));
  ExpectSame(left.stats(1), whole.stats(1));
}

TEST(MinMaxStats, MergeOfAnotherTensorSetThrows) {
  MinMaxStats a({"x", "y"}), b({"y", "x"});
  try {
    a.Merge(b);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  }
}

TEST(MinMaxStats, BadIndexThrowsAndChangesNothing) {
  const std::vector<float> v = {1.f, 2.f};
  MinMaxStats stats({"x"});
  for (int bad : {-1, 1, 7}) {
    try {
      // The valid chunk comes first: it must not be applied either.
      stats.Update({{0, v.data(), 2}, {bad, v.data(), 2}}, 2);
      ADD_FAILURE() << "no error for index " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(stats.stats(0).count, 0);
}

}  // namespace
}  // namespace onnxquant
