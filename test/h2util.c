#include "h2util.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void log_line(void *arg, int level, const char *msg) {
  fprintf(stderr, "[%s] %d %s\n", (const char *)arg, level, msg);
}

void test_logger(h2rev_logger_t *lg, const char *who) {
  lg->cb = log_line;
  lg->arg = (void *)who;
  lg->level = getenv("H2REV_TEST_DEBUG") ? H2REV_LOG_DEBUG : H2REV_LOG_INFO;
}

/* ------------------------------------------------------------ handlers */

typedef struct hstream {
  h2rev_stream_t s;
  tserver_t *t;
  size_t queued;
  int mode;
  uint64_t left; /* /source */
  h2rev_shutdown_t sh;
  h2rev_write_t tailw;
} hstream_t;

enum { H_ECHO, H_ECHO_TAIL, H_SOURCE, H_RESET };

typedef struct hwrite {
  h2rev_write_t w;
  hstream_t *h;
  size_t len;
  char data[];
} hwrite_t;

static void h_closed(h2rev_stream_t *s) {
  free(s->data);
}

static void h_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s;
  hwrite_t *w = malloc(sizeof(*w) + sz);
  *buf = uv_buf_init(w->data, (unsigned)sz);
}

static void h_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void h_wrote(h2rev_write_t *req, int status) {
  hwrite_t *w = H2R_CONTAINER_OF(req, hwrite_t, w);
  hstream_t *h = w->h;
  h->queued -= w->len;
  free(w);
  if (status == 0 && h->queued < (512 << 10) && !h2rev_stream_is_closing(&h->s))
    h2rev_stream_read_start(&h->s, h_alloc, h_read);
}

static void h_shut(h2rev_shutdown_t *req, int status) {
  (void)status;
  hstream_t *h = req->data;
  if (!h2rev_stream_is_closing(&h->s))
    h2rev_stream_close(&h->s, h_closed);
}

static void h_tail_done(h2rev_write_t *req, int status) {
  (void)req, (void)status;
}

static void h_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  hstream_t *h = s->data;
  if (n <= 0) {
    if (buf->base != NULL)
      free(H2R_CONTAINER_OF(buf->base, hwrite_t, data));
    if (n == 0)
      return;
    if (n == UV_EOF) {
      if (h->mode == H_ECHO_TAIL) {
        static char tail[] = "tail";
        uv_buf_t b = uv_buf_init(tail, 4);
        h2rev_stream_write(&h->tailw, s, &b, 1, h_tail_done);
      }
      h->sh.data = h;
      h2rev_stream_shutdown(&h->sh, s, h_shut);
    } else {
      h2rev_stream_close(s, h_closed);
    }
    return;
  }
  hwrite_t *w = H2R_CONTAINER_OF(buf->base, hwrite_t, data);
  w->h = h;
  w->len = (size_t)n;
  h->queued += (size_t)n;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
  ASSERT_OK(h2rev_stream_write(&w->w, s, &b, 1, h_wrote));
  if (h->queued >= (1 << 20))
    h2rev_stream_read_stop(s);
}

static void h_source_more(hstream_t *h);

static void h_source_wrote(h2rev_write_t *req, int status) {
  hwrite_t *w = H2R_CONTAINER_OF(req, hwrite_t, w);
  hstream_t *h = w->h;
  h->queued -= w->len;
  free(w);
  if (status == 0)
    h_source_more(h);
}

static void h_source_more(hstream_t *h) {
  while (h->left > 0 && h->queued < (2 << 20)) {
    size_t n = h->left < 65536 ? (size_t)h->left : 65536;
    hwrite_t *w = malloc(sizeof(*w) + n);
    /* The same stream as test_fill_random(buf, total, 7) produces in one go
     * only when generated in one go; so the client checks a running hash of
     * the generator fed with the same chunk sizes. */
    test_fill_random(w->data, n, 7 + h->left);
    w->h = h;
    w->len = n;
    h->left -= n;
    h->queued += n;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    ASSERT_OK(h2rev_stream_write(&w->w, &h->s, &b, 1, h_source_wrote));
  }
  if (h->left == 0 && h->sh.data == NULL) {
    h->sh.data = h;
    h2rev_stream_shutdown(&h->sh, &h->s, h_shut);
  }
}

static void on_request(h2r_session_t *s, h2r_strm_t *st) {
  tserver_t *t = s->owner;
  t->requests++;
  size_t len;
  const char *path = h2r_strm_header(st, ":path", &len);
  ASSERT_NOT_NULL(path);
  hstream_t *h = calloc(1, sizeof(*h));
  h->t = t;
  h->s.data = h;
  if (strcmp(path, "/echo") == 0)
    h->mode = H_ECHO;
  else if (strcmp(path, "/echo-tail") == 0)
    h->mode = H_ECHO_TAIL;
  else if (strncmp(path, "/source?n=", 10) == 0)
    h->mode = H_SOURCE, h->left = strtoull(path + 10, NULL, 10);
  else if (strcmp(path, "/reset") == 0)
    h->mode = H_RESET;
  else {
    free(h);
    h2r_strm_reject(st, 404, "no such path\n");
    return;
  }
  h2r_strm_attach(st, &h->s);
  ASSERT_OK(h2r_strm_respond(st, 200, NULL, 0));
  if (h->mode == H_RESET) {
    h2rev_stream_close(&h->s, h_closed);
  } else if (h->mode == H_SOURCE) {
    h_source_more(h);
  } else {
    ASSERT_OK(h2rev_stream_read_start(&h->s, h_alloc, h_read));
  }
}

static void srv_open(h2r_session_t *s, int status) {
  tserver_t *t = s->owner;
  if (status != 0)
    t->last_err = status;
}

static void srv_dead(h2r_session_t *s, int err) {
  tserver_t *t = s->owner;
  if (err != 0)
    t->last_err = err;
}

static void srv_close(h2r_session_t *s) {
  tserver_t *t = s->owner;
  t->open--;
  free(s);
}

static const h2r_session_cbs srv_cbs = {srv_open, on_request, srv_dead, srv_close, NULL, NULL};

static void on_conn(uv_stream_t *server, int status) {
  tserver_t *t = server->data;
  ASSERT_OK(status);
  h2r_session_t *s = malloc(sizeof(*s));
  t->sessions++;
  t->open++;
  ASSERT_OK(h2r_session_accept(s, t->loop, server, t->ctx, &t->o, &srv_cbs, t, &t->log));
}

void tserver_start(tserver_t *t, uv_loop_t *loop, const char *cert, const h2r_session_opts *o) {
  memset(t, 0, sizeof(*t));
  t->loop = loop;
  test_logger(&t->log, "server");
  if (o != NULL)
    t->o = *o;
  else
    h2r_session_opts_default(&t->o);
  if (cert != NULL) {
    char c[512], k[512], name[64], errbuf[256];
    snprintf(name, sizeof(name), "%s.pem", cert);
    test_path(c, sizeof(c), test_certs(), name);
    snprintf(name, sizeof(name), "%s.key", cert);
    test_path(k, sizeof(k), test_certs(), name);
    h2rev_tls_options_t to = {.cert_file = c, .key_file = k};
    int err = 0;
    t->ctx = h2r_tls_ctx_new(&to, true, H2R_ALPN_H2, &err, errbuf, sizeof(errbuf));
    ASSERT_NOT_NULL(t->ctx);
  }
  ASSERT_OK(uv_tcp_init(loop, &t->tcp));
  t->tcp.data = t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(uv_tcp_bind(&t->tcp, (struct sockaddr *)&a, 0));
  ASSERT_OK(uv_listen((uv_stream_t *)&t->tcp, 128, on_conn));
  struct sockaddr_in b;
  int len = sizeof(b);
  uv_tcp_getsockname(&t->tcp, (struct sockaddr *)&b, &len);
  t->port = ntohs(b.sin_port);
}

void tserver_stop(tserver_t *t) {
  uv_close((uv_handle_t *)&t->tcp, NULL);
  if (t->ctx != NULL)
    SSL_CTX_free(t->ctx);
  t->ctx = NULL;
}

/* -------------------------------------------------------------- client */

static void cli_open(h2r_session_t *s, int status) {
  tclient_t *c = s->owner;
  c->opened = status == 0 ? 1 : -1;
  c->err = status;
  if (c->on_open != NULL)
    c->on_open(c);
}

static void cli_dead(h2r_session_t *s, int err) {
  tclient_t *c = s->owner;
  c->dead = 1;
  c->err = err;
}

static void cli_close(h2r_session_t *s) {
  tclient_t *c = s->owner;
  c->closed = 1;
}

static void cli_request(h2r_session_t *s, h2r_strm_t *st) {
  (void)s;
  h2r_strm_abandon(st);
}

static const h2r_session_cbs cli_cbs = {cli_open, cli_request, cli_dead, cli_close, NULL, NULL};

SSL_CTX *tls_client_ctx(const char *ca) {
  char path[512], errbuf[256];
  h2rev_tls_options_t to = {0};
  if (strcmp(ca, "none") == 0) {
    to.insecure = 1;
  } else {
    snprintf(errbuf, sizeof(errbuf), "%s.pem", ca);
    to.ca_file = test_path(path, sizeof(path), test_certs(), errbuf);
  }
  int err = 0;
  SSL_CTX *ctx = h2r_tls_ctx_new(&to, false, H2R_ALPN_H2, &err, errbuf, sizeof(errbuf));
  ASSERT_NOT_NULL(ctx);
  return ctx;
}

void tclient_connect(tclient_t *c, uv_loop_t *loop, int port, const char *ca, const char *host,
                     const h2r_session_opts *o) {
  void (*on_open)(tclient_t *) = c->on_open;
  void *data = c->data;
  memset(c, 0, sizeof(*c));
  c->on_open = on_open;
  c->data = data;
  test_logger(&c->log, "client");
  SSL_CTX *ctx = ca != NULL ? tls_client_ctx(ca) : NULL;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  ASSERT_OK(h2r_session_connect(&c->s, loop, (struct sockaddr *)&a, ctx, host ? host : "127.0.0.1",
                                o, &cli_cbs, c, &c->log));
  if (ctx != NULL)
    SSL_CTX_free(ctx); /* the SSL object keeps a reference */
}

void tclient_stream(tclient_t *c, h2rev_stream_t *pub, const char *path) {
  nghttp2_nv nva[] = {
      {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
      {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
      {(uint8_t *)":authority", (uint8_t *)"localhost", 10, 9, 0},
      {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
  };
  h2r_strm_t *st = h2r_session_request(&c->s, nva, 4, NULL, NULL);
  ASSERT_NOT_NULL(st);
  h2r_strm_attach(st, pub);
}

/* ----------------------------------------------------------------- loop */

static void on_deadline(uv_timer_t *t) {
  *(int *)t->data = 1;
}

void run_until(uv_loop_t *loop, volatile int *flag, unsigned timeout_ms) {
  uv_timer_t t;
  int expired = 0;
  uv_timer_init(loop, &t);
  t.data = &expired;
  uv_timer_start(&t, on_deadline, timeout_ms, 0);
  while (!*flag && !expired)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  if (!*flag)
    test_fail(__FILE__, __LINE__, "condition not reached within %u ms", timeout_ms);
}

void tpair_open(uv_loop_t *loop, tserver_t *srv, tclient_t *cl, const char *cert, const char *host,
                const h2r_session_opts *o) {
  tserver_start(srv, loop, cert, o);
  tclient_connect(cl, loop, srv->port, cert != NULL ? "ca" : NULL, host, o);
  run_until(loop, &cl->opened, 5000);
}

void tpair_close(uv_loop_t *loop, tserver_t *srv, tclient_t *cl) {
  h2r_session_shutdown(&cl->s);
  run_until(loop, &cl->closed, 5000);
  tserver_stop(srv);
  loop_drain(loop);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

void loop_drain(uv_loop_t *loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  uv_walk(loop, close_walk, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  ASSERT_OK(uv_loop_close(loop));
}

void source_sha(uint64_t total, unsigned char out[32]) {
  test_sha_t sha;
  test_sha_init(&sha);
  char *buf = malloc(65536);
  for (uint64_t left = total; left > 0;) {
    size_t n = left < 65536 ? (size_t)left : 65536;
    test_fill_random(buf, n, 7 + left);
    test_sha_update(&sha, buf, n);
    left -= n;
  }
  free(buf);
  test_sha_final(&sha, out);
}
