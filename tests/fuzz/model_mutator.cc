#include "model_mutator.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace onnxquant::fuzz {
namespace {

using Rng = std::mt19937_64;

size_t Pick(Rng& rng, size_t n) {  // REQUIRES: n > 0
  return std::uniform_int_distribution<size_t>(0, n - 1)(rng);
}

bool Coin(Rng& rng, int one_in) { return Pick(rng, one_in) == 0; }

// Integers that break size arithmetic: zero, negatives, powers of two around
// 32-bit and 64-bit limits, and small plausible values.
int64_t InterestingInt(Rng& rng) {
  static const int64_t kValues[] = {
      0, 1, 2, 3, 4, -1, -2, -4, 7, 16, 255, 256, 1024, 65535,
      (int64_t{1} << 31) - 1, int64_t{1} << 31, (int64_t{1} << 32) - 1,
      (int64_t{1} << 32) + 1, int64_t{1} << 40, int64_t{1} << 56,
      std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()};
  if (Coin(rng, 3)) return static_cast<int64_t>(Pick(rng, 9)) - 1;
  return kValues[Pick(rng, sizeof(kValues) / sizeof(kValues[0]))];
}

// Floats at the edges of float arithmetic. NaN and +-Inf come in one value
// in 16: a model that holds one is refused where the engine first meets it
// (weights, scales, batch-norm folding), so more would only stop executions
// early, yet one in 16 still writes thousands of them per hour.
float InterestingFloat(Rng& rng) {
  static const float kFinite[] = {0.f,     -0.f,     1.f,    -1.f,  1e-30f,
                                  1e30f,   3.4e38f,  -3.4e38f, 1e-45f};
  static const float kNonFinite[] = {std::numeric_limits<float>::infinity(),
                                     -std::numeric_limits<float>::infinity(),
                                     std::numeric_limits<float>::quiet_NaN()};
  if (Coin(rng, 16)) return kNonFinite[Pick(rng, 3)];
  return kFinite[Pick(rng, sizeof(kFinite) / sizeof(kFinite[0]))];
}

// Op types the engine plans or rewrites, plus a few it does not know.
const std::string& RandomOpType(Rng& rng) {
  static const std::string kOps[] = {
      "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div",
      "Relu", "Clip", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
      "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice",
      "Gather", "Resize", "Pad", "Sigmoid", "Softmax", "BatchNormalization",
      "Identity", "Dropout", "Constant", "ReduceMean", "Erf", "Pow", "Sqrt",
      "LayerNormalization", "If", "QuantizeLinear", "Unknown"};
  return kOps[Pick(rng, sizeof(kOps) / sizeof(kOps[0]))];
}

// Every tensor of the main graph a mutation may point at.
struct Tensors {
  std::vector<pb::TensorProto*> all;  // initializers and Constant values
  std::vector<std::string> names;     // every tensor name in the graph
};

Tensors Collect(pb::GraphProto* g) {
  Tensors t;
  for (auto& init : *g->mutable_initializer()) {
    t.all.push_back(&init);
    t.names.push_back(init.name());
  }
  for (auto& n : *g->mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_t()) t.all.push_back(a.mutable_t());
    }
    for (const auto& o : n.output()) t.names.push_back(o);
  }
  for (const auto& in : g->input()) t.names.push_back(in.name());
  return t;
}

void MutateDims(Rng& rng, pb::TensorProto* t) {
  switch (Pick(rng, 5)) {
    case 0:
      if (t->dims_size() > 0) {
        t->set_dims(Pick(rng, t->dims_size()), InterestingInt(rng));
      }
      break;
    case 1:
      t->add_dims(InterestingInt(rng));
      break;
    case 2:
      if (t->dims_size() > 0) t->mutable_dims()->RemoveLast();
      break;
    case 3:
      t->clear_dims();  // a scalar
      break;
    default:
      if (t->dims_size() > 1) {
        t->mutable_dims()->SwapElements(0, t->dims_size() - 1);
      }
  }
}

void MutatePayload(Rng& rng, pb::TensorProto* t) {
  std::string* raw = t->mutable_raw_data();
  switch (Pick(rng, 5)) {
    case 0:
      raw->resize(Pick(rng, raw->size() + 1));
      break;
    case 1:
      raw->append(Pick(rng, 16) + 1, '\x01');
      break;
    case 2:
      if (raw->size() >= sizeof(float)) {
        const float f = InterestingFloat(rng);
        std::memcpy(&(*raw)[Pick(rng, raw->size() / 4) * 4], &f, sizeof f);
      }
      break;
    case 3:  // the values move to the typed field (or vanish)
      for (size_t i = 0; i + 4 <= raw->size() && i < 4096; i += 4) {
        float f;
        std::memcpy(&f, raw->data() + i, sizeof f);
        t->add_float_data(f);
      }
      t->clear_raw_data();
      break;
    default:
      t->add_int64_data(InterestingInt(rng));
  }
}

void MutateDataType(Rng& rng, pb::TensorProto* t) {
  static const int kTypes[] = {
      pb::TensorProto::UNDEFINED, pb::TensorProto::FLOAT,
      pb::TensorProto::UINT8,     pb::TensorProto::INT8,
      pb::TensorProto::INT32,     pb::TensorProto::INT64,
      pb::TensorProto::STRING,    pb::TensorProto::BOOL,
      pb::TensorProto::FLOAT16,   pb::TensorProto::DOUBLE,
      pb::TensorProto::BFLOAT16,  pb::TensorProto::UINT64, 99};
  t->set_data_type(kTypes[Pick(rng, sizeof(kTypes) / sizeof(kTypes[0]))]);
}

void MutateAttribute(Rng& rng, pb::NodeProto* n) {
  static const char* kNames[] = {"group", "transB", "transA", "axis", "perm",
                                 "axes", "alpha", "beta", "epsilon", "mode",
                                 "keepdims", "pads", "kernel_shape",
                                 "strides", "value", "min", "max"};
  if (n->attribute_size() == 0 || Coin(rng, 3)) {
    auto* a = n->add_attribute();
    a->set_name(kNames[Pick(rng, sizeof(kNames) / sizeof(kNames[0]))]);
    switch (Pick(rng, 4)) {
      case 0:
        a->set_type(pb::AttributeProto::INT);
        a->set_i(InterestingInt(rng));
        break;
      case 1:
        a->set_type(pb::AttributeProto::INTS);
        for (size_t k = Pick(rng, 6); k > 0; --k) {
          a->add_ints(InterestingInt(rng));
        }
        break;
      case 2:
        a->set_type(pb::AttributeProto::FLOAT);
        a->set_f(InterestingFloat(rng));
        break;
      default:
        a->set_type(pb::AttributeProto::STRING);
        a->set_s(Coin(rng, 2) ? "linear" : "reflect");
    }
    return;
  }
  auto* a = n->mutable_attribute(Pick(rng, n->attribute_size()));
  switch (Pick(rng, 5)) {
    case 0:
      a->set_i(InterestingInt(rng));
      break;
    case 1:
      if (a->ints_size() > 0) {
        a->set_ints(Pick(rng, a->ints_size()), InterestingInt(rng));
      } else {
        a->add_ints(InterestingInt(rng));
      }
      break;
    case 2:
      a->set_f(InterestingFloat(rng));
      break;
    case 3:
      a->set_type(static_cast<pb::AttributeProto::AttributeType>(Pick(rng, 14)));
      break;
    default:
      n->mutable_attribute()->DeleteSubrange(Pick(rng, n->attribute_size()), 1);
  }
}

void MutateInputs(Rng& rng, const Tensors& tensors, pb::NodeProto* n) {
  const std::string name =
      tensors.names.empty() || Coin(rng, 8)
          ? std::string(Coin(rng, 2) ? "" : "no_such_tensor")
          : tensors.names[Pick(rng, tensors.names.size())];
  switch (Pick(rng, 4)) {
    case 0:
      if (n->input_size() > 0) n->mutable_input()->RemoveLast();
      break;
    case 1:
      n->add_input(name);
      break;
    case 2:
      if (n->input_size() > 0) n->set_input(Pick(rng, n->input_size()), name);
      break;
    default:
      if (n->input_size() > 1) n->mutable_input()->SwapElements(0, 1);
  }
}

void MutateOutputs(Rng& rng, const Tensors& tensors, pb::NodeProto* n) {
  switch (Pick(rng, 3)) {
    case 0:
      if (n->output_size() > 0) n->mutable_output()->RemoveLast();
      break;
    case 1:
      n->add_output(Coin(rng, 2) || tensors.names.empty()
                        ? std::string()
                        : tensors.names[Pick(rng, tensors.names.size())]);
      break;
    default:
      if (n->output_size() > 0 && !tensors.names.empty()) {
        n->set_output(0, tensors.names[Pick(rng, tensors.names.size())]);
      }
  }
}

void MutateNodes(Rng& rng, pb::GraphProto* g) {
  const int size = g->node_size();
  if (size == 0) return;
  const int i = static_cast<int>(Pick(rng, size));
  switch (Pick(rng, 6)) {
    case 0:
      g->mutable_node()->SwapElements(i, static_cast<int>(Pick(rng, size)));
      break;
    case 1:
      g->mutable_node()->DeleteSubrange(i, 1);
      break;
    case 2:
      *g->add_node() = g->node(i);  // same name, same outputs
      break;
    case 3:
      g->mutable_node(i)->set_op_type(RandomOpType(rng));
      break;
    case 4:
      g->mutable_node(i)->set_name(g->node(Pick(rng, size)).name());
      break;
    default:
      g->mutable_node(i)->set_domain(Coin(rng, 2) ? "ai.onnx" : "com.x");
  }
}

void MutateGraphIo(Rng& rng, const Tensors& tensors, pb::ModelProto* m) {
  pb::GraphProto* g = m->mutable_graph();
  switch (Pick(rng, 5)) {
    case 0:
      if (g->input_size() > 0) g->mutable_input()->RemoveLast();
      break;
    case 1:
      if (g->output_size() > 0) g->mutable_output()->RemoveLast();
      break;
    case 2:
      if (!tensors.names.empty()) {
        auto* vi = Coin(rng, 2) ? g->add_input() : g->add_output();
        vi->set_name(tensors.names[Pick(rng, tensors.names.size())]);
        vi->mutable_type()->mutable_tensor_type()->set_elem_type(
            pb::TensorProto::FLOAT);
      }
      break;
    case 3:
      if (m->opset_import_size() > 0) {
        m->mutable_opset_import(0)->set_version(InterestingInt(rng));
      }
      break;
    default:
      if (g->initializer_size() > 0) {
        const int k = static_cast<int>(Pick(rng, g->initializer_size()));
        if (Coin(rng, 2)) {
          g->mutable_initializer()->DeleteSubrange(k, 1);
        } else if (!tensors.names.empty()) {
          g->mutable_initializer(k)->set_name(
              tensors.names[Pick(rng, tensors.names.size())]);
        }
      }
  }
}

// Bytes per element of the types a consistent mutation may give a tensor.
size_t ElementSize(int data_type) {
  switch (data_type) {
    case pb::TensorProto::DOUBLE:
    case pb::TensorProto::INT64:
    case pb::TensorProto::UINT64:
      return 8;
    case pb::TensorProto::FLOAT:
    case pb::TensorProto::INT32:
    case pb::TensorProto::UINT32:
      return 4;
    case pb::TensorProto::FLOAT16:
    case pb::TensorProto::BFLOAT16:
    case pb::TensorProto::INT16:
    case pb::TensorProto::UINT16:
      return 2;
    default:
      return 1;
  }
}

// Gives `t` a raw payload of the size its dims and type need (when that is
// at most 1 MiB), keeping its first bytes: the mutation then reaches past
// the entry check.
void FitPayload(Rng& rng, pb::TensorProto* t) {
  uint64_t n = 1;
  for (int64_t d : t->dims()) {
    if (d < 0 || d > (1 << 20)) return;
    n *= static_cast<uint64_t>(d);
    if (n > (1 << 18)) return;
  }
  std::string raw = t->raw_data();
  if (raw.empty()) {  // the values were in a typed field
    for (float f : t->float_data()) {
      raw.append(reinterpret_cast<const char*>(&f), sizeof f);
    }
  }
  raw.resize(n * ElementSize(t->data_type()),
             static_cast<char>(Coin(rng, 2) ? 0 : 0x3c));
  t->clear_float_data();
  t->clear_int32_data();
  t->clear_int64_data();
  t->clear_double_data();
  t->clear_uint64_data();
  t->set_raw_data(raw);
}

// Whether `t`'s dims hold at most 2^18 elements (none negative).
bool SmallDims(const pb::TensorProto& t) {
  uint64_t n = 1;
  for (int64_t d : t.dims()) {
    if (d < 0 || d > (1 << 18) || (n *= d) > (1 << 18)) return false;
  }
  return true;
}

// Replaces NaN and +-Inf in a float tensor's values by zero.
void ScrubNonFinite(pb::TensorProto* t) {
  if (t->data_type() != pb::TensorProto::FLOAT) return;
  std::string* raw = t->mutable_raw_data();
  for (size_t i = 0; i + sizeof(float) <= raw->size(); i += sizeof(float)) {
    float f;
    std::memcpy(&f, raw->data() + i, sizeof f);
    if (!std::isfinite(f)) std::memset(&(*raw)[i], 0, sizeof f);
  }
  for (int i = 0; i < t->float_data_size(); ++i) {
    if (!std::isfinite(t->float_data(i))) t->set_float_data(i, 0.f);
  }
}

// Puts back what the entry check verifies of tensors (a defined type,
// non-negative dims whose product fits, a payload of the right size) where
// an earlier mutation broke it, and finite values, so that descendants of a
// refused model reach the later stages: a NaN or an Inf is tested where a
// mutation writes it, not inherited by every descendant.
void RepairTensors(Rng& rng, const Tensors& tensors) {
  for (pb::TensorProto* t : tensors.all) {
    if (!pb::TensorProto_DataType_IsValid(t->data_type()) ||
        t->data_type() == pb::TensorProto::UNDEFINED ||
        t->data_type() == pb::TensorProto::STRING) {
      t->set_data_type(pb::TensorProto::FLOAT);
    }
    for (int k = 0; k < t->dims_size(); ++k) {
      if (t->dims(k) < 0) t->set_dims(k, 1);
    }
    while (!SmallDims(*t)) {  // the largest dim becomes 1
      int largest = 0;
      for (int k = 1; k < t->dims_size(); ++k) {
        if (t->dims(k) > t->dims(largest)) largest = k;
      }
      t->set_dims(largest, 1);
    }
    uint64_t n = 1;
    for (int64_t d : t->dims()) n *= static_cast<uint64_t>(d);
    if (t->data_location() != pb::TensorProto::EXTERNAL &&
        t->raw_data().size() != n * ElementSize(t->data_type())) {
      FitPayload(rng, t);
    }
    ScrubNonFinite(t);
  }
}

// The output channels of a Conv, ConvTranspose or Gemm with weight `w` (what
// its bias and a BatchNormalization after it must hold), or -1.
int64_t OutputChannels(const pb::NodeProto& n, const pb::TensorProto& w) {
  int64_t group = 1;
  bool trans_b = false;
  for (const auto& a : n.attribute()) {
    if (a.name() == "group") group = a.i();
    if (a.name() == "transB") trans_b = a.i() != 0;
  }
  if (n.op_type() == "Conv" && w.dims_size() >= 3) return w.dims(0);
  if (n.op_type() == "ConvTranspose" && w.dims_size() >= 3 && group >= 1 &&
      w.dims(1) <= (1 << 18) / group) {
    return w.dims(1) * group;
  }
  if (n.op_type() == "Gemm" && w.dims_size() == 2) {
    return w.dims(trans_b ? 0 : 1);
  }
  return -1;
}

// Gives `t` the dims [channels] (and a payload to match) unless it has them.
void FitChannels(Rng& rng, int64_t channels, pb::TensorProto* t) {
  if (channels < 0 || (t->dims_size() == 1 && t->dims(0) == channels)) return;
  t->clear_dims();
  t->add_dims(channels);
  FitPayload(rng, t);
}

// Puts back what the entry check and batch-norm folding verify of the
// tensors a node reads together (a Conv weight of rank >= 3 with non-empty
// kernel dims and a first dim its group divides, a bias with one value per
// output channel, batch-norm parameters with one per channel of the weight
// before them), so that a mutation of a weight's dims carries over to them.
void RepairNodes(Rng& rng, pb::GraphProto* g) {
  std::unordered_map<std::string, pb::TensorProto*> inits;
  for (auto& t : *g->mutable_initializer()) inits.emplace(t.name(), &t);
  auto init = [&](const pb::NodeProto& n, int k) -> pb::TensorProto* {
    if (n.input_size() <= k) return nullptr;
    auto it = inits.find(n.input(k));
    return it == inits.end() ? nullptr : it->second;
  };
  std::unordered_map<std::string, int64_t> channels;  // output -> channels
  for (auto& n : *g->mutable_node()) {
    if (!n.domain().empty() && n.domain() != "ai.onnx") continue;
    const bool conv = n.op_type() == "Conv" || n.op_type() == "ConvTranspose";
    if (n.op_type() == "BatchNormalization" && n.input_size() > 0) {
      auto it = channels.find(n.input(0));
      for (int k = 1; k < 5 && it != channels.end(); ++k) {
        if (pb::TensorProto* p = init(n, k)) FitChannels(rng, it->second, p);
      }
      continue;
    }
    pb::TensorProto* w = init(n, 1);
    if (w == nullptr || (!conv && n.op_type() != "Gemm")) continue;
    if (conv) {
      bool resized = false;
      while (w->dims_size() < 3) w->add_dims(1);  // same element count
      for (int k = 2; k < w->dims_size(); ++k) {
        if (w->dims(k) == 0) {
          w->set_dims(k, 1);
          resized = true;
        }
      }
      if (resized) FitPayload(rng, w);
      for (auto& a : *n.mutable_attribute()) {
        if (a.name() != "group") continue;
        int64_t group = a.i() < 1 || a.i() > (1 << 18) ? 1 : a.i();
        if (w->dims(0) % group != 0) group = std::gcd(group, w->dims(0));
        a.set_i(std::max<int64_t>(group, 1));
      }
    }
    const int64_t c = OutputChannels(n, *w);
    if (pb::TensorProto* b = init(n, 2); b != nullptr && b != w) {
      // A Gemm bias may also be one value, or 2-D.
      if (conv || (b->dims_size() == 1 && b->dims(0) != 1)) {
        FitChannels(rng, c, b);
      }
    }
    if (c >= 0 && n.output_size() > 0) channels[n.output(0)] = c;
  }
}

// Puts back what the entry check verifies of the graph's wiring where an
// earlier mutation broke it: initializer names are non-empty and unique
// (one may also name a graph input, as old exporters wrote);
// each node writes a non-empty first output, and no name that a graph input,
// an initializer or an earlier node provides (such outputs are renamed);
// each node reads only tensors provided before it (another such tensor is
// drawn). Ops keep their inputs' count: an arity broken by a mutation stays.
void RepairGraph(Rng& rng, pb::GraphProto* g) {
  std::unordered_set<std::string> all;  // every name, for fresh ones
  for (const auto& v : g->input()) all.insert(v.name());
  for (const auto& t : g->initializer()) all.insert(t.name());
  for (const auto& n : g->node()) {
    all.insert(n.output().begin(), n.output().end());
  }
  int counter = 0;
  auto fresh = [&] {
    std::string name;
    do {
      name = "fuzz_" + std::to_string(counter++);
    } while (all.count(name));
    all.insert(name);
    return name;
  };
  std::unordered_set<std::string> defined;
  std::vector<const std::string*> order;  // what a node may read
  auto define = [&](const std::string& name) {
    if (defined.insert(name).second) order.push_back(&*defined.find(name));
  };
  for (const auto& v : g->input()) define(v.name());
  std::unordered_set<std::string> inits;  // may share a graph input's name
  for (auto& t : *g->mutable_initializer()) {
    if (t.name().empty() || !inits.insert(t.name()).second) {
      t.set_name(fresh());
      inits.insert(t.name());
    }
    define(t.name());
  }
  for (auto& n : *g->mutable_node()) {
    for (int k = 0; k < n.input_size(); ++k) {
      if (n.input(k).empty() || defined.count(n.input(k))) continue;
      n.set_input(k, order.empty() ? std::string()
                                   : *order[Pick(rng, order.size())]);
    }
    if (n.output_size() == 0) n.add_output();
    for (int k = 0; k < n.output_size(); ++k) {
      if ((k == 0 && n.output(k).empty()) || defined.count(n.output(k))) {
        n.set_output(k, fresh());
      }
    }
    for (const auto& o : n.output()) {
      if (!o.empty()) define(o);
    }
  }
}

// A mutation that keeps what the engine's entry check verifies (payload
// sizes, arities, single assignment, topological order), so that the model
// goes on into the passes, the plan and QDQ insertion with odd values.
void MutateConsistently(Rng& rng, pb::ModelProto* m) {
  pb::GraphProto* g = m->mutable_graph();
  const Tensors tensors = Collect(g);
  RepairTensors(rng, tensors);
  const size_t kind = Pick(rng, 6);
  if (kind <= 2 && !tensors.all.empty()) {
    pb::TensorProto* t = tensors.all[Pick(rng, tensors.all.size())];
    if (kind == 0) {
      if (t->dims_size() > 0) {
        t->set_dims(Pick(rng, t->dims_size()),
                    static_cast<int64_t>(Pick(rng, 9)));
      } else {
        t->add_dims(static_cast<int64_t>(Pick(rng, 3)));
      }
    } else if (kind == 1) {
      static const int kTypes[] = {
          pb::TensorProto::FLOAT,   pb::TensorProto::FLOAT,
          pb::TensorProto::INT64,   pb::TensorProto::INT32,
          pb::TensorProto::FLOAT16, pb::TensorProto::DOUBLE,
          pb::TensorProto::INT8,    pb::TensorProto::UINT8};
      t->set_data_type(kTypes[Pick(rng, sizeof(kTypes) / sizeof(kTypes[0]))]);
    } else if (t->raw_data().size() >= sizeof(float)) {
      std::string* raw = t->mutable_raw_data();
      const float f = InterestingFloat(rng);
      std::memcpy(&(*raw)[Pick(rng, raw->size() / 4) * 4], &f, sizeof f);
    }
    FitPayload(rng, t);
    return;
  }
  if (g->node_size() == 0) return;
  const int i = static_cast<int>(Pick(rng, g->node_size()));
  pb::NodeProto* n = g->mutable_node(i);
  if (kind == 3) {
    MutateAttribute(rng, n);
  } else if (kind == 4 && n->input_size() > 0) {
    // Another tensor that exists before node i.
    std::vector<std::string> before;
    for (const auto& in : g->input()) before.push_back(in.name());
    for (const auto& t : g->initializer()) before.push_back(t.name());
    for (int k = 0; k < i; ++k) {
      for (const auto& o : g->node(k).output()) before.push_back(o);
    }
    if (!before.empty()) {
      n->set_input(Pick(rng, n->input_size()),
                   before[Pick(rng, before.size())]);
    }
  } else {
    // An op of the same arity family.
    static const char* const kFamilies[][4] = {
        {"Relu", "Sigmoid", "Identity", "Softmax"},
        {"Add", "Mul", "Sub", "Div"},
        {"Conv", "ConvTranspose", "Conv", "ConvTranspose"},
        {"MaxPool", "AveragePool", "GlobalAveragePool", "Flatten"},
        {"MatMul", "Add", "Gemm", "Mul"}};
    for (const auto& family : kFamilies) {
      for (const char* op : family) {
        if (n->op_type() == op) {
          n->set_op_type(family[Pick(rng, 4)]);
          return;
        }
      }
    }
    MutateAttribute(rng, n);
  }
}

void MutateOnce(Rng& rng, pb::ModelProto* m) {
  pb::GraphProto* g = m->mutable_graph();
  const Tensors tensors = Collect(g);
  const size_t kind = Pick(rng, 9);
  if (kind <= 2 && !tensors.all.empty()) {
    pb::TensorProto* t = tensors.all[Pick(rng, tensors.all.size())];
    if (kind == 0) MutateDims(rng, t);
    if (kind == 1) MutatePayload(rng, t);
    if (kind == 2) MutateDataType(rng, t);
    return;
  }
  if (g->node_size() == 0 || kind == 8) {
    MutateGraphIo(rng, tensors, m);
    return;
  }
  pb::NodeProto* n = g->mutable_node(Pick(rng, g->node_size()));
  switch (kind) {
    case 3:
      MutateAttribute(rng, n);
      break;
    case 4:
      MutateInputs(rng, tensors, n);
      break;
    case 5:
      MutateOutputs(rng, tensors, n);
      break;
    default:
      MutateNodes(rng, g);
  }
}

}  // namespace

void MutateModel(std::mt19937_64& rng, pb::ModelProto* model) {
  // Seven in eight mutations keep the model past the entry check.
  if (!Coin(rng, 8)) {
    RepairGraph(rng, model->mutable_graph());
    MutateConsistently(rng, model);
    RepairNodes(rng, model->mutable_graph());
    return;
  }
  const size_t count = 1 + Pick(rng, 3);
  for (size_t i = 0; i < count; ++i) MutateOnce(rng, model);
}

}  // namespace onnxquant::fuzz
