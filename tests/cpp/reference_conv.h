// A direct-loop convolution in double precision, the independent reference
// of the tests of passes that rewrite Conv weights and biases.
#ifndef ONNXQUANT_TESTS_CPP_REFERENCE_CONV_H_
#define ONNXQUANT_TESTS_CPP_REFERENCE_CONV_H_

#include <cstdint>
#include <vector>

namespace onnxquant {
namespace testing {

struct Tensor3 {  // [C, H, W]
  int64_t c, h, w;
  std::vector<double> v;
  double& at(int64_t k, int64_t y, int64_t x) { return v[(k * h + y) * w + x]; }
};

// Direct convolution, stride 1, symmetric zero padding `pad`, groups; `b`
// empty means no bias.
inline Tensor3 Conv(Tensor3 in, const std::vector<float>& w,
                    const std::vector<int64_t>& dims,
                    const std::vector<float>& b, int64_t group, int64_t pad) {
  const int64_t m = dims[0], cpg = dims[1], kh = dims[2], kw = dims[3];
  Tensor3 out{m, in.h + 2 * pad - kh + 1, in.w + 2 * pad - kw + 1, {}};
  out.v.assign(out.c * out.h * out.w, 0.0);
  const int64_t mpg = m / group;
  for (int64_t o = 0; o < m; ++o) {
    const int64_t g = o / mpg;
    for (int64_t y = 0; y < out.h; ++y) {
      for (int64_t x = 0; x < out.w; ++x) {
        double acc = b.empty() ? 0.0 : b[o];
        for (int64_t j = 0; j < cpg; ++j) {
          for (int64_t dy = 0; dy < kh; ++dy) {
            for (int64_t dx = 0; dx < kw; ++dx) {
              const int64_t iy = y + dy - pad, ix = x + dx - pad;
              if (iy < 0 || ix < 0 || iy >= in.h || ix >= in.w) continue;
              acc += w[((o * cpg + j) * kh + dy) * kw + dx] *
                     in.at(g * cpg + j, iy, ix);
            }
          }
        }
        out.at(o, y, x) = acc;
      }
    }
  }
  return out;
}

}  // namespace testing
}  // namespace onnxquant

#endif  // ONNXQUANT_TESTS_CPP_REFERENCE_CONV_H_
