// A small native HTTP/1.1 load generator for benchmarks/bench_overload.py: open loop (request i is due at
// t0 + i / rate, whatever the server does) or closed loop (each connection sends its next request when the
// last one is answered), over many keep-alive connections on one epoll loop.
//
// Why not an existing tool: wrk (installed here) is closed-loop only, so under overload it slows down with the
// server and hides the queueing it should measure; wrk2 and vegeta are not packaged on this machine, and
// vegeta times a request from when it was sent, not from when it was due, and counts it from its own worker
// pool. This one measures what the overload benchmark needs and nothing else: latency from the DUE time (so
// the generator's own lateness is charged to it, and reported apart as send lag), the client gives up at the
// request's deadline (the connection is closed, as a real client's would be), every status is counted, and
// its own CPU time per request is printed so a reader can see it is not the bottleneck.
//
// One request is in flight per connection (no pipelining): the server answers in order, and a client that
// pipelines behind a slow answer would only measure head-of-line blocking. What happens to a request that is
// due while every connection is busy is the client model (--client):
//   fifo  it waits in a FIFO for a connection (its clock already running) and is given up as "unsent" at its
//         deadline: a client library with a bounded connection pool and a request queue in front of it.
//   drop  it is not sent at all and counted as "dropped": the constant-arrival-rate executor of k6
//         (dropped_iterations) and Gatling's open injection over a bounded pool. The client never queues, so
//         the server sees at most --connections requests in flight and every request it gets is fresh.
//
//   openloop --port P --request FILE --mode open --rate R --connections N --duration S --warmup S --deadline S
//            [--client fifo|drop] [--grace S] [--server-pid PID]
//   openloop --port P --request FILE --mode closed --connections C --duration S --warmup S --deadline S
//
// FILE holds the raw bytes of one complete request (head and body), sent verbatim each time. Prints one JSON
// object: outcomes by status ("timeout": no answer by the deadline (+ grace), "unsent": no connection free by
// its deadline, "dropped": no connection free when it was due, "late": a 200 seen after the deadline, "error":
// the connection failed), goodput (200s within the deadline per second of the measured window), latency
// percentiles of those 200s and of the 503s, send lag (the age of a request when it is sent: in fifo mode the
// age of the client's backlog) and CPU per request. With --grace the client waits that much past the deadline
// before giving up, so an answer the server sends after the deadline is seen and classified (a late 200, or
// the 504 the server owes it) instead of being cut off. With --server-pid the server's utime + stime over the
// measured window is read from /proc (warm-up and settling excluded) and reported per request sent.
// Only requests due inside [warmup, warmup + duration) are counted; the run ends once all of them settled.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <string>
#include <vector>

namespace {

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// utime + stime of process `pid` (all its threads), seconds; -1 if it cannot be read.
double process_cpu_s(int pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  char buf[1024];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char* p = strrchr(buf, ')');  // the command name may hold spaces: fields count from its closing paren
  if (!p) return -1;
  unsigned long long utime = 0, stime = 0;
  // Fields after the name: state(3) ... utime(14) stime(15); skip 11 fields after the state.
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return -1;
  return double(utime + stime) / double(sysconf(_SC_CLK_TCK));
}

double cpu_s() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string request_path;
  bool open_loop = true;
  double rate_per_s = 1000;
  int connections = 64;
  double duration_s = 1.0;
  double warmup_s = 0.2;
  double deadline_s = 0.5;
  bool drop = false;     // --client drop: a request due while every connection is busy is dropped, not queued
  double grace_s = 0.0;  // how long past the deadline the client still waits for (and classifies) an answer
  int server_pid = 0;    // read this process's CPU time over the measured window (0 = don't)
};

enum State { kConnecting, kIdle, kBusy };

struct Conn {
  int fd = -1;
  State state = kConnecting;
  int64_t due_ns = 0;   // when the request in flight was due (open loop) or sent (closed loop)
  size_t write_off = 0;  // bytes of the request written so far
  bool want_write = false;  // EPOLLOUT armed for a partial write
  bool prime_sent = false;  // priming: the connection's first request went out
  std::string rbuf;
};

struct Stats {
  std::map<std::string, int64_t> outcomes;
  std::vector<uint32_t> ok_latency_us;  // 200s within the deadline
  std::vector<uint32_t> shed_latency_us;  // 503s, whenever they came
  std::vector<uint32_t> send_lag_us;     // sent - due, counted requests only
  int64_t sent = 0;
};

class Generator {
 public:
  Generator(const Options& opt, std::string wire) : opt_(opt), wire_(std::move(wire)) {
    ep_ = epoll_create1(0);
    memset(&addr_, 0, sizeof addr_);
    addr_.sin_family = AF_INET;
    addr_.sin_port = htons(uint16_t(opt.port));
    inet_pton(AF_INET, opt.host.c_str(), &addr_.sin_addr);
    deadline_ns_ = int64_t(opt.deadline_s * 1e9);
    grace_ns_ = int64_t(opt.grace_s * 1e9);
    conns_.resize(size_t(opt.connections));
  }

  int run() {
    prime();
    t0_ = now_ns();
    window_start_ = t0_ + int64_t(opt_.warmup_s * 1e9);
    window_end_ = window_start_ + int64_t(opt_.duration_s * 1e9);
    double cpu_start = -1, cpu_end = -1, server_start = -1, server_end = -1;
    int64_t sent_at_start = 0, sent_at_end = 0;
    if (!opt_.open_loop) {
      for (size_t i = 0; i < conns_.size(); ++i)
        if (conns_[i].state == kIdle) send_request(int(i), now_ns());
    }
    int64_t last_scan = t0_;
    for (;;) {
      int64_t now = now_ns();
      if (cpu_start < 0 && now >= window_start_) {
        cpu_start = cpu_s();
        if (opt_.server_pid > 0) server_start = process_cpu_s(opt_.server_pid);
        sent_at_start = total_sent_;
      }
      if (cpu_end < 0 && now >= window_end_) {
        cpu_end = cpu_s();
        if (opt_.server_pid > 0) server_end = process_cpu_s(opt_.server_pid);
        sent_at_end = total_sent_;
      }
      if (opt_.open_loop) schedule(now);
      if (now - last_scan >= 5000000) {  // give up on answers past their deadline (5 ms resolution)
        expire(now);
        last_scan = now;
      }
      if (now >= window_end_ && settled(now)) break;
      // Open loop: wake when the next request is due, not on a millisecond tick. Latency is counted from the due
      // time, so a request sent on the next tick was charged up to 1 ms of the client's own lateness (send lag
      // p99 ~1.1 ms at a few thousand requests/s), which swamped sub-millisecond server latencies in a p99. At
      // least kMinWaitNs apart: at hundreds of thousands of requests/s a wake-up per request would cost the
      // client (on the server's cores) a syscall per request; within kMinWaitNs they are sent together.
      constexpr int64_t kMinWaitNs = 50000;
      int64_t wait_ns = 1000000;
      if (opt_.open_loop) {
        if (!backlog_.empty() && !idle_.empty()) {
          wait_ns = 0;
        } else if (backlog_.empty()) {
          wait_ns = std::clamp<int64_t>(next_due_ns() - now_ns(), kMinWaitNs, wait_ns);
        }
      }
      poll(wait_ns);
    }
    double window_cpu = cpu_end - cpu_start;
    int64_t window_sent = sent_at_end - sent_at_start;
    double server_cpu = server_start >= 0 && server_end >= 0 ? server_end - server_start : -1;
    print(window_cpu, window_sent, server_cpu);
    return 0;
  }

 private:
  bool have_pwait2_ = true;

  bool counted(int64_t due) const { return due >= window_start_ && due < window_end_; }

  void record(int64_t due, const std::string& outcome) {
    if (counted(due)) stats_.outcomes[outcome]++;
  }

  // Every request due in the window has been answered or given up on (open loop), or the window is over and
  // everything in flight that started inside it has settled (closed loop).
  bool settled(int64_t now) {
    if (opt_.open_loop && next_due_ns() < window_end_) return false;
    for (const int64_t due : backlog_)
      if (counted(due)) return false;
    for (const Conn& c : conns_)
      if (c.state == kBusy && counted(c.due_ns)) return false;
    (void)now;
    return true;
  }

  int64_t next_due_ns() const { return t0_ + int64_t(double(next_index_) * 1e9 / opt_.rate_per_s); }

  void schedule(int64_t now) {
    while (next_due_ns() <= now) {
      backlog_.push_back(next_due_ns());
      ++next_index_;
    }
    while (!backlog_.empty()) {
      int64_t due = backlog_.front();
      if (now - due >= deadline_ns_) {  // no connection was free before the deadline: the client gave up
        record(due, "unsent");
        backlog_.pop_front();
        continue;
      }
      if (idle_.empty()) {
        if (!opt_.drop) break;
        record(due, "dropped");  // k6's dropped_iterations: the client never queues
        backlog_.pop_front();
        continue;
      }
      int i = idle_.back();
      idle_.pop_back();
      backlog_.pop_front();
      send_request(i, due);
    }
  }

  // Opens the fleet before the clock starts, kPrimeWave connections at a time, and has each answer one request.
  // A connect() that completed on the client side is not yet a connection the server reads: opening 512 at once
  // left about half of them with their first request retransmitted after TCP's 1 s initial timeout (answered
  // 1.0-1.1 s after it was sent, whatever the server's load), which cut the fleet in half for the first second
  // and, through the client's give-up and reconnect, again later. A primed connection has carried a request and
  // its answer both ways, as a long-lived keep-alive fleet's connections have.
  void prime() {
    constexpr size_t kPrimeWave = 32;
    constexpr int64_t kWaveLimitNs = 3000000000LL;
    priming_ = true;
    for (size_t start = 0; start < conns_.size(); start += kPrimeWave) {
      size_t end = std::min(start + kPrimeWave, conns_.size());
      for (size_t i = start; i < end; ++i) open_conn(int(i));
      int64_t wave_t0 = now_ns();
      while (primed_ < int(end) && now_ns() - wave_t0 < kWaveLimitNs) poll(1);
    }
    priming_ = false;
  }

  void open_conn(int i) {
    Conn& c = conns_[size_t(i)];
    c = Conn();
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(c.fd, reinterpret_cast<sockaddr*>(&addr_), sizeof addr_);
    if (rc != 0 && errno != EINPROGRESS) {
      fprintf(stderr, "openloop: connect: %s\n", strerror(errno));
      exit(2);
    }
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN;
    ev.data.u32 = uint32_t(i);
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
    c.state = kConnecting;
  }

  void reopen(int i) {
    Conn& c = conns_[size_t(i)];
    if (c.state == kIdle) idle_.erase(std::remove(idle_.begin(), idle_.end(), i), idle_.end());
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    --connected_;
    open_conn(i);
  }

  void became_idle(int i, int64_t now) {
    Conn& c = conns_[size_t(i)];
    c.state = kIdle;
    if (priming_) {
      if (!c.prime_sent) {
        c.prime_sent = true;
        send_request(i, now);  // not counted: the measured window is not set yet
        return;
      }
      ++primed_;
      if (opt_.open_loop) idle_.push_back(i);
      return;  // closed loop: run() starts every idle connection together
    }
    if (!opt_.open_loop) {
      if (now < window_end_) send_request(i, now);
      return;
    }
    idle_.push_back(i);
  }

  void send_request(int i, int64_t due) {
    Conn& c = conns_[size_t(i)];
    int64_t now = now_ns();
    c.state = kBusy;
    c.due_ns = due;
    c.write_off = 0;
    ++total_sent_;
    if (counted(due)) stats_.send_lag_us.push_back(uint32_t(std::min<int64_t>((now - due) / 1000, UINT32_MAX)));
    write_more(i);
  }

  void write_more(int i) {
    Conn& c = conns_[size_t(i)];
    while (c.write_off < wire_.size()) {
      ssize_t n = send(c.fd, wire_.data() + c.write_off, wire_.size() - c.write_off, MSG_NOSIGNAL);
      if (n > 0) {
        c.write_off += size_t(n);
      } else if (n < 0 && errno == EAGAIN) {
        watch(i, EPOLLIN | EPOLLOUT);  // the socket buffer is full: EPOLLOUT resumes the write
        c.want_write = true;
        return;
      } else {
        fail(i);
        return;
      }
    }
    if (c.want_write) {
      watch(i, EPOLLIN);
      c.want_write = false;
    }
  }

  void watch(int i, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u32 = uint32_t(i);
    epoll_ctl(ep_, EPOLL_CTL_MOD, conns_[size_t(i)].fd, &ev);
  }

  void fail(int i) {
    Conn& c = conns_[size_t(i)];
    if (c.state == kBusy) record(c.due_ns, "error");
    reopen(i);
  }

  void expire(int64_t now) {
    for (size_t i = 0; i < conns_.size(); ++i) {
      Conn& c = conns_[i];
      if (c.state == kBusy && now - c.due_ns >= deadline_ns_ + grace_ns_) {
        record(c.due_ns, "timeout");
        reopen(int(i));
      }
    }
  }

  // Waits up to `wait_ns` for events (epoll_pwait2's nanosecond timeout; epoll_wait's milliseconds, rounded up,
  // on a kernel older than 5.11).
  void poll(int64_t wait_ns) {
    epoll_event events[256];
    int n;
    if (have_pwait2_) {
      timespec ts{time_t(wait_ns / 1000000000), long(wait_ns % 1000000000)};
      n = epoll_pwait2(ep_, events, 256, &ts, nullptr);
      if (n < 0 && errno == ENOSYS) {
        have_pwait2_ = false;
        n = 0;
      }
    } else {
      n = epoll_wait(ep_, events, 256, int((wait_ns + 999999) / 1000000));
    }
    int64_t now = now_ns();
    for (int k = 0; k < n; ++k) {
      int i = int(events[k].data.u32);
      Conn& c = conns_[size_t(i)];
      if (c.state == kConnecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fprintf(stderr, "openloop: connect: %s\n", strerror(err));
          exit(2);
        }
        // Only reads matter from now on; writes are retried on EPOLLOUT only while one is partial.
        watch(i, EPOLLIN);
        ++connected_;
        became_idle(i, now);
        continue;
      }
      if ((events[k].events & EPOLLOUT) && c.state == kBusy) write_more(i);
      if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_answers(i, now);
    }
  }

  void read_answers(int i, int64_t now) {
    Conn& c = conns_[size_t(i)];
    char buf[65536];
    for (;;) {
      ssize_t n = recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) {
        c.rbuf.append(buf, size_t(n));
        if (size_t(n) < sizeof buf) break;
      } else if (n < 0 && errno == EAGAIN) {
        break;
      } else {
        fail(i);  // closed or reset: the request in flight (if any) failed
        return;
      }
    }
    size_t end = c.rbuf.find("\r\n\r\n");
    if (end == std::string::npos) return;
    if (c.rbuf.compare(0, 9, "HTTP/1.1 ") != 0 || c.rbuf.size() < 12) {
      fail(i);
      return;
    }
    int status = atoi(c.rbuf.c_str() + 9);
    size_t body_len = 0;
    bool close_after = false;
    size_t pos = c.rbuf.find("\r\n") + 2;
    while (pos < end) {
      size_t eol = c.rbuf.find("\r\n", pos);
      const char* line = c.rbuf.c_str() + pos;
      if (strncasecmp(line, "content-length:", 15) == 0) body_len = size_t(strtoull(line + 15, nullptr, 10));
      if (strncasecmp(line, "connection:", 11) == 0) {
        std::string value = c.rbuf.substr(pos + 11, eol - pos - 11);
        close_after = strcasestr(value.c_str(), "close") != nullptr;
      }
      pos = eol + 2;
    }
    if (c.rbuf.size() < end + 4 + body_len) return;  // the body is still arriving
    if (c.state == kBusy) {
      int64_t latency = now - c.due_ns;
      if (status == 200 && latency <= deadline_ns_) {
        if (counted(c.due_ns)) stats_.ok_latency_us.push_back(uint32_t(latency / 1000));
        record(c.due_ns, "200");
      } else if (status == 200) {
        record(c.due_ns, "late");
      } else {
        if (status == 503 && counted(c.due_ns)) stats_.shed_latency_us.push_back(uint32_t(latency / 1000));
        record(c.due_ns, std::to_string(status));
      }
    }
    c.rbuf.erase(0, end + 4 + body_len);
    if (close_after) {
      reopen(i);
      return;
    }
    became_idle(i, now);
  }

  static double percentile(std::vector<uint32_t>& v, double q) {
    if (v.empty()) return 0.0;
    size_t k = size_t(std::min<double>(double(v.size() - 1), std::floor(q * double(v.size()))));
    std::nth_element(v.begin(), v.begin() + long(k), v.end());
    return v[k] / 1000.0;
  }

  void print(double window_cpu, int64_t window_sent, double server_cpu) {
    int64_t total = 0;
    for (const auto& kv : stats_.outcomes) total += kv.second;
    double goodput = double(stats_.ok_latency_us.size()) / opt_.duration_s;
    printf("{\"mode\":\"%s\",\"offered_per_s\":%.1f,\"connections\":%d,\"duration_s\":%.3f,\"requests\":%lld,",
           opt_.open_loop ? "open" : "closed", opt_.open_loop ? opt_.rate_per_s : double(total) / opt_.duration_s,
           opt_.connections, opt_.duration_s, (long long)total);
    printf("\"outcomes\":{");
    bool first = true;
    for (const auto& kv : stats_.outcomes) {
      printf("%s\"%s\":%lld", first ? "" : ",", kv.first.c_str(), (long long)kv.second);
      first = false;
    }
    printf("},\"goodput_per_s\":%.1f,", goodput);
    double p50 = percentile(stats_.ok_latency_us, 0.5), p99 = percentile(stats_.ok_latency_us, 0.99);
    double lag50 = percentile(stats_.send_lag_us, 0.5), lag99 = percentile(stats_.send_lag_us, 0.99);
    printf("\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"send_lag_p50_ms\":%.3f,\"send_lag_p99_ms\":%.3f,", p50, p99, lag50,
           lag99);
    double per_req = window_sent > 0 ? window_cpu / double(window_sent) * 1e6 : 0.0;
    printf("\"shed_p50_ms\":%.3f,\"shed_p99_ms\":%.3f,", percentile(stats_.shed_latency_us, 0.5),
           percentile(stats_.shed_latency_us, 0.99));
    if (server_cpu >= 0)
      printf("\"server_cpu_s\":%.4f,\"server_cpu_us_per_request\":%.2f,", server_cpu,
             window_sent > 0 ? server_cpu / double(window_sent) * 1e6 : 0.0);
    printf("\"cpu_s\":%.4f,\"sent_in_window\":%lld,\"cpu_us_per_request\":%.2f}\n", window_cpu,
           (long long)window_sent, per_req);
  }

  Options opt_;
  std::string wire_;
  int ep_;
  sockaddr_in addr_;
  int64_t deadline_ns_;
  int64_t grace_ns_;
  int64_t t0_ = 0, window_start_ = 0, window_end_ = 0;
  int64_t next_index_ = 0;
  int64_t total_sent_ = 0;
  int connected_ = 0;
  bool priming_ = false;
  int primed_ = 0;  // connections whose priming request was answered
  std::vector<Conn> conns_;
  std::vector<int> idle_;
  std::deque<int64_t> backlog_;
  Stats stats_;
};

std::string read_file(const std::string& path) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) {
    fprintf(stderr, "openloop: cannot read %s\n", path.c_str());
    exit(2);
  }
  std::string data;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
  fclose(f);
  return data;
}

}  // namespace

int main(int argc, char** argv) {
  // The kernel may defer a timed wake-up by the thread's timer slack (50 us by default) to batch wake-ups: 1 us
  // keeps the open loop's sends on time.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  Options opt;
  for (int k = 1; k + 1 < argc; k += 2) {
    std::string key = argv[k], val = argv[k + 1];
    if (key == "--host") opt.host = val;
    else if (key == "--port") opt.port = atoi(val.c_str());
    else if (key == "--request") opt.request_path = val;
    else if (key == "--mode") opt.open_loop = val == "open";
    else if (key == "--rate") opt.rate_per_s = atof(val.c_str());
    else if (key == "--connections") opt.connections = atoi(val.c_str());
    else if (key == "--duration") opt.duration_s = atof(val.c_str());
    else if (key == "--warmup") opt.warmup_s = atof(val.c_str());
    else if (key == "--deadline") opt.deadline_s = atof(val.c_str());
    else if (key == "--client" && (val == "fifo" || val == "drop")) opt.drop = val == "drop";
    else if (key == "--grace") opt.grace_s = atof(val.c_str());
    else if (key == "--server-pid") opt.server_pid = atoi(val.c_str());
    else {
      fprintf(stderr, "openloop: unknown option %s\n", key.c_str());
      return 2;
    }
  }
  if (opt.port <= 0 || opt.request_path.empty() || opt.connections <= 0 || opt.rate_per_s <= 0) {
    fprintf(stderr, "usage: openloop --port P --request FILE [--mode open|closed] [--rate R] [--connections N]\n");
    return 2;
  }
  Generator gen(opt, read_file(opt.request_path));
  return gen.run();
}
