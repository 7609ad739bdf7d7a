#include "onnxquant/smooth_quant.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/tensor_util.h"

namespace onnxquant {
namespace {

constexpr int kMaxChainDepth = 8;

// The float32 initializer `name` (no graph input), or nullptr.
const pb::TensorProto* FloatConstant(const GraphIndex& index,
                                     const std::string& name) {
  const pb::TensorProto* t = index.Initializer(name);
  if (t == nullptr || index.IsGraphInput(name) ||
      t->data_type() != pb::TensorProto::FLOAT) {
    return nullptr;
  }
  return t;
}

// Whether `t` holds one value, or K values along its last axis only.
bool PerChannelOrScalar(const pb::TensorProto& t, int64_t k) {
  const std::vector<int64_t> d = Dims(t);
  const int64_t n = NumElements(d);
  return n == 1 || (n == k && !d.empty() && d.back() == k);
}

// The weight dims of a MatMul/Gemm that SmoothQuant can rescale (rank-2
// float32 constant B; Gemm with transA = 0), or an empty vector.
std::vector<int64_t> SmoothableWeight(const GraphIndex& index,
                                      const pb::NodeProto& node) {
  const bool matmul = IsOnnxOp(node, "MatMul");
  const bool gemm = IsOnnxOp(node, "Gemm");
  if ((!matmul && !gemm) || node.input_size() < 2) return {};
  if (gemm && IntAttribute(node, "transA", 0) != 0) return {};
  const pb::TensorProto* w = FloatConstant(index, node.input(1));
  if (w == nullptr || node.input(0) == node.input(1)) return {};
  std::vector<int64_t> d = Dims(*w);
  if (d.size() != 2) return {};
  return d;
}

int64_t InputChannels(const pb::NodeProto& node,
                      const std::vector<int64_t>& w) {
  return IsOnnxOp(node, "Gemm") && IntAttribute(node, "transB", 0) ? w[1]
                                                                    : w[0];
}

// Where X / s can go, walking up from X's producer; "" and the absorbers
// on success, else the reason.
std::string FindAbsorbers(const GraphIndex& index, const std::string& x,
                          int64_t k,
                          std::vector<std::pair<std::string, int>>* out,
                          std::string* kind) {
  const pb::GraphProto& g = index.graph();
  std::string tensor = x;
  for (int depth = 0; depth < kMaxChainDepth; ++depth) {
    const int p = index.Producer(tensor);
    if (p < 0) return "'" + tensor + "' is a graph input";
    const pb::NodeProto& n = g.node(p);
    const std::string where = n.op_type() + " node '" + n.name() + "'";
    if (IsOnnxOp(n, "LayerNormalization")) {
      if (IntAttribute(n, "axis", -1) != -1) {
        return where + " normalises over an axis other than -1";
      }
      for (int slot = 1; slot < std::min(n.input_size(), 3); ++slot) {
        if (n.input(slot).empty()) continue;
        const pb::TensorProto* c = FloatConstant(index, n.input(slot));
        if (c == nullptr || !PerChannelOrScalar(*c, k)) {
          return where + " has a scale or bias that is not a per-channel "
                         "float32 constant";
        }
        out->emplace_back(n.name(), slot);
      }
      if (n.input_size() < 2 || n.input(1).empty()) {
        return where + " has no scale input";
      }
      *kind = "LayerNormalization";
      return "";
    }
    const bool mul = IsOnnxOp(n, "Mul"), add = IsOnnxOp(n, "Add");
    if ((mul || add) && n.input_size() == 2) {
      int slot = -1;
      for (int i = 0; i < 2; ++i) {
        if (FloatConstant(index, n.input(i)) != nullptr) slot = i;
      }
      const bool both = slot >= 0 &&
                        FloatConstant(index, n.input(1 - slot)) != nullptr;
      if (slot >= 0 && !both &&
          PerChannelOrScalar(*FloatConstant(index, n.input(slot)), k)) {
        out->emplace_back(n.name(), slot);
        if (mul) {
          *kind = "constants";
          return "";
        }
        tensor = n.input(1 - slot);  // Add: its other input must absorb too
        if (index.Consumers(tensor).size() != 1 ||
            index.IsGraphOutput(tensor) || index.ReadBySubgraph(tensor)) {
          return "'" + tensor + "' (above " + where +
                 ") is read by other nodes too";
        }
        continue;
      }
    }
    return "'" + tensor + "' is produced by " + where +
           ", which cannot absorb a per-channel factor";
  }
  return "no LayerNormalization or constant Mul within " +
         std::to_string(kMaxChainDepth) + " nodes above '" + x + "'";
}

// Makes node `n`'s input `slot` a constant of its own, scaled by 1 / s
// along its last axis (a scalar becomes a vector of s.size() values).
void DivideConstant(GraphIndex* index, NameAllocator* names, int n, int slot,
                    const std::vector<float>& s,
                    std::unordered_set<std::string>* replaced) {
  const pb::NodeProto& node = index->graph().node(n);
  const std::string name = node.input(slot);
  const pb::TensorProto* t = index->Initializer(name);
  if (t == nullptr) {
    throw ModelError("SmoothQuant: input " + std::to_string(slot) +
                     " of node '" + node.name() + "' is no longer a constant.");
  }
  std::vector<int64_t> dims = Dims(*t);
  std::vector<float> v = ToFloats(*t);
  const int64_t k = static_cast<int64_t>(s.size());
  if (v.size() == 1 && k > 1) {
    v.assign(k, v[0]);
    dims = {k};
  }
  for (int64_t j = 0; j < k; ++j) v[j] /= s[j];
  const std::string fresh = names->Make(name + "_smoothed");
  replaced->insert(name);
  index->AddInitializer(FloatTensor(fresh, dims, v));
  index->SetInput(n, slot, fresh);
}

}  // namespace

SmoothGroups FindSmoothGroups(const pb::ModelProto& model, bool insert_mul) {
  const pb::GraphProto& g = model.graph();
  GraphIndex index(g);
  SmoothGroups out;
  std::map<std::string, size_t> by_x;  // X -> position in `order`
  std::vector<SmoothGroup> order;
  for (int i = 0; i < g.node_size(); ++i) {
    const pb::NodeProto& n = g.node(i);
    const std::vector<int64_t> w = SmoothableWeight(index, n);
    if (w.empty()) continue;
    auto it = by_x.find(n.input(0));
    if (it == by_x.end()) {
      it = by_x.emplace(n.input(0), order.size()).first;
      order.push_back({});
      order.back().activation = n.input(0);
      order.back().channels = InputChannels(n, w);
    }
    SmoothGroup& group = order[it->second];
    if (InputChannels(n, w) != group.channels) {
      throw ModelError("SmoothQuant: node '" + n.name() + "' reads '" +
                       n.input(0) + "' with " +
                       std::to_string(InputChannels(n, w)) +
                       " input channels, another reader with " +
                       std::to_string(group.channels) + ".");
    }
    group.nodes.push_back(n.name());
  }
  for (SmoothGroup& group : order) {
    const std::string& x = group.activation;
    std::string reason;
    for (const std::string& name : group.nodes) {
      const int n = index.NodeNamed(name);
      if (index.Consumers(g.node(n).input(1)).size() != 1 ||
          index.IsGraphOutput(g.node(n).input(1))) {
        reason = "the weight of node '" + name + "' is read by other nodes";
      }
    }
    if (!reason.empty()) {
      out.skipped.emplace_back(x, reason);
      continue;
    }
    const int p = index.Producer(x);
    group.producer = p >= 0 ? g.node(p).name() : "";
    // Readers of X other than the group; Shape and Size read no values.
    int other = -1;
    for (int c : index.Consumers(x)) {
      const pb::NodeProto& r = g.node(c);
      if (IsOnnxOp(r, "Shape") || IsOnnxOp(r, "Size")) continue;
      if (std::find(group.nodes.begin(), group.nodes.end(), r.name()) ==
          group.nodes.end()) {
        other = c;
      }
    }
    if (other >= 0) {
      reason = "'" + x + "' is also read by " + g.node(other).op_type() +
               " node '" + g.node(other).name() + "'";
    } else if (index.IsGraphOutput(x) || index.ReadBySubgraph(x)) {
      reason = "'" + x + "' is a graph output or read by a subgraph";
    } else {
      reason = FindAbsorbers(index, x, group.channels, &group.absorbers,
                             &group.absorb);
    }
    if (reason.empty()) {
      out.groups.push_back(std::move(group));
    } else if (insert_mul) {
      group.absorbers.clear();
      group.absorb = "inserted Mul";
      out.groups.push_back(std::move(group));
    } else {
      out.skipped.emplace_back(x, reason);
    }
  }
  return out;
}

namespace {

// GroupWeights on an index of the model.
std::vector<std::vector<float>> WeightsOf(const GraphIndex& index,
                                          const SmoothGroup& group) {
  std::vector<std::vector<float>> out;
  for (const std::string& name : group.nodes) {
    const int n = index.NodeNamed(name);
    if (n < 0) throw ModelError("SmoothQuant: node '" + name + "' is gone.");
    const pb::NodeProto& node = index.graph().node(n);
    const std::vector<int64_t> d = SmoothableWeight(index, node);
    if (d.empty()) {
      throw ModelError("SmoothQuant: the weight of node '" + name +
                       "' is not a rank-2 float32 initializer.");
    }
    std::vector<float> w = ToFloats(*index.Initializer(node.input(1)));
    if (IsOnnxOp(node, "Gemm") && IntAttribute(node, "transB", 0)) {
      std::vector<float> t(w.size());  // [N, K] -> [K, N]
      for (int64_t r = 0; r < d[0]; ++r) {
        for (int64_t c = 0; c < d[1]; ++c) t[c * d[0] + r] = w[r * d[1] + c];
      }
      w.swap(t);
    }
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace

std::vector<std::vector<float>> GroupWeights(const pb::ModelProto& model,
                                             const SmoothGroup& group) {
  const GraphIndex index(model.graph());
  return WeightsOf(index, group);
}

void ApplySmoothing(pb::ModelProto& model,
                    const std::vector<SmoothGroup>& groups,
                    const std::vector<std::vector<float>>& scales) {
  if (scales.size() != groups.size()) {
    throw InvalidArgument("SmoothQuant: one set of factors per group needed.");
  }
  pb::GraphProto* g = model.mutable_graph();
  std::unordered_map<std::string, pb::TensorProto*> inits;
  for (auto& t : *g->mutable_initializer()) inits.emplace(t.name(), &t);
  std::vector<size_t> inserts;  // groups that get a Mul
  std::unordered_set<std::string> replaced;  // constants copied, maybe unused
  {
    GraphIndex index(g);
    NameAllocator names(*g);
    for (size_t i = 0; i < groups.size(); ++i) {
      const SmoothGroup& group = groups[i];
      const std::vector<float>& s = scales[i];
      if (static_cast<int64_t>(s.size()) != group.channels ||
          !std::all_of(s.begin(), s.end(),
                       [](float v) { return v > 0.f && std::isfinite(v); })) {
        throw InvalidArgument("SmoothQuant: the factors for '" +
                              group.activation + "' must be " +
                              std::to_string(group.channels) +
                              " finite values > 0.");
      }
      for (const auto& [node, slot] : group.absorbers) {
        const int n = index.NodeNamed(node);
        if (n < 0) {
          throw ModelError("SmoothQuant: node '" + node + "' is gone.");
        }
        DivideConstant(&index, &names, n, slot, s, &replaced);
      }
      for (const std::string& name : group.nodes) {
        const int n = index.NodeNamed(name);
        if (n < 0) {
          throw ModelError("SmoothQuant: node '" + name + "' is gone.");
        }
        const pb::NodeProto& node = g->node(n);
        auto it = inits.find(node.input_size() > 1 ? node.input(1) : "");
        if (it == inits.end()) {
          throw ModelError("SmoothQuant: the weight of node '" + name +
                           "' is gone.");
        }
        pb::TensorProto* t = it->second;
        const std::vector<int64_t> d = Dims(*t);
        if (d.size() != 2) {
          throw ModelError("SmoothQuant: the weight of node '" + name +
                           "' is not of rank 2.");
        }
        std::vector<float> w = ToFloats(*t);
        const bool trans = IsOnnxOp(node, "Gemm") &&
                           IntAttribute(node, "transB", 0) != 0;
        for (int64_t r = 0; r < d[0]; ++r) {
          for (int64_t c = 0; c < d[1]; ++c) {
            w[r * d[1] + c] *= s[trans ? c : r];
          }
        }
        *t = FloatTensor(t->name(), d, w);
      }
      if (group.absorbers.empty()) inserts.push_back(i);
    }
  }
  RemoveUnusedInitializers(replaced, g);
  if (inserts.empty()) return;
  // Inserted Muls: X * (1 / s), each placed before its group's first node;
  // the node list is rebuilt once.
  NameAllocator names(*g);
  std::unordered_map<std::string, std::vector<pb::NodeProto>> before;
  std::unordered_map<std::string, std::pair<std::string, std::string>> rewire;
  for (const size_t i : inserts) {
    const SmoothGroup& group = groups[i];
    std::vector<float> inv(scales[i].size());
    for (size_t j = 0; j < inv.size(); ++j) inv[j] = 1.f / scales[i][j];
    const std::string c = names.Make(group.activation + "_smooth_factor");
    const std::string y = names.Make(group.activation + "_smoothed");
    *g->add_initializer() = FloatTensor(c, {group.channels}, inv);
    pb::NodeProto mul;
    mul.set_op_type("Mul");
    mul.set_name(names.Make(group.activation + "_smooth"));
    mul.add_input(group.activation);
    mul.add_input(c);
    mul.add_output(y);
    before[group.nodes[0]].push_back(std::move(mul));
    for (const std::string& n : group.nodes) rewire[n] = {group.activation, y};
  }
  google::protobuf::RepeatedPtrField<pb::NodeProto> nodes;
  nodes.Swap(g->mutable_node());
  for (pb::NodeProto& node : nodes) {
    auto b = before.find(node.name());
    if (b != before.end()) {
      for (pb::NodeProto& mul : b->second) *g->add_node() = std::move(mul);
    }
    auto r = rewire.find(node.name());
    if (r != rewire.end() && node.input(0) == r->second.first) {
      node.set_input(0, r->second.second);
    }
    *g->add_node() = std::move(node);
  }
}

namespace {

struct Searched {
  SmoothRecord record;
  const ActivationSample* x = nullptr;
  std::vector<float> weight_abs_max;  // per input channel, over the group
};

// SearchAlpha for every group, on a read-only index of `model`.
std::vector<Searched> SearchGroups(
    const pb::ModelProto& model, const std::vector<SmoothGroup>& groups,
    const std::map<std::string, ActivationSample>& stats,
    const std::vector<double>& grid, const WeightEmulation& emulation) {
  const GraphIndex index(model.graph());
  std::vector<Searched> out;
  for (const SmoothGroup& group : groups) {
    auto it = stats.find(group.activation);
    if (it == stats.end() || it->second.channels != group.channels) {
      throw InvalidArgument(
          "SmoothQuant: no statistics with " + std::to_string(group.channels) +
          " channels for '" + group.activation + "' (read by node '" +
          group.nodes[0] +
          "'); gather them with the model the groups came from.");
    }
    const std::vector<std::vector<float>> w = WeightsOf(index, group);
    std::vector<WeightView> views;
    for (const auto& v : w) {
      views.push_back(
          {v.data(), static_cast<int64_t>(v.size()) / group.channels});
    }
    Searched s;
    s.record.group = group;
    s.record.search = SearchAlpha(it->second, views, grid, emulation);
    s.x = &it->second;
    s.weight_abs_max = WeightChannelAbsMax(views, group.channels);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

SmoothResult SmoothQuant(pb::ModelProto& model, bool insert_mul,
                         const std::map<std::string, ActivationSample>& stats,
                         const std::vector<double>& grid, bool only_if_better,
                         const WeightEmulation& emulation, AlphaScope scope) {
  SmoothGroups found = FindSmoothGroups(model, insert_mul);
  std::vector<Searched> searched =
      SearchGroups(model, found.groups, stats, grid, emulation);
  if (scope == AlphaScope::kModel && !searched.empty()) {
    // One alpha for all: the grid value with the lowest summed error.
    std::vector<double> total(grid.size(), 0.0);
    double before = 0.0;
    for (const Searched& s : searched) {
      for (size_t i = 0; i < grid.size(); ++i) {
        total[i] += s.record.search.errors[i];
      }
      before += s.record.search.error_before;
    }
    const size_t best =
        std::min_element(total.begin(), total.end()) - total.begin();
    const bool better = total[best] < before;
    for (Searched& s : searched) {
      AlphaSearch& r = s.record.search;
      r.alpha = grid[best];
      r.error_after = r.errors[best];
      r.scales = SmoothingScales(s.x->min, s.x->max, s.weight_abs_max,
                                 grid[best]);
      s.record.applied = !only_if_better || better;
    }
  } else {
    for (Searched& s : searched) {
      s.record.applied = !only_if_better || s.record.search.error_after <
                                                s.record.search.error_before;
    }
  }
  SmoothResult out;
  out.skipped = std::move(found.skipped);
  std::vector<SmoothGroup> kept;
  std::vector<std::vector<float>> scales;
  for (Searched& s : searched) {
    if (s.record.applied) {
      kept.push_back(s.record.group);
      scales.push_back(s.record.search.scales);
    }
    out.records.push_back(std::move(s.record));
  }
  ApplySmoothing(model, kept, scales);
  return out;
}

}  // namespace onnxquant
