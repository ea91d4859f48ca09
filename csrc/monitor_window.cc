// See monitor_window.h.
#include "monitor_window.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

namespace fastml {

namespace {

uint64_t SplitMix64(uint64_t* x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

template <typename T>
double ValueAt(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));  // strided views need not be aligned
    return static_cast<double>(v);
}

double Read(const MonitorColumnView& view, int64_t r) {
    const char* p = view.data + r * view.stride_bytes;
    switch (view.type) {
        case MonitorValueType::kFloat32: return ValueAt<float>(p);
        case MonitorValueType::kFloat64: return ValueAt<double>(p);
        case MonitorValueType::kInt32: return ValueAt<int32_t>(p);
        case MonitorValueType::kInt64: return ValueAt<int64_t>(p);
    }
    return 0.0;
}

}  // namespace

Status MonitorWindow::Check(const std::vector<MonitorColumnLayout>& layout) {
    for (size_t c = 0; c < layout.size(); ++c) {
        const MonitorColumnLayout& col = layout[c];
        if (col.capacity < 0) {
            return Status::Error(StatusCode::kInvalidInput,
                                 "column " + std::to_string(c) + ": reservoir capacity must be >= 0");
        }
        for (size_t i = 0; i < col.inner_edges.size(); ++i) {
            if (!std::isfinite(col.inner_edges[i]) || (i > 0 && !(col.inner_edges[i - 1] < col.inner_edges[i]))) {
                return Status::Error(StatusCode::kInvalidInput,
                                     "column " + std::to_string(c) + ": bin edges must be finite and increasing");
            }
        }
    }
    return Status::Ok();
}

Status MonitorWindow::Make(std::vector<MonitorColumnLayout> layout, int64_t window_rows, int64_t max_closed,
                           uint64_t seed, std::unique_ptr<MonitorWindow>* out) {
    if (window_rows < 1) return Status::Error(StatusCode::kInvalidInput, "window_rows must be >= 1");
    if (max_closed < 1) return Status::Error(StatusCode::kInvalidInput, "max_closed must be >= 1");
    Status st = Check(layout);
    if (!st.ok()) return st;
    out->reset(new MonitorWindow(std::move(layout), window_rows, max_closed, seed));
    return Status::Ok();
}

MonitorWindow::MonitorWindow(std::vector<MonitorColumnLayout> layout, int64_t window_rows, int64_t max_closed,
                             uint64_t seed)
    : layout_(std::move(layout)), window_rows_(window_rows), max_closed_(max_closed) {
    uint64_t x = seed;
    for (uint64_t& s : rng_) s = SplitMix64(&x);
    OpenWindow();
}

uint64_t MonitorWindow::Next() {
    // xoshiro256** (Blackman and Vigna), the published algorithm.
    const uint64_t result = Rotl(rng_[1] * 5, 7) * 9;
    const uint64_t t = rng_[1] << 17;
    rng_[2] ^= rng_[0];
    rng_[3] ^= rng_[1];
    rng_[1] ^= rng_[2];
    rng_[0] ^= rng_[3];
    rng_[2] ^= t;
    rng_[3] = Rotl(rng_[3], 45);
    return result;
}

void MonitorWindow::OpenWindow() {
    open_layout_ = layout_;
    open_ = MonitorWindowSummary{};
    open_.columns.resize(open_layout_.size());
    for (size_t c = 0; c < open_layout_.size(); ++c) {
        const MonitorColumnLayout& col = open_layout_[c];
        if (!col.inner_edges.empty()) open_.columns[c].counts.assign(col.inner_edges.size() + 1, 0);
        // Reserved up front: the window is filled on the serving path, which should not reallocate.
        open_.columns[c].reservoir.reserve(static_cast<size_t>(std::min<int64_t>(col.capacity, window_rows_)));
    }
}

void MonitorWindow::CloseOpen() {
    if (static_cast<int64_t>(closed_.size()) < max_closed_) {
        closed_.push_back(std::move(open_));
    } else {
        dropped_rows_ += open_.rows;
    }
    OpenWindow();
}

void MonitorWindow::AddColumn(size_t c, const MonitorColumnView& view, int64_t lo, int64_t hi) {
    const MonitorColumnLayout& layout = open_layout_[c];
    MonitorColumnSummary& col = open_.columns[c];
    const std::vector<double>& edges = layout.inner_edges;
    const bool binned = !edges.empty();
    const uint64_t capacity = static_cast<uint64_t>(layout.capacity);
    for (int64_t r = lo; r < hi; ++r) {
        const double v = Read(view, r);
        if (!std::isfinite(v)) continue;
        if (binned) {
            size_t idx = static_cast<size_t>(std::upper_bound(edges.begin(), edges.end(), v) - edges.begin());
            if (v == edges.back()) --idx;  // the reference maximum closes the last finite bin
            ++col.counts[idx];
        }
        const uint64_t pos = static_cast<uint64_t>(col.n);  // 0-based index of this value in the window
        if (pos < capacity) {
            col.reservoir.push_back(v);
        } else if (capacity > 0) {
            // Algorithm R: this value replaces slot j ~ U{0..pos} when j < capacity (multiply-shift to the range).
            const uint64_t j = static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * (pos + 1)) >> 64);
            if (j < capacity) col.reservoir[j] = v;
        }
        ++col.n;
    }
}

int64_t MonitorWindow::Add(const std::vector<MonitorColumnView>& columns, int64_t rows, double now_s) {
    const auto t0 = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    int64_t closed = 0;
    int64_t lo = 0;
    const size_t n = std::min(columns.size(), open_.columns.size());
    while (lo < rows) {
        if (open_.rows == 0) open_.first_ts = now_s;
        const int64_t take = std::min(rows - lo, window_rows_ - open_.rows);
        for (size_t c = 0; c < n; ++c) AddColumn(c, columns[c], lo, lo + take);
        open_.rows += take;
        open_.last_ts = now_s;
        lo += take;
        if (open_.rows >= window_rows_) {
            CloseOpen();
            ++closed;
        }
    }
    add_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    return closed;
}

bool MonitorWindow::Rotate() {
    std::lock_guard<std::mutex> lock(mu_);
    if (open_.rows == 0) return false;
    CloseOpen();
    return true;
}

std::vector<MonitorWindowSummary> MonitorWindow::TakeClosed() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<MonitorWindowSummary> out;
    out.swap(closed_);
    return out;
}

Status MonitorWindow::SetLayout(std::vector<MonitorColumnLayout> layout) {
    Status st = Check(layout);
    if (!st.ok()) return st;
    std::lock_guard<std::mutex> lock(mu_);
    if (layout.size() != layout_.size()) {
        return Status::Error(StatusCode::kInvalidInput, "a new layout must keep the window's " +
                                                            std::to_string(layout_.size()) + " columns");
    }
    layout_ = std::move(layout);
    return Status::Ok();
}

size_t MonitorWindow::n_columns() const {
    std::lock_guard<std::mutex> lock(mu_);
    return layout_.size();
}

int64_t MonitorWindow::open_rows() const {
    std::lock_guard<std::mutex> lock(mu_);
    return open_.rows;
}

double MonitorWindow::open_first_ts() const {
    std::lock_guard<std::mutex> lock(mu_);
    return open_.rows ? open_.first_ts : 0.0;
}

int64_t MonitorWindow::dropped_rows() const {
    std::lock_guard<std::mutex> lock(mu_);
    return dropped_rows_;
}

int64_t MonitorWindow::add_ns() const {
    std::lock_guard<std::mutex> lock(mu_);
    return add_ns_;
}

}  // namespace fastml
