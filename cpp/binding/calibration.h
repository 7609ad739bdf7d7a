// Binding of the calibration statistics and range search (part of _core).
#ifndef ONNXQUANT_BINDING_CALIBRATION_H_
#define ONNXQUANT_BINDING_CALIBRATION_H_

#include <pybind11/pybind11.h>

namespace onnxquant::binding {

void BindCalibration(pybind11::module_& m);

}  // namespace onnxquant::binding

#endif  // ONNXQUANT_BINDING_CALIBRATION_H_
