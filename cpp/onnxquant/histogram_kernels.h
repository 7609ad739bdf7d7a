// The inner loops of Histogram::Add: a block's summary (finite min/max and
// special-value counts), each value's bin slot, and the counting of slots.
// On x86-64 Linux with GCC or Clang each loop is compiled three times
// (baseline, x86-64-v3 for AVX2, x86-64-v4 for AVX-512) and the loader picks
// the one the CPU runs; results are identical whichever runs.
#ifndef ONNXQUANT_HISTOGRAM_KERNELS_H_
#define ONNXQUANT_HISTOGRAM_KERNELS_H_

#include <cstdint>
#include <cstring>

namespace onnxquant {
namespace histogram_kernels {

// The bits of a float, and back (what std::bit_cast does in C++20).
inline uint32_t FloatBits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

inline float FloatFromBits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// Finite values of at least this magnitude are float32's extremes, as
// attention masks hold them (torch.finfo(float32).min, -3.4e38): like NaN and
// +-Inf they are counted apart and left out of the range and the bins, so
// that they saturate when quantized instead of stretching the range. 1e30 is
// far above any activation a model computes and far below what masks use.
constexpr float kExtremeMagnitude = 1e30f;
// The bits of kExtremeMagnitude: a magnitude's bits at or above these are
// an extreme, an infinity or a NaN.
inline constexpr uint32_t kExtremeBits = 0x7149f2cau;

// What one pass learns about a block of values. "Finite" below means finite
// and not an extreme.
struct BlockSummary {
  float lo;  // finite minimum (never -0.0); +inf when none is finite
  float hi;  // finite maximum (never -0.0); -inf when none is finite
  int64_t nan, pos_inf, neg_inf, zeros;
  // Finite values of magnitude >= kExtremeMagnitude, by sign.
  int64_t pos_extreme = 0, neg_extreme = 0;
};

// Summarizes data[0, n). REQUIRES: 0 <= n <= 2^31 - 1.
BlockSummary Summarize(const float* data, int64_t n);

// The grid a block is binned on: bin k covers [k * 2^exponent,
// (k + 1) * 2^exponent); slot s counts bin first + s, and slot `sink`
// counts NaN, +-Inf and extremes.
struct Grid {
  int exponent;
  int64_t first;
  int32_t sink;
};

// Returns whether SlotsFloat computes exact slots on `grid`: the bins'
// indices and the scale 2^-exponent are within a float's and an int32's
// exact range.
bool FloatSlotsExact(const Grid& grid);

// Writes the slot of each of data[0, n) to slots[0, n): floor(v *
// 2^-exponent) - first for finite v, `sink` for NaN, +-Inf and extremes.
// REQUIRES: every finite value lies in bins first .. first + sink - 1, and
// (for SlotsFloat) FloatSlotsExact(grid).
void SlotsFloat(const float* data, int32_t n, const Grid& grid,
                int32_t* slots);
void SlotsDouble(const float* data, int32_t n, const Grid& grid,
                 int32_t* slots);

// Summarize and SlotsFloat in one pass, for a block expected to fit the
// grid: the slots are those of SlotsFloat when every finite value lies in
// the grid's bins (the summary tells), and meaningless otherwise.
// REQUIRES: FloatSlotsExact(grid).
BlockSummary SummarizeWithSlots(const float* data, int32_t n,
                                const Grid& grid, int32_t* slots);

// The paths of SummarizeNonzeroSlots, best first: hand-written for AVX-512
// (F, DQ) and for AVX2; kNone where the CPU or the compiler offers neither.
enum class NonzeroPath { kAvx512, kAvx2, kNone };

// The best path this CPU runs.
NonzeroPath BestNonzeroPath();

// SummarizeWithSlots, leaving the zeros out, in one pass, for a block that
// holds no NaN, +-Inf or extreme: writes to slots[0, kept) the slots of the
// values that are not +-0, in order, sets *summary, and returns kept. The
// slots mean what SummarizeWithSlots' do (nothing when a finite value lies
// outside the grid's bins: the summary tells), and the zeros are to be
// counted from summary->zeros (a ReLU's output is a third to three quarters
// zeros).
// Returns -1, leaving `slots` and *summary meaningless, when the block holds
// NaN, +-Inf or an extreme, or the best path is kNone: the caller then takes
// SummarizeWithSlots. `slots` has room for n values.
// REQUIRES: FloatSlotsExact(grid).
int32_t SummarizeNonzeroSlots(const float* data, int32_t n, const Grid& grid,
                              int32_t* slots, BlockSummary* summary);

// The same on `path` (tests compare the paths); -1 for kNone. REQUIRES: the
// CPU runs `path` (it is BestNonzeroPath() or a later one).
int32_t SummarizeNonzeroSlotsOn(NonzeroPath path, const float* data,
                                int32_t n, const Grid& grid, int32_t* slots,
                                BlockSummary* summary);

// A count in CountSlots' arrays: 16 bits, so that four arrays of 4 097
// slots (32 KiB) stay in the L1 cache; their owner adds them to its counts
// before any can overflow.
using LaneCount = uint16_t;

// Adds one to counts[slots[i]] for each i < n, spreading consecutive values
// over `lanes` count arrays (counts + j * stride, j < lanes, lanes 1 or 4)
// so that runs of one slot do not wait on each other's increments. No
// array gains more than ceil(n / lanes).
// REQUIRES: every slot < stride.
void CountSlots(const int32_t* slots, int32_t n, LaneCount* counts,
                int32_t stride, int lanes);

}  // namespace histogram_kernels
}  // namespace onnxquant

#endif  // ONNXQUANT_HISTOGRAM_KERNELS_H_
