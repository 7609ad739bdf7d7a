// Binding of the accuracy-recovery techniques (part of _core): cross-layer
// equalization, the native pieces of bias correction, weight range search.
#ifndef ONNXQUANT_BINDING_RECOVERY_H_
#define ONNXQUANT_BINDING_RECOVERY_H_

#include <pybind11/pybind11.h>

namespace onnxquant::binding {

void BindRecovery(pybind11::module_& m);

}  // namespace onnxquant::binding

#endif  // ONNXQUANT_BINDING_RECOVERY_H_
