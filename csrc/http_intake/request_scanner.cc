// llhttp driven over one message (see request_scanner.h).
#include "request_scanner.h"

#include <cstring>

#include "llhttp.h"

namespace fastml::http {
namespace {

struct Context {
  Request* req;
  const char* field = nullptr;  // the current header's name (a span inside the buffer)
  size_t field_len = 0;
  const char* url = nullptr;
  size_t url_len = 0;
  const char* body = nullptr;
  size_t body_len = 0;
  bool headers_done = false;
};

Context* ctx(llhttp_t* p) { return static_cast<Context*>(p->data); }

// Case-insensitive equality with a lower-case ASCII literal.
bool is(const char* s, size_t n, const char* lower) {
  size_t m = std::strlen(lower);
  if (n != m) return false;
  for (size_t i = 0; i < n; ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != lower[i]) return false;
  }
  return true;
}

bool contains_ci(const char* s, size_t n, const char* lower) {
  size_t m = std::strlen(lower);
  for (size_t i = 0; i + m <= n; ++i) {
    if (is(s + i, m, lower)) return true;
  }
  return false;
}

// Spans arrive whole when the message is scanned from one contiguous buffer; a second piece (llhttp ends a
// span at the end of its input) only extends the first, since both lie in the same buffer.
void extend(const char** at, size_t* len, const char* p, size_t n) {
  if (*at == nullptr) {
    *at = p;
    *len = n;
  } else {
    *len = static_cast<size_t>(p + n - *at);
  }
}

int on_message_begin(llhttp_t* p) { return 0; }

int on_url(llhttp_t* p, const char* at, size_t n) {
  Context* c = ctx(p);
  extend(&c->url, &c->url_len, at, n);
  c->req->header_bytes += n;
  return 0;
}

int on_header_field(llhttp_t* p, const char* at, size_t n) {
  Context* c = ctx(p);
  c->field = at;
  c->field_len = n;
  return 0;
}

int on_header_value(llhttp_t* p, const char* at, size_t n) {
  Context* c = ctx(p);
  Request* r = c->req;
  const char* f = c->field;
  const size_t fn = c->field_len;
  r->header_count += 1;
  r->header_bytes += fn + n;
  switch (fn) {
    case 31:
      if (is(f, fn, "inference-header-content-length")) {
        if (r->ihcl != -1) {
          r->unusual = true;  // twice: the Python path keeps the last one
          break;
        }
        int64_t v = 0;
        bool digits = n > 0 && n <= 15;
        for (size_t i = 0; digits && i < n; ++i) {
          if (at[i] < '0' || at[i] > '9') digits = false;
          v = v * 10 + (at[i] - '0');
        }
        r->ihcl = digits ? v : -2;
      }
      break;
    case 14:
      if (is(f, fn, "content-length")) {
        if (r->content_length != -1) r->unusual = true;
        int64_t v = 0;
        bool digits = n > 0 && n <= 15;
        for (size_t i = 0; digits && i < n; ++i) {
          if (at[i] < '0' || at[i] > '9') digits = false;
          v = v * 10 + (at[i] - '0');
        }
        if (!digits) r->unusual = true;
        r->content_length = digits ? v : -1;
      }
      break;
    case 16:
      if (is(f, fn, "content-encoding")) r->unusual = true;
      break;
    case 15:
      if (is(f, fn, "accept-encoding") && (contains_ci(at, n, "gzip") || contains_ci(at, n, "deflate"))) {
        r->unusual = true;  // a compressed answer: the Python path compresses
      }
      break;
    case 6:
      if (is(f, fn, "expect")) r->unusual = true;
      break;
    case 7:
      if (is(f, fn, "upgrade")) r->unusual = true;
      break;
    case 17:
      if (is(f, fn, "transfer-encoding")) r->unusual = true;
      break;
    case 18:
      if (is(f, fn, "fastml-routing-key")) r->unusual = true;
      break;
    case 13:
      if (is(f, fn, "authorization")) {
        if (r->authorization.data() != nullptr) r->unusual = true;  // twice: the Python path decides
        r->authorization = std::string_view(at, n);
      }
      break;
    default:
      break;
  }
  return 0;
}

int on_headers_complete(llhttp_t* p) {
  ctx(p)->headers_done = true;
  return 0;
}

int on_body(llhttp_t* p, const char* at, size_t n) {
  Context* c = ctx(p);
  extend(&c->body, &c->body_len, at, n);
  return 0;
}

// Stops llhttp after one message: execute() returns HPE_PAUSED with error_pos just past it.
int on_message_complete(llhttp_t* p) { return HPE_PAUSED; }

const llhttp_settings_t& settings() {
  static const llhttp_settings_t s = [] {
    llhttp_settings_t t;
    llhttp_settings_init(&t);
    t.on_message_begin = on_message_begin;
    t.on_url = on_url;
    t.on_header_field = on_header_field;
    t.on_header_value = on_header_value;
    t.on_headers_complete = on_headers_complete;
    t.on_body = on_body;
    t.on_message_complete = on_message_complete;
    return t;
  }();
  return s;
}

}  // namespace

Scan scan(const uint8_t* data, size_t n, Request* out, bool* headers_done) {
  *out = Request();
  Context c;
  c.req = out;
  llhttp_t parser;
  llhttp_init(&parser, HTTP_REQUEST, &settings());
  parser.data = &c;
  const char* begin = reinterpret_cast<const char*>(data);
  llhttp_errno_t err = llhttp_execute(&parser, begin, n);
  *headers_done = c.headers_done;
  if (err == HPE_OK) return Scan::kNeedMore;
  if (err != HPE_PAUSED) return Scan::kError;
  const char* end = llhttp_get_error_pos(&parser);
  if (end == nullptr || end < begin || end > begin + n) return Scan::kError;
  out->total = static_cast<size_t>(end - begin);
  out->url = std::string_view(c.url == nullptr ? "" : c.url, c.url_len);
  out->body = std::string_view(c.body == nullptr ? "" : c.body, c.body_len);
  out->method = parser.method;
  out->keep_alive = llhttp_should_keep_alive(&parser) != 0;
  out->http11 = parser.http_major == 1 && parser.http_minor == 1;
  if (parser.upgrade || (parser.flags & F_CHUNKED) || (parser.flags & F_TRANSFER_ENCODING)) out->unusual = true;
  return Scan::kComplete;
}

}  // namespace fastml::http
