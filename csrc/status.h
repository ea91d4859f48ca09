// The one status type of fastml's native core (batcher and feature cache alike).
//
// Every component returns a Status; csrc/bindings.cc turns a failed one into a fastml.errors exception
// through its single table (kErrorTable there), one class per code. Add a code here, give it a name in
// StatusCodeName and an entry in that table; tests/engine/test_errors.py checks that every code maps to
// its own class.
//
// Python-free (STYLE.md): no component header includes Python.h.
#pragma once

#include <string>
#include <utility>

namespace fastml {

enum class StatusCode : int {
    kOk = 0,
    kInvalidInput = 1,      // the caller sent something malformed (names the tensor, key or table)
    kOverloaded = 2,        // a bounded resource is full: the request queue, the LMDB map or reader table
    kDeadlineExceeded = 3,  // a request's deadline passed before it ran
    kUnavailable = 4,       // shut down, or not usable from this process (an LMDB env inherited over fork)
    kInternal = 5,          // a fault inside fastml or the model runtime, or an unexpected OS/LMDB error
    kNotFound = 6,          // no such table
    kIntegrity = 7,         // stored data does not have the layout it must have
};
constexpr int kStatusCodeCount = 8;

inline const char* StatusCodeName(StatusCode code) {
    switch (code) {
        case StatusCode::kOk: return "OK";
        case StatusCode::kInvalidInput: return "INVALID_INPUT";
        case StatusCode::kOverloaded: return "OVERLOADED";
        case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
        case StatusCode::kUnavailable: return "UNAVAILABLE";
        case StatusCode::kInternal: return "INTERNAL";
        case StatusCode::kNotFound: return "NOT_FOUND";
        case StatusCode::kIntegrity: return "INTEGRITY";
    }
    return "UNKNOWN";
}

struct Status {
    StatusCode code = StatusCode::kOk;
    std::string message;

    bool ok() const { return code == StatusCode::kOk; }
    static Status Ok() { return Status{}; }
    static Status Error(StatusCode c, std::string msg) { return Status{c, std::move(msg)}; }
};

}  // namespace fastml
