// The Gram matrices E[x x^T] of a layer's input columns, for AdaRound
// (adaround.h): for a Conv, x runs over the im2col columns of each group
// (one per sample and output position); for a Gemm or MatMul, over the rows
// of the input flattened to [M, K].
#ifndef ONNXQUANT_ADAROUND_GRAM_H_
#define ONNXQUANT_ADAROUND_GRAM_H_

#include <cstdint>
#include <string>
#include <vector>

namespace onnxquant {

// One cached input batch: a float32 row-major array the caller owns.
struct InputView {
  const float* data = nullptr;
  std::vector<int64_t> dims;
};

// A 1-D or 2-D convolution (1-D: height 1), or with `transposed` a
// ConvTranspose (output_pad: its output_padding). Pads: begin and end per
// axis.
struct ConvGeometry {
  int64_t channels = 0;  // input channels
  int64_t groups = 1;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  bool one_d = false;  // inputs are [N, C, L]
  bool transposed = false;
  int64_t output_pad_h = 0, output_pad_w = 0;
};

struct GramSums {
  int64_t groups = 1;
  int64_t cols = 0;                 // K, per group
  std::vector<double> sums;         // groups x [K, K] row-major, sum x x^T
  int64_t columns = 0;              // columns summed (per group)
};

// The im2col matrix of group `group` of sample `n` of `input` ([N, C, H, W],
// or [N, C, L] when one_d), [K, P] row-major with K = C / groups * kh * kw
// and P the output positions, zero where the kernel reads padding. For a
// ConvTranspose, column p holds the input values each tap (c, i, j) adds
// into output position p (zero where none), so that output channel o of
// the group is the row (W[c, o, i, j] over c, i, j) times the matrix.
// Throws InvalidArgument for an input whose shape does not fit `g`.
std::vector<float> Im2Col(const ConvGeometry& g, const InputView& input,
                          int64_t n, int64_t group);

// Sums of x x^T over every im2col column of every sample of `inputs`, per
// group, on `threads` threads (the result does not depend on their number);
// with `right`, sums of x y^T, y the same column of `right` (inputs of the
// same shapes). Throws InvalidArgument naming `node` for an input that does
// not fit `g`, or a `right` whose shapes differ from `inputs`'.
GramSums ConvGram(const ConvGeometry& g, const std::vector<InputView>& inputs,
                  int threads, const std::string& node,
                  const std::vector<InputView>* right = nullptr);

// Sums of x x^T over the rows x of each input flattened to [M, k] (its last
// axis is k), or, with `transposed`, over the columns of each rank-2 input
// [k, M] (Gemm with transA). Throws InvalidArgument naming `node` for an
// input whose last (first, transposed) axis is not k. `right`: as ConvGram.
GramSums DenseGram(int64_t k, bool transposed,
                   const std::vector<InputView>& inputs, int threads,
                   const std::string& node,
                   const std::vector<InputView>* right = nullptr);

}  // namespace onnxquant

#endif  // ONNXQUANT_ADAROUND_GRAM_H_
