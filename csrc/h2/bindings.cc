// pybind11 module fastml._h2: one HTTP/2 + gRPC connection (grpc_session.{h,cc}) for an asyncio protocol.
//
// feed() parses a socket read and returns what happened as a list of tuples, one per event (first item the
// kind, second the stream id):
//   (0, sid, path, authorization or None, content_type, grpc_encoding)   request headers
//   (1, sid, payload: bytes, compressed: bool)                           one gRPC message
//   (2, sid, truncated_bytes)                                            the client ended its side
//   (3, sid, http2_error_code)                                           the client reset an unfinished stream
//   (4, sid, declared_bytes)                                             a message over the size limit
//   (5, 0, reason)                                                       a protocol error: write, then close
// Answers go in with send_message / finish / reply; output() returns the bytes to write.
#include <pybind11/pybind11.h>

#include <string>

#include "grpc_session.h"

namespace py = pybind11;
using fastml::h2::Event;
using fastml::h2::Limits;
using fastml::h2::Session;

namespace {

// Reads above this size parse without the GIL; below it, handing the GIL back and forth costs more than the
// parse and can leave the event loop waiting for a runner thread to return it.
constexpr size_t kReleaseGilBytes = 256 * 1024;

py::object Str(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

py::list Events(Session& session) {
  auto& events = session.events();
  py::list out(events.size());
  size_t i = 0;
  for (Event& ev : events) {
    py::object item;
    switch (ev.kind) {
      case fastml::h2::kOpen:
        item = py::make_tuple(0, ev.stream_id, Str(ev.path),
                              ev.authorization.empty() ? py::object(py::none()) : Str(ev.authorization),
                              Str(ev.content_type), Str(ev.encoding));
        break;
      case fastml::h2::kMessage:
        item = py::make_tuple(1, ev.stream_id, py::bytes(ev.payload), ev.compressed);
        break;
      case fastml::h2::kHalfClose:
        item = py::make_tuple(2, ev.stream_id, ev.declared);
        break;
      case fastml::h2::kClosed:
        item = py::make_tuple(3, ev.stream_id, ev.error_code);
        break;
      case fastml::h2::kTooLarge:
        item = py::make_tuple(4, ev.stream_id, ev.declared);
        break;
    }
    out[i++] = std::move(item);
  }
  events.clear();
  return out;
}

struct Buffer {
  Py_buffer view;
  explicit Buffer(py::handle obj) {
    if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
  }
  ~Buffer() { PyBuffer_Release(&view); }
  const char* data() const { return static_cast<const char*>(view.buf); }
  size_t size() const { return static_cast<size_t>(view.len); }
};

}  // namespace

PYBIND11_MODULE(_h2, m) {
  m.doc() = "One server-side HTTP/2 connection carrying gRPC (libnghttp2), for fastml.server.grpc_native.";
  py::class_<Session>(m, "Session")
      .def(py::init([](uint32_t max_message_bytes, uint64_t max_buffered_bytes, uint32_t max_concurrent_streams,
                       int32_t window_bytes) {
             Limits limits;
             limits.max_message_bytes = max_message_bytes;
             limits.max_buffered_bytes = max_buffered_bytes;
             limits.max_concurrent_streams = max_concurrent_streams;
             limits.window_bytes = window_bytes;
             return new Session(limits);
           }),
           py::arg("max_message_bytes"), py::arg("max_buffered_bytes"), py::arg("max_concurrent_streams") = 1024,
           py::arg("window_bytes") = 8 << 20)
      .def(
          "feed",
          [](Session& s, py::handle data) {
            Buffer buf(data);
            std::string error;
            bool ok;
            const auto* p = reinterpret_cast<const uint8_t*>(buf.data());
            if (buf.size() >= kReleaseGilBytes) {
              py::gil_scoped_release release;
              ok = s.Feed(p, buf.size(), &error);
            } else {
              ok = s.Feed(p, buf.size(), &error);
            }
            py::list events = Events(s);
            if (!ok) events.append(py::make_tuple(5, 0, Str(error)));
            return events;
          },
          "Parses received bytes; returns the events (see the module's comment).")
      .def(
          "send_message",
          [](Session& s, int32_t sid, py::handle data) {
            Buffer buf(data);
            return s.SendMessage(sid, buf.data(), buf.size());
          },
          "Queues one message on a stream; False when the stream is gone or finished.")
      .def("finish", &Session::Finish, py::arg("stream_id"), py::arg("grpc_status"), py::arg("message") = "",
           py::arg("http_status") = 200, "Ends a stream with a gRPC status; False when it is gone or finished.")
      .def(
          "reply",
          [](Session& s, int32_t sid, py::handle data) {
            Buffer buf(data);
            return s.SendMessage(sid, buf.data(), buf.size()) && s.Finish(sid, 0, std::string());
          },
          "A unary answer: one message and status OK.")
      .def("shutdown", &Session::Shutdown, "GOAWAY: no new streams; those in flight finish.")
      .def(
          "output",
          [](Session& s) {
            std::string out;
            s.Output(&out);
            return py::bytes(out);
          },
          "The bytes to write now (b'' when none).")
      .def_property_readonly("wants_close", &Session::WantsClose)
      .def_property_readonly("open_streams", &Session::open_streams);
  m.def("percent_encode", &fastml::h2::PercentEncode, "grpc-message's percent-encoding (for tests).");
}
