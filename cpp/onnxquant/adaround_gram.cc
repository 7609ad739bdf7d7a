#include "onnxquant/adaround_gram.h"

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

using RowMatrix =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Columns of H computed by one work unit (fixed, so that the sums do not
// depend on the thread count), and columns gathered per GEMM.
constexpr int64_t kColumnBlock = 256;
constexpr int64_t kGatherColumns = 1024;

// Writes piece `i` of group `g` ([K, P] row-major) into `out`; returns P.
using PieceFn = std::function<int64_t(int64_t g, size_t i, RowMatrix& out)>;

// Sums of left right^T over the pieces (right: null for left itself).
GramSums Accumulate(int64_t groups, int64_t k, size_t pieces,
                    const PieceFn& piece, const PieceFn* right, int threads) {
  GramSums out;
  out.groups = groups;
  out.cols = k;
  out.sums.assign(static_cast<size_t>(groups * k * k), 0.0);
  const int64_t blocks = (k + kColumnBlock - 1) / kColumnBlock;
  const int64_t units = groups * blocks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> columns{0};
  std::mutex mu;
  std::exception_ptr failure;
  auto work = [&] {
    try {
      RowMatrix buffer, part, rbuffer, rpart;
      for (int64_t u = next++; u < units; u = next++) {
        const int64_t g = u / blocks;
        const int64_t j0 = (u % blocks) * kColumnBlock;
        const int64_t nj = std::min(kColumnBlock, k - j0);
        Eigen::MatrixXd acc = Eigen::MatrixXd::Zero(k, nj);
        buffer.resize(k, kGatherColumns);
        if (right) rbuffer.resize(k, kGatherColumns);
        int64_t filled = 0, counted = 0;
        auto flush = [&] {
          if (filled == 0) return;
          const RowMatrix& r = right ? rbuffer : buffer;
          RowMatrix prod = buffer.leftCols(filled) *
                           r.block(j0, 0, nj, filled).transpose();
          acc += prod.cast<double>();
          filled = 0;
        };
        for (size_t i = 0; i < pieces; ++i) {
          const int64_t p = piece(g, i, part);
          counted += p;
          if (filled + p > kGatherColumns) flush();
          if (p > kGatherColumns) {
            buffer.resize(k, p);
            if (right) rbuffer.resize(k, p);
          }
          buffer.block(0, filled, k, p) = part.leftCols(p);
          if (right) {
            if ((*right)(g, i, rpart) != p) {
              throw InvalidArgument(
                  "AdaRound: the quantized model's layer input has another "
                  "shape than the FP32 one");
            }
            rbuffer.block(0, filled, k, p) = rpart.leftCols(p);
          }
          filled += p;
        }
        flush();
        double* dst = out.sums.data() + g * k * k;
        for (int64_t r = 0; r < k; ++r) {
          for (int64_t c = 0; c < nj; ++c) dst[r * k + j0 + c] = acc(r, c);
        }
        if (u == 0) columns = counted;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!failure) failure = std::current_exception();
      next = units;
    }
  };
  std::vector<std::thread> pool;
  const int workers = static_cast<int>(std::min<int64_t>(threads, units));
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
  out.columns = columns;
  return out;
}

void CheckConvInput(const ConvGeometry& g, const InputView& in,
                    const std::string& node) {
  const size_t rank = g.one_d ? 3 : 4;
  if (in.dims.size() != rank || in.dims[1] != g.channels ||
      g.channels % g.groups != 0) {
    throw InvalidArgument("AdaRound: the input of node '" + node +
                          "' has a shape that does not fit its Conv (" +
                          std::to_string(g.channels) + " channels, rank " +
                          std::to_string(rank) + " expected)");
  }
}

int64_t OutSize(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb,
                int64_t pe) {
  return (in + pb + pe - d * (k - 1) - 1) / s + 1;
}

int64_t TransposedOutSize(int64_t in, int64_t k, int64_t s, int64_t d,
                          int64_t pb, int64_t pe, int64_t output_pad) {
  return (in - 1) * s - pb - pe + d * (k - 1) + output_pad + 1;
}

// The input index that tap `tap` reads for output index `out` along one
// axis, or -1 where it reads padding (or, transposed, where no input lands).
// A Conv reads in = out * stride - pad + tap * dilation; a ConvTranspose
// adds input `in` into out = in * stride - pad + tap * dilation.
int64_t SourceIndex(bool transposed, int64_t out, int64_t tap, int64_t stride,
                    int64_t dilation, int64_t pad, int64_t size) {
  if (!transposed) {
    const int64_t in = out * stride - pad + tap * dilation;
    return in >= 0 && in < size ? in : -1;
  }
  const int64_t t = out + pad - tap * dilation;
  if (t < 0 || t % stride != 0 || t / stride >= size) return -1;
  return t / stride;
}

}  // namespace

std::vector<float> Im2Col(const ConvGeometry& g, const InputView& input,
                          int64_t n, int64_t group) {
  CheckConvInput(g, input, "");
  const int64_t h = g.one_d ? 1 : input.dims[2];
  const int64_t w = input.dims[g.one_d ? 2 : 3];
  const int64_t oh =
      g.transposed ? TransposedOutSize(h, g.kernel_h, g.stride_h, g.dilation_h,
                                       g.pad_top, g.pad_bottom, g.output_pad_h)
                   : OutSize(h, g.kernel_h, g.stride_h, g.dilation_h,
                             g.pad_top, g.pad_bottom);
  const int64_t ow =
      g.transposed ? TransposedOutSize(w, g.kernel_w, g.stride_w, g.dilation_w,
                                       g.pad_left, g.pad_right, g.output_pad_w)
                   : OutSize(w, g.kernel_w, g.stride_w, g.dilation_w,
                             g.pad_left, g.pad_right);
  if (oh < 1 || ow < 1 || n < 0 || n >= input.dims[0] || g.stride_h < 1 ||
      g.stride_w < 1) {
    throw InvalidArgument("AdaRound: a " +
                          std::string(g.transposed ? "ConvTranspose" : "Conv") +
                          " input too small for its kernel");
  }
  const int64_t cg = g.channels / g.groups;
  const int64_t p = oh * ow;
  std::vector<float> out(static_cast<size_t>(cg * g.kernel_h * g.kernel_w * p));
  const float* x = input.data + (n * g.channels + group * cg) * h * w;
  int64_t row = 0;
  for (int64_t c = 0; c < cg; ++c) {
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      for (int64_t j = 0; j < g.kernel_w; ++j, ++row) {
        float* dst = out.data() + row * p;
        for (int64_t y = 0; y < oh; ++y) {
          const int64_t iy = SourceIndex(g.transposed, y, i, g.stride_h,
                                         g.dilation_h, g.pad_top, h);
          for (int64_t xo = 0; xo < ow; ++xo) {
            const int64_t ix = SourceIndex(g.transposed, xo, j, g.stride_w,
                                           g.dilation_w, g.pad_left, w);
            dst[y * ow + xo] =
                iy >= 0 && ix >= 0 ? x[(c * h + iy) * w + ix] : 0.f;
          }
        }
      }
    }
  }
  return out;
}

namespace {

void CheckSameShapes(const std::vector<InputView>& a,
                     const std::vector<InputView>& b, const std::string& node) {
  bool same = a.size() == b.size();
  for (size_t i = 0; same && i < a.size(); ++i) same = a[i].dims == b[i].dims;
  if (!same) {
    throw InvalidArgument("AdaRound: the quantized inputs of node '" + node +
                          "' do not have the shapes of its FP32 inputs");
  }
}

}  // namespace

GramSums ConvGram(const ConvGeometry& g, const std::vector<InputView>& inputs,
                  int threads, const std::string& node,
                  const std::vector<InputView>* right) {
  std::vector<std::pair<size_t, int64_t>> samples;  // (input, n)
  for (size_t i = 0; i < inputs.size(); ++i) {
    CheckConvInput(g, inputs[i], node);
    for (int64_t n = 0; n < inputs[i].dims[0]; ++n) samples.emplace_back(i, n);
  }
  if (right) CheckSameShapes(inputs, *right, node);
  const int64_t k = g.channels / g.groups * g.kernel_h * g.kernel_w;
  auto piece_of = [&](const std::vector<InputView>& views) -> PieceFn {
    return [&, views_ptr = &views](int64_t group, size_t i,
                                   RowMatrix& out) -> int64_t {
      const auto& [input, n] = samples[i];
      std::vector<float> cols = Im2Col(g, (*views_ptr)[input], n, group);
      const int64_t p = static_cast<int64_t>(cols.size()) / k;
      out = Eigen::Map<RowMatrix>(cols.data(), k, p);
      return p;
    };
  };
  const PieceFn piece = piece_of(inputs);
  const PieceFn rpiece = right ? piece_of(*right) : PieceFn();
  return Accumulate(g.groups, k, samples.size(), piece,
                    right ? &rpiece : nullptr, threads);
}

GramSums DenseGram(int64_t k, bool transposed,
                   const std::vector<InputView>& inputs, int threads,
                   const std::string& node,
                   const std::vector<InputView>* right) {
  constexpr int64_t kRows = 512;
  std::vector<std::tuple<size_t, int64_t, int64_t>> pieces;  // input, m0, m
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& d = inputs[i].dims;
    const bool ok = transposed ? d.size() == 2 && d[0] == k
                               : !d.empty() && d.back() == k;
    if (!ok || k < 1) {
      throw InvalidArgument("AdaRound: the input of node '" + node +
                            "' does not have " + std::to_string(k) +
                            " values on its reduction axis");
    }
    int64_t total = 1;
    for (int64_t x : d) total *= x;
    const int64_t m = total / k;
    for (int64_t m0 = 0; m0 < m; m0 += kRows) {
      pieces.emplace_back(i, m0, std::min(kRows, m - m0));
    }
  }
  if (right) CheckSameShapes(inputs, *right, node);
  auto piece_of = [&](const std::vector<InputView>& views) -> PieceFn {
    return [&, views_ptr = &views](int64_t, size_t i,
                                   RowMatrix& out) -> int64_t {
      const auto& [input, m0, m] = pieces[i];
      const float* x = (*views_ptr)[input].data;
      if (transposed) {
        const int64_t total_m = inputs[input].dims[1];
        out.resize(k, m);
        for (int64_t r = 0; r < k; ++r) {
          for (int64_t c = 0; c < m; ++c) out(r, c) = x[r * total_m + m0 + c];
        }
      } else {
        out = Eigen::Map<const RowMatrix>(x + m0 * k, m, k).transpose();
      }
      return m;
    };
  };
  const PieceFn piece = piece_of(inputs);
  const PieceFn rpiece = right ? piece_of(*right) : PieceFn();
  return Accumulate(1, k, pieces.size(), piece, right ? &rpiece : nullptr,
                    threads);
}

}  // namespace onnxquant
