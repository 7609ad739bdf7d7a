// Streaming histograms on a canonical grid, for calibration.
//
// Bins are anchored at 0 and have a power-of-two width 2^e: bin k covers
// [k * 2^e, (k + 1) * 2^e). A histogram holds at most kMaxBins consecutive
// bins; when a value falls outside, the width doubles (neighbouring bins
// merge exactly, since bin k at 2^e nests in bin floor(k / 2) at 2^(e+1))
// until every observed value fits. The exponent e is the smallest integer
// not below kMinExponent such that
//   floor(max / 2^e) - floor(min / 2^e) + 1 <= kMaxBins   and
//   |floor(min / 2^e)|, |floor(max / 2^e)| <= kMaxBinIndex,
// and the bins held are exactly floor(min / 2^e) .. floor(max / 2^e). (The
// second condition only ever binds when every finite value is the same.)
// So the result does not depend on the order or size of the chunks, two
// histograms merge exactly, and at least kMaxBins / 2 bins span the observed
// range unless e == kMinExponent. NaN, +-Inf and float32's extremes (finite
// values of magnitude >= kExtremeMagnitude, 1e30, as attention masks hold)
// are counted and left out: "finite" below excludes the extremes. Counts are
// integers; every finite value, zeros included, is in a bin.
#ifndef ONNXQUANT_HISTOGRAM_H_
#define ONNXQUANT_HISTOGRAM_H_

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "onnxquant/histogram_kernels.h"

namespace onnxquant {

class Histogram {
 public:
  static constexpr int kMaxBins = 4096;
  static constexpr int kMinExponent = -60;
  // Bound on |bin index|, so that indices and BinLow() are exact in double.
  static constexpr int64_t kMaxBinIndex = int64_t{1} << 40;

  // Adds `n` values (none when n <= 0). REQUIRES: `data` points at `n`
  // floats.
  void Add(const float* data, int64_t n);
  // The same, counting large inputs in `scratch`, which Add sizes on first
  // use and leaves zeroed, so that repeated calls (one scratch per thread)
  // allocate nothing.
  void Add(const float* data, int64_t n,
           std::vector<histogram_kernels::LaneCount>& scratch);
  // Adds every count of `other`; the result equals one histogram fed both
  // inputs, in either order.
  void Merge(const Histogram& other);

  bool empty() const { return count_ == 0; }
  int exponent() const { return exponent_; }
  double bin_width() const;                         // 2^exponent
  int64_t first_bin() const { return first_bin_; }  // index k of counts()[0]
  // Counts of bins first_bin() .. first_bin() + counts().size() - 1: the bins
  // of min() and max() and every bin between (empty when count() == 0).
  const std::vector<int64_t>& counts() const { return counts_; }
  double BinLow(int64_t k) const { return k * bin_width(); }

  // Of finite values (never -0.0); +inf when empty.
  float min() const { return min_; }
  float max() const { return max_; }        // of finite values; -inf when empty
  int64_t count() const { return count_; }  // finite values
  // Values exactly +-0 (the ReLU spike); they are also counted in bin 0.
  int64_t zeros() const { return zeros_; }
  int64_t nan() const { return nan_; }
  int64_t pos_inf() const { return pos_inf_; }
  int64_t neg_inf() const { return neg_inf_; }
  // Finite values of magnitude >= histogram_kernels::kExtremeMagnitude.
  int64_t pos_extreme() const { return pos_extreme_; }
  int64_t neg_extreme() const { return neg_extreme_; }

  // A compact, versioned little-endian byte form ("OQH1", version, fields,
  // then the counts as LEB128 varints); Deserialize(Serialize()) == *this.
  std::string Serialize() const;
  // Returns the histogram `bytes` hold. Throws Error(kInvalidArgument),
  // naming the problem, on bytes that are not a valid histogram (bad magic
  // or version, truncated, trailing bytes, inconsistent fields).
  static Histogram Deserialize(std::string_view bytes);

  // True when every field and count is equal.
  bool operator==(const Histogram& o) const;
  bool operator!=(const Histogram& o) const { return !(*this == o); }

 private:
  // Makes the grid hold exactly the bins of [lo, hi] at the canonical
  // exponent, merging bins if the exponent grows; min_/max_ become lo/hi.
  // REQUIRES: lo <= min_, hi >= max_, both finite floats.
  void Cover(float lo, float hi);
  // The current grid, its sink slot just past the bins.
  histogram_kernels::Grid CurrentGrid() const;
  // Writes the slots of data[0, n), whose finite values lie in [min_, max_],
  // on the current grid.
  void ComputeSlots(const float* data, int32_t n, int32_t* slots) const;
  // Adds the counts of the current bins held in `lanes` (the layout of
  // histogram_kernels::CountSlots) to counts_ and zeroes them.
  void FlushLanes(histogram_kernels::LaneCount* lanes);

  int exponent_ = kMinExponent;
  int64_t first_bin_ = 0;
  std::vector<int64_t> counts_;
  float min_ = std::numeric_limits<float>::infinity();
  float max_ = -std::numeric_limits<float>::infinity();
  int64_t count_ = 0, zeros_ = 0, nan_ = 0, pos_inf_ = 0, neg_inf_ = 0;
  int64_t pos_extreme_ = 0, neg_extreme_ = 0;
};

// One histogram per planned tensor, updated in parallel.
class HistogramSet {
 public:
  // Empty histograms for `names`. Throws Error(kInvalidArgument) when a name
  // repeats.
  explicit HistogramSet(std::vector<std::string> names);

  const std::vector<std::string>& names() const { return names_; }
  int IndexOf(const std::string& name) const;  // -1 when absent
  const Histogram& at(int index) const { return histograms_[index]; }

  struct Chunk {
    int tensor = 0;
    const float* data = nullptr;
    int64_t size = 0;
  };
  // Adds each chunk to its tensor's histogram, with up to `threads` threads
  // (at least one); chunks of one tensor are added in order by one thread,
  // so the result is identical whatever the thread count. Throws
  // Error(kInvalidArgument), before adding anything, for an index out of
  // range, a negative size, or null data with a positive size.
  void Update(const std::vector<Chunk>& chunks, int threads);
  // Throws Error(kInvalidArgument) unless both sets have the same names, in
  // the same order.
  void Merge(const HistogramSet& other);

  // A versioned byte form ("OQS1", version, then each name and its
  // histogram's bytes); Deserialize(Serialize()) has the same names and
  // histograms.
  std::string Serialize() const;
  // Throws Error(kInvalidArgument), naming the problem, on bytes that are not
  // a valid set.
  static HistogramSet Deserialize(std::string_view bytes);

 private:
  std::vector<std::string> names_;
  std::unordered_map<std::string, int> index_;
  std::vector<Histogram> histograms_;
  // Histogram::Add's scratch, one per worker thread, kept between updates
  // so that memory stays flat however many samples are fed.
  std::vector<std::vector<histogram_kernels::LaneCount>> scratch_;
};

}  // namespace onnxquant

#endif  // ONNXQUANT_HISTOGRAM_H_
