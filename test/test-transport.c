/* Transport and session failures on loopback: certificate problems, a
 * cleartext peer on a TLS port, garbage instead of the HTTP/2 preface, a peer
 * that stops answering, timeouts, refused connections, client certificates.
 * Every failure happens while a healthy TLS connection to another server
 * stays open; it must still echo afterwards. */
#include "h2util.h"
#include "test.h"
#include "util.h"

#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The client's session failed: open failed or the connection died. */
static int client_failed(void *arg) {
  tclient_t *c = arg;
  return c->opened == -1 || c->dead;
}

/* Every session the server accepted is gone, and at least one was. */
static int server_done(void *arg) {
  tserver_t *t = arg;
  return t->sessions > 0 && t->open == 0;
}

static const char *ename(int err) {
  return err == 0 ? "0" : h2rev_err_name(err);
}

/* -------------------------------------------------------- echo helper */

typedef struct estream {
  h2rev_stream_t s;
  const char *data;
  size_t len;
  char rx[2048];
  size_t nread;
  int eof;
  int err;
  int closed;
  int wrote;
  int write_status;
  int shut;
  h2rev_write_t w;
  h2rev_shutdown_t sh;
} estream_t;

static void e_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  estream_t *e = s->data;
  (void)sz;
  *buf = uv_buf_init(e->rx + e->nread, (unsigned)(sizeof(e->rx) - e->nread));
}

static void e_closed(h2rev_stream_t *s) {
  ((estream_t *)s->data)->closed = 1;
}

static void e_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  estream_t *e = s->data;
  (void)buf;
  if (n > 0) {
    e->nread += (size_t)n;
    ASSERT_LT(e->nread, sizeof(e->rx)); /* never more than was sent */
    return;
  }
  if (n == 0)
    return;
  if (n == UV_EOF)
    e->eof = 1;
  else
    e->err = (int)n;
  h2rev_stream_close(s, e_closed);
}

static void e_wrote(h2rev_write_t *req, int status) {
  estream_t *e = req->data;
  e->wrote = 1;
  e->write_status = status;
}

static void e_shut(h2rev_shutdown_t *req, int status) {
  estream_t *e = req->data;
  ASSERT_OK(status);
  e->shut = 1;
}

static int e_done(void *arg) {
  return ((estream_t *)arg)->closed;
}

/* 1 KiB through /echo on c; checks every byte comes back. */
static void echo_1k(uv_loop_t *loop, tclient_t *c) {
  static char data[1024];
  test_fill_random(data, sizeof(data), 1024);
  estream_t e;
  memset(&e, 0, sizeof(e));
  e.s.data = &e;
  e.data = data;
  e.len = sizeof(data);
  tclient_stream(c, &e.s, "/echo");
  ASSERT_OK(h2rev_stream_read_start(&e.s, e_alloc, e_read));
  uv_buf_t b = uv_buf_init(data, sizeof(data));
  e.w.data = &e;
  ASSERT_OK(h2rev_stream_write(&e.w, &e.s, &b, 1, e_wrote));
  e.sh.data = &e;
  ASSERT_OK(h2rev_stream_shutdown(&e.sh, &e.s, e_shut));
  run_cond(loop, e_done, &e, 5000, "1 KiB echo");
  ASSERT_EQ(e.err, 0);
  ASSERT_EQ(e.eof, 1);
  ASSERT_EQ(e.wrote, 1);
  ASSERT_OK(e.write_status);
  ASSERT_EQ(e.shut, 1);
  ASSERT_EQ(e.nread, sizeof(data));
  ASSERT_MEM_EQ(e.rx, data, sizeof(data));
}

/* ------------------------------------------- the bystander connection */

typedef struct healthy {
  tserver_t srv;
  tclient_t cl;
} healthy_t;

static void healthy_start(healthy_t *h, uv_loop_t *loop) {
  memset(h, 0, sizeof(*h));
  tserver_start(&h->srv, loop, "server", NULL);
  tclient_connect(&h->cl, loop, h->srv.port, "ca", "localhost", NULL);
  run_until(loop, &h->cl.opened, 5000);
  ASSERT_EQ(h->cl.opened, 1);
  echo_1k(loop, &h->cl);
}

/* The failure elsewhere left it alone: still open, still echoes. Then it
 * closes cleanly. */
static void healthy_check_stop(healthy_t *h, uv_loop_t *loop) {
  ASSERT_EQ(h->cl.opened, 1);
  ASSERT_EQ(h->cl.dead, 0);
  ASSERT_EQ(h->cl.s.state, H2R_S_OPEN);
  echo_1k(loop, &h->cl);
  ASSERT_EQ(h->cl.dead, 0);
  ASSERT_EQ(h->srv.sessions, 1);
  ASSERT_EQ(h->srv.open, 1);
  ASSERT_EQ(h->srv.last_err, 0);
  ASSERT_EQ(h->srv.requests, 2);
  h2r_session_shutdown(&h->cl.s);
  run_until(loop, &h->cl.closed, 5000);
  ASSERT_OK(h->cl.err);
  run_cond(loop, server_done, &h->srv, 5000, "healthy server session closed");
  ASSERT_EQ(h->srv.last_err, 0);
  tserver_stop(&h->srv);
}

/* --------------------------------------- a client failing to connect */

/* Connects c to port and waits for the failure; returns its error. */
static int fail_client(uv_loop_t *loop, tclient_t *c, int port, const char *ca, const char *host,
                       const h2r_session_opts *o) {
  tclient_connect(c, loop, port, ca, host, o);
  run_cond(loop, client_failed, c, 5000, "client failure");
  int err = c->err;
  run_until(loop, &c->closed, 5000);
  ASSERT_EQ(c->s.state, H2R_S_DEAD);
  fprintf(stderr, "client: opened %d dead %d err %s (%s)\n", c->opened, c->dead, ename(err),
          err ? h2rev_strerror(err) : "");
  return err;
}

/* A certificate problem: the open fails with H2REV_ECERT, the server sees
 * the client's alert. */
static void cert_failure(const char *cert, const char *ca, const char *host) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  healthy_t h;
  healthy_start(&h, &loop);

  tserver_t bad;
  tserver_start(&bad, &loop, cert, NULL);
  tclient_t c = {0};
  int err = fail_client(&loop, &c, bad.port, ca, host, NULL);
  ASSERT_EQ(c.opened, -1);
  ASSERT_EQ(c.dead, 0); /* on_dead is for connections that opened */
  ASSERT_EQ(err, H2REV_ECERT);
  ASSERT_EQ(c.closed, 1);
  ASSERT_NE(c.s.x.errmsg[0], '\0');
  run_cond(&loop, server_done, &bad, 5000, "server session closed");
  fprintf(stderr, "server: last_err %s\n", ename(bad.last_err));
  ASSERT_EQ(bad.last_err, H2REV_ETLS);
  ASSERT_EQ(bad.requests, 0);

  healthy_check_stop(&h, &loop);
  tserver_stop(&bad);
  loop_drain(&loop);
}

TEST(wrong_ca) {
  cert_failure("server", "other-ca", "localhost");
}

TEST(wrong_hostname) {
  cert_failure("server", "ca", "example.com");
}

TEST(expired_certificate) {
  cert_failure("expired", "ca", "localhost");
}

/* ------------------------------------------------- cleartext to TLS */

static int plaintext_done(void *arg) {
  void **p = arg;
  return client_failed(p[0]) && server_done(p[1]);
}

TEST(plaintext_to_tls_port) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  healthy_t h;
  healthy_start(&h, &loop);

  tserver_t tls;
  tserver_start(&tls, &loop, "server", NULL);
  tclient_t c = {0};
  tclient_connect(&c, &loop, tls.port, NULL, NULL, NULL);
  void *both[2] = {&c, &tls};
  run_cond(&loop, plaintext_done, both, 5000, "cleartext client and TLS server fail");
  fprintf(stderr, "client: opened %d dead %d err %s; server: last_err %s\n", c.opened, c.dead,
          ename(c.err), ename(tls.last_err));
  /* Cleartext opens on TCP connect: the failure comes as the death. */
  ASSERT(c.opened == -1 || c.dead);
  ASSERT_NE(c.err, 0);
  ASSERT_EQ(tls.last_err, H2REV_ETLS);
  ASSERT_EQ(tls.requests, 0);
  run_until(&loop, &c.closed, 5000);

  healthy_check_stop(&h, &loop);
  tserver_stop(&tls);
  loop_drain(&loop);
}

/* ------------------------------------ garbage instead of the preface */

typedef struct rawc {
  uv_tcp_t tcp;
  uv_connect_t req;
  uv_write_t w;
  char out[4096];
  char in[4096];
  int connected;
  int write_status;
  int wrote;
  size_t nread;
  ssize_t end; /* UV_EOF or the error that ended reading */
  int closed;
} rawc_t;

static void raw_closed(uv_handle_t *hd) {
  ((rawc_t *)hd->data)->closed = 1;
}

static void raw_alloc(uv_handle_t *hd, size_t sz, uv_buf_t *buf) {
  rawc_t *r = hd->data;
  (void)sz;
  *buf = uv_buf_init(r->in, sizeof(r->in));
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  rawc_t *r = s->data;
  (void)buf;
  if (n > 0)
    r->nread += (size_t)n;
  if (n >= 0)
    return;
  r->end = n;
  uv_close((uv_handle_t *)&r->tcp, raw_closed);
}

static void raw_wrote(uv_write_t *w, int status) {
  rawc_t *r = w->data;
  r->wrote = 1;
  r->write_status = status;
}

static void raw_connected(uv_connect_t *req, int status) {
  rawc_t *r = req->data;
  ASSERT_OK(status);
  r->connected = 1;
  uv_buf_t b = uv_buf_init(r->out, sizeof(r->out));
  r->w.data = r;
  ASSERT_OK(uv_write(&r->w, (uv_stream_t *)&r->tcp, &b, 1, raw_wrote));
  ASSERT_OK(uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read));
}

static int raw_done(void *arg) {
  void **p = arg;
  return ((rawc_t *)p[0])->closed && server_done(p[1]);
}

TEST(random_bytes_instead_of_preface) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  healthy_t h;
  healthy_start(&h, &loop);

  tserver_t clear;
  tserver_start(&clear, &loop, NULL, NULL);
  rawc_t *r = calloc(1, sizeof(*r));
  test_fill_random(r->out, sizeof(r->out), 4096);
  ASSERT_OK(uv_tcp_init(&loop, &r->tcp));
  r->tcp.data = r;
  r->req.data = r;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", clear.port, &a);
  ASSERT_OK(uv_tcp_connect(&r->req, &r->tcp, (struct sockaddr *)&a, raw_connected));
  void *both[2] = {r, &clear};
  run_cond(&loop, raw_done, both, 5000, "server drops the raw client");
  fprintf(stderr, "raw client: read %zu bytes, end %s; server: last_err %s\n", r->nread,
          ename((int)r->end), ename(clear.last_err));
  ASSERT_EQ(r->connected, 1);
  ASSERT(r->end == UV_EOF || r->end == UV_ECONNRESET);
  ASSERT_EQ(clear.last_err, H2REV_EPROTO);
  ASSERT_EQ(clear.requests, 0);

  healthy_check_stop(&h, &loop);
  tserver_stop(&clear);
  loop_drain(&loop);
  free(r);
}

/* ------------------------------------------------ a silent TCP peer */

/* Accepts one connection, reads and discards, never writes. */
typedef struct silent {
  uv_loop_t *loop;
  uv_tcp_t tcp;
  uv_tcp_t conn;
  int port;
  int accepted;
  size_t nread;
  int conn_closed;
  char buf[65536];
} silent_t;

static void silent_conn_closed(uv_handle_t *hd) {
  ((silent_t *)hd->data)->conn_closed = 1;
}

static void silent_alloc(uv_handle_t *hd, size_t sz, uv_buf_t *buf) {
  silent_t *s = hd->data;
  (void)sz;
  *buf = uv_buf_init(s->buf, sizeof(s->buf));
}

static void silent_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  silent_t *s = st->data;
  (void)buf;
  if (n > 0)
    s->nread += (size_t)n;
  if (n < 0 && !uv_is_closing((uv_handle_t *)&s->conn))
    uv_close((uv_handle_t *)&s->conn, silent_conn_closed);
}

static void silent_on_conn(uv_stream_t *server, int status) {
  silent_t *s = server->data;
  ASSERT_OK(status);
  ASSERT_EQ(s->accepted, 0);
  ASSERT_OK(uv_tcp_init(s->loop, &s->conn));
  s->conn.data = s;
  ASSERT_OK(uv_accept(server, (uv_stream_t *)&s->conn));
  s->accepted = 1;
  ASSERT_OK(uv_read_start((uv_stream_t *)&s->conn, silent_alloc, silent_read));
}

static void silent_start(silent_t *s, uv_loop_t *loop) {
  memset(s, 0, sizeof(*s));
  s->loop = loop;
  ASSERT_OK(uv_tcp_init(loop, &s->tcp));
  s->tcp.data = s;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(uv_tcp_bind(&s->tcp, (struct sockaddr *)&a, 0));
  ASSERT_OK(uv_listen((uv_stream_t *)&s->tcp, 8, silent_on_conn));
  struct sockaddr_in b;
  int len = sizeof(b);
  ASSERT_OK(uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&b, &len));
  s->port = ntohs(b.sin_port);
}

static int silent_conn_done(void *arg) {
  return ((silent_t *)arg)->conn_closed;
}

/* The client has gone: the silent server saw it close its socket. */
static void silent_stop(silent_t *s, uv_loop_t *loop) {
  ASSERT_EQ(s->accepted, 1);
  run_cond(loop, silent_conn_done, s, 5000, "silent server sees the client go");
  uv_close((uv_handle_t *)&s->tcp, NULL);
}

TEST(peer_stops_answering_ping) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  healthy_t h;
  healthy_start(&h, &loop);

  silent_t *sil = malloc(sizeof(*sil));
  silent_start(sil, &loop);
  h2r_session_opts o;
  h2r_session_opts_default(&o);
  o.ping_interval_ms = 200;
  o.ping_timeout_ms = 300;
  tclient_t c = {0};
  uint64_t t0 = uv_now(&loop);
  tclient_connect(&c, &loop, sil->port, NULL, NULL, &o);
  run_cond(&loop, client_failed, &c, 3000, "PING timeout");
  uint64_t dt = uv_now(&loop) - t0;
  fprintf(stderr, "client: opened %d dead %d err %s after %llu ms; server read %zu bytes\n",
          c.opened, c.dead, ename(c.err), (unsigned long long)dt, sil->nread);
  ASSERT_EQ(c.opened, 1); /* cleartext: open as soon as TCP connects */
  ASSERT_EQ(c.dead, 1);
  ASSERT_EQ(c.err, H2REV_EPINGTIMEOUT);
  /* Not before interval + timeout; the PING and the preface did go out. */
  ASSERT_GE(dt, 450);
  ASSERT_LT(dt, 3000);
  ASSERT_GE(sil->nread, 24 + 9 + 17); /* preface, SETTINGS header, PING */
  run_until(&loop, &c.closed, 5000);
  silent_stop(sil, &loop);

  healthy_check_stop(&h, &loop);
  loop_drain(&loop);
  free(sil);
}

TEST(handshake_timeout) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  healthy_t h;
  healthy_start(&h, &loop);

  silent_t *sil = malloc(sizeof(*sil));
  silent_start(sil, &loop);
  h2r_session_opts o;
  h2r_session_opts_default(&o);
  o.handshake_ms = 300;
  tclient_t c = {0};
  uint64_t t0 = uv_now(&loop);
  int err = fail_client(&loop, &c, sil->port, "ca", "localhost", &o);
  uint64_t dt = uv_now(&loop) - t0;
  ASSERT_EQ(c.opened, -1);
  ASSERT_EQ(c.dead, 0);
  ASSERT_EQ(err, UV_ETIMEDOUT);
  ASSERT_GE(dt, 250);
  ASSERT_LT(dt, 3000);
  ASSERT_GT(sil->nread, 0); /* the ClientHello */
  silent_stop(sil, &loop);

  healthy_check_stop(&h, &loop);
  loop_drain(&loop);
  free(sil);
}

/* ------------------------------------------- TLS client certificates */

static void my_open(h2r_session_t *s, int status) {
  tclient_t *c = s->owner;
  c->opened = status == 0 ? 1 : -1;
  c->err = status;
}

static void my_dead(h2r_session_t *s, int err) {
  tclient_t *c = s->owner;
  c->dead = 1;
  c->err = err;
}

static void my_close(h2r_session_t *s) {
  ((tclient_t *)s->owner)->closed = 1;
}

static void my_request(h2r_session_t *s, h2r_strm_t *st) {
  (void)s;
  h2r_strm_abandon(st);
}

static const h2r_session_cbs my_cbs = {my_open, my_request, my_dead, my_close, NULL, NULL};

typedef struct peer_count {
  int with_client1; /* server side, peer certificate CN=client-1 */
  int without;      /* server side TLS, no peer certificate */
} peer_count_t;

/* Transports are found among the loop's handles: their uv_tcp_t is the first
 * member of h2r_xport_t and its data points to the transport. */
static void count_peers(uv_handle_t *hd, void *arg) {
  peer_count_t *pc = arg;
  if (hd->type != UV_TCP || hd->data != (void *)hd || uv_is_closing(hd))
    return;
  h2r_xport_t *x = (h2r_xport_t *)hd;
  if (!x->server || x->ssl == NULL || x->state != H2R_X_OPEN)
    return;
  X509 *cert = h2r_xport_peer_cert(x);
  if (cert == NULL) {
    pc->without++;
    return;
  }
  char cn[64] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  if (strcmp(cn, "client-1") == 0)
    pc->with_client1++;
}

static SSL_CTX *ctx_from(const char *cert, const char *key, const char *ca, int verify_client,
                         bool server) {
  char c[512], k[512], a[512], errbuf[256];
  h2rev_tls_options_t to = {
      .cert_file = cert ? test_path(c, sizeof(c), test_certs(), cert) : NULL,
      .key_file = key ? test_path(k, sizeof(k), test_certs(), key) : NULL,
      .ca_file = test_path(a, sizeof(a), test_certs(), ca),
      .verify_client = verify_client,
  };
  int err = 0;
  SSL_CTX *ctx = h2r_tls_ctx_new(&to, server, H2R_ALPN_H2, &err, errbuf, sizeof(errbuf));
  if (ctx == NULL)
    test_fail(__FILE__, __LINE__, "h2r_tls_ctx_new: %s: %s", ename(err), errbuf);
  return ctx;
}

TEST(tls_client_certificate) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  healthy_t h;
  healthy_start(&h, &loop);

  tserver_t mtls;
  tserver_start(&mtls, &loop, "server", NULL);
  SSL_CTX_free(mtls.ctx);
  mtls.ctx = ctx_from("server.pem", "server.key", "ca.pem", 1, true);

  /* Without a certificate: refused. With TLS 1.3 the client may see its
   * handshake complete and learn of the refusal right after. */
  tclient_t nocert = {0};
  int err = fail_client(&loop, &nocert, mtls.port, "ca", "localhost", NULL);
  ASSERT_NE(err, 0);
  run_cond(&loop, server_done, &mtls, 5000, "server refuses the client");
  fprintf(stderr, "server: last_err %s\n", ename(mtls.last_err));
  ASSERT_NE(mtls.last_err, 0);
  ASSERT_EQ(mtls.requests, 0);

  /* With client.pem: accepted, echoes, and the server sees who it is. */
  SSL_CTX *cctx = ctx_from("client.pem", "client.key", "ca.pem", 0, false);
  tclient_t ok = {0};
  test_logger(&ok.log, "client-1");
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", mtls.port, &a);
  ASSERT_OK(h2r_session_connect(&ok.s, &loop, (struct sockaddr *)&a, cctx, "localhost", NULL,
                                &my_cbs, &ok, &ok.log));
  SSL_CTX_free(cctx);
  run_until(&loop, &ok.opened, 5000);
  ASSERT_EQ(ok.opened, 1);
  ASSERT_OK(ok.err);
  echo_1k(&loop, &ok);
  ASSERT_EQ(mtls.requests, 1);
  ASSERT_EQ(mtls.open, 1);
  peer_count_t pc = {0};
  uv_walk(&loop, count_peers, &pc);
  ASSERT_EQ(pc.with_client1, 1);
  ASSERT_EQ(pc.without, 1); /* the healthy connection's server side */
  h2r_session_shutdown(&ok.s);
  run_until(&loop, &ok.closed, 5000);
  ASSERT_OK(ok.err);
  ASSERT_EQ(ok.dead, 1);

  healthy_check_stop(&h, &loop);
  run_cond(&loop, server_done, &mtls, 5000, "mTLS server session closed");
  tserver_stop(&mtls);
  loop_drain(&loop);
}

/* ----------------------------------------------------- error names */

TEST(error_names) {
  ASSERT_STR_EQ(h2rev_err_name(H2REV_ECERT), "H2REV_ECERT");
  ASSERT_STR_EQ(h2rev_strerror(H2REV_ECERT), "peer certificate verification failed");
  ASSERT_STR_EQ(h2rev_err_name(H2REV_EPINGTIMEOUT), "H2REV_EPINGTIMEOUT");
  ASSERT_STR_EQ(h2rev_strerror(H2REV_EPINGTIMEOUT), "peer stopped answering PING");
  ASSERT_STR_EQ(h2rev_err_name(H2REV_ETLS), "H2REV_ETLS");
  ASSERT_STR_EQ(h2rev_err_name(H2REV_ECLOSED), "H2REV_ECLOSED");
  ASSERT_STR_EQ(h2rev_err_name(UV_ECONNREFUSED), "ECONNREFUSED");
  ASSERT_STR_EQ(h2rev_strerror(UV_ECONNREFUSED), "connection refused");
  ASSERT_STR_EQ(h2rev_err_name(UV_ETIMEDOUT), "ETIMEDOUT");
  ASSERT_STR_EQ(h2rev_err_name(UV_EOF), "EOF");
  /* Codes no one defines: some text, never NULL (and, called repeatedly
   * as a logger would, no memory held per call: LeakSanitizer checks). */
  static const int unknown[] = {-29999, -30000, -30099, -5000, 1, 0x7fffffff};
  for (int round = 0; round < 2; round++) {
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
      const char *t = h2rev_strerror(unknown[i]);
      const char *n = h2rev_err_name(unknown[i]);
      ASSERT_NOT_NULL(t);
      ASSERT_NOT_NULL(n);
      ASSERT_GT(strlen(t), 0);
      ASSERT_GT(strlen(n), 0);
    }
  }
}

/* ------------------------------------------------- refused connect */

TEST(connection_refused) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  healthy_t h;
  healthy_start(&h, &loop);

  /* A bound socket that does not listen: its port refuses connections and
   * no one else can take it meanwhile. */
  uv_tcp_t hold;
  ASSERT_OK(uv_tcp_init(&loop, &hold));
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(uv_tcp_bind(&hold, (struct sockaddr *)&a, 0));
  struct sockaddr_in b;
  int len = sizeof(b);
  ASSERT_OK(uv_tcp_getsockname(&hold, (struct sockaddr *)&b, &len));

  tclient_t c = {0};
  int err = fail_client(&loop, &c, ntohs(b.sin_port), "ca", "localhost", NULL);
  ASSERT_EQ(c.opened, -1);
  ASSERT_EQ(c.dead, 0);
  ASSERT_EQ(err, UV_ECONNREFUSED);
  tclient_t c2 = {0};
  err = fail_client(&loop, &c2, ntohs(b.sin_port), NULL, NULL, NULL);
  ASSERT_EQ(c2.opened, -1);
  ASSERT_EQ(err, UV_ECONNREFUSED);
  uv_close((uv_handle_t *)&hold, NULL);

  healthy_check_stop(&h, &loop);
  loop_drain(&loop);
}

/* ------------------------------------------- writes: order and bytes */

/* Writes of many sizes and pieces on one transport while the peer first
 * reads nothing, then everything: some writes the socket takes at once,
 * some wait in libuv's queue, some are split between the two. Every
 * callback comes once, with 0, in the order of the writes, never inside
 * h2r_xport_write; the peer reads exactly the bytes written. */
enum { XW_N = 240 };

typedef struct xpeer {
  uv_loop_t *loop;
  uv_tcp_t lsock;
  SSL_CTX *sctx, *cctx;
  h2r_xport_t srv, cli;
  bool srv_used;
  test_sha_t rx;
  uint64_t nread;
  int cli_open;
  int closed;
  h2r_xwrite_t w[XW_N];
  int next_cb; /* index of the callback expected next */
  int in_write;
  char *data;
  size_t total;
  uv_timer_t resume;
  bool stutter; /* the peer pauses inside every read callback, resumes 1 ms later */
  int pauses;
  uint64_t stop_at; /* the peer stops the loop once it has read this much */
} xpeer_t;

static void xp_srv_open(h2r_xport_t *x, int status) {
  ASSERT_OK(status);
  h2r_xport_read_pause(x, true); /* the client's writes pile up first */
}
static void xp_resume(uv_timer_t *t);

static void xp_srv_read(h2r_xport_t *x, const uint8_t *p, size_t n) {
  xpeer_t *xp = x->owner;
  test_sha_update(&xp->rx, p, n);
  xp->nread += n;
  if (xp->stop_at != 0 && xp->nread >= xp->stop_at)
    uv_stop(xp->loop);
  if (xp->stutter && uv_is_active((uv_handle_t *)&xp->resume) == 0) {
    /* What the transport already read stays unread until resumed. */
    h2r_xport_read_pause(x, true);
    xp->pauses++;
    uv_timer_start(&xp->resume, xp_resume, 1, 0);
  }
}
static void xp_error(h2r_xport_t *x, int err) {
  (void)x;
  ASSERT_EQ(err, UV_EOF);
}
static void xp_closed(h2r_xport_t *x) {
  ((xpeer_t *)x->owner)->closed++;
}
static const h2r_xport_cbs xp_srv_cbs = {xp_srv_open, xp_srv_read, xp_error, xp_closed};

static void xp_cli_open(h2r_xport_t *x, int status) {
  ASSERT_OK(status);
  ((xpeer_t *)x->owner)->cli_open = 1;
}
static void xp_cli_read(h2r_xport_t *x, const uint8_t *p, size_t n) {
  (void)x, (void)p, (void)n;
}
static const h2r_xport_cbs xp_cli_cbs = {xp_cli_open, xp_cli_read, xp_error, xp_closed};

static void xp_accept(uv_stream_t *l, int status) {
  xpeer_t *xp = l->data;
  ASSERT_OK(status);
  ASSERT(!xp->srv_used);
  xp->srv_used = true;
  ASSERT_OK(h2r_xport_accept(&xp->srv, xp->loop, l, xp->sctx, 5000, &xp_srv_cbs, xp));
  if (xp->sctx == NULL)
    h2r_xport_read_pause(&xp->srv, true);
}

static void xp_wrote(h2r_xwrite_t *w, int status) {
  xpeer_t *xp = w->x->owner;
  ASSERT_EQ(xp->in_write, 0);
  ASSERT_OK(status);
  ASSERT_EQ(w - xp->w, xp->next_cb);
  xp->next_cb++;
}

static void xp_resume(uv_timer_t *t) {
  xpeer_t *xp = t->data;
  h2r_xport_read_pause(&xp->srv, false);
}

static int xp_all_read(void *arg) {
  xpeer_t *xp = arg;
  return xp->next_cb == XW_N && xp->nread == xp->total;
}

/* A client transport connected to a server one whose reading is paused. */
static void xp_setup(xpeer_t *xp, uv_loop_t *loop, bool tls) {
  xp->loop = loop;
  test_sha_init(&xp->rx);
  uv_timer_init(loop, &xp->resume);
  xp->resume.data = xp;
  if (tls) {
    char c[512], k[512], errbuf[256];
    int err = 0;
    h2rev_tls_options_t to = {.cert_file = test_path(c, sizeof(c), test_certs(), "server.pem"),
                              .key_file = test_path(k, sizeof(k), test_certs(), "server.key")};
    xp->sctx = h2r_tls_ctx_new(&to, true, H2R_ALPN_H2, &err, errbuf, sizeof(errbuf));
    ASSERT_NOT_NULL(xp->sctx);
    xp->cctx = tls_client_ctx("ca");
  }
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &xp->lsock);
  xp->lsock.data = xp;
  ASSERT_OK(uv_tcp_bind(&xp->lsock, (struct sockaddr *)&a, 0));
  ASSERT_OK(uv_listen((uv_stream_t *)&xp->lsock, 8, xp_accept));
  int alen = sizeof(a);
  uv_tcp_getsockname(&xp->lsock, (struct sockaddr *)&a, &alen);
  ASSERT_OK(h2r_xport_connect(&xp->cli, loop, (struct sockaddr *)&a, xp->cctx, "localhost", 5000,
                              &xp_cli_cbs, xp));
  run_until(loop, &xp->cli_open, 5000);
}

static void xp_teardown(xpeer_t *xp) {
  if (xp->cli.state != H2R_X_CLOSING)
    h2r_xport_close(&xp->cli);
  h2r_xport_close(&xp->srv);
  uv_close((uv_handle_t *)&xp->lsock, NULL);
  uv_close((uv_handle_t *)&xp->resume, NULL);
  while (xp->closed < 2)
    uv_run(xp->loop, UV_RUN_ONCE);
  if (xp->sctx != NULL) {
    SSL_CTX_free(xp->sctx);
    SSL_CTX_free(xp->cctx);
  }
  loop_drain(xp->loop);
  free(xp->data);
}

static void writes_in_order(bool tls, bool stutter) {
  static const size_t sizes[] = {1, 100, 5000, 16384, 70000, 300000, 9, 3};
  uv_loop_t loop;
  uv_loop_init(&loop);
  xpeer_t xp = {.stutter = stutter};
  xp_setup(&xp, &loop, tls);

  for (int i = 0; i < XW_N; i++)
    xp.total += sizes[i % 8];
  xp.data = malloc(xp.total);
  test_fill_random(xp.data, xp.total, 11);
  size_t off = 0;
  for (int i = 0; i < XW_N; i++) {
    /* Each write in three pieces (the middle one may be empty). */
    size_t len = sizes[i % 8], a1 = len / 3, a2 = (len - a1) / 2;
    uv_buf_t b[3] = {uv_buf_init(xp.data + off, (unsigned)a1),
                     uv_buf_init(xp.data + off + a1, (unsigned)a2),
                     uv_buf_init(xp.data + off + a1 + a2, (unsigned)(len - a1 - a2))};
    xp.in_write = 1;
    ASSERT_OK(h2r_xport_write(&xp.cli, &xp.w[i], b, 3, xp_wrote));
    xp.in_write = 0;
    off += len;
    if (i == XW_N / 2) /* half of them while the peer reads nothing */
      uv_run(&loop, UV_RUN_NOWAIT);
  }
  uv_timer_start(&xp.resume, xp_resume, 200, 0);
  run_cond(&loop, xp_all_read, &xp, 30000, "every write called back and read");
  if (stutter)
    ASSERT_GT(xp.pauses, 100);
  unsigned char got[32], want[32];
  test_sha_final(&xp.rx, got);
  test_sha256(xp.data, xp.total, want);
  ASSERT_MEM_EQ(got, want, 32);
  xp_teardown(&xp);
}

TEST(writes_in_order_cleartext) {
  writes_in_order(false, false);
}

TEST(writes_in_order_tls) {
  writes_in_order(true, false);
}

/* A reader that pauses in the middle of what arrived: TLS records already
 * read from the socket wait in the transport (the read buffer is shared),
 * and come first when reading resumes, before newer ones. */
TEST(tls_pause_inside_read_keeps_order) {
  writes_in_order(true, true);
}

/* Cleartext writes wait for the end of the loop turn to go out together.
 * One made outside the poll phase (a timer) must not wait for the next
 * event, which may never come; one made just before the close still goes
 * out. */
static void xp_write_now(uv_timer_t *t) {
  xpeer_t *xp = t->data;
  uv_buf_t b = uv_buf_init(xp->data, 100);
  xp->in_write = 1;
  ASSERT_OK(h2r_xport_write(&xp->cli, &xp->w[0], &b, 1, xp_wrote));
  xp->in_write = 0;
}

static void xp_give_up(uv_timer_t *t) {
  uv_stop(t->loop);
}

static int xp_read_all_closed(void *arg) {
  xpeer_t *xp = arg;
  return xp->nread == xp->total && xp->next_cb == 2 && xp->closed == 1;
}

TEST(cleartext_write_from_timer_and_before_close) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  xpeer_t xp = {0};
  xp_setup(&xp, &loop, false);
  while (!xp.srv_used)
    uv_run(&loop, UV_RUN_ONCE);
  h2r_xport_read_pause(&xp.srv, false);
  xp.total = 100 + 5000;
  xp.data = malloc(xp.total);
  test_fill_random(xp.data, xp.total, 5);

  /* As an application's loop runs (UV_RUN_DEFAULT: timers come before
   * the poll, which blocks when nothing else is due). */
  uv_timer_t t, guard;
  uv_timer_init(&loop, &t);
  uv_timer_init(&loop, &guard);
  t.data = &xp;
  xp.stop_at = 100;
  uint64_t t0 = uv_hrtime();
  uv_timer_start(&t, xp_write_now, 5, 0);
  uv_timer_start(&guard, xp_give_up, 3000, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(xp.nread, 100);
  ASSERT_LT((uv_hrtime() - t0) / 1000000, 1000); /* not at the guard's 3 s */
  xp.stop_at = 0;
  uv_close((uv_handle_t *)&guard, NULL);

  /* A write the socket takes whole, and the close on the same turn: the
   * write completes (0) and the peer reads every byte. */
  uv_buf_t b = uv_buf_init(xp.data + 100, 5000);
  ASSERT_OK(h2r_xport_write(&xp.cli, &xp.w[1], &b, 1, xp_wrote));
  h2r_xport_close(&xp.cli);
  run_cond(&loop, xp_read_all_closed, &xp, 5000, "bytes written just before the close read");
  unsigned char got[32], want[32];
  test_sha_final(&xp.rx, got);
  test_sha256(xp.data, xp.total, want);
  ASSERT_MEM_EQ(got, want, 32);
  uv_close((uv_handle_t *)&t, NULL);
  xp_teardown(&xp);
}
