// fastml binary protocol v1 parser and writer; the layout is documented byte by byte in docs/protocol.md.
#include "frame_parser.h"

#include <cstdint>
#include <cstring>

namespace fastml::frames {

namespace {

// Bounds-checked little-endian reader over one frame. Every read says what it was reading so an error
// names the field that ran past the end of the frame.
class Reader {
 public:
  Reader(const uint8_t* buf, size_t len, size_t pos) : buf_(buf), len_(len), pos_(pos) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return len_ - pos_; }

  bool need(size_t n, const char* what, std::string* error) {
    if (len_ - pos_ < n) {
      *error = std::string("frame ends inside ") + what + " (needs " + std::to_string(n) + " bytes at offset " +
               std::to_string(pos_) + ", " + std::to_string(len_ - pos_) + " left)";
      return false;
    }
    return true;
  }
  uint8_t u8() { return buf_[pos_++]; }
  uint16_t u16() {
    uint16_t v = static_cast<uint16_t>(buf_[pos_] | buf_[pos_ + 1] << 8);
    pos_ += 2;
    return v;
  }
  uint32_t u32() {
    uint32_t v;
    std::memcpy(&v, buf_ + pos_, 4);  // memcpy: fields are unaligned; the targets are little-endian
    pos_ += 4;
    return v;
  }
  uint64_t u64() {
    uint64_t v;
    std::memcpy(&v, buf_ + pos_, 8);
    pos_ += 8;
    return v;
  }
  bool name(std::string_view* out, uint32_t max_bytes, const char* what, std::string* error) {
    if (!need(2, what, error)) return false;
    uint16_t n = u16();
    if (n > max_bytes) {
      *error = std::string(what) + " is " + std::to_string(n) + " bytes; the limit is " + std::to_string(max_bytes);
      return false;
    }
    if (!need(n, what, error)) return false;
    *out = std::string_view(reinterpret_cast<const char*>(buf_ + pos_), n);
    pos_ += n;
    return true;
  }
  bool align(const char* what, std::string* error) {
    size_t pad = (kAlign - pos_ % kAlign) % kAlign;
    if (!need(pad, what, error)) return false;
    pos_ += pad;
    return true;
  }
  const uint8_t* here() const { return buf_ + pos_; }
  void skip(size_t n) { pos_ += n; }

 private:
  const uint8_t* buf_;
  size_t len_;
  size_t pos_;
};

// Puts a tensor's context into a Reader error that named only the field (`generic`).
void reword(std::string* error, const std::string& generic, const std::string& specific) {
  size_t at = error->find(generic);
  if (at != std::string::npos) error->replace(at, generic.size(), specific);
}

bool parse_tensor(Reader& r, const Limits& limits, size_t index, Tensor* t, std::string* error) {
  // Error context is built only on failure: this runs for every tensor of every frame.
  auto where = [&]() { return "tensor '" + std::string(t->name) + "'"; };
  auto field = [&](const char* what) { return where() + " " + what; };
  if (!r.name(&t->name, limits.max_name_bytes, "tensor name", error)) {
    reword(error, "tensor name", "tensor " + std::to_string(index) + " name");
    return false;
  }
  if (!r.need(2, "dtype and rank", error)) {
    reword(error, "dtype and rank", field("dtype and rank"));
    return false;
  }
  t->dtype = r.u8();
  uint8_t rank = r.u8();
  if (t->dtype == 0 || t->dtype > kMaxDType) {
    *error = where() + ": unknown dtype code " + std::to_string(t->dtype) + " (known: 1-13)";
    return false;
  }
  if (rank > limits.max_rank) {
    *error = where() + ": rank " + std::to_string(rank) + " exceeds the limit of " + std::to_string(limits.max_rank);
    return false;
  }
  if (!r.need(size_t{8} * rank + 8, "dims and byte length", error)) {
    reword(error, "dims and byte length", field("dims and byte length"));
    return false;
  }
  t->dims.resize(rank);
  // A shape may not describe more than a frame can hold, even when another dim is 0 and it holds nothing:
  // item size times the non-zero dims is bounded by the frame limit, so a dim of 2^40 never reaches numpy
  // or the engine (which may take the first dim as a row count). BYTES elements count their 4-byte length.
  size_t elem_bytes = dtype_itemsize(t->dtype);
  uint64_t scaled = elem_bytes ? elem_bytes : 4;
  bool overflow = false;
  bool has_zero_dim = false;
  for (uint8_t i = 0; i < rank; ++i) {
    int64_t d = static_cast<int64_t>(r.u64());
    if (d < 0) {
      *error = where() + ": dimension " + std::to_string(i) + " is negative (" + std::to_string(d) + ")";
      return false;
    }
    t->dims[i] = d;
    if (d == 0) {
      has_zero_dim = true;
    } else if (!overflow && (__builtin_mul_overflow(scaled, static_cast<uint64_t>(d), &scaled) ||
                             scaled > limits.max_frame_bytes)) {
      overflow = true;  // keep reading to validate the remaining dims; the tensor is refused below
    }
  }
  uint64_t nbytes = r.u64();
  if (!r.align("data padding", error)) {
    reword(error, "data padding", field("data padding"));
    return false;
  }
  // The declared byte length is checked against the bytes present before anything else looks at it.
  if (nbytes > r.remaining()) {
    *error = where() + ": declares " + std::to_string(nbytes) + " data bytes but the frame has " +
             std::to_string(r.remaining()) + " left";
    return false;
  }
  if (overflow) {
    *error = where() + ": its shape describes more than the " + std::to_string(limits.max_frame_bytes) +
             "-byte frame limit (item size times the non-zero dims)";
    return false;
  }
  uint64_t count = has_zero_dim ? 0 : scaled / (elem_bytes ? elem_bytes : 4);
  size_t itemsize = elem_bytes;
  if (itemsize != 0) {
    uint64_t expect = count * itemsize;  // cannot overflow: bounded by `scaled` above
    if (expect != nbytes) {
      *error = where() + ": " + std::to_string(nbytes) + " data bytes do not match its shape (" + std::to_string(count) +
               " elements of " + std::to_string(itemsize) + " bytes)";
      return false;
    }
  } else if (count > nbytes / 4) {
    // Each BYTES element carries at least its 4-byte length: refuse before anyone allocates `count` slots.
    *error = where() + ": shape has " + std::to_string(count) + " BYTES elements but only " + std::to_string(nbytes) +
             " data bytes (4 bytes minimum per element)";
    return false;
  }
  t->count = count;
  t->nbytes = nbytes;
  t->data = r.here();
  r.skip(static_cast<size_t>(nbytes));
  if (t->dtype == kBytes) {
    std::string elem_error;
    if (!for_each_bytes_element(t->data, nbytes, count, [](const uint8_t*, size_t) { return true; }, &elem_error)) {
      *error = where() + ": " + elem_error;
      return false;
    }
  }
  return true;
}

bool parse_tensors(Reader& r, const Limits& limits, Frame* f, std::string* error) {
  if (!r.need(2, "tensor count", error)) return false;
  uint16_t n = r.u16();
  if (n > limits.max_tensors) {
    *error = std::to_string(n) + " tensors exceed the limit of " + std::to_string(limits.max_tensors);
    return false;
  }
  if (f->tensors.size() < n) f->tensors.resize(n);
  for (uint16_t i = 0; i < n; ++i) {
    if (!parse_tensor(r, limits, i, &f->tensors[i], error)) return false;
  }
  f->n_tensors = n;
  return true;
}

}  // namespace

size_t dtype_itemsize(uint8_t dtype) {
  switch (dtype) {
    case kBool:
    case kUint8:
    case kInt8:
      return 1;
    case kUint16:
    case kInt16:
    case kFp16:
      return 2;
    case kUint32:
    case kInt32:
    case kFp32:
      return 4;
    case kUint64:
    case kInt64:
    case kFp64:
      return 8;
    default:
      return 0;
  }
}

Scan Parser::scan(const uint8_t* buf, size_t len, uint64_t* frame_bytes, int* status, std::string* error) const {
  *frame_bytes = 0;
  if (len < kPrefixBytes) return Scan::kNeedMore;
  uint32_t body;
  std::memcpy(&body, buf, 4);
  // Magic and version first (once their bytes are here): a peer speaking another protocol (an HTTP client
  // on the wrong port) is told so, rather than that its "length" is too large. Only bytes inside the declared
  // frame are read: a length under 16 is its own error, not the next frame's magic or version.
  if (len >= kPrefixBytes + 4 && body >= 4) {
    uint32_t magic;
    std::memcpy(&magic, buf + kPrefixBytes, 4);
    if (magic != kMagic) {
      *status = 400;
      *error = "bad magic: this is not a fastml binary-protocol frame";
      return Scan::kFatal;
    }
  }
  if (len >= kPrefixBytes + 5 && body >= 5 && buf[kPrefixBytes + 4] != kVersion) {
    *status = 400;
    *error = "unsupported protocol version " + std::to_string(buf[kPrefixBytes + 4]) + " (this server speaks 1)";
    return Scan::kFatal;
  }
  if (body < kHeaderBytes) {
    *status = 400;
    *error = "frame length " + std::to_string(body) + " is shorter than the " + std::to_string(kHeaderBytes) +
             "-byte header";
    return Scan::kFatal;
  }
  if (body > limits_.max_frame_bytes) {
    *status = 413;
    *error = "frame of " + std::to_string(body) + " bytes exceeds the limit of " +
             std::to_string(limits_.max_frame_bytes) + " bytes";
    return Scan::kFatal;
  }
  *frame_bytes = kPrefixBytes + static_cast<uint64_t>(body);
  return len >= *frame_bytes ? Scan::kComplete : Scan::kNeedMore;
}

bool Parser::parse(const uint8_t* buf, size_t len, Frame* f, std::string* error) {
  f->header_ok = false;
  f->n_tensors = 0;
  f->outputs.clear();
  f->model = f->version = f->message = std::string_view();
  f->timeout_us = 0;
  Reader r(buf, len, kPrefixBytes);
  if (!r.need(kHeaderBytes, "the header", error)) return false;
  r.u32();  // magic and version were checked by scan()
  r.u8();
  f->type = r.u8();
  f->flags = r.u16();
  f->request_id = r.u64();
  f->header_ok = true;
  switch (f->type) {
    case kInferRequest: {
      if (!r.need(4, "timeout", error)) return false;
      f->timeout_us = r.u32();
      if (!r.name(&f->model, limits_.max_name_bytes, "model name", error)) return false;
      if (!r.name(&f->version, limits_.max_name_bytes, "model version", error)) return false;
      if (!r.need(2, "output count", error)) return false;
      uint16_t n_out = r.u16();
      if (n_out > limits_.max_tensors) {
        *error = std::to_string(n_out) + " requested outputs exceed the limit of " + std::to_string(limits_.max_tensors);
        return false;
      }
      for (uint16_t i = 0; i < n_out; ++i) {
        std::string_view name;
        if (!r.name(&name, limits_.max_name_bytes, "requested output name", error)) return false;
        f->outputs.push_back(name);
      }
      if (f->model.empty()) {
        *error = "request names no model";
        return false;
      }
      if (!parse_tensors(r, limits_, f, error)) return false;
      break;
    }
    case kInferResponse:
      if (!r.name(&f->model, limits_.max_name_bytes, "model name", error)) return false;
      if (!r.name(&f->version, limits_.max_name_bytes, "model version", error)) return false;
      if (!parse_tensors(r, limits_, f, error)) return false;
      break;
    case kError: {
      if (!r.need(8, "error status and message length", error)) return false;
      f->status = r.u16();
      f->error_kind = r.u8();
      r.u8();
      uint32_t n = r.u32();
      if (!r.need(n, "error message", error)) return false;
      f->message = std::string_view(reinterpret_cast<const char*>(r.here()), n);
      r.skip(n);
      break;
    }
    case kPing:
    case kPong:
      break;
    default:
      *error = "unknown frame type " + std::to_string(f->type);
      return false;
  }
  if (r.remaining() >= kAlign) {
    *error = std::to_string(r.remaining()) + " unexpected bytes after the frame's last field";
    return false;
  }
  return true;
}

void FrameSize::add_tensor(size_t name_bytes, size_t rank, size_t nbytes) {
  n_ += 2 + name_bytes + 2 + 8 * rank + 8;
  n_ = (n_ + kAlign - 1) / kAlign * kAlign;
  n_ += nbytes;
}

void Writer::header(uint8_t type, uint16_t flags, uint64_t request_id) {
  u32(kMagic);
  u8(kVersion);
  u8(type);
  u16(flags);
  u64(request_id);
}

void Writer::u16(uint16_t v) {
  buf_[pos_] = static_cast<uint8_t>(v);
  buf_[pos_ + 1] = static_cast<uint8_t>(v >> 8);
  pos_ += 2;
}

void Writer::u32(uint32_t v) {
  std::memcpy(buf_ + pos_, &v, 4);
  pos_ += 4;
}

void Writer::u64(uint64_t v) {
  std::memcpy(buf_ + pos_, &v, 8);
  pos_ += 8;
}

void Writer::bytes(const void* p, size_t n) {
  if (n) std::memcpy(buf_ + pos_, p, n);
  pos_ += n;
}

void Writer::name(std::string_view s) {
  u16(static_cast<uint16_t>(s.size()));
  bytes(s.data(), s.size());
}

void Writer::tensor_header(std::string_view name_, uint8_t dtype, const int64_t* dims, size_t rank, uint64_t nbytes) {
  name(name_);
  u8(dtype);
  u8(static_cast<uint8_t>(rank));
  for (size_t i = 0; i < rank; ++i) u64(static_cast<uint64_t>(dims[i]));
  u64(nbytes);
  while (pos_ % kAlign) buf_[pos_++] = 0;
}

bool Writer::finish() {
  if (pos_ > total_) return false;
  std::memset(buf_ + pos_, 0, total_ - pos_);
  uint32_t body = static_cast<uint32_t>(total_ - kPrefixBytes);
  std::memcpy(buf_, &body, 4);
  return true;
}

}  // namespace fastml::frames
