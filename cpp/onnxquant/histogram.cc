// Histogram's grid and counting. Its byte form (Serialize, Deserialize) is in
// histogram_set.cc, beside the set's, which embeds it.
#include "onnxquant/histogram.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "onnxquant/error.h"
#include "onnxquant/histogram_kernels.h"

namespace onnxquant {
namespace {

namespace kernels = histogram_kernels;

// Add() works in blocks this long: each block's range is summarised, the
// grid covers it, then its values are counted.
constexpr int64_t kBlock = 4096;
// An Add() of at least kLaneMinimum values counts into kLanes arrays of
// kStride 16-bit slots (the bins and the sink), added to the bins when the
// grid changes and at the end, and at the latest every kFlushEvery values:
// a block adds at most kBlock / kLanes to a slot, so 63 blocks stay below
// 2^16.
constexpr int kLanes = 4;
constexpr int32_t kStride = Histogram::kMaxBins + 1;
constexpr int64_t kLaneMinimum = 8 * kStride;
constexpr int64_t kFlushEvery = 63 * kBlock;
static_assert(kFlushEvery / kLanes <
                  std::numeric_limits<histogram_kernels::LaneCount>::max(),
              "a lane count could overflow between flushes");

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

}  // namespace

double Histogram::bin_width() const { return std::ldexp(1.0, exponent_); }

void Histogram::Add(const float* data, int64_t n) {
  std::vector<kernels::LaneCount> scratch;
  Add(data, n, scratch);
}

void Histogram::Add(const float* data, int64_t n,
                    std::vector<kernels::LaneCount>& scratch) {
  const bool use_lanes = n >= kLaneMinimum;
  if (use_lanes && scratch.size() != static_cast<size_t>(kLanes) * kStride) {
    scratch.assign(static_cast<size_t>(kLanes) * kStride, 0);
  }
  int64_t pending = 0;  // values counted in lanes and not yet in counts_
  int32_t slots[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const float* block = data + start;
    const int32_t size = static_cast<int32_t>(std::min(kBlock, n - start));
    // Once the grid holds bins, a block usually fits it: then one pass
    // summarises the block and computes its slots and, where the CPU allows,
    // leaves the zeros out of them (`kept` slots remain; -1 when it did not).
    const kernels::Grid grid = CurrentGrid();
    const bool speculate = !counts_.empty() && kernels::FloatSlotsExact(grid);
    kernels::BlockSummary s{};
    int32_t kept = -1;
    if (speculate && use_lanes) {
      kept = kernels::SummarizeNonzeroSlots(block, size, grid, slots, &s);
    }
    if (kept < 0) {
      s = speculate ? kernels::SummarizeWithSlots(block, size, grid, slots)
                    : kernels::Summarize(block, size);
    }
    nan_ += s.nan;
    pos_inf_ += s.pos_inf;
    neg_inf_ += s.neg_inf;
    pos_extreme_ += s.pos_extreme;
    neg_extreme_ += s.neg_extreme;
    const int64_t finite = size - s.nan - s.pos_inf - s.neg_inf -
                           s.pos_extreme - s.neg_extreme;
    if (finite == 0) continue;
    count_ += finite;
    zeros_ += s.zeros;
    const bool grows = s.lo < min_ || s.hi > max_;
    if (pending > 0 && (grows || pending + size > kFlushEvery)) {
      FlushLanes(scratch.data());
      pending = 0;
    }
    if (grows) Cover(std::min(s.lo, min_), std::max(s.hi, max_));
    if (grows || !speculate) {
      ComputeSlots(block, size, slots);
      kept = -1;
    }
    if (!use_lanes) {
      const int32_t bins = static_cast<int32_t>(counts_.size());
      for (int32_t i = 0; i < size; ++i) {
        if (slots[i] < bins) ++counts_[static_cast<size_t>(slots[i])];
      }
    } else {
      // The zeros left out of the slots are counted once, from the summary.
      int32_t counted = size;
      if (kept >= 0) {
        if (s.zeros > 0) counts_[static_cast<size_t>(-first_bin_)] += s.zeros;
        counted = kept;
      }
      kernels::CountSlots(slots, counted, scratch.data(), kStride, kLanes);
      pending += size;
    }
  }
  if (pending > 0) FlushLanes(scratch.data());
}

kernels::Grid Histogram::CurrentGrid() const {
  return {exponent_, first_bin_, static_cast<int32_t>(counts_.size())};
}

void Histogram::Cover(float lo, float hi) {
  // Callers pass summaries of finite values only; NaN here would never fit
  // any grid.
  if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi) {
    throw InternalError("Histogram::Cover: the range [" + std::to_string(lo) +
                        ", " + std::to_string(hi) +
                        "] is not a finite interval.");
  }
  const int e = CanonicalExponent(lo, hi, exponent_);
  const int64_t first = static_cast<int64_t>(FloorBin(lo, e));
  const int64_t last = static_cast<int64_t>(FloorBin(hi, e));
  min_ = lo;
  max_ = hi;
  const int64_t old_last =
      first_bin_ + static_cast<int64_t>(counts_.size()) - 1;
  if (e == exponent_ && first == first_bin_ && last == old_last) return;
  std::vector<int64_t> grown;
  // Full capacity from the start: the buffers of every Cover are the same
  // size, so the allocator reuses them and memory does not creep up as the
  // range widens.
  grown.reserve(kMaxBins);
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

void Histogram::ComputeSlots(const float* data, int32_t n,
                             int32_t* slots) const {
  const kernels::Grid grid = CurrentGrid();
  if (kernels::FloatSlotsExact(grid)) {
    kernels::SlotsFloat(data, n, grid, slots);
  } else {
    kernels::SlotsDouble(data, n, grid, slots);
  }
}

void Histogram::FlushLanes(kernels::LaneCount* lanes) {
  const size_t bins = counts_.size();
  for (int lane = 0; lane < kLanes; ++lane) {
    kernels::LaneCount* c = lanes + static_cast<size_t>(lane) * kStride;
    for (size_t j = 0; j < bins; ++j) counts_[j] += c[j];
    std::fill_n(c, bins, 0u);
    c[bins] = 0;  // the sink
  }
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
  pos_extreme_ += other.pos_extreme_;
  neg_extreme_ += other.neg_extreme_;
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
         pos_inf_ == o.pos_inf_ && neg_inf_ == o.neg_inf_ &&
         pos_extreme_ == o.pos_extreme_ && neg_extreme_ == o.neg_extreme_;
}

}  // namespace onnxquant
