// Binding code (it includes pybind11): shared by the bindings.cc of two extension modules, never by the core.
// The Python face of a native intake's per-request Sink, shared by fastml._frames (the binary protocol) and
// fastml._http_intake (KServe v2 over HTTP).
//
// Each intake answers a request it submitted to the batcher through a Sink of its own (a C++ object that writes
// the answer into the connection's buffer). The batcher's resolve settles it like a future: set_result(outputs),
// set_exception(exc), or the answer hook registered with the batcher's submit table (FrameAnswerFn), which writes
// the request's rows without a result dict. One is made per request, so its Python type is a plain CPython type,
// not a pybind11 class: pybind11's instance creation and argument dispatch cost more than writing the answer.
//
// A module declares its type's method table with the functions below (SinkObject<Sink> is the instance layout),
// creates the type at import with PyType_FromSpec, and makes instances with make_sink<Sink>(type, args...).
#pragma once

#include <pybind11/pybind11.h>

#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "frame_submit_api.h"

namespace fastml::native_sink {

namespace py = pybind11;

// A Sink constructed in place inside its Python object.
template <typename Sink>
struct SinkObject {
  PyObject_HEAD
  alignas(Sink) unsigned char storage[sizeof(Sink)];
  Sink* sink() { return reinterpret_cast<Sink*>(storage); }
};

template <typename Sink>
Sink* sink_of(PyObject* self) {
  return reinterpret_cast<SinkObject<Sink>*>(self)->sink();
}

// A new instance of `type` (a heap type made from a spec of sizeof(SinkObject<Sink>)) holding Sink(args...).
template <typename Sink, typename... Args>
py::object make_sink(PyTypeObject* type, Args&&... args) {
  PyObject* o = type->tp_alloc(type, 0);  // new reference (a heap type: the instance holds the type)
  if (o == nullptr) throw py::error_already_set();
  new (reinterpret_cast<SinkObject<Sink>*>(o)->storage) Sink(std::forward<Args>(args)...);
  return py::reinterpret_steal<py::object>(o);
}

template <typename Sink>
void dealloc(PyObject* o) {
  PyTypeObject* type = Py_TYPE(o);
  sink_of<Sink>(o)->~Sink();
  type->tp_free(o);
  Py_DECREF(type);  // the reference tp_alloc took for the instance
}

// Runs a Sink method, turning C++ exceptions into Python ones.
template <typename Fn>
PyObject* call(Fn&& fn) {
  try {
    fn();
  } catch (py::error_already_set& e) {
    e.restore();
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

template <typename Sink>
PyObject* set_result(PyObject* self, PyObject* outputs) {
  return call([&] { sink_of<Sink>(self)->set_result(outputs); });
}

template <typename Sink>
PyObject* set_exception(PyObject* self, PyObject* exc) {
  return call([&] { sink_of<Sink>(self)->set_exception(exc); });
}

template <typename Sink>
PyObject* done(PyObject* self, PyObject*) {
  return PyBool_FromLong(sink_of<Sink>(self)->done());
}

// The batcher's answer hook (FrameAnswerFn) for sinks of this type. Never throws.
template <typename Sink>
int answer(void* self, void* outputs, void* const* names, size_t n, int64_t row_offset, int64_t rows) {
  try {
    return sink_of<Sink>(static_cast<PyObject*>(self))
        ->answer_rows(static_cast<PyObject*>(outputs), names, n, row_offset, rows);
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return -1;
}

// fastml._core's submit table (csrc/frame_submit_api.h), checked against this build, with `sink_type`'s
// requests answered through `fn` from now on (no result dict per request). `module` names the caller in the
// error raised when the two extensions were built from different sources.
inline const FrameSubmitApi* open_submit_api(const char* module, PyTypeObject* sink_type, FrameAnswerFn fn) {
  py::object cap = py::module_::import("fastml._core").attr("frame_submit_api");
  void* p = PyCapsule_GetPointer(cap.ptr(), kFrameSubmitCapsule);
  if (p == nullptr) throw py::error_already_set();
  auto* table = static_cast<const FrameSubmitApi*>(p);
  if (table->abi != kFrameSubmitAbi) {
    throw std::runtime_error(std::string("fastml._core and ") + module + " were built from different sources");
  }
  table->set_answer(sink_type, fn);
  return table;
}

}  // namespace fastml::native_sink
