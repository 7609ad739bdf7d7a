#include "recovery.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <exception>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "calibration.h"
#include "onnxquant/adaround_layer.h"
#include "onnxquant/error.h"
#include "onnxquant/bias_correction.h"
#include "onnxquant/cross_layer_equalization.h"
#include "onnxquant/error.h"
#include "onnxquant/high_bias_absorption.h"
#include "onnxquant/model_io.h"
#include "onnxquant/smooth_quant.h"
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

py::dict GroupDict(const SmoothGroup& g) {
  py::dict d;
  d["activation"] = g.activation;
  d["nodes"] = g.nodes;
  d["channels"] = g.channels;
  d["producer"] = g.producer;
  d["absorb"] = g.absorb;
  return d;
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
  py::class_<AdaRoundModel>(
      m, "AdaRoundModel",
      "A normalised model parsed and planned once for AdaRound under given "
      "options: the nodes it rounds, and the model every layer's "
      "AdaRoundGrams reads.")
      .def(py::init([](const py::bytes& model, const DtypeMap& dtypes,
                       const QuantOptions& options) {
             auto proto = Parse(model);
             py::gil_scoped_release release;
             return std::make_unique<AdaRoundModel>(std::move(proto), dtypes,
                                                    options);
           }),
           py::arg("model"), py::arg("dtypes"), py::arg("options"))
      .def_property_readonly(
          "layers",
          [](const AdaRoundModel& self) {
            py::list layers;
            for (const auto& l : self.targets().layers) {
              py::dict d;
              d["node"] = l.node;
              d["input"] = l.input;
              d["weight"] = l.weight;
              layers.append(d);
            }
            return layers;
          },
          "The nodes AdaRound rounds, in graph order: dicts node/input/weight.")
      .def_property_readonly(
          "skipped",
          [](const AdaRoundModel& self) { return self.targets().skipped; },
          "The planned nodes with a constant weight it leaves: (node, "
          "reason).");

  py::class_<LayerGramAccumulator>(m, "AdaRoundGrams")
      .def(py::init([](const AdaRoundModel& model, const std::string& node) {
             py::gil_scoped_release release;
             return std::make_unique<LayerGramAccumulator>(model, node);
           }),
           py::arg("model"), py::arg("node"),
           "The Gram matrices of node's inputs, to be summed batch by batch, "
           "and the node's weight as the model's options quantize it (read "
           "here: the AdaRoundModel need not outlive this object).")
      .def(
          "add",
          [](LayerGramAccumulator& self, const py::list& inputs,
             const py::list& quantized_inputs, int threads) {
            std::vector<py::array> keep;  // the arrays the views read
            auto views_of = [&](const py::list& arrays,
                                const std::string& what) {
              std::vector<InputView> views;
              for (const py::handle& h : arrays) {
                py::array a = AsFloatArray(what, h);
                views.push_back(
                    {static_cast<const float*>(a.data()), Shape(a)});
                keep.push_back(std::move(a));
              }
              return views;
            };
            const std::vector<InputView> views = views_of(inputs, "input");
            const std::vector<InputView> qviews =
                views_of(quantized_inputs, "quantized input");
            // The GIL stays held: one object is not summed from two threads.
            self.Add(views, qviews, threads);
          },
          py::arg("inputs"), py::arg("quantized_inputs") = py::list(),
          py::arg("threads") = 2,
          "Adds one batch of the node's FP32 inputs (float32 C-contiguous "
          "arrays, read without a copy) and, for the asymmetric loss, the same "
          "samples' inputs in the model with the layers above quantized.")
      .def_property_readonly("batches", &LayerGramAccumulator::batches,
                             "Batches added so far.");

  m.def(
      "adaround_layer",
      [](const LayerGramAccumulator& grams, int iterations, float reg_weight,
         float beta_start, float beta_end, float warmup, float learning_rate,
         int threads, const py::object& progress) {
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
          r = grams.Round(s, report);
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
      py::arg("grams"), py::arg("iterations") = 1000,
      py::arg("reg_weight") = 0.01f, py::arg("beta_start") = 20.f,
      py::arg("beta_end") = 2.f, py::arg("warmup") = 0.2f,
      py::arg("learning_rate") = 3e-2f, py::arg("threads") = 2,
      py::arg("progress") = py::none(),
      "AdaRound of the weight of the node of `grams` (an AdaRoundGrams) from "
      "the Gram matrices of its inputs: (rounded weight, int32 codes, "
      "stats dict loss_nearest/loss_final/share_up/share_changed/weight). "
      "progress(done, total) is called with the GIL held.");
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
      "high_bias_candidates",
      [](const py::bytes& model) {
        const auto proto = Parse(model);
        std::vector<AbsorptionCandidate> found;
        {
          py::gil_scoped_release release;
          found = FindHighBiasCandidates(proto);
        }
        py::list out;
        for (const auto& c : found) {
          py::dict d;
          d["first"] = c.first;
          d["output"] = c.output;
          d["activation"] = c.activation;
          d["second"] = c.second;
          out.append(d);
        }
        return out;
      },
      py::arg("model"),
      "The Conv -> Relu/LeakyRelu/PRelu -> Conv chains high-bias absorption "
      "can change: [dict first/output/activation/second] in graph order.");

  m.def(
      "absorb_high_bias",
      [](const py::bytes& model,
         const std::map<std::string, std::vector<float>>& amounts) {
        auto proto = Parse(model);
        AbsorptionReport r;
        {
          py::gil_scoped_release release;
          r = AbsorbHighBias(proto, amounts);
        }
        py::list pairs;
        for (const auto& p : r.pairs) {
          py::dict d;
          d["first"] = p.first;
          d["second"] = p.second;
          d["amounts"] = p.amounts;
          pairs.append(d);
        }
        return py::make_tuple(Serialize(proto), pairs, r.skipped);
      },
      py::arg("model"), py::arg("amounts"),
      "High-bias absorption of amounts[first conv][channel] into the next "
      "Conv's bias: (model bytes, pairs [dict first/second/amounts], skipped "
      "[(conv, reason)]).");

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
      "smooth_quant_groups",
      [](const py::bytes& model, bool insert_mul) {
        auto proto = Parse(model);
        SmoothGroups found;
        {
          py::gil_scoped_release release;
          found = FindSmoothGroups(proto, insert_mul);
        }
        py::list groups;
        for (const auto& g : found.groups) groups.append(GroupDict(g));
        return py::make_tuple(groups, found.skipped);
      },
      py::arg("model"), py::arg("insert_mul") = false,
      "SmoothQuant's groups: ([dict activation/nodes/channels/producer/"
      "absorb], skipped [(activation, reason)]) (smooth_quant.h).");

  m.def(
      "accumulate_channel_range",
      [](const py::handle& obj, py::array_t<float> lo, py::array_t<float> hi) {
        py::array a = AsFloatArray("activation", obj);
        if (a.ndim() < 1 || a.shape(a.ndim() - 1) < 1) {
          throw InvalidArgument(
              "accumulate_channel_range needs an array with a last axis.");
        }
        const int64_t k = a.shape(a.ndim() - 1);
        const int64_t rows = static_cast<int64_t>(a.size()) / k;
        std::vector<float> mn(lo.data(), lo.data() + lo.size());
        std::vector<float> mx(hi.data(), hi.data() + hi.size());
        const float* data = static_cast<const float*>(a.data());
        {
          py::gil_scoped_release release;
          AccumulateChannelRange(data, rows, k, &mn, &mx);
        }
        return py::make_tuple(py::array_t<float>(mn.size(), mn.data()),
                              py::array_t<float>(mx.size(), mx.data()));
      },
      py::arg("array"), py::arg("min"), py::arg("max"),
      "Per channel (last axis) of a float32 C-contiguous array (read "
      "without a copy), the running (min, max) of its finite values merged "
      "with min and max (empty arrays to start).");

  m.def(
      "smooth_quant",
      [](const py::bytes& model, bool insert_mul, const py::dict& stats,
         const std::vector<double>& grid, bool only_if_better,
         int weight_qmax, bool per_channel, bool per_model) {
        auto proto = Parse(model);
        std::map<std::string, ActivationSample> samples;
        std::vector<py::array> keep;
        for (const auto& item : stats) {
          const std::string name = py::cast<std::string>(item.first);
          const py::tuple t = py::cast<py::tuple>(item.second);
          if (t.size() != 3) {
            throw InvalidArgument("smooth_quant: the statistics of '" + name +
                                  "' must be (rows, min, max).");
          }
          py::array rows = AsFloatArray(name, t[0]);
          if (rows.ndim() != 2) {
            throw InvalidArgument("smooth_quant: the sample rows of '" + name +
                                  "' must be a 2-D array.");
          }
          ActivationSample s;
          s.rows = static_cast<const float*>(rows.data());
          s.count = rows.shape(0);
          s.channels = rows.shape(1);
          s.min = py::cast<std::vector<float>>(t[1]);
          s.max = py::cast<std::vector<float>>(t[2]);
          keep.push_back(rows);
          samples.emplace(name, std::move(s));
        }
        SmoothResult r;
        {
          py::gil_scoped_release release;
          r = SmoothQuant(proto, insert_mul, samples, grid, only_if_better,
                          WeightEmulation{weight_qmax, per_channel},
                          per_model ? AlphaScope::kModel : AlphaScope::kGroup);
        }
        py::list records;
        for (const auto& rec : r.records) {
          py::dict d = GroupDict(rec.group);
          d["alpha"] = rec.search.alpha;
          d["error_before"] = rec.search.error_before;
          d["error_after"] = rec.search.error_after;
          d["scales"] = py::array_t<float>(rec.search.scales.size(),
                                           rec.search.scales.data());
          d["grid"] = rec.search.grid;
          d["errors"] = rec.search.errors;
          d["applied"] = rec.applied;
          records.append(d);
        }
        return py::make_tuple(Serialize(proto), records, r.skipped);
      },
      py::arg("model"), py::arg("insert_mul"), py::arg("stats"),
      py::arg("grid"), py::arg("only_if_better"), py::arg("weight_qmax") = 127,
      py::arg("per_channel") = true, py::arg("per_model") = false,
      "SmoothQuant: (model bytes, records [dict per group: activation, "
      "nodes, channels, producer, absorb, alpha, error_before, error_after, "
      "scales, grid, errors, applied], skipped [(activation, reason)]); "
      "stats maps each activation to (rows [n, K] float32, min [K], max "
      "[K]).");

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
