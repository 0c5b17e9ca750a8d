/*
 * The upstream's response on its way back: the fake upstream of an
 * in-process tunnel (rig.h) answers with the input; the listener follows it
 * (upstream.c), the dialer parses it and rebuilds it for its client
 * (proxy.c, http1.c for an HTTP/1.1 client, stream.c for an HTTP/2 one).
 *
 * What the client gets must never be worse than what was sent: for an
 * HTTP/1.1 client, bytes that parse strictly as one response and nothing
 * after it (a response cut short is fine: the dialer closes instead of
 * making it look complete); for an HTTP/2 client, frames nghttp2 accepts.
 * When the upstream's response is complete and well-formed, the client
 * gets it complete, with its status and body. Anything else aborts.
 *
 * Input: one byte of flags (FL_*), then the upstream's bytes.
 */
#define _GNU_SOURCE /* memmem */
#include "rig.h"

#include <llhttp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  FL_KEEP_OPEN = 1 << 0, /* the upstream keeps its connection after answering */
  FL_HEAD = 1 << 1,      /* the client asks HEAD, else GET */
  FL_BODY = 1 << 2,      /* POST with a body */
  FL_H2 = 1 << 3,        /* the client speaks HTTP/2 */
};
#define LIMIT_MS 100 /* past it, the exchange is cut and not judged */
#define PATH     "/proxy/" RIG_ID "/r"
#define BODY     "hello"
#define MAX_KEEP (1u << 20) /* client bytes kept for the checks */

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz-response: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

typedef struct buf {
  char *p;
  size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const void *p, size_t n) {
  if (n > MAX_KEEP - b->len)
    n = MAX_KEEP - b->len;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n)
      cap *= 2;
    char *q = realloc(b->p, cap);
    if (q == NULL)
      abort();
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
}

/* ------------------------------------------------ a response, parsed */

typedef struct resp {
  bool head_req;
  int status; /* of the first final response */
  bool done;  /* that response is complete */
  bool after; /* bytes after it */
  buf_t body; /* its body */
  bool in_final;
  bool by_eof;      /* complete only at the end of the connection (no length, not chunked) */
  bool under_100;   /* a status under 100 */
  bool empty_name;  /* a header line with an empty name */
  bool bad_name;    /* a name that is no token (RFC 9110 5.1), whitespace before the colon aside */
  bool named;       /* the current header line has a name */
  char name[16384]; /* the current name (longer: the head is over any limit) */
  size_t nl;        /* and its length */
  llhttp_errno_t err;
} resp_t;

static int r_headers(llhttp_t *h) {
  resp_t *r = h->data;
  r->under_100 |= h->status_code < 100;
  if (h->status_code >= 200 && r->status == 0) {
    r->status = h->status_code;
    r->in_final = true;
  }
  return r->head_req ? 1 : 0;
}

static int r_field(llhttp_t *h, const char *at, size_t n) {
  resp_t *r = h->data;
  r->named |= n > 0;
  for (size_t i = 0; i < n; i++, r->nl++)
    if (r->nl < sizeof(r->name))
      r->name[r->nl] = at[i];
  return 0;
}

static bool tchar(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int r_value_done(llhttp_t *h) {
  resp_t *r = h->data;
  r->empty_name |= !r->named;
  /* A proxy drops whitespace before the colon (RFC 9112 5.1); any other
   * byte that is no tchar makes the field one the dialer refuses (502). */
  size_t n = r->nl < sizeof(r->name) ? r->nl : sizeof(r->name);
  while (n > 0 && (r->name[n - 1] == ' ' || r->name[n - 1] == '\t'))
    n--;
  /* The final response's head only: the dialer passes no interim
   * response's fields and no trailers. */
  bool final_head = h->status_code >= 200 && r->status == 0;
  for (size_t i = 0; final_head && i < n; i++)
    r->bad_name |= !tchar(r->name[i]);
  r->named = false;
  r->nl = 0;
  return 0;
}

static int r_body(llhttp_t *h, const char *at, size_t n) {
  resp_t *r = h->data;
  if (r->in_final)
    buf_add(&r->body, at, n);
  return 0;
}

static int r_complete(llhttp_t *h) {
  resp_t *r = h->data;
  if (!r->in_final)
    return 0; /* an interim response */
  r->in_final = false;
  r->done = true;
  return HPE_PAUSED;
}

/* Parses p as the response to the request (strict llhttp); eof: the
 * connection ended after p. */
static void parse(resp_t *r, const char *p, size_t n, bool eof) {
  llhttp_settings_t st;
  llhttp_settings_init(&st);
  st.on_headers_complete = r_headers;
  st.on_header_field = r_field;
  st.on_header_value_complete = r_value_done;
  st.on_body = r_body;
  st.on_message_complete = r_complete;
  llhttp_t h;
  llhttp_init(&h, HTTP_RESPONSE, &st);
  h.data = r;
  r->err = n > 0 ? llhttp_execute(&h, p, n) : HPE_OK; /* llhttp does p + 0 */
  if (r->err == HPE_PAUSED) {
    r->after = llhttp_get_error_pos(&h) != p + n;
    r->err = HPE_OK;
  } else if (r->err == HPE_OK && eof && !r->done) {
    llhttp_errno_t e = llhttp_finish(&h);
    (void)e; /* cut short: an error here is no error of the sender's */
    r->by_eof = r->done;
  }
}

/* --------------------------------------------------- HTTP/1.1 client */

static bool h1_read(void *arg, const char *p, size_t n) {
  buf_add(arg, p, n);
  return false; /* Connection: close: the dialer ends it */
}

static const rig_client_ops h1_ops = {h1_read};

/* ----------------------------------------------------- HTTP/2 client */

typedef struct h2c {
  nghttp2_session *ng;
  int status;
  bool closed, complete, invalid;
  uint32_t close_code;
  buf_t body;
} h2c_t;

static int h2_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *arg) {
  (void)s, (void)f, (void)flags;
  h2c_t *c = arg;
  if (nl == 7 && memcmp(name, ":status", 7) == 0 && vl == 3)
    c->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
  return 0;
}

static int h2_invalid_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                             size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *arg) {
  (void)s, (void)f, (void)flags;
  fprintf(stderr, "fuzz-response: invalid header from the dialer: %.*s: %.*s\n", (int)nl, name,
          (int)vl, value);
  ((h2c_t *)arg)->invalid = true;
  return 0;
}

static int h2_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *p, size_t n,
                   void *arg) {
  (void)s, (void)flags, (void)id;
  buf_add(&((h2c_t *)arg)->body, p, n);
  return 0;
}

static int h2_frame(nghttp2_session *s, const nghttp2_frame *f, void *arg) {
  (void)s;
  h2c_t *c = arg;
  if (f->hd.stream_id == 1 && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
      (f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS))
    c->complete = true;
  return 0;
}

static int h2_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int err, void *arg) {
  (void)s;
  fprintf(stderr, "fuzz-response: invalid frame from the dialer: type %u: %s\n", f->hd.type,
          nghttp2_strerror(err));
  ((h2c_t *)arg)->invalid = true;
  return 0;
}

static int h2_close(nghttp2_session *s, int32_t id, uint32_t code, void *arg) {
  (void)s;
  h2c_t *c = arg;
  if (id == 1) {
    c->closed = true;
    c->close_code = code;
  }
  return 0;
}

static void h2_flush(h2c_t *c) {
  const uint8_t *p;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(c->ng, &p)) > 0)
    rig_write(p, (size_t)n);
}

static bool h2_read(void *arg, const char *p, size_t n) {
  h2c_t *c = arg;
  ssize_t r = nghttp2_session_mem_recv(c->ng, (const uint8_t *)p, n);
  if (r < 0) {
    fprintf(stderr, "fuzz-response: the dialer's frames: %s\n", nghttp2_strerror((int)r));
    c->invalid = true;
    return true;
  }
  h2_flush(c);
  return c->closed;
}

static const rig_client_ops h2_ops = {h2_read};

static ssize_t h2_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *arg) {
  (void)s, (void)id, (void)src, (void)arg;
  size_t n = sizeof(BODY) - 1 < len ? sizeof(BODY) - 1 : len;
  memcpy(buf, BODY, n);
  *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* An HTTP/2 exchange: fills r from what the client got; false when it
 * ran out of time. */
static bool h2_exchange(unsigned fl, resp_t *r) {
  h2c_t c = {0};
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, h2_header);
  nghttp2_session_callbacks_set_on_invalid_header_callback(cbs, h2_invalid_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_data);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_frame);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, h2_invalid_frame);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_close);
  nghttp2_session_client_new(&c.ng, cbs, &c);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (1u << 31) - 1}};
  nghttp2_submit_settings(c.ng, NGHTTP2_FLAG_NONE, iv, 1);
  nghttp2_session_set_local_window_size(c.ng, NGHTTP2_FLAG_NONE, 0, (1u << 31) - 1);
  const char *method = (fl & FL_BODY) ? "POST" : (fl & FL_HEAD) ? "HEAD" : "GET";
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
  nghttp2_nv nva[] = {NV(":method", method), NV(":scheme", "http"), NV(":path", PATH),
                      NV(":authority", "fuzz")};
  nghttp2_data_provider body = {.read_callback = h2_body};
  nghttp2_submit_request(c.ng, NULL, nva, 4, (fl & FL_BODY) ? &body : NULL, NULL);
  const uint8_t *p;
  buf_t out = {0};
  ssize_t n;
  while ((n = nghttp2_session_mem_send(c.ng, &p)) > 0)
    buf_add(&out, p, (size_t)n);
  uv_buf_t b = uv_buf_init(out.p, (unsigned)out.len);
  bool ended = rig_exchange(&b, 1, 0, LIMIT_MS, &h2_ops, &c);
  CHECK(!c.invalid);
  r->status = c.status;
  r->done = c.closed && c.close_code == NGHTTP2_NO_ERROR && c.complete;
  r->body = c.body;
  nghttp2_session_del(c.ng);
  free(out.p);
  return ended;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  unsigned fl = data[0];
  if (fl & FL_BODY)
    fl &= ~FL_HEAD;
  const char *in = (const char *)data + 1;
  size_t n = size - 1;
  rig_set_response(in, n, !(fl & FL_KEEP_OPEN));

  resp_t want = {.head_req = (fl & FL_HEAD) != 0};
  parse(&want, in, n, !(fl & FL_KEEP_OPEN));
  /* What the dialer must refuse (502): a status under 100, a header with
   * no name or a name that is no token. */
  bool refused = want.under_100 || want.empty_name || want.bad_name;
  bool want_whole = want.err == HPE_OK && want.done && want.status != 101 && !refused;

  resp_t got = {.head_req = want.head_req};
  bool ended;
  if (fl & FL_H2) {
    ended = h2_exchange(fl, &got);
  } else {
    static const char get[] = "GET " PATH " HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
    static const char head[] = "HEAD " PATH " HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
    static const char post[] = "POST " PATH " HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
                               "Content-Length: 5\r\n\r\n" BODY;
    const char *rq = (fl & FL_BODY) ? post : (fl & FL_HEAD) ? head : get;
    uv_buf_t b = uv_buf_init((char *)rq, (unsigned)strlen(rq));
    buf_t bytes = {0};
    ended = rig_exchange(&b, 1, 0, LIMIT_MS, &h1_ops, &bytes);
    parse(&got, bytes.p, bytes.len, ended);
    if (got.err != HPE_OK || got.after) {
      fprintf(stderr, "fuzz-response: the client got (%s%s):\n%.*s\n", llhttp_errno_name(got.err),
              got.after ? ", bytes after the response" : "", (int)bytes.len, bytes.p);
      abort();
    }
    free(bytes.p);
  }
  if (refused && ended && got.status != 0)
    CHECK(got.status == 502);
  /* A 204 or 304 has no body whatever its fields say (RFC 9110 6.4.1): what
   * an upstream sends after its head is not passed on (it would be read as
   * the start of the next response). */
  if (want.status == 204 || want.status == 304)
    want.body.len = 0;
  if (want_whole && ended) {
    if (!got.done || got.status != want.status || got.body.len != want.body.len ||
        (got.body.len > 0 && memcmp(got.body.p, want.body.p, got.body.len) != 0)) {
      fprintf(stderr,
              "fuzz-response: sent %d with %zu body bytes (complete), the client got %d with %zu "
              "(%s)\n",
              want.status, want.body.len, got.status, got.body.len,
              got.done ? "complete" : "cut short");
      abort();
    }
  }
  free(want.body.p);
  free(got.body.p);
  return 0;
}
