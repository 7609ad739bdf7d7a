// Histogram's grid and counting. Its byte form (Serialize, Deserialize) is in
// histogram_set.cc, beside the set's, which embeds it.
#include "onnxquant/histogram.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

// Add() works in blocks this long, so that its two passes (range, then bins)
// read each block from cache.
constexpr int64_t kBlock = 8192;

// Returns floor(k / 2^shift). REQUIRES: shift >= 0.
int64_t FloorShift(int64_t k, int shift) {
  if (shift >= 63) return k < 0 ? -1 : 0;
  return k >= 0 ? k >> shift : ~((~k) >> shift);
}

// Returns floor(v / 2^e), exactly (scaling by a power of two is exact).
double FloorBin(double v, int e) { return std::floor(std::ldexp(v, -e)); }

// Returns whether values in [lo, hi] fit the grid of exponent e: at most
// kMaxBins bins, indices within +-kMaxBinIndex.
bool Fits(double lo, double hi, int e) {
  const double a = FloorBin(lo, e), b = FloorBin(hi, e);
  const double limit = static_cast<double>(Histogram::kMaxBinIndex);
  return std::fabs(a) <= limit && std::fabs(b) <= limit &&
         b - a + 1 <= Histogram::kMaxBins;
}

// Returns the smallest exponent >= at_least at which [lo, hi] fits. Both
// conditions of Fits() hold for every exponent above one where they hold,
// so an estimate from the binary exponents, corrected by a step or two
// either way, gives it. REQUIRES: lo <= hi, both finite.
int CanonicalExponent(double lo, double hi, int at_least) {
  int e = at_least, p = 0;
  const double magnitude = std::max(std::fabs(lo), std::fabs(hi));
  if (magnitude > 0) {
    std::frexp(magnitude, &p);  // magnitude < 2^p: p - 40 fits the bound
    e = std::max(e, p - 41);
  }
  if (hi > lo) {
    std::frexp(hi - lo, &p);  // the span is in [2^(p-1), 2^p)
    e = std::max(e, p - 12);
  }
  while (!Fits(lo, hi, e)) ++e;
  while (e > at_least && Fits(lo, hi, e - 1)) --e;
  return e;
}

uint32_t Bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// What the first pass learns about one block.
struct BlockSummary {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  int64_t nan = 0, pos_inf = 0, neg_inf = 0, zeros = 0;
};

// Returns a key that orders finite floats as their values (-0.0 just below
// +0.0): the bits, with those of negative values' magnitudes flipped.
int32_t OrderKey(uint32_t bits) {
  const uint32_t negative = 0u - (bits >> 31);  // all ones when negative
  return static_cast<int32_t>(bits ^ (negative & 0x7fffffffu));
}

float FromOrderKey(int32_t key) {
  const uint32_t k = static_cast<uint32_t>(key);
  const uint32_t bits = k ^ ((0u - (k >> 31)) & 0x7fffffffu);
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// Returns the finite min/max (never -0.0) and the special-value counts of
// data[0, n), n <= kBlock. Branch-free, and min/max run on integer keys
// (float min/max reductions do not vectorise without -ffast-math), so that
// the compiler vectorises the loop.
BlockSummary Summarize(const float* data, int64_t n) {
  constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  int32_t lo = kNone, hi = -kNone;
  int32_t nan = 0, pos_inf = 0, neg_inf = 0, zeros = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = Bits(data[i]);
    const uint32_t magnitude = bits & 0x7fffffffu;
    // All ones for NaN and +-Inf: their keys become kNone / -kNone.
    const int32_t special = -static_cast<int32_t>(magnitude >= 0x7f800000u);
    const int32_t key = OrderKey(bits) & ~special;
    lo = std::min(lo, key | (kNone & special));
    hi = std::max(hi, key | (-kNone & special));
    nan += magnitude > 0x7f800000u;
    pos_inf += bits == 0x7f800000u;
    neg_inf += bits == 0xff800000u;
    zeros += magnitude == 0;
  }
  BlockSummary s;
  if (lo != kNone) {
    s.lo = FromOrderKey(lo) + 0.f;  // -0.0 becomes +0.0
    s.hi = FromOrderKey(hi) + 0.f;
  }
  s.nan = nan;
  s.pos_inf = pos_inf;
  s.neg_inf = neg_inf;
  s.zeros = zeros;
  return s;
}

}  // namespace

double Histogram::bin_width() const { return std::ldexp(1.0, exponent_); }

void Histogram::Add(const float* data, int64_t n) {
  for (int64_t start = 0; start < n; start += kBlock) {
    const float* block = data + start;
    const int64_t size = std::min(kBlock, n - start);
    const BlockSummary s = Summarize(block, size);
    nan_ += s.nan;
    pos_inf_ += s.pos_inf;
    neg_inf_ += s.neg_inf;
    const int64_t finite = size - s.nan - s.pos_inf - s.neg_inf;
    if (finite == 0) continue;
    count_ += finite;
    zeros_ += s.zeros;
    if (s.lo < min_ || s.hi > max_) {
      Cover(std::min(s.lo, min_), std::max(s.hi, max_));
    }
    BinBlock(block, size);
  }
}

void Histogram::Cover(float lo, float hi) {
  const int e = CanonicalExponent(lo, hi, exponent_);
  const int64_t first = static_cast<int64_t>(FloorBin(lo, e));
  const int64_t last = static_cast<int64_t>(FloorBin(hi, e));
  min_ = lo;
  max_ = hi;
  const int64_t old_last =
      first_bin_ + static_cast<int64_t>(counts_.size()) - 1;
  if (e == exponent_ && first == first_bin_ && last == old_last) return;
  std::vector<int64_t> grown;
  grown.reserve(kMaxBins + 1);  // BinBlock's extra slot never reallocates
  grown.assign(static_cast<size_t>(last - first + 1), 0);
  const int shift = e - exponent_;
  for (size_t j = 0; j < counts_.size(); ++j) {
    const int64_t k = FloorShift(first_bin_ + static_cast<int64_t>(j), shift);
    grown[static_cast<size_t>(k - first)] += counts_[j];
  }
  counts_.swap(grown);
  exponent_ = e;
  first_bin_ = first;
}

void Histogram::BinBlock(const float* data, int64_t n) {
  // Non-finite values go to one extra slot past the last bin; their t is
  // replaced before the conversion, which would be undefined for them.
  const int64_t first = first_bin_;
  const int64_t slots = static_cast<int64_t>(counts_.size()) + 1;
  const double scale = std::ldexp(1.0, -exponent_);
  const double sink = static_cast<double>(first + slots - 1);
  // Returns the slot of v: bin floor(v * 2^-e) - first, or the extra slot.
  auto slot = [scale, sink, first](float v) {
    double t = static_cast<double>(v) * scale;  // exact
    t = std::fabs(t) <= 0x1p62 ? t : sink;      // in range: |t| <= 2^40 + 1
    const int64_t k = static_cast<int64_t>(t);  // truncates toward zero
    return k - (t < static_cast<double>(k)) - first;  // floor
  };
  counts_.push_back(0);
  int64_t* const c = counts_.data();
  if (n < 2 * slots) {
    for (int64_t i = 0; i < n; ++i) ++c[slot(data[i])];
  } else {
    // Runs of one value (a constant tensor, a ReLU's zeros) make each
    // increment wait for the previous one's store; alternating between two
    // count arrays halves that chain (constant data: about 280 -> 350 M
    // values/s, random data about 5% slower). n <= kBlock fits uint32_t.
    uint32_t odd[kMaxBins + 1];
    std::fill_n(odd, slots, 0u);
    int64_t i = 0;
    for (; i + 1 < n; i += 2) {
      ++c[slot(data[i])];
      ++odd[slot(data[i + 1])];
    }
    if (i < n) ++c[slot(data[i])];
    for (int64_t j = 0; j < slots; ++j) c[j] += odd[j];
  }
  counts_.pop_back();
}

void Histogram::Merge(const Histogram& other) {
  if (&other == this) {
    const Histogram copy = other;
    Merge(copy);
    return;
  }
  nan_ += other.nan_;
  pos_inf_ += other.pos_inf_;
  neg_inf_ += other.neg_inf_;
  if (other.count_ == 0) return;
  count_ += other.count_;
  zeros_ += other.zeros_;
  Cover(std::min(min_, other.min_), std::max(max_, other.max_));
  // The union's exponent is at least other's, which is canonical for a
  // subset of the union's values.
  const int shift = exponent_ - other.exponent_;
  if (shift < 0) {
    throw InternalError(
        "Histogram::Merge: the merged grid is finer than an "
        "input's; the input's exponent is not canonical.");
  }
  for (size_t j = 0; j < other.counts_.size(); ++j) {
    const int64_t k =
        FloorShift(other.first_bin_ + static_cast<int64_t>(j), shift);
    counts_[static_cast<size_t>(k - first_bin_)] += other.counts_[j];
  }
}

bool Histogram::operator==(const Histogram& o) const {
  return exponent_ == o.exponent_ && first_bin_ == o.first_bin_ &&
         counts_ == o.counts_ && min_ == o.min_ && max_ == o.max_ &&
         count_ == o.count_ && zeros_ == o.zeros_ && nan_ == o.nan_ &&
         pos_inf_ == o.pos_inf_ && neg_inf_ == o.neg_inf_;
}

}  // namespace onnxquant
