/*
 * The dialer side of the reverse proxy: a client's request for
 * <base>/proxy/<id>/<path> goes out as HTTP/1.1 over a reverse connection to
 * the listener `id`; the HTTP/1.1 response (parsed with llhttp) streams back
 * to the client, which speaks HTTP/2 (a stream) or HTTP/1.1 (http1.c).
 * Framing is rebuilt, never copied: Content-Length when the client gave one,
 * chunked otherwise; hop-by-hop headers are dropped.
 */
#include "internal.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HIGH_WATER (1u << 20)
/* An HTTP/2 client's body is paced by its stream's window, returned as the
 * bytes reach the tunnel's socket (body_wrote), so the proxy reads it as it
 * comes: no stop and start at a high-water mark between two windows. A mark
 * stays, far above, as a safety net. */
#define CLIENT_QUEUE_MAX (4 * HIGH_WATER)
#define LINGER_MS        5000
/* An HTTP/2 client's body is read into buffers of this size, recycled by the
 * proxy (h2r_bufcache_t): a stream window's worth is in flight at most. */
#define BODY_BUF  (16u << 10)
#define BODY_BUFS ((2u << 20) / BODY_BUF)

enum { CLIENT_H2, CLIENT_H1 };

/* What the proxy's timer bounds. */
enum { WAIT_NONE, WAIT_BODY, WAIT_RESPONSE, WAIT_LINGER };

/* A read buffer of the listener's bytes. A response body span in it goes
 * to an HTTP/2 client as it is (no copy); the buffer lives until the last
 * such write is on the socket. */
typedef struct rblock rblock_t;
typedef struct bspan {
  h2rev_write_t w;
  struct h2r_proxy *p;
  rblock_t *b;
} bspan_t;

struct rblock {
  unsigned refs;
  size_t len;
  bspan_t first; /* the span of the common case: one per buffer */
  char data[];
};

typedef struct pchunk {
  struct pchunk *next;
  size_t len;
  char data[];
} pchunk_t;

struct h2r_proxy {
  int kind;
  h2rev_stream_t client; /* CLIENT_H2 */
  h2r_h1c_t *h1;         /* CLIENT_H1, NULL once detached */
  h2rev_stream_t up;
  h2rev_dial_t dial;
  h2rev_dialer_t *dialer;
  const h2rev_logger_t *log;
  llhttp_t parser;
  llhttp_settings_t settings;
  char id[160];
  bool chunked_req; /* request body sent chunked */
  bool head_req;    /* HEAD: the response has no body */
  bool upgrade;     /* the client asked for an upgrade */
  bool raw;         /* upgraded: bytes spliced both ways */
  bool head_sent;   /* response head given to the client */
  bool done;        /* response complete */
  bool up_open, up_eof, up_shut_done;
  bool client_open;
  bool client_eof; /* request body complete */
  bool timer_open;
  bool dialing;   /* p->dial is in flight: its callback holds a share of p */
  bool body_seen; /* a byte of the request body arrived */
  int waiting;    /* WAIT_*: what the timer bounds */
  /* The request body's first byte, the response head, then the listener's
   * END_STREAM: one timer for the phase the exchange is in. */
  uv_timer_t linger;
  h2r_session_t *csess; /* CLIENT_H2: its connection, whose proxied streams are counted */
  const h2rev_dialer_options_t *o;
  int closes;
  h2r_hbuf_t hb;                 /* the response head being parsed */
  struct pwrite *reqhead;        /* the request head, written once the dial is done */
  pchunk_t *early, **early_tail; /* HTTP/1.1 request body before the dial completed */
  size_t early_bytes;
  h2rev_shutdown_t sh, up_sh;
  rblock_t *cur;            /* the read buffer being parsed (valid during up_read) */
  h2r_bufcache_t body_bufs; /* CLIENT_H2: read buffers of the request body */
};

typedef h2r_proxy_t proxy_t;

typedef struct pwrite {
  h2rev_write_t w;
  proxy_t *p;
  size_t len;
  size_t credit; /* bytes of an HTTP/2 client's body: their window returns once written */
  bool cached;   /* from body_bufs */
  char data[];
} pwrite_t;

static bool hop_by_hop(const char *name, size_t len) {
  static const char *const hop[] = {
      "connection",     "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
      "http2-settings", "te",         "trailer",          "proxy-authenticate"};
  for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
    if (strlen(hop[i]) == len && strncasecmp(hop[i], name, len) == 0)
      return true;
  return false;
}

static bool kv_is(const h2r_kv_t *kv, const char *name) {
  return kv->nl == strlen(name) && strncasecmp(kv->name, name, kv->nl) == 0;
}

/* ------------------------------------------------------------ lifetime */

static void p_release(proxy_t *p) {
  if (--p->closes > 0)
    return;
  while (p->early != NULL) {
    pchunk_t *c = p->early;
    p->early = c->next;
    free(c);
  }
  h2r_hbuf_free(&p->hb);
  h2r_bufcache_drain(&p->body_bufs);
  free(p->reqhead);
  free(p);
}

static void p_closed(h2rev_stream_t *s) {
  p_release(s->data);
}
static void p_timer_closed(uv_handle_t *h) {
  p_release(h->data);
}

static void p_close_up(proxy_t *p) {
  /* A dial still queued completes (UV_ECANCELED) on a later turn; its share
   * of p keeps p alive until then. */
  if (p->dialing)
    h2rev_dial_cancel(&p->dial);
  if (p->up_open) {
    p->up_open = false;
    h2rev_stream_close(&p->up, p_closed);
  }
  if (p->timer_open) {
    p->timer_open = false;
    uv_close((uv_handle_t *)&p->linger, p_timer_closed);
  }
}

/* Lets go of the client; an HTTP/1.1 connection is told how it ended. */
static void p_close_client(proxy_t *p, bool complete) {
  if (!p->client_open)
    return;
  p->client_open = false;
  if (p->kind == CLIENT_H2) {
    p->csess->proxied--;
    h2rev_stream_close(&p->client, p_closed);
    return;
  }
  h2r_h1c_t *h1 = p->h1;
  p->h1 = NULL;
  if (h1 != NULL) {
    if (complete)
      h2r_h1c_end(h1);
    else
      h2r_h1c_abort(h1);
  }
  p_release(p);
}

static void p_finish(proxy_t *p) {
  p_close_client(p, false);
  p_close_up(p);
}

/* What a public client reads in an error's body: for a 5xx the status's
 * meaning only. The details (a listener's certificate error, its pickup
 * text) may tell an outsider about the inside: they go to the log. */
static const char *public_text(int status, const char *why) {
  if (status == 502)
    return "listener unavailable";
  if (status == 504)
    return "listener did not answer in time";
  return status >= 500 ? "unavailable" : why;
}

/* Before the response head: an error response. After it: the client stream
 * is reset or its connection closed, never a response that looks complete. */
static void p_fail(proxy_t *p, int status, const char *why) {
  /* A client's own doing (408, 429) is not the operator's concern. */
  h2r_log_limited(p->log, h2r_dialer_ratelog(p->dialer), p->dialer->loop,
                  status >= 500 ? H2REV_LOG_WARN : H2REV_LOG_INFO, "proxy %s: %d %s", p->id, status,
                  why);
  if (!p->head_sent && p->client_open) {
    char body[200];
    snprintf(body, sizeof(body), "%s\n", public_text(status, why));
    p->head_sent = true;
    if (p->kind == CLIENT_H2) {
      h2r_strm_respond_text(p->client.s_, status, body);
    } else if (p->h1 != NULL) {
      h2r_h1c_t *h1 = p->h1;
      p->h1 = NULL;
      p->client_open = false;
      h2r_h1c_error(h1, status, body);
      p_release(p);
    }
  }
  p_finish(p);
}

/* ------------------------------------------------------------- timing */

static void timed_out(uv_timer_t *t) {
  proxy_t *p = t->data;
  int waiting = p->waiting;
  p->waiting = WAIT_NONE;
  if (waiting == WAIT_LINGER)
    p_close_up(p);
  else if (waiting == WAIT_BODY)
    p_fail(p, 408, "the request body did not start in time");
  else if (waiting == WAIT_RESPONSE)
    p_fail(p, 504, "the listener did not answer in time");
}

static void p_wait(proxy_t *p, int what, unsigned ms) {
  if (!p->timer_open || p->waiting == what)
    return;
  p->waiting = what;
  if (what == WAIT_NONE)
    uv_timer_stop(&p->linger);
  else
    uv_timer_start(&p->linger, timed_out, ms, 0);
}

/* Until the response head: a client that announced a body must start it
 * within body_timeout_ms, and once the request is complete the listener
 * must answer within response_timeout_ms. A body under way is not timed
 * (back-pressure from a slow upstream pauses it legitimately). */
static void p_arm(proxy_t *p) {
  if (p->head_sent || !p->up_open || p->waiting == WAIT_LINGER)
    return;
  if (p->client_eof)
    p_wait(p, WAIT_RESPONSE, p->o->response_timeout_ms);
  else if (!p->body_seen)
    p_wait(p, WAIT_BODY, p->o->body_timeout_ms);
  else
    p_wait(p, WAIT_NONE, 0);
}

/* ------------------------------------------------------------- writing */

static int p_send_cb(proxy_t *p, h2rev_stream_t *to, h2rev_write_cb cb, size_t credit,
                     const char *a, size_t al, const char *b, size_t bl, const char *c, size_t cl) {
  pwrite_t *w = malloc(sizeof(*w) + al + bl + cl);
  if (w == NULL)
    return UV_ENOMEM;
  w->p = p;
  w->len = al + bl + cl;
  w->credit = credit;
  w->cached = false;
  memcpy(w->data, a, al);
  if (bl)
    memcpy(w->data + al, b, bl);
  if (cl)
    memcpy(w->data + al + bl, c, cl);
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)w->len);
  int r = h2rev_stream_write(&w->w, to, &buf, 1, cb);
  if (r != 0)
    free(w);
  return r;
}

static void up_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf);
static void up_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void client_wrote(h2rev_write_t *req, int status) {
  pwrite_t *w = H2R_CONTAINER_OF(req, pwrite_t, w);
  proxy_t *p = w->p;
  free(w);
  if (status == 0)
    h2r_proxy_client_drained(p);
  else if (status != UV_ECANCELED)
    p_finish(p); /* the client went away while we held its response */
}

void h2r_proxy_client_drained(h2r_proxy_t *p) {
  bool low = p->kind == CLIENT_H1 || h2rev_stream_write_queue_size(&p->client) < HIGH_WATER / 2;
  if (low && p->up_open && !p->done && !p->up_eof)
    h2rev_stream_read_start(&p->up, up_alloc, up_read);
}

static void b_unref(rblock_t *b) {
  if (b != NULL && --b->refs == 0)
    free(b);
}

static void span_wrote(h2rev_write_t *req, int status) {
  bspan_t *sp = H2R_CONTAINER_OF(req, bspan_t, w);
  proxy_t *p = sp->p;
  rblock_t *b = sp->b;
  if (sp != &b->first)
    free(sp);
  b_unref(b);
  if (status == 0)
    h2r_proxy_client_drained(p);
  else if (status != UV_ECANCELED)
    p_finish(p);
}

/* A span of the read buffer being parsed, written to the HTTP/2 client
 * from that buffer. */
static int c_span(proxy_t *p, const char *at, size_t len) {
  rblock_t *b = p->cur;
  bspan_t *sp = b->refs == 1 ? &b->first : malloc(sizeof(*sp));
  if (sp == NULL)
    return UV_ENOMEM;
  sp->p = p;
  sp->b = b;
  uv_buf_t buf = uv_buf_init((char *)at, (unsigned)len);
  int r = h2rev_stream_write(&sp->w, &p->client, &buf, 1, span_wrote);
  if (r != 0) {
    if (sp != &b->first)
      free(sp);
    return r;
  }
  b->refs++;
  return 0;
}

/* Response bytes to the client; reading the listener pauses while the
 * client is slow. */
static int c_body(proxy_t *p, const char *at, size_t len) {
  size_t queued;
  if (p->kind == CLIENT_H2) {
    rblock_t *b = p->cur;
    bool in_block = b != NULL && at >= b->data && at + len <= b->data + b->len;
    if (in_block ? c_span(p, at, len) != 0
                 : p_send_cb(p, &p->client, client_wrote, 0, at, len, NULL, 0, NULL, 0) != 0)
      return -1;
    queued = h2rev_stream_write_queue_size(&p->client);
  } else {
    if (p->h1 == NULL)
      return -1;
    queued = h2r_h1c_body(p->h1, at, len);
  }
  if (queued >= HIGH_WATER)
    h2rev_stream_read_stop(&p->up);
  return 0;
}

/* ------------------------------------------------------ response head */

static int on_hfield(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_field(&((proxy_t *)h->data)->hb, at, len);
}

static int on_hvalue(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_value(&((proxy_t *)h->data)->hb, at, len);
}

static int on_hvalue_done(llhttp_t *h) {
  return h2r_hbuf_value_done(&((proxy_t *)h->data)->hb);
}

static int c_head_h2(proxy_t *p, int status, const h2r_kv_t *kv, size_t n) {
  nghttp2_nv nv[H2R_MAX_HEADERS];
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    if (hop_by_hop(kv[i].name, kv[i].nl))
      continue;
    char *name = (char *)kv[i].name; /* our own copy: lower-cased in place */
    for (size_t k = 0; k < kv[i].nl; k++)
      name[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
    /* A field HTTP/1.1 lets through but HTTP/2 does not (a name that is
     * not a token, a value with a bare CR or edge whitespace) would get the
     * client's stream reset: it is dropped, as Go's HTTP/2 server does. */
    if (!nghttp2_check_header_name((const uint8_t *)name, kv[i].nl) ||
        !nghttp2_check_header_value_rfc9113((const uint8_t *)kv[i].value, kv[i].vl)) {
      H2R_INFO(p->log, "proxy %s: response field %.*s dropped: not valid in HTTP/2", p->id,
               (int)H2R_MIN(kv[i].nl, 64u), name);
      continue;
    }
    nv[m++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)kv[i].value, kv[i].nl, kv[i].vl,
                           NGHTTP2_NV_FLAG_NONE};
  }
  return h2r_strm_respond(p->client.s_, status, nv, m);
}

static int on_headers_complete(llhttp_t *h) {
  proxy_t *p = h->data;
  int status = h->status_code;
  bool upgraded = status == 101 && p->upgrade && p->kind == CLIENT_H1;
  /* llhttp takes any three digits; below 100 is no HTTP status at all, and
   * taking it for an interim response would let its body through. */
  if (status < 100) {
    p_fail(p, 502, "bad status from the listener");
    return -1;
  }
  if (status < 200 && !upgraded) {
    h2r_hbuf_reset(&p->hb); /* interim response: wait for the final one */
    return 0;
  }
  if (status == 101 && !upgraded) {
    p_fail(p, 502, "unexpected 101 from the listener");
    return -1;
  }
  h2r_kv_t kv[H2R_MAX_HEADERS];
  for (unsigned i = 0; i < p->hb.n; i++)
    kv[i] = h2r_hbuf_kv(&p->hb, i);
  p->head_sent = true;
  p_wait(p, WAIT_NONE, 0);
  if (p->kind == CLIENT_H2) {
    if (c_head_h2(p, status, kv, p->hb.n) != 0)
      return -1;
  } else {
    if (p->h1 == NULL)
      return -1;
    h2r_h1c_head(p->h1, status, kv, p->hb.n, upgraded);
  }
  if (upgraded)
    p->raw = true; /* llhttp stops with HPE_PAUSED_UPGRADE */
  return p->head_req ? 1 : 0;
}

static int on_body(llhttp_t *h, const char *at, size_t len) {
  proxy_t *p = h->data;
  if (!p->head_sent)
    return -1; /* nothing reaches the client ahead of a head */
  return c_body(p, at, len);
}

static void client_shut(h2rev_shutdown_t *req, int status) {
  (void)status;
  p_close_client(req->data, true);
}

static void up_shut(h2rev_shutdown_t *req, int status) {
  proxy_t *p = req->data;
  p->up_shut_done = true;
  if (status != 0 || p->up_eof)
    p_close_up(p);
}

/* Ends our direction of the reverse connection; it closes once the listener
 * has ended its own (a reset would count against the peer's reset limits). */
static void end_up(proxy_t *p) {
  if (!p->up_open || p->up_shut_done)
    return;
  p->up_sh.data = p;
  if (h2rev_stream_shutdown(&p->up_sh, &p->up, up_shut) != 0)
    p_close_up(p);
  else if (!p->up_eof)
    p_wait(p, WAIT_LINGER, LINGER_MS);
}

/* HTTP/1.1 keep-alive on the reverse connection: when the request went out
 * whole, nothing of it is still queued and the listener keeps the
 * connection alive, the stream goes back to the dialer's spares for the
 * next request to this listener. */
static bool recycle_up(proxy_t *p) {
  if (!p->up_open || p->upgrade || !p->client_eof || p->up_eof ||
      !llhttp_should_keep_alive(&p->parser) || !h2r_dialer_recycle(p->dialer, p->id, &p->up))
    return false;
  p->up_open = false;
  if (p->timer_open) {
    p->timer_open = false;
    uv_close((uv_handle_t *)&p->linger, p_timer_closed);
  }
  p_release(p); /* the reverse stream's share */
  return true;
}

/* The response is complete. Our side of the reverse connection ends only
 * now: a Go listener cancels a request whose client half-closes early. */
static int on_message_complete(llhttp_t *h) {
  proxy_t *p = h->data;
  if (!p->head_sent || p->raw)
    return 0;
  p->done = true;
  if (p->kind == CLIENT_H2) {
    p->sh.data = p;
    if (h2rev_stream_shutdown(&p->sh, &p->client, client_shut) != 0)
      p_close_client(p, false);
  } else {
    p_close_client(p, true);
  }
  if (!recycle_up(p))
    end_up(p);
  return HPE_PAUSED;
}

/* ------------------------------------------------------ the listener */

/* Buffers of the size of what arrived (a frame, usually): nothing is held
 * per exchange between reads. */
static void up_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s;
  rblock_t *b = malloc(sizeof(*b) + sz);
  if (b == NULL) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  b->refs = 1;
  b->len = sz;
  *buf = uv_buf_init(b->data, (unsigned)sz);
}

static void up_input(proxy_t *p, ssize_t n, const uv_buf_t *buf);

static void up_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  proxy_t *p = s->data;
  rblock_t *b = buf->base != NULL ? H2R_CONTAINER_OF(buf->base, rblock_t, data) : NULL;
  p->cur = b;
  /* An HTTP/1.1 client gets what this read produces (head, body, end) in
   * one write; the connection outlives this call even if p ends. */
  h2r_h1c_t *h1 = p->kind == CLIENT_H1 ? p->h1 : NULL;
  if (h1 != NULL)
    h2r_h1c_cork(h1);
  up_input(p, n, buf);
  if (h1 != NULL)
    h2r_h1c_uncork(h1);
  /* p may be gone now; the spans written to the client hold the buffer. */
  b_unref(b);
}

static void up_input(proxy_t *p, ssize_t n, const uv_buf_t *buf) {
  if (n == 0)
    return;
  if (n == UV_EOF)
    p->up_eof = true;
  if (p->raw) {
    if (n > 0) {
      if (c_body(p, buf->base, (size_t)n) != 0)
        p_finish(p);
    } else {
      /* The upstream ended the upgraded connection: the client's goes too
       * (once what it was sent is out), so nothing more comes for ours:
       * it ends now, and the stream closes with it (it stayed half-open,
       * holding the drain and the dialer's close, after every WebSocket). */
      p->done = true;
      p_close_client(p, n == UV_EOF);
      if (n != UV_EOF || p->up_shut_done)
        p_close_up(p);
      else
        end_up(p);
    }
    return;
  }
  if (p->done) {
    if (n < 0 && (n != UV_EOF || p->up_shut_done))
      p_close_up(p);
    return;
  }
  if (n < 0) {
    /* A body that ends with the connection: llhttp_finish hands back what
     * on_message_complete returned (HPE_PAUSED). */
    llhttp_errno_t fe = n == UV_EOF && p->head_sent ? llhttp_finish(&p->parser) : HPE_INTERNAL;
    if ((fe == HPE_OK || fe == HPE_PAUSED) && p->done)
      return;
    char why[160];
    snprintf(why, sizeof(why), "%s (%s)",
             p->head_sent ? "listener closed the response early" : "listener closed",
             h2rev_err_name((int)n));
    p_fail(p, 502, why);
    return;
  }
  llhttp_errno_t e = llhttp_execute(&p->parser, buf->base, (size_t)n);
  if (e == HPE_PAUSED_UPGRADE && p->raw) {
    const char *rest = llhttp_get_error_pos(&p->parser);
    size_t left = (size_t)(buf->base + n - rest);
    if (left > 0 && c_body(p, rest, left) != 0)
      p_finish(p);
    return;
  }
  if (e != HPE_OK && e != HPE_PAUSED && p->up_open) {
    char why[160];
    snprintf(why, sizeof(why), "bad response from listener: %s", llhttp_errno_name(e));
    p_fail(p, 502, why);
  }
}

/* ---------------------------------------------- the client's request */

/* A small body (or its small last piece) gets a buffer of its size; a
 * larger frame comes in several reads. */
static void client_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  proxy_t *p = s->data;
  bool small = sz < BODY_BUF / 4;
  pwrite_t *w = small ? malloc(sizeof(*w) + sz) : h2r_bufcache_get(&p->body_bufs);
  if (w != NULL)
    w->cached = !small;
  *buf = w != NULL ? uv_buf_init(w->data, small ? (unsigned)sz : BODY_BUF) : uv_buf_init(NULL, 0);
}

static void wfree(proxy_t *p, pwrite_t *w) {
  if (w != NULL && w->cached)
    h2r_bufcache_put(&p->body_bufs, w);
  else
    free(w);
}

static void client_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void body_wrote(h2rev_write_t *req, int status) {
  pwrite_t *w = H2R_CONTAINER_OF(req, pwrite_t, w);
  proxy_t *p = w->p;
  if (status == 0 && w->credit > 0)
    h2r_strm_consume(&p->client, w->credit); /* the client may send as much again */
  wfree(p, w);
  if (status != 0 || !p->client_open || p->client_eof ||
      h2rev_stream_write_queue_size(&p->up) >=
          (p->kind == CLIENT_H2 ? CLIENT_QUEUE_MAX : HIGH_WATER) / 2)
    return;
  if (p->kind == CLIENT_H2)
    h2rev_stream_read_start(&p->client, client_alloc, client_read);
  else if (p->h1 != NULL)
    h2r_h1c_resume_input(p->h1);
}

/* Request body bytes to the listener, re-framed (credit: as in pwrite_t).
 * True: pause the client. */
static bool send_up(proxy_t *p, const char *data, size_t len, size_t credit) {
  if (p->raw || !p->chunked_req) {
    p_send_cb(p, &p->up, body_wrote, credit, data, len, NULL, 0, NULL, 0);
  } else {
    char size[24];
    h2r_out_t o = {size, 0, sizeof(size)};
    h2r_out_uint(&o, len, 16);
    H2R_OUT_LIT(&o, "\r\n");
    p_send_cb(p, &p->up, body_wrote, credit, size, o.len, data, len, "\r\n", 2);
  }
  return h2rev_stream_write_queue_size(&p->up) >= HIGH_WATER;
}

static void send_up_end(proxy_t *p) {
  if (p->raw)
    end_up(p);
  else if (p->chunked_req)
    p_send_cb(p, &p->up, body_wrote, 0, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
}

static void client_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  proxy_t *p = s->data;
  pwrite_t *w = buf->base != NULL ? H2R_CONTAINER_OF(buf->base, pwrite_t, data) : NULL;
  if (n > 0 && !p->body_seen) {
    p->body_seen = true;
    p_arm(p);
  }
  if (n > 0 && p->up_open && !p->chunked_req) {
    /* The body keeps its framing: the read buffer itself goes to the tunnel. */
    w->p = p;
    w->len = (size_t)n;
    w->credit = (size_t)n;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (h2rev_stream_write(&w->w, &p->up, &b, 1, body_wrote) != 0)
      wfree(p, w);
    if (h2rev_stream_write_queue_size(&p->up) >= CLIENT_QUEUE_MAX)
      h2rev_stream_read_stop(s);
    return;
  }
  if (n > 0 && p->up_open) {
    send_up(p, buf->base, (size_t)n, (size_t)n);
    if (h2rev_stream_write_queue_size(&p->up) >= CLIENT_QUEUE_MAX)
      h2rev_stream_read_stop(s);
  }
  wfree(p, w);
  if (n >= 0)
    return;
  if (n == UV_EOF) {
    p->client_eof = true;
    if (p->up_open)
      send_up_end(p);
    p_arm(p);
    return;
  }
  h2r_log_limited(p->log, h2r_dialer_ratelog(p->dialer), p->dialer->loop, H2REV_LOG_INFO,
                  "proxy %s: client went away: %s", p->id, h2rev_strerror((int)n));
  p_finish(p);
}

bool h2r_proxy_client_body(h2r_proxy_t *p, const char *data, size_t len) {
  if (!p->body_seen) {
    p->body_seen = true;
    p_arm(p);
  }
  if (p->up_open)
    return send_up(p, data, len, 0);
  pchunk_t *c = malloc(sizeof(*c) + len);
  if (c == NULL)
    return true;
  c->next = NULL;
  c->len = len;
  memcpy(c->data, data, len);
  *p->early_tail = c;
  p->early_tail = &c->next;
  p->early_bytes += len;
  return p->early_bytes >= HIGH_WATER;
}

void h2r_proxy_client_end(h2r_proxy_t *p) {
  p->client_eof = true;
  if (p->up_open)
    send_up_end(p);
  p_arm(p);
}

void h2r_proxy_client_gone(h2r_proxy_t *p) {
  p->h1 = NULL;
  p_finish(p);
}

/* The value of a Content-Length of at most 18 digits, or -1. */
static int64_t content_length(const char *v, size_t n) {
  if (n == 0 || n > 18)
    return -1;
  int64_t len = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    len = len * 10 + (v[i] - '0');
  }
  return len;
}

/* X-Forwarded-Host, -Proto and -Prefix are the dialer's to say: a client's
 * would reach the upstream as if the dialer had said them. */
static bool dialers_own(const h2r_kv_t *kv) {
  return kv_is(kv, "x-forwarded-host") || kv_is(kv, "x-forwarded-proto") ||
         kv_is(kv, "x-forwarded-prefix");
}

static bool safe_text(const char *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
      return false;
  return true;
}

/* True when `name` is listed in the request's Connection header. */
static bool named_by_connection(const h2r_preq_t *rq, const h2r_kv_t *h) {
  for (size_t i = 0; i < rq->nhdrs; i++) {
    if (!kv_is(&rq->hdrs[i], "connection"))
      continue;
    const char *v = rq->hdrs[i].value, *end = v + rq->hdrs[i].vl;
    while (v < end) {
      while (v < end && (*v == ' ' || *v == ','))
        v++;
      const char *tok = v;
      while (v < end && *v != ',' && *v != ' ')
        v++;
      if ((size_t)(v - tok) == h->nl && strncasecmp(tok, h->name, h->nl) == 0)
        return true;
    }
  }
  return false;
}

/* Builds the HTTP/1.1 request head for the listener, as the write that will
 * carry it; NULL (with *status) when the request cannot be translated
 * without ambiguity (400), is a CONNECT (405: raw streams are not served
 * yet), or its path has dot segments, which a server behind could resolve
 * to somewhere outside <base>/proxy/<id>/ (400). */
static pwrite_t *build_head(proxy_t *p, const h2r_preq_t *rq, int *status) {
  size_t ml = strlen(rq->method), rl = strlen(rq->rest), il = strlen(rq->id);
  size_t al = strlen(rq->authority), sl = strlen(rq->scheme), pl = strlen(rq->peer);
  size_t cap = 256 + ml + rl + il + al + sl + pl + rq->prefixlen;
  for (size_t i = 0; i < rq->nhdrs; i++)
    cap += rq->hdrs[i].nl + rq->hdrs[i].vl + 4;
  pwrite_t *w = malloc(sizeof(*w) + cap);
  if (w == NULL) {
    *status = 503;
    return NULL;
  }
  *status = 400;
  if (!h2r_is_token(rq->method, ml) || !safe_text(rq->rest, rl) || memchr(rq->rest, ' ', rl) ||
      h2r_path_has_dot_segment(rq->prefix, rq->prefixlen) || h2r_path_has_dot_segment(rq->rest, rl))
    goto bad;
  if (strcmp(rq->method, "CONNECT") == 0) {
    *status = 405;
    goto bad;
  }
  h2r_out_t o = {w->data, 0, cap};
  h2r_out_put(&o, rq->method, ml);
  H2R_OUT_LIT(&o, " ");
  h2r_out_put(&o, rq->rest, rl);
  H2R_OUT_LIT(&o, " HTTP/1.1\r\nHost: ");
  h2r_out_put(&o, rq->id, il);
  H2R_OUT_LIT(&o, "\r\n");
  const h2r_kv_t *cl = NULL;
  for (size_t i = 0; i < rq->nhdrs; i++) {
    const h2r_kv_t *kv = &rq->hdrs[i];
    if (kv->nl > 0 && kv->name[0] == ':')
      continue; /* HTTP/2 pseudo-headers: read through rq */
    if (!h2r_is_token(kv->name, kv->nl) || !safe_text(kv->value, kv->vl))
      goto bad;
    if (kv_is(kv, "host") || kv_is(kv, "x-forwarded-for") || dialers_own(kv))
      continue;
    if (kv_is(kv, "content-length")) {
      int64_t len = content_length(kv->value, kv->vl);
      if (len < 0 ||
          (cl != NULL && (cl->vl != kv->vl || memcmp(cl->value, kv->value, kv->vl) != 0)))
        goto bad; /* conflicting lengths: a smuggling attempt */
      if (cl != NULL)
        continue;
      cl = kv;
      /* In its canonical form ("0005" is 5): one reading for every parser behind. */
      H2R_OUT_LIT(&o, "Content-Length: ");
      h2r_out_uint(&o, (uint64_t)len, 10);
      H2R_OUT_LIT(&o, "\r\n");
      continue;
    }
    bool keep = (kv_is(kv, "te") && kv->vl == 8 && strncasecmp(kv->value, "trailers", 8) == 0) ||
                (rq->upgrade && kv_is(kv, "upgrade"));
    /* Expect: 100-continue was answered at the door (http1.c): the body is
     * on its way, nobody behind needs to be asked. */
    if (!keep && (hop_by_hop(kv->name, kv->nl) || named_by_connection(rq, kv) ||
                  h2r_kv_expects_continue(kv)))
      continue;
    h2r_out_header(&o, kv->name, kv->nl, kv->value, kv->vl);
  }
  if (rq->chunked && cl != NULL)
    goto bad; /* Transfer-Encoding with Content-Length */
  /* The peer is "ip:port" ("[v6]:port"): the address without the port. */
  size_t ipl = pl;
  while (ipl > 0 && rq->peer[ipl - 1] != ':')
    ipl--;
  ipl = ipl > 0 ? ipl - 1 : pl;
  H2R_OUT_LIT(&o, "X-Forwarded-For: ");
  for (size_t i = 0; i < rq->nhdrs; i++) {
    if (kv_is(&rq->hdrs[i], "x-forwarded-for")) { /* every one the client sent, in order */
      h2r_out_put(&o, rq->hdrs[i].value, rq->hdrs[i].vl);
      H2R_OUT_LIT(&o, ", ");
    }
  }
  h2r_out_put(&o, rq->peer, ipl);
  H2R_OUT_LIT(&o, "\r\n");
  h2r_out_header(&o, "X-Forwarded-Proto", 17, rq->scheme, sl);
  if (al > 0) /* HTTP/1.0 may have no Host: then there is none to forward */
    h2r_out_header(&o, "X-Forwarded-Host", 16, rq->authority, al);
  h2r_out_header(&o, "X-Forwarded-Prefix", 18, rq->prefix, rq->prefixlen);
  if (cl == NULL && !rq->no_body && !rq->upgrade) {
    p->chunked_req = true;
    H2R_OUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
  }
  /* HTTP/1.1 keeps the reverse connection alive by default: it is reused
   * when the listener agrees. */
  if (rq->upgrade)
    H2R_OUT_LIT(&o, "Connection: Upgrade\r\n");
  H2R_OUT_LIT(&o, "\r\n");
  w->p = p;
  w->len = o.len;
  w->credit = 0;
  w->cached = false;
  return w;
bad:
  free(w);
  return NULL;
}

/* The HTTP/2 client reset its stream (or lost its connection) while the
 * dial was under way: the proxy reads the client only once dialed, so it
 * asks the stream rather than wait for a read to fail. */
static bool client_reset(const proxy_t *p) {
  const h2r_strm_t *st = p->client.s_;
  return st == NULL || st->err != 0 || (st->flags & H2R_F_NG_CLOSED) != 0;
}

static void dialed(h2rev_dial_t *req, int status) {
  proxy_t *p = req->data;
  p->dialing = false;
  if (status != 0) {
    if (status != UV_ECANCELED && p->client_open) {
      char why[200];
      snprintf(why, sizeof(why), "listener %s: %s", p->id, h2rev_dial_strerror(req));
      p_fail(p, status == UV_ETIMEDOUT ? 504 : 502, why);
    }
    p_release(p); /* the dial's share */
    return;
  }
  p->up_open = true; /* the dial's share passes to the reverse stream */
  if (!p->client_open || (p->kind == CLIENT_H2 && client_reset(p))) {
    p_finish(p); /* nothing of a request the client abandoned goes out */
    return;
  }
  pwrite_t *head = p->reqhead;
  uv_buf_t hb = uv_buf_init(head->data, (unsigned)head->len);
  if (h2rev_stream_write(&head->w, &p->up, &hb, 1, body_wrote) != 0) {
    p_fail(p, 502, "cannot write to the listener");
    return;
  }
  p->reqhead = NULL; /* body_wrote frees it */
  h2rev_stream_read_start(&p->up, up_alloc, up_read);
  p_arm(p);
  if (p->kind == CLIENT_H2) {
    h2r_strm_manual_consume(&p->client);
    h2rev_stream_read_start(&p->client, client_alloc, client_read);
    return;
  }
  bool pause = false;
  while (p->early != NULL) {
    pchunk_t *c = p->early;
    p->early = c->next;
    pause = send_up(p, c->data, c->len, 0);
    free(c);
  }
  p->early_tail = &p->early;
  p->early_bytes = 0;
  if (p->client_eof)
    send_up_end(p);
  else if (!pause && p->h1 != NULL)
    h2r_h1c_resume_input(p->h1);
}

static proxy_t *p_start(h2rev_dialer_t *dialer, int kind, const h2r_preq_t *rq,
                        const h2rev_logger_t *log, int *status) {
  proxy_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    *status = 503;
    return NULL;
  }
  p->kind = kind;
  p->dialer = dialer;
  p->o = h2r_dialer_options(dialer);
  p->log = log;
  p->upgrade = rq->upgrade;
  p->head_req = strcmp(rq->method, "HEAD") == 0;
  p->early_tail = &p->early;
  h2r_bufcache_init(&p->body_bufs, sizeof(pwrite_t) + BODY_BUF, BODY_BUFS);
  snprintf(p->id, sizeof(p->id), "%s", rq->id);
  p->reqhead = build_head(p, rq, status);
  if (p->reqhead == NULL) {
    h2r_log_limited(log, h2r_dialer_ratelog(dialer), dialer->loop, H2REV_LOG_INFO,
                    "proxy %s: request refused (%d)", rq->id, *status);
    free(p);
    return NULL;
  }
  p->client.data = p->up.data = p->dial.data = p;
  p->client_open = true;
  uv_timer_init(dialer->loop, &p->linger);
  p->linger.data = p;
  p->timer_open = true;
  /* Shares of p: the client, the timer and the dial (which hands its share
   * to the reverse stream when it succeeds). */
  p->closes = 3;
  p->dialing = true;
  llhttp_settings_init(&p->settings);
  p->settings.on_header_field = on_hfield;
  p->settings.on_header_value = on_hvalue;
  p->settings.on_header_value_complete = on_hvalue_done;
  p->settings.on_headers_complete = on_headers_complete;
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  llhttp_init(&p->parser, HTTP_RESPONSE, &p->settings);
  p->parser.data = p;
  return p;
}

/* The text of a response for a request refused before it was sent on. */
static const char *refusal(int status) {
  switch (status) {
  case 400:
    return "bad request\n";
  case 405:
    return "method not allowed here\n";
  case 431:
    return "request header fields too large\n";
  default:
    return "unavailable\n";
  }
}

/* False when the dial is refused at once: p has answered the client then. */
static bool p_dial(proxy_t *p, h2rev_dialer_t *dialer) {
  if (h2rev_dial(&p->dial, dialer, p->id, &p->up, 0, dialed) == 0)
    return true;
  p->dialing = false; /* no callback will come */
  p_fail(p, 400, "invalid id");
  p_release(p);
  return false;
}

void h2r_proxy_serve(h2rev_dialer_t *dialer, h2r_strm_t *st, const char *prefix, size_t prefixlen,
                     const char *id, const char *rest, const h2rev_logger_t *log) {
  /* The same limit as an HTTP/1.1 client's (431), which leaves room for the
   * fields the dialer adds (H2R_PROXY_ADDED_HEADERS). */
  h2r_kv_t kv[H2R_MAX_HEADERS];
  size_t n = 0;
  bool too_many = false;
  for (unsigned i = 0; i < st->nhdrs && !too_many; i++) {
    if (st->hbuf[st->hdrs[i].name] == ':')
      continue; /* pseudo-headers: read by name below */
    too_many = n == H2R_MAX_HEADERS;
    if (!too_many)
      kv[n++] = (h2r_kv_t){st->hbuf + st->hdrs[i].name, st->hbuf + st->hdrs[i].value,
                           st->hdrs[i].namelen, st->hdrs[i].valuelen};
  }
  const char *method = h2r_strm_header(st, ":method", NULL);
  const char *authority = h2r_strm_header(st, ":authority", NULL);
  const char *scheme = h2r_strm_header(st, ":scheme", NULL);
  h2r_preq_t rq = {
      .method = method ? method : "",
      .authority = authority ? authority : "",
      .scheme = scheme ? scheme : "https",
      .peer = st->sess->x.peer,
      .prefix = prefix,
      .prefixlen = prefixlen,
      .id = id,
      .rest = rest,
      .hdrs = kv,
      .nhdrs = n,
      .no_body = (st->flags & H2R_F_EOF) && st->rq_bytes == 0,
  };
  int status = too_many ? 431 : 400;
  for (size_t i = 0; i < n; i++)
    if (kv_is(&kv[i], "transfer-encoding"))
      method = NULL; /* HTTP/2 forbids it: refuse rather than guess */
  const h2rev_dialer_options_t *o = h2r_dialer_options(dialer);
  if (st->sess->proxied >= o->max_client_streams) {
    /* One client must not hold every data stream of an id. */
    h2r_log_limited(log, h2r_dialer_ratelog(dialer), dialer->loop, H2REV_LOG_INFO,
                    "proxy %s: 429 for %s: %u proxied requests open on its connection (the limit)",
                    id, st->sess->x.peer, st->sess->proxied);
    h2r_strm_reject(st, 429, "too many requests on this connection\n");
    return;
  }
  proxy_t *p = method != NULL && !too_many ? p_start(dialer, CLIENT_H2, &rq, log, &status) : NULL;
  if (p == NULL) {
    h2r_log_limited(log, h2r_dialer_ratelog(dialer), dialer->loop, H2REV_LOG_INFO,
                    "proxy %s: %d for a request that cannot be forwarded safely", id, status);
    h2r_strm_reject(st, status, refusal(status));
    return;
  }
  p->csess = st->sess;
  p->csess->proxied++;
  h2r_strm_attach(st, &p->client);
  p_dial(p, dialer);
}

h2r_proxy_t *h2r_proxy_serve_h1(h2rev_dialer_t *dialer, h2r_h1c_t *h1, const h2r_preq_t *rq,
                                const h2rev_logger_t *log) {
  int status = 400;
  proxy_t *p = p_start(dialer, CLIENT_H1, rq, log, &status);
  if (p == NULL) {
    h2r_h1c_error(h1, status, refusal(status));
    return NULL;
  }
  p->h1 = h1;
  return p_dial(p, dialer) ? p : NULL;
}

char *h2r_proxy_head(const h2r_preq_t *rq, size_t *len, int *status) {
  proxy_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    *status = 503;
    return NULL;
  }
  pwrite_t *w = build_head(p, rq, status);
  free(p);
  if (w == NULL)
    return NULL;
  *len = w->len;
  memmove(w, w->data, w->len); /* the head alone, at the start of its block */
  return (char *)w;
}
