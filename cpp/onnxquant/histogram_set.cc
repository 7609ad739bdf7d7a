// HistogramSet, and the byte forms of Histogram and HistogramSet.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "onnxquant/error.h"
#include "onnxquant/histogram.h"

namespace onnxquant {
namespace {

using histogram_kernels::FloatBits;
using histogram_kernels::FloatFromBits;

// Histogram, little-endian: "OQH1", u32 version, i32 exponent, f32 min,
// f32 max, u64 count, zeros, nan, pos_inf, neg_inf, pos_extreme,
// neg_extreme, i64 first_bin, u32 bin count, then each bin's count as an
// LEB128 varint.
constexpr char kHistogramMagic[4] = {'O', 'Q', 'H', '1'};
constexpr size_t kHistogramHeaderBytes = 4 + 4 + 4 + 4 + 4 + 7 * 8 + 8 + 4;
// HistogramSet, little-endian: "OQS1", u32 version, u32 tensor count, then
// per tensor u32 name length, name, u32 histogram length, histogram bytes.
constexpr char kSetMagic[4] = {'O', 'Q', 'S', '1'};
// Of both forms; version 2 added the extremes' counts.
constexpr uint32_t kVersion = 2;

void PutFixed(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) {
    out->push_back(static_cast<char>(v >> (8 * i)));
  }
}

// Reads little-endian fields; a read past the end returns 0 and sets
// truncated().
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}

  uint64_t Fixed(int bytes) {
    if (left() < static_cast<size_t>(bytes)) {
      truncated_ = true;
      pos_ = bytes_.size();
      return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) {
      v |= uint64_t{static_cast<unsigned char>(bytes_[pos_ + i])} << (8 * i);
    }
    pos_ += bytes;
    return v;
  }
  // Returns the next `n` bytes (fewer, and truncated(), past the end).
  std::string_view Bytes(size_t n) {
    if (left() < n) truncated_ = true;
    const std::string_view v = bytes_.substr(pos_, std::min(n, left()));
    pos_ += v.size();
    return v;
  }
  // Returns false when the varint is truncated or above 2^63 - 1.
  bool Varint(int64_t* value) {
    uint64_t v = 0;
    for (int shift = 0; shift <= 56; shift += 7) {
      if (left() == 0) {
        truncated_ = true;
        return false;
      }
      const uint64_t byte = static_cast<unsigned char>(bytes_[pos_++]);
      v |= (byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) {
        *value = static_cast<int64_t>(v);
        return true;
      }
    }
    return false;  // a ninth continuation byte: 2^63 or more
  }
  size_t left() const { return bytes_.size() - pos_; }
  bool truncated() const { return truncated_; }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
  bool truncated_ = false;
};

Error BadHistogram(const std::string& what) {
  return InvalidArgument("histogram bytes are " + what +
                         "; pass bytes made by Histogram::Serialize.");
}

Error BadSet(const std::string& what) {
  return InvalidArgument("histogram set bytes are " + what +
                         "; pass bytes made by HistogramSet::Serialize.");
}

}  // namespace

std::string Histogram::Serialize() const {
  std::string out(kHistogramMagic, sizeof kHistogramMagic);
  PutFixed(kVersion, 4, &out);
  PutFixed(static_cast<uint32_t>(exponent_), 4, &out);
  PutFixed(FloatBits(min_), 4, &out);
  PutFixed(FloatBits(max_), 4, &out);
  for (int64_t v : {count_, zeros_, nan_, pos_inf_, neg_inf_, pos_extreme_,
                    neg_extreme_}) {
    PutFixed(static_cast<uint64_t>(v), 8, &out);
  }
  PutFixed(static_cast<uint64_t>(first_bin_), 8, &out);
  PutFixed(counts_.size(), 4, &out);
  for (int64_t c : counts_) {
    uint64_t v = static_cast<uint64_t>(c);
    for (; v >= 0x80; v >>= 7) out.push_back(static_cast<char>(v | 0x80));
    out.push_back(static_cast<char>(v));
  }
  return out;
}

Histogram Histogram::Deserialize(std::string_view bytes) {
  if (bytes.size() < kHistogramHeaderBytes) {
    throw BadHistogram("truncated: " + std::to_string(bytes.size()) +
                       " bytes, where the header alone takes " +
                       std::to_string(kHistogramHeaderBytes));
  }
  if (bytes.substr(0, 4) != std::string_view(kHistogramMagic, 4)) {
    throw BadHistogram("not a histogram: they do not start with \"OQH1\"");
  }
  Reader r(bytes.substr(4));
  const uint64_t version = r.Fixed(4);
  if (version != kVersion) {
    throw BadHistogram("of format version " + std::to_string(version) +
                       ", and this onnxquant reads version " +
                       std::to_string(kVersion));
  }
  Histogram h;
  h.exponent_ = static_cast<int32_t>(static_cast<uint32_t>(r.Fixed(4)));
  h.min_ = FloatFromBits(static_cast<uint32_t>(r.Fixed(4)));
  h.max_ = FloatFromBits(static_cast<uint32_t>(r.Fixed(4)));
  for (int64_t* v : {&h.count_, &h.zeros_, &h.nan_, &h.pos_inf_, &h.neg_inf_,
                     &h.pos_extreme_, &h.neg_extreme_}) {
    *v = static_cast<int64_t>(r.Fixed(8));
    if (*v < 0) throw BadHistogram("inconsistent: a counter is negative");
  }
  h.first_bin_ = static_cast<int64_t>(r.Fixed(8));
  const uint64_t bins = r.Fixed(4);
  if (bins > static_cast<uint64_t>(kMaxBins)) {
    throw BadHistogram("inconsistent: " + std::to_string(bins) +
                       " bins, above " + std::to_string(kMaxBins));
  }
  h.counts_.resize(bins);
  int64_t total = 0;
  for (int64_t& c : h.counts_) {
    if (!r.Varint(&c)) {
      throw BadHistogram(r.truncated() ? "truncated in the bin counts"
                                       : "corrupt: a bin count is too large");
    }
    if (c > h.count_ - total) {
      throw BadHistogram("inconsistent: the bins hold more than count");
    }
    total += c;
  }
  if (r.left() != 0) {
    throw BadHistogram("followed by " + std::to_string(r.left()) +
                       " unexpected trailing bytes");
  }
  if (total != h.count_) {
    throw BadHistogram("inconsistent: the bins hold fewer than count");
  }
  // The grid must be the canonical one of [min, max], so that merging and
  // comparing stay exact.
  if (h.count_ == 0) {
    if (h.exponent_ != kMinExponent || h.first_bin_ != 0 || h.zeros_ != 0 ||
        h.min_ != Histogram().min_ || h.max_ != Histogram().max_) {
      throw BadHistogram("inconsistent: no finite value, but a range or grid");
    }
    return h;
  }
  if (!std::isfinite(h.min_) || !std::isfinite(h.max_) || !(h.min_ <= h.max_) ||
      FloatBits(h.min_) == 0x80000000u || FloatBits(h.max_) == 0x80000000u) {
    throw BadHistogram("inconsistent: min and max are not a finite range");
  }
  Histogram grid;
  grid.Cover(h.min_, h.max_);
  if (grid.exponent_ != h.exponent_ || grid.first_bin_ != h.first_bin_ ||
      grid.counts_.size() != h.counts_.size()) {
    throw BadHistogram("inconsistent: the grid is not the one of [min, max]");
  }
  if (h.counts_.front() == 0 || h.counts_.back() == 0) {
    throw BadHistogram("inconsistent: the bins of min and max are empty");
  }
  if (h.zeros_ > 0 &&
      (h.min_ > 0 || h.max_ < 0 ||
       h.zeros_ > h.counts_[static_cast<size_t>(-h.first_bin_)])) {
    throw BadHistogram("inconsistent: more zeros than bin 0 holds");
  }
  return h;
}

HistogramSet::HistogramSet(std::vector<std::string> names)
    : names_(std::move(names)), histograms_(names_.size()) {
  for (size_t i = 0; i < names_.size(); ++i) {
    if (!index_.emplace(names_[i], static_cast<int>(i)).second) {
      throw InvalidArgument("HistogramSet: tensor '" + names_[i] +
                            "' is named twice; give each tensor once.");
    }
  }
}

int HistogramSet::IndexOf(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

void HistogramSet::Update(const std::vector<Chunk>& chunks, int threads) {
  const int tensors = static_cast<int>(histograms_.size());
  for (const Chunk& c : chunks) {
    if (c.tensor < 0 || c.tensor >= tensors) {
      throw InvalidArgument("HistogramSet::Update: tensor index " +
                            std::to_string(c.tensor) + " is out of range [0, " +
                            std::to_string(tensors) + ").");
    }
    if (c.size < 0 || (c.size > 0 && c.data == nullptr)) {
      throw InvalidArgument("HistogramSet::Update: a chunk of tensor '" +
                            names_[c.tensor] +
                            "' has a negative size or no data.");
    }
  }
  // One worker takes all the chunks of a tensor, in the order given.
  std::vector<std::vector<const Chunk*>> by_tensor(histograms_.size());
  std::vector<int> touched;
  std::vector<int64_t> values(histograms_.size(), 0);
  for (const Chunk& c : chunks) {
    if (by_tensor[c.tensor].empty()) touched.push_back(c.tensor);
    by_tensor[c.tensor].push_back(&c);
    values[c.tensor] += c.size;
  }
  // Largest tensors first, so that the workers finish close together.
  std::stable_sort(touched.begin(), touched.end(),
                   [&](int a, int b) { return values[a] > values[b]; });
  const int workers =
      std::max(1, std::min(threads, static_cast<int>(touched.size())));
  if (scratch_.size() < static_cast<size_t>(workers)) scratch_.resize(workers);
  std::atomic<size_t> next{0};
  std::exception_ptr failure;  // the first worker exception (bad_alloc)
  std::mutex failure_mutex;
  auto work = [&](int worker) {
    try {
      std::vector<histogram_kernels::LaneCount>& scratch = scratch_[worker];
      for (size_t i = next++; i < touched.size(); i = next++) {
        for (const Chunk* c : by_tensor[touched[i]]) {
          histograms_[c->tensor].Add(c->data, c->size, scratch);
        }
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < workers; ++t) pool.emplace_back(work, t);
  work(0);
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

void HistogramSet::Merge(const HistogramSet& other) {
  if (other.names_ != names_) {
    throw InvalidArgument(
        "Cannot merge histograms of different tensor sets: both must come "
        "from the same model and options.");
  }
  for (size_t i = 0; i < histograms_.size(); ++i) {
    histograms_[i].Merge(other.histograms_[i]);
  }
}

std::string HistogramSet::Serialize() const {
  std::string out(kSetMagic, sizeof kSetMagic);
  PutFixed(kVersion, 4, &out);
  PutFixed(names_.size(), 4, &out);
  for (size_t i = 0; i < names_.size(); ++i) {
    PutFixed(names_[i].size(), 4, &out);
    out += names_[i];
    const std::string bytes = histograms_[i].Serialize();
    PutFixed(bytes.size(), 4, &out);
    out += bytes;
  }
  return out;
}

HistogramSet HistogramSet::Deserialize(std::string_view bytes) {
  if (bytes.size() < 12) {
    throw BadSet("truncated: " + std::to_string(bytes.size()) +
                 " bytes, where the header alone takes 12");
  }
  if (bytes.substr(0, 4) != std::string_view(kSetMagic, 4)) {
    throw BadSet("not a histogram set: they do not start with \"OQS1\"");
  }
  Reader r(bytes.substr(4));
  const uint64_t version = r.Fixed(4);
  if (version != kVersion) {
    throw BadSet("of format version " + std::to_string(version) +
                 ", and this onnxquant reads version " +
                 std::to_string(kVersion));
  }
  const uint64_t n = r.Fixed(4);
  // Each tensor takes at least 8 bytes: do not trust n before allocating.
  if (n > r.left() / 8) throw BadSet("truncated: too short for their tensors");
  std::vector<std::string> names;
  std::vector<std::string_view> histograms;
  for (uint64_t i = 0; i < n; ++i) {
    names.emplace_back(r.Bytes(r.Fixed(4)));
    histograms.push_back(r.Bytes(r.Fixed(4)));
    if (r.truncated()) {
      throw BadSet("truncated in tensor " + std::to_string(i) + " of " +
                   std::to_string(n));
    }
  }
  if (r.left() != 0) {
    throw BadSet("followed by " + std::to_string(r.left()) +
                 " unexpected trailing bytes");
  }
  HistogramSet set(std::move(names));  // throws on a repeated name
  for (size_t i = 0; i < histograms.size(); ++i) {
    try {
      set.histograms_[i] = Histogram::Deserialize(histograms[i]);
    } catch (const Error& e) {
      throw InvalidArgument(
          "histogram set bytes hold an invalid histogram "
          "for tensor '" +
          set.names_[i] + "': " + e.what());
    }
  }
  return set;
}

}  // namespace onnxquant
