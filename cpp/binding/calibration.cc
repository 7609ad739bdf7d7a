#include "calibration.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "onnxquant/calibration_method.h"
#include "onnxquant/error.h"
#include "onnxquant/histogram.h"

namespace py = pybind11;
namespace oq = onnxquant;

namespace onnxquant::binding {
namespace {

using FloatArray = py::array_t<float, py::array::c_style>;

}  // namespace

py::array AsFloatArray(const std::string& tensor, const py::handle& obj) {
  if (!py::isinstance<FloatArray>(obj) ||
      !(py::cast<py::array>(obj).flags() & py::array::c_style)) {
    throw oq::InvalidArgument(
        "Tensor '" + tensor +
        "' must be a float32 C-contiguous numpy array (use "
        "numpy.ascontiguousarray(x, dtype=numpy.float32)).");
  }
  return py::reinterpret_borrow<py::array>(obj);
}

namespace {

void Update(oq::HistogramSet& self, const py::dict& arrays, int threads) {
  std::vector<py::array> keep;  // alive while the GIL is released
  std::vector<oq::HistogramSet::Chunk> chunks;
  for (const auto& item : arrays) {
    const std::string name = py::cast<std::string>(item.first);
    const int index = self.IndexOf(name);
    if (index < 0) {
      throw oq::InvalidArgument("Tensor '" + name +
                                "' is not among the calibrated tensors of "
                                "these statistics.");
    }
    py::array arr = AsFloatArray(name, item.second);
    chunks.push_back({index, static_cast<const float*>(arr.data()),
                      static_cast<int64_t>(arr.size())});
    keep.push_back(std::move(arr));
  }
  py::gil_scoped_release release;
  self.Update(chunks, threads);
}

py::dict Stats(const oq::HistogramSet& self) {
  py::dict out;
  for (size_t i = 0; i < self.names().size(); ++i) {
    const auto& h = self.at(static_cast<int>(i));
    py::dict d;
    d["min"] = h.min();
    d["max"] = h.max();
    d["count"] = h.count();
    d["zeros"] = h.zeros();
    d["nan"] = h.nan();
    d["pos_inf"] = h.pos_inf();
    d["neg_inf"] = h.neg_inf();
    d["bin_width"] = h.bin_width();
    d["bins"] = h.counts().size();
    out[py::str(self.names()[i])] = d;
  }
  return out;
}

py::dict Ranges(const oq::HistogramSet& self, int method, double percentage,
                bool ignore_zero_spike, int threads) {
  oq::RangeOptions options;
  options.percentage = percentage;
  options.entropy.ignore_zero_spike = ignore_zero_spike;
  const oq::CalibrationMethod m = oq::CalibrationMethodFromInt(method);
  std::vector<oq::Range> ranges;
  {
    py::gil_scoped_release release;
    ranges = oq::ComputeRanges(self, m, options, threads);
  }
  py::dict out;
  for (size_t i = 0; i < ranges.size(); ++i) {
    out[py::str(self.names()[i])] =
        py::make_tuple(static_cast<double>(ranges[i].min),
                       static_cast<double>(ranges[i].max));
  }
  return out;
}

}  // namespace

void BindCalibration(py::module_& m) {
  py::class_<oq::HistogramSet>(m, "HistogramSet")
      .def(py::init<std::vector<std::string>>(), py::arg("names"))
      .def_property_readonly("names", &oq::HistogramSet::names)
      .def("update", &Update, py::arg("arrays"), py::arg("threads") = 1,
           "Feeds {name: float32 C-contiguous array}; no copy is made and the "
           "GIL is released while the histograms update.")
      .def("merge", &oq::HistogramSet::Merge, py::arg("other"),
           "Adds the counts of another set over the same tensors.")
      .def("serialize",
           [](const oq::HistogramSet& self) { return py::bytes(self.Serialize()); })
      .def_static(
          "deserialize",
          [](const py::bytes& b) {
            std::string_view view = b;
            return oq::HistogramSet::Deserialize(view);
          },
          py::arg("data"))
      .def("stats", &Stats,
           "{name: {min, max, count, zeros, nan, pos_inf, neg_inf, bin_width, "
           "bins}}.")
      .def(
          "histogram",
          [](const oq::HistogramSet& self, const std::string& name) {
            const int i = self.IndexOf(name);
            if (i < 0) {
              throw oq::InvalidArgument("No histogram for tensor '" + name +
                                        "'.");
            }
            const auto& h = self.at(i);
            py::array_t<int64_t> counts(h.counts().size());
            std::copy(h.counts().begin(), h.counts().end(),
                      counts.mutable_data());
            return py::make_tuple(h.first_bin() * h.bin_width(), h.bin_width(),
                                  counts);
          },
          py::arg("name"),
          "(low edge of the first bin, bin width, counts) of one tensor.")
      .def("compute_ranges", &Ranges, py::arg("method"),
           py::arg("percentage") = 99.99, py::arg("ignore_zero_spike") = false,
           py::arg("threads") = 1,
           "{name: (min, max)} chosen by calibration method `method` (0..9).");
}

}  // namespace onnxquant::binding
