// The pybind11 module fastml._core: the only file that includes pybind11 (STYLE.md).
// Each component has its own section below; a section converts Python objects to the component's
// plain C++ types with the GIL held and releases the GIL around the component's native work.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>

namespace py = pybind11;

// ===== status section (csrc/status.h): the one boundary from core Status to fastml.errors =====
#include <cstdlib>

#include "status.h"

namespace status_py {

using fastml::Status;
using fastml::StatusCode;

// THE table: every failure code of the core and the fastml.errors class it becomes, one class per code.
// Nothing else in the core or in Python maps codes (fastml.engine reads it as _core.ERROR_CLASSES).
struct ErrorEntry {
    StatusCode code;
    const char* error_class;  // a name in fastml.errors
};
constexpr ErrorEntry kErrorTable[] = {
    {StatusCode::kInvalidInput, "InvalidInput"},
    {StatusCode::kOverloaded, "Overloaded"},
    {StatusCode::kDeadlineExceeded, "DeadlineExceeded"},
    {StatusCode::kUnavailable, "Unavailable"},
    {StatusCode::kInternal, "InternalError"},
    {StatusCode::kNotFound, "NotFound"},
    {StatusCode::kIntegrity, "IntegrityError"},
};
static_assert(sizeof(kErrorTable) / sizeof(kErrorTable[0]) == fastml::kStatusCodeCount - 1,
              "every failure code needs its row in kErrorTable");

// code -> class; filled once at import. Owned references, deliberately never released: the classes
// live as long as the interpreter and the module can never be unloaded.
PyObject* g_error_classes[fastml::kStatusCodeCount] = {};

void LoadErrorClasses(py::module_& m) {
    py::module_ errors = py::module_::import("fastml.errors");
    py::dict classes;
    for (const ErrorEntry& e : kErrorTable) {
        py::object cls = errors.attr(e.error_class);
        classes[py::int_(static_cast<int>(e.code))] = cls;
        g_error_classes[static_cast<int>(e.code)] = cls.release().ptr();  // the reference kept above
    }
    for (int c = 1; c < fastml::kStatusCodeCount; ++c) {
        if (g_error_classes[c] == nullptr) throw std::logic_error("status code without an error class");
    }
    m.attr("ERROR_CLASSES") = classes;
}

// Raises the fastml.errors exception of a failed status (InternalError for an unknown code).
[[noreturn]] void Raise(const Status& st) {
    const int code = static_cast<int>(st.code);
    const bool known = code > 0 && code < fastml::kStatusCodeCount;
    PyObject* cls = g_error_classes[known ? code : static_cast<int>(StatusCode::kInternal)];
    const std::string msg = known ? st.message : "unknown core status code " + std::to_string(code) + ": " + st.message;
    PyErr_SetString(cls, msg.c_str());
    throw py::error_already_set();
}

void bind_status(py::module_& m) {
    py::dict codes;
    for (int c = 0; c < fastml::kStatusCodeCount; ++c) {
        codes[py::str(fastml::StatusCodeName(static_cast<StatusCode>(c)))] = c;
    }
    m.attr("STATUS_CODES") = codes;
    LoadErrorClasses(m);
    m.def(
        "raise_status",
        [](int code, const std::string& message) { Raise(Status{static_cast<StatusCode>(code), message}); },
        py::arg("code"), py::arg("message"),
        "Raises the fastml.errors exception that the core's status `code` maps to (the one table).");
}

}  // namespace status_py
// ===== end status section =====

// ===== batcher section (csrc/batcher.h) =====
#include <atomic>
#include <cstring>

#include "batcher.h"
#include "frame_submit_api.h"

#include <unordered_map>

namespace batcher_py {

using fastml::Batcher;
using fastml::BatcherOptions;
using fastml::BatchInfo;
using fastml::Completion;
using fastml::CompletionQueue;
using fastml::InputSpec;
using fastml::Request;
using fastml::Status;
using fastml::StatusCode;
using fastml::TensorView;

// The native intakes' answer encoders and their sink types (csrc/frame_submit_api.h: fastml._frames for the binary
// protocol, fastml._http_intake for HTTP), each registered once through the capsule when its intake starts;
// guarded by the GIL. A sink of no registered type takes set_result.
struct FrameAnswerHook {
    PyTypeObject* type = nullptr;
    fastml::FrameAnswerFn fn = nullptr;
};
constexpr size_t kMaxFrameAnswerHooks = 4;
static FrameAnswerHook g_frame_answers[kMaxFrameAnswerHooks];

// The encoder registered for `type`, or nullptr.
static fastml::FrameAnswerFn FrameAnswerFor(PyTypeObject* type) {
    for (const FrameAnswerHook& h : g_frame_answers) {
        if (h.type == type) return h.fn;
    }
    return nullptr;
}

// Raises fastml._core.CoreError(code, message): the batcher's callers branch on the code (a refused input
// is re-validated in Python for a better message), then convert it through the one table (ERROR_CLASSES).
[[noreturn]] static void RaiseCoreError(const py::object& error_type, const Status& st) {
    PyErr_SetObject(error_type.ptr(), py::make_tuple(static_cast<int>(st.code), st.message).ptr());
    throw py::error_already_set();
}

// Takes back the reference submit_async / submit_sync put into a request's user_data (GIL held).
static py::object TakeUserData(void* user_data) {
    // Steals the reference the submit call handed to the core (a null pointer gives a null object).
    return py::reinterpret_steal<py::object>(static_cast<PyObject*>(user_data));
}

// (ticket, batch, row_offset, rows, code, message|None, batch_requests), built with the C API.
static py::object CompletionTuple(const Completion& c) {
    // New references, each stolen by PyTuple_SET_ITEM; the tuple itself is owned by the returned object.
    py::object t = py::reinterpret_steal<py::object>(PyTuple_New(7));
    if (!t) throw py::error_already_set();
    PyObject* msg = c.code == StatusCode::kOk ? (Py_INCREF(Py_None), Py_None)  // stolen by the tuple
                                              : PyUnicode_FromStringAndSize(c.message.data(), c.message.size());
    PyObject* items[7] = {PyLong_FromUnsignedLongLong(c.ticket), PyLong_FromUnsignedLongLong(c.batch),
                          PyLong_FromLongLong(c.row_offset),    PyLong_FromLongLong(c.rows),
                          PyLong_FromLong(static_cast<long>(c.code)), msg,
                          PyLong_FromLongLong(c.batch_requests)};
    bool failed = false;
    for (int i = 0; i < 7; ++i) {
        if (!items[i]) failed = true;
        PyTuple_SET_ITEM(t.ptr(), i, items[i]);  // a NULL slot is fine: tuple dealloc skips it
    }
    if (failed) throw py::error_already_set();
    return t;
}

// The Python-facing batcher: the core plus what converting needs (dtypes, output names, error type)
// and the outputs of batches whose requests have not all been handed their rows yet.
//
// Ownership across the boundary: each request's user_data is an owned (future, arrays) tuple (future None
// for blocking waiters) that keeps the caller's input memory alive while the core reads it. It is released
// exactly once, with the GIL: by resolve()/drain() for an event loop's queue, by wait() for a blocking
// waiter, or by Sweep() for the requests whose event loop closed (abandon()) or whose waiter was
// interrupted (wait() orphans its ticket). Batch outputs are released when the last request of the batch
// has taken (or given up) its rows.
struct PyBatcher {
    std::unique_ptr<Batcher> core;
    std::vector<py::dtype> dtypes;   // per input, for the views next_batch returns; immutable
    std::vector<py::str> outputs;    // output names, in the order runners pass outputs; immutable
    std::vector<py::str> input_names;  // input names, in input order; immutable
    py::object error_type;           // fastml._core.CoreError; immutable
    py::object view_base;            // base object of gathered-buffer views, so numpy never copies
    py::object invalid_state;        // asyncio.InvalidStateError: settling a cancelled future; immutable
    py::str set_result_name{"set_result"};        // immutable
    py::str set_exception_name{"set_exception"};  // immutable
    py::str create_future_name{"create_future"};  // immutable
    py::str callbacks_name{"_callbacks"};                        // immutable
    py::str remove_done_callback_name{"remove_done_callback"};  // immutable
    py::object current_task;  // asyncio.current_task; immutable
    py::object task_type;     // asyncio.Task (the C task whose wake-up Resolve may run directly); immutable
    py::object future_type;   // asyncio.Future (what loop.create_future returns on the stdlib loop); immutable
    py::object base_create_future;  // asyncio.BaseEventLoop.create_future; immutable
    py::object loop_kwnames;        // ("loop",); immutable
    py::object known_loop_type;     // guarded by the GIL; the event loop class NewFuture last looked at
    bool known_loop_plain = false;  // guarded by the GIL; whether that class keeps asyncio's create_future
    const PyMethodDef* task_wakeup_def = nullptr;  // guarded by the GIL; the C Task's wake-up, once seen
    // The queue object the fast-call submit_future entry (FastSubmitCall) saw last and its core queue: an event
    // loop submits to one queue, so pybind11's holder caster runs once per loop rather than per request.
    // Guarded by the GIL; dropped by abandon(), so a closed loop's queue is not kept open by it.
    py::object fast_queue_obj;
    std::shared_ptr<CompletionQueue> fast_queue;

    struct BatchOutputs {
        py::list arrays;         // what the runner's model returned for the whole batch
        int64_t remaining = -1;  // requests not yet handed their rows (-1: not counted yet)
    };
    std::unordered_map<uint64_t, BatchOutputs> batch_outputs;  // guarded by the GIL
    std::vector<uint64_t> runner_batch;                        // guarded by the GIL; runner -> batch id

    // Raised (by the core, without the GIL) when an abandoned queue or an orphaned request got a completion
    // whose user_data waits for Sweep(). Read without the GIL, so runners only take the GIL when needed.
    std::shared_ptr<std::atomic<bool>> sweep_due = std::make_shared<std::atomic<bool>>(false);
    std::vector<std::shared_ptr<CompletionQueue>> abandoned;  // guarded by the GIL; queues of closed loops
    std::vector<std::shared_ptr<Request>> orphans;            // guarded by the GIL; interrupted waiters
    bool sweeping = false;                                    // guarded by the GIL; Sweep() is running

    // With the GIL: whether Sweep() has anything to do (a completion to release, a queue to forget).
    bool SweepWanted() const { return sweep_due->load(std::memory_order_relaxed) || !abandoned.empty(); }

    ~PyBatcher() {
        // Destroyed with the GIL held (pybind11 dealloc). Fail what is queued, then release every
        // reference the core still holds for requests of closed loops and interrupted waiters.
        if (!core) return;
        {
            py::gil_scoped_release nogil;  // joins the deadline thread
            core->Shutdown("batcher destroyed");
        }
        sweep_due->store(true);
        Sweep();
    }

    // Model.submit's fast path (submit_future and the fast-call entry made by submit_future_fn): `inputs` in
    // input order, a new future of `loop`, the submit; returns the future. GIL held.
    py::object SubmitFuture(const std::shared_ptr<CompletionQueue>& queue, py::handle inputs, int64_t timeout_us,
                            py::handle loop) {
        // The whole per-request path of Model.submit in one call: inputs in input order, a future
        // of `loop`, the submit. Anything but the plain shapes below is INVALID_INPUT, which the caller
        // answers with its validating slow path (so messages stay the same).
        if (SweepWanted()) Sweep();
        const size_t n = input_names.size();
        PyObject* in = inputs.ptr();
        py::object arrays;
        if (PyDict_CheckExact(in) && static_cast<size_t>(PyDict_GET_SIZE(in)) == n) {
            arrays = py::reinterpret_steal<py::object>(PyTuple_New(static_cast<Py_ssize_t>(n)));
            if (!arrays) throw py::error_already_set();
            for (size_t i = 0; i < n; ++i) {
                PyObject* a = PyDict_GetItemWithError(in, input_names[i].ptr());  // borrowed
                if (!a) {
                    if (PyErr_Occurred()) throw py::error_already_set();
                    RaiseCoreError(error_type,
                                   Status::Error(StatusCode::kInvalidInput, "inputs lack a model input"));
                }
                Py_INCREF(a);  // stolen by the tuple
                PyTuple_SET_ITEM(arrays.ptr(), static_cast<Py_ssize_t>(i), a);
            }
        } else if (n == 1 && py::isinstance<py::array>(inputs)) {
            arrays = py::reinterpret_steal<py::object>(PyTuple_Pack(1, in));
            if (!arrays) throw py::error_already_set();
        } else {
            RaiseCoreError(error_type, Status::Error(StatusCode::kInvalidInput, "inputs need validation"));
        }
        std::vector<TensorView> views = Views(arrays);
        py::object fut = py::reinterpret_steal<py::object>(NewFuture(loop.ptr()));  // new reference
        if (!fut) throw py::error_already_set();
        // Owned by the request until resolve() (or a sweep) takes it back, as in submit_async.
        PyObject* keep = PyTuple_Pack(2, fut.ptr(), arrays.ptr());
        if (!keep) throw py::error_already_set();
        std::shared_ptr<Request> req;
        Status st = core->Submit(std::move(views), timeout_us, queue, keep, &req);
        if (!st.ok()) {
            Py_DECREF(keep);  // never enqueued: drop the reference made above
            RaiseCoreError(error_type, st);
        }
        return fut;
    }

    // Converts arrays to borrowed views with the GIL held; the caller keeps the arrays alive until
    // the request completes (the submit calls keep them in the request's user_data).
    std::vector<TensorView> Views(const py::handle& arrays) {
        std::vector<TensorView> views;
        py::sequence seq = py::reinterpret_borrow<py::sequence>(arrays);
        const size_t n = py::len(seq);
        views.reserve(n);
        for (size_t i = 0; i < n; ++i) {
            py::handle h = seq[i];
            if (!py::isinstance<py::array>(h)) {
                const std::string name = i < core->inputs().size() ? core->inputs()[i].name : std::to_string(i);
                RaiseCoreError(error_type, Status::Error(StatusCode::kInvalidInput,
                                                         "input '" + name + "': expected a numpy array, got " +
                                                             std::string(py::str(py::type::handle_of(h).attr("__name__")))));
            }
            auto a = py::reinterpret_borrow<py::array>(h);
            TensorView v;
            v.data = a.data();
            py::dtype dt = a.dtype();
            v.kind = dt.kind();
            v.itemsize = static_cast<int64_t>(dt.itemsize());
            const char order = dt.byteorder();
            constexpr bool little = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
            v.native_order = order == '=' || order == '|' || (order == '<' && little) || (order == '>' && !little);
            v.c_contiguous = (a.flags() & py::array::c_style) != 0;
            v.shape.assign(a.shape(), a.shape() + a.ndim());
            views.push_back(std::move(v));
        }
        return views;
    }

    // Called once the runner holds the GIL again, i.e. when it can really start the batch: requests that
    // queued while it waited for the GIL join the batch (re-gathered with the GIL released).
    void TopUp(int runner, BatchInfo* info) {
        if (!core->TakeMore(runner)) return;  // a short lock, no copying: fine with the GIL held
        py::gil_scoped_release nogil;          // memcpy of the grown batch
        core->Gather(runner, info);
    }

    // (batch_id, rows, [input arrays]); the arrays are read-only views, not copies: of the runner's reused
    // buffer, or of the lone request's own memory, which may be a read-only bytes object (a request
    // body): no runner, model or callback may write through them.
    py::object BatchTuple(int runner, const BatchInfo& info) {
        return py::make_tuple(info.id, info.rows, BatchViews(runner, info));
    }

    // The batch's input arrays (BatchTuple's third item), recorded as runner `runner`'s batch.
    py::list BatchViews(int runner, const BatchInfo& info) {
        py::list arrays(info.input_data.size());
        for (size_t i = 0; i < info.input_data.size(); ++i) {
            py::array view(dtypes[i], info.input_shapes[i], {}, info.input_data[i], view_base);
            py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            arrays[i] = std::move(view);
        }
        runner_batch[runner] = info.id;
        return arrays;
    }

    // The inline runner's batch loop (run_queued): Model._run_queued's work without a Python frame per batch.
    // Each batch is completed before the next is taken, as the Python loop did; a failure of the model (or of
    // its outputs' shape) fails that batch's requests only.
    int RunQueued(int runner, const py::object& run, const py::object& output_names, const py::tuple& input_names,
                  const py::object& run_options, const std::string& failed_prefix) {
        const size_t n_outputs = this->outputs.size();
        int batches = 0;
        for (;;) {
            BatchInfo info;
            if (!core->NextBatch(runner, &info, /*wait=*/false)) return batches;
            ++batches;
            const int64_t rows = info.rows;
            py::list arrays = BatchViews(runner, info);
            std::string failure;
            StatusCode code = StatusCode::kInternal;
            py::object outputs;
            try {
                py::dict feed;
                for (size_t i = 0; i < input_names.size() && i < arrays.size(); ++i) feed[input_names[i]] = arrays[i];
                outputs = run(output_names, feed, run_options);
                failure = OutputsProblem(outputs, output_names, rows, n_outputs);
                if (!failure.empty()) failure = "RuntimeError: " + failure;
            } catch (py::error_already_set& e) {  // every failure must complete the batch (BaseException too)
                const std::string type_name = py::str(e.type().attr("__name__"));
                failure = type_name + ": " + std::string(py::str(e.value()));
                // ONNX Runtime refusing the data it was given (as fastml.engine.model._failure_code decides).
                if (type_name == "InvalidArgument" &&
                    std::string(py::str(e.type().attr("__module__"))).rfind("onnxruntime", 0) == 0) {
                    code = StatusCode::kInvalidInput;
                }
            }
            if (!failure.empty()) {
                const std::string message = failed_prefix + std::to_string(rows) + " rows: " + failure;
                {
                    py::gil_scoped_release nogil;
                    core->CompleteBatch(runner, Status{code, message});
                }
            } else {
                KeepOutputs(runner, 0, outputs);
                py::gil_scoped_release nogil;
                core->CompleteBatch(runner, Status{StatusCode::kOk, ""});
            }
            Sweep();
        }
    }

    // Why `outputs` (what the model's run returned for a batch of `rows`) cannot be the batch's outputs, in the
    // words of Model._run_batch_inline's checks; empty when they can. Raises error_already_set where the
    // Python checks would raise (an output that is not an array).
    static std::string OutputsProblem(const py::object& outputs, const py::object& output_names, int64_t rows,
                                      size_t n_outputs) {
        const size_t got = py::len(outputs);
        if (got != n_outputs) {
            return "expected " + std::to_string(n_outputs) + " outputs, got " + std::to_string(got);
        }
        auto& api = py::detail::npy_api::get();
        py::sequence outs = py::reinterpret_borrow<py::sequence>(outputs);
        py::sequence names = py::reinterpret_borrow<py::sequence>(output_names);
        for (size_t i = 0; i < got; ++i) {
            py::object out = outs[i];
            int64_t ndim;
            int64_t first = 0;
            if (api.PyArray_Check_(out.ptr())) {
                auto* a = py::detail::array_proxy(out.ptr());
                ndim = a->nd;
                if (ndim > 0) first = a->dimensions[0];
            } else {
                ndim = py::cast<int64_t>(out.attr("ndim"));
                if (ndim > 0) first = py::cast<int64_t>(py::tuple(out.attr("shape"))[0]);
            }
            if (ndim == 0 || first != rows) {
                std::string shape = "[";
                py::tuple dims(out.attr("shape"));
                for (size_t d = 0; d < dims.size(); ++d) {
                    if (d) shape += ", ";
                    shape += std::string(py::str(dims[d]));
                }
                shape += "]";
                return "output '" + std::string(py::str(names[i])) + "' has shape " + shape + " for a batch of " +
                       std::to_string(rows) + " rows";
            }
        }
        return "";
    }

    // Before a runner completes its batch OK: keep the batch outputs for the consumers (GIL held).
    void KeepOutputs(int runner, int code, const py::object& outputs) {
        if (code != 0 || outputs.is_none()) return;
        py::list arrays = py::list(outputs);
        if (arrays.size() != this->outputs.size()) {
            throw py::value_error("expected " + std::to_string(this->outputs.size()) + " outputs, got " +
                                  std::to_string(arrays.size()));
        }
        if (core->CurrentBatchRequests(runner) == 0) throw std::logic_error("runner has no batch");
        batch_outputs[runner_batch[runner]] = BatchOutputs{std::move(arrays), -1};
    }

    // Counts request `c` off its batch's outputs and returns them (None when none were kept, or the request
    // failed). Map bookkeeping only, running no Python code: the caller drops or uses the list afterwards.
    py::object TakeOutputs(const Completion& c) {
        if (c.code != StatusCode::kOk) return py::none();
        auto it = batch_outputs.find(c.batch);
        if (it == batch_outputs.end()) return py::none();
        BatchOutputs& b = it->second;
        if (b.remaining < 0) b.remaining = c.batch_requests;
        py::object arrays = b.arrays;  // our own reference; the entry may go right below
        if (--b.remaining == 0) batch_outputs.erase(it);
        return arrays;
    }

    // New reference (or NULL with an error set): rows [offset, offset + rows) of `arr` as a numpy view that
    // shares its memory and writeability, built directly (numpy's slice indexing parses a slice object per
    // call, the larger part of settling a request). Anything but an array with those rows is sliced by numpy.
    static PyObject* RowsView(PyObject* arr, int64_t offset, int64_t rows) {
        auto& api = py::detail::npy_api::get();
        auto* a = py::detail::array_proxy(arr);
        if (!api.PyArray_Check_(arr) || a->nd < 1 || a->nd > 32 || offset < 0 || rows < 0 ||
            offset + rows > a->dimensions[0]) {
            return PySequence_GetSlice(arr, offset, offset + rows);
        }
        Py_intptr_t dims[32];
        std::copy(a->dimensions, a->dimensions + a->nd, dims);
        dims[0] = rows;
        Py_INCREF(a->descr);  // stolen by PyArray_NewFromDescr (also on failure)
        PyObject* view = api.PyArray_NewFromDescr_(api.PyArray_Type_, a->descr, a->nd, dims, a->strides,
                                                   a->data + offset * a->strides[0],
                                                   a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_, nullptr);
        if (!view) return nullptr;
        Py_INCREF(arr);  // stolen by PyArray_SetBaseObject (also on failure): the view keeps the batch alive
        if (api.PyArray_SetBaseObject_(view, arr) < 0) {
            Py_DECREF(view);
            return nullptr;
        }
        return view;
    }

    // The request's result dict: views of its rows of the batch outputs (the arrays themselves when
    // the request had the batch to itself). Returns None when no outputs were kept. GIL held. Throws
    // (after its bookkeeping) when an output cannot be sliced.
    py::object Result(const Completion& c) {
        // Bookkeeping first: building the views below may run a finalizer that lets another thread in,
        // and that thread may change the map.
        return ResultOf(c, TakeOutputs(c));
    }

    // Result() from the outputs TakeOutputs(c) returned.
    py::object ResultOf(const Completion& c, py::object arrays) {
        if (arrays.is_none()) return arrays;
        py::dict result;
        const bool whole = c.batch_requests == 1;
        for (size_t i = 0; i < outputs.size(); ++i) {
            PyObject* arr = PyList_GET_ITEM(arrays.ptr(), i);  // borrowed from arrays
            if (whole) {
                result[outputs[i]] = py::reinterpret_borrow<py::object>(arr);
            } else {
                // New reference: a numpy view of rows [row_offset, row_offset + rows).
                PyObject* view = RowsView(arr, c.row_offset, c.rows);
                if (!view) throw py::error_already_set();
                result[outputs[i]] = py::reinterpret_steal<py::object>(view);
            }
        }
        return std::move(result);
    }

    // Releases what the core held for requests nobody waits for any more: completions pushed to abandoned
    // queues and the results of orphaned blocking requests; forgets abandoned queues nothing else refers to
    // (closing their eventfd). GIL held; never raises. All bookkeeping is done before the first reference is
    // dropped, because dropping one may run Python code (a finalizer) that re-enters this batcher.
    void Sweep() {
        if (sweeping) return;
        const bool due = sweep_due->exchange(false);
        if (!due && abandoned.empty()) return;
        sweeping = true;
        std::vector<py::object> drop;  // released when this function returns, after the bookkeeping
        for (const auto& q : abandoned) {
            for (const Completion& c : q->Drain()) {
                drop.push_back(TakeUserData(c.user_data));
                drop.push_back(TakeOutputs(c));
            }
        }
        // A queue no request refers to any more (and that Python dropped) can receive nothing: forget it.
        abandoned.erase(std::remove_if(abandoned.begin(), abandoned.end(),
                                       [](const auto& q) { return q.use_count() == 1; }),
                        abandoned.end());
        for (auto it = orphans.begin(); it != orphans.end();) {
            Completion c;
            if (!(*it)->WaitFor(0, &c)) {
                ++it;
                continue;
            }
            drop.push_back(TakeUserData((*it)->TakeUserData()));
            drop.push_back(TakeOutputs(c));
            it = orphans.erase(it);
        }
        sweeping = false;
        drop.clear();
    }

    // A new future of `loop` (new reference, or NULL with an error set): asyncio.Future(loop=loop) built here
    // when the loop's class keeps asyncio's own create_future, which does only that through a Python frame;
    // loop.create_future() otherwise (uvloop's is native already; a custom loop may return its own type).
    PyObject* NewFuture(PyObject* loop) {
        PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(loop));  // borrowed
        if (type != known_loop_type.ptr()) {
            PyObject* method = PyObject_GetAttr(type, create_future_name.ptr());  // new reference
            if (!method) return nullptr;
            known_loop_plain = method == base_create_future.ptr();
            Py_DECREF(method);
            known_loop_type = py::reinterpret_borrow<py::object>(type);
        }
        if (!known_loop_plain) return PyObject_CallMethodNoArgs(loop, create_future_name.ptr());
        PyObject* args[2] = {nullptr, loop};  // slot 0 free for the callee (PY_VECTORCALL_ARGUMENTS_OFFSET)
        return PyObject_Vectorcall(future_type.ptr(), args + 1, PY_VECTORCALL_ARGUMENTS_OFFSET, loop_kwnames.ptr());
    }

    // True when the calling thread runs an event loop and is not inside one of its tasks (a reader callback
    // or a call_soon handle): only then may a task's step run here, as the loop's own handle would run it.
    bool OutsideTask() {
        PyObject* task = PyObject_CallNoArgs(current_task.ptr());  // new reference or NULL (no running loop)
        if (!task) {
            PyErr_Clear();
            return false;
        }
        const bool outside = task == Py_None;
        Py_DECREF(task);
        return outside;
    }

    // Settles `fut` and, when its one done-callback is the wake-up of the asyncio Task awaiting it, runs that
    // wake-up right here in the task's context instead of through loop.call_soon: on the stdlib event loop a
    // scheduled callback costs a Python Handle and three Python frames per request, more than the request's
    // own native work. Any other callback (gather, user callbacks) keeps asyncio's scheduling. GIL held;
    // caller checked OutsideTask(). Returns 1 when settled and woken, 0 when not applicable (nothing done),
    // -1 with a Python error set when settling or the wake-up failed.
    int SettleAndWake(PyObject* fut, bool ok, PyObject* value) {
        if (Py_TYPE(fut) != reinterpret_cast<PyTypeObject*>(future_type.ptr())) return 0;  // a sink, a subclass
        PyObject* cbs = PyObject_GetAttr(fut, callbacks_name.ptr());  // new reference: [(cb, context)] or None
        if (!cbs) {
            PyErr_Clear();  // the caller settles it the ordinary way
            return 0;
        }
        py::object owned_cbs = py::reinterpret_steal<py::object>(cbs);
        if (!PyList_CheckExact(cbs) || PyList_GET_SIZE(cbs) != 1) return 0;
        PyObject* pair = PyList_GET_ITEM(cbs, 0);  // borrowed from cbs
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) return 0;
        PyObject* cb = PyTuple_GET_ITEM(pair, 0);   // borrowed from pair
        PyObject* ctx = PyTuple_GET_ITEM(pair, 1);  // borrowed from pair
        if (!PyCFunction_Check(cb) || !PyContext_CheckExact(ctx)) return 0;
        PyObject* task = PyCFunction_GET_SELF(cb);  // borrowed
        if (!task || !PyObject_TypeCheck(task, reinterpret_cast<PyTypeObject*>(task_type.ptr()))) return 0;
        const PyMethodDef* def = reinterpret_cast<PyCFunctionObject*>(cb)->m_ml;
        if (def != task_wakeup_def) {
            // The C Task's wake-up is one static method definition: recognised by name once, by address after.
            if (std::strcmp(def->ml_name, "task_wakeup") != 0) return 0;
            task_wakeup_def = def;
        }
        if (PyContext_Enter(ctx) < 0) {
            PyErr_Clear();  // the context is in use: leave the wake-up to the loop
            return 0;
        }
        // The callback leaves the future before it is settled, so settling schedules nothing.
        PyObject* r = PyObject_CallMethodOneArg(fut, remove_done_callback_name.ptr(), cb);  // new reference
        if (r) {
            Py_DECREF(r);
            r = PyObject_CallMethodOneArg(fut, ok ? set_result_name.ptr() : set_exception_name.ptr(), value);
        }
        if (r) {
            Py_DECREF(r);
            r = PyObject_CallOneArg(cb, fut);  // the task's step: its coroutine resumes here
        }
        const int exited = PyContext_Exit(ctx);
        if (!r || exited < 0) {
            Py_XDECREF(r);
            return -1;
        }
        Py_DECREF(r);
        return 1;
    }

    // Hands request `c`'s rows of `arrays` (the batch outputs) to the registered answer encoder: 0 answered,
    // 1 not taken, -1 with a Python error set.
    int FrameAnswer(fastml::FrameAnswerFn fn, PyObject* sink, const py::object& arrays, const Completion& c) {
        constexpr size_t kMaxOutputs = 64;
        const size_t n = outputs.size();
        if (n > kMaxOutputs || static_cast<size_t>(PyList_GET_SIZE(arrays.ptr())) != n) return 1;
        void* names[kMaxOutputs];
        for (size_t i = 0; i < n; ++i) names[i] = outputs[i].ptr();
        return fn(sink, arrays.ptr(), names, n, c.row_offset, c.rows);
    }

    // Settles every future of `items` (GIL held). A failure to build one result (make_error raising, an
    // output that cannot be sliced) settles that future with the error instead; a future that refuses to
    // be settled (cancelled: InvalidStateError, ignored; or raising otherwise) never stops the others. The
    // first unexpected error is raised once every future is settled. Returns how many were settled.
    size_t Resolve(std::vector<Completion>& items, py::handle make_error) {
        size_t n = 0;
        // Whether tasks may be woken here (OutsideTask), asked at the first future only: the question goes through
        // asyncio.current_task, a getpid syscall per call on Python 3.11, and a batch of native sinks never needs it.
        int wake_direct = -1;
        py::object first_type, first_value, first_tb;  // the first unexpected error, re-raised at the end
        for (const Completion& c : items) {
            py::object keep = TakeUserData(c.user_data);
            py::object value;
            bool ok = c.code == StatusCode::kOk;
            bool settled = false;  // value and ok are final
            PyObject* target = keep ? PyTuple_GET_ITEM(keep.ptr(), 0) : nullptr;  // borrowed from keep
            fastml::FrameAnswerFn answer_fn = ok && target != nullptr ? FrameAnswerFor(Py_TYPE(target)) : nullptr;
            if (answer_fn != nullptr) {
                // A native intake's sink: its encoder writes the answer from the batch outputs directly, with no
                // result dict, row views or set_result call per request.
                py::object arrays = TakeOutputs(c);
                const int written = arrays.is_none() ? 1 : FrameAnswer(answer_fn, target, arrays, c);
                if (written == 0) {
                    ++n;
                    continue;
                }
                try {
                    if (written < 0) throw py::error_already_set();
                    value = ResultOf(c, std::move(arrays));  // the outputs it does not take: the ordinary way
                } catch (py::error_already_set& e) {
                    value = e.value();
                    ok = false;
                }
                settled = true;
            }
            if (!settled) {
                try {
                    value = ok ? Result(c) : make_error(static_cast<int>(c.code), c.message);
                } catch (py::error_already_set& e) {
                    value = e.value();  // the error itself becomes the future's exception
                    ok = false;
                }
            }
            if (!keep) continue;
            PyObject* fut = PyTuple_GET_ITEM(keep.ptr(), 0);  // borrowed from keep
            if (fut == Py_None) continue;
            if (wake_direct < 0) wake_direct = OutsideTask() ? 1 : 0;
            const int woken = wake_direct ? SettleAndWake(fut, ok, value.ptr()) : 0;
            if (woken > 0) {
                ++n;
                continue;
            }
            PyObject* r = woken < 0 ? nullptr
                                    : PyObject_CallMethodOneArg(fut, ok ? set_result_name.ptr() : set_exception_name.ptr(),
                                                                value.ptr());  // new reference or NULL
            if (r) {
                Py_DECREF(r);  // the None set_result returns
                ++n;
                continue;
            }
            if (PyErr_ExceptionMatches(invalid_state.ptr()) || first_type) {
                PyErr_Clear();  // cancelled by its caller meanwhile (or a later error: the first one is kept)
                continue;
            }
            PyObject *type, *val, *tb;
            PyErr_Fetch(&type, &val, &tb);  // new references, owned by the objects below
            first_type = py::reinterpret_steal<py::object>(type);
            first_value = py::reinterpret_steal<py::object>(val);
            first_tb = py::reinterpret_steal<py::object>(tb);
        }
        if (first_type) {
            PyErr_Restore(first_type.release().ptr(), first_value.release().ptr(), first_tb.release().ptr());
            throw py::error_already_set();
        }
        return n;
    }
};

// The binary protocol's native intake (fastml._frames) submits request frames through these, handed over in
// a capsule (csrc/frame_submit_api.h): the same enqueue as submit_async, with user_data = (sink, buffer).
struct FrameTarget {
    PyBatcher* batcher;  // alive while the caller holds the Batcher object (it does, for the target's life)
    std::shared_ptr<CompletionQueue> queue;
};

static void* FrameOpen(void* batcher, void* queue, std::string* error) {
    try {
        PyBatcher& b = py::cast<PyBatcher&>(py::handle(static_cast<PyObject*>(batcher)));
        auto q = py::cast<std::shared_ptr<CompletionQueue>>(py::handle(static_cast<PyObject*>(queue)));
        return new FrameTarget{&b, std::move(q)};
    } catch (const std::exception& e) {
        PyErr_Clear();  // a cast_error may leave nothing set; either way the caller gets *error
        *error = std::string("not a native batcher and completion queue: ") + e.what();
        return nullptr;
    }
}

static void FrameClose(void* target) { delete static_cast<FrameTarget*>(target); }

static int FrameSubmit(void* target, std::vector<TensorView>* views, int64_t timeout_us, void* keep,
                       std::string* message) {
    FrameTarget* t = static_cast<FrameTarget*>(target);
    PyBatcher& self = *t->batcher;
    if (self.SweepWanted()) self.Sweep();
    std::shared_ptr<Request> req;
    Status st = self.core->Submit(std::move(*views), timeout_us, t->queue, keep, &req);
    if (!st.ok()) {
        *message = st.message;
        return static_cast<int>(st.code);
    }
    return 0;
}

static void FrameSetAnswer(void* sink_type, fastml::FrameAnswerFn fn) {
    PyTypeObject* type = static_cast<PyTypeObject*>(sink_type);
    for (FrameAnswerHook& h : g_frame_answers) {
        if (h.type == nullptr || h.type == type) {
            h = FrameAnswerHook{type, fn};
            return;
        }
    }
    // Full (more intakes than slots): this type's sinks take set_result, which answers the same bytes.
}

// submit_future through CPython's fast call instead of pybind11's dispatcher, which costs ~1,100 instructions a
// call (argument casters, the queue holder's type lookup): predict_async makes this call for every request.
// Made by Batcher.submit_future_fn(); same arguments, result and errors as Batcher.submit_future.
constexpr const char* kFastSubmitCapsule = "fastml._core.submit_future_fn";

struct FastSubmit {
    py::object owner;  // the Batcher object: keeps `batcher` alive as long as the function
    PyBatcher* batcher = nullptr;
};

static PyObject* FastSubmitCall(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "submit_future(queue, inputs, timeout_us, loop) takes 4 arguments (%zd given)",
                     nargs);
        return nullptr;
    }
    auto* fs = static_cast<FastSubmit*>(PyCapsule_GetPointer(capsule, kFastSubmitCapsule));
    if (!fs) return nullptr;
    const long long timeout_us = PyLong_AsLongLong(args[2]);
    if (timeout_us == -1 && PyErr_Occurred()) return nullptr;
    PyBatcher& b = *fs->batcher;
    try {
        if (args[0] != b.fast_queue_obj.ptr()) {
            py::handle q(args[0]);
            if (!py::isinstance<CompletionQueue>(q)) {
                PyErr_Format(PyExc_TypeError, "submit_future: queue must be a CompletionQueue, got %s",
                             Py_TYPE(args[0])->tp_name);
                return nullptr;
            }
            b.fast_queue = q.cast<std::shared_ptr<CompletionQueue>>();
            b.fast_queue_obj = py::reinterpret_borrow<py::object>(q);
        }
        return b.SubmitFuture(b.fast_queue, args[1], timeout_us, args[3]).release().ptr();
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (const py::builtin_exception& e) {
        e.set_error();
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return nullptr;
}

// Constant (CPython only reads it): the one method definition every submit_future_fn function shares.
static PyMethodDef kFastSubmitDef = {
    "submit_future", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(FastSubmitCall)), METH_FASTCALL,
    "submit_future(queue, inputs, timeout_us, loop): Batcher.submit_future without pybind11's dispatch."};

static void bind_batcher(py::module_& m) {
    // Leaked on purpose: the capsule may be used until the interpreter exits.
    static fastml::FrameSubmitApi* frame_api =
        new fastml::FrameSubmitApi{fastml::kFrameSubmitAbi, &FrameOpen, &FrameClose, &FrameSubmit, &FrameSetAnswer};
    m.attr("frame_submit_api") = py::capsule(static_cast<void*>(frame_api), fastml::kFrameSubmitCapsule);
    py::object core_error = py::reinterpret_steal<py::object>(
        PyErr_NewException("fastml._core.CoreError", PyExc_RuntimeError, nullptr));
    m.attr("CoreError") = core_error;

    py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(
        m, "CompletionQueue", "Completions for one event loop: watch `fd` (an eventfd), then resolve().")
        .def(py::init<>())
        .def_property_readonly("fd", &CompletionQueue::fd)
        .def("set_quiet_thread", &CompletionQueue::SetQuietThread,
             "Pushes from the calling thread stop writing the eventfd: it drains the queue itself (inline runner).")
        .def(
            "drain",
            [](CompletionQueue& q) {
                std::vector<Completion> items = q.Drain();
                py::list out(items.size());
                for (size_t i = 0; i < items.size(); ++i) {
                    TakeUserData(items[i].user_data);  // released here: drain() is the raw view used by tests
                    out[i] = CompletionTuple(items[i]);
                }
                return out;
            },
            "Takes every completion so far as raw tuples "
            "[(ticket, batch, row_offset, rows, code, message|None, batch_requests)]; no futures are settled.");

    py::class_<Request, std::shared_ptr<Request>>(m, "Ticket", "A blocking request handle (see Batcher.wait).")
        .def_property_readonly("id", [](const Request& r) { return r.id; });

    py::class_<PyBatcher>(m, "Batcher", "The native micro-batcher of one model (see csrc/batcher.h).")
        .def(py::init([core_error](const std::vector<std::tuple<std::string, py::dtype, std::vector<int64_t>>>& inputs,
                                   const std::vector<std::string>& outputs, int64_t max_batch_size,
                                   int64_t max_queue_size, int64_t max_queue_delay_us, int instances) {
                 auto b = std::make_unique<PyBatcher>();
                 std::vector<InputSpec> specs;
                 for (const auto& [name, dtype, dims] : inputs) {
                     InputSpec s;
                     s.name = name;
                     s.kind = dtype.kind();
                     s.itemsize = static_cast<int64_t>(dtype.itemsize());
                     s.dims = dims;
                     if (s.kind == 'O') throw py::value_error("input '" + name + "': object dtype cannot be batched natively");
                     specs.push_back(std::move(s));
                     b->dtypes.push_back(dtype);
                     b->input_names.emplace_back(name);
                 }
                 for (const auto& name : outputs) b->outputs.emplace_back(name);
                 BatcherOptions opt;
                 opt.max_batch_size = max_batch_size;
                 opt.max_queue_size = max_queue_size;
                 opt.max_queue_delay_us = max_queue_delay_us;
                 opt.instances = instances;
                 try {
                     b->core = std::make_unique<Batcher>(std::move(specs), opt);
                 } catch (const std::invalid_argument& e) {
                     throw py::value_error(e.what());
                 }
                 b->runner_batch.assign(static_cast<size_t>(instances), 0);
                 b->error_type = core_error;
                 py::module_ asyncio = py::module_::import("asyncio");
                 b->invalid_state = asyncio.attr("InvalidStateError");
                 b->current_task = asyncio.attr("current_task");
                 b->task_type = asyncio.attr("Task");
                 b->future_type = asyncio.attr("Future");
                 b->base_create_future = asyncio.attr("BaseEventLoop").attr("create_future");
                 b->loop_kwnames = py::make_tuple("loop");
                 b->view_base = py::capsule(b.get(), "fastml.batcher.view_base");
                 return b;
             }),
             py::arg("inputs"), py::arg("outputs"), py::arg("max_batch_size"), py::arg("max_queue_size"),
             py::arg("max_queue_delay_us"), py::arg("instances"))
        .def(
            "submit_async",
            [](PyBatcher& self, const std::shared_ptr<CompletionQueue>& queue, py::handle arrays, int64_t timeout_us,
               py::handle future) {
                if (self.SweepWanted()) self.Sweep();
                std::vector<TensorView> views = self.Views(arrays);
                // New reference owned by the request until resolve()/drain() (or a sweep) takes it back:
                // keeps the future and, through the tuple, the input arrays alive while the core reads them.
                PyObject* keep = PyTuple_Pack(2, future.ptr(), arrays.ptr());
                if (!keep) throw py::error_already_set();
                std::shared_ptr<Request> req;
                Status st = self.core->Submit(std::move(views), timeout_us, queue, keep, &req);
                if (!st.ok()) {
                    Py_DECREF(keep);  // never enqueued: drop the reference made above
                    RaiseCoreError(self.error_type, st);
                }
                return req->id;
            },
            py::arg("queue"), py::arg("arrays"), py::arg("timeout_us"), py::arg("future") = py::none(),
            "Enqueues arrays (kept by reference until completion, with `future`); returns the ticket id. "
            "resolve(queue) later settles `future` with the result dict or an error.")
        .def(
            "submit_future",
            [](PyBatcher& self, const std::shared_ptr<CompletionQueue>& queue, py::handle inputs, int64_t timeout_us,
               py::handle loop) { return self.SubmitFuture(queue, inputs, timeout_us, loop); },
            py::arg("queue"), py::arg("inputs"), py::arg("timeout_us"), py::arg("loop"),
            "Model.submit's fast path: `inputs` (one array for a one-input model, or a dict of exactly the input "
            "names) are enqueued with a new future of `loop`, which is returned; resolve(queue) settles it. "
            "Raises CoreError(INVALID_INPUT) for anything else, so the caller can validate and use submit_async.")
        .def(
            "submit_future_fn",
            [](py::object self) {
                auto fs = std::make_unique<FastSubmit>();
                fs->batcher = &self.cast<PyBatcher&>();
                fs->owner = std::move(self);
                py::capsule cap(fs.get(), kFastSubmitCapsule, [](PyObject* c) {
                    delete static_cast<FastSubmit*>(PyCapsule_GetPointer(c, kFastSubmitCapsule));
                });
                fs.release();  // owned by the capsule now
                PyObject* fn = PyCFunction_NewEx(&kFastSubmitDef, cap.ptr(), nullptr);
                if (!fn) throw py::error_already_set();
                return py::reinterpret_steal<py::object>(fn);
            },
            "submit_future as a plain CPython function bound to this batcher (fast call, no pybind11 dispatch): "
            "what Model binds for its per-request path.")
        .def(
            "submit_sync",
            [](PyBatcher& self, py::handle arrays, int64_t timeout_us) {
                if (self.SweepWanted()) self.Sweep();
                std::vector<TensorView> views = self.Views(arrays);
                // New reference owned by the request until wait() (or, for an interrupted waiter, a sweep)
                // takes it back: the input arrays outlive a caller that gave up waiting.
                PyObject* keep = PyTuple_Pack(2, Py_None, arrays.ptr());
                if (!keep) throw py::error_already_set();
                std::shared_ptr<Request> req;
                Status st = self.core->Submit(std::move(views), timeout_us, nullptr, keep, &req);
                if (!st.ok()) {
                    Py_DECREF(keep);  // never enqueued: drop the reference made above
                    RaiseCoreError(self.error_type, st);
                }
                return req;
            },
            py::arg("arrays"), py::arg("timeout_us"),
            "Enqueues arrays (kept by reference until completion) for a blocking waiter; returns a Ticket for "
            "wait().")
        .def(
            "wait",
            [](PyBatcher& self, const std::shared_ptr<Request>& ticket) {
                // Slices short enough that Ctrl-C feels immediate, long enough to cost nothing.
                constexpr int64_t kSliceNs = 20'000'000;
                Completion c;
                for (;;) {
                    bool done;
                    {
                        py::gil_scoped_release nogil;  // the waiter blocks; runners and the loop keep going
                        done = ticket->WaitFor(kSliceNs, &c);
                    }
                    if (done) break;
                    // Python signal handlers only run once C code returns: check between slices, and on a
                    // raised handler (KeyboardInterrupt) hand the request to the sweep, which releases its
                    // arrays once the core is done with them.
                    if (PyErr_CheckSignals() != 0) {
                        self.orphans.push_back(ticket);
                        ticket->Orphan(self.sweep_due);
                        throw py::error_already_set();
                    }
                }
                py::object keep = TakeUserData(ticket->TakeUserData());  // the arrays; released on return
                py::object result = c.code == StatusCode::kOk ? self.Result(c) : py::none();
                py::object msg = c.code == StatusCode::kOk ? py::none() : py::object(py::str(c.message));
                return py::make_tuple(static_cast<int>(c.code), msg, result);
            },
            py::arg("ticket"),
            "Blocks (GIL released, interruptible by signals) until the ticket completes: "
            "(code, message|None, result|None).")
        .def(
            "abandon_ticket",
            [](PyBatcher& self, const std::shared_ptr<Request>& ticket) {
                self.orphans.push_back(ticket);
                ticket->Orphan(self.sweep_due);
                self.Sweep();
            },
            py::arg("ticket"),
            "Nobody will wait() for this ticket: its arrays are released once the core is done with them.")
        .def(
            "abandon",
            [](PyBatcher& self, const std::shared_ptr<CompletionQueue>& queue) {
                queue->Abandon(self.sweep_due);
                if (self.fast_queue == queue) {  // the fast entry's cache must not keep the queue open
                    self.fast_queue.reset();
                    self.fast_queue_obj = py::object();
                }
                self.abandoned.push_back(queue);
                self.sweep_due->store(true);  // release what is queued already
                self.Sweep();
            },
            py::arg("queue"),
            "The queue's event loop closed: release (without settling) every completion it holds or gets.")
        .def(
            "resolve",
            [](PyBatcher& self, CompletionQueue& q, py::handle make_error) {
                // On the event loop's thread, once per eventfd wake-up: settles every finished future
                // here, so no Python code runs per request.
                std::vector<Completion> items = q.Drain();
                return self.Resolve(items, make_error);
            },
            py::arg("queue"), py::arg("make_error"),
            "Drains `queue` and settles each request's future: set_result(dict of its rows) or "
            "set_exception(make_error(code, message)). Every future is settled even when one raises; the first "
            "unexpected error is raised afterwards. Returns how many futures it settled.")
        .def(
            "next_batch",
            [](PyBatcher& self, int runner) -> py::object {
                BatchInfo info;
                bool ok;
                {
                    py::gil_scoped_release nogil;  // blocks for work, then gathers rows with memcpy
                    ok = self.core->NextBatch(runner, &info);
                }
                if (!ok) return py::none();
                self.TopUp(runner, &info);
                return self.BatchTuple(runner, info);
            },
            py::arg("runner"),
            "Blocks (GIL released) for runner `runner`'s next batch: (batch_id, rows, [input arrays]) or None "
            "after shutdown. The arrays are valid until this runner's complete().")
        .def(
            "try_next_batch",
            [](PyBatcher& self, int runner) -> py::object {
                BatchInfo info;
                // Never blocks; the memcpy of a small batch is cheaper than a GIL hand-off, so the GIL stays.
                if (!self.core->NextBatch(runner, &info, /*wait=*/false)) return py::none();
                return self.BatchTuple(runner, info);
            },
            py::arg("runner"),
            "Non-blocking next_batch for an inline runner: the requests queued now (max_queue_delay_us is not "
            "waited for) as (batch_id, rows, [input arrays]), or None when nothing is queued or after shutdown.")
        .def(
            "run_queued",
            [](PyBatcher& self, int runner, const py::object& run, const py::object& output_names,
               const py::tuple& input_names, const py::object& run_options, const std::string& failed_prefix) {
                return self.RunQueued(runner, run, output_names, input_names, run_options, failed_prefix);
            },
            py::arg("runner"), py::arg("run"), py::arg("output_names"), py::arg("input_names"),
            py::arg("run_options"), py::arg("failed_prefix"),
            "The inline runner's loop: while a batch is queued, take it (as try_next_batch), call "
            "run(output_names, {input name: batch array}, run_options) (ONNX Runtime's bound run, which releases "
            "the GIL while it computes), check its outputs (one per output name, each with the batch's rows first) "
            "and complete the batch: with them, or with INTERNAL and failed_prefix + \"<rows> rows: <exception "
            "type>: <message>\" when run raised or returned something else. Returns the number of batches run.")
        .def(
            "complete",
            [](PyBatcher& self, int runner, int code, const std::string& message, const py::object& outputs) {
                if (code < 0 || code >= fastml::kStatusCodeCount) throw py::value_error("unknown status code");
                self.KeepOutputs(runner, code, outputs);
                {
                    py::gil_scoped_release nogil;  // delivery touches no Python object
                    self.core->CompleteBatch(runner, Status{static_cast<StatusCode>(code), message});
                }
                self.Sweep();  // completions for closed loops or interrupted waiters (usually none: one load)
            },
            py::arg("runner"), py::arg("code") = 0, py::arg("message") = "", py::arg("outputs") = py::none(),
            "Completes runner `runner`'s batch: code 0 = `outputs` (the batch's output arrays, in output "
            "order) are ready, else every request fails with code/message.")
        .def(
            "complete_next",
            [](PyBatcher& self, int runner, int code, const std::string& message, const py::object& outputs) -> py::object {
                if (code < 0 || code >= fastml::kStatusCodeCount) throw py::value_error("unknown status code");
                self.KeepOutputs(runner, code, outputs);
                BatchInfo info;
                bool ok;
                {
                    // One GIL hand-off per batch instead of two: deliver this batch, then wait for the next.
                    py::gil_scoped_release nogil;
                    self.core->CompleteBatch(runner, Status{static_cast<StatusCode>(code), message});
                    if (self.sweep_due->load()) {
                        // Rare: this batch had requests of a closed loop or an interrupted waiter.
                        py::gil_scoped_acquire gil;
                        self.Sweep();
                    }
                    ok = self.core->NextBatch(runner, &info);
                }
                if (!ok) return py::none();
                self.TopUp(runner, &info);
                return self.BatchTuple(runner, info);
            },
            py::arg("runner"), py::arg("code") = 0, py::arg("message") = "", py::arg("outputs") = py::none(),
            "complete() then next_batch() under one GIL release.")
        .def(
            "shutdown",
            [](PyBatcher& self, const std::string& reason) {
                {
                    py::gil_scoped_release nogil;  // joins the deadline thread
                    self.core->Shutdown(reason);
                }
                self.Sweep();  // the failures Shutdown pushed to abandoned queues
            },
            py::arg("reason") = "closed")
        .def("stats", [](PyBatcher& self) {
            fastml::BatcherStats s = self.core->Stats();
            py::dict d;
            d["requests"] = s.requests;
            d["failures"] = s.failures;
            d["rows"] = s.rows;
            d["batches"] = s.batches;
            d["pending"] = s.pending;
            d["queue_ns"] = s.queue_ns;
            d["compute_input_ns"] = s.compute_input_ns;
            d["compute_infer_ns"] = s.compute_infer_ns;
            d["compute_output_ns"] = s.compute_output_ns;
            d["request_ns"] = s.request_ns;
            d["fail_ns"] = s.fail_ns;
            d["last_inference_ms"] = s.last_inference_ms;
            d["rerun_alone"] = s.rerun_alone;
            py::dict hist, per_size;
            for (const auto& [rows, b] : s.batch_stats) {
                hist[py::int_(rows)] = b.count;
                py::dict e;
                e["count"] = b.count;
                e["compute_input_ns"] = b.compute_input_ns;
                e["compute_infer_ns"] = b.compute_infer_ns;
                e["compute_output_ns"] = b.compute_output_ns;
                per_size[py::int_(rows)] = e;
            }
            d["batch_size_histogram"] = hist;
            d["batch_stats"] = per_size;
            d["mean_batch_size"] = s.batches ? static_cast<double>(s.rows) / static_cast<double>(s.batches) : 0.0;
            return d;
        });
}

}  // namespace batcher_py
using batcher_py::bind_batcher;
// ===== end batcher section =====

// ===== feature cache section (csrc/feature_cache.h) =====
#include <chrono>
#include <charconv>
#include <memory>
#include <string>
#include <vector>

#include "feature_cache.h"

namespace fc_bind {

using fastml::CacheStatus;
using fastml::FeatureCache;
using fastml::KeyView;

using status_py::Raise;  // the one table (status section)

[[noreturn]] void RaiseInvalid(const std::string& msg) { Raise(CacheStatus::Error(fastml::StatusCode::kInvalidInput, msg)); }

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Encoded entity keys, copied out of the Python objects so the GIL can be released safely (another
// thread could drop a str while we read its UTF-8 buffer otherwise).
struct KeyBatch {
  std::string arena;
  std::vector<std::pair<size_t, size_t>> spans;  // (offset, size) into arena
  std::vector<KeyView> views;

  void Finish() {
    views.resize(spans.size());
    for (size_t i = 0; i < spans.size(); ++i) views[i] = KeyView{arena.data() + spans[i].first, spans[i].second};
  }
};

// Appends one scalar key component (str, bytes, or an integer in decimal) to the arena.
bool AppendScalar(PyObject* item, std::string* arena) {
  if (PyUnicode_Check(item)) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item, &size);
    if (data == nullptr) throw py::error_already_set();
    arena->append(data, size_t(size));
    return true;
  }
  if (PyBytes_Check(item)) {
    arena->append(PyBytes_AS_STRING(item), size_t(PyBytes_GET_SIZE(item)));
    return true;
  }
  if (PyIndex_Check(item) && !PyFloat_Check(item)) {  // int, numpy integers
    // PyNumber_Index returns a new reference: the py::object owns it and releases it on scope exit.
    py::object as_int = PyLong_Check(item) ? py::reinterpret_borrow<py::object>(item)
                                           : py::reinterpret_steal<py::object>(PyNumber_Index(item));
    if (!as_int) throw py::error_already_set();
    long long v = PyLong_AsLongLong(as_int.ptr());
    if (v == -1 && PyErr_Occurred()) {
      if (!PyErr_ExceptionMatches(PyExc_OverflowError)) throw py::error_already_set();
      // Beyond long long (a uint64 id above INT64_MAX): its decimal text all the same, as ingest stores it.
      PyErr_Clear();
      py::str text(as_int);
      Py_ssize_t size = 0;
      const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
      if (data == nullptr) throw py::error_already_set();
      arena->append(data, size_t(size));
      return true;
    }
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof buf, v);
    arena->append(buf, size_t(res.ptr - buf));
    return true;
  }
  return false;
}

// Encodes a sequence of keys: str/bytes/int as is, a tuple as its components joined by 0x1f (the
// same encoding fastml.features.offline.key_strings gives Arrow columns). A part of a composite key (a tuple
// of 2 or more) holding the byte 0x1f is refused: ("a\x1fb", "c") and ("a", "b\x1fc") would encode alike and
// read or overwrite each other's row. A one-part key may hold it (a group's key arity is fixed).
void EncodeKeys(py::handle keys, KeyBatch* out) {
  if (PyUnicode_Check(keys.ptr()) || PyBytes_Check(keys.ptr())) {
    RaiseInvalid("entity keys must be a sequence of keys, not a single string");
  }
  // PySequence_Fast returns a new reference (the list itself or a copy): owned by `fast` from here on.
  py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(keys.ptr(), "entity keys must be a sequence"));
  if (!fast) {
    PyErr_Clear();
    RaiseInvalid(std::string("entity keys must be a sequence of keys, got ") + Py_TYPE(keys.ptr())->tp_name);
  }
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  out->arena.reserve(size_t(n) * 16);
  out->spans.reserve(size_t(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    size_t start = out->arena.size();
    bool ok;
    if (PyTuple_Check(item)) {
      Py_ssize_t m = PyTuple_GET_SIZE(item);
      ok = m > 0;
      for (Py_ssize_t j = 0; ok && j < m; ++j) {
        if (j > 0) out->arena.push_back('\x1f');
        const size_t part = out->arena.size();
        ok = AppendScalar(PyTuple_GET_ITEM(item, j), &out->arena);
        if (ok && m > 1 && std::memchr(out->arena.data() + part, '\x1f', out->arena.size() - part) != nullptr) {
          RaiseInvalid("entity key at position " + std::to_string(i) + ": part " + std::to_string(j) +
                       " contains the byte 0x1f, which separates the parts of a composite key");
        }
      }
    } else {
      ok = AppendScalar(item, &out->arena);
    }
    if (!ok) {
      RaiseInvalid("entity key at position " + std::to_string(i) + " has type " + Py_TYPE(item)->tp_name +
                   "; use str, int, bytes or a tuple of them");
    }
    out->spans.emplace_back(start, out->arena.size() - start);
  }
  out->Finish();
}

struct PyFeatureCache {
  std::shared_ptr<FeatureCache> cache;
};

struct PyTable {
  std::shared_ptr<FeatureCache> cache;
  fastml::TableInfo info;
};

struct PyReadPlan {
  std::shared_ptr<FeatureCache> cache;
  std::vector<fastml::ReadSpec> specs;
  size_t n_columns = 0;
  size_t n_key_sets = 1;

  // Encodes the key list(s): one sequence when the plan has one key set, else a sequence of them.
  size_t Encode(py::handle keys, std::vector<KeyBatch>* batches, std::vector<const KeyView*>* sets) const {
    batches->resize(n_key_sets);
    if (n_key_sets == 1) {
      EncodeKeys(keys, &(*batches)[0]);
    } else {
      py::sequence seq = py::reinterpret_borrow<py::sequence>(keys);
      if (size_t(py::len(seq)) != n_key_sets) {
        RaiseInvalid("this lookup needs " + std::to_string(n_key_sets) + " key lists, got " +
                     std::to_string(py::len(seq)));
      }
      for (size_t s = 0; s < n_key_sets; ++s) EncodeKeys(seq[s], &(*batches)[s]);
    }
    size_t n = (*batches)[0].views.size();
    for (auto& b : *batches) {
      if (b.views.size() != n) RaiseInvalid("every key list of one lookup must have the same length");
      sets->push_back(b.views.data());
    }
    return n;
  }

  template <typename T>
  void Run(size_t n, const std::vector<const KeyView*>& sets, T* out, uint8_t* present, int64_t* et,
           int64_t now_us) const {
    CacheStatus st;
    {
      // Native LMDB reads only; no Python object is touched until the GIL is back.
      py::gil_scoped_release release;
      st = cache->GetMany<T>(specs, sets, n, n_columns, out, present, et, now_us);
    }
    if (!st.ok()) Raise(st);
  }
};

template <typename T>
T* CheckedOut(py::handle arr, const char* what, size_t rows, size_t cols) {
  auto a = py::reinterpret_borrow<py::array>(arr);
  if (!(a.flags() & py::array::c_style) || !a.writeable()) {
    RaiseInvalid(std::string(what) + " must be a writeable C-contiguous numpy array");
  }
  if (a.ndim() != 2 || size_t(a.shape(0)) != rows || size_t(a.shape(1)) != cols) {
    RaiseInvalid(std::string(what) + " must have shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
  }
  return static_cast<T*>(a.mutable_data());
}

}  // namespace fc_bind

static void bind_feature_cache(py::module_& m) {
  using namespace fc_bind;
  py::class_<PyTable>(m, "FeatureTable", "One online table (a feature group version) of a FeatureCache.")
      .def_property_readonly("name", [](const PyTable& t) { return t.info.name; })
      .def_property_readonly("n_features", [](const PyTable& t) { return t.info.n_features; })
      .def(
          "put_many",
          [](PyTable& t, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> keys_data,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> keys_offsets,
             py::array_t<double, py::array::c_style | py::array::forcecast> values,
             py::array_t<bool, py::array::c_style | py::array::forcecast> present,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> event_time_us) {
            const size_t n = size_t(event_time_us.size());
            const size_t w = t.info.n_features;
            if (size_t(keys_offsets.size()) != n + 1) RaiseInvalid("keys_offsets must have n + 1 entries");
            if (size_t(values.size()) != n * w || size_t(present.size()) != n * w) {
              RaiseInvalid("values and present must have shape (n, " + std::to_string(w) + ")");
            }
            const int64_t* off = keys_offsets.data();
            const char* data = reinterpret_cast<const char*>(keys_data.data());
            std::vector<KeyView> keys(n);
            for (size_t i = 0; i < n; ++i) {
              if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > keys_data.size()) {
                RaiseInvalid("keys_offsets is not a valid offsets array at row " + std::to_string(i));
              }
              keys[i] = KeyView{data + off[i], size_t(off[i + 1] - off[i])};
            }
            fastml::PutResult res;
            CacheStatus st;
            {
              // One LMDB write transaction; the arrays are held by this frame's py::array objects.
              py::gil_scoped_release release;
              st = t.cache->PutMany(t.info, keys.data(), n, values.data(), reinterpret_cast<const uint8_t*>(present.data()),
                                    event_time_us.data(), &res);
            }
            if (!st.ok()) Raise(st);
            return py::make_tuple(res.written, res.skipped_older);
          },
          py::arg("keys_data"), py::arg("keys_offsets"), py::arg("values"), py::arg("present"),
          py::arg("event_time_us"),
          "Write rows in one transaction (keys as Arrow-style data + int64 offsets). Returns (written, "
          "skipped_older).")
      .def(
          "put",
          [](PyTable& t, py::handle keys, py::array_t<double, py::array::c_style | py::array::forcecast> values,
             py::array_t<bool, py::array::c_style | py::array::forcecast> present,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> event_time_us) {
            KeyBatch batch;
            EncodeKeys(keys, &batch);
            const size_t n = batch.views.size();
            const size_t w = t.info.n_features;
            if (size_t(event_time_us.size()) != n || size_t(values.size()) != n * w || size_t(present.size()) != n * w) {
              RaiseInvalid("put: need n keys, values/present of shape (n, " + std::to_string(w) + ") and n event times");
            }
            fastml::PutResult res;
            CacheStatus st;
            {
              // One LMDB write transaction over copied keys and held arrays.
              py::gil_scoped_release release;
              st = t.cache->PutMany(t.info, batch.views.data(), n, values.data(),
                                    reinterpret_cast<const uint8_t*>(present.data()), event_time_us.data(), &res);
            }
            if (!st.ok()) Raise(st);
            return py::make_tuple(res.written, res.skipped_older);
          },
          py::arg("keys"), py::arg("values"), py::arg("present"), py::arg("event_time_us"),
          "Write rows keyed by Python keys (str, int, bytes or tuples). Returns (written, skipped_older).")
      .def("count", [](PyTable& t) {
        size_t n = 0;
        CacheStatus st = t.cache->Count(t.info, &n);
        if (!st.ok()) Raise(st);
        return n;
      })
      .def(
          "sample_keys",
          [](PyTable& t, size_t limit) {
            std::vector<std::string> keys;
            CacheStatus st;
            {
              // One LMDB read transaction; keys are copied out into std::strings.
              py::gil_scoped_release release;
              st = t.cache->SampleKeys(t.info, limit, &keys);
            }
            if (!st.ok()) Raise(st);
            py::list out;
            for (const std::string& k : keys) out.append(py::bytes(k));
            return out;
          },
          py::arg("limit") = 16, "Up to `limit` stored keys (bytes), in key order.");

  py::class_<PyReadPlan>(m, "FeatureReadPlan",
                         "A prepared lookup: which tables and features fill which output columns.")
      .def_property_readonly("n_columns", [](const PyReadPlan& p) { return p.n_columns; })
      .def_property_readonly("n_key_sets", [](const PyReadPlan& p) { return p.n_key_sets; })
      .def(
          "get",
          [](const PyReadPlan& p, py::handle keys, bool as_float32, int64_t now_us) -> py::tuple {
            std::vector<KeyBatch> batches;
            std::vector<const KeyView*> sets;
            size_t n = p.Encode(keys, &batches, &sets);
            std::vector<py::ssize_t> shape{py::ssize_t(n), py::ssize_t(p.n_columns)};
            py::array_t<bool> present(shape);
            py::array_t<int64_t> et(shape);
            int64_t now = now_us == 0 ? NowUs() : now_us;
            auto* pres = reinterpret_cast<uint8_t*>(present.mutable_data());
            if (as_float32) {
              py::array_t<float> out(shape);
              p.Run<float>(n, sets, out.mutable_data(), pres, et.mutable_data(), now);
              return py::make_tuple(out, present, et);
            }
            py::array_t<double> out(shape);
            p.Run<double>(n, sets, out.mutable_data(), pres, et.mutable_data(), now);
            return py::make_tuple(out, present, et);
          },
          py::arg("keys"), py::arg("as_float32") = false, py::arg("now_us") = 0,
          "Look up keys; returns (values [n, f], present [n, f] bool, event_time_us [n, f] int64).")
      .def(
          "get_into",
          [](const PyReadPlan& p, py::handle keys, py::array out, py::object present, py::object event_time,
             int64_t now_us) {
            std::vector<KeyBatch> batches;
            std::vector<const KeyView*> sets;
            size_t n = p.Encode(keys, &batches, &sets);
            uint8_t* pres = nullptr;
            int64_t* et = nullptr;
            if (!present.is_none()) {
              if (!py::isinstance<py::array_t<bool>>(present)) RaiseInvalid("present must be a numpy bool array");
              pres = CheckedOut<uint8_t>(present, "present", n, p.n_columns);
            }
            if (!event_time.is_none()) {
              if (!py::isinstance<py::array_t<int64_t>>(event_time)) {
                RaiseInvalid("event_time must be a numpy int64 array");
              }
              et = CheckedOut<int64_t>(event_time, "event_time", n, p.n_columns);
            }
            int64_t now = now_us == 0 ? NowUs() : now_us;
            if (py::isinstance<py::array_t<float>>(out)) {
              p.Run<float>(n, sets, CheckedOut<float>(out, "out", n, p.n_columns), pres, et, now);
            } else if (py::isinstance<py::array_t<double>>(out)) {
              p.Run<double>(n, sets, CheckedOut<double>(out, "out", n, p.n_columns), pres, et, now);
            } else {
              RaiseInvalid("out must be a float32 or float64 numpy array");
            }
            return n;
          },
          py::arg("keys"), py::arg("out"), py::arg("present") = py::none(), py::arg("event_time") = py::none(),
          py::arg("now_us") = 0, "Look up keys into caller-owned arrays without allocating them; returns n.");

  py::class_<PyFeatureCache>(m, "FeatureCache", "An LMDB environment holding one table per feature group version.")
      .def(py::init([](const std::string& path, size_t map_size_bytes, unsigned max_readers, unsigned max_tables,
                       bool sync) {
             FeatureCache::Options opts;
             opts.map_size_bytes = map_size_bytes;
             opts.max_readers = max_readers;
             opts.max_tables = max_tables;
             opts.sync = sync;
             std::unique_ptr<FeatureCache> cache;
             CacheStatus st = FeatureCache::Open(path, opts, &cache);
             if (!st.ok()) Raise(st);
             return PyFeatureCache{std::shared_ptr<FeatureCache>(std::move(cache))};
           }),
           py::arg("path"), py::arg("map_size_bytes") = size_t(32) << 30, py::arg("max_readers") = 1024,
           py::arg("max_tables") = 4096, py::arg("sync") = true)
      .def_property_readonly("path", [](const PyFeatureCache& c) { return c.cache->path(); })
      .def_property_readonly("owner_pid", [](const PyFeatureCache& c) { return static_cast<int64_t>(c.cache->owner_pid()); },
                             "The process that opened the environment (a forked child must open its own).")
      .def(
          "readers",
          [](const PyFeatureCache& c) {
            std::vector<std::pair<int64_t, int64_t>> rows;
            CacheStatus st = c.cache->Readers(&rows);
            if (!st.ok()) Raise(st);
            return rows;
          },
          "The lock file's reader table: [(pid, txnid)] per used slot, txnid -1 for an idle pooled reader.")
      .def(
          "open_table",
          [](PyFeatureCache& c, const std::string& name, uint32_t n_features) {
            PyTable t{c.cache, {}};
            CacheStatus st = c.cache->OpenTable(name, n_features, &t.info);
            if (!st.ok()) Raise(st);
            return t;
          },
          py::arg("name"), py::arg("n_features"))
      .def(
          "plan",
          [](PyFeatureCache& c, py::list specs, size_t n_key_sets) {
            // specs: [(FeatureTable, [feature positions], key_set, max_age_us)], columns in list order.
            PyReadPlan plan{c.cache, {}, 0, n_key_sets};
            if (n_key_sets == 0) RaiseInvalid("n_key_sets must be >= 1");
            for (py::handle h : specs) {
              auto tup = py::reinterpret_borrow<py::tuple>(h);
              const PyTable& t = tup[0].cast<const PyTable&>();
              if (t.cache != c.cache) RaiseInvalid("table belongs to another FeatureCache");
              fastml::ReadSpec spec;
              spec.table = t.info;
              spec.feature_index = tup[1].cast<std::vector<uint32_t>>();
              spec.key_set = tup[2].cast<uint32_t>();
              spec.max_age_us = tup[3].cast<int64_t>();
              spec.out_column = uint32_t(plan.n_columns);
              if (spec.key_set >= n_key_sets) RaiseInvalid("key_set out of range");
              for (uint32_t j : spec.feature_index) {
                if (j >= t.info.n_features) RaiseInvalid("feature position out of range for " + t.info.name);
              }
              plan.n_columns += spec.feature_index.size();
              plan.specs.push_back(std::move(spec));
            }
            return plan;
          },
          py::arg("specs"), py::arg("n_key_sets") = 1);
}
// ===== end feature cache section =====

// ===== feature join section (csrc/feature_join.h) =====
#include <atomic>

#include "feature_join.h"

namespace fj_bind {

using fastml::CacheStatus;
using fastml::KeyView;
using fc_bind::RaiseInvalid;
using status_py::Raise;

// Cumulative lookup outcomes of one plan, added once per run (relaxed: they are statistics, read at scrape).
struct JoinCounters {
  std::atomic<uint64_t> rows{0};
  std::unique_ptr<std::atomic<uint64_t>[]> missing, stale;
  explicit JoinCounters(size_t width)
      : missing(new std::atomic<uint64_t>[width]()), stale(new std::atomic<uint64_t>[width]()) {}
};

// run() keeps the GIL for joins of at most this many LMDB point reads (rows x tables): releasing and
// re-taking it costs more than the reads, and with other threads waiting it can cost a scheduler hand-off.
constexpr size_t kHoldGilReads = 8;

// This thread's last run(): its outcomes (the per-column counts keep their capacity, so no allocation per
// request), and which plan counted them and for how many rows, so that uncount_last() can take them back (a
// batch the model then failed on is run again, request by request, and counted then). Per thread: a join and
// the model run that follows it happen on one runner thread.
struct LastJoin {
  fastml::JoinResult res;
  const void* counted_plan = nullptr;  // null: nothing to take back
  uint64_t rows = 0;
};
thread_local LastJoin last_join;

struct PyJoinPlan {
  std::shared_ptr<fastml::FeatureCache> cache;
  fastml::JoinPlan plan;
  size_t n_key_inputs = 1;
  size_t n_request = 0;
  // run(): request input names (key inputs, then request-time ones) and each key input's kind.
  std::vector<std::string> key_names, request_names;
  std::vector<py::object> key_names_py, request_names_py;  // the same names as interned str (dict lookups)
  std::vector<bool> key_is_int;
  std::shared_ptr<JoinCounters> counters;
};

// UCS-4 code point -> UTF-8, appended (numpy 'U' arrays hold UCS-4).
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

// One key input made native: int64 ids borrowed from the array, or string keys copied into an arena as
// UTF-8 ('S', 'U' and object arrays alike). Built with the GIL held; the int64 array stays referenced here
// while the GIL is released.
struct KeyInput {
  // The int64 array the ids point into (a cast copy when the input was another int type). A py::object, not a
  // py::array: py::array's default constructor allocates an empty numpy array, once per key input per request.
  py::object ids_owner;
  fc_bind::KeyBatch batch;
  fastml::JoinKeys keys;
};

void ConvertKeys(py::handle obj, size_t index, size_t rows, KeyInput* out) {
  if (!py::isinstance<py::array>(obj)) RaiseInvalid("key input " + std::to_string(index) + " must be a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (size_t(a.size()) != rows) {
    RaiseInvalid("key input " + std::to_string(index) + " has " + std::to_string(a.size()) + " keys for " +
                 std::to_string(rows) + " rows");
  }
  const char kind = a.dtype().kind();
  if (kind == 'i' || kind == 'u') {
    if (kind == 'u' && a.itemsize() == 8) {
      // A uint64 id above INT64_MAX would wrap to a negative id, another entity's row: refused.
      auto u = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(a);
      if (!u) throw py::error_already_set();
      const uint64_t* p = u.data();
      for (size_t i = 0; i < rows; ++i) {
        if (p[i] > static_cast<uint64_t>(INT64_MAX)) {
          RaiseInvalid("key input " + std::to_string(index) + ": id " + std::to_string(p[i]) + " at row " +
                       std::to_string(i) + " is above the int64 range of entity ids");
        }
      }
    }
    if (py::isinstance<py::array_t<int64_t>>(a) && (a.flags() & py::array::c_style)) {
      out->ids_owner = a;  // already int64 and contiguous: used as is, referenced while the GIL is released
      out->keys.ids = static_cast<const int64_t*>(a.data());
      return;
    }
    out->ids_owner = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!out->ids_owner) throw py::error_already_set();
    out->keys.ids = static_cast<const int64_t*>(py::reinterpret_borrow<py::array>(out->ids_owner).data());
    return;
  }
  fc_bind::KeyBatch& b = out->batch;
  b.spans.reserve(rows);
  if (kind == 'S' || kind == 'U') {
    py::array c = py::array::ensure(a, py::array::c_style);
    const size_t item = size_t(c.itemsize());
    const char* base = static_cast<const char*>(c.data());
    for (size_t i = 0; i < rows; ++i) {
      const size_t start = b.arena.size();
      const char* p = base + i * item;
      if (kind == 'S') {
        size_t n = item;
        while (n > 0 && p[n - 1] == '\0') --n;  // numpy pads fixed-width bytes with NULs
        b.arena.append(p, n);
      } else {
        size_t n = item / 4;
        uint32_t cp;
        while (n > 0 && (std::memcpy(&cp, p + (n - 1) * 4, 4), cp == 0)) --n;
        for (size_t k = 0; k < n; ++k) {
          std::memcpy(&cp, p + k * 4, 4);
          AppendUtf8(cp, &b.arena);
        }
      }
      b.spans.emplace_back(start, b.arena.size() - start);
    }
  } else if (kind == 'O') {
    py::array c = py::array::ensure(a, py::array::c_style);
    PyObject* const* items = static_cast<PyObject* const*>(c.data());
    for (size_t i = 0; i < rows; ++i) {
      const size_t start = b.arena.size();
      PyObject* item = items[i];
      if (!(PyUnicode_Check(item) || PyBytes_Check(item)) || !fc_bind::AppendScalar(item, &b.arena)) {
        RaiseInvalid("key input " + std::to_string(index) + ": key at row " + std::to_string(i) + " has type " +
                     Py_TYPE(item)->tp_name + ", expected str or bytes");
      }
      b.spans.emplace_back(start, b.arena.size() - start);
    }
  } else {
    RaiseInvalid("key input " + std::to_string(index) + " has dtype " + std::string(py::str(a.dtype())) +
                 "; entity keys are integers or strings");
  }
  b.Finish();
  out->keys.views = b.views.data();
}


// The request's array for input `name` (a borrowed reference into the dict), or InvalidInput naming it.
py::array RequestArray(PyObject* inputs, const py::object& key, const std::string& name) {
  PyObject* item = PyDict_GetItem(inputs, key.ptr());  // borrowed; the str key's hash is cached
  if (item == nullptr) RaiseInvalid("missing input '" + name + "'");
  if (!py::isinstance<py::array>(item)) {
    RaiseInvalid("input '" + name + "': expected a numpy array, got " + Py_TYPE(item)->tp_name);
  }
  return py::reinterpret_borrow<py::array>(item);
}

// A [rows] or [rows, 1] array's row count, or InvalidInput naming the input.
size_t ColumnRows(const py::array& a, const std::string& name) {
  if (a.ndim() == 1 || (a.ndim() == 2 && a.shape(1) == 1)) return size_t(a.shape(0));
  std::string shape = "[";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) shape += (d ? ", " : "") + std::to_string(a.shape(d));
  RaiseInvalid("input '" + name + "': expected shape [-1], got " + shape + "]");
}

}  // namespace fj_bind

static void bind_feature_join(py::module_& m) {
  using namespace fj_bind;
  py::class_<PyJoinPlan>(m, "FeatureJoinPlan",
                         "A compiled serving join: entity keys and request-time columns in, a model's float32 "
                         "[rows, F] input out (csrc/feature_join.h).")
      .def(py::init([](fc_bind::PyFeatureCache& c, py::list tables, py::list columns, size_t n_key_inputs,
                       size_t n_request, std::vector<std::string> key_names, std::vector<std::string> key_dtypes,
                       std::vector<std::string> request_names) {
             // tables: [(FeatureTable, key_input, max_age_us)]
             // columns: [(table index or -1, position, policy 0=nan 1=default 2=error, default value)]
             PyJoinPlan p{c.cache, {}, n_key_inputs, n_request, {}, {}, {}, {}, {}, nullptr};
             if (n_key_inputs == 0) RaiseInvalid("a feature join needs at least one key input");
             if (!key_names.empty() || !request_names.empty()) {
               if (key_names.size() != n_key_inputs || key_dtypes.size() != n_key_inputs ||
                   request_names.size() != n_request) {
                 RaiseInvalid("key_names, key_dtypes and request_names must match n_key_inputs and n_request");
               }
               for (const std::string& d : key_dtypes) {
                 if (d != "int64" && d != "string") RaiseInvalid("key dtypes are 'int64' or 'string', got '" + d + "'");
                 p.key_is_int.push_back(d == "int64");
               }
               p.key_names = std::move(key_names);
               p.request_names = std::move(request_names);
               for (const std::string& n : p.key_names) p.key_names_py.push_back(py::str(n));
               for (const std::string& n : p.request_names) p.request_names_py.push_back(py::str(n));
             }
             for (py::handle h : tables) {
               auto tup = py::reinterpret_borrow<py::tuple>(h);
               const fc_bind::PyTable& t = tup[0].cast<const fc_bind::PyTable&>();
               if (t.cache != c.cache) RaiseInvalid("table belongs to another FeatureCache");
               fastml::JoinTable jt;
               jt.table = t.info;
               jt.key_input = tup[1].cast<uint32_t>();
               jt.max_age_us = tup[2].cast<int64_t>();
               if (jt.key_input >= n_key_inputs) RaiseInvalid("key_input out of range");
               p.plan.tables.push_back(jt);
             }
             for (py::handle h : columns) {
               auto tup = py::reinterpret_borrow<py::tuple>(h);
               fastml::JoinColumn col;
               col.table = tup[0].cast<int32_t>();
               col.position = tup[1].cast<uint32_t>();
               const int policy = tup[2].cast<int>();
               if (policy < 0 || policy > 2) RaiseInvalid("policy must be 0 (nan), 1 (default) or 2 (error)");
               col.policy = static_cast<fastml::MissingPolicy>(policy);
               col.default_value = tup[3].cast<float>();
               if (col.table >= int32_t(p.plan.tables.size()) || col.table < -1) RaiseInvalid("table index out of range");
               if (col.table >= 0 && col.position >= p.plan.tables[size_t(col.table)].table.n_features) {
                 RaiseInvalid("feature position out of range for " + p.plan.tables[size_t(col.table)].table.name);
               }
               if (col.table < 0 && col.position >= n_request) RaiseInvalid("request column index out of range");
               p.plan.columns.push_back(col);
             }
             p.plan.Finish();
             p.counters = std::make_shared<JoinCounters>(p.plan.columns.size());
             return p;
           }),
           py::arg("cache"), py::arg("tables"), py::arg("columns"), py::arg("n_key_inputs") = 1,
           py::arg("n_request") = 0, py::arg("key_names") = std::vector<std::string>{},
           py::arg("key_dtypes") = std::vector<std::string>{}, py::arg("request_names") = std::vector<std::string>{})
      .def(
          "run",
          [](const PyJoinPlan& p, py::dict inputs, int64_t now_us) -> py::tuple {
            // The serving hot path: one call per request, from the request's dict of arrays to the model input.
            if (p.key_names.empty()) RaiseInvalid("this plan was built without input names; use join()");
            last_join.counted_plan = nullptr;  // set again below once this run is counted
            const size_t width = p.plan.columns.size();
            std::vector<KeyInput> key_inputs(p.n_key_inputs);
            std::vector<fastml::JoinKeys> native_keys(p.n_key_inputs);
            size_t rows = 0;
            for (size_t k = 0; k < p.n_key_inputs; ++k) {
              const std::string& name = p.key_names[k];
              py::array a = RequestArray(inputs.ptr(), p.key_names_py[k], name);
              const size_t n = ColumnRows(a, name);
              if (k == 0) rows = n;
              if (n != rows) {
                RaiseInvalid("input '" + name + "' has " + std::to_string(n) + " rows but input '" + p.key_names[0] +
                             "' has " + std::to_string(rows));
              }
              const char kind = a.dtype().kind();
              const bool is_int = kind == 'i' || kind == 'u';
              if (p.key_is_int[k] && !is_int) {
                RaiseInvalid("input '" + name + "': entity ids must be integers (INT64), got " +
                             std::string(py::str(a.dtype())));
              }
              if (!p.key_is_int[k] && kind != 'O' && kind != 'S' && kind != 'U') {
                RaiseInvalid("input '" + name + "': entity ids must be strings (BYTES), got " +
                             std::string(py::str(a.dtype())));
              }
              ConvertKeys(a, k, n, &key_inputs[k]);
              native_keys[k] = key_inputs[k].keys;
            }
            if (rows == 0) RaiseInvalid("input '" + p.key_names[0] + "': needs at least one row");
            std::vector<py::array> request_owners;
            std::vector<fastml::RequestColumn> request_cols;
            for (size_t r = 0; r < p.n_request; ++r) {
              const std::string& name = p.request_names[r];
              py::array a = RequestArray(inputs.ptr(), p.request_names_py[r], name);
              if (!py::isinstance<py::array_t<float>>(a)) {
                RaiseInvalid("input '" + name + "': request-time feature values must be float32 (FP32), got " +
                             std::string(py::str(a.dtype())));
              }
              const size_t n = ColumnRows(a, name);
              if (n != rows) {
                RaiseInvalid("input '" + name + "' has " + std::to_string(n) + " rows but input '" + p.key_names[0] +
                             "' has " + std::to_string(rows));
              }
              if (a.strides(0) <= 0 || size_t(a.strides(0)) % sizeof(float) != 0) {
                a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
              }
              request_cols.push_back({static_cast<const float*>(a.data()), size_t(a.strides(0)) / sizeof(float)});
              request_owners.push_back(a);
            }
            py::array_t<float> out({py::ssize_t(rows), py::ssize_t(width)});
            float* dst = out.mutable_data();
            const int64_t now = now_us == 0 ? fc_bind::NowUs() : now_us;
            fastml::JoinResult& res = last_join.res;
            CacheStatus st;
            auto join = [&] {
              st = fastml::JoinFeatures(*p.cache, p.plan, native_keys, request_cols, rows, dst, now, &res);
              if (!st.ok()) return;
              JoinCounters& c = *p.counters;
              c.rows.fetch_add(rows, std::memory_order_relaxed);
              last_join.counted_plan = &p;
              last_join.rows = rows;
              for (size_t j = 0; j < width; ++j) {
                if (res.missing[j]) c.missing[j].fetch_add(res.missing[j], std::memory_order_relaxed);
                if (res.stale[j]) c.stale[j].fetch_add(res.stale[j], std::memory_order_relaxed);
              }
            };
            if (rows * p.plan.tables.size() <= kHoldGilReads) {
              join();  // a few point reads (well under a microsecond): cheaper than handing the GIL over and back
            } else {
              // LMDB reads and copies into `out`; keys, request columns and out are held by this frame.
              py::gil_scoped_release release;
              join();
            }
            if (!st.ok()) Raise(st);
            return py::make_tuple(out, res.error_row, res.error_column, res.error_stale);
          },
          py::arg("inputs"), py::arg("now_us") = 0,
          "Build the model input from a request's dict of arrays (entity ids by key input name, request-time "
          "columns by name): (out [rows, F] float32, error_row, error_column, error_stale); lookup outcomes are "
          "added to counts().")
      .def(
          "uncount_last",
          [](const PyJoinPlan& p) {
            LastJoin& last = last_join;
            if (last.counted_plan != &p) return false;
            JoinCounters& c = *p.counters;
            c.rows.fetch_sub(last.rows, std::memory_order_relaxed);
            for (size_t j = 0; j < p.plan.columns.size(); ++j) {
              if (last.res.missing[j]) c.missing[j].fetch_sub(last.res.missing[j], std::memory_order_relaxed);
              if (last.res.stale[j]) c.stale[j].fetch_sub(last.res.stale[j], std::memory_order_relaxed);
            }
            last.counted_plan = nullptr;
            return true;
          },
          "Take back what this thread's last run() of this plan added to counts() (once); False when there is "
          "nothing to take back.")
      .def(
          "counts",
          [](const PyJoinPlan& p) {
            const size_t width = p.plan.columns.size();
            py::array_t<uint64_t> missing(width), stale(width);
            for (size_t j = 0; j < width; ++j) {
              missing.mutable_data()[j] = p.counters->missing[j].load(std::memory_order_relaxed);
              stale.mutable_data()[j] = p.counters->stale[j].load(std::memory_order_relaxed);
            }
            return py::make_tuple(p.counters->rows.load(std::memory_order_relaxed), missing, stale);
          },
          "Cumulative (rows, missing [F] uint64, stale [F] uint64) over every run().")
      .def_property_readonly("n_columns", [](const PyJoinPlan& p) { return p.plan.columns.size(); })
      .def(
          "join",
          [](const PyJoinPlan& p, py::sequence keys, py::sequence request, py::array out, int64_t now_us) {
            const size_t width = p.plan.columns.size();
            if (size_t(py::len(keys)) != p.n_key_inputs) {
              RaiseInvalid("this join needs " + std::to_string(p.n_key_inputs) + " key inputs, got " +
                           std::to_string(py::len(keys)));
            }
            if (size_t(py::len(request)) != p.n_request) {
              RaiseInvalid("this join needs " + std::to_string(p.n_request) + " request-time columns, got " +
                           std::to_string(py::len(request)));
            }
            if (!py::isinstance<py::array_t<float>>(out)) RaiseInvalid("out must be a float32 numpy array");
            if (out.ndim() != 2) RaiseInvalid("out must have shape (rows, " + std::to_string(width) + ")");
            const size_t rows = size_t(out.shape(0));
            float* dst = fc_bind::CheckedOut<float>(out, "out", rows, width);
            std::vector<KeyInput> key_inputs(p.n_key_inputs);
            std::vector<fastml::JoinKeys> native_keys;
            for (size_t k = 0; k < p.n_key_inputs; ++k) {
              ConvertKeys(keys[k], k, rows, &key_inputs[k]);
              native_keys.push_back(key_inputs[k].keys);
            }
            std::vector<py::array> request_owners;
            std::vector<fastml::RequestColumn> request_cols;
            for (size_t r = 0; r < p.n_request; ++r) {
              py::handle h = request[r];
              if (!py::isinstance<py::array_t<float>>(h)) {
                RaiseInvalid("request-time column " + std::to_string(r) + " must be a float32 numpy array");
              }
              py::array a = py::reinterpret_borrow<py::array>(h);
              const bool column = a.ndim() == 1 || (a.ndim() == 2 && a.shape(1) == 1);
              if (!column || size_t(a.shape(0)) != rows) {
                RaiseInvalid("request-time column " + std::to_string(r) + " must have shape (" + std::to_string(rows) +
                             ",) or (" + std::to_string(rows) + ", 1)");
              }
              request_cols.push_back({static_cast<const float*>(a.data()), size_t(a.strides(0)) / sizeof(float)});
              if (size_t(a.strides(0)) % sizeof(float) != 0 || a.strides(0) <= 0) {
                RaiseInvalid("request-time column " + std::to_string(r) + " must have a positive float32 stride");
              }
              request_owners.push_back(a);
            }
            const int64_t now = now_us == 0 ? fc_bind::NowUs() : now_us;
            fastml::JoinResult res;
            CacheStatus st;
            {
              // LMDB reads and copies into `out`; keys, request columns and out are held by this frame.
              py::gil_scoped_release release;
              st = fastml::JoinFeatures(*p.cache, p.plan, native_keys, request_cols, rows, dst, now, &res);
            }
            if (!st.ok()) Raise(st);
            py::array_t<uint64_t> missing(width), stale(width);
            std::copy(res.missing.begin(), res.missing.end(), missing.mutable_data());
            std::copy(res.stale.begin(), res.stale.end(), stale.mutable_data());
            return py::make_tuple(missing, stale, res.error_row, res.error_column, res.error_stale);
          },
          py::arg("keys"), py::arg("request"), py::arg("out"), py::arg("now_us") = 0,
          "Fill out [rows, F] float32; returns (missing [F] uint64, stale [F] uint64, error_row, error_column, "
          "error_stale) with error_row -1 when no 'error' policy column was hit.");
}
// ===== end feature join section =====

// ===== router section (csrc/router.h) =====
#include "router.h"

namespace router_py {

using fastml::RouteDecision;
using fastml::Router;

// The Python-facing router: owns the core router; the GIL is held for everything except RouteMany.
struct PyRouter {
    std::unique_ptr<Router> router;
};

// Borrows a routing key's bytes: str as UTF-8 (pybind11 caches the encoding on the str object, no copy
// kept here), bytes-like objects through the buffer protocol. Returns false for None (keyless).
static bool KeyBytes(const py::handle& key, std::string_view* out) {
    if (key.is_none()) return false;
    if (PyUnicode_Check(key.ptr())) {
        Py_ssize_t n = 0;
        const char* p = PyUnicode_AsUTF8AndSize(key.ptr(), &n);  // owned by the str object
        if (p == nullptr) throw py::error_already_set();
        *out = std::string_view(p, static_cast<size_t>(n));
        return true;
    }
    if (PyBytes_Check(key.ptr())) {
        *out = std::string_view(PyBytes_AS_STRING(key.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(key.ptr())));
        return true;
    }
    status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                           "routing_key must be a string or bytes, got " +
                                               std::string(Py_TYPE(key.ptr())->tp_name)));
}

static void CheckIndex(int32_t i, size_t n, const char* what) {
    if (i < 0 || static_cast<size_t>(i) >= n) {
        status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                               std::string(what) + " index " + std::to_string(i) + " out of range"));
    }
}

}  // namespace router_py

static void bind_router(py::module_& m) {
    using fastml::RouteDecision;
    using fastml::Router;
    using router_py::PyRouter;
    m.attr("ROUTER_BUCKETS") = fastml::kRouterBuckets;
    m.def(
        "xxhash64",
        [](py::buffer data, uint64_t seed) {
            py::buffer_info info = data.request();
            if (info.ndim > 1 && !PyBuffer_IsContiguous(info.view(), 'C')) {
                status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput, "data must be contiguous"));
            }
            return fastml::XXHash64(info.ptr, static_cast<size_t>(info.size * info.itemsize), seed);
        },
        py::arg("data"), py::arg("seed") = 0, "xxHash64 of a bytes-like object (the routing key hash).");
    py::class_<PyRouter>(m, "Router", "Traffic router of one deployment: weighted variants and shadows (see csrc/router.h).")
        .def(py::init([](std::vector<std::string> variants, std::vector<int32_t> weights_bp,
                         std::vector<std::string> shadows, std::vector<int32_t> shadow_bp) {
                 PyRouter r;
                 fastml::Status st = Router::Create(std::move(variants), std::move(weights_bp), std::move(shadows),
                                                    std::move(shadow_bp), &r.router);
                 if (!st.ok()) status_py::Raise(st);
                 return r;
             }),
             py::arg("variants"), py::arg("weights_bp"), py::arg("shadows") = std::vector<std::string>{},
             py::arg("shadow_bp") = std::vector<int32_t>{})
        .def(
            "route",
            [](PyRouter& self, py::handle key) {
                std::string_view k;
                // Keyless or keyed, one decision takes tens of nanoseconds: not worth releasing the GIL.
                const RouteDecision d =
                    router_py::KeyBytes(key, &k) ? self.router->Route(k.data(), k.size()) : self.router->Route(nullptr, 0);
                return py::make_tuple(d.variant, d.shadow_mask);
            },
            py::arg("key") = py::none(),
            "(variant index, shadow bit mask) for one request; key None means keyless.")
        .def(
            "route_many",
            [](PyRouter& self, py::array_t<int32_t, py::array::c_style> out, py::object keys, py::object offsets,
               py::object shadow_out) {
                if (!out.writeable()) {
                    status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput, "out is read-only"));
                }
                const int64_t n = out.size();
                int32_t* variants = out.mutable_data();
                uint32_t* masks = nullptr;
                py::array_t<uint32_t, py::array::c_style> masks_arr;
                if (!shadow_out.is_none()) {
                    // isinstance first: a cast of any other dtype would route into a temporary copy.
                    if (!py::isinstance<py::array_t<uint32_t, py::array::c_style>>(shadow_out)) {
                        status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                               "shadow_out must be a C-contiguous uint32 array"));
                    }
                    masks_arr = shadow_out.cast<py::array_t<uint32_t, py::array::c_style>>();
                    if (!masks_arr.writeable() || masks_arr.size() != n) {
                        status_py::Raise(fastml::Status::Error(
                            fastml::StatusCode::kInvalidInput,
                            "shadow_out must be a writable C-contiguous uint32 array as long as out"));
                    }
                    masks = masks_arr.mutable_data();
                }
                if (keys.is_none()) {
                    py::gil_scoped_release nogil;  // pure native work on buffers we hold references to
                    self.router->RouteMany(nullptr, nullptr, n, variants, masks);
                    return;
                }
                py::buffer_info kb = py::reinterpret_borrow<py::buffer>(keys).request();
                if (!py::isinstance<py::array_t<int64_t, py::array::c_style>>(offsets)) {
                    status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                           "offsets must be a C-contiguous int64 array"));
                }
                auto offs = offsets.cast<py::array_t<int64_t, py::array::c_style>>();
                if (offs.size() != n + 1) {
                    status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                           "offsets must be a C-contiguous int64 array of len(out) + 1"));
                }
                const int64_t* o = offs.data();
                const int64_t nbytes = static_cast<int64_t>(kb.size * kb.itemsize);
                // Checked before any read: the offsets must be non-decreasing and inside the key buffer.
                if (o[0] < 0 || o[n] > nbytes) {
                    status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput, "offsets outside the keys buffer"));
                }
                for (int64_t i = 0; i < n; ++i) {
                    if (o[i + 1] < o[i]) {
                        status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                               "offsets must not decrease (at " + std::to_string(i) + ")"));
                    }
                }
                const char* data = static_cast<const char*>(kb.ptr);
                py::gil_scoped_release nogil;  // hashing reads only the buffers held above
                self.router->RouteMany(data, o, n, variants, masks);
            },
            py::arg("out").noconvert(), py::arg("keys") = py::none(), py::arg("offsets") = py::none(),
            py::arg("shadow_out") = py::none(),
            "Fill `out` (int32) with len(out) decisions; keys: concatenated key bytes with int64 `offsets`.")
        .def(
            "set_weights",
            [](PyRouter& self, const std::vector<int32_t>& weights_bp, py::object shadow_bp) {
                std::vector<int32_t> sb = shadow_bp.is_none() ? self.router->shadow_bp()
                                                              : shadow_bp.cast<std::vector<int32_t>>();
                fastml::Status st;
                {
                    py::gil_scoped_release nogil;  // the writer may wait for readers on other threads
                    st = self.router->SetWeights(weights_bp, sb);
                }
                if (!st.ok()) status_py::Raise(st);
            },
            py::arg("weights_bp"), py::arg("shadow_bp") = py::none())
        .def(
            "peek",
            [](PyRouter& self, py::handle key) {
                std::string_view k;
                const RouteDecision d =
                    router_py::KeyBytes(key, &k) ? self.router->Peek(k.data(), k.size()) : self.router->Peek(nullptr, 0);
                return py::make_tuple(d.variant, d.shadow_mask);
            },
            py::arg("key") = py::none(),
            "route() without counting the decision (count_routed when the request goes that way).")
        .def(
            "peek_many",
            [](PyRouter& self, py::array_t<int32_t, py::array::c_style> out) {
                if (!out.writeable()) {
                    status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput, "out is read-only"));
                }
                const int64_t n = out.size();
                int32_t* variants = out.mutable_data();
                py::gil_scoped_release nogil;
                self.router->RouteMany(nullptr, nullptr, n, variants, nullptr, /*count=*/false);
            },
            py::arg("out").noconvert(),
            "len(out) keyless decisions like route_many(out), not counted (count_routed as they are used).")
        .def(
            "count_routed",
            [](PyRouter& self, int32_t v, int64_t n) {
                router_py::CheckIndex(v, self.router->variants().size(), "variant");
                if (n < 0) status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput, "n must be >= 0"));
                self.router->CountRouted(v, static_cast<uint64_t>(n));
            },
            py::arg("variant"), py::arg("n") = 1)
        .def("count_pinned", [](PyRouter& self, int32_t v) {
            router_py::CheckIndex(v, self.router->variants().size(), "variant");
            self.router->CountPinned(v);
        })
        .def("count_error", [](PyRouter& self, int32_t v) {
            router_py::CheckIndex(v, self.router->variants().size(), "variant");
            self.router->CountError(v);
        })
        .def("count_shadow_shed", [](PyRouter& self, int32_t s) {
            router_py::CheckIndex(s, self.router->shadows().size(), "shadow");
            self.router->CountShadowShed(s);
        })
        .def_property_readonly("variants", [](PyRouter& self) { return self.router->variants(); })
        .def_property_readonly("shadows", [](PyRouter& self) { return self.router->shadows(); })
        .def_property_readonly("weights_bp", [](PyRouter& self) { return self.router->weights_bp(); })
        .def_property_readonly("shadow_bp", [](PyRouter& self) { return self.router->shadow_bp(); })
        .def_property_readonly("generation", [](PyRouter& self) { return self.router->generation(); })
        .def("counts", [](PyRouter& self) {
            Router::Counts c = self.router->counts();
            py::dict d;
            d["routed"] = c.routed;
            d["pinned"] = c.pinned;
            d["errors"] = c.errors;
            d["mirrored"] = c.mirrored;
            d["shadow_shed"] = c.shadow_shed;
            return d;
        });
}
// ===== end router section =====

// ===== monitor window section (csrc/monitor_window.h): live monitoring's per-window accumulator =====
#include "monitor_window.h"

namespace monitor_py {

using fastml::MonitorColumnLayout;
using fastml::MonitorColumnView;
using fastml::MonitorValueType;
using fastml::MonitorWindow;

std::vector<MonitorColumnLayout> Layout(const std::vector<py::array_t<double, py::array::c_style | py::array::forcecast>>& edges,
                                        const std::vector<int64_t>& capacities) {
    if (edges.size() != capacities.size()) {
        status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                               "edges and capacities need one entry per column"));
    }
    std::vector<MonitorColumnLayout> layout(edges.size());
    for (size_t c = 0; c < edges.size(); ++c) {
        if (edges[c].ndim() != 1) {
            status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                   "column " + std::to_string(c) + ": edges must be 1-D"));
        }
        layout[c].inner_edges.assign(edges[c].data(), edges[c].data() + edges[c].size());
        layout[c].capacity = capacities[c];
    }
    return layout;
}

// One batch column: `array` is [N] (j = -1), [N, 1] (j = -1) or [N, k] with column j; any strides.
MonitorColumnView View(const py::array& a, int64_t j, size_t c, int64_t* rows) {
    auto bad = [c](const std::string& why) {
        status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                               "column " + std::to_string(c) + ": " + why));
    };
    MonitorColumnView view;
    const char kind = a.dtype().kind();
    const py::ssize_t size = a.dtype().itemsize();
    if (kind == 'f' && size == 4) view.type = MonitorValueType::kFloat32;
    else if (kind == 'f' && size == 8) view.type = MonitorValueType::kFloat64;
    else if (kind == 'i' && size == 4) view.type = MonitorValueType::kInt32;
    else if (kind == 'i' && size == 8) view.type = MonitorValueType::kInt64;
    else bad("dtype must be float32, float64, int32 or int64");
    if (a.ndim() < 1 || a.ndim() > 2) bad("expected a 1-D or 2-D array");
    const int64_t width = a.ndim() == 2 ? a.shape(1) : 1;
    if (j < 0) {
        if (width != 1) bad("a [N, k] array with k > 1 needs a column index");
        j = 0;
    }
    if (j >= width) bad("column index " + std::to_string(j) + " out of range for width " + std::to_string(width));
    *rows = a.shape(0);
    view.data = static_cast<const char*>(a.data()) + (a.ndim() == 2 ? j * a.strides(1) : 0);
    view.stride_bytes = a.strides(0);
    return view;
}

py::tuple Summary(const fastml::MonitorWindowSummary& w) {
    py::list columns;
    for (const fastml::MonitorColumnSummary& col : w.columns) {
        columns.append(py::make_tuple(col.n, py::array_t<int64_t>(col.counts.size(), col.counts.data()),
                                      py::array_t<double>(col.reservoir.size(), col.reservoir.data())));
    }
    return py::make_tuple(w.rows, w.first_ts, w.last_ts, columns);
}

}  // namespace monitor_py

static void bind_monitor_window(py::module_& m) {
    using monitor_py::MonitorWindow;
    py::class_<MonitorWindow>(m, "MonitorWindow",
                              "The open live-monitoring window of one model (see csrc/monitor_window.h).")
        .def(py::init([](const std::vector<py::array_t<double, py::array::c_style | py::array::forcecast>>& edges,
                         const std::vector<int64_t>& capacities, int64_t window_rows, int64_t max_closed,
                         uint64_t seed) {
                 std::unique_ptr<MonitorWindow> w;
                 fastml::Status st = MonitorWindow::Make(monitor_py::Layout(edges, capacities), window_rows,
                                                         max_closed, seed, &w);
                 if (!st.ok()) status_py::Raise(st);
                 return w;
             }),
             py::arg("edges"), py::arg("capacities"), py::arg("window_rows"), py::arg("max_closed") = 4,
             py::arg("seed") = 0)
        .def(
            "add",
            [](MonitorWindow& self, const py::sequence& arrays, const std::vector<int64_t>& columns, double now_s) {
                const size_t n = self.n_columns();
                if (static_cast<size_t>(py::len(arrays)) != n || columns.size() != n) {
                    status_py::Raise(fastml::Status::Error(
                        fastml::StatusCode::kInvalidInput,
                        "expected " + std::to_string(n) + " arrays and column indexes, one per window column"));
                }
                std::vector<py::array> keep;  // owned references: the views below read these buffers
                std::vector<fastml::MonitorColumnView> views;
                keep.reserve(n);
                views.reserve(n);
                int64_t rows = -1;
                for (size_t c = 0; c < n; ++c) {
                    py::object item = arrays[c];
                    if (!py::isinstance<py::array>(item)) {
                        status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                               "column " + std::to_string(c) + ": not a numpy array"));
                    }
                    keep.push_back(py::reinterpret_borrow<py::array>(item));
                    int64_t r = 0;
                    views.push_back(monitor_py::View(keep.back(), columns[c], c, &r));
                    if (rows >= 0 && r != rows) {
                        status_py::Raise(fastml::Status::Error(
                            fastml::StatusCode::kInvalidInput,
                            "column " + std::to_string(c) + " has " + std::to_string(r) + " rows, column 0 has " +
                                std::to_string(rows)));
                    }
                    rows = r;
                }
                if (rows <= 0) return int64_t{0};
                py::gil_scoped_release nogil;  // binning and the reservoirs touch no Python object
                return self.Add(views, rows, now_s);
            },
            py::arg("arrays"), py::arg("columns"), py::arg("now_s"),
            "Adds one batch (one array and column index per window column); returns the windows it closed.")
        .def("rotate", [](MonitorWindow& self) { return self.Rotate(); },
             "Closes the open window if it holds rows (a time-based close).")
        .def("take", [](MonitorWindow& self) {
                 std::vector<fastml::MonitorWindowSummary> closed = self.TakeClosed();
                 py::list out;
                 for (const auto& w : closed) out.append(monitor_py::Summary(w));
                 return out;
             },
             "The closed windows, oldest first: (rows, first_ts, last_ts, [(n, counts, reservoir), ...]).")
        .def("set_layout",
             [](MonitorWindow& self, const std::vector<py::array_t<double, py::array::c_style | py::array::forcecast>>& edges,
                const std::vector<int64_t>& capacities) {
                 fastml::Status st = self.SetLayout(monitor_py::Layout(edges, capacities));
                 if (!st.ok()) status_py::Raise(st);
             },
             py::arg("edges"), py::arg("capacities"))
        .def_property_readonly("n_columns", &MonitorWindow::n_columns)
        .def_property_readonly("open_rows", &MonitorWindow::open_rows)
        .def_property_readonly("open_first_ts", &MonitorWindow::open_first_ts)
        .def_property_readonly("dropped_rows", &MonitorWindow::dropped_rows)
        .def_property_readonly("add_ns", &MonitorWindow::add_ns);
}
// ===== end monitor window section =====

// ===== tree ensemble section (csrc/tree_ensemble.h): the native tree kernel of batch scoring =====
#include "tree_ensemble.h"

static void bind_tree_ensemble(py::module_& m) {
    using fastml::TreeEnsemble;
    py::class_<TreeEnsemble>(m, "TreeEnsemble",
                             "A compiled ONNX-ML tree ensemble scored natively (see csrc/tree_ensemble.h).")
        .def(py::init([](const py::buffer& model) {
                 py::buffer_info info = model.request();
                 if (info.ndim != 1 || info.itemsize != 1 || (info.size > 1 && info.strides[0] != 1)) {
                     status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                            "model: expected the ONNX file's bytes"));
                 }
                 std::unique_ptr<TreeEnsemble> e;
                 fastml::Status st;
                 {
                     py::gil_scoped_release nogil;  // parsing reads only the buffer `model` keeps alive
                     st = TreeEnsemble::FromOnnx(static_cast<const uint8_t*>(info.ptr),
                                                 static_cast<size_t>(info.size), &e);
                 }
                 if (!st.ok()) status_py::Raise(st);
                 return e;
             }),
             py::arg("model"),
             "Compiles a serialized ONNX model; InvalidInput names why one is not a tree ensemble evaluated here.")
        .def(
            "predict",
            [](const TreeEnsemble& self, const py::array& x) {
                if (!py::isinstance<py::array_t<float>>(x) || x.ndim() != 2 ||
                    !(x.flags() & py::array::c_style)) {
                    status_py::Raise(fastml::Status::Error(fastml::StatusCode::kInvalidInput,
                                                           "expected a C-contiguous 2-D float32 array"));
                }
                const int64_t rows = x.shape(0);
                const int64_t cols = x.shape(1);
                if (cols < self.min_features()) {
                    status_py::Raise(fastml::Status::Error(
                        fastml::StatusCode::kInvalidInput,
                        "rows have " + std::to_string(cols) + " columns; the trees read column " +
                            std::to_string(self.min_features() - 1)));
                }
                py::array_t<float> scores({rows, self.n_scores()});
                py::object labels = py::none();
                int64_t* label_data = nullptr;
                if (self.classifier()) {
                    py::array_t<int64_t> l(rows);
                    label_data = l.mutable_data();
                    labels = std::move(l);
                }
                float* score_data = scores.mutable_data();
                const float* in = static_cast<const float*>(x.data());
                {
                    py::gil_scoped_release nogil;  // pure native work on buffers held by `x`, `scores`, `labels`
                    self.Predict(in, rows, cols, score_data, label_data);
                }
                return py::make_tuple(labels, scores);
            },
            py::arg("x"), "(labels or None, scores) for the rows of a 2-D float32 array.")
        .def("splits",
             [](const TreeEnsemble& self) {
                 std::vector<int32_t> features;
                 std::vector<float> thresholds;
                 self.Splits(&features, &thresholds);
                 return py::make_tuple(py::array_t<int32_t>(features.size(), features.data()),
                                       py::array_t<float>(thresholds.size(), thresholds.data()));
             },
             "(feature, threshold) of every branch, as two arrays.")
        .def_property_readonly("classifier", &TreeEnsemble::classifier)
        .def_property_readonly("n_scores", &TreeEnsemble::n_scores)
        .def_property_readonly("min_features", &TreeEnsemble::min_features)
        .def_property_readonly("n_trees", &TreeEnsemble::n_trees)
        .def_property_readonly("n_nodes", &TreeEnsemble::n_nodes)
        .def_property_readonly("input_name", &TreeEnsemble::input_name)
        .def_property_readonly("outputs", &TreeEnsemble::outputs,
                               "[(graph output name, index into predict's (labels, scores) or (scores,))]");
}
// ===== end tree ensemble section =====

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastml native core: micro-batcher and LMDB feature cache";
    status_py::bind_status(m);
    bind_batcher(m);
    bind_feature_cache(m);
    bind_feature_join(m);
    bind_router(m);
    bind_monitor_window(m);
    bind_tree_ensemble(m);
}
