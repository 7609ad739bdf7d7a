// High-bias absorption (Nagel et al., "Data-Free Quantization Through Weight
// Equalization and Bias Correction", 2019, section 4.1).
//
// For a chain Conv1 -> act -> Conv2 where `act` is Relu, LeakyRelu, PRelu or
// nothing, and a per-channel amount a_c >= 0 known to be at most Conv1's
// output (the pre-activation) on channel c: act(h) = act(h - a) + a wherever
// h >= a (these activations are the identity on positive values), so
//   Conv1's bias b1_c  becomes b1_c - a_c, and
//   Conv2's bias b2_o  becomes b2_o + sum over the taps of Conv2's input
//                       channel c of W2[o, c, taps] * a_c,
// which leaves the chain's output unchanged for every input whose
// pre-activation stays at or above a on each channel. The activation's range
// then shrinks by a_c, which is what the per-tensor activation scale gains.
// The caller chooses a (Nagel et al.: max(0, beta - 3 gamma) of the batch
// norm folded into Conv1; onnxquant.recovery measures mean - 3 std of the
// pre-activation on samples, since folding drops beta and gamma).
//
// A Conv2 with zero padding sees zeros at the border, not act(h) - a's
// shifted zeros: its output at the border differs by the taps that fall in
// the padding times a (as in Nagel et al., where it is also ignored).
//
// Matching is that of cross_layer_equalization.h (own float32 weight and
// bias initializers; single readers; no graph outputs), and Conv2 must have
// a bias of its own. Only the main graph.
#ifndef ONNXQUANT_HIGH_BIAS_ABSORPTION_H_
#define ONNXQUANT_HIGH_BIAS_ABSORPTION_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "onnxquant/model_io.h"

namespace onnxquant {

// A chain this pass can absorb into: Conv1's name and its output (the
// pre-activation the caller measures), the activation ("" for none) and
// Conv2's name.
struct AbsorptionCandidate {
  std::string first, output, activation, second;
};

struct AbsorbedPair {
  std::string first, second;
  std::vector<float> amounts;  // a_c, as applied
};

struct AbsorptionReport {
  std::vector<AbsorbedPair> pairs;
  // Conv1 names given amounts that matched no chain, with the reason.
  std::vector<std::pair<std::string, std::string>> skipped;
};

// The chains of the main graph of `model` that AbsorbHighBias can change, in
// graph order. Validates the model (Error(kModel) naming a malformed part).
std::vector<AbsorptionCandidate> FindHighBiasCandidates(
    const pb::ModelProto& model);

// Absorbs amounts[first][c] from each chain starting at Conv `first` into the
// next Conv's bias, in place. A name that is not a candidate is reported in
// `skipped`. Throws Error(kInvalidArgument) naming the Conv for an amount
// that is negative or not finite, or a count that differs from its output
// channels.
AbsorptionReport AbsorbHighBias(
    pb::ModelProto& model,
    const std::map<std::string, std::vector<float>>& amounts);

}  // namespace onnxquant

#endif  // ONNXQUANT_HIGH_BIAS_ABSORPTION_H_
