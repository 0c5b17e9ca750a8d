/* Allocations that fail inside the library, on loopback: a server that
 * cannot set up a connection closes it at once and goes on serving the
 * next ones; a listener that cannot start a session reports it and retries.
 *
 * The failures are chosen here, not in the library: this test is linked
 * with --wrap for the functions below (test/CMakeLists.txt), so that the
 * library's calls to them go through the __wrap_ versions, which fail the
 * next call when a test asks for it and otherwise call the real one. */
#include "h2util.h"
#include "internal.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------ the failures */

static int fail_hconn;     /* callocs of a server connection to fail */
static int fail_server_ng; /* nghttp2 server sessions */
static int fail_client_ng; /* nghttp2 client sessions */
static int fail_ssl;       /* SSL objects */

void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size) {
  if (fail_hconn > 0 && n == 1 && size == sizeof(h2r_hconn_t)) {
    fail_hconn--;
    return NULL;
  }
  return __real_calloc(n, size);
}

int __real_nghttp2_session_server_new2(nghttp2_session **s, const nghttp2_session_callbacks *cb,
                                       void *ud, const nghttp2_option *o);
int __wrap_nghttp2_session_server_new2(nghttp2_session **s, const nghttp2_session_callbacks *cb,
                                       void *ud, const nghttp2_option *o);
int __wrap_nghttp2_session_server_new2(nghttp2_session **s, const nghttp2_session_callbacks *cb,
                                       void *ud, const nghttp2_option *o) {
  if (fail_server_ng > 0) {
    fail_server_ng--;
    return NGHTTP2_ERR_NOMEM;
  }
  return __real_nghttp2_session_server_new2(s, cb, ud, o);
}

int __real_nghttp2_session_client_new2(nghttp2_session **s, const nghttp2_session_callbacks *cb,
                                       void *ud, const nghttp2_option *o);
int __wrap_nghttp2_session_client_new2(nghttp2_session **s, const nghttp2_session_callbacks *cb,
                                       void *ud, const nghttp2_option *o);
int __wrap_nghttp2_session_client_new2(nghttp2_session **s, const nghttp2_session_callbacks *cb,
                                       void *ud, const nghttp2_option *o) {
  if (fail_client_ng > 0) {
    fail_client_ng--;
    return NGHTTP2_ERR_NOMEM;
  }
  return __real_nghttp2_session_client_new2(s, cb, ud, o);
}

SSL *__real_SSL_new(SSL_CTX *ctx);
SSL *__wrap_SSL_new(SSL_CTX *ctx);
SSL *__wrap_SSL_new(SSL_CTX *ctx) {
  if (fail_ssl > 0) {
    fail_ssl--;
    return NULL;
  }
  return __real_SSL_new(ctx);
}

/* -------------------------------------------------------------- logs */

static char warned[4096]; /* the warnings logged, one per line */

static void log_cb(void *arg, int level, const char *msg) {
  fprintf(stderr, "[%s] %d %s\n", (const char *)arg, level, msg);
  size_t n = strlen(warned);
  if (level <= H2REV_LOG_WARN && n + strlen(msg) + 2 < sizeof(warned))
    snprintf(warned + n, sizeof(warned) - n, "%s\n", msg);
}

/* ------------------------------------------------- a raw TCP client */

typedef struct raw {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t w;
  const char *send; /* written once connected; NULL: nothing */
  char rx[4096];
  size_t rxlen;
  ssize_t end; /* what ended the reading: UV_EOF, an error */
  int closed;
} raw_t;

static void raw_closed(uv_handle_t *h) {
  ((raw_t *)h->data)->closed = 1;
}

static void raw_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  raw_t *r = h->data;
  (void)sz;
  *buf = uv_buf_init(r->rx + r->rxlen, (unsigned)(sizeof(r->rx) - 1 - r->rxlen));
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  raw_t *r = s->data;
  (void)buf;
  if (n > 0) {
    r->rxlen += (size_t)n;
    r->rx[r->rxlen] = '\0';
    return;
  }
  if (n < 0) {
    r->end = n;
    uv_close((uv_handle_t *)s, raw_closed);
  }
}

static void raw_wrote(uv_write_t *w, int status) {
  (void)w, (void)status; /* a server that closes at once may reset it: the reading says */
}

static void raw_connected(uv_connect_t *c, int status) {
  raw_t *r = c->handle->data;
  ASSERT_OK(status);
  if (r->send != NULL) {
    uv_buf_t b = uv_buf_init((char *)r->send, (unsigned)strlen(r->send));
    ASSERT_OK(uv_write(&r->w, (uv_stream_t *)&r->tcp, &b, 1, raw_wrote));
  }
  ASSERT_OK(uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read));
}

/* Connects to 127.0.0.1:port, sends send, reads until the server closes:
 * what it answered is in r->rx. Fails the test after 5 s. */
static void raw_exchange(raw_t *r, uv_loop_t *loop, int port, const char *send) {
  memset(r, 0, sizeof(*r));
  r->send = send;
  r->tcp.data = r;
  ASSERT_OK(uv_tcp_init(loop, &r->tcp));
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  ASSERT_OK(uv_tcp_connect(&r->conn, &r->tcp, (struct sockaddr *)&a, raw_connected));
  run_until(loop, &r->closed, 5000);
}

/* ------------------------------------------------------------ server */

typedef struct env {
  uv_loop_t loop;
  h2rev_http_server_t srv;
  int port, tls_port;
  int closed;
} env_t;

static void text(h2rev_http_req_t *req, void *arg) {
  h2rev_http_reply(req, 200, "text/plain", arg, strlen(arg));
}

static int listen_on(h2rev_http_server_t *s, const h2rev_tls_options_t *tls, unsigned n) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_http_server_listen(s, (struct sockaddr *)&a, tls));
  struct sockaddr_in b;
  int len = sizeof(b);
  ASSERT_OK(h2rev_http_server_getsockname(s, n, (struct sockaddr *)&b, &len));
  return ntohs(b.sin_port);
}

static void env_init(env_t *e) {
  memset(e, 0, sizeof(*e));
  warned[0] = '\0';
  ASSERT_OK(uv_loop_init(&e->loop));
  h2rev_http_server_options_t o = {0};
  o.log = (h2rev_logger_t){log_cb, "server", H2REV_LOG_INFO};
  ASSERT_OK(h2rev_http_server_init(&e->loop, &e->srv, &o));
  e->srv.data = e;
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/", text, "served\n"));
  e->port = listen_on(&e->srv, NULL, 0);
  char cert[512], key[512];
  test_path(cert, sizeof(cert), test_certs(), "server.pem");
  test_path(key, sizeof(key), test_certs(), "server.key");
  h2rev_tls_options_t tls = {.cert_file = cert, .key_file = key};
  e->tls_port = listen_on(&e->srv, &tls, 1);
}

static void srv_closed(h2rev_http_server_t *s) {
  ((env_t *)s->data)->closed = 1;
}

static void env_stop(env_t *e) {
  h2rev_http_server_close(&e->srv, srv_closed);
  run_until(&e->loop, &e->closed, 5000);
  loop_drain(&e->loop);
}

static const char get[] = "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/* The connection that could not be set up is closed at once, with a line
 * that says why; the next one is served. */
static void refused_then_served(env_t *e, int port, const char *why) {
  raw_t r;
  raw_exchange(&r, &e->loop, port, NULL);
  ASSERT_EQ(r.rxlen, 0);
  ASSERT(r.end == UV_EOF || r.end == UV_ECONNRESET);
  if (strstr(warned, why) == NULL)
    test_fail(__FILE__, __LINE__, "no warning with \"%s\" in:\n%s", why, warned);
  raw_exchange(&r, &e->loop, e->port, get);
  ASSERT_EQ(strncmp(r.rx, "HTTP/1.1 200 ", 13), 0);
  ASSERT_NOT_NULL(strstr(r.rx, "\r\n\r\nserved\n"));
}

TEST(server_connection_alloc) {
  env_t e;
  env_init(&e);
  fail_hconn = 1;
  refused_then_served(&e, e.port, "closed at once: out of memory");
  ASSERT_EQ(fail_hconn, 0);
  env_stop(&e);
}

TEST(server_session_alloc) {
  env_t e;
  env_init(&e);
  fail_server_ng = 1;
  refused_then_served(&e, e.port, "closed at once: ");
  ASSERT_EQ(fail_server_ng, 0);
  env_stop(&e);
}

/* Several at once: one closes while the others wait for their turn (a
 * connection that waited tries again, and may fail again); each is either
 * closed at once or served. */
TEST(server_session_alloc_burst) {
  env_t e;
  env_init(&e);
  enum { N = 5 };
  fail_server_ng = N;
  raw_t r[N];
  for (int i = 0; i < N; i++) {
    memset(&r[i], 0, sizeof(r[i]));
    r[i].send = get;
    r[i].tcp.data = &r[i];
    ASSERT_OK(uv_tcp_init(&e.loop, &r[i].tcp));
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", e.port, &a);
    ASSERT_OK(uv_tcp_connect(&r[i].conn, &r[i].tcp, (struct sockaddr *)&a, raw_connected));
  }
  int refused = 0;
  for (int i = 0; i < N; i++) {
    run_until(&e.loop, &r[i].closed, 5000);
    if (r[i].rxlen == 0)
      refused++;
    else
      ASSERT_EQ(strncmp(r[i].rx, "HTTP/1.1 200 ", 13), 0);
  }
  ASSERT_GE(refused, 1);
  ASSERT_EQ(fail_server_ng, 0);
  raw_t ok;
  raw_exchange(&ok, &e.loop, e.port, get);
  ASSERT_EQ(strncmp(ok.rx, "HTTP/1.1 200 ", 13), 0);
  env_stop(&e);
}

/* The TLS port: the SSL object of the connection cannot be made. */
TEST(server_tls_alloc) {
  env_t e;
  env_init(&e);
  fail_ssl = 1;
  raw_t r;
  raw_exchange(&r, &e.loop, e.tls_port, NULL);
  ASSERT_EQ(r.rxlen, 0);
  ASSERT_EQ(fail_ssl, 0);
  /* The next one completes its handshake. */
  tclient_t c = {0};
  tclient_connect(&c, &e.loop, e.tls_port, "ca", "localhost", NULL);
  run_until(&e.loop, &c.opened, 5000);
  ASSERT_EQ(c.opened, 1);
  h2r_session_close(&c.s, 0);
  run_until(&e.loop, &c.closed, 5000);
  env_stop(&e);
}

/* ---------------------------------------------------------- listener */

typedef struct lis {
  h2rev_listener_t l;
  int connecting, attached, lost, retrying, stopped, closed;
  int first_err;
} lis_t;

static void lis_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  lis_t *L = l->data;
  (void)delay;
  if (state == H2REV_LISTENER_CONNECTING)
    L->connecting++;
  else if (state == H2REV_LISTENER_ATTACHED)
    L->attached++;
  else if (state == H2REV_LISTENER_RETRYING)
    L->retrying++;
  else if (state == H2REV_LISTENER_STOPPED)
    L->stopped++;
  else if (state == H2REV_LISTENER_LOST && L->lost++ == 0)
    L->first_err = err;
}

static void lis_conn(h2rev_listener_t *l, int status) {
  (void)l, (void)status;
}

static void lis_closed(h2rev_listener_t *l) {
  ((lis_t *)l->data)->closed = 1;
}

static void dialer_closed(h2rev_dialer_t *d) {
  *(int *)d->data = 1;
}

/* The first session cannot be made: reported lost, the next attempt
 * attaches, and the close completes. */
TEST(listener_session_alloc) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  h2rev_dialer_t d;
  h2rev_dialer_options_t dopt = {.base_path = "/base"};
  test_logger(&dopt.log, "dialer");
  ASSERT_OK(h2rev_dialer_init(&loop, &d, &dopt));
  int dclosed = 0;
  d.data = &dclosed;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_dialer_listen(&d, (struct sockaddr *)&a, NULL));
  int len = sizeof(a);
  ASSERT_OK(h2rev_dialer_getsockname(&d, 0, (struct sockaddr *)&a, &len));
  char url[64];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/base", ntohs(a.sin_port));

  lis_t L = {0};
  h2rev_listener_options_t o = {0};
  o.url = url;
  o.id = "oom";
  o.backoff_min_ms = 20;
  o.backoff_max_ms = 40;
  o.on_state = lis_state;
  test_logger(&o.log, "listener");
  ASSERT_OK(h2rev_listener_init(&loop, &L.l, &o));
  L.l.data = &L;
  fail_client_ng = 1;
  ASSERT_OK(h2rev_listener_start(&L.l, lis_conn));
  run_until(&loop, &L.attached, 5000);
  ASSERT_EQ(fail_client_ng, 0);
  ASSERT_EQ(L.lost, 1);
  ASSERT_EQ(L.first_err, UV_ENOMEM);
  ASSERT_EQ(L.retrying, 1);
  ASSERT_EQ(L.connecting, 2);
  h2rev_listener_close(&L.l, lis_closed);
  run_until(&loop, &L.closed, 5000);
  ASSERT_NULL(L.l.l_);
  h2rev_dialer_close(&d, dialer_closed);
  run_until(&loop, &dclosed, 5000);
  loop_drain(&loop);
}

/* Closed while the failed attempt waits for its retry: the close completes. */
TEST(listener_session_alloc_close) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  lis_t L = {0};
  h2rev_listener_options_t o = {0};
  o.url = "http://127.0.0.1:9/base"; /* never reached: the session fails first */
  o.id = "oom";
  o.backoff_min_ms = 60000;
  o.on_state = lis_state;
  test_logger(&o.log, "listener");
  ASSERT_OK(h2rev_listener_init(&loop, &L.l, &o));
  L.l.data = &L;
  fail_client_ng = 1;
  ASSERT_OK(h2rev_listener_start(&L.l, lis_conn));
  run_until(&loop, &L.retrying, 5000);
  ASSERT_EQ(L.first_err, UV_ENOMEM);
  h2rev_listener_close(&L.l, lis_closed);
  run_until(&loop, &L.closed, 5000);
  ASSERT_EQ(L.stopped, 1);
  loop_drain(&loop);
}
