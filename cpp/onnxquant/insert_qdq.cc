#include "onnxquant/insert_qdq.h"

#include "onnxquant/error.h"

namespace onnxquant {

QuantizeReport InsertQdq(pb::ModelProto&, const DtypeMap&, const QuantOptions&,
                         const RangeMap&) {
  throw InternalError("InsertQdq: not implemented yet");
}

void ExposeTensors(pb::ModelProto&, const std::vector<std::string>&,
                   const DtypeMap&) {
  throw InternalError("ExposeTensors: not implemented yet");
}

}  // namespace onnxquant
