// Dynamic micro-batcher: the per-model request queue of fastml's native core.
//
// Requests (named tensors with a leading row dimension, held by reference) enter with Submit(); runner
// threads pull batches with NextBatch(), run the model outside this file, and hand the result back with
// CompleteBatch(). A batch holds requests of one shape bucket only (same dtype and non-batch dims per
// input), is never larger than max_batch_size rows, and never splits a request. Completions reach an
// event loop through a CompletionQueue (one eventfd write per batch) or a blocking waiter (Request::Wait).
//
// Python-free (STYLE.md): csrc/bindings.cc converts numpy arrays to TensorView with the GIL held and
// releases the GIL around every call here that can block or copy.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "status.h"

namespace fastml {

// What one model input accepts: dtype as numpy's (kind, itemsize) and dims with -1 for "any".
// dims[0] is the batch dimension and is always treated as dynamic.
struct InputSpec {
    std::string name;
    char kind = 'f';
    int64_t itemsize = 4;
    std::vector<int64_t> dims;
};

// A borrowed tensor: the caller keeps the memory alive until the request completes.
struct TensorView {
    const void* data = nullptr;
    char kind = 'f';
    int64_t itemsize = 4;
    bool native_order = true;
    bool c_contiguous = true;
    std::vector<int64_t> shape;
};

// One finished request, as the event loop or a blocking waiter sees it. Outputs live with the runner
// (outside the core), keyed by `batch`; this request owns rows [row_offset, row_offset + rows).
struct Completion {
    uint64_t ticket = 0;
    uint64_t batch = 0;  // 0 when the request never ran
    int64_t row_offset = 0;
    int64_t rows = 0;
    StatusCode code = StatusCode::kOk;
    std::string message;
    // How many requests share `batch` (0 when it never ran), so the owner of the batch outputs knows
    // when every one of them has taken its rows.
    int64_t batch_requests = 0;
    // The request's user_data, handed back untouched (the core never dereferences it).
    void* user_data = nullptr;
};

// Where completions for one event loop go: a list plus an eventfd written once per delivery.
class CompletionQueue {
   public:
    CompletionQueue();
    ~CompletionQueue();
    CompletionQueue(const CompletionQueue&) = delete;
    CompletionQueue& operator=(const CompletionQueue&) = delete;

    int fd() const { return fd_; }
    // Appends `items` and writes the eventfd once (not when called on the quiet thread, see below).
    // Never blocks for long (one short lock, one write).
    void Push(std::vector<Completion>&& items);
    // Clears the eventfd counter (only when it was written) and takes every completion queued so far.
    std::vector<Completion> Drain();
    // Pushes made from the calling thread from now on skip the eventfd write: that thread (an event loop
    // running batches inline) drains the queue itself right after completing a batch.
    void SetQuietThread();
    // The queue's event loop is gone: later pushes write no eventfd (nobody reads it) and raise
    // *sweep_due instead, so the owner of the completions' user_data (the bindings) can release them.
    void Abandon(std::shared_ptr<std::atomic<bool>> sweep_due);

   private:
    int fd_;                        // eventfd, non-blocking; immutable after construction
    std::mutex mu_;                 // guards the fields below; the eventfd is written and read under it
    std::vector<Completion> items_; // guarded by mu_
    bool signalled_ = false;        // guarded by mu_; the eventfd counter is non-zero
    std::thread::id quiet_thread_;  // guarded by mu_; default id = none
    std::shared_ptr<std::atomic<bool>> sweep_due_;  // guarded by mu_; set = abandoned
};

// One submitted request. Shared by the queue, the batch it runs in and the submitter.
struct Request {
    uint64_t id = 0;
    std::vector<TensorView> inputs;                // immutable after Submit
    int64_t rows = 0;                              // immutable after Submit
    std::string shape_key;                         // immutable after Submit
    int64_t enqueue_ns = 0;                        // steady clock; immutable after Submit
    int64_t deadline_ns = 0;                       // steady clock, 0 = none; immutable after Submit
    int64_t timeout_us = 0;                        // as submitted, for messages; immutable after Submit
    // Guarded by the batcher's mu_: set when a batch holding this request failed in the model (kInternal or
    // kInvalidInput); from then on the request runs in a batch of its own, so one request the model cannot run
    // fails alone.
    bool solo = false;
    std::shared_ptr<CompletionQueue> queue;        // null = blocking waiter; immutable after Submit
    // Opaque to the core: the submitter's handle (the bindings keep an owned reference to the caller's
    // future and arrays there and release it when the completion is consumed). Immutable after Submit.
    void* user_data = nullptr;

    // Blocking waiters only: the result, handed over under done_mu.
    std::mutex done_mu;
    std::condition_variable done_cv;               // signalled once, when done becomes true
    bool done = false;                             // guarded by done_mu
    Completion result;                             // guarded by done_mu

    // Blocking waiters only: set by Orphan; raised once the request completes. Guarded by done_mu.
    std::shared_ptr<std::atomic<bool>> sweep_due;

    // Blocks until the request completes (call without the GIL).
    Completion Wait();
    // Waits at most timeout_ns (0 = just look); true and *out = the result once the request completed.
    // Lets a waiter wait in slices and check for signals in between.
    bool WaitFor(int64_t timeout_ns, Completion* out);
    // The result's user_data, handed out once (nullptr before completion and after the first call), so the
    // waiter and a later sweep of an orphaned request never both release it.
    void* TakeUserData();
    // The waiter gave up (interrupted): raises *flag when the request completes (at once if it has), so
    // whoever holds user_data can release it then.
    void Orphan(std::shared_ptr<std::atomic<bool>> flag);
};

struct BatcherOptions {
    int64_t max_batch_size = 32;
    int64_t max_queue_size = 1024;
    int64_t max_queue_delay_us = 0;
    int instances = 1;
};

// What a runner gets from NextBatch: the batch's id, rows and one contiguous buffer per input.
struct BatchInfo {
    uint64_t id = 0;
    int64_t rows = 0;
    std::vector<const void*> input_data;           // per input: gathered buffer, or the lone request's data
    std::vector<std::vector<int64_t>> input_shapes;  // per input: [rows, non-batch dims...]
    bool zero_copy = false;                        // true when input_data points at the request's memory
};

struct BatchSizeStats {
    int64_t count = 0;
    int64_t compute_input_ns = 0;
    int64_t compute_infer_ns = 0;
    int64_t compute_output_ns = 0;
};

// Cumulative counters (Triton statistics extension semantics; durations in ns).
struct BatcherStats {
    int64_t requests = 0;  // completed OK
    int64_t failures = 0;
    int64_t rows = 0;      // rows of successful requests
    int64_t batches = 0;
    int64_t pending = 0;   // queued, not yet in a batch
    int64_t queue_ns = 0;
    int64_t compute_input_ns = 0;
    int64_t compute_infer_ns = 0;
    int64_t compute_output_ns = 0;
    int64_t request_ns = 0;
    int64_t fail_ns = 0;
    int64_t last_inference_ms = 0;
    int64_t rerun_alone = 0;  // requests put back to run alone after their batch failed in the model
    std::map<int64_t, BatchSizeStats> batch_stats;  // batch rows -> counters
};

class Batcher {
   public:
    Batcher(std::vector<InputSpec> inputs, BatcherOptions options);
    ~Batcher();  // Shutdown("batcher destroyed")
    Batcher(const Batcher&) = delete;
    Batcher& operator=(const Batcher&) = delete;

    const std::vector<InputSpec>& inputs() const { return inputs_; }
    const BatcherOptions& options() const { return options_; }

    // Validates and enqueues. `timeout_us` <= 0 means no deadline. `queue` null = blocking waiter.
    // `user_data` comes back in the request's Completion. On error nothing is enqueued.
    // Errors: InvalidInput (names the tensor / both row counts), Overloaded, Unavailable.
    Status Submit(std::vector<TensorView> inputs, int64_t timeout_us, std::shared_ptr<CompletionQueue> queue,
                  void* user_data, std::shared_ptr<Request>* out);

    // Requests in runner `runner`'s current batch (0 when it has none). Runner thread only.
    int64_t CurrentBatchRequests(int runner) const;

    // Blocks until a batch is ready for runner `runner` (0 <= runner < instances) and gathers its rows.
    // Returns false once shut down. Call without the GIL.
    // wait=false (inline runners on an event loop): never blocks; takes the oldest bucket's requests that
    // are queued now, ignoring max_queue_delay_us, and returns false when none is queued.
    bool NextBatch(int runner, BatchInfo* out, bool wait = true);

    // Top-up, between NextBatch and CompleteBatch, before the runner starts the batch: moves requests of
    // the batch's bucket that were queued meanwhile and still fit into the batch (without copying; short
    // lock only, so it may be called with the GIL held). Returns false when it added none. A batch only
    // starts once its runner holds the GIL, and requests that arrive while it waits for it ride along
    // instead of forming a batch of their own; no waiting is added.
    bool TakeMore(int runner);
    // Re-gathers runner `runner`'s batch after TakeMore added requests. Call without the GIL.
    void Gather(int runner, BatchInfo* out);

    // Ends runner `runner`'s current batch: every request gets `status` (OK: its row range of the
    // batch outputs). A kInternal status (the model failed) or kInvalidInput (the runtime refused the batch's
    // data) on a batch of several requests fails none of them: they go back to the head of the queue, each to
    // run in a batch of its own, so that a request the model cannot run fails alone and the others of its
    // batch are answered (after shutdown they fail with `status`). Call without the GIL.
    void CompleteBatch(int runner, const Status& status);

    // Fails every queued request with Unavailable(reason), wakes and stops every runner's NextBatch,
    // joins the deadline thread. Idempotent. Batches already running complete normally.
    void Shutdown(const std::string& reason);

    BatcherStats Stats();

   private:
    struct Bucket {
        std::deque<std::shared_ptr<Request>> requests;  // arrival order
    };
    // A runner's batch between NextBatch and CompleteBatch, and its reused gather buffers.
    struct RunnerSlot {
        uint64_t batch_id = 0;                           // owned by the runner thread (set under mu_)
        std::vector<std::shared_ptr<Request>> requests;  // owned by the runner thread
        std::vector<int64_t> offsets;                    // owned by the runner thread
        int64_t rows = 0;                                // owned by the runner thread
        std::string shape_key;                           // owned by the runner thread; the batch's bucket
        int64_t queue_ns = 0;                            // owned by the runner thread; summed at take time
        int64_t input_ns = 0;                            // owned by the runner thread; time spent gathering
        int64_t gathered_ns = 0;                         // owned by the runner thread; end of the last gather
        std::vector<std::vector<char>> buffers;          // owned by the runner thread; reused per batch
    };

    Status Validate(const std::vector<TensorView>& inputs, int64_t* rows, std::string* shape_key) const;
    // Under mu_: the bucket whose head arrived first, or nullptr.
    Bucket* OldestBucketLocked(std::string* key);
    // Under mu_: takes requests that expired by `now_ns` out of the queue.
    void TakeExpiredLocked(int64_t now_ns, std::vector<std::shared_ptr<Request>>* expired);
    void RemoveDeadlineLocked(const Request& r);
    // Without mu_: puts the slot's requests back at the head of their bucket, each marked to run alone, with
    // their deadlines. False (nothing moved) once shut down.
    bool RequeueAlone(RunnerSlot& slot);
    // Without mu_: completes `requests` with an error and updates the failure counters.
    void Fail(const std::vector<std::shared_ptr<Request>>& requests, StatusCode code,
              const std::vector<std::string>& messages);
    void DeadlineLoop();
    // Without mu_: copies the slot's rows into its buffers (or points at a lone request's memory).
    void GatherSlot(RunnerSlot& slot, BatchInfo* out);

    const std::vector<InputSpec> inputs_;  // immutable
    const BatcherOptions options_;         // immutable

    std::mutex mu_;                        // guards everything below marked "guarded by mu_"
    std::condition_variable work_cv_;      // runners wait here for requests (with mu_)
    std::condition_variable deadline_cv_;  // the deadline thread waits here (with mu_)
    bool shutdown_ = false;                                // guarded by mu_
    std::string shutdown_reason_;                          // guarded by mu_
    std::unordered_map<std::string, Bucket> buckets_;      // guarded by mu_; shape key -> queue
    int64_t queued_ = 0;                                   // guarded by mu_; requests in buckets_
    std::multiset<int64_t> deadlines_;                     // guarded by mu_; deadlines of queued requests
    // guarded by mu_; while the deadline thread waits, the time it wakes by itself (0 while it is awake: it looks at
    // deadlines_ again before it waits). Submit notifies it only for a deadline earlier than this.
    int64_t deadline_wake_ns_ = 0;
    uint64_t next_ticket_ = 1;                             // guarded by mu_
    uint64_t next_batch_ = 1;                              // guarded by mu_
    int idle_runners_ = 0;                                 // guarded by mu_; runners waiting on work_cv_
    int64_t last_arrival_ns_ = 0;                          // guarded by mu_
    double arrival_gap_ns_ = 1e18;                         // guarded by mu_; EWMA of inter-arrival gaps
    BatcherStats stats_;                                   // guarded by mu_
    std::vector<RunnerSlot> runners_;                      // size fixed at construction; fields as marked
    std::thread deadline_thread_;                          // started in the constructor, joined by Shutdown
};

int64_t SteadyNowNs();

}  // namespace fastml
