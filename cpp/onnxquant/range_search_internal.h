// Internal to the range searches (range_search_*.cc): the distribution a
// Histogram describes, in the forms the searches need, and the candidate
// search shared by the two-ended (asymmetric) searches. Not part of the
// engine's API; docs/calibration.md states the definitions.
#ifndef ONNXQUANT_RANGE_SEARCH_INTERNAL_H_
#define ONNXQUANT_RANGE_SEARCH_INTERNAL_H_

#include <limits>
#include <utility>
#include <vector>

#include "onnxquant/histogram.h"
#include "onnxquant/range_search.h"

namespace onnxquant {
namespace range_search_internal {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// `count` values spread uniformly over [lo, hi]; lo == hi is an atom (all
// `count` values equal lo).
struct Piece {
  double lo = 0;
  double hi = 0;
  double count = 0;
};

// A histogram's distribution: values uniform within each bin, except that
// the values exactly 0 (Histogram::zeros()) form an atom at 0, and the end
// bins are cut to the observed [min, max]. Pieces are sorted by (lo, hi)
// and do not overlap.
struct Distribution {
  std::vector<Piece> pieces;
  double zeros = 0;  // the atom at 0, also present as a piece [0, 0]
  double total = 0;  // all counts, the atom included
};

// The signed distribution of the values. REQUIRES: !h.empty().
Distribution SignedDistribution(const Histogram& h);

// The distribution of |x|: the signed one folded at 0 (the canonical grid is
// anchored at 0, so folded bins coincide; the cut end bins split where the
// two sides' supports differ). REQUIRES: !h.empty().
Distribution AbsDistribution(const Histogram& h);

// The value at which the distribution's cumulative count first reaches
// `rank`, interpolating linearly within a piece (atoms jump). `rank` <= 0
// gives the lowest value with a count; `rank` >= total the highest.
double Quantile(const Distribution& d, double rank);

// Every piece end in [lo, hi], sorted, without duplicates.
std::vector<double> EdgesIn(const Distribution& d, double lo, double hi);

// Counts of `num_bins` equal bins over [lo, hi] (the last bin closed), each
// piece's count shared in proportion to overlap, atoms to the bin holding
// them; mass outside [lo, hi] goes to the end bins. The atom at 0 is left
// out when `skip_zeros`. REQUIRES: lo < hi, num_bins >= 1.
std::vector<double> Rebin(const Distribution& d, double lo, double hi,
                          int num_bins, bool skip_zeros);

// Expected squared quantization error of a distribution for a candidate
// range, split into its two parts. Each evaluation takes O(log pieces).
class NoiseModel {
 public:
  explicit NoiseModel(const Distribution& d);

  struct Noise {
    // s^2 / 12 per value inside the grid, the atom at 0 excepted.
    double rounding = 0;
    double clipping = 0;  // sum of (x - nearest grid end)^2 beyond the grid
  };
  // The noise of quantizing with the grid ActivationQuantParams gives the
  // range [lo, hi]: step s, representable values -n s .. (255 - n) s.
  // REQUIRES: lo <= 0 <= hi, lo < hi, both floats' values.
  Noise Evaluate(double lo, double hi) const;

 private:
  struct Sums {
    double n = 0, s1 = 0, s2 = 0;  // count, sum of x, sum of x^2
  };
  // Sums over values < x (`below`) or > x (!`below`).
  Sums Beyond(double x, bool below) const;

  std::vector<Piece> pieces_;
  std::vector<Sums> prefix_;  // prefix_[i]: pieces [0, i)
  std::vector<Sums> suffix_;  // suffix_[i]: pieces [i, n)
  double continuous_ = 0;     // total minus the atom at 0
};

// Minimises over the candidates of a two-ended range, given as indices into
// the increasing lists of low ends (0 the lowest) and high ends (num_hi - 1
// the highest). `f(i, j)` is the objective (+inf for an invalid pair). The
// defined candidate search: sweep the high end with the low end at its
// lowest; sweep the low end with the high end at its highest; start from
// both sweeps' choices (or, when that pair is invalid, from the better of
// the two sweeps' pairs); then sweep the low and the high end alternately
// until a sweep other than the first of these leaves its end in place. A
// sweep keeps the current end unless another is strictly better, and
// otherwise takes the first (lowest) of equal minima.
template <typename Objective>
std::pair<int, int> SweepsThenCoordinateDescent(int num_lo, int num_hi,
                                                const Objective& f) {
  auto sweep_lo = [&](int current, int j) {
    int best = current;
    double best_f = current >= 0 ? f(current, j) : kInfinity;
    for (int i = 0; i < num_lo; ++i) {
      const double v = f(i, j);
      if (v < best_f) {
        best = i;
        best_f = v;
      }
    }
    return best < 0 ? 0 : best;
  };
  auto sweep_hi = [&](int i, int current) {
    int best = current;
    double best_f = current >= 0 ? f(i, current) : kInfinity;
    for (int j = 0; j < num_hi; ++j) {
      const double v = f(i, j);
      if (v < best_f) {
        best = j;
        best_f = v;
      }
    }
    return best < 0 ? num_hi - 1 : best;
  };
  const int j_a = sweep_hi(0, -1);
  const int i_b = sweep_lo(-1, num_hi - 1);
  int i = i_b, j = j_a;
  if (!(f(i, j) < kInfinity)) {
    if (f(0, j_a) <= f(i_b, num_hi - 1)) {
      i = 0;
    } else {
      j = num_hi - 1;
    }
  }
  // Alternate sweeps, the low end first. A sweep that leaves its end in
  // place (the first excepted) ends the search: the other end was last swept
  // with this end where it is, so each end is optimal given the other. Each
  // sweep that moves strictly lowers the objective on a finite grid, so the
  // loop ends; the bound only guards against a broken objective.
  bool low_turn = true;
  for (int sweep = 0; sweep < 100000; ++sweep, low_turn = !low_turn) {
    const int before = low_turn ? i : j;
    if (low_turn) {
      i = sweep_lo(i, j);
    } else {
      j = sweep_hi(i, j);
    }
    if (sweep > 0 && (low_turn ? i : j) == before) break;
  }
  return {i, j};
}

// [lo, hi] widened to contain 0, as floats.
Range MakeRange(double lo, double hi);

// The noise-minimising search behind MseRange (clipping_weight 1) and
// SqnrRange (clipping_weight 3).
Range NoiseSearch(const Histogram& h, Symmetry s, double clipping_weight);

}  // namespace range_search_internal
}  // namespace onnxquant

#endif  // ONNXQUANT_RANGE_SEARCH_INTERNAL_H_
