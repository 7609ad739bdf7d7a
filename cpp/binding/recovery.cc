#include "recovery.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "calibration.h"
#include "onnxquant/adaround_layer.h"
#include "onnxquant/error.h"
#include "onnxquant/bias_correction.h"
#include "onnxquant/cross_layer_equalization.h"
#include "onnxquant/model_io.h"
#include "onnxquant/weight_range_search.h"

namespace py = pybind11;

namespace onnxquant::binding {
namespace {

pb::ModelProto Parse(const py::bytes& b) {
  std::string_view view = b;
  return ParseModel(view);
}

py::bytes Serialize(const pb::ModelProto& m) {
  return py::bytes(SerializeModel(m));
}

std::vector<int64_t> Shape(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// The AdaRound progress callback: called by the engine on the thread that
// called it (with the GIL released), it takes the GIL for the Python
// callable. A Python exception (KeyboardInterrupt, say) stops the
// optimization and is raised again once the engine has returned.
struct ProgressRelay {
  py::object fn;
  std::exception_ptr raised;
  bool operator()(int64_t done, int64_t total) {
    py::gil_scoped_acquire acquire;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!fn.is_none()) fn(done, total);
      return true;
    } catch (...) {
      if (!raised) raised = std::current_exception();
      return false;
    }
  }
};

void BindAdaRound(py::module_& m) {
  m.def(
      "adaround_targets",
      [](const py::bytes& model, const DtypeMap& dtypes,
         const QuantOptions& options) {
        auto proto = Parse(model);
        AdaRoundTargets t;
        {
          py::gil_scoped_release release;
          t = ListAdaRoundTargets(proto, dtypes, options);
        }
        py::list layers;
        for (const auto& l : t.layers) {
          py::dict d;
          d["node"] = l.node;
          d["input"] = l.input;
          d["weight"] = l.weight;
          layers.append(d);
        }
        return py::make_tuple(layers, t.skipped);
      },
      py::arg("model"), py::arg("dtypes"), py::arg("options"),
      "(layers [dict node/input/weight] in graph order, skipped [(node, "
      "reason)]): the nodes AdaRound rounds under these options.");

  m.def(
      "adaround_layer",
      [](const py::bytes& model, const DtypeMap& dtypes,
         const QuantOptions& options, const std::string& node,
         const py::list& inputs, int iterations, float reg_weight,
         float beta_start, float beta_end, float warmup, float learning_rate,
         int threads, const py::object& progress,
         const py::list& quantized_inputs) {
        auto proto = Parse(model);
        std::vector<py::array> keep;
        std::vector<InputView> views, qviews;
        for (const py::handle& h : inputs) {
          py::array a = AsFloatArray("input of node " + node, h);
          views.push_back({static_cast<const float*>(a.data()), Shape(a)});
          keep.push_back(std::move(a));
        }
        for (const py::handle& h : quantized_inputs) {
          py::array a = AsFloatArray("quantized input of node " + node, h);
          qviews.push_back({static_cast<const float*>(a.data()), Shape(a)});
          keep.push_back(std::move(a));
        }
        AdaRoundSettings s;
        s.iterations = iterations;
        s.reg_weight = reg_weight;
        s.beta_start = beta_start;
        s.beta_end = beta_end;
        s.warmup = warmup;
        s.learning_rate = learning_rate;
        s.threads = threads;
        ProgressRelay relay{progress, nullptr};
        LayerRounding r;
        try {
          py::gil_scoped_release release;
          auto report = [&relay](int64_t d, int64_t t) { return relay(d, t); };
          r = RoundLayer(proto, dtypes, options, node, views, s, report,
                         qviews);
        } catch (const Error&) {
          if (relay.raised) std::rethrow_exception(relay.raised);
          throw;
        }
        py::array_t<float> weight(r.dims);
        std::copy(r.weight.begin(), r.weight.end(), weight.mutable_data());
        py::array_t<int32_t> codes(r.dims);
        std::copy(r.codes.begin(), r.codes.end(), codes.mutable_data());
        py::dict st;
        st["loss_nearest"] = r.stats.loss_nearest;
        st["loss_final"] = r.stats.loss_final;
        st["share_up"] = r.stats.share_up;
        st["share_changed"] = r.stats.share_changed;
        st["weight"] = r.weight_name;
        return py::make_tuple(weight, codes, st);
      },
      py::arg("model"), py::arg("dtypes"), py::arg("options"), py::arg("node"),
      py::arg("inputs"), py::arg("iterations") = 1000,
      py::arg("reg_weight") = 0.01f, py::arg("beta_start") = 20.f,
      py::arg("beta_end") = 2.f, py::arg("warmup") = 0.2f,
      py::arg("learning_rate") = 3e-2f, py::arg("threads") = 2,
      py::arg("progress") = py::none(),
      py::arg("quantized_inputs") = py::list(),
      "AdaRound of one node's weight from its cached FP32 inputs (float32 "
      "C-contiguous arrays, read without a copy): (rounded weight, int32 "
      "codes, stats dict loss_nearest/loss_final/share_up/share_changed/"
      "weight). progress(done, total) is called with the GIL held. "
      "quantized_inputs (optional): the same samples' input in the model with "
      "the layers above quantized (asymmetric reconstruction).");
}

}  // namespace

void BindRecovery(py::module_& m) {
  BindAdaRound(m);
  m.def(
      "equalize_cross_layer",
      [](const py::bytes& model, int max_sweeps, double tolerance,
         bool replace_clip, int power_of_two_qmax) {
        auto proto = Parse(model);
        EqualizationOptions o;
        o.max_sweeps = max_sweeps;
        o.tolerance = tolerance;
        o.clip = replace_clip ? ClipHandling::kReplaceWithRelu
                              : ClipHandling::kStop;
        o.power_of_two_qmax = power_of_two_qmax;
        EqualizationReport r;
        {
          py::gil_scoped_release release;
          r = EqualizeCrossLayer(proto, o);
        }
        py::list pairs;
        for (const auto& p : r.pairs) {
          py::dict d;
          d["first"] = p.first;
          d["second"] = p.second;
          d["activation"] = p.activation;
          d["scales"] = p.scales;
          d["spread_before"] = p.spread_before;
          d["spread_after"] = p.spread_after;
          pairs.append(d);
        }
        py::dict rep;
        rep["pairs"] = pairs;
        rep["clips_replaced"] = r.clips_replaced;
        rep["clips_stopped"] = r.clips_stopped;
        rep["sweeps"] = r.sweeps;
        rep["converged"] = r.converged;
        return py::make_tuple(Serialize(proto), rep);
      },
      py::arg("model"), py::arg("max_sweeps") = 100,
      py::arg("tolerance") = 1e-4, py::arg("replace_clip") = false,
      py::arg("power_of_two_qmax") = 0,
      "Cross-layer equalization of Conv-act-Conv chains: (model bytes, report "
      "dict with pairs, clips_replaced, clips_stopped, sweeps, converged).");

  m.def(
      "prepare_bias_correction",
      [](const py::bytes& model, const DtypeMap& dtypes,
         const QuantOptions& options) {
        auto proto = Parse(model);
        BiasPreparation prep;
        {
          py::gil_scoped_release release;
          prep = PrepareBiasCorrection(proto, dtypes, options);
        }
        py::list layers;
        for (const auto& l : prep.layers) {
          py::dict d;
          d["node"] = l.node;
          d["output"] = l.output;
          d["bias"] = l.bias;
          d["channels"] = l.channels;
          layers.append(d);
        }
        return py::make_tuple(Serialize(proto), layers, prep.skipped);
      },
      py::arg("model"), py::arg("dtypes"), py::arg("options"),
      "(model bytes with one own per-channel bias initializer per "
      "correctable layer, layers [dict node/output/bias/channels] in graph "
      "order, skipped [(node, reason)]).");

  m.def(
      "emulate_quantized_weights",
      [](const py::bytes& model, const DtypeMap& dtypes,
         const QuantOptions& options) {
        auto proto = Parse(model);
        std::vector<std::string> changed;
        {
          py::gil_scoped_release release;
          changed = EmulateQuantizedWeights(proto, dtypes, options);
        }
        return py::make_tuple(Serialize(proto), changed);
      },
      py::arg("model"), py::arg("dtypes"), py::arg("options"),
      "(model bytes whose planned weights hold their dequantized values, "
      "names of the nodes changed).");

  m.def(
      "channel_sums",
      [](const py::handle& obj) {
        py::array a = AsFloatArray("channel_sums input", obj);
        const std::vector<int64_t> dims = Shape(a);
        const float* data = static_cast<const float*>(a.data());
        std::vector<double> sums;
        {
          py::gil_scoped_release release;
          sums = ChannelSums(data, dims);
        }
        return py::array_t<double>(sums.size(), sums.data());
      },
      py::arg("array"),
      "Per channel (axis 1) of a float32 array of rank >= 2, the sum of its "
      "values (float64).");

  m.def(
      "search_weight_scales",
      [](const py::handle& obj, int axis, int qmax, bool power_of_two) {
        py::array a = AsFloatArray("weight", obj);
        const std::vector<int64_t> dims = Shape(a);
        const float* p = static_cast<const float*>(a.data());
        std::vector<float> w(p, p + a.size());
        const size_t channels = axis >= 0 && axis < a.ndim() ? dims[axis] : 1;
        std::vector<float> s;
        {
          py::gil_scoped_release release;
          s = SearchWeightScales(w, dims, axis,
                                 std::vector<int32_t>(channels, qmax),
                                 power_of_two);
        }
        return py::array_t<float>(s.size(), s.data());
      },
      py::arg("weight"), py::arg("axis"), py::arg("qmax") = 127,
      py::arg("power_of_two") = false,
      "Per channel along axis (-1: per tensor), the weight scale minimising "
      "the squared quantization error (weight_range_search.h).");
}

}  // namespace onnxquant::binding
