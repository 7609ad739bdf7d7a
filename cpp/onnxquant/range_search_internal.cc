#include "onnxquant/range_search_internal.h"

#include <algorithm>
#include <cmath>

#include "onnxquant/arithmetic.h"

namespace onnxquant {
namespace range_search_internal {
namespace {

bool ByPosition(const Piece& a, const Piece& b) {
  return a.lo < b.lo || (a.lo == b.lo && a.hi < b.hi);
}

// Inserts `atom` where it keeps `pieces` sorted.
void InsertSorted(const Piece& atom, std::vector<Piece>* pieces) {
  pieces->insert(
      std::upper_bound(pieces->begin(), pieces->end(), atom, ByPosition),
      atom);
}

// Spreads each piece of `pieces` (continuous ones only) over the intervals
// between consecutive `breaks`, in proportion to length, into `mass`.
// REQUIRES: `pieces` sorted; every continuous piece's ends are in `breaks`
// (sorted, unique).
void Spread(const std::vector<Piece>& pieces, const std::vector<double>& breaks,
            std::vector<double>* mass) {
  size_t t = 0;
  for (const Piece& p : pieces) {
    if (!(p.hi > p.lo) || p.count == 0) continue;
    while (breaks[t] < p.lo) ++t;
    for (; t + 1 < breaks.size() && breaks[t + 1] <= p.hi; ++t) {
      (*mass)[t] += p.count * (breaks[t + 1] - breaks[t]) / (p.hi - p.lo);
    }
  }
}

}  // namespace

Distribution SignedDistribution(const Histogram& h) {
  Distribution d;
  const double w = h.bin_width();
  const double lo_value = h.min(), hi_value = h.max();
  const std::vector<int64_t>& counts = h.counts();
  d.pieces.reserve(counts.size() + 1);
  for (size_t j = 0; j < counts.size(); ++j) {
    const double k =
        static_cast<double>(h.first_bin() + static_cast<int64_t>(j));
    const double lo = std::max(k * w, lo_value);
    const double hi = std::min((k + 1) * w, hi_value);
    double c = static_cast<double>(counts[j]);
    if (k == 0) c -= static_cast<double>(h.zeros());
    if (lo > hi || (lo == hi && c <= 0)) continue;  // outside [min, max]
    d.pieces.push_back({lo, hi, c});
  }
  d.zeros = static_cast<double>(h.zeros());
  d.total = static_cast<double>(h.count());
  if (d.zeros > 0) InsertSorted({0.0, 0.0, d.zeros}, &d.pieces);
  return d;
}

Distribution AbsDistribution(const Histogram& h) {
  const Distribution s = SignedDistribution(h);
  std::vector<Piece> pos, neg, atoms;
  for (const Piece& p : s.pieces) {
    if (p.lo == 0 && p.hi == 0) continue;  // the atom at 0, added back below
    Piece folded = p.hi <= 0 ? Piece{-p.hi, -p.lo, p.count} : p;
    if (folded.lo == folded.hi) {
      atoms.push_back(folded);
    } else {
      (p.hi <= 0 ? neg : pos).push_back(folded);
    }
  }
  std::reverse(neg.begin(), neg.end());  // folding reversed their order
  Distribution d;
  d.zeros = s.zeros;
  d.total = s.total;
  if (neg.empty() || pos.empty()) {
    d.pieces = neg.empty() ? pos : neg;
  } else {
    // Two piecewise-uniform densities on [0, max|x|]: their sum is uniform
    // between consecutive ends of either.
    // Each side's pieces are contiguous and sorted, hence so are its ends.
    auto ends = [](const std::vector<Piece>& side) {
      std::vector<double> e;
      e.reserve(2 * side.size());
      for (const Piece& p : side) e.insert(e.end(), {p.lo, p.hi});
      return e;
    };
    const std::vector<double> pos_ends = ends(pos), neg_ends = ends(neg);
    std::vector<double> breaks(pos_ends.size() + neg_ends.size());
    std::merge(pos_ends.begin(), pos_ends.end(), neg_ends.begin(),
               neg_ends.end(), breaks.begin());
    breaks.erase(std::unique(breaks.begin(), breaks.end()), breaks.end());
    std::vector<double> mass(breaks.size(), 0.0);
    Spread(pos, breaks, &mass);
    Spread(neg, breaks, &mass);
    for (size_t t = 0; t + 1 < breaks.size(); ++t) {
      d.pieces.push_back({breaks[t], breaks[t + 1], mass[t]});
    }
  }
  if (d.zeros > 0) atoms.push_back({0.0, 0.0, d.zeros});
  for (const Piece& atom : atoms) InsertSorted(atom, &d.pieces);
  return d;
}

double Quantile(const Distribution& d, double rank) {
  double cum = 0, last = 0;
  bool seen = false;
  for (const Piece& p : d.pieces) {
    if (p.count <= 0) continue;
    if (!seen && rank <= 0) return p.lo;
    seen = true;
    if (cum + p.count >= rank) {
      if (p.hi == p.lo) return p.lo;
      const double t = std::clamp((rank - cum) / p.count, 0.0, 1.0);
      return std::min(p.lo + t * (p.hi - p.lo), p.hi);
    }
    cum += p.count;
    last = p.hi;
  }
  return last;
}

std::vector<double> EdgesIn(const Distribution& d, double lo, double hi) {
  std::vector<double> edges;
  for (const Piece& p : d.pieces) {
    for (double e : {p.lo, p.hi}) {
      if (e >= lo && e <= hi) edges.push_back(e);
    }
  }
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  return edges;
}

std::vector<double> Rebin(const Distribution& d, double lo, double hi,
                          int num_bins, bool skip_zeros) {
  std::vector<double> bins(static_cast<size_t>(num_bins), 0.0);
  const double width = (hi - lo) / num_bins;
  auto edge = [&](int j) { return j >= num_bins ? hi : lo + j * width; };
  auto bin_of = [&](double x) {
    const double t = std::floor((x - lo) / width);
    return static_cast<int>(std::clamp(t, 0.0, num_bins - 1.0));
  };
  for (const Piece& p : d.pieces) {
    if (p.count <= 0) continue;
    if (p.lo == p.hi) {
      if (!(skip_zeros && p.lo == 0)) bins[bin_of(p.lo)] += p.count;
      continue;
    }
    const double density = p.count / (p.hi - p.lo);
    // Mass outside [lo, hi] goes to the end bins.
    if (p.lo < lo) bins[0] += density * (std::min(p.hi, lo) - p.lo);
    if (p.hi > hi) bins[num_bins - 1] += density * (p.hi - std::max(p.lo, hi));
    const double a = std::max(p.lo, lo), b = std::min(p.hi, hi);
    if (!(b > a)) continue;
    for (int j = bin_of(a), last = bin_of(b); j <= last; ++j) {
      const double overlap = std::min(b, edge(j + 1)) - std::max(a, edge(j));
      if (overlap > 0) bins[j] += density * overlap;
    }
  }
  return bins;
}

NoiseModel::NoiseModel(const Distribution& d)
    : pieces_(d.pieces),
      prefix_(d.pieces.size() + 1),
      suffix_(d.pieces.size() + 1),
      continuous_(d.total - d.zeros) {
  auto add = [](Sums s, const Piece& p) {
    s.n += p.count;
    s.s1 += p.count * (p.lo + p.hi) / 2;
    s.s2 += p.count * (p.lo * p.lo + p.lo * p.hi + p.hi * p.hi) / 3;
    return s;
  };
  for (size_t i = 0; i < pieces_.size(); ++i) {
    prefix_[i + 1] = add(prefix_[i], pieces_[i]);
  }
  for (size_t i = pieces_.size(); i > 0; --i) {
    suffix_[i - 1] = add(suffix_[i], pieces_[i - 1]);
  }
}

NoiseModel::Sums NoiseModel::Beyond(double x, bool below) const {
  // Pieces are sorted and do not overlap, so those wholly below x form a
  // prefix and those wholly above a suffix; at most one piece straddles x.
  // An atom at x is in neither.
  size_t straddle;
  Sums s;
  if (below) {
    straddle = static_cast<size_t>(
        std::partition_point(pieces_.begin(), pieces_.end(),
                             [x](const Piece& p) {
                               return p.hi < x || (p.hi == x && p.lo < x);
                             }) -
        pieces_.begin());
    s = prefix_[straddle];
  } else {
    const size_t first_above = static_cast<size_t>(
        std::partition_point(pieces_.begin(), pieces_.end(),
                             [x](const Piece& p) {
                               return p.lo < x || (p.lo == x && p.hi == x);
                             }) -
        pieces_.begin());
    s = suffix_[first_above];
    straddle = first_above == 0 ? pieces_.size() : first_above - 1;
  }
  if (straddle < pieces_.size()) {
    const Piece& p = pieces_[straddle];
    if (p.lo < x && x < p.hi) {
      const double a = below ? p.lo : x, b = below ? x : p.hi;
      const double n = p.count * (b - a) / (p.hi - p.lo);
      s.n += n;
      s.s1 += n * (a + b) / 2;
      s.s2 += n * (a * a + a * b + b * b) / 3;
    }
  }
  return s;
}

NoiseModel::Noise NoiseModel::Evaluate(double lo, double hi) const {
  const ActivationParams q = ActivationQuantParams(
      static_cast<float>(lo), static_cast<float>(hi), ActivationType::kUint8);
  const double step = q.scale;
  const double grid_lo = -static_cast<double>(q.zero_point) * step;
  const double grid_hi = static_cast<double>(255 - q.zero_point) * step;
  const Sums under = Beyond(grid_lo, /*below=*/true);
  const Sums over = Beyond(grid_hi, /*below=*/false);
  Noise noise;
  noise.clipping =
      std::max(0.0, under.n * grid_lo * grid_lo - 2 * grid_lo * under.s1 +
                        under.s2) +
      std::max(0.0, over.s2 - 2 * grid_hi * over.s1 +
                        over.n * grid_hi * grid_hi);
  noise.rounding =
      std::max(0.0, continuous_ - under.n - over.n) * step * step / 12;
  return noise;
}

Range MakeRange(double lo, double hi) {
  Range r;
  r.min = std::min(static_cast<float>(lo), 0.f);
  r.max = std::max(static_cast<float>(hi), 0.f);
  return r;
}

}  // namespace range_search_internal
}  // namespace onnxquant
