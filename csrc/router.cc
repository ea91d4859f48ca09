// Traffic router (see router.h for the hashing contract and the read-side protocol).
#include "router.h"

#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <unordered_set>

namespace fastml {

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Little-endian loads through memcpy: unaligned-safe, and the hash is defined on little-endian words.
inline uint64_t Read64(const unsigned char* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

inline uint32_t Read32(const unsigned char* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

inline uint64_t Round(uint64_t acc, uint64_t input) {
    acc += input * kP2;
    acc = Rotl(acc, 31);
    return acc * kP1;
}

inline uint64_t MergeRound(uint64_t acc, uint64_t val) {
    acc ^= Round(0, val);
    return acc * kP1 + kP4;
}

// xoshiro256** (Blackman and Vigna), one per thread for keyless decisions: no shared state, no lock.
struct Xoshiro256 {
    uint64_t s[4];

    explicit Xoshiro256(uint64_t seed) {
        // Expand the seed with SplitMix64, as the authors recommend (never an all-zero state).
        for (auto& w : s) {
            seed += 0x9E3779B97F4A7C15ULL;
            uint64_t z = seed;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
            w = z ^ (z >> 31);
        }
    }

    uint64_t Next() {
        const uint64_t result = Rotl(s[1] * 5, 7) * 9;
        const uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = Rotl(s[3], 45);
        return result;
    }
};

Xoshiro256& ThreadRng() {
    // Seeded once per thread: random_device for independence across processes, the thread id so two
    // threads seeded in the same instant still differ.
    thread_local Xoshiro256 rng(std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32) ^
                                std::hash<std::thread::id>{}(std::this_thread::get_id()));
    return rng;
}

// Uniform bucket in [0, kRouterBuckets) by multiply-shift of the top 32 bits (Lemire): no division.
inline int32_t RandomBucket(Xoshiro256& rng) {
    return static_cast<int32_t>(((rng.Next() >> 32) * uint64_t(kRouterBuckets)) >> 32);
}

std::unique_ptr<std::atomic<uint64_t>[]> Zeros(size_t n) {
    std::unique_ptr<std::atomic<uint64_t>[]> a(new std::atomic<uint64_t>[n == 0 ? 1 : n]);
    for (size_t i = 0; i < n; ++i) a[i].store(0, std::memory_order_relaxed);
    return a;
}

}  // namespace

uint64_t XXHash64(const void* data, size_t len, uint64_t seed) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    const unsigned char* const end = p + len;
    uint64_t h;
    if (len >= 32) {
        const unsigned char* const limit = end - 32;
        uint64_t v1 = seed + kP1 + kP2;
        uint64_t v2 = seed + kP2;
        uint64_t v3 = seed;
        uint64_t v4 = seed - kP1;
        do {
            v1 = Round(v1, Read64(p));
            v2 = Round(v2, Read64(p + 8));
            v3 = Round(v3, Read64(p + 16));
            v4 = Round(v4, Read64(p + 24));
            p += 32;
        } while (p <= limit);
        h = Rotl(v1, 1) + Rotl(v2, 7) + Rotl(v3, 12) + Rotl(v4, 18);
        h = MergeRound(h, v1);
        h = MergeRound(h, v2);
        h = MergeRound(h, v3);
        h = MergeRound(h, v4);
    } else {
        h = seed + kP5;
    }
    h += static_cast<uint64_t>(len);
    while (p + 8 <= end) {
        h ^= Round(0, Read64(p));
        h = Rotl(h, 27) * kP1 + kP4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= static_cast<uint64_t>(Read32(p)) * kP1;
        h = Rotl(h, 23) * kP2 + kP3;
        p += 4;
    }
    while (p < end) {
        h ^= static_cast<uint64_t>(*p) * kP5;
        h = Rotl(h, 11) * kP1;
        ++p;
    }
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
}

uint64_t SplitMix64Mix(uint64_t x) {
    // The first output of a SplitMix64 generator whose state is x.
    uint64_t z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int32_t RouterTable::VariantOfBucket(int32_t bucket) const {
    // A linear scan: deployments have a handful of variants, and this beats a 10,000-entry table in cache.
    const int32_t n = static_cast<int32_t>(cumulative_bp.size());
    for (int32_t i = 0; i < n; ++i) {
        if (bucket < cumulative_bp[i]) return i;
    }
    return n - 1;  // unreachable: the last cumulative weight is kRouterBuckets
}

uint32_t RouterTable::ShadowMask(int32_t shadow_bucket) const {
    uint32_t mask = 0;
    for (size_t s = 0; s < shadow_bp.size(); ++s) {
        if (shadow_bucket < shadow_bp[s]) mask |= (1u << s);
    }
    return mask;
}

Router::Router(std::vector<std::string> variants, std::vector<std::string> shadows)
    : variants_(std::move(variants)),
      shadows_(std::move(shadows)),
      routed_(Zeros(variants_.size())),
      pinned_(Zeros(variants_.size())),
      errors_(Zeros(variants_.size())),
      mirrored_(Zeros(shadows_.size())),
      shadow_shed_(Zeros(shadows_.size())) {}

Router::~Router() {
    std::lock_guard<std::mutex> lock(write_mutex_);
    delete table_.exchange(nullptr);
}

Status Router::Validate(size_t n_variants, size_t n_shadows, const std::vector<int32_t>& weights_bp,
                        const std::vector<int32_t>& shadow_bp, std::unique_ptr<RouterTable>* out) {
    if (weights_bp.size() != n_variants) {
        return Status::Error(StatusCode::kInvalidInput, "weights_bp: " + std::to_string(weights_bp.size()) +
                                                            " weights for " + std::to_string(n_variants) + " variants");
    }
    if (shadow_bp.size() != n_shadows) {
        return Status::Error(StatusCode::kInvalidInput, "shadow_bp: " + std::to_string(shadow_bp.size()) +
                                                            " shares for " + std::to_string(n_shadows) + " shadows");
    }
    auto table = std::make_unique<RouterTable>();
    int64_t sum = 0;
    for (size_t i = 0; i < weights_bp.size(); ++i) {
        if (weights_bp[i] < 0 || weights_bp[i] > kRouterBuckets) {
            return Status::Error(StatusCode::kInvalidInput, "weights_bp[" + std::to_string(i) + "] = " +
                                                                std::to_string(weights_bp[i]) + " is outside 0..10000");
        }
        sum += weights_bp[i];
        table->cumulative_bp.push_back(static_cast<int32_t>(sum));
    }
    if (sum != kRouterBuckets) {
        return Status::Error(StatusCode::kInvalidInput,
                             "weights_bp sum to " + std::to_string(sum) + ", not 10000 basis points");
    }
    for (size_t s = 0; s < shadow_bp.size(); ++s) {
        if (shadow_bp[s] < 0 || shadow_bp[s] > kRouterBuckets) {
            return Status::Error(StatusCode::kInvalidInput, "shadow_bp[" + std::to_string(s) + "] = " +
                                                                std::to_string(shadow_bp[s]) + " is outside 0..10000");
        }
    }
    table->shadow_bp = shadow_bp;
    *out = std::move(table);
    return Status::Ok();
}

Status Router::Create(std::vector<std::string> variants, std::vector<int32_t> weights_bp,
                      std::vector<std::string> shadows, std::vector<int32_t> shadow_bp,
                      std::unique_ptr<Router>* out) {
    if (variants.empty()) return Status::Error(StatusCode::kInvalidInput, "variants: at least one is needed");
    if (shadows.size() > kMaxShadows) {
        return Status::Error(StatusCode::kInvalidInput, "shadows: at most " + std::to_string(kMaxShadows));
    }
    std::unordered_set<std::string> seen;
    for (const auto* list : {&variants, &shadows}) {
        for (const auto& name : *list) {
            if (name.empty()) return Status::Error(StatusCode::kInvalidInput, "variant names must not be empty");
            if (!seen.insert(name).second) {
                return Status::Error(StatusCode::kInvalidInput, "variant name '" + name + "' appears twice");
            }
        }
    }
    std::unique_ptr<RouterTable> table;
    Status st = Validate(variants.size(), shadows.size(), weights_bp, shadow_bp, &table);
    if (!st.ok()) return st;
    table->generation = 1;
    std::unique_ptr<Router> r(new Router(std::move(variants), std::move(shadows)));
    r->table_.store(table.release(), std::memory_order_release);
    *out = std::move(r);
    return Status::Ok();
}

int Router::Enter() const {
    // seq_cst: the increment must be visible to a writer before we load the table pointer, or the writer
    // could free the table we are about to read.
    for (;;) {
        const int slot = static_cast<int>(epoch_.load() & 1);
        readers_[slot].fetch_add(1);
        if (static_cast<int>(epoch_.load() & 1) == slot) return slot;
        // The epoch flipped between our two loads: the writer may already be past its wait on this slot.
        readers_[slot].fetch_sub(1);
    }
}

void Router::Leave(int slot) const { readers_[slot].fetch_sub(1, std::memory_order_release); }

namespace {

// One decision on a published table; `rng` serves keyless decisions (looked up once per batch by callers:
// a thread_local access in a shared library costs a call to __tls_get_addr).
inline RouteDecision DecideWith(const RouterTable& t, const char* key, size_t key_len, Xoshiro256& rng) {
    RouteDecision d;
    if (key != nullptr && key_len > 0) {  // an empty key is no key: it would send every keyless client to one variant
        const uint64_t h = XXHash64(key, key_len, 0);
        d.variant = t.VariantOfBucket(KeyBucket(h));
        if (!t.shadow_bp.empty()) d.shadow_mask = t.ShadowMask(ShadowBucket(h));
    } else {
        d.variant = t.VariantOfBucket(RandomBucket(rng));
        if (!t.shadow_bp.empty()) d.shadow_mask = t.ShadowMask(RandomBucket(rng));
    }
    return d;
}

}  // namespace

RouteDecision Router::Decide(const RouterTable& t, const char* key, size_t key_len) const {
    return DecideWith(t, key, key_len, ThreadRng());
}

RouteDecision Router::Route(const char* key, size_t key_len) {
    const int slot = Enter();
    const RouteDecision d = Decide(*table_.load(std::memory_order_acquire), key, key_len);
    Leave(slot);
    routed_[d.variant].fetch_add(1, std::memory_order_relaxed);
    for (uint32_t m = d.shadow_mask, s = 0; m != 0; m >>= 1, ++s) {
        if (m & 1u) mirrored_[s].fetch_add(1, std::memory_order_relaxed);
    }
    return d;
}

void Router::RouteMany(const char* keys, const int64_t* offsets, int64_t n, int32_t* variants,
                       uint32_t* shadow_masks, bool count) {
    // Count locally and publish once: n atomic increments on a shared line would cost more than routing.
    std::vector<uint64_t> routed(variants_.size(), 0);
    std::vector<uint64_t> mirrored(shadows_.size(), 0);
    Xoshiro256& rng = ThreadRng();
    const int slot = Enter();
    const RouterTable& t = *table_.load(std::memory_order_acquire);
    for (int64_t i = 0; i < n; ++i) {
        const RouteDecision d =
            offsets == nullptr
                ? DecideWith(t, nullptr, 0, rng)
                : DecideWith(t, keys + offsets[i], static_cast<size_t>(offsets[i + 1] - offsets[i]), rng);
        variants[i] = d.variant;
        if (shadow_masks != nullptr) shadow_masks[i] = d.shadow_mask;
        ++routed[d.variant];
        for (uint32_t m = d.shadow_mask, s = 0; m != 0; m >>= 1, ++s) {
            if (m & 1u) ++mirrored[s];
        }
    }
    Leave(slot);
    if (!count) return;
    for (size_t i = 0; i < routed.size(); ++i) {
        if (routed[i]) routed_[i].fetch_add(routed[i], std::memory_order_relaxed);
    }
    for (size_t s = 0; s < mirrored.size(); ++s) {
        if (mirrored[s]) mirrored_[s].fetch_add(mirrored[s], std::memory_order_relaxed);
    }
}

Status Router::SetWeights(const std::vector<int32_t>& weights_bp, const std::vector<int32_t>& shadow_bp) {
    std::unique_ptr<RouterTable> table;
    Status st = Validate(variants_.size(), shadows_.size(), weights_bp, shadow_bp, &table);
    if (!st.ok()) return st;
    std::lock_guard<std::mutex> lock(write_mutex_);
    const RouterTable* old = table_.load();
    table->generation = old->generation + 1;
    table_.store(table.release());
    // Flip the epoch, then wait for readers of the old slot: any reader that could still hold `old`
    // entered before the flip. New readers use the other slot and see the new table.
    const uint64_t before = epoch_.fetch_add(1);
    const int old_slot = static_cast<int>(before & 1);
    while (readers_[old_slot].load() != 0) std::this_thread::yield();
    delete old;
    return Status::Ok();
}

RouteDecision Router::Peek(const char* key, size_t key_len) const {
    const int slot = Enter();
    const RouteDecision d = Decide(*table_.load(std::memory_order_acquire), key, key_len);
    Leave(slot);
    return d;
}

void Router::CountRouted(int32_t variant, uint64_t n) { routed_[variant].fetch_add(n, std::memory_order_relaxed); }

void Router::CountPinned(int32_t variant) {
    routed_[variant].fetch_add(1, std::memory_order_relaxed);
    pinned_[variant].fetch_add(1, std::memory_order_relaxed);
}

void Router::CountShadowShed(int32_t shadow) { shadow_shed_[shadow].fetch_add(1, std::memory_order_relaxed); }

void Router::CountError(int32_t variant) { errors_[variant].fetch_add(1, std::memory_order_relaxed); }

std::vector<int32_t> Router::weights_bp() const {
    const int slot = Enter();
    const RouterTable& t = *table_.load(std::memory_order_acquire);
    std::vector<int32_t> w(t.cumulative_bp.size());
    int32_t prev = 0;
    for (size_t i = 0; i < w.size(); ++i) {
        w[i] = t.cumulative_bp[i] - prev;
        prev = t.cumulative_bp[i];
    }
    Leave(slot);
    return w;
}

std::vector<int32_t> Router::shadow_bp() const {
    const int slot = Enter();
    std::vector<int32_t> s = table_.load(std::memory_order_acquire)->shadow_bp;
    Leave(slot);
    return s;
}

uint64_t Router::generation() const {
    const int slot = Enter();
    const uint64_t g = table_.load(std::memory_order_acquire)->generation;
    Leave(slot);
    return g;
}

Router::Counts Router::counts() const {
    Counts c;
    for (size_t i = 0; i < variants_.size(); ++i) {
        c.routed.push_back(routed_[i].load(std::memory_order_relaxed));
        c.pinned.push_back(pinned_[i].load(std::memory_order_relaxed));
        c.errors.push_back(errors_[i].load(std::memory_order_relaxed));
    }
    for (size_t s = 0; s < shadows_.size(); ++s) {
        c.mirrored.push_back(mirrored_[s].load(std::memory_order_relaxed));
        c.shadow_shed.push_back(shadow_shed_[s].load(std::memory_order_relaxed));
    }
    return c;
}

}  // namespace fastml
