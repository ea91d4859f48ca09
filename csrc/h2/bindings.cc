// pybind11 module fastml._h2: one HTTP/2 + gRPC connection (grpc_session.{h,cc}) for an asyncio protocol.
//
// feed() parses a socket read and returns what happened as a list of tuples, one per event (first item the
// kind, second the stream id):
//   (0, sid, path, authorization or None, content_type, grpc_encoding, grpc_timeout or None)
//                                                                        request headers
//   (1, sid, payload: bytes, compressed: bool)                           one gRPC message
//   (2, sid, truncated_bytes)                                            the client ended its side
//   (3, sid, http2_error_code)                                           the client reset an unfinished stream
//   (4, sid, declared_bytes)                                             a message over the size limit
//   (5, 0, reason)                                                       a protocol error: write, then close
//   (6, sid, path, authorization, content_type, grpc_encoding, grpc_timeout, payload, compressed)
//                                                   a whole unary call: 0, 1 and 2 of one stream in one read
// Answers go in with send_message / finish / reply; output() returns the bytes to write.
#include <pybind11/pybind11.h>

#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "grpc_session.h"
#include "infer_message.h"

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

py::object OrNone(const std::string& s) { return s.empty() ? py::object(py::none()) : Str(s); }

py::list Events(Session& session) {
  auto& events = session.events();
  py::list out;
  for (size_t k = 0; k < events.size(); ++k) {
    Event& ev = events[k];
    py::object item;
    // A whole unary call in this read (its headers, one message, its end): one tuple instead of three.
    if (ev.kind == fastml::h2::kOpen && k + 2 < events.size() && events[k + 1].kind == fastml::h2::kMessage &&
        events[k + 1].stream_id == ev.stream_id && events[k + 2].kind == fastml::h2::kHalfClose &&
        events[k + 2].stream_id == ev.stream_id && events[k + 2].declared == 0) {
      out.append(py::make_tuple(6, ev.stream_id, Str(ev.path), OrNone(ev.authorization), Str(ev.content_type),
                                Str(ev.encoding), OrNone(ev.timeout), py::bytes(events[k + 1].payload),
                                events[k + 1].compressed));
      k += 2;
      continue;
    }
    switch (ev.kind) {
      case fastml::h2::kOpen:
        item = py::make_tuple(0, ev.stream_id, Str(ev.path), OrNone(ev.authorization), Str(ev.content_type),
                              Str(ev.encoding), OrNone(ev.timeout));
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
    out.append(std::move(item));
  }
  events.clear();
  return out;
}

// str from UTF-8 bytes of the wire; nullptr (error cleared) when they are not UTF-8, as upb refuses them too.
PyObject* StrictStr(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "strict");
  if (o == nullptr) PyErr_Clear();
  return o;
}

py::object ParseInfer(py::bytes payload) {
  char* data;
  Py_ssize_t len;
  PyBytes_AsStringAndSize(payload.ptr(), &data, &len);
  fastml::h2::PlainInferRequest req;
  if (!fastml::h2::ParsePlainInferRequest(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len), &req)) {
    return py::none();
  }
  py::tuple inputs(req.inputs.size());
  for (size_t i = 0; i < req.inputs.size(); ++i) {
    const auto& in = req.inputs[i];
    PyObject* name = StrictStr(in.name);
    if (name == nullptr) return py::none();
    py::tuple shape(in.shape.size());
    for (size_t d = 0; d < in.shape.size(); ++d) shape[d] = py::int_(in.shape[d]);
    inputs[i] = py::make_tuple(py::reinterpret_steal<py::object>(name), py::str(in.datatype.data(), in.datatype.size()),
                               std::move(shape), in.offset, in.count);
  }
  py::tuple params(req.parameters.size());
  for (size_t i = 0; i < req.parameters.size(); ++i) {
    const auto& p = req.parameters[i];
    PyObject* key = StrictStr(p.key);
    if (key == nullptr) return py::none();
    py::object value;
    switch (p.kind) {
      case 1:
        value = py::bool_(p.bits != 0);
        break;
      case 2:
        value = py::int_(static_cast<int64_t>(p.bits));
        break;
      case 3: {
        PyObject* text = StrictStr(p.text);
        if (text == nullptr) {
          Py_DECREF(key);
          return py::none();
        }
        value = py::reinterpret_steal<py::object>(text);
        break;
      }
      case 4: {
        double d;
        std::memcpy(&d, &p.bits, sizeof d);
        value = py::float_(d);
        break;
      }
      case 5:
        value = py::int_(p.bits);
        break;
      default:
        value = py::none();
    }
    params[i] = py::make_tuple(py::reinterpret_steal<py::object>(key), std::move(value));
  }
  py::tuple outputs(req.outputs.size());
  for (size_t i = 0; i < req.outputs.size(); ++i) {
    PyObject* name = StrictStr(req.outputs[i]);
    if (name == nullptr) return py::none();
    outputs[i] = py::reinterpret_steal<py::object>(name);
  }
  PyObject* fields[3];
  std::string_view views[3] = {req.model_name, req.model_version, req.id};
  for (int i = 0; i < 3; ++i) {
    fields[i] = StrictStr(views[i]);
    if (fields[i] == nullptr) {
      for (int j = 0; j < i; ++j) Py_DECREF(fields[j]);
      return py::none();
    }
  }
  return py::make_tuple(py::reinterpret_steal<py::object>(fields[0]), py::reinterpret_steal<py::object>(fields[1]),
                        py::reinterpret_steal<py::object>(fields[2]), std::move(inputs), std::move(params),
                        std::move(outputs));
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
      .def("unsent", &Session::Unsent, py::arg("stream_id"),
           "Answer bytes queued on a stream and not yet taken for writing (the client's window holds them).")
      .def("reset", &Session::Reset, py::arg("stream_id"), py::arg("error_code"),
           "Ends a stream with RST_STREAM, dropping its queued answers; False when it is gone or finished.")
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
  m.def("parse_infer_request", &ParseInfer, py::arg("payload"),
        "A plain ModelInferRequest as (model_name, model_version, id, inputs, parameters, outputs): inputs "
        "((name, datatype, shape, offset, count), ...) with each tensor's bytes at payload[offset:] (count "
        "elements, checked), parameters ((key, value), ...), requested output names; None when the message "
        "is not plain or not valid (tensor or output parameters, typed contents, BYTES: the general path).");
  m.def(
      "encode_infer_response",
      [](std::string_view model_name, std::string_view model_version, std::string_view id, py::sequence parameters,
         py::sequence outputs) {
        // Parameters as fastml.server.grpc_service._set_param sets them: bool, then int, float, else str.
        std::vector<fastml::h2::Parameter> params(parameters.size());
        std::vector<std::string> texts(parameters.size() * 2);
        for (size_t i = 0; i < params.size(); ++i) {
          py::tuple kv = parameters[i].cast<py::tuple>();
          texts[2 * i] = kv[0].cast<std::string>();
          params[i].key = texts[2 * i];
          py::handle v = kv[1];
          if (PyBool_Check(v.ptr())) {
            params[i].kind = 1;
            params[i].bits = v.ptr() == Py_True;
          } else if (py::isinstance<py::int_>(v)) {
            params[i].kind = 2;
            params[i].bits = static_cast<uint64_t>(v.cast<int64_t>());
          } else if (py::isinstance<py::float_>(v)) {
            double d = v.cast<double>();
            params[i].kind = 4;
            std::memcpy(&params[i].bits, &d, sizeof d);
          } else {
            texts[2 * i + 1] = py::str(v).cast<std::string>();
            params[i].kind = 3;
            params[i].text = texts[2 * i + 1];
          }
        }
        std::vector<fastml::h2::PlainOutput> outs(outputs.size());
        std::vector<std::unique_ptr<Buffer>> keep;  // the outputs' buffers, held until the message is written
        std::vector<std::string> names(outputs.size()), datatypes(outputs.size());
        for (size_t i = 0; i < outs.size(); ++i) {
          py::tuple t = outputs[i].cast<py::tuple>();
          names[i] = t[0].cast<std::string>();
          datatypes[i] = t[1].cast<std::string>();
          outs[i].name = names[i];
          outs[i].datatype = datatypes[i];
          for (auto d : t[2].cast<py::sequence>()) outs[i].shape.push_back(d.cast<int64_t>());
          keep.push_back(std::make_unique<Buffer>(t[3]));
          outs[i].data = keep.back()->data();
          outs[i].size = keep.back()->size();
        }
        std::string out;
        fastml::h2::EncodeInferResponse(model_name, model_version, id, params, outs, &out);
        return py::bytes(out);
      },
      py::arg("model_name"), py::arg("model_version"), py::arg("id"), py::arg("parameters"), py::arg("outputs"),
      "A ModelInferResponse: parameters as (key, value), outputs as (name, datatype, shape, buffer), bytes in "
      "raw_output_contents.");
  m.def("percent_encode", &fastml::h2::PercentEncode, "grpc-message's percent-encoding (for tests).");
}
