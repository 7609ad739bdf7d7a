#include "kernel_check.h"

#include "calibration.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "onnxquant/error.h"
#include "onnxquant/kernel_checker.h"
#include "onnxquant/model_io.h"

namespace py = pybind11;
namespace oq = onnxquant;

namespace onnxquant::binding {
namespace {

const char* KindName(oq::KernelKind kind) {
  switch (kind) {
    case oq::KernelKind::kPairSums:
      return "pair_sums";
    case oq::KernelKind::kExact:
      return "exact";
    case oq::KernelKind::kNotFused:
      return "not_fused";
  }
  return "not_fused";
}

void Add(oq::KernelChecker& self, const py::dict& arrays) {
  std::vector<py::array> keep;  // alive while the GIL is released
  std::unordered_map<std::string, oq::ActivationView> views;
  for (const auto& item : arrays) {
    const std::string name = py::cast<std::string>(item.first);
    py::array arr = AsFloatArray(name, item.second);
    oq::ActivationView v;
    v.shape.assign(arr.shape(), arr.shape() + arr.ndim());
    v.data = static_cast<const float*>(arr.data());
    views.emplace(name, std::move(v));
    keep.push_back(std::move(arr));
  }
  py::gil_scoped_release release;
  self.Add(views);
}

py::list Results(const oq::KernelChecker& self) {
  py::list out;
  for (const auto& r : self.results()) {
    py::dict d;
    d["node"] = r.node;
    d["op_type"] = r.op_type;
    d["input"] = r.input;
    d["kind"] = KindName(r.kind);
    d["detail"] = r.detail;
    d["bound"] = r.bound;
    d["rows"] = r.observed.rows;
    d["pair_sums"] = r.observed.pair_sums;
    d["risky_pairs"] = r.observed.risky_pairs;
    d["saturated"] = r.observed.saturated;
    d["peak"] = r.observed.peak;
    d["error_energy"] = r.observed.error_energy;
    d["max_error"] = r.observed.max_error;
    d["noise_energy"] = r.noise_energy;
    d["batches"] = r.batches;
    out.append(d);
  }
  return out;
}

}  // namespace

void BindKernelCheck(py::module_& m) {
  py::class_<oq::KernelChecker>(
      m, "KernelChecker",
      "The 16-bit pair sums of ONNX Runtime's uint8 x int8 kernels (x86 "
      "without VNNI), per quantized node with a weight.")
      .def(py::init([](const py::bytes& model, const oq::DtypeMap& dtypes,
                       const oq::QuantOptions& options,
                       const oq::RangeMap& ranges) {
             std::string_view view = model;
             oq::pb::ModelProto proto = oq::ParseModel(view);
             py::gil_scoped_release release;
             return new oq::KernelChecker(proto, dtypes, options, ranges);
           }),
           py::arg("model"), py::arg("dtypes"), py::arg("options"),
           py::arg("ranges"))
      .def("inputs", &oq::KernelChecker::Inputs,
           "The activation tensors add() simulates.")
      .def("add", &Add, py::arg("arrays"),
           "Simulates the pair sums on {tensor: float32 array}.")
      .def("results", &Results,
           "Per node: kind, bound, and what add() observed.")
      .def("channel_qmax", &oq::KernelChecker::ChannelQmax,
           py::arg("bound_unobserved"), py::arg("headroom") = 0.0,
           "Per node that needs it, the per-channel weight qmax that keeps "
           "its pair sums within int16.");
}

}  // namespace onnxquant::binding
