/*
 * The HTTP/1.1 request head on its way through the tunnel: parsed as the
 * dialer's HTTP/1.1 server parses it (llhttp into an h2r_hbuf_t, then the
 * fields on_headers_complete in http1.c and mount_h1 in dialer.c derive),
 * rebuilt by the proxy (h2r_proxy_head: proxy.c's build_head), rewritten by
 * the listener (h2r_upstream_head: upstream.c's on_headers_complete). What
 * reaches the upstream must parse strictly, with the client's method, one
 * Host and at most one framing header (exactly one when the client's
 * request has a body): anything else is a request smuggled or mangled
 * between two parsers, and aborts.
 *
 * Input: one byte of flags (FL_*), then the client's bytes.
 */
#include "control.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
  FL_KEEP_HOST = 1 << 0, /* the upstream keeps the dialer's Host */
  FL_HTTPS = 1 << 1,     /* the client came over TLS */
  FL_BASE = 1 << 2,      /* the dialer's base path is BASE, not "" */
  FL_UPATH = 1 << 3,     /* the upstream URL has the path UPATH */
};
#define BASE               "/base"
#define UPATH              "/up"
#define PEER               "192.0.2.7:40000"
#define UPSTREAM_AUTHORITY "127.0.0.1:8080"
/* http1.c's copies of the URL and the Host value (431 beyond). */
#define URL_MAX  8192
#define AUTH_MAX 512
/* dialer.c's buffers for the id and the rest of the path. */
#define ID_MAX 160

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz-h1head: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);        \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

/* ------------------------------------------------- the client's request */

typedef struct client {
  h2r_hbuf_t hb;
  bool done;     /* on_headers_complete ran */
  int method;    /* llhttp_method_t */
  bool chunked;  /* http1.c: a Transfer-Encoding header */
  bool has_cl;   /* http1.c: a Content-Length header */
  bool upgrade;  /* llhttp_get_upgrade */
  bool has_body; /* llhttp's framing: chunked or a Content-Length > 0 */
  uint64_t content_length;
} client_t;

static int c_url(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_url(&((client_t *)h->data)->hb, at, len);
}
static int c_field(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_field(&((client_t *)h->data)->hb, at, len);
}
static int c_value(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_value(&((client_t *)h->data)->hb, at, len);
}
static int c_value_done(llhttp_t *h) {
  return h2r_hbuf_value_done(&((client_t *)h->data)->hb);
}

static bool kv_is(const h2r_kv_t *kv, const char *name) {
  return kv->nl == strlen(name) && strncasecmp(kv->name, name, kv->nl) == 0;
}

static int c_headers_complete(llhttp_t *h) {
  client_t *c = h->data;
  c->done = true;
  c->method = llhttp_get_method(h);
  c->upgrade = llhttp_get_upgrade(h) != 0;
  c->has_body = (h->flags & F_CHUNKED) || ((h->flags & F_CONTENT_LENGTH) && h->content_length > 0);
  c->content_length = h->content_length;
  for (unsigned i = 0; i < c->hb.n; i++) {
    h2r_kv_t kv = h2r_hbuf_kv(&c->hb, i);
    c->chunked |= kv_is(&kv, "transfer-encoding");
    c->has_cl |= kv_is(&kv, "content-length");
  }
  /* The dialer acts here, before llhttp has judged the framing (http1.c):
   * whatever llhttp says after this, the head has been built. */
  return HPE_PAUSED;
}

/* ---------------------------------------------------- what reaches the upstream */

typedef struct final {
  h2r_hbuf_t hb;
  bool done;
  int method;
  bool chunked_flag;
} final_t;

static int f_url(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_url(&((final_t *)h->data)->hb, at, len);
}
static int f_field(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_field(&((final_t *)h->data)->hb, at, len);
}
static int f_value(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_value(&((final_t *)h->data)->hb, at, len);
}
static int f_value_done(llhttp_t *h) {
  return h2r_hbuf_value_done(&((final_t *)h->data)->hb);
}
static int f_headers_complete(llhttp_t *h) {
  final_t *f = h->data;
  f->done = true;
  f->method = llhttp_get_method(h);
  f->chunked_flag = (h->flags & F_CHUNKED) != 0;
  return 0;
}

static void check_final(const char *head, size_t len, const client_t *c,
                        const h2rev_http_req_t *rq) {
  final_t f = {0};
  llhttp_settings_t st;
  llhttp_settings_init(&st);
  st.on_url = f_url;
  st.on_header_field = f_field;
  st.on_header_value = f_value;
  st.on_header_value_complete = f_value_done;
  st.on_headers_complete = f_headers_complete;
  llhttp_t p;
  llhttp_init(&p, HTTP_REQUEST, &st); /* strict: no lenient flag */
  p.data = &f;
  llhttp_errno_t e = llhttp_execute(&p, head, len);
  if (e != HPE_OK && e != HPE_PAUSED_UPGRADE) {
    fprintf(stderr, "fuzz-h1head: the upstream's head does not parse: %s (%s)\n%.*s\n",
            llhttp_errno_name(e), llhttp_get_error_reason(&p), (int)len, head);
    abort();
  }
  CHECK(f.done);
  CHECK(f.method == c->method);
  CHECK(f.hb.url_len > 0 && f.hb.buf[0] == '/');
  unsigned cl = 0, te = 0, host = 0;
  for (unsigned i = 0; i < f.hb.n; i++) {
    h2r_kv_t kv = h2r_hbuf_kv(&f.hb, i);
    if (kv_is(&kv, "content-length")) {
      cl++;
      CHECK(c->has_cl); /* a length of the client's own, never made up */
    }
    if (kv_is(&kv, "transfer-encoding")) {
      te++;
      CHECK(kv.vl == 7 && strncasecmp(kv.value, "chunked", 7) == 0);
    }
    host += kv_is(&kv, "host");
  }
  CHECK(cl + te <= 1);
  CHECK(host == 1);
  if (c->has_body && !rq->upgrade)
    CHECK(cl + te == 1);
  if (cl == 1 && c->has_cl && !c->chunked)
    CHECK(p.content_length == c->content_length);
  h2r_hbuf_free(&f.hb);
}

/* ------------------------------------------------------------ the path */

/* proxy.c (h2rev_dialer_proxy), mounted at <base>/proxy:
 * <base>/proxy/<id>[<rest>]. */
static bool to_target(const char *url, const char *route, char *id, const char **rest,
                      size_t *prefixlen) {
  size_t rl = strlen(route), ul = strlen(url);
  if (!(ul > rl && memcmp(url, route, rl) == 0 && url[rl] == '/'))
    return false;
  const char *p = url + rl + 1;
  size_t idl = strcspn(p, "/?");
  if (idl == 0 || idl >= ID_MAX || !h2r_id_valid(p, idl))
    return false;
  memcpy(id, p, idl);
  id[idl] = '\0';
  *rest = p + idl;
  *prefixlen = (size_t)(p + idl - url);
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  unsigned fl = data[0];
  const char *in = (const char *)data + 1;
  size_t n = size - 1;

  client_t c = {0};
  llhttp_settings_t st;
  llhttp_settings_init(&st);
  st.on_url = c_url;
  st.on_header_field = c_field;
  st.on_header_value = c_value;
  st.on_header_value_complete = c_value_done;
  st.on_headers_complete = c_headers_complete;
  llhttp_t p;
  llhttp_init(&p, HTTP_REQUEST, &st);
  p.data = &c;
  llhttp_errno_t e = llhttp_execute(&p, in, n);
  if (e != HPE_PAUSED || !c.done)
    goto out;

  h2r_kv_t kv[H2R_MAX_HEADERS];
  const char *authority = "";
  size_t alen = 0;
  for (unsigned i = 0; i < c.hb.n; i++) {
    kv[i] = h2r_hbuf_kv(&c.hb, i);
    if (kv_is(&kv[i], "host"))
      authority = kv[i].value, alen = kv[i].vl;
  }
  static char url[URL_MAX], auth[AUTH_MAX], id[ID_MAX], route[64];
  static char names[H2R_MAX_HEADERS][256], values[H2R_MAX_HEADERS][URL_MAX];
  static h2rev_header_t hs[H2R_MAX_HEADERS];
  if (c.hb.url_len >= sizeof(url) || alen >= sizeof(auth))
    goto out; /* the harness's own bounds */
  memcpy(url, c.hb.buf, c.hb.url_len);
  url[c.hb.url_len] = '\0';
  memcpy(auth, authority, alen);
  auth[alen] = '\0';
  /* The request as server.c hands it to a handler: names in lower case. */
  for (unsigned i = 0; i < c.hb.n; i++) {
    if (kv[i].nl >= sizeof(names[0]) || kv[i].vl >= sizeof(values[0]))
      goto out;
    for (size_t k = 0; k < kv[i].nl; k++)
      names[i][k] =
          (char)(kv[i].name[k] >= 'A' && kv[i].name[k] <= 'Z' ? kv[i].name[k] + 32 : kv[i].name[k]);
    names[i][kv[i].nl] = '\0';
    memcpy(values[i], kv[i].value, kv[i].vl);
    values[i][kv[i].vl] = '\0';
    hs[i] = (h2rev_header_t){names[i], values[i]};
  }
  h2rev_http_req_t rq = {
      .method = llhttp_method_name((llhttp_method_t)c.method),
      .path = url,
      .authority = auth,
      .scheme = (fl & FL_HTTPS) ? "https" : "http",
      .peer = PEER,
      .http_major = 1,
      .http_minor = 1,
      .content_length = c.has_cl    ? (int64_t)c.content_length
                        : c.chunked ? -1
                                    : 0,
      .headers = hs,
      .nheaders = c.hb.n,
      .upgrade = c.upgrade,
  };
  snprintf(route, sizeof(route), "%s/proxy", (fl & FL_BASE) ? BASE : "");
  const char *rest;
  size_t prefixlen;
  if (!to_target(url, route, id, &rest, &prefixlen))
    goto out; /* 404 or 400 */

  size_t hl = 0;
  int status = 0;
  char *head = h2r_proxy_head(&rq, url, prefixlen, id, rest, &hl, &status);
  if (head == NULL) {
    CHECK(status == 400 || status == 431 || status == 503);
    goto out;
  }
  size_t fl2 = 0;
  char *final = h2r_upstream_head(head, hl, (fl & FL_UPATH) ? UPATH : "", UPSTREAM_AUTHORITY,
                                  (fl & FL_KEEP_HOST) != 0, &fl2);
  if (final == NULL) {
    /* The listener refuses a head of the dialer's only past its limits
     * (H2R_MAX_HEADERS, H2R_MAX_HEAD), which the dialer's additions can
     * cross: issue 12 §6 ("limits must agree end to end"). */
    llhttp_t hp;
    llhttp_settings_t hs;
    llhttp_settings_init(&hs);
    llhttp_init(&hp, HTTP_REQUEST, &hs);
    llhttp_errno_t he = llhttp_execute(&hp, head, hl);
    unsigned lines = 0;
    for (size_t i = 0; i < hl; i++)
      lines += head[i] == '\n';
    if ((he != HPE_OK && he != HPE_PAUSED_UPGRADE) ||
        (lines < H2R_MAX_HEADERS && hl < H2R_MAX_HEAD)) {
      fprintf(stderr, "fuzz-h1head: the listener refuses the dialer's head (%s):\n%.*s\n",
              llhttp_errno_name(he), (int)hl, head);
      abort();
    }
  } else {
    check_final(final, fl2, &c, &rq);
  }
  free(final);
  free(head);
out:
  h2r_hbuf_free(&c.hb);
  return 0;
}
