#include "onnxquant/arithmetic.h"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <limits>

#include "onnxquant/error.h"
#include "onnxquant/weight_range_search.h"

namespace onnxquant {
namespace {

// Largest |int32 bias| allowed: half of int32's range, so that the bias
// leaves room for the accumulated products it is added to.
constexpr double kMaxBias = 1073741824.0;  // 2^30

// Round half to even (the default floating-point rounding mode).
double RoundHalfEven(double x) { return std::nearbyint(x); }

// RoundHalfEven(x) wherever the result is then clamped to [-limit, limit]
// (limit < 2^51), inlined: x is first clamped to one past the limit, and
// adding and subtracting 1.5 * 2^52 rounds it to the nearest integer, ties
// to even, in the default rounding mode, as nearbyint does. A NaN stays NaN.
inline double RoundSmall(double x, double limit) {
  constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  const double bound = limit + 1.0;
  const double clamped = x < -bound ? -bound : (x > bound ? bound : x);
  // Without -ffast-math (never set here) the compiler keeps both steps.
  return (clamped + kMagic) - kMagic;
}

}  // namespace

std::pair<int32_t, int32_t> ActivationCodeRange(ActivationType type) {
  switch (type) {
    case ActivationType::kUint8:
      return {0, 255};
    case ActivationType::kInt8:
      return {-128, 127};
    case ActivationType::kInt16:
      return {-32768, 32767};
  }
  return {0, 255};
}

float PowerOfTwoCeil(float x) {
  if (!(x > 0.f) || !std::isfinite(x)) return std::ldexp(1.f, -126);
  int e = 0;
  const float m = std::frexp(x, &e);  // x = m * 2^e, m in [0.5, 1)
  const float p = m == 0.5f ? std::ldexp(1.f, e - 1) : std::ldexp(1.f, e);
  return std::max(p, std::ldexp(1.f, -126));
}

namespace {

void CheckRange(float rmin, float rmax) {
  if (!std::isfinite(rmin) || !std::isfinite(rmax) || rmin > rmax) {
    throw RangeError("the range [" + std::to_string(rmin) + ", " +
                     std::to_string(rmax) + "] is not a finite interval");
  }
}

}  // namespace

ActivationParams ActivationQuantParams(float rmin, float rmax,
                                       const QuantOptions& options) {
  return ActivationQuantParams(rmin, rmax, options, options.activation_type);
}

ActivationParams ActivationQuantParams(float rmin, float rmax,
                                       const QuantOptions& options,
                                       ActivationType type) {
  if (options.power_of_two == PowerOfTwo::kOff) {
    return ActivationQuantParams(rmin, rmax, type);
  }
  CheckRange(rmin, rmax);
  const auto [qmin, qmax] = ActivationCodeRange(type);
  ActivationParams p;
  if (rmin < 0.f) {
    // Symmetric: zero point in the middle of the type, (qmax - qmin) / 2
    // steps each side.
    const float a = std::max(-rmin, rmax);
    const int32_t half = (qmax - qmin) / 2;  // 127, or 32767
    p.zero_point = type == ActivationType::kUint8 ? 128 : 0;
    p.scale = PowerOfTwoCeil(a / static_cast<float>(half));
  } else {
    p.zero_point = qmin;
    p.scale = PowerOfTwoCeil(rmax / static_cast<float>(qmax - qmin));
  }
  if (p.scale < kMinActivationScale) {
    p.scale = PowerOfTwoCeil(kMinActivationScale);
    p.floored = true;
  }
  return p;
}

ActivationParams ActivationQuantParams(float rmin, float rmax,
                                       ActivationType type) {
  CheckRange(rmin, rmax);
  const auto [qmin, qmax] = ActivationCodeRange(type);
  const int32_t half = (qmax - qmin) / 2;  // 127, or 32767
  rmin = std::min(rmin, 0.f);
  rmax = std::max(rmax, 0.f);
  ActivationParams p;
  if (rmin == -rmax && rmax > 0.f) {
    // A symmetric range [-a, a]: 127 (32767) steps each side of a zero
    // point at the middle of the type (0 for int8 and int16, 128 for
    // uint8), so that values inside the range take codes within +-127 of it.
    const float scale = rmax / static_cast<float>(half);
    if (scale >= kMinActivationScale) {
      p.scale = scale;
      p.zero_point = type == ActivationType::kUint8 ? 128 : 0;
      return p;
    }
  }
  float scale = (rmax - rmin) / static_cast<float>(qmax - qmin);
  if (!(scale >= kMinActivationScale)) {
    scale = kMinActivationScale;
    p.floored = true;
  }
  p.scale = scale;
  const double zp = RoundHalfEven(static_cast<double>(qmin) -
                                  static_cast<double>(rmin) / scale);
  p.zero_point = static_cast<int32_t>(
      std::clamp(zp, static_cast<double>(qmin), static_cast<double>(qmax)));
  return p;
}

std::vector<float> MinWeightScalesForBias(const std::vector<float>& bias,
                                          float input_scale,
                                          size_t num_channels) {
  std::vector<float> mins(num_channels, 0.f);
  for (size_t c = 0; c < num_channels && c < bias.size(); ++c) {
    const double need =
        std::fabs(static_cast<double>(bias[c])) / (input_scale * kMaxBias);
    // A zero bias fits at any scale: no floor (else a dead channel would get
    // the denormal nextafter(0) as its scale and be reported as enlarged).
    if (need == 0.0) continue;
    // Rounded up to the next float so that the product stays within bounds.
    mins[c] = std::nextafter(static_cast<float>(need),
                             std::numeric_limits<float>::infinity());
  }
  return mins;
}

WeightQuant QuantizeWeight(const std::vector<float>& w,
                           const std::vector<int64_t>& dims, int axis,
                           int qmax, const std::vector<float>& min_scales,
                           const std::vector<int32_t>& channel_qmax,
                           PowerOfTwo power_of_two, WeightRange weight_range) {
  if (axis >= static_cast<int>(dims.size())) {
    throw InvalidArgument("weight axis " + std::to_string(axis) +
                          " out of range for a tensor of rank " +
                          std::to_string(dims.size()));
  }
  // Layout: [outer, channels, inner] around `axis`.
  int64_t channels = 1, inner = 1;
  if (axis >= 0) {
    channels = dims[axis];
    for (size_t d = axis + 1; d < dims.size(); ++d) inner *= dims[d];
  } else {
    inner = static_cast<int64_t>(w.size());
  }
  const int64_t outer =
      channels * inner == 0 ? 0 : static_cast<int64_t>(w.size()) /
                                      (channels * inner);
  if (!channel_qmax.empty()) {
    if (static_cast<int64_t>(channel_qmax.size()) != channels) {
      throw InvalidArgument("channel_qmax has " +
                            std::to_string(channel_qmax.size()) +
                            " entries for " + std::to_string(channels) +
                            " channels");
    }
    for (int32_t q : channel_qmax) {
      if (q < 1 || q > 127) {
        throw InvalidArgument("channel qmax " + std::to_string(q) +
                              " is outside [1, 127]");
      }
    }
  }
  auto qmax_of = [&](int64_t c) {
    return channel_qmax.empty() ? qmax : channel_qmax[c];
  };
  WeightQuant out;
  out.values.resize(w.size());
  out.scales.assign(channels, 0.f);
  std::vector<float> absmax(channels, 0.f);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const float* p = w.data() + (o * channels + c) * inner;
      for (int64_t i = 0; i < inner; ++i) {
        absmax[c] = std::max(absmax[c], std::fabs(p[i]));
      }
    }
  }
  std::vector<float> searched;
  if (weight_range == WeightRange::kMse) {
    std::vector<int32_t> limits(channels);
    for (int64_t c = 0; c < channels; ++c) limits[c] = qmax_of(c);
    searched = SearchWeightScales(w, dims, axis, limits,
                                  power_of_two != PowerOfTwo::kOff);
  }
  for (int64_t c = 0; c < channels; ++c) {
    float scale = searched.empty() ? absmax[c] / static_cast<float>(qmax_of(c))
                                   : searched[c];
    const float floor_scale =
        c < static_cast<int64_t>(min_scales.size()) ? min_scales[c] : 0.f;
    if (scale < floor_scale) {
      scale = floor_scale;
      out.enlarged = true;
    }
    if (!(scale > 0.f)) scale = 1.f;  // an all-zero channel: any scale works
    if (power_of_two != PowerOfTwo::kOff) scale = PowerOfTwoCeil(scale);
    out.scales[c] = scale;
  }
  if (power_of_two == PowerOfTwo::kMse && searched.empty()) {
    // Per channel: the next lower power of two where it lowers the squared
    // error over the channel's values (and still fits the bias floor).
    std::vector<double> err_up(channels, 0.0), err_down(channels, 0.0);
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t c = 0; c < channels; ++c) {
        const double up = out.scales[c], down = up / 2.0;
        const double limit = qmax_of(c);
        const float* p = w.data() + (o * channels + c) * inner;
        for (int64_t i = 0; i < inner; ++i) {
          const double x = p[i];
          const double qu = std::clamp(RoundHalfEven(x / up), -limit, limit);
          const double qd = std::clamp(RoundHalfEven(x / down), -limit, limit);
          err_up[c] += (x - qu * up) * (x - qu * up);
          err_down[c] += (x - qd * down) * (x - qd * down);
        }
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      const float down = out.scales[c] / 2.f;
      const float floor_scale =
          c < static_cast<int64_t>(min_scales.size()) ? min_scales[c] : 0.f;
      if (err_down[c] < err_up[c] && down >= floor_scale) out.scales[c] = down;
    }
  }
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (o * channels + c) * inner;
      const double scale = out.scales[c];
      const double limit = qmax_of(c);
      for (int64_t i = 0; i < inner; ++i) {
        out.values[base + i] = static_cast<int8_t>(std::clamp(
            RoundSmall(static_cast<double>(w[base + i]) / scale, limit), -limit,
            limit));
      }
    }
  }
  return out;
}

WeightQuant QuantizeWeightBlocked(const std::vector<float>& w,
                                  const std::vector<int64_t>& dims,
                                  int64_t block_size, int qmax) {
  if (dims.size() != 2 || block_size < 1 || qmax < 1) {
    throw InvalidArgument("blockwise weights need a 2-D weight, a block size "
                          ">= 1 and qmax >= 1 (rank " +
                          std::to_string(dims.size()) + ", block size " +
                          std::to_string(block_size) + ")");
  }
  const int64_t rows = dims[0], cols = dims[1];
  if (rows * cols != static_cast<int64_t>(w.size())) {
    throw InvalidArgument("a weight of " + std::to_string(w.size()) +
                          " values for dims [" + std::to_string(rows) + ", " +
                          std::to_string(cols) + "]");
  }
  const int64_t blocks = (rows + block_size - 1) / block_size;
  WeightQuant out;
  out.values.resize(w.size());
  out.scales.assign(blocks * cols, 0.f);
  out.scale_dims = {blocks, cols};
  out.block_size = block_size;
  for (int64_t r = 0; r < rows; ++r) {
    float* s = out.scales.data() + (r / block_size) * cols;
    const float* p = w.data() + r * cols;
    for (int64_t c = 0; c < cols; ++c) s[c] = std::max(s[c], std::fabs(p[c]));
  }
  for (float& s : out.scales) {
    s = s > 0.f ? s / static_cast<float>(qmax) : 1.f;
  }
  const double limit = qmax;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = out.scales.data() + (r / block_size) * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const double q = RoundHalfEven(static_cast<double>(w[r * cols + c]) /
                                     static_cast<double>(s[c]));
      out.values[r * cols + c] =
          static_cast<int8_t>(std::clamp(q, -limit, limit));
    }
  }
  return out;
}

std::vector<int32_t> QuantizeBias(const std::vector<float>& bias,
                                  float input_scale,
                                  const std::vector<float>& weight_scales,
                                  std::vector<float>* bias_scales) {
  if (weight_scales.size() != 1 && weight_scales.size() != bias.size()) {
    throw InvalidArgument("a bias of " + std::to_string(bias.size()) +
                          " values for " +
                          std::to_string(weight_scales.size()) +
                          " weight scales");
  }
  std::vector<int32_t> q(bias.size());
  bias_scales->assign(bias.size(), 0.f);
  for (size_t c = 0; c < bias.size(); ++c) {
    const float ws =
        weight_scales.size() == 1 ? weight_scales[0] : weight_scales[c];
    const float s = input_scale * ws;  // float32, exactly as stored
    (*bias_scales)[c] = s;
    double v = RoundHalfEven(static_cast<double>(bias[c]) / s);
    if (std::isnan(v)) v = 0.0;  // 0 / 0: a zero bias on an underflowed scale
    q[c] = static_cast<int32_t>(std::clamp(v, -2147483647.0, 2147483647.0));
  }
  return q;
}

}  // namespace onnxquant
