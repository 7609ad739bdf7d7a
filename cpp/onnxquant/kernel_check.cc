#include "onnxquant/kernel_check.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

// Weight pairs whose |w1| + |w2| reaches this can exceed int16 with codes
// up to 255 (255 * 128 = 32640 cannot).
constexpr int kRiskyPairWeight = 129;

struct RiskyPair {
  int64_t filter;
  int32_t e1, e2;  // filter elements, -1 for the padding slot
  int32_t w1, w2;
};

// The pairs of `f` that can saturate, grouped by filter.
std::vector<RiskyPair> RiskyPairs(const PairedFilters& f) {
  std::vector<RiskyPair> out;
  for (int64_t o = 0; o < f.filters; ++o) {
    const int8_t* w = f.codes.data() + o * f.length;
    for (size_t k = 0; k + 1 < f.slots.size(); k += 2) {
      const int32_t e1 = f.slots[k], e2 = f.slots[k + 1];
      const int32_t w1 = e1 < 0 ? 0 : w[e1], w2 = e2 < 0 ? 0 : w[e2];
      if ((w1 > 0 && w2 < 0) || (w1 < 0 && w2 > 0)) continue;
      if (std::abs(w1) + std::abs(w2) < kRiskyPairWeight) continue;
      out.push_back({o, e1, e2, w1, w2});
    }
  }
  return out;
}

// Visits the risky pairs [begin, end) (sorted by filter) on one row.
void Visit(const uint8_t* row, const RiskyPair* begin, const RiskyPair* end,
           const std::vector<double>& unit, PairSumStats* s) {
  int64_t filter = -1;
  int64_t error = 0;  // of the current filter's output, accumulator units
  auto flush = [&] {
    if (error == 0) return;
    const double e =
        static_cast<double>(error) * (unit.empty() ? 1.0 : unit[filter]);
    s->error_energy += e * e;
    s->max_error = std::max(s->max_error, std::fabs(e));
    error = 0;
  };
  for (const RiskyPair* p = begin; p != end; ++p) {
    if (p->filter != filter) {
      flush();
      filter = p->filter;
    }
    const int32_t a1 = p->e1 < 0 ? 0 : row[p->e1];
    const int32_t a2 = p->e2 < 0 ? 0 : row[p->e2];
    const int32_t v = a1 * p->w1 + a2 * p->w2;
    if (v > kPairSumMax) {
      ++s->saturated;
      error += v - kPairSumMax;
    } else if (v < kPairSumMin) {
      ++s->saturated;
      error += v - kPairSumMin;
    }
    s->peak = std::max(s->peak, std::abs(v));
    s->filter_peak[filter] = std::max(s->filter_peak[filter], std::abs(v));
  }
  flush();
}

void CheckFilters(const PairedFilters& f) {
  if (f.filters < 0 || f.length < 0 ||
      static_cast<int64_t>(f.codes.size()) != f.filters * f.length ||
      f.slots.size() % 2 != 0) {
    throw InternalError("inconsistent PairedFilters");
  }
  for (int32_t s : f.slots) {
    if (s >= f.length) throw InternalError("PairedFilters slot out of range");
  }
  if (!f.unit.empty() && static_cast<int64_t>(f.unit.size()) != f.filters) {
    throw InternalError("PairedFilters unit size differs from filters");
  }
}

}  // namespace

int64_t ConvGeometry::OutHeight() const {
  return (height + pad_top + pad_bottom - dilation_h * (kernel_h - 1) - 1) /
             stride_h + 1;
}

int64_t ConvGeometry::OutWidth() const {
  return (width + pad_left + pad_right - dilation_w * (kernel_w - 1) - 1) /
             stride_w + 1;
}

PairedFilters ConvFilters(const std::vector<int8_t>& codes,
                          const ConvGeometry& g) {
  if (g.group < 1 || g.channels % g.group != 0 ||
      g.out_channels % g.group != 0 || g.kernel_h < 1 || g.kernel_w < 1) {
    throw InternalError("inconsistent ConvGeometry");
  }
  PairedFilters f;
  const int64_t cg = g.channels / g.group;
  const int64_t taps = g.kernel_h * g.kernel_w;
  f.filters = g.out_channels;
  f.length = cg * taps;
  if (static_cast<int64_t>(codes.size()) != f.filters * f.length) {
    throw InternalError("Conv weight size does not match its geometry");
  }
  f.codes = codes;
  // Channels-last im2col: k = tap * Cg + c; the filter holds [c][tap].
  for (int64_t tap = 0; tap < taps; ++tap) {
    for (int64_t c = 0; c < cg; ++c) {
      f.slots.push_back(static_cast<int32_t>(c * taps + tap));
    }
  }
  if (f.slots.size() % 2) f.slots.push_back(-1);
  return f;
}

PairedFilters GemmFilters(const std::vector<int8_t>& codes, int64_t k,
                          int64_t n, bool transposed) {
  if (k < 0 || n < 0 || static_cast<int64_t>(codes.size()) != k * n) {
    throw InternalError("Gemm weight size does not match K x N");
  }
  PairedFilters f;
  f.filters = n;
  f.length = k;
  f.codes.resize(codes.size());
  for (int64_t o = 0; o < n; ++o) {
    for (int64_t i = 0; i < k; ++i) {
      f.codes[o * k + i] = transposed ? codes[o * k + i] : codes[i * n + o];
    }
  }
  for (int64_t i = 0; i < k; ++i) f.slots.push_back(static_cast<int32_t>(i));
  if (f.slots.size() % 2) f.slots.push_back(-1);
  return f;
}

PairSumStats SimulateConv(const std::vector<uint8_t>& x, uint8_t pad_code,
                          const ConvGeometry& g, const PairedFilters& f) {
  CheckFilters(f);
  if (static_cast<int64_t>(x.size()) !=
      g.batch * g.channels * g.height * g.width) {
    throw InternalError("Conv input size does not match its geometry");
  }
  const int64_t cg = g.channels / g.group, mg = g.out_channels / g.group;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t oh = g.OutHeight(), ow = g.OutWidth();
  PairSumStats s;
  s.filter_peak.assign(f.filters, 0);
  s.rows = g.batch * std::max<int64_t>(oh, 0) * std::max<int64_t>(ow, 0);
  s.pair_sums =
      s.rows * f.filters * static_cast<int64_t>(f.slots.size() / 2);
  const std::vector<RiskyPair> risky = RiskyPairs(f);
  s.risky_pairs = static_cast<int64_t>(risky.size());
  if (risky.empty() || s.rows == 0) return s;
  std::vector<uint8_t> row(f.length);
  for (int64_t grp = 0; grp < g.group; ++grp) {
    const auto begin = std::lower_bound(
        risky.begin(), risky.end(), grp * mg,
        [](const RiskyPair& p, int64_t v) { return p.filter < v; });
    const auto end = std::lower_bound(
        begin, risky.end(), (grp + 1) * mg,
        [](const RiskyPair& p, int64_t v) { return p.filter < v; });
    if (begin == end) continue;
    for (int64_t n = 0; n < g.batch; ++n) {
      const uint8_t* plane =
          x.data() + (n * g.channels + grp * cg) * g.height * g.width;
      for (int64_t y = 0; y < oh; ++y) {
        for (int64_t z = 0; z < ow; ++z) {
          for (int64_t c = 0; c < cg; ++c) {
            for (int64_t i = 0; i < g.kernel_h; ++i) {
              const int64_t iy = y * g.stride_h - g.pad_top + i * g.dilation_h;
              for (int64_t j = 0; j < g.kernel_w; ++j) {
                const int64_t ix =
                    z * g.stride_w - g.pad_left + j * g.dilation_w;
                const bool inside =
                    iy >= 0 && iy < g.height && ix >= 0 && ix < g.width;
                row[c * taps + i * g.kernel_w + j] =
                    inside ? plane[(c * g.height + iy) * g.width + ix]
                           : pad_code;
              }
            }
          }
          Visit(row.data(), &*begin, &*begin + (end - begin), f.unit, &s);
        }
      }
    }
  }
  return s;
}

PairSumStats SimulateGemm(const std::vector<uint8_t>& a, int64_t rows,
                          const PairedFilters& f) {
  CheckFilters(f);
  if (rows < 0 || static_cast<int64_t>(a.size()) != rows * f.length) {
    throw InternalError("Gemm input size does not match rows x K");
  }
  PairSumStats s;
  s.filter_peak.assign(f.filters, 0);
  s.rows = rows;
  s.pair_sums = rows * f.filters * static_cast<int64_t>(f.slots.size() / 2);
  const std::vector<RiskyPair> risky = RiskyPairs(f);
  s.risky_pairs = static_cast<int64_t>(risky.size());
  if (risky.empty()) return s;
  for (int64_t r = 0; r < rows; ++r) {
    Visit(a.data() + r * f.length, risky.data(), risky.data() + risky.size(),
          f.unit, &s);
  }
  return s;
}

std::vector<int32_t> PairSumBounds(const PairedFilters& f, int32_t max_code) {
  CheckFilters(f);
  std::vector<int32_t> bounds(f.filters, 0);
  for (int64_t o = 0; o < f.filters; ++o) {
    const int8_t* w = f.codes.data() + o * f.length;
    for (size_t k = 0; k + 1 < f.slots.size(); k += 2) {
      const int32_t w1 = f.slots[k] < 0 ? 0 : w[f.slots[k]];
      const int32_t w2 = f.slots[k + 1] < 0 ? 0 : w[f.slots[k + 1]];
      // Opposite signs: the larger product alone bounds the sum.
      const int32_t v = (w1 >= 0) == (w2 >= 0)
                            ? std::abs(w1) + std::abs(w2)
                            : std::max(std::abs(w1), std::abs(w2));
      bounds[o] = std::max(bounds[o], v * max_code);
    }
  }
  return bounds;
}

int32_t FittingQmax(int32_t peak, double headroom) {
  const double grown = static_cast<double>(peak) * (1.0 + std::max(headroom, 0.0));
  if (grown <= kPairSumMax) return 127;
  const double q = std::floor(127.0 * (kPairSumMax - 2 * 255) / grown);
  return static_cast<int32_t>(std::clamp(q, 1.0, 127.0));
}

void Accumulate(const PairSumStats& s, PairSumStats* total) {
  total->pair_sums += s.pair_sums;
  total->risky_pairs = std::max(total->risky_pairs, s.risky_pairs);
  total->saturated += s.saturated;
  total->peak = std::max(total->peak, s.peak);
  total->rows += s.rows;
  total->error_energy += s.error_energy;
  total->max_error = std::max(total->max_error, s.max_error);
  if (total->filter_peak.size() < s.filter_peak.size()) {
    total->filter_peak.resize(s.filter_peak.size(), 0);
  }
  for (size_t i = 0; i < s.filter_peak.size(); ++i) {
    total->filter_peak[i] = std::max(total->filter_peak[i], s.filter_peak[i]);
  }
}

}  // namespace onnxquant
