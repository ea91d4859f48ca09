// The batcher's submit entry point for the binary protocol's native intake (fastml._frames).
//
// fastml._frames walks a connection's receive buffer and submits every plain request frame straight to a
// model's batcher, building the batcher's TensorViews from the frame's bytes: no numpy array, dict or
// future per request. The batcher lives in the other extension module (fastml._core), so _core hands this
// table of function pointers to _frames once, through a PyCapsule named kFrameSubmitCapsule (the way numpy
// exports its C API). Both modules are built from this tree by one setup.py, so they agree on TensorView.
//
// Python-free: Python objects cross as void* (PyObject*). Every function is called with the GIL held, on
// the thread that runs the event loop owning the completion queue.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "batcher.h"

namespace fastml {

constexpr int kFrameSubmitAbi = 2;

// fastml._frames' answer encoder (see FrameSubmitApi::set_answer): writes the answer of `sink` (a PyObject* of
// the registered type) from rows [row_offset, row_offset + rows) of each batch output (`outputs`, a list of
// numpy arrays in output order; `output_names`, n_outputs str PyObject*s). Returns 0 when the sink is settled,
// 1 when it does not take these outputs (nothing done: the caller settles the sink the ordinary way), -1 with
// a Python error set (nothing done: the caller settles the sink with that error). GIL held.
using FrameAnswerFn = int (*)(void* sink, void* outputs, void* const* output_names, size_t n_outputs, int64_t row_offset,
                              int64_t rows);
constexpr const char* kFrameSubmitCapsule = "fastml._core.frame_submit_api";

struct FrameSubmitApi {
    int abi = kFrameSubmitAbi;
    // A submit target for a fastml._core.Batcher and one of its CompletionQueues (borrowed PyObject*s the
    // caller keeps alive while it uses the target), or nullptr with *error when they are not those types.
    void* (*open)(void* batcher, void* queue, std::string* error) = nullptr;
    // Forgets a target made by open (the batcher and queue objects are not touched).
    void (*close)(void* target) = nullptr;
    // Enqueues `views` with `timeout_us` (<= 0: none). On success (returns 0 = StatusCode::kOk) the core owns
    // `keep` (a new PyObject* reference: (sink, buffer)); its sink is settled by the batcher's resolve like a
    // future and `keep` is released then. On failure returns the StatusCode with *message; `keep` stays the
    // caller's.
    int (*submit)(void* target, std::vector<TensorView>* views, int64_t timeout_us, void* keep,
                  std::string* message) = nullptr;
    // Registers the sink type (a PyTypeObject*, kept alive by its module) whose requests the batcher's resolve
    // answers through `fn` instead of building a result dict and calling sink.set_result per request.
    void (*set_answer)(void* sink_type, FrameAnswerFn fn) = nullptr;
};

}  // namespace fastml
