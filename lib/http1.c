/*
 * HTTP/1.1 server connections of the dialer (TLS with ALPN http/1.1, or
 * cleartext without the HTTP/2 preface): requests parsed with llhttp, one
 * exchange at a time (a pipelined request waits for the response before
 * it), keep-alive, limits with clear errors, and the response framing for
 * what the proxy streams back. After an Upgrade (WebSocket) the bytes are
 * spliced as they are.
 */
#include "control.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEAD_TIMEOUT_MS 10000 /* a client must send its whole head in this time */
#define IDLE_TIMEOUT_MS 60000 /* between requests */
#define OUT_HIGH        (1u << 20)

struct h2r_h1c {
  h2r_session_t *s;
  h2rev_dialer_t *dialer;
  const char *base;
  const h2rev_logger_t *log;
  llhttp_t parser;
  llhttp_settings_t settings;
  uv_timer_t timer;
  bool timer_open;
  h2r_hbuf_t hb;    /* the head of the request being parsed */
  h2r_proxy_t *p;   /* the exchange in progress */
  bool busy;        /* a request is being answered */
  bool keep_alive;  /* of the current request */
  bool head_only;   /* HEAD: no response body */
  bool chunked_out; /* response body chunked */
  bool raw;         /* upgraded: bytes pass as they are */
  bool closing;     /* close once the output is written */
  bool draining;    /* no request after the current one */
  bool input_paused;
  uint8_t *pending; /* input received while busy */
  size_t npending;
  size_t out_queued; /* bytes written, not yet on the socket */
  unsigned writes;
};

typedef struct h1write {
  h2r_xwrite_t w;
  h2r_h1c_t *c;
  size_t len;
  char data[];
} h1write_t;

static void c_input(h2r_h1c_t *c, const uint8_t *p, size_t n);
static void slow_head(uv_timer_t *t);

static void pause_input(h2r_h1c_t *c, bool pause) {
  c->input_paused = pause;
  h2r_xport_read_pause(&c->s->x, pause);
}

static void c_close_now(h2r_h1c_t *c) {
  if (c->timer_open)
    uv_timer_stop(&c->timer);
  h2r_session_close(c->s, 0);
}

static void wrote(h2r_xwrite_t *w, int status) {
  h1write_t *hw = H2R_CONTAINER_OF(w, h1write_t, w);
  h2r_h1c_t *c = hw->c;
  c->out_queued -= hw->len;
  c->writes--;
  free(hw);
  if (status != 0)
    return;
  if (c->closing && c->writes == 0) {
    c_close_now(c);
    return;
  }
  if (c->p != NULL && c->out_queued < OUT_HIGH / 2)
    h2r_proxy_client_drained(c->p);
}

static void out(h2r_h1c_t *c, const char *a, size_t al, const char *b, size_t bl, const char *d,
                size_t dl) {
  if (c->s->state == H2R_S_DEAD)
    return;
  h1write_t *w = malloc(sizeof(*w) + al + bl + dl);
  if (w == NULL) {
    c_close_now(c);
    return;
  }
  memcpy(w->data, a, al);
  if (bl)
    memcpy(w->data + al, b, bl);
  if (dl)
    memcpy(w->data + al + bl, d, dl);
  w->c = c;
  w->len = al + bl + dl;
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)w->len);
  if (h2r_xport_write(&c->s->x, &w->w, &buf, 1, wrote) != 0) {
    free(w);
    c_close_now(c);
    return;
  }
  c->out_queued += w->len;
  c->writes++;
}

static const char *reason(int status) {
  switch (status) {
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 204:
    return "No Content";
  case 304:
    return "Not Modified";
  case 400:
    return "Bad Request";
  case 404:
    return "Not Found";
  case 408:
    return "Request Timeout";
  case 431:
    return "Request Header Fields Too Large";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  default:
    return "Status";
  }
}

/* A complete text response of our own. */
static void respond_text(h2r_h1c_t *c, int status, const char *text, bool close) {
  char head[256];
  size_t tl = strlen(text);
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n",
                   status, reason(status), tl, close ? "Connection: close\r\n" : "");
  out(c, head, (size_t)n, c->head_only ? "" : text, c->head_only ? 0 : tl, NULL, 0);
  if (close) {
    c->closing = true;
    if (c->writes == 0)
      c_close_now(c);
  }
}

/* ------------------------------------------------- after an exchange */

static void next_request(h2r_h1c_t *c) {
  c->busy = false;
  c->p = NULL;
  if (c->closing)
    return;
  if (!c->keep_alive || c->draining) {
    c->closing = true;
    if (c->writes == 0)
      c_close_now(c);
    return;
  }
  uv_timer_start(&c->timer, slow_head, IDLE_TIMEOUT_MS, 0);
  llhttp_resume(&c->parser);
  uint8_t *pend = c->pending;
  size_t n = c->npending;
  c->pending = NULL;
  c->npending = 0;
  if (c->input_paused)
    pause_input(c, false);
  if (pend != NULL) {
    c_input(c, pend, n);
    free(pend);
  }
}

size_t h2r_h1c_head(h2r_h1c_t *c, int status, const h2r_kv_t *hdrs, size_t n, bool upgrade) {
  size_t cap = 256;
  for (size_t i = 0; i < n; i++)
    cap += hdrs[i].nl + hdrs[i].vl + 4;
  char *h = malloc(cap);
  if (h == NULL) {
    c_close_now(c);
    return 0;
  }
  size_t o = (size_t)snprintf(h, cap, "HTTP/1.1 %d %s\r\n", status, reason(status));
  bool has_cl = false;
  for (size_t i = 0; i < n; i++) {
    const h2r_kv_t *kv = &hdrs[i];
    bool is_cl = kv->nl == 14 && strncasecmp(kv->name, "content-length", 14) == 0;
    bool hop = (kv->nl == 10 && strncasecmp(kv->name, "connection", 10) == 0) ||
               (kv->nl == 17 && strncasecmp(kv->name, "transfer-encoding", 17) == 0) ||
               (kv->nl == 10 && strncasecmp(kv->name, "keep-alive", 10) == 0) ||
               (!upgrade && kv->nl == 7 && strncasecmp(kv->name, "upgrade", 7) == 0);
    if (hop)
      continue;
    has_cl |= is_cl;
    o += (size_t)snprintf(h + o, cap - o, "%.*s: %.*s\r\n", (int)kv->nl, kv->name, (int)kv->vl,
                          kv->value);
  }
  bool body = !c->head_only && status != 204 && status != 304 && status >= 200;
  c->chunked_out = body && !has_cl;
  if (c->chunked_out)
    o += (size_t)snprintf(h + o, cap - o, "Transfer-Encoding: chunked\r\n");
  if (upgrade) {
    o += (size_t)snprintf(h + o, cap - o, "Connection: Upgrade\r\n");
    c->raw = true;
    c->chunked_out = false;
  } else if (!c->keep_alive || c->draining) {
    o += (size_t)snprintf(h + o, cap - o, "Connection: close\r\n");
  }
  o += (size_t)snprintf(h + o, cap - o, "\r\n");
  out(c, h, o, NULL, 0, NULL, 0);
  free(h);
  if (upgrade && c->npending > 0) {
    /* Bytes the client sent after its upgrade request. */
    h2r_proxy_client_body(c->p, (const char *)c->pending, c->npending);
    free(c->pending);
    c->pending = NULL;
    c->npending = 0;
  }
  if (upgrade && c->input_paused)
    pause_input(c, false);
  return c->out_queued;
}

size_t h2r_h1c_body(h2r_h1c_t *c, const char *data, size_t len) {
  if (len == 0)
    return c->out_queued;
  if (c->chunked_out) {
    char size[24];
    int sl = snprintf(size, sizeof(size), "%zx\r\n", len);
    out(c, size, (size_t)sl, data, len, "\r\n", 2);
  } else {
    out(c, data, len, NULL, 0, NULL, 0);
  }
  return c->out_queued;
}

void h2r_h1c_end(h2r_h1c_t *c) {
  if (c->raw) {
    c->keep_alive = false;
  } else if (c->chunked_out) {
    out(c, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
  }
  next_request(c);
}

void h2r_h1c_error(h2r_h1c_t *c, int status, const char *text) {
  c->p = NULL;
  c->busy = false;
  respond_text(c, status, text, true);
}

void h2r_h1c_abort(h2r_h1c_t *c) {
  c->p = NULL;
  c->busy = false;
  c->closing = true;
  c_close_now(c); /* a response cut short must not look complete */
}

void h2r_h1c_resume_input(h2r_h1c_t *c) {
  if (c->input_paused && c->pending == NULL)
    pause_input(c, false);
}

/* ------------------------------------------------------- requests */

static int on_message_begin(llhttp_t *h) {
  h2r_h1c_t *c = h->data;
  h2r_hbuf_reset(&c->hb);
  uv_timer_start(&c->timer, slow_head, HEAD_TIMEOUT_MS, 0);
  return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_url(&((h2r_h1c_t *)h->data)->hb, at, len);
}

static int on_hfield(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_field(&((h2r_h1c_t *)h->data)->hb, at, len);
}

static int on_hvalue(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_value(&((h2r_h1c_t *)h->data)->hb, at, len);
}

static int on_headers_complete(llhttp_t *h) {
  h2r_h1c_t *c = h->data;
  uv_timer_stop(&c->timer);
  c->busy = true;
  c->keep_alive = llhttp_should_keep_alive(h);
  const char *method = llhttp_method_name((llhttp_method_t)llhttp_get_method(h));
  c->head_only = strcmp(method, "HEAD") == 0;
  c->chunked_out = false;
  h2r_kv_t kv[H2R_MAX_HEADERS];
  const h2r_hbuf_t *hb = &c->hb;
  bool chunked = false, has_cl = false, upgrade = llhttp_get_upgrade(h) != 0;
  const char *authority = "";
  size_t alen = 0;
  for (unsigned i = 0; i < hb->n; i++) {
    kv[i] = h2r_hbuf_kv(hb, i);
    if (kv[i].nl == 17 && strncasecmp(kv[i].name, "transfer-encoding", 17) == 0)
      chunked = true;
    if (kv[i].nl == 14 && strncasecmp(kv[i].name, "content-length", 14) == 0)
      has_cl = true;
    if (kv[i].nl == 4 && strncasecmp(kv[i].name, "host", 4) == 0)
      authority = kv[i].value, alen = kv[i].vl;
  }
  /* Copies as C strings: the url (path and query) and the authority. */
  char url[8192], auth[512];
  if (hb->url_len >= sizeof(url) || alen >= sizeof(auth)) {
    respond_text(c, 431, "request line or Host too long\n", true);
    return -1;
  }
  memcpy(url, hb->buf, hb->url_len);
  url[hb->url_len] = '\0';
  memcpy(auth, authority, alen);
  auth[alen] = '\0';
  if (strcmp(url, "/healthz") == 0) {
    respond_text(c, 200, "ok\n", false);
    c->busy = false;
    return 0;
  }
  size_t bl = strlen(c->base);
  const char *id = url + bl + 7;
  if (strncmp(url, c->base, bl) != 0 || strncmp(url + bl, "/proxy/", 7) != 0) {
    respond_text(c, 404,
                 url[0] == '/' && strstr(url, "/revdial") != NULL ? "/revdial needs HTTP/2\n"
                                                                  : "not found\n",
                 true);
    return -1;
  }
  size_t idl = strcspn(id, "/?");
  char idbuf[160], rest[8200];
  if (idl == 0 || idl >= sizeof(idbuf) || !h2r_id_valid(id, idl)) {
    respond_text(c, 400, "invalid id\n", true);
    return -1;
  }
  memcpy(idbuf, id, idl);
  idbuf[idl] = '\0';
  snprintf(rest, sizeof(rest), "%s%s", id[idl] == '/' ? "" : "/", id + idl);
  h2r_preq_t rq = {
      .method = method,
      .authority = auth,
      .scheme = c->s->x.ssl != NULL ? "https" : "http",
      .peer = c->s->x.peer,
      .prefix = url,
      .prefixlen = (size_t)(id + idl - url),
      .id = idbuf,
      .rest = rest,
      .hdrs = kv,
      .nhdrs = hb->n,
      .no_body = !chunked && !has_cl,
      .chunked = chunked,
      .upgrade = upgrade,
  };
  c->p = h2r_proxy_serve_h1(c->dialer, c, &rq, c->log);
  if (c->p == NULL)
    return -1;
  /* llhttp reports an upgrade request as having no body: the bytes after the
   * head are raw and wait for the 101. */
  return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t len) {
  h2r_h1c_t *c = h->data;
  if (c->p != NULL && h2r_proxy_client_body(c->p, at, len))
    pause_input(c, true);
  return 0;
}

static int on_message_complete(llhttp_t *h) {
  h2r_h1c_t *c = h->data;
  if (c->p != NULL && !llhttp_get_upgrade(h))
    h2r_proxy_client_end(c->p);
  /* One exchange at a time: stop here until the response is done. */
  return c->busy ? HPE_PAUSED : 0;
}

static void keep_rest(h2r_h1c_t *c, const uint8_t *rest, size_t n) {
  if (n == 0)
    return;
  uint8_t *b = realloc(c->pending, c->npending + n);
  if (b == NULL) {
    c_close_now(c);
    return;
  }
  memcpy(b + c->npending, rest, n);
  c->pending = b;
  c->npending += n;
  pause_input(c, true);
}

static void c_input(h2r_h1c_t *c, const uint8_t *p, size_t n) {
  if (c->closing)
    return;
  if (c->raw) {
    if (c->p != NULL && h2r_proxy_client_body(c->p, (const char *)p, n))
      pause_input(c, true);
    return;
  }
  if (c->busy && llhttp_get_errno(&c->parser) == HPE_PAUSED) {
    keep_rest(c, p, n);
    return;
  }
  llhttp_errno_t e = llhttp_execute(&c->parser, (const char *)p, n);
  if (e == HPE_OK)
    return;
  if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
    const uint8_t *rest = (const uint8_t *)llhttp_get_error_pos(&c->parser);
    keep_rest(c, rest, (size_t)(p + n - rest));
    return;
  }
  if (c->closing || c->s->state == H2R_S_DEAD)
    return;
  int status = c->hb.too_large ? 431 : 400;
  H2R_WARN(c->log, "%s: HTTP/1.1 request refused (%d): %s", c->s->x.peer, status,
           c->hb.too_large ? "header block too large" : llhttp_get_error_reason(&c->parser));
  if (c->p != NULL) {
    h2r_proxy_t *px = c->p;
    c->p = NULL;
    h2r_proxy_client_gone(px);
  }
  if (!c->busy)
    respond_text(c, status, status == 431 ? "request header fields too large\n" : "bad request\n",
                 true);
  else
    c_close_now(c);
}

static void ops_read(h2r_session_t *s, const uint8_t *p, size_t n) {
  c_input(s->h1_data, p, n);
}

static void ops_dead(h2r_session_t *s, int err) {
  (void)err;
  h2r_h1c_t *c = s->h1_data;
  if (c->timer_open)
    uv_timer_stop(&c->timer);
  if (c->p != NULL) {
    h2r_proxy_t *p = c->p;
    c->p = NULL;
    h2r_proxy_client_gone(p);
  }
}

static void ops_shutdown(h2r_session_t *s) {
  h2r_h1c_t *c = s->h1_data;
  c->draining = true;
  if (!c->busy) {
    c->closing = true;
    if (c->writes == 0)
      c_close_now(c);
  }
}

const h2r_h1_ops h2r_h1c_ops = {ops_read, ops_dead, ops_shutdown};

static void slow_head(uv_timer_t *t) {
  h2r_h1c_t *c = t->data;
  if (c->busy) {
    c_close_now(c);
    return;
  }
  H2R_WARN(c->log, "%s: no complete request head in time: closing", c->s->x.peer);
  respond_text(c, 408, "request timeout\n", true);
}

h2r_h1c_t *h2r_h1c_new(h2r_session_t *s, h2rev_dialer_t *dialer, const char *base,
                       const h2rev_logger_t *log) {
  h2r_h1c_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->s = s;
  c->dialer = dialer;
  c->base = base;
  c->log = log;
  llhttp_settings_init(&c->settings);
  c->settings.on_message_begin = on_message_begin;
  c->settings.on_url = on_url;
  c->settings.on_header_field = on_hfield;
  c->settings.on_header_value = on_hvalue;
  c->settings.on_headers_complete = on_headers_complete;
  c->settings.on_body = on_body;
  c->settings.on_message_complete = on_message_complete;
  llhttp_init(&c->parser, HTTP_REQUEST, &c->settings);
  c->parser.data = c;
  uv_timer_init(s->loop, &c->timer);
  c->timer.data = c;
  c->timer_open = true;
  uv_timer_start(&c->timer, slow_head, HEAD_TIMEOUT_MS, 0);
  return c;
}

static void timer_closed(uv_handle_t *h) {
  free(h->data);
}

void h2r_h1c_free(h2r_h1c_t *c) {
  h2r_hbuf_free(&c->hb);
  free(c->pending);
  if (c->p != NULL)
    h2r_proxy_client_gone(c->p);
  c->timer_open = false;
  uv_close((uv_handle_t *)&c->timer, timer_closed);
}
