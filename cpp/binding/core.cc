// onnxquant._core: the thin pybind11 binding of the engine.
//
// Bytes and numpy arrays in, bytes and plain Python values out. Float32
// C-contiguous arrays cross without a copy; pointers are read with the GIL
// held, then the GIL is released for the native work. Engine errors become
// the exceptions of onnxquant.errors.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "calibration.h"
#include "kernel_check.h"
#include "payloads.h"
#include "recovery.h"
#include "onnxquant/error.h"
#include "onnxquant/insert_qdq.h"
#include "onnxquant/kernel_checker.h"
#include "onnxquant/model_io.h"
#include "onnxquant/op_table.h"
#include "onnxquant/pass_registry.h"
#include "onnxquant/plan.h"

namespace py = pybind11;
namespace oq = onnxquant;

namespace {

const char* ErrorClassName(oq::ErrorKind kind) {
  switch (kind) {
    case oq::ErrorKind::kModel:
      return "ModelError";
    case oq::ErrorKind::kUnsupportedModel:
      return "UnsupportedModelError";
    case oq::ErrorKind::kCalibrationData:
      return "CalibrationDataError";
    case oq::ErrorKind::kRange:
      return "RangeMissingError";
    case oq::ErrorKind::kInvalidArgument:
      return "InvalidArgumentError";
    case oq::ErrorKind::kInternal:
      return "InternalError";
  }
  return "InternalError";
}

void TranslateErrors(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const oq::Error& e) {
    py::object cls =
        py::module_::import("onnxquant.errors").attr(ErrorClassName(e.kind()));
    PyErr_SetString(cls.ptr(), e.what());
  } catch (const std::bad_alloc&) {
    PyErr_SetString(PyExc_MemoryError,
                    "onnxquant ran out of memory in the native engine.");
  } catch (const std::exception& e) {
    // Anything else (a protobuf CHECK on an index the engine did not
    // validate, for one) is a broken invariant of onnxquant, never a foreign
    // exception type.
    py::object cls =
        py::module_::import("onnxquant.errors").attr("InternalError");
    PyErr_SetString(cls.ptr(),
                    (std::string("The native engine failed (") + e.what() +
                     "); this is a bug in onnxquant, please report it with "
                     "the model.")
                        .c_str());
  }
}

oq::pb::ModelProto Parse(const py::bytes& b) {
  std::string_view view = b;
  return oq::ParseModel(view);
}

// Serializes `m` straight into a new bytes object (no intermediate copy).
py::bytes Serialize(const oq::pb::ModelProto& m) {
  const size_t size = oq::SerializedSize(m);
  PyObject* raw =
      PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (raw == nullptr) throw py::error_already_set();
  auto out = py::reinterpret_steal<py::bytes>(raw);
  {
    py::gil_scoped_release release;  // `out` is not shared yet
    oq::SerializeInto(m, size, PyBytes_AS_STRING(raw));
  }
  return out;
}

// Serializes `m`, first moving payloads of at least `threshold` bytes to the
// file `payload_path` when it is not empty, or reading every external payload
// into the model when `inline_payloads` is set (the result is then whole).
py::bytes SerializeBeside(oq::pb::ModelProto* m,
                          const std::string& payload_path, int64_t threshold,
                          bool inline_payloads = false) {
  if (inline_payloads && !payload_path.empty()) {
    throw oq::Error(oq::ErrorKind::kInvalidArgument,
                    "inline_payloads and payload_path exclude each other");
  }
  if (!payload_path.empty()) {
    py::gil_scoped_release release;
    onnxquant::binding::ExternalizePayloads(m, payload_path, threshold);
  } else if (inline_payloads) {
    py::gil_scoped_release release;
    onnxquant::binding::InlinePayloads(m);
  }
  return Serialize(*m);
}

py::dict PlanToDict(const oq::QuantPlan& plan) {
  py::dict d;
  d["calibrated"] = plan.calibrated;
  d["body_calibrated"] = plan.body_calibrated;
  py::list qdq;
  for (const auto& q : plan.qdq) {
    qdq.append(py::make_tuple(q.tensor, q.source, q.scope));
  }
  d["qdq"] = qdq;
  py::list nodes;
  for (const auto& n : plan.quantized_nodes) {
    py::dict nd;
    nd["node"] = n.node;
    nd["op_type"] = n.op_type;
    nd["weight_input"] = n.weight_input;
    nd["weight_axis"] = n.weight_axis;
    nd["bias_input"] = n.bias_input;
    nd["scope"] = n.scope;
    nodes.append(nd);
  }
  d["quantized_nodes"] = nodes;
  py::list floats;
  for (const auto& f : plan.float_nodes) {
    floats.append(py::make_tuple(f.node, f.op_type, f.reason, f.scope));
  }
  d["float_nodes"] = floats;
  py::list constants;
  for (const auto& c : plan.constants) {
    constants.append(py::make_tuple(c.tensor, c.min, c.max));
  }
  d["constants"] = constants;
  py::list absorbed;
  for (const auto& a : plan.absorbed) {
    absorbed.append(py::make_tuple(a.node, a.producer));
  }
  d["absorbed"] = absorbed;
  d["notes"] = plan.notes;
  return d;
}

// A normalised model parsed and planned once, for the kernel check and the
// QDQ insertion of one quantize() (which would otherwise each parse and plan
// the same bytes again).
struct PlannedModel {
  oq::pb::ModelProto model;
  oq::QuantOptions options;
  oq::QuantPlan plan;
  // The kernel checker's quantized weights, which the insertion takes.
  oq::WeightCache weights;
  bool quantized = false;  // InsertQdq edited `model`: no second use
};

void RequireUnquantized(const PlannedModel& self) {
  if (self.quantized) {
    throw oq::Error(oq::ErrorKind::kInternal,
                    "PlannedModel used after its quantize(); make a new one");
  }
}

void BindPlannedModel(py::module_& m) {
  py::class_<PlannedModel>(
      m, "PlannedModel",
      "A normalised model parsed and planned once with given options: its "
      "plan, its kernel checker and its quantization share that work.")
      .def(py::init([](const py::bytes& model, const oq::DtypeMap& dtypes,
                       const oq::QuantOptions& options) {
             auto self = std::make_unique<PlannedModel>();
             self->model = Parse(model);
             self->options = options;
             py::gil_scoped_release release;
             self->plan = oq::MakePlan(self->model, dtypes, options);
             return self;
           }),
           py::arg("model"), py::arg("dtypes"), py::arg("options"))
      .def(
          "plan",
          [](const PlannedModel& self) {
            RequireUnquantized(self);
            return PlanToDict(self.plan);
          },
          "The plan, as make_plan returns it.")
      .def(
          "kernel_checker",
          [](PlannedModel& self, const oq::RangeMap& ranges,
             bool keep_weights) {
            RequireUnquantized(self);
            py::gil_scoped_release release;
            self.weights.clear();
            return std::make_unique<oq::KernelChecker>(
                self.model, self.plan, self.options, ranges,
                keep_weights ? &self.weights : nullptr);
          },
          py::arg("ranges"), py::arg("keep_weights") = false,
          "A KernelChecker of the model with these options and ranges. "
          "keep_weights: the weights it quantizes are kept for quantize() "
          "(which then need not quantize them again) while this object "
          "lives.")
      .def(
          "quantize",
          [](PlannedModel& self, const oq::RangeMap& ranges,
             const std::unordered_map<std::string, oq::WeightRemedy>&
                 weight_remedies,
             const std::string& payload_path, int64_t payload_threshold,
             bool inline_payloads) {
            RequireUnquantized(self);
            oq::QuantOptions options = self.options;
            options.weight_remedies = weight_remedies;
            oq::QuantizeReport report;
            {
              py::gil_scoped_release release;
              // Weight remedies change no plan: the one made above holds.
              self.quantized = true;
              report = oq::InsertQdq(self.model, std::move(self.plan), options,
                                     ranges, &self.weights);
              self.weights.clear();
            }
            py::dict r;
            r["plan"] = PlanToDict(report.plan);
            r["floored"] = report.floored;
            r["enlarged"] = report.enlarged;
            return py::make_tuple(
                SerializeBeside(&self.model, payload_path, payload_threshold,
                                inline_payloads),
                r);
          },
          py::arg("ranges"), py::arg("weight_remedies"),
          py::arg("payload_path") = "", py::arg("payload_threshold") = 1024,
          py::arg("inline_payloads") = false,
          "As _core.quantize with the options given here, but for their "
          "weight_remedies (which change no plan); once per object.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "onnxquant's native engine (private; use the onnxquant package).";
  py::register_exception_translator(&TranslateErrors);

  m.def("pass_names", [] {
    std::vector<std::string> names;
    for (const auto& p : oq::RegisteredPasses()) names.emplace_back(p.name);
    return names;
  }, "Names of the registered graph passes, in their default order.");

  m.def("op_table", [] {
    py::list table;
    for (const oq::OpSpec& s : oq::OpTable()) {
      py::dict e;
      e["op_type"] = s.op_type;
      e["domain"] = s.domain;
      e["kind"] = oq::OpKindName(s.kind);
      py::list inputs;
      for (oq::InputRole r : s.inputs) inputs.append(oq::InputRoleName(r));
      e["inputs"] = inputs;
      e["variadic"] = s.variadic;
      e["inputs_share_output"] = s.inputs_share_output;
      e["absorbable"] = s.absorb != oq::Absorb::kNever;
      e["has_condition"] = s.check != nullptr;
      e["ort_runs"] = s.ort_runs;
      e["reason"] = s.reason;
      table.append(e);
    }
    return table;
  }, "The plan's op table: one dict per entry (op_type, domain, kind, "
     "inputs, variadic, inputs_share_output, absorbable, has_condition, "
     "ort_runs, reason), in the table's order.");

  m.def(
      "run_passes",
      [](const py::bytes& model, const std::vector<std::string>& names,
         const std::string& payload_path, int64_t payload_threshold,
         int times) {
        auto proto = Parse(model);
        std::vector<std::string> changed;
        {
          py::gil_scoped_release release;
          for (int k = 0; k < times; ++k) {
            for (auto& name : oq::RunPasses(proto, names)) {
              if (std::find(changed.begin(), changed.end(), name) ==
                  changed.end()) {
                changed.push_back(std::move(name));
              }
            }
          }
        }
        return py::make_tuple(
            SerializeBeside(&proto, payload_path, payload_threshold), changed);
      },
      py::arg("model"), py::arg("passes"), py::arg("payload_path") = "",
      py::arg("payload_threshold") = 1024, py::arg("times") = 1,
      "Runs the named passes, each to a fixed point, and that list `times` "
      "times in a row (as that many calls would, with one parse). Returns "
      "(model bytes, names of the passes that changed it). With payload_path "
      "(absolute), initializers of at least payload_threshold bytes are "
      "appended to that file and referenced as external data in the "
      "returned bytes.");

  py::enum_<oq::ActivationType>(m, "ActivationType")
      .value("UINT8", oq::ActivationType::kUint8)
      .value("INT8", oq::ActivationType::kInt8)
      .value("INT16", oq::ActivationType::kInt16);

  py::enum_<oq::PowerOfTwo>(m, "PowerOfTwo")
      .value("OFF", oq::PowerOfTwo::kOff)
      .value("CEIL", oq::PowerOfTwo::kCeil)
      .value("MSE", oq::PowerOfTwo::kMse);

  py::enum_<oq::WeightRange>(m, "WeightRange")
      .value("MIN_MAX", oq::WeightRange::kMinMax)
      .value("MSE", oq::WeightRange::kMse);

  py::enum_<oq::WeightEncoding>(m, "WeightEncoding")
      .value("INT8", oq::WeightEncoding::kInt8)
      .value("UINT8_OFFSET", oq::WeightEncoding::kUint8Offset);

  py::class_<oq::WeightRemedy>(m, "WeightRemedy")
      .def(py::init<>())
      .def_readwrite("encoding", &oq::WeightRemedy::encoding)
      .def_readwrite("channel_qmax", &oq::WeightRemedy::channel_qmax);

  py::enum_<oq::WeightType>(m, "WeightType")
      .value("INT8", oq::WeightType::kInt8)
      .value("INT4", oq::WeightType::kInt4);

  py::class_<oq::QuantOptions>(m, "QuantOptions")
      .def(py::init<>())
      .def_readwrite("activation_type", &oq::QuantOptions::activation_type)
      .def_readwrite("per_channel", &oq::QuantOptions::per_channel)
      .def_readwrite("exclude_nodes", &oq::QuantOptions::exclude_nodes)
      .def_readwrite("mask_nodes", &oq::QuantOptions::mask_nodes)
      .def_readwrite("kernel_float_nodes",
                     &oq::QuantOptions::kernel_float_nodes)
      .def_readwrite("op_types", &oq::QuantOptions::op_types)
      .def_readwrite("quantize_activation_matmul",
                     &oq::QuantOptions::quantize_activation_matmul)
      .def_readwrite("reduce_weight_range",
                     &oq::QuantOptions::reduce_weight_range)
      .def_readwrite("quantize_silu", &oq::QuantOptions::quantize_silu)
      .def_readwrite("float_outputs", &oq::QuantOptions::float_outputs)
      .def_readwrite("power_of_two", &oq::QuantOptions::power_of_two)
      .def_readwrite("weight_range", &oq::QuantOptions::weight_range)
      .def_readwrite("weight_remedies", &oq::QuantOptions::weight_remedies)
      .def_readwrite("weight_type", &oq::QuantOptions::weight_type)
      .def_readwrite("block_size", &oq::QuantOptions::block_size)
      .def_readwrite("node_weight_types",
                     &oq::QuantOptions::node_weight_types)
      .def_readwrite("tensor_types", &oq::QuantOptions::tensor_types)
      .def_readwrite("float_tensors", &oq::QuantOptions::float_tensors)
      .def_readwrite("unreached_tensors",
                     &oq::QuantOptions::unreached_tensors);

  m.def(
      "make_plan",
      [](const py::bytes& model, const oq::DtypeMap& dtypes,
         const oq::QuantOptions& options) {
        auto proto = Parse(model);
        oq::QuantPlan plan;
        {
          py::gil_scoped_release release;
          plan = oq::MakePlan(proto, dtypes, options);
        }
        return PlanToDict(plan);
      },
      py::arg("model"), py::arg("dtypes"), py::arg("options"),
      "The quantization plan of a normalised model, as a dict.");

  m.def(
      "expose_tensors",
      [](const py::bytes& model, const std::vector<std::string>& names,
         const oq::DtypeMap& dtypes) {
        auto proto = Parse(model);
        std::vector<std::string> outputs;
        {
          py::gil_scoped_release release;
          outputs = oq::ExposeTensors(proto, names, dtypes);
        }
        return py::make_tuple(Serialize(proto), outputs);
      },
      py::arg("model"), py::arg("names"), py::arg("dtypes"),
      "(The model with the named tensors added to its outputs, the output "
      "holding each name's values): tensors of If/Loop/Scan bodies are "
      "threaded out under new names.");

  m.def(
      "quantize",
      [](const py::bytes& model, const oq::DtypeMap& dtypes,
         const oq::QuantOptions& options, const oq::RangeMap& ranges,
         const std::string& payload_path, int64_t payload_threshold,
         bool inline_payloads) {
        auto proto = Parse(model);
        oq::QuantizeReport report;
        {
          py::gil_scoped_release release;
          report = oq::InsertQdq(proto, dtypes, options, ranges);
        }
        py::dict r;
        r["plan"] = PlanToDict(report.plan);
        r["floored"] = report.floored;
        r["enlarged"] = report.enlarged;
        return py::make_tuple(
            SerializeBeside(&proto, payload_path, payload_threshold,
                            inline_payloads),
            r);
      },
      py::arg("model"), py::arg("dtypes"), py::arg("options"),
      py::arg("ranges"), py::arg("payload_path") = "",
      py::arg("payload_threshold") = 1024, py::arg("inline_payloads") = false,
      "Applies the plan with the given ranges. Returns (QDQ model bytes, "
      "report dict); payload_path as for run_passes. inline_payloads: every "
      "external payload of the result is read into it instead (its bytes are "
      "then the whole model).");

  onnxquant::binding::BindCalibration(m);
  onnxquant::binding::BindKernelCheck(m);
  BindPlannedModel(m);
  onnxquant::binding::BindRecovery(m);
}
