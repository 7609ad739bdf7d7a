// SummarizeNonzeroSlots: hand-written AVX-512 and AVX2 passes, picked at run
// time (compilers do not generate compress from plain loops); see
// histogram_kernels.h.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "onnxquant/histogram_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ONNXQUANT_X86_PATHS 1
#include <immintrin.h>
#endif

namespace onnxquant {
namespace histogram_kernels {
namespace {

#ifdef ONNXQUANT_X86_PATHS

constexpr float kInf = std::numeric_limits<float>::infinity();

// What a pass has gathered so far: lane-wise min and max, whether a lane saw
// NaN, +-Inf or an extreme, and the slots written.
struct State512 {
  __m512 lo, hi;
  unsigned special;
  int32_t kept;
};
struct State256 {
  __m256 lo, hi;
  unsigned special;
  int32_t kept;
};

// Ends a pass: -1 when NaN, +-Inf or an extreme was seen, else the summary
// and kept.
int32_t Finish(const float* lo, const float* hi, int lanes, unsigned special,
               int32_t n, int32_t kept, BlockSummary* summary) {
  if (special != 0) return -1;
  // + 0.f: -0.0 becomes +0.0; an empty block keeps +-inf.
  *summary = BlockSummary{*std::min_element(lo, lo + lanes) + 0.f,
                          *std::max_element(hi, hi + lanes) + 0.f, 0, 0, 0,
                          n - kept};
  return kept;
}

// ---------------------------------------------------------------- AVX-512

#define ONNXQUANT_AVX512 \
  __attribute__((target("avx512f,avx512dq,popcnt")))

ONNXQUANT_AVX512 inline void Step512(const float* data, __mmask16 in,
                                     __m512 scale, __m512i first,
                                     int32_t* out, State512* p) {
  const __m512 v = _mm512_maskz_loadu_ps(in, data);
  // NaN, +-Inf and extremes: magnitudes at or above kExtremeBits.
  const __m512i magnitude = _mm512_and_si512(_mm512_castps_si512(v),
                                             _mm512_set1_epi32(0x7fffffff));
  p->special |= _mm512_mask_cmpge_epu32_mask(
      in, magnitude, _mm512_set1_epi32(static_cast<int32_t>(kExtremeBits)));
  p->lo = _mm512_mask_min_ps(p->lo, in, p->lo, v);
  p->hi = _mm512_mask_max_ps(p->hi, in, p->hi, v);
  const __mmask16 nonzero = _mm512_mask_test_epi32_mask(
      in, _mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
  // The product is exact unless subnormal; converting it rounding down gives
  // its floor.
  const __m512 t = _mm512_mul_ps(v, scale);
  __m512i k = _mm512_maskz_cvt_roundps_epi32(
      0xffff, t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  // A negative value whose product underflowed to -0 is in bin -1.
  const __mmask16 under = _mm512_mask_cmpeq_epi32_mask(
      nonzero, _mm512_castps_si512(t), _mm512_set1_epi32(INT32_MIN));
  k = _mm512_mask_sub_epi32(k, under, k, _mm512_set1_epi32(1));
  k = _mm512_sub_epi32(k, first);
  _mm512_storeu_si512(out, _mm512_maskz_compress_epi32(nonzero, k));
  p->kept += __builtin_popcount(nonzero);
}

ONNXQUANT_AVX512 int32_t Pass512(const float* data, int32_t n,
                                 const Grid& grid, int32_t* slots,
                                 BlockSummary* summary) {
  const __m512 scale = _mm512_set1_ps(std::ldexp(1.0f, -grid.exponent));
  const __m512i first = _mm512_set1_epi32(static_cast<int32_t>(grid.first));
  State512 p{_mm512_set1_ps(kInf), _mm512_set1_ps(-kInf), 0, 0};
  int32_t i = 0;
  // p.kept <= i: the 16 slots stored end within slots[0, i + 16).
  for (; i + 16 <= n; i += 16) {
    Step512(data + i, 0xffff, scale, first, slots + p.kept, &p);
  }
  if (i < n) {  // the tail, through a buffer so that nothing past n is written
    int32_t out[16];
    const int32_t before = p.kept;
    Step512(data + i, static_cast<__mmask16>((1u << (n - i)) - 1), scale,
            first, out, &p);
    std::memcpy(slots + before, out, sizeof(int32_t) * (p.kept - before));
  }
  alignas(64) float lo[16], hi[16];
  _mm512_store_ps(lo, p.lo);
  _mm512_store_ps(hi, p.hi);
  return Finish(lo, hi, 16, p.special, n, p.kept, summary);
}

// ------------------------------------------------------------------- AVX2

#define ONNXQUANT_AVX2 __attribute__((target("avx2,popcnt")))

// For each 8-bit mask, the lanes whose bit is set, in order: the permutation
// that packs them to the front (AVX2 has no compress).
constexpr std::array<std::array<int32_t, 8>, 256> MakePackTable() {
  std::array<std::array<int32_t, 8>, 256> table{};
  for (int mask = 0; mask < 256; ++mask) {
    int next = 0;
    for (int lane = 0; lane < 8; ++lane) {
      if (mask & (1 << lane)) table[mask][next++] = lane;
    }
  }
  return table;
}
constexpr std::array<std::array<int32_t, 8>, 256> kPackTable = MakePackTable();

// `in`: all ones in the lanes of data[0, 8) to take, zeros elsewhere (their
// values must be readable); all ones everywhere unless kTail.
template <bool kTail>
ONNXQUANT_AVX2 inline void Step256(const float* data, __m256i in, __m256 scale,
                                   __m256i first, int32_t* out,
                                   State256* p) {
  const __m256 v = _mm256_loadu_ps(data);
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i magnitude =
      _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
  // The tail's buffer is zero-padded: the padding is neither special nor
  // non-zero, and only its min/max need the mask.
  const __m256i special = _mm256_cmpgt_epi32(
      magnitude, _mm256_set1_epi32(static_cast<int32_t>(kExtremeBits - 1)));
  p->special |= static_cast<unsigned>(
      _mm256_movemask_ps(_mm256_castsi256_ps(special)));
  if (kTail) {
    const __m256 taken = _mm256_castsi256_ps(in);
    p->lo = _mm256_min_ps(p->lo,
                          _mm256_blendv_ps(_mm256_set1_ps(kInf), v, taken));
    p->hi = _mm256_max_ps(p->hi,
                          _mm256_blendv_ps(_mm256_set1_ps(-kInf), v, taken));
  } else {
    p->lo = _mm256_min_ps(p->lo, v);
    p->hi = _mm256_max_ps(p->hi, v);
  }
  const __m256i nonzero = _mm256_xor_si256(
      _mm256_cmpeq_epi32(magnitude, _mm256_setzero_si256()),
      _mm256_set1_epi32(-1));
  const __m256 t = _mm256_mul_ps(v, scale);
  __m256i k = _mm256_cvttps_epi32(
      _mm256_round_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
  // A negative value whose product underflowed to -0 is in bin -1: adding
  // the all-ones mask subtracts one.
  const __m256i under = _mm256_and_si256(
      nonzero, _mm256_cmpeq_epi32(_mm256_castps_si256(t),
                                  _mm256_set1_epi32(INT32_MIN)));
  k = _mm256_sub_epi32(_mm256_add_epi32(k, under), first);
  const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(nonzero));
  const __m256i pack = _mm256_loadu_si256(
      reinterpret_cast<const __m256i*>(kPackTable[mask].data()));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm256_permutevar8x32_epi32(k, pack));
  p->kept += __builtin_popcount(static_cast<unsigned>(mask));
}

ONNXQUANT_AVX2 int32_t Pass256(const float* data, int32_t n, const Grid& grid,
                               int32_t* slots, BlockSummary* summary) {
  const __m256 scale = _mm256_set1_ps(std::ldexp(1.0f, -grid.exponent));
  const __m256i first = _mm256_set1_epi32(static_cast<int32_t>(grid.first));
  const __m256i all = _mm256_set1_epi32(-1);
  State256 p{_mm256_set1_ps(kInf), _mm256_set1_ps(-kInf), 0, 0};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Step256<false>(data + i, all, scale, first, slots + p.kept, &p);
  }
  if (i < n) {  // the tail, through buffers
    float tail[8] = {};
    int32_t out[8];
    std::memcpy(tail, data + i, sizeof(float) * (n - i));
    const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - i),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const int32_t before = p.kept;
    Step256<true>(tail, in, scale, first, out, &p);
    std::memcpy(slots + before, out, sizeof(int32_t) * (p.kept - before));
  }
  alignas(32) float lo[8], hi[8];
  _mm256_store_ps(lo, p.lo);
  _mm256_store_ps(hi, p.hi);
  return Finish(lo, hi, 8, p.special, n, p.kept, summary);
}

#endif  // ONNXQUANT_X86_PATHS

}  // namespace

NonzeroPath BestNonzeroPath() {
#ifdef ONNXQUANT_X86_PATHS
  static const NonzeroPath kBest = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("popcnt")) return NonzeroPath::kNone;
    if (__builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512dq")) {
      return NonzeroPath::kAvx512;
    }
    if (__builtin_cpu_supports("avx2")) return NonzeroPath::kAvx2;
    return NonzeroPath::kNone;
  }();
  return kBest;
#else
  return NonzeroPath::kNone;
#endif
}

int32_t SummarizeNonzeroSlotsOn(NonzeroPath path, const float* data,
                                int32_t n, const Grid& grid, int32_t* slots,
                                BlockSummary* summary) {
#ifdef ONNXQUANT_X86_PATHS
  if (path == NonzeroPath::kAvx512) {
    return Pass512(data, n, grid, slots, summary);
  }
  if (path == NonzeroPath::kAvx2) return Pass256(data, n, grid, slots, summary);
#endif
  (void)path;
  (void)data;
  (void)n;
  (void)grid;
  (void)slots;
  (void)summary;
  return -1;
}

int32_t SummarizeNonzeroSlots(const float* data, int32_t n, const Grid& grid,
                              int32_t* slots, BlockSummary* summary) {
  return SummarizeNonzeroSlotsOn(BestNonzeroPath(), data, n, grid, slots,
                                 summary);
}

}  // namespace histogram_kernels
}  // namespace onnxquant
