#include "onnxquant/smooth_quant_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

void CheckSample(const ActivationSample& x,
                 const std::vector<WeightView>& weights, size_t scales,
                 const WeightEmulation& e) {
  if (e.qmax < 1) {
    throw InvalidArgument("SmoothQuant: the weights' qmax must be >= 1.");
  }
  const size_t k = static_cast<size_t>(x.channels);
  if (x.channels < 1 || x.count < 0 || (x.count > 0 && x.rows == nullptr) ||
      x.min.size() != k || x.max.size() != k || scales != k) {
    throw InvalidArgument(
        "SmoothQuant: the activation sample, its per-channel ranges and the "
        "factors must all have the same number of channels.");
  }
  for (const WeightView& w : weights) {
    if (w.values == nullptr || w.cols < 1) {
      throw InvalidArgument("SmoothQuant: a weight has no values.");
    }
  }
}

// Float product X W ([count, cols]) in double.
std::vector<double> Product(const float* x, int64_t count, int64_t channels,
                            const float* w, int64_t cols) {
  std::vector<double> y(count * cols, 0.0);
  for (int64_t i = 0; i < count; ++i) {
    double* row = y.data() + i * cols;
    for (int64_t k = 0; k < channels; ++k) {
      const double a = x[i * channels + k];
      if (a == 0.0) continue;
      const float* wk = w + k * cols;
      for (int64_t n = 0; n < cols; ++n) row[n] += a * wk[n];
    }
  }
  return y;
}

// X / s quantized per tensor (uint8, asymmetric, MIN_MAX over the
// per-channel ranges) and dequantized.
std::vector<float> FakeQuantActivation(const ActivationSample& x,
                                       const std::vector<float>& s) {
  double lo = 0.0, hi = 0.0;
  for (int64_t k = 0; k < x.channels; ++k) {
    lo = std::min(lo, static_cast<double>(x.min[k]) / s[k]);
    hi = std::max(hi, static_cast<double>(x.max[k]) / s[k]);
  }
  const float scale = hi > lo ? static_cast<float>((hi - lo) / 255.0) : 1.f;
  const float zp = std::min(
      255.f, std::max(0.f, std::nearbyint(static_cast<float>(-lo) / scale)));
  std::vector<float> out(x.count * x.channels);
  for (int64_t i = 0; i < x.count; ++i) {
    for (int64_t k = 0; k < x.channels; ++k) {
      const float v = x.rows[i * x.channels + k] / s[k];
      const float q =
          std::min(255.f, std::max(0.f, std::nearbyint(v / scale) + zp));
      out[i * x.channels + k] = (q - zp) * scale;
    }
  }
  return out;
}

// s W quantized per output channel or per tensor (symmetric, [-qmax,
// qmax]) and dequantized.
std::vector<float> FakeQuantWeight(const WeightView& w, int64_t channels,
                                   const std::vector<float>& s,
                                   const WeightEmulation& e) {
  std::vector<float> scaled(channels * w.cols);
  std::vector<float> amax(w.cols, 0.f);
  for (int64_t k = 0; k < channels; ++k) {
    for (int64_t n = 0; n < w.cols; ++n) {
      const float v = w.values[k * w.cols + n] * s[k];
      scaled[k * w.cols + n] = v;
      amax[n] = std::max(amax[n], std::fabs(v));
    }
  }
  if (!e.per_channel) {
    const float m = *std::max_element(amax.begin(), amax.end());
    std::fill(amax.begin(), amax.end(), m);
  }
  const float q = static_cast<float>(e.qmax);
  for (int64_t k = 0; k < channels; ++k) {
    for (int64_t n = 0; n < w.cols; ++n) {
      const float scale = amax[n] > 0.f ? amax[n] / q : 1.f;
      float& v = scaled[k * w.cols + n];
      v = std::min(q, std::max(-q, std::nearbyint(v / scale))) * scale;
    }
  }
  return scaled;
}

// Per weight, the float product X W.
std::vector<std::vector<double>> FloatProducts(
    const ActivationSample& x, const std::vector<WeightView>& weights) {
  std::vector<std::vector<double>> ys;
  for (const WeightView& w : weights) {
    ys.push_back(Product(x.rows, x.count, x.channels, w.values, w.cols));
  }
  return ys;
}

// QuantizedMatMulError with the float products `ys` given.
double ErrorAgainst(const ActivationSample& x,
                    const std::vector<WeightView>& weights,
                    const std::vector<std::vector<double>>& ys,
                    const std::vector<float>& s, const WeightEmulation& e) {
  const std::vector<float> xq = FakeQuantActivation(x, s);
  double num = 0.0, den = 0.0;
  for (size_t j = 0; j < weights.size(); ++j) {
    const std::vector<double>& y = ys[j];
    const std::vector<float> wq = FakeQuantWeight(weights[j], x.channels, s, e);
    const std::vector<double> yq =
        Product(xq.data(), x.count, x.channels, wq.data(), weights[j].cols);
    for (size_t i = 0; i < y.size(); ++i) {
      num += (yq[i] - y[i]) * (yq[i] - y[i]);
      den += y[i] * y[i];
    }
  }
  return den > 0.0 ? num / den : 0.0;
}

}  // namespace

void AccumulateChannelRange(const float* data, int64_t count, int64_t channels,
                            std::vector<float>* min, std::vector<float>* max) {
  if (channels < 1) {
    throw InvalidArgument("SmoothQuant: an activation needs >= 1 channel.");
  }
  if (min->empty() && max->empty()) {
    min->assign(channels, std::numeric_limits<float>::infinity());
    max->assign(channels, -std::numeric_limits<float>::infinity());
  }
  if (static_cast<int64_t>(min->size()) != channels ||
      static_cast<int64_t>(max->size()) != channels) {
    throw InvalidArgument(
        "SmoothQuant: an activation changed its channel count between "
        "chunks.");
  }
  float* lo = min->data();
  float* hi = max->data();
  for (int64_t i = 0; i < count; ++i) {
    const float* row = data + i * channels;
    for (int64_t k = 0; k < channels; ++k) {
      const float v = row[k];
      if (!std::isfinite(v)) continue;
      lo[k] = std::min(lo[k], v);
      hi[k] = std::max(hi[k], v);
    }
  }
}

std::vector<float> WeightChannelAbsMax(const std::vector<WeightView>& weights,
                                       int64_t channels) {
  std::vector<float> m(std::max<int64_t>(channels, 0), 0.f);
  for (const WeightView& w : weights) {
    for (int64_t k = 0; k < channels; ++k) {
      for (int64_t n = 0; n < w.cols; ++n) {
        m[k] = std::max(m[k], std::fabs(w.values[k * w.cols + n]));
      }
    }
  }
  return m;
}

std::vector<float> SmoothingScales(const std::vector<float>& x_min,
                                   const std::vector<float>& x_max,
                                   const std::vector<float>& w_abs_max,
                                   double alpha) {
  if (!(alpha >= 0.0 && alpha <= 1.0)) {
    throw InvalidArgument("SmoothQuant: alpha must lie in [0, 1], got " +
                          std::to_string(alpha) + ".");
  }
  if (x_min.size() != x_max.size() || x_max.size() != w_abs_max.size()) {
    throw InvalidArgument(
        "SmoothQuant: activation and weight ranges have different channel "
        "counts.");
  }
  std::vector<float> s(x_max.size(), 1.f);
  for (size_t k = 0; k < s.size(); ++k) {
    const double xm = std::max(std::fabs(x_min[k]), std::fabs(x_max[k]));
    const double wm = w_abs_max[k];
    if (!(xm > 0.0) || !(wm > 0.0) || !std::isfinite(xm)) continue;
    const double v = std::pow(xm, alpha) / std::pow(wm, 1.0 - alpha);
    s[k] = static_cast<float>(std::max(v, 1e-5));
  }
  return s;
}

double QuantizedMatMulError(const ActivationSample& x,
                            const std::vector<WeightView>& weights,
                            const std::vector<float>& s,
                            const WeightEmulation& emulation) {
  CheckSample(x, weights, s.size(), emulation);
  return ErrorAgainst(x, weights, FloatProducts(x, weights), s, emulation);
}

AlphaSearch SearchAlpha(const ActivationSample& x,
                        const std::vector<WeightView>& weights,
                        const std::vector<double>& grid,
                        const WeightEmulation& emulation) {
  if (grid.empty()) {
    throw InvalidArgument("SmoothQuant: the alpha grid is empty.");
  }
  CheckSample(x, weights, x.min.size(), emulation);
  const std::vector<float> wmax = WeightChannelAbsMax(weights, x.channels);
  AlphaSearch out;
  const std::vector<std::vector<double>> ys = FloatProducts(x, weights);
  out.error_before =
      ErrorAgainst(x, weights, ys, std::vector<float>(x.channels, 1.f),
                   emulation);
  bool first = true;
  for (const double alpha : grid) {
    std::vector<float> s = SmoothingScales(x.min, x.max, wmax, alpha);
    const double e = ErrorAgainst(x, weights, ys, s, emulation);
    out.grid.push_back(alpha);
    out.errors.push_back(e);
    if (first || e < out.error_after) {
      out.alpha = alpha;
      out.error_after = e;
      out.scales = std::move(s);
      first = false;
    }
  }
  return out;
}

}  // namespace onnxquant
