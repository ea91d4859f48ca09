// pybind11 module fastml._http_intake: the KServe v2 HTTP transport's native intake.
//
// One Intake per connection takes each read in one call: llhttp (request_scanner.h) walks every complete
// request, and a plain binary-tensor inference request (POST /v2/models/<name>[/versions/<v>]/infer,
// HTTP/1.1 keep-alive, Inference-Header-Content-Length with every input binary and fixed-size, a request
// header whose plan the Python path built and marked native-able) is submitted straight into the model's
// batcher through the capsule API (csrc/frame_submit_api.h), with TensorViews into the read's bytes. Its
// answer is written by a Sink (a plain CPython type the batcher's resolve settles like a future) into the
// connection's Outbox, which keeps answers in request order and writes the ready ones with one
// transport.write. The first request the intake does not take, and everything after it in the read, goes to
// the Python path (fastml.server.http) unchanged: that path words every refusal, so the bytes a client gets
// back for a request the intake declines are the Python path's by construction.
//
// Threading: the event loop's thread, GIL held throughout (the batcher's resolve holds it too).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "frame_submit_api.h"
#include "sink_bindings.h"
#include "llhttp.h"
#include "request_scanner.h"

namespace py = pybind11;
using fastml::http::Request;
using fastml::http::Scan;

namespace {

// ---- the plan of one request header ----------------------------------------------------------------------

// One binary input of a request header, in body order.
struct InputPart {
  std::string name;
  char kind = 'f';
  int64_t itemsize = 4;
  std::vector<int64_t> shape;
  size_t offset = 0;  // after the JSON header
  size_t nbytes = 0;
};

// A request header the Python path planned (fastml.server.http_native.open_plan) and found native-able:
// every input binary and fixed-size, every output binary, no id, no parameters the fast path does not keep.
struct NativePlan {
  py::object entry;  // the model entry it was planned for (held: identity is the cache key)
  std::string header;
  py::object plan;   // fastml.server.tensors.Plan: what the Python encoder needs on a cache miss
  std::vector<InputPart> parts;
  size_t binary_size = 0;
  std::vector<py::object> out_names;  // str, in the answer's order
  std::string extra_headers;          // header lines every answer carries (a deployment's fastml-variant)
  // open_plan found the header not native-able (a timeout, JSON tensors, ...): remembered, so a client sending
  // it again goes to the Python path without the Python decoder running twice per request.
  bool declined = false;
  // The request's Triton `timeout` parameter in microseconds (0: none): its requests take that route.
  int64_t timeout_us = 0;
  // Each answered output's index among the model's outputs (the batcher's direct answer); filled on first use.
  std::vector<size_t> out_index;
  size_t out_index_of = 0;  // the model's output count out_index was computed for
  // Pre-encoded JSON answer headers by output shapes (ndim, dims..., per output), as the Python path caches.
  std::vector<std::pair<std::vector<int64_t>, std::string>> heads;
};

constexpr size_t kMaxPlans = 16;  // per connection; a client cycling headers falls back to the Python call
constexpr size_t kMaxHeads = 32;  // per plan (output shapes), as the Python path's _RESPONSE_HEADERS_MAX

// ---- the connection's answers, in request order ------------------------------------------------------------

// The answers a connection owes to requests the intake took, in arrival order. A Sink fills its slot; the
// ready prefix goes out in one transport.write. The Python path's answers wait for this queue to empty (the
// intake takes no request while the Python path has answers pending), so a pipelined client always reads its
// answers in request order, whichever path each request took.
class Outbox {
 public:
  Outbox(py::object write, py::object on_idle, py::object on_error, py::object encode, py::object plane,
         py::object server, bool completed_takes_ok)
      : completed_takes_ok_(completed_takes_ok),
        write_(std::move(write)),
        on_idle_(std::move(on_idle)),
        on_error_(std::move(on_error)),
        encode_(std::move(encode)),
        plane_(std::move(plane)),
        server_(std::move(server)) {
    completed_ = plane_.attr("completed");
  }

  uint64_t push() {
    slots_.emplace_back();
    return base_ + slots_.size() - 1;
  }
  void pop_back() { slots_.pop_back(); }
  size_t outstanding() const { return slots_.size(); }

  // Whether an answer written now ends the connection (the server is draining).
  bool closing() {
    int d = PyObject_IsTrue(py::getattr(plane_, "draining").ptr());
    if (d < 0) throw py::error_already_set();
    return d == 1;
  }

  // Slot `seq` holds its answer: close the request's books, then write the ready prefix.
  void fill(uint64_t seq, std::string data, bool close, py::handle entry, bool ok) {
    if (seq >= base_ && seq - base_ < slots_.size()) {
      Slot& s = slots_[static_cast<size_t>(seq - base_)];
      s.data = std::move(data);
      s.ready = true;
      s.close = close;
    }
    // DataPlane.completed(entry[, ok]): `ok` only where the data plane takes it (completed_takes_ok).
    py::object r = py::reinterpret_steal<py::object>(
        completed_takes_ok_
            ? PyObject_CallFunctionObjArgs(completed_.ptr(), entry.ptr(), ok ? Py_True : Py_False, nullptr)
            : PyObject_CallOneArg(completed_.ptr(), entry.ptr()));
    if (!r) throw py::error_already_set();
    if (ok) {
      py::object n = py::getattr(server_, "ok_count");
      server_.attr("ok_count") = n + py::int_(1);
    }
    flush();
  }

  // Slot `seq` holds the answer of a request refused before it was submitted (a 503 shed): written in its turn,
  // with no books to close (the refusal was counted when it was worded).
  void fill_refused(uint64_t seq, std::string data, bool close) {
    if (seq >= base_ && seq - base_ < slots_.size()) {
      Slot& s = slots_[static_cast<size_t>(seq - base_)];
      s.data = std::move(data);
      s.ready = true;
      s.close = close;
    }
    flush();
  }

  void flush() {
    if (slots_.empty() || !slots_.front().ready) return;
    std::string out;
    bool close = false;
    while (!slots_.empty() && slots_.front().ready) {
      Slot& s = slots_.front();
      if (out.empty()) {
        out.swap(s.data);
      } else {
        out += s.data;
      }
      close = s.close;
      slots_.pop_front();
      ++base_;
      if (close) break;
    }
    if (close) {
      // The answer that ends the connection is its last: later ones are never written.
      base_ += slots_.size();
      slots_.clear();
    }
    if (!closed_ && !out.empty()) {
      py::object data = py::reinterpret_steal<py::object>(
          PyBytes_FromStringAndSize(out.data(), static_cast<Py_ssize_t>(out.size())));
      if (!data) throw py::error_already_set();
      write_(data);
    }
    if (!closed_ && (close || (slots_.empty() && want_idle_))) {
      want_idle_ = false;
      on_idle_(close);
    }
  }

  // An error answer for `exc`, worded by the Python layer (status and message as the Python path's).
  std::string error_answer(py::handle exc, bool close) {
    py::object data = on_error_(exc, close);
    char* p = nullptr;
    Py_ssize_t n = 0;
    if (PyBytes_AsStringAndSize(data.ptr(), &p, &n) != 0) throw py::error_already_set();
    return std::string(p, static_cast<size_t>(n));
  }

  // The Python encoder's (response, pre-encoded head or None, ok); `request_id` None or the id to answer with.
  py::object encode(py::handle entry, py::handle plan, py::handle outputs, bool close, py::handle request_id) {
    return encode_(entry, plan, outputs, py::bool_(close), request_id);
  }

  void set_want_idle(bool v) { want_idle_ = v; }
  bool closed() const { return closed_; }

  // The connection is gone: answers still arrive (their books are closed) but nothing is written.
  void close() {
    closed_ = true;
    // Drops the callbacks: they are the connection's bound methods, and this object is invisible to the GC.
    write_ = py::none();
    on_idle_ = py::none();
    on_error_ = py::none();
    encode_ = py::none();
  }

 private:
  struct Slot {
    std::string data;
    bool ready = false;
    bool close = false;
  };
  bool completed_takes_ok_;
  py::object write_, on_idle_, on_error_, encode_, plane_, server_, completed_;
  std::deque<Slot> slots_;
  uint64_t base_ = 0;  // the sequence number of slots_.front()
  bool want_idle_ = false;
  bool closed_ = false;
};

// ---- the answer of one request -------------------------------------------------------------------------------

constexpr std::string_view kCloseHdr = "Connection: close\r\n";

void append_int(std::string* s, uint64_t v) {
  char buf[24];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) s->push_back(buf[--n]);
}

// One in-flight request's completion target (what the batcher's resolve calls instead of an asyncio
// future's set_result / set_exception).
class Sink {
 public:
  Sink(std::shared_ptr<Outbox> outbox, uint64_t seq, py::object entry, std::shared_ptr<NativePlan> plan,
       std::string id)
      : outbox_(std::move(outbox)), seq_(seq), entry_(std::move(entry)), plan_(std::move(plan)), id_(std::move(id)) {}

  void set_result(py::handle outputs) {
    done_ = true;
    if (outbox_->closed()) {  // the connection is gone: close the books only
      outbox_->fill(seq_, std::string(), false, entry_, true);
      return;
    }
    bool close = outbox_->closing();
    std::string data;
    bool ok = true;
    if (!answer(outputs, close, &data, &ok)) {
      // The first answer of these output shapes, or outputs the native encoder does not write (strings,
      // big-endian, strided): the Python encoder, which also pre-encodes the head for the next ones.
      py::tuple got = outbox_->encode(entry_, plan_->plan, outputs, close, py::none());
      ok = got[2].cast<bool>();
      data = std::string(py::bytes(got[0]));
      if (!got[1].is_none() && plan_->heads.size() < kMaxHeads) {
        std::vector<int64_t> key;
        if (shapes_key(outputs, &key)) plan_->heads.emplace_back(std::move(key), std::string(py::bytes(got[1])));
      }
      if (ok && !id_.empty() && !(data.clear(), answer(outputs, close, &data, &ok))) {
        // That answer lacks the request's id: written natively from the head just cached, or else by the
        // Python encoder with the id.
        got = outbox_->encode(entry_, plan_->plan, outputs, close, py::str(id_));
        ok = got[2].cast<bool>();
        data = std::string(py::bytes(got[0]));
      }
    }
    outbox_->fill(seq_, std::move(data), close, entry_, ok);
  }

  void set_exception(py::handle exc) {
    done_ = true;
    if (outbox_->closed()) {
      outbox_->fill(seq_, std::string(), false, entry_, false);
      return;
    }
    bool close = outbox_->closing();
    std::string data = outbox_->error_answer(exc, close);
    outbox_->fill(seq_, std::move(data), close, entry_, false);
  }

  bool done() const { return done_; }

  // The batcher's direct answer (csrc/frame_submit_api.h): rows [row_offset, row_offset + rows) of each batch
  // output (`outputs`, a list in the model's output order; `names`, their str objects), written with no result
  // dict, row views or set_result call. Returns 1 (nothing done: the batcher calls set_result) when an output is
  // not a C-contiguous native-order array of a fixed-size dtype, or no head was pre-encoded for these shapes.
  int answer_rows(PyObject* outputs, void* const* names, size_t n, int64_t row_offset, int64_t rows) {
    if (outbox_->closed()) return 1;
    NativePlan& p = *plan_;
    if (p.out_index_of != n || p.out_index.size() != p.out_names.size()) {
      p.out_index.clear();
      for (const py::object& name : p.out_names) {
        size_t found = n;
        for (size_t i = 0; i < n && found == n; ++i) {
          PyObject* o = static_cast<PyObject*>(names[i]);
          if (o == name.ptr() || (PyUnicode_Check(o) && PyUnicode_Compare(o, name.ptr()) == 0)) found = i;
        }
        if (PyErr_Occurred()) PyErr_Clear();
        if (found == n) {
          p.out_index.clear();
          return 1;
        }
        p.out_index.push_back(found);
      }
      p.out_index_of = n;
    }
    auto& api = py::detail::npy_api::get();
    std::vector<int64_t> key;
    std::vector<std::string_view> blobs;
    blobs.reserve(p.out_index.size());
    for (size_t idx : p.out_index) {
      PyObject* a = PyList_GET_ITEM(outputs, static_cast<Py_ssize_t>(idx));  // borrowed
      if (!api.PyArray_Check_(a)) return 1;
      auto* arr = py::detail::array_proxy(a);
      if (arr->nd < 1 || !(arr->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) return 1;
      py::dtype dt = py::reinterpret_borrow<py::dtype>(arr->descr);
      const char kind = dt.kind();
      if ((kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f') || dt.byteorder() == '>') return 1;
      if (row_offset < 0 || rows < 0 || row_offset + rows > arr->dimensions[0]) return 1;
      int64_t row_bytes = static_cast<int64_t>(dt.itemsize());
      key.push_back(arr->nd);
      key.push_back(rows);
      for (int d = 1; d < arr->nd; ++d) {
        row_bytes *= arr->dimensions[d];
        key.push_back(arr->dimensions[d]);
      }
      blobs.emplace_back(arr->data + row_offset * row_bytes, static_cast<size_t>(rows * row_bytes));
    }
    const std::string* head = find_head(key);
    if (head == nullptr) return 1;
    done_ = true;
    const bool close = outbox_->closing();
    std::string data;
    write_response(*head, blobs, close, &data);
    outbox_->fill(seq_, std::move(data), close, entry_, true);
    return 0;
  }

 private:
  const std::string* find_head(const std::vector<int64_t>& key) const {
    for (const auto& h : plan_->heads) {
      if (h.first == key) return &h.second;
    }
    return nullptr;
  }

  // The whole 200 response: status line and headers as the Python path writes them, the JSON head, the tensors.
  void write_response(const std::string& head, const std::vector<std::string_view>& blobs, bool close,
                      std::string* out) const {
    size_t blob = 0;
    for (std::string_view b : blobs) blob += b.size();
    std::string& s = *out;
    // The request's id leads the JSON head, as the Python encoder writes it: {"id":"...",...}.
    const size_t head_bytes = head.size() + (id_.empty() ? 0 : id_.size() + 8);
    s.reserve(160 + plan_->extra_headers.size() + head_bytes + blob);
    s.append("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: ");
    append_int(&s, head_bytes);
    s.append("\r\nContent-Length: ");
    append_int(&s, head_bytes + blob);
    s.append("\r\n");
    if (close) s.append(kCloseHdr);
    s.append(plan_->extra_headers);
    s.append("\r\n");
    if (id_.empty()) {
      s.append(head);
    } else {
      // An id the intake takes is plain characters, so its JSON is itself.
      s.push_back('{');
      s.append("\"id\":\"");
      s.append(id_);
      s.append("\",");
      s.append(head, 1, std::string::npos);
    }
    for (std::string_view b : blobs) s.append(b.data(), b.size());
  }

  // The output arrays in the answer's order when each is a C-contiguous, native-order numpy array of a
  // fixed-size dtype; their shapes as the heads' key.
  bool shapes_key(py::handle outputs, std::vector<int64_t>* key, std::vector<Py_buffer>* views = nullptr) {
    if (!PyDict_Check(outputs.ptr())) return false;
    for (const py::object& name : plan_->out_names) {
      PyObject* a = PyDict_GetItemWithError(outputs.ptr(), name.ptr());  // borrowed
      if (a == nullptr) {
        PyErr_Clear();
        return false;
      }
      Py_buffer b;
      if (PyObject_GetBuffer(a, &b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) != 0) {
        PyErr_Clear();
        return false;
      }
      // One format character, native order and size (numpy's '=', '<' on little-endian, or none).
      const char* f = b.format == nullptr ? "B" : b.format;
      if (*f == '<' || *f == '=') ++f;
      bool fixed = std::strchr("?bBhHiIlLqQefd", *f) != nullptr && f[0] != '\0' && f[1] == '\0';
      if (!fixed) {
        PyBuffer_Release(&b);
        return false;
      }
      key->push_back(b.ndim);
      for (int d = 0; d < b.ndim; ++d) key->push_back(b.shape[d]);
      if (views != nullptr) {
        views->push_back(b);
      } else {
        PyBuffer_Release(&b);
      }
    }
    return true;
  }

  // The whole response from a pre-encoded head; false when there is none for these shapes (or an output
  // is not plain), leaving the answer to the Python encoder.
  bool answer(py::handle outputs, bool close, std::string* data, bool* ok) {
    std::vector<int64_t> key;
    std::vector<Py_buffer> views;
    views.reserve(plan_->out_names.size());
    const std::string* head = shapes_key(outputs, &key, &views) ? find_head(key) : nullptr;
    if (head != nullptr) {
      std::vector<std::string_view> blobs;
      blobs.reserve(views.size());
      for (const Py_buffer& b : views) blobs.emplace_back(static_cast<const char*>(b.buf), static_cast<size_t>(b.len));
      write_response(*head, blobs, close, data);
    }
    for (Py_buffer& b : views) PyBuffer_Release(&b);
    *ok = true;
    return head != nullptr;
  }

  std::shared_ptr<Outbox> outbox_;
  uint64_t seq_;
  py::object entry_;
  std::shared_ptr<NativePlan> plan_;
  std::string id_;  // the request's "id" ("" when it has none)
  bool done_ = false;
};

// ---- Sink's Python type (a plain CPython type: csrc/sink_bindings.h) -----------------------------------------

using PySink = fastml::native_sink::SinkObject<Sink>;

PyTypeObject* g_sink_type = nullptr;  // created at import; kept for the interpreter's life

py::object new_sink(std::shared_ptr<Outbox> outbox, uint64_t seq, py::object entry, std::shared_ptr<NativePlan> plan,
                    std::string id) {
  return fastml::native_sink::make_sink<Sink>(g_sink_type, std::move(outbox), seq, std::move(entry), std::move(plan),
                                              std::move(id));
}

PyMethodDef sink_methods[] = {
    {"set_result", fastml::native_sink::set_result<Sink>, METH_O,
     "Write the answer (a dict of output arrays) into the connection's outbox."},
    {"set_exception", fastml::native_sink::set_exception<Sink>, METH_O,
     "Answer with the error response the Python layer words."},
    {"done", fastml::native_sink::done<Sink>, METH_NOARGS, "Whether set_result or set_exception was called."},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot sink_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(fastml::native_sink::dealloc<Sink>)},
    {Py_tp_methods, sink_methods},
    {Py_tp_doc, const_cast<char*>("An HTTP request's completion target: set_result(outputs) / set_exception(exc).")},
    {0, nullptr},
};

PyType_Spec sink_spec = {"fastml._http_intake.Sink", sizeof(PySink), 0,
                         Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, sink_slots};

// ---- the intake ---------------------------------------------------------------------------------------------

const fastml::FrameSubmitApi* submit_api() {
  // From the first call on the batcher answers this module's sinks through the answer hook (no result dict per
  // request).
  static const fastml::FrameSubmitApi* api =
      fastml::native_sink::open_submit_api("fastml._http_intake", g_sink_type, &fastml::native_sink::answer<Sink>);
  return api;
}

// A model or version name the fast path takes from a URL as it is: what routes.route would percent-decode or
// refuse is left to it.
bool plain_name(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.';
    if (!ok) return false;
  }
  return true;
}

// A request header's top-level "id" taken out: 1 with the header re-written without it in *canonical and the id
// in *id; 0 when the header has no top-level "id"; -1 (the Python path serves the request) when in doubt: not
// a JSON object, an id twice, an id that is not a string of 1-64 plain characters (letters, digits, . _ : -),
// whose JSON would need escaping. The plan is then built by the Python path's decoder from *canonical, so the
// intake takes a request only if that decoder accepts the same header without its id.
int strip_id(std::string_view header, std::string* canonical, std::string* id) {
  rapidjson::Document d;
  d.Parse(header.data(), header.size());
  if (d.HasParseError() || !d.IsObject()) return -1;
  int ids = 0;
  for (auto m = d.MemberBegin(); m != d.MemberEnd(); ++m) {
    if (m->name.GetStringLength() == 2 && std::memcmp(m->name.GetString(), "id", 2) == 0) ++ids;
  }
  if (ids == 0) return 0;
  if (ids > 1) return -1;
  auto it = d.FindMember("id");
  if (it == d.MemberEnd() || !it->value.IsString()) return -1;
  const size_t n = it->value.GetStringLength();
  if (n == 0 || n > 64) return -1;
  const char* v = it->value.GetString();
  for (size_t i = 0; i < n; ++i) {
    const char c = v[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == ':' || c == '-')) {
      return -1;
    }
  }
  id->assign(v, n);
  d.EraseMember(it);  // keeps the other members in order
  rapidjson::StringBuffer out;
  rapidjson::Writer<rapidjson::StringBuffer> w(out);
  if (!d.Accept(w)) return -1;
  canonical->assign(out.GetString(), out.GetSize());
  return 1;
}

// "/v2/models/<name>[/versions/<v>]/infer" -> name, version ("" when absent).
bool infer_url(std::string_view url, std::string_view* name, std::string_view* version) {
  constexpr std::string_view prefix = "/v2/models/";
  constexpr std::string_view suffix = "/infer";
  if (url.size() <= prefix.size() + suffix.size() || url.substr(0, prefix.size()) != prefix ||
      url.substr(url.size() - suffix.size()) != suffix) {
    return false;
  }
  std::string_view mid = url.substr(prefix.size(), url.size() - prefix.size() - suffix.size());
  size_t slash = mid.find('/');
  if (slash == std::string_view::npos) {
    *name = mid;
    *version = std::string_view();
    return plain_name(mid);
  }
  *name = mid.substr(0, slash);
  std::string_view rest = mid.substr(slash);
  constexpr std::string_view versions = "/versions/";
  if (rest.substr(0, versions.size()) != versions) return false;
  *version = rest.substr(versions.size());
  return plain_name(*name) && plain_name(*version);
}

class Intake {
 public:
  Intake(std::shared_ptr<Outbox> outbox, py::object open_route, py::object open_plan, size_t max_pipelined,
         int64_t max_body_bytes, size_t max_headers, size_t max_header_bytes, py::object shed, py::object token)
      : outbox_(std::move(outbox)),
        open_route_(std::move(open_route)),
        open_plan_(std::move(open_plan)),
        shed_(std::move(shed)),
        token_(token.is_none() ? std::string() : py::bytes(token).cast<std::string>()),
        max_pipelined_(max_pipelined),
        max_body_bytes_(max_body_bytes),
        max_headers_(max_headers),
        max_header_bytes_(max_header_bytes) {}

  // Takes the requests of one read (after whatever partial request the last read left here). Returns
  // (rest, routes, paused): rest = bytes for the Python path from the first request the intake did not take
  // (None when it took them all or keeps a partial one); routes = [(entry, submitted, inflight_before,
  // timeout_us)] per route that submitted; paused = the pipeline bound stopped it with bytes kept here
  // (feed it b"" once answers went out).
  py::tuple feed(py::bytes data) {
    const fastml::FrameSubmitApi* api = submit_api();
    py::object buf;
    if (carry_.empty()) {
      buf = data;
    } else {
      carry_.append(PyBytes_AS_STRING(data.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(data.ptr())));
      buf = py::reinterpret_steal<py::object>(
          PyBytes_FromStringAndSize(carry_.data(), static_cast<Py_ssize_t>(carry_.size())));
      if (!buf) throw py::error_already_set();
      carry_.clear();
    }
    const uint8_t* base = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(buf.ptr()));
    const size_t len = static_cast<size_t>(PyBytes_GET_SIZE(buf.ptr()));
    size_t pos = 0;
    py::object rest = py::none();
    bool paused = false;
    routes_.clear();
    try {
      while (pos < len) {
        if (outbox_->outstanding() >= max_pipelined_) {
          carry_.assign(reinterpret_cast<const char*>(base + pos), len - pos);
          paused = true;
          break;
        }
        Request r;
        bool head_done = false;
        Scan s = fastml::http::scan(base + pos, len - pos, &r, &head_done);
        if (s == Scan::kNeedMore) {
          // A request head still arriving is kept here only while nothing seen so far would make the Python
          // path answer before the request is whole (it refuses a bad length header or too many headers as soon
          // as it reads them). Once the head is complete with the body still arriving, the Python path takes it:
          // it reserves the declared body against the server's byte budget (--max-buffered-bytes) and answers
          // 503 at once when the budget is spent, which bytes waiting here would escape.
          const bool clean = !r.unusual && r.ihcl != -2 && r.header_count <= max_headers_ &&
                             r.header_bytes <= max_header_bytes_ && r.content_length <= kCarryBodyBytes &&
                             r.content_length <= max_body_bytes_;
          const bool keep = !head_done && clean && len - pos <= max_header_bytes_;
          if (keep) {
            carry_.assign(reinterpret_cast<const char*>(base + pos), len - pos);
          } else {
            rest = tail(buf, base, pos, len);
          }
          break;
        }
        if (s == Scan::kError || !take(api, r, buf)) {
          rest = tail(buf, base, pos, len);
          break;
        }
        pos += r.total;
      }
    } catch (...) {
      close_routes(api);
      throw;
    }
    py::list used;
    for (Route& r : routes_) {
      if (r.submitted > 0) used.append(py::make_tuple(r.token, r.submitted, r.inflight_before, r.timeout_us));
    }
    close_routes(api);
    return py::make_tuple(rest, used, paused);
  }

  // Bytes of a partial request kept for the next read.
  size_t carried() const { return carry_.size(); }

  // The bytes kept here, for the Python path (the intake steps aside); the carry is emptied.
  py::bytes take_carry() {
    py::bytes out(carry_.data(), carry_.size());
    carry_.clear();
    return out;
  }

 private:
  static constexpr int64_t kCarryBodyBytes = 64 << 10;  // a bigger body streams through the Python path

  struct Route {
    std::string name, version;
    int64_t asked_timeout_us = 0;  // the request's Triton `timeout` parameter (0: none): part of the key
    py::object token, batcher, queue;
    void* target = nullptr;
    int64_t timeout_us = 0;  // what the batcher is given: the asked timeout, or the model's default
    std::vector<std::string> inputs;
    int64_t inflight_before = 0;
    int64_t max_inflight = 0;
    int64_t submitted = 0;
  };

  static py::object tail(const py::object& buf, const uint8_t* base, size_t pos, size_t len) {
    if (pos == 0) return buf;
    return py::bytes(reinterpret_cast<const char*>(base + pos), len - pos);
  }

  void close_routes(const fastml::FrameSubmitApi* api) {
    for (Route& r : routes_) {
      if (r.target != nullptr) api->close(r.target);
      r.target = nullptr;
    }
    routes_.clear();
  }

  // The route of (model, version, asked timeout) for this read. The pointer is valid until the next call (routes_
  // may grow).
  Route* route_for(std::string_view name, std::string_view version, int64_t asked_timeout_us) {
    for (Route& r : routes_) {
      if (r.name == name && r.version == version && r.asked_timeout_us == asked_timeout_us) return &r;
    }
    routes_.emplace_back();
    Route& r = routes_.back();
    r.name = std::string(name);
    r.version = std::string(version);
    r.asked_timeout_us = asked_timeout_us;
    py::object got = open_route_(py::str(r.name), version.empty() ? py::object(py::none()) : py::str(r.version),
                                 asked_timeout_us);
    if (got.is_none()) return &r;
    py::tuple t = py::reinterpret_borrow<py::tuple>(got);
    if (t.size() != 8) throw py::value_error("open_route must return None or an 8-tuple");
    r.token = t[0];
    r.batcher = t[1];
    r.queue = t[2];
    r.timeout_us = t[5].cast<int64_t>();
    for (py::handle n : py::reinterpret_borrow<py::sequence>(t[6])) r.inputs.emplace_back(py::str(n).cast<std::string>());
    r.max_inflight = t[7].cast<int64_t>();
    r.inflight_before = r.token.attr("inflight").cast<int64_t>();
    std::string error;
    r.target = submit_api()->open(r.batcher.ptr(), r.queue.ptr(), &error);
    if (r.target == nullptr) throw py::type_error(error);
    return &r;
  }

  // Request (url, JSON header) pairs open_plan refused on this connection (a Triton timeout parameter, JSON
  // tensors, ...): a client repeating one goes to the Python path at once, without a route opened for it (a
  // Python call) or the Python decoder running for it twice.
  bool declined(std::string_view url, std::string_view header) const {
    for (const auto& d : declined_) {
      if (d.first == url && d.second == header) return true;
    }
    return false;
  }

  void remember_declined(std::string_view url, std::string_view header) {
    if (declined_.size() >= kMaxPlans) declined_.pop_front();
    declined_.emplace_back(std::string(url), std::string(header));
  }

  std::shared_ptr<NativePlan> plan_for(const Route& r, std::string_view header) {
    for (const auto& p : plans_) {
      if (p->entry.ptr() == r.token.ptr() && p->header == header) return p->declined ? nullptr : p;
    }
    py::object got = open_plan_(r.token, py::bytes(header.data(), header.size()));
    auto p = std::make_shared<NativePlan>();
    p->entry = r.token;
    p->header = std::string(header);
    if (got.is_none()) {
      p->declined = true;
      if (plans_.size() >= kMaxPlans) plans_.pop_front();
      plans_.push_back(std::move(p));
      return nullptr;
    }
    py::tuple t = py::reinterpret_borrow<py::tuple>(got);
    p->plan = t[0];
    for (py::handle part : py::reinterpret_borrow<py::sequence>(t[1])) {
      py::tuple q = py::reinterpret_borrow<py::tuple>(part);
      InputPart ip;
      ip.name = py::str(q[0]).cast<std::string>();
      ip.kind = q[1].cast<std::string>().at(0);
      ip.itemsize = q[2].cast<int64_t>();
      for (py::handle d : py::reinterpret_borrow<py::sequence>(q[3])) ip.shape.push_back(d.cast<int64_t>());
      ip.offset = q[4].cast<size_t>();
      ip.nbytes = q[5].cast<size_t>();
      p->parts.push_back(std::move(ip));
    }
    p->binary_size = t[2].cast<size_t>();
    for (py::handle n : py::reinterpret_borrow<py::sequence>(t[3])) p->out_names.push_back(py::reinterpret_borrow<py::object>(n));
    if (t.size() > 4) p->extra_headers = py::bytes(t[4]).cast<std::string>();
    if (t.size() > 5) p->timeout_us = t[5].cast<int64_t>();
    if (plans_.size() >= kMaxPlans) plans_.pop_front();
    plans_.push_back(p);
    return p;
  }

  // With a token required for inference: whether `value` (an Authorization header) is exactly "Bearer <token>"
  // (the scheme in any case, surrounding whitespace allowed), compared in time independent of where it differs.
  // Anything else, a wrong token included, goes to the Python path, which answers it (401) in its own words;
  // a form the Python path also accepts (several spaces after the scheme) only loses the fast path.
  bool authorized(std::string_view value) const {
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; };
    while (!value.empty() && space(value.front())) value.remove_prefix(1);
    while (!value.empty() && space(value.back())) value.remove_suffix(1);
    static constexpr std::string_view kScheme = "bearer ";
    if (value.size() != kScheme.size() + token_.size()) return false;
    for (size_t i = 0; i < kScheme.size(); ++i) {
      char c = value[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c != kScheme[i]) return false;
    }
    unsigned char diff = 0;
    for (size_t i = 0; i < token_.size(); ++i) {
      diff |= static_cast<unsigned char>(value[kScheme.size() + i] ^ token_[i]);
    }
    return diff == 0;
  }

  // Submits the complete request `r` natively; false (nothing submitted) leaves it to the Python path.
  bool take(const fastml::FrameSubmitApi* api, const Request& r, const py::object& buf) {
    if (r.method != HTTP_POST || !r.keep_alive || !r.http11 || r.unusual) return false;
    if (!token_.empty() && !authorized(r.authorization)) return false;  // the Python path answers 401
    if (r.header_count > max_headers_ || r.header_bytes > max_header_bytes_) return false;
    if (r.content_length < 0 || r.content_length > max_body_bytes_) return false;
    if (r.ihcl <= 0 || static_cast<size_t>(r.ihcl) >= r.body.size()) return false;
    std::string_view name, version;
    if (!infer_url(r.url, &name, &version)) return false;
    const size_t ihcl0 = static_cast<size_t>(r.ihcl);
    if (declined(r.url, r.body.substr(0, ihcl0))) return false;  // seen and refused: no route opened for it
    Route* route = route_for(name, version, 0);
    if (route->target == nullptr) return false;
    const size_t ihcl = static_cast<size_t>(r.ihcl);
    std::string_view header = r.body.substr(0, ihcl);
    std::string id;
    std::shared_ptr<NativePlan> plan;
    if (header.find("\"id\"") != std::string_view::npos) {
      // Likely a per-request id: the plan is that of the header without it (parsed with RapidJSON), and the id
      // goes back in the answer natively, so a client numbering its requests still takes the fast path.
      std::string canonical;
      const int got = strip_id(header, &canonical, &id);
      if (got < 0) return false;
      plan = plan_for(*route, got == 1 ? std::string_view(canonical) : header);
    } else {
      plan = plan_for(*route, header);
      if (plan == nullptr) remember_declined(r.url, header);
    }
    if (plan == nullptr || r.body.size() - ihcl != plan->binary_size) return false;
    if (plan->timeout_us != 0) {
      // A deadline of its own: the model's route for that timeout (its admission bound and the batcher's
      // deadline). Only a model's plan carries one (open_plan), so the route's entry is the plan's.
      route = route_for(name, version, plan->timeout_us);
      if (route->target == nullptr || route->token.ptr() != plan->entry.ptr()) return false;
    }
    // The admission bound was computed for requests with at most max_inflight ahead of them. Past it the admission
    // gate decides: shed(entry, in flight ahead, close) words and counts a 503 when it sheds the request (written
    // here, in the request's turn, as the Python path would answer it before decoding), or gives None and the
    // Python path admits it.
    const int64_t ahead = route->inflight_before + route->submitted;
    if (ahead > route->max_inflight) {
      if (shed_.is_none()) return false;
      const bool close = outbox_->closing();
      py::object refused = shed_(route->token, ahead, close);
      if (refused.is_none()) return false;
      char* p = nullptr;
      Py_ssize_t n = 0;
      if (PyBytes_AsStringAndSize(refused.ptr(), &p, &n) != 0) throw py::error_already_set();
      const uint64_t seq = outbox_->push();
      outbox_->fill_refused(seq, std::string(p, static_cast<size_t>(n)), close);
      return true;
    }
    if (plan->parts.size() != route->inputs.size()) return false;
    views_.resize(route->inputs.size());
    for (size_t i = 0; i < route->inputs.size(); ++i) {
      const InputPart* part = nullptr;
      for (const InputPart& q : plan->parts) {
        if (q.name == route->inputs[i]) {
          part = &q;
          break;
        }
      }
      if (part == nullptr) return false;
      fastml::TensorView& v = views_[i];
      v.data = r.body.data() + ihcl + part->offset;
      v.kind = part->kind;
      v.itemsize = part->itemsize;
      v.native_order = true;
      v.c_contiguous = true;
      v.shape = part->shape;
    }
    const uint64_t seq = outbox_->push();
    py::object sink = new_sink(outbox_, seq, route->token, plan, std::move(id));
    PyObject* keep = PyTuple_Pack(2, sink.ptr(), buf.ptr());  // the core's: the sink and the bytes viewed
    if (keep == nullptr) {
      outbox_->pop_back();
      throw py::error_already_set();
    }
    std::string message;
    if (api->submit(route->target, &views_, route->timeout_us, keep, &message) != 0) {
      Py_DECREF(keep);
      outbox_->pop_back();  // refused: the Python path submits it again and words the refusal
      return false;
    }
    ++route->submitted;
    return true;
  }

  std::shared_ptr<Outbox> outbox_;
  py::object open_route_, open_plan_, shed_;
  std::string token_;  // the bearer token inference needs (--require-token-for-inference); empty: none
  size_t max_pipelined_;
  int64_t max_body_bytes_;
  size_t max_headers_, max_header_bytes_;
  std::string carry_;
  std::deque<std::shared_ptr<NativePlan>> plans_;
  std::deque<std::pair<std::string, std::string>> declined_;
  std::vector<Route> routes_;
  std::vector<fastml::TensorView> views_;
};

}  // namespace

PYBIND11_MODULE(_http_intake, m) {
  m.doc() = "fastml's native KServe v2 HTTP intake (llhttp + the batcher's capsule submit)";
  m.attr("LLHTTP_VERSION") =
      py::str(std::to_string(LLHTTP_VERSION_MAJOR) + "." + std::to_string(LLHTTP_VERSION_MINOR) + "." +
              std::to_string(LLHTTP_VERSION_PATCH));
  g_sink_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&sink_spec));
  if (g_sink_type == nullptr) throw py::error_already_set();
  m.attr("Sink") = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(g_sink_type));
  py::class_<Outbox, std::shared_ptr<Outbox>>(m, "Outbox", "One connection's native answers, in request order.")
      .def(py::init<py::object, py::object, py::object, py::object, py::object, py::object, bool>(), py::arg("write"),
           py::arg("on_idle"), py::arg("on_error"), py::arg("encode"), py::arg("plane"), py::arg("server"),
           py::arg("completed_takes_ok") = false)
      .def_property_readonly("outstanding", &Outbox::outstanding)
      .def("want_idle", &Outbox::set_want_idle, py::arg("value"),
           "Call on_idle(False) once every answer owed went out.")
      .def("close", &Outbox::close, "The connection is gone: answers are counted, not written.");
  py::class_<Intake>(m, "Intake", "One connection's HTTP request intake: plain infer requests into the batcher.")
      .def(py::init<std::shared_ptr<Outbox>, py::object, py::object, size_t, int64_t, size_t, size_t, py::object,
                    py::object>(),
           py::arg("outbox"), py::arg("open_route"), py::arg("open_plan"), py::arg("max_pipelined"),
           py::arg("max_body_bytes"), py::arg("max_headers"), py::arg("max_header_bytes"), py::arg("shed") = py::none(),
           py::arg("token") = py::none())
      .def("feed", &Intake::feed, py::arg("data"), "Take one read -> (rest for the Python path, routes, paused).")
      .def_property_readonly("carried", &Intake::carried)
      .def("take_carry", &Intake::take_carry, "The partial request kept here, handed to the Python path.");
}
