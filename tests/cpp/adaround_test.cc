// AdaRound (adaround.h, adaround_gram.h) against references written here:
// a direct-loop convolution and a loop matrix product give the layer's
// outputs, so the reconstruction loss the engine optimizes on its Gram
// matrices is checked against the error of the outputs themselves; the
// analytic gradient against central finite differences.
#include "onnxquant/adaround.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "onnxquant/adaround_gram.h"
#include "onnxquant/error.h"

namespace onnxquant {
namespace {

// Smooth, correlated, non-negative inputs [n, c, h, w] (like the inputs of
// a Conv after a ReLU), so that rounding errors of neighbouring weights can
// cancel.
std::vector<float> SmoothInputs(int64_t n, int64_t c, int64_t h, int64_t w,
                                uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(n * c * h * w);
  for (int64_t s = 0; s < n; ++s) {
    const float common = normal(rng);
    for (int64_t ch = 0; ch < c; ++ch) {
      const float a = normal(rng), b = normal(rng);
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          const float v = common + a * std::sin(0.4f * i) + b * std::cos(0.3f * j) +
                          0.3f * normal(rng);
          x[((s * c + ch) * h + i) * w + j] = std::max(0.f, v + 0.5f);
        }
      }
    }
  }
  return x;
}

// Direct convolution: y[n, co, oy, ox] for weight w [co, c/groups, kh, kw].
std::vector<double> DirectConv(const ConvGeometry& g, const std::vector<float>& x,
                               int64_t n, int64_t h, int64_t w,
                               const std::vector<float>& wt, int64_t cout,
                               int64_t* positions) {
  const int64_t oh = (h + g.pad_top + g.pad_bottom - g.dilation_h * (g.kernel_h - 1) - 1) /
                         g.stride_h + 1;
  const int64_t ow = (w + g.pad_left + g.pad_right - g.dilation_w * (g.kernel_w - 1) - 1) /
                         g.stride_w + 1;
  *positions = oh * ow;
  const int64_t cg = g.channels / g.groups, og = cout / g.groups;
  std::vector<double> y(n * cout * oh * ow, 0.0);
  for (int64_t s = 0; s < n; ++s)
    for (int64_t co = 0; co < cout; ++co)
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          double acc = 0;
          const int64_t grp = co / og;
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t ky = 0; ky < g.kernel_h; ++ky)
              for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
                const int64_t iy = oy * g.stride_h - g.pad_top + ky * g.dilation_h;
                const int64_t ix = ox * g.stride_w - g.pad_left + kx * g.dilation_w;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                acc += static_cast<double>(
                           wt[((co * cg + ci) * g.kernel_h + ky) * g.kernel_w + kx]) *
                       x[((s * g.channels + grp * cg + ci) * h + iy) * w + ix];
              }
          y[((s * cout + co) * oh + oy) * ow + ox] = acc;
        }
  return y;
}

// Mean over output positions of the squared output error summed over output
// channels, computed with direct convolutions.
double ConvOutputError(const ConvGeometry& g, const std::vector<float>& x,
                       int64_t n, int64_t h, int64_t w, const std::vector<float>& a,
                       const std::vector<float>& b, int64_t cout) {
  int64_t pos = 0;
  const std::vector<double> ya = DirectConv(g, x, n, h, w, a, cout, &pos);
  const std::vector<double> yb = DirectConv(g, x, n, h, w, b, cout, &pos);
  double e = 0;
  for (size_t i = 0; i < ya.size(); ++i) e += (ya[i] - yb[i]) * (ya[i] - yb[i]);
  return e / (n * pos);
}

// A problem for weight `w` [groups * rows, cols], per-row scale
// max|w| / qmax, the row's largest element frozen.
RoundingProblem MakeProblem(const std::vector<float>& w, int64_t groups, int64_t rows,
                            int64_t cols, int32_t qmax, const GramSums& gram) {
  RoundingProblem p;
  p.groups = groups;
  p.rows = rows;
  p.cols = cols;
  p.weight = w;
  p.scale.resize(w.size());
  p.frozen.assign(w.size(), 0);
  p.qmax.assign(groups * rows, qmax);
  for (int64_t r = 0; r < groups * rows; ++r) {
    float m = 0;
    int64_t arg = 0;
    for (int64_t c = 0; c < cols; ++c) {
      if (std::fabs(w[r * cols + c]) > m) m = std::fabs(w[r * cols + c]), arg = c;
    }
    for (int64_t c = 0; c < cols; ++c) p.scale[r * cols + c] = m / qmax;
    p.frozen[r * cols + arg] = 1;
  }
  p.gram.resize(gram.sums.size());
  for (size_t i = 0; i < gram.sums.size(); ++i) p.gram[i] = gram.sums[i] / gram.columns;
  return p;
}

std::vector<float> Dequantized(const RoundingProblem& p, const std::vector<int32_t>& codes) {
  std::vector<float> out(codes.size());
  for (size_t i = 0; i < codes.size(); ++i) out[i] = codes[i] * p.scale[i];
  return out;
}

std::vector<float> RandomWeights(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 0.2f);
  std::vector<float> w(n);
  for (float& v : w) v = normal(rng);
  return w;
}

struct ConvCase {
  ConvGeometry g;
  int64_t cout;
};

ConvCase Grouped() {
  ConvGeometry g;
  g.channels = 4;
  g.groups = 2;
  g.kernel_h = g.kernel_w = 3;
  g.stride_h = 2;
  g.pad_top = g.pad_left = 1;
  g.pad_bottom = g.pad_right = 0;
  g.dilation_w = 2;
  return {g, 6};
}

TEST(AdaRoundGram, ConvLossMatchesDirectConvolution) {
  const ConvCase c = Grouped();
  const int64_t n = 3, h = 7, w = 8;
  const std::vector<float> x = SmoothInputs(n, c.g.channels, h, w, 1);
  const int64_t k = c.g.channels / c.g.groups * 9;
  const std::vector<float> wt = RandomWeights(c.cout * k, 2);
  const GramSums gram = ConvGram(c.g, {{x.data(), {n, c.g.channels, h, w}}}, 2, "conv");
  RoundingProblem p = MakeProblem(wt, c.g.groups, c.cout / c.g.groups, k, 7, gram);
  const std::vector<int32_t> codes = NearestCodes(p);
  const double direct =
      ConvOutputError(c.g, x, n, h, w, wt, Dequantized(p, codes), c.cout);
  EXPECT_NEAR(ReconstructionLoss(p, codes), direct, 1e-4 * direct);
}

// Direct transposed convolution, scattering each input value: y[n, o, oy,
// ox] for weight w [c, o/groups, kh, kw], output row oy = iy * stride - pad
// + ky * dilation (and likewise for columns).
std::vector<double> DirectConvTranspose(const ConvGeometry& g, const std::vector<float>& x,
                                        int64_t n, int64_t h, int64_t w,
                                        const std::vector<float>& wt, int64_t cout,
                                        int64_t* positions) {
  const int64_t oh = (h - 1) * g.stride_h - g.pad_top - g.pad_bottom +
                     g.dilation_h * (g.kernel_h - 1) + g.output_pad_h + 1;
  const int64_t ow = (w - 1) * g.stride_w - g.pad_left - g.pad_right +
                     g.dilation_w * (g.kernel_w - 1) + g.output_pad_w + 1;
  *positions = oh * ow;
  const int64_t cg = g.channels / g.groups, og = cout / g.groups;
  std::vector<double> y(n * cout * oh * ow, 0.0);
  for (int64_t s = 0; s < n; ++s)
    for (int64_t ci = 0; ci < g.channels; ++ci)
      for (int64_t iy = 0; iy < h; ++iy)
        for (int64_t ix = 0; ix < w; ++ix)
          for (int64_t o = 0; o < og; ++o)
            for (int64_t ky = 0; ky < g.kernel_h; ++ky)
              for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
                const int64_t oy = iy * g.stride_h - g.pad_top + ky * g.dilation_h;
                const int64_t ox = ix * g.stride_w - g.pad_left + kx * g.dilation_w;
                if (oy < 0 || oy >= oh || ox < 0 || ox >= ow) continue;
                const int64_t co = (ci / cg) * og + o;
                y[((s * cout + co) * oh + oy) * ow + ox] +=
                    static_cast<double>(
                        wt[((ci * og + o) * g.kernel_h + ky) * g.kernel_w + kx]) *
                    x[((s * g.channels + ci) * h + iy) * w + ix];
              }
  return y;
}

TEST(AdaRoundGram, ConvTransposeLossMatchesDirectConvolution) {
  ConvGeometry g;
  g.transposed = true;
  g.channels = 4;
  g.groups = 2;
  g.kernel_h = 3;
  g.kernel_w = 2;
  g.stride_h = 2;
  g.stride_w = 3;
  g.dilation_h = 2;
  g.pad_top = 1;
  g.pad_bottom = 2;
  g.pad_right = 1;
  g.output_pad_h = 1;
  g.output_pad_w = 2;
  const int64_t n = 2, h = 5, w = 4, og = 3, cout = og * g.groups;
  const int64_t cg = g.channels / g.groups, taps = g.kernel_h * g.kernel_w;
  const std::vector<float> x = SmoothInputs(n, g.channels, h, w, 5);
  const std::vector<float> wt = RandomWeights(g.channels * og * taps, 6);  // ONNX layout
  // Row r = output channel (group r / og), column (c, ky, kx) of the group's
  // input channel c.
  auto onnx_of = [&](int64_t r, int64_t col) {
    const int64_t ci = (r / og) * cg + col / taps;
    return (ci * og + r % og) * taps + col % taps;
  };
  const int64_t k = cg * taps;
  std::vector<float> rows(cout * k);
  for (int64_t r = 0; r < cout; ++r)
    for (int64_t col = 0; col < k; ++col) rows[r * k + col] = wt[onnx_of(r, col)];
  const GramSums gram = ConvGram(g, {{x.data(), {n, g.channels, h, w}}}, 2, "deconv");
  RoundingProblem p = MakeProblem(rows, g.groups, og, k, 7, gram);
  const std::vector<int32_t> codes = NearestCodes(p);
  const std::vector<float> deq = Dequantized(p, codes);
  std::vector<float> deq_onnx(wt.size());
  for (int64_t r = 0; r < cout; ++r)
    for (int64_t col = 0; col < k; ++col) deq_onnx[onnx_of(r, col)] = deq[r * k + col];
  int64_t pos = 0;
  const std::vector<double> ya = DirectConvTranspose(g, x, n, h, w, wt, cout, &pos);
  const std::vector<double> yb = DirectConvTranspose(g, x, n, h, w, deq_onnx, cout, &pos);
  double direct = 0;
  for (size_t i = 0; i < ya.size(); ++i) direct += (ya[i] - yb[i]) * (ya[i] - yb[i]);
  direct /= n * pos;
  EXPECT_EQ(gram.columns, n * pos);
  EXPECT_GT(direct, 0);
  EXPECT_NEAR(ReconstructionLoss(p, codes), direct, 1e-4 * direct);
}

TEST(AdaRoundGram, DenseLossMatchesMatrixProduct) {
  const int64_t m = 50, k = 12, nout = 5;
  const std::vector<float> x = SmoothInputs(1, 1, m, k, 3);
  const std::vector<float> wt = RandomWeights(nout * k, 4);  // [nout, k]
  const GramSums gram = DenseGram(k, false, {{x.data(), {m, k}}}, 2, "gemm");
  RoundingProblem p = MakeProblem(wt, 1, nout, k, 7, gram);
  const std::vector<int32_t> codes = NearestCodes(p);
  double direct = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = 0; o < nout; ++o) {
      double d = 0;
      for (int64_t j = 0; j < k; ++j) d += (codes[o * k + j] * p.scale[o * k + j] - wt[o * k + j]) * x[i * k + j];
      direct += d * d;
    }
  direct /= m;
  EXPECT_NEAR(ReconstructionLoss(p, codes), direct, 1e-4 * direct);
  // The transposed layout ([k, m], Gemm with transA) gives the same sums.
  std::vector<float> xt(k * m);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) xt[j * m + i] = x[i * k + j];
  const GramSums t = DenseGram(k, true, {{xt.data(), {k, m}}}, 1, "gemm");
  for (size_t i = 0; i < t.sums.size(); ++i) EXPECT_NEAR(t.sums[i], gram.sums[i], 1e-3);
}

// The asymmetric problem: target W x on `x`, candidate W~ xq on `xq`.
RoundingProblem Asymmetric(const ConvCase& c, const std::vector<float>& x,
                           const std::vector<float>& xq, int64_t n, int64_t h,
                           int64_t w, const std::vector<float>& wt) {
  const int64_t k = c.g.channels / c.g.groups * c.g.kernel_h * c.g.kernel_w;
  const std::vector<int64_t> dims{n, c.g.channels, h, w};
  const std::vector<InputView> fp{{x.data(), dims}}, q{{xq.data(), dims}};
  const GramSums gq = ConvGram(c.g, q, 2, "conv");
  const GramSums cross = ConvGram(c.g, fp, 2, "conv", &q);
  const GramSums g = ConvGram(c.g, fp, 1, "conv");
  RoundingProblem p = MakeProblem(wt, c.g.groups, c.cout / c.g.groups, k, 7, gq);
  for (double v : cross.sums) p.cross.push_back(v / cross.columns);
  for (int64_t r = 0; r < c.cout; ++r) {
    const double* gg = g.sums.data() + (r / p.rows) * k * k;
    double acc = 0;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) acc += wt[r * k + i] * gg[i * k + j] * wt[r * k + j];
    p.row_offset.push_back(acc / g.columns);
  }
  return p;
}

TEST(AdaRoundGram, AsymmetricLossMatchesDirectConvolution) {
  const ConvCase c = Grouped();
  const int64_t n = 3, h = 7, w = 8;
  const std::vector<float> x = SmoothInputs(n, c.g.channels, h, w, 51);
  std::vector<float> xq = x;
  std::mt19937 rng(52);
  std::normal_distribution<float> noise(0.f, 0.1f);
  for (float& v : xq) v += noise(rng);
  const int64_t k = c.g.channels / c.g.groups * 9;
  const std::vector<float> wt = RandomWeights(c.cout * k, 53);
  RoundingProblem p = Asymmetric(c, x, xq, n, h, w, wt);
  const std::vector<int32_t> codes = NearestCodes(p);
  int64_t pos = 0;
  const std::vector<double> target = DirectConv(c.g, x, n, h, w, wt, c.cout, &pos);
  const std::vector<double> got =
      DirectConv(c.g, xq, n, h, w, Dequantized(p, codes), c.cout, &pos);
  double direct = 0;
  for (size_t i = 0; i < got.size(); ++i) direct += (got[i] - target[i]) * (got[i] - target[i]);
  direct /= n * pos;
  EXPECT_NEAR(ReconstructionLoss(p, codes), direct, 1e-3 * direct);
  // Its gradient against finite differences, and AdaRound lowers it.
  std::vector<float> v = InitialRoundingVariables(p), grad;
  AdaRoundObjective(p, v, 3.f, 0.01f, &grad);
  for (size_t i = 0; i < v.size(); i += 7) {
    if (p.frozen[i]) continue;
    std::vector<float> a = v, b = v;
    a[i] += 1e-2f;
    b[i] -= 1e-2f;
    const double fd = (AdaRoundObjective(p, a, 3.f, 0.01f, nullptr) -
                       AdaRoundObjective(p, b, 3.f, 0.01f, nullptr)) / 2e-2;
    EXPECT_NEAR(grad[i], fd, 3e-2 * std::fabs(fd) + 1e-3) << "element " << i;
  }
  AdaRoundSettings s;
  s.iterations = 300;
  const RoundingResult r = OptimizeRounding(p, s);
  EXPECT_LT(r.loss_final, r.loss_nearest);
}

TEST(AdaRound, GradientMatchesFiniteDifferences) {
  const int64_t m = 40, k = 10, nout = 3;
  const std::vector<float> x = SmoothInputs(1, 1, m, k, 5);
  const std::vector<float> wt = RandomWeights(nout * k, 6);
  const GramSums gram = DenseGram(k, false, {{x.data(), {m, k}}}, 1, "g");
  RoundingProblem p = MakeProblem(wt, 1, nout, k, 7, gram);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(-1.5f, 1.5f);
  std::vector<float> v(wt.size());
  for (float& e : v) e = uni(rng);
  for (float beta : {0.f, 4.f}) {
    std::vector<float> grad;
    AdaRoundObjective(p, v, beta, 0.05f, &grad);
    for (size_t i = 0; i < v.size(); ++i) {
      if (p.frozen[i]) {
        EXPECT_EQ(grad[i], 0.f);
        continue;
      }
      const float eps = 1e-2f;
      std::vector<float> a = v, b = v;
      a[i] += eps;
      b[i] -= eps;
      const double fd = (AdaRoundObjective(p, a, beta, 0.05f, nullptr) -
                         AdaRoundObjective(p, b, beta, 0.05f, nullptr)) /
                        (2 * eps);
      EXPECT_NEAR(grad[i], fd, 2e-2 * std::fabs(fd) + 1e-4) << "element " << i;
    }
  }
}

struct Fitted {
  RoundingProblem problem;
  RoundingResult result;
};

Fitted FitConv(const ConvCase& c, const std::vector<float>& x, int64_t n, int64_t h,
               int64_t w, const std::vector<float>& wt, int threads) {
  const int64_t k = c.g.channels / c.g.groups * c.g.kernel_h * c.g.kernel_w;
  const GramSums gram = ConvGram(c.g, {{x.data(), {n, c.g.channels, h, w}}}, threads, "conv");
  Fitted f{MakeProblem(wt, c.g.groups, c.cout / c.g.groups, k, 7, gram), {}};
  AdaRoundSettings s;
  s.iterations = 400;
  s.threads = threads;
  f.result = OptimizeRounding(f.problem, s);
  return f;
}

TEST(AdaRound, ConvBeatsNearestOnHeldOutInputs) {
  ConvCase c = Grouped();
  c.g.groups = 1;
  c.cout = 8;
  const int64_t n = 16, h = 8, w = 8;
  const std::vector<float> train = SmoothInputs(n, c.g.channels, h, w, 11);
  const std::vector<float> test = SmoothInputs(n, c.g.channels, h, w, 12);
  const std::vector<float> wt = RandomWeights(c.cout * c.g.channels * 9, 13);
  Fitted f = FitConv(c, train, n, h, w, wt, 2);
  // The loss on the cached inputs decreases, from an independent direct
  // convolution too.
  EXPECT_LT(f.result.loss_final, 0.8 * f.result.loss_nearest);
  const std::vector<float> nearest = Dequantized(f.problem, NearestCodes(f.problem));
  const std::vector<float> ada = Dequantized(f.problem, f.result.codes);
  EXPECT_NEAR(ConvOutputError(c.g, train, n, h, w, wt, ada, c.cout), f.result.loss_final,
              1e-3 * f.result.loss_final);
  // On held-out inputs too.
  EXPECT_LT(ConvOutputError(c.g, test, n, h, w, wt, ada, c.cout),
            ConvOutputError(c.g, test, n, h, w, wt, nearest, c.cout));
  EXPECT_GT(f.result.share_changed, 0.0);
  // Codes move by at most one from floor, stay in range, frozen ones nearest.
  const std::vector<int32_t> near = NearestCodes(f.problem);
  for (size_t i = 0; i < wt.size(); ++i) {
    const double x = wt[i] / f.problem.scale[i];
    EXPECT_GE(f.result.codes[i], std::floor(x) - 1e-6);
    EXPECT_LE(f.result.codes[i], std::min(std::floor(x) + 1, 7.0));
    if (f.problem.frozen[i]) EXPECT_EQ(f.result.codes[i], near[i]);
  }
}

TEST(AdaRound, GemmBeatsNearestOnHeldOutInputs) {
  const int64_t m = 300, k = 24, nout = 6;
  const std::vector<float> train = SmoothInputs(1, 1, m, k, 21);
  const std::vector<float> test = SmoothInputs(1, 1, m, k, 22);
  const std::vector<float> wt = RandomWeights(nout * k, 23);
  const GramSums gram = DenseGram(k, false, {{train.data(), {m, k}}}, 2, "gemm");
  RoundingProblem p = MakeProblem(wt, 1, nout, k, 7, gram);
  AdaRoundSettings s;
  s.iterations = 400;
  const RoundingResult r = OptimizeRounding(p, s);
  EXPECT_LT(r.loss_final, r.loss_nearest);
  auto held_out = [&](const std::vector<int32_t>& codes) {
    double e = 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t o = 0; o < nout; ++o) {
        double d = 0;
        for (int64_t j = 0; j < k; ++j)
          d += (codes[o * k + j] * p.scale[o * k + j] - wt[o * k + j]) * test[i * k + j];
        e += d * d;
      }
    return e / m;
  };
  EXPECT_LT(held_out(r.codes), held_out(NearestCodes(p)));
}

TEST(AdaRound, DeterministicWhateverTheThreads) {
  ConvCase c = Grouped();
  c.cout = 70;  // more than one block of rows per group
  const int64_t n = 4, h = 6, w = 6;
  const std::vector<float> x = SmoothInputs(n, c.g.channels, h, w, 31);
  const std::vector<float> wt = RandomWeights(c.cout * 2 * 9, 32);
  const Fitted a = FitConv(c, x, n, h, w, wt, 1);
  const Fitted b = FitConv(c, x, n, h, w, wt, 2);
  const Fitted again = FitConv(c, x, n, h, w, wt, 2);
  EXPECT_EQ(a.problem.gram, b.problem.gram);
  EXPECT_EQ(a.result.codes, b.result.codes);
  EXPECT_EQ(b.result.codes, again.result.codes);
  EXPECT_EQ(a.result.loss_final, b.result.loss_final);
}

TEST(AdaRound, ProgressAndCancellation) {
  const int64_t m = 20, k = 8;
  const std::vector<float> x = SmoothInputs(1, 1, m, k, 41);
  const GramSums gram = DenseGram(k, false, {{x.data(), {m, k}}}, 1, "g");
  RoundingProblem p = MakeProblem(RandomWeights(4 * k, 42), 1, 4, k, 7, gram);
  AdaRoundSettings s;
  s.iterations = 50;
  int64_t last = -1, total = 0;
  OptimizeRounding(p, s, [&](int64_t done, int64_t all) {
    last = done;
    total = all;
    return true;
  });
  EXPECT_EQ(total, 4 * 50);
  EXPECT_EQ(last, total);
  s.iterations = 1000000;
  try {
    OptimizeRounding(p, s, [](int64_t, int64_t) { return false; });
    FAIL() << "not cancelled";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  }
}

TEST(AdaRound, TypedErrorsNameTheNode) {
  ConvCase c = Grouped();
  std::vector<float> x(2 * 3 * 5 * 5, 1.f);  // 3 channels, the Conv wants 4
  try {
    ConvGram(c.g, {{x.data(), {2, 3, 5, 5}}}, 1, "my_conv");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("my_conv"), std::string::npos);
  }
  try {
    DenseGram(7, false, {{x.data(), {2, 75}}}, 1, "my_gemm");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("my_gemm"), std::string::npos);
  }
  RoundingProblem p;
  p.rows = 1;
  p.cols = 2;
  p.weight = {1.f, 2.f};
  EXPECT_THROW(OptimizeRounding(p, AdaRoundSettings()), Error);
  AdaRoundSettings bad;
  bad.iterations = 0;
  EXPECT_THROW(CheckRoundingProblem(p, bad), Error);
}

}  // namespace
}  // namespace onnxquant
