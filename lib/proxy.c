/*
 * The dialer side of the reverse proxy: a client's HTTP/2 request for
 * <base>/proxy/<id>/<path> goes out as HTTP/1.1 over a reverse connection to
 * the listener `id`; the HTTP/1.1 response (parsed with llhttp) streams back
 * as the HTTP/2 response. Framing is rebuilt, never copied: Content-Length
 * when the client gave one, chunked otherwise, hop-by-hop headers dropped.
 */
#include "internal.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define UP_HIGH_WATER (1u << 20)

typedef struct proxy {
  h2rev_stream_t client;
  h2rev_stream_t up;
  h2rev_dial_t dial;
  const h2rev_logger_t *log;
  llhttp_t parser;
  llhttp_settings_t settings;
  char id[160];
  bool chunked_req; /* request body sent chunked */
  bool head_req;    /* HEAD: the response has no body */
  bool head_sent;   /* response head submitted to the client */
  bool done;        /* response complete */
  bool up_open;
  bool up_eof;       /* the listener ended its direction */
  bool up_shut_done; /* and we ended ours */
  bool client_open;
  bool timer_open;
  uv_timer_t linger; /* bounds the wait for the listener's END_STREAM */
  int closes;
  /* response head being parsed */
  char *hbuf;
  size_t hlen, hcap;
  unsigned nh;
  uint32_t hoff[128][4]; /* name off/len, value off/len */
  bool in_value;
  char *reqhead; /* the request head sent upstream */
  h2rev_shutdown_t sh;
  h2rev_shutdown_t up_sh;
  char rbuf[16384]; /* the listener's bytes, parsed as they arrive */
} proxy_t;

typedef struct pwrite {
  h2rev_write_t w;
  proxy_t *p;
  size_t len;
  char data[];
} pwrite_t;

static bool hop_by_hop(const char *name, size_t len) {
  static const char *const hop[] = {"connection",
                                    "keep-alive",
                                    "proxy-connection",
                                    "transfer-encoding",
                                    "upgrade",
                                    "http2-settings",
                                    "te",
                                    "proxy-authenticate",
                                    "trailer"};
  for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
    if (strlen(hop[i]) == len && strncasecmp(hop[i], name, len) == 0)
      return true;
  return false;
}

static void p_release(proxy_t *p) {
  if (--p->closes > 0)
    return;
  free(p->hbuf);
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
  if (p->up_open) {
    p->up_open = false;
    h2rev_stream_close(&p->up, p_closed);
  }
  if (p->timer_open) {
    p->timer_open = false;
    uv_close((uv_handle_t *)&p->linger, p_timer_closed);
  }
}

static void p_finish(proxy_t *p) {
  if (p->client_open) {
    p->client_open = false;
    h2rev_stream_close(&p->client, p_closed);
  }
  p_close_up(p);
}

static void p_fail(proxy_t *p, int status, const char *why) {
  H2R_WARN(p->log, "proxy %s: %d %s", p->id, status, why);
  if (!p->head_sent && p->client.s_ != NULL) {
    char body[200];
    snprintf(body, sizeof(body), "%s\n", why);
    h2r_strm_respond_text(p->client.s_, status, body);
    p->head_sent = true;
  }
  /* After the head, closing resets the client stream: never a response
   * that looks complete. */
  p_finish(p);
}

static void p_wrote(h2rev_write_t *req, int status) {
  pwrite_t *w = H2R_CONTAINER_OF(req, pwrite_t, w);
  (void)status;
  free(w);
}

static int p_send_cb(proxy_t *p, h2rev_stream_t *to, h2rev_write_cb cb, const char *a, size_t al,
                     const char *b, size_t bl, const char *c, size_t cl) {
  pwrite_t *w = malloc(sizeof(*w) + al + bl + cl);
  if (w == NULL)
    return UV_ENOMEM;
  w->p = p;
  w->len = al + bl + cl;
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

static int p_send(proxy_t *p, h2rev_stream_t *to, const char *a, size_t al, const char *b,
                  size_t bl, const char *c, size_t cl) {
  return p_send_cb(p, to, p_wrote, a, al, b, bl, c, cl);
}

/* ------------------------------------------------------ response head */

static int hb_add(proxy_t *p, const char *at, size_t len) {
  if (p->hlen + len + 1 > 64 * 1024)
    return -1;
  if (p->hlen + len + 1 > p->hcap) {
    size_t cap = p->hcap ? p->hcap * 2 : 1024;
    while (cap < p->hlen + len + 1)
      cap *= 2;
    char *n = realloc(p->hbuf, cap);
    if (n == NULL)
      return -1;
    p->hbuf = n;
    p->hcap = cap;
  }
  memcpy(p->hbuf + p->hlen, at, len);
  p->hlen += len;
  return 0;
}

static int on_hfield(llhttp_t *h, const char *at, size_t len) {
  proxy_t *p = h->data;
  if (p->in_value || p->nh == 0) {
    if (p->nh == 128)
      return -1;
    p->nh++;
    p->hoff[p->nh - 1][0] = (uint32_t)p->hlen;
    p->hoff[p->nh - 1][1] = 0;
    p->hoff[p->nh - 1][2] = 0;
    p->hoff[p->nh - 1][3] = 0;
    p->in_value = false;
  }
  p->hoff[p->nh - 1][1] += (uint32_t)len;
  return hb_add(p, at, len);
}

static int on_hvalue(llhttp_t *h, const char *at, size_t len) {
  proxy_t *p = h->data;
  if (!p->in_value) {
    p->in_value = true;
    p->hoff[p->nh - 1][2] = (uint32_t)p->hlen;
  }
  p->hoff[p->nh - 1][3] += (uint32_t)len;
  return hb_add(p, at, len);
}

static int on_headers_complete(llhttp_t *h) {
  proxy_t *p = h->data;
  int status = h->status_code;
  if (status < 200 && status != 101) {
    p->nh = 0; /* interim response: wait for the final one */
    p->hlen = 0;
    p->in_value = false;
    return 0;
  }
  nghttp2_nv nv[128];
  size_t n = 0;
  for (unsigned i = 0; i < p->nh; i++) {
    char *name = p->hbuf + p->hoff[i][0];
    size_t nl = p->hoff[i][1];
    if (hop_by_hop(name, nl))
      continue;
    for (size_t k = 0; k < nl; k++)
      name[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
    nv[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)p->hbuf + p->hoff[i][2], nl, p->hoff[i][3],
                           NGHTTP2_NV_FLAG_NONE};
  }
  if (status == 101) {
    p_fail(p, 502, "upgrade is not supported over HTTP/2");
    return -1;
  }
  if (h2r_strm_respond(p->client.s_, status, nv, n) != 0)
    return -1;
  p->head_sent = true;
  return p->head_req ? 1 : 0;
}

static int on_body(llhttp_t *h, const char *at, size_t len) {
  proxy_t *p = h->data;
  return p_send(p, &p->client, at, len, NULL, 0, NULL, 0) == 0 ? 0 : -1;
}

static void client_shut(h2rev_shutdown_t *req, int status) {
  proxy_t *p = req->data;
  (void)status;
  if (p->client_open) {
    p->client_open = false;
    h2rev_stream_close(&p->client, p_closed);
  }
}

static void up_shut(h2rev_shutdown_t *req, int status) {
  proxy_t *p = req->data;
  p->up_shut_done = true;
  if (status != 0 || p->up_eof)
    p_close_up(p);
}

static void linger_done(uv_timer_t *t) {
  p_close_up(t->data);
}

/* The response is complete. Both directions of the reverse connection end
 * with END_STREAM (a reset would count against the peer's reset limits), and
 * only after the response: a Go listener cancels a request whose client
 * half-closes early. */
static int on_message_complete(llhttp_t *h) {
  proxy_t *p = h->data;
  if (!p->head_sent)
    return 0;
  p->done = true;
  p->sh.data = p;
  if (h2rev_stream_shutdown(&p->sh, &p->client, client_shut) != 0) {
    p_finish(p);
    return HPE_PAUSED;
  }
  p->up_sh.data = p;
  if (h2rev_stream_shutdown(&p->up_sh, &p->up, up_shut) != 0)
    p_close_up(p);
  else if (!p->up_eof)
    uv_timer_start(&p->linger, linger_done, 5000, 0);
  return HPE_PAUSED;
}

/* ------------------------------------------------------------- flows */

static void up_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  proxy_t *p = s->data;
  (void)sz;
  *buf = uv_buf_init(p->rbuf, sizeof(p->rbuf));
}

static void up_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  proxy_t *p = s->data;
  if (n == UV_EOF)
    p->up_eof = true;
  if (p->done) {
    if (n < 0 && (n != UV_EOF || p->up_shut_done))
      p_close_up(p);
    return;
  }
  if (n == 0)
    return;
  if (n < 0) {
    if (n == UV_EOF && llhttp_finish(&p->parser) == HPE_OK && p->done)
      return;
    if (n == UV_EOF && p->head_sent && !p->done && llhttp_message_needs_eof(&p->parser)) {
      on_message_complete(&p->parser);
      return;
    }
    char why[160];
    snprintf(why, sizeof(why), "%s (%s)",
             p->head_sent ? "listener closed the response early" : "listener closed",
             h2rev_err_name((int)n));
    p_fail(p, 502, why);
    return;
  }
  llhttp_errno_t e = llhttp_execute(&p->parser, buf->base, (size_t)n);
  if (e != HPE_OK && e != HPE_PAUSED) {
    char why[160];
    snprintf(why, sizeof(why), "bad response from listener: %s", llhttp_errno_name(e));
    p_fail(p, 502, why);
  }
}

static void client_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s;
  pwrite_t *w = malloc(sizeof(*w) + sz);
  *buf = w != NULL ? uv_buf_init(w->data, (unsigned)sz) : uv_buf_init(NULL, 0);
}

static void client_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void body_wrote(h2rev_write_t *req, int status) {
  pwrite_t *w = H2R_CONTAINER_OF(req, pwrite_t, w);
  proxy_t *p = w->p;
  free(w);
  if (status == 0 && p->client_open && h2rev_stream_write_queue_size(&p->up) < UP_HIGH_WATER / 2)
    h2rev_stream_read_start(&p->client, client_alloc, client_read);
}

static void client_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  proxy_t *p = s->data;
  pwrite_t *w = buf->base != NULL ? H2R_CONTAINER_OF(buf->base, pwrite_t, data) : NULL;
  if (n <= 0) {
    free(w);
    if (n == 0)
      return;
    if (n == UV_EOF) {
      h2rev_stream_read_stop(s);
      if (p->chunked_req && p->up_open)
        p_send(p, &p->up, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
      return;
    }
    H2R_INFO(p->log, "proxy %s: client went away: %s", p->id, h2rev_strerror((int)n));
    p_finish(p);
    return;
  }
  if (!p->up_open) {
    free(w);
    return;
  }
  if (p->chunked_req) {
    char size[24];
    int sl = snprintf(size, sizeof(size), "%zx\r\n", (size_t)n);
    p_send_cb(p, &p->up, body_wrote, size, (size_t)sl, buf->base, (size_t)n, "\r\n", 2);
    free(w);
  } else {
    w->p = p;
    w->len = (size_t)n;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (h2rev_stream_write(&w->w, &p->up, &b, 1, body_wrote) != 0)
      free(w);
  }
  if (h2rev_stream_write_queue_size(&p->up) >= UP_HIGH_WATER)
    h2rev_stream_read_stop(s);
}

/* ---------------------------------------------------------- request */

static bool valid_content_length(const char *v) {
  if (*v == '\0')
    return false;
  for (const char *q = v; *q; q++)
    if (*q < '0' || *q > '9')
      return false;
  return strlen(v) <= 18;
}

/* Builds the HTTP/1.1 request head; returns NULL (with *status) when the
 * request cannot be translated safely. */
static char *build_head(proxy_t *p, h2r_strm_t *st, const char *prefix, size_t prefixlen,
                        const char *rest, int *status) {
  const char *method = h2r_strm_header(st, ":method", NULL);
  const char *authority = h2r_strm_header(st, ":authority", NULL);
  const char *scheme = h2r_strm_header(st, ":scheme", NULL);
  if (method == NULL) {
    *status = 400;
    return NULL;
  }
  p->head_req = strcmp(method, "HEAD") == 0;
  size_t cap = 512 + st->hlen * 2 + strlen(rest) + prefixlen + 128;
  char *h = malloc(cap);
  if (h == NULL) {
    *status = 503;
    return NULL;
  }
  size_t o = (size_t)snprintf(h, cap, "%s %s%s HTTP/1.1\r\nHost: %s\r\n", method,
                              rest[0] == '/' ? "" : "/", rest, p->id);
  const char *cl = NULL;
  const char *xff = NULL;
  for (unsigned i = 0; i < st->nhdrs; i++) {
    const char *name = st->hbuf + st->hdrs[i].name;
    const char *value = st->hbuf + st->hdrs[i].value;
    size_t nl = st->hdrs[i].namelen;
    if (name[0] == ':' || strcmp(name, "host") == 0)
      continue;
    if (strcmp(name, "content-length") == 0) {
      if (!valid_content_length(value) || (cl != NULL && strcmp(cl, value) != 0)) {
        *status = 400;
        free(h);
        return NULL;
      }
      if (cl != NULL)
        continue;
      cl = value;
    }
    if (strcmp(name, "te") == 0 && strcmp(value, "trailers") == 0) {
      /* the only TE HTTP/2 allows; harmless to pass */
    } else if (hop_by_hop(name, nl)) {
      continue;
    }
    if (strcmp(name, "x-forwarded-for") == 0) {
      xff = value;
      continue;
    }
    if (strpbrk(value, "\r\n") != NULL || memchr(value, '\0', st->hdrs[i].valuelen) != NULL) {
      *status = 400;
      free(h);
      return NULL;
    }
    o += (size_t)snprintf(h + o, cap - o, "%s: %s\r\n", name, value);
  }
  char ip[64];
  snprintf(ip, sizeof(ip), "%s", st->sess->x.peer);
  char *colon = strrchr(ip, ':');
  if (colon != NULL)
    *colon = '\0';
  o += (size_t)snprintf(h + o, cap - o,
                        "X-Forwarded-For: %s%s%s\r\nX-Forwarded-Proto: %s\r\n"
                        "X-Forwarded-Host: %s\r\nX-Forwarded-Prefix: %.*s\r\n",
                        xff ? xff : "", xff ? ", " : "", ip, scheme ? scheme : "https",
                        authority ? authority : "", (int)prefixlen, prefix);
  bool no_body = (st->flags & H2R_F_EOF) && st->rq_bytes == 0;
  if (cl == NULL && !no_body) {
    p->chunked_req = true;
    o += (size_t)snprintf(h + o, cap - o, "Transfer-Encoding: chunked\r\n");
  }
  o += (size_t)snprintf(h + o, cap - o, "Connection: close\r\n\r\n");
  return h;
}

static void dialed(h2rev_dial_t *req, int status) {
  proxy_t *p = req->data;
  if (status != 0) {
    int code = status == UV_ETIMEDOUT ? 504 : 502;
    char why[200];
    snprintf(why, sizeof(why), "listener %s: %s", p->id, h2rev_dial_strerror(req));
    p_fail(p, code, why);
    return;
  }
  p->up_open = true;
  p->closes++;
  if (!p->client_open) {
    p_finish(p);
    return;
  }
  if (p_send(p, &p->up, p->reqhead, strlen(p->reqhead), NULL, 0, NULL, 0) != 0) {
    p_fail(p, 502, "cannot write to the listener");
    return;
  }
  h2rev_stream_read_start(&p->up, up_alloc, up_read);
  h2rev_stream_read_start(&p->client, client_alloc, client_read);
}

void h2r_proxy_serve(h2rev_dialer_t *dialer, h2r_strm_t *st, const char *prefix, size_t prefixlen,
                     const char *id, const char *rest, const h2rev_logger_t *log) {
  proxy_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    h2r_strm_reject(st, 503, "out of memory\n");
    return;
  }
  p->log = log;
  snprintf(p->id, sizeof(p->id), "%s", id);
  int status = 0;
  p->reqhead = build_head(p, st, prefix, prefixlen, rest, &status);
  if (p->reqhead == NULL) {
    H2R_WARN(log, "proxy %s: request refused (%d)", id, status);
    h2r_strm_reject(st, status, status == 400 ? "bad request\n" : "unavailable\n");
    free(p);
    return;
  }
  p->client.data = p->up.data = p;
  p->dial.data = p;
  h2r_strm_attach(st, &p->client);
  p->client_open = true;
  uv_timer_init(dialer->loop, &p->linger);
  p->linger.data = p;
  p->timer_open = true;
  p->closes = 2; /* the client stream and the timer; the reverse stream adds one */
  llhttp_settings_init(&p->settings);
  p->settings.on_header_field = on_hfield;
  p->settings.on_header_value = on_hvalue;
  p->settings.on_headers_complete = on_headers_complete;
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  llhttp_init(&p->parser, HTTP_RESPONSE, &p->settings);
  p->parser.data = p;
  int r = h2rev_dial(&p->dial, dialer, id, &p->up, 0, dialed);
  if (r != 0) {
    p_fail(p, 502, "invalid id");
  }
}
