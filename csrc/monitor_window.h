// Live monitoring's window accumulator: the open window of one monitored (model, variant), filled from the
// serving path one sampled batch at a time, read by the monitor thread when a window closes.
//
// A window is a fixed set of columns (the model's monitored features, then its one-value-per-row outputs).
// Each column keeps, over the window's finite values:
//   * counts on fixed bins: `inner_edges` are the reference's finite bin edges e_0 < ... < e_m; a value v
//     goes to bin upper_bound(e, v) (0: below e_0, m: at or above e_m), except v == e_m, which closes the
//     last finite bin as numpy.histogram closes its last one (the same rule as
//     fastml.monitoring.windows.binned_counts). No edges: no counts.
//   * a reservoir of `capacity` values (Vitter's algorithm R, uniform without replacement): while the window
//     holds at most `capacity` finite values the reservoir is exactly those values, in arrival order. A
//     column given capacity >= window_rows therefore keeps every value (exact counts of discrete columns,
//     the first window of an output that becomes the prediction reference).
// A window closes when it holds `window_rows` rows (Add splits a batch across two windows) or when the
// monitor thread rotates it (time-based close); closed windows wait in a bounded list for TakeClosed. A
// window closed while that list is full is dropped and its rows counted in dropped_rows: a monitor thread
// that falls behind never makes the serving path wait or grow memory.
//
// Concurrency: one mutex (mu_) guards every member; Add may be called from several runner threads. The
// bindings release the GIL around Add, so serving threads never hold it while values are binned.
// Python-free (STYLE.md): csrc/bindings.cc checks the arrays and builds the views.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "status.h"

namespace fastml {

enum class MonitorValueType { kFloat32, kFloat64, kInt32, kInt64 };

// One column of a batch: row r's value is at data + r * stride_bytes.
struct MonitorColumnView {
    const char* data = nullptr;
    int64_t stride_bytes = 0;
    MonitorValueType type = MonitorValueType::kFloat64;
};

// What one column keeps (see the file comment).
struct MonitorColumnLayout {
    std::vector<double> inner_edges;  // sorted finite bin edges; empty: no counts
    int64_t capacity = 0;             // reservoir size (>= 0)
};

struct MonitorColumnSummary {
    int64_t n = 0;                   // finite values seen in the window
    std::vector<int64_t> counts;     // inner_edges.size() + 1 bins, or empty without edges
    std::vector<double> reservoir;   // min(n, capacity) values
};

struct MonitorWindowSummary {
    int64_t rows = 0;
    double first_ts = 0.0;  // the caller's timestamps of the window's first and last batch
    double last_ts = 0.0;
    std::vector<MonitorColumnSummary> columns;
};

class MonitorWindow {
public:
    // Fails (kInvalidInput) for window_rows < 1, max_closed < 1, a negative capacity or unsorted edges.
    static Status Make(std::vector<MonitorColumnLayout> layout, int64_t window_rows, int64_t max_closed,
                       uint64_t seed, std::unique_ptr<MonitorWindow>* out);

    // Rows [0, rows) of `columns` (one view per layout column, in order) at time now_s. Returns how many
    // windows this call closed (by rows).
    int64_t Add(const std::vector<MonitorColumnView>& columns, int64_t rows, double now_s);

    // Closes the open window now if it holds rows (a time-based close); true when one was closed.
    bool Rotate();

    // The closed windows, oldest first; the list is empty afterwards.
    std::vector<MonitorWindowSummary> TakeClosed();

    // The layout of windows opened from now on (the open window keeps its own): same number of columns,
    // same checks as Make.
    Status SetLayout(std::vector<MonitorColumnLayout> layout);

    size_t n_columns() const;
    int64_t open_rows() const;
    double open_first_ts() const;  // 0.0 while the open window is empty
    int64_t dropped_rows() const;
    int64_t add_ns() const;        // wall time spent in Add, for the monitor's cost accounting

private:
    MonitorWindow(std::vector<MonitorColumnLayout> layout, int64_t window_rows, int64_t max_closed, uint64_t seed);
    static Status Check(const std::vector<MonitorColumnLayout>& layout);
    void OpenWindow();                                           // caller holds mu_
    void CloseOpen();                                            // caller holds mu_
    void AddColumn(size_t c, const MonitorColumnView& view, int64_t lo, int64_t hi);  // caller holds mu_
    uint64_t Next();                                             // caller holds mu_

    mutable std::mutex mu_;
    std::vector<MonitorColumnLayout> layout_;       // mu_: layout of the next window to open
    std::vector<MonitorColumnLayout> open_layout_;  // mu_: layout of the open window
    MonitorWindowSummary open_;                     // mu_
    std::vector<MonitorWindowSummary> closed_;      // mu_
    const int64_t window_rows_;
    const int64_t max_closed_;
    int64_t dropped_rows_ = 0;  // mu_
    int64_t add_ns_ = 0;        // mu_
    uint64_t rng_[4];           // mu_: xoshiro256** state for the reservoirs
};

}  // namespace fastml
