// SmoothQuant (smooth_quant.h, smooth_quant_search.h) against values
// computed here: a small evaluator of the test graphs (LayerNormalization,
// Mul, Add, MatMul, Gemm on [rows, K] tensors), and a brute-force alpha
// search with its own emulation of int8 weights and uint8 activations.
#include "onnxquant/smooth_quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "graph_builder.h"
#include "onnxquant/error.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

using testing::GraphBuilder;
using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

std::vector<float> Random(size_t n, std::mt19937* gen, float sd = 1.f) {
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(*gen);
  return v;
}

std::vector<float> Constant(const pb::ModelProto& m, const std::string& n) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == n) return ToFloats(t);
  }
  ADD_FAILURE() << "no initializer " << n;
  return {};
}

bool IsConstant(const pb::ModelProto& m, const std::string& n) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == n) return true;
  }
  return false;
}

// Broadcasts a constant of 1 or K values along the last axis.
double At(const std::vector<float>& c, size_t j) {
  return c.size() == 1 ? c[0] : c[j];
}

// Runs the graph on x [rows, k]; returns every graph output by name.
std::map<std::string, Matrix> Evaluate(const pb::ModelProto& m,
                                       const Matrix& x) {
  std::map<std::string, Matrix> v;
  v[m.graph().input(0).name()] = x;
  auto value = [&](const std::string& name) { return v.at(name); };
  for (const auto& n : m.graph().node()) {
    Matrix out;
    const std::string& op = n.op_type();
    if (op == "LayerNormalization") {
      const std::vector<float> g = Constant(m, n.input(1));
      const std::vector<float> b = n.input_size() > 2
                                       ? Constant(m, n.input(2))
                                       : std::vector<float>{0.f};
      for (const auto& row : value(n.input(0))) {
        double mean = 0, var = 0;
        for (double a : row) mean += a / row.size();
        for (double a : row) var += (a - mean) * (a - mean) / row.size();
        std::vector<double> r(row.size());
        for (size_t j = 0; j < row.size(); ++j) {
          r[j] = (row[j] - mean) / std::sqrt(var + 1e-5) * At(g, j) + At(b, j);
        }
        out.push_back(r);
      }
    } else if (op == "Add" && !IsConstant(m, n.input(0)) &&
               !IsConstant(m, n.input(1))) {
      out = value(n.input(0));
      const Matrix b = value(n.input(1));
      for (size_t i = 0; i < out.size(); ++i) {
        for (size_t j = 0; j < out[i].size(); ++j) out[i][j] += b[i][j];
      }
    } else if (op == "Mul" || op == "Add") {
      const int c = IsConstant(m, n.input(1)) ? 1 : 0;
      const std::vector<float> k = Constant(m, n.input(c));
      for (auto row : value(n.input(1 - c))) {
        for (size_t j = 0; j < row.size(); ++j) {
          row[j] = op == "Mul" ? row[j] * At(k, j) : row[j] + At(k, j);
        }
        out.push_back(row);
      }
    } else if (op == "MatMul" || op == "Gemm") {
      const auto& t = m.graph().initializer();
      std::vector<int64_t> d;
      for (const auto& init : t) {
        if (init.name() == n.input(1)) d = Dims(init);
      }
      const std::vector<float> w = Constant(m, n.input(1));
      bool trans = false;
      for (const auto& a : n.attribute()) {
        if (a.name() == "transB") trans = a.i() != 0;
      }
      const int64_t cols = trans ? d[0] : d[1];
      for (const auto& row : value(n.input(0))) {
        std::vector<double> r(cols, 0.0);
        for (int64_t o = 0; o < cols; ++o) {
          for (size_t k = 0; k < row.size(); ++k) {
            r[o] += row[k] * (trans ? w[o * d[1] + k] : w[k * d[1] + o]);
          }
        }
        out.push_back(r);
      }
    } else {
      ADD_FAILURE() << "the test evaluator has no " << op;
    }
    v[n.output(0)] = out;
  }
  std::map<std::string, Matrix> outputs;
  for (const auto& o : m.graph().output()) outputs[o.name()] = v.at(o.name());
  return outputs;
}

Matrix RandomRows(int rows, int k, std::mt19937* gen,
                  const std::vector<int>& outliers = {}, float factor = 1.f) {
  Matrix x(rows, std::vector<double>(k));
  std::normal_distribution<double> d(0.0, 1.0);
  for (auto& r : x) {
    for (int j = 0; j < k; ++j) r[j] = d(*gen);
    for (int j : outliers) r[j] *= factor;
  }
  return x;
}

double MaxAbsDiff(const Matrix& a, const Matrix& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t j = 0; j < a[i].size(); ++j) {
      m = std::max(m, std::fabs(a[i][j] - b[i][j]));
    }
  }
  return m;
}

// x [rows, 8] -> LayerNormalization(gamma, beta) -> h -> MatMul q, k and
// Gemm v (transB = 1) -> three outputs.
GraphBuilder Attention(std::mt19937* gen, bool residual = false) {
  GraphBuilder g(17);
  g.Input("x", {16, 8}).Output("q", {16, 6}).Output("k", {16, 6})
      .Output("v", {16, 5});
  std::vector<float> gamma = Random(8, gen);
  gamma[2] *= 30.f;  // an outlier channel, as trained transformers have
  g.Initializer("gamma", {8}, gamma);
  g.Initializer("beta", {8}, Random(8, gen));
  g.Initializer("wq", {8, 6}, Random(48, gen));
  g.Initializer("wk", {8, 6}, Random(48, gen));
  g.Initializer("wv", {5, 8}, Random(40, gen));
  g.Node("LayerNormalization", {"x", "gamma", "beta"}, {"h"}, "ln");
  g.Node("MatMul", {"h", "wq"}, {"q"}, "mq");
  g.Node("MatMul", {"h", "wk"}, {"k"}, "mk");
  GraphBuilder::IntAttr(g.Node("Gemm", {"h", "wv"}, {"v"}, "gv"), "transB", 1);
  if (residual) {
    g.Output("r", {16, 8});
    g.Node("Add", {"h", "x"}, {"r"}, "residual");
  }
  return g;
}

std::vector<float> Factors(int k, std::mt19937* gen) {
  std::uniform_real_distribution<float> d(0.2f, 5.f);
  std::vector<float> s(k);
  for (float& v : s) v = d(*gen);
  return s;
}

TEST(SmoothQuant, QkvShareOneGroupAndKeepTheirFunction) {
  std::mt19937 gen(1);
  const pb::ModelProto before = Attention(&gen).Build();
  const SmoothGroups found = FindSmoothGroups(before, false);
  ASSERT_EQ(found.groups.size(), 1u);
  const SmoothGroup& group = found.groups[0];
  EXPECT_EQ(group.activation, "h");
  EXPECT_EQ(group.nodes, (std::vector<std::string>{"mq", "mk", "gv"}));
  EXPECT_EQ(group.channels, 8);
  EXPECT_EQ(group.absorb, "LayerNormalization");
  pb::ModelProto after = before;
  const std::vector<float> s = Factors(8, &gen);
  ApplySmoothing(after, found.groups, {s});
  const Matrix x = RandomRows(16, 8, &gen);
  const auto want = Evaluate(before, x), got = Evaluate(after, x);
  for (const auto& [name, y] : want) {
    EXPECT_LT(MaxAbsDiff(y, got.at(name)), 1e-4) << name;
  }
  // And the factors went where they should: W's input channel j times s_j.
  const std::vector<float> wq = Constant(before, "wq");
  const std::vector<float> wq2 = Constant(after, "wq");
  for (int j = 0; j < 8; ++j) {
    EXPECT_FLOAT_EQ(wq2[j * 6 + 3], wq[j * 6 + 3] * s[j]);
  }
  EXPECT_EQ(after.graph().node_size(), before.graph().node_size());
}

TEST(SmoothQuant, DecomposedLayerNormAndGeluConstantsAbsorb) {
  // x -> Mul(gamma) -> Add(beta) -> MatMul; x -> Mul(0.5 scalar) -> MatMul.
  std::mt19937 gen(2);
  GraphBuilder g;
  g.Input("x", {16, 4}).Output("y", {16, 3}).Output("z", {16, 2});
  g.Initializer("gamma", {4}, Random(4, &gen));
  g.Initializer("beta", {1, 4}, Random(4, &gen));
  g.Initializer("half", {}, {0.5f});
  g.Initializer("w1", {4, 3}, Random(12, &gen));
  g.Initializer("w2", {4, 2}, Random(8, &gen));
  g.Node("Mul", {"x", "gamma"}, {"a"}, "mul_gamma");
  g.Node("Add", {"beta", "a"}, {"b"}, "add_beta");
  g.Node("MatMul", {"b", "w1"}, {"y"}, "m1");
  g.Node("Mul", {"x", "half"}, {"c"}, "mul_half");
  g.Node("MatMul", {"c", "w2"}, {"z"}, "m2");
  const pb::ModelProto before = g.Build();
  const SmoothGroups found = FindSmoothGroups(before, false);
  ASSERT_EQ(found.groups.size(), 2u);
  EXPECT_EQ(found.groups[0].absorbers.size(), 2u);  // beta and gamma
  EXPECT_EQ(found.groups[1].absorbers.size(), 1u);
  pb::ModelProto after = before;
  ApplySmoothing(after, found.groups, {Factors(4, &gen), Factors(4, &gen)});
  const Matrix x = RandomRows(16, 4, &gen);
  const auto want = Evaluate(before, x), got = Evaluate(after, x);
  for (const auto& [name, y] : want) {
    EXPECT_LT(MaxAbsDiff(y, got.at(name)), 1e-4) << name;
  }
  // The replaced constants are gone; nothing else reads them.
  EXPECT_FALSE(IsConstant(after, "gamma"));
  EXPECT_FALSE(IsConstant(after, "half"));
}

TEST(SmoothQuant, AnActivationAlsoReadElsewhereIsSkippedOrGetsAMul) {
  std::mt19937 gen(3);
  const pb::ModelProto before = Attention(&gen, /*residual=*/true).Build();
  const SmoothGroups skipped = FindSmoothGroups(before, false);
  EXPECT_TRUE(skipped.groups.empty());
  ASSERT_EQ(skipped.skipped.size(), 1u);
  EXPECT_EQ(skipped.skipped[0].first, "h");
  EXPECT_NE(skipped.skipped[0].second.find("'residual'"), std::string::npos);

  const SmoothGroups found = FindSmoothGroups(before, true);
  ASSERT_EQ(found.groups.size(), 1u);
  EXPECT_EQ(found.groups[0].absorb, "inserted Mul");
  pb::ModelProto after = before;
  ApplySmoothing(after, found.groups, {Factors(8, &gen)});
  EXPECT_EQ(after.graph().node_size(), before.graph().node_size() + 1);
  // The inserted Mul comes before its readers (the evaluator runs in
  // order), and the residual still reads the unscaled h.
  const Matrix x = RandomRows(16, 8, &gen);
  const auto want = Evaluate(before, x), got = Evaluate(after, x);
  for (const auto& [name, y] : want) {
    EXPECT_LT(MaxAbsDiff(y, got.at(name)), 1e-4) << name;
  }
}

// ---- the search, against a brute force written here

double FakeQuantError(const Matrix& x,
                      const std::vector<std::vector<float>>& ws,
                      const std::vector<int>& cols,
                      const std::vector<double>& s, double qmax = 127,
                      bool per_channel = true) {
  const size_t k = s.size();
  double lo = 0, hi = 0;
  for (const auto& r : x) {
    for (size_t j = 0; j < k; ++j) {
      lo = std::min(lo, r[j] / s[j]);
      hi = std::max(hi, r[j] / s[j]);
    }
  }
  const double scale = (hi - lo) / 255.0;
  const double zp = std::nearbyint(-lo / scale);
  double num = 0, den = 0;
  for (size_t w = 0; w < ws.size(); ++w) {
    const int n = cols[w];
    std::vector<double> wscale(n, 0.0);
    for (size_t j = 0; j < k; ++j) {
      for (int o = 0; o < n; ++o) {
        const double v = std::fabs(ws[w][j * n + o] * s[j]) / qmax;
        wscale[o] = std::max(wscale[o], v);
      }
    }
    if (!per_channel) {
      const double m = *std::max_element(wscale.begin(), wscale.end());
      std::fill(wscale.begin(), wscale.end(), m);
    }
    for (const auto& r : x) {
      for (int o = 0; o < n; ++o) {
        double y = 0, yq = 0;
        for (size_t j = 0; j < k; ++j) {
          const double q = std::clamp(std::nearbyint(r[j] / s[j] / scale) + zp,
                                      0.0, 255.0);
          const double wv = ws[w][j * n + o] * s[j];
          y += r[j] * ws[w][j * n + o];
          yq += (q - zp) * scale * std::nearbyint(wv / wscale[o]) * wscale[o];
        }
        num += (yq - y) * (yq - y);
        den += y * y;
      }
    }
  }
  return num / den;
}

struct Layer {
  Matrix x;
  std::vector<float> flat;  // x row-major
  std::vector<std::vector<float>> ws;
  std::vector<int> cols;
  ActivationSample sample() const {
    ActivationSample a;
    a.rows = flat.data();
    a.count = static_cast<int64_t>(x.size());
    a.channels = static_cast<int64_t>(x[0].size());
    a.min.assign(a.channels, 0.f);
    a.max.assign(a.channels, 0.f);
    AccumulateChannelRange(flat.data(), a.count, a.channels, &a.min, &a.max);
    return a;
  }
  std::vector<WeightView> views() const {
    std::vector<WeightView> v;
    for (size_t i = 0; i < ws.size(); ++i) v.push_back({ws[i].data(), cols[i]});
    return v;
  }
};

Layer OutlierLayer(std::mt19937* gen, float factor) {
  Layer l;
  l.x = RandomRows(64, 16, gen, {3, 11}, factor);
  for (const auto& r : l.x) {
    for (double v : r) l.flat.push_back(static_cast<float>(v));
  }
  l.ws = {Random(16 * 12, gen, 0.1f), Random(16 * 7, gen, 0.1f)};
  l.cols = {12, 7};
  return l;
}

std::vector<double> BruteScales(const Layer& l, double alpha) {
  const size_t k = l.x[0].size();
  std::vector<double> s(k);
  for (size_t j = 0; j < k; ++j) {
    double xm = 0, wm = 0;
    for (const auto& r : l.x) xm = std::max(xm, std::fabs(r[j]));
    for (size_t w = 0; w < l.ws.size(); ++w) {
      for (int o = 0; o < l.cols[w]; ++o) {
        const double v = l.ws[w][j * l.cols[w] + o];
        wm = std::max(wm, std::fabs(v));
      }
    }
    s[j] = std::pow(xm, alpha) / std::pow(wm, 1 - alpha);
  }
  return s;
}

TEST(SmoothQuantSearch, PicksTheAlphaABruteForceFinds) {
  std::mt19937 gen(4);
  const Layer l = OutlierLayer(&gen, 20.f);
  std::vector<double> grid;
  for (int i = 0; i <= 10; ++i) grid.push_back(i / 10.0);
  const AlphaSearch r = SearchAlpha(l.sample(), l.views(), grid);
  double best = 1e300, best_alpha = -1;
  ASSERT_EQ(r.errors.size(), grid.size());
  for (size_t i = 0; i < grid.size(); ++i) {
    const double e = FakeQuantError(l.x, l.ws, l.cols, BruteScales(l, grid[i]));
    EXPECT_NEAR(r.errors[i], e, 1e-2 * e + 1e-9) << "alpha " << grid[i];
    if (e < best) {
      best = e;
      best_alpha = grid[i];
    }
  }
  EXPECT_DOUBLE_EQ(r.alpha, best_alpha);
  EXPECT_NEAR(r.error_after, best, 1e-3 * best);
  const double plain =
      FakeQuantError(l.x, l.ws, l.cols, std::vector<double>(16, 1.0));
  EXPECT_NEAR(r.error_before, plain, 1e-3 * plain);
}

TEST(SmoothQuantSearch, EmulatesInt4AndPerTensorWeightsAsAsked) {
  std::mt19937 gen(8);
  const Layer l = OutlierLayer(&gen, 20.f);
  for (const bool per_channel : {true, false}) {
    const WeightEmulation e{7, per_channel};
    const AlphaSearch r =
        SearchAlpha(l.sample(), l.views(), {0.0, 0.5, 1.0}, e);
    for (size_t i = 0; i < r.grid.size(); ++i) {
      const double want = FakeQuantError(
          l.x, l.ws, l.cols, BruteScales(l, r.grid[i]), 7, per_channel);
      EXPECT_NEAR(r.errors[i], want, 1e-2 * want) << per_channel << r.grid[i];
    }
  }
}

TEST(SmoothQuantSearch, QuantizedErrorDropsWithOutlierChannels) {
  std::mt19937 gen(5);
  const Layer l = OutlierLayer(&gen, 40.f);
  const AlphaSearch r = SearchAlpha(l.sample(), l.views(), {0.5});
  // Two channels 40x the rest take most of a per-tensor uint8 range; with
  // the factors the error falls several-fold.
  EXPECT_LT(r.error_after, 0.25 * r.error_before);
  EXPECT_EQ(r.scales.size(), 16u);
}

TEST(SmoothQuantSearch, RejectsBadArguments) {
  std::mt19937 gen(6);
  const Layer l = OutlierLayer(&gen, 1.f);
  for (double alpha : {-0.1, 1.5, std::nan("")}) {
    try {
      SearchAlpha(l.sample(), l.views(), {alpha});
      ADD_FAILURE() << "alpha " << alpha << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    }
  }
  try {
    SearchAlpha(l.sample(), l.views(), {});
    ADD_FAILURE() << "empty grid accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  }
}

TEST(SmoothQuant, OneAlphaPerModelMinimisesTheSummedError) {
  // Two groups (b: the decomposed LayerNorm's output, c: a scaled x), their
  // activations computed by the evaluator, the errors by the brute force.
  std::mt19937 gen(9);
  GraphBuilder g;
  g.Input("x", {64, 16}).Output("y", {64, 12}).Output("z", {64, 7});
  std::vector<float> gamma = Random(16, &gen);
  gamma[3] *= 25.f;
  g.Initializer("gamma", {16}, gamma);
  g.Initializer("beta", {16}, Random(16, &gen));
  g.Initializer("half", {16}, Random(16, &gen));
  g.Initializer("w1", {16, 12}, Random(16 * 12, &gen, 0.1f));
  g.Initializer("w2", {16, 7}, Random(16 * 7, &gen, 0.1f));
  g.Node("Mul", {"x", "gamma"}, {"a"}, "mul_gamma");
  g.Node("Add", {"a", "beta"}, {"b"}, "add_beta");
  g.Node("MatMul", {"b", "w1"}, {"y"}, "m1");
  g.Node("Mul", {"x", "half"}, {"c"}, "mul_half");
  g.Node("MatMul", {"c", "w2"}, {"z"}, "m2");
  g.Output("b", {64, 16}).Output("c", {64, 16});
  pb::ModelProto m = g.Build();
  const auto acts = Evaluate(m, RandomRows(64, 16, &gen, {11}, 10.f));
  std::vector<Layer> layers(2);
  std::map<std::string, ActivationSample> stats;
  const char* names[] = {"b", "c"};
  const char* weights[] = {"w1", "w2"};
  const int cols[] = {12, 7};
  for (int i = 0; i < 2; ++i) {
    layers[i].x = acts.at(names[i]);
    for (const auto& r : layers[i].x) {
      for (double v : r) layers[i].flat.push_back(static_cast<float>(v));
    }
    layers[i].ws = {Constant(m, weights[i])};
    layers[i].cols = {cols[i]};
  }
  for (int i = 0; i < 2; ++i) stats[names[i]] = layers[i].sample();
  // b and c are graph outputs here: drop them so that the groups can fold.
  m.mutable_graph()->mutable_output()->DeleteSubrange(2, 2);
  const std::vector<double> grid = {0.0, 0.2, 0.4, 0.6, 0.8, 1.0};
  pb::ModelProto per_group = m;
  const SmoothResult g2 = SmoothQuant(per_group, false, stats, grid, false);
  ASSERT_EQ(g2.records.size(), 2u);
  // Per group the two choose differently, so one alpha is a real choice.
  EXPECT_NE(g2.records[0].search.alpha, g2.records[1].search.alpha);
  const SmoothResult r =
      SmoothQuant(m, false, stats, grid, false, {}, AlphaScope::kModel);
  ASSERT_EQ(r.records.size(), 2u);
  double best = 1e300, best_alpha = -1;
  for (double alpha : grid) {
    double sum = 0;
    for (const Layer& l : layers) {
      sum += FakeQuantError(l.x, l.ws, l.cols, BruteScales(l, alpha));
    }
    if (sum < best) {
      best = sum;
      best_alpha = alpha;
    }
  }
  for (const SmoothRecord& rec : r.records) {
    EXPECT_DOUBLE_EQ(rec.search.alpha, best_alpha);
    EXPECT_TRUE(rec.applied);
  }
}

TEST(SmoothQuant, MissingStatisticsNameTheActivation) {
  std::mt19937 gen(7);
  pb::ModelProto m = Attention(&gen).Build();
  try {
    SmoothQuant(m, false, {}, {0.5}, false);
    ADD_FAILURE() << "no statistics accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'h'"), std::string::npos);
  }
}

}  // namespace
}  // namespace onnxquant
