// pybind11 module fastml._frames: the binary protocol's frames <-> Python objects (numpy arrays, tuples).
//
// Parsing turns each complete frame in a receive buffer into one tuple whose tensors are read-only numpy
// views of that buffer (the array's base is the buffer object, so the memory lives as long as any view).
// Encoding writes a whole frame into one bytes object sized in advance. Only this file includes pybind11;
// frame_parser.{h,cc} are plain C++.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "frame_parser.h"
#include "frame_submit_api.h"
#include "sink_bindings.h"

namespace py = pybind11;
using namespace fastml::frames;

namespace {

// numpy dtype per protocol dtype code (index = code; 0 unused). Filled once at import.
std::array<py::object, kMaxDType + 1>& dtype_table() {
  static std::array<py::object, kMaxDType + 1>* table = new std::array<py::object, kMaxDType + 1>();  // leaked on purpose: lives until interpreter exit
  return *table;
}

py::object decode_name(std::string_view s, bool* ok) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "strict");
  if (o == nullptr) {
    PyErr_Clear();
    *ok = false;
    return py::none();
  }
  return py::reinterpret_steal<py::object>(o);
}

// Error messages quote names from the wire, which may not be UTF-8: decode them leniently.
py::object message_str(const std::string& s) {
  return py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
}

// A read-only numpy view of one tensor's bytes inside `base`, or (BYTES) an object array of str.
py::object tensor_array(const Tensor& t, py::handle base, std::string* error) {
  std::vector<py::ssize_t> shape(t.dims.begin(), t.dims.end());
  if (t.dtype == kBytes) {
    // ONNX string tensors hold text: elements become str, and bytes that are not UTF-8 are refused (the
    // HTTP transport does the same).
    py::list items(static_cast<size_t>(t.count));
    size_t i = 0;
    bool ok = for_each_bytes_element(
        t.data, t.nbytes, t.count,
        [&](const uint8_t* p, size_t n) {
          PyObject* s = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(p), static_cast<Py_ssize_t>(n), "strict");
          if (s == nullptr) {
            PyErr_Clear();
            *error = "BYTES element " + std::to_string(i) + " of tensor '" + std::string(t.name) + "' is not UTF-8 text";
            return false;
          }
          PyList_SET_ITEM(items.ptr(), static_cast<Py_ssize_t>(i), s);  // steals the new reference
          ++i;
          return true;
        },
        error);
    if (!ok) return py::object();
    py::array flat(py::dtype("O"), std::vector<py::ssize_t>{static_cast<py::ssize_t>(t.count)});
    auto** slots = static_cast<PyObject**>(flat.mutable_data());
    for (size_t k = 0; k < t.count; ++k) {
      PyObject* item = PyList_GET_ITEM(items.ptr(), static_cast<Py_ssize_t>(k));
      Py_INCREF(item);  // the array keeps its own reference; the list drops its one when it dies
      Py_XDECREF(slots[k]);
      slots[k] = item;
    }
    py::tuple dims(shape.size());
    for (size_t k = 0; k < shape.size(); ++k) dims[k] = py::int_(shape[k]);
    return flat.attr("reshape")(dims);
  }
  py::array arr(py::reinterpret_borrow<py::dtype>(dtype_table()[t.dtype]), std::move(shape), t.data, base);
  // Views of the receive buffer are read-only: a model that writes into its input would corrupt the
  // bytes of a neighbouring frame.
  py::detail::array_proxy(arr.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return std::move(arr);
}

py::object tensors_dict(const Frame& f, py::handle base, std::string* error) {
  py::dict out;
  for (size_t i = 0; i < f.n_tensors; ++i) {
    const Tensor& t = f.tensors[i];
    bool ok = true;
    py::object name = decode_name(t.name, &ok);
    if (!ok) {
      *error = "tensor " + std::to_string(i) + " name is not UTF-8";
      return py::object();
    }
    if (PyDict_Contains(out.ptr(), name.ptr()) == 1) {
      *error = "tensor '" + std::string(t.name) + "' appears twice";
      return py::object();
    }
    py::object arr = tensor_array(t, base, error);
    if (!arr) return py::object();
    out[name] = arr;
  }
  return std::move(out);
}

// Turns one parsed frame into its tuple; on a body error returns (0, request_id or None, 400, message).
py::tuple frame_tuple(const Frame& f, py::handle base) {
  std::string error;
  bool ok = true;
  switch (f.type) {
    case kInferRequest: {
      py::object model = decode_name(f.model, &ok);
      py::object version = f.version.empty() ? py::none() : decode_name(f.version, &ok);
      py::object outputs = py::none();
      if (!f.outputs.empty()) {
        py::list names;
        for (auto s : f.outputs) names.append(decode_name(s, &ok));
        outputs = std::move(names);
      }
      if (!ok) {
        error = "a model, version or output name is not UTF-8";
        break;
      }
      py::object inputs = tensors_dict(f, base, &error);
      if (!inputs) break;
      return py::make_tuple(int(kInferRequest), f.request_id, model, version, f.timeout_us, inputs, outputs);
    }
    case kInferResponse: {
      py::object model = decode_name(f.model, &ok);
      py::object version = decode_name(f.version, &ok);
      if (!ok) {
        error = "the model name or version is not UTF-8";
        break;
      }
      py::object outputs = tensors_dict(f, base, &error);
      if (!outputs) break;
      return py::make_tuple(int(kInferResponse), f.request_id, model, version, outputs);
    }
    case kError: {
      py::object message = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeUTF8(f.message.data(), static_cast<Py_ssize_t>(f.message.size()), "replace"));
      return py::make_tuple(int(kError), f.request_id, f.status, f.error_kind, message, f.flags);
    }
    default:
      return py::make_tuple(int(f.type), f.request_id);
  }
  return py::make_tuple(0, f.request_id, 400, message_str(error));
}

// What the parser and the intake report for a stream that cannot go on (status, message, the request id when the
// header was there to read it) and for one frame refused whole (0, its request id when known, 400, message).
py::object fatal_item(const uint8_t* at, size_t avail, int status, const std::string& error) {
  py::object rid = py::none();
  uint32_t body = 0;
  if (avail >= kPrefixBytes) std::memcpy(&body, at, 4);
  if (avail >= kPrefixBytes + kHeaderBytes && body >= kHeaderBytes) {  // the id only from this frame's own header
    uint64_t id;
    std::memcpy(&id, at + kPrefixBytes + 8, 8);
    rid = py::int_(id);
  }
  return py::make_tuple(status, message_str(error), rid);
}

py::object refused_item(const Frame& frame, const std::string& error) {
  py::object rid = frame.header_ok ? py::object(py::int_(frame.request_id)) : py::object(py::none());
  return py::make_tuple(0, rid, 400, message_str(error));
}

class PyParser {
 public:
  PyParser(uint64_t max_frame_bytes, uint32_t max_tensors, uint32_t max_rank, uint32_t max_name_bytes)
      : parser_(Limits{max_frame_bytes, max_tensors, max_rank, max_name_bytes}) {}

  // Parses up to max_frames complete frames from buf[start:end].
  // Returns (consumed, items, need, fatal): consumed = bytes used from start; items = one tuple per frame;
  // need = total size of the next, incomplete frame once its prefix is known (else 0); fatal = None or
  // (status, message, request_id or None) when the stream cannot continue.
  py::tuple parse(py::object buf, size_t start, size_t end, size_t max_frames) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(buf).request();
    if (end > static_cast<size_t>(info.size * info.itemsize) || start > end) {
      throw py::value_error("parse range outside the buffer");
    }
    const uint8_t* base = static_cast<const uint8_t*>(info.ptr);
    py::list items;
    size_t pos = start;
    uint64_t need = 0;
    py::object fatal = py::none();
    while (static_cast<size_t>(py::len(items)) < max_frames) {
      uint64_t frame_bytes = 0;
      int status = 0;
      std::string error;
      Scan s = parser_.scan(base + pos, end - pos, &frame_bytes, &status, &error);
      if (s == Scan::kNeedMore) {
        need = frame_bytes;
        break;
      }
      if (s == Scan::kFatal) {
        fatal = fatal_item(base + pos, end - pos, status, error);
        break;
      }
      if (!parser_.parse(base + pos, static_cast<size_t>(frame_bytes), &frame_, &error)) {
        items.append(refused_item(frame_, error));
      } else {
        items.append(frame_tuple(frame_, buf));
      }
      pos += static_cast<size_t>(frame_bytes);
    }
    return py::make_tuple(pos - start, items, need, fatal);
  }

 private:
  Parser parser_;
  Frame frame_;  // scratch reused across frames
};

// ---- encoding --------------------------------------------------------------------------------------------

struct OutTensor {
  py::object name_obj;  // keeps the UTF-8 buffer of `name` alive
  std::string_view name;
  uint8_t dtype = 0;
  std::vector<int64_t> dims;
  // Fixed-size dtypes: a C-contiguous little-endian array (a py::object: py::array's default constructor
  // would allocate an empty numpy array per tensor).
  py::object arr;
  const void* data = nullptr;                   // fixed-size dtypes: the bytes written (inside `arr`'s memory)
  std::vector<py::object> keep;                 // BYTES: encoded elements kept alive while writing
  std::vector<std::string_view> elements;       // BYTES: element bytes
  uint64_t nbytes = 0;
};

std::string_view utf8_of(py::handle s, const char* what) {
  if (!PyUnicode_Check(s.ptr())) throw py::type_error(std::string(what) + " must be a str");
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
  if (p == nullptr) throw py::error_already_set();
  if (n > 0xFFFF) throw py::value_error(std::string(what) + " is longer than 65535 bytes");
  return std::string_view(p, static_cast<size_t>(n));
}

uint8_t dtype_code(const py::dtype& dt) {
  char kind = dt.kind();
  py::ssize_t size = dt.itemsize();
  switch (kind) {
    case 'b':
      return kBool;
    case 'u':
      return size == 1 ? kUint8 : size == 2 ? kUint16 : size == 4 ? kUint32 : size == 8 ? kUint64 : 0;
    case 'i':
      return size == 1 ? kInt8 : size == 2 ? kInt16 : size == 4 ? kInt32 : size == 8 ? kInt64 : 0;
    case 'f':
      return size == 2 ? kFp16 : size == 4 ? kFp32 : size == 8 ? kFp64 : 0;
    case 'O':
    case 'U':
    case 'S':
      return kBytes;
    default:
      return 0;
  }
}

void prepare(py::handle name, py::handle value, OutTensor* t) {
  // Leaked on purpose: a static py::object would be destroyed after the interpreter finalised.
  static py::object& ascontiguous = *new py::object(py::module_::import("numpy").attr("ascontiguousarray"));
  t->name_obj = py::reinterpret_borrow<py::object>(name);
  t->name = utf8_of(name, "a tensor name");
  // An ndarray is taken as it is (the common case: an engine output); anything else goes through numpy.
  py::array arr = py::detail::npy_api::get().PyArray_Check_(value.ptr()) ? py::reinterpret_borrow<py::array>(value)
                                                                          : py::array::ensure(value);
  if (!arr) {
    PyErr_Clear();
    throw py::value_error("tensor '" + std::string(t->name) + "' is not convertible to a numpy array");
  }
  py::dtype dt = arr.dtype();
  t->dtype = dtype_code(dt);
  if (t->dtype == 0) {
    throw py::value_error("tensor '" + std::string(t->name) + "': numpy dtype " + py::str(dt).cast<std::string>() +
                          " has no KServe datatype");
  }
  if (arr.ndim() > 255) throw py::value_error("tensor '" + std::string(t->name) + "' has more than 255 dimensions");
  t->dims.assign(arr.shape(), arr.shape() + arr.ndim());
  if (t->dtype == kBytes) {
    py::object flat = arr.attr("reshape")(-1);
    size_t n = static_cast<size_t>(arr.size());
    t->keep.reserve(n);
    t->elements.reserve(n);
    size_t i = 0;
    for (py::handle item : flat) {
      py::object keep = py::reinterpret_borrow<py::object>(item);
      char* p = nullptr;
      Py_ssize_t len = 0;
      if (PyUnicode_Check(item.ptr())) {
        const char* u = PyUnicode_AsUTF8AndSize(item.ptr(), &len);
        if (u == nullptr) throw py::error_already_set();
        p = const_cast<char*>(u);
      } else if (PyBytes_Check(item.ptr())) {
        PyBytes_AsStringAndSize(item.ptr(), &p, &len);
      } else {
        throw py::value_error("tensor '" + std::string(t->name) + "': BYTES element " + std::to_string(i) + " is " +
                              std::string(Py_TYPE(item.ptr())->tp_name) + ", expected str or bytes");
      }
      if (static_cast<uint64_t>(len) > 0xFFFFFFFFull) throw py::value_error("a BYTES element exceeds 4 GiB");
      t->elements.emplace_back(p, static_cast<size_t>(len));
      t->keep.push_back(std::move(keep));
      t->nbytes += 4 + static_cast<uint64_t>(len);
      ++i;
    }
    return;
  }
  bool swap = dt.byteorder() == '>';
  bool contiguous = (arr.flags() & py::array::c_style) != 0;
  if (swap) {
    arr = ascontiguous(arr, dt.attr("newbyteorder")("<"));
  } else if (!contiguous) {
    arr = ascontiguous(arr);
  }
  t->nbytes = static_cast<uint64_t>(arr.nbytes());
  t->data = arr.data();
  t->arr = std::move(arr);
}

void collect(py::handle tensors, std::vector<OutTensor>* out) {
  if (PyDict_CheckExact(tensors.ptr())) {
    // The answer path's case (a result dict per request): walked in place, no items view or pair tuples.
    out->reserve(static_cast<size_t>(PyDict_GET_SIZE(tensors.ptr())));
    Py_ssize_t pos = 0;
    PyObject *key, *value;  // borrowed from the dict
    while (PyDict_Next(tensors.ptr(), &pos, &key, &value)) {
      out->emplace_back();
      prepare(key, value, &out->back());
    }
    if (out->size() > 0xFFFF) throw py::value_error("more than 65535 tensors");
    return;
  }
  py::object items = py::isinstance<py::dict>(tensors) ? py::reinterpret_borrow<py::dict>(tensors).attr("items")()
                                                       : py::reinterpret_borrow<py::object>(tensors);
  for (py::handle pair : items) {
    py::tuple kv = py::reinterpret_borrow<py::tuple>(pair);
    if (kv.size() != 2) throw py::value_error("tensors must be a dict or (name, array) pairs");
    out->emplace_back();
    prepare(kv[0], kv[1], &out->back());
  }
  if (out->size() > 0xFFFF) throw py::value_error("more than 65535 tensors");
}

void size_tensors(const std::vector<OutTensor>& ts, FrameSize* size) {
  size->add(2);
  for (const auto& t : ts) size->add_tensor(t.name.size(), t.dims.size(), static_cast<size_t>(t.nbytes));
}

void write_tensors(const std::vector<OutTensor>& ts, Writer* w) {
  w->u16(static_cast<uint16_t>(ts.size()));
  for (const auto& t : ts) {
    w->tensor_header(t.name, t.dtype, t.dims.data(), t.dims.size(), t.nbytes);
    if (t.dtype == kBytes) {
      for (auto e : t.elements) {
        w->u32(static_cast<uint32_t>(e.size()));
        w->bytes(e.data(), e.size());
      }
    } else {
      w->bytes(t.data, static_cast<size_t>(t.nbytes));
    }
  }
}

py::bytes new_frame(size_t total, uint8_t** data) {
  if (total - kPrefixBytes > 0xFFFFFFFFull) throw py::value_error("frame exceeds 4 GiB");
  PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
  if (b == nullptr) throw py::error_already_set();
  *data = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(b));
  return py::reinterpret_steal<py::bytes>(b);
}

py::bytes encode_request(uint64_t request_id, py::object model, py::object version, py::handle tensors,
                         py::object outputs, uint32_t timeout_us) {
  std::string_view model_s = utf8_of(model, "the model name");
  std::string_view version_s = version.is_none() ? std::string_view() : utf8_of(version, "the model version");
  std::vector<std::string_view> outs;
  if (!outputs.is_none()) {
    for (py::handle o : outputs) outs.push_back(utf8_of(o, "an output name"));  // kept alive by `outputs`
    if (outs.size() > 0xFFFF) throw py::value_error("more than 65535 requested outputs");
  }
  std::vector<OutTensor> ts;
  collect(tensors, &ts);
  FrameSize size;
  size.add(4);
  size.add_name(model_s.size());
  size.add_name(version_s.size());
  size.add(2);
  for (auto o : outs) size.add_name(o.size());
  size_tensors(ts, &size);
  uint8_t* data = nullptr;
  py::bytes frame = new_frame(size.total(), &data);
  Writer w(data, size.total());
  w.header(kInferRequest, 0, request_id);
  w.u32(timeout_us);
  w.name(model_s);
  w.name(version_s);
  w.u16(static_cast<uint16_t>(outs.size()));
  for (auto o : outs) w.name(o);
  write_tensors(ts, &w);
  if (!w.finish()) throw std::logic_error("frame size computation is wrong");
  return frame;
}

py::bytes encode_response(uint64_t request_id, py::object model, py::object version, py::handle tensors) {
  std::string_view model_s = utf8_of(model, "the model name");
  std::string_view version_s = utf8_of(version, "the model version");
  std::vector<OutTensor> ts;
  collect(tensors, &ts);
  FrameSize size;
  size.add_name(model_s.size());
  size.add_name(version_s.size());
  size_tensors(ts, &size);
  uint8_t* data = nullptr;
  py::bytes frame = new_frame(size.total(), &data);
  Writer w(data, size.total());
  w.header(kInferResponse, 0, request_id);
  w.name(model_s);
  w.name(version_s);
  write_tensors(ts, &w);
  if (!w.finish()) throw std::logic_error("frame size computation is wrong");
  return frame;
}

py::bytes encode_error(uint64_t request_id, uint16_t status, uint8_t kind, py::object message, uint16_t flags) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(message.ptr(), &n);
  if (p == nullptr) throw py::error_already_set();
  FrameSize size;
  size.add(8 + static_cast<size_t>(n));
  uint8_t* data = nullptr;
  py::bytes frame = new_frame(size.total(), &data);
  Writer w(data, size.total());
  w.header(kError, flags, request_id);
  w.u16(status);
  w.u8(kind);
  w.u8(0);
  w.u32(static_cast<uint32_t>(n));
  w.bytes(p, static_cast<size_t>(n));
  if (!w.finish()) throw std::logic_error("frame size computation is wrong");
  return frame;
}

py::bytes encode_control(uint8_t type, uint64_t request_id) {
  if (type != kPing && type != kPong) throw py::value_error("control frames are PING (4) or PONG (5)");
  FrameSize size;
  uint8_t* data = nullptr;
  py::bytes frame = new_frame(size.total(), &data);
  Writer w(data, size.total());
  w.header(type, 0, request_id);
  if (!w.finish()) throw std::logic_error("frame size computation is wrong");
  return frame;
}


// ---- answers of one connection -------------------------------------------------------------------------

// The answers a server connection owes, encoded natively into one growing buffer that the event loop takes
// (and writes with one transport.write) once per completion pass. The engine settles each request through
// its Sink (set_result / set_exception, called by the batcher's resolve with the GIL held), so an answer
// costs no Python code: the response frame is written here and the request id is recorded. The first
// answer after a take() calls `notify` (no arguments), which schedules the Python side once per pass.
// Errors are rare and worded by the Python layer: `on_error(request_id, exception)` returns the error frame.
//
// Threading: the GIL guards everything (the event loop thread and the engine's resolve both hold it).
// Reference cycle: notify and on_error are bound methods of the connection, which holds this object;
// close() drops them once the connection has nothing in flight (pybind11 objects are invisible to the GC).
class Answers {
 public:
  Answers(py::object notify, py::object on_error) : notify_(std::move(notify)), on_error_(std::move(on_error)) {}

  // Appends the response frame of `request_id`. Throws (with nothing appended) if a tensor cannot be encoded.
  void add_response(uint64_t request_id, std::string_view model, std::string_view version, py::handle tensors) {
    std::vector<OutTensor> ts;
    collect(tensors, &ts);
    add_tensors(request_id, model, version, ts);
  }

  // Appends the response frame of `request_id` carrying `ts`.
  void add_tensors(uint64_t request_id, std::string_view model, std::string_view version,
                   const std::vector<OutTensor>& ts) {
    FrameSize size;
    size.add_name(model.size());
    size.add_name(version.size());
    size_tensors(ts, &size);
    const size_t total = size.total();
    if (total - kPrefixBytes > 0xFFFFFFFFull) throw py::value_error("frame exceeds 4 GiB");
    const size_t start = buf_.size();
    buf_.resize(start + total);
    Writer w(buf_.data() + start, total);
    w.header(kInferResponse, 0, request_id);
    w.name(model);
    w.name(version);
    write_tensors(ts, &w);
    if (!w.finish()) throw std::logic_error("frame size computation is wrong");
  }

  // Appends an already encoded frame (bytes).
  void add_frame(py::handle frame) {
    char* p = nullptr;
    Py_ssize_t n = 0;
    if (PyBytes_AsStringAndSize(frame.ptr(), &p, &n) != 0) throw py::error_already_set();
    buf_.insert(buf_.end(), reinterpret_cast<uint8_t*>(p), reinterpret_cast<uint8_t*>(p) + n);
  }

  // The error frame for `exc`, from the Python layer, appended.
  void add_error(uint64_t request_id, py::handle exc) {
    if (on_error_.is_none()) return;  // closed: nobody reads the answer
    add_frame(on_error_(request_id, exc));
  }

  // Records that `request_id` is answered and wakes the Python side once per pass.
  void answered(uint64_t request_id) {
    rids_.push_back(request_id);
    if (!due_ && !notify_.is_none()) {
      due_ = true;
      notify_();
    }
  }

  // (frame bytes or None, [request ids answered]) since the last take; resets both.
  py::tuple take() {
    py::object data = py::none();
    if (!buf_.empty()) {
      data = py::reinterpret_steal<py::object>(
          PyBytes_FromStringAndSize(reinterpret_cast<const char*>(buf_.data()), static_cast<Py_ssize_t>(buf_.size())));
      if (!data) throw py::error_already_set();
      // A burst's large buffer is not kept for ever: memory stays bounded by the answers of one pass.
      if (buf_.capacity() > kKeepBytes) {
        std::vector<uint8_t>().swap(buf_);
      } else {
        buf_.clear();
      }
    }
    py::list rids(rids_.size());
    for (size_t i = 0; i < rids_.size(); ++i) {
      PyObject* v = PyLong_FromUnsignedLongLong(rids_[i]);
      if (!v) throw py::error_already_set();
      PyList_SET_ITEM(rids.ptr(), static_cast<Py_ssize_t>(i), v);  // steals the new reference
    }
    rids_.clear();
    due_ = false;
    return py::make_tuple(data, rids);
  }

  // Drops the callbacks (breaking the cycle through the connection); later answers are only counted.
  void close() {
    notify_ = py::none();
    on_error_ = py::none();
    closed_ = true;
  }

  bool closed() const { return closed_; }
  size_t pending_bytes() const { return buf_.size(); }

 private:
  static constexpr size_t kKeepBytes = 1 << 20;
  py::object notify_;
  py::object on_error_;
  std::vector<uint8_t> buf_;
  std::vector<uint64_t> rids_;
  bool due_ = false;
  bool closed_ = false;
};

// Describes rows [row_offset, row_offset + rows) of each array of `outputs` (a list) as OutTensors pointing
// into the arrays (which the caller keeps alive while writing). False when one is not a C-contiguous
// little-endian array of a fixed-size dtype holding those rows.
bool rows_of(PyObject* outputs, void* const* names, int64_t row_offset, int64_t rows, std::vector<OutTensor>* ts) {
  auto& api = py::detail::npy_api::get();
  for (size_t i = 0; i < ts->size(); ++i) {
    PyObject* a = PyList_GET_ITEM(outputs, static_cast<Py_ssize_t>(i));  // borrowed from the list
    if (!api.PyArray_Check_(a)) return false;
    auto* arr = py::detail::array_proxy(a);
    if (arr->nd < 1 || !(arr->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) return false;
    py::dtype dt = py::reinterpret_borrow<py::dtype>(arr->descr);
    uint8_t code = dtype_code(dt);
    if (code == 0 || code == kBytes || dt.byteorder() == '>') return false;
    if (row_offset < 0 || rows < 0 || row_offset + rows > arr->dimensions[0]) return false;
    // Row bytes from the shape, not strides[0]: numpy may give a dimension of 1 any stride.
    int64_t row_bytes = static_cast<int64_t>(dt.itemsize());
    for (int d = 1; d < arr->nd; ++d) row_bytes *= arr->dimensions[d];
    OutTensor& t = (*ts)[i];
    t.name = utf8_of(static_cast<PyObject*>(names[i]), "an output name");
    t.dtype = code;
    t.dims.assign(arr->dimensions, arr->dimensions + arr->nd);
    t.dims[0] = rows;
    t.data = arr->data + row_offset * row_bytes;
    t.nbytes = static_cast<uint64_t>(rows * row_bytes);
  }
  return true;
}

// One in-flight request's completion target: what the batcher's resolve calls instead of an asyncio
// future's set_result / set_exception. Holds the model name and version the answer carries.
class Sink {
 public:
  Sink(std::shared_ptr<Answers> answers, uint64_t request_id, py::str model, py::str version)
      : answers_(std::move(answers)), request_id_(request_id), model_(std::move(model)), version_(std::move(version)) {}

  // Never raises: the batcher settles a whole batch in one call, and every request must be recorded as
  // answered (its in-flight bookkeeping is closed from the recorded ids).
  void set_result(py::handle outputs) {
    if (!answers_->closed()) {
      try {
        answers_->add_response(request_id_, utf8_of(model_, "the model name"), utf8_of(version_, "the model version"),
                               outputs);
      } catch (py::error_already_set& e) {
        error(e.value());
      } catch (const std::exception& e) {
        error(py::reinterpret_borrow<py::object>(PyExc_ValueError)(std::string(e.what())));
      }
    }
    done_ = true;
    answers_->answered(request_id_);
  }

  void set_exception(py::handle exc) {
    if (!answers_->closed()) error(exc);
    done_ = true;
    answers_->answered(request_id_);
  }

  // The batcher's direct answer (csrc/frame_submit_api.h): rows [row_offset, row_offset + rows) of each batch
  // output, written with no result dict. Returns 1 (nothing done) when an output is not a C-contiguous
  // little-endian array of a fixed-size dtype with those rows, else 0, having settled as set_result does.
  int answer_rows(PyObject* outputs, void* const* names, size_t n, int64_t row_offset, int64_t rows) {
    std::vector<OutTensor> ts(n);
    if (!rows_of(outputs, names, row_offset, rows, &ts)) return 1;
    if (!answers_->closed()) {
      try {
        answers_->add_tensors(request_id_, utf8_of(model_, "the model name"), utf8_of(version_, "the model version"),
                              ts);
      } catch (py::error_already_set& e) {
        error(e.value());
      } catch (const std::exception& e) {
        error(py::reinterpret_borrow<py::object>(PyExc_ValueError)(std::string(e.what())));
      }
    }
    done_ = true;
    answers_->answered(request_id_);
    return 0;
  }

  uint64_t request_id() const { return request_id_; }
  // Whether it was settled (asyncio.Future's spelling, which the engine's Python reference batcher reads).
  bool done() const { return done_; }

 private:
  // The Python layer words the error frame; if even that fails, a plain internal error is sent.
  void error(py::handle exc) {
    try {
      answers_->add_error(request_id_, exc);
    } catch (py::error_already_set& e) {
      answers_->add_frame(encode_error(request_id_, 500, 9, py::str("internal error: the error could not be encoded"), 0));
    }
  }

  std::shared_ptr<Answers> answers_;
  uint64_t request_id_;
  py::str model_;
  py::str version_;
  bool done_ = false;
};

// ---- Sink's Python type ------------------------------------------------------------------------------------

// The Python face of Sink: a plain CPython type (csrc/sink_bindings.h says why). Not instantiable from Python
// (Answers.sink makes them).
using PySink = fastml::native_sink::SinkObject<Sink>;

PyTypeObject* g_sink_type = nullptr;  // created at import; an owned reference kept for the interpreter's life

py::object new_sink(std::shared_ptr<Answers> answers, uint64_t request_id, py::str model, py::str version) {
  return fastml::native_sink::make_sink<Sink>(g_sink_type, std::move(answers), request_id, std::move(model),
                                              std::move(version));
}

PyObject* sink_request_id(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(fastml::native_sink::sink_of<Sink>(self)->request_id());
}

PyMethodDef sink_methods[] = {
    {"set_result", fastml::native_sink::set_result<Sink>, METH_O,
     "Encode the answer (a dict of output arrays) into the connection's Answers."},
    {"set_exception", fastml::native_sink::set_exception<Sink>, METH_O,
     "Answer with the error frame the connection words for the exception."},
    {"done", fastml::native_sink::done<Sink>, METH_NOARGS, "Whether set_result or set_exception was called."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef sink_getset[] = {
    {"request_id", sink_request_id, nullptr, "The request id the answer carries.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot sink_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(fastml::native_sink::dealloc<Sink>)},
    {Py_tp_methods, sink_methods},
    {Py_tp_getset, sink_getset},
    {Py_tp_doc, const_cast<char*>("A request's completion target: set_result(outputs) / set_exception(exc).")},
    {0, nullptr},
};

PyType_Spec sink_spec = {"fastml._frames.Sink", sizeof(PySink), 0,
                         Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, sink_slots};

// ---- native intake: request frames straight into the model's batcher ----------------------------------

// The batcher's submit entry point, from fastml._core's capsule (csrc/frame_submit_api.h); looked up once.
const fastml::FrameSubmitApi* submit_api() {
  // From the first call on the batcher answers this module's sinks through the answer hook (no result dict per
  // request).
  static const fastml::FrameSubmitApi* api =
      fastml::native_sink::open_submit_api("fastml._frames", g_sink_type, &fastml::native_sink::answer<Sink>);
  return api;
}

// numpy's kind character per protocol dtype code (what the batcher's input specs hold); 0 for BYTES/unknown.
char dtype_kind(uint8_t dtype) {
  switch (dtype) {
    case kBool:
      return 'b';
    case kUint8:
    case kUint16:
    case kUint32:
    case kUint64:
      return 'u';
    case kInt8:
    case kInt16:
    case kInt32:
    case kInt64:
      return 'i';
    case kFp16:
    case kFp32:
    case kFp64:
      return 'f';
    default:
      return 0;
  }
}

// One connection's request intake: walks every complete frame of a receive buffer and submits each plain
// request (an INFER_REQUEST naming no outputs, whose tensors are exactly the model's inputs) straight to the
// model's batcher, with TensorViews of the frame's bytes and a Sink answering into the connection's Answers.
// Per request that is one Sink and one (sink, buffer) tuple for the core; no numpy array, dict or future.
// Everything else (other frame types, malformed frames, requested outputs, BYTES tensors, inputs the
// batcher refuses, a duplicate request id, a model without a native route, a request the admission bound
// does not clear here) comes back as the parser's tuple for the Python path, which answers it as before.
//
// Routes: the first plain request for a (model, version) in a call asks `open_route(model, version,
// timeout_us)` (Python) for the model's batcher, completion queue and admission bound, or None (Python path
// for every request of that model in this call). Routes live for one call only, so a model unloaded or
// re-routed between reads is never used stale. Each call returns, per route used, how many requests it
// submitted, so the caller closes the data plane's books once per route per read.
//
// Threading: the event loop's thread, GIL held throughout (the batcher's Submit takes only its short lock).
class Intake {
 public:
  Intake(std::shared_ptr<Answers> answers, uint64_t max_frame_bytes, uint32_t max_tensors, uint32_t max_rank,
         uint32_t max_name_bytes)
      : answers_(std::move(answers)), parser_(Limits{max_frame_bytes, max_tensors, max_rank, max_name_bytes}) {}

  // Takes up to max_frames complete frames of buf[start:end] (submitted ones included).
  // Returns (consumed, items, need, fatal, routes): as Parser.parse, plus routes = [(token, submitted,
  // inflight_before, timeout_us)] for each route that submitted requests. `inflight` (request id -> token)
  // gets each submitted request; an id already in it takes the Python path (which answers the duplicate).
  py::tuple submit(py::object buf, size_t start, size_t end, size_t max_frames, py::dict inflight,
                   py::object open_route) {
    const fastml::FrameSubmitApi* api = submit_api();
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(buf).request();
    if (end > static_cast<size_t>(info.size * info.itemsize) || start > end) {
      throw py::value_error("parse range outside the buffer");
    }
    const uint8_t* base = static_cast<const uint8_t*>(info.ptr);
    py::list items;
    size_t pos = start;
    size_t taken = 0;
    uint64_t need = 0;
    py::object fatal = py::none();
    routes_.clear();
    try {
      while (taken < max_frames) {
        uint64_t frame_bytes = 0;
        int status = 0;
        std::string error;
        Scan s = parser_.scan(base + pos, end - pos, &frame_bytes, &status, &error);
        if (s == Scan::kNeedMore) {
          need = frame_bytes;
          break;
        }
        if (s == Scan::kFatal) {
          fatal = fatal_item(base + pos, end - pos, status, error);
          break;
        }
        if (!parser_.parse(base + pos, static_cast<size_t>(frame_bytes), &frame_, &error)) {
          items.append(refused_item(frame_, error));
        } else if (!(frame_.type == kInferRequest && frame_.outputs.empty() &&
                     submit_frame(api, buf, inflight, open_route))) {
          items.append(frame_tuple(frame_, buf));
        }
        ++taken;
        pos += static_cast<size_t>(frame_bytes);
      }
    } catch (py::error_already_set& e) {
      // Frames already submitted are accounted for below; this connection cannot go on reliably.
      fatal = py::make_tuple(500, py::str(std::string("internal error: ") + e.what()), py::none());
    } catch (const std::exception& e) {
      fatal = py::make_tuple(500, py::str(std::string("internal error: ") + e.what()), py::none());
    }
    py::list used;
    for (Route& r : routes_) {
      if (r.target != nullptr) api->close(r.target);
      r.target = nullptr;
      if (r.submitted > 0) used.append(py::make_tuple(r.token, r.submitted, r.inflight_before, r.timeout_us));
    }
    routes_.clear();
    return py::make_tuple(pos - start, items, need, fatal, used);
  }

 private:
  struct Route {
    std::string model;    // as on the wire
    std::string version;  // as on the wire ("" = default)
    py::object token;     // the caller's (the model entry), handed back with the count
    py::object batcher;   // fastml._core.Batcher: keeps `target` valid
    py::object queue;     // its CompletionQueue for this event loop
    py::str name;         // the model name and version the answers carry
    py::str answer_version;
    void* target = nullptr;               // null: this model takes the Python path in this call
    uint32_t timeout_us = 0;              // the frames' timeout this route admits (the first frame's)
    int64_t core_timeout_us = 0;          // what the batcher gets (the model's default for 0)
    std::vector<std::string> inputs;      // the model's input names, in input order
    int64_t inflight_before = 0;          // the model's requests in flight when the route opened
    int64_t max_inflight = 0;             // admission bound: a request with more ahead takes the Python path
    int64_t submitted = 0;
  };

  Route* route_for(const Frame& f, py::handle open_route) {
    for (Route& r : routes_) {
      if (r.model == f.model && r.version == f.version) return &r;
    }
    bool ok = true;
    py::object model = decode_name(f.model, &ok);
    py::object version = f.version.empty() ? py::none() : decode_name(f.version, &ok);
    if (!ok) return nullptr;  // the Python path words the error
    routes_.emplace_back();
    Route& r = routes_.back();
    r.model = std::string(f.model);
    r.version = std::string(f.version);
    py::object got;
    try {
      got = open_route(model, version, f.timeout_us);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("fastml._frames.Intake: open_route");  // a bug in the opener: Python path
      return &r;
    }
    if (got.is_none()) return &r;
    py::tuple t = py::reinterpret_borrow<py::tuple>(got);
    if (t.size() != 8) throw py::value_error("open_route must return None or an 8-tuple");
    r.token = t[0];
    r.batcher = t[1];
    r.queue = t[2];
    r.name = py::str(t[3]);
    r.answer_version = py::str(t[4]);
    r.core_timeout_us = t[5].cast<int64_t>();
    for (py::handle n : py::reinterpret_borrow<py::sequence>(t[6])) r.inputs.emplace_back(utf8_of(n, "an input name"));
    r.max_inflight = t[7].cast<int64_t>();
    r.inflight_before = r.token.attr("inflight").cast<int64_t>();
    r.timeout_us = f.timeout_us;
    std::string error;
    r.target = submit_api()->open(r.batcher.ptr(), r.queue.ptr(), &error);
    if (r.target == nullptr) throw py::type_error(error);
    return &r;
  }

  // Submits the parsed request frame_ natively; false (nothing submitted) sends it down the Python path.
  bool submit_frame(const fastml::FrameSubmitApi* api, py::handle buf, py::dict& inflight, py::handle open_route) {
    const Frame& f = frame_;
    py::object rid = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(f.request_id));
    if (!rid) throw py::error_already_set();
    int has = PyDict_Contains(inflight.ptr(), rid.ptr());
    if (has < 0) throw py::error_already_set();
    if (has) return false;
    Route* r = route_for(f, open_route);
    if (r == nullptr || r->target == nullptr || f.timeout_us != r->timeout_us) return false;
    // The admission bound was computed for requests with at most max_inflight ahead of them.
    if (r->inflight_before + r->submitted > r->max_inflight) return false;
    if (f.n_tensors != r->inputs.size()) return false;
    views_.resize(r->inputs.size());
    for (size_t i = 0; i < r->inputs.size(); ++i) {
      const Tensor* t = nullptr;
      for (size_t j = 0; j < f.n_tensors; ++j) {
        if (f.tensors[j].name == r->inputs[i]) {
          t = &f.tensors[j];
          break;
        }
      }
      // A missing input (so also a duplicated one: as many tensors as inputs) or a BYTES tensor.
      if (t == nullptr) return false;
      char kind = dtype_kind(t->dtype);
      if (kind == 0) return false;
      fastml::TensorView& v = views_[i];
      v.data = t->data;
      v.kind = kind;
      v.itemsize = static_cast<int64_t>(dtype_itemsize(t->dtype));
      v.native_order = true;  // the wire is little-endian, as is every machine we build for
      v.c_contiguous = true;
      v.shape.assign(t->dims.begin(), t->dims.end());
    }
    py::object sink = new_sink(answers_, f.request_id, r->name, r->answer_version);
    // New reference owned by the core once submitted: the sink it settles and the buffer the views point into.
    PyObject* keep = PyTuple_Pack(2, sink.ptr(), buf.ptr());
    if (keep == nullptr) throw py::error_already_set();
    std::string message;
    // The batcher takes the views (it moves them); on a refusal it leaves them for the next frame to refill.
    if (api->submit(r->target, &views_, r->core_timeout_us, keep, &message) != 0) {
      Py_DECREF(keep);  // never enqueued: the Python path submits the frame again and words the refusal
      return false;
    }
    ++r->submitted;
    // Books are closed from here on by the answers' request ids (a failure now would lose them: raise).
    if (PyDict_SetItem(inflight.ptr(), rid.ptr(), r->token.ptr()) < 0) throw py::error_already_set();
    return true;
  }

  std::shared_ptr<Answers> answers_;
  Parser parser_;
  Frame frame_;                            // scratch reused across frames
  std::vector<fastml::TensorView> views_;  // scratch reused across frames
  std::vector<Route> routes_;              // this call's routes
};

}  // namespace

PYBIND11_MODULE(_frames, m) {
  m.doc() = "fastml binary protocol v1: native frame parser and encoder (see docs/protocol.md)";
  auto& table = dtype_table();
  const char* names[kMaxDType + 1] = {nullptr, "?", "<u1", "<u2", "<u4", "<u8", "<i1", "<i2",
                                      "<i4",   "<i8", "<f2", "<f4", "<f8", "O"};
  for (int i = 1; i <= kMaxDType; ++i) table[i] = py::dtype(names[i]);

  m.attr("MAGIC") = kMagic;
  m.attr("VERSION") = kVersion;
  m.attr("INVALID") = 0;
  m.attr("INFER_REQUEST") = int(kInferRequest);
  m.attr("INFER_RESPONSE") = int(kInferResponse);
  m.attr("ERROR") = int(kError);
  m.attr("PING") = int(kPing);
  m.attr("PONG") = int(kPong);

  py::class_<PyParser>(m, "Parser")
      .def(py::init<uint64_t, uint32_t, uint32_t, uint32_t>(), py::arg("max_frame_bytes") = 64ull << 20,
           py::arg("max_tensors") = 64, py::arg("max_rank") = 16, py::arg("max_name_bytes") = 1024)
      .def("parse", &PyParser::parse, py::arg("buf"), py::arg("start"), py::arg("end"), py::arg("max_frames"),
           "Parse up to max_frames frames of buf[start:end] -> (consumed, items, need, fatal).");
  py::class_<Answers, std::shared_ptr<Answers>>(m, "Answers",
                                                 "One connection's answers, encoded natively into one buffer.")
      .def(py::init<py::object, py::object>(), py::arg("notify"), py::arg("on_error"))
      .def("sink",
           [](const std::shared_ptr<Answers>& self, uint64_t request_id, py::str model, py::str version) {
             return new_sink(self, request_id, std::move(model), std::move(version));
           },
           py::arg("request_id"), py::arg("model"), py::arg("version"),
           "A Sink answering `request_id` into this buffer (pass it to DataPlane.submit_sink).")
      .def("add_response",
           [](Answers& self, uint64_t request_id, py::str model, py::str version, py::handle tensors) {
             self.add_response(request_id, utf8_of(model, "the model name"), utf8_of(version, "the model version"),
                               tensors);
           },
           py::arg("request_id"), py::arg("model"), py::arg("version"), py::arg("tensors"))
      .def("add_frame", &Answers::add_frame, py::arg("frame"))
      .def("take", &Answers::take, "(frames bytes or None, [request ids answered]) since the last take.")
      .def("close", &Answers::close, "Drop the callbacks; later answers are recorded but not encoded.")
      .def_property_readonly("closed", &Answers::closed)
      .def_property_readonly("pending_bytes", &Answers::pending_bytes);
  g_sink_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&sink_spec));  // kept: see g_sink_type
  if (g_sink_type == nullptr) throw py::error_already_set();
  m.attr("Sink") = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(g_sink_type));
  py::class_<Intake>(m, "Intake", "One connection's request intake: frames straight into the batcher.")
      .def(py::init<std::shared_ptr<Answers>, uint64_t, uint32_t, uint32_t, uint32_t>(), py::arg("answers"),
           py::arg("max_frame_bytes") = 64ull << 20, py::arg("max_tensors") = 64, py::arg("max_rank") = 16,
           py::arg("max_name_bytes") = 1024)
      .def("submit", &Intake::submit, py::arg("buf"), py::arg("start"), py::arg("end"), py::arg("max_frames"),
           py::arg("inflight"), py::arg("open_route"),
           "Submit the plain requests of buf[start:end] natively -> (consumed, items, need, fatal, routes).");
  m.def("encode_request", &encode_request, py::arg("request_id"), py::arg("model"), py::arg("version"),
        py::arg("tensors"), py::arg("outputs") = py::none(), py::arg("timeout_us") = 0);
  m.def("encode_response", &encode_response, py::arg("request_id"), py::arg("model"), py::arg("version"),
        py::arg("tensors"));
  m.def("encode_error", &encode_error, py::arg("request_id"), py::arg("status"), py::arg("kind"),
        py::arg("message"), py::arg("flags") = 0);
  m.def("encode_control", &encode_control, py::arg("type"), py::arg("request_id"));
}
