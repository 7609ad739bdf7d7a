#include "onnxquant/adaround.h"

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "onnxquant/error.h"

namespace onnxquant {
namespace {

using RowMatrix =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMatrix>;

// A block of rows of one group, optimized on its own.
struct Block {
  int64_t group;
  int64_t first;  // first row, counted over all groups
  int64_t count;
};

std::vector<Block> Blocks(const RoundingProblem& p) {
  std::vector<Block> out;
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int64_t r = 0; r < p.rows; r += kAdaRoundRowBlock) {
      out.push_back(
          {g, g * p.rows + r, std::min(kAdaRoundRowBlock, p.rows - r)});
    }
  }
  return out;
}

// sum over the block's rows of d G d^T, d = s * codes - W, the codes given
// as floats (soft or hard); `g_out` (count x cols), when not null, receives
// 2 d G.
double BlockReconstruction(const RoundingProblem& p, const Block& b,
                           const float* codes, RowMatrix* g_out) {
  const int64_t k = p.cols;
  const int64_t base = b.first * k;
  ConstMap gram(p.gram.data() + b.group * k * k, k, k);
  if (!p.cross.empty()) {  // sum wq G^ wq^T - 2 w C wq^T + offset
    RowMatrix wq(b.count, k);
    for (int64_t i = 0; i < b.count * k; ++i) {
      wq.data()[i] = p.scale[base + i] * codes[i];
    }
    ConstMap w(p.weight.data() + base, b.count, k);
    ConstMap cross(p.cross.data() + b.group * k * k, k, k);
    RowMatrix a = wq * gram;
    RowMatrix c = w * cross;
    double loss = 0;
    for (int64_t i = 0; i < b.count * k; ++i) {
      loss += static_cast<double>(wq.data()[i]) *
              (a.data()[i] - 2.f * c.data()[i]);
    }
    for (int64_t r = 0; r < b.count; ++r) loss += p.row_offset[b.first + r];
    if (g_out) *g_out = 2.f * (a - c);
    return loss;
  }
  RowMatrix d(b.count, k);
  for (int64_t i = 0; i < b.count * k; ++i) {
    d.data()[i] = p.scale[base + i] * codes[i] - p.weight[base + i];
  }
  RowMatrix dg = d * gram;
  double loss = 0;
  for (int64_t i = 0; i < b.count * k; ++i) {
    loss += static_cast<double>(d.data()[i]) * dg.data()[i];
  }
  if (g_out) *g_out = 2.f * dg;
  return loss;
}

// The objective of one block at `v` (count x cols) and its gradient.
double BlockObjective(const RoundingProblem& p, const Block& b, const float* v,
                      float beta, float reg_weight, float* grad) {
  const int64_t k = p.cols;
  const int64_t n = b.count * k;
  const int64_t base = b.first * k;
  const float span = kAdaRoundZeta - kAdaRoundGamma;
  std::vector<float> codes(n), dh(n), h(n);
  std::vector<uint8_t> inside(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = base + i;
    const float q = static_cast<float>(p.qmax[b.first + i / k]);
    const float x = p.weight[e] / p.scale[e];
    if (p.frozen[e]) {
      codes[i] = std::clamp(std::nearbyint(x), -q, q);
      dh[i] = 0;
      h[i] = 0;
      inside[i] = 0;
      continue;
    }
    const float sig = 1.f / (1.f + std::exp(-v[i]));
    const float u = sig * span + kAdaRoundGamma;
    h[i] = std::clamp(u, 0.f, 1.f);
    dh[i] = (u > 0.f && u < 1.f) ? sig * (1.f - sig) * span : 0.f;
    const float c = std::floor(x) + h[i];
    inside[i] = c >= -q && c <= q;
    codes[i] = std::clamp(c, -q, q);
  }
  RowMatrix g;
  double loss = BlockReconstruction(p, b, codes.data(), grad ? &g : nullptr);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = base + i;
    if (p.frozen[e]) {
      if (grad) grad[i] = 0;
      continue;
    }
    float dl_dh = grad && inside[i] ? g.data()[i] * p.scale[e] : 0.f;
    if (beta > 0) {
      const float a = 2.f * h[i] - 1.f;
      const float m = std::fabs(a);
      loss += reg_weight * (1.0 - std::pow(static_cast<double>(m), beta));
      if (grad && m > 0) {
        dl_dh -= reg_weight * beta * std::pow(m, beta - 1.f) *
                 (a > 0 ? 2.f : -2.f);
      }
    }
    if (grad) grad[i] = dl_dh * dh[i];
  }
  return loss;
}

// Adam on one block for all steps; adds count per step to `done`.
void OptimizeBlock(const RoundingProblem& p, const AdaRoundSettings& s,
                   const Block& b, std::vector<float>& v,
                   std::atomic<int64_t>& done, const std::atomic<bool>& stop) {
  const int64_t n = b.count * p.cols;
  float* vb = v.data() + b.first * p.cols;
  std::vector<float> grad(n), m(n, 0.f), m2(n, 0.f);
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  double p1 = 1, p2 = 1;
  for (int t = 0; t < s.iterations; ++t) {
    if (stop.load(std::memory_order_relaxed)) return;
    BlockObjective(p, b, vb, AdaRoundBeta(s, t), s.reg_weight, grad.data());
    p1 *= b1;
    p2 *= b2;
    const float c1 = static_cast<float>(1 - p1);
    const float c2 = static_cast<float>(1 - p2);
    for (int64_t i = 0; i < n; ++i) {
      m[i] = b1 * m[i] + (1 - b1) * grad[i];
      m2[i] = b2 * m2[i] + (1 - b2) * grad[i] * grad[i];
      vb[i] -= s.learning_rate * (m[i] / c1) / (std::sqrt(m2[i] / c2) + eps);
    }
    done.fetch_add(b.count, std::memory_order_relaxed);
  }
}

}  // namespace

void CheckRoundingProblem(const RoundingProblem& p, const AdaRoundSettings& s) {
  if (p.groups < 1 || p.rows < 1 || p.cols < 1) {
    throw InvalidArgument(
        "AdaRound: a problem needs groups, rows and cols >= 1");
  }
  const size_t n = static_cast<size_t>(p.groups * p.rows * p.cols);
  if (p.weight.size() != n || p.scale.size() != n || p.frozen.size() != n ||
      p.qmax.size() != static_cast<size_t>(p.groups * p.rows) ||
      p.gram.size() != static_cast<size_t>(p.groups * p.cols * p.cols)) {
    throw InvalidArgument(
        "AdaRound: the problem's arrays do not match its shape");
  }
  if (!p.cross.empty() &&
      (p.cross.size() != p.gram.size() ||
       p.row_offset.size() != static_cast<size_t>(p.groups * p.rows))) {
    throw InvalidArgument(
        "AdaRound: the cross matrices or row offsets do not match the shape");
  }
  for (float sc : p.scale) {
    if (!(std::isfinite(sc) && sc > 0)) {
      throw InvalidArgument("AdaRound: a weight scale is not finite and > 0");
    }
  }
  for (int32_t q : p.qmax) {
    if (q < 1) throw InvalidArgument("AdaRound: a qmax below 1");
  }
  if (s.iterations < 1 || !(s.reg_weight >= 0) || !(s.learning_rate > 0) ||
      !(s.warmup >= 0 && s.warmup < 1) || !(s.beta_end > 0) ||
      !(s.beta_start >= s.beta_end) || s.threads < 1) {
    throw InvalidArgument(
        "AdaRound settings out of their domain: iterations >= 1, reg_weight "
        ">= 0, learning_rate > 0, 0 <= warmup < 1, beta_start >= beta_end > "
        "0, threads >= 1");
  }
}

float AdaRoundBeta(const AdaRoundSettings& s, int t) {
  const int warm = static_cast<int>(s.warmup * s.iterations);
  if (t < warm) return 0.f;
  const int span = std::max(1, s.iterations - warm - 1);
  const double rel = static_cast<double>(t - warm) / span;
  return static_cast<float>(s.beta_end + 0.5 * (s.beta_start - s.beta_end) *
                                             (1 + std::cos(M_PI * rel)));
}

std::vector<int32_t> NearestCodes(const RoundingProblem& p) {
  std::vector<int32_t> out(p.weight.size());
  for (size_t i = 0; i < out.size(); ++i) {
    const float q = static_cast<float>(p.qmax[i / p.cols]);
    out[i] = static_cast<int32_t>(
        std::clamp(std::nearbyint(p.weight[i] / p.scale[i]), -q, q));
  }
  return out;
}

double ReconstructionLoss(const RoundingProblem& p,
                          const std::vector<int32_t>& codes) {
  double loss = 0;
  for (const Block& b : Blocks(p)) {
    const int64_t n = b.count * p.cols;
    std::vector<float> c(n);
    for (int64_t i = 0; i < n; ++i) {
      c[i] = static_cast<float>(codes[b.first * p.cols + i]);
    }
    loss += BlockReconstruction(p, b, c.data(), nullptr);
  }
  return loss;
}

std::vector<float> InitialRoundingVariables(const RoundingProblem& p) {
  std::vector<float> v(p.weight.size(), 0.f);
  const float span = kAdaRoundZeta - kAdaRoundGamma;
  for (size_t i = 0; i < v.size(); ++i) {
    if (p.frozen[i]) continue;
    const float x = p.weight[i] / p.scale[i];
    const float frac = std::clamp(x - std::floor(x), 0.f, 1.f);
    const float sig = (frac - kAdaRoundGamma) / span;  // in (0.083, 0.917]
    v[i] = std::log(sig / (1.f - sig));
  }
  return v;
}

double AdaRoundObjective(const RoundingProblem& p, const std::vector<float>& v,
                         float beta, float reg_weight,
                         std::vector<float>* grad) {
  if (grad) grad->assign(v.size(), 0.f);
  double loss = 0;
  for (const Block& b : Blocks(p)) {
    const int64_t off = b.first * p.cols;
    loss += BlockObjective(p, b, v.data() + off, beta, reg_weight,
                           grad ? grad->data() + off : nullptr);
  }
  return loss;
}

RoundingResult OptimizeRounding(const RoundingProblem& p,
                                const AdaRoundSettings& s,
                                const AdaRoundProgress& progress) {
  CheckRoundingProblem(p, s);
  const std::vector<Block> blocks = Blocks(p);
  std::vector<float> v = InitialRoundingVariables(p);
  std::atomic<size_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  int running = 0;
  std::exception_ptr failure;
  const int workers =
      static_cast<int>(std::min<size_t>(s.threads, blocks.size()));
  std::vector<std::thread> threads;
  running = workers;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      try {
        for (size_t i = next++; i < blocks.size(); i = next++) {
          OptimizeBlock(p, s, blocks[i], v, done, stop);
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failure) failure = std::current_exception();
        stop = true;
      }
      std::lock_guard<std::mutex> lock(mu);
      --running;
      cv.notify_all();
    });
  }
  const int64_t total = p.groups * p.rows * static_cast<int64_t>(s.iterations);
  bool cancelled = false;
  {
    std::unique_lock<std::mutex> lock(mu);
    while (running > 0) {
      cv.wait_for(lock, std::chrono::milliseconds(100));
      if (progress && !cancelled && !stop) {
        lock.unlock();
        bool keep = true;
        try {
          keep = progress(done.load(), total);
        } catch (...) {
          keep = false;
        }
        lock.lock();
        if (!keep) {
          cancelled = true;
          stop = true;
        }
      }
    }
  }
  for (std::thread& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
  if (cancelled) throw InvalidArgument("AdaRound cancelled");
  if (progress) progress(total, total);

  RoundingResult r;
  r.codes.resize(p.weight.size());
  const std::vector<int32_t> nearest = NearestCodes(p);
  const float span = kAdaRoundZeta - kAdaRoundGamma;
  int64_t up = 0, changed = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const float x = p.weight[i] / p.scale[i];
    const int32_t q = p.qmax[i / p.cols];
    int32_t c = nearest[i];
    if (!p.frozen[i]) {
      const float sig = 1.f / (1.f + std::exp(-v[i]));
      const float h = std::clamp(sig * span + kAdaRoundGamma, 0.f, 1.f);
      c = std::clamp(static_cast<int32_t>(std::floor(x)) + (h >= 0.5f ? 1 : 0),
                     -q, q);
    }
    r.codes[i] = c;
    up += c > std::floor(x);
    changed += c != nearest[i];
  }
  r.share_up = static_cast<double>(up) / v.size();
  r.share_changed = static_cast<double>(changed) / v.size();
  r.loss_nearest = ReconstructionLoss(p, nearest);
  r.loss_final = ReconstructionLoss(p, r.codes);
  return r;
}

}  // namespace onnxquant
