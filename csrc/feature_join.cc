#include "feature_join.h"

#include <charconv>
#include <cstring>
#include <limits>
#include <string>

namespace fastml {

namespace {

// Per-table outcome of one row's read.
enum class RowState : uint8_t { kHit, kMissing, kStale };

CacheStatus MdbError(int rc, const std::string& what) {
  return CacheStatus::Error(StatusCode::kInternal, what + ": " + mdb_strerror(rc));
}

}  // namespace

void JoinPlan::Finish() {
  table_columns.assign(tables.size(), {});
  request_columns.clear();
  for (size_t c = 0; c < columns.size(); ++c) {
    if (columns[c].table >= 0) {
      table_columns[size_t(columns[c].table)].push_back(c);
    } else {
      request_columns.push_back(c);
    }
  }
  ttls = std::make_shared<JoinTtls>(tables.size());
}

CacheStatus JoinFeatures(const FeatureCache& cache, const JoinPlan& plan, const std::vector<JoinKeys>& keys,
                         const std::vector<RequestColumn>& request, size_t rows, float* out, int64_t now_us,
                         JoinResult* result) {
  const size_t width = plan.columns.size();
  result->missing.assign(width, 0);
  result->stale.assign(width, 0);
  result->error_row = -1;
  result->error_column = -1;
  result->error_stale = false;
  const float nan = std::numeric_limits<float>::quiet_NaN();

  // Request-time columns first: plain strided copies, no LMDB.
  for (size_t c : plan.request_columns) {
    const RequestColumn& src = request[plan.columns[c].position];
    for (size_t i = 0; i < rows; ++i) out[i * width + c] = src.data[i * src.stride];
  }
  const std::vector<std::vector<size_t>>& table_columns = plan.table_columns;

  ReadTxn reader;
  CacheStatus st = cache.AcquireReader(&reader);
  if (!st.ok()) return st;
  MDB_txn* const txn = reader.txn;

  // Each table's TTL as the store holds it in this snapshot (a TTL changed in place after the plan was
  // built applies from the next batch on), read once per new snapshot (JoinTtls).
  const size_t n_tables = plan.tables.size();
  constexpr size_t kInlineTables = 16;
  int64_t inline_ttls[kInlineTables];
  std::vector<int64_t> many_ttls(n_tables > kInlineTables ? n_tables : 0);
  int64_t* const max_age_us = n_tables > kInlineTables ? many_ttls.data() : inline_ttls;
  JoinTtls* const cached = plan.ttls.get();
  const uint64_t snapshot = mdb_txn_id(txn);
  if (cached != nullptr && cached->txn_id.load(std::memory_order_acquire) == snapshot) {
    for (size_t t = 0; t < n_tables; ++t) max_age_us[t] = cached->max_age_us[t].load(std::memory_order_relaxed);
  } else {
    for (size_t t = 0; t < n_tables; ++t) {
      bool found = false;
      int64_t stored = 0;
      st = cache.StoredTtl(txn, plan.tables[t].table.name, &stored, &found);
      if (!st.ok()) {
        cache.ReleaseReader(reader);
        return st;
      }
      max_age_us[t] = found ? stored : plan.tables[t].max_age_us;
    }
    if (cached != nullptr) {
      for (size_t t = 0; t < n_tables; ++t) cached->max_age_us[t].store(max_age_us[t], std::memory_order_relaxed);
      cached->txn_id.store(snapshot, std::memory_order_release);
    }
  }

  char digits[24];
  for (size_t t = 0; t < n_tables; ++t) {
    const JoinTable& table = plan.tables[t];
    const int64_t max_age = max_age_us[t];
    const RowLayout layout(table.table.n_features);
    const JoinKeys& key_input = keys[table.key_input];
    const std::vector<size_t>& cols = table_columns[t];
    for (size_t i = 0; i < rows; ++i) {
      MDB_val key;
      if (key_input.ids != nullptr) {
        // Integer ids are stored under their decimal text (fastml.features.offline.key_strings).
        auto res = std::to_chars(digits, digits + sizeof digits, key_input.ids[i]);
        key = MDB_val{size_t(res.ptr - digits), digits};
      } else {
        key = MDB_val{key_input.views[i].size, const_cast<char*>(key_input.views[i].data)};
      }
      MDB_val val;
      // Keys outside 1..511 bytes can never have been stored (PutMany refuses them): missing.
      int rc = (key.mv_size == 0 || key.mv_size > 511) ? MDB_NOTFOUND : mdb_get(txn, table.table.dbi, &key, &val);
      RowState state = RowState::kHit;
      const char* row = nullptr;
      if (rc == MDB_NOTFOUND) {
        state = RowState::kMissing;
      } else if (rc != MDB_SUCCESS) {
        cache.ReleaseReader(reader);
        return MdbError(rc, "mdb_get(" + table.table.name + ")");
      } else {
        row = static_cast<const char*>(val.mv_data);
        uint32_t stored_width;
        std::memcpy(&stored_width, row + 8, sizeof stored_width);
        if (val.mv_size != layout.row_bytes || stored_width != table.table.n_features) {
          cache.ReleaseReader(reader);
          return CacheStatus::Error(StatusCode::kIntegrity, "online table '" + table.table.name + "': stored row of " +
                                                                 std::to_string(val.mv_size) + " bytes, expected " +
                                                                 std::to_string(layout.row_bytes));
        }
        int64_t event_time_us;
        std::memcpy(&event_time_us, row, sizeof event_time_us);
        if (max_age > 0 && now_us - event_time_us > max_age) state = RowState::kStale;
      }
      // Values are copied out of LMDB's page here, while the transaction is open.
      const unsigned char* bitmap =
          row != nullptr ? reinterpret_cast<const unsigned char*>(row + RowLayout::kHeaderBytes) : nullptr;
      const char* values = row != nullptr ? row + RowLayout::kHeaderBytes + layout.bitmap_bytes : nullptr;
      float* o = out + i * width;
      for (size_t c : cols) {
        const JoinColumn& col = plan.columns[c];
        const uint32_t j = col.position;
        if (state == RowState::kHit && ((bitmap[j >> 3] >> (j & 7)) & 1u)) {
          double v;
          std::memcpy(&v, values + size_t(j) * sizeof(double), sizeof v);
          o[c] = static_cast<float>(v);
          continue;
        }
        const bool stale = state == RowState::kStale;
        ++(stale ? result->stale : result->missing)[c];
        switch (col.policy) {
          case MissingPolicy::kNaN:
            o[c] = nan;
            break;
          case MissingPolicy::kDefault:
            o[c] = col.default_value;
            break;
          case MissingPolicy::kError:
            o[c] = nan;
            if (result->error_row < 0 || int64_t(i) < result->error_row ||
                (int64_t(i) == result->error_row && int32_t(c) < result->error_column)) {
              result->error_row = int64_t(i);
              result->error_column = int32_t(c);
              result->error_stale = stale;
            }
            break;
        }
      }
    }
  }
  cache.ReleaseReader(reader);
  return CacheStatus::Ok();
}

}  // namespace fastml
