// One HTTP/1.1 request at the head of a byte buffer, as llhttp (the parser httptools wraps) reads it.
//
// The native HTTP intake (bindings.cc) hands each request boundary of a connection's stream to scan(): it
// runs llhttp over the buffer from that boundary, stops after one complete message, and describes it with
// views into the buffer (the url, the body, the few headers the KServe infer fast path reads). Nothing is
// decided here about serving it: the intake looks at the description and keeps the request or hands the
// bytes to the Python path. Python-free plain C++.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fastml::http {

// What scan() learned about the request at the head of the buffer.
struct Request {
  std::string_view url;   // the request target, as sent
  std::string_view body;  // the whole body (Content-Length bodies only: a chunked body sets `unusual`)
  uint8_t method = 0;     // llhttp_method_t
  bool keep_alive = false;
  bool http11 = false;    // HTTP/1.1 (the keep-alive answer carries no Connection header then)
  int64_t content_length = -1;  // -1: none declared
  // Inference-Header-Content-Length: -1 absent; -2 present but not plain decimal digits (the Python path
  // words the error or accepts what int() accepts).
  int64_t ihcl = -1;
  size_t header_count = 0;
  size_t header_bytes = 0;  // url + header names + values, as the Python path counts them
  // The Authorization header's value as sent (empty when absent; sent twice: `unusual`).
  std::string_view authorization;
  // A header the fast path does not implement (Content-Encoding, Expect, Transfer-Encoding, a compressing
  // Accept-Encoding, fastml-routing-key, Upgrade, a duplicate length header): the Python path serves it.
  bool unusual = false;
  size_t total = 0;  // bytes of the whole message (kComplete)
};

enum class Scan {
  kComplete,  // one whole message at the head: `total` bytes
  kNeedMore,  // a prefix of a valid message (headers_done says whether its head is complete)
  kError,     // llhttp refused the bytes: the Python path answers with its own words
};

// Scans the message starting at p[0]. `headers_done` is set when the request head was complete.
Scan scan(const uint8_t* p, size_t n, Request* out, bool* headers_done);

}  // namespace fastml::http
