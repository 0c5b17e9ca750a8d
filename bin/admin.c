/* The operators' side of both tools. The access log is one line per
 * finished request, buffered and written by libuv's thread pool so that a
 * slow disk never stalls the loop; a line has a bounded length whatever
 * the client sent, and when the disk falls behind lines are dropped (and
 * counted) rather than memory grown. */
#include "admin.h"

#include "tool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define ACCESS_BUF_SIZE (256 * 1024) /* each of two buffers: one filling, one being written */
#define ACCESS_FLUSH_MS 1000         /* a quiet log reaches the file within this */
#define ACCESS_TELL_MS  10000        /* dropped lines are reported at most this often */

#define ADMIN_MIN(a, b) ((a) < (b) ? (a) : (b))

/* ------------------------------------------------------------ access log */

static struct {
  uv_loop_t *loop;
  bool open;
  int format;
  uv_file fd;
  const char *path;
  char *buf[2];
  size_t len; /* of buf[cur] */
  int cur;    /* the buffer lines go into */
  bool writing;
  bool reopen;  /* SIGHUP: open the path again once no write is in flight, */
  bool flushed; /* and the lines logged before it have gone to the old file */
  uv_fs_t req;
  size_t woff, wlen; /* of the buffer being written */
  uv_timer_t timer;
  bool timer_open;
  uint64_t dropped;      /* lines dropped since start (a metric) */
  uint64_t dropped_told; /* of those, already logged */
  uint64_t told_at;      /* uv_now() of the last report of dropped lines */
  bool failing;          /* the last write failed: told once */
} A;

int admin_parse_format(const char *v) {
  if (strcmp(v, "text") == 0)
    return ADMIN_FMT_TEXT;
  if (strcmp(v, "json") == 0)
    return ADMIN_FMT_JSON;
  tool_usage_error("--log-format: \"%s\" is neither text nor json", v);
}

static int log_open_file(const char *path) {
  uv_fs_t req;
  int fd = uv_fs_open(NULL, &req, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640, NULL);
  uv_fs_req_cleanup(&req);
  return fd;
}

static void log_close_file(uv_file fd) {
  uv_fs_t req;
  uv_fs_close(NULL, &req, fd, NULL);
  uv_fs_req_cleanup(&req);
}

/* The file by its name again: the one logrotate moved away is closed. */
static void do_reopen(void) {
  A.reopen = A.flushed = false;
  int fd = log_open_file(A.path);
  if (fd < 0) {
    tool_logf(H2REV_LOG_ERROR, "reload: access log %s: %s: writing on to the file open", A.path,
              uv_strerror(fd));
    return;
  }
  log_close_file(A.fd);
  A.fd = fd;
  tool_logf(H2REV_LOG_INFO, "reload: access log %s opened again", A.path);
}

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
    /* Between buffers (no line is split across the two files), once the
     * lines logged before the signal are in the old one. */
    if (A.reopen && (A.flushed || A.len == 0))
      do_reopen();
    if (A.len == 0)
      return;
    A.cur ^= 1;
    A.wlen = A.len;
    A.woff = 0;
    A.len = 0;
    A.flushed = A.reopen;
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

void admin_log_open(uv_loop_t *loop, const char *path, int format) {
  A.loop = loop;
  A.path = path;
  A.format = format;
  if (strcmp(path, "-") == 0) {
    A.fd = 1;
  } else {
    int fd = log_open_file(path);
    if (fd < 0)
      tool_fatal("--access-log %s: %s", path, uv_strerror(fd));
    A.fd = fd;
  }
  A.buf[0] = malloc(ACCESS_BUF_SIZE);
  A.buf[1] = malloc(ACCESS_BUF_SIZE);
  if (A.buf[0] == NULL || A.buf[1] == NULL)
    tool_fatal("--access-log: out of memory");
  uv_timer_init(loop, &A.timer);
  uv_timer_start(&A.timer, access_tick, ACCESS_FLUSH_MS, ACCESS_FLUSH_MS);
  uv_unref((uv_handle_t *)&A.timer); /* the log never keeps the tool running */
  A.timer_open = true;
  A.open = true;
}

bool admin_log_on(void) {
  return A.open;
}

uint64_t admin_log_dropped(void) {
  return A.dropped;
}

void admin_log_reopen(void) {
  if (!A.open || A.fd == 1)
    return;
  A.reopen = true;
  access_write_next();
}

static void access_queue(const char *line, size_t n) {
  if (!A.open)
    return;
  if (A.len + n > ACCESS_BUF_SIZE) {
    A.dropped++;
    return;
  }
  memcpy(A.buf[A.cur] + A.len, line, n);
  A.len += n;
  if (A.len >= ACCESS_BUF_SIZE / 2)
    access_write_next();
}

void admin_log_close(void) {
  if (!A.open)
    return;
  if (A.timer_open) /* never drained (a fatal path): the handle goes with the process */
    uv_timer_stop(&A.timer);
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
  if (A.fd != 1)
    log_close_file(A.fd);
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

/* ------------------------------------------------------------- a line */

static const char hex[] = "0123456789abcdef";

/* Text: visible ASCII as is, '"' and '\' after a backslash, any other byte
 * (control, space, non-ASCII) as \xHH. Json: '"' and '\' after a
 * backslash, any byte outside visible ASCII and space as \u00XX. Past max
 * output bytes the value is cut: text ends it with the marker \... (never
 * produced by an escape, so a reader tells a cut value from a real one),
 * json says "truncated":true. */
static size_t esc(char *out, const char *s, size_t n, size_t max, bool json, bool *cut) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    size_t need;
    if (c == '"' || c == '\\')
      need = 2;
    else if (c > 0x20 && c < 0x7f)
      need = 1;
    else if (json && c == 0x20)
      need = 1;
    else
      need = json ? 6 : 4;
    if (o + need > max) {
      *cut = true;
      if (!json) {
        memcpy(out + o, "\\...", 4);
        o += 4;
      }
      return o;
    }
    if (need == 1) {
      out[o++] = (char)c;
    } else if (need == 2) {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else {
      memcpy(out + o, json ? "\\u00" : "\\x", json ? 4 : 2);
      o += json ? 4 : 2;
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    }
  }
  return o;
}

static void line_raw(admin_line_t *l, const char *p, size_t n) {
  if (l->len + n >= sizeof(l->b)) {
    l->over = true;
    return;
  }
  memcpy(l->b + l->len, p, n);
  l->len += n;
}

static void line_key(admin_line_t *l, const char *key) {
  if (l->json) {
    line_raw(l, l->len > 1 ? ",\"" : "\"", l->len > 1 ? 2 : 1);
    line_raw(l, key, strlen(key));
    line_raw(l, "\":", 2);
  } else {
    if (l->len > 0)
      line_raw(l, " ", 1);
    line_raw(l, key, strlen(key));
    line_raw(l, "=", 1);
  }
}

void admin_line_str(admin_line_t *l, const char *key, const char *s, size_t n, size_t max) {
  line_key(l, key);
  line_raw(l, "\"", 1);
  if (l->len + max + 4 + 2 >= sizeof(l->b)) {
    l->over = true;
    return;
  }
  l->len += esc(l->b + l->len, s, n, max, l->json, &l->cut);
  line_raw(l, "\"", 1);
}

void admin_line_word(admin_line_t *l, const char *key, const char *w) {
  if (l->json) {
    admin_line_str(l, key, w, strlen(w), ADMIN_FIELD_MAX);
  } else {
    line_key(l, key);
    line_raw(l, w, strlen(w));
  }
}

void admin_line_num(admin_line_t *l, const char *key, const char *fmt, ...) {
  line_key(l, key);
  char v[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(v, sizeof(v), fmt, ap);
  va_end(ap);
  line_raw(l, v, n > 0 ? ADMIN_MIN((size_t)n, sizeof(v) - 1) : 0);
}

void admin_line_begin(admin_line_t *l) {
  l->len = 0;
  l->json = A.format == ADMIN_FMT_JSON;
  l->cut = l->over = false;
  if (l->json)
    line_raw(l, "{", 1);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[48], t[32];
  strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(when, sizeof(when), "%s.%03ldZ", t, ts.tv_nsec / 1000000);
  admin_line_word(l, "time", when);
}

void admin_line_end(admin_line_t *l) {
  if (l->json && l->cut)
    line_raw(l, ",\"truncated\":true", 17);
  if (l->json)
    line_raw(l, "}", 1);
  line_raw(l, "\n", 1);
  if (!l->over) /* cannot happen: every field is bounded */
    access_queue(l->b, l->len);
}

/* ------------------------------------------------------- admin address */

static struct {
  bool open;
  h2rev_http_server_t srv;
  bool (*ready)(const char **why);
} M;

bool admin_out_init(admin_out_t *o, size_t cap) {
  o->b = malloc(cap);
  o->len = 0;
  o->cap = o->b != NULL ? cap : 0;
  return o->b != NULL;
}

void admin_put(admin_out_t *o, const char *fmt, ...) {
  if (o->len >= o->cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(o->b + o->len, o->cap - o->len, fmt, ap);
  va_end(ap);
  o->len = n < 0 ? o->cap : ADMIN_MIN(o->len + (size_t)n, o->cap);
}

void admin_metric(admin_out_t *o, const char *name, const char *type, const char *help) {
  admin_put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void admin_json_str(admin_out_t *o, const char *s, size_t n) {
  admin_put(o, "\"");
  for (size_t i = 0; i < n && o->len + 6 < o->cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\')
      admin_put(o, "\\%c", c);
    else if (c >= 0x20 && c < 0x7f)
      admin_put(o, "%c", c);
    else
      admin_put(o, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
  }
  admin_put(o, "\"");
}

void admin_histogram(admin_out_t *o, const char *name, const uint64_t *buckets, uint64_t sum_us) {
  static const unsigned bounds_ms[] = H2REV_HTTP_DURATION_BOUNDS_MS;
  uint64_t cum = 0;
  for (int i = 0; i < H2REV_HTTP_DURATION_BUCKETS; i++) {
    cum += buckets[i];
    if (i < H2REV_HTTP_DURATION_BUCKETS - 1)
      admin_put(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds_ms[i] / 1000.0,
                (unsigned long long)cum);
    else
      admin_put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
  }
  admin_put(o, "%s_sum %.6f\n", name, (double)sum_us / 1e6);
  admin_put(o, "%s_count %llu\n", name, (unsigned long long)cum);
}

void admin_reply(h2rev_http_req_t *req, admin_out_t *o, const char *type) {
  if (o->b == NULL) {
    h2rev_http_reply(req, 503, "text/plain", "out of memory\n", 14);
    return;
  }
  if (o->len >= o->cap) { /* a bound too small: a bug, never a cut answer */
    h2rev_http_reply(req, 500, "text/plain", "answer too large\n", 17);
  } else {
    h2rev_http_reply(req, 200, type, o->b, o->len);
  }
  free(o->b);
  o->b = NULL;
}

static void healthz(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_reply(req, 200, "text/plain", "ok\n", 3);
}

static void readyz(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  const char *why = "not ready";
  if (M.ready != NULL && M.ready(&why)) {
    h2rev_http_reply(req, 200, "text/plain", "ready\n", 6);
    return;
  }
  char body[256];
  int n = snprintf(body, sizeof(body), "%s\n", why);
  h2rev_http_reply(req, 503, "text/plain", body, ADMIN_MIN((size_t)n, sizeof(body) - 1));
}

int admin_listen(uv_loop_t *loop, const struct sockaddr *addr, bool (*ready)(const char **why)) {
  h2rev_http_server_options_t so = {.log = {tool_log, NULL, tool_log_level}};
  int r = h2rev_http_server_init(loop, &M.srv, &so);
  if (r != 0)
    return r;
  M.open = true;
  M.ready = ready;
  if ((r = h2rev_http_server_route(&M.srv, "/healthz", healthz, NULL)) != 0 ||
      (r = h2rev_http_server_route(&M.srv, "/readyz", readyz, NULL)) != 0 ||
      (r = h2rev_http_server_listen(&M.srv, addr, NULL)) != 0)
    return r;
  return 0;
}

int admin_route(const char *path, h2rev_http_handler_cb handler) {
  return h2rev_http_server_route(&M.srv, path, handler, NULL);
}

int admin_getsockname(struct sockaddr *addr, int *len) {
  return M.open ? h2rev_http_server_getsockname(&M.srv, 0, addr, len) : UV_EINVAL;
}

void admin_stop(void) {
  if (M.open) {
    M.open = false;
    h2rev_http_server_close(&M.srv, NULL);
  }
  access_stop();
}

/* ------------------------------------------------------------- systemd */

void admin_notify_reloading(void) {
  /* systemd 253 and later match the reload to its request by this time. */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  char state[64];
  snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
           (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
  admin_notify(state);
}

void admin_notify(const char *state) {
  const char *path = getenv("NOTIFY_SOCKET");
  if (path == NULL || path[0] == '\0')
    return;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t n = strlen(path);
  if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path)) {
    tool_logf(H2REV_LOG_WARN, "NOTIFY_SOCKET %s: not a socket path: systemd not told %s", path,
              state);
    return;
  }
  memcpy(sa.sun_path, path, n);
  if (path[0] == '@')
    sa.sun_path[0] = '\0'; /* the abstract namespace */
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return;
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
    tool_logf(H2REV_LOG_WARN, "NOTIFY_SOCKET %s: %s: systemd not told %s", path, strerror(errno),
              state);
  close(fd);
}
