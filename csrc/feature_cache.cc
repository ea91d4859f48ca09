#include "feature_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>

#include <pthread.h>
#include <unistd.h>

namespace fastml {

namespace {

constexpr const char* kMetaTable = "__fastml_tables__";
constexpr uint32_t kTtlWidth = 2;  // a TTL row's values: the TTL's high and low 32 bits

CacheStatus FromMdb(int rc, const std::string& what) {
  if (rc == MDB_SUCCESS) return CacheStatus::Ok();
  if (rc == MDB_MAP_FULL) {
    return CacheStatus::Error(StatusCode::kOverloaded,
                              what + ": the online store's LMDB map is full; open it with a larger map_size_bytes");
  }
  if (rc == MDB_READERS_FULL) {
    return CacheStatus::Error(StatusCode::kOverloaded, what + ": all LMDB reader slots are taken; raise max_readers");
  }
  return CacheStatus::Error(StatusCode::kInternal, what + ": " + mdb_strerror(rc));
}

// Aborts a transaction on scope exit unless released (commit paths release it first).
struct TxnGuard {
  MDB_txn* txn = nullptr;
  ~TxnGuard() {
    if (txn != nullptr) mdb_txn_abort(txn);
  }
};

inline int64_t LoadI64(const char* p) {
  int64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint32_t LoadU32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline double LoadF64(const char* p) {
  double v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// getpid() is a system call (glibc no longer caches it) and every read checks the owner: cache the pid,
// refreshed in a forked child by an atfork handler (registered once, before the first use).
std::atomic<pid_t> g_pid{0};

void RefreshPid() { g_pid.store(getpid(), std::memory_order_relaxed); }

pid_t CurrentPid() {
  static const bool registered = [] {
    RefreshPid();
    pthread_atfork(nullptr, nullptr, RefreshPid);
    return true;
  }();
  (void)registered;
  return g_pid.load(std::memory_order_relaxed);
}

}  // namespace

RowLayout::RowLayout(uint32_t n) : n_features(n) {
  bitmap_bytes = ((size_t(n) + 7) / 8 + 7) / 8 * 8;
  row_bytes = kHeaderBytes + bitmap_bytes + size_t(n) * sizeof(double);
}

CacheStatus FeatureCache::Open(const std::string& path, const Options& options, std::unique_ptr<FeatureCache>* out) {
  MDB_env* env = nullptr;
  int rc = mdb_env_create(&env);
  if (rc != MDB_SUCCESS) return FromMdb(rc, "mdb_env_create");
  auto fail = [&](int code, const char* what) {
    mdb_env_close(env);
    return FromMdb(code, std::string(what) + " (" + path + ")");
  };
  if ((rc = mdb_env_set_mapsize(env, options.map_size_bytes)) != MDB_SUCCESS) return fail(rc, "mdb_env_set_mapsize");
  if ((rc = mdb_env_set_maxreaders(env, options.max_readers)) != MDB_SUCCESS) return fail(rc, "mdb_env_set_maxreaders");
  // + 2: the reserved tables (kMetaTable, kTtlTable) do not count against the group versions' max_tables.
  if ((rc = mdb_env_set_maxdbs(env, options.max_tables + 2)) != MDB_SUCCESS) return fail(rc, "mdb_env_set_maxdbs");
  // MDB_NOTLS: read transactions are not bound to a thread, so pooled ones can be renewed anywhere.
  // MDB_NORDAHEAD: lookups are random point reads; read-ahead only pollutes the page cache.
  unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (options.sync ? 0u : unsigned(MDB_NOSYNC));
  if ((rc = mdb_env_open(env, path.c_str(), flags, 0664)) != MDB_SUCCESS) return fail(rc, "mdb_env_open");
  // A process killed while reading leaves its reader slot behind; reclaim such slots now.
  int dead = 0;
  mdb_reader_check(env, &dead);

  std::unique_ptr<FeatureCache> cache(new FeatureCache(env, path));
  MDB_txn* txn = nullptr;
  if ((rc = mdb_txn_begin(env, nullptr, 0, &txn)) != MDB_SUCCESS) return FromMdb(rc, "mdb_txn_begin");
  if ((rc = mdb_dbi_open(txn, kMetaTable, MDB_CREATE, &cache->meta_dbi_)) != MDB_SUCCESS) {
    mdb_txn_abort(txn);
    return FromMdb(rc, "mdb_dbi_open(meta)");
  }
  // The TTL table is opened here, before any reader exists, so every read transaction can use its handle;
  // its width is recorded like any table's, so open_table(kTtlTable, 2) (how writers reach it) agrees.
  {
    const uint32_t width = kTtlWidth;
    MDB_val name{std::strlen(kTtlTable), const_cast<char*>(kTtlTable)};
    MDB_val stored;
    rc = mdb_get(txn, cache->meta_dbi_, &name, &stored);
    if (rc == MDB_NOTFOUND) {
      MDB_val value{sizeof width, const_cast<uint32_t*>(&width)};
      rc = mdb_put(txn, cache->meta_dbi_, &name, &value, 0);
    }
    if (rc == MDB_SUCCESS) rc = mdb_dbi_open(txn, kTtlTable, MDB_CREATE, &cache->ttl_dbi_);
    if (rc != MDB_SUCCESS) {
      mdb_txn_abort(txn);
      return FromMdb(rc, std::string("open ") + kTtlTable);
    }
  }
  if ((rc = mdb_txn_commit(txn)) != MDB_SUCCESS) return FromMdb(rc, "mdb_txn_commit(meta)");
  *out = std::move(cache);
  return CacheStatus::Ok();
}

FeatureCache::FeatureCache(MDB_env* env, std::string path)
    : env_(env), path_(std::move(path)), owner_pid_(CurrentPid()) {}

FeatureCache::~FeatureCache() {
  // In a forked child the environment, its pooled read transactions and their reader slots belong to the
  // parent: aborting them would free the parent's slots in the shared lock file. Leak them instead (and the
  // reaper's std::thread, whose thread does not exist in the child: joining it there would hang).
  if (CurrentPid() != owner_pid_) return;
  std::thread* reaper = nullptr;
  {
    std::lock_guard<std::mutex> lock(readers_mutex_);
    reaper_stop_ = true;
    reaper = reaper_;
    reaper_ = nullptr;
  }
  if (reaper != nullptr) {
    reaper_wake_.notify_all();
    reaper->join();
    delete reaper;
  }
  for (PooledReader& r : idle_readers_) mdb_txn_abort(r.txn);
  idle_readers_.clear();
  mdb_env_close(env_);
}

CacheStatus FeatureCache::CheckOwner() const {
  const pid_t me = CurrentPid();
  if (me == owner_pid_) return CacheStatus::Ok();
  return CacheStatus::Error(StatusCode::kUnavailable,
                            "the online store at " + path_ + " was opened by process " + std::to_string(owner_pid_) +
                                "; this process (" + std::to_string(me) +
                                ", a fork) must open it again (LMDB environments do not survive fork)");
}

CacheStatus FeatureCache::Readers(std::vector<std::pair<int64_t, int64_t>>* out) const {
  CacheStatus st = CheckOwner();
  if (!st.ok()) return st;
  out->clear();
  // mdb_reader_list prints one line per used slot ("pid thread txnid", txnid "-" when idle) after a header.
  auto collect = [](const char* msg, void* ctx) -> int {
    auto* rows = static_cast<std::vector<std::pair<int64_t, int64_t>>*>(ctx);
    std::istringstream line(msg);
    std::string pid, thread, txnid;
    if (!(line >> pid >> thread >> txnid) || pid == "pid") return 0;
    char* end = nullptr;
    const long long p = std::strtoll(pid.c_str(), &end, 10);
    if (end == pid.c_str()) return 0;  // "(no active readers)"
    rows->emplace_back(p, txnid == "-" ? int64_t(-1) : int64_t(std::strtoll(txnid.c_str(), nullptr, 10)));
    return 0;
  };
  int rc = mdb_reader_list(env_, collect, out);
  if (rc < 0) return FromMdb(rc, "mdb_reader_list");
  return CacheStatus::Ok();
}

CacheStatus FeatureCache::OpenTable(const std::string& name, uint32_t n_features, TableInfo* out) {
  if (CacheStatus st = CheckOwner(); !st.ok()) return st;
  if (name.empty() || name == kMetaTable || name.size() > 400) {
    return CacheStatus::Error(StatusCode::kInvalidInput, "invalid online table name '" + name + "'");
  }
  if (n_features == 0) {
    return CacheStatus::Error(StatusCode::kInvalidInput, "online table '" + name + "' must have at least one feature");
  }
  std::lock_guard<std::mutex> lock(open_mutex_);
  auto it = tables_.find(name);
  if (it != tables_.end()) {
    if (it->second.n_features != n_features) {
      return CacheStatus::Error(StatusCode::kInvalidInput, "online table '" + name + "' has " +
                                                         std::to_string(it->second.n_features) + " features, not " +
                                                         std::to_string(n_features));
    }
    *out = it->second;
    return CacheStatus::Ok();
  }
  TxnGuard guard;
  int rc = mdb_txn_begin(env_, nullptr, 0, &guard.txn);
  if (rc != MDB_SUCCESS) return FromMdb(rc, "mdb_txn_begin(open table)");
  MDB_val key{name.size(), const_cast<char*>(name.data())};
  MDB_val val;
  rc = mdb_get(guard.txn, meta_dbi_, &key, &val);
  if (rc == MDB_SUCCESS) {
    uint32_t stored = val.mv_size == sizeof(uint32_t) ? LoadU32(static_cast<const char*>(val.mv_data)) : 0;
    if (stored != n_features) {
      return CacheStatus::Error(StatusCode::kInvalidInput, "online table '" + name + "' was created with " +
                                                         std::to_string(stored) + " features, not " +
                                                         std::to_string(n_features));
    }
  } else if (rc == MDB_NOTFOUND) {
    MDB_val width{sizeof n_features, &n_features};
    if ((rc = mdb_put(guard.txn, meta_dbi_, &key, &width, 0)) != MDB_SUCCESS) return FromMdb(rc, "mdb_put(meta)");
  } else {
    return FromMdb(rc, "mdb_get(meta)");
  }
  TableInfo info;
  info.name = name;
  info.n_features = n_features;
  if ((rc = mdb_dbi_open(guard.txn, name.c_str(), MDB_CREATE, &info.dbi)) != MDB_SUCCESS) {
    return FromMdb(rc, "mdb_dbi_open(" + name + ")");
  }
  rc = mdb_txn_commit(guard.txn);
  guard.txn = nullptr;  // commit frees the transaction whatever it returns
  if (rc != MDB_SUCCESS) return FromMdb(rc, "mdb_txn_commit(open table)");
  // Pooled read transactions predate the handle: the next Acquire of each renews it. (A commit that wrote
  // nothing, opening a table another process created, does not advance the txnid Acquire compares.)
  tables_generation_.fetch_add(1, std::memory_order_release);
  tables_.emplace(name, info);
  *out = info;
  return CacheStatus::Ok();
}

CacheStatus FeatureCache::PutMany(const TableInfo& table, const KeyView* keys, size_t n, const double* values,
                                  const uint8_t* present, const int64_t* event_time_us, PutResult* result) {
  if (CacheStatus st = CheckOwner(); !st.ok()) return st;
  const RowLayout layout(table.n_features);
  const size_t width = table.n_features;
  *result = PutResult{};
  for (size_t i = 0; i < n; ++i) {
    if (keys[i].size == 0 || keys[i].size > 511) {  // 511: LMDB's default maximum key size
      return CacheStatus::Error(StatusCode::kInvalidInput,
                                "entity key at row " + std::to_string(i) + " must be 1..511 bytes, got " +
                                    std::to_string(keys[i].size));
    }
  }
  // Writing in key order touches each B-tree page once instead of randomly; stable so that, for a key
  // repeated in the batch with equal event times, the later row still wins.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [keys](size_t a, size_t b) {
    const KeyView& x = keys[a];
    const KeyView& y = keys[b];
    int c = std::memcmp(x.data, y.data, std::min(x.size, y.size));
    return c != 0 ? c < 0 : x.size < y.size;
  });

  TxnGuard guard;
  int rc = mdb_txn_begin(env_, nullptr, 0, &guard.txn);
  if (rc != MDB_SUCCESS) return FromMdb(rc, "mdb_txn_begin(put)");
  MDB_cursor* cursor = nullptr;
  if ((rc = mdb_cursor_open(guard.txn, table.dbi, &cursor)) != MDB_SUCCESS) return FromMdb(rc, "mdb_cursor_open");
  PutResult counts;
  for (size_t i : order) {
    MDB_val key{keys[i].size, const_cast<char*>(keys[i].data)};
    MDB_val val;
    rc = mdb_cursor_get(cursor, &key, &val, MDB_SET_KEY);
    if (rc == MDB_SUCCESS) {
      if (val.mv_size >= sizeof(int64_t) && LoadI64(static_cast<const char*>(val.mv_data)) > event_time_us[i]) {
        ++counts.skipped_older;
        continue;
      }
    } else if (rc != MDB_NOTFOUND) {
      mdb_cursor_close(cursor);
      return FromMdb(rc, "mdb_cursor_get(put)");
    }
    // MDB_RESERVE: LMDB hands back the row's space and we fill it in place (no staging copy).
    MDB_val out{layout.row_bytes, nullptr};
    key = MDB_val{keys[i].size, const_cast<char*>(keys[i].data)};
    if ((rc = mdb_cursor_put(cursor, &key, &out, MDB_RESERVE)) != MDB_SUCCESS) {
      mdb_cursor_close(cursor);
      return FromMdb(rc, "mdb_cursor_put");
    }
    char* row = static_cast<char*>(out.mv_data);
    std::memset(row, 0, RowLayout::kHeaderBytes + layout.bitmap_bytes);
    std::memcpy(row, &event_time_us[i], sizeof(int64_t));
    std::memcpy(row + 8, &table.n_features, sizeof(uint32_t));
    unsigned char* bitmap = reinterpret_cast<unsigned char*>(row + RowLayout::kHeaderBytes);
    char* vals = row + RowLayout::kHeaderBytes + layout.bitmap_bytes;
    const double* src = values + i * width;
    const uint8_t* has = present + i * width;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (size_t j = 0; j < width; ++j) {
      double v = has[j] ? src[j] : nan;
      if (has[j]) bitmap[j >> 3] |= static_cast<unsigned char>(1u << (j & 7));
      std::memcpy(vals + j * sizeof(double), &v, sizeof v);
    }
    ++counts.written;
  }
  mdb_cursor_close(cursor);
  rc = mdb_txn_commit(guard.txn);
  guard.txn = nullptr;
  if (rc != MDB_SUCCESS) return FromMdb(rc, "mdb_txn_commit(put)");
  *result = counts;
  return CacheStatus::Ok();
}

size_t FeatureCache::LatestTxnId() const {
  MDB_envinfo info;
  mdb_env_info(env_, &info);  // picks the newer of the two meta pages of the mapped file
  return info.me_last_txnid;
}

CacheStatus FeatureCache::AcquireReader(ReadTxn* out) const {
  // Every read (GetMany, Count, JoinFeatures) starts here: refuse an environment inherited over fork.
  if (CacheStatus st = CheckOwner(); !st.ok()) return st;
  // Read before the snapshot is taken: a table opened meanwhile makes the next Acquire renew (conservative).
  const uint64_t generation = tables_generation_.load(std::memory_order_acquire);
  PooledReader reused;
  {
    std::lock_guard<std::mutex> lock(readers_mutex_);
    if (!idle_readers_.empty()) {
      reused = idle_readers_.back();
      idle_readers_.pop_back();
    }
  }
  if (reused.txn != nullptr) {
    if (reused.open && reused.tables_generation == generation && mdb_txn_id(reused.txn) == LatestTxnId()) {
      // Nothing committed since this snapshot: it is what a new transaction would see.
      *out = ReadTxn{reused.txn, reused.tables_generation};
      return CacheStatus::Ok();
    }
    if (reused.open) mdb_txn_reset(reused.txn);
    int rc = mdb_txn_renew(reused.txn);
    if (rc == MDB_SUCCESS) {
      *out = ReadTxn{reused.txn, generation};
      return CacheStatus::Ok();
    }
    mdb_txn_abort(reused.txn);
  }
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
  if (rc != MDB_SUCCESS) return FromMdb(rc, "mdb_txn_begin(read)");
  *out = ReadTxn{txn, generation};
  return CacheStatus::Ok();
}

void FeatureCache::ReleaseReader(const ReadTxn& txn) const {
  // Pooled still open (see AcquireReader); the reaper resets it if it stays unused.
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(readers_mutex_);
  if (idle_readers_.size() >= 64 || reaper_stop_) {
    mdb_txn_abort(txn.txn);
    return;
  }
  idle_readers_.push_back(PooledReader{txn.txn, true, txn.tables_generation, now});
  if (reaper_ == nullptr) {
    reaper_ = new std::thread([this] { ResetIdleReaders(); });
  } else if (reaper_sleeping_) {
    // Only on the way out of an idle period: while a snapshot is open the reaper wakes by its own deadline,
    // so a busy process pays no wake-up per read.
    reaper_sleeping_ = false;
    reaper_wake_.notify_one();
  }
}

void FeatureCache::ResetIdleReaders() const {
  const auto idle = std::chrono::milliseconds(kIdleResetMs);
  std::unique_lock<std::mutex> lock(readers_mutex_);
  while (!reaper_stop_) {
    const auto now = std::chrono::steady_clock::now();
    auto next = std::chrono::steady_clock::time_point::max();
    for (PooledReader& r : idle_readers_) {
      if (!r.open) continue;
      if (now - r.last_used >= idle) {
        mdb_txn_reset(r.txn);  // ends the snapshot, keeps the handle and its reader slot for renewal
        r.open = false;
      } else {
        next = std::min(next, r.last_used + idle);
      }
    }
    if (next == std::chrono::steady_clock::time_point::max()) {
      reaper_sleeping_ = true;
      reaper_wake_.wait(lock, [this] { return reaper_stop_ || !reaper_sleeping_; });
    } else {
      reaper_wake_.wait_until(lock, next);
    }
  }
}

template <typename T>
CacheStatus FeatureCache::GetMany(const std::vector<ReadSpec>& specs, const std::vector<const KeyView*>& key_sets,
                                  size_t n_keys, size_t out_columns, T* out, uint8_t* present, int64_t* event_time_us,
                                  int64_t now_us) const {
  ReadTxn reader;
  CacheStatus st = AcquireReader(&reader);
  if (!st.ok()) return st;
  MDB_txn* const txn = reader.txn;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (const ReadSpec& spec : specs) {
    const RowLayout layout(spec.table.n_features);
    const KeyView* keys = key_sets[spec.key_set];
    const size_t n_sel = spec.feature_index.size();
    const uint32_t* sel = spec.feature_index.data();
    for (size_t i = 0; i < n_keys; ++i) {
      T* o = out + i * out_columns + spec.out_column;
      // present and event_time_us are optional (nullptr): the serving hook asks only for values.
      uint8_t* p = present != nullptr ? present + i * out_columns + spec.out_column : nullptr;
      int64_t* t = event_time_us != nullptr ? event_time_us + i * out_columns + spec.out_column : nullptr;
      MDB_val key{keys[i].size, const_cast<char*>(keys[i].data)};
      MDB_val val;
      // Keys outside 1..511 bytes can never have been stored (PutMany refuses them): not found.
      int rc = (keys[i].size == 0 || keys[i].size > 511) ? MDB_NOTFOUND : mdb_get(txn, spec.table.dbi, &key, &val);
      if (rc == MDB_NOTFOUND) {
        for (size_t k = 0; k < n_sel; ++k) o[k] = nan;
        if (p != nullptr) std::memset(p, 0, n_sel);
        if (t != nullptr) std::fill(t, t + n_sel, int64_t(0));
        continue;
      }
      if (rc != MDB_SUCCESS) {
        ReleaseReader(reader);
        return FromMdb(rc, "mdb_get(" + spec.table.name + ")");
      }
      // The row is copied out below while the transaction is open; no pointer into it survives.
      const char* row = static_cast<const char*>(val.mv_data);
      if (val.mv_size != layout.row_bytes || LoadU32(row + 8) != spec.table.n_features) {
        ReleaseReader(reader);
        return CacheStatus::Error(StatusCode::kIntegrity, "online table '" + spec.table.name + "': stored row of " +
                                                           std::to_string(val.mv_size) + " bytes, expected " +
                                                           std::to_string(layout.row_bytes));
      }
      const int64_t et = LoadI64(row);
      const bool expired = spec.max_age_us > 0 && now_us - et > spec.max_age_us;
      const unsigned char* bitmap = reinterpret_cast<const unsigned char*>(row + RowLayout::kHeaderBytes);
      const char* vals = row + RowLayout::kHeaderBytes + layout.bitmap_bytes;
      for (size_t k = 0; k < n_sel; ++k) {
        const uint32_t j = sel[k];
        const bool has = !expired && ((bitmap[j >> 3] >> (j & 7)) & 1u);
        o[k] = has ? static_cast<T>(LoadF64(vals + size_t(j) * sizeof(double))) : nan;
        if (p != nullptr) p[k] = has ? 1 : 0;
      }
      if (t != nullptr) std::fill(t, t + n_sel, et);
    }
  }
  ReleaseReader(reader);
  return CacheStatus::Ok();
}

template CacheStatus FeatureCache::GetMany<float>(const std::vector<ReadSpec>&, const std::vector<const KeyView*>&,
                                                  size_t, size_t, float*, uint8_t*, int64_t*, int64_t) const;
template CacheStatus FeatureCache::GetMany<double>(const std::vector<ReadSpec>&, const std::vector<const KeyView*>&,
                                                   size_t, size_t, double*, uint8_t*, int64_t*, int64_t) const;

CacheStatus FeatureCache::StoredTtl(MDB_txn* txn, const std::string& table_name, int64_t* ttl_us,
                                    bool* found) const {
  *found = false;
  MDB_val key{table_name.size(), const_cast<char*>(table_name.data())};
  MDB_val val;
  const int rc = mdb_get(txn, ttl_dbi_, &key, &val);
  if (rc == MDB_NOTFOUND) return CacheStatus::Ok();
  if (rc != MDB_SUCCESS) return FromMdb(rc, std::string("mdb_get(") + kTtlTable + ")");
  static const RowLayout layout(kTtlWidth);
  const char* row = static_cast<const char*>(val.mv_data);
  const char* vals = row + RowLayout::kHeaderBytes + layout.bitmap_bytes;
  const double hi = val.mv_size == layout.row_bytes ? LoadF64(vals) : -1.0;
  const double lo = val.mv_size == layout.row_bytes ? LoadF64(vals + sizeof(double)) : -1.0;
  // Each half is a whole number in [0, 2^32) (hi below 2^31: a TTL is a non-negative int64); anything else
  // was not written by OnlineStore.write_ttl.
  if (!(hi >= 0.0 && hi < 2147483648.0 && lo >= 0.0 && lo < 4294967296.0) || hi != std::floor(hi) ||
      lo != std::floor(lo)) {
    return CacheStatus::Error(StatusCode::kIntegrity, std::string("online table '") + kTtlTable +
                                                          "': the TTL row of '" + table_name + "' is not a TTL");
  }
  *ttl_us = int64_t((uint64_t(hi) << 32) | uint64_t(lo));
  *found = true;
  return CacheStatus::Ok();
}

CacheStatus FeatureCache::Count(const TableInfo& table, size_t* n) const {
  ReadTxn reader;
  CacheStatus st = AcquireReader(&reader);
  if (!st.ok()) return st;
  MDB_txn* const txn = reader.txn;
  MDB_stat stat;
  int rc = mdb_stat(txn, table.dbi, &stat);
  ReleaseReader(reader);
  if (rc != MDB_SUCCESS) return FromMdb(rc, "mdb_stat(" + table.name + ")");
  *n = stat.ms_entries;
  return CacheStatus::Ok();
}

CacheStatus FeatureCache::SampleKeys(const TableInfo& table, size_t limit, std::vector<std::string>* out) const {
  out->clear();
  ReadTxn reader;
  CacheStatus st = AcquireReader(&reader);
  if (!st.ok()) return st;
  MDB_txn* const txn = reader.txn;
  MDB_cursor* cursor = nullptr;
  int rc = mdb_cursor_open(txn, table.dbi, &cursor);
  if (rc != MDB_SUCCESS) {
    ReleaseReader(reader);
    return FromMdb(rc, "mdb_cursor_open(" + table.name + ")");
  }
  MDB_val key, val;
  // Keys are copied out before the transaction ends.
  for (rc = mdb_cursor_get(cursor, &key, &val, MDB_FIRST); rc == MDB_SUCCESS && out->size() < limit;
       rc = mdb_cursor_get(cursor, &key, &val, MDB_NEXT)) {
    out->emplace_back(static_cast<const char*>(key.mv_data), key.mv_size);
  }
  mdb_cursor_close(cursor);
  ReleaseReader(reader);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return FromMdb(rc, "mdb_cursor_get(" + table.name + ")");
  return CacheStatus::Ok();
}

}  // namespace fastml
