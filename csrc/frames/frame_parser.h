// fastml binary protocol v1: frame scanning, parsing and encoding (see docs/protocol.md).
//
// Python-free: this file pair knows bytes, not objects. csrc/frames/bindings.cc turns parsed frames into
// numpy arrays that are views of the receive buffer. Every size a peer declares is checked against the
// bytes actually present before anything is allocated or read, and the product of a shape is computed
// with overflow checks, so a hostile frame can cost at most the bytes it occupies.
//
// Threading: a Parser is used by one thread at a time (the event loop that owns the connection); it has
// no locks. Its scratch vectors are reused from frame to frame so steady-state parsing does not allocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastml::frames {

constexpr uint32_t kMagic = 0x424C4D46;  // the bytes "FMLB" read as a little-endian u32
constexpr uint8_t kVersion = 1;
constexpr size_t kPrefixBytes = 4;   // u32 length of everything after the prefix
constexpr size_t kHeaderBytes = 16;  // magic u32, version u8, type u8, flags u16, request id u64
constexpr size_t kAlign = 8;         // tensor data starts at a multiple of 8 from the frame start

enum FrameType : uint8_t {
  kInferRequest = 1,
  kInferResponse = 2,
  kError = 3,
  kPing = 4,
  kPong = 5,
};

// KServe datatypes, numbered as Triton's DataType enum (model_config.proto) so the codes are familiar.
enum DType : uint8_t {
  kBool = 1,
  kUint8 = 2,
  kUint16 = 3,
  kUint32 = 4,
  kUint64 = 5,
  kInt8 = 6,
  kInt16 = 7,
  kInt32 = 8,
  kInt64 = 9,
  kFp16 = 10,
  kFp32 = 11,
  kFp64 = 12,
  kBytes = 13,
};
constexpr uint8_t kMaxDType = 13;

// Bytes per element of a fixed-size dtype; 0 for BYTES and for unknown codes.
size_t dtype_itemsize(uint8_t dtype);

struct Limits {
  uint64_t max_frame_bytes = 64ull << 20;  // length prefix value; larger frames close the connection
  uint32_t max_tensors = 64;               // tensors (and requested outputs) per frame
  uint32_t max_rank = 16;                  // dimensions per tensor
  uint32_t max_name_bytes = 1024;          // model, version, tensor and output names
};

struct Tensor {
  std::string_view name;
  uint8_t dtype = 0;
  std::vector<int64_t> dims;
  uint64_t count = 0;             // product of dims (checked for overflow)
  const uint8_t* data = nullptr;  // points into the frame
  uint64_t nbytes = 0;
};

// One parsed frame; every string_view and data pointer points into the caller's buffer.
struct Frame {
  uint8_t type = 0;
  uint16_t flags = 0;
  uint64_t request_id = 0;
  bool header_ok = false;  // type/flags/request_id are valid (even when the body is not)
  // kInferRequest / kInferResponse
  uint32_t timeout_us = 0;
  std::string_view model;
  std::string_view version;
  std::vector<std::string_view> outputs;  // requested outputs (requests only)
  std::vector<Tensor> tensors;            // only the first n_tensors entries are valid
  size_t n_tensors = 0;
  // kError
  uint16_t status = 0;
  uint8_t error_kind = 0;
  std::string_view message;
};

enum class Scan { kNeedMore, kComplete, kFatal };

class Parser {
 public:
  explicit Parser(const Limits& limits) : limits_(limits) {}

  const Limits& limits() const { return limits_; }

  // Looks at the start of buf: kComplete with *frame_bytes (prefix included) when a whole frame is there,
  // kNeedMore with *frame_bytes = the announced size once the prefix is known (else 0), or kFatal with
  // *status/*error when the stream cannot be trusted any more (bad magic or version, oversized frame).
  Scan scan(const uint8_t* buf, size_t len, uint64_t* frame_bytes, int* status, std::string* error) const;

  // Parses one complete frame (buf points at its length prefix; len = the frame's bytes). Returns false
  // with *error on a malformed body; frame->header_ok then says whether the request id can be answered.
  bool parse(const uint8_t* buf, size_t len, Frame* frame, std::string* error);

 private:
  Limits limits_;
};

// Walks a BYTES tensor's data (u32 length + raw bytes per element): calls fn(ptr, size) for each element.
// Returns false with *error unless there are exactly `count` elements filling exactly `nbytes`.
template <typename Fn>
bool for_each_bytes_element(const uint8_t* data, uint64_t nbytes, uint64_t count, Fn&& fn, std::string* error);

// ---- encoding ------------------------------------------------------------------------------------------

// Appends little-endian fields to a caller-sized buffer. Use FrameSize to size it first, then Writer.
class FrameSize {
 public:
  FrameSize() : n_(kPrefixBytes + kHeaderBytes) {}
  void add(size_t bytes) { n_ += bytes; }
  void add_name(size_t bytes) { n_ += 2 + bytes; }
  // A tensor header (name, dtype, rank, dims, nbytes), the padding before its data, and the data.
  void add_tensor(size_t name_bytes, size_t rank, size_t nbytes);
  size_t total() const { return (n_ + kAlign - 1) / kAlign * kAlign; }

 private:
  size_t n_;
};

class Writer {
 public:
  // buf must hold `total` bytes (FrameSize::total()); the prefix is written by finish().
  Writer(uint8_t* buf, size_t total) : buf_(buf), total_(total), pos_(kPrefixBytes) {}
  void header(uint8_t type, uint16_t flags, uint64_t request_id);
  void u8(uint8_t v) { buf_[pos_++] = v; }
  void u16(uint16_t v);
  void u32(uint32_t v);
  void u64(uint64_t v);
  void bytes(const void* p, size_t n);
  void name(std::string_view s);
  // Tensor header fields then zero padding up to the data's aligned offset; the caller writes nbytes of
  // data next (with bytes() or element by element).
  void tensor_header(std::string_view name, uint8_t dtype, const int64_t* dims, size_t rank, uint64_t nbytes);
  size_t pos() const { return pos_; }
  // Zero-pads to total and writes the length prefix; returns false if the writes did not add up.
  bool finish();

 private:
  uint8_t* buf_;
  size_t total_;
  size_t pos_;
};

// ---- template definition ---------------------------------------------------------------------------------

template <typename Fn>
bool for_each_bytes_element(const uint8_t* data, uint64_t nbytes, uint64_t count, Fn&& fn, std::string* error) {
  uint64_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (nbytes - pos < 4) {
      *error = "BYTES data ends after " + std::to_string(i) + " of " + std::to_string(count) + " elements";
      return false;
    }
    uint32_t n = static_cast<uint32_t>(data[pos]) | static_cast<uint32_t>(data[pos + 1]) << 8 |
                 static_cast<uint32_t>(data[pos + 2]) << 16 | static_cast<uint32_t>(data[pos + 3]) << 24;
    pos += 4;
    if (nbytes - pos < n) {
      *error = "BYTES element " + std::to_string(i) + " claims " + std::to_string(n) + " bytes but only " +
               std::to_string(nbytes - pos) + " remain";
      return false;
    }
    if (!fn(data + pos, static_cast<size_t>(n))) return false;
    pos += n;
  }
  if (pos != nbytes) {
    *error = std::to_string(nbytes - pos) + " bytes left over after " + std::to_string(count) + " BYTES elements";
    return false;
  }
  return true;
}

}  // namespace fastml::frames
