#include "onnxquant/weight_range_search.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "onnxquant/arithmetic.h"
#include "onnxquant/error.h"

namespace onnxquant {

double WeightQuantError(const std::vector<float>& values, float scale,
                        int32_t qmax) {
  const double s = scale, limit = qmax;
  double err = 0.0;
  for (float v : values) {
    const double x = v;
    const double q = std::clamp(std::nearbyint(x / s), -limit, limit);
    const double d = x - q * s;
    err += d * d;
  }
  return err;
}

namespace {

// The values of each channel along `axis`, channel by channel.
std::vector<std::vector<float>> SplitChannels(const std::vector<float>& w,
                                              const std::vector<int64_t>& dims,
                                              int axis) {
  if (axis < 0) return {w};
  int64_t channels = dims[axis], inner = 1, outer = 1;
  for (size_t d = axis + 1; d < dims.size(); ++d) inner *= dims[d];
  for (int d = 0; d < axis; ++d) outer *= dims[d];
  std::vector<std::vector<float>> out(channels);
  for (auto& c : out) c.reserve(outer * inner);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const float* p = w.data() + (o * channels + c) * inner;
      out[c].insert(out[c].end(), p, p + inner);
    }
  }
  return out;
}

float BestScale(const std::vector<float>& values, int32_t qmax,
                bool power_of_two) {
  float absmax = 0.f;
  for (float v : values) absmax = std::max(absmax, std::fabs(v));
  if (!(absmax > 0.f)) return 0.f;
  std::vector<float> candidates;
  if (power_of_two) {
    const float top = PowerOfTwoCeil(absmax / static_cast<float>(qmax));
    for (int j = 0; j < kWeightSearchPowerSteps; ++j) {
      candidates.push_back(std::ldexp(top, -j));
    }
  } else {
    for (int k = kWeightSearchSteps; k >= kWeightSearchMinStep; --k) {
      candidates.push_back(absmax * static_cast<float>(k) /
                           static_cast<float>(kWeightSearchSteps) /
                           static_cast<float>(qmax));
    }
  }
  float best = candidates[0];
  double best_err = WeightQuantError(values, best, qmax);
  for (size_t i = 1; i < candidates.size(); ++i) {
    if (!(candidates[i] > 0.f)) break;
    const double err = WeightQuantError(values, candidates[i], qmax);
    if (err < best_err) {
      best_err = err;
      best = candidates[i];
    }
  }
  return best;
}

}  // namespace

std::vector<float> SearchWeightScales(const std::vector<float>& w,
                                      const std::vector<int64_t>& dims,
                                      int axis,
                                      const std::vector<int32_t>& channel_qmax,
                                      bool power_of_two) {
  if (axis >= static_cast<int>(dims.size())) {
    throw InvalidArgument("weight axis " + std::to_string(axis) +
                          " out of range for a tensor of rank " +
                          std::to_string(dims.size()));
  }
  int64_t total = 1;
  for (int64_t d : dims) total *= d;
  if (total != static_cast<int64_t>(w.size())) {
    throw InvalidArgument("a weight of " + std::to_string(w.size()) +
                          " values for dims holding " + std::to_string(total));
  }
  const auto channels = SplitChannels(w, dims, axis);
  if (channel_qmax.size() != channels.size()) {
    throw InvalidArgument("channel_qmax has " +
                          std::to_string(channel_qmax.size()) +
                          " entries for " + std::to_string(channels.size()) +
                          " channels");
  }
  std::vector<float> scales(channels.size(), 0.f);
  for (size_t c = 0; c < channels.size(); ++c) {
    if (channel_qmax[c] < 1 || channel_qmax[c] > 32767) {
      throw InvalidArgument("channel qmax " + std::to_string(channel_qmax[c]) +
                            " is outside [1, 32767]");
    }
    scales[c] = BestScale(channels[c], channel_qmax[c], power_of_two);
  }
  return scales;
}

}  // namespace onnxquant
