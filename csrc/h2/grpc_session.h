// One server-side HTTP/2 connection carrying gRPC, on libnghttp2 (framing, HPACK, flow control, pings).
//
// The session is fed the bytes a socket read returned and collects what happened as events: a request's
// headers (path, authorization, content type, encoding, timeout), each complete gRPC message (its 5-byte length
// prefix removed), the client's end of stream, and a stream's close. Answers go back as messages and a
// final status (HTTP/2 trailers); output() hands over every byte the session has to write. It knows nothing
// of Python or of the service: the caller (fastml.server.grpc_native) decides what each path means.
//
// Bounds: a message longer than max_message_bytes is refused on its prefix, before its body is buffered
// (event kTooLarge; the rest of that stream's data is dropped); the bytes buffered for partial messages on
// the whole connection never exceed max_buffered_bytes (beyond, the connection ends with ENHANCE_YOUR_CALM);
// concurrent streams are capped by SETTINGS_MAX_CONCURRENT_STREAMS, which nghttp2 enforces.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace fastml::h2 {

enum EventKind : int {
  kOpen = 0,       // request headers complete: path, authorization, content_type, encoding, timeout set
  kMessage = 1,    // one complete gRPC message: payload, compressed
  kHalfClose = 2,  // the client ended its side of the stream (declared: bytes of an unfinished message, or 0)
  kClosed = 3,     // the stream went before it was finished (the client reset it: error_code says why)
  kTooLarge = 4,   // a message's prefix declared `declared` bytes, over the limit; the stream's data is dropped
};

struct Event {
  EventKind kind;
  int32_t stream_id;
  std::string path, authorization, content_type, encoding, timeout;  // kOpen (timeout: grpc-timeout)
  std::string payload;                                      // kMessage
  bool compressed = false;                                  // kMessage
  uint32_t error_code = 0;                                  // kClosed
  uint64_t declared = 0;  // kTooLarge: the size declared; kHalfClose: bytes of a message the stream cut short
};

struct Limits {
  uint32_t max_message_bytes = 64u << 20;
  uint64_t max_buffered_bytes = 128u << 20;
  uint32_t max_concurrent_streams = 1024;
  int32_t window_bytes = 8 << 20;  // per stream; the connection's window is four times this
};

class Session {
 public:
  explicit Session(const Limits& limits);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Parses `len` received bytes; what happened is appended to events() (a stream closed while Output() wrote
  // is reported there too, at the next Feed). Returns false on a protocol error (`error` says which); the
  // session then has a GOAWAY to write and wants to close.
  bool Feed(const uint8_t* data, size_t len, std::string* error);
  std::vector<Event>& events() { return events_; }

  // Queues one message (prefix added) on a stream; the response headers go first if not yet sent.
  // False when the stream is unknown or already finished (e.g. the client reset it).
  bool SendMessage(int32_t stream_id, const char* data, size_t len);
  // Ends the stream with a gRPC status (trailers; a trailers-only response when nothing was sent yet, with
  // `http_status`, e.g. 415 for a request that is not gRPC).
  bool Finish(int32_t stream_id, int grpc_status, const std::string& message, int http_status = 200);
  // Answer bytes queued on a stream that nghttp2 has not taken yet (held back by the client's flow-control
  // window when the client does not read); 0 for an unknown stream.
  size_t Unsent(int32_t stream_id) const;
  // Ends a stream at once with RST_STREAM `error_code`, dropping its queued answer bytes; false when it is
  // unknown or already finished.
  bool Reset(int32_t stream_id, uint32_t error_code);
  // Starts a graceful shutdown: GOAWAY naming the last stream taken, no new streams.
  void Shutdown();
  // Every byte the session has to write now (empty when none).
  void Output(std::string* out);
  bool WantsClose() const;
  size_t open_streams() const { return streams_.size(); }

 private:
  struct Stream {
    std::string path, authorization, content_type, encoding, timeout;
    std::string in;       // bytes of the message being received (prefix included)
    size_t in_need = 0;   // total bytes of that message once its prefix is known, else 0
    bool dropping = false;
    std::string out;      // answer bytes not yet taken by nghttp2
    size_t out_off = 0;
    bool headers_sent = false;
    bool finishing = false;
    bool finished = false;
    bool reset_after_answer = false;
    int grpc_status = 0;
    std::string grpc_message;
  };

  Stream* Find(int32_t stream_id);
  const Stream* Find(int32_t stream_id) const;
  void Received(int32_t stream_id, Stream* s, const uint8_t* data, size_t len);
  void EmitMessage(int32_t stream_id, const uint8_t* msg, size_t len);
  ssize_t ReadAnswer(int32_t stream_id, uint8_t* buf, size_t length, uint32_t* flags);

  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t flags, void* self);
  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int OnDataChunk(nghttp2_session*, uint8_t flags, int32_t stream_id, const uint8_t* data, size_t len,
                         void* self);
  static int OnFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* self);
  static ssize_t ReadCallback(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length, uint32_t* flags,
                              nghttp2_data_source* source, void* self);

  Limits limits_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, std::unique_ptr<Stream>> streams_;
  std::vector<Event> events_;             // not yet taken by the caller
  uint64_t buffered_ = 0;                 // bytes of partial messages over all streams
  bool calm_ = false;                     // the buffered limit was hit: the connection is ending
};

// grpc-message's value: percent-encoding of bytes outside printable ASCII and of '%' (the gRPC spec).
std::string PercentEncode(const std::string& message);

}  // namespace fastml::h2
