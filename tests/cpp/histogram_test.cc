#include "onnxquant/histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kFloatMax = std::numeric_limits<float>::max();

// ---------------------------------------------------------------------------
// Data sets and a brute-force reference.
// ---------------------------------------------------------------------------

enum class Kind {
  kGaussian,
  kLaplacian,
  kRelu,  // many exact zeros, some of them -0.0
  kAllEqual,
  kSingleValue,
  kHuge,  // ~1e29, below the extremes
  kTiny,  // ~1e-30
  kNegativeOnly,
  kWithSpecials,  // NaN and +-Inf among Gaussian values
  kGrowing,       // magnitudes growing along the data: many coarsenings
  kExtremes,      // +-FLT_MAX (left out), the smallest denormal, zeros
  // Bins wider than 1 and values so small (subnormal, both signs) that
  // scaling them to bin units underflows: negative ones are in bin -1.
  kUnderflow,
  kFarFromZero,  // a narrow range around 1e6: bin indices beyond 2^29
};

std::vector<float> Make(Kind kind, int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::exponential_distribution<float> exponential(1.f);
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) {
    switch (kind) {
      case Kind::kGaussian:
        v[i] = normal(rng);
        break;
      case Kind::kLaplacian:
        v[i] = (rng() & 1 ? 3.f : -3.f) * exponential(rng);
        break;
      case Kind::kRelu:
        v[i] = std::max(0.f, normal(rng) + 0.2f);
        if (i % 7 == 0) v[i] = -0.f;
        break;
      case Kind::kAllEqual:
        v[i] = 0.7f;
        break;
      case Kind::kSingleValue:
        return {42.5f};
      case Kind::kHuge:
        v[i] = 1e29f * normal(rng);
        break;
      case Kind::kTiny:
        v[i] = 1e-30f * normal(rng);
        break;
      case Kind::kNegativeOnly:  // and a few NaN and +-Inf
        v[i] = i % 97 == 3   ? kNaN
               : i % 97 == 5 ? -kInf
               : i % 97 == 7 ? kInf
                             : -5.f - exponential(rng);
        break;
      case Kind::kWithSpecials: {
        const uint64_t r = rng() % 50;
        v[i] = r == 0 ? kNaN : r == 1 ? kInf : r == 2 ? -kInf : normal(rng);
        break;
      }
      case Kind::kGrowing:
        v[i] = (i % 2 ? -1.f : 1.f) *
               static_cast<float>(std::pow(1.001, i % 20000));
        break;
      case Kind::kExtremes: {
        const float e[] = {
            kFloatMax, -kFloatMax, std::numeric_limits<float>::denorm_min(),
            0.f,       -0.f,       1.f};
        v[i] = e[rng() % 6];
        break;
      }
      case Kind::kUnderflow: {
        const float tiny[] = {std::numeric_limits<float>::denorm_min(), 1e-40f,
                              1e-38f, 1e-30f};
        v[i] = rng() % 3 ? 3000.f * normal(rng)
                         : (rng() & 1 ? -1.f : 1.f) * tiny[rng() % 4];
        break;
      }
      case Kind::kFarFromZero:
        v[i] = 1e6f + 0.5f * normal(rng);
        break;
    }
  }
  return v;
}

const Kind kAllKinds[] = {
    Kind::kGaussian,     Kind::kLaplacian, Kind::kRelu,    Kind::kAllEqual,
    Kind::kSingleValue,  Kind::kHuge,      Kind::kTiny,    Kind::kNegativeOnly,
    Kind::kWithSpecials, Kind::kGrowing,   Kind::kExtremes, Kind::kUnderflow,
    Kind::kFarFromZero};

// The histogram's definition, computed the slow way: every exponent from
// kMinExponent up until the data fits, then each value's bin.
struct Reference {
  int exponent = Histogram::kMinExponent;
  int64_t first_bin = 0;
  std::vector<int64_t> counts;
  float min = kInf, max = -kInf;
  int64_t count = 0, zeros = 0, nan = 0, pos_inf = 0, neg_inf = 0;
  int64_t pos_extreme = 0, neg_extreme = 0;
};

// Finite values this large are float32's extremes (attention masks): counted
// apart and left out of the bins.
bool IsExtreme(float x) { return std::isfinite(x) && std::fabs(x) >= 1e30f; }

double FloorBin(double v, int e) { return std::floor(std::ldexp(v, -e)); }

Reference MakeReference(const std::vector<float>& v) {
  Reference r;
  for (float x : v) {
    if (std::isnan(x)) {
      ++r.nan;
    } else if (std::isinf(x)) {
      ++(x > 0 ? r.pos_inf : r.neg_inf);
    } else if (IsExtreme(x)) {
      ++(x > 0 ? r.pos_extreme : r.neg_extreme);
    } else {
      ++r.count;
      r.zeros += x == 0;
      r.min = std::min(r.min, x + 0.f);
      r.max = std::max(r.max, x + 0.f);
    }
  }
  if (r.count == 0) return r;
  const double limit = static_cast<double>(Histogram::kMaxBinIndex);
  for (;; ++r.exponent) {
    const double a = FloorBin(r.min, r.exponent);
    const double b = FloorBin(r.max, r.exponent);
    if (std::fabs(a) <= limit && std::fabs(b) <= limit &&
        b - a + 1 <= Histogram::kMaxBins) {
      break;
    }
  }
  r.first_bin = static_cast<int64_t>(FloorBin(r.min, r.exponent));
  r.counts.assign(
      static_cast<int64_t>(FloorBin(r.max, r.exponent)) - r.first_bin + 1, 0);
  for (float x : v) {
    if (std::isfinite(x) && !IsExtreme(x)) {
      ++r.counts[static_cast<int64_t>(FloorBin(x, r.exponent)) - r.first_bin];
    }
  }
  return r;
}

void ExpectMatches(const Histogram& h, const Reference& r) {
  EXPECT_EQ(h.exponent(), r.exponent);
  EXPECT_EQ(h.first_bin(), r.first_bin);
  EXPECT_EQ(h.counts(), r.counts);
  EXPECT_EQ(h.min(), r.min);
  EXPECT_EQ(h.max(), r.max);
  EXPECT_FALSE(std::signbit(h.min()) && h.min() == 0);
  EXPECT_EQ(h.count(), r.count);
  EXPECT_EQ(h.zeros(), r.zeros);
  EXPECT_EQ(h.nan(), r.nan);
  EXPECT_EQ(h.pos_inf(), r.pos_inf);
  EXPECT_EQ(h.neg_inf(), r.neg_inf);
  EXPECT_EQ(h.pos_extreme(), r.pos_extreme);
  EXPECT_EQ(h.neg_extreme(), r.neg_extreme);
}

Histogram OneChunk(const std::vector<float>& v) {
  Histogram h;
  h.Add(v.data(), static_cast<int64_t>(v.size()));
  return h;
}

// Adds `v` as uneven chunks (some empty, some longer than Add's internal
// block) in a shuffled order.
Histogram ShuffledChunks(const std::vector<float>& v, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<int64_t, int64_t>> chunks;
  for (int64_t i = 0; i < static_cast<int64_t>(v.size());) {
    const int64_t size = std::min<int64_t>(
        rng() % 3 == 0 ? rng() % 20000 : rng() % 300, v.size() - i);
    chunks.emplace_back(i, size);
    i += size;
  }
  std::shuffle(chunks.begin(), chunks.end(), rng);
  Histogram h;
  for (const auto& [start, size] : chunks) h.Add(v.data() + start, size);
  return h;
}

// ---------------------------------------------------------------------------
// Histogram
// ---------------------------------------------------------------------------

TEST(Histogram, StartsEmpty) {
  const Histogram h;
  EXPECT_TRUE(h.empty());
  EXPECT_EQ(h.exponent(), Histogram::kMinExponent);
  EXPECT_EQ(h.first_bin(), 0);
  EXPECT_TRUE(h.counts().empty());
  EXPECT_EQ(h.min(), kInf);
  EXPECT_EQ(h.max(), -kInf);
  EXPECT_EQ(h, Histogram::Deserialize(h.Serialize()));
}

TEST(Histogram, MatchesTheDefinitionForEveryKindOfData) {
  for (Kind kind : kAllKinds) {
    SCOPED_TRACE(static_cast<int>(kind));
    // Not a multiple of any vector width: the kernels' tails run too.
    const std::vector<float> v = Make(kind, 50003, 1);
    ExpectMatches(OneChunk(v), MakeReference(v));
  }
}

TEST(Histogram, DoesNotDependOnChunkOrderOrSize) {
  for (Kind kind : kAllKinds) {
    SCOPED_TRACE(static_cast<int>(kind));
    const std::vector<float> v = Make(kind, 60005, 2);
    const Histogram whole = OneChunk(v);
    for (uint64_t seed : {1, 2, 3}) {
      EXPECT_EQ(ShuffledChunks(v, seed), whole);
    }
    Histogram one_by_one;
    for (float x : v) one_by_one.Add(&x, 1);
    EXPECT_EQ(one_by_one, whole);
  }
}

TEST(Histogram, PlacesValuesOnTheGridExactly) {
  // 0, 1, ..., 4095 fill 4096 bins of width 1: one value each.
  std::vector<float> v(4096);
  for (int i = 0; i < 4096; ++i) v[i] = static_cast<float>(i);
  Histogram h = OneChunk(v);
  EXPECT_EQ(h.exponent(), 0);
  EXPECT_EQ(h.first_bin(), 0);
  EXPECT_EQ(h.counts(), std::vector<int64_t>(4096, 1));
  EXPECT_EQ(h.BinLow(4095), 4095.0);
  // One more value doubles the width: bin k merges into bin k / 2.
  const float next = 4096.f;
  h.Add(&next, 1);
  EXPECT_EQ(h.exponent(), 1);
  EXPECT_EQ(h.bin_width(), 2.0);
  ASSERT_EQ(h.counts().size(), 2049u);
  EXPECT_EQ(h.counts()[0], 2);
  EXPECT_EQ(h.counts()[2047], 2);
  EXPECT_EQ(h.counts()[2048], 1);
  // Negative values floor: -0.25 is in bin -1 of width 0.5 ([-0.5, 0)).
  const std::vector<float> w = {-0.25f, -0.5f, 0.f, 2000.f};
  const Histogram g = OneChunk(w);
  EXPECT_EQ(g.exponent(), -1);
  EXPECT_EQ(g.first_bin(), -1);
  EXPECT_EQ(g.counts()[0], 2);  // -0.5 and -0.25
  EXPECT_EQ(g.counts()[1], 1);  // 0
  EXPECT_EQ(g.counts().back(), 1);
}

TEST(Histogram, CountsOneBinBeyondTheLaneCountersRange) {
  // Large inputs are counted in 16-bit counters first: a million values in
  // one bin (and a million zeros, counted apart) must not wrap around.
  const int64_t n = 1000003;
  std::vector<float> v(2 * n, 0.f);
  for (int64_t i = 0; i < n; ++i) v[2 * i] = 1.5f;
  v.push_back(3.75f);  // the range: 3841 bins of width 2^-10
  const Histogram h = OneChunk(v);
  ASSERT_EQ(h.exponent(), -10);
  ASSERT_EQ(h.first_bin(), 0);
  EXPECT_EQ(h.counts()[0], n);
  EXPECT_EQ(h.counts()[1536], n);
  EXPECT_EQ(h.counts().back(), 1);
  EXPECT_EQ(h.zeros(), n);
  EXPECT_EQ(h.count(), 2 * n + 1);
}

TEST(Histogram, KeepsAtLeastHalfTheBinsOverANonDegenerateRange) {
  for (Kind kind : {Kind::kGaussian, Kind::kLaplacian, Kind::kRelu, Kind::kHuge,
                    Kind::kNegativeOnly, Kind::kGrowing, Kind::kExtremes}) {
    SCOPED_TRACE(static_cast<int>(kind));
    const Histogram h = OneChunk(Make(kind, 20000, 3));
    EXPECT_GT(h.exponent(), Histogram::kMinExponent);
    EXPECT_GE(h.counts().size(), static_cast<size_t>(Histogram::kMaxBins / 2));
    EXPECT_LE(h.counts().size(), static_cast<size_t>(Histogram::kMaxBins));
  }
  // A narrow range far from zero still gets fine bins.
  const std::vector<float> v = {1000.f, 1000.001f, 1000.0005f};
  EXPECT_GE(OneChunk(v).counts().size(),
            static_cast<size_t>(Histogram::kMaxBins / 2));
}

TEST(Histogram, BoundsTheBinIndexOfASingleValue) {
  for (float x : {9.9e29f, -9.9e29f, 0.5f, 3e-40f, 0.f}) {
    SCOPED_TRACE(x);
    const Histogram h = OneChunk({x});
    ASSERT_EQ(h.counts(), std::vector<int64_t>{1});
    EXPECT_LE(std::abs(h.first_bin()), Histogram::kMaxBinIndex);
    EXPECT_LE(h.BinLow(h.first_bin()), x);
    EXPECT_GT(h.BinLow(h.first_bin() + 1), x);
    ExpectMatches(h, MakeReference({x}));
  }
}

TEST(Histogram, LeavesFloat32ExtremesOutOfTheBinsAsMasksHoldThem) {
  // An attention mask's Add: scores, and float32's lowest where padded. In
  // long inputs (the vector paths) and short ones, in every position.
  for (int64_t n : {int64_t{7}, int64_t{4096 * 3 + 5}, int64_t{40000}}) {
    SCOPED_TRACE(n);
    std::vector<float> v(static_cast<size_t>(n));
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    for (int64_t i = 0; i < n; ++i) {
      v[static_cast<size_t>(i)] = i % 3 == 1 ? -kFloatMax : normal(rng);
    }
    v[0] = 1e30f;    // the threshold itself is an extreme
    v[2] = -1e30f;
    v[5] = 9.9e29f;  // just below: kept
    const Histogram h = OneChunk(v);
    ExpectMatches(h, MakeReference(v));
    EXPECT_EQ(h.pos_extreme(), 1);
    EXPECT_EQ(h.neg_extreme(), 1 + (n + 1) / 3);
    EXPECT_EQ(h.max(), 9.9e29f);
    EXPECT_GT(h.min(), -10.f);
    EXPECT_EQ(h.count() + h.pos_extreme() + h.neg_extreme(), n);
  }
  // Without the large value, the bins are fine enough for the scores.
  std::vector<float> v(40000, -kFloatMax);
  for (size_t i = 0; i < v.size(); i += 2) v[i] = static_cast<float>(i % 7);
  const Histogram h = OneChunk(v);
  ExpectMatches(h, MakeReference(v));
  EXPECT_EQ(h.max(), 6.f);
  EXPECT_LE(h.bin_width(), 6.0 / (Histogram::kMaxBins / 2));
}

TEST(Histogram, CountsSpecialValuesAndLeavesThemOut) {
  const std::vector<float> v = {kNaN,  2.f,   -0.f, kInf, 0.f,
                                -kInf, -kNaN, -1.f, kInf};
  const Histogram h = OneChunk(v);
  EXPECT_EQ(h.count(), 4);
  EXPECT_EQ(h.zeros(), 2);
  EXPECT_EQ(h.nan(), 2);
  EXPECT_EQ(h.pos_inf(), 2);
  EXPECT_EQ(h.neg_inf(), 1);
  EXPECT_EQ(h.min(), -1.f);
  EXPECT_EQ(h.max(), 2.f);
  int64_t total = 0;
  for (int64_t c : h.counts()) total += c;
  EXPECT_EQ(total, h.count());
  // Only non-finite values: counted, no range, no bins.
  const Histogram special = OneChunk({kNaN, kInf});
  EXPECT_TRUE(special.empty());
  EXPECT_TRUE(special.counts().empty());
  EXPECT_EQ(special.exponent(), Histogram::kMinExponent);
  EXPECT_EQ(special.nan(), 1);
  // -0.0 alone gives min = max = +0.0, as 0.0 alone does.
  const Histogram negative_zero = OneChunk({-0.f});
  EXPECT_FALSE(std::signbit(negative_zero.min()));
  EXPECT_FALSE(std::signbit(negative_zero.max()));
  EXPECT_EQ(negative_zero, OneChunk({0.f}));
}

TEST(Histogram, MergeEqualsOneHistogramOfBothInputs) {
  const std::pair<Kind, Kind> pairs[] = {{Kind::kGaussian, Kind::kLaplacian},
                                         {Kind::kRelu, Kind::kHuge},
                                         {Kind::kTiny, Kind::kNegativeOnly},
                                         {Kind::kAllEqual, Kind::kSingleValue},
                                         {Kind::kWithSpecials, Kind::kGrowing},
                                         {Kind::kExtremes, Kind::kTiny}};
  for (const auto& [ka, kb] : pairs) {
    SCOPED_TRACE(static_cast<int>(ka) * 100 + static_cast<int>(kb));
    const std::vector<float> a = Make(ka, 30000, 4);
    std::vector<float> b = Make(kb, 20000, 5);
    for (float& x : b) x *= 3.f;
    std::vector<float> both = a;
    both.insert(both.end(), b.begin(), b.end());
    Histogram ab = OneChunk(a), ba = OneChunk(b);
    ab.Merge(OneChunk(b));
    ba.Merge(OneChunk(a));
    EXPECT_EQ(ab, OneChunk(both));
    EXPECT_EQ(ab, ba);  // commutative
    ExpectMatches(ab, MakeReference(both));
  }
}

TEST(Histogram, MergesWithEmptyAndWithItself) {
  const std::vector<float> v = Make(Kind::kWithSpecials, 10000, 6);
  const Histogram h = OneChunk(v);
  Histogram a = h;
  a.Merge(Histogram());
  EXPECT_EQ(a, h);
  Histogram b;
  b.Merge(h);
  EXPECT_EQ(b, h);
  Histogram c = h;
  c.Merge(c);
  std::vector<float> twice = v;
  twice.insert(twice.end(), v.begin(), v.end());
  EXPECT_EQ(c, OneChunk(twice));
}

TEST(Histogram, SerializeRoundTrips) {
  for (Kind kind : kAllKinds) {
    SCOPED_TRACE(static_cast<int>(kind));
    const Histogram h = OneChunk(Make(kind, 20000, 7));
    const std::string bytes = h.Serialize();
    EXPECT_EQ(bytes.substr(0, 4), "OQH1");
    EXPECT_EQ(Histogram::Deserialize(bytes), h);
    // Compact: the varint counts take far less than 8 bytes a bin.
    EXPECT_LE(bytes.size(), 88 + 3 * h.counts().size());
  }
}

// Runs `f` and returns the message of the Error(kInvalidArgument) it throws.
template <typename F>
std::string InvalidArgumentMessage(F f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no Error thrown";
  return "";
}

TEST(Histogram, DeserializeRejectsBadBytes) {
  const std::string good = OneChunk(Make(Kind::kGaussian, 1000, 8)).Serialize();
  auto message = [](const std::string& bytes) {
    return InvalidArgumentMessage([&] { Histogram::Deserialize(bytes); });
  };
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_NE(message(good.substr(0, n)).find("truncated"), std::string::npos)
        << n;
  }
  EXPECT_NE(message("XQH1" + good.substr(4)).find("OQH1"), std::string::npos);
  std::string bad = good;
  bad[4] = 3;  // version 3
  EXPECT_NE(message(bad).find("version 3"), std::string::npos);
  EXPECT_NE(message(good + "x").find("trailing"), std::string::npos);
  bad = good;
  bad[8] ^= 1;  // the exponent
  EXPECT_NE(message(bad).find("grid"), std::string::npos);
  bad = good;
  bad.back() ^= 1;  // the last bin's count
  EXPECT_NE(message(bad).find("inconsistent"), std::string::npos);
  bad = good;
  bad[20] ^= 1;  // count
  EXPECT_NE(message(bad).find("inconsistent"), std::string::npos);
  bad = good;
  bad[59] = static_cast<char>(0x80);  // neg_inf's top byte: negative
  EXPECT_NE(message(bad).find("negative"), std::string::npos);
  std::string huge_varint = good.substr(0, 88) + std::string(10, '\xff');
  EXPECT_FALSE(message(huge_varint).empty());
}

// ---------------------------------------------------------------------------
// HistogramSet
// ---------------------------------------------------------------------------

struct SetFixture {
  std::vector<std::vector<float>> data;
  std::vector<HistogramSet::Chunk> chunks;  // interleaved across tensors
};

SetFixture MakeSetFixture() {
  SetFixture f;
  for (int t = 0; t < 6; ++t) {
    f.data.push_back(Make(kAllKinds[t * 2 % 11], 30000 + 1000 * t, 10 + t));
  }
  for (int64_t start = 0; start < 40000; start += 7000) {
    for (int t = 0; t < 6; ++t) {
      const int64_t size = std::min<int64_t>(
          7000, static_cast<int64_t>(f.data[t].size()) - start);
      if (size > 0) f.chunks.push_back({t, f.data[t].data() + start, size});
    }
  }
  return f;
}

std::vector<std::string> Names() { return {"a", "b", "c", "d", "e", "f"}; }

TEST(HistogramSet, UpdateIsTheSameWhateverTheThreadCount) {
  const SetFixture f = MakeSetFixture();
  HistogramSet one(Names()), four(Names()), many(Names());
  one.Update(f.chunks, 1);
  four.Update(f.chunks, 4);
  many.Update(f.chunks, 64);
  for (int t = 0; t < 6; ++t) {
    EXPECT_EQ(one.at(t), OneChunk(f.data[t]));
    EXPECT_EQ(four.at(t), one.at(t));
    EXPECT_EQ(many.at(t), one.at(t));
  }
  EXPECT_EQ(one.IndexOf("c"), 2);
  EXPECT_EQ(one.IndexOf("z"), -1);
}

TEST(HistogramSet, UpdateRejectsBadChunksBeforeAddingAny) {
  HistogramSet set(Names());
  const float x = 1.f;
  for (const HistogramSet::Chunk& bad :
       {HistogramSet::Chunk{6, &x, 1}, HistogramSet::Chunk{-1, &x, 1},
        HistogramSet::Chunk{0, &x, -1}, HistogramSet::Chunk{0, nullptr, 1}}) {
    InvalidArgumentMessage([&] { set.Update({{0, &x, 1}, bad}, 2); });
  }
  EXPECT_TRUE(set.at(0).empty());
  EXPECT_NE(
      InvalidArgumentMessage([] { HistogramSet({"a", "b", "a"}); }).find("'a'"),
      std::string::npos);
}

TEST(HistogramSet, MergeEqualsOneUpdateOfAllChunks) {
  const SetFixture f = MakeSetFixture();
  const size_t half = f.chunks.size() / 2;
  HistogramSet first(Names()), second(Names()), all(Names());
  first.Update({f.chunks.begin(), f.chunks.begin() + half}, 2);
  second.Update({f.chunks.begin() + half, f.chunks.end()}, 2);
  all.Update(f.chunks, 2);
  first.Merge(second);
  for (int t = 0; t < 6; ++t) EXPECT_EQ(first.at(t), all.at(t));
  HistogramSet other({"a", "b"});
  InvalidArgumentMessage([&] { first.Merge(other); });
}

TEST(HistogramSet, SerializeRoundTrips) {
  const SetFixture f = MakeSetFixture();
  HistogramSet set(Names());
  set.Update(f.chunks, 3);
  const HistogramSet back = HistogramSet::Deserialize(set.Serialize());
  EXPECT_EQ(back.names(), set.names());
  for (int t = 0; t < 6; ++t) EXPECT_EQ(back.at(t), set.at(t));
  const HistogramSet empty = HistogramSet::Deserialize(
      HistogramSet(std::vector<std::string>{}).Serialize());
  EXPECT_TRUE(empty.names().empty());
}

TEST(HistogramSet, DeserializeRejectsBadBytes) {
  HistogramSet set({"conv1", "relu1"});
  const std::vector<float> v = Make(Kind::kRelu, 500, 20);
  set.Update({{0, v.data(), 500}, {1, v.data(), 100}}, 1);
  const std::string good = set.Serialize();
  auto message = [](const std::string& bytes) {
    return InvalidArgumentMessage([&] { HistogramSet::Deserialize(bytes); });
  };
  for (size_t n = 0; n < good.size(); n += 7) {
    EXPECT_NE(message(good.substr(0, n)).find("truncated"), std::string::npos)
        << n;
  }
  EXPECT_NE(message("OQH1" + good.substr(4)).find("OQS1"), std::string::npos);
  EXPECT_NE(message(good + "\x01").find("trailing"), std::string::npos);
  std::string bad = good;
  bad.back() ^= 1;  // relu1's last bin count
  EXPECT_NE(message(bad).find("'relu1'"), std::string::npos);
  bad = good;
  bad.replace(16, 5, "relu1");  // "conv1" becomes a second "relu1"
  EXPECT_NE(message(bad).find("named twice"), std::string::npos);
  bad = good;
  bad[8] = static_cast<char>(0xff);  // a tensor count the bytes cannot hold
  EXPECT_NE(message(bad).find("truncated"), std::string::npos);
}

}  // namespace
}  // namespace onnxquant
