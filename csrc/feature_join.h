// Batch feature join for serving (ARCHITECTURE.md "Feature cache"): entity keys in, a model's float32
// input tensor out.
//
// A model that declares features (driver:trips, driver:rating, ...) receives entity ids in a request; the
// server builds the model's [rows, F] float32 input here, before ONNX Runtime: per row, one LMDB point read
// per feature group version (all in ONE read transaction for the whole batch), the selected values copied
// into their columns, request-time values copied into theirs, and each feature's policy applied where the
// entity is missing, the value is null, or the row is older than the group's TTL.
//
// No global state: a JoinPlan is built once per model (csrc/bindings.cc) and used concurrently by any
// number of threads (it is read-only after construction). Nothing here touches Python; the binding
// releases the GIL around JoinFeatures.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "feature_cache.h"

namespace fastml {

// What to put in a column whose value is missing or stale.
enum class MissingPolicy : uint8_t {
  kNaN = 0,      // NaN (the model or its preprocessing handles it)
  kDefault = 1,  // the column's default_value
  kError = 2,    // refuse the batch (JoinResult names the first such row and column)
};

// One group version read per row: which table, which key input addresses it, its TTL.
struct JoinTable {
  TableInfo table;
  uint32_t key_input = 0;  // index into JoinFeatures' `keys`
  // TTL when the plan was built: a row with now - event_time > TTL is stale; 0 = never stale. The TTL the
  // store holds now (FeatureCache::StoredTtl) takes its place where there is one: a group's TTL can change
  // in place while a served model keeps its plan.
  int64_t max_age_us = 0;
};

// The stored TTLs of a plan's tables as of one LMDB snapshot (JoinPlan::ttls). A batch whose snapshot is
// the cached one (no write committed since: the common case while serving) reuses them, so the TTL lookups
// cost one atomic compare per batch; a newer snapshot reads them again (one point read per table). Threads
// with different snapshots may overwrite each other's values: a batch then uses TTLs at most one commit
// older or newer than its own snapshot's, never a made-up one.
struct JoinTtls {
  static constexpr uint64_t kNone = ~uint64_t(0);  // no snapshot cached yet (LMDB txn ids never get there)
  std::atomic<uint64_t> txn_id{kNone};
  std::unique_ptr<std::atomic<int64_t>[]> max_age_us;

  explicit JoinTtls(size_t n_tables) : max_age_us(new std::atomic<int64_t>[n_tables]()) {}
};

// One output column: a stored feature (table >= 0) or a request-time value (table == -1).
struct JoinColumn {
  int32_t table = -1;     // index into JoinPlan::tables, or -1 for a request-time column
  uint32_t position = 0;  // the feature's position in the table's rows, or the request column's index
  MissingPolicy policy = MissingPolicy::kNaN;
  float default_value = 0.0f;
};

struct JoinPlan {
  std::vector<JoinTable> tables;
  std::vector<JoinColumn> columns;  // output column order = the model input's column order
  // Derived by Finish(): per table, its output columns (so a row read once fills all of them); per
  // request-time column, its output column. Built once, not per batch.
  std::vector<std::vector<size_t>> table_columns;
  std::vector<size_t> request_columns;
  // Built by Finish(); shared by copies of the plan (they read the same tables).
  std::shared_ptr<JoinTtls> ttls;

  // Call once after filling tables and columns (JoinFeatures reads the derived lists).
  void Finish();
};

// The entity keys of one key input, borrowed for the call: integer ids (keyed in the store by their
// decimal text, as materialisation writes them) or byte strings (UTF-8 text).
struct JoinKeys {
  const int64_t* ids = nullptr;    // set for integer keys
  const KeyView* views = nullptr;  // set for string keys
};

// A request-time column, borrowed for the call: row i's value is data[i * stride].
struct RequestColumn {
  const float* data = nullptr;
  size_t stride = 1;
};

struct JoinResult {
  std::vector<uint64_t> missing;  // per output column: rows without a value (no row, or a null value)
  std::vector<uint64_t> stale;    // per output column: rows whose stored row is older than the TTL
  int64_t error_row = -1;         // the lowest row that hit an "error" policy column, or -1
  int32_t error_column = -1;      // that row's first such column
  bool error_stale = false;       // whether that value was stale (else missing)
};

// Fills out[rows, plan.columns.size()] (row-major float32). keys has one entry per key input, each with
// `rows` keys; request has one entry per request-time column index. Reads every table in one LMDB read
// transaction. An "error" policy hit does not stop the join: every row is filled (counts are complete)
// and the caller refuses the batch from result->error_row. Returns a failed status only for LMDB or
// stored-data faults.
CacheStatus JoinFeatures(const FeatureCache& cache, const JoinPlan& plan, const std::vector<JoinKeys>& keys,
                         const std::vector<RequestColumn>& request, size_t rows, float* out, int64_t now_us,
                         JoinResult* result);

}  // namespace fastml
