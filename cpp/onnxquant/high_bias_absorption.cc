#include "onnxquant/high_bias_absorption.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "onnxquant/conv_chain.h"
#include "onnxquant/error.h"
#include "onnxquant/graph_edit.h"
#include "onnxquant/graph_index.h"
#include "onnxquant/tensor_util.h"
#include "onnxquant/validate_model.h"

namespace onnxquant {
namespace {

// A Conv with its own float32 weight and bias.
bool ConvWithOwnBias(const GraphIndex& index, const pb::NodeProto& node) {
  return IsOnnxOp(node, "Conv") &&
         OwnFloatConstant(index, node, 1) != nullptr &&
         OwnFloatConstant(index, node, 2) != nullptr;
}

// Identity on positive values, so act(h) = act(h - a) + a for h >= a >= 0.
bool PassesPositives(const pb::NodeProto& node) {
  return IsOnnxOp(node, "Relu") || IsOnnxOp(node, "LeakyRelu") ||
         IsOnnxOp(node, "PRelu");
}

struct Chain {
  int first = -1, activation = -1, second = -1;
};

std::vector<Chain> FindChains(const GraphIndex& index) {
  const pb::GraphProto& g = index.graph();
  std::vector<Chain> chains;
  for (int i = 0; i < g.node_size(); ++i) {
    const pb::NodeProto& first = g.node(i);
    if (!ConvWithOwnBias(index, first) || first.output_size() < 1) continue;
    Chain c;
    c.first = i;
    int next = SoleReader(index, first.output(0));
    if (next < 0) continue;
    std::string feed = first.output(0);
    if (!IsOnnxOp(g.node(next), "Conv")) {
      const pb::NodeProto& mid = g.node(next);
      if (!PassesPositives(mid) || mid.input(0) != feed ||
          mid.output_size() != 1) {
        continue;
      }
      c.activation = next;
      feed = mid.output(0);
      next = SoleReader(index, feed);
      if (next < 0) continue;
    }
    const pb::NodeProto& second = g.node(next);
    if (!ConvWithOwnBias(index, second) || second.input(0) != feed) continue;
    c.second = next;
    chains.push_back(c);
  }
  return chains;
}

}  // namespace

std::vector<AbsorptionCandidate> FindHighBiasCandidates(
    const pb::ModelProto& model) {
  ValidateModel(model);
  GraphIndex index(model.graph());
  std::vector<AbsorptionCandidate> out;
  for (const Chain& c : FindChains(index)) {
    const pb::GraphProto& g = model.graph();
    out.push_back({g.node(c.first).name(), g.node(c.first).output(0),
                   c.activation >= 0 ? g.node(c.activation).name() : "",
                   g.node(c.second).name()});
  }
  return out;
}

AbsorptionReport AbsorbHighBias(
    pb::ModelProto& model,
    const std::map<std::string, std::vector<float>>& amounts) {
  for (const auto& [name, a] : amounts) {
    for (float v : a) {
      if (!std::isfinite(v) || v < 0.f) {
        throw InvalidArgument("High-bias absorption: the amounts for Conv '" +
                              name +
                              "' must be finite and >= 0; pass max(0, x) "
                              "of the measured bound.");
      }
    }
  }
  ValidateModel(model);
  AbsorptionReport report;
  pb::GraphProto* graph = model.mutable_graph();
  std::map<std::string, Chain> by_first;
  std::map<std::string, std::vector<float>> updated;  // bias name -> values
  std::map<std::string, std::vector<int64_t>> bias_dims;
  {
    GraphIndex index(*graph);
    for (const Chain& c : FindChains(index)) {
      by_first[graph->node(c.first).name()] = c;
    }
    for (const auto& [name, a] : amounts) {
      auto it = by_first.find(name);
      if (it == by_first.end()) {
        report.skipped.emplace_back(
            name, "not the first Conv of a Conv -> Relu/LeakyRelu/PRelu -> "
                  "Conv chain with own weights and biases");
        continue;
      }
      const pb::NodeProto& a_node = graph->node(it->second.first);
      const pb::NodeProto& b_node = graph->node(it->second.second);
      const pb::TensorProto* w2t = index.Initializer(b_node.input(1));
      const pb::TensorProto* b1t = index.Initializer(a_node.input(2));
      const pb::TensorProto* b2t = index.Initializer(b_node.input(2));
      const std::vector<int64_t> d2 = Dims(*w2t);
      const std::vector<float> w2 = ToFloats(*w2t);
      // A Conv that ends one chain and starts the next has its bias changed
      // twice: start from the values already changed.
      auto current = [&](const std::string& bias, const pb::TensorProto& t) {
        auto found = updated.find(bias);
        return found != updated.end() ? found->second : ToFloats(t);
      };
      std::vector<float> b1 = current(a_node.input(2), *b1t);
      std::vector<float> b2 = current(b_node.input(2), *b2t);
      const int64_t group = IntAttribute(b_node, "group", 1);
      if (static_cast<int64_t>(a.size()) != static_cast<int64_t>(b1.size())) {
        throw InvalidArgument(
            "High-bias absorption: " + std::to_string(a.size()) +
            " amounts given for Conv '" + name + "', which has " +
            std::to_string(b1.size()) + " output channels; give one each.");
      }
      if (d2.size() < 3 || group < 1 || d2[0] % group != 0 ||
          d2[1] * group != static_cast<int64_t>(b1.size()) ||
          static_cast<int64_t>(b2.size()) != d2[0]) {
        report.skipped.emplace_back(
            name, "its channels do not match those of Conv '" +
                      b_node.name() + "'");
        continue;
      }
      const int64_t cpg = d2[1], mpg = d2[0] / group;
      const int64_t taps = static_cast<int64_t>(w2.size()) / (d2[0] * cpg);
      for (int64_t o = 0; o < d2[0]; ++o) {
        const int64_t k = o / mpg;
        double add = 0.0;
        for (int64_t j = 0; j < cpg; ++j) {
          const double amount = a[k * cpg + j];
          if (amount == 0.0) continue;
          for (int64_t s = 0; s < taps; ++s) {
            add += double{w2[(o * cpg + j) * taps + s]} * amount;
          }
        }
        b2[o] = static_cast<float>(b2[o] + add);
      }
      for (size_t c = 0; c < b1.size(); ++c) b1[c] -= a[c];
      updated[a_node.input(2)] = std::move(b1);
      updated[b_node.input(2)] = std::move(b2);
      bias_dims[a_node.input(2)] = Dims(*b1t);
      bias_dims[b_node.input(2)] = Dims(*b2t);
      report.pairs.push_back({name, b_node.name(), a});
    }
  }
  for (auto& t : *graph->mutable_initializer()) {
    auto it = updated.find(t.name());
    if (it == updated.end()) continue;
    t = FloatTensor(t.name(), bias_dims.at(t.name()), it->second);
  }
  return report;
}

}  // namespace onnxquant
