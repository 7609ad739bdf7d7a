#include "onnxquant/cross_layer_equalization.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <unordered_set>

#include "onnxquant/conv_chain.h"
#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/tensor_util.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

struct Weight {
  std::vector<int64_t> dims;
  std::vector<float> values;
};

// True for a Conv whose weight (and bias, if any) this pass may rescale.
bool Rescalable(const GraphIndex& index, const pb::NodeProto& node) {
  if (!IsOnnxOp(node, "Conv") || node.input_size() < 2) return false;
  if (OwnFloatConstant(index, node, 1) == nullptr) return false;
  const bool has_bias = node.input_size() > 2 && !node.input(2).empty();
  return !has_bias || OwnFloatConstant(index, node, 2) != nullptr;
}

// The lower bound of a Clip, when it is a known constant.
std::optional<float> ClipLowerBound(const GraphIndex& index,
                                    const pb::NodeProto& clip) {
  if (clip.input_size() > 1 && !clip.input(1).empty()) {
    const pb::TensorProto* t = index.Initializer(clip.input(1));
    if (t == nullptr || index.IsGraphInput(clip.input(1))) return std::nullopt;
    const std::vector<float> v = ToFloats(*t);
    if (v.size() != 1) return std::nullopt;
    return v[0];
  }
  if (const auto* a = FindAttribute(clip, "min")) return a->f();
  return std::nullopt;  // no lower bound
}

enum class Link { kHomogeneous, kClip, kOther };

Link Classify(const pb::NodeProto& node) {
  if (IsOnnxOp(node, "Relu") || IsOnnxOp(node, "LeakyRelu") ||
      IsOnnxOp(node, "PRelu")) {
    return Link::kHomogeneous;
  }
  if (IsOnnxOp(node, "Clip")) return Link::kClip;
  return Link::kOther;
}

struct PairMatch {
  int first = -1, second = -1, activation = -1;
  bool replace_clip = false;
};

std::vector<PairMatch> FindPairs(const GraphIndex& index,
                                 const EqualizationOptions& options,
                                 EqualizationReport* report) {
  const pb::GraphProto& g = index.graph();
  std::vector<PairMatch> pairs;
  for (int i = 0; i < g.node_size(); ++i) {
    const pb::NodeProto& first = g.node(i);
    if (!Rescalable(index, first) || first.output_size() < 1) continue;
    PairMatch m;
    m.first = i;
    int next = SoleReader(index, first.output(0));
    if (next < 0) continue;
    const pb::NodeProto& mid = g.node(next);
    if (!IsOnnxOp(mid, "Conv")) {
      const Link link = Classify(mid);
      if (link == Link::kOther || mid.input(0) != first.output(0)) continue;
      if (link == Link::kClip) {
        const std::optional<float> low = ClipLowerBound(index, mid);
        if (options.clip == ClipHandling::kStop || !low || *low != 0.f) {
          report->clips_stopped.push_back(mid.name());
          continue;
        }
        m.replace_clip = true;
      }
      m.activation = next;
      next = mid.output_size() == 1 ? SoleReader(index, mid.output(0)) : -1;
      if (next < 0) continue;
    }
    const pb::NodeProto& second = g.node(next);
    if (!Rescalable(index, second) ||
        second.input(0) != g.node(m.activation >= 0 ? m.activation : i)
                               .output(0)) {
      continue;
    }
    m.second = next;
    pairs.push_back(m);
  }
  return pairs;
}

// Per output channel of a Conv weight [M, C/g, ...]: max |w|.
std::vector<double> OutputRanges(const Weight& w) {
  const int64_t m = w.dims[0];
  const int64_t per = static_cast<int64_t>(w.values.size()) / m;
  std::vector<double> r(m, 0.0);
  for (int64_t c = 0; c < m; ++c) {
    for (int64_t k = 0; k < per; ++k) {
      r[c] = std::max(r[c], std::fabs(double{w.values[c * per + k]}));
    }
  }
  return r;
}

// Calls f(flat index) for every weight of input channel c of a Conv weight
// [M, C/g, ...] with `group` groups.
template <typename F>
void ForInputChannel(const Weight& w, int64_t group, int64_t c, F f) {
  const int64_t cpg = w.dims[1], mpg = w.dims[0] / group;
  const int64_t spatial =
      static_cast<int64_t>(w.values.size()) / (w.dims[0] * cpg);
  const int64_t k = c / cpg, j = c % cpg;
  for (int64_t o = k * mpg; o < (k + 1) * mpg; ++o) {
    const int64_t base = (o * cpg + j) * spatial;
    for (int64_t s = 0; s < spatial; ++s) f(base + s);
  }
}

double Spread(const std::vector<double>& ranges) {
  double lo = 0.0, hi = 0.0;
  for (double r : ranges) {
    if (!(r > 0.0)) continue;
    lo = lo == 0.0 ? r : std::min(lo, r);
    hi = std::max(hi, r);
  }
  return lo > 0.0 ? hi / lo : 1.0;
}

void CheckShapes(const pb::NodeProto& first, const Weight& w1,
                 const pb::NodeProto& second, const Weight& w2,
                 int64_t group2) {
  auto bad = [](const pb::NodeProto& n) {
    return ModelError("Cross-layer equalization: the weight of Conv '" +
                      n.name() +
                      "' does not fit its group attribute or rank; fix the "
                      "model or leave out cross-layer equalization.");
  };
  if (w1.dims.size() < 3 || w1.dims[0] < 1) throw bad(first);
  if (w2.dims.size() < 3 || group2 < 1 || w2.dims[0] < 1 ||
      w2.dims[0] % group2 != 0 || w2.dims[1] < 1) {
    throw bad(second);
  }
}

}  // namespace

EqualizationReport EqualizeCrossLayer(pb::ModelProto& model,
                                      const EqualizationOptions& options) {
  if (options.max_sweeps < 1 || !(options.tolerance >= 0.0) ||
      options.power_of_two_qmax < 0) {
    throw InvalidArgument(
        "cross-layer equalization needs max_sweeps >= 1, tolerance >= 0 and "
        "power_of_two_qmax >= 0");
  }
  ValidateModel(model);
  EqualizationReport report;
  pb::GraphProto* graph = model.mutable_graph();
  std::vector<PairMatch> pairs;
  std::map<std::string, Weight> weights;  // by initializer name
  {
    GraphIndex index(*graph);
    pairs = FindPairs(index, options, &report);
    for (const PairMatch& m : pairs) {
      for (int n : {m.first, m.second}) {
        const pb::NodeProto& node = graph->node(n);
        for (int slot = 1; slot < std::min(node.input_size(), 3); ++slot) {
          const std::string& name = node.input(slot);
          if (name.empty() || weights.count(name)) continue;
          const pb::TensorProto* t = index.Initializer(name);
          weights[name] = Weight{Dims(*t), ToFloats(*t)};
        }
      }
    }
  }
  // Drop the pairs whose channel counts disagree (e.g. a Conv reading a
  // Slice of the channels would not reach here, but be safe).
  std::vector<PairMatch> kept;
  for (const PairMatch& m : pairs) {
    const pb::NodeProto& a = graph->node(m.first);
    const pb::NodeProto& b = graph->node(m.second);
    const Weight& w1 = weights.at(a.input(1));
    const Weight& w2 = weights.at(b.input(1));
    const int64_t group2 = IntAttribute(b, "group", 1);
    CheckShapes(a, w1, b, w2, group2);
    if (w1.dims[0] != w2.dims[1] * group2) continue;
    if (a.input_size() > 2 && !a.input(2).empty() &&
        static_cast<int64_t>(weights.at(a.input(2)).values.size()) !=
            w1.dims[0]) {
      continue;
    }
    kept.push_back(m);
  }
  pairs = std::move(kept);
  for (const PairMatch& m : pairs) {
    EqualizedPair p;
    p.first = graph->node(m.first).name();
    p.second = graph->node(m.second).name();
    if (m.activation >= 0) p.activation = graph->node(m.activation).name();
    const Weight& w1 = weights.at(graph->node(m.first).input(1));
    p.scales.assign(w1.dims[0], 1.f);
    p.spread_before = Spread(OutputRanges(w1));
    report.pairs.push_back(std::move(p));
  }
  if (pairs.empty()) return report;
  report.converged = false;
  std::vector<std::vector<double>> total(pairs.size());
  for (size_t k = 0; k < pairs.size(); ++k) {
    total[k].assign(report.pairs[k].scales.size(), 1.0);
  }
  // Divides output channel c of the pair's first Conv by s, multiplies its
  // input channel c of the second.
  auto rescale = [&](size_t k, int64_t c, double s) {
    const pb::NodeProto& a = graph->node(pairs[k].first);
    const pb::NodeProto& b = graph->node(pairs[k].second);
    Weight& w1 = weights.at(a.input(1));
    Weight& w2 = weights.at(b.input(1));
    const int64_t per1 = static_cast<int64_t>(w1.values.size()) / w1.dims[0];
    for (int64_t i = 0; i < per1; ++i) {
      w1.values[c * per1 + i] = static_cast<float>(w1.values[c * per1 + i] / s);
    }
    if (a.input_size() > 2 && !a.input(2).empty()) {
      Weight& b1 = weights.at(a.input(2));
      b1.values[c] = static_cast<float>(b1.values[c] / s);
    }
    ForInputChannel(w2, IntAttribute(b, "group", 1), c, [&](int64_t i) {
      w2.values[i] = static_cast<float>(w2.values[i] * s);
    });
    total[k][c] *= s;
  };
  for (int sweep = 0; sweep < options.max_sweeps; ++sweep) {
    double worst = 0.0;
    for (size_t k = 0; k < pairs.size(); ++k) {
      const pb::NodeProto& a = graph->node(pairs[k].first);
      const pb::NodeProto& b = graph->node(pairs[k].second);
      const Weight& w1 = weights.at(a.input(1));
      const Weight& w2 = weights.at(b.input(1));
      const int64_t group2 = IntAttribute(b, "group", 1);
      const std::vector<double> r1 = OutputRanges(w1);
      for (int64_t c = 0; c < w1.dims[0]; ++c) {
        double r2 = 0.0;
        ForInputChannel(w2, group2, c, [&](int64_t i) {
          r2 = std::max(r2, std::fabs(double{w2.values[i]}));
        });
        if (!(r1[c] > 0.0) || !(r2 > 0.0)) continue;
        const double s = std::sqrt(r1[c] * r2) / r2;
        worst = std::max(worst, std::fabs(s - 1.0));
        rescale(k, c, s);
      }
    }
    report.sweeps = sweep + 1;
    if (worst <= options.tolerance) {
      report.converged = true;
      break;
    }
  }
  if (options.power_of_two_qmax > 0) {
    for (size_t k = 0; k < pairs.size(); ++k) {
      const Weight& w1 = weights.at(graph->node(pairs[k].first).input(1));
      double m = 0.0;
      for (double r : OutputRanges(w1)) m = std::max(m, r);
      if (!(m > 0.0)) continue;
      const double x = m / options.power_of_two_qmax;
      const double p = std::exp2(std::floor(std::log2(x)));
      const double s = x / p * (1.0 + 1e-6);  // in [1, 2)
      for (int64_t c = 0; c < w1.dims[0]; ++c) rescale(k, c, s);
    }
  }
  std::unordered_set<std::string> bounds;  // inputs of replaced Clips
  for (size_t k = 0; k < pairs.size(); ++k) {
    EqualizedPair& p = report.pairs[k];
    for (size_t c = 0; c < p.scales.size(); ++c) {
      p.scales[c] = static_cast<float>(total[k][c]);
    }
    p.spread_after =
        Spread(OutputRanges(weights.at(graph->node(pairs[k].first).input(1))));
    if (pairs[k].replace_clip) {
      pb::NodeProto* clip = graph->mutable_node(pairs[k].activation);
      const std::string x = clip->input(0);
      for (int j = 1; j < clip->input_size(); ++j) {
        bounds.insert(clip->input(j));
      }
      clip->set_op_type("Relu");
      clip->clear_input();
      clip->add_input(x);
      clip->clear_attribute();
      report.clips_replaced.push_back(clip->name());
    }
  }
  for (auto& t : *graph->mutable_initializer()) {
    auto it = weights.find(t.name());
    if (it == weights.end()) continue;
    t = FloatTensor(t.name(), it->second.dims, it->second.values);
  }
  bounds.erase("");
  RemoveUnusedInitializers(bounds, graph);
  return report;
}

}  // namespace onnxquant
