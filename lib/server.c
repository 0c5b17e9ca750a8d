/*
 * The HTTP server: listening sockets and the connections they accept
 * (HTTP/2 sessions, or HTTP/1.1 through http1.c), path-prefix routing, and
 * the request object that handlers see for both protocols. Internal mounts
 * (the dialer) get their requests in the protocol's own form, and the
 * connections' deaths, which is how one accept path serves both.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct h2r_hreq {
  h2rev_http_req_t pub;
  h2r_server_t *srv;
  struct h2r_hreq *lnext, *lprev; /* the server's live requests (send_timeout_ms) */
  uint64_t progress_at;           /* uv_now when its output last moved or was empty */
  h2r_hreq_t *pnext;              /* the server's pending list */
  bool pending;
  h2rev_http_handler_cb handler; /* to call on the next turn */
  void *handler_arg;
  bool h2;
  h2r_h1c_t *h1;     /* HTTP/1.1: the connection */
  h2rev_stream_t hs; /* HTTP/2: the request stream */
  h2rev_shutdown_t sh;
  h2rev_http_alloc_cb alloc_cb;
  h2rev_http_read_cb read_cb;
  h2rev_http_done_cb done_cb;
  bool reading;
  bool responded;
  bool no_body;  /* HEAD, 204, 304: what is written is dropped */
  bool finished; /* end or abort called */
  bool released; /* done reported (HTTP/1.1) */
  bool body_end; /* HTTP/1.1: the whole body was parsed */
  bool eof_done; /* UV_EOF or the error given to read_cb */
  bool manual;   /* h2rev_http_read_manual: HTTP/1.1 counts what the handler holds */
  size_t held;   /* HTTP/1.1: bytes given to read_cb, not yet consumed */
  int gone;      /* HTTP/1.1: the connection's error */
  int result;    /* for the done callback */
  int64_t cl_out;
  uint64_t out;
  uint64_t in;       /* body bytes given to read_cb */
  uint64_t start_ns; /* uv_hrtime() when the head was complete */
  int status;        /* of the head sent */
  unsigned writes;   /* HTTP/1.1 writes not completed */
  char *stash;       /* HTTP/1.1 body received while not reading */
  size_t stash_len, stash_off;
  h2rev_header_t hdrs[];
};

#define H2_READ_SUGGEST (64 * 1024)
/* Defaults of the limits against clients that hold resources. */
#define H2R_MAX_CONNECTIONS    16384
#define H2R_CONN_HEADER_BYTES  (2u << 20)
#define H2R_TOTAL_HEADER_BYTES ((size_t)64 << 20)

static void srv_maybe_closed(h2r_server_t *srv);
static void hreq_schedule(h2r_hreq_t *rq);

/* ------------------------------------------------------------ routes */

static bool route_matches(const h2r_route_t *r, const char *path, size_t len) {
  if (len < r->len || memcmp(path, r->prefix, r->len) != 0)
    return false;
  if (len == r->len || r->prefix[r->len - 1] == '/')
    return true;
  char c = path[r->len];
  return c == '/' || c == '?';
}

const h2r_route_t *h2r_server_route_find(const h2r_server_t *srv, const char *path, size_t len) {
  const h2r_route_t *best = NULL;
  for (const h2r_route_t *r = srv->routes; r != NULL; r = r->next)
    if ((best == NULL || r->len > best->len) && route_matches(r, path, len))
      best = r;
  return best != NULL ? best : srv->notfound;
}

static void not_found(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_reply(req, 404, "text/plain", "not found\n", 10);
}

static void no_connect(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_reply(req, 405, "text/plain", "method not allowed here\n", 24);
}

const h2r_route_t *h2r_server_connect_route(const h2r_server_t *srv) {
  return srv->connect != NULL ? srv->connect : srv->noconnect;
}

int h2r_server_route_connect(h2r_server_t *srv, h2rev_http_handler_cb handler, void *arg) {
  if (srv->connect != NULL)
    return UV_EEXIST;
  h2r_route_t *r = calloc(1, sizeof(*r) + 1);
  if (r == NULL)
    return UV_ENOMEM;
  r->handler = handler;
  r->arg = arg;
  srv->connect = r;
  return 0;
}

static int route_add(h2r_server_t *srv, const char *prefix, h2rev_http_handler_cb handler,
                     void *arg) {
  if (prefix == NULL || prefix[0] != '/')
    return UV_EINVAL;
  size_t len = strlen(prefix);
  if (len > 1 && prefix[len - 1] == '/')
    len--; /* "/api/" and "/api" are the same route */
  for (h2r_route_t *r = srv->routes; r != NULL; r = r->next)
    if (r->len == len && memcmp(r->prefix, prefix, len) == 0)
      return UV_EEXIST;
  h2r_route_t *r = malloc(sizeof(*r) + len + 1);
  if (r == NULL)
    return UV_ENOMEM;
  memcpy(r->prefix, prefix, len);
  r->prefix[len] = '\0';
  r->len = len;
  r->handler = handler;
  r->arg = arg;
  r->next = srv->routes;
  srv->routes = r;
  return 0;
}

int h2r_server_route(h2r_server_t *srv, const char *prefix, h2rev_http_handler_cb handler,
                     void *arg) {
  return route_add(srv, prefix, handler, arg);
}

void h2r_server_unroute(h2r_server_t *srv, void *arg) {
  if (srv->connect != NULL && srv->connect->arg == arg) {
    free(srv->connect);
    srv->connect = NULL;
  }
  h2r_route_t **p = &srv->routes;
  while (*p != NULL) {
    if ((*p)->arg == arg) {
      h2r_route_t *r = *p;
      *p = r->next;
      free(r);
    } else {
      p = &(*p)->next;
    }
  }
}

int h2r_server_watch(h2r_server_t *srv, const h2r_watch_ops *ops, void *arg) {
  if (srv->watch_ops != NULL && srv->watch_arg != arg)
    return ops != NULL ? UV_EBUSY : 0;
  srv->watch_ops = ops;
  srv->watch_arg = ops != NULL ? arg : NULL;
  return 0;
}

/* ---------------------------------------------------------- lifetime */

void h2r_server_ref(h2r_server_t *srv) {
  srv->live++;
}

static void drain_tick(uv_timer_t *t);

void h2r_server_unref(h2r_server_t *srv) {
  /* A drain ends with the last thing in flight: on the next turn, once
   * whatever released it has returned. */
  if (--srv->live == 0 && srv->draining && !srv->closing)
    uv_timer_start(&srv->drain_timer, drain_tick, 0, 0);
  srv_maybe_closed(srv);
}

/* -------------------------------------------------- requests: common */

static char *put(char **mem, const char *s, size_t n, bool lower) {
  char *d = *mem;
  for (size_t i = 0; i < n; i++)
    d[i] = lower && s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] + 32) : s[i];
  d[n] = '\0';
  *mem += n + 1;
  return d;
}

/* Requests whose client takes none of their output for send_timeout_ms
 * are cut: the client is gone or holds them on purpose (an HTTP/2 window
 * left at 0). Output that moves, or none waiting, is progress. */
static void hreq_stalled(h2r_hreq_t *rq) {
  h2r_server_t *srv = rq->srv;
  h2r_log_limited(&srv->o.log, &srv->rl, srv->loop, H2REV_LOG_INFO,
                  "%s: %s %s: the client took none of the response for %u ms: cut", rq->pub.peer,
                  rq->pub.method, rq->pub.path, srv->o.send_timeout_ms);
  if (rq->result == 0)
    rq->result = UV_ETIMEDOUT;
  rq->progress_at = uv_now(srv->loop); /* once */
  if (rq->h2) {
    h2r_strm_t *st = rq->hs.s_;
    /* As a client's own reset would: the handler learns it, then ends. */
    if (st != NULL && st->id > 0 && !(st->flags & H2R_F_CLOSING)) {
      nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
      h2r_session_schedule(st->sess);
    }
  } else if (rq->h1 != NULL) {
    h2r_h1c_close(rq->h1);
  }
}

static void send_tick(uv_timer_t *t) {
  h2r_server_t *srv = t->data;
  if (srv->reqs == NULL) {
    uv_timer_stop(t);
    return;
  }
  uint64_t now = uv_now(srv->loop);
  for (h2r_hreq_t *rq = srv->reqs, *next; rq != NULL; rq = next) {
    next = rq->lnext;
    if (h2rev_http_write_queue_size(&rq->pub) == 0)
      rq->progress_at = now;
    else if (now - rq->progress_at >= srv->o.send_timeout_ms)
      hreq_stalled(rq); /* frees nothing now: the cut completes on later turns */
  }
}

/* The request and its strings in one block; `strings` counts the bytes of
 * the caller's strings with their NULs, the route's is added here. */
static h2r_hreq_t *hreq_alloc(h2r_server_t *srv, const h2r_route_t *route, size_t nhdrs,
                              size_t strings, char **mem) {
  h2r_hreq_t *rq =
      calloc(1, sizeof(*rq) + nhdrs * sizeof(h2rev_header_t) + strings + route->len + 1);
  if (rq == NULL)
    return NULL;
  rq->srv = srv;
  rq->pub.server = srv->pub;
  rq->pub.headers = rq->hdrs;
  rq->cl_out = -1;
  rq->start_ns = uv_hrtime();
  *mem = (char *)(rq->hdrs + nhdrs);
  /* "/" routes everything: its prefix, as the part of the path to strip, is "". */
  rq->pub.route = put(mem, route->prefix, route->len == 1 ? 0 : route->len, false);
  rq->handler = route->handler;
  rq->handler_arg = route->arg;
  rq->progress_at = uv_now(srv->loop);
  rq->lnext = srv->reqs;
  if (srv->reqs != NULL)
    srv->reqs->lprev = rq;
  srv->reqs = rq;
  if (!uv_is_active((uv_handle_t *)&srv->send_timer))
    uv_timer_start(&srv->send_timer, send_tick, srv->send_tick_ms, srv->send_tick_ms);
  h2r_server_ref(srv);
  return rq;
}

/* Counts the request and gives it to the access log: once, when its
 * done callback has run. */
static void hreq_account(h2r_hreq_t *rq) {
  static const uint64_t bounds_ms[] = H2REV_HTTP_DURATION_BOUNDS_MS;
  h2r_server_t *srv = rq->srv;
  h2rev_http_server_stats_t *st = &srv->st;
  uint64_t us = (uv_hrtime() - rq->start_ns) / 1000;
  int cls = rq->status >= 100 && rq->status < 600 ? rq->status / 100 : 0;
  st->requests[rq->h2 ? 1 : 0][cls]++;
  if (rq->result != 0)
    st->requests_incomplete++;
  size_t b = 0;
  while (b < sizeof(bounds_ms) / sizeof(bounds_ms[0]) && us > bounds_ms[b] * 1000)
    b++;
  st->duration[b]++;
  st->duration_us_sum += us;
  st->bytes_in += rq->in;
  st->bytes_out += rq->out;
  if (srv->o.access_log != NULL) {
    h2rev_access_t a = {&rq->pub, rq->status, rq->result, rq->in, rq->out, us};
    srv->o.access_log(srv->o.access_log_arg, &a);
  }
}

static void hreq_free(h2r_hreq_t *rq) {
  h2r_server_t *srv = rq->srv;
  if (rq->pending) { /* rescheduled by the callback that finished it */
    h2r_hreq_t **p = &srv->pend;
    while (*p != NULL && *p != rq)
      p = &(*p)->pnext;
    if (*p == rq) {
      *p = rq->pnext;
      if (srv->pend_tail == &rq->pnext)
        srv->pend_tail = p;
    }
  }
  if (rq->lprev != NULL)
    rq->lprev->lnext = rq->lnext;
  else
    srv->reqs = rq->lnext;
  if (rq->lnext != NULL)
    rq->lnext->lprev = rq->lprev;
  free(rq->stash);
  free(rq);
  h2r_server_unref(srv);
}

static void hreq_run(h2r_hreq_t *rq) {
  /* In the check phase of this loop turn: the handler may answer at once,
   * which must not happen inside the parser that found the request. */
  hreq_schedule(rq);
}

static void h1_deliver(h2r_hreq_t *rq);
static void h1_release(h2r_hreq_t *rq);

static void hreq_pump(h2r_hreq_t *rq) {
  if (rq->handler != NULL) {
    h2rev_http_handler_cb h = rq->handler;
    rq->handler = NULL;
    if (rq->h2) { /* the handler may have taken the stream (h2r_hreq_take_stream): rq is gone */
      h(&rq->pub, rq->handler_arg);
      return;
    }
    h(&rq->pub, rq->handler_arg);
  }
  if (!rq->h2 && !rq->released) {
    h1_deliver(rq);
    if (rq->finished && rq->writes == 0)
      h1_release(rq);
  }
}

static void srv_work(void *arg) {
  h2r_server_t *srv = arg;
  h2r_hreq_t *list = srv->pend;
  srv->pend = NULL;
  srv->pend_tail = &srv->pend;
  while (list != NULL) {
    h2r_hreq_t *rq = list;
    list = rq->pnext;
    rq->pending = false;
    hreq_pump(rq);
  }
}

static void hreq_schedule(h2r_hreq_t *rq) {
  h2r_server_t *srv = rq->srv;
  if (rq->pending)
    return;
  rq->pending = true;
  rq->pnext = NULL;
  *srv->pend_tail = rq;
  srv->pend_tail = &rq->pnext;
  h2r_defer_arm(&srv->work);
}

static bool header_ok(const char *s, size_t n, bool name) {
  if (name && n == 0)
    return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0' || (name && (s[i] == ':' || s[i] == ' ')))
      return false;
  return true;
}

/* ------------------------------------------------ requests: HTTP/1.1 */

static h2r_hreq_t *h1_new(h2r_server_t *srv, h2r_h1c_t *c, const h2r_route_t *route,
                          const h2r_h1head_t *hd, int http_minor, int64_t content_length) {
  size_t strings =
      strlen(hd->method) + hd->urllen + hd->alen + strlen(hd->scheme) + strlen(hd->peer) + 5;
  for (size_t i = 0; i < hd->nhdrs; i++)
    strings += hd->hdrs[i].nl + hd->hdrs[i].vl + 2;
  char *mem;
  h2r_hreq_t *rq = hreq_alloc(srv, route, hd->nhdrs, strings, &mem);
  if (rq == NULL)
    return NULL;
  rq->h1 = c;
  rq->pub.method = put(&mem, hd->method, strlen(hd->method), false);
  rq->pub.path = put(&mem, hd->url, hd->urllen, false);
  rq->pub.authority = put(&mem, hd->authority, hd->alen, false);
  rq->pub.scheme = put(&mem, hd->scheme, strlen(hd->scheme), false);
  rq->pub.peer = put(&mem, hd->peer, strlen(hd->peer), false);
  for (size_t i = 0; i < hd->nhdrs; i++) {
    rq->hdrs[i].name = put(&mem, hd->hdrs[i].name, hd->hdrs[i].nl, true);
    rq->hdrs[i].value = put(&mem, hd->hdrs[i].value, hd->hdrs[i].vl, false);
  }
  rq->pub.nheaders = hd->nhdrs;
  rq->pub.http_major = 1;
  rq->pub.http_minor = http_minor;
  rq->pub.content_length = content_length;
  rq->pub.upgrade = hd->upgrade;
  if (hd->upgrade && strcmp(rq->pub.method, "CONNECT") != 0)
    rq->pub.protocol = h2rev_http_header(&rq->pub, "upgrade");
  rq->no_body = strcmp(hd->method, "HEAD") == 0;
  return rq;
}

/* Hands body bytes to the handler while it reads; returns how many. */
static size_t h1_feed(h2r_hreq_t *rq, const char *p, size_t n) {
  size_t done = 0;
  while (done < n && rq->reading && !rq->finished) {
    uv_buf_t buf = uv_buf_init(NULL, 0);
    rq->alloc_cb(&rq->pub, H2R_MIN(n - done, H2_READ_SUGGEST), &buf);
    if (buf.base == NULL || buf.len == 0) {
      rq->read_cb(&rq->pub, UV_ENOBUFS, &buf);
      break;
    }
    size_t k = H2R_MIN(n - done, buf.len);
    memcpy(buf.base, p + done, k);
    done += k;
    if (rq->manual)
      rq->held += k;
    rq->in += k;
    rq->read_cb(&rq->pub, (ssize_t)k, &buf);
  }
  return done;
}

static void h1_eof(h2r_hreq_t *rq) {
  if (rq->eof_done || !rq->reading || rq->finished || rq->stash != NULL)
    return;
  int err = rq->body_end ? UV_EOF : rq->gone;
  if (err == 0)
    return;
  rq->eof_done = true;
  uv_buf_t none = uv_buf_init(NULL, 0);
  rq->read_cb(&rq->pub, err, &none);
}

/* Delivers what was kept while the handler did not read. */
static void h1_deliver(h2r_hreq_t *rq) {
  if (rq->stash != NULL) {
    rq->stash_off += h1_feed(rq, rq->stash + rq->stash_off, rq->stash_len - rq->stash_off);
    if (rq->stash_off < rq->stash_len && !rq->finished)
      return;
    free(rq->stash);
    rq->stash = NULL;
    rq->stash_len = rq->stash_off = 0;
    if (rq->h1 != NULL && rq->gone == 0 && !rq->finished && rq->held <= H2REV_HTTP_HELD_MAX)
      h2r_h1c_read_resume(rq->h1);
  }
  h1_eof(rq);
}

static bool h1_body(h2r_hreq_t *rq, const char *p, size_t n) {
  if (rq->finished)
    return false;
  size_t k = rq->stash == NULL ? h1_feed(rq, p, n) : 0;
  if (k == n)
    return rq->held > H2REV_HTTP_HELD_MAX; /* the handler holds enough: pause the client */
  char *s = realloc(rq->stash, rq->stash_len + n - k);
  if (s == NULL) {
    rq->gone = UV_ENOMEM;
    return true;
  }
  memcpy(s + rq->stash_len, p + k, n - k);
  rq->stash = s;
  rq->stash_len += n - k;
  return true; /* pause the client until the handler reads it */
}

static void h1_stash(h2r_hreq_t *rq, const char *p, size_t n) {
  char *b = realloc(rq->stash, rq->stash_len + n);
  if (b == NULL) {
    rq->gone = UV_ENOMEM;
    hreq_schedule(rq);
    return;
  }
  memcpy(b + rq->stash_len, p, n);
  rq->stash = b;
  rq->stash_len += n;
  hreq_schedule(rq);
}

static void h1_end(h2r_hreq_t *rq) {
  rq->body_end = true;
  h1_eof(rq);
}

static void h1_gone(h2r_hreq_t *rq, int err) {
  if (rq->gone == 0)
    rq->gone = err != 0 ? err : H2REV_ECLOSED;
  hreq_schedule(rq);
}

static void h1_written(h2r_hreq_t *rq, h2rev_http_write_t *w, int status) {
  rq->writes--;
  rq->progress_at = uv_now(rq->srv->loop);
  if (status != 0 && rq->result == 0)
    rq->result = status;
  if (w != NULL)
    w->cb_(w, status);
  if (rq->finished && rq->writes == 0)
    hreq_schedule(rq);
}

static const h2r_h1_events h1_events = {
    .route = h2r_server_route_find,
    .connect_route = h2r_server_connect_route,
    .request = h1_new,
    .run = hreq_run,
    .body = h1_body,
    .end = h1_end,
    .stash = h1_stash,
    .gone = h1_gone,
    .written = h1_written,
    .ref = h2r_server_ref,
    .unref = h2r_server_unref,
};

static void h1_release(h2r_hreq_t *rq) {
  rq->released = true;
  h2r_h1c_t *c = rq->h1;
  rq->h1 = NULL;
  if (rq->done_cb != NULL)
    rq->done_cb(&rq->pub, rq->result);
  hreq_account(rq);
  if (c != NULL)
    h2r_h1c_release(c);
  hreq_free(rq);
}

static void h1_finish(h2r_hreq_t *rq, bool complete) {
  rq->finished = true;
  rq->reading = false;
  int r = rq->h1 != NULL ? h2r_h1c_finish(rq->h1, rq, complete) : H2REV_ECLOSED;
  /* A client may hang up as soon as it has all of the Content-Length,
   * before the handler ends: the response was complete all the same (a
   * write that did not make it reports its own error). */
  bool sized = complete && rq->responded && rq->cl_out >= 0 && rq->out == (uint64_t)rq->cl_out;
  if (r > 0)
    rq->writes += (unsigned)r;
  else if (r < 0 && rq->result == 0 && !sized)
    rq->result = complete ? r : UV_ECANCELED;
  if (rq->gone != 0 && rq->result == 0 && !sized)
    rq->result = rq->gone;
  if (!complete && rq->result == 0)
    rq->result = UV_ECANCELED;
  hreq_schedule(rq);
}

/* -------------------------------------------------- requests: HTTP/2 */

static void h2_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  h2r_hreq_t *rq = s->data;
  rq->alloc_cb(&rq->pub, sz, buf);
}

static void h2_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  h2r_hreq_t *rq = s->data;
  if (n > 0)
    rq->in += (uint64_t)n;
  rq->read_cb(&rq->pub, n, buf);
}

static void h2_closed(h2rev_stream_t *s) {
  h2r_hreq_t *rq = s->data;
  if (rq->done_cb != NULL)
    rq->done_cb(&rq->pub, rq->result);
  hreq_account(rq);
  hreq_free(rq);
}

static void h2_shut(h2rev_shutdown_t *req, int status) {
  h2r_hreq_t *rq = req->data;
  h2r_strm_t *st = rq->hs.s_;
  /* The client may hang up as soon as it has the whole body (END_STREAM, or
   * all of the Content-Length), before we hear that END_STREAM reached the
   * socket: the response was complete all the same. */
  bool sized = rq->cl_out >= 0 && rq->out == (uint64_t)rq->cl_out;
  if (status != 0 && st != NULL && ((st->flags & H2R_F_SHUT_SENT) || sized) &&
      st->acked == st->queued)
    status = 0;
  if (status != 0 && rq->result == 0)
    rq->result = status;
  h2rev_stream_close(&rq->hs, h2_closed);
}

static void h2_wrote(h2rev_write_t *req, int status) {
  h2rev_http_write_t *w = req->data;
  h2r_hreq_t *rq = H2R_CONTAINER_OF(w->req, h2r_hreq_t, pub);
  rq->progress_at = uv_now(rq->srv->loop);
  if (status != 0 && rq->result == 0)
    rq->result = status;
  w->cb_(w, status);
}

static h2r_hreq_t *hreq_new_h2(h2r_server_t *srv, const h2r_route_t *route, h2r_strm_t *st) {
  const char *method = h2r_strm_header(st, ":method", NULL);
  const char *path = h2r_strm_header(st, ":path", NULL);
  const char *auth = h2r_strm_header(st, ":authority", NULL);
  const char *scheme = h2r_strm_header(st, ":scheme", NULL);
  const char *protocol = h2r_strm_header(st, ":protocol", NULL);
  if (auth == NULL)
    auth = h2r_strm_header(st, "host", NULL);
  method = method != NULL ? method : "";
  path = path != NULL ? path : "";
  auth = auth != NULL ? auth : "";
  scheme = scheme != NULL ? scheme : "https";
  const char *peer = st->sess->x.peer;
  /* Copies: the stream (and its header block) goes before the request. */
  size_t n = 0, strings = strlen(method) + strlen(path) + strlen(auth) + strlen(scheme) +
                          strlen(peer) + (protocol != NULL ? strlen(protocol) + 1 : 0) + 5;
  for (unsigned i = 0; i < st->nhdrs; i++) {
    if (st->hbuf[st->hdrs[i].name] == ':')
      continue;
    n++;
    strings += st->hdrs[i].namelen + st->hdrs[i].valuelen + 2;
  }
  char *mem;
  h2r_hreq_t *rq = hreq_alloc(srv, route, n, strings, &mem);
  if (rq == NULL)
    return NULL;
  rq->h2 = true;
  rq->pub.method = put(&mem, method, strlen(method), false);
  rq->pub.path = put(&mem, path, strlen(path), false);
  rq->pub.authority = put(&mem, auth, strlen(auth), false);
  rq->pub.scheme = put(&mem, scheme, strlen(scheme), false);
  rq->pub.peer = put(&mem, peer, strlen(peer), false);
  rq->pub.http_major = 2;
  rq->pub.http_minor = 0;
  /* nghttp2 let a CONNECT through only in one of its two forms (RFC 9113
   * 8.5, RFC 8441 4): either is a byte stream once answered. */
  rq->pub.upgrade = strcmp(method, "CONNECT") == 0;
  if (protocol != NULL)
    rq->pub.protocol = put(&mem, protocol, strlen(protocol), false);
  for (unsigned i = 0, k = 0; i < st->nhdrs; i++) {
    const h2r_hdr_t *h = &st->hdrs[i];
    if (st->hbuf[h->name] == ':')
      continue;
    rq->hdrs[k].name = put(&mem, st->hbuf + h->name, h->namelen, false);
    rq->hdrs[k].value = put(&mem, st->hbuf + h->value, h->valuelen, false);
    k++;
  }
  rq->pub.nheaders = n;
  const char *cl = h2rev_http_header(&rq->pub, "content-length");
  char *end = NULL;
  long long v = cl != NULL ? strtoll(cl, &end, 10) : -1;
  rq->pub.content_length = cl != NULL && end != cl && *end == '\0' && v >= 0 ? v
                           : (st->flags & H2R_F_EOF)                         ? 0
                                                                             : -1;
  rq->no_body = strcmp(rq->pub.method, "HEAD") == 0;
  rq->hs.data = rq;
  rq->sh.data = rq;
  h2r_strm_attach(st, &rq->hs);
  return rq;
}

static int h2_respond(h2r_hreq_t *rq, int status, const h2rev_header_t *h, size_t n, int64_t cl) {
  h2r_strm_t *st = rq->hs.s_;
  if (st == NULL || st->sess->state == H2R_S_DEAD || (st->flags & H2R_F_NG_CLOSED))
    return H2REV_ECLOSED;
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++)
    bytes += strlen(h[i].name) + 1;
  nghttp2_nv *nv = malloc((n + 1) * sizeof(*nv) + bytes + 24);
  if (nv == NULL)
    return UV_ENOMEM;
  char *mem = (char *)(nv + n + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (h2r_hop_by_hop(h[i].name, strlen(h[i].name)) ||
        strcasecmp(h[i].name, "content-length") == 0)
      continue;
    size_t nl = strlen(h[i].name), vl = strlen(h[i].value);
    char *name = put(&mem, h[i].name, nl, true);
    /* A field HTTP/1.1 lets through but HTTP/2 does not (a value with edge
     * white space, which a proxied upstream may send) would get the
     * client's stream reset: it is dropped, as Go's HTTP/2 server does. */
    if (!nghttp2_check_header_name((const uint8_t *)name, nl) ||
        !nghttp2_check_header_value_rfc9113((const uint8_t *)h[i].value, vl)) {
      H2R_INFO(&rq->srv->o.log, "%s: response field %.*s dropped: not valid in HTTP/2",
               rq->pub.path, (int)H2R_MIN(nl, 64u), name);
      continue;
    }
    nv[k++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)h[i].value, nl, vl, NGHTTP2_NV_FLAG_NONE};
  }
  if (cl >= 0 && status != 204 && status != 304) {
    char *v = mem;
    int vl = snprintf(v, 24, "%lld", (long long)cl);
    nv[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)v, 14, (size_t)vl,
                           NGHTTP2_NV_FLAG_NONE};
  }
  int r = h2r_strm_respond(st, status, nv, k);
  free(nv);
  return r == UV_ENOTCONN ? H2REV_ECLOSED : r;
}

static void h2_finish(h2r_hreq_t *rq, bool complete) {
  rq->finished = true;
  rq->reading = false;
  h2r_strm_t *st = rq->hs.s_;
  if (complete && st != NULL) {
    h2rev_stream_read_stop(&rq->hs);
    /* The request body is of no further interest: once the response is
     * complete, RST_STREAM(NO_ERROR) tells the client to stop sending. */
    if (!(st->flags & H2R_F_EOF))
      st->flags |= H2R_F_REJECT;
    int r = h2rev_stream_shutdown(&rq->sh, &rq->hs, h2_shut);
    if (r == 0)
      return;
    rq->result = r;
  }
  if (rq->result == 0)
    rq->result = UV_ECANCELED;
  h2rev_stream_close(&rq->hs, h2_closed);
}

/* ------------------------------------------------------- public: req */

static h2r_hreq_t *R(h2rev_http_req_t *req) {
  return H2R_CONTAINER_OF(req, h2r_hreq_t, pub);
}

void h2rev_http_server_stats(const h2rev_http_server_t *server, h2rev_http_server_stats_t *out) {
  const h2r_server_t *srv = server->s_;
  if (srv == NULL) {
    memset(out, 0, sizeof(*out));
    return;
  }
  *out = srv->st;
  out->connections = srv->nconns;
}

const char *h2rev_http_header(const h2rev_http_req_t *req, const char *name) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcasecmp(req->headers[i].name, name) == 0)
      return req->headers[i].value;
  return NULL;
}

void h2rev_http_on_done(h2rev_http_req_t *req, h2rev_http_done_cb cb) {
  R(req)->done_cb = cb;
}

int h2rev_http_read_start(h2rev_http_req_t *req, h2rev_http_alloc_cb alloc_cb,
                          h2rev_http_read_cb read_cb) {
  h2r_hreq_t *rq = R(req);
  if (alloc_cb == NULL || read_cb == NULL)
    return UV_EINVAL;
  if (rq->finished)
    return UV_EBADF;
  if (rq->reading)
    return UV_EALREADY;
  rq->alloc_cb = alloc_cb;
  rq->read_cb = read_cb;
  if (rq->h2) {
    int r = h2rev_stream_read_start(&rq->hs, h2_alloc, h2_read);
    if (r != 0)
      return r;
  }
  rq->reading = true;
  if (!rq->h2) {
    if (rq->stash != NULL || rq->body_end || rq->gone != 0)
      hreq_schedule(rq);
    else if (rq->h1 != NULL)
      h2r_h1c_read_resume(rq->h1);
  }
  return 0;
}

int h2rev_http_read_stop(h2rev_http_req_t *req) {
  h2r_hreq_t *rq = R(req);
  if (rq->finished)
    return UV_EBADF;
  rq->reading = false;
  return rq->h2 ? h2rev_stream_read_stop(&rq->hs) : 0;
}

int h2rev_http_read_manual(h2rev_http_req_t *req) {
  h2r_hreq_t *rq = R(req);
  if (rq->finished)
    return UV_EBADF;
  rq->manual = true;
  if (rq->h2 && rq->hs.s_ != NULL)
    h2r_strm_manual_consume(&rq->hs);
  return 0;
}

void h2rev_http_consume(h2rev_http_req_t *req, size_t n) {
  h2r_hreq_t *rq = R(req);
  if (!rq->manual || rq->finished)
    return;
  if (rq->h2) {
    if (rq->hs.s_ != NULL)
      h2r_strm_consume(&rq->hs, n);
    return;
  }
  rq->held = n < rq->held ? rq->held - n : 0;
  /* Back below half the mark: the client's bytes flow again (a no-op when
   * they do already). */
  if (rq->held <= H2REV_HTTP_HELD_MAX / 2 && rq->stash == NULL && rq->h1 != NULL && rq->gone == 0 &&
      !rq->finished)
    h2r_h1c_read_resume(rq->h1);
}

int h2rev_http_client_error(const h2rev_http_req_t *req) {
  const h2r_hreq_t *rq = H2R_CONTAINER_OF(req, h2r_hreq_t, pub);
  if (!rq->h2)
    return rq->gone != 0 ? rq->gone : rq->h1 == NULL ? H2REV_ECLOSED : 0;
  const h2r_strm_t *st = rq->hs.s_;
  if (st == NULL || st->sess->state == H2R_S_DEAD)
    return H2REV_ECLOSED;
  if (st->err != 0)
    return st->err;
  /* Closed by nghttp2 before we answered: the client reset it. */
  return (st->flags & H2R_F_NG_CLOSED) != 0 ? H2REV_ERESET : 0;
}

size_t h2rev_http_write_queue_size(const h2rev_http_req_t *req) {
  const h2r_hreq_t *rq = H2R_CONTAINER_OF(req, h2r_hreq_t, pub);
  if (rq->h2)
    return h2rev_stream_write_queue_size(&rq->hs);
  return rq->h1 != NULL ? h2r_h1c_queued(rq->h1) : 0;
}

void h2rev_http_cork(h2rev_http_req_t *req) {
  h2r_hreq_t *rq = R(req);
  if (!rq->h2 && rq->h1 != NULL)
    h2r_h1c_cork(rq->h1, true);
}

void h2rev_http_uncork(h2rev_http_req_t *req) {
  h2r_hreq_t *rq = R(req);
  if (!rq->h2 && rq->h1 != NULL)
    h2r_h1c_cork(rq->h1, false);
}

h2r_strm_t *h2r_hreq_take_stream(h2rev_http_req_t *req) {
  h2r_hreq_t *rq = R(req);
  if (!rq->h2 || rq->responded || rq->finished || rq->reading)
    return NULL;
  h2r_strm_t *st = h2r_strm_unhook(&rq->hs);
  if (st == NULL)
    return NULL;
  rq->finished = true;
  hreq_free(rq);
  return st;
}

h2r_session_t *h2r_hreq_session(const h2rev_http_req_t *req) {
  const h2r_hreq_t *rq = H2R_CONTAINER_OF(req, h2r_hreq_t, pub);
  return rq->h2 && rq->hs.s_ != NULL ? rq->hs.s_->sess : NULL;
}

int h2rev_http_respond(h2rev_http_req_t *req, int status, const h2rev_header_t *headers,
                       size_t nheaders, int64_t content_length) {
  h2r_hreq_t *rq = R(req);
  if ((status < 200 && !(status == 101 && req->upgrade)) || status > 999 ||
      (nheaders > 0 && headers == NULL))
    return UV_EINVAL;
  for (size_t i = 0; i < nheaders; i++)
    if (headers[i].name == NULL || headers[i].value == NULL ||
        !header_ok(headers[i].name, strlen(headers[i].name), true) ||
        !header_ok(headers[i].value, strlen(headers[i].value), false))
      return UV_EINVAL;
  if (rq->finished)
    return UV_EBADF;
  if (rq->responded)
    return UV_EALREADY;
  /* 101, or a 2xx to a CONNECT (HTTP/1.1, or HTTP/2 of either form, where a
   * 101 does not exist and is sent as 200): the connection, or the stream,
   * carries bytes as they are. */
  bool ok2xx = status >= 200 && status < 300;
  bool raw = status == 101 ||
             (!rq->h2 && req->upgrade && ok2xx && strcmp(req->method, "CONNECT") == 0) ||
             (rq->h2 && req->upgrade && ok2xx);
  if (rq->h2 && status == 101)
    status = 200;
  bool no_body = !raw && (rq->no_body || status == 204 || status == 304);
  int r;
  if (rq->h2)
    r = h2_respond(rq, status, headers, nheaders, raw ? -1 : content_length); /* RFC 9110 8.6 */
  else if (rq->h1 == NULL || rq->gone != 0)
    r = H2REV_ECLOSED;
  else
    r = h2r_h1c_respond(rq->h1, rq, status, headers, nheaders, content_length, &no_body);
  if (r < 0)
    return r;
  if (!rq->h2)
    rq->writes += (unsigned)r;
  rq->responded = true;
  rq->status = status;
  rq->no_body = no_body;
  rq->cl_out = no_body || raw ? -1 : content_length;
  if (raw && !rq->h2) /* the client's bytes after its head are the body now */
    hreq_schedule(rq);
  return 0;
}

int h2rev_http_write(h2rev_http_write_t *w, h2rev_http_req_t *req, const uv_buf_t bufs[],
                     unsigned nbufs, h2rev_http_write_cb cb) {
  h2r_hreq_t *rq = R(req);
  if (cb == NULL || !rq->responded || (nbufs > 0 && bufs == NULL))
    return rq->finished ? UV_EBADF : UV_EINVAL;
  if (rq->finished)
    return UV_EBADF;
  uint64_t total = 0;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  if (rq->cl_out >= 0 && rq->out + total > (uint64_t)rq->cl_out)
    return UV_EINVAL;
  w->req = req;
  w->cb_ = cb;
  w->w_.data = w;
  int r;
  if (rq->h2) {
    /* A body-less response still completes the write, in order. */
    uv_buf_t none = uv_buf_init(NULL, 0);
    r = rq->no_body || nbufs == 0 ? h2rev_stream_write(&w->w_, &rq->hs, &none, 1, h2_wrote)
                                  : h2rev_stream_write(&w->w_, &rq->hs, bufs, nbufs, h2_wrote);
    if (r == UV_EBADF || r == UV_EPIPE)
      r = H2REV_ECLOSED;
  } else if (rq->h1 == NULL || rq->gone != 0) {
    r = H2REV_ECLOSED;
  } else {
    r = h2r_h1c_write(rq->h1, rq, w, bufs, nbufs, rq->no_body);
    if (r == 0)
      rq->writes++;
  }
  if (r == 0)
    rq->out += rq->no_body ? 0 : total;
  return r;
}

int h2rev_http_end(h2rev_http_req_t *req) {
  h2r_hreq_t *rq = R(req);
  if (rq->finished)
    return UV_EBADF;
  if (!rq->responded && h2rev_http_respond(req, 200, NULL, 0, 0) != 0) {
    h2rev_http_abort(req);
    return 0;
  }
  bool complete = rq->cl_out < 0 || rq->out == (uint64_t)rq->cl_out;
  if (!complete)
    rq->result = UV_EPIPE; /* short of its Content-Length: cut, not complete */
  if (rq->h2)
    h2_finish(rq, complete);
  else
    h1_finish(rq, complete);
  return 0;
}

void h2rev_http_abort(h2rev_http_req_t *req) {
  h2r_hreq_t *rq = R(req);
  if (rq->finished)
    return;
  if (rq->h2)
    h2_finish(rq, false);
  else
    h1_finish(rq, false);
}

typedef struct reply {
  h2rev_http_write_t w;
  size_t len;
  char body[];
} reply_t;

static void reply_wrote(h2rev_http_write_t *w, int status) {
  (void)status;
  free(H2R_CONTAINER_OF(w, reply_t, w));
}

int h2rev_http_reply(h2rev_http_req_t *req, int status, const char *content_type, const void *body,
                     size_t len) {
  h2rev_header_t ct = {"content-type", content_type};
  int r = h2rev_http_respond(req, status, &ct, content_type != NULL ? 1 : 0, (int64_t)len);
  if (r != 0) {
    /* The request is finished whatever happened (a client gone before its
     * handler ran is common): a handler that replies has nothing left to do,
     * and nothing is left holding its connection. */
    h2rev_http_abort(req);
    return r;
  }
  if (len > 0 && !R(req)->no_body) {
    reply_t *rp = malloc(sizeof(*rp) + len);
    if (rp == NULL) {
      h2rev_http_abort(req);
      return 0;
    }
    memcpy(rp->body, body, len);
    uv_buf_t b = uv_buf_init(rp->body, (unsigned)len);
    if (h2rev_http_write(&rp->w, req, &b, 1, reply_wrote) != 0) {
      free(rp);
      h2rev_http_abort(req);
      return 0;
    }
  }
  return h2rev_http_end(req);
}

/* ------------------------------------------------------- connections */

static void on_request(h2r_session_t *s, h2r_strm_t *st) {
  h2r_hconn_t *c = s->owner;
  h2r_server_t *srv = c->srv;
  size_t plen = 0;
  const char *path = h2r_strm_header(st, ":path", &plen);
  const char *method = h2r_strm_header(st, ":method", NULL);
  /* Only a CONNECT names no path (nghttp2 checked the form). */
  bool connect = path == NULL && method != NULL && strcmp(method, "CONNECT") == 0;
  if (path == NULL && !connect) {
    h2r_strm_reject(st, 400, "bad request\n");
    return;
  }
  const h2r_route_t *route = srv->closing ? NULL
                             : connect    ? h2r_server_connect_route(srv)
                                          : h2r_server_route_find(srv, path, plen);
  if (route == NULL) {
    h2r_strm_reject(st, srv->closing ? 503 : 404, srv->closing ? "shutting down\n" : "not found\n");
    return;
  }
  h2r_hreq_t *rq = hreq_new_h2(srv, route, st);
  if (rq == NULL) {
    h2r_strm_reject(st, 503, "out of memory\n");
    return;
  }
  hreq_run(rq);
}

static void conn_open(h2r_session_t *s, int status) {
  h2r_hconn_t *c = s->owner;
  if (status != 0)
    H2R_INFO(&c->srv->o.log, "%s: connection failed: %s%s%s", s->x.peer, h2rev_strerror(status),
             s->x.errmsg[0] ? ": " : "", s->x.errmsg);
}

static void conn_dead(h2r_session_t *s, int err) {
  h2r_hconn_t *c = s->owner;
  h2r_server_t *srv = c->srv;
  if (srv->watch_ops != NULL && srv->watch_ops->conn_dead != NULL)
    srv->watch_ops->conn_dead(srv->watch_arg, s, err);
}

static void conn_stream_freed(h2r_session_t *s) {
  h2r_hconn_t *c = s->owner;
  h2r_server_t *srv = c->srv;
  if (srv->watch_ops != NULL && srv->watch_ops->stream_freed != NULL)
    srv->watch_ops->stream_freed(srv->watch_arg, s);
}

static void resume_accepting(h2r_server_t *srv);

static void conn_close(h2r_session_t *s) {
  h2r_hconn_t *c = s->owner;
  h2r_server_t *srv = c->srv;
  if (s->h1_data != NULL)
    h2r_h1c_free(s->h1_data);
  if (srv->watch_ops != NULL && srv->watch_ops->conn_closed != NULL)
    srv->watch_ops->conn_closed(srv->watch_arg, s);
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  free(c);
  srv->nconns--;
  resume_accepting(srv);
  h2r_server_unref(srv);
}

static void conn_h1(h2r_session_t *s) {
  h2r_hconn_t *c = s->owner;
  s->h1_data = h2r_h1c_new(s, c->srv);
  if (s->h1_data != NULL)
    s->h1 = &h2r_h1c_ops;
}

static const h2r_session_cbs conn_cbs = {conn_open,  on_request, conn_dead,
                                         conn_close, conn_h1,    conn_stream_freed};

/* Waits for its turn at the next resume_accepting: libuv polls the socket no
 * more until then, and the clients wait in the backlog. */
static void pause_accepting(h2r_server_t *srv, h2r_lsock_t *k) {
  if (k->paused)
    return;
  k->paused = true;
  k->pnext = srv->paused;
  srv->paused = k;
}

static void refused_closed(uv_handle_t *h) {
  h2r_server_t *srv = h->data;
  srv->refusing = false;
  resume_accepting(srv);
  h2r_server_unref(srv);
}

/* A connection that cannot be served is accepted and closed at once: left
 * pending, it would keep libuv from polling its socket for good. */
static void refuse_connection(h2r_server_t *srv, h2r_lsock_t *k, const char *why) {
  if (srv->refusing) {
    pause_accepting(srv, k); /* the handle is still closing the last one */
    return;
  }
  uv_tcp_init(srv->loop, &srv->refuse);
  srv->refuse.data = srv;
  char peer[INET6_ADDRSTRLEN + 8] = "a client";
  if (uv_accept((uv_stream_t *)&k->tcp, (uv_stream_t *)&srv->refuse) == 0) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN];
    if (uv_tcp_getpeername(&srv->refuse, (struct sockaddr *)&ss, &len) == 0 &&
        uv_ip_name((struct sockaddr *)&ss, ip, sizeof(ip)) == 0)
      snprintf(peer, sizeof(peer), "%s", ip);
  }
  srv->st.connections_refused++;
  h2r_log_limited(&srv->o.log, &srv->rl, srv->loop, H2REV_LOG_WARN,
                  "connection from %s closed at once: %s", peer, why);
  srv->refusing = true;
  h2r_server_ref(srv);
  uv_close((uv_handle_t *)&srv->refuse, refused_closed);
}

static void on_connection(uv_stream_t *server, int status) {
  h2r_lsock_t *k = server->data;
  h2r_server_t *srv = k->srv;
  if (status != 0 || srv->closing || srv->draining)
    return;
  if (srv->nconns >= srv->o.max_connections) {
    /* Not accepting stops libuv from polling the socket until uv_accept:
     * the clients wait in the backlog, and the loop does not spin. */
    if (!k->paused) {
      srv->st.limit_reached++;
      H2R_WARN(&srv->o.log, "%u connections open (the limit): not accepting until one closes",
               srv->nconns);
    }
    pause_accepting(srv, k);
    return;
  }
  h2r_hconn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    refuse_connection(srv, k, "out of memory");
    return;
  }
  c->srv = srv;
  h2r_session_opts o;
  h2r_session_opts_default(&o);
  o.ping_interval_ms = srv->o.ping_interval_ms;
  o.ping_timeout_ms = srv->o.ping_timeout_ms;
  o.max_streams = srv->o.max_streams;
  o.max_header_bytes = srv->o.max_header_bytes;
  o.allow_h1 = true;
  o.rbuf = srv->rbuf;
  o.max_conn_header_bytes = srv->o.max_conn_header_bytes;
  o.max_total_header_bytes = srv->o.max_total_header_bytes;
  o.hdr_total = &srv->hdr_total;
  o.unref = srv->unref;
  c->next = srv->conns;
  if (srv->conns != NULL)
    srv->conns->prev = c;
  srv->conns = c;
  h2r_server_ref(srv);
  int r = h2r_session_accept(&c->s, srv->loop, server, k->ctx, &o, &conn_cbs, c, &srv->o.log);
  if (r != 0) {
    srv->conns = c->next;
    if (c->next != NULL)
      c->next->prev = NULL;
    free(c);
    refuse_connection(srv, k, h2rev_strerror(r));
    h2r_server_unref(srv);
    return;
  }
  srv->nconns++;
  srv->st.connections_total++;
}

/* A connection closed: the sockets paused at the limit take theirs. */
static void resume_accepting(h2r_server_t *srv) {
  while (srv->paused != NULL && srv->nconns < srv->o.max_connections) {
    h2r_lsock_t *k = srv->paused;
    srv->paused = k->pnext;
    k->paused = false;
    on_connection((uv_stream_t *)&k->tcp, 0);
  }
}

/* ------------------------------------------------------ public: server */

int h2rev_http_server_init(uv_loop_t *loop, h2rev_http_server_t *server,
                           const h2rev_http_server_options_t *opts) {
  h2r_server_t *srv = calloc(1, sizeof(*srv));
  if (srv == NULL)
    return UV_ENOMEM;
  if (opts != NULL)
    srv->o = *opts;
  h2rev_http_server_options_t *o = &srv->o;
  if (o->max_header_bytes == 0 || o->max_header_bytes > H2R_MAX_HEAD)
    o->max_header_bytes = H2R_MAX_HEAD;
  if (o->header_timeout_ms == 0)
    o->header_timeout_ms = 10000;
  if (o->idle_timeout_ms == 0)
    o->idle_timeout_ms = 60000;
  if (o->max_streams == 0)
    o->max_streams = 100;
  if (o->ping_interval_ms == 0)
    o->ping_interval_ms = 30000;
  if (o->ping_timeout_ms == 0)
    o->ping_timeout_ms = 15000;
  if (o->max_connections == 0)
    o->max_connections = H2R_MAX_CONNECTIONS;
  if (o->max_conn_header_bytes == 0)
    o->max_conn_header_bytes = H2R_CONN_HEADER_BYTES;
  if (o->max_total_header_bytes == 0)
    o->max_total_header_bytes = H2R_TOTAL_HEADER_BYTES;
  if (o->send_timeout_ms == 0)
    o->send_timeout_ms = H2R_SEND_TIMEOUT_MS;
  srv->send_tick_ms = o->send_timeout_ms / 4 > 250 ? o->send_timeout_ms / 4 : 250;
  srv->h1_events = &h1_events;
  srv->rbuf = malloc(H2R_RBUF_SIZE);
  srv->notfound = calloc(1, sizeof(*srv->notfound) + 2);
  srv->noconnect = calloc(1, sizeof(*srv->noconnect) + 1);
  if (srv->rbuf == NULL || srv->notfound == NULL || srv->noconnect == NULL) {
    free(srv->rbuf);
    free(srv->notfound);
    free(srv->noconnect);
    free(srv);
    return UV_ENOMEM;
  }
  srv->notfound->prefix[0] = '/';
  srv->notfound->len = 1;
  srv->notfound->handler = not_found;
  srv->noconnect->handler = no_connect;
  srv->pub = server;
  srv->loop = loop;
  srv->pend_tail = &srv->pend;
  h2r_defer_init(loop, &srv->work, srv_work, srv);
  uv_timer_init(loop, &srv->send_timer);
  srv->send_timer.data = srv;
  server->loop = loop;
  server->s_ = srv;
  return 0;
}

static void server_set_unref(h2rev_http_server_t *server, bool unref) {
  h2r_server_t *srv = server->s_;
  if (srv == NULL)
    return;
  srv->unref = unref;
  h2r_defer_set_unref(&srv->work, unref);
  h2r_handle_ref(&srv->send_timer, unref);
  if (srv->drain_timer_open)
    h2r_handle_ref(&srv->drain_timer, unref);
  for (h2r_lsock_t *k = srv->socks; k != NULL; k = k->next)
    h2r_handle_ref(&k->tcp, unref);
  for (h2r_hconn_t *c = srv->conns; c != NULL; c = c->next) {
    h2r_session_set_unref(&c->s, unref);
    if (c->s.h1 != NULL && c->s.h1_data != NULL)
      h2r_h1c_set_unref(c->s.h1_data, unref);
  }
  for (h2r_h1c_t *c = srv->vconns; c != NULL; c = h2r_h1c_next(c))
    h2r_h1c_set_unref(c, unref);
}

void h2rev_http_server_ref(h2rev_http_server_t *server) {
  server_set_unref(server, false);
}

void h2rev_http_server_unref(h2rev_http_server_t *server) {
  server_set_unref(server, true);
}

static void free_data(uv_handle_t *h) {
  free(h->data);
}

int h2rev_http_server_listen(h2rev_http_server_t *server, const struct sockaddr *addr,
                             const h2rev_tls_options_t *tls) {
  h2r_server_t *srv = server->s_;
  if (srv == NULL || srv->closing || srv->draining)
    return UV_EBADF;
  h2r_lsock_t *k = calloc(1, sizeof(*k));
  if (k == NULL)
    return UV_ENOMEM;
  k->srv = srv;
  if (tls != NULL) {
    char why[256];
    int err = 0;
    k->ctx = h2r_tls_ctx_new(tls, true, H2R_ALPN_H2 | H2R_ALPN_H1, &err, why, sizeof(why));
    if (k->ctx == NULL) {
      H2R_ERR(&srv->o.log, "TLS setup failed: %s", why);
      free(k);
      return err;
    }
  }
  /* SO_REUSEPORT must be set before the bind: the socket is made first. */
  int r = srv->o.reuse_port ? uv_tcp_init_ex(srv->loop, &k->tcp, addr->sa_family)
                            : uv_tcp_init(srv->loop, &k->tcp);
  if (r != 0) {
    SSL_CTX_free(k->ctx);
    free(k);
    return r;
  }
  k->tcp.data = k;
  if (srv->unref)
    uv_unref((uv_handle_t *)&k->tcp);
  if (srv->o.reuse_port) {
    uv_os_fd_t fd;
    int one = 1;
    r = uv_fileno((uv_handle_t *)&k->tcp, &fd);
    if (r == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
      r = uv_translate_sys_error(errno);
  }
  if (r == 0)
    r = uv_tcp_bind(&k->tcp, addr, 0);
  if (r == 0)
    r = uv_listen((uv_stream_t *)&k->tcp, 511, on_connection);
  if (r != 0) {
    SSL_CTX_free(k->ctx);
    uv_close((uv_handle_t *)&k->tcp, free_data);
    return r;
  }
  h2r_lsock_t **p = &srv->socks;
  while (*p != NULL)
    p = &(*p)->next;
  *p = k;
  return 0;
}

int h2rev_http_server_set_tls(h2rev_http_server_t *server, const h2rev_tls_options_t *tls) {
  h2r_server_t *srv = server->s_;
  if (srv == NULL || srv->closing || srv->draining)
    return UV_EBADF;
  bool any = false;
  for (h2r_lsock_t *k = srv->socks; k != NULL; k = k->next)
    any = any || k->ctx != NULL;
  if (tls == NULL || !any)
    return UV_EINVAL;
  char why[256];
  int err = 0;
  SSL_CTX *ctx = h2r_tls_ctx_new(tls, true, H2R_ALPN_H2 | H2R_ALPN_H1, &err, why, sizeof(why));
  if (ctx == NULL) {
    H2R_ERR(&srv->o.log, "TLS setup failed: %s", why);
    return err;
  }
  /* Each connection's SSL holds a reference to the context it was made
   * from: those open keep the old one, which goes with the last of them. */
  for (h2r_lsock_t *k = srv->socks; k != NULL; k = k->next) {
    if (k->ctx == NULL)
      continue;
    SSL_CTX_up_ref(ctx);
    SSL_CTX_free(k->ctx);
    k->ctx = ctx;
  }
  SSL_CTX_free(ctx);
  return 0;
}

int h2rev_http_server_getsockname(const h2rev_http_server_t *server, unsigned n,
                                  struct sockaddr *addr, int *len) {
  h2r_lsock_t *k = server->s_ != NULL ? server->s_->socks : NULL;
  while (k != NULL && n > 0) {
    k = k->next;
    n--;
  }
  if (k == NULL)
    return UV_EINVAL;
  return uv_tcp_getsockname(&k->tcp, addr, len);
}

int h2rev_http_server_route(h2rev_http_server_t *server, const char *prefix,
                            h2rev_http_handler_cb handler, void *arg) {
  if (handler == NULL)
    return UV_EINVAL;
  return route_add(server->s_, prefix, handler, arg);
}

int h2rev_http_server_route_connect(h2rev_http_server_t *server, h2rev_http_handler_cb handler,
                                    void *arg) {
  if (handler == NULL)
    return UV_EINVAL;
  return h2r_server_route_connect(server->s_, handler, arg);
}

int h2rev_http_server_serve_stream(h2rev_http_server_t *server, h2rev_stream_t *stream,
                                   h2rev_close_cb done) {
  h2r_server_t *srv = server->s_;
  if (srv == NULL || srv->closing || srv->draining || h2rev_stream_is_closing(stream))
    return UV_EBADF;
  return h2r_h1c_new_stream(srv, stream, done) != NULL ? 0 : UV_ENOMEM;
}

static void srv_handle_closed(uv_handle_t *h) {
  h2r_server_t *srv = h->data;
  if (--srv->pending > 0)
    return;
  if (srv->watch_ops != NULL && srv->watch_ops->server_closed != NULL)
    srv->watch_ops->server_closed(srv->watch_arg);
  while (srv->routes != NULL) {
    h2r_route_t *r = srv->routes;
    srv->routes = r->next;
    free(r);
  }
  h2rev_http_server_t *pub = srv->pub;
  h2rev_http_server_close_cb cb = srv->close_cb;
  free(srv->rbuf);
  free(srv->notfound);
  free(srv->noconnect);
  free(srv->connect);
  free(srv);
  pub->s_ = NULL;
  if (cb != NULL)
    cb(pub);
}

static void lsock_closed(uv_handle_t *h) {
  h2r_lsock_t *k = h->data;
  h2r_server_t *srv = k->srv;
  SSL_CTX_free(k->ctx);
  free(k);
  srv->pending--;
  srv_maybe_closed(srv);
}

void h2r_server_stop_listening(h2r_server_t *srv) {
  srv->paused = NULL; /* libuv closes the connection each holds back */
  while (srv->socks != NULL) {
    h2r_lsock_t *k = srv->socks;
    srv->socks = k->next;
    srv->pending++;
    uv_close((uv_handle_t *)&k->tcp, lsock_closed);
  }
}

static void srv_maybe_closed(h2r_server_t *srv) {
  if (!srv->closing || srv->live > 0 || srv->pending > 0 || srv->pend != NULL)
    return;
  if (srv->finishing)
    return;
  srv->finishing = true;
  srv->pending = 3;
  h2r_defer_close(&srv->work, srv_handle_closed);
  uv_close((uv_handle_t *)&srv->send_timer, srv_handle_closed);
  if (srv->drain_timer_open) {
    srv->pending++;
    uv_close((uv_handle_t *)&srv->drain_timer, srv_handle_closed);
  }
}

void h2rev_http_server_close(h2rev_http_server_t *server, h2rev_http_server_close_cb cb) {
  h2r_server_t *srv = server->s_;
  if (srv == NULL || srv->closing)
    return;
  srv->closing = true;
  srv->close_cb = cb;
  if (srv->drain_timer_open)
    uv_timer_stop(&srv->drain_timer);
  srv->live++; /* released below, once everything is started */
  h2r_server_stop_listening(srv);
  for (h2r_hconn_t *c = srv->conns; c != NULL; c = c->next)
    h2r_session_close(&c->s, H2REV_ECLOSED);
  while (srv->vconns != NULL)
    h2r_h1c_close(srv->vconns);
  h2r_server_unref(srv);
}

/* When nothing is left in flight, or at the drain's deadline. */
static void drain_tick(uv_timer_t *t) {
  h2r_server_t *srv = t->data;
  uint64_t now = uv_now(srv->loop);
  if (srv->live > 0 && now < srv->drain_deadline) {
    uv_timer_start(t, drain_tick, srv->drain_deadline - now, 0);
    return;
  }
  if (srv->live > 0)
    H2R_WARN(&srv->o.log, "drain timeout: closing what is left");
  h2rev_http_server_close(srv->pub, srv->close_cb);
}

int h2rev_http_server_shutdown(h2rev_http_server_t *server, unsigned timeout_ms,
                               h2rev_http_server_close_cb cb) {
  h2r_server_t *srv = server->s_;
  if (srv == NULL || srv->closing || srv->draining)
    return UV_EALREADY;
  /* The timer first: what the GOAWAYs below release may end the drain. */
  uv_timer_init(srv->loop, &srv->drain_timer);
  srv->drain_timer.data = srv;
  srv->drain_timer_open = true;
  if (srv->unref)
    uv_unref((uv_handle_t *)&srv->drain_timer);
  srv->draining = true;
  srv->close_cb = cb;
  srv->drain_deadline = uv_now(srv->loop) + timeout_ms;
  h2r_server_stop_listening(srv);
  for (h2r_hconn_t *c = srv->conns; c != NULL; c = c->next)
    h2r_session_shutdown(&c->s);
  for (h2r_h1c_t *c = srv->vconns; c != NULL;) {
    h2r_h1c_t *next = h2r_h1c_next(c);
    h2r_h1c_shutdown(c);
    c = next;
  }
  if (!srv->closing)
    uv_timer_start(&srv->drain_timer, drain_tick, srv->live > 0 ? timeout_ms : 0, 0);
  return 0;
}
