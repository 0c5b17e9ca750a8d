/* Dialer and listener on loopback over TLS: echo through reverse connections,
 * many at once, warm spares, failures (unknown id, timeout, pickup-failed,
 * connection loss, id taken, authorization, malformed control streams),
 * reconnection, and the wire format as the Go implementation sees it. Fake
 * listeners and a fake dialer are raw HTTP/2 sessions. */
#include "control.h"
#include "h2util.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char conn_ready_line[] = "{\"command\":\"conn-ready\"}\n";

/* ------------------------------------------------------------ waiting */

typedef int (*cond_fn)(void *arg);

static void on_cond_deadline(uv_timer_t *t) {
  *(int *)t->data = 1;
}

/* Runs the loop until fn(arg) holds; fails the test after timeout_ms. */
static void run_cond(uv_loop_t *loop, cond_fn fn, void *arg, unsigned timeout_ms,
                     const char *what) {
  uv_timer_t t;
  int expired = 0;
  uv_timer_init(loop, &t);
  t.data = &expired;
  uv_timer_start(&t, on_cond_deadline, timeout_ms, 0);
  while (!fn(arg) && !expired)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  if (!fn(arg))
    test_fail(__FILE__, __LINE__, "%s: not reached within %u ms", what, timeout_ms);
}

/* Runs the loop for ms, whatever happens. */
static void run_for(uv_loop_t *loop, unsigned ms) {
  uv_timer_t t;
  int expired = 0;
  uv_timer_init(loop, &t);
  t.data = &expired;
  uv_timer_start(&t, on_cond_deadline, ms, 0);
  while (!expired)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static double now_ms(void) {
  return (double)uv_hrtime() / 1e6;
}

static const char *ename(int err) {
  return err == 0 ? "0" : h2rev_err_name(err);
}

/* ----------------------------------------------------- the environment */

typedef struct env {
  uv_loop_t loop;
  h2rev_dialer_t d;
  h2rev_dialer_options_t o;
  int port;
  int dialer_open;
  int dialer_closed;
  char ca[512], cert[512], key[512];
} env_t;

/* verify_client for the next dialer_start (the client CA is ca.pem), and
 * the client certificate of the next lis_start (in the test certificates). */
static int next_verify_client;
static int next_stop_on_permanent;
static const char *next_lis_cert;
static unsigned next_lis_max_streams;

static void dialer_start(env_t *e, int port) {
  test_logger(&e->o.log, "dialer");
  ASSERT_OK(h2rev_dialer_init(&e->loop, &e->d, &e->o));
  e->d.data = e;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  h2rev_tls_options_t tls = {.cert_file = e->cert, .key_file = e->key};
  if (next_verify_client) {
    tls.ca_file = e->ca;
    tls.verify_client = next_verify_client;
  }
  ASSERT_OK(h2rev_dialer_listen(&e->d, (struct sockaddr *)&a, &tls));
  struct sockaddr_in b;
  int len = sizeof(b);
  ASSERT_OK(h2rev_dialer_getsockname(&e->d, 0, (struct sockaddr *)&b, &len));
  e->port = ntohs(b.sin_port);
  ASSERT_GT(e->port, 0);
  e->dialer_open = 1;
  e->dialer_closed = 0;
}

/* o may be NULL; base_path defaults to "/base". */
static void env_init(env_t *e, const h2rev_dialer_options_t *o) {
  memset(e, 0, sizeof(*e));
  ASSERT_OK(uv_loop_init(&e->loop));
  test_path(e->ca, sizeof(e->ca), test_certs(), "ca.pem");
  test_path(e->cert, sizeof(e->cert), test_certs(), "server.pem");
  test_path(e->key, sizeof(e->key), test_certs(), "server.key");
  if (o != NULL)
    e->o = *o;
  if (e->o.base_path == NULL)
    e->o.base_path = "/base";
  dialer_start(e, 0);
}

static void dialer_closed_cb(h2rev_dialer_t *d) {
  env_t *e = d->data;
  e->dialer_closed = 1;
}

static void dialer_stop(env_t *e) {
  if (!e->dialer_open)
    return;
  e->dialer_open = 0;
  h2rev_dialer_close(&e->d, dialer_closed_cb);
  run_until(&e->loop, &e->dialer_closed, 5000);
  ASSERT_NULL(e->d.d_);
}

static h2rev_dialer_stats_t stats(env_t *e) {
  h2rev_dialer_stats_t st;
  h2rev_dialer_stats(&e->d, &st);
  return st;
}

/* --------------------------------------------- echo on the listener side */

typedef struct echo {
  h2rev_stream_t s;
  size_t queued;
  int eof;
  h2rev_shutdown_t sh;
} echo_t;

typedef struct ewrite {
  h2rev_write_t w;
  echo_t *e;
  size_t len;
  char data[];
} ewrite_t;

/* Echo streams open now, and the most at once. */
static int echo_open, echo_open_max;

static void echo_closed(h2rev_stream_t *s) {
  echo_open--;
  free(s->data);
}

static void echo_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s;
  ewrite_t *w = malloc(sizeof(*w) + sz);
  ASSERT_NOT_NULL(w);
  *buf = uv_buf_init(w->data, (unsigned)sz);
}

static void echo_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void echo_wrote(h2rev_write_t *req, int status) {
  ewrite_t *w = H2R_CONTAINER_OF(req, ewrite_t, w);
  echo_t *e = w->e;
  e->queued -= w->len;
  free(w);
  if (h2rev_stream_is_closing(&e->s))
    return;
  if (status != 0)
    h2rev_stream_close(&e->s, echo_closed);
  else if (!e->eof && e->queued < (512 << 10))
    h2rev_stream_read_start(&e->s, echo_alloc, echo_read);
}

static void echo_shut(h2rev_shutdown_t *req, int status) {
  (void)status;
  echo_t *e = req->data;
  if (!h2rev_stream_is_closing(&e->s))
    h2rev_stream_close(&e->s, echo_closed);
}

static void echo_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  echo_t *e = s->data;
  if (n <= 0) {
    if (buf->base != NULL)
      free(H2R_CONTAINER_OF(buf->base, ewrite_t, data));
    if (n == 0)
      return;
    if (n == UV_EOF) {
      e->eof = 1;
      e->sh.data = e;
      if (h2rev_stream_shutdown(&e->sh, s, echo_shut) != 0)
        h2rev_stream_close(s, echo_closed);
    } else {
      h2rev_stream_close(s, echo_closed);
    }
    return;
  }
  ewrite_t *w = H2R_CONTAINER_OF(buf->base, ewrite_t, data);
  w->e = e;
  w->len = (size_t)n;
  e->queued += (size_t)n;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
  ASSERT_OK(h2rev_stream_write(&w->w, s, &b, 1, echo_wrote));
  if (e->queued >= (1 << 20))
    h2rev_stream_read_stop(s);
}

/* ------------------------------------------------------ real listener */

typedef struct lis {
  h2rev_listener_t l;
  env_t *e;
  int attached; /* ATTACHED reports */
  int lost;
  int last_err;
  int retrying;
  unsigned last_delay;
  int stop_err;
  int stopped;
  int accepted;
  int closed;
  int open;
} lis_t;

static void lis_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  lis_t *L = l->data;
  if (state == H2REV_LISTENER_ATTACHED)
    L->attached++;
  else if (state == H2REV_LISTENER_LOST)
    L->lost++, L->last_err = err;
  else if (state == H2REV_LISTENER_RETRYING)
    L->retrying++, L->last_delay = delay;
  else if (state == H2REV_LISTENER_STOPPED)
    L->stopped++, L->stop_err = err;
}

static void lis_conn(h2rev_listener_t *l, int status) {
  lis_t *L = l->data;
  ASSERT_OK(status);
  echo_t *e = calloc(1, sizeof(*e));
  ASSERT_NOT_NULL(e);
  e->s.data = e;
  if (h2rev_listener_accept(l, &e->s) != 0) {
    free(e);
    return;
  }
  L->accepted++;
  if (++echo_open > echo_open_max)
    echo_open_max = echo_open;
  ASSERT_OK(h2rev_stream_read_start(&e->s, echo_alloc, echo_read));
}

static void lis_start(lis_t *L, env_t *e, const char *id, unsigned spares,
                      const char *const *headers) {
  memset(L, 0, sizeof(*L));
  L->e = e;
  char url[128];
  snprintf(url, sizeof(url), "https://127.0.0.1:%d/base", e->port);
  h2rev_listener_options_t o = {0};
  o.url = url;
  o.id = id;
  o.tls.ca_file = e->ca;
  char cert[512], key[512], name[64];
  if (next_lis_cert != NULL) {
    snprintf(name, sizeof(name), "%s.pem", next_lis_cert);
    o.tls.cert_file = test_path(cert, sizeof(cert), test_certs(), name);
    snprintf(name, sizeof(name), "%s.key", next_lis_cert);
    o.tls.key_file = test_path(key, sizeof(key), test_certs(), name);
  }
  o.headers = headers;
  o.backoff_min_ms = 50;
  o.backoff_max_ms = 200;
  o.spares = spares;
  o.on_state = lis_state;
  o.stop_on_permanent = next_stop_on_permanent;
  o.max_streams = next_lis_max_streams;
  test_logger(&o.log, id);
  ASSERT_OK(h2rev_listener_init(&e->loop, &L->l, &o));
  L->l.data = L;
  ASSERT_OK(h2rev_listener_start(&L->l, lis_conn));
  L->open = 1;
}

static int lis_attached(void *arg) {
  return ((lis_t *)arg)->attached > 0;
}

static void lis_closed(h2rev_listener_t *l) {
  ((lis_t *)l->data)->closed = 1;
}

static void lis_closed_flag(h2rev_listener_t *l) {
  *(int *)l->data = 1;
}

static void lis_stop(lis_t *L) {
  if (!L->open)
    return;
  L->open = 0;
  h2rev_listener_close(&L->l, lis_closed);
  run_until(&L->e->loop, &L->closed, 5000);
}

/* ------------------------------------------------- dials, dialer side */

static char rxbuf[65536];

typedef struct dclient {
  h2rev_dial_t req;
  h2rev_stream_t s;
  env_t *e;
  const char *data;
  size_t len;
  test_sha_t rx;
  uint64_t nread;
  char head[64]; /* the first bytes read */
  int status;
  int done; /* the dial callback ran */
  int eof, err, closed;
  int wrote, write_status, shut;
  double t0, t1;
  h2rev_write_t w;
  h2rev_shutdown_t sh;
  int *ndone; /* counts closed streams and failed dials */
} dclient_t;

static void dc_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s, (void)sz;
  *buf = uv_buf_init(rxbuf, sizeof(rxbuf));
}

static void dc_closed(h2rev_stream_t *s) {
  dclient_t *c = s->data;
  c->closed = 1;
  if (c->ndone != NULL)
    (*c->ndone)++;
}

static void dc_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  dclient_t *c = s->data;
  if (n > 0) {
    if (c->nread < sizeof(c->head)) {
      size_t k = sizeof(c->head) - (size_t)c->nread;
      memcpy(c->head + c->nread, buf->base, (size_t)n < k ? (size_t)n : k);
    }
    test_sha_update(&c->rx, buf->base, (size_t)n);
    c->nread += (uint64_t)n;
    return;
  }
  if (n == 0)
    return;
  if (n == UV_EOF)
    c->eof = 1;
  else
    c->err = (int)n;
  h2rev_stream_close(s, dc_closed);
}

static void dc_wrote(h2rev_write_t *req, int status) {
  dclient_t *c = req->data;
  c->wrote = 1;
  c->write_status = status;
}

static void dc_shut(h2rev_shutdown_t *req, int status) {
  dclient_t *c = req->data;
  ASSERT_OK(status);
  c->shut = 1;
}

/* Dial done: on success send data (if any) and half-close, read everything. */
static void dc_dialed(h2rev_dial_t *req, int status) {
  dclient_t *c = req->data;
  ASSERT_EQ(c->done, 0);
  c->done = 1;
  c->status = status;
  c->t1 = now_ms();
  if (status != 0) {
    if (c->ndone != NULL)
      (*c->ndone)++;
    return;
  }
  ASSERT_PTR_EQ(req->stream, &c->s);
  ASSERT_OK(h2rev_stream_read_start(&c->s, dc_alloc, dc_read));
  if (c->data == NULL)
    return; /* the test drives it */
  if (c->len > 0) {
    uv_buf_t b = uv_buf_init((char *)c->data, (unsigned)c->len);
    c->w.data = c;
    ASSERT_OK(h2rev_stream_write(&c->w, &c->s, &b, 1, dc_wrote));
  }
  c->sh.data = c;
  ASSERT_OK(h2rev_stream_shutdown(&c->sh, &c->s, dc_shut));
}

static void dc_dial(dclient_t *c, env_t *e, const char *id, const char *data, size_t len,
                    unsigned timeout_ms) {
  int *ndone = c->ndone;
  memset(c, 0, sizeof(*c));
  c->ndone = ndone;
  c->e = e;
  c->data = data;
  c->len = len;
  c->s.data = c;
  c->req.data = c;
  test_sha_init(&c->rx);
  c->t0 = now_ms();
  ASSERT_OK(h2rev_dial(&c->req, &e->d, id, &c->s, timeout_ms, dc_dialed));
  ASSERT_EQ(c->done, 0); /* never inside the call */
}

static int dc_done(void *arg) {
  return ((dclient_t *)arg)->done;
}

static int dc_finished(void *arg) {
  dclient_t *c = arg;
  return c->done && (c->status != 0 || c->closed);
}

static void dc_check_echo(dclient_t *c) {
  unsigned char got[32], want[32];
  test_sha_final(&c->rx, got);
  c->rx.ctx = NULL;
  test_sha256(c->data, c->len, want);
  ASSERT_OK(c->status);
  ASSERT_EQ(c->err, 0);
  ASSERT_EQ(c->eof, 1);
  ASSERT_EQ(c->nread, c->len);
  ASSERT_MEM_EQ(got, want, 32);
  if (c->len > 0) {
    ASSERT_EQ(c->wrote, 1);
    ASSERT_OK(c->write_status);
  }
  ASSERT_EQ(c->shut, 1);
}

/* Frees the hash context of a dial that did not go through dc_check_echo. */
static void dc_free(dclient_t *c) {
  if (c->rx.ctx != NULL) {
    unsigned char x[32];
    test_sha_final(&c->rx, x);
    c->rx.ctx = NULL;
  }
}

/* One echo of len bytes through a reverse connection to id. */
static void echo_through(env_t *e, const char *id, size_t len, uint64_t seed) {
  char *data = malloc(len ? len : 1);
  test_fill_random(data, len, seed);
  dclient_t c = {0};
  dc_dial(&c, e, id, data, len, 5000);
  run_cond(&e->loop, dc_finished, &c, 10000, "echo");
  dc_check_echo(&c);
  free(data);
}

/* -------------------------------------------- fake listener (raw HTTP/2) */

typedef struct fake fake_t;

enum { F_IGNORE, F_PICKUP_FAILED, F_OPEN_DATA };
#define F_MAX_FILLERS 100

typedef struct rstrm {
  h2rev_stream_t s;
  fake_t *f;
  int is_ctl;
  int requested, attached;
  int headers, status;
  size_t early; /* bytes already buffered when the response head arrived */
  int gone, gone_err;
  char rx[8192];
  size_t rxlen, total, scan;
  int eof, err, closed;
  uint64_t first_ka; /* uv_now() at the first keep-alive line, once watching (ka_watch) */
  int ka_watch;
} rstrm_t;

struct fake {
  tclient_t c;
  env_t *e;
  char id[160];
  const char *role;      /* x-h2rev-role of the control request; NULL: none */
  const char *data_role; /* of data requests */
  const char *auth;      /* authorization header; NULL: none */
  int fillers;           /* x-filler-N headers before it */
  int mode;              /* what conn-ready does */
  int conn_ready;
  rstrm_t ctl;
  rstrm_t data[8];
  int ndata;
};

typedef struct fwrite {
  h2rev_write_t w;
  char data[];
} fwrite_t;

static void f_wrote(h2rev_write_t *req, int status) {
  (void)status;
  free(H2R_CONTAINER_OF(req, fwrite_t, w));
}

/* Writes a copy of p on r. */
static void r_write(rstrm_t *r, const void *p, size_t n) {
  fwrite_t *w = malloc(sizeof(*w) + n);
  ASSERT_NOT_NULL(w);
  memcpy(w->data, p, n);
  uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
  ASSERT_OK(h2rev_stream_write(&w->w, &r->s, &b, 1, f_wrote));
}

static void r_closed(h2rev_stream_t *s) {
  ((rstrm_t *)s->data)->closed = 1;
}

static void r_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s, (void)sz;
  *buf = uv_buf_init(rxbuf, sizeof(rxbuf));
}

static void f_request(fake_t *f, rstrm_t *r, const char *role);

static void r_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  rstrm_t *r = s->data;
  fake_t *f = r->f;
  if (n < 0) {
    if (n == UV_EOF)
      r->eof = 1;
    else
      r->err = (int)n;
    h2rev_stream_close(s, r_closed);
    return;
  }
  size_t k = sizeof(r->rx) - 1 - r->rxlen;
  if ((size_t)n < k)
    k = (size_t)n;
  memcpy(r->rx + r->rxlen, buf->base, k);
  r->rxlen += k;
  r->rx[r->rxlen] = '\0';
  r->total += (size_t)n;
  if (!r->is_ctl)
    return;
  for (;;) {
    char *nl = memchr(r->rx + r->scan, '\n', r->rxlen - r->scan);
    if (nl == NULL)
      break;
    size_t len = (size_t)(nl - (r->rx + r->scan)) + 1;
    static const char ka_line[] = "{\"command\":\"keep-alive\"}\n";
    if (r->ka_watch && r->first_ka == 0 && len == sizeof(ka_line) - 1 &&
        memcmp(r->rx + r->scan, ka_line, len) == 0)
      r->first_ka = uv_now(s->loop);
    if (len == sizeof(conn_ready_line) - 1 && memcmp(r->rx + r->scan, conn_ready_line, len) == 0) {
      f->conn_ready++;
      if (f->mode == F_PICKUP_FAILED) {
        static const char pf[] = "{\"command\":\"pickup-failed\",\"err\":\"no route\"}\n";
        r_write(r, pf, sizeof(pf) - 1);
      } else if (f->mode == F_OPEN_DATA && f->ndata < 8) {
        f_request(f, &f->data[f->ndata++], f->data_role);
      }
    }
    r->scan += len;
  }
}

static void r_headers(h2r_strm_t *st) {
  rstrm_t *r = st->owner;
  r->headers = 1;
  r->status = st->status;
  r->early = st->rq_bytes;
  r->attached = 1;
  h2r_strm_attach(st, &r->s);
  ASSERT_OK(h2rev_stream_read_start(&r->s, r_alloc, r_read));
}

static void r_gone(h2r_strm_t *st, int err) {
  rstrm_t *r = st->owner;
  r->gone = 1;
  r->gone_err = err;
}

static const h2r_strm_hooks r_hooks = {r_headers, r_gone};

static void f_request(fake_t *f, rstrm_t *r, const char *role) {
  memset(r, 0, sizeof(*r));
  r->f = f;
  r->s.data = r;
  char path[256], authority[64];
  ASSERT_OK(h2r_revdial_path(path, sizeof(path), "/base", f->id));
  snprintf(authority, sizeof(authority), "127.0.0.1:%d", f->e->port);
  nghttp2_nv nv[8 + F_MAX_FILLERS];
  char fillers[F_MAX_FILLERS][24];
  size_t n = 0;
#define NV(k, v) nv[n++] = (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), 0}
  NV(":method", "GET");
  NV(":scheme", "https");
  NV(":authority", authority);
  NV(":path", path);
  if (role != NULL)
    NV(H2R_ROLE_HEADER, role);
  ASSERT_LE(f->fillers, F_MAX_FILLERS);
  for (int i = 0; i < f->fillers; i++) {
    snprintf(fillers[i], sizeof(fillers[i]), "x-filler-%d", i);
    NV(fillers[i], "-");
  }
  if (f->auth != NULL)
    NV("authorization", f->auth);
#undef NV
  ASSERT_NOT_NULL(h2r_session_request(&f->c.s, nv, n, &r_hooks, r));
  r->requested = 1;
}

/* The authorization header of the next fake (used once), and the headers
 * that come before it. */
static const char *next_auth;
static int next_fillers;

/* Connects and sends the control request; does not wait for the answer. */
static void f_start(fake_t *f, env_t *e, const char *id, const char *role, int mode) {
  memset(f, 0, sizeof(*f));
  f->auth = next_auth;
  next_auth = NULL;
  f->fillers = next_fillers;
  next_fillers = 0;
  f->e = e;
  snprintf(f->id, sizeof(f->id), "%s", id);
  f->role = role;
  f->data_role = role != NULL ? "data" : NULL;
  f->mode = mode;
  tclient_connect(&f->c, &e->loop, e->port, "ca", "127.0.0.1", NULL);
  run_until(&e->loop, &f->c.opened, 5000);
  ASSERT_EQ(f->c.opened, 1);
  f->ctl.is_ctl = 1;
  f_request(f, &f->ctl, role);
  f->ctl.is_ctl = 1;
}

static int r_answered(void *arg) {
  rstrm_t *r = arg;
  return r->headers || r->gone;
}

static int r_ended(void *arg) {
  rstrm_t *r = arg;
  return r->gone || r->closed;
}

/* Starts a fake and waits for the control stream's answer; returns :status. */
static int f_attach(fake_t *f, env_t *e, const char *id, const char *role, int mode) {
  f_start(f, e, id, role, mode);
  run_cond(&e->loop, r_answered, &f->ctl, 5000, "fake control answer");
  return f->ctl.status;
}

static void r_close(rstrm_t *r) {
  if (r->attached && !r->closed && !h2rev_stream_is_closing(&r->s))
    h2rev_stream_close(&r->s, r_closed);
}

/* Closes the streams it holds and its session; waits until it is gone. */
static void f_stop(fake_t *f) {
  if (f->e == NULL)
    return;
  r_close(&f->ctl);
  for (int i = 0; i < f->ndata; i++)
    r_close(&f->data[i]);
  h2r_session_close(&f->c.s, 0);
  run_until(&f->e->loop, &f->c.closed, 5000);
  f->e = NULL;
}

/* ================================================================ tests */

/* 16 MiB each way at once through one reverse connection. */
TEST(dial_accept_echo_16mib) {
  env_t e;
  env_init(&e, NULL);
  lis_t L;
  lis_start(&L, &e, "echo-16", 0, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  ASSERT_EQ(stats(&e).listeners, 1);
  size_t len = 16u << 20;
  echo_through(&e, "echo-16", len, 16);
  h2rev_dialer_stats_t st = stats(&e);
  ASSERT_EQ(st.dials_ok, 1);
  ASSERT_EQ(st.dials_failed, 0);
  ASSERT_GE(L.accepted, 1); /* and the spares, accepted before use */
  lis_stop(&L);
  ASSERT_EQ(L.stopped, 1);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* 200 dials at once to one listener, each echoing its own 4 KiB. */
TEST(concurrent_200_dials) {
  enum { N = 200, LEN = 4096 };
  h2rev_dialer_options_t o = {.max_pending_dials = 256};
  env_t e;
  env_init(&e, &o);
  lis_t L;
  lis_start(&L, &e, "many", 0, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  char *data = malloc(N * LEN);
  test_fill_random(data, N * LEN, 200);
  dclient_t *c = calloc(N, sizeof(*c));
  int ndone = 0;
  for (int i = 0; i < N; i++) {
    c[i].ndone = &ndone;
    dc_dial(&c[i], &e, "many", data + i * LEN, LEN, 10000);
  }
  volatile int all = 0;
  while (!all) {
    run_for(&e.loop, 10);
    all = ndone == N;
    static double start;
    if (start == 0)
      start = now_ms();
    if (now_ms() - start > 20000)
      test_fail(__FILE__, __LINE__, "only %d of %d dials finished", ndone, N);
  }
  for (int i = 0; i < N; i++)
    dc_check_echo(&c[i]);
  h2rev_dialer_stats_t st = stats(&e);
  ASSERT_EQ(st.dials_ok, N);
  ASSERT_EQ(st.dials_failed, 0);
  ASSERT_GE(L.accepted, N);
  free(c);
  free(data);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* More requests in flight to one listener than its connection serves at
 * once (max_streams, 1000): with the default options the rest wait for a
 * reverse connection rather than fail (at the old queue of 1024, 2000 dials
 * at once had 976 refused). */
TEST(default_queue_holds_2000_dials) {
  enum { N = 2000, LEN = 64 };
  env_t e;
  env_init(&e, NULL);
  lis_t L;
  lis_start(&L, &e, "queue", 0, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  char *data = malloc(N * LEN);
  test_fill_random(data, N * LEN, 2000);
  dclient_t *c = calloc(N, sizeof(*c));
  int ndone = 0;
  for (int i = 0; i < N; i++) {
    c[i].ndone = &ndone;
    dc_dial(&c[i], &e, "queue", data + i * LEN, LEN, 30000);
  }
  double start = now_ms();
  while (ndone < N) {
    run_for(&e.loop, 10);
    if (now_ms() - start > 60000)
      test_fail(__FILE__, __LINE__, "only %d of %d dials finished", ndone, N);
  }
  h2rev_dialer_stats_t st = stats(&e);
  ASSERT_EQ(st.dials_toomany, 0);
  ASSERT_EQ(st.dials_failed, 0);
  ASSERT_EQ(st.dials_ok, N);
  for (int i = 0; i < N; i++)
    dc_check_echo(&c[i]);
  free(c);
  free(data);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

static void srv_closed_flag(h2rev_http_server_t *s) {
  *(int *)s->data = 1;
}

enum { WAVE = 10 };

static int all_dialed(void *arg) {
  dclient_t *c = arg;
  for (int i = 0; i < WAVE; i++)
    if (!c[i].done)
      return 0;
  return 1;
}

/* A listener's data streams stay open for a long time (spares, reused
 * streams): the head of each must not hold the connection's header memory
 * (max_conn_header_bytes), or past a few thousand streams at the default
 * 2 MiB new ones were refused and their dials failed (pickup-failed). Here
 * 300 open at once under 16 KiB. */
TEST(data_streams_hold_no_header_memory) {
  enum { N = 300 };
  env_t e;
  memset(&e, 0, sizeof(e));
  ASSERT_OK(uv_loop_init(&e.loop));
  test_path(e.ca, sizeof(e.ca), test_certs(), "ca.pem");
  test_path(e.cert, sizeof(e.cert), test_certs(), "server.pem");
  test_path(e.key, sizeof(e.key), test_certs(), "server.key");
  h2rev_http_server_options_t so = {.max_conn_header_bytes = 16384, .max_streams = 1000};
  test_logger(&so.log, "server");
  h2rev_http_server_t srv;
  int srv_closed = 0;
  ASSERT_OK(h2rev_http_server_init(&e.loop, &srv, &so));
  srv.data = &srv_closed;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  h2rev_tls_options_t tls = {.cert_file = e.cert, .key_file = e.key};
  ASSERT_OK(h2rev_http_server_listen(&srv, (struct sockaddr *)&a, &tls));
  int len = sizeof(a);
  ASSERT_OK(h2rev_http_server_getsockname(&srv, 0, (struct sockaddr *)&a, &len));
  e.port = ntohs(a.sin_port);
  e.o.base_path = "/base";
  test_logger(&e.o.log, "dialer");
  ASSERT_OK(h2rev_dialer_init(&e.loop, &e.d, &e.o));
  e.d.data = &e;
  ASSERT_OK(h2rev_dialer_mount(&e.d, &srv));
  e.dialer_open = 1;
  lis_t L;
  lis_start(&L, &e, "held", 0, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  dclient_t *c = calloc(N, sizeof(*c));
  int nclosed = 0;
  /* In waves: the streams of one wave arrive together, their heads read
   * before any is handed over. */
  for (int i = 0; i < N; i += WAVE) {
    for (int k = i; k < i + WAVE; k++) {
      c[k].ndone = &nclosed;
      dc_dial(&c[k], &e, "held", NULL, 0, 20000); /* held open: nothing written */
    }
    run_cond(&e.loop, all_dialed, c + i, 10000, "a wave of dials answered");
  }
  h2rev_dialer_stats_t st = stats(&e);
  ASSERT_EQ(st.dials_pickup, 0);
  ASSERT_EQ(st.dials_ok, N);
  int failed = 0;
  for (int i = 0; i < N; i++)
    if (c[i].status != 0)
      failed++;
    else if (!c[i].closed)
      h2rev_stream_close(&c[i].s, dc_closed);
  ASSERT_EQ(failed, 0);
  double start = now_ms();
  while (nclosed < N) {
    run_for(&e.loop, 10);
    if (now_ms() - start > 10000)
      test_fail(__FILE__, __LINE__, "only %d of %d streams closed", nclosed, N);
  }
  for (int i = 0; i < N; i++)
    dc_free(&c[i]);
  free(c);
  lis_stop(&L);
  dialer_stop(&e);
  h2rev_http_server_close(&srv, srv_closed_flag);
  run_until(&e.loop, &srv_closed, 5000);
  loop_drain(&e.loop);
}

/* A listener that serves at most 4 reverse connections at once
 * (max_streams): 40 dials at once all succeed, the dialer holding the rest
 * in its queue, and the listener's application (the upstream) never has
 * more than 4 in hand. */
TEST(listener_max_streams_4) {
  enum { N = 40, LEN = 4096, MAX = 4 };
  env_t e;
  env_init(&e, NULL);
  lis_t L;
  next_lis_max_streams = MAX;
  lis_start(&L, &e, "capped", 0, NULL);
  next_lis_max_streams = 0;
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  echo_open = echo_open_max = 0;
  char *data = malloc(N * LEN);
  test_fill_random(data, N * LEN, 40);
  dclient_t *c = calloc(N, sizeof(*c));
  int ndone = 0;
  for (int i = 0; i < N; i++) {
    c[i].ndone = &ndone;
    dc_dial(&c[i], &e, "capped", data + i * LEN, LEN, 20000);
  }
  double start = now_ms();
  while (ndone < N) {
    run_for(&e.loop, 10);
    if (now_ms() - start > 30000)
      test_fail(__FILE__, __LINE__, "only %d of %d dials finished", ndone, N);
  }
  for (int i = 0; i < N; i++)
    dc_check_echo(&c[i]);
  h2rev_dialer_stats_t st = stats(&e);
  ASSERT_EQ(st.dials_ok, N);
  ASSERT_EQ(st.dials_failed, 0);
  ASSERT_EQ(L.accepted, N);
  ASSERT_LE(echo_open_max, MAX);
  ASSERT_GE(echo_open_max, 2); /* they did run side by side */
  h2rev_listener_info_t info;
  ASSERT_EQ(h2rev_dialer_listeners(&e.d, &info, 1), 1);
  ASSERT_LE(info.spares + info.streams, MAX);
  free(c);
  free(data);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* A dialer that allows 10 streams on a listener's connection, 100 dials at
 * once: the listener asks for no stream past that limit (it holds the
 * conn-ready asks back), rather than have nghttp2 queue 90 stream openings
 * (at 10,000 requests waiting, 9,000 queued streams in the listener). */
TEST(listener_within_dialer_stream_limit) {
  enum { N = 100, LEN = 1024 };
  h2rev_dialer_options_t o = {.max_streams = 10};
  env_t e;
  env_init(&e, &o);
  lis_t L;
  lis_start(&L, &e, "limited", 0, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  char *data = malloc(N * LEN);
  test_fill_random(data, N * LEN, 100);
  dclient_t *c = calloc(N, sizeof(*c));
  int ndone = 0;
  for (int i = 0; i < N; i++) {
    c[i].ndone = &ndone;
    dc_dial(&c[i], &e, "limited", data + i * LEN, LEN, 20000);
  }
  uint64_t most = 0;
  double start = now_ms();
  while (ndone < N) {
    uv_run(&e.loop, UV_RUN_ONCE);
    h2rev_listener_stats_t ls;
    h2rev_listener_stats(&L.l, &ls);
    if (ls.streams_open > most)
      most = ls.streams_open;
    if (now_ms() - start > 30000)
      test_fail(__FILE__, __LINE__, "only %d of %d dials finished", ndone, N);
  }
  for (int i = 0; i < N; i++)
    dc_check_echo(&c[i]);
  ASSERT_EQ(stats(&e).dials_ok, N);
  ASSERT_LE(most, 10); /* the control stream and 9 data streams */
  free(c);
  free(data);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

static int has_spare(void *arg) {
  return stats(arg).spares >= 1;
}

/* A spare is ready: the dial takes it, no conn-ready round trip. */
TEST(warm_dial_no_conn_ready) {
  env_t e;
  env_init(&e, NULL);
  lis_t L;
  lis_start(&L, &e, "warm", 2, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  run_cond(&e.loop, has_spare, &e, 5000, "a spare at the dialer");
  ASSERT_EQ(stats(&e).conn_ready_sent, 0);
  dclient_t c = {0};
  static char msg[] = "warm hello";
  dc_dial(&c, &e, "warm", msg, sizeof(msg) - 1, 5000);
  run_cond(&e.loop, dc_finished, &c, 5000, "warm echo");
  ASSERT_LT(c.t1 - c.t0, 100);
  dc_check_echo(&c);
  ASSERT_EQ(memcmp(c.head, msg, sizeof(msg) - 1), 0);
  /* The used spare is replaced ahead of demand, still without conn-ready. */
  run_for(&e.loop, 100);
  ASSERT_GE(stats(&e).spares, 1);
  echo_through(&e, "warm", 1000, 3);
  ASSERT_EQ(stats(&e).conn_ready_sent, 0);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* Nobody attached as this id: fails at once (on a later loop turn). */
TEST(unknown_id) {
  env_t e;
  env_init(&e, NULL);
  dclient_t c = {0};
  dc_dial(&c, &e, "nobody", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 1000, "dial failure");
  ASSERT_EQ(c.status, H2REV_ENOLISTENER);
  ASSERT_LT(c.t1 - c.t0, 100);
  ASSERT_STR_EQ(h2rev_dial_strerror(&c.req), h2rev_strerror(H2REV_ENOLISTENER));
  /* Bad arguments: an error, no callback. */
  h2rev_dial_t r;
  h2rev_stream_t s;
  ASSERT_EQ(h2rev_dial(&r, &e.d, "bad id", &s, 0, dc_dialed), H2REV_EBADID);
  ASSERT_EQ(h2rev_dial(&r, &e.d, "", &s, 0, dc_dialed), H2REV_EBADID);
  ASSERT_EQ(h2rev_dial(&r, &e.d, "x", NULL, 0, dc_dialed), UV_EINVAL);
  ASSERT_EQ(h2rev_dial(&r, &e.d, "x", &s, 0, NULL), UV_EINVAL);
  h2rev_dialer_stats_t st = stats(&e);
  ASSERT_EQ(st.dials_failed, 1);
  ASSERT_EQ(st.dials_ok, 0);
  dc_free(&c);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* The listener never opens the data stream. */
TEST(dial_timeout) {
  env_t e;
  env_init(&e, NULL);
  fake_t f;
  ASSERT_EQ(f_attach(&f, &e, "x", NULL, F_IGNORE), 200);
  ASSERT_EQ(stats(&e).listeners, 1);
  dclient_t c = {0};
  dc_dial(&c, &e, "x", NULL, 0, 300);
  run_cond(&e.loop, dc_done, &c, 3000, "dial timeout");
  double took = c.t1 - c.t0;
  fprintf(stderr, "timed out after %.0f ms\n", took);
  ASSERT_EQ(c.status, UV_ETIMEDOUT);
  ASSERT_GE(took, 250);
  ASSERT_LE(took, 1500);
  ASSERT_EQ(f.conn_ready, 1);
  ASSERT_EQ(stats(&e).conn_ready_sent, 1);
  /* The registration is unharmed. */
  ASSERT_EQ(stats(&e).listeners, 1);
  ASSERT_EQ(f.ctl.closed, 0);
  /* A cancelled dial reports UV_ECANCELED. */
  dclient_t c2 = {0};
  dc_dial(&c2, &e, "x", NULL, 0, 5000);
  ASSERT_OK(h2rev_dial_cancel(&c2.req));
  ASSERT_EQ(h2rev_dial_cancel(&c2.req), UV_EINVAL);
  run_cond(&e.loop, dc_done, &c2, 1000, "dial cancelled");
  ASSERT_EQ(c2.status, UV_ECANCELED);
  dc_free(&c);
  dc_free(&c2);
  f_stop(&f);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

TEST(pickup_failed) {
  env_t e;
  env_init(&e, NULL);
  fake_t f;
  ASSERT_EQ(f_attach(&f, &e, "pf", NULL, F_PICKUP_FAILED), 200);
  dclient_t c = {0};
  dc_dial(&c, &e, "pf", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 3000, "dial failure");
  ASSERT_EQ(c.status, H2REV_EPICKUP);
  ASSERT_STR_EQ(h2rev_dial_strerror(&c.req), "no route");
  ASSERT_LT(c.t1 - c.t0, 1000);
  ASSERT_EQ(stats(&e).listeners, 1);
  ASSERT_EQ(stats(&e).dials_failed, 1);
  dc_free(&c);
  f_stop(&f);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

static int lis_lost_3(void *arg) {
  return ((lis_t *)arg)->lost >= 3;
}

/* A connection the kernel refuses at once (TCP to the broadcast address:
 * connect() fails with ENETUNREACH, nothing is sent) is an attempt like any
 * other: reported lost, retried with backoff, given up after max_retries;
 * and a close while it retries completes. */
TEST(listener_connect_fails_at_once) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  env_t e = {0}; /* for lis_t only: no dialer */
  h2rev_listener_options_t o = {0};
  o.url = "http://255.255.255.255:9/base";
  o.id = "nowhere";
  o.backoff_min_ms = 20;
  o.backoff_max_ms = 40;
  o.max_retries = 3;
  o.on_state = lis_state;
  test_logger(&o.log, "nowhere");
  lis_t L = {.e = &e};
  ASSERT_OK(h2rev_listener_init(&loop, &L.l, &o));
  L.l.data = &L;
  ASSERT_OK(h2rev_listener_start(&L.l, lis_conn));
  run_until(&loop, &L.stopped, 5000);
  ASSERT_EQ(L.lost, 4); /* the first attempt and 3 retries */
  ASSERT_EQ(L.last_err, UV_ENETUNREACH);
  h2rev_listener_close(&L.l, lis_closed);
  run_until(&loop, &L.closed, 5000);

  lis_t M = {.e = &e};
  o.max_retries = 0;
  ASSERT_OK(h2rev_listener_init(&loop, &M.l, &o));
  M.l.data = &M;
  ASSERT_OK(h2rev_listener_start(&M.l, lis_conn));
  run_cond(&loop, lis_lost_3, &M, 5000, "three attempts lost");
  h2rev_listener_close(&M.l, lis_closed);
  run_until(&loop, &M.closed, 5000);
  ASSERT_EQ(M.stopped, 1);
  loop_drain(&loop);
}

/* At most 32 extra headers for a listener's requests: one more is refused. */
TEST(listener_headers_limit) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  static char lines[33][32];
  const char *h[34];
  for (int i = 0; i < 33; i++) {
    snprintf(lines[i], sizeof(lines[i]), "X-Extra-%d: %d", i, i);
    h[i] = lines[i];
  }
  h[32] = NULL;
  h2rev_listener_options_t o = {.url = "http://127.0.0.1:9/base", .id = "h", .headers = h};
  h2rev_listener_t l;
  ASSERT_OK(h2rev_listener_init(&loop, &l, &o));
  int closed = 0;
  l.data = &closed;
  h2rev_listener_close(&l, lis_closed_flag);
  run_until(&loop, &closed, 5000);
  h[32] = lines[32];
  h[33] = NULL;
  ASSERT_EQ(h2rev_listener_init(&loop, &l, &o), UV_EINVAL);
  loop_drain(&loop);
}

/* The dialer goes away and comes back on the same port: the listener
 * re-attaches by itself. */
TEST(reconnect_after_dialer_restart) {
  env_t e;
  env_init(&e, NULL);
  lis_t L;
  lis_start(&L, &e, "phoenix", 1, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  echo_through(&e, "phoenix", 10000, 1);
  int port = e.port;
  dialer_stop(&e);
  run_for(&e.loop, 100);
  ASSERT_GE(L.lost, 1);
  ASSERT_EQ(L.attached, 1);
  dialer_start(&e, port);
  ASSERT_EQ(e.port, port);
  volatile int two = 0;
  double start = now_ms();
  while (!two) {
    run_for(&e.loop, 10);
    two = L.attached == 2;
    if (now_ms() - start > 5000)
      test_fail(__FILE__, __LINE__, "not re-attached (attached %d, lost %d: %s)", L.attached,
                L.lost, ename(L.last_err));
  }
  ASSERT_EQ(stats(&e).listeners, 1);
  echo_through(&e, "phoenix", 10000, 2);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* The connection of a listener with a pending dial dies: the dial fails at
 * once and the id is free for another connection. */
TEST(listener_connection_killed) {
  env_t e;
  env_init(&e, NULL);
  fake_t f;
  ASSERT_EQ(f_attach(&f, &e, "victim", NULL, F_IGNORE), 200);
  dclient_t c = {0};
  dc_dial(&c, &e, "victim", NULL, 0, 5000);
  run_for(&e.loop, 50);
  ASSERT_EQ(c.done, 0);
  ASSERT_EQ(f.conn_ready, 1);
  double t = now_ms();
  f_stop(&f);
  run_cond(&e.loop, dc_done, &c, 2000, "dial failure");
  double took = now_ms() - t;
  fprintf(stderr, "dial failed %.0f ms after the connection closed: %s\n", took, ename(c.status));
  ASSERT_LT(took, 500);
  ASSERT_NE(c.status, 0);
  ASSERT_EQ(c.status, H2REV_ECLOSED);
  ASSERT_EQ(stats(&e).listeners, 0);
  /* The id is free again. */
  fake_t f2;
  ASSERT_EQ(f_attach(&f2, &e, "victim", NULL, F_IGNORE), 200);
  ASSERT_EQ(stats(&e).listeners, 1);
  dc_free(&c);
  f_stop(&f2);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* A live id is not taken over, nor fed data streams, from another
 * connection. */
TEST(id_taken) {
  env_t e;
  env_init(&e, NULL);
  fake_t a, b, b2;
  ASSERT_EQ(f_attach(&a, &e, "dup", NULL, F_OPEN_DATA), 200);
  ASSERT_EQ(f_attach(&b, &e, "dup", NULL, F_IGNORE), 409);
  ASSERT_EQ(f_attach(&b2, &e, "dup", "control", F_IGNORE), 409);
  /* b offers a data stream for dup: refused. */
  f_request(&b, &b.data[b.ndata++], "data");
  run_cond(&e.loop, r_answered, &b.data[0], 5000, "data stream answer");
  ASSERT_NE(b.data[0].status, 200);
  ASSERT_GE(stats(&e).refused, 3);
  ASSERT_EQ(stats(&e).listeners, 1);
  ASSERT_EQ(stats(&e).spares, 0);
  /* a is unharmed: a dial goes through its data stream. */
  ASSERT_EQ(a.ctl.closed, 0);
  dclient_t c = {0};
  dc_dial(&c, &e, "dup", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 3000, "dial");
  ASSERT_OK(c.status);
  ASSERT_EQ(a.ndata, 1);
  h2rev_stream_close(&c.s, dc_closed);
  run_until(&e.loop, &c.closed, 2000);
  dc_free(&c);
  f_stop(&b);
  f_stop(&b2);
  f_stop(&a);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

static int authorize_calls;

static int check_bearer(void *arg, const char *id, const h2rev_header_t *h, size_t n,
                        const h2rev_peer_t *peer) {
  (void)arg;
  authorize_calls++;
  ASSERT_NOT_NULL(id);
  /* Who asks: an address, and no certificate (none was presented). */
  ASSERT_EQ(strncmp(peer->address, "127.0.0.1:", 10), 0);
  ASSERT_NULL(peer->cert_cn);
  ASSERT_NULL(peer->cert_der);
  ASSERT_EQ(peer->cert_ndns, 0);
  for (size_t i = 0; i < n; i++)
    if (strcmp(h[i].name, "authorization") == 0 && strcmp(h[i].value, "Bearer good") == 0)
      return 0;
  return -1;
}

static int lis_retrying(void *arg) {
  return ((lis_t *)arg)->retrying > 0;
}

static int lis_stopped_now(void *arg) {
  return ((lis_t *)arg)->stopped > 0;
}

/* A refusal is permanent: its retry waits backoff_max_ms (200 here, so 100
 * to 200 ms; a transient failure's first waits 25 to 50), last_error says
 * why; new headers and retry_now attach at once; stop_on_permanent stops. */
TEST(listener_permanent_refusal) {
  h2rev_dialer_options_t o = {.authorize = check_bearer};
  env_t e;
  env_init(&e, &o);
  lis_t L;
  static const char *const bad[] = {"Authorization: Bearer bad", NULL};
  static const char *const good[] = {"Authorization: Bearer good", NULL};
  lis_start(&L, &e, "refused", 1, bad);
  run_cond(&e.loop, lis_retrying, &L, 5000, "refused, retrying");
  ASSERT_EQ(L.last_err, H2REV_EFORBIDDEN);
  ASSERT_GE(L.last_delay, 100);
  ASSERT_LE(L.last_delay, 200);
  char why[512];
  int permanent = 0;
  ASSERT_EQ(h2rev_listener_last_error(&L.l, why, sizeof(why), &permanent), H2REV_EFORBIDDEN);
  ASSERT_EQ(permanent, 1);
  ASSERT_NOT_NULL(strstr(why, "refused id refused (403: not authorized): check the token"));
  ASSERT_EQ(L.attached, 0);
  ASSERT_OK(h2rev_listener_set_headers(&L.l, good));
  ASSERT_OK(h2rev_listener_retry_now(&L.l));
  ASSERT_EQ(h2rev_listener_retry_now(&L.l), UV_EALREADY); /* connecting now */
  run_cond(&e.loop, lis_attached, &L, 5000, "attached with the new token");
  ASSERT_EQ(h2rev_listener_last_error(&L.l, why, sizeof(why), NULL), 0);
  echo_through(&e, "refused", 4096, 1);
  lis_stop(&L);

  lis_t S;
  next_stop_on_permanent = 1;
  lis_start(&S, &e, "stopper", 1, bad);
  next_stop_on_permanent = 0;
  run_cond(&e.loop, lis_stopped_now, &S, 5000, "stopped at the refusal");
  ASSERT_EQ(S.stop_err, H2REV_EFORBIDDEN);
  ASSERT_EQ(S.lost, 1);
  ASSERT_EQ(S.retrying, 0);
  ASSERT_EQ(h2rev_listener_retry_now(&S.l), UV_EALREADY);
  lis_stop(&S);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

TEST(authorize_denied) {
  h2rev_dialer_options_t o = {.authorize = check_bearer};
  env_t e;
  env_init(&e, &o);
  lis_t L;
  static const char *const hdrs[] = {"Authorization: Bearer good", NULL};
  lis_start(&L, &e, "trusted", 1, hdrs);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  ASSERT_EQ(stats(&e).listeners, 1);
  fake_t f, g, h, k;
  ASSERT_EQ(f_attach(&f, &e, "intruder", NULL, F_IGNORE), 403);
  ASSERT_EQ(f_attach(&g, &e, "trusted", NULL, F_IGNORE), 403);
  next_auth = "Bearer bad";
  ASSERT_EQ(f_attach(&h, &e, "intruder", NULL, F_IGNORE), 403);
  h2rev_dialer_stats_t st = stats(&e);
  ASSERT_EQ(st.listeners, 1);
  ASSERT_EQ(st.refused, 3);
  /* The right token on a new id is welcome. */
  next_auth = "Bearer good";
  ASSERT_EQ(f_attach(&k, &e, "friend", NULL, F_IGNORE), 200);
  ASSERT_EQ(stats(&e).listeners, 2);
  ASSERT_GE(authorize_calls, 5);
  dclient_t c = {0};
  dc_dial(&c, &e, "intruder", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 1000, "dial");
  ASSERT_EQ(c.status, H2REV_ENOLISTENER);
  dc_free(&c);
  echo_through(&e, "trusted", 5000, 5);
  f_stop(&f);
  f_stop(&g);
  f_stop(&h);
  f_stop(&k);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

static size_t last_nheaders;

static int bearer_seen(void *arg, const char *id, const h2rev_header_t *h, size_t n,
                       const h2rev_peer_t *peer) {
  last_nheaders = n;
  return check_bearer(arg, id, h, n, peer);
}

/* The authorize callback sees every header of the request, however many:
 * here the token is the 70th (4 pseudo-headers, 65 others before it). */
TEST(authorize_70_headers) {
  h2rev_dialer_options_t o = {.authorize = bearer_seen};
  env_t e;
  env_init(&e, &o);
  fake_t f, g;
  next_auth = "Bearer good";
  next_fillers = 65;
  ASSERT_EQ(f_attach(&f, &e, "many", NULL, F_IGNORE), 200);
  ASSERT_EQ(last_nheaders, 70);
  next_auth = "Bearer bad";
  next_fillers = 65;
  ASSERT_EQ(f_attach(&g, &e, "many-bad", NULL, F_IGNORE), 403);
  ASSERT_EQ(last_nheaders, 70);
  ASSERT_EQ(stats(&e).listeners, 1);
  f_stop(&f);
  f_stop(&g);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* An id of H2R_ID_MAX bytes attaches; one byte more is refused (400). */
TEST(id_longest) {
  env_t e;
  env_init(&e, NULL);
  char id[H2R_ID_MAX + 2];
  memset(id, 'i', H2R_ID_MAX);
  id[H2R_ID_MAX] = '\0';
  fake_t f, g;
  ASSERT_EQ(f_attach(&f, &e, id, NULL, F_IGNORE), 200);
  id[H2R_ID_MAX - 1] = 'j';
  id[H2R_ID_MAX] = 'j';
  id[H2R_ID_MAX + 1] = '\0';
  ASSERT_EQ(f_attach(&g, &e, id, NULL, F_IGNORE), 400);
  ASSERT_EQ(stats(&e).listeners, 1);
  f_stop(&f);
  f_stop(&g);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* verify_client REQUEST: the handshake lets a client without a certificate
 * through (a proxy client), but /revdial refuses it, with no authorize
 * callback to do it; a listener with a certificate from the CA attaches. */
TEST(client_cert_requested) {
  env_t e;
  next_verify_client = H2REV_VERIFY_CLIENT_REQUEST;
  env_init(&e, NULL);
  next_verify_client = 0;
  fake_t f;
  ASSERT_EQ(f_attach(&f, &e, "nocert", NULL, F_IGNORE), 403);
  ASSERT_EQ(stats(&e).refused, 1);
  ASSERT_EQ(stats(&e).listeners, 0);
  lis_t L;
  next_lis_cert = "client";
  lis_start(&L, &e, "client-1", 1, NULL);
  next_lis_cert = NULL;
  run_cond(&e.loop, lis_attached, &L, 5000, "listener with a certificate attached");
  echo_through(&e, "client-1", 4096, 1);
  f_stop(&f);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* Garbage on a control stream closes it and frees the id; nothing else is
 * disturbed. */
TEST(malformed_control) {
  env_t e;
  env_init(&e, NULL);
  lis_t L;
  lis_start(&L, &e, "healthy", 1, NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  const char *ids[3] = {"m-text", "m-long", "m-binary"};
  fake_t f[3];
  char *big = malloc(1 << 20);
  memset(big, 'a', 1 << 20);
  char bin[4096];
  test_fill_random(bin, sizeof(bin), 11);
  for (size_t i = 0; i < sizeof(bin); i += 64)
    bin[i] = '\n';
  for (int i = 0; i < 3; i++) {
    ASSERT_EQ(f_attach(&f[i], &e, ids[i], NULL, F_IGNORE), 200);
    ASSERT_EQ(stats(&e).listeners, 2);
    if (i == 0)
      r_write(&f[i].ctl, "not json\n", 9);
    else if (i == 1)
      r_write(&f[i].ctl, big, 1 << 20);
    else
      r_write(&f[i].ctl, bin, sizeof(bin));
    run_cond(&e.loop, r_ended, &f[i].ctl, 5000, "control stream closed by the dialer");
    fprintf(stderr, "%s: eof %d err %s\n", ids[i], f[i].ctl.eof, ename(f[i].ctl.err));
    ASSERT_EQ(stats(&e).listeners, 1);
    ASSERT_EQ(f[i].c.dead, 0); /* only the stream, not the connection */
    dclient_t c = {0};
    dc_dial(&c, &e, ids[i], NULL, 0, 5000);
    run_cond(&e.loop, dc_done, &c, 1000, "dial");
    ASSERT_EQ(c.status, H2REV_ENOLISTENER);
    dc_free(&c);
    echo_through(&e, "healthy", 3000, (uint64_t)i);
  }
  free(big);
  for (int i = 0; i < 3; i++)
    f_stop(&f[i]);
  ASSERT_EQ(L.attached, 1);
  ASSERT_EQ(L.lost, 0);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* ------------------------------------------- fake dialer (raw HTTP/2) */

typedef struct fsrv {
  uv_loop_t *loop;
  uv_tcp_t tcp;
  SSL_CTX *ctx;
  int port;
  h2rev_logger_t log;
  int sessions, open;
  int requests;
  int controls;
  char method[16], scheme[16], path[4096], role[16], authority[64];
  int first_end_stream;
  char path2[256], role2[16];
  rstrm_t ctl;
  echo_t *data[16];
  int ndata;
} fsrv_t;

static void copy_hdr(h2r_strm_t *st, const char *name, char *out, size_t cap) {
  const char *v = h2r_strm_header(st, name, NULL);
  snprintf(out, cap, "%s", v ? v : "");
}

static void fs_request(h2r_session_t *s, h2r_strm_t *st) {
  fsrv_t *t = s->owner;
  t->requests++;
  char role[16];
  copy_hdr(st, H2R_ROLE_HEADER, role, sizeof(role));
  if (t->requests == 1 || strcmp(role, "control") == 0) {
    if (t->requests == 1) {
      copy_hdr(st, ":method", t->method, sizeof(t->method));
      copy_hdr(st, ":scheme", t->scheme, sizeof(t->scheme));
      copy_hdr(st, ":path", t->path, sizeof(t->path));
      copy_hdr(st, ":authority", t->authority, sizeof(t->authority));
      copy_hdr(st, H2R_ROLE_HEADER, t->role, sizeof(t->role));
      t->first_end_stream = (st->flags & H2R_F_EOF) != 0;
    }
    /* A new connection's control stream: the old one is gone. */
    ASSERT(!t->ctl.attached || t->ctl.closed);
    t->controls++;
    memset(&t->ctl, 0, sizeof(t->ctl));
    t->ctl.s.data = &t->ctl;
    t->ctl.attached = 1;
    h2r_strm_attach(st, &t->ctl.s);
    ASSERT_OK(h2r_strm_respond(st, 200, NULL, 0));
    ASSERT_OK(h2rev_stream_read_start(&t->ctl.s, r_alloc, r_read));
    return;
  }
  copy_hdr(st, ":path", t->path2, sizeof(t->path2));
  copy_hdr(st, H2R_ROLE_HEADER, t->role2, sizeof(t->role2));
  ASSERT_LT(t->ndata, 16);
  /* A data stream: the listener hands it out; we keep nothing but a
   * handle that closes when the peer goes. */
  echo_t *e = calloc(1, sizeof(*e));
  e->s.data = e;
  h2r_strm_attach(st, &e->s);
  ASSERT_OK(h2r_strm_respond(st, 200, NULL, 0));
  ASSERT_OK(h2rev_stream_read_start(&e->s, echo_alloc, echo_read));
  t->data[t->ndata++] = e;
}

static void fs_open(h2r_session_t *s, int status) {
  (void)s;
  ASSERT_OK(status);
}

static void fs_dead(h2r_session_t *s, int err) {
  (void)s, (void)err;
}

static void fs_close(h2r_session_t *s) {
  fsrv_t *t = s->owner;
  t->open--;
  free(s);
}

static const h2r_session_cbs fs_cbs = {fs_open, fs_request, fs_dead, fs_close, NULL, NULL};

static void fs_conn(uv_stream_t *server, int status) {
  fsrv_t *t = server->data;
  ASSERT_OK(status);
  h2r_session_t *s = malloc(sizeof(*s));
  t->sessions++;
  t->open++;
  ASSERT_OK(h2r_session_accept(s, t->loop, server, t->ctx, NULL, &fs_cbs, t, &t->log));
}

static void fs_start(fsrv_t *t, uv_loop_t *loop) {
  memset(t, 0, sizeof(*t));
  t->loop = loop;
  test_logger(&t->log, "fake-dialer");
  char c[512], k[512], errbuf[256];
  test_path(c, sizeof(c), test_certs(), "server.pem");
  test_path(k, sizeof(k), test_certs(), "server.key");
  h2rev_tls_options_t to = {.cert_file = c, .key_file = k};
  int err = 0;
  t->ctx = h2r_tls_ctx_new(&to, true, H2R_ALPN_H2, &err, errbuf, sizeof(errbuf));
  ASSERT_NOT_NULL(t->ctx);
  ASSERT_OK(uv_tcp_init(loop, &t->tcp));
  t->tcp.data = t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(uv_tcp_bind(&t->tcp, (struct sockaddr *)&a, 0));
  ASSERT_OK(uv_listen((uv_stream_t *)&t->tcp, 16, fs_conn));
  struct sockaddr_in b;
  int len = sizeof(b);
  uv_tcp_getsockname(&t->tcp, (struct sockaddr *)&b, &len);
  t->port = ntohs(b.sin_port);
}

static int fs_ctl(void *arg) {
  fsrv_t *t = arg;
  return t->requests >= 1;
}

static int fs_requests_3(void *arg) {
  return ((fsrv_t *)arg)->requests >= 3;
}

static int fs_requests_2(void *arg) {
  return ((fsrv_t *)arg)->requests >= 2;
}

static int fs_gone(void *arg) {
  fsrv_t *t = arg;
  return t->open == 0 && (!t->ctl.attached || t->ctl.closed);
}

/* A base path longer than any fixed buffer would hold (the listener's was
 * 1400 bytes): the request path is sized to it, the id escaped in it. */
TEST(listener_long_base_path) {
  env_t fe; /* the loop and the CA */
  memset(&fe, 0, sizeof(fe));
  ASSERT_OK(uv_loop_init(&fe.loop));
  test_path(fe.ca, sizeof(fe.ca), test_certs(), "ca.pem");
  fsrv_t t;
  fs_start(&t, &fe.loop);
  enum { BASE = 3000 };
  static char base[BASE + 1], url[BASE + 64], want[BASE + 64];
  base[0] = '/';
  memset(base + 1, 'p', BASE - 1);
  snprintf(url, sizeof(url), "https://127.0.0.1:%d%s", t.port, base);
  snprintf(want, sizeof(want), "%s/revdial?id=far%%3Aaway%%40x", base);
  h2rev_listener_options_t o = {0};
  o.url = url;
  o.id = "far:away@x";
  o.tls.ca_file = fe.ca;
  o.on_state = lis_state;
  test_logger(&o.log, "long");
  lis_t L = {.e = &fe};
  ASSERT_OK(h2rev_listener_init(&fe.loop, &L.l, &o));
  L.l.data = &L;
  ASSERT_OK(h2rev_listener_start(&L.l, lis_conn));
  L.open = 1;
  run_cond(&fe.loop, fs_ctl, &t, 5000, "control request");
  ASSERT_STR_EQ(t.path, want);
  run_cond(&fe.loop, lis_attached, &L, 5000, "listener attached");
  lis_stop(&L);
  run_cond(&fe.loop, fs_gone, &t, 5000, "fake dialer's session closed");
  r_close(&t.ctl);
  uv_close((uv_handle_t *)&t.tcp, NULL);
  SSL_CTX_free(t.ctx);
  loop_drain(&fe.loop);
}

TEST(wire_format) {
  /* Our listener, as a Go dialer sees it. */
  env_t fe; /* for lis_start: the loop, the port and the CA */
  memset(&fe, 0, sizeof(fe));
  ASSERT_OK(uv_loop_init(&fe.loop));
  test_path(fe.ca, sizeof(fe.ca), test_certs(), "ca.pem");
  fsrv_t t;
  fs_start(&t, &fe.loop);
  fe.port = t.port;
  lis_t L;
  lis_start(&L, &fe, "wire-1", 1, NULL);
  run_cond(&fe.loop, fs_ctl, &t, 5000, "control request");
  ASSERT_STR_EQ(t.method, "GET");
  ASSERT_STR_EQ(t.scheme, "https");
  ASSERT_STR_EQ(t.path, "/base/revdial?id=wire-1");
  char auth[64];
  snprintf(auth, sizeof(auth), "127.0.0.1:%d", t.port);
  ASSERT_STR_EQ(t.authority, auth);
  ASSERT_STR_EQ(t.role, "control");
  ASSERT_EQ(t.first_end_stream, 0);
  run_cond(&fe.loop, lis_attached, &L, 5000, "listener attached");
  /* The spare (spares = 1) arrives ahead of demand. */
  run_cond(&fe.loop, fs_requests_2, &t, 5000, "the spare's request");
  ASSERT_STR_EQ(t.path2, "/base/revdial?id=wire-1");
  ASSERT_STR_EQ(t.role2, "data");
  run_for(&fe.loop, 50);
  ASSERT_EQ(t.requests, 2);
  /* The request body stays open: nothing, no END_STREAM. */
  ASSERT_EQ(t.ctl.eof, 0);
  ASSERT_EQ(t.ctl.closed, 0);
  ASSERT_EQ(t.ctl.total, 0);
  /* conn-ready asks for one more. */
  t.path2[0] = '\0';
  r_write(&t.ctl, conn_ready_line, sizeof(conn_ready_line) - 1);
  run_cond(&fe.loop, fs_requests_3, &t, 5000, "the request after conn-ready");
  ASSERT_STR_EQ(t.path2, "/base/revdial?id=wire-1");
  ASSERT_STR_EQ(t.role2, "data");
  /* keep-alive and unknown commands change nothing. */
  static const char ka[] = "{\"command\":\"keep-alive\"}\n{\"command\":\"future\",\"x\":[1]}\n";
  r_write(&t.ctl, ka, sizeof(ka) - 1);
  run_for(&fe.loop, 100);
  ASSERT_EQ(t.requests, 3);
  ASSERT_EQ(L.attached, 1);
  ASSERT_EQ(L.lost, 0);
  ASSERT_EQ(t.ctl.eof, 0);
  lis_stop(&L);
  run_cond(&fe.loop, fs_gone, &t, 5000, "fake dialer's session closed");
  r_close(&t.ctl);
  uv_close((uv_handle_t *)&t.tcp, NULL);
  SSL_CTX_free(t.ctx);
  loop_drain(&fe.loop);

  /* Our dialer, as a Go listener sees it: no role header anywhere. */
  env_t e;
  env_init(&e, NULL);
  fake_t f;
  f_start(&f, &e, "go-1", NULL, F_OPEN_DATA);
  run_cond(&e.loop, r_answered, &f.ctl, 5000, "control answer");
  ASSERT_EQ(f.ctl.status, 200);
  ASSERT_EQ(f.ctl.early, 0);
  run_for(&e.loop, 50);
  ASSERT_EQ(f.ctl.total, 0); /* nothing until a dial */
  dclient_t c = {0};
  dc_dial(&c, &e, "go-1", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 5000, "dial through a Go-like listener");
  ASSERT_OK(c.status);
  ASSERT_EQ(f.ndata, 1);
  ASSERT_EQ(f.data[0].status, 200);
  ASSERT_EQ(f.ctl.total, sizeof(conn_ready_line) - 1);
  ASSERT_STR_EQ(f.ctl.rx, conn_ready_line);
  /* Bytes both ways on the data stream. */
  static char hello[] = "hello";
  h2rev_write_t w;
  w.data = &c;
  uv_buf_t b = uv_buf_init(hello, 5);
  ASSERT_OK(h2rev_stream_write(&w, &c.s, &b, 1, dc_wrote));
  run_until(&e.loop, &c.wrote, 2000);
  run_for(&e.loop, 50);
  ASSERT_EQ(f.data[0].total, 5);
  ASSERT_STR_EQ(f.data[0].rx, "hello");
  r_write(&f.data[0], "world", 5);
  run_for(&e.loop, 50);
  ASSERT_EQ(c.nread, 5);
  ASSERT_MEM_EQ(c.head, "world", 5);
  h2rev_stream_close(&c.s, dc_closed);
  run_until(&e.loop, &c.closed, 2000);
  dc_free(&c);
  ASSERT_EQ(stats(&e).conn_ready_sent, 1);
  f_stop(&f);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

static int order[4];
static int norder;

static void order_dialed(h2rev_dial_t *req, int status) {
  dc_dialed(req, status);
  order[norder++] = 1;
}

static void order_closed(h2rev_dialer_t *d) {
  order[norder++] = 2;
  dialer_closed_cb(d);
}

/* Closing the dialer cancels pending dials, and dials started while it
 * closes, before its close callback. */
TEST(dialer_close_cancels_dials) {
  env_t e;
  env_init(&e, NULL);
  fake_t f;
  ASSERT_EQ(f_attach(&f, &e, "pending", NULL, F_IGNORE), 200);
  dclient_t c = {0}, c2 = {0};
  c.s.data = &c;
  c.req.data = &c;
  test_sha_init(&c.rx);
  ASSERT_OK(h2rev_dial(&c.req, &e.d, "pending", &c.s, 5000, order_dialed));
  run_for(&e.loop, 50);
  ASSERT_EQ(f.conn_ready, 1);
  e.dialer_open = 0;
  h2rev_dialer_close(&e.d, order_closed);
  c2.s.data = &c2;
  c2.req.data = &c2;
  test_sha_init(&c2.rx);
  ASSERT_OK(h2rev_dial(&c2.req, &e.d, "pending", &c2.s, 5000, order_dialed));
  run_until(&e.loop, &e.dialer_closed, 5000);
  ASSERT_EQ(norder, 3);
  ASSERT_EQ(order[0], 1);
  ASSERT_EQ(order[1], 1);
  ASSERT_EQ(order[2], 2);
  ASSERT_EQ(c.status, UV_ECANCELED);
  ASSERT_EQ(c2.status, UV_ECANCELED);
  dc_free(&c);
  dc_free(&c2);
  run_cond(&e.loop, r_ended, &f.ctl, 5000, "fake's control stream ended");
  f_stop(&f);
  loop_drain(&e.loop);
}

/* The same with no connection at all: only dials to wait for, one completed
 * just before the close, one started during it. */
TEST(dialer_close_idle_dial) {
  env_t e;
  env_init(&e, NULL);
  norder = 0;
  dclient_t c = {0}, c2 = {0};
  c.s.data = &c;
  c.req.data = &c;
  test_sha_init(&c.rx);
  ASSERT_OK(h2rev_dial(&c.req, &e.d, "x", &c.s, 5000, order_dialed));
  e.dialer_open = 0;
  h2rev_dialer_close(&e.d, order_closed);
  c2.s.data = &c2;
  c2.req.data = &c2;
  test_sha_init(&c2.rx);
  ASSERT_OK(h2rev_dial(&c2.req, &e.d, "x", &c2.s, 5000, order_dialed));
  run_until(&e.loop, &e.dialer_closed, 5000);
  ASSERT_EQ(norder, 3);
  ASSERT_EQ(order[0], 1);
  ASSERT_EQ(order[1], 1);
  ASSERT_EQ(order[2], 2);
  ASSERT_EQ(c.status, H2REV_ENOLISTENER);
  ASSERT_EQ(c2.status, UV_ECANCELED);
  dc_free(&c);
  dc_free(&c2);
  loop_drain(&e.loop);
}

static int fs_controls_2(void *arg) {
  return ((fsrv_t *)arg)->controls >= 2;
}

/* The dialer sends garbage on the control stream: the listener drops that
 * connection (H2REV_ECONTROL) and attaches again. */
TEST(listener_malformed_control_reconnects) {
  env_t fe;
  memset(&fe, 0, sizeof(fe));
  ASSERT_OK(uv_loop_init(&fe.loop));
  test_path(fe.ca, sizeof(fe.ca), test_certs(), "ca.pem");
  fsrv_t t;
  fs_start(&t, &fe.loop);
  fe.port = t.port;
  lis_t L;
  lis_start(&L, &fe, "ears", 1, NULL);
  run_cond(&fe.loop, lis_attached, &L, 5000, "listener attached");
  r_write(&t.ctl, "not json\n", 9);
  run_cond(&fe.loop, fs_controls_2, &t, 5000, "a second control stream");
  ASSERT_EQ(L.lost, 1);
  ASSERT_EQ(L.last_err, H2REV_ECONTROL);
  ASSERT_EQ(t.sessions, 2);
  run_cond(&fe.loop, lis_attached, &L, 5000, "attached");
  volatile int two = 0;
  while (!two) {
    run_for(&fe.loop, 10);
    two = L.attached == 2;
  }
  lis_stop(&L);
  run_cond(&fe.loop, fs_gone, &t, 5000, "fake dialer's sessions closed");
  r_close(&t.ctl);
  uv_close((uv_handle_t *)&t.tcp, NULL);
  SSL_CTX_free(t.ctx);
  loop_drain(&fe.loop);
}

/* A listener refused because its id is taken retries, and attaches once the
 * id is free. */
TEST(listener_retries_when_id_taken) {
  env_t e;
  env_init(&e, NULL);
  fake_t f;
  ASSERT_EQ(f_attach(&f, &e, "busy", NULL, F_IGNORE), 200);
  lis_t L;
  lis_start(&L, &e, "busy", 1, NULL);
  volatile int lost = 0;
  double start = now_ms();
  while (!lost) {
    run_for(&e.loop, 10);
    lost = L.lost >= 2;
    ASSERT_LT(now_ms() - start, 5000);
  }
  ASSERT_EQ(L.last_err, H2REV_EIDTAKEN);
  ASSERT_EQ(L.attached, 0);
  ASSERT_EQ(stats(&e).listeners, 1);
  f_stop(&f);
  run_cond(&e.loop, lis_attached, &L, 5000, "attached once the id is free");
  echo_through(&e, "busy", 2000, 9);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

static int lis_stopped(void *arg) {
  return ((lis_t *)arg)->stopped > 0;
}

/* Nothing listens: max_retries attempts, then STOPPED. */
TEST(listener_gives_up) {
  env_t e;
  env_init(&e, NULL);
  int port = e.port;
  dialer_stop(&e);
  e.port = port;
  lis_t L;
  memset(&L, 0, sizeof(L));
  L.e = &e;
  char url[128];
  snprintf(url, sizeof(url), "https://127.0.0.1:%d/base", port);
  h2rev_listener_options_t o = {0};
  o.url = url;
  o.id = "lonely";
  o.tls.ca_file = e.ca;
  o.backoff_min_ms = 20;
  o.backoff_max_ms = 40;
  o.max_retries = 2;
  o.on_state = lis_state;
  test_logger(&o.log, "lonely");
  ASSERT_OK(h2rev_listener_init(&e.loop, &L.l, &o));
  L.l.data = &L;
  ASSERT_OK(h2rev_listener_start(&L.l, lis_conn));
  ASSERT_EQ(h2rev_listener_start(&L.l, lis_conn), UV_EALREADY);
  L.open = 1;
  run_cond(&e.loop, lis_stopped, &L, 5000, "gave up");
  ASSERT_EQ(L.lost, 3);
  ASSERT_EQ(L.last_err, UV_ECONNREFUSED);
  ASSERT_EQ(L.attached, 0);
  lis_stop(&L);
  loop_drain(&e.loop);
}

/* The dialer closed from inside a dial's callback: its close callback runs
 * once, after every handle inside it is closed (ASan: no use after free). */
static void close_in_dial_cb(h2rev_dial_t *req, int status) {
  env_t *e = req->data;
  ASSERT_EQ(status, H2REV_ENOLISTENER);
  e->dialer_open = 0;
  h2rev_dialer_close(&e->d, dialer_closed_cb);
  ASSERT_EQ(e->dialer_closed, 0);
}

TEST(dialer_close_inside_dial_callback) {
  env_t e;
  env_init(&e, NULL);
  h2rev_dial_t req;
  h2rev_stream_t s;
  req.data = &e;
  ASSERT_OK(h2rev_dial(&req, &e.d, "nobody", &s, 1000, close_in_dial_cb));
  run_until(&e.loop, &e.dialer_closed, 5000);
  ASSERT_NULL(e.d.d_);
  loop_drain(&e.loop);
}

/* Attach and detach events, and the list of attached listeners. */
static int nev, ev_kind[8];
static char ev_id[8][32];
static uint64_t ev_since;

static void on_listener_ev(h2rev_dialer_t *d, int ev, const h2rev_listener_info_t *info) {
  ASSERT_NOT_NULL(d);
  ASSERT_LT(nev, 8);
  ev_kind[nev] = ev;
  snprintf(ev_id[nev], sizeof(ev_id[nev]), "%s", info->id);
  ASSERT_EQ(strncmp(info->peer, "127.0.0.1:", 10), 0);
  if (ev == H2REV_EV_ATTACH)
    ev_since = info->attached_at;
  nev++;
}

static int two_events(void *arg) {
  (void)arg;
  return nev >= 2;
}

static int three_events(void *arg) {
  (void)arg;
  return nev >= 3;
}

static int count_ids(void *arg, const h2rev_listener_info_t *info) {
  ASSERT(strcmp(info->id, "alpha") == 0 || strcmp(info->id, "beta") == 0);
  ++*(int *)arg;
  return 0;
}

static int stop_at_first(void *arg, const h2rev_listener_info_t *info) {
  (void)info;
  ++*(int *)arg;
  return 7;
}

TEST(listener_events_and_list) {
  h2rev_dialer_options_t o = {.on_listener = on_listener_ev};
  env_t e;
  env_init(&e, &o);
  nev = 0;
  h2rev_listener_info_t info[4];
  ASSERT_EQ(h2rev_dialer_listeners(&e.d, info, 4), 0);
  lis_t A, B;
  lis_start(&A, &e, "alpha", 2, NULL);
  lis_start(&B, &e, "beta", 0, NULL);
  run_cond(&e.loop, two_events, NULL, 5000, "two attach events");
  ASSERT_EQ(ev_kind[0], H2REV_EV_ATTACH);
  ASSERT_EQ(ev_kind[1], H2REV_EV_ATTACH);
  ASSERT(strcmp(ev_id[0], "alpha") == 0 || strcmp(ev_id[1], "alpha") == 0);
  ASSERT(strcmp(ev_id[0], "beta") == 0 || strcmp(ev_id[1], "beta") == 0);
  ASSERT_GT(ev_since, 0);
  run_cond(&e.loop, lis_attached, &A, 5000, "alpha attached");
  ASSERT_EQ(h2rev_dialer_listeners(&e.d, info, 4), 2);
  ASSERT_EQ(h2rev_dialer_listeners(&e.d, info, 1), 2); /* the count, beyond cap */
  h2rev_dialer_listeners(&e.d, info, 4);
  int alpha = strcmp(info[0].id, "alpha") == 0 ? 0 : 1;
  ASSERT_STR_EQ(info[alpha].id, "alpha");
  ASSERT_STR_EQ(info[1 - alpha].id, "beta");
  ASSERT_EQ(info[alpha].pending, 0);
  ASSERT_EQ(info[alpha].streams, 0); /* idle: the control stream and spares only */
  ASSERT_LE(info[alpha].attached_at, uv_now(&e.loop));
  /* The same through the iteration, which stops at the first nonzero. */
  int seen = 0;
  ASSERT_EQ(h2rev_dialer_foreach(&e.d, count_ids, &seen), 0);
  ASSERT_EQ(seen, 2);
  seen = 0;
  ASSERT_EQ(h2rev_dialer_foreach(&e.d, stop_at_first, &seen), 7);
  ASSERT_EQ(seen, 1);
  /* The listener's side counts its attempt and attachment. */
  run_cond(&e.loop, lis_attached, &B, 5000, "beta attached");
  h2rev_listener_stats_t ls;
  h2rev_listener_stats(&A.l, &ls);
  ASSERT_EQ(ls.state, H2REV_LISTENER_ATTACHED);
  ASSERT_EQ(ls.attempts, 1);
  ASSERT_EQ(ls.attachments, 1);
  ASSERT_EQ(ls.failures, 0);
  ASSERT_EQ(ls.last_error, 0);
  ASSERT_GT(ls.attached_at, 0);
  ASSERT_GE(ls.streams_open, 1); /* the control stream at least */
  lis_stop(&B);
  run_cond(&e.loop, three_events, NULL, 5000, "detach event");
  ASSERT_EQ(ev_kind[2], H2REV_EV_DETACH);
  ASSERT_STR_EQ(ev_id[2], "beta");
  ASSERT_EQ(h2rev_dialer_listeners(&e.d, info, 4), 1);
  ASSERT_STR_EQ(info[0].id, "alpha");
  /* No event while the dialer closes, though alpha goes with it. */
  dialer_stop(&e);
  ASSERT_EQ(nev, 3);
  lis_stop(&A);
  loop_drain(&e.loop);
}

static int r_reset(void *arg) {
  rstrm_t *r = arg;
  return r->err != 0 || r->gone;
}

/* A data stream handed back after an exchange (HTTP/1.1 keep-alive, see proxy.c) waits
 * for the next dial when the listener states the roles of its streams (h2rev's), and is
 * closed at once when it does not (Go's, whose http.Server loses a request that reaches
 * a kept-alive connection before the previous handler has returned). */
TEST(recycle_only_for_a_listener_stating_roles) {
  env_t e;
  env_init(&e, NULL);
  fake_t h, g;
  ASSERT_EQ(f_attach(&h, &e, "h", "control", F_OPEN_DATA), 200);
  ASSERT_EQ(f_attach(&g, &e, "g", NULL, F_OPEN_DATA), 200);
  dclient_t c = {0};

  dc_dial(&c, &e, "h", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 5000, "dial to h");
  ASSERT_OK(c.status);
  ASSERT_EQ(h.conn_ready, 1);
  ASSERT(h2rev_dialer_recycle(&e.d, "h", &c.s) == 0);
  ASSERT_EQ(stats(&e).spares, 1);
  dc_free(&c);
  dc_dial(&c, &e, "h", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 5000, "second dial to h");
  ASSERT_OK(c.status);
  run_for(&e.loop, 50);
  ASSERT_EQ(h.conn_ready, 1); /* the same stream again */
  ASSERT_EQ(h.ndata, 1);
  ASSERT_EQ(h.data[0].err, 0);
  h2rev_stream_close(&c.s, dc_closed);
  run_until(&e.loop, &c.closed, 5000);
  dc_free(&c);

  dc_dial(&c, &e, "g", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 5000, "dial to g");
  ASSERT_OK(c.status);
  ASSERT_EQ(g.conn_ready, 1);
  ASSERT(h2rev_dialer_recycle(&e.d, "g", &c.s) == 0);
  ASSERT_EQ(stats(&e).spares, 0);
  run_cond(&e.loop, r_reset, &g.data[0], 5000, "g's data stream reset");
  dc_free(&c);
  dc_dial(&c, &e, "g", NULL, 0, 5000);
  run_cond(&e.loop, dc_done, &c, 5000, "second dial to g");
  ASSERT_OK(c.status);
  ASSERT_EQ(g.conn_ready, 2); /* a new stream for each request */
  h2rev_stream_close(&c.s, dc_closed);
  run_until(&e.loop, &c.closed, 5000);
  dc_free(&c);

  f_stop(&h);
  f_stop(&g);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* Every attached listener gets a keep-alive each keepalive_ms, the dialer
 * taking its listeners in slices over that time rather than all at once
 * (one pass over thousands of listeners held the loop): 40 of them, spread
 * over the table, keepalive_ms 640, watched for two periods and a half;
 * their first keep-alives come at times spread over the period. */
#define KA_FAKES 40

static int count_lines(const char *s, const char *line) {
  int n = 0;
  for (const char *p = strstr(s, line); p != NULL; p = strstr(p + 1, line))
    n++;
  return n;
}

TEST(keepalive_every_listener_each_period) {
  h2rev_dialer_options_t o = {.keepalive_ms = 640};
  env_t e;
  env_init(&e, &o);
  static fake_t f[KA_FAKES];
  for (int i = 0; i < KA_FAKES; i++) {
    char id[16];
    snprintf(id, sizeof(id), "ka%d", i);
    ASSERT_EQ(f_attach(&f[i], &e, id, NULL, F_IGNORE), 200);
  }
  for (int i = 0; i < KA_FAKES; i++) {
    f[i].ctl.rx[0] = '\0', f[i].ctl.rxlen = f[i].ctl.scan = 0;
    f[i].ctl.ka_watch = 1;
  }
  run_for(&e.loop, 1600);
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int i = 0; i < KA_FAKES; i++) {
    ASSERT_GT(f[i].ctl.first_ka, 0);
    lo = f[i].ctl.first_ka < lo ? f[i].ctl.first_ka : lo;
    hi = f[i].ctl.first_ka > hi ? f[i].ctl.first_ka : hi;
  }
  ASSERT_GE(hi - lo, 640 / 4);
  static const char ka[] = "{\"command\":\"keep-alive\"}\n";
  for (int i = 0; i < KA_FAKES; i++) {
    int n = count_lines(f[i].ctl.rx, ka);
    if (n < 2 || n > 4)
      test_fail(__FILE__, __LINE__, "listener %s got %d keep-alives in 1600 ms (640 ms period)",
                f[i].id, n);
  }
  for (int i = 0; i < KA_FAKES; i++)
    f_stop(&f[i]);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* ------------------------------------------------- replicas (issue 18) */

#define REP_MAX 4
static struct {
  int attached[REP_MAX], lost[REP_MAX], last_err[REP_MAX];
  char replica[REP_MAX][72];
} rep;

static void lis_replica(h2rev_listener_t *l, unsigned index, const char *replica, int state,
                        int err, unsigned delay) {
  (void)l;
  (void)delay;
  ASSERT_LT(index, REP_MAX);
  snprintf(rep.replica[index], sizeof(rep.replica[index]), "%s", replica);
  if (state == H2REV_LISTENER_ATTACHED)
    rep.attached[index]++;
  else if (state == H2REV_LISTENER_LOST)
    rep.lost[index]++, rep.last_err[index] = err;
}

static int rep_both_attached(void *arg) {
  (void)arg;
  return rep.attached[0] > 0 && rep.attached[1] > 0;
}

static void rep_listener(lis_t *L, env_t *e, const char *id, const char *const *urls) {
  memset(L, 0, sizeof(*L));
  memset(&rep, 0, sizeof(rep));
  L->e = e;
  char url[128];
  snprintf(url, sizeof(url), "https://127.0.0.1:%d/base", e->port);
  h2rev_listener_options_t o = {0};
  o.url = url;
  o.urls = urls;
  o.id = id;
  o.tls.ca_file = e->ca;
  o.backoff_min_ms = 50;
  o.backoff_max_ms = 200;
  o.on_state = lis_state;
  o.on_replica = lis_replica;
  test_logger(&o.log, id);
  ASSERT_OK(h2rev_listener_init(&e->loop, &L->l, &o));
  L->l.data = L;
  ASSERT_OK(h2rev_listener_start(&L->l, lis_conn));
  L->open = 1;
}

/* Two replicas at two URLs: one attachment each, named by the replica's
 * x-h2rev-replica; on_state says ATTACHED once for the listener. */
TEST(listener_attaches_to_each_replica_url) {
  env_t e;
  h2rev_dialer_options_t o = {.replica_id = "ra"};
  env_init(&e, &o);
  ASSERT_STR_EQ(h2rev_dialer_replica_id(&e.d), "ra");
  h2rev_dialer_t d2;
  h2rev_dialer_options_t o2 = {.base_path = "/base", .replica_id = "rb", .replicas = 2};
  test_logger(&o2.log, "dialer-b");
  ASSERT_OK(h2rev_dialer_init(&e.loop, &d2, &o2));
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  h2rev_tls_options_t tls = {.cert_file = e.cert, .key_file = e.key};
  ASSERT_OK(h2rev_dialer_listen(&d2, (struct sockaddr *)&a, &tls));
  struct sockaddr_in b;
  int len = sizeof(b);
  ASSERT_OK(h2rev_dialer_getsockname(&d2, 0, (struct sockaddr *)&b, &len));
  char url2[128];
  snprintf(url2, sizeof(url2), "https://127.0.0.1:%d/base", ntohs(b.sin_port));
  const char *urls[] = {url2, NULL};
  lis_t L;
  rep_listener(&L, &e, "two", urls);
  run_cond(&e.loop, rep_both_attached, NULL, 5000, "attached to both replicas");
  run_for(&e.loop, 300); /* replicas=2 with two URLs: no third attachment */
  ASSERT_STR_EQ(rep.replica[0], "ra");
  ASSERT_STR_EQ(rep.replica[1], "rb");
  ASSERT_EQ(rep.attached[2], 0);
  ASSERT_EQ(L.attached, 1);
  ASSERT_EQ(L.lost, 0);
  ASSERT_EQ(stats(&e).listeners, 1);
  h2rev_dialer_stats_t st2;
  h2rev_dialer_stats(&d2, &st2);
  ASSERT_EQ(st2.listeners, 1);
  echo_through(&e, "two", 1000, 1);
  lis_stop(&L);
  ASSERT_EQ(L.stopped, 1);
  int d2_closed = 0;
  d2.data = &d2_closed;
  h2rev_dialer_close(&d2, (h2rev_dialer_close_cb)lis_closed_flag);
  run_until(&e.loop, &d2_closed, 5000);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* A dialer that says there are 2 replicas, alone at its URL: the second
 * attachment always reaches the replica the first holds (409 naming it),
 * drops that connection and retries; the listener as a whole stays
 * attached, with no failure to report, and dials go through. */
TEST(listener_drops_duplicate_replica) {
  env_t e;
  h2rev_dialer_options_t o = {.replicas = 2};
  env_init(&e, &o);
  const char *rid = h2rev_dialer_replica_id(&e.d);
  ASSERT_EQ(strlen(rid), 8); /* the default: 4 random bytes in hex */
  ASSERT_EQ(strspn(rid, "0123456789abcdef"), 8);
  lis_t L;
  rep_listener(&L, &e, "dup", NULL);
  run_cond(&e.loop, lis_attached, &L, 5000, "listener attached");
  run_for(&e.loop, 1000);
  ASSERT_STR_EQ(rep.replica[0], rid);
  ASSERT_STR_EQ(rep.replica[1], rid);
  ASSERT_EQ(rep.attached[1], 0);
  ASSERT_GE(rep.lost[1], 3);
  ASSERT_EQ(rep.last_err[1], H2REV_EIDTAKEN);
  ASSERT_EQ(L.attached, 1);
  ASSERT_EQ(L.lost, 0);
  ASSERT_EQ(stats(&e).listeners, 1);
  char buf[256];
  ASSERT_EQ(h2rev_listener_last_error(&L.l, buf, sizeof(buf), NULL), 0);
  echo_through(&e, "dup", 1000, 2);
  lis_stop(&L);
  dialer_stop(&e);
  loop_drain(&e.loop);
}

/* A dialer among replicas: a dial for an id not attached here waits for
 * its listener (still reaching this replica) up to the dial's timeout,
 * instead of failing at once; one whose listener never comes fails then. */
TEST(dial_waits_for_listener_among_replicas) {
  env_t e;
  h2rev_dialer_options_t o = {.replicas = 2};
  env_init(&e, &o);
  dclient_t never = {0};
  dc_dial(&never, &e, "never", NULL, 0, 300);
  char data[1000];
  test_fill_random(data, sizeof(data), 3);
  dclient_t c = {0};
  dc_dial(&c, &e, "late", data, sizeof(data), 5000);
  run_for(&e.loop, 200);
  ASSERT_EQ(c.done, 0);
  lis_t L;
  rep_listener(&L, &e, "late", NULL);
  run_cond(&e.loop, dc_finished, &c, 5000, "the waiting dial");
  ASSERT_OK(c.status);
  dc_check_echo(&c);
  run_cond(&e.loop, dc_done, &never, 2000, "the dial nobody takes");
  ASSERT_EQ(never.status, H2REV_ENOLISTENER);
  ASSERT_GE(never.t1 - never.t0, 150); /* not at once (the loop's clock may lag) */
  /* A dial cancelled while it waits, and one the close ends. */
  dclient_t x = {0}, y = {0};
  dc_dial(&x, &e, "nobody", NULL, 0, 5000);
  ASSERT_OK(h2rev_dial_cancel(&x.req));
  run_cond(&e.loop, dc_done, &x, 1000, "cancelled");
  ASSERT_EQ(x.status, UV_ECANCELED);
  dc_dial(&y, &e, "nobody", NULL, 0, 5000);
  lis_stop(&L);
  dc_free(&c);
  dc_free(&never);
  dc_free(&x);
  dialer_stop(&e);
  ASSERT_EQ(y.done, 1);
  ASSERT_EQ(y.status, UV_ECANCELED);
  dc_free(&y);
  loop_drain(&e.loop);
}
