// Dynamic micro-batcher (see batcher.h for the contract).
#include "batcher.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace fastml {

int64_t SteadyNowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

static int64_t EpochNowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

static std::string ShapeString(const std::vector<int64_t>& dims) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
    s << "]";
    return s.str();
}

// ---------------------------------------------------------------- CompletionQueue

CompletionQueue::CompletionQueue() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error(std::string("eventfd failed: ") + std::strerror(errno));
}

CompletionQueue::~CompletionQueue() { close(fd_); }

void CompletionQueue::Push(std::vector<Completion>&& items) {
    std::lock_guard<std::mutex> lk(mu_);
    if (items_.empty()) {
        items_ = std::move(items);
    } else {
        for (auto& c : items) items_.push_back(std::move(c));
    }
    if (sweep_due_) {
        // Abandoned: no event loop reads the eventfd any more; the bindings release these items.
        sweep_due_->store(true);
        return;
    }
    // The quiet thread drains right after pushing: no wake-up needed.
    if (signalled_ || std::this_thread::get_id() == quiet_thread_) return;
    // One write per delivered batch: the event loop wakes once and drains everything. Written under mu_
    // so that signalled_ always says whether the counter is non-zero.
    uint64_t one = 1;
    ssize_t n = write(fd_, &one, sizeof(one));
    (void)n;  // EAGAIN only when the counter would overflow: the reader is already due to wake
    signalled_ = true;
}

std::vector<Completion> CompletionQueue::Drain() {
    std::vector<Completion> out;
    std::lock_guard<std::mutex> lk(mu_);
    if (signalled_) {
        uint64_t count;
        ssize_t n = read(fd_, &count, sizeof(count));
        (void)n;
        signalled_ = false;
    }
    out.swap(items_);
    return out;
}

void CompletionQueue::SetQuietThread() {
    std::lock_guard<std::mutex> lk(mu_);
    quiet_thread_ = std::this_thread::get_id();
}

void CompletionQueue::Abandon(std::shared_ptr<std::atomic<bool>> sweep_due) {
    std::lock_guard<std::mutex> lk(mu_);
    sweep_due_ = std::move(sweep_due);
    if (!items_.empty()) sweep_due_->store(true);
}

// ---------------------------------------------------------------- Request

Completion Request::Wait() {
    std::unique_lock<std::mutex> lk(done_mu);
    done_cv.wait(lk, [this] { return done; });
    return result;
}

bool Request::WaitFor(int64_t timeout_ns, Completion* out) {
    std::unique_lock<std::mutex> lk(done_mu);
    if (!done && timeout_ns > 0) done_cv.wait_for(lk, std::chrono::nanoseconds(timeout_ns), [this] { return done; });
    if (!done) return false;
    *out = result;
    return true;
}

void* Request::TakeUserData() {
    std::lock_guard<std::mutex> lk(done_mu);
    if (!done) return nullptr;
    void* p = result.user_data;
    result.user_data = nullptr;
    return p;
}

void Request::Orphan(std::shared_ptr<std::atomic<bool>> flag) {
    std::lock_guard<std::mutex> lk(done_mu);
    sweep_due = std::move(flag);
    if (done) sweep_due->store(true);
}

// ---------------------------------------------------------------- Batcher

Batcher::Batcher(std::vector<InputSpec> inputs, BatcherOptions options)
    : inputs_(std::move(inputs)), options_(options) {
    if (inputs_.empty()) throw std::invalid_argument("a batcher needs at least one input");
    if (options_.max_batch_size < 1) throw std::invalid_argument("max_batch_size must be >= 1");
    if (options_.max_queue_size < 1) throw std::invalid_argument("max_queue_size must be >= 1");
    if (options_.max_queue_delay_us < 0) throw std::invalid_argument("max_queue_delay_us must be >= 0");
    if (options_.instances < 1) throw std::invalid_argument("instances must be >= 1");
    for (const auto& spec : inputs_) {
        if (spec.dims.empty()) throw std::invalid_argument("input '" + spec.name + "' has no batch dimension");
    }
    runners_.resize(options_.instances);
    for (auto& slot : runners_) slot.buffers.resize(inputs_.size());
    deadline_thread_ = std::thread([this] { DeadlineLoop(); });
}

Batcher::~Batcher() { Shutdown("batcher destroyed"); }

Status Batcher::Validate(const std::vector<TensorView>& inputs, int64_t* rows, std::string* shape_key) const {
    if (inputs.size() != inputs_.size()) {
        return Status::Error(StatusCode::kInvalidInput, "expected " + std::to_string(inputs_.size()) +
                                                            " input tensors, got " + std::to_string(inputs.size()));
    }
    shape_key->clear();
    int64_t n = -1;
    for (size_t i = 0; i < inputs.size(); ++i) {
        const InputSpec& spec = inputs_[i];
        const TensorView& v = inputs[i];
        // Built only on the error paths (the success path allocates nothing here).
        auto where_fn = [&spec] { return "input '" + spec.name + "'"; };
        if (v.kind != spec.kind || v.itemsize != spec.itemsize || !v.native_order) {
            return Status::Error(StatusCode::kInvalidInput,
                                 where_fn() + ": expected dtype kind '" + std::string(1, spec.kind) + "' of " +
                                     std::to_string(spec.itemsize) + " bytes (native order), got kind '" +
                                     std::string(1, v.kind) + "' of " + std::to_string(v.itemsize) + " bytes" +
                                     (v.native_order ? "" : " (byte-swapped)"));
        }
        if (v.shape.size() != spec.dims.size()) {
            return Status::Error(StatusCode::kInvalidInput, where_fn() + ": expected shape " + ShapeString(spec.dims) +
                                                                ", got " + ShapeString(v.shape));
        }
        for (size_t d = 1; d < v.shape.size(); ++d) {
            if (spec.dims[d] >= 0 && spec.dims[d] != v.shape[d]) {
                return Status::Error(StatusCode::kInvalidInput, where_fn() + ": expected shape " +
                                                                    ShapeString(spec.dims) + ", got " +
                                                                    ShapeString(v.shape));
            }
        }
        if (v.shape[0] < 1) {
            return Status::Error(StatusCode::kInvalidInput, where_fn() + ": needs at least one row, got shape " +
                                                                ShapeString(v.shape));
        }
        if (!v.c_contiguous) {
            return Status::Error(StatusCode::kInvalidInput, where_fn() + ": must be C-contiguous");
        }
        if (n >= 0 && v.shape[0] != n) {
            return Status::Error(StatusCode::kInvalidInput,
                                 where_fn() + ": has " + std::to_string(v.shape[0]) + " rows but input '" +
                                     inputs_[0].name + "' has " + std::to_string(n));
        }
        n = v.shape[0];
        // The bucket key: every non-batch dim of every input (dtype is fixed per input by the spec).
        for (size_t d = 1; d < v.shape.size(); ++d) {
            shape_key->append(reinterpret_cast<const char*>(&v.shape[d]), sizeof(int64_t));
        }
        shape_key->push_back('|');
    }
    if (n > options_.max_batch_size) {
        return Status::Error(StatusCode::kInvalidInput, "request has " + std::to_string(n) +
                                                            " rows, more than max_batch_size " +
                                                            std::to_string(options_.max_batch_size));
    }
    *rows = n;
    return Status::Ok();
}

Status Batcher::Submit(std::vector<TensorView> inputs, int64_t timeout_us, std::shared_ptr<CompletionQueue> queue,
                       void* user_data, std::shared_ptr<Request>* out) {
    auto req = std::make_shared<Request>();
    Status st = Validate(inputs, &req->rows, &req->shape_key);
    if (!st.ok()) return st;
    req->inputs = std::move(inputs);
    req->queue = std::move(queue);
    req->user_data = user_data;
    // Deadlines past ~100 years are as good as none, and keep now + timeout within int64 ns.
    constexpr int64_t kMaxTimeoutUs = int64_t{100} * 365 * 24 * 3600 * 1000 * 1000;
    req->timeout_us = timeout_us > 0 ? std::min(timeout_us, kMaxTimeoutUs) : 0;
    bool wake = false;
    bool wake_deadlines = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (shutdown_) return Status::Error(StatusCode::kUnavailable, "model is shut down: " + shutdown_reason_);
        if (queued_ >= options_.max_queue_size) {
            return Status::Error(StatusCode::kOverloaded,
                                 "queue is full: " + std::to_string(queued_) + " requests pending (max_queue_size " +
                                     std::to_string(options_.max_queue_size) + ")");
        }
        const int64_t now = SteadyNowNs();
        req->id = next_ticket_++;
        req->enqueue_ns = now;
        if (last_arrival_ns_ > 0) {
            const double gap = static_cast<double>(now - last_arrival_ns_);
            arrival_gap_ns_ = arrival_gap_ns_ >= 1e17 ? gap : 0.8 * arrival_gap_ns_ + 0.2 * gap;
        }
        last_arrival_ns_ = now;
        if (req->timeout_us > 0) {
            req->deadline_ns = now + req->timeout_us * 1000;
            deadlines_.insert(req->deadline_ns);
            // The deadline thread is woken only when it would otherwise wake after this deadline.
            wake_deadlines = req->deadline_ns < deadline_wake_ns_;
        }
        buckets_[req->shape_key].requests.push_back(req);
        ++queued_;
        stats_.pending = queued_;
        wake = idle_runners_ > 0;
    }
    // Outside the lock: a thread woken while the lock is held would only block on it.
    if (wake_deadlines) deadline_cv_.notify_one();
    if (wake) work_cv_.notify_one();  // a futex wake only when some runner sleeps
    *out = std::move(req);
    return Status::Ok();
}

Batcher::Bucket* Batcher::OldestBucketLocked(std::string* key) {
    Bucket* best = nullptr;
    uint64_t best_id = 0;
    for (auto& kv : buckets_) {
        if (kv.second.requests.empty()) continue;
        const uint64_t id = kv.second.requests.front()->id;
        if (!best || id < best_id) {
            best = &kv.second;
            best_id = id;
            *key = kv.first;
        }
    }
    return best;
}

void Batcher::RemoveDeadlineLocked(const Request& r) {
    if (r.deadline_ns == 0) return;
    auto it = deadlines_.find(r.deadline_ns);
    if (it != deadlines_.end()) deadlines_.erase(it);
}

void Batcher::TakeExpiredLocked(int64_t now_ns, std::vector<std::shared_ptr<Request>>* expired) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
        auto& q = it->second.requests;
        std::deque<std::shared_ptr<Request>> keep;
        for (auto& r : q) {
            if (r->deadline_ns != 0 && r->deadline_ns <= now_ns) {
                RemoveDeadlineLocked(*r);
                expired->push_back(std::move(r));
            } else {
                keep.push_back(std::move(r));
            }
        }
        q.swap(keep);
        it = q.empty() ? buckets_.erase(it) : std::next(it);
    }
    queued_ -= static_cast<int64_t>(expired->size());
    stats_.pending = queued_;
}

bool Batcher::NextBatch(int runner, BatchInfo* out, bool wait) {
    if (runner < 0 || runner >= static_cast<int>(runners_.size())) {
        throw std::out_of_range("runner index " + std::to_string(runner) + " out of range");
    }
    RunnerSlot& slot = runners_[runner];
    if (!slot.requests.empty()) {
        throw std::logic_error("runner " + std::to_string(runner) + " must complete its batch before taking another");
    }
    slot.offsets.clear();
    const int64_t delay_ns = options_.max_queue_delay_us * 1000;
    std::vector<std::shared_ptr<Request>> expired;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
        if (shutdown_) return false;
        std::string key;
        Bucket* bucket = OldestBucketLocked(&key);
        if (!bucket) {
            if (!wait) return false;
            ++idle_runners_;
            work_cv_.wait(lk);
            --idle_runners_;
            continue;
        }
        const int64_t now = SteadyNowNs();
        if (!deadlines_.empty() && *deadlines_.begin() <= now) {
            // Expired requests never run; fail them outside the lock and look again.
            TakeExpiredLocked(now, &expired);
            lk.unlock();
            std::vector<std::string> msgs;
            for (auto& r : expired) {
                msgs.push_back("deadline of " + std::to_string(r->timeout_us) + " us passed after " +
                               std::to_string((now - r->enqueue_ns) / 1000) + " us in the queue; not run");
            }
            Fail(expired, StatusCode::kDeadlineExceeded, msgs);
            expired.clear();
            lk.lock();
            continue;
        }
        int64_t rows = 0;
        size_t n = 0;
        for (const auto& r : bucket->requests) {
            // A request whose batch failed in the model runs alone (see CompleteBatch).
            if (n > 0 && r->solo) break;
            if (rows + r->rows > options_.max_batch_size) break;
            rows += r->rows;
            ++n;
            if (r->solo) break;
        }
        const bool full =
            n < bucket->requests.size() || rows == options_.max_batch_size || bucket->requests.front()->solo;
        const int64_t age = now - bucket->requests.front()->enqueue_ns;
        if (wait && !full && delay_ns > 0 && age < delay_ns) {
            const int64_t remaining = delay_ns - age;
            // Work-conserving: wait for more rows only when another arrival is expected within the
            // remaining delay; a lone request at low load goes at once.
            if (arrival_gap_ns_ < static_cast<double>(remaining)) {
                ++idle_runners_;
                work_cv_.wait_for(lk, std::chrono::nanoseconds(remaining));
                --idle_runners_;
                continue;
            }
        }
        slot.batch_id = next_batch_++;
        slot.rows = rows;
        slot.shape_key = key;
        slot.queue_ns = 0;
        slot.input_ns = 0;
        int64_t offset = 0;
        for (size_t i = 0; i < n; ++i) {
            auto& r = bucket->requests.front();
            RemoveDeadlineLocked(*r);
            slot.queue_ns += now - r->enqueue_ns;
            slot.offsets.push_back(offset);
            offset += r->rows;
            slot.requests.push_back(std::move(r));
            bucket->requests.pop_front();
        }
        if (bucket->requests.empty()) buckets_.erase(key);
        queued_ -= static_cast<int64_t>(n);
        stats_.pending = queued_;
        if (queued_ > 0 && idle_runners_ > 0) work_cv_.notify_one();  // more work for another idle runner
        break;
    }
    lk.unlock();
    GatherSlot(slot, out);  // without the lock (and without the GIL)
    return true;
}

bool Batcher::TakeMore(int runner) {
    if (runner < 0 || runner >= static_cast<int>(runners_.size())) {
        throw std::out_of_range("runner index " + std::to_string(runner) + " out of range");
    }
    RunnerSlot& slot = runners_[runner];
    if (slot.requests.empty() || slot.rows >= options_.max_batch_size) return false;
    std::lock_guard<std::mutex> lk(mu_);
    if (shutdown_) return false;
    auto it = buckets_.find(slot.shape_key);
    if (it == buckets_.end()) return false;
    auto& q = it->second.requests;
    const int64_t now = SteadyNowNs();
    size_t n = 0;
    if (slot.requests.front()->solo) return false;  // a request that runs alone takes no company
    while (!q.empty()) {
        const auto& r = q.front();
        // An expired request is the deadline thread's to fail; it never rides along; nor does one that runs alone.
        if (slot.rows + r->rows > options_.max_batch_size || (r->deadline_ns != 0 && r->deadline_ns <= now) ||
            r->solo) {
            break;
        }
        RemoveDeadlineLocked(*r);
        slot.queue_ns += now - r->enqueue_ns;
        slot.offsets.push_back(slot.rows);
        slot.rows += r->rows;
        slot.requests.push_back(std::move(q.front()));
        q.pop_front();
        ++n;
    }
    if (q.empty()) buckets_.erase(it);
    queued_ -= static_cast<int64_t>(n);
    stats_.pending = queued_;
    return n > 0;
}

void Batcher::Gather(int runner, BatchInfo* out) {
    if (runner < 0 || runner >= static_cast<int>(runners_.size())) {
        throw std::out_of_range("runner index " + std::to_string(runner) + " out of range");
    }
    GatherSlot(runners_[runner], out);
}

void Batcher::GatherSlot(RunnerSlot& slot, BatchInfo* out) {
    const int64_t start = SteadyNowNs();
    out->id = slot.batch_id;
    out->rows = slot.rows;
    out->input_data.assign(inputs_.size(), nullptr);
    out->input_shapes.assign(inputs_.size(), {});
    out->zero_copy = slot.requests.size() == 1;
    for (size_t i = 0; i < inputs_.size(); ++i) {
        const TensorView& head = slot.requests.front()->inputs[i];
        std::vector<int64_t> shape = head.shape;
        shape[0] = slot.rows;
        int64_t row_bytes = head.itemsize;
        for (size_t d = 1; d < shape.size(); ++d) row_bytes *= shape[d];
        if (out->zero_copy) {
            out->input_data[i] = head.data;
        } else {
            std::vector<char>& buf = slot.buffers[i];
            const size_t need = static_cast<size_t>(row_bytes * slot.rows);
            if (buf.size() < need) buf.resize(need);
            char* dst = buf.data();
            for (const auto& r : slot.requests) {
                const size_t bytes = static_cast<size_t>(row_bytes * r->rows);
                std::memcpy(dst, r->inputs[i].data, bytes);
                dst += bytes;
            }
            out->input_data[i] = buf.data();
        }
        out->input_shapes[i] = std::move(shape);
    }
    slot.gathered_ns = SteadyNowNs();
    slot.input_ns += slot.gathered_ns - start;
}

namespace {

// Collects the completions of one batch (or one set of failures) and delivers them: grouped by
// destination queue (usually one event loop), so each queue gets one Push and one eventfd write; blocking
// waiters are woken one by one. The caller's requests keep every queue alive until Deliver returns.
class CompletionRouter {
   public:
    // `batch_requests`: the batch's size, the most completions one queue can get (its vector is sized once).
    explicit CompletionRouter(size_t batch_requests) : batch_requests_(batch_requests) {}

    void Add(Request& r, Completion&& c) {
        if (!r.queue) {
            sync_.emplace_back(&r, std::move(c));
            return;
        }
        auto it = std::find_if(groups_.begin(), groups_.end(),
                               [&](const auto& g) { return g.first == r.queue.get(); });
        if (it == groups_.end()) {
            groups_.emplace_back(r.queue.get(), std::vector<Completion>{});
            it = std::prev(groups_.end());
            it->second.reserve(batch_requests_);
        }
        it->second.push_back(std::move(c));
    }

    void Deliver() {
        for (auto& g : groups_) g.first->Push(std::move(g.second));
        for (auto& [r, c] : sync_) {
            std::lock_guard<std::mutex> lk(r->done_mu);
            r->result = std::move(c);
            r->done = true;
            if (r->sweep_due) r->sweep_due->store(true);  // an orphan: its waiter gave up
            r->done_cv.notify_all();
        }
    }

   private:
    size_t batch_requests_;
    std::vector<std::pair<CompletionQueue*, std::vector<Completion>>> groups_;
    std::vector<std::pair<Request*, Completion>> sync_;
};

}  // namespace

void Batcher::CompleteBatch(int runner, const Status& status) {
    if (runner < 0 || runner >= static_cast<int>(runners_.size())) {
        throw std::out_of_range("runner index " + std::to_string(runner) + " out of range");
    }
    RunnerSlot& slot = runners_[runner];
    if (slot.requests.empty()) throw std::logic_error("runner " + std::to_string(runner) + " has no batch");
    const int64_t start = SteadyNowNs();
    if ((status.code == StatusCode::kInternal || status.code == StatusCode::kInvalidInput) &&
        slot.requests.size() > 1 && RequeueAlone(slot)) {
        slot.requests.clear();
        return;
    }
    if (!status.ok()) {
        std::vector<std::string> msgs(slot.requests.size(), status.message);
        Fail(slot.requests, status.code, msgs);
        slot.requests.clear();
        return;
    }
    CompletionRouter out(slot.requests.size());  // delivered after the counters are updated
    int64_t request_end = 0;
    for (size_t i = 0; i < slot.requests.size(); ++i) {
        Request& r = *slot.requests[i];
        Completion c;
        c.ticket = r.id;
        c.batch = slot.batch_id;
        c.row_offset = slot.offsets[i];
        c.rows = r.rows;
        c.batch_requests = static_cast<int64_t>(slot.requests.size());
        c.user_data = r.user_data;
        out.Add(r, std::move(c));
    }
    // Counters first, so a caller woken below already sees its request counted.
    const int64_t end = SteadyNowNs();
    for (const auto& r : slot.requests) request_end += end - r->enqueue_ns;
    {
        std::lock_guard<std::mutex> lk(mu_);
        stats_.requests += static_cast<int64_t>(slot.requests.size());
        stats_.rows += slot.rows;
        stats_.batches += 1;
        stats_.queue_ns += slot.queue_ns;
        stats_.compute_input_ns += slot.input_ns;
        stats_.compute_infer_ns += start - slot.gathered_ns;
        stats_.compute_output_ns += end - start;
        stats_.request_ns += request_end;
        stats_.last_inference_ms = EpochNowMs();
        BatchSizeStats& b = stats_.batch_stats[slot.rows];
        b.count += 1;
        b.compute_input_ns += slot.input_ns;
        b.compute_infer_ns += start - slot.gathered_ns;
        b.compute_output_ns += end - start;
    }
    out.Deliver();
    slot.requests.clear();
}

bool Batcher::RequeueAlone(RunnerSlot& slot) {
    bool wake_deadlines = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (shutdown_) return false;
        // Ahead of everything queued, in their order: their tickets are the oldest, so they are taken first.
        auto& q = buckets_[slot.shape_key].requests;
        for (auto it = slot.requests.rbegin(); it != slot.requests.rend(); ++it) {
            Request& r = **it;
            r.solo = true;
            if (r.deadline_ns != 0) {
                deadlines_.insert(r.deadline_ns);
                wake_deadlines = wake_deadlines || r.deadline_ns < deadline_wake_ns_;
            }
            q.push_front(*it);
        }
        queued_ += static_cast<int64_t>(slot.requests.size());
        stats_.pending = queued_;
        stats_.rerun_alone += static_cast<int64_t>(slot.requests.size());
    }
    if (wake_deadlines) deadline_cv_.notify_one();
    work_cv_.notify_all();  // one batch each: every idle runner can take one
    return true;
}

void Batcher::Fail(const std::vector<std::shared_ptr<Request>>& requests, StatusCode code,
                   const std::vector<std::string>& messages) {
    if (requests.empty()) return;
    CompletionRouter out(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
        Request& r = *requests[i];
        Completion c;
        c.ticket = r.id;
        c.rows = r.rows;
        c.code = code;
        c.message = messages[i];
        c.user_data = r.user_data;
        out.Add(r, std::move(c));
    }
    {
        // Counters first, so a caller woken below already sees its failure counted.
        const int64_t end = SteadyNowNs();
        std::lock_guard<std::mutex> lk(mu_);
        stats_.failures += static_cast<int64_t>(requests.size());
        for (const auto& r : requests) stats_.fail_ns += end - r->enqueue_ns;
    }
    // `requests` holds a reference to every queue, so the raw pointers above stay valid.
    out.Deliver();
}

// The deadline thread sleeps until the earliest deadline, and never longer than kDeadlineHorizonNs, even with no
// deadline queued. Submit wakes it only for a deadline earlier than its wake-up (deadline_wake_ns_). Requests
// commonly carry deadlines of a second or more, so one that comes after the queue emptied wakes nobody: waking
// the thread for the first request of every batch (empty queue -> "earliest") cost the serving thread a futex
// wake and the process ~2,500 context switches a second under load (binary protocol, 32 in flight, MLP).
constexpr int64_t kDeadlineHorizonNs = 1000000000;

void Batcher::DeadlineLoop() {
    std::unique_lock<std::mutex> lk(mu_);
    std::vector<std::shared_ptr<Request>> expired;
    while (!shutdown_) {
        const int64_t now = SteadyNowNs();
        if (deadlines_.empty() || *deadlines_.begin() > now) {
            int64_t wake = now + kDeadlineHorizonNs;
            if (!deadlines_.empty() && *deadlines_.begin() < wake) wake = *deadlines_.begin();
            deadline_wake_ns_ = wake;
            deadline_cv_.wait_for(lk, std::chrono::nanoseconds(wake - now));
            deadline_wake_ns_ = 0;
            continue;
        }
        TakeExpiredLocked(now, &expired);
        lk.unlock();
        std::vector<std::string> msgs;
        for (auto& r : expired) {
            msgs.push_back("deadline of " + std::to_string(r->timeout_us) + " us passed after " +
                           std::to_string((now - r->enqueue_ns) / 1000) + " us in the queue; not run");
        }
        Fail(expired, StatusCode::kDeadlineExceeded, msgs);
        expired.clear();
        lk.lock();
    }
}

void Batcher::Shutdown(const std::string& reason) {
    std::vector<std::shared_ptr<Request>> pending;
    bool first = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!shutdown_) {
            first = true;
            shutdown_ = true;
            shutdown_reason_ = reason;
            for (auto& kv : buckets_) {
                for (auto& r : kv.second.requests) pending.push_back(std::move(r));
            }
            buckets_.clear();
            deadlines_.clear();
            queued_ = 0;
            stats_.pending = 0;
        }
    }
    work_cv_.notify_all();
    deadline_cv_.notify_all();
    std::vector<std::string> msgs(pending.size(), "model is shut down: " + reason);
    Fail(pending, StatusCode::kUnavailable, msgs);
    // Only the first caller joins (joining one thread from two callers is undefined).
    if (first && deadline_thread_.joinable() && deadline_thread_.get_id() != std::this_thread::get_id()) {
        deadline_thread_.join();
    }
}

int64_t Batcher::CurrentBatchRequests(int runner) const {
    if (runner < 0 || runner >= static_cast<int>(runners_.size())) {
        throw std::out_of_range("runner index " + std::to_string(runner) + " out of range");
    }
    return static_cast<int64_t>(runners_[runner].requests.size());
}

BatcherStats Batcher::Stats() {
    std::lock_guard<std::mutex> lk(mu_);
    return stats_;
}

}  // namespace fastml
