// Traffic router: picks the variant of a deployment that answers a request, and which shadows get a copy.
//
// A router has a fixed list of variants (primary candidates) and shadows (mirrors). Weights are integer
// basis points that sum to kBuckets (10,000); each shadow has its own mirror share in basis points.
//
// One decision per request:
//   * with a routing key: h = XXH64(key bytes, seed 0) (xxHash64, the published algorithm, implemented in
//     router.cc); the key's bucket is h % 10000 and its variant is the one whose cumulative weight range
//     [cum[i-1], cum[i]) holds the bucket. The same key lands on the same variant in every process and
//     after restarts, and moves only when its bucket's owner changes (raising variant B from 10 % to 20 %
//     moves buckets 8000..8999 of a two-variant split, nothing else). Shadows are decided from a second,
//     independent bucket: SplitMix64's finaliser applied to h, modulo 10000; shadow s mirrors the request
//     when that bucket < shadow_bp[s]. Any language reproduces both with xxHash64 and SplitMix64
//     (src/fastml/serving/router_reference.py is the pure-Python reference).
//   * without a key (or with an empty one: a client that sends "" for users it does not know must not pin all of
//     them to one variant): the bucket comes from a per-thread xoshiro256** generator (seeded from
//     std::random_device and the thread's identity), mapped to [0, 10000) by multiply-shift.
//
// Concurrency: the weight table is immutable once published. Readers (Route, RouteMany) never take a
// lock: they announce themselves in one of two epoch reader counters, load the table pointer, and leave.
// A writer (SetWeights) builds a new table, publishes it with one atomic store, flips the epoch and waits
// (yielding) until the previous epoch's readers have left, then frees the old table. Writers are
// serialised by write_mutex_. Counters are relaxed atomics (statistics, no ordering needed).
//
// Python-free (STYLE.md): csrc/bindings.cc converts keys and numpy buffers and releases the GIL around
// RouteMany.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "status.h"

namespace fastml {

constexpr int32_t kRouterBuckets = 10000;  // weights are basis points of this total

// xxHash64 of `len` bytes at `data` with `seed` (the reference algorithm; little-endian reads).
uint64_t XXHash64(const void* data, size_t len, uint64_t seed);

// SplitMix64's output finaliser (Steele, Lea, Flood 2014): a bijective mix of a 64-bit value.
uint64_t SplitMix64Mix(uint64_t x);

// Bucket of a routing key and its shadow bucket, both in [0, kRouterBuckets).
inline int32_t KeyBucket(uint64_t h) { return static_cast<int32_t>(h % kRouterBuckets); }
inline int32_t ShadowBucket(uint64_t h) { return static_cast<int32_t>(SplitMix64Mix(h) % kRouterBuckets); }

// One routing decision: the variant that answers and a bit per shadow that gets a copy.
struct RouteDecision {
    int32_t variant = 0;
    uint32_t shadow_mask = 0;
};

// The published weights: immutable after construction (readers hold it without locks).
struct RouterTable {
    std::vector<int32_t> cumulative_bp;  // cumulative_bp[i] = sum of weights of variants 0..i
    std::vector<int32_t> shadow_bp;      // mirror share per shadow
    uint64_t generation = 0;             // 1 for the first table, +1 per SetWeights

    int32_t VariantOfBucket(int32_t bucket) const;
    uint32_t ShadowMask(int32_t shadow_bucket) const;
};

class Router {
public:
    static constexpr size_t kMaxShadows = 32;  // shadow_mask has one bit each

    // Fails (kInvalidInput, naming the field) unless: at least one variant, weights >= 0 summing to
    // 10,000, at most kMaxShadows shadows with shares in [0, 10000], names unique across both lists.
    static Status Create(std::vector<std::string> variants, std::vector<int32_t> weights_bp,
                         std::vector<std::string> shadows, std::vector<int32_t> shadow_bp,
                         std::unique_ptr<Router>* out);
    ~Router();
    Router(const Router&) = delete;
    Router& operator=(const Router&) = delete;

    // One decision. `key` null means keyless. Counts the variant and every mirrored shadow.
    RouteDecision Route(const char* key, size_t key_len);

    // The same decision, not counted: for a caller that may still hand the request elsewhere (a transport's
    // native intake opens a route before it knows whether it takes the request); CountRouted when it does.
    RouteDecision Peek(const char* key, size_t key_len) const;
    void CountRouted(int32_t variant, uint64_t n = 1);

    // Decisions for n keys given as concatenated bytes with n+1 offsets (offsets[i]..offsets[i+1]);
    // `offsets` null means n keyless decisions. Writes variants[i] and, if not null, shadow_masks[i].
    // One read-side section for the whole batch.
    // `count` false: the decisions are not counted (Peek's batch form; CountRouted as they are used).
    void RouteMany(const char* keys, const int64_t* offsets, int64_t n, int32_t* variants, uint32_t* shadow_masks,
                   bool count = true);

    // Publishes new weights atomically (same validation as Create); in-flight readers finish on the old
    // table. The variant and shadow lists themselves never change.
    Status SetWeights(const std::vector<int32_t>& weights_bp, const std::vector<int32_t>& shadow_bp);

    // Counters a caller adds to: a pinned request (the client chose the variant), a shed shadow copy,
    // an error of a variant.
    void CountPinned(int32_t variant);
    void CountShadowShed(int32_t shadow);
    void CountError(int32_t variant);

    const std::vector<std::string>& variants() const { return variants_; }
    const std::vector<std::string>& shadows() const { return shadows_; }
    std::vector<int32_t> weights_bp() const;  // of the current table
    std::vector<int32_t> shadow_bp() const;
    uint64_t generation() const;

    struct Counts {
        std::vector<uint64_t> routed;       // primary decisions per variant (routing + pinned)
        std::vector<uint64_t> pinned;       // of which pinned by the client
        std::vector<uint64_t> errors;       // per variant, as counted by CountError
        std::vector<uint64_t> mirrored;     // shadow copies decided per shadow
        std::vector<uint64_t> shadow_shed;  // shadow copies dropped under overload per shadow
    };
    Counts counts() const;

private:
    Router(std::vector<std::string> variants, std::vector<std::string> shadows);
    static Status Validate(size_t n_variants, size_t n_shadows, const std::vector<int32_t>& weights_bp,
                           const std::vector<int32_t>& shadow_bp, std::unique_ptr<RouterTable>* out);

    // Read side: Enter returns the epoch slot to pass to Leave; the table is valid in between.
    int Enter() const;
    void Leave(int slot) const;
    RouteDecision Decide(const RouterTable& t, const char* key, size_t key_len) const;

    // Set in the constructor, then read-only (any thread).
    const std::vector<std::string> variants_;
    const std::vector<std::string> shadows_;

    // Published table: stored by the writer under write_mutex_, loaded by readers without a lock.
    std::atomic<const RouterTable*> table_{nullptr};
    // Epoch (low bit selects the reader slot) and per-slot reader counts: readers increment/decrement,
    // the writer flips epoch_ and waits for the old slot to drain before freeing the old table.
    mutable std::atomic<uint64_t> epoch_{0};
    mutable std::atomic<int64_t> readers_[2] = {{0}, {0}};
    std::mutex write_mutex_;  // serialises SetWeights (and the destructor's final free)

    // Counters: fixed-size arrays of relaxed atomics, any thread.
    std::unique_ptr<std::atomic<uint64_t>[]> routed_;
    std::unique_ptr<std::atomic<uint64_t>[]> pinned_;
    std::unique_ptr<std::atomic<uint64_t>[]> errors_;
    std::unique_ptr<std::atomic<uint64_t>[]> mirrored_;
    std::unique_ptr<std::atomic<uint64_t>[]> shadow_shed_;
};

}  // namespace fastml
