#include "onnxquant/minmax_stats.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>

#include "onnxquant/error.h"

namespace onnxquant {

void TensorMinMax::Update(const float* data, int64_t n) {
  float lo = min, hi = max;
  int64_t finite = 0, nans = 0, pinf = 0, ninf = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = data[i];
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      ++finite;
    } else if (std::isnan(v)) {
      ++nans;
    } else if (v > 0) {
      ++pinf;
    } else {
      ++ninf;
    }
  }
  min = lo;
  max = hi;
  count += finite;
  nan += nans;
  pos_inf += pinf;
  neg_inf += ninf;
}

void TensorMinMax::Merge(const TensorMinMax& other) {
  min = std::min(min, other.min);
  max = std::max(max, other.max);
  count += other.count;
  nan += other.nan;
  pos_inf += other.pos_inf;
  neg_inf += other.neg_inf;
}

MinMaxStats::MinMaxStats(std::vector<std::string> names)
    : names_(std::move(names)), stats_(names_.size()) {
  for (size_t i = 0; i < names_.size(); ++i) {
    index_[names_[i]] = static_cast<int>(i);
  }
}

int MinMaxStats::IndexOf(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

void MinMaxStats::Update(const std::vector<FloatChunk>& chunks, int threads) {
  for (const auto& c : chunks) {
    if (c.tensor < 0 || c.tensor >= static_cast<int>(stats_.size())) {
      throw InvalidArgument("Statistics update names tensor index " +
                            std::to_string(c.tensor) + " of " +
                            std::to_string(stats_.size()) + ".");
    }
  }
  // Chunks of one tensor are applied by one worker in the order given, so
  // the result does not depend on the thread count.
  std::vector<std::vector<const FloatChunk*>> by_tensor(stats_.size());
  std::vector<int> touched;
  for (const auto& c : chunks) {
    if (by_tensor[c.tensor].empty()) touched.push_back(c.tensor);
    by_tensor[c.tensor].push_back(&c);
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t k = next++; k < touched.size(); k = next++) {
      for (const FloatChunk* c : by_tensor[touched[k]]) {
        stats_[c->tensor].Update(c->data, c->size);
      }
    }
  };
  const int n = std::max(1, std::min<int>(threads, touched.size()));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

void MinMaxStats::Merge(const MinMaxStats& other) {
  if (other.names_ != names_) {
    throw InvalidArgument(
        "Cannot merge statistics of different tensor sets: both calibrators "
        "must come from the same model and options.");
  }
  for (size_t i = 0; i < stats_.size(); ++i) stats_[i].Merge(other.stats_[i]);
}

}  // namespace onnxquant
