// Binding of the kernel check (part of _core).
#ifndef ONNXQUANT_BINDING_KERNEL_CHECK_H_
#define ONNXQUANT_BINDING_KERNEL_CHECK_H_

#include <pybind11/pybind11.h>

namespace onnxquant::binding {

void BindKernelCheck(pybind11::module_& m);

}  // namespace onnxquant::binding

#endif  // ONNXQUANT_BINDING_KERNEL_CHECK_H_
