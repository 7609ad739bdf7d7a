// AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
// Post-Training Quantization"): the learned rounding of one layer's weight.
//
// A layer's weight is seen as one or more groups (a grouped Conv: one per
// group) of a matrix W [rows x cols]: rows are output channels, cols the
// reduction (input channel x kernel position). Each row's output is
// y = W[r] . x for the layer's input columns x (im2col of the input for a
// Conv, adaround_gram.h). With the codes
//   q = clip(floor(W / s) + h(V), -qmax, qmax),
//   h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),
// the objective is
//   sum over rows r of E_x[((W~[r] - W[r]) . x)^2]
//     + lambda * sum over free elements of (1 - |2 h(V) - 1|^beta),
// W~ = s * q: the squared error of the pre-activation output, summed over
// output channels and averaged over the cached input columns (the quantity
// AIMET reports as the reconstruction loss). Since the first term only reads
// the inputs through G = E[x x^T] (the group's Gram matrix, cols x cols),
// the engine optimizes on G: the gradient is exact over every cached input
// column (full batch, no sampling), and one step costs rows x cols^2
// whatever the number of samples.
//
// Each row is an independent problem (its loss and regularizer only read
// its own V), so rows are optimized in fixed blocks of kAdaRoundRowBlock
// rows spread over threads: the result does not depend on the thread count.
// Nothing is random: V starts where h(V) equals the fractional part of W / s
// and Adam is deterministic.
#ifndef ONNXQUANT_ADAROUND_H_
#define ONNXQUANT_ADAROUND_H_

#include <cstdint>
#include <functional>
#include <vector>

namespace onnxquant {

inline constexpr float kAdaRoundZeta = 1.1f;
inline constexpr float kAdaRoundGamma = -0.1f;
inline constexpr int64_t kAdaRoundRowBlock = 32;

struct AdaRoundSettings {
  int iterations = 1000;        // Adam steps per row (>= 1)
  float reg_weight = 0.01f;     // lambda (>= 0)
  float beta_start = 20.f;      // beta after the warm-up ...
  float beta_end = 2.f;         // ... annealed (cosine) down to this
  float warmup = 0.2f;          // share of the steps without regularizer
  float learning_rate = 3e-2f;  // Adam's step size (> 0)
  int threads = 2;              // worker threads (>= 1)
};

// One layer's rounding problem.
struct RoundingProblem {
  int64_t groups = 1;
  int64_t rows = 0;  // rows per group; W has groups * rows rows
  int64_t cols = 0;
  std::vector<float> weight;  // [groups * rows, cols] row-major
  std::vector<float> scale;   // one per weight element, > 0
  std::vector<int32_t> qmax;  // one per row (groups * rows), >= 1
  // One per element: nonzero keeps the element at its nearest code (the
  // elements that fix the scale quantize() recomputes from the weights).
  std::vector<uint8_t> frozen;
  // groups Gram matrices E[x x^T], each [cols, cols] row-major; with
  // `cross`, E[xq xq^T] of the inputs xq the quantized layers above give.
  std::vector<float> gram;
  // Asymmetric reconstruction (empty: none): the loss is then
  //   sum over rows r of E[(W[r] . x - W~[r] . xq)^2]
  // with x the FP32 inputs: `cross` holds groups E[x xq^T] ([cols, cols]),
  // `row_offset` per row W[r] E[x x^T] W[r]^T (the loss's constant).
  std::vector<float> cross;
  std::vector<double> row_offset;
};

struct RoundingResult {
  std::vector<int32_t> codes;  // [groups * rows, cols]
  double loss_nearest = 0;     // reconstruction loss of nearest rounding
  double loss_final = 0;       // ... of the codes returned
  double share_up = 0;         // share of elements with code > floor(W / s)
  double share_changed = 0;    // share with code != nearest code
};

// Called from the calling thread with (row-steps done, row-steps in all);
// returns false to stop (the optimization then throws Error(kInvalidArgument)
// "cancelled").
using AdaRoundProgress = std::function<bool(int64_t, int64_t)>;

// Throws InvalidArgument when the problem's arrays do not have the sizes
// above, a scale is not finite and positive, or the settings are out of
// their domain.
void CheckRoundingProblem(const RoundingProblem& p, const AdaRoundSettings& s);

// The beta of step `t` (0-based) of `s.iterations`; 0 during the warm-up.
float AdaRoundBeta(const AdaRoundSettings& s, int t);

// The nearest codes: clip(round_half_even(W / s), -qmax, qmax).
std::vector<int32_t> NearestCodes(const RoundingProblem& p);

// The reconstruction loss of `codes` on the problem's Gram matrices.
double ReconstructionLoss(const RoundingProblem& p,
                          const std::vector<int32_t>& codes);

// The initial V (h(V) = fractional part of W / s; frozen elements: 0).
std::vector<float> InitialRoundingVariables(const RoundingProblem& p);

// The objective above at V (soft codes, regularizer with `beta`; beta 0: no
// regularizer) and, when `grad` is not null, its gradient with respect to V
// (frozen elements: 0). Exposed for tests.
double AdaRoundObjective(const RoundingProblem& p, const std::vector<float>& v,
                         float beta, float reg_weight,
                         std::vector<float>* grad);

// Optimizes the rounding (Adam on V, `s.iterations` steps, beta 0 for the
// first warmup share then annealed from beta_start to beta_end) and returns
// the codes clip(floor(W / s) + [h(V) >= 0.5], -qmax, qmax) with the
// statistics. Throws as CheckRoundingProblem, and InvalidArgument
// "cancelled" when `progress` returns false.
RoundingResult OptimizeRounding(const RoundingProblem& p,
                                const AdaRoundSettings& s,
                                const AdaRoundProgress& progress = nullptr);

}  // namespace onnxquant

#endif  // ONNXQUANT_ADAROUND_H_
