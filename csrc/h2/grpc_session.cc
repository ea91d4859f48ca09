#include "grpc_session.h"

#include <algorithm>
#include <cstring>

namespace fastml::h2 {

namespace {

constexpr size_t kPrefix = 5;             // gRPC message prefix: compressed flag, 4-byte big-endian length
constexpr size_t kMaxHeaderValue = 16384; // longest path / authorization / content type we keep
constexpr size_t kMaxStatusMessage = 4096;

uint32_t ReadBE32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

nghttp2_nv Nv(const char* name, const std::string& value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), std::strlen(name), value.size(),
                    NGHTTP2_NV_FLAG_NONE};
}

bool HeaderIs(const uint8_t* name, size_t len, const char* want) {
  size_t n = std::strlen(want);
  return len == n && std::memcmp(name, want, n) == 0;
}

}  // namespace

std::string PercentEncode(const std::string& message) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(message.size());
  for (unsigned char c : message) {
    if (c < 0x20 || c > 0x7e || c == '%') {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

Session::Session(const Limits& limits) : limits_(limits) {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, &Session::OnBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &Session::OnHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &Session::OnFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &Session::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &Session::OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, &Session::OnFrameSend);
  nghttp2_session_server_new(&session_, cbs, this);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(limits_.window_bytes)},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 65536},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, sizeof(settings) / sizeof(settings[0]));
  // The connection's receive window: several streams' worth, so concurrent requests are not serialised on it.
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, limits_.window_bytes * 4);
}

Session::~Session() { nghttp2_session_del(session_); }

Session::Stream* Session::Find(int32_t stream_id) {
  auto it = streams_.find(stream_id);
  return it == streams_.end() ? nullptr : it->second.get();
}

const Session::Stream* Session::Find(int32_t stream_id) const {
  auto it = streams_.find(stream_id);
  return it == streams_.end() ? nullptr : it->second.get();
}

size_t Session::Unsent(int32_t stream_id) const {
  const Stream* s = Find(stream_id);
  return s == nullptr ? 0 : s->out.size() - s->out_off;
}

bool Session::Reset(int32_t stream_id, uint32_t error_code) {
  Stream* s = Find(stream_id);
  if (s == nullptr || s->finished) return false;
  s->finished = true;
  std::string().swap(s->out);  // the answers the client did not read: freed now, not when the stream closes
  s->out_off = 0;
  return nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, error_code) == 0;
}

bool Session::Feed(const uint8_t* data, size_t len, std::string* error) {
  ssize_t n = nghttp2_session_mem_recv(session_, data, len);
  if (n < 0) {
    *error = nghttp2_strerror(static_cast<int>(n));
    return false;
  }
  return true;
}

void Session::EmitMessage(int32_t stream_id, const uint8_t* msg, size_t len) {
  Event ev;
  ev.kind = kMessage;
  ev.stream_id = stream_id;
  ev.compressed = (msg[0] & 1) != 0;
  ev.payload.assign(reinterpret_cast<const char*>(msg + kPrefix), len);
  events_.push_back(std::move(ev));
}

void Session::Received(int32_t stream_id, Stream* s, const uint8_t* data, size_t len) {
  auto too_large = [&](uint32_t declared) {
    Event ev;
    ev.kind = kTooLarge;
    ev.stream_id = stream_id;
    ev.declared = declared;
    events_.push_back(std::move(ev));
    buffered_ -= s->in.size();
    s->in.clear();
    s->in.shrink_to_fit();
    s->in_need = 0;
    s->dropping = true;
  };
  while (len > 0) {
    if (s->in.empty() && len >= kPrefix) {
      // Whole messages straight from the received chunk, without buffering them.
      uint32_t n = ReadBE32(data + 1);
      if (n > limits_.max_message_bytes) return too_large(n);
      if (len >= kPrefix + n) {
        EmitMessage(stream_id, data, n);
        data += kPrefix + n;
        len -= kPrefix + n;
        continue;
      }
    }
    if (s->in.size() < kPrefix) {
      size_t take = std::min(kPrefix - s->in.size(), len);
      s->in.append(reinterpret_cast<const char*>(data), take);
      buffered_ += take;
      data += take;
      len -= take;
      if (s->in.size() < kPrefix) break;
      uint32_t n = ReadBE32(reinterpret_cast<const uint8_t*>(s->in.data()) + 1);
      if (n > limits_.max_message_bytes) return too_large(n);
      s->in_need = kPrefix + n;  // no reserve: memory follows the bytes received, not the size declared
    }
    size_t take = std::min(s->in_need - s->in.size(), len);
    s->in.append(reinterpret_cast<const char*>(data), take);
    buffered_ += take;
    data += take;
    len -= take;
    if (s->in.size() == s->in_need) {
      EmitMessage(stream_id, reinterpret_cast<const uint8_t*>(s->in.data()), s->in_need - kPrefix);
      buffered_ -= s->in.size();
      s->in.clear();
      s->in_need = 0;
    }
  }
  if (buffered_ > limits_.max_buffered_bytes && !calm_) {
    calm_ = true;
    nghttp2_session_terminate_session(session_, NGHTTP2_ENHANCE_YOUR_CALM);
  }
}

int Session::OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* self) {
  auto* me = static_cast<Session*>(self);
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    me->streams_[frame->hd.stream_id] = std::make_unique<Stream>();
  }
  return 0;
}

int Session::OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t, void* self) {
  auto* me = static_cast<Session*>(self);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  Stream* s = me->Find(frame->hd.stream_id);
  if (s == nullptr) return 0;
  std::string* slot = nullptr;
  if (HeaderIs(name, namelen, ":path")) {
    slot = &s->path;
  } else if (HeaderIs(name, namelen, "authorization")) {
    slot = &s->authorization;
  } else if (HeaderIs(name, namelen, "content-type")) {
    slot = &s->content_type;
  } else if (HeaderIs(name, namelen, "grpc-encoding")) {
    slot = &s->encoding;
  } else if (HeaderIs(name, namelen, "grpc-timeout")) {
    slot = &s->timeout;
  }
  if (slot == nullptr) return 0;
  if (valuelen > kMaxHeaderValue) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // resets this stream only
  slot->assign(reinterpret_cast<const char*>(value), valuelen);
  return 0;
}

int Session::OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* self) {
  auto* me = static_cast<Session*>(self);
  int32_t id = frame->hd.stream_id;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  Stream* s = me->Find(id);
  if (s == nullptr) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    Event ev;
    ev.kind = kOpen;
    ev.stream_id = id;
    ev.path = std::move(s->path);
    ev.authorization = std::move(s->authorization);
    ev.content_type = std::move(s->content_type);
    ev.encoding = std::move(s->encoding);
    ev.timeout = std::move(s->timeout);
    me->events_.push_back(std::move(ev));
  }
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
    Event ev;
    ev.kind = kHalfClose;
    ev.stream_id = id;
    ev.declared = s->in.size();  // bytes of a message the stream ended in the middle of (0: none)
    me->buffered_ -= s->in.size();
    s->in.clear();
    s->in_need = 0;
    me->events_.push_back(std::move(ev));
  }
  return 0;
}

int Session::OnDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data, size_t len, void* self) {
  auto* me = static_cast<Session*>(self);
  Stream* s = me->Find(stream_id);
  if (s == nullptr || s->dropping || me->calm_) return 0;
  me->Received(stream_id, s, data, len);
  return 0;
}

int Session::OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void* self) {
  // A reset sent with the answer would overtake it (nghttp2 drops a closed stream's queued frames), so the
  // reset that stops a refused upload (gRPC servers send NO_ERROR) waits for the answer's last frame.
  if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  Stream* s = static_cast<Session*>(self)->Find(frame->hd.stream_id);
  if (s != nullptr && s->reset_after_answer) {
    s->reset_after_answer = false;
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  }
  return 0;
}

int Session::OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* self) {
  auto* me = static_cast<Session*>(self);
  auto it = me->streams_.find(stream_id);
  if (it == me->streams_.end()) return 0;
  if (!it->second->finished) {
    Event ev;
    ev.kind = kClosed;
    ev.stream_id = stream_id;
    ev.error_code = error_code;
    me->events_.push_back(std::move(ev));
  }
  me->buffered_ -= it->second->in.size();
  me->streams_.erase(it);
  return 0;
}

ssize_t Session::ReadCallback(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length, uint32_t* flags,
                              nghttp2_data_source*, void* self) {
  return static_cast<Session*>(self)->ReadAnswer(stream_id, buf, length, flags);
}

ssize_t Session::ReadAnswer(int32_t stream_id, uint8_t* buf, size_t length, uint32_t* flags) {
  Stream* s = Find(stream_id);
  if (s == nullptr) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  }
  size_t n = std::min(length, s->out.size() - s->out_off);
  std::memcpy(buf, s->out.data() + s->out_off, n);
  s->out_off += n;
  if (s->out_off < s->out.size()) {
    // A stream whose answers keep coming while the client reads (a ModelStreamInfer stream) may never drain
    // completely: drop what was taken once it is most of the buffer.
    if (s->out_off > (64u << 10) && s->out_off * 2 > s->out.size()) {
      s->out.erase(0, s->out_off);
      s->out_off = 0;
    }
    return static_cast<ssize_t>(n);
  }
  s->out.clear();
  s->out_off = 0;
  if (s->finishing) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    std::string status = std::to_string(s->grpc_status);
    nghttp2_nv trailers[2] = {Nv("grpc-status", status), Nv("grpc-message", s->grpc_message)};
    nghttp2_submit_trailer(session_, stream_id, trailers, s->grpc_message.empty() ? 1 : 2);
    s->finished = true;
    return static_cast<ssize_t>(n);
  }
  return n == 0 ? static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED) : static_cast<ssize_t>(n);
}

bool Session::SendMessage(int32_t stream_id, const char* data, size_t len) {
  Stream* s = Find(stream_id);
  if (s == nullptr || s->finishing || s->finished) return false;
  uint8_t prefix[kPrefix] = {0, uint8_t(len >> 24), uint8_t(len >> 16), uint8_t(len >> 8), uint8_t(len)};
  s->out.append(reinterpret_cast<const char*>(prefix), kPrefix);
  s->out.append(data, len);
  if (!s->headers_sent) {
    s->headers_sent = true;
    static const std::string kOk = "200", kGrpc = "application/grpc";
    nghttp2_nv headers[2] = {Nv(":status", kOk), Nv("content-type", kGrpc)};
    nghttp2_data_provider provider;
    provider.source.ptr = nullptr;
    provider.read_callback = &Session::ReadCallback;
    return nghttp2_submit_response(session_, stream_id, headers, 2, &provider) == 0;
  }
  nghttp2_session_resume_data(session_, stream_id);
  return true;
}

bool Session::Finish(int32_t stream_id, int grpc_status, const std::string& message, int http_status) {
  Stream* s = Find(stream_id);
  if (s == nullptr || s->finishing || s->finished) return false;
  std::string encoded = PercentEncode(message.size() > kMaxStatusMessage ? message.substr(0, kMaxStatusMessage) : message);
  if (!s->headers_sent) {
    // Trailers-only: one HEADERS frame that ends the stream.
    s->headers_sent = true;
    s->finished = true;
    std::string http = std::to_string(http_status), status = std::to_string(grpc_status);
    static const std::string kGrpc = "application/grpc";
    nghttp2_nv headers[4] = {Nv(":status", http), Nv("content-type", kGrpc), Nv("grpc-status", status),
                             Nv("grpc-message", encoded)};
    // Refused before the client finished sending: its upload is stopped once the answer is out (OnFrameSend).
    s->reset_after_answer = !nghttp2_session_get_stream_remote_close(session_, stream_id);
    return nghttp2_submit_response(session_, stream_id, headers, encoded.empty() ? 3 : 4, nullptr) == 0;
  }
  s->finishing = true;
  s->grpc_status = grpc_status;
  s->grpc_message = std::move(encoded);
  nghttp2_session_resume_data(session_, stream_id);
  return true;
}

void Session::Shutdown() {
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
}

void Session::Output(std::string* out) {
  for (;;) {
    const uint8_t* p = nullptr;
    ssize_t n = nghttp2_session_mem_send(session_, &p);
    if (n <= 0) break;
    out->append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
}

bool Session::WantsClose() const {
  return !nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_);
}

}  // namespace fastml::h2
