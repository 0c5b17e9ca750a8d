/* The dialer tool's access log and metrics. The log is one logfmt line per
 * finished request, built from h2rev_access_t, buffered and written by
 * libuv's thread pool so that a slow disk never stalls the loop; a line
 * has a bounded length whatever the client sent, and when the disk falls
 * behind lines are dropped (and counted) rather than memory grown. */
#include "ops.h"

#include "tool.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ACCESS_BUF_SIZE  (256 * 1024) /* each of two buffers: one filling, one being written */
#define ACCESS_FLUSH_MS  1000         /* a quiet log reaches the file within this */
#define ACCESS_TELL_MS   10000        /* dropped lines are reported at most this often */
#define ACCESS_PATH_MAX  512          /* escaped bytes of a path kept in a line */
#define ACCESS_FIELD_MAX 64           /* escaped bytes of a method or a listener id */
#define ACCESS_LINE_MAX  1024         /* bound of a line: the fields above and the fixed ones */
#define METRICS_BODY_MAX (16 * 1024)  /* the /metrics answer */

#define OPS_MIN(a, b) ((a) < (b) ? (a) : (b))

/* ------------------------------------------------------------ access log */

static struct {
  uv_loop_t *loop;
  bool open;
  uv_file fd;
  const char *path;
  char *buf[2];
  size_t len; /* of buf[cur] */
  int cur;    /* the buffer lines go into */
  bool writing;
  uv_fs_t req;
  size_t woff, wlen; /* of the buffer being written */
  uv_timer_t timer;
  bool timer_open;
  uint64_t dropped;      /* lines dropped since start (a metric) */
  uint64_t dropped_told; /* of those, already logged */
  uint64_t told_at;      /* uv_now() of the last report of dropped lines */
  bool failing;          /* the last write failed: told once */
  char route[512];       /* the proxy's prefix */
  size_t route_len;
} A;

static void access_write_next(void);

static void access_wrote(uv_fs_t *req) {
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  if (r < 0) {
    if (!A.failing)
      tool_logf(H2REV_LOG_ERROR, "access log %s: %s (lines are lost until a write succeeds)",
                A.path, uv_strerror((int)r));
    A.failing = true;
    A.woff = A.wlen; /* that buffer is lost */
  } else {
    if (A.failing)
      tool_logf(H2REV_LOG_WARN, "access log %s: writing again", A.path);
    A.failing = false;
    A.woff += (size_t)r;
  }
  A.writing = false;
  access_write_next();
}

/* Writes the rest of the buffer in flight, else swaps in the filled one. */
static void access_write_next(void) {
  if (A.writing || !A.open)
    return;
  if (A.woff >= A.wlen) {
    if (A.len == 0)
      return;
    A.cur ^= 1;
    A.wlen = A.len;
    A.woff = 0;
    A.len = 0;
  }
  if (A.dropped > A.dropped_told && uv_now(A.loop) >= A.told_at + ACCESS_TELL_MS) {
    A.told_at = uv_now(A.loop);
    tool_logf(H2REV_LOG_WARN, "access log %s: %llu lines dropped (writes fall behind)", A.path,
              (unsigned long long)(A.dropped - A.dropped_told));
    A.dropped_told = A.dropped;
  }
  uv_buf_t b = uv_buf_init(A.buf[A.cur ^ 1] + A.woff, (unsigned)(A.wlen - A.woff));
  if (uv_fs_write(A.loop, &A.req, A.fd, &b, 1, -1, access_wrote) == 0)
    A.writing = true;
}

static void access_tick(uv_timer_t *t) {
  (void)t;
  access_write_next();
}

void ops_access_open(uv_loop_t *loop, const char *path, const char *proxy_route) {
  A.loop = loop;
  A.path = path;
  if (strcmp(path, "-") == 0) {
    A.fd = 1;
  } else {
    uv_fs_t req;
    int fd = uv_fs_open(NULL, &req, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640, NULL);
    uv_fs_req_cleanup(&req);
    if (fd < 0)
      tool_fatal("--access-log %s: %s", path, uv_strerror(fd));
    A.fd = fd;
  }
  A.buf[0] = malloc(ACCESS_BUF_SIZE);
  A.buf[1] = malloc(ACCESS_BUF_SIZE);
  if (A.buf[0] == NULL || A.buf[1] == NULL)
    tool_fatal("--access-log: out of memory");
  snprintf(A.route, sizeof(A.route), "%s", proxy_route);
  A.route_len = strlen(A.route);
  uv_timer_init(loop, &A.timer);
  uv_timer_start(&A.timer, access_tick, ACCESS_FLUSH_MS, ACCESS_FLUSH_MS);
  uv_unref((uv_handle_t *)&A.timer); /* the log never keeps the tool running */
  A.timer_open = true;
  A.open = true;
}

/* Appends s[0..n) quoted-safe: visible ASCII as is, '"' and '\' after a
 * backslash, any other byte (control, space, non-ASCII) as \xHH. Past max
 * output bytes the value ends with the marker \... (never produced by an
 * escape, so a reader tells a cut value from a real one). */
static size_t esc(char *out, const char *s, size_t n, size_t max) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    size_t need = c == '"' || c == '\\' ? 2 : c > 0x20 && c < 0x7f ? 1 : 4;
    if (o + need > max) {
      memcpy(out + o, "\\...", 4);
      return o + 4;
    }
    if (need == 1) {
      out[o++] = (char)c;
    } else if (need == 2) {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else {
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    }
  }
  return o;
}

void ops_access_log(void *arg, const h2rev_access_t *a) {
  (void)arg;
  if (!A.open)
    return;
  const h2rev_http_req_t *rq = a->req;
  char method[ACCESS_FIELD_MAX + 8], path[ACCESS_PATH_MAX + 8], id[ACCESS_FIELD_MAX + 8];
  size_t ml = esc(method, rq->method, strlen(rq->method), ACCESS_FIELD_MAX);
  /* CONNECT <id>:<port> has no path: the target stands for it, and names the listener. */
  bool by_authority = rq->path[0] == '\0' && strcmp(rq->method, "CONNECT") == 0;
  const char *target = by_authority ? rq->authority : rq->path;
  size_t pl = esc(path, target, strlen(target), ACCESS_PATH_MAX);
  size_t il = 0;
  const char *colon = by_authority ? strrchr(rq->authority, ':') : NULL;
  if (colon != NULL)
    il = esc(id, rq->authority, (size_t)(colon - rq->authority), ACCESS_FIELD_MAX);
  /* <proxy>/<id>/...: the listener it went to. */
  if (!by_authority && A.route_len > 0 && strcmp(rq->route, A.route) == 0 &&
      strncmp(rq->path, A.route, A.route_len) == 0 && rq->path[A.route_len] == '/') {
    const char *s = rq->path + A.route_len + 1;
    il = esc(id, s, strcspn(s, "/?"), ACCESS_FIELD_MAX);
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
  char proto[12];
  if (rq->http_major == 2)
    snprintf(proto, sizeof(proto), "HTTP/2");
  else
    snprintf(proto, sizeof(proto), "HTTP/1.%d", rq->http_minor == 0 ? 0 : 1);
  char line[ACCESS_LINE_MAX + ACCESS_PATH_MAX];
  int n = snprintf(line, sizeof(line),
                   "time=%s.%03ldZ peer=%s method=\"%.*s\" path=\"%.*s\" proto=%s status=%d "
                   "bytes=%llu in=%llu ms=%llu.%03llu result=%s listener=\"%.*s\"\n",
                   when, ts.tv_nsec / 1000000, rq->peer[0] ? rq->peer : "-", (int)ml, method,
                   (int)pl, path, proto, a->status, (unsigned long long)a->bytes_out,
                   (unsigned long long)a->bytes_in, (unsigned long long)(a->duration_us / 1000),
                   (unsigned long long)(a->duration_us % 1000),
                   a->result == 0 ? "ok" : h2rev_err_name(a->result), (int)il, id);
  if (n <= 0 || (size_t)n >= sizeof(line))
    return; /* cannot happen: every field is bounded */
  if (A.len + (size_t)n > ACCESS_BUF_SIZE) {
    A.dropped++;
    return;
  }
  memcpy(A.buf[A.cur] + A.len, line, (size_t)n);
  A.len += (size_t)n;
  if (A.len >= ACCESS_BUF_SIZE / 2)
    access_write_next();
}

void ops_access_close(void) {
  if (!A.open)
    return;
  if (A.timer_open) { /* never drained (a fatal path): the handle goes with the process */
    uv_timer_stop(&A.timer);
  }
  /* The loop has ended: nothing is in flight; what is left goes out now. */
  const char *bufs[2] = {A.buf[A.cur ^ 1] + A.woff, A.buf[A.cur]};
  size_t lens[2] = {A.wlen - A.woff, A.len};
  for (int i = 0; i < 2; i++) {
    size_t off = 0;
    while (off < lens[i]) {
      uv_fs_t req;
      uv_buf_t b = uv_buf_init((char *)bufs[i] + off, (unsigned)(lens[i] - off));
      int r = uv_fs_write(NULL, &req, A.fd, &b, 1, -1, NULL);
      uv_fs_req_cleanup(&req);
      if (r <= 0) {
        if (!A.failing)
          tool_logf(H2REV_LOG_ERROR, "access log %s: %s", A.path, uv_strerror(r));
        break;
      }
      off += (size_t)r;
    }
  }
  if (A.fd != 1) {
    uv_fs_t req;
    uv_fs_close(NULL, &req, A.fd, NULL);
    uv_fs_req_cleanup(&req);
  }
  free(A.buf[0]);
  free(A.buf[1]);
  A.open = false;
}

/* The timer must be closed before the loop can end cleanly. */
static void access_stop(void) {
  if (A.timer_open) {
    A.timer_open = false;
    uv_close((uv_handle_t *)&A.timer, NULL);
  }
  access_write_next();
}

/* -------------------------------------------------------------- metrics */

static struct {
  bool open;
  h2rev_http_server_t srv;
  h2rev_dialer_t *dialer;
} M;

typedef struct out {
  char *b;
  size_t len, cap;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...) {
  if (o->len >= o->cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(o->b + o->len, o->cap - o->len, fmt, ap);
  va_end(ap);
  o->len = n < 0 ? o->cap : OPS_MIN(o->len + (size_t)n, o->cap);
}

static void metric(out_t *o, const char *name, const char *type, const char *help) {
  put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void healthz(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_reply(req, 200, "text/plain", "ok\n", 3);
}

static void metrics(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  static const unsigned bounds_ms[] = H2REV_HTTP_DURATION_BOUNDS_MS;
  static const char *classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  static const char *protos[] = {"http1", "http2"};
  h2rev_dialer_stats_t d;
  h2rev_dialer_stats(M.dialer, &d);
  h2rev_http_server_stats_t s = {0};
  h2rev_http_server_t *srv = h2rev_dialer_server(M.dialer);
  if (srv != NULL)
    h2rev_http_server_stats(srv, &s);
  /* Pending dials live with each listener. */
  size_t n = h2rev_dialer_listeners(M.dialer, NULL, 0);
  h2rev_listener_info_t *li = n > 0 ? malloc(n * sizeof(*li)) : NULL;
  uint64_t pending = 0;
  if (li != NULL) {
    n = OPS_MIN(h2rev_dialer_listeners(M.dialer, li, n), n);
    for (size_t i = 0; i < n; i++)
      pending += li[i].pending;
    free(li);
  }
  out_t o = {malloc(METRICS_BODY_MAX), 0, METRICS_BODY_MAX};
  if (o.b == NULL) {
    h2rev_http_reply(req, 503, "text/plain", "out of memory\n", 14);
    return;
  }
  typedef unsigned long long ull;
  metric(&o, "h2rev_listeners", "gauge", "Listeners attached now.");
  put(&o, "h2rev_listeners %llu\n", (ull)d.listeners);
  metric(&o, "h2rev_spares", "gauge", "Idle reverse connections ready for a dial.");
  put(&o, "h2rev_spares %llu\n", (ull)d.spares);
  metric(&o, "h2rev_dials_pending", "gauge", "Dials waiting for a reverse connection.");
  put(&o, "h2rev_dials_pending %llu\n", (ull)pending);
  metric(&o, "h2rev_dials_total", "counter", "Dials completed, by result.");
  uint64_t known = d.dials_nolistener + d.dials_timeout + d.dials_pickup + d.dials_closed +
                   d.dials_toomany + d.dials_canceled;
  put(&o, "h2rev_dials_total{result=\"ok\"} %llu\n", (ull)d.dials_ok);
  put(&o, "h2rev_dials_total{result=\"no_listener\"} %llu\n", (ull)d.dials_nolistener);
  put(&o, "h2rev_dials_total{result=\"timeout\"} %llu\n", (ull)d.dials_timeout);
  put(&o, "h2rev_dials_total{result=\"pickup_failed\"} %llu\n", (ull)d.dials_pickup);
  put(&o, "h2rev_dials_total{result=\"listener_gone\"} %llu\n", (ull)d.dials_closed);
  put(&o, "h2rev_dials_total{result=\"too_many\"} %llu\n", (ull)d.dials_toomany);
  put(&o, "h2rev_dials_total{result=\"canceled\"} %llu\n", (ull)d.dials_canceled);
  put(&o, "h2rev_dials_total{result=\"other\"} %llu\n",
      (ull)(d.dials_failed > known ? d.dials_failed - known : 0));
  metric(&o, "h2rev_conn_ready_sent_total", "counter", "conn-ready commands sent to listeners.");
  put(&o, "h2rev_conn_ready_sent_total %llu\n", (ull)d.conn_ready_sent);
  metric(&o, "h2rev_revdial_refused_total", "counter", "Listener attachments refused.");
  put(&o, "h2rev_revdial_refused_total %llu\n", (ull)d.refused);
  metric(&o, "h2rev_http_requests_total", "counter",
         "Finished requests, by protocol and status class (none: no head was sent).");
  for (int p = 0; p < 2; p++)
    for (int c = 0; c < 6; c++)
      put(&o, "h2rev_http_requests_total{proto=\"%s\",code=\"%s\"} %llu\n", protos[p], classes[c],
          (ull)s.requests[p][c]);
  metric(&o, "h2rev_http_requests_incomplete_total", "counter",
         "Requests whose response did not complete (client gone, aborted).");
  put(&o, "h2rev_http_requests_incomplete_total %llu\n", (ull)s.requests_incomplete);
  metric(&o, "h2rev_http_request_duration_seconds", "histogram",
         "From the request head to the end of the response.");
  uint64_t cum = 0;
  for (int i = 0; i < H2REV_HTTP_DURATION_BUCKETS; i++) {
    cum += s.duration[i];
    if (i < H2REV_HTTP_DURATION_BUCKETS - 1)
      put(&o, "h2rev_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n", bounds_ms[i] / 1000.0,
          (ull)cum);
    else
      put(&o, "h2rev_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (ull)cum);
  }
  put(&o, "h2rev_http_request_duration_seconds_sum %.6f\n", (double)s.duration_us_sum / 1e6);
  put(&o, "h2rev_http_request_duration_seconds_count %llu\n", (ull)cum);
  metric(&o, "h2rev_http_request_bytes_total", "counter", "Request body bytes received.");
  put(&o, "h2rev_http_request_bytes_total %llu\n", (ull)s.bytes_in);
  metric(&o, "h2rev_http_response_bytes_total", "counter", "Response body bytes sent.");
  put(&o, "h2rev_http_response_bytes_total %llu\n", (ull)s.bytes_out);
  metric(&o, "h2rev_http_connections", "gauge", "Client and listener connections open now.");
  put(&o, "h2rev_http_connections %llu\n", (ull)s.connections);
  metric(&o, "h2rev_http_connections_total", "counter", "Connections accepted.");
  put(&o, "h2rev_http_connections_total %llu\n", (ull)s.connections_total);
  metric(&o, "h2rev_http_connections_refused_total", "counter",
         "Connections accepted and closed at once (out of memory, TLS setup).");
  put(&o, "h2rev_http_connections_refused_total %llu\n", (ull)s.connections_refused);
  metric(&o, "h2rev_http_connection_limit_reached_total", "counter",
         "Times --max-connections stopped accepting (new ones wait in the backlog).");
  put(&o, "h2rev_http_connection_limit_reached_total %llu\n", (ull)s.limit_reached);
  metric(&o, "h2rev_access_log_dropped_total", "counter",
         "Access log lines dropped because writes fell behind.");
  put(&o, "h2rev_access_log_dropped_total %llu\n", (ull)A.dropped);
  h2rev_http_reply(req, 200, "text/plain; version=0.0.4", o.b, o.len);
  free(o.b);
}

int ops_metrics_listen(uv_loop_t *loop, h2rev_dialer_t *dialer, const struct sockaddr *addr) {
  h2rev_http_server_options_t so = {.log = {tool_log, NULL, tool_log_level}};
  int r = h2rev_http_server_init(loop, &M.srv, &so);
  if (r != 0)
    return r;
  M.dialer = dialer;
  M.open = true;
  if ((r = h2rev_http_server_route(&M.srv, "/metrics", metrics, NULL)) != 0 ||
      (r = h2rev_http_server_route(&M.srv, "/healthz", healthz, NULL)) != 0 ||
      (r = h2rev_http_server_listen(&M.srv, addr, NULL)) != 0)
    return r;
  return 0;
}

int ops_metrics_getsockname(struct sockaddr *addr, int *len) {
  return M.open ? h2rev_http_server_getsockname(&M.srv, 0, addr, len) : UV_EINVAL;
}

void ops_stop(void) {
  if (M.open) {
    M.open = false;
    h2rev_http_server_close(&M.srv, NULL);
  }
  access_stop();
}
