#include "calibration.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
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

// The statistics of one Calibrator, with the lock that makes them safe to use
// from several Python threads. Native work runs with the GIL released, so
// two threads could otherwise update (or read while another updates) the
// same histograms at once, losing counts or corrupting the heap. Every
// method takes the lock, and takes it only with the GIL released: a thread
// waiting for the lock never holds the GIL that the lock's holder needs.
// Concurrent calls are thus serialized, in no particular order.
class LockedHistogramSet : public oq::HistogramSet {
 public:
  explicit LockedHistogramSet(std::vector<std::string> names)
      : oq::HistogramSet(std::move(names)) {}
  explicit LockedHistogramSet(oq::HistogramSet&& set)
      : oq::HistogramSet(std::move(set)) {}

  // The lock, taken with the GIL released; returns with the GIL held.
  std::unique_lock<std::mutex> Lock() const {
    py::gil_scoped_release release;
    return std::unique_lock<std::mutex>(mu_);
  }
  std::mutex& mutex() const { return mu_; }

 private:
  mutable std::mutex mu_;
};

void Update(LockedHistogramSet& self, const py::dict& arrays, int threads) {
  std::vector<py::array> keep;  // alive while the GIL is released
  std::vector<oq::HistogramSet::Chunk> chunks;
  for (const auto& item : arrays) {
    const std::string name = py::cast<std::string>(item.first);
    const int index = self.IndexOf(name);  // names never change
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
  std::lock_guard<std::mutex> lock(self.mutex());
  self.Update(chunks, threads);
}

void Merge(LockedHistogramSet& self, const LockedHistogramSet& other) {
  py::gil_scoped_release release;
  if (&self == &other) {
    std::lock_guard<std::mutex> lock(self.mutex());
    const oq::HistogramSet copy = self;
    self.Merge(copy);
    return;
  }
  std::scoped_lock lock(self.mutex(), other.mutex());  // no lock-order deadlock
  self.Merge(other);
}

// With `unusual_only`, only the tensors that saw a NaN, an infinity or an
// extreme value, or no finite value at all.
py::dict Stats(const LockedHistogramSet& self, bool unusual_only) {
  auto lock = self.Lock();
  py::dict out;
  for (size_t i = 0; i < self.names().size(); ++i) {
    const auto& h = self.at(static_cast<int>(i));
    if (unusual_only && h.count() != 0 && h.nan() == 0 && h.pos_inf() == 0 &&
        h.neg_inf() == 0 && h.pos_extreme() == 0 && h.neg_extreme() == 0) {
      continue;
    }
    py::dict d;
    d["min"] = h.min();
    d["max"] = h.max();
    d["count"] = h.count();
    d["zeros"] = h.zeros();
    d["nan"] = h.nan();
    d["pos_inf"] = h.pos_inf();
    d["neg_inf"] = h.neg_inf();
    d["pos_extreme"] = h.pos_extreme();
    d["neg_extreme"] = h.neg_extreme();
    d["bin_width"] = h.bin_width();
    d["bins"] = h.counts().size();
    out[py::str(self.names()[i])] = d;
  }
  return out;
}

py::tuple Histogram(const LockedHistogramSet& self, const std::string& name) {
  const int i = self.IndexOf(name);
  if (i < 0) {
    throw oq::InvalidArgument("No histogram for tensor '" + name + "'.");
  }
  auto lock = self.Lock();
  const auto& h = self.at(i);
  py::array_t<int64_t> counts(h.counts().size());
  std::copy(h.counts().begin(), h.counts().end(), counts.mutable_data());
  return py::make_tuple(h.first_bin() * h.bin_width(), h.bin_width(), counts);
}

py::bytes Serialize(const LockedHistogramSet& self) {
  std::string bytes;
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(self.mutex());
    bytes = self.Serialize();
  }
  return py::bytes(bytes);
}

py::dict Ranges(const LockedHistogramSet& self, int method, double percentage,
                bool ignore_zero_spike, int threads) {
  oq::RangeOptions options;
  options.percentage = percentage;
  options.entropy.ignore_zero_spike = ignore_zero_spike;
  const oq::CalibrationMethod m = oq::CalibrationMethodFromInt(method);
  std::vector<oq::Range> ranges;
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(self.mutex());
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
  py::class_<LockedHistogramSet>(m, "HistogramSet")
      .def(py::init<std::vector<std::string>>(), py::arg("names"))
      .def_property_readonly("names", &LockedHistogramSet::names)
      .def("update", &Update, py::arg("arrays"), py::arg("threads") = 1,
           "Feeds {name: float32 C-contiguous array}; no copy is made and the "
           "GIL is released while the histograms update. Safe to call from "
           "several threads: calls on one set are serialized.")
      .def("merge", &Merge, py::arg("other"),
           "Adds the counts of another set over the same tensors.")
      .def("serialize", &Serialize)
      .def_static(
          "deserialize",
          [](const py::bytes& b) {
            std::string_view view = b;
            return std::make_unique<LockedHistogramSet>(
                oq::HistogramSet::Deserialize(view));
          },
          py::arg("data"))
      .def("stats", &Stats, py::arg("unusual_only") = false,
           "{name: {min, max, count, zeros, nan, pos_inf, neg_inf, "
           "pos_extreme, neg_extreme, bin_width, bins}}; with unusual_only, "
           "only the tensors with a NaN, infinity or extreme count, or a "
           "count of 0 (a report needs no more).")
      .def("histogram", &Histogram, py::arg("name"),
           "(low edge of the first bin, bin width, counts) of one tensor.")
      .def("compute_ranges", &Ranges, py::arg("method"),
           py::arg("percentage") = 99.99, py::arg("ignore_zero_spike") = false,
           py::arg("threads") = 1,
           "{name: (min, max)} chosen by calibration method `method` (0..9).");
}

}  // namespace onnxquant::binding
