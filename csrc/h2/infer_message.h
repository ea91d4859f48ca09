// ModelInferRequest / ModelInferResponse (KServe v2 grpc_service.proto) in protobuf's wire format, for the
// plain request every load generator sends: named inputs with a datatype and a shape, their bytes in
// raw_input_contents, request parameters, outputs requested by name. Anything else (tensor or output
// parameters such as shared memory, typed contents, BYTES tensors) is left to the protobuf runtime
// (ParsePlainInferRequest says "not plain" and fastml.server.grpc_native decodes it with upb), so this
// parser only has to be right about what it accepts; what it accepts it checks completely (every length
// against the bytes present, every shape against its tensor's byte count) before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastml::h2 {

struct PlainInput {
  std::string_view name, datatype;
  std::vector<int64_t> shape;
  size_t offset = 0;  // of the tensor's bytes in the message
  size_t count = 0;   // elements
};

// One InferParameter: which member of its oneof is set (0: none; else the field number: 1 bool, 2 int64,
// 3 string, 4 double, 5 uint64) and its value.
struct Parameter {
  std::string_view key;
  int kind = 0;
  uint64_t bits = 0;       // bool / int64 / uint64 / the double's bits
  std::string_view text;   // string
};

struct PlainInferRequest {
  std::string_view model_name, model_version, id;
  std::vector<PlainInput> inputs;
  std::vector<Parameter> parameters;
  std::vector<std::string_view> outputs;  // requested by name, in order
};

// True when `msg` parses and is plain (see above), with `out` filled; false otherwise (malformed or not plain:
// the caller takes the general path, which says what is wrong).
bool ParsePlainInferRequest(const uint8_t* msg, size_t len, PlainInferRequest* out);

// Bytes per element of a fixed-size KServe datatype; 0 for BYTES and unknown names.
size_t DatatypeSize(std::string_view datatype);

struct PlainOutput {
  std::string_view name, datatype;
  std::vector<int64_t> shape;
  const char* data = nullptr;
  size_t size = 0;
};

// A ModelInferResponse with model_name, model_version, id (each omitted when empty), parameters, the outputs
// and their raw_output_contents, laid out as protobuf's serializer lays them out (fields in number order,
// shape packed).
void EncodeInferResponse(std::string_view model_name, std::string_view model_version, std::string_view id,
                         const std::vector<Parameter>& parameters, const std::vector<PlainOutput>& outputs,
                         std::string* out);

}  // namespace fastml::h2
