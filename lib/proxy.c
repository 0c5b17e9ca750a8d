/*
 * The proxy's exchange, an ordinary handler of the HTTP server: a request
 * goes out as HTTP/1.1 over a byte stream to the next hop (h2r_hop_t); the
 * response, parsed with llhttp, streams back through the request API,
 * whatever protocol the client speaks. Two hops carry it: a reverse
 * connection to listener <id> (h2rev_dialer_proxy: <route>/<id>/<path>,
 * h2rev_dial), and a pooled connection to an upstream URL
 * (h2rev_upstream_handler, upstream.c). It uses nothing the public API does
 * not offer an embedder, bar its owner's options and log limiter.
 *
 * Framing is rebuilt, never copied: Content-Length when the client gave
 * one, chunked otherwise; hop-by-hop fields are dropped both ways. Bytes
 * are not copied either: the response body goes to the client from the
 * buffer it was read into, the request body to the listener likewise, and
 * the client's flow-control credit returns only as its bytes reach the
 * tunnel (h2rev_http_read_manual), so a slow listener paces the client.
 *
 * Ownership: the proxy object is shared by the client's request (released
 * by its done callback), the timer (by its close callback) and the hop
 * (released when it is over: its opening failed, it was closed, or it took
 * the connection back for another exchange). Only those release a share.
 */
#include "control.h"

#include <llhttp.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Response bytes queued toward the client above which the listener is not
 * read (and again below half of it). */
#define HIGH_WATER (1u << 20)
/* Request body bytes queued toward the listener above which the client is
 * not read: the client's window paces it first; this is a safety net. */
#define UP_QUEUE_MAX (4 * HIGH_WATER)
/* Request body read before the dial completed, kept for the listener. */
#define EARLY_MAX HIGH_WATER
#define LINGER_MS 5000
/* Request body buffers of this size, recycled by the proxy (h2r_bufcache_t). */
#define BODY_BUF  (16u << 10)
#define BODY_BUFS ((2u << 20) / BODY_BUF)
/* A Sec-WebSocket-Key is 16 random bytes in base64 (RFC 6455 4.1). */
#define WS_KEY_BYTES 16
#define WS_KEY_LEN   24

/* What the proxy's timer bounds. */
enum { WAIT_NONE, WAIT_BODY, WAIT_RESPONSE, WAIT_LINGER };

/* A read buffer of the listener's bytes. A response body span in it goes
 * to the client as it is; the buffer lives until the last such write is on
 * the socket. */
typedef struct rblock rblock_t;
typedef struct bspan {
  h2rev_http_write_t w;
  struct proxy *p;
  rblock_t *b;
} bspan_t;

struct rblock {
  unsigned refs;
  size_t len;
  bspan_t first; /* the span of the common case: one per buffer */
  char data[];
};

/* A write toward the next hop: the request head, or a piece of the body in
 * the buffer it was read into (with its chunk framing beside it). */
typedef struct pwrite {
  h2r_hop_write_t w;
  struct proxy *p;
  struct pwrite *next; /* read before the dial completed */
  size_t len;
  size_t credit; /* client bytes: consumed once written */
  bool cached;   /* from body_bufs */
  char size[20]; /* chunk size line */
  char data[];
} pwrite_t;

typedef struct proxy {
  h2rev_http_req_t *req; /* the client's request, until its done callback */
  h2r_hop_t *hop;        /* after this struct, in its allocation */
  h2r_px_owner_t own;
  h2r_session_t *csess; /* HTTP/2 client: its connection, whose proxied requests are counted */
  llhttp_t parser;
  llhttp_settings_t settings;
  h2r_hbuf_t hb; /* the response head being parsed */
  bool chunked_req;
  bool head_req;
  bool upgrade;
  bool raw;     /* upgraded: bytes pass both ways as they are */
  bool connect; /* a CONNECT: the reverse connection is the tunnel, no head goes out */
  bool ext;     /* an HTTP/2 extended CONNECT: a GET with Upgrade toward the listener */
  bool head_sent;
  bool done; /* response complete */
  bool up_open, up_eof, up_shut_done;
  bool client_open; /* not yet ended or aborted by us */
  bool client_eof;  /* request body complete */
  bool client_reading;
  bool timer_open;
  bool hop_live;    /* the hop holds its share: from the start until it is over */
  bool hop_closing; /* we closed it (or cancelled its opening) */
  bool body_seen;
  int waiting; /* WAIT_* */
  uv_timer_t linger;
  int shares;
  pwrite_t *reqhead;
  pwrite_t *early, **early_tail;
  size_t early_bytes;
  bool up_shutting;
  rblock_t *cur; /* the read buffer being parsed (valid during up_read) */
  /* In the allocation, after the hop: the target's strings. */
  const char *id;     /* the next hop's name, for log lines */
  const char *host;   /* in absolute URLs of the response */
  const char *prefix; /* what the next hop does not see of the client's path */
  const char *base;   /* what it sees instead */
  size_t prefixlen, baselen;
  h2r_bufcache_t body_bufs;
  /* For the owner's account (own.account). */
  char *acc_path;
  int status; /* the response status sent */
  bool local; /* by us */
  uint64_t start, first, bytes_in, bytes_out;
} proxy_t;

static bool is(const char *name, size_t nl, const char *lit) {
  return nl == strlen(lit) && strncasecmp(name, lit, nl) == 0;
}

static void p_log(proxy_t *p, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void p_log(proxy_t *p, int level, const char *fmt, ...) {
  /* Clients cause these at will: nothing is formatted for a level off. */
  if (!H2R_LOG_ON(p->own.log, level))
    return;
  char line[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  h2r_log_limited(p->own.log, p->own.rl, p->own.loop, level, "%s %s: %s", p->own.tag, p->id, line);
}

/* ------------------------------------------------------------ lifetime */

static void wfree(proxy_t *p, pwrite_t *w) {
  if (w != NULL && w->cached)
    h2r_bufcache_put(&p->body_bufs, w);
  else
    free(w);
}

static void p_release(proxy_t *p) {
  if (--p->shares > 0)
    return;
  while (p->early != NULL) {
    pwrite_t *w = p->early;
    p->early = w->next;
    wfree(p, w);
  }
  h2r_hbuf_free(&p->hb);
  free(p->reqhead);
  free(p->acc_path);
  h2r_bufcache_drain(&p->body_bufs);
  void (*released)(void *) = p->own.released;
  void *arg = p->own.arg;
  free(p);
  if (released != NULL)
    released(arg);
}

/* The hop is over: its share goes. */
static void p_hop_over(proxy_t *p) {
  p->hop_live = false;
  p->up_open = false;
  p_release(p);
}

void h2r_px_gone(h2r_hop_t *hop) {
  p_hop_over(hop->px);
}

static void timer_closed(uv_handle_t *h) {
  p_release(h->data);
}

static void p_close_up(proxy_t *p) {
  if (p->hop_live && !p->hop_closing) {
    p->hop_closing = true;
    p->up_open = false;
    p->hop->ops->close(p->hop); /* h2r_px_gone releases the hop's share */
  }
  if (p->timer_open) {
    p->timer_open = false;
    uv_close((uv_handle_t *)&p->linger, timer_closed);
  }
}

/* We stop serving the client (the caller finishes its request). */
static void p_let_client_go(proxy_t *p) {
  p->client_open = false;
  if (p->csess != NULL)
    p->csess->proxied--;
  if (p->client_reading)
    h2rev_http_read_stop(p->req);
  p->client_reading = false;
}

/* Ends our part in the client's request; its done callback follows. */
static void p_close_client(proxy_t *p, bool complete) {
  if (!p->client_open)
    return;
  p_let_client_go(p);
  if (complete)
    h2rev_http_end(p->req);
  else
    h2rev_http_abort(p->req);
}

static void p_finish(proxy_t *p) {
  p_close_client(p, false);
  p_close_up(p);
}

/* What a public client reads in an error's body: for a 5xx the status's
 * meaning only. The details (a listener's certificate error, its pickup
 * text) may tell an outsider about the inside: they go to the log. */
static const char *public_text(const h2r_px_owner_t *own, int status) {
  switch (status) {
  case 400:
    return "bad request\n";
  case 405:
    return "method not allowed here\n";
  case 408:
    return "request body did not start in time\n";
  case 429:
    return "too many requests on this connection\n";
  case 431:
    return "request header fields too large\n";
  case 502:
    return own->text_502;
  case 504:
    return own->text_504;
  default:
    return status >= 500 ? "unavailable\n" : "refused\n";
  }
}

static void reply_wrote(h2rev_http_write_t *w, int status) {
  (void)status;
  free(w);
}

/* A complete error response of ours. A refusal for load says when to come
 * back; an HTTP/1.1 connection whose request body was not read to its end
 * closes after it rather than read the rest as a next request. */
void h2r_px_reply_error(h2rev_http_req_t *req, const h2r_px_owner_t *own, int status,
                        bool body_unread) {
  const char *text = public_text(own, status);
  h2rev_header_t h[3] = {{"content-type", "text/plain"}};
  size_t n = 1;
  if (status == 429 || status == 503)
    h[n++] = (h2rev_header_t){"retry-after", "1"};
  if (body_unread)
    h[n++] = (h2rev_header_t){"connection", "close"};
  size_t len = strlen(text);
  h2rev_http_write_t *w = malloc(sizeof(*w));
  if (w == NULL || h2rev_http_respond(req, status, h, n, (int64_t)len) != 0) {
    free(w);
    h2rev_http_abort(req);
    return;
  }
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)len); /* static text: outlives the write */
  if (h2rev_http_write(w, req, &b, 1, reply_wrote) != 0) {
    free(w);
    h2rev_http_abort(req);
    return;
  }
  h2rev_http_end(req);
}

/* Before the response head: an error response. After it: the client's
 * exchange is cut (stream reset, connection closed), never a response
 * that looks complete. */
static void p_fail(proxy_t *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void p_fail(proxy_t *p, int status, const char *fmt, ...) {
  /* A client's own doing (408, 429) is not the operator's concern. */
  int level = status >= 500 ? H2REV_LOG_WARN : H2REV_LOG_INFO;
  if (H2R_LOG_ON(p->own.log, level)) {
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    p_log(p, level, "%d %s", status, why);
  }
  if (!p->head_sent && p->client_open) {
    p->head_sent = true;
    p->status = status;
    p->local = true;
    p_let_client_go(p);
    h2r_px_reply_error(p->req, &p->own, status, !p->client_eof);
  }
  p_finish(p);
}

/* ------------------------------------------------------------- timing */

static void timed_out(uv_timer_t *t) {
  proxy_t *p = t->data;
  int waiting = p->waiting;
  p->waiting = WAIT_NONE;
  if (waiting == WAIT_LINGER) {
    /* An upgraded connection whose client has ended its side: ours ends
     * with the next hop's, or now (else nothing would end the client's). */
    if (p->raw)
      p_close_client(p, true);
    p_close_up(p);
  } else if (waiting == WAIT_BODY)
    p_fail(p, 408, "the request body did not start in time");
  else if (waiting == WAIT_RESPONSE)
    p_fail(p, 504, "the %s did not answer in time", p->own.peer);
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
    p_wait(p, WAIT_RESPONSE, p->own.response_timeout_ms);
  else if (!p->body_seen)
    p_wait(p, WAIT_BODY, p->own.body_timeout_ms);
  else
    p_wait(p, WAIT_NONE, 0);
}

/* ------------------------------------------------ toward the client */

static void b_unref(rblock_t *b) {
  if (b != NULL && --b->refs == 0)
    free(b);
}

static void span_wrote(h2rev_http_write_t *w, int status) {
  bspan_t *sp = H2R_CONTAINER_OF(w, bspan_t, w);
  proxy_t *p = sp->p;
  rblock_t *b = sp->b;
  if (sp != &b->first)
    free(sp);
  b_unref(b);
  if (status != 0) {
    if (status != UV_ECANCELED)
      p_finish(p); /* the client went away while we held its response */
    return;
  }
  if (p->client_open && p->up_open && !p->done && !p->up_eof &&
      h2rev_http_write_queue_size(p->req) < HIGH_WATER / 2)
    p->hop->ops->read_start(p->hop);
}

/* Response bytes, from the listener's read buffer being parsed, to the
 * client without a copy; reading the listener pauses while the client is
 * slow. */
static int c_body(proxy_t *p, const char *at, size_t len) {
  rblock_t *b = p->cur;
  if (!p->client_open || b == NULL)
    return -1;
  bspan_t *sp = b->refs == 1 ? &b->first : malloc(sizeof(*sp));
  if (sp == NULL)
    return -1;
  sp->p = p;
  sp->b = b;
  uv_buf_t buf = uv_buf_init((char *)at, (unsigned)len);
  if (h2rev_http_write(&sp->w, p->req, &buf, 1, span_wrote) != 0) {
    if (sp != &b->first)
      free(sp);
    return -1;
  }
  b->refs++;
  if (h2rev_http_write_queue_size(p->req) >= HIGH_WATER && p->up_open)
    p->hop->ops->read_stop(p->hop);
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

/* The path s (n bytes) is <pre> or below it. */
static bool under(const char *s, size_t n, const char *pre, size_t pl) {
  return n >= pl && memcmp(s, pre, pl) == 0 && (n == pl || s[pl] == '/' || s[pl] == '?');
}

/* <prefix> + the path s (n bytes), or NULL when s is under the prefix
 * already (an upstream that reads X-Forwarded-Prefix) or memory is out.
 * With a base (an upstream URL's path), s must be under it, and the base
 * is what the prefix replaces. */
static char *prefixed(const proxy_t *p, const char *s, size_t n, const char *tail, size_t tl) {
  if (p->baselen > 0) {
    if (!under(s, n, p->base, p->baselen))
      return NULL;
    s += p->baselen;
    n -= p->baselen;
    if (n == 0 && p->prefixlen == 0)
      s = "/", n = 1;
  } else if (under(s, n, p->prefix, p->prefixlen)) {
    return NULL;
  }
  char *v = malloc(p->prefixlen + n + tl + 1);
  if (v == NULL)
    return NULL;
  memcpy(v, p->prefix, p->prefixlen);
  memcpy(v + p->prefixlen, s, n);
  memcpy(v + p->prefixlen + n, tail, tl);
  v[p->prefixlen + n + tl] = '\0';
  return v;
}

/* What nginx's proxy_redirect and proxy_cookie_path do by default, for the
 * prefix the upstream does not know it is served under: a Location that is
 * a path ("/sub/"), or an absolute URL to the listener's id (the Host the
 * upstream was given), and a Set-Cookie Path, get <route>/<id> in front
 * (for an upstream URL: <route> in place of the URL's path).
 * NULL: the value stays as it is. */
static char *rewrite(const proxy_t *p, const h2r_kv_t *kv) {
  const char *v = kv->value;
  size_t vl = kv->vl;
  if (is(kv->name, kv->nl, "location")) {
    if (vl > 0 && v[0] == '/' && (vl == 1 || v[1] != '/'))
      return prefixed(p, v, vl, "", 0);
    const char *sep = vl > 8 ? strstr(v, "://") : NULL;
    if (sep == NULL || sep - v > 5)
      return NULL;
    const char *auth = sep + 3, *path = auth + strcspn(auth, "/?#");
    size_t il = strlen(p->host);
    if ((size_t)(path - auth) != il || strncasecmp(auth, p->host, il) != 0)
      return NULL;
    return *path == '/' ? prefixed(p, path, vl - (size_t)(path - v), "", 0)
                        : prefixed(p, "/", 1, path, vl - (size_t)(path - v));
  }
  if (!is(kv->name, kv->nl, "set-cookie"))
    return NULL;
  /* The Path attribute: after a ';', any case, its value a path. */
  for (const char *a = strchr(v, ';'); a != NULL; a = strchr(a + 1, ';')) {
    const char *k = a + 1;
    while (*k == ' ')
      k++;
    if (strncasecmp(k, "path=", 5) != 0 || k[5] != '/')
      continue;
    const char *pv = k + 5;
    size_t pl = strcspn(pv, ";");
    char *np = prefixed(p, pv, pl, "", 0);
    if (np == NULL)
      return NULL;
    size_t head = (size_t)(pv - v), npl = strlen(np), rest = vl - head - pl;
    char *out = malloc(head + npl + rest + 1);
    if (out != NULL) {
      memcpy(out, v, head);
      memcpy(out + head, np, npl);
      memcpy(out + head + npl, pv + pl, rest);
      out[head + npl + rest] = '\0';
    }
    free(np);
    return out;
  }
  return NULL;
}

static int on_headers_complete(llhttp_t *h) {
  proxy_t *p = h->data;
  int status = h->status_code;
  bool upgraded = status == 101 && p->upgrade;
  /* llhttp takes any three digits; below 100 is no HTTP status at all, and
   * taking it for an interim response would let its body through. */
  if (status < 100) {
    p_fail(p, 502, "bad status from the %s", p->own.peer);
    return -1;
  }
  if (status < 200 && !upgraded) {
    h2r_hbuf_reset(&p->hb); /* interim response: wait for the final one */
    return 0;
  }
  if (status == 101 && !upgraded) {
    p_fail(p, 502, "unexpected 101 from the %s", p->own.peer);
    return -1;
  }
  /* The fields end with NULs in the head's buffer (h2r_hbuf_value_done):
   * they go to the request API as they are. */
  h2rev_header_t hs[H2R_HBUF_HEADERS];
  char *made[H2R_HBUF_HEADERS]; /* rewritten values, freed once the head is sent */
  size_t n = 0, nmade = 0;
  for (unsigned i = 0; i < p->hb.n; i++) {
    h2r_kv_t kv = h2r_hbuf_kv(&p->hb, i);
    if (h2r_hop_by_hop(kv.name, kv.nl) && !(upgraded && is(kv.name, kv.nl, "upgrade")))
      continue;
    if (is(kv.name, kv.nl, "content-length"))
      continue; /* the request API writes it from the length below */
    /* It answers a key an HTTP/2 client never sent (RFC 8441 5): ours. */
    if (p->ext && is(kv.name, kv.nl, "sec-websocket-accept"))
      continue;
    char *v = p->own.no_rewrite ? NULL : rewrite(p, &kv);
    if (v != NULL)
      made[nmade++] = v;
    hs[n++] = (h2rev_header_t){kv.name, v != NULL ? v : kv.value};
  }
  int64_t cl = (h->flags & F_CONTENT_LENGTH) && !(h->flags & F_CHUNKED) && !upgraded
                   ? (int64_t)h->content_length
                   : -1;
  p_wait(p, WAIT_NONE, 0);
  int r = p->client_open ? h2rev_http_respond(p->req, status, hs, n, cl) : H2REV_ECLOSED;
  while (nmade > 0)
    free(made[--nmade]);
  if (r == UV_EINVAL) { /* a field the client's protocol cannot carry */
    p_fail(p, 502, "bad header field in the %s's response", p->own.peer);
    return -1;
  }
  p->head_sent = true;
  if (r == 0)
    p->status = status;
  if (r != 0) {
    p_finish(p);
    return -1;
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

void h2r_px_shut(h2r_hop_t *hop, int status) {
  proxy_t *p = hop->px;
  p->up_shut_done = true;
  if (status != 0 || p->up_eof)
    p_close_up(p);
}

/* Ends our direction of the connection to the next hop; it closes once the
 * next hop has ended its own (a reset would count against the peer's reset
 * limits). A hop that cannot half-close closes now, unless it still has
 * bytes to send us (an upgraded connection), which it may for LINGER_MS. */
static void end_up(proxy_t *p) {
  if (!p->up_open || p->up_shut_done || p->up_shutting)
    return;
  p->up_shutting = true;
  if (p->hop->ops->shutdown == NULL) {
    p->up_shut_done = true;
    if (p->up_eof || !p->raw)
      p_close_up(p);
    else
      p_wait(p, WAIT_LINGER, LINGER_MS);
    return;
  }
  /* A tunnel's client that half-closed still reads: the service answers
   * in its own time, as over TCP. */
  if (p->hop->ops->shutdown(p->hop) != 0)
    p_close_up(p);
  else if (!p->up_eof && !(p->connect && p->client_open))
    p_wait(p, WAIT_LINGER, LINGER_MS);
}

/* HTTP/1.1 keep-alive with the next hop: when the request went out whole,
 * nothing of it is still queued and the next hop keeps the connection
 * alive, the hop takes it back for the next request (the dialer's spares,
 * the upstream's pool). */
static bool recycle_up(proxy_t *p) {
  if (!p->up_open || p->upgrade || !p->client_eof || p->up_eof ||
      !llhttp_should_keep_alive(&p->parser) || !p->hop->ops->recycle(p->hop))
    return false;
  if (p->timer_open) {
    p->timer_open = false;
    uv_close((uv_handle_t *)&p->linger, timer_closed);
  }
  p_hop_over(p); /* p lives on through the client's share */
  return true;
}

/* The response is complete. Our side of the connection ends only after
 * the parse (up_input): a Go listener cancels a request whose client
 * half-closes early. */
static int on_message_complete(llhttp_t *h) {
  proxy_t *p = h->data;
  if (!p->head_sent || p->raw)
    return 0;
  p->done = true;
  p_close_client(p, true);
  return HPE_PAUSED;
}

/* ------------------------------------------------------ the next hop */

/* Buffers of the size of what arrived (a frame, usually): nothing is held
 * per exchange between reads. */
void h2r_px_alloc(h2r_hop_t *hop, size_t sz, uv_buf_t *buf) {
  (void)hop;
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

void h2r_px_read(h2r_hop_t *hop, ssize_t n, const uv_buf_t *buf) {
  proxy_t *p = hop->px;
  rblock_t *b = buf->base != NULL ? H2R_CONTAINER_OF(buf->base, rblock_t, data) : NULL;
  p->cur = b;
  /* What this read produces for the client (head, body, end) goes out in
   * one write. The request stays valid until its done callback, which
   * never runs inside this one. */
  h2rev_http_req_t *req = p->client_open ? p->req : NULL;
  if (req != NULL)
    h2rev_http_cork(req);
  up_input(p, n, buf);
  p->cur = NULL;
  if (req != NULL)
    h2rev_http_uncork(req);
  b_unref(b); /* the spans written to the client hold the buffer */
}

static void up_input(proxy_t *p, ssize_t n, const uv_buf_t *buf) {
  if (n == 0 || !p->up_open)
    return;
  if (n > 0) {
    if (p->first == 0)
      p->first = uv_hrtime();
    p->bytes_out += (uint64_t)n;
  }
  if (n == UV_EOF)
    p->up_eof = true;
  if (p->raw) {
    if (n > 0) {
      if (c_body(p, buf->base, (size_t)n) != 0)
        p_finish(p);
      return;
    }
    /* The upstream ended the upgraded connection: the client's goes too
     * (once what it was sent is out), so nothing more comes for ours:
     * it ends now, and the stream closes with it. */
    p->done = true;
    p_close_client(p, n == UV_EOF);
    if (n != UV_EOF || p->up_shut_done)
      p_close_up(p);
    else
      end_up(p);
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
    if ((fe == HPE_OK || fe == HPE_PAUSED) && p->done) {
      end_up(p);
      return;
    }
    p_fail(p, 502, "%s closed%s (%s)", p->own.peer, p->head_sent ? " the response early" : "",
           h2rev_err_name((int)n));
    return;
  }
  llhttp_errno_t e = llhttp_execute(&p->parser, buf->base, (size_t)n);
  if (e == HPE_PAUSED && p->done) {
    /* Bytes after the response make the connection's framing unknown: it
     * ends rather than serve another exchange. */
    if (llhttp_get_error_pos(&p->parser) != buf->base + n || !recycle_up(p))
      end_up(p);
    return;
  }
  if (e == HPE_PAUSED_UPGRADE && p->raw) {
    const char *rest = llhttp_get_error_pos(&p->parser);
    size_t left = (size_t)(buf->base + n - rest);
    if (left > 0 && c_body(p, rest, left) != 0)
      p_finish(p);
    return;
  }
  if (e != HPE_OK && e != HPE_PAUSED && p->up_open) {
    p_fail(p, 502, "bad response from %s: %s", p->own.peer, llhttp_errno_name(e));
  }
}

/* ---------------------------------------------- the client's request */

static void client_read(h2rev_http_req_t *req, ssize_t n, const uv_buf_t *buf);

static void client_alloc(h2rev_http_req_t *req, size_t sz, uv_buf_t *buf) {
  proxy_t *p = req->data;
  /* A small body (or its small last piece) gets a buffer of its size; a
   * larger one comes in several reads of recycled buffers. */
  bool small = sz < BODY_BUF / 4;
  pwrite_t *w = small ? malloc(sizeof(*w) + sz) : h2r_bufcache_get(&p->body_bufs);
  if (w == NULL) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  w->cached = !small;
  *buf = uv_buf_init(w->data, small ? (unsigned)sz : BODY_BUF);
}

static void client_resume(proxy_t *p) {
  if (!p->client_open || p->client_eof || p->client_reading)
    return;
  if (h2rev_http_read_start(p->req, client_alloc, client_read) == 0)
    p->client_reading = true;
}

static void client_pause(proxy_t *p) {
  if (p->client_reading)
    h2rev_http_read_stop(p->req);
  p->client_reading = false;
}

static void body_wrote(h2r_hop_write_t *hw, int status) {
  pwrite_t *w = H2R_CONTAINER_OF(hw, pwrite_t, w);
  proxy_t *p = w->p;
  size_t credit = w->credit;
  wfree(p, w);
  if (status != 0) {
    if (status != UV_ECANCELED)
      p_fail(p, 502, "cannot write to the %s", p->own.peer);
    return;
  }
  if (credit > 0 && p->client_open)
    h2rev_http_consume(p->req, credit); /* the client may send as much again */
  if (p->up_open && p->hop->ops->queued(p->hop) < UP_QUEUE_MAX / 2)
    client_resume(p);
}

static int hop_write(proxy_t *p, pwrite_t *w, const uv_buf_t *iov, unsigned n) {
  w->w.cb = body_wrote;
  w->w.len = 0;
  for (unsigned i = 0; i < n; i++)
    w->w.len += iov[i].len;
  return p->hop->ops->write(p->hop, &w->w, iov, n);
}

/* A body piece (or the request head) to the next hop, in its buffer, with
 * the chunk framing around it when the body is re-framed. */
static int send_up(proxy_t *p, pwrite_t *w, bool body) {
  uv_buf_t iov[3];
  unsigned n = 0;
  bool chunk = body && p->chunked_req && !p->raw;
  if (chunk) {
    h2r_out_t o = {w->size, 0, sizeof(w->size), false};
    h2r_out_uint(&o, w->len, 16);
    H2R_OUT_LIT(&o, "\r\n");
    iov[n++] = uv_buf_init(w->size, (unsigned)o.len);
  }
  iov[n++] = uv_buf_init(w->data, (unsigned)w->len);
  if (chunk)
    iov[n++] = uv_buf_init("\r\n", 2);
  if (body)
    p->bytes_in += w->len;
  return hop_write(p, w, iov, n);
}

/* The end of the request body: the chunked terminator, or, upgraded, the
 * end of our direction. */
static void send_up_end(proxy_t *p) {
  static char last[] = "0\r\n\r\n";
  if (p->raw) {
    end_up(p);
    return;
  }
  if (!p->chunked_req)
    return;
  pwrite_t *w = malloc(sizeof(*w));
  if (w == NULL) {
    p_fail(p, 503, "out of memory");
    return;
  }
  w->p = p;
  w->cached = false;
  w->credit = 0;
  uv_buf_t b = uv_buf_init(last, sizeof(last) - 1);
  if (hop_write(p, w, &b, 1) != 0) {
    free(w);
    p_fail(p, 502, "cannot write to the %s", p->own.peer);
  }
}

static void client_read(h2rev_http_req_t *req, ssize_t n, const uv_buf_t *buf) {
  proxy_t *p = req->data;
  pwrite_t *w = buf->base != NULL ? H2R_CONTAINER_OF(buf->base, pwrite_t, data) : NULL;
  if (n > 0 && w != NULL) { /* bytes come in a buffer of ours */
    w->p = p;
    w->len = (size_t)n;
    w->credit = (size_t)n;
    w->next = NULL;
    if (!p->body_seen) {
      p->body_seen = true;
      p_arm(p);
    }
    if (!p->up_open) { /* the hop is opening: kept for it */
      *p->early_tail = w;
      p->early_tail = &w->next;
      p->early_bytes += (size_t)n;
      if (p->early_bytes >= EARLY_MAX)
        client_pause(p);
      return;
    }
    if (send_up(p, w, true) != 0) {
      wfree(p, w);
      p_fail(p, 502, "cannot write to the %s", p->own.peer);
      return;
    }
    if (p->hop->ops->queued(p->hop) >= UP_QUEUE_MAX)
      client_pause(p);
    return;
  }
  wfree(p, w);
  if (n == 0)
    return;
  p->client_reading = false; /* nothing more comes */
  if (n == UV_EOF) {
    p->client_eof = true;
    if (p->up_open)
      send_up_end(p);
    p_arm(p);
    return;
  }
  p_log(p, H2REV_LOG_INFO, "client went away: %s", h2rev_strerror((int)n));
  p_finish(p);
}

/* The request is over for the client: it is accounted for, and its share
 * of p goes. */
static void client_done(h2rev_http_req_t *req, int status) {
  proxy_t *p = req->data;
  if (p->own.account != NULL) {
    uint64_t now = uv_hrtime();
    h2rev_upstream_access_t a = {
        .method = req->method,
        .path = p->acc_path,
        .status = p->status,
        .local = p->local,
        .result = status,
        .bytes_in = p->bytes_in,
        .bytes_out = p->bytes_out,
        .duration_us = (now - p->start) / 1000,
        .ttfb_us = p->first != 0 ? (p->first - p->start) / 1000 : 0,
    };
    p->own.account(p->own.arg, &a);
  }
  p->req = NULL;
  if (p->client_open) { /* finished by the server (closing), not by us */
    p->client_open = false;
    if (p->csess != NULL)
      p->csess->proxied--;
  }
  if (status != 0 && !p->done)
    p_close_up(p);
  p_release(p);
}

/* ------------------------------------------------------ request head */

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
static bool dialers_own(const char *name, size_t nl) {
  return is(name, nl, "x-forwarded-host") || is(name, nl, "x-forwarded-proto") ||
         is(name, nl, "x-forwarded-prefix");
}

static bool safe_text(const char *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
      return false;
  return true;
}

/* True when `name` is listed in the request's Connection header. */
static bool named_by_connection(const h2rev_http_req_t *req, const char *name, size_t nl) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].name, "connection") == 0 &&
        h2r_list_has_n(req->headers[i].value, strlen(req->headers[i].value), name, nl))
      return true;
  return false;
}

/* The request head for the next hop (t: where it goes), after `lead`
 * bytes of the caller's in one allocation (malloc'd); NULL (with *status)
 * when the request cannot be translated without ambiguity (400), has too
 * many fields (431), is a CONNECT (405: raw streams are not served yet),
 * or its path has dot segments, which a server behind could resolve to
 * somewhere outside <prefix>/ (400). The size is computed before anything
 * is written. */
static char *build_head(const h2rev_http_req_t *req, const h2r_px_target_t *t, size_t lead,
                        size_t *len, int *status, bool *chunked) {
  const char *prefix = t->prefix, *rest = t->rest, *id = t->host;
  size_t prefixlen = t->prefixlen;
  /* An extended CONNECT (RFC 8441) is, in HTTP/1.1, a GET that asks for an
   * Upgrade to its :protocol; for WebSocket with a key of ours (an HTTP/2
   * client sends none) and the version if the client left it out. */
  const char *ext = req->http_major == 2 && req->upgrade ? req->protocol : NULL;
  bool ws = ext != NULL && strcasecmp(ext, "websocket") == 0;
  char key[WS_KEY_LEN + 1] = "";
  if (ws && h2rev_http_header(req, "sec-websocket-key") == NULL) {
    unsigned char raw[WS_KEY_BYTES];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
      *status = 503;
      return NULL;
    }
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
  }
  const char *method = ext != NULL ? "GET" : req->method, *peer = req->peer;
  size_t ml = strlen(method), il = t->hostlen, al = strlen(req->authority);
  size_t sl = strlen(req->scheme), pl = strlen(peer);
  /* rest is "/<path>?<query>", or "?<query>" / "" for <prefix> itself. */
  bool slash = rest[0] != '/';
  size_t rl = strlen(rest);
  *status = 400;
  if (req->nheaders > H2R_MAX_HEADERS) {
    *status = 431;
    return NULL;
  }
  if (!h2r_is_token(method, ml) || !safe_text(rest, rl) || memchr(rest, ' ', rl) ||
      h2r_path_has_dot_segment(prefix, prefixlen) || h2r_path_has_dot_segment(rest, rl))
    return NULL;
  if (strcmp(method, "CONNECT") == 0 || (ext != NULL && !h2r_is_token(ext, strlen(ext)))) {
    *status = ext != NULL ? 400 : 405;
    return NULL;
  }
  /* Fixed text and separators of every line we write, at most. */
  size_t cap = 256 + ml + t->baselen + rl + il + al + sl + pl + prefixlen +
               (ext != NULL ? strlen(ext) : 0) + sizeof(key) + 64;
  const char *cl = NULL;
  bool te = false;
  for (size_t i = 0; i < req->nheaders; i++) {
    const char *name = req->headers[i].name, *value = req->headers[i].value;
    size_t nl = strlen(name), vl = strlen(value);
    if (!h2r_is_token(name, nl) || !safe_text(value, vl))
      return NULL;
    cap += nl + vl + 6;
    if (is(name, nl, "transfer-encoding"))
      te = true;
    if (is(name, nl, "content-length")) {
      if (content_length(value, vl) < 0 || (cl != NULL && strcmp(cl, value) != 0))
        return NULL; /* conflicting lengths: a smuggling attempt */
      cl = value;
    }
  }
  /* Transfer-Encoding with Content-Length, or in HTTP/2 at all: refused
   * rather than guessed. */
  if (te && (cl != NULL || req->http_major == 2))
    return NULL;
  char *mem = malloc(lead + cap);
  if (mem == NULL) {
    *status = 503;
    return NULL;
  }
  h2r_out_t o = {mem + lead, 0, cap, false};
  h2r_out_put(&o, method, ml);
  H2R_OUT_LIT(&o, " ");
  h2r_out_put(&o, t->base, t->baselen);
  if (slash)
    H2R_OUT_LIT(&o, "/");
  h2r_out_put(&o, rest, rl);
  H2R_OUT_LIT(&o, " HTTP/1.1\r\nHost: ");
  h2r_out_put(&o, id, il);
  H2R_OUT_LIT(&o, "\r\n");
  if (cl != NULL) {
    /* In its canonical form ("0005" is 5): one reading for every parser behind. */
    H2R_OUT_LIT(&o, "Content-Length: ");
    h2r_out_uint(&o, (uint64_t)content_length(cl, strlen(cl)), 10);
    H2R_OUT_LIT(&o, "\r\n");
  }
  for (size_t i = 0; i < req->nheaders; i++) {
    const char *name = req->headers[i].name, *value = req->headers[i].value;
    size_t nl = strlen(name), vl = strlen(value);
    if (is(name, nl, "host") || is(name, nl, "x-forwarded-for") || dialers_own(name, nl) ||
        is(name, nl, "content-length"))
      continue;
    bool keep = (is(name, nl, "te") && vl == 8 && strncasecmp(value, "trailers", 8) == 0) ||
                (req->upgrade && is(name, nl, "upgrade"));
    /* Expect: 100-continue was answered at the door (http1.c): the body is
     * on its way, nobody behind needs to be asked. */
    h2r_kv_t kv = {name, value, nl, vl};
    if (!keep && (h2r_hop_by_hop(name, nl) || named_by_connection(req, name, nl) ||
                  h2r_kv_expects_continue(&kv)))
      continue;
    h2r_out_header(&o, name, nl, value, vl);
  }
  /* The peer is "ip:port" ("[v6]:port"): the address without the port. */
  size_t ipl = pl;
  while (ipl > 0 && peer[ipl - 1] != ':')
    ipl--;
  ipl = ipl > 0 ? ipl - 1 : pl;
  H2R_OUT_LIT(&o, "X-Forwarded-For: ");
  for (size_t i = 0; i < req->nheaders; i++) {
    if (strcmp(req->headers[i].name, "x-forwarded-for") == 0) { /* each the client sent, in order */
      h2r_out_put(&o, req->headers[i].value, strlen(req->headers[i].value));
      H2R_OUT_LIT(&o, ", ");
    }
  }
  h2r_out_put(&o, peer, ipl);
  H2R_OUT_LIT(&o, "\r\n");
  h2r_out_header(&o, "X-Forwarded-Proto", 17, req->scheme, sl);
  if (al > 0) /* HTTP/1.0 may have no Host: then there is none to forward */
    h2r_out_header(&o, "X-Forwarded-Host", 16, req->authority, al);
  if (prefixlen > 0)
    h2r_out_header(&o, "X-Forwarded-Prefix", 18, prefix, prefixlen);
  if (ext != NULL) {
    h2r_out_header(&o, "Upgrade", 7, ext, strlen(ext));
    if (key[0] != '\0')
      h2r_out_header(&o, "Sec-WebSocket-Key", 17, key, WS_KEY_LEN);
    if (ws && h2rev_http_header(req, "sec-websocket-version") == NULL)
      H2R_OUT_LIT(&o, "Sec-WebSocket-Version: 13\r\n");
  }
  *chunked = cl == NULL && req->content_length != 0 && !req->upgrade;
  if (*chunked)
    H2R_OUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
  /* HTTP/1.1 keeps the reverse connection alive by default: it is reused
   * when the listener agrees. */
  if (req->upgrade)
    H2R_OUT_LIT(&o, "Connection: Upgrade\r\n");
  H2R_OUT_LIT(&o, "\r\n");
  if (o.over) { /* cap is computed above: a bug, never a head cut short */
    free(mem);
    *status = 500;
    return NULL;
  }
  *len = o.len;
  return mem;
}

char *h2r_proxy_head(const h2rev_http_req_t *req, const char *prefix, size_t prefixlen,
                     const char *id, const char *rest, size_t *len, int *status) {
  bool chunked;
  h2r_px_target_t t = {.host = id,
                       .hostlen = strlen(id),
                       .base = "",
                       .rest = rest,
                       .prefix = prefix,
                       .prefixlen = prefixlen};
  return build_head(req, &t, 0, len, status, &chunked);
}

/* ------------------------------------------------------ the exchange */

void h2r_px_opened(h2r_hop_t *hop, int status, const char *why) {
  proxy_t *p = hop->px;
  if (status != 0) {
    p->hop_live = false; /* over: its share is ours to drop */
    /* A full queue is load, as a canceled dial is: 503 with Retry-After. */
    if (p->client_open)
      p_fail(p,
             status == UV_ETIMEDOUT                               ? 504
             : status == UV_ECANCELED || status == H2REV_ETOOMANY ? 503
                                                                  : 502,
             "%s", why);
    p_release(p);
    return;
  }
  p->up_open = true;
  /* Nothing of a request the client abandoned goes out (an HTTP/2 client
   * that resets each stream at once must cost the listener nothing). */
  if (!p->client_open || h2rev_http_client_error(p->req) != 0) {
    p_finish(p);
    return;
  }
  if (p->connect) {
    /* The tunnel is open: the client's bytes flow from this answer on. */
    p->head_sent = true;
    p->raw = true;
    if (h2rev_http_respond(p->req, 200, NULL, 0, -1) != 0) {
      p_finish(p);
      return;
    }
    p->status = 200;
    client_resume(p);
    p->hop->ops->read_start(p->hop);
    return;
  }
  pwrite_t *head = p->reqhead;
  p->reqhead = NULL;
  if (send_up(p, head, false) != 0) {
    free(head);
    p_fail(p, 502, "cannot write to the %s", p->own.peer);
    return;
  }
  while (p->early != NULL) {
    pwrite_t *w = p->early;
    p->early = w->next;
    if (send_up(p, w, true) != 0) {
      wfree(p, w);
      p_fail(p, 502, "cannot write to the %s", p->own.peer);
      return;
    }
  }
  p->early_tail = &p->early;
  p->early_bytes = 0;
  if (p->client_eof)
    send_up_end(p);
  else
    client_resume(p);
  if (!p->up_open)
    return; /* failed on the way */
  p->hop->ops->read_start(p->hop);
  p_arm(p);
}

/* Room for a hop of the caller's after the proxy, aligned for any type. */
#define HOP_ALIGN     16
#define HOP_OFFSET    ((sizeof(proxy_t) + HOP_ALIGN - 1) / HOP_ALIGN * HOP_ALIGN)
#define HOP_END(size) (HOP_OFFSET + ((size) + HOP_ALIGN - 1) / HOP_ALIGN * HOP_ALIGN)

static char *put_str(char **at, const char *s, size_t n) {
  char *v = *at;
  memcpy(v, s, n);
  v[n] = '\0';
  *at += n + 1;
  return v;
}

/* A request refused before its exchange: answered, and accounted for. */
static void refuse(h2rev_http_req_t *req, const h2r_px_owner_t *own, char *path, int status) {
  h2r_px_reply_error(req, own, status, req->content_length != 0);
  if (own->account != NULL) {
    h2rev_upstream_access_t a = {.method = req->method, .path = path, .status = status, .local = 1};
    own->account(own->arg, &a);
  }
  free(path);
}

h2r_hop_t *h2r_px_new(h2rev_http_req_t *req, const h2r_hop_ops *ops, size_t hop_size,
                      const h2r_px_owner_t *own, const h2r_px_target_t *t) {
  bool connect = strcmp(req->method, "CONNECT") == 0;
  bool ext = connect && req->http_major == 2 && req->protocol != NULL;
  connect = connect && !ext;
  size_t namel = strlen(t->name);
  proxy_t *p = calloc(1, HOP_END(hop_size) + namel + t->hostlen + t->prefixlen + t->baselen + 4);
  int status = 503;
  size_t hl = 0;
  bool chunked = false;
  if (p == NULL) {
    refuse(req, own, t->acc_path, 503);
    return NULL;
  }
  char *at = (char *)p + HOP_END(hop_size);
  p->id = put_str(&at, t->name, namel);
  p->host = put_str(&at, t->host, t->hostlen);
  p->prefix = put_str(&at, t->prefix, t->prefixlen);
  p->base = put_str(&at, t->base, t->baselen);
  p->prefixlen = t->prefixlen;
  p->baselen = t->baselen;
  p->own = *own;
  p->acc_path = t->acc_path;
  p->hb.trim_names = true; /* the next hop's response */
  char *mem = connect ? malloc(sizeof(pwrite_t))
                      : build_head(req, t, offsetof(pwrite_t, data), &hl, &status, &chunked);
  if (mem == NULL) {
    h2r_log_limited(own->log, own->rl, own->loop, H2REV_LOG_INFO,
                    "%s %s: %d for a request that cannot be forwarded safely", own->tag, p->id,
                    status);
    free(p);
    refuse(req, own, t->acc_path, status);
    return NULL;
  }
  p->hop = (h2r_hop_t *)((char *)p + HOP_OFFSET);
  p->hop->ops = ops;
  p->hop->px = p;
  p->reqhead = (pwrite_t *)mem;
  p->reqhead->p = p;
  p->reqhead->len = hl;
  p->reqhead->credit = 0;
  p->reqhead->cached = false;
  p->req = req;
  req->data = p;
  p->chunked_req = chunked;
  p->upgrade = req->upgrade != 0;
  p->connect = connect;
  p->ext = ext;
  p->head_req = strcmp(req->method, "HEAD") == 0;
  p->early_tail = &p->early;
  p->client_open = true;
  p->csess = t->csess;
  if (p->csess != NULL)
    p->csess->proxied++;
  p->start = uv_hrtime();
  h2r_bufcache_init(&p->body_bufs, sizeof(pwrite_t) + BODY_BUF, BODY_BUFS);
  uv_timer_init(own->loop, &p->linger);
  p->linger.data = p;
  p->timer_open = true;
  /* Shares of p: the client's request, the timer, and the hop. */
  p->shares = 3;
  p->hop_live = true;
  h2rev_http_on_done(req, client_done);
  llhttp_settings_init(&p->settings);
  p->settings.on_header_field = on_hfield;
  p->settings.on_header_value = on_hvalue;
  p->settings.on_header_value_complete = on_hvalue_done;
  p->settings.on_headers_complete = on_headers_complete;
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  llhttp_init(&p->parser, HTTP_RESPONSE, &p->settings);
  p->parser.data = p;
  return p->hop;
}

void h2r_px_go(h2r_hop_t *hop) {
  proxy_t *p = hop->px;
  /* The body is read from the start, kept until the hop is open, and its
   * credit returns as it reaches the next hop; a client that leaves is
   * seen at once and the opening cancelled. */
  h2rev_http_read_manual(p->req);
  client_resume(p);
  int r = hop->ops->open(hop);
  if (r != 0) { /* nothing follows */
    p->hop_live = false;
    p_fail(p, r == H2REV_EBADID ? 400 : 502, "cannot reach the %s: %s", p->own.peer,
           h2rev_strerror(r));
    p_release(p); /* the hop's share; the client's and the timer's remain */
  }
}

/* ------------------------------------------ the hop: a reverse connection */

typedef struct dhop {
  h2r_hop_t hop;
  h2rev_dialer_t *dialer;
  const char *id;
  h2rev_dial_t dial;
  h2rev_stream_t up;
  h2rev_shutdown_t sh;
  bool dialing;
} dhop_t;

static void d_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  h2r_px_alloc(s->data, sz, buf);
}

static void d_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  h2r_px_read(s->data, n, buf);
}

static void d_dialed(h2rev_dial_t *dial, int status) {
  dhop_t *d = H2R_CONTAINER_OF(dial, dhop_t, dial);
  d->dialing = false;
  char why[200] = "";
  if (status != 0)
    snprintf(why, sizeof(why), "listener %s: %s", d->id, h2rev_dial_strerror(dial));
  h2r_px_opened(&d->hop, status, why);
}

static int d_open(h2r_hop_t *hop) {
  dhop_t *d = (dhop_t *)hop;
  d->up.data = hop;
  d->dialing = true;
  int r = h2rev_dial(&d->dial, d->dialer, d->id, &d->up, 0, d_dialed);
  if (r != 0)
    d->dialing = false; /* no callback will come */
  return r;
}

static void d_wrote(h2rev_write_t *req, int status) {
  h2r_hop_write_t *w = H2R_CONTAINER_OF(req, h2r_hop_write_t, u.s);
  w->cb(w, status);
}

static int d_write(h2r_hop_t *hop, h2r_hop_write_t *w, const uv_buf_t *bufs, unsigned n) {
  return h2rev_stream_write(&w->u.s, &((dhop_t *)hop)->up, bufs, n, d_wrote);
}

static size_t d_queued(const h2r_hop_t *hop) {
  return h2rev_stream_write_queue_size(&((const dhop_t *)hop)->up);
}

static void d_read_start(h2r_hop_t *hop) {
  h2rev_stream_read_start(&((dhop_t *)hop)->up, d_alloc, d_read);
}

static void d_read_stop(h2r_hop_t *hop) {
  h2rev_stream_read_stop(&((dhop_t *)hop)->up);
}

static void d_shut(h2rev_shutdown_t *req, int status) {
  h2r_px_shut(req->data, status);
}

static int d_shutdown(h2r_hop_t *hop) {
  dhop_t *d = (dhop_t *)hop;
  d->sh.data = hop;
  return h2rev_stream_shutdown(&d->sh, &d->up, d_shut);
}

/* The stream goes back to the dialer for the next request to this
 * listener. */
static bool d_recycle(h2r_hop_t *hop) {
  dhop_t *d = (dhop_t *)hop;
  return h2rev_dialer_recycle(d->dialer, d->id, &d->up) == 0;
}

static void d_closed(h2rev_stream_t *s) {
  h2r_px_gone(s->data);
}

static void d_close(h2r_hop_t *hop) {
  dhop_t *d = (dhop_t *)hop;
  if (d->dialing)
    h2rev_dial_cancel(&d->dial); /* its callback ends the hop */
  else
    h2rev_stream_close(&d->up, d_closed);
}

static const h2r_hop_ops dial_ops = {
    .open = d_open,
    .write = d_write,
    .queued = d_queued,
    .read_start = d_read_start,
    .read_stop = d_read_stop,
    .shutdown = d_shutdown,
    .recycle = d_recycle,
    .close = d_close,
};

/* ---------------------------------------------------------- the handler */

void h2rev_dialer_proxy(h2rev_http_req_t *req, void *arg) {
  h2rev_dialer_t *dialer = arg;
  const h2rev_dialer_options_t *o = h2r_dialer_options(dialer);
  const h2rev_logger_t *log = &o->log;
  h2r_ratelog_t *rl = h2r_dialer_ratelog(dialer);
  h2r_px_owner_t own = {
      .loop = dialer->loop,
      .log = log,
      .rl = rl,
      .body_timeout_ms = o->body_timeout_ms,
      .response_timeout_ms = o->response_timeout_ms,
      .no_rewrite = o->no_rewrite != 0,
      .tag = "proxy",
      .peer = "listener",
      .text_502 = "listener unavailable\n",
      .text_504 = "listener did not answer in time\n",
  };
  /* <route>/<id>[/<rest>]: the id, and the rest as the listener sees it. */
  size_t routel = strlen(req->route);
  bool connect = strcmp(req->method, "CONNECT") == 0;
  /* CONNECT <id>:<port> (no path: h2rev_http_server_route_connect): the
   * host names the listener; the port is the client's business (its
   * listener's upstream decides where the bytes go). */
  bool by_authority = connect && req->path[0] == '\0';
  const char *idp = by_authority ? req->authority : req->path + routel + (req->path[routel] == '/');
  size_t idl = by_authority ? (size_t)(strrchr(idp, ':') != NULL ? strrchr(idp, ':') - idp : 0)
                            : strcspn(idp, "/?");
  if ((!by_authority && req->path[routel] != '/') || idl == 0 || !h2r_id_valid(idp, idl)) {
    h2r_log_limited(log, rl, dialer->loop, H2REV_LOG_INFO, "proxy: 400 for %.80s: invalid id",
                    req->path);
    h2r_px_reply_error(req, &own, 400, req->content_length != 0);
    return;
  }
  const char *rest = by_authority ? "" : idp + idl;
  size_t prefixlen = by_authority ? 0 : (size_t)(rest - req->path);
  /* Reset already (HEADERS then RST_STREAM in one read: a rapid reset):
   * no dial is started for it, so a flood of them asks the listener for
   * nothing. */
  if (h2rev_http_client_error(req) != 0) {
    h2rev_http_abort(req);
    return;
  }
  h2r_session_t *csess = h2r_hreq_session(req);
  if (csess != NULL && csess->proxied >= o->max_client_streams) {
    /* One client must not hold every data stream of an id. */
    h2r_log_limited(log, rl, dialer->loop, H2REV_LOG_INFO,
                    "proxy %.*s: 429 for %s: %u proxied requests open on its connection (the "
                    "limit)",
                    (int)idl, idp, req->peer, csess->proxied);
    h2r_px_reply_error(req, &own, 429, req->content_length != 0);
    return;
  }
  /* CONNECT <route>/<id>, or CONNECT <id>:<port>: the reverse connection,
   * as it is, is the tunnel (what a listener with a tcp:// upstream splices
   * to its service). An HTTP/2 extended CONNECT (with a :protocol, e.g.
   * WebSocket) goes on as an HTTP/1.1 upgrade request instead. */
  bool ext = connect && req->http_major == 2 && req->protocol != NULL;
  connect = connect && !ext;
  if (connect && (!req->upgrade || rest[0] != '\0')) {
    h2r_log_limited(log, rl, dialer->loop, H2REV_LOG_INFO,
                    "proxy %.*s: 405 for a CONNECT with a path after the id", (int)idl, idp);
    h2r_px_reply_error(req, &own, 405, req->content_length != 0);
    return;
  }
  char id[H2R_ID_MAX + 1];
  memcpy(id, idp, idl);
  id[idl] = '\0';
  h2r_px_target_t t = {
      .host = id,
      .hostlen = idl,
      .base = "",
      .rest = rest,
      .prefix = req->path,
      .prefixlen = prefixlen,
      .name = id,
      .csess = csess,
  };
  h2r_hop_t *hop = h2r_px_new(req, &dial_ops, sizeof(dhop_t), &own, &t);
  if (hop == NULL)
    return;
  dhop_t *d = (dhop_t *)hop;
  d->dialer = dialer;
  d->id = ((proxy_t *)hop->px)->id;
  h2r_px_go(hop);
}
