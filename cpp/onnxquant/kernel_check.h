// The 16-bit pair sums of ONNX Runtime's uint8 x int8 kernels on x86 CPUs
// without VNNI, simulated on real activation codes.
//
// ONNX Runtime (1.31) runs a QDQ Conv, Gemm or MatMul with int8 weights as
// an integer GEMM whose x86 kernels for AVX2 and for AVX-512 without VNNI
// multiply with VPMADDUBSW: the products of the raw uint8 activation codes
// (zero point included) and the int8 weight codes are added two by two,
// reduction indices (2p, 2p + 1), in int16 with saturation, before the int32
// accumulation. The reduction index k is, for a Conv, ((kh * KW + kw) * Cg +
// c) within each group (channels-last im2col; taps in the spatial padding
// hold the input's zero-point code), and for Gemm/MatMul the index of the
// inner product; an odd length is padded with a zero. Depthwise Conv runs an
// exact int32 kernel, uint8 x uint8 kernels widen to 16 bits first, and the
// VNNI and AMX kernels add four products in int32: none of these saturate.
// (Established by experiment under QEMU's Haswell model and from ONNX
// Runtime's MLAS sources; docs/architecture.md.)
//
// A pair can saturate only if its weights have the same sign and
// |w1| + |w2| >= 129 (255 * 128 = 32640 fits). The functions below visit
// just those pairs.
#ifndef ONNXQUANT_KERNEL_CHECK_H_
#define ONNXQUANT_KERNEL_CHECK_H_

#include <cstdint>
#include <vector>

namespace onnxquant {

inline constexpr int32_t kPairSumMax = 32767;
inline constexpr int32_t kPairSumMin = -32768;

// The filters of one kernel as the GEMM sees them: `filters` rows of
// `length` int8 codes each (Conv: one output channel's [Cg, KH, KW] weight;
// Gemm/MatMul: one output column's K weights), and the reduction order:
// slot k of the kernel's K holds filter element slots[k] (-1: zero padding).
struct PairedFilters {
  int64_t filters = 0;
  int64_t length = 0;
  std::vector<int8_t> codes;   // filters * length
  std::vector<int32_t> slots;  // even size
  // Per filter, the real value of one accumulator unit (input scale x
  // weight scale), to weigh saturation errors; empty means 1.
  std::vector<double> unit;
};

// What the simulation saw for one node.
struct PairSumStats {
  int64_t pair_sums = 0;   // pair sums computed (rows x filters x pairs)
  int64_t risky_pairs = 0; // weight pairs that could saturate at all
  int64_t saturated = 0;   // pair sums outside [-32768, 32767]
  int32_t peak = 0;        // largest |pair sum| seen (0 with no risky pair)
  int64_t rows = 0;        // activation rows (im2col patches) visited
  // Sum over outputs (row, filter) of the squared error that saturation
  // adds to the accumulator, in real units (PairedFilters::unit).
  double error_energy = 0;
  // The largest such error of one output, in real units.
  double max_error = 0;
  // Per filter, the largest |pair sum| seen (0 without a risky pair).
  std::vector<int32_t> filter_peak;
};

// Adds `s` to `total` (counts and energies add, peaks take the maximum).
void Accumulate(const PairSumStats& s, PairSumStats* total);

// Geometry of a 2-D convolution over an NCHW uint8 input.
struct ConvGeometry {
  int64_t batch = 1, channels = 1, height = 1, width = 1;
  int64_t out_channels = 1, group = 1;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int64_t OutHeight() const;
  int64_t OutWidth() const;
};

// The PairedFilters of a Conv weight [M, C/group, KH, KW] (ONNX layout).
// REQUIRES: codes.size() == M * C/group * KH * KW.
PairedFilters ConvFilters(const std::vector<int8_t>& codes,
                          const ConvGeometry& g);

// The PairedFilters of a Gemm/MatMul weight: `codes` is [K, N] (MatMul B,
// Gemm B with transB = 0) or, with `transposed`, [N, K] (Gemm transB = 1).
PairedFilters GemmFilters(const std::vector<int8_t>& codes, int64_t k,
                          int64_t n, bool transposed);

// Simulates every pair sum a Conv computes on `x` (uint8 codes, NCHW, as
// geometry `g` says; padded taps read `pad_code`). Groups index the filters
// in order (filter f belongs to group f / (M / group)).
// REQUIRES: x.size() == batch * channels * height * width.
PairSumStats SimulateConv(const std::vector<uint8_t>& x, uint8_t pad_code,
                          const ConvGeometry& g, const PairedFilters& f);

// Simulates the pair sums of a Gemm/MatMul over `rows` rows of K uint8
// codes each (`a` is [rows, K], row-major).
PairSumStats SimulateGemm(const std::vector<uint8_t>& a, int64_t rows,
                          const PairedFilters& f);

// Per filter, the largest |pair sum| any input could give, each code at
// most `max_code`.
std::vector<int32_t> PairSumBounds(const PairedFilters& f, int32_t max_code);

// The largest weight code (<= 127) for a filter whose pair sums reached
// `peak` with codes up to 127, such that requantizing the filter's weight
// to that code keeps every one of those pair sums, grown by the fraction
// `headroom` (>= 0), within int16. (Codes scaled by q / 127 move each pair
// sum by at most q / 127 of itself plus 2 x 255 for rounding.) 127 when the
// grown peak fits already.
int32_t FittingQmax(int32_t peak, double headroom = 0.0);

}  // namespace onnxquant

#endif  // ONNXQUANT_KERNEL_CHECK_H_
