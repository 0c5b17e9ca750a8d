/*
 * The listener side of the reverse proxy: an accepted reverse connection
 * carries an HTTP/1.1 request (from h2rev's dialer or from the Go one). Its
 * head is rewritten for the upstream — the <base>/proxy/<id> prefix removed
 * whichever form the dialer used, Host set to the upstream's unless asked to
 * keep it — and everything after the head is spliced both ways, over TCP or
 * TLS. A reverse connection carries several requests in turn (HTTP/1.1
 * keep-alive) when the dialer and the upstream both keep it alive; the Go
 * dialer's Connection: close ends it after one.
 *
 * The same upstream, as a handler of an HTTP server (h2rev_upstream_handler),
 * is the proxy's exchange (proxy.c) with a connection of the pool below as
 * its next hop (uphop_t): the pool, the address cache and the accounting
 * are shared; the splice above is this file's own (see the README).
 */
#include "internal.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HIGH_WATER     (1u << 20)
#define LINGER_MS      5000
#define PEER_CLOSE_MS  5000 /* a dialer that asked to close, to do so (Go's: about 1 s) */
#define ADDR_TTL_MS    30000
#define POOL_MAX       256   /* idle upstream connections kept, by default */
#define POOL_IDLE_MS   30000 /* and for how long */
#define READ_BUF       (16 * 1024)
#define FREE_BUFS      128    /* 2 MiB: a stream window */
#define STREAM_IDLE_MS 120000 /* a reused stream waits this long for a request */
/* During a drain, an upgraded connection (a WebSocket) idle both ways this
 * long is ended: idle ones would otherwise hold the drain to its timeout. */
#define UPGRADE_DRAIN_IDLE_MS 1000

typedef struct h2r_upstream {
  h2rev_upstream_t *pub;
  uv_loop_t *loop;
  h2rev_upstream_options_t o;
  h2rev_logger_t log;
  char *host, *port, *authority, *path;
  bool tls;
  SSL_CTX *ctx;
  unsigned active;
  bool closing;
  bool draining; /* h2rev_upstream_drain */
  h2rev_upstream_close_cb close_cb;
  uv_timer_t defer;    /* only to close: runs close_cb on a later turn */
  int closing_handles; /* of defer and sweep, still to be closed */
  uint8_t *rbuf;       /* the read buffer of every upstream connection */
  h2r_bufcache_t bufs; /* recycled read buffers */
  struct upconn *idle; /* keep-alive connections waiting for a request */
  struct upconn *all;  /* every connection, whoever holds it (anext/aprev) */
  unsigned nidle;
  uv_timer_t sweep;             /* closes idle connections past POOL_IDLE_MS */
  struct sockaddr_storage addr; /* the upstream's address: an IP literal, or */
  bool addr_literal;
  uint64_t addr_until; /* a name's last answer, valid until then */
  struct uconn *conns; /* the streams being served (unext/uprev) */
  bool unref;          /* h2rev_upstream_unref */
  h2rev_upstream_stats_t st;
  unsigned handled;  /* exchanges of h2rev_upstream_handler not yet freed */
  h2r_ratelog_t rl;  /* for the lines its clients cause */
  h2r_px_owner_t px; /* what those exchanges are told */
} h2r_upstream_t;

struct uconn;
struct uphop;

/* A connection to the upstream; between exchanges it waits in the pool. */
typedef struct upconn {
  h2r_xport_t x;
  h2r_upstream_t *u;
  struct uconn *c; /* the exchange using it; NULL while idle */
  struct uphop *h; /* or the handler's exchange's hop */
  struct upconn *next;
  struct upconn *anext, *aprev; /* u->all */
  uint64_t idle_since;
  bool pooled;
} upconn_t;

typedef struct uconn {
  h2r_upstream_t *u;
  h2rev_stream_t *s;
  h2rev_close_cb done;
  upconn_t *pc;     /* the upstream connection, while the exchange holds one */
  llhttp_t rparser; /* the response, to know where it ends */
  llhttp_settings_t rsettings;
  bool head_req, raw, req_done, resp_done, spill;
  uv_getaddrinfo_t gai;
  uv_timer_t linger;
  llhttp_t parser;
  llhttp_settings_t settings;
  h2r_hbuf_t hb;       /* the request head */
  const char *refused; /* why the request is refused (400), or NULL */
  bool parsed;         /* the request head is complete */
  bool resolving;      /* uv_getaddrinfo in flight */
  bool x_open;
  bool s_eof, s_shut_done, x_eof;
  bool closing;
  int refs;
  unsigned nreq;                      /* requests served on this reverse connection */
  bool ending;                        /* our side of the reverse connection is ending */
  bool over;                          /* it serves no further request: later bytes are dropped */
  bool dropping;                      /* and some were (logged once) */
  bool idle;                          /* waiting for the next request on the reverse connection */
  bool resp_ka;                       /* the response keeps the connection alive */
  bool replayable;                    /* the request may go again (retry_fresh) */
  bool reused;                        /* its upstream connection came from the pool */
  struct uwrite *replay;              /* the head sent, kept until the response starts */
  struct uwrite *early, **early_tail; /* the rewritten head and what followed it */
  size_t to_x, to_s;                  /* bytes queued each way */
  uint64_t last_io;                   /* upgraded: when a byte last moved either way */
  h2rev_shutdown_t sh;
  struct uconn *unext, *uprev; /* u->conns */
  /* The exchange in progress, for the access log and the counters. */
  struct {
    bool open; /* a request head was complete, not yet accounted */
    bool local;
    int status;
    const char *method;
    char *path;            /* only with an access log */
    uint64_t start, first; /* uv_hrtime() */
    uint64_t in, out;
  } acc;
} uconn_t;

typedef struct uwrite {
  union {
    h2r_xwrite_t xw;
    h2rev_write_t sw;
  } w;
  uconn_t *c;
  struct uwrite *next; /* on the early list: written once the upstream is open */
  size_t len;
  size_t cap;   /* of data; READ_BUF: a recycled buffer */
  bool consume; /* read from the stream: its window returns once written */
  bool busy;    /* written, the write not completed */
  bool stale;   /* written to a connection given up for a retry */
  char data[];
} uwrite_t;

/* A recycled buffer goes back to the cache, not to malloc (h2r_bufcache_t). */
static void wfree(h2r_upstream_t *u, uwrite_t *w) {
  if (w != NULL && w->cap == READ_BUF)
    h2r_bufcache_put(&u->bufs, w);
  else
    free(w);
}

static void uc_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void drain_watch(struct uconn *c);

/* The exchange is over (result: see h2rev_upstream_access_t): counted,
 * and given to the access log. */
static void record(h2r_upstream_t *u, const h2rev_upstream_access_t *a) {
  static const unsigned bounds_ms[] = H2REV_HTTP_DURATION_BOUNDS_MS;
  int cls = a->status >= 100 && a->status < 600 ? a->status / 100 : 0;
  u->st.requests[cls]++;
  if (a->result != 0)
    u->st.requests_incomplete++;
  unsigned b = 0;
  while (b < H2REV_HTTP_DURATION_BUCKETS - 1 && a->duration_us > bounds_ms[b] * 1000ull)
    b++;
  u->st.duration[b]++;
  u->st.duration_us_sum += a->duration_us;
  u->st.bytes_in += a->bytes_in;
  u->st.bytes_out += a->bytes_out;
  if (u->o.access_log != NULL)
    u->o.access_log(u->o.access_log_arg, a);
}

static void account(uconn_t *c, int result) {
  if (!c->acc.open)
    return;
  c->acc.open = false;
  h2r_upstream_t *u = c->u;
  uint64_t now = uv_hrtime();
  h2rev_upstream_access_t a = {
      .method = c->acc.method,
      .path = c->acc.path,
      .status = c->acc.status,
      .local = c->acc.local,
      .result = result,
      .bytes_in = c->acc.in,
      .bytes_out = c->acc.out,
      .duration_us = (now - c->acc.start) / 1000,
      .ttfb_us = c->acc.first != 0 ? (c->acc.first - c->acc.start) / 1000 : 0,
  };
  record(u, &a);
  free(c->acc.path);
  c->acc.path = NULL;
}

/* ------------------------------------------------------------ teardown */

/* Frees the upstream once both of its handles are closed (libuv runs close
 * callbacks in an order of its own). */
static void u_freed(uv_handle_t *h) {
  h2r_upstream_t *u = h->data;
  if (--u->closing_handles > 0)
    return;
  h2rev_upstream_t *pub = u->pub;
  h2rev_upstream_close_cb cb = u->close_cb;
  if (u->ctx != NULL)
    SSL_CTX_free(u->ctx);
  free(u->host);
  free(u->port);
  free(u->authority);
  free(u->path);
  free(u->rbuf);
  h2r_bufcache_drain(&u->bufs);
  free(u);
  pub->u_ = NULL;
  if (cb != NULL)
    cb(pub);
}

/* The last step of closing, once nothing holds the upstream (streams,
 * the handler's exchanges, connections): the callback comes on a later
 * loop turn. */
static void u_finish(h2r_upstream_t *u) {
  if (!u->closing || u->closing_handles > 0 || u->active > 0 || u->handled > 0 || u->all != NULL)
    return;
  u->closing_handles = 2;
  uv_close((uv_handle_t *)&u->sweep, u_freed);
  uv_close((uv_handle_t *)&u->defer, u_freed);
}

static void uc_release(uconn_t *c) {
  if (--c->refs > 0)
    return;
  h2r_upstream_t *u = c->u;
  h2rev_stream_t *s = c->s;
  h2rev_close_cb done = c->done;
  free(c->replay); /* no write is in flight once nothing holds c */
  while (c->early != NULL) {
    uwrite_t *w = c->early;
    c->early = w->next;
    free(w);
  }
  h2r_hbuf_free(&c->hb);
  free(c->acc.path);
  if (c->uprev != NULL)
    c->uprev->unext = c->unext;
  else
    u->conns = c->unext;
  if (c->unext != NULL)
    c->unext->uprev = c->uprev;
  free(c);
  u->active--;
  if (done != NULL)
    done(s);
  u_finish(u);
}

static void s_closed(h2rev_stream_t *s) {
  uc_release(s->data);
}
static void h_closed(uv_handle_t *h) {
  uc_release(h->data);
}

static void uc_close(uconn_t *c) {
  if (c->closing)
    return;
  c->closing = true;
  /* An upgraded connection ends here, whichever side ended it. */
  account(c, c->raw && c->acc.status == 101 ? 0 : H2REV_ECLOSED);
  c->refs = 2 + (c->pc != NULL ? 1 : 0) + (c->resolving ? 1 : 0);
  h2rev_stream_close(c->s, s_closed);
  uv_close((uv_handle_t *)&c->linger, h_closed);
  if (c->pc != NULL)
    h2r_xport_close(&c->pc->x);
  if (c->resolving)
    uv_cancel((uv_req_t *)&c->gai);
}

static void linger_done(uv_timer_t *t) {
  uc_close(t->data);
}

/* Closes once both directions have ended (no reset), or after a linger. */
static void uc_check(uconn_t *c) {
  if (c->closing)
    return;
  if (c->s_shut_done && c->s_eof)
    uc_close(c);
  else if (c->s_shut_done)
    uv_timer_start(&c->linger, linger_done, LINGER_MS, 0);
}

static void s_shut(h2rev_shutdown_t *req, int status) {
  uconn_t *c = req->data;
  if (status != 0) {
    uc_close(c);
    return;
  }
  c->s_shut_done = true;
  uc_check(c);
}

static void end_stream(uconn_t *c) {
  if (c->ending)
    return;
  c->ending = true;
  c->sh.data = c;
  if (h2rev_stream_shutdown(&c->sh, c->s, s_shut) != 0)
    uc_close(c);
}

/* ------------------------------------------------------------- writing */

/* A buffer of n bytes of our own (a head built here, bytes held): freed,
 * never recycled. */
static uwrite_t *uw_exact(size_t n) {
  uwrite_t *w = malloc(sizeof(*w) + n);
  if (w != NULL) {
    w->cap = 0;
    w->busy = w->stale = false;
  }
  return w;
}

/* A buffer for n bytes, or more than READ_BUF in several: small ones (a
 * request or response head, a small body) of their size, so that requests
 * in flight do not each hold a page or more of a recycled buffer. */
static uwrite_t *uw_new(h2r_upstream_t *u, size_t n) {
  uwrite_t *w;
  if (n < READ_BUF / 4) {
    if ((w = uw_exact(n)) != NULL)
      w->cap = n;
  } else if ((w = h2r_bufcache_get(&u->bufs)) != NULL) {
    w->cap = READ_BUF;
    w->busy = w->stale = false;
  }
  return w;
}

static void uc_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  uwrite_t *w = uw_new(((uconn_t *)s->data)->u, sz > 0 ? sz : 1);
  *buf = w != NULL ? uv_buf_init(w->data, (unsigned)w->cap) : uv_buf_init(NULL, 0);
}

static void to_s_done(h2rev_write_t *req, int status) {
  uwrite_t *w = H2R_CONTAINER_OF(req, uwrite_t, w.sw);
  uconn_t *c = w->c;
  c->to_s -= w->len;
  wfree(c->u, w);
  if (status != 0 && status != UV_ECANCELED)
    uc_close(c); /* the dialer reset the stream while we held its response */
  else if (status == 0 && !c->closing && !c->x_eof && c->pc != NULL && c->to_s < HIGH_WATER / 2)
    h2r_xport_read_pause(&c->pc->x, false);
}

/* The upstream's bytes to the stream, copied (the read buffer is shared)
 * into recycled buffers. */
static void send_s(uconn_t *c, const char *p, size_t n) {
  while (n > 0 && !c->closing) {
    uwrite_t *w = uw_new(c->u, n);
    if (w == NULL) {
      uc_close(c);
      return;
    }
    size_t k = H2R_MIN(n, w->cap);
    memcpy(w->data, p, k);
    w->c = c;
    w->len = k;
    c->to_s += k;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)k);
    if (h2rev_stream_write(&w->w.sw, c->s, &b, 1, to_s_done) != 0) {
      c->to_s -= k;
      wfree(c->u, w);
      uc_close(c);
      return;
    }
    p += k;
    n -= k;
  }
}

static bool retry_fresh(uconn_t *c);

static void to_x_done(h2r_xwrite_t *xw, int status) {
  uwrite_t *w = H2R_CONTAINER_OF(xw, uwrite_t, w.xw);
  if (w->stale) { /* the exchange has moved on, and may be gone: c is not touched */
    free(w);
    return;
  }
  uconn_t *c = w->c;
  c->to_x -= w->len;
  if (w->consume && !c->closing)
    h2r_strm_consume(c->s, w->len); /* the dialer may send as much again */
  w->busy = false;
  if (w != c->replay) /* else kept for a retry */
    wfree(c->u, w);
  if (status != 0 && status != UV_ECANCELED && !retry_fresh(c))
    uc_close(c);
  else if (status == 0 && !c->closing && !c->s_eof && c->to_x < HIGH_WATER / 2)
    h2rev_stream_read_start(c->s, uc_alloc, uc_read);
}

/* Sends a buffer allocated by uc_alloc (its uwrite_t) to the upstream;
 * consume: its bytes came from the stream and return their window once
 * written (the stream's window, not our buffers, bounds what is in flight). */
static void send_x(uconn_t *c, uwrite_t *w, size_t n, bool consume) {
  w->c = c;
  w->len = n;
  w->consume = consume;
  w->busy = true;
  c->to_x += n;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
  if (h2r_xport_write(&c->pc->x, &w->w.xw, &b, 1, to_x_done) != 0) {
    c->to_x -= n;
    wfree(c->u, w);
    uc_close(c);
    return;
  }
  if (c->to_x >= 4 * HIGH_WATER) /* a safety net: the window bounds it */
    h2rev_stream_read_stop(c->s);
}

/* Responds in the upstream's place when nothing reached it. */
static void uc_fail(uconn_t *c, int err, const char *why) {
  H2R_WARN(&c->u->log, "upstream %s: %s", c->u->authority, why);
  if (c->x_open) {
    uc_close(c);
    return;
  }
  if (c->acc.open) {
    c->u->st.errors++;
    c->acc.status = 502;
    c->acc.local = true;
  }
  /* why (a connect error, the upstream's certificate) is for the log: the
   * body reaches public clients. */
  static const char resp[] = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 21\r\nConnection: close\r\n\r\n"
                             "upstream unavailable\n";
  size_t n = sizeof(resp) - 1;
  send_s(c, resp, (size_t)n);
  c->acc.out += n;
  account(c, err);
  c->x_eof = true;
  c->over = true;
  if (!c->closing)
    end_stream(c);
}

/* ----------------------------------------------------------- upstream */

/* The response has started (or the exchange is over): no retry. */
static void replay_drop(uconn_t *c) {
  uwrite_t *w = c->replay;
  if (w == NULL)
    return;
  c->replay = NULL;
  if (!w->busy) /* else its write's completion frees it */
    wfree(c->u, w);
}

static void start_upstream(uconn_t *c, bool pooled);

/* An upstream may close an idle connection of ours at any moment (its
 * keep-alive timeout) and our request can cross its FIN: a connection from
 * the pool that ends before a byte of the response came gets the request
 * once more on a new connection, when that request is all in its head and
 * safe to repeat (GET, HEAD, OPTIONS, TRACE, or an Idempotency-Key: what
 * Go's transport retries), nothing after it. Once only. */
static bool retry_fresh(uconn_t *c) {
  if (c->replay == NULL || c->spill || c->acc.first != 0 || c->resp_done || c->closing ||
      c->x_eof || c->pc == NULL)
    return false;
  uwrite_t *w = c->replay;
  if (c->to_x != (w->busy ? w->len : 0))
    return false; /* other bytes in flight to the old connection */
  if (w->busy) {  /* its write still in flight: the old connection's, freed by its completion */
    uwrite_t *copy = malloc(sizeof(*copy) + w->len);
    if (copy == NULL)
      return false;
    memcpy(copy, w, sizeof(*copy) + w->len);
    w->stale = true;
    c->to_x -= w->len;
    w = copy;
    w->busy = false;
  }
  c->replay = NULL;
  upconn_t *pc = c->pc;
  c->pc = NULL;
  pc->c = NULL;
  h2r_xport_close(&pc->x);
  w->next = c->early; /* nothing else is there: the request has no body */
  if (c->early == NULL)
    c->early_tail = &w->next;
  c->early = w;
  c->x_open = false; /* and not reused: nothing is kept for a second retry */
  H2R_DEBUG(&c->u->log,
            "upstream %s: a connection from the pool closed before the response: "
            "the request goes again on a new one",
            c->u->authority);
  start_upstream(c, false);
  return true;
}

static void pool_unlink(h2r_upstream_t *u, upconn_t *pc) {
  for (upconn_t **p = &u->idle; *p != NULL; p = &(*p)->next)
    if (*p == pc) {
      *p = pc->next;
      u->nidle--;
      break;
    }
  pc->pooled = false;
}

/* The connection can carry another request: kept for the next one. */
static void pool_back(h2r_upstream_t *u, upconn_t *pc) {
  pc->c = NULL;
  pc->h = NULL;
  if (u->closing || u->nidle >= u->o.max_idle_conns) {
    h2r_xport_close(&pc->x);
    return;
  }
  pc->idle_since = uv_now(u->loop);
  pc->pooled = true;
  pc->next = u->idle;
  u->idle = pc;
  u->nidle++;
  h2r_xport_read_pause(&pc->x, false); /* to notice the upstream closing it */
}

/* The exchange is over and the connection can carry another request. */
static void pool_put(uconn_t *c) {
  upconn_t *pc = c->pc;
  c->pc = NULL;
  pool_back(c->u, pc);
}

static void uc_opened(uconn_t *c) {
  c->x_open = true;
  while (c->early != NULL && !c->closing) {
    uwrite_t *w = c->early; /* as it was built: no copy */
    c->early = w->next;
    if (c->replayable && c->reused && !c->spill && c->replay == NULL)
      c->replay = w; /* the head, all there is: kept for a retry */
    send_x(c, w, w->len, false);
  }
  c->early_tail = &c->early;
  if (c->closing || c->s_eof)
    return; /* with s_eof the request is all there */
  h2rev_stream_read_start(c->s, uc_alloc, uc_read);
}

/* The handler's hop, on the connection's events (below). */
static void h_x_open(struct uphop *h, h2r_xport_t *x, int status);
static void h_x_read(struct uphop *h, const uint8_t *p, size_t n);
static void h_x_error(struct uphop *h, int err);
static void h_x_closed(struct uphop *h);

static void x_open(h2r_xport_t *x, int status) {
  upconn_t *pc = x->owner;
  uconn_t *c = pc->c;
  if (pc->h != NULL) {
    h_x_open(pc->h, x, status);
    return;
  }
  if (c == NULL || c->closing)
    return;
  if (status != 0) {
    char why[256];
    bool more = x->errmsg[0] && strcmp(x->errmsg, h2rev_strerror(status)) != 0;
    snprintf(why, sizeof(why), "%s%s%s", h2rev_strerror(status), more ? ": " : "",
             more ? x->errmsg : "");
    uc_fail(c, status, why);
    return;
  }
  uc_opened(c);
}

static void stream_idle(uv_timer_t *t) {
  uconn_t *c = t->data;
  c->s_eof = true; /* nothing more is read: close once our end is sent */
  h2rev_stream_read_stop(c->s);
  end_stream(c);
}

/* Ready for the next request on the same reverse connection. */
static void next_request(uconn_t *c) {
  if (c->pc != NULL) { /* not reusable: the response ended before the request */
    upconn_t *pc = c->pc;
    c->pc = NULL;
    pc->c = NULL;
    h2r_xport_close(&pc->x);
  }
  replay_drop(c);
  c->idle = true;
  llhttp_init(&c->parser, HTTP_REQUEST, &c->settings);
  llhttp_init(&c->rparser, HTTP_RESPONSE, &c->rsettings);
  c->parser.data = c->rparser.data = c;
  h2r_hbuf_reset(&c->hb);
  c->head_req = c->raw = c->req_done = c->resp_done = c->spill = c->resp_ka = false;
  c->replayable = c->reused = false;
  c->parsed = c->x_open = c->x_eof = false;
  uv_timer_start(&c->linger, stream_idle, STREAM_IDLE_MS, 0);
  int r = h2rev_stream_read_start(c->s, uc_alloc, uc_read);
  if (r != 0 && r != UV_EALREADY)
    uc_close(c);
}

/* The last exchange on the reverse connection is over: what the dialer
 * sends after it is read and dropped (its window returned), never served
 * (RFC 9112 9.6: no request after one that asked to close). */
static void end_exchanges(uconn_t *c) {
  c->over = true;
  end_stream(c);
}

static void peer_silent(uv_timer_t *t) {
  end_stream(t->data);
}

/* The request asked to close: the dialer ends the reverse connection once
 * it has read the response, and ours ends after its. Ending ours first
 * races the Go dialer (which asks on every request): its data connection
 * then closes while its write of the request may still be in flight, and
 * under load (h2load -c 16 -m 10) a few requests in 10,000 failed with
 * "io: read/write on closed pipe" (502) and some streams received a second
 * request after their exchange was over. The Go listener, too, ends its
 * side a second or more after the response. */
static void await_peer_close(uconn_t *c) {
  c->over = true;
  uv_timer_start(&c->linger, peer_silent, PEER_CLOSE_MS, 0);
}

/* Both messages are over: the reverse connection waits for the next
 * request when both sides keep it alive, else it ends. The choice rests on
 * the messages alone, which the dialer sees too (it puts the stream back
 * among its spares on the same terms). */
static void exchange_done(uconn_t *c) {
  if (c->closing || !c->resp_done || !c->req_done)
    return;
  account(c, 0);
  if (!c->raw && c->resp_ka && !c->spill && !c->s_eof && !c->u->closing && !c->u->draining &&
      llhttp_should_keep_alive(&c->parser))
    next_request(c);
  else if (!c->raw && !c->s_eof && !c->u->closing && !llhttp_should_keep_alive(&c->parser))
    await_peer_close(c);
  else
    end_exchanges(c);
}

/* A response is complete: give the connection back when both messages had
 * clear ends and the upstream keeps it alive. */
static void response_done(uconn_t *c) {
  c->x_eof = true;
  c->resp_ka = llhttp_should_keep_alive(&c->rparser);
  if (c->req_done && !c->spill && !c->raw && c->to_x == 0 && c->resp_ka &&
      c->pc->x.state == H2R_X_OPEN)
    pool_put(c);
  else
    h2r_xport_read_pause(&c->pc->x, true);
  if (c->req_done)
    exchange_done(c);
  else if (c->raw || c->s_eof)
    end_stream(c);
  /* else: the rest of the request body first (uc_read) */
}

static void x_read(h2r_xport_t *x, const uint8_t *p, size_t n) {
  upconn_t *pc = x->owner;
  uconn_t *c = pc->c;
  if (pc->h != NULL) {
    h_x_read(pc->h, p, n);
    return;
  }
  if (c == NULL) { /* idle: bytes nobody asked for */
    h2r_xport_close(x);
    return;
  }
  if (c->closing || c->x_eof)
    return;
  c->last_io = uv_now(c->u->loop);
  if (c->acc.first == 0) {
    c->acc.first = uv_hrtime();
    replay_drop(c);
  }
  size_t take = n;
  if (!c->raw) {
    llhttp_errno_t e = llhttp_execute(&c->rparser, (const char *)p, n);
    if (e == HPE_PAUSED && c->resp_done) {
      take = (size_t)((const uint8_t *)llhttp_get_error_pos(&c->rparser) - p);
      c->spill = take < n;
    } else if (e != HPE_OK && e != HPE_PAUSED_UPGRADE) {
      c->spill = true; /* framing unknown: the connection is not reused */
    }
  }
  if (take > 0)
    send_s(c, (const char *)p, take);
  c->acc.out += take;
  if (c->closing)
    return;
  if (c->resp_done) {
    response_done(c);
    return;
  }
  if (c->to_s >= HIGH_WATER)
    h2r_xport_read_pause(x, true);
}

static void x_error(h2r_xport_t *x, int err) {
  upconn_t *pc = x->owner;
  uconn_t *c = pc->c;
  if (pc->h != NULL) {
    h_x_error(pc->h, err);
    return;
  }
  if (c == NULL) {
    h2r_xport_close(x);
    return;
  }
  if (c->closing || c->x_eof || retry_fresh(c))
    return;
  if (err != UV_EOF) {
    H2R_DEBUG(&c->u->log, "upstream %s: %s", c->u->authority, h2rev_strerror(err));
    uc_close(c);
    return;
  }
  c->x_eof = true;
  h2r_xport_read_pause(x, true);
  end_stream(c);
}

static void x_close(h2r_xport_t *x) {
  upconn_t *pc = x->owner;
  uconn_t *c = pc->c;
  struct uphop *h = pc->h;
  h2r_upstream_t *u = pc->u;
  if (pc->pooled)
    pool_unlink(u, pc);
  if (pc->aprev != NULL)
    pc->aprev->anext = pc->anext;
  else
    u->all = pc->anext;
  if (pc->anext != NULL)
    pc->anext->aprev = pc->aprev;
  free(pc);
  if (c != NULL)
    uc_release(c);
  else if (h != NULL)
    h_x_closed(h);
  u_finish(u); /* when closing, the last connection may be the last holder */
}

static const h2r_xport_cbs ucbs = {x_open, x_read, x_error, x_close};

/* Takes a live idle connection from the pool. */
static upconn_t *pool_get(h2r_upstream_t *u) {
  uint64_t now = uv_now(u->loop);
  while (u->idle != NULL) {
    upconn_t *pc = u->idle;
    pool_unlink(u, pc);
    if (pc->x.state == H2R_X_OPEN && now - pc->idle_since < POOL_IDLE_MS)
      return pc;
    h2r_xport_close(&pc->x);
  }
  return NULL;
}

static void sweep(uv_timer_t *t) {
  h2r_upstream_t *u = t->data;
  uint64_t now = uv_now(u->loop);
  upconn_t **p = &u->idle;
  while (*p != NULL) {
    upconn_t *pc = *p;
    if (now - pc->idle_since >= POOL_IDLE_MS) {
      pool_unlink(u, pc); /* *p moves on */
      h2r_xport_close(&pc->x);
    } else {
      p = &pc->next;
    }
  }
}

/* A new connection to addr for c or h (one of them), NULL when memory is
 * out; *err is the connect's: its handles exist even when it failed, and
 * it must be closed then. */
static upconn_t *conn_new(h2r_upstream_t *u, const struct sockaddr *addr, uconn_t *c,
                          struct uphop *h, int *err) {
  upconn_t *pc = calloc(1, sizeof(*pc));
  if (pc == NULL) {
    *err = UV_ENOMEM;
    return NULL;
  }
  pc->u = u;
  pc->c = c;
  pc->h = h;
  pc->anext = u->all;
  if (u->all != NULL)
    u->all->aprev = pc;
  u->all = pc;
  pc->x.log = &u->log;
  pc->x.shared_rbuf = u->rbuf;
  pc->x.unref = u->unref;
  const char *sni = u->o.tls.server_name ? u->o.tls.server_name : u->host;
  *err = h2r_xport_connect(&pc->x, u->loop, addr, u->ctx, sni, u->o.connect_timeout_ms, &ucbs, pc);
  return pc;
}

/* The upstream's address is known (an IP literal, or a name's answer
 * still valid): no lookup. */
static bool addr_known(const h2r_upstream_t *u) {
  return u->addr_literal || uv_now(u->loop) < u->addr_until;
}

/* Names are looked up again after a while; until then connections reuse
 * the answer instead of a thread-pool round trip each. */
static void addr_learn(h2r_upstream_t *u, const struct addrinfo *res) {
  memcpy(&u->addr, res->ai_addr, res->ai_addrlen);
  u->addr_until = uv_now(u->loop) + ADDR_TTL_MS;
}

static void connect_to(uconn_t *c, const struct sockaddr *addr) {
  int r;
  upconn_t *pc = conn_new(c->u, addr, c, NULL, &r);
  if (pc == NULL) {
    uc_fail(c, UV_ENOMEM, "out of memory");
    return;
  }
  c->pc = pc; /* its handles exist even when connect fails */
  if (r != 0) {
    char why[200];
    snprintf(why, sizeof(why), "cannot connect: %s", h2rev_strerror(r));
    uc_fail(c, r, why);
  }
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  uconn_t *c = req->data;
  h2r_upstream_t *u = c->u;
  c->resolving = false;
  if (c->closing) {
    uv_freeaddrinfo(res);
    uc_release(c);
    return;
  }
  if (status != 0) {
    uv_freeaddrinfo(res);
    char why[200];
    snprintf(why, sizeof(why), "cannot resolve %s: %s", u->host, uv_strerror(status));
    uc_fail(c, status, why);
    return;
  }
  addr_learn(u, res);
  connect_to(c, res->ai_addr);
  uv_freeaddrinfo(res);
}

/* --------------------------------------------------------- the request */

static int on_url(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_url(&((uconn_t *)h->data)->hb, at, len);
}

static int on_hfield(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_field(&((uconn_t *)h->data)->hb, at, len);
}

static int on_hvalue(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_value(&((uconn_t *)h->data)->hb, at, len);
}

static int on_hvalue_done(llhttp_t *h) {
  return h2r_hbuf_value_done(&((uconn_t *)h->data)->hb);
}

/* Length of the reverse-proxy prefix at the start of url, which the
 * upstream does not see; 0 when there is none. Host is the id with both
 * dialers. h2rev's dialer sends the path already stripped and states what
 * it stripped, X-Forwarded-Prefix: <base>/proxy/<id>: nothing more goes
 * (GET /proxy/<id>/proxy/<id>/x arrives as /proxy/<id>/x). Its prefix comes
 * last: older dialers passed a client's ahead of it. The Go dialer sends the
 * full path, <base>/proxy/<id>/<path>, and no prefix of its own: the prefix
 * ends after the first "/proxy/<id>" of the path followed by '/', '?' or
 * its end, never a later one (/proxy/app/a/proxy/app/b arrives as
 * /a/proxy/app/b). A client's X-Forwarded-Prefix through the Go dialer can
 * at most keep the path from being stripped. */
static size_t prefix_len(uconn_t *c, const char *url, size_t ul) {
  size_t pl, hl;
  const char *host = h2r_hbuf_get(&c->hb, "host", &hl);
  if (host == NULL || hl == 0)
    return 0;
  const char *p = h2r_hbuf_get_last(&c->hb, "x-forwarded-prefix", &pl);
  if (p != NULL && pl >= 7 + hl && memcmp(p + pl - hl - 7, "/proxy/", 7) == 0 &&
      memcmp(p + pl - hl, host, hl) == 0)
    return 0;
  size_t path_end = 0; /* the query is not searched */
  while (path_end < ul && url[path_end] != '?')
    path_end++;
  for (size_t i = 0; i + 7 + hl <= path_end; i++) {
    if (memcmp(url + i, "/proxy/", 7) == 0 && memcmp(url + i + 7, host, hl) == 0) {
      size_t end = i + 7 + hl;
      if (end == ul || url[end] == '/' || url[end] == '?')
        return end;
    }
  }
  return 0;
}

/* Answers 400 in the upstream's place for a request not sent on. */
static void uc_refuse(uconn_t *c, const char *why) {
  H2R_WARN(&c->u->log, "upstream %s: request refused (400): %s", c->u->authority, why);
  char resp[320];
  int n = snprintf(resp, sizeof(resp),
                   "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                   strlen(why) + 1, why);
  send_s(c, resp, (size_t)n);
  if (c->acc.open) {
    c->u->st.refused++;
    c->acc.status = 400;
    c->acc.local = true;
    c->acc.out += (size_t)n;
    account(c, 0);
  }
  c->x_eof = true;
  if (!c->closing)
    end_stream(c);
}

/* RFC 9110 9.2.2: methods a client may repeat on its own; a request with
 * an Idempotency-Key says so of itself. */
static bool replayable(const char *method, const h2r_hbuf_t *hb) {
  if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 || strcmp(method, "OPTIONS") == 0 ||
      strcmp(method, "TRACE") == 0)
    return true;
  for (unsigned i = 0; i < hb->n; i++) {
    h2r_kv_t kv = h2r_hbuf_kv(hb, i);
    if ((kv.nl == 15 && strncasecmp(kv.name, "idempotency-key", 15) == 0) ||
        (kv.nl == 17 && strncasecmp(kv.name, "x-idempotency-key", 17) == 0))
      return true;
  }
  return false;
}

static int on_headers_complete(llhttp_t *h) {
  uconn_t *c = h->data;
  h2r_upstream_t *u = c->u;
  const char *method = llhttp_method_name((llhttp_method_t)llhttp_get_method(h));
  const h2r_hbuf_t *hb = &c->hb;
  const char *url = hb->buf;
  size_t ul = hb->url_len;
  size_t skip = prefix_len(c, url, ul);
  url += skip;
  ul -= skip;
  if (u->loop != NULL) { /* no loop: h2r_upstream_head, the head alone */
    c->acc.open = true;
    c->acc.local = false;
    c->acc.status = 0;
    c->acc.method = method;
    c->acc.start = uv_hrtime();
    c->acc.first = c->acc.in = c->acc.out = 0;
    free(c->acc.path);
    c->acc.path = NULL;
    if (u->o.access_log != NULL && (c->acc.path = malloc(strlen(u->path) + ul + 2)) != NULL) {
      size_t pl = strlen(u->path);
      memcpy(c->acc.path, u->path, pl);
      if (ul == 0 || url[0] != '/')
        c->acc.path[pl++] = '/';
      memcpy(c->acc.path + pl, url, ul);
      c->acc.path[pl + ul] = '\0';
    }
  }
  /* What the dialer checks, again for a dialer that does not (Go's). */
  c->refused = h2r_path_has_dot_segment(url, ul) ? "a dot segment in the path" : NULL;
  for (unsigned i = 0; i < hb->n && c->refused == NULL; i++) {
    h2r_kv_t kv = h2r_hbuf_kv(hb, i);
    if (!h2r_is_token(kv.name, kv.nl))
      c->refused = "a header field name is not a token";
  }
  if (c->refused != NULL)
    return -1;
  size_t cap = 256 + strlen(method) + strlen(u->path) + strlen(u->authority) + hb->len + 4 * hb->n;
  uwrite_t *k = uw_exact(cap);
  if (k == NULL)
    return -1;
  h2r_out_t o = {k->data, 0, cap, false};
  h2r_out_put(&o, method, strlen(method));
  H2R_OUT_LIT(&o, " ");
  h2r_out_put(&o, u->path, strlen(u->path));
  if (ul == 0 || url[0] != '/')
    H2R_OUT_LIT(&o, "/");
  h2r_out_put(&o, url, ul);
  H2R_OUT_LIT(&o, " HTTP/");
  h2r_out_uint(&o, h->http_major, 10);
  H2R_OUT_LIT(&o, ".");
  h2r_out_uint(&o, h->http_minor, 10);
  H2R_OUT_LIT(&o, "\r\n");
  c->raw = llhttp_get_upgrade(h) != 0;
  if (c->raw && u->loop != NULL) { /* no loop: h2r_upstream_head, the head alone */
    c->last_io = uv_now(u->loop);
    if (u->draining)
      drain_watch(c);
  }
  c->head_req = strcmp(method, "HEAD") == 0;
  H2R_DEBUG(&u->log, "%s: request %u on this reverse connection", method, ++c->nreq);
  c->req_done =
      !(h->flags & F_CHUNKED) && !((h->flags & F_CONTENT_LENGTH) && h->content_length > 0);
  for (unsigned i = 0; i < hb->n; i++) {
    h2r_kv_t kv = h2r_hbuf_kv(hb, i);
    if (kv.nl == 4 && strncasecmp(kv.name, "host", 4) == 0 && !u->o.keep_host)
      continue;
    /* The dialer's Connection: close is for its stream, not the upstream's
     * connection, which stays in the pool. */
    if (!c->raw && ((kv.nl == 10 && strncasecmp(kv.name, "connection", 10) == 0) ||
                    (kv.nl == 10 && strncasecmp(kv.name, "keep-alive", 10) == 0)))
      continue;
    h2r_out_header(&o, kv.name, kv.nl, kv.value, kv.vl);
  }
  if (!u->o.keep_host)
    h2r_out_header(&o, "Host", 4, u->authority, strlen(u->authority));
  H2R_OUT_LIT(&o, "\r\n");
  if (o.over) { /* cap is computed above: a bug, never a head cut short */
    free(k);
    c->refused = "request head larger than computed";
    return -1;
  }
  k->len = o.len;
  k->next = NULL;
  *c->early_tail = k;
  c->early_tail = &k->next;
  c->parsed = true;
  c->replayable = !c->raw && c->req_done && replayable(method, hb);
  return HPE_PAUSED; /* the rest passes through as it is */
}

static int on_req_complete(llhttp_t *h) {
  uconn_t *c = h->data;
  c->req_done = true;
  return HPE_PAUSED;
}

/* Follows the request body to know where it ends (the bytes pass as they
 * are); anything after it means the connection is not reused. */
static void track_request(uconn_t *c, const char *p, size_t n) {
  if (c->raw || n == 0)
    return;
  if (c->req_done) {
    c->spill = true;
    return;
  }
  llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
  if (e == HPE_PAUSED && c->req_done)
    c->spill |= llhttp_get_error_pos(&c->parser) != p + n;
  else if (e != HPE_OK)
    c->spill = true;
}

static int on_resp_headers(llhttp_t *h) {
  uconn_t *c = h->data;
  if (h->status_code >= 200 || h->status_code == 101)
    c->acc.status = h->status_code;
  if (h->status_code == 101)
    c->raw = true;
  return c->head_req ? 1 : 0;
}

static int on_resp_complete(llhttp_t *h) {
  uconn_t *c = h->data;
  if (h->status_code < 200)
    return 0; /* an interim response; the final one follows */
  c->resp_done = true;
  return HPE_PAUSED;
}

static void start_upstream(uconn_t *c, bool pooled) {
  h2r_upstream_t *u = c->u;
  upconn_t *pc = c->raw || !pooled ? NULL : pool_get(u);
  c->reused = pc != NULL;
  if (pc != NULL) {
    pc->c = c;
    c->pc = pc;
    uc_opened(c);
    return;
  }
  if (addr_known(u)) {
    connect_to(c, (const struct sockaddr *)&u->addr);
    return;
  }
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  c->gai.data = c;
  if (uv_getaddrinfo(c->u->loop, &c->gai, resolved, c->u->host, c->u->port, &hints) != 0) {
    uc_fail(c, UV_EAI_FAIL, "cannot resolve the upstream");
    return;
  }
  c->resolving = true;
}

static void keep(uconn_t *c, const char *p, size_t n) {
  if (n == 0)
    return;
  uwrite_t *k = uw_exact(n);
  if (k == NULL) {
    uc_close(c);
    return;
  }
  memcpy(k->data, p, n);
  k->len = n;
  k->next = NULL;
  *c->early_tail = k;
  c->early_tail = &k->next;
}

static void uc_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uconn_t *c = s->data;
  if (n > 0)
    c->last_io = uv_now(c->u->loop);
  if (n <= 0) {
    if (buf->base != NULL)
      wfree(c->u, H2R_CONTAINER_OF(buf->base, uwrite_t, data));
    if (n == 0 || c->closing)
      return;
    if (n != UV_EOF) {
      uc_close(c);
      return;
    }
    c->s_eof = true;
    if (c->over && !c->ending) { /* the dialer closed first, as it said it would */
      uv_timer_stop(&c->linger);
      end_stream(c);
      return;
    }
    if (!c->parsed && c->hb.len == 0) {
      end_stream(c); /* no (further) request: end ours too, then close */
      return;
    }
    if (!c->parsed) {
      uc_fail(c, H2REV_ECLOSED, "request head cut short");
      return;
    }
    uc_check(c);
    return;
  }
  uwrite_t *w = H2R_CONTAINER_OF(buf->base, uwrite_t, data); /* n bytes: uc_alloc's buffer */
  if (c->over) {
    if (!c->dropping)
      H2R_DEBUG(&c->u->log, "bytes after the last request on a reverse connection: dropped");
    c->dropping = true;
    h2r_strm_consume(s, (size_t)n);
    wfree(c->u, w);
    return;
  }
  if (c->parsed) {
    track_request(c, buf->base, (size_t)n);
    c->acc.in += (size_t)n;
  } else if (c->idle) {
    c->idle = false;
    uv_timer_stop(&c->linger); /* a request is coming */
  }
  if (c->x_open) {
    send_x(c, w, (size_t)n, true);
    if (c->resp_done && c->req_done && !c->closing)
      exchange_done(c); /* the body's end came after the response */
    return;
  }
  h2r_strm_consume(s, (size_t)n); /* held or parsed here: bounded */
  if (c->parsed) {                /* the upstream is on its way: hold the bytes */
    keep(c, buf->base, (size_t)n);
    wfree(c->u, w);
    h2rev_stream_read_stop(s);
    return;
  }
  llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)n);
  if (e == HPE_PAUSED) {
    const char *rest = llhttp_get_error_pos(&c->parser);
    size_t left = (size_t)(buf->base + n - rest);
    llhttp_resume(&c->parser);
    track_request(c, rest, left);
    c->acc.in += left;
    keep(c, rest, left);
    wfree(c->u, w);
    h2rev_stream_read_stop(s);
    start_upstream(c, true);
    return;
  }
  wfree(c->u, w);
  if (e != HPE_OK && c->refused != NULL) {
    uc_refuse(c, c->refused);
  } else if (e != HPE_OK) {
    char why[160];
    snprintf(why, sizeof(why), "bad request on a reverse connection: %s",
             c->hb.too_large ? "head too large" : llhttp_errno_name(e));
    uc_fail(c, H2REV_EPROTO, why);
  }
}

/* ------------------------------------------- the handler's next hop */

/* A connection of the pool as the next hop of the proxy's exchange
 * (h2rev_upstream_handler): taken from the pool or opened, handed back to
 * it when the exchange leaves it reusable. It lives in the exchange's
 * allocation: nothing touches it after h2r_px_gone or h2r_px_opened with
 * an error. TCP and TLS here have no half-close: the exchange closes the
 * connection instead (as the splice above never half-closes it either). */
typedef struct uphop {
  h2r_hop_t hop; /* first: the exchange's view */
  h2r_upstream_t *u;
  upconn_t *pc; /* while it has one */
  uv_getaddrinfo_t gai;
  size_t queued; /* bytes written, not yet out */
  bool resolving;
  bool closing; /* closed by the exchange: h2r_px_gone is all that follows */
} uphop_t;

static int h_connect(uphop_t *h, const struct sockaddr *addr) {
  int r;
  upconn_t *pc = conn_new(h->u, addr, NULL, h, &r);
  if (pc == NULL)
    return r;
  if (r != 0) {
    pc->h = NULL; /* nothing of it reaches the exchange */
    h2r_xport_close(&pc->x);
    return r;
  }
  h->pc = pc;
  return 0;
}

static void h_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  uphop_t *h = req->data;
  h2r_upstream_t *u = h->u;
  h->resolving = false;
  if (h->closing) {
    uv_freeaddrinfo(res);
    h2r_px_gone(&h->hop);
    return;
  }
  char why[200];
  if (status != 0) {
    uv_freeaddrinfo(res);
    snprintf(why, sizeof(why), "cannot resolve %s: %s", u->host, uv_strerror(status));
    h2r_px_opened(&h->hop, status, why);
    return;
  }
  addr_learn(u, res);
  int r = h_connect(h, res->ai_addr);
  uv_freeaddrinfo(res);
  if (r != 0) {
    snprintf(why, sizeof(why), "cannot connect: %s", h2rev_strerror(r));
    h2r_px_opened(&h->hop, r, why);
  }
}

static int h_open(h2r_hop_t *hop) {
  uphop_t *h = (uphop_t *)hop;
  h2r_upstream_t *u = h->u;
  upconn_t *pc = pool_get(u);
  if (pc != NULL) {
    pc->h = h;
    h->pc = pc;
    h2r_px_opened(hop, 0, NULL);
    return 0;
  }
  if (addr_known(u))
    return h_connect(h, (const struct sockaddr *)&u->addr);
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  h->gai.data = h;
  int r = uv_getaddrinfo(u->loop, &h->gai, h_resolved, u->host, u->port, &hints);
  if (r == 0)
    h->resolving = true;
  return r;
}

static void h_x_open(uphop_t *h, h2r_xport_t *x, int status) {
  if (h->closing)
    return; /* x_close follows */
  if (status == 0) {
    h2r_px_opened(&h->hop, 0, NULL);
    return;
  }
  char why[256];
  bool more = x->errmsg[0] && strcmp(x->errmsg, h2rev_strerror(status)) != 0;
  snprintf(why, sizeof(why), "%s%s%s", h2rev_strerror(status), more ? ": " : "",
           more ? x->errmsg : "");
  upconn_t *pc = h->pc;
  h->pc = NULL;
  pc->h = NULL;
  h2r_xport_close(&pc->x);
  h2r_px_opened(&h->hop, status, why); /* the hop is over */
}

/* The connection's read buffer is shared: its bytes are copied into one
 * the exchange may keep (it writes the response from it). */
static void h_x_read(uphop_t *h, const uint8_t *p, size_t n) {
  if (h->closing)
    return;
  uv_buf_t b;
  h2r_px_alloc(&h->hop, n, &b);
  if (b.base == NULL) {
    h2r_px_read(&h->hop, UV_ENOBUFS, &b);
    return;
  }
  memcpy(b.base, p, n);
  h2r_px_read(&h->hop, (ssize_t)n, &b);
}

static void h_x_error(uphop_t *h, int err) {
  if (h->closing)
    return;
  h2r_xport_read_pause(&h->pc->x, true);
  uv_buf_t b = uv_buf_init(NULL, 0);
  h2r_px_read(&h->hop, err, &b);
}

static void h_x_closed(uphop_t *h) {
  h2r_px_gone(&h->hop);
}

static void h_wrote(h2r_xwrite_t *xw, int status) {
  h2r_hop_write_t *w = H2R_CONTAINER_OF(xw, h2r_hop_write_t, u.x);
  upconn_t *pc = H2R_CONTAINER_OF(xw->x, upconn_t, x);
  if (pc->h != NULL)
    pc->h->queued -= w->len;
  w->cb(w, status);
}

static int h_write(h2r_hop_t *hop, h2r_hop_write_t *w, const uv_buf_t *bufs, unsigned n) {
  uphop_t *h = (uphop_t *)hop;
  if (h->pc == NULL)
    return UV_EBADF;
  int r = h2r_xport_write(&h->pc->x, &w->u.x, bufs, n, h_wrote);
  if (r == 0)
    h->queued += w->len;
  return r;
}

static size_t h_queued(const h2r_hop_t *hop) {
  return ((const uphop_t *)hop)->queued;
}

static void h_read_start(h2r_hop_t *hop) {
  uphop_t *h = (uphop_t *)hop;
  if (h->pc != NULL)
    h2r_xport_read_pause(&h->pc->x, false);
}

static void h_read_stop(h2r_hop_t *hop) {
  uphop_t *h = (uphop_t *)hop;
  if (h->pc != NULL)
    h2r_xport_read_pause(&h->pc->x, true);
}

static bool h_recycle(h2r_hop_t *hop) {
  uphop_t *h = (uphop_t *)hop;
  upconn_t *pc = h->pc;
  if (pc == NULL || h->queued != 0 || pc->x.state != H2R_X_OPEN || h->u->closing)
    return false;
  h->pc = NULL;
  pool_back(h->u, pc);
  return true;
}

static void h_close(h2r_hop_t *hop) {
  uphop_t *h = (uphop_t *)hop;
  h->closing = true;
  if (h->resolving)
    uv_cancel((uv_req_t *)&h->gai); /* h_resolved ends the hop */
  else if (h->pc != NULL)
    h2r_xport_close(&h->pc->x); /* x_close ends it */
}

static const h2r_hop_ops upstream_ops = {
    .open = h_open,
    .write = h_write,
    .queued = h_queued,
    .read_start = h_read_start,
    .read_stop = h_read_stop,
    .shutdown = NULL,
    .recycle = h_recycle,
    .close = h_close,
};

/* The handler's requests, in the counters and the access log as those of
 * the reverse connections. */
static void h_account(void *arg, const h2rev_upstream_access_t *a) {
  h2r_upstream_t *u = arg;
  if (a->local && a->status >= 500)
    u->st.errors++;
  else if (a->local && a->status >= 400)
    u->st.refused++;
  record(u, a);
}

static void h_released(void *arg) {
  h2r_upstream_t *u = arg;
  u->handled--;
  u_finish(u);
}

/* A request answered here, before any exchange. */
static void h_refuse(h2r_upstream_t *u, h2rev_http_req_t *req, char *path, int status) {
  h2r_px_reply_error(req, &u->px, status, req->content_length != 0);
  h2rev_upstream_access_t a = {.method = req->method, .path = path, .status = status, .local = 1};
  h_account(u, &a);
  free(path);
}

void h2rev_upstream_handler(h2rev_http_req_t *req, void *arg) {
  h2rev_upstream_t *upstream = arg;
  h2r_upstream_t *u = upstream->u_;
  if (u == NULL) {
    h2rev_http_reply(req, 503, "text/plain", "unavailable\n", 12);
    return;
  }
  /* Reset already: nothing is asked of the upstream for it. */
  if (h2rev_http_client_error(req) != 0) {
    h2rev_http_abort(req);
    return;
  }
  /* <route><rest> goes to <path><rest>. */
  size_t routel = strlen(req->route), pathl = strlen(u->path);
  const char *rest = req->path + routel;
  size_t restl = strlen(rest);
  char *accp = NULL;
  if (u->o.access_log != NULL && (accp = malloc(pathl + 1 + restl + 1)) != NULL) {
    size_t n = pathl;
    memcpy(accp, u->path, pathl);
    if (rest[0] != '/')
      accp[n++] = '/';
    memcpy(accp + n, rest, restl + 1);
  }
  if (u->closing) {
    h_refuse(u, req, accp, 503);
    return;
  }
  /* A CONNECT is a tunnel to somewhere the upstream's URL does not say;
   * an HTTP/2 extended CONNECT (a WebSocket) is an upgrade and goes on. */
  if (strcmp(req->method, "CONNECT") == 0 && !(req->http_major == 2 && req->protocol != NULL)) {
    h_refuse(u, req, accp, 405);
    return;
  }
  const char *host = u->o.keep_host && req->authority[0] != '\0' ? req->authority : u->authority;
  h2r_px_target_t t = {
      .host = host,
      .hostlen = strlen(host),
      .base = u->path,
      .baselen = pathl,
      .rest = rest,
      .prefix = req->route,
      .prefixlen = routel,
      .name = u->authority,
      .acc_path = accp,
  };
  h2r_hop_t *hop = h2r_px_new(req, &upstream_ops, sizeof(uphop_t), &u->px, &t);
  if (hop == NULL)
    return; /* answered (and accounted) */
  uphop_t *h = (uphop_t *)hop;
  h->u = u;
  u->handled++;
  h2r_px_go(hop);
}

/* ------------------------------------------------------------ public */

static int parse_url(h2r_upstream_t *u, const char *url) {
  h2r_url_t p;
  int r = h2r_url_parse(url, &p);
  if (r != 0)
    return r;
  u->tls = p.tls;
  u->host = p.host;
  u->port = p.port;
  u->authority = p.authority;
  u->path = p.path;
  return 0;
}

int h2rev_upstream_init(uv_loop_t *loop, h2rev_upstream_t *upstream,
                        const h2rev_upstream_options_t *opts) {
  if (opts == NULL || opts->url == NULL)
    return UV_EINVAL;
  h2r_upstream_t *u = calloc(1, sizeof(*u));
  if (u == NULL)
    return UV_ENOMEM;
  u->o = *opts;
  u->log = opts->log;
  u->loop = loop;
  u->pub = upstream;
  h2r_bufcache_init(&u->bufs, sizeof(uwrite_t) + READ_BUF, FREE_BUFS);
  u->rbuf = malloc(H2R_RBUF_SIZE);
  int r = u->rbuf != NULL ? parse_url(u, opts->url) : UV_ENOMEM;
  if (r == 0) {
    int port = atoi(u->port);
    u->addr_literal = uv_ip4_addr(u->host, port, (struct sockaddr_in *)&u->addr) == 0 ||
                      uv_ip6_addr(u->host, port, (struct sockaddr_in6 *)&u->addr) == 0;
  }
  if (r == 0 && u->tls) {
    char why[256];
    u->ctx = h2r_tls_ctx_new(&opts->tls, false, H2R_ALPN_H1, &r, why, sizeof(why));
    if (u->ctx == NULL)
      H2R_ERR(&u->log, "upstream TLS setup failed: %s", why);
  }
  if (r != 0) {
    free(u->host);
    free(u->port);
    free(u->authority);
    free(u->path);
    free(u->rbuf);
    free(u);
    return r;
  }
  u->o.url = NULL;
  u->o.tls = (h2rev_tls_options_t){0};
  if (u->o.connect_timeout_ms == 0)
    u->o.connect_timeout_ms = 10000;
  if (u->o.max_idle_conns == 0)
    u->o.max_idle_conns = POOL_MAX;
  if (u->o.body_timeout_ms == 0)
    u->o.body_timeout_ms = 30000;
  if (u->o.response_timeout_ms == 0)
    u->o.response_timeout_ms = 60000;
  u->px = (h2r_px_owner_t){
      .loop = loop,
      .log = &u->log,
      .rl = &u->rl,
      .body_timeout_ms = u->o.body_timeout_ms,
      .response_timeout_ms = u->o.response_timeout_ms,
      .no_rewrite = u->o.no_rewrite != 0,
      .tag = "upstream",
      .peer = "upstream",
      .text_502 = "upstream unavailable\n",
      .text_504 = "upstream did not answer in time\n",
      .account = h_account,
      .released = h_released,
      .arg = u,
  };
  uv_timer_init(loop, &u->defer);
  u->defer.data = u;
  uv_timer_init(loop, &u->sweep);
  u->sweep.data = u;
  uv_timer_start(&u->sweep, sweep, POOL_IDLE_MS / 3, POOL_IDLE_MS / 3);
  uv_unref((uv_handle_t *)&u->sweep);
  upstream->loop = loop;
  upstream->u_ = u;
  return 0;
}

static void uc_parsers_init(uconn_t *c) {
  llhttp_settings_init(&c->settings);
  c->settings.on_url = on_url;
  c->settings.on_header_field = on_hfield;
  c->settings.on_header_value = on_hvalue;
  c->settings.on_header_value_complete = on_hvalue_done;
  c->settings.on_headers_complete = on_headers_complete;
  c->settings.on_message_complete = on_req_complete;
  llhttp_init(&c->parser, HTTP_REQUEST, &c->settings);
  c->parser.data = c;
  llhttp_settings_init(&c->rsettings);
  c->rsettings.on_headers_complete = on_resp_headers;
  c->rsettings.on_message_complete = on_resp_complete;
  llhttp_init(&c->rparser, HTTP_RESPONSE, &c->rsettings);
  c->rparser.data = c;
}

static void free_data(uv_handle_t *h) {
  free(h->data);
}

int h2rev_upstream_serve(h2rev_upstream_t *upstream, h2rev_stream_t *stream, h2rev_close_cb done) {
  h2r_upstream_t *u = upstream->u_;
  if (u == NULL || u->closing)
    return UV_EBADF;
  uconn_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return UV_ENOMEM;
  c->u = u;
  c->s = stream;
  c->done = done;
  c->early_tail = &c->early;
  /* Room for what the dialer adds to a head its limits let in. */
  c->hb.max_n = H2R_HBUF_HEADERS;
  c->hb.max = H2R_PROXY_HEAD_BYTES;
  stream->data = c;
  uc_parsers_init(c);
  u->st.streams_total++;
  uv_timer_init(u->loop, &c->linger);
  c->linger.data = c;
  if (u->unref)
    uv_unref((uv_handle_t *)&c->linger);
  int r = h2rev_stream_read_start(stream, uc_alloc, uc_read);
  if (r != 0) {
    uv_close((uv_handle_t *)&c->linger, free_data);
    return r;
  }
  h2r_strm_manual_consume(stream);
  c->unext = u->conns;
  if (u->conns != NULL)
    u->conns->uprev = c;
  u->conns = c;
  u->active++;
  return 0;
}

static void upstream_set_unref(h2rev_upstream_t *upstream, bool unref) {
  h2r_upstream_t *u = upstream->u_;
  if (u == NULL)
    return;
  u->unref = unref;
  h2r_handle_ref(&u->defer, unref);
  /* sweep stays unref'd: idle connections alone never keep the loop alive */
  for (upconn_t *pc = u->all; pc != NULL; pc = pc->anext)
    h2r_xport_set_unref(&pc->x, unref);
  for (uconn_t *c = u->conns; c != NULL; c = c->unext)
    h2r_handle_ref(&c->linger, unref);
}

void h2rev_upstream_ref(h2rev_upstream_t *upstream) {
  upstream_set_unref(upstream, false);
}

void h2rev_upstream_unref(h2rev_upstream_t *upstream) {
  upstream_set_unref(upstream, true);
}

unsigned h2rev_upstream_active(const h2rev_upstream_t *upstream) {
  return upstream->u_ != NULL ? upstream->u_->active : 0;
}

void h2rev_upstream_stats(const h2rev_upstream_t *upstream, h2rev_upstream_stats_t *out) {
  const h2r_upstream_t *u = upstream->u_;
  if (u == NULL) {
    *out = (h2rev_upstream_stats_t){0};
    return;
  }
  *out = u->st;
  out->streams = u->active;
}

/* Draining: an upgraded connection idle both ways for UPGRADE_DRAIN_IDLE_MS
 * ends (the dialer's side sees its data stream reset and closes its client,
 * as when the upstream goes away). */
static void drain_check(uv_timer_t *t) {
  uconn_t *c = t->data;
  if (c->closing)
    return;
  if (uv_now(c->u->loop) - c->last_io < UPGRADE_DRAIN_IDLE_MS)
    return;
  H2R_DEBUG(&c->u->log, "draining: an upgraded connection idle for %u ms ends",
            UPGRADE_DRAIN_IDLE_MS);
  uv_timer_stop(t);
  uc_close(c);
}

/* The linger timer is free while an upgraded connection is open (it times
 * the end, which restarts it with its own callback). */
static void drain_watch(uconn_t *c) {
  if (!c->closing && !uv_is_active((uv_handle_t *)&c->linger))
    uv_timer_start(&c->linger, drain_check, UPGRADE_DRAIN_IDLE_MS / 4, UPGRADE_DRAIN_IDLE_MS / 4);
}

void h2rev_upstream_drain(h2rev_upstream_t *upstream) {
  h2r_upstream_t *u = upstream->u_;
  if (u == NULL || u->closing || u->draining)
    return;
  u->draining = true;
  for (uconn_t *c = u->conns, *next; c != NULL; c = next) {
    next = c->unext;
    if (c->closing)
      continue;
    if (c->idle && !c->parsed && c->hb.len == 0) { /* between requests: none comes now */
      uv_timer_stop(&c->linger);
      stream_idle(&c->linger);
    } else if (c->raw) {
      drain_watch(c);
    }
  }
}

void h2rev_upstream_close(h2rev_upstream_t *upstream, h2rev_upstream_close_cb cb) {
  h2r_upstream_t *u = upstream->u_;
  if (u == NULL || u->closing)
    return;
  u->closing = true;
  u->close_cb = cb;
  while (u->idle != NULL) {
    upconn_t *pc = u->idle;
    pool_unlink(u, pc);
    h2r_xport_close(&pc->x);
  }
  /* Exchanges in progress finish on their own (callers drain first). */
  u_finish(u);
}

char *h2r_upstream_head(const char *p, size_t n, const char *path, const char *authority,
                        bool keep_host, size_t *len) {
  h2r_upstream_t u = {.path = (char *)path, .authority = (char *)authority};
  u.o.keep_host = keep_host;
  uconn_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->u = &u;
  c->early_tail = &c->early;
  uc_parsers_init(c);
  llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
  uwrite_t *k = c->early;
  char *head = NULL;
  if (e == HPE_PAUSED && c->parsed && k != NULL && (head = malloc(k->len + 1)) != NULL) {
    memcpy(head, k->data, k->len);
    *len = k->len;
  }
  free(k);
  h2r_hbuf_free(&c->hb);
  free(c);
  return head;
}
