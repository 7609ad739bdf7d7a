// Histogram::Add's inner loops, written so that the compiler vectorises the
// summary and the slot computation; see histogram_kernels.h.
#include "onnxquant/histogram_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

// One clone per instruction set, picked at load time (GNU ifunc). Elsewhere
// the baseline build runs.
#if defined(__x86_64__) && defined(__linux__) && \
    (defined(__GNUC__) || defined(__clang__))
#define ONNXQUANT_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ONNXQUANT_CLONES
#endif

namespace onnxquant {
namespace histogram_kernels {
namespace {

// Returns a key that orders finite floats as their values (-0.0 just below
// +0.0): the bits, with those of negative values' magnitudes flipped.
int32_t OrderKey(uint32_t bits) {
  const uint32_t negative = 0u - (bits >> 31);  // all ones when negative
  return static_cast<int32_t>(bits ^ (negative & 0x7fffffffu));
}

float FromOrderKey(int32_t key) {
  const uint32_t k = static_cast<uint32_t>(key);
  return FloatFromBits(k ^ ((0u - (k >> 31)) & 0x7fffffffu));
}

// A block's summary as it accumulates. Branch-free, and min/max run on
// integer keys (float min/max reductions do not vectorise without
// -ffast-math), so that the loops using it vectorise.
struct Summary {
  static constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  int32_t lo = kNone, hi = -kNone;
  int32_t special = 0, zeros = 0;  // special: NaN, +-Inf and extremes

  void Add(uint32_t bits) {
    const uint32_t magnitude = bits & 0x7fffffffu;
    // All ones for NaN, +-Inf and extremes: their keys become kNone / -kNone.
    const int32_t is_special = -static_cast<int32_t>(magnitude >= kExtremeBits);
    const int32_t key = OrderKey(bits) & ~is_special;
    lo = std::min(lo, key | (kNone & is_special));
    hi = std::max(hi, key | (-kNone & is_special));
    special -= is_special;
    zeros += magnitude == 0;
  }

  // The summary of data[0, n), the values Add saw. NaN, +-Inf and extremes
  // are rare: told apart by a second pass only when there are any.
  BlockSummary Result(const float* data, int64_t n) const {
    BlockSummary s{std::numeric_limits<float>::infinity(),
                   -std::numeric_limits<float>::infinity(), 0, 0, 0, zeros};
    if (lo != kNone) {
      s.lo = FromOrderKey(lo) + 0.f;  // -0.0 becomes +0.0
      s.hi = FromOrderKey(hi) + 0.f;
    }
    if (special > 0) {
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = FloatBits(data[i]);
        const uint32_t magnitude = bits & 0x7fffffffu;
        s.nan += magnitude > 0x7f800000u;
        s.pos_inf += bits == 0x7f800000u;
        s.neg_inf += bits == 0xff800000u;
        const bool extreme =
            magnitude >= kExtremeBits && magnitude < 0x7f800000u;
        s.pos_extreme += extreme && bits == magnitude;
        s.neg_extreme += extreme && bits != magnitude;
      }
    }
    return s;
  }
};

// Largest |bin index| SlotsFloat handles: indices and their differences stay
// exact in int32.
constexpr int64_t kFloatIndexLimit = int64_t{1} << 29;

}  // namespace

ONNXQUANT_CLONES
BlockSummary Summarize(const float* data, int64_t n) {
  Summary sum;
  for (int64_t i = 0; i < n; ++i) sum.Add(FloatBits(data[i]));
  return sum.Result(data, n);
}

bool FloatSlotsExact(const Grid& grid) {
  // 2^-exponent is a normal float, so v * 2^-exponent is exact unless the
  // product is subnormal, where only its sign matters (SlotsFloat keeps it).
  if (grid.exponent < -126 || grid.exponent > 126) return false;
  const int64_t last = grid.first + grid.sink - 1;
  return std::llabs(grid.first) <= kFloatIndexLimit &&
         std::llabs(last) <= kFloatIndexLimit;
}

namespace {

// The slot of the value with bits `bits` on the grid of scale 2^-exponent
// whose first bin is `first`: floor(v * scale) - first for finite v, `sink`
// for NaN, +-Inf and extremes. Masks rather than branches, so that loops
// vectorise.
// Values outside the grid get a meaningless slot; the conversion stays
// defined for them.
inline int32_t FloatSlot(uint32_t bits, float scale, int32_t first,
                         uint32_t sink) {
  const uint32_t product = FloatBits(FloatFromBits(bits) * scale);
  // All ones for NaN, +-Inf (whose products are NaN and +-Inf) and for
  // |t| >= 2^30, outside any grid SlotsFloat takes: t becomes 0 and the
  // slot `sink`. An integer compare: std::min and std::max on floats would
  // not vectorise.
  const uint32_t special =
      0u - static_cast<uint32_t>(((product & 0x7fffffffu) >= 0x4e800000u) |
                                 ((bits & 0x7fffffffu) >= kExtremeBits));
  const float t = FloatFromBits(product & ~special);
  int32_t k = static_cast<int32_t>(t);  // toward zero
  k -= t < static_cast<float>(k);       // floor
  // A negative value whose product underflowed to -0 is in bin -1.
  k -= (FloatBits(t) == 0x80000000u) & (bits > 0x80000000u);
  const uint32_t slot = static_cast<uint32_t>(k - first);
  return static_cast<int32_t>((slot & ~special) | (sink & special));
}

}  // namespace

ONNXQUANT_CLONES
void SlotsFloat(const float* data, int32_t n, const Grid& grid,
                int32_t* slots) {
  const float scale = std::ldexp(1.0f, -grid.exponent);
  const int32_t first = static_cast<int32_t>(grid.first);
  const uint32_t sink = static_cast<uint32_t>(grid.sink);
  for (int32_t i = 0; i < n; ++i) {
    slots[i] = FloatSlot(FloatBits(data[i]), scale, first, sink);
  }
}

ONNXQUANT_CLONES
BlockSummary SummarizeWithSlots(const float* data, int32_t n,
                                const Grid& grid, int32_t* slots) {
  const float scale = std::ldexp(1.0f, -grid.exponent);
  const int32_t first = static_cast<int32_t>(grid.first);
  const uint32_t sink = static_cast<uint32_t>(grid.sink);
  Summary sum;
  for (int32_t i = 0; i < n; ++i) {
    const uint32_t bits = FloatBits(data[i]);
    sum.Add(bits);
    slots[i] = FloatSlot(bits, scale, first, sink);
  }
  return sum.Result(data, n);
}

ONNXQUANT_CLONES
void SlotsDouble(const float* data, int32_t n, const Grid& grid,
                 int32_t* slots) {
  const double scale = std::ldexp(1.0, -grid.exponent);
  const int64_t first = grid.first;
  const double sink = static_cast<double>(first + grid.sink);
  for (int32_t i = 0; i < n; ++i) {
    double t = static_cast<double>(data[i]) * scale;  // exact
    // Finite: |t| <= 2^40 + 1. NaN fails both tests.
    t = std::fabs(t) <= 0x1p62 && std::fabs(data[i]) < kExtremeMagnitude
            ? t
            : sink;
    const int64_t k = static_cast<int64_t>(t);  // toward zero
    slots[i] = static_cast<int32_t>(k - (t < static_cast<double>(k)) - first);
  }
}

void CountSlots(const int32_t* slots, int32_t n, LaneCount* counts,
                int32_t stride, int lanes) {
  int32_t i = 0;
  if (lanes == 4) {
    LaneCount* c1 = counts + stride;
    LaneCount* c2 = c1 + stride;
    LaneCount* c3 = c2 + stride;
    for (; i + 3 < n; i += 4) {
      ++counts[slots[i]];
      ++c1[slots[i + 1]];
      ++c2[slots[i + 2]];
      ++c3[slots[i + 3]];
    }
    if (i < n) ++counts[slots[i++]];
    if (i < n) ++c1[slots[i++]];
    if (i < n) ++c2[slots[i++]];
    return;
  }
  for (; i < n; ++i) ++counts[slots[i]];
}

}  // namespace histogram_kernels
}  // namespace onnxquant
