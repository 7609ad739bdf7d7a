// Which quantized nodes of a model could saturate ONNX Runtime's 16-bit pair
// sums on x86 CPUs without VNNI (kernel_check.h), from the weights alone and
// from activations observed on real samples.
#ifndef ONNXQUANT_KERNEL_CHECKER_H_
#define ONNXQUANT_KERNEL_CHECKER_H_

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "onnxquant/insert_qdq.h"
#include "onnxquant/kernel_check.h"
#include "onnxquant/node_weights.h"
#include "onnxquant/plan.h"

namespace onnxquant {

// How ONNX Runtime runs a quantized node with a weight.
enum class KernelKind {
  kPairSums,  // uint8 x int8 GEMM: pair sums saturate without VNNI
  kExact,     // depthwise Conv, uint8 weights, a 7-bit range: no saturation
  kNotFused,  // ONNX Runtime keeps it in float (e.g. ConvTranspose)
};

struct NodeKernelCheck {
  std::string node;
  std::string op_type;
  std::string input;  // the activation tensor the weight multiplies
  KernelKind kind = KernelKind::kPairSums;
  std::string detail;  // why the kind, for kExact and kNotFused
  // In an If/Loop/Scan body: its input is not replayed (Inputs() leaves it
  // out, Add() skips it), so ChannelQmax judges it by its bound.
  bool in_body = false;
  // The largest |pair sum| any input in the quantized range could give
  // (kPairSums only): > 32767 means it can saturate. Per filter (output
  // channel) in `bounds`, their maximum in `bound`.
  int32_t bound = 0;
  std::vector<int32_t> bounds;
  bool per_channel = false;  // one weight scale per filter
  // Accumulated over Add(): rows visited, pair sums, saturated ones, peak,
  // and the squared error saturation adds to the outputs (real units).
  PairSumStats observed;
  // Over the same outputs, the squared error of rounding them to the output
  // tensor's quantization step (step^2 / 12 each): the yardstick the
  // saturation error is measured against. 0 when the output is not
  // quantized.
  double noise_energy = 0;
  int64_t batches = 0;  // Add() calls that held this node's input
};

// A float activation, row-major, with its shape.
struct ActivationView {
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

class KernelChecker {
 public:
  // Quantizes the weights of `model`'s plan as InsertQdq would with
  // `options` and `ranges`, and computes each node's bound.
  // Throws Error(kRange) for a planned tensor without a valid range.
  KernelChecker(const pb::ModelProto& model, const DtypeMap& dtypes,
                const QuantOptions& options, const RangeMap& ranges);
  // The same with the plan the caller already made: `plan` must be
  // MakePlan(model, dtypes, options) of this very model. With `keep`, the
  // quantized weights of the checked nodes are added to it (InsertQdq of
  // the same model, plan and options takes them from there).
  KernelChecker(const pb::ModelProto& model, const QuantPlan& plan,
                const QuantOptions& options, const RangeMap& ranges,
                WeightCache* keep = nullptr);

  // The activation tensors Add() wants (one per kPairSums node, no repeats).
  std::vector<std::string> Inputs() const;

  // Quantizes the given float activations with their planned parameters and
  // simulates the pair sums of every node whose input is among them.
  // Throws Error(kInvalidArgument) for an array whose shape does not fit
  // the node (naming both).
  void Add(const std::unordered_map<std::string, ActivationView>& arrays);

  const std::vector<NodeKernelCheck>& results() const { return results_; }

  // For each kPairSums node that needs it, the per-channel weight qmax
  // (FittingQmax) that keeps its pair sums within int16: of the pair sums
  // observed by Add() for nodes that saw data, else of the worst case
  // (`bounds`) when `bound_unobserved` is set. Nodes that fit are left out.
  // Peaks are those of the checked options' codes: call on a checker built
  // without remedies.
  // `headroom` grows observed peaks (not bounds) by that fraction first,
  // for inputs beyond the samples seen.
  std::unordered_map<std::string, std::vector<int32_t>> ChannelQmax(
      bool bound_unobserved, double headroom = 0.0) const;

 private:
  struct Node {
    ConvGeometry geometry;  // Conv: all but the input's N, C, H, W
    bool is_conv = false;
    bool transpose_a = false;  // Gemm transA
    PairedFilters filters;
    float scale = 1.f;
    float output_scale = 0.f;  // 0: the output is not quantized
    int32_t zero_point = 0;  // as uint8 (int8 activations shifted by 128)
    std::vector<int64_t> pads;  // Conv pads as given (empty: auto_pad)
    std::string auto_pad;
  };
  void AddConv(const Node& n, const ActivationView& a, NodeKernelCheck* r);
  void AddGemm(const Node& n, const ActivationView& a, NodeKernelCheck* r);
  std::vector<uint8_t> Codes(const Node& n, const ActivationView& a) const;

  std::vector<NodeKernelCheck> results_;
  std::vector<Node> nodes_;  // parallel to results_
};

}  // namespace onnxquant

#endif  // ONNXQUANT_KERNEL_CHECKER_H_
