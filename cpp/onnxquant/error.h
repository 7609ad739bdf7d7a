// The engine's one error model.
//
// Every failure the engine reports is an onnxquant::Error carrying a Kind.
// The binding turns each Kind into the matching Python exception of
// onnxquant.errors; messages name the node, tensor or file and say what to do.
// The engine never aborts and never prints.
#ifndef ONNXQUANT_ERROR_H_
#define ONNXQUANT_ERROR_H_

#include <stdexcept>
#include <string>

namespace onnxquant {

enum class ErrorKind {
  kModel,            // malformed, truncated or inconsistent model
  kUnsupportedModel, // an opset, op or construct the engine cannot handle
  kCalibrationData,  // samples that do not fit the model
  kRange,            // a range missing or invalid for a planned tensor
  kInvalidArgument,  // an option or argument out of its domain
  kInternal,         // a broken invariant: a bug in onnxquant
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

inline Error ModelError(const std::string& m) {
  return Error(ErrorKind::kModel, m);
}
inline Error UnsupportedModelError(const std::string& m) {
  return Error(ErrorKind::kUnsupportedModel, m);
}
inline Error RangeError(const std::string& m) {
  return Error(ErrorKind::kRange, m);
}
inline Error InvalidArgument(const std::string& m) {
  return Error(ErrorKind::kInvalidArgument, m);
}
inline Error InternalError(const std::string& m) {
  return Error(ErrorKind::kInternal, m);
}

}  // namespace onnxquant

#endif  // ONNXQUANT_ERROR_H_
