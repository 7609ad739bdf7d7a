// Data for the range-search tests: Gaussian, Laplacian and ReLU-like samples
// from fixed seeds, either independent or stratified (the i-th of n uniforms
// drawn in [i/n, (i+1)/n), then shuffled), which keeps the sampling noise of
// an empirical error far below the differences a search has to resolve.
#ifndef ONNXQUANT_TESTS_CPP_RANGE_SEARCH_TEST_UTIL_H_
#define ONNXQUANT_TESTS_CPP_RANGE_SEARCH_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "onnxquant/histogram.h"

namespace onnxquant {
namespace testing_util {

enum class Shape { kGaussian, kLaplacian, kRelu };

inline std::string ShapeName(Shape s) {
  switch (s) {
    case Shape::kGaussian:
      return "Gaussian";
    case Shape::kLaplacian:
      return "Laplacian";
    case Shape::kRelu:
      return "ReLU";
  }
  return "";
}

// Uniform in (0, 1) from 53 random bits.
inline double Uniform01(std::mt19937_64& rng) {
  return (static_cast<double>(rng() >> 11) + 0.5) * 0x1p-53;
}

// The standard normal quantile (Acklam's rational approximation, relative
// error below 1.2e-9: plenty for making test data).
inline double NormalQuantile(double p) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                                 -2.759285104469687e+02, 1.383577518672690e+02,
                                 -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                                 -1.556989798598866e+02, 6.680131188771972e+01,
                                 -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                                 -2.400758277161838e+00, -2.549732539343734e+00,
                                 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01,
                                 2.445134137142996e+00, 3.754408661907416e+00};
  auto tail = [&](double q) {
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q +
            c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  };
  constexpr double kLow = 0.02425;
  if (p < kLow) return tail(std::sqrt(-2 * std::log(p)));
  if (p > 1 - kLow) return -tail(std::sqrt(-2 * std::log(1 - p)));
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) *
         q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

inline double LaplaceQuantile(double p) {
  return p < 0.5 ? std::log(2 * p) : -std::log(2 * (1 - p));
}

// `n` samples of `shape`: N(0, 1); Laplace with scale 1; max(0, N(0.3, 1)).
inline std::vector<float> Samples(Shape shape, int n, uint64_t seed,
                                  bool stratified) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) {
    const double u = stratified ? (i + Uniform01(rng)) / n : Uniform01(rng);
    double x = 0;
    switch (shape) {
      case Shape::kGaussian:
        x = NormalQuantile(u);
        break;
      case Shape::kLaplacian:
        x = LaplaceQuantile(u);
        break;
      case Shape::kRelu:
        x = std::max(0.0, NormalQuantile(u) + 0.3);
        break;
    }
    v[i] = static_cast<float>(x);
  }
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

inline Histogram HistogramOf(const std::vector<float>& v) {
  Histogram h;
  h.Add(v.data(), static_cast<int64_t>(v.size()));
  return h;
}

}  // namespace testing_util
}  // namespace onnxquant

#endif  // ONNXQUANT_TESTS_CPP_RANGE_SEARCH_TEST_UTIL_H_
