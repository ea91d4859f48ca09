// LMDB-backed online feature cache (ARCHITECTURE.md "Feature cache").
//
// One LMDB environment per cache; one named database ("table") per feature group version. Each entity
// key maps to one fixed-width row:
//
//   offset 0   int64   event_time_us      event time of the values, microseconds since the Unix epoch
//   offset 8   uint32  n_features         must equal the table's width (checked on every read)
//   offset 12  uint32  reserved (0)
//   offset 16  uint8   presence bitmap    bit i set = feature i has a value; padded to a multiple of 8
//   then       float64 values[n_features] NaN where absent
//
// One reserved table, "__fastml_ttl__", holds each group version's current TTL, so a change made in place
// (re-registering the group, from any process) reaches readers that built their plan before it (the serving
// join reads it once per new snapshot, see StoredTtl): key = the group version's table name, row = the layout
// above with two features, the TTL in microseconds split into its high and low 32 bits (each exact as a
// double; 0 = never expires), and event_time_us = the revision (the metadata's update time), so a re-sync
// never replaces a newer TTL with an older one.
//
// All integers are little-endian (the host order on every platform we build for). Writers use one
// write transaction per PutMany and never replace a row with one whose event time is older; readers
// use one read transaction per GetMany (pooled: see AcquireReader) and copy out of LMDB's pages before
// releasing it, so a reader sees a whole committed row or none (LMDB's MVCC), never a torn one, and
// always the latest committed write.
//
// Nothing here touches Python; csrc/bindings.cc converts arguments and releases the GIL around calls.
#pragma once

#include <lmdb.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "status.h"

namespace fastml {

// Outcomes are the core's one Status (status.h): kInvalidInput (width mismatch, bad name), kNotFound (no
// such table), kOverloaded (LMDB map or reader table full), kIntegrity (a stored row without the table's
// layout), kUnavailable (used from a process that did not open it), kInternal (any other LMDB / OS failure).
using CacheStatus = Status;

// A borrowed byte string (an encoded entity key); the caller keeps the bytes alive for the call.
struct KeyView {
  const char* data;
  size_t size;
};

// Byte layout of one row for a given width.
struct RowLayout {
  static constexpr size_t kHeaderBytes = 16;
  uint32_t n_features = 0;
  size_t bitmap_bytes = 0;  // ceil(n/8) rounded up to 8 so the values stay 8-byte aligned in the row
  size_t row_bytes = 0;

  explicit RowLayout(uint32_t n);
};

// An opened table. The dbi handle is valid for the life of the environment.
struct TableInfo {
  MDB_dbi dbi = 0;
  uint32_t n_features = 0;
  std::string name;
};

// One group version's share of a lookup: which of its features go to which output columns.
struct ReadSpec {
  TableInfo table;
  std::vector<uint32_t> feature_index;  // row positions of the selected features, in output order
  uint32_t out_column = 0;              // output column of feature_index[0]; the rest follow
  uint32_t key_set = 0;                 // which key list (of GetMany's key_sets) addresses this table
  int64_t max_age_us = 0;               // TTL: rows older than now - max_age_us read as absent; 0 = none
};

// A read transaction lent by AcquireReader: its snapshot is the latest committed one at the time of the
// Acquire, and it can use every table opened before then.
struct ReadTxn {
  MDB_txn* txn = nullptr;
  uint64_t tables_generation = 0;  // FeatureCache's table generation when the snapshot was taken
};

struct PutResult {
  size_t written = 0;        // rows inserted or replaced
  size_t skipped_older = 0;  // rows not written because the stored row has a newer event time
};

class FeatureCache {
 public:
  struct Options {
    size_t map_size_bytes = size_t(32) << 30;  // address space reserved, not disk used
    unsigned max_readers = 1024;               // concurrent read transactions across processes
    unsigned max_tables = 4096;                // named databases (group versions)
    bool sync = true;                          // fsync on commit (durable across power loss)
  };

  // Opens (creating if needed) the environment in directory `path`, which must exist.
  static CacheStatus Open(const std::string& path, const Options& options, std::unique_ptr<FeatureCache>* out);
  // Closes the environment, but only in the process that opened it: LMDB forbids using or closing an
  // environment a forked child inherited (closing it would free the parent's reader slots), so a child
  // leaves it alone and opens its own.
  ~FeatureCache();
  FeatureCache(const FeatureCache&) = delete;
  FeatureCache& operator=(const FeatureCache&) = delete;

  // Opens or creates the table `name` with rows of `n_features` values; an existing table must have
  // been created with the same width.
  CacheStatus OpenTable(const std::string& name, uint32_t n_features, TableInfo* out);

  // Writes n rows in one write transaction. values and present are row-major [n, n_features];
  // a row replaces the stored one only if its event time is >= the stored event time (equal times:
  // the later write wins, which makes re-materialisation idempotent).
  CacheStatus PutMany(const TableInfo& table, const KeyView* keys, size_t n, const double* values,
                      const uint8_t* present, const int64_t* event_time_us, PutResult* result);

  // Reads n_keys entities for every spec in one read transaction. Outputs are row-major
  // [n_keys, out_columns]: out (NaN where absent), present (0/1) and event_time_us (0 where no row);
  // present and event_time_us may be nullptr when the caller does not want them.
  // key_sets[s][i] is entity i's key for specs whose key_set == s.
  template <typename T>
  CacheStatus GetMany(const std::vector<ReadSpec>& specs, const std::vector<const KeyView*>& key_sets,
                      size_t n_keys, size_t out_columns, T* out, uint8_t* present, int64_t* event_time_us,
                      int64_t now_us) const;

  // Number of rows stored in the table (one read transaction).
  CacheStatus Count(const TableInfo& table, size_t* n) const;

  // The reader table of the lock file, as (pid, txnid) per used slot (txnid -1: a pooled reader whose snapshot
  // was reset; a pooled one kept open between reads shows its snapshot's txnid).
  CacheStatus Readers(std::vector<std::pair<int64_t, int64_t>>* out) const;

  // Up to `limit` stored keys of the table, in key order (one read transaction): what a loader samples to
  // tell integer-keyed groups (decimal text) from string-keyed ones.
  CacheStatus SampleKeys(const TableInfo& table, size_t limit, std::vector<std::string>* out) const;

  // Read transactions are pooled and stay open between reads: a lent one is used as it is while no write
  // has committed since its snapshot was taken (and no table was opened since), else it is renewed first
  // (mdb_txn_reset + mdb_txn_renew). So a read always sees the latest committed write, as a new transaction
  // would, but a serving process that reads far more often than the store is written skips the renewal
  // and the per-transaction lookup of each named table (LMDB marks every table stale on renew). A pooled
  // transaction left unused for kIdleResetMs is reset by a reaper thread, so an idle process never pins
  // pages a writer freed after its snapshot (they could not be reused and the file would grow).
  // MDB_NOTLS lets any thread use any of them, one at a time. Public for the core's other readers
  // (feature_join.cc): every Acquire is paired with one Release, and no pointer into LMDB's pages outlives it.
  static constexpr int kIdleResetMs = 50;
  CacheStatus AcquireReader(ReadTxn* out) const;
  void ReleaseReader(const ReadTxn& txn) const;

  // The TTL stored for `table_name` in the reserved TTL table, read in `txn` (a transaction lent by
  // AcquireReader): *found is false when none was stored (a store materialised before TTLs were kept here),
  // and the caller keeps the TTL it was built with. kIntegrity for a row without the TTL layout.
  static constexpr const char* kTtlTable = "__fastml_ttl__";
  CacheStatus StoredTtl(MDB_txn* txn, const std::string& table_name, int64_t* ttl_us, bool* found) const;

  const std::string& path() const { return path_; }
  pid_t owner_pid() const { return owner_pid_; }

 private:
  FeatureCache(MDB_env* env, std::string path);

  // Unavailable when called from another process than the one that opened the environment (a fork).
  CacheStatus CheckOwner() const;

  MDB_env* env_;
  std::string path_;
  const pid_t owner_pid_;  // the process that opened env_; immutable
  MDB_dbi meta_dbi_ = 0;  // "__fastml_tables__": table name -> uint32 width
  MDB_dbi ttl_dbi_ = 0;   // kTtlTable: table name -> TTL row (opened with the environment)

  std::mutex open_mutex_;  // guards tables_ and serialises mdb_dbi_open (LMDB requires it)
  std::unordered_map<std::string, TableInfo> tables_;

  // The id of the latest committed write transaction (read from the meta pages: no lock, no syscall).
  size_t LatestTxnId() const;
  // The reaper thread's loop: resets pooled transactions idle for kIdleResetMs, sleeps while none is open.
  void ResetIdleReaders() const;

  // Bumped after every OpenTable that opened a handle: a transaction whose snapshot predates it cannot
  // use that handle (LMDB sizes a transaction's table array when it begins or is renewed).
  std::atomic<uint64_t> tables_generation_{0};

  struct PooledReader {
    MDB_txn* txn = nullptr;
    bool open = false;               // holds a snapshot (a reader slot with a txnid); false once reset
    uint64_t tables_generation = 0;  // see ReadTxn
    std::chrono::steady_clock::time_point last_used;
  };
  mutable std::mutex readers_mutex_;  // guards every member below
  mutable std::vector<PooledReader> idle_readers_;  // lent LIFO: the most recently used (warmest) first
  mutable std::condition_variable reaper_wake_;
  mutable std::thread* reaper_ = nullptr;  // started by the first Release; leaked in a forked child
  mutable bool reaper_sleeping_ = false;   // waiting with no deadline (no open pooled transaction)
  mutable bool reaper_stop_ = false;
};

}  // namespace fastml
