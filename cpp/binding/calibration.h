// Binding of the calibration statistics and range search (part of _core).
#ifndef ONNXQUANT_BINDING_CALIBRATION_H_
#define ONNXQUANT_BINDING_CALIBRATION_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace onnxquant::binding {

void BindCalibration(pybind11::module_& m);

// `obj` as a float32 C-contiguous numpy array (no copy). Throws
// InvalidArgument naming `tensor` for anything else.
pybind11::array AsFloatArray(const std::string& tensor,
                             const pybind11::handle& obj);

}  // namespace onnxquant::binding

#endif  // ONNXQUANT_BINDING_CALIBRATION_H_
