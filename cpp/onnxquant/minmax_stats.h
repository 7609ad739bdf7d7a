// Streaming minimum/maximum statistics for calibration.
//
// One TensorMinMax per planned tensor, fed chunk by chunk. NaN and +-Inf are
// counted and left out of min/max. Memory is O(tensors), whatever the number
// of samples; the result does not depend on chunk order or size.
#ifndef ONNXQUANT_MINMAX_STATS_H_
#define ONNXQUANT_MINMAX_STATS_H_

#include <cstdint>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

namespace onnxquant {

struct TensorMinMax {
  float min = std::numeric_limits<float>::infinity();
  float max = -std::numeric_limits<float>::infinity();
  int64_t count = 0;  // finite values seen
  int64_t nan = 0;
  int64_t pos_inf = 0;
  int64_t neg_inf = 0;

  // REQUIRES: `data` points at `n` floats.
  void Update(const float* data, int64_t n);
  void Merge(const TensorMinMax& other);
};

// A read-only view of one chunk of one tensor.
struct FloatChunk {
  int tensor = 0;  // index into the names given to MinMaxStats
  const float* data = nullptr;
  int64_t size = 0;
};

class MinMaxStats {
 public:
  explicit MinMaxStats(std::vector<std::string> names);

  const std::vector<std::string>& names() const { return names_; }
  // Index of `name`, or -1.
  int IndexOf(const std::string& name) const;

  // Updates the tensors of `chunks` with up to `threads` threads (at least
  // one). Results are identical whatever the thread count. Throws
  // Error(kInvalidArgument) for an index out of range.
  void Update(const std::vector<FloatChunk>& chunks, int threads);

  const TensorMinMax& stats(int index) const { return stats_[index]; }
  void Merge(const MinMaxStats& other);

 private:
  std::vector<std::string> names_;
  std::unordered_map<std::string, int> index_;
  std::vector<TensorMinMax> stats_;
};

}  // namespace onnxquant

#endif  // ONNXQUANT_MINMAX_STATS_H_
