/* The HTTP server: routing, bodies streamed both ways, framing, limits,
 * aborts and disconnects, exercised with curl and raw sockets on loopback;
 * HTTP/1.1 served on reverse connections of a real listener; the dialer
 * mounted on an application's server. */
#include "h2util.h"
#include "internal.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct env {
  uv_loop_t loop;
  h2rev_http_server_t srv;
  h2rev_http_server_options_t o;
  int port, tls_port;
  int closed;
  int gone;      /* a handler's read_cb saw the client go away */
  int done;      /* done callbacks */
  int done_err;  /* done callbacks with an error */
  char dir[512]; /* scratch files */
} env_t;

static env_t *E;
static unsigned env_send_timeout_ms; /* 0: the default */

/* What the access log callback was given, for TEST(access_log). */
typedef struct logged {
  char method[16], path[64];
  int major, status, result;
  uint64_t bytes_out;
} logged_t;
static logged_t LOG[16];
static int NLOG;

static void record_access(void *arg, const h2rev_access_t *a) {
  (void)arg;
  if (NLOG >= (int)(sizeof(LOG) / sizeof(LOG[0])))
    return;
  logged_t *l = &LOG[NLOG++];
  snprintf(l->method, sizeof(l->method), "%s", a->req->method);
  snprintf(l->path, sizeof(l->path), "%s", a->req->path);
  l->major = a->req->http_major;
  l->status = a->status;
  l->result = a->result;
  l->bytes_out = a->bytes_out;
}

/* ------------------------------------------------------------ handlers */

static void text(h2rev_http_req_t *req, void *arg) {
  h2rev_http_reply(req, 200, "text/plain", arg, strlen(arg));
}

static void count_done(h2rev_http_req_t *req, int status) {
  E->done++;
  if (status != 0) {
    fprintf(stderr, "done: %s %s HTTP/%d: %s\n", req->method, req->path, req->http_major,
            h2rev_err_name(status));
    E->done_err++;
  }
}

/* Echoes the body as it comes, reading only while few writes are queued. */
typedef struct echo {
  h2rev_http_req_t *req;
  unsigned inflight;
  bool eof;
} echo_t;

typedef struct ew {
  h2rev_http_write_t w;
  char data[];
} ew_t;

static void echo_alloc(h2rev_http_req_t *req, size_t sz, uv_buf_t *buf) {
  (void)req;
  ew_t *w = malloc(sizeof(*w) + sz);
  *buf = uv_buf_init(w->data, (unsigned)sz);
}

static void echo_read(h2rev_http_req_t *req, ssize_t n, const uv_buf_t *buf);

static void echo_wrote(h2rev_http_write_t *w, int status) {
  (void)status;
  echo_t *e = w->req->data;
  h2rev_http_req_t *req = w->req;
  free(w);
  if (--e->inflight == 0 && e->eof)
    h2rev_http_end(req);
  else if (e->inflight == 3 && !e->eof)
    h2rev_http_read_start(req, echo_alloc, echo_read);
}

static void echo_done(h2rev_http_req_t *req, int status) {
  free(req->data);
  count_done(req, status);
}

static void echo_read(h2rev_http_req_t *req, ssize_t n, const uv_buf_t *buf) {
  echo_t *e = req->data;
  ew_t *w = buf->base != NULL ? H2R_CONTAINER_OF(buf->base, ew_t, data) : NULL;
  if (n <= 0) {
    free(w);
    if (n == 0)
      return;
    e->eof = true;
    if (n != UV_EOF) {
      E->gone++;
      h2rev_http_abort(req);
    } else if (e->inflight == 0) {
      h2rev_http_end(req);
    }
    return;
  }
  uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
  ASSERT_OK(h2rev_http_write(&w->w, req, &b, 1, echo_wrote));
  if (++e->inflight == 4)
    h2rev_http_read_stop(req);
}

static void echo(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  echo_t *e = calloc(1, sizeof(*e));
  e->req = req;
  req->data = e;
  h2rev_http_on_done(req, echo_done);
  h2rev_header_t h[] = {{"Content-Type", "application/octet-stream"}};
  ASSERT_OK(h2rev_http_respond(req, 200, h, 1, req->content_length));
  ASSERT_OK(h2rev_http_read_start(req, echo_alloc, echo_read));
}

static void noop_wrote(h2rev_http_write_t *w, int status) {
  (void)status;
  free(w);
}

/* A chunked response in three writes. */
static void chunks(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  static char piece[] = "piece\n";
  h2rev_header_t bad[] = {{"x-bad", "a\r\nb"}};
  ASSERT_EQ(h2rev_http_respond(req, 200, bad, 1, -1), UV_EINVAL);
  ASSERT_OK(h2rev_http_respond(req, 200, NULL, 0, -1));
  for (int i = 0; i < 3; i++) {
    h2rev_http_write_t *w = malloc(sizeof(*w));
    uv_buf_t b = uv_buf_init(piece, 6);
    ASSERT_OK(h2rev_http_write(w, req, &b, 1, noop_wrote));
  }
  ASSERT_OK(h2rev_http_end(req));
}

static void nocontent(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_reply(req, 204, NULL, "dropped", 7);
}

/* Announces 1000 bytes, sends 10, then cuts the exchange. */
static void abort_cb(uv_timer_t *t) {
  h2rev_http_abort(t->data);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void aborting(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  static char ten[] = "0123456789";
  h2rev_http_on_done(req, count_done);
  ASSERT_OK(h2rev_http_respond(req, 200, NULL, 0, 1000));
  h2rev_http_write_t *w = malloc(sizeof(*w));
  uv_buf_t b = uv_buf_init(ten, 10);
  ASSERT_OK(h2rev_http_write(w, req, &b, 1, noop_wrote));
  uv_timer_t *t = malloc(sizeof(*t));
  uv_timer_init(req->server->loop, t);
  t->data = req;
  uv_timer_start(t, abort_cb, 100, 0);
}

/* Answers with what it saw of the request. */
static void info(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  const char *xf = h2rev_http_header(req, "X-Forwarded-Prefix");
  size_t cap = strlen(req->path) + (xf ? strlen(xf) : 0) + 64;
  char *body = malloc(cap);
  int n = snprintf(body, cap, "%s %s %d.%d xfp=%s\n", req->method, req->path, req->http_major,
                   req->http_minor, xf ? xf : "-");
  h2rev_http_reply(req, 200, "text/plain", body, (size_t)n);
  free(body);
}

/* An upgrade handled through the request API, as an embedder writes it: a
 * 101, then the client's bytes echoed back (each write issued from the read
 * callback, held in memory until its own callback), until the client ends;
 * a refusal (?no) answers 426 and the connection closes after it. */
typedef struct up_w {
  h2rev_http_write_t w;
  char data[];
} up_w_t;

static void up_alloc(h2rev_http_req_t *req, size_t sz, uv_buf_t *buf) {
  (void)req;
  up_w_t *w = malloc(sizeof(*w) + sz);
  *buf = uv_buf_init(w->data, (unsigned)sz);
}

static void up_wrote(h2rev_http_write_t *w, int status) {
  (void)status;
  free(H2R_CONTAINER_OF(w, up_w_t, w));
}

static void up_read(h2rev_http_req_t *req, ssize_t n, const uv_buf_t *buf) {
  up_w_t *w = buf->base != NULL ? H2R_CONTAINER_OF(buf->base, up_w_t, data) : NULL;
  if (n > 0) {
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    ASSERT_OK(h2rev_http_write(&w->w, req, &b, 1, up_wrote));
    return;
  }
  free(w);
  if (n < 0)
    h2rev_http_end(req); /* the client is done: so are we */
}

static void upgrading(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_on_done(req, count_done);
  if (!req->upgrade || strstr(req->path, "?no") != NULL) {
    if (!req->upgrade) /* not an upgrade request: a 101 is refused */
      ASSERT_EQ(h2rev_http_respond(req, 101, NULL, 0, -1), UV_EINVAL);
    h2rev_http_reply(req, 426, "text/plain", "no\n", 3);
    return;
  }
  /* One handler for both protocols: the HTTP/1.1 Upgrade header and the
   * HTTP/2 extended CONNECT's :protocol are both req->protocol. */
  ASSERT(req->protocol != NULL && strcmp(req->protocol, "echo") == 0);
  h2rev_header_t h[] = {{"upgrade", req->protocol}};
  ASSERT_OK(h2rev_http_respond(req, 101, h, 1, -1));
  ASSERT_OK(h2rev_http_read_start(req, up_alloc, up_read));
}

/* CONNECT host:port (h2rev_http_server_route_connect): the authority asked
 * for, then an echo of the client's bytes. */
static void tunnel(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_on_done(req, count_done);
  ASSERT_STR_EQ(req->method, "CONNECT");
  ASSERT_STR_EQ(req->path, "");
  ASSERT(req->upgrade && req->protocol == NULL);
  ASSERT_OK(h2rev_http_respond(req, 200, NULL, 0, -1));
  up_w_t *w = malloc(sizeof(*w) + strlen(req->authority) + 1);
  memcpy(w->data, req->authority, strlen(req->authority));
  w->data[strlen(req->authority)] = '|';
  uv_buf_t b = uv_buf_init(w->data, (unsigned)strlen(req->authority) + 1);
  ASSERT_OK(h2rev_http_write(&w->w, req, &b, 1, up_wrote));
  ASSERT_OK(h2rev_http_read_start(req, up_alloc, up_read));
}

/* ----------------------------------------------------------- plumbing */

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  int *rc = p->data;
  *rc = sig ? 128 + sig : (int)status;
  uv_close((uv_handle_t *)p, NULL);
}

/* Runs a shell command while the loop serves; returns its exit status. */
static int sh(env_t *e, const char *cmd) {
  uv_process_t p;
  int rc = -1;
  char *args[] = {"/bin/sh", "-c", (char *)cmd, NULL};
  uv_stdio_container_t io[3] = {{.flags = UV_IGNORE},
                                {.flags = UV_INHERIT_FD, .data.fd = 2},
                                {.flags = UV_INHERIT_FD, .data.fd = 2}};
  uv_process_options_t o = {
      .exit_cb = on_exit_cb, .file = "/bin/sh", .args = args, .stdio_count = 3, .stdio = io};
  p.data = &rc;
  ASSERT_OK(uv_spawn(&e->loop, &p, &o));
  uint64_t deadline = uv_now(&e->loop) + 60000;
  while (rc == -1 && uv_now(&e->loop) < deadline)
    uv_run(&e->loop, UV_RUN_ONCE);
  ASSERT_NE(rc, -1);
  return rc;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ASSERT(f != NULL);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  ASSERT_EQ(fread(b, 1, (size_t)n, f), (size_t)n);
  b[n] = '\0';
  fclose(f);
  if (len != NULL)
    *len = (size_t)n;
  return b;
}

/* The output of cmd (stdout), as a string to free. */
static char *run_out(env_t *e, const char *cmd, int *rc) {
  char out[600];
  size_t fl = strlen(cmd) + sizeof(out) + 8;
  char *full = malloc(fl);
  snprintf(out, sizeof(out), "%s/out", e->dir);
  snprintf(full, fl, "%s > %s", cmd, out);
  int r = sh(e, full);
  free(full);
  if (rc != NULL)
    *rc = r;
  return slurp(out, NULL);
}

static void expect_out(env_t *e, const char *cmd, const char *want) {
  char *got = run_out(e, cmd, NULL);
  if (strcmp(got, want) != 0)
    test_fail(__FILE__, __LINE__, "%s: got \"%s\", want \"%s\"", cmd, got, want);
  free(got);
}

static void srv_closed(h2rev_http_server_t *s) {
  env_t *e = s->data;
  e->closed = 1;
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
  E = e;
  ASSERT_OK(uv_loop_init(&e->loop));
  snprintf(e->dir, sizeof(e->dir), "%s", test_tmpdir());
  test_logger(&e->o.log, "server");
  e->o.header_timeout_ms = 500;
  e->o.access_log = record_access;
  e->o.send_timeout_ms = env_send_timeout_ms;
  NLOG = 0;
  ASSERT_OK(h2rev_http_server_init(&e->loop, &e->srv, &e->o));
  e->srv.data = e;
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/", text, "root\n"));
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/a", text, "a\n"));
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/a/b/", text, "ab\n"));
  ASSERT_EQ(h2rev_http_server_route(&e->srv, "/a/b", text, "x"), UV_EEXIST);
  ASSERT_EQ(h2rev_http_server_route(&e->srv, "nope", text, "x"), UV_EINVAL);
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/echo", echo, NULL));
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/chunks", chunks, NULL));
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/nocontent", nocontent, NULL));
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/abort", aborting, NULL));
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/info", info, NULL));
  ASSERT_OK(h2rev_http_server_route(&e->srv, "/up", upgrading, NULL));
  e->port = listen_on(&e->srv, NULL, 0);
  char cert[512], key[512];
  test_path(cert, sizeof(cert), test_certs(), "server.pem");
  test_path(key, sizeof(key), test_certs(), "server.key");
  h2rev_tls_options_t tls = {.cert_file = cert, .key_file = key};
  e->tls_port = listen_on(&e->srv, &tls, 1);
}

static void env_stop(env_t *e) {
  h2rev_http_server_close(&e->srv, srv_closed);
  run_until(&e->loop, &e->closed, 5000);
  ASSERT_NULL(e->srv.s_);
  loop_drain(&e->loop);
}

/* ------------------------------------------------------------- cases */

TEST(routes) {
  env_t e;
  env_init(&e);
  const char *modes[] = {"--http1.1", "--http2-prior-knowledge"};
  for (int i = 0; i < 2; i++) {
    char cmd[512];
#define URL(p) "curl -s %s http://127.0.0.1:%d" p, modes[i], e.port
    snprintf(cmd, sizeof(cmd), URL("/"));
    expect_out(&e, cmd, "root\n");
    snprintf(cmd, sizeof(cmd), URL("/ax"));
    expect_out(&e, cmd, "root\n"); /* not on a segment boundary */
    snprintf(cmd, sizeof(cmd), URL("/a?q=1"));
    expect_out(&e, cmd, "a\n");
    snprintf(cmd, sizeof(cmd), URL("/a/x"));
    expect_out(&e, cmd, "a\n");
    snprintf(cmd, sizeof(cmd), URL("/a/b"));
    expect_out(&e, cmd, "ab\n");
    snprintf(cmd, sizeof(cmd), URL("/a/b/c"));
    expect_out(&e, cmd, "ab\n");
    snprintf(cmd, sizeof(cmd), URL("/info/x?y=z"));
    expect_out(&e, cmd, i == 0 ? "GET /info/x?y=z 1.1 xfp=-\n" : "GET /info/x?y=z 2.0 xfp=-\n");
    snprintf(cmd, sizeof(cmd), URL("/chunks -H 'x-a: 1'"));
    expect_out(&e, cmd, "piece\npiece\npiece\n");
#undef URL
  }
  /* Nothing matches without a "/" route. */
  h2rev_http_server_t s2;
  ASSERT_OK(h2rev_http_server_init(&e.loop, &s2, NULL));
  ASSERT_OK(h2rev_http_server_route(&s2, "/only", text, "only\n"));
  int p2 = listen_on(&s2, NULL, 0);
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "curl -s -w ' %%{http_code}' http://127.0.0.1:%d/other", p2);
  expect_out(&e, cmd, "not found\n 404");
  snprintf(cmd, sizeof(cmd),
           "curl -s --http2-prior-knowledge -w ' %%{http_code}' http://127.0.0.1:%d/other", p2);
  expect_out(&e, cmd, "not found\n 404");
  s2.data = &e;
  e.closed = 0;
  h2rev_http_server_close(&s2, srv_closed);
  run_until(&e.loop, &e.closed, 5000);
  e.closed = 0;
  env_stop(&e);
}

/* 8 MiB echoed with Content-Length and chunked over HTTP/1.1, and over
 * HTTP/2 with TLS, compared by SHA-256. */
TEST(echo_large_body) {
  env_t e;
  env_init(&e);
  char cmd[8192];
  snprintf(cmd, sizeof(cmd), "head -c 8388608 /dev/urandom > %s/in", e.dir);
  ASSERT_EQ(sh(&e, cmd), 0);
  const char *variants[] = {
      "--http1.1 http://127.0.0.1:%d/echo",
      "--http1.1 -H 'Transfer-Encoding: chunked' http://127.0.0.1:%d/echo",
      "--http2-prior-knowledge http://127.0.0.1:%d/echo",
  };
  for (int i = 0; i < 3; i++) {
    char url[256];
    snprintf(url, sizeof(url), variants[i], e.port);
    snprintf(cmd, sizeof(cmd), "curl -sf --data-binary @%s/in -o %s/got %s && cmp %s/in %s/got",
             e.dir, e.dir, url, e.dir, e.dir);
    ASSERT_EQ(sh(&e, cmd), 0);
  }
  char ca[512];
  test_path(ca, sizeof(ca), test_certs(), "ca.pem");
  snprintf(cmd, sizeof(cmd),
           "curl -sf --http2 --cacert %s --data-binary @%s/in -o %s/got "
           "-w '%%{http_version}' https://localhost:%d/echo > %s/ver && cmp %s/in %s/got",
           ca, e.dir, e.dir, e.tls_port, e.dir, e.dir, e.dir);
  ASSERT_EQ(sh(&e, cmd), 0);
  char path[600];
  snprintf(path, sizeof(path), "%s/ver", e.dir);
  char *ver = slurp(path, NULL);
  ASSERT_STR_EQ(ver, "2");
  free(ver);
  ASSERT_EQ(e.done, 4);
  ASSERT_EQ(e.done_err, 0);
  env_stop(&e);
}

/* Several requests on one connection, HEAD and 204 framed without a body. */
TEST(keepalive_and_framing) {
  env_t e;
  env_init(&e);
  char cmd[1024];
  snprintf(cmd, sizeof(cmd),
           "curl -s --http1.1 -w '[%%{num_connects}]' http://127.0.0.1:%d/a "
           "http://127.0.0.1:%d/chunks http://127.0.0.1:%d/a/b",
           e.port, e.port, e.port);
  expect_out(&e, cmd, "a\n[1]piece\npiece\npiece\n[0]ab\n[0]");
  /* Pipelined: HEAD, 204, then GET; each answered in turn. */
  snprintf(cmd, sizeof(cmd),
           "printf 'HEAD /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nGET /nocontent HTTP/1.1\\r\\nHost: "
           "x\\r\\n\\r\\nGET /a HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | "
           "python3 -c 'import socket,sys; s=socket.create_connection((\"127.0.0.1\",%d)); "
           "s.sendall(sys.stdin.buffer.read()); d=b\"\"\n"
           "while True:\n  b=s.recv(65536)\n  if not b: break\n  d+=b\n"
           "sys.stdout.write(d.decode().replace(\"\\r\\n\",\"|\"))'",
           e.port);
  expect_out(&e, cmd,
             "HTTP/1.1 200 OK|content-type: text/plain|Content-Length: 2||"
             "HTTP/1.1 204 No Content||"
             "HTTP/1.1 200 OK|content-type: text/plain|Content-Length: 2|Connection: close||a\n");
  env_stop(&e);
}

/* 431, 400 and 408 (a head too slow), each a complete response. */
TEST(limits) {
  env_t e;
  env_init(&e);
  char cmd[1024];
  const char *py =
      "python3 -c 'import socket,sys,time; s=socket.create_connection((\"127.0.0.1\",%d)); "
      "s.sendall(%s); d=b\"\"\n"
      "while True:\n  b=s.recv(65536)\n  if not b: break\n  d+=b\n"
      "sys.stdout.write(d.decode().split(\"\\r\\n\")[0])'";
  snprintf(cmd, sizeof(cmd), py, e.port,
           "b\"GET / HTTP/1.1\\r\\nX: \"+b\"a\"*70000+b\"\\r\\n\\r\\n\"");
  expect_out(&e, cmd, "HTTP/1.1 431 Request Header Fields Too Large");
  snprintf(cmd, sizeof(cmd), py, e.port, "b\"GET / HTTP/1.1\\r\\nBad Header\\r\\n\\r\\n\"");
  expect_out(&e, cmd, "HTTP/1.1 400 Bad Request");
  snprintf(cmd, sizeof(cmd), py, e.port, "b\"GET / HTTP/1.1\\r\\nHost: x\\r\\n\"");
  expect_out(&e, cmd, "HTTP/1.1 408 Request Timeout");
  env_stop(&e);
}

/* A handler that aborts after its head: the client sees an error, never a
 * complete response; and a client that leaves mid-body: the handler's
 * read_cb sees it. */
TEST(abort_and_disconnect) {
  env_t e;
  env_init(&e);
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "curl -s --http1.1 -o /dev/null http://127.0.0.1:%d/abort", e.port);
  ASSERT_NE(sh(&e, cmd), 0);
  snprintf(cmd, sizeof(cmd),
           "curl -s --http2-prior-knowledge -o /dev/null http://127.0.0.1:%d/abort", e.port);
  ASSERT_NE(sh(&e, cmd), 0);
  ASSERT_EQ(e.done, 2);
  ASSERT_EQ(e.done_err, 2);
  snprintf(
      cmd, sizeof(cmd),
      "python3 -c 'import socket,time; s=socket.create_connection((\"127.0.0.1\",%d)); "
      "s.sendall(b\"POST /echo HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 1000000\\r\\n\\r\\n\"+"
      "b\"x\"*5000); time.sleep(0.2); s.close()'",
      e.port);
  ASSERT_EQ(sh(&e, cmd), 0);
  uint64_t deadline = uv_now(&e.loop) + 5000;
  while (e.done < 3 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(e.gone, 1);
  ASSERT_EQ(e.done, 3);
  env_stop(&e);
}

/* One access log line per finished request, whatever the protocol or the
 * way it ended: complete, a path no route matches (404), a handler's
 * abort, an HTTP/2 client that resets its stream in the middle of the
 * response; and the server's counters agree. */
TEST(access_log) {
  env_t e;
  env_init(&e);
  char cmd[2048];
  snprintf(cmd, sizeof(cmd), "curl -s --http1.1 http://127.0.0.1:%d/a/b", e.port);
  expect_out(&e, cmd, "ab\n");
  snprintf(cmd, sizeof(cmd), "curl -s --http2-prior-knowledge http://127.0.0.1:%d/a?x", e.port);
  expect_out(&e, cmd, "a\n");
  snprintf(cmd, sizeof(cmd),
           "curl -s --http2-prior-knowledge -o /dev/null http://127.0.0.1:%d/abort", e.port);
  ASSERT_NE(sh(&e, cmd), 0);
  /* HTTP/2 by hand: a request to /echo whose first body bytes come back
   * (the response has started), then RST_STREAM(CANCEL). */
  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import socket,struct,time\n"
           "def fr(t,f,sid,p): return struct.pack(\">I\",len(p))[1:]+bytes([t,f])+"
           "struct.pack(\">I\",sid)+p\n"
           "def lit(n,v): return bytes([0,len(n)])+n+bytes([len(v)])+v\n"
           "hb=lit(b\":method\",b\"POST\")+lit(b\":path\",b\"/echo\")+"
           "lit(b\":scheme\",b\"http\")+lit(b\":authority\",b\"x\")\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\"+fr(4,0,0,b\"\")+"
           "fr(1,4,1,hb)+fr(0,0,1,b\"hello\"))\n"
           "d=b\"\"\n"
           "while True:\n"
           "  b=s.recv(65536)\n"
           "  if not b: raise SystemExit(1)\n"
           "  d+=b\n"
           "  if b\"hello\" in d: break\n"
           "s.sendall(fr(3,0,1,struct.pack(\">I\",8)))\n"
           "time.sleep(0.3)\n"
           "s.close()'",
           e.port);
  ASSERT_EQ(sh(&e, cmd), 0);
  uint64_t deadline = uv_now(&e.loop) + 5000;
  while (NLOG < 4 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(NLOG, 4);
  ASSERT_STR_EQ(LOG[0].path, "/a/b");
  ASSERT_EQ(LOG[0].major, 1);
  ASSERT_EQ(LOG[0].status, 200);
  ASSERT_EQ(LOG[0].result, 0);
  ASSERT_EQ(LOG[0].bytes_out, 3u);
  ASSERT_STR_EQ(LOG[1].path, "/a?x");
  ASSERT_EQ(LOG[1].major, 2);
  ASSERT_EQ(LOG[1].status, 200);
  ASSERT_EQ(LOG[1].result, 0);
  ASSERT_STR_EQ(LOG[2].path, "/abort");
  ASSERT_EQ(LOG[2].status, 200);
  ASSERT_NE(LOG[2].result, 0);
  ASSERT_EQ(LOG[2].bytes_out, 10u);
  ASSERT_STR_EQ(LOG[3].method, "POST");
  ASSERT_STR_EQ(LOG[3].path, "/echo");
  ASSERT_EQ(LOG[3].major, 2);
  ASSERT_EQ(LOG[3].status, 200);
  ASSERT_NE(LOG[3].result, 0);
  ASSERT_EQ(LOG[3].bytes_out, 5u);
  h2rev_http_server_stats_t st;
  h2rev_http_server_stats(&e.srv, &st);
  ASSERT_EQ(st.requests[0][2], 1u);
  ASSERT_EQ(st.requests[1][2], 3u);
  ASSERT_EQ(st.requests_incomplete, 2u);
  uint64_t n = 0;
  for (int i = 0; i < H2REV_HTTP_DURATION_BUCKETS; i++)
    n += st.duration[i];
  ASSERT_EQ(n, 4u);
  ASSERT_EQ(st.connections_total, 4u);
  ASSERT_EQ(st.bytes_in, 5u);
  /* A path no route matches is answered by a handler: logged and counted. */
  h2rev_http_server_t s2;
  h2rev_http_server_options_t o2 = {.access_log = record_access};
  ASSERT_OK(h2rev_http_server_init(&e.loop, &s2, &o2));
  ASSERT_OK(h2rev_http_server_route(&s2, "/only", text, "only\n"));
  int p2 = listen_on(&s2, NULL, 0);
  snprintf(cmd, sizeof(cmd), "curl -s --http1.1 -w ' %%{http_code}' http://127.0.0.1:%d/x", p2);
  expect_out(&e, cmd, "not found\n 404");
  deadline = uv_now(&e.loop) + 5000;
  while (NLOG < 5 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(NLOG, 5);
  ASSERT_STR_EQ(LOG[4].path, "/x");
  ASSERT_EQ(LOG[4].status, 404);
  h2rev_http_server_stats(&s2, &st);
  ASSERT_EQ(st.requests[0][4], 1u);
  s2.data = &e;
  h2rev_http_server_close(&s2, srv_closed);
  run_until(&e.loop, &e.closed, 5000);
  e.closed = 0;
  env_stop(&e);
}

/* ------------------------------------------ reverse connections as sockets */

typedef struct rev {
  env_t *e;
  h2rev_dialer_t d;
  h2rev_listener_t l;
  h2rev_http_server_t back; /* serves the listener's streams */
  int attached, dclosed, lclosed, bclosed;
  int streams_done;
  h2rev_stream_t *accepted[8];
  int naccepted;
  /* the dialer side of one reverse connection */
  h2rev_dial_t dial;
  h2rev_stream_t s;
  int dialed;
  char rx[4096];
  size_t rxlen;
  int eof;
} rev_t;

static void lis_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  (void)err;
  (void)delay;
  rev_t *r = l->data;
  if (state == H2REV_LISTENER_ATTACHED)
    r->attached = 1;
}

static void stream_done(h2rev_stream_t *s) {
  rev_t *r = s->data == NULL ? NULL : NULL;
  (void)r;
  free(s);
  E->done++;
}

/* When set, the listener's streams go to this upstream instead of `back`. */
static h2rev_upstream_t *UP;

static void lis_conn(h2rev_listener_t *l, int status) {
  rev_t *r = l->data;
  if (status != 0)
    return;
  h2rev_stream_t *s = malloc(sizeof(*s));
  if (h2rev_listener_accept(l, s) != 0) {
    free(s);
    return;
  }
  if (UP != NULL)
    ASSERT_OK(h2rev_upstream_serve(UP, s, stream_done));
  else
    ASSERT_OK(h2rev_http_server_serve_stream(&r->back, s, stream_done));
}

static void dialed_cb(h2rev_dial_t *req, int status) {
  rev_t *r = req->data;
  ASSERT_OK(status);
  r->dialed = 1;
}

static void r_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)sz;
  rev_t *r = s->data;
  *buf = uv_buf_init(r->rx + r->rxlen, (unsigned)(sizeof(r->rx) - 1 - r->rxlen));
}

static void r_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  rev_t *r = s->data;
  if (n > 0) {
    r->rxlen += (size_t)n;
    r->rx[r->rxlen] = '\0';
  } else if (n < 0) {
    r->eof = (int)n;
  }
}

static void r_wrote(h2rev_write_t *w, int status) {
  ASSERT_OK(status);
  free(w);
}

static void r_send(rev_t *r, const char *text) {
  h2rev_write_t *w = malloc(sizeof(*w));
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)strlen(text));
  ASSERT_OK(h2rev_stream_write(w, &r->s, &b, 1, r_wrote));
}

static void run_while(env_t *e, int (*fn)(rev_t *), rev_t *r, const char *what) {
  uint64_t deadline = uv_now(&e->loop) + 10000;
  while (!fn(r) && uv_now(&e->loop) < deadline)
    uv_run(&e->loop, UV_RUN_ONCE);
  if (!fn(r))
    test_fail(__FILE__, __LINE__, "not reached: %s", what);
}

static int is_attached(rev_t *r) {
  return r->attached;
}
static int is_dialed(rev_t *r) {
  return r->dialed;
}
static int has_resp(rev_t *r) {
  return strstr(r->rx, "\r\n\r\n") != NULL && r->rx[r->rxlen - 1] == '\n' &&
         strstr(strstr(r->rx, "\r\n\r\n"), "xfp") != NULL;
}
static int has_eof(rev_t *r) {
  return r->eof != 0;
}
static int all_closed(rev_t *r) {
  return r->dclosed && r->lclosed && r->bclosed;
}

static void d_closed(h2rev_dialer_t *d) {
  ((rev_t *)d->data)->dclosed = 1;
}
static void l_closed(h2rev_listener_t *l) {
  ((rev_t *)l->data)->lclosed = 1;
}
static void b_closed(h2rev_http_server_t *s) {
  ((rev_t *)s->data)->bclosed = 1;
}

static void rev_start_base(rev_t *r, env_t *e, h2rev_http_server_t *mount_on, int port,
                           const char *base) {
  memset(r, 0, sizeof(*r));
  r->e = e;
  h2rev_dialer_options_t dopt = {.base_path = base};
  test_logger(&dopt.log, "dialer");
  ASSERT_OK(h2rev_dialer_init(&e->loop, &r->d, &dopt));
  r->d.data = r;
  if (mount_on != NULL) {
    ASSERT_OK(h2rev_dialer_mount(&r->d, mount_on));
    ASSERT_EQ(h2rev_dialer_mount(&r->d, mount_on), UV_EBUSY);
  } else {
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    ASSERT_OK(h2rev_dialer_listen(&r->d, (struct sockaddr *)&a, NULL));
    struct sockaddr_in b;
    int len = sizeof(b);
    ASSERT_OK(h2rev_dialer_getsockname(&r->d, 0, (struct sockaddr *)&b, &len));
    port = ntohs(b.sin_port);
  }
  ASSERT_OK(h2rev_http_server_init(&e->loop, &r->back, NULL));
  r->back.data = r;
  ASSERT_OK(h2rev_http_server_route(&r->back, "/", info, NULL));
  char url[2048];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, base);
  h2rev_listener_options_t lo = {.url = url, .id = "back", .on_state = lis_state};
  test_logger(&lo.log, "listener");
  ASSERT_OK(h2rev_listener_init(&e->loop, &r->l, &lo));
  r->l.data = r;
  ASSERT_OK(h2rev_listener_start(&r->l, lis_conn));
  run_while(e, is_attached, r, "listener attached");
}

static void rev_start(rev_t *r, env_t *e, h2rev_http_server_t *mount_on, int port) {
  rev_start_base(r, e, mount_on, port, "/rc");
}

static void rev_stop(rev_t *r) {
  h2rev_listener_close(&r->l, l_closed);
  h2rev_dialer_close(&r->d, d_closed);
  h2rev_http_server_close(&r->back, b_closed);
  run_while(r->e, all_closed, r, "all closed");
}

/* Two requests in turn on one reverse connection served by the server,
 * then the dialer side ends it: the stream's done callback runs. */
TEST(serve_stream) {
  env_t e;
  env_init(&e);
  rev_t r;
  rev_start(&r, &e, NULL, 0);
  r.dial.data = r.s.data = &r;
  ASSERT_OK(h2rev_dial(&r.dial, &r.d, "back", &r.s, 5000, dialed_cb));
  run_while(&e, is_dialed, &r, "dialed");
  ASSERT_OK(h2rev_stream_read_start(&r.s, r_alloc, r_read));
  r_send(&r, "GET /one?x=1 HTTP/1.1\r\nHost: back\r\n\r\n");
  run_while(&e, has_resp, &r, "first response");
  ASSERT(strstr(r.rx, "GET /one?x=1 1.1 xfp=-\n") != NULL);
  r.rxlen = 0;
  r.rx[0] = '\0';
  r_send(
      &r,
      "POST /two HTTP/1.1\r\nHost: back\r\nX-Forwarded-Prefix: /p\r\nContent-Length: 3\r\n\r\nabc");
  run_while(&e, has_resp, &r, "second response");
  ASSERT(strstr(r.rx, "POST /two 1.1 xfp=/p\n") != NULL);
  h2rev_shutdown_t sh;
  ASSERT_OK(h2rev_stream_shutdown(&sh, &r.s, NULL));
  run_while(&e, has_eof, &r, "stream ended by the server");
  ASSERT_EQ(r.eof, UV_EOF);
  uint64_t deadline = uv_now(&e.loop) + 5000;
  while (e.done < 1 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(e.done, 1); /* the server's done(stream) */
  h2rev_stream_close(&r.s, NULL);
  rev_stop(&r);
  env_stop(&e);
}

/* h2rev_http_server_set_tls: new connections get the new certificate, a bad
 * one keeps the old, a server without TLS sockets has nothing to change. */
TEST(set_tls) {
  env_t e;
  env_init(&e);
  char ca[512], cacert[512], cakey[512], cmd[1024];
  test_path(ca, sizeof(ca), test_certs(), "ca.pem");
  test_path(cacert, sizeof(cacert), test_certs(), "ca.pem");
  test_path(cakey, sizeof(cakey), test_certs(), "ca.key");
  snprintf(cmd, sizeof(cmd), "curl -s --cacert %s https://localhost:%d/a", ca, e.tls_port);
  expect_out(&e, cmd, "a\n");
  /* The CA's own certificate as the server's: it does not name localhost. */
  h2rev_tls_options_t other = {.cert_file = cacert, .key_file = cakey};
  ASSERT_OK(h2rev_http_server_set_tls(&e.srv, &other));
  snprintf(cmd, sizeof(cmd),
           "openssl s_client -connect 127.0.0.1:%d < /dev/null 2> /dev/null | "
           "openssl x509 -noout -subject",
           e.tls_port);
  expect_out(&e, cmd, "subject=O = h2rev test, CN = h2rev test CA\n");
  snprintf(cmd, sizeof(cmd), "curl -s --cacert %s https://localhost:%d/a", ca, e.tls_port);
  ASSERT_NE(sh(&e, cmd), 0);
  /* A key that is not the certificate's, a missing file: kept as it was. */
  char key[512];
  test_path(key, sizeof(key), test_certs(), "server.key");
  h2rev_tls_options_t bad = {.cert_file = cacert, .key_file = key};
  ASSERT_EQ(h2rev_http_server_set_tls(&e.srv, &bad), H2REV_ETLS);
  h2rev_tls_options_t missing = {.cert_file = "/nonexistent.pem", .key_file = key};
  ASSERT_EQ(h2rev_http_server_set_tls(&e.srv, &missing), H2REV_ETLS);
  ASSERT_EQ(h2rev_http_server_set_tls(&e.srv, NULL), UV_EINVAL);
  snprintf(cmd, sizeof(cmd), "curl -sk https://127.0.0.1:%d/a", e.tls_port);
  expect_out(&e, cmd, "a\n");
  snprintf(cmd, sizeof(cmd),
           "openssl s_client -connect 127.0.0.1:%d < /dev/null 2> /dev/null | "
           "openssl x509 -noout -subject",
           e.tls_port);
  expect_out(&e, cmd, "subject=O = h2rev test, CN = h2rev test CA\n");
  /* The cleartext socket stays cleartext. */
  snprintf(cmd, sizeof(cmd), "curl -s http://127.0.0.1:%d/a", e.port);
  expect_out(&e, cmd, "a\n");
  h2rev_http_server_t plain;
  ASSERT_OK(h2rev_http_server_init(&e.loop, &plain, NULL));
  listen_on(&plain, NULL, 0);
  ASSERT_EQ(h2rev_http_server_set_tls(&plain, &other), UV_EINVAL);
  plain.data = &e;
  h2rev_http_server_close(&plain, srv_closed);
  run_until(&e.loop, &e.closed, 5000);
  e.closed = 0;
  env_stop(&e);
}

/* The dialer mounted on the application's server next to its routes: a
 * listener attaches through it and a proxied request reaches the server
 * behind the listener. */
TEST(dialer_mounted) {
  env_t e;
  env_init(&e);
  rev_t r;
  rev_start(&r, &e, &e.srv, e.port);
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "curl -s --http1.1 http://127.0.0.1:%d/rc/proxy/back/x?y=1", e.port);
  expect_out(&e, cmd, "GET /x?y=1 1.1 xfp=/rc/proxy/back\n");
  snprintf(cmd, sizeof(cmd), "curl -s --http2-prior-knowledge http://127.0.0.1:%d/rc/proxy/back/z",
           e.port);
  expect_out(&e, cmd, "GET /z 1.1 xfp=/rc/proxy/back\n");
  snprintf(cmd, sizeof(cmd), "curl -s http://127.0.0.1:%d/a", e.port);
  expect_out(&e, cmd, "a\n");
  snprintf(cmd, sizeof(cmd), "curl -s -w ' %%{http_code}' http://127.0.0.1:%d/rc/revdial?id=x",
           e.port);
  expect_out(&e, cmd, "/revdial needs HTTP/2\n 404");
  rev_stop(&r);
  /* The application's server lives on without the dialer. */
  snprintf(cmd, sizeof(cmd), "curl -s -w ' %%{http_code}' http://127.0.0.1:%d/rc/proxy/back/x",
           e.port);
  expect_out(&e, cmd, "root\n 200");
  env_stop(&e);
}

TEST(upgrade_through_request_api) {
  env_t e;
  env_init(&e);
  char cmd[2048];
  /* The bytes sent right behind the head arrive first, after the 101. */
  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import socket,sys\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"GET /up HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
           "Upgrade: echo\\r\\n\\r\\nhello \")\n"
           "b=b\"\"\n"
           "while not b.endswith(b\"hello \"): b+=s.recv(100)\n"
           "s.sendall(b\"world\"); s.shutdown(socket.SHUT_WR)\n"
           "while True:\n"
           " d=s.recv(100)\n"
           " if not d: break\n"
           " b+=d\n"
           "h,_,t=b.partition(b\"\\r\\n\\r\\n\")\n"
           "sys.stdout.write(h.split(b\"\\r\\n\")[0].decode()+\"|\"+"
           "str(b\"upgrade: echo\" in h.lower())+\"|\"+t.decode())'",
           e.port);
  expect_out(&e, cmd, "HTTP/1.1 101 Switching Protocols|True|hello world");
  /* Refused: the answer, then the end of the connection. */
  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import socket,sys\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"GET /up?no HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
           "Upgrade: echo\\r\\n\\r\\n\")\n"
           "b=b\"\"\n"
           "while True:\n"
           " d=s.recv(100)\n"
           " if not d: break\n"
           " b+=d\n"
           "sys.stdout.write(b.split(b\"\\r\\n\")[0].decode()+\"|\"+b.split(b\"\\r\\n\\r\\n\")[1]."
           "decode())'",
           e.port);
  expect_out(&e, cmd, "HTTP/1.1 426 Status|no\n");
  /* Over HTTP/2 there is no upgrade: the handler sees a plain request. */
  snprintf(cmd, sizeof(cmd), "curl -s --http2-prior-knowledge http://127.0.0.1:%d/up", e.port);
  expect_out(&e, cmd, "no\n");
  env_stop(&e);
}

/* HTTP/2: an extended CONNECT (RFC 8441) reaches the handler as an upgrade
 * (req->protocol), its 101 goes out as 200 and the stream carries bytes
 * both ways, the client's END_STREAM a half-close; a plain CONNECT
 * (authority only) goes to the CONNECT route, 405 without one; HTTP/1.1
 * "CONNECT host:port" likewise. The client is test/h2connect.c. */
TEST(connect_through_request_api) {
  env_t e;
  env_init(&e);
  const char *bin = getenv("H2REV_BIN");
  ASSERT(bin != NULL);
  char cmd[2048];
  snprintf(cmd, sizeof(cmd),
           "{ printf 'hello world' | %s/h2rev-h2connect --protocol echo --path /up 127.0.0.1 %d "
           "x 2>%s/err; cat %s/err; }",
           bin, e.port, e.dir, e.dir);
  expect_out(&e, cmd, "hello worldstatus 200\n");
  /* The same with TLS (ALPN h2), where the SETTINGS say the same. */
  snprintf(cmd, sizeof(cmd),
           "printf 'over tls' | %s/h2rev-h2connect --ca none --protocol echo --path /up "
           "127.0.0.1 %d x",
           bin, e.tls_port);
  expect_out(&e, cmd, "over tls");
  /* A refusal is an ordinary response. */
  snprintf(cmd, sizeof(cmd),
           "{ %s/h2rev-h2connect --protocol echo --path '/up?no' 127.0.0.1 %d x </dev/null "
           "2>%s/err; echo \" $?\"; cat %s/err; }",
           bin, e.port, e.dir, e.dir);
  expect_out(&e, cmd, "no\n 2\nstatus 426\n");
  snprintf(cmd, sizeof(cmd),
           "{ %s/h2rev-h2connect 127.0.0.1 %d host:99 </dev/null 2>%s/err; echo \" $?\"; "
           "cat %s/err; }",
           bin, e.port, e.dir, e.dir);
  expect_out(&e, cmd, "method not allowed here\n 2\nstatus 405\n");
  ASSERT_OK(h2rev_http_server_route_connect(&e.srv, tunnel, NULL));
  ASSERT_EQ(h2rev_http_server_route_connect(&e.srv, tunnel, NULL), UV_EEXIST);
  snprintf(cmd, sizeof(cmd), "printf 'bytes' | %s/h2rev-h2connect 127.0.0.1 %d host:99", bin,
           e.port);
  expect_out(&e, cmd, "host:99|bytes");
  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import socket,sys\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"CONNECT other:7 HTTP/1.1\\r\\nHost: other:7\\r\\n\\r\\nraw\")\n"
           "s.shutdown(socket.SHUT_WR)\n"
           "b=b\"\"\n"
           "while True:\n"
           " d=s.recv(100)\n"
           " if not d: break\n"
           " b+=d\n"
           "h,_,t=b.partition(b\"\\r\\n\\r\\n\")\n"
           "sys.stdout.write(h.split(b\"\\r\\n\")[0].decode()+\"|\"+t.decode())'",
           e.port);
  expect_out(&e, cmd, "HTTP/1.1 200 OK|other:7|raw");
  env_stop(&e);
}

/* A client that ends its direction right after its request (nc -N, HTTP/1.0
 * tools) still gets the whole answer; one that ends in the middle of its
 * request gets nothing and is closed. */
TEST(http1_client_half_close) {
  env_t e;
  env_init(&e);
  rev_t r; /* through the tunnel: the answer comes well after the client's end */
  rev_start(&r, &e, &e.srv, e.port);
  char cmd[1024];
  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import socket,sys\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"GET /rc/proxy/back/x?y HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\")\n"
           "s.shutdown(socket.SHUT_WR)\n"
           "b=b\"\"\n"
           "while True:\n"
           " d=s.recv(100)\n"
           " if not d: break\n"
           " b+=d\n"
           "sys.stdout.write(b.split(b\"\\r\\n\")[0].decode()+\"|\"+b.split(b\"\\r\\n\\r\\n\")[1]."
           "decode())'",
           e.port);
  expect_out(&e, cmd, "HTTP/1.1 200 OK|GET /x?y 1.1 xfp=/rc/proxy/back\n");
  snprintf(
      cmd, sizeof(cmd),
      "python3 -c 'import socket,sys\n"
      "s=socket.create_connection((\"127.0.0.1\",%d))\n"
      "s.sendall(b\"POST /echo HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 10\\r\\n\\r\\nabc\")\n"
      "s.shutdown(socket.SHUT_WR)\n"
      "b=b\"\"\n"
      "while True:\n"
      " d=s.recv(100)\n"
      " if not d: break\n"
      " b+=d\n"
      "sys.stdout.write(\"closed:\"+str(len(b.split(b\"\\r\\n\\r\\n\")[-1]) < 10))'",
      e.port);
  expect_out(&e, cmd, "closed:True");
  rev_stop(&r);
  env_stop(&e);
}

/* Nothing of a long target is cut on the way (issue 14): a 10 KiB query
 * over HTTP/1.1 and HTTP/2, under a 600-byte base path, reaches the
 * listener whole; the proxy also serves as an ordinary handler of another
 * route, with that route as the prefix the listener is told. */
TEST(proxy_long_targets) {
  env_t e;
  env_init(&e);
  char base[601];
  base[0] = '/';
  memset(base + 1, 'b', 599);
  base[600] = '\0';
  rev_t r;
  rev_start_base(&r, &e, &e.srv, e.port, base);
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/t", h2rev_dialer_proxy, &r.d));
  size_t ql = 10 * 1024;
  char *q = malloc(ql + 1);
  for (size_t i = 0; i < ql; i++)
    q[i] = (char)('a' + i % 26);
  q[ql] = '\0';
  size_t cap = 2 * ql + 4096;
  char *cmd = malloc(cap), *want = malloc(cap);
  const char *modes[] = {"--http1.1", "--http2-prior-knowledge"};
  for (int m = 0; m < 2; m++) {
    snprintf(cmd, cap, "curl -s %s 'http://127.0.0.1:%d%s/proxy/back/x?q=%s'", modes[m], e.port,
             base, q);
    snprintf(want, cap, "GET /x?q=%s 1.1 xfp=%s/proxy/back\n", q, base);
    expect_out(&e, cmd, want);
    snprintf(cmd, cap, "curl -s %s 'http://127.0.0.1:%d/t/back/y?q=%s'", modes[m], e.port, q);
    snprintf(want, cap, "GET /y?q=%s 1.1 xfp=/t/back\n", q);
    expect_out(&e, cmd, want);
  }
  /* A prefix with no id, or an id that is not one: 400, not a guess. */
  snprintf(cmd, cap, "curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/t/", e.port);
  expect_out(&e, cmd, "400");
  snprintf(cmd, cap, "curl -s -o /dev/null -w '%%{http_code}' 'http://127.0.0.1:%d/t/a%%20b/x'",
           e.port);
  expect_out(&e, cmd, "400");
  free(q);
  free(cmd);
  free(want);
  rev_stop(&r);
  env_stop(&e);
}

/* ------------------------------------------------- the listener's side */

static int s_closed;
static void s_closed_cb(h2rev_stream_t *s) {
  (void)s;
  s_closed = 1;
}
static int up_closed;
static void up_closed_cb(h2rev_upstream_t *u) {
  (void)u;
  up_closed = 1;
}

/* One request (with Connection: close) on a reverse connection of its own,
 * written as a dialer would; what the listener answered. */
static const char *exchange(env_t *e, rev_t *r, const char *req) {
  r->dialed = r->eof = 0;
  r->rxlen = 0;
  r->rx[0] = '\0';
  r->dial.data = r->s.data = r;
  ASSERT_OK(h2rev_dial(&r->dial, &r->d, "back", &r->s, 5000, dialed_cb));
  run_while(e, is_dialed, r, "dialed");
  ASSERT_OK(h2rev_stream_read_start(&r->s, r_alloc, r_read));
  r_send(r, req);
  run_while(e, has_eof, r, "the response and the end of the stream");
  s_closed = 0;
  h2rev_stream_close(&r->s, s_closed_cb);
  run_until(&e->loop, &s_closed, 5000);
  return r->rx;
}

static void expect_seen(env_t *e, rev_t *r, const char *req, const char *want) {
  const char *got = exchange(e, r, req);
  if (strstr(got, want) == NULL)
    test_fail(__FILE__, __LINE__, "for %s\nwant %s\ngot %s", req, want, got);
}

/* The listener strips the prefix the dialer states or, from the Go dialer,
 * the first <base>/proxy/<id> of the path, nothing else; it refuses (400)
 * what a dialer should have refused; it takes the fields a dialer adds to
 * the most a client may send. The upstream is the /info route of e.srv. */
/* The upstream's access log, as an embedder gets it. */
static struct {
  int n;
  int status[16], local[16], result[16];
  char path[16][96];
  uint64_t in[16], out[16];
} UA;

static void up_access(void *arg, const h2rev_upstream_access_t *a) {
  ASSERT(arg == &UA);
  if (UA.n < 16) {
    UA.status[UA.n] = a->status;
    UA.local[UA.n] = a->local;
    UA.result[UA.n] = a->result;
    UA.in[UA.n] = a->bytes_in;
    UA.out[UA.n] = a->bytes_out;
    ASSERT(a->path != NULL);
    ASSERT_STR_EQ(a->method, "GET");
    ASSERT_LE(a->ttfb_us, a->duration_us);
    snprintf(UA.path[UA.n], sizeof(UA.path[0]), "%s", a->path);
  }
  UA.n++;
}

TEST(upstream_prefix) {
  env_t e;
  env_init(&e);
  memset(&UA, 0, sizeof(UA));
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/info", e.port);
  h2rev_upstream_t up;
  h2rev_upstream_options_t uo = {.url = url, .access_log = up_access, .access_log_arg = &UA};
  test_logger(&uo.log, "upstream");
  ASSERT_OK(h2rev_upstream_init(&e.loop, &up, &uo));
  UP = &up;
  rev_t r;
  rev_start(&r, &e, NULL, 0);
#define REQ(target, fields)                                                                        \
  "GET " target " HTTP/1.1\r\nHost: back\r\n" fields "Connection: close\r\n\r\n"
  /* The Go dialer's full path: its first /proxy/<id> goes, a later one stays. */
  expect_seen(&e, &r, REQ("/proxy/back/public/x/proxy/back/admin", ""),
              "GET /info/public/x/proxy/back/admin 1.1 xfp=-");
  expect_seen(&e, &r, REQ("/base/proxy/back/a?q=/proxy/back/b", ""),
              "GET /info/a?q=/proxy/back/b 1.1 xfp=-");
  expect_seen(&e, &r, REQ("/proxy/back?q=1", ""), "GET /info/?q=1 1.1");
  /* Never in the query. */
  expect_seen(&e, &r, REQ("/x?q=/proxy/back/y", ""), "GET /info/x?q=/proxy/back/y 1.1");
  /* A client's X-Forwarded-Prefix through the Go dialer strips nothing more. */
  expect_seen(&e, &r, REQ("/proxy/back/public/x", "X-Forwarded-Prefix: /proxy/back/public\r\n"),
              "GET /info/public/x 1.1");
  /* h2rev's dialer stripped the prefix it states: a path that starts with
   * it again is the client's (GET /proxy/back/proxy/back/admin). */
  expect_seen(&e, &r, REQ("/proxy/back/admin", "X-Forwarded-Prefix: /proxy/back\r\n"),
              "GET /info/proxy/back/admin 1.1");
  expect_seen(&e, &r, REQ("/public/x/proxy/back/admin", "X-Forwarded-Prefix: /proxy/back\r\n"),
              "GET /info/public/x/proxy/back/admin 1.1");
  /* An older dialer passed the client's X-Forwarded-Prefix ahead of its own. */
  expect_seen(&e, &r,
              REQ("/admin/x", "X-Forwarded-Prefix: /admin\r\nX-Forwarded-Prefix: /proxy/back\r\n"),
              "GET /info/admin/x 1.1");
  /* Refused in the upstream's place. */
  expect_seen(&e, &r, REQ("/proxy/back/%2e%2e/x", ""), "HTTP/1.1 400 ");
  expect_seen(&e, &r, REQ("/proxy/back/a/..;x/b", ""), "HTTP/1.1 400 ");
  expect_seen(&e, &r, REQ("/proxy/back/a", "Foo Bar: 1\r\n"), "HTTP/1.1 400 ");
  /* As many fields as the dialer passes on: a client's most, and its own.
   * The upstream here (an h2rev server) takes 128: its 431 shows the head
   * went on, where the listener answered 502 itself before. */
  static char many[8192];
  size_t n =
      (size_t)snprintf(many, sizeof(many), "GET /proxy/back/many HTTP/1.1\r\nHost: back\r\n");
  for (int i = 2; i < H2R_MAX_HEADERS + H2R_PROXY_ADDED_HEADERS; i++)
    n += (size_t)snprintf(many + n, sizeof(many) - n, "X-N%d: v\r\n", i);
  snprintf(many + n, sizeof(many) - n, "Connection: close\r\n\r\n");
  expect_seen(&e, &r, many, "HTTP/1.1 431 ");
#undef REQ
  /* One access line per request, in order: the path as the upstream got
   * it, its status, or the listener's own 400. */
  ASSERT_EQ(UA.n, 12);
  ASSERT_STR_EQ(UA.path[0], "/info/public/x/proxy/back/admin");
  ASSERT_EQ(UA.status[0], 200);
  ASSERT_EQ(UA.local[0], 0);
  ASSERT_EQ(UA.result[0], 0);
  ASSERT_GT(UA.out[0], 0);
  ASSERT_EQ(UA.in[0], 0);
  ASSERT_STR_EQ(UA.path[2], "/info/?q=1");
  for (int i = 8; i < 11; i++) {
    ASSERT_EQ(UA.status[i], 400);
    ASSERT_EQ(UA.local[i], 1);
  }
  ASSERT_EQ(UA.status[11], 431);
  ASSERT_EQ(UA.local[11], 0);
  h2rev_upstream_stats_t st;
  h2rev_upstream_stats(&up, &st);
  ASSERT_EQ(st.requests[2], 8);
  ASSERT_EQ(st.requests[4], 4);
  ASSERT_EQ(st.refused, 3);
  ASSERT_EQ(st.errors, 0);
  ASSERT_EQ(st.streams_total, 12);
  uint64_t counted = 0, out = 0;
  for (int i = 0; i < H2REV_HTTP_DURATION_BUCKETS; i++)
    counted += st.duration[i];
  for (int i = 0; i < 12; i++)
    out += UA.out[i];
  ASSERT_EQ(counted, 12);
  ASSERT_EQ(st.bytes_out, out);
  rev_stop(&r);
  h2rev_upstream_close(&up, up_closed_cb);
  run_until(&e.loop, &up_closed, 5000);
  UP = NULL;
  env_stop(&e);
}

/* A drain ends when its last request is answered, not at its deadline,
 * and without waking the loop while it waits (it used to look every
 * 50 ms); the request in flight gets its whole answer, a new client is
 * refused. */
static int slow_seen, wakeups;

static void slow_answer(uv_timer_t *t) {
  h2rev_http_reply(t->data, 200, "text/plain", "slow\n", 5);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void slow(h2rev_http_req_t *req, void *arg) {
  unsigned ms = *(unsigned *)arg;
  uv_timer_t *t = malloc(sizeof(*t));
  uv_timer_init(req->server->loop, t);
  t->data = req;
  uv_timer_start(t, slow_answer, ms, 0);
  slow_seen++;
}

static void count_wakeup(uv_prepare_t *p) {
  (void)p;
  wakeups++;
}

static void proc_exit(uv_process_t *p, int64_t status, int sig) {
  int *rc = p->data;
  *rc = sig ? 128 + sig : (int)status;
  uv_close((uv_handle_t *)p, NULL);
}

TEST(drain_ends_with_last_request) {
  env_t e;
  env_init(&e);
  unsigned ms = 1000;
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/slow", slow, &ms));
  slow_seen = 0;
  char out[600], cmd[1600];
  snprintf(out, sizeof(out), "%s/slow.out", e.dir);
  snprintf(cmd, sizeof(cmd), "curl -s -o %s -w '%%{http_code}' http://127.0.0.1:%d/slow > %s.code",
           out, e.port, out);
  uv_process_t p;
  int rc = -1;
  char *args[] = {"/bin/sh", "-c", cmd, NULL};
  uv_stdio_container_t io[3] = {{.flags = UV_IGNORE},
                                {.flags = UV_INHERIT_FD, .data.fd = 2},
                                {.flags = UV_INHERIT_FD, .data.fd = 2}};
  uv_process_options_t po = {
      .exit_cb = proc_exit, .file = "/bin/sh", .args = args, .stdio_count = 3, .stdio = io};
  p.data = &rc;
  ASSERT_OK(uv_spawn(&e.loop, &p, &po));
  run_until(&e.loop, &slow_seen, 10000);

  uv_prepare_t prep;
  uv_prepare_init(&e.loop, &prep);
  uv_prepare_start(&prep, count_wakeup);
  wakeups = 0;
  uint64_t t0 = uv_now(&e.loop);
  ASSERT_OK(h2rev_http_server_shutdown(&e.srv, 20000, srv_closed));
  ASSERT_EQ(h2rev_http_server_shutdown(&e.srv, 20000, srv_closed), UV_EALREADY);
  run_until(&e.loop, &e.closed, 15000);
  uint64_t took = uv_now(&e.loop) - t0;
  int woke = wakeups;
  uv_close((uv_handle_t *)&prep, NULL);
  while (rc == -1)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(rc, 0);
  char code[700];
  snprintf(code, sizeof(code), "%s.code", out);
  char *got = slurp(code, NULL);
  ASSERT_STR_EQ(got, "200");
  free(got);
  got = slurp(out, NULL);
  ASSERT_STR_EQ(got, "slow\n");
  free(got);
  /* Ended by the answer (about 1 s), not by the 20 s deadline. */
  ASSERT_LT(took, 8000);
  /* A few turns for the client's bytes, the timer, the close: 50 ms
   * polling would have woken it some 20 times in that second. */
  ASSERT_LE(woke, 12);
  ASSERT_NULL(e.srv.s_);
  loop_drain(&e.loop);
}

/* A client that sends its request and closes its socket at once: its FIN
 * arrives before the answer, so reading never reports it gone; only the
 * answer's write fails (EPIPE). The connection must close then: it stayed
 * open, counted and held by the server's drain, one for every such client
 * (hostile.py abort floods left hundreds). */
static int drip_status = 1, drip_wrote_n, drip_both;

static void drip_wrote(h2rev_http_write_t *w, int status) {
  if (++drip_wrote_n == 2) {
    drip_status = status;
    drip_both = 1;
  }
  free(w);
}

static void drip_more(uv_timer_t *t) {
  h2rev_http_req_t *req = t->data;
  static char rest[4096];
  memset(rest, 'b', sizeof(rest));
  uv_buf_t b = uv_buf_init(rest, sizeof(rest));
  h2rev_http_write_t *w = malloc(sizeof(*w));
  int r = h2rev_http_write(w, req, &b, 1, drip_wrote);
  if (r != 0) { /* the first write's failure was known already */
    free(w);
    drip_wrote(NULL, r);
  }
  h2rev_http_end(req);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void drip(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  ASSERT_OK(h2rev_http_respond(req, 200, NULL, 0, 1 + 4096));
  uv_buf_t b = uv_buf_init("a", 1);
  ASSERT_OK(h2rev_http_write(malloc(sizeof(h2rev_http_write_t)), req, &b, 1, drip_wrote));
  uv_timer_t *t = malloc(sizeof(*t));
  uv_timer_init(req->server->loop, t);
  t->data = req;
  uv_timer_start(t, drip_more, 300, 0);
}

static int conns_gone;

static void watch_conns(uv_timer_t *t) {
  h2rev_http_server_stats_t st;
  h2rev_http_server_stats(t->data, &st);
  if (st.connections == 0)
    conns_gone = 1;
}

TEST(http1_write_error_closes) {
  env_t e;
  env_init(&e);
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/drip", drip, NULL));
  char cmd[600];
  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import socket\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"GET /drip HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\")\n"
           "s.close()\n"
           "print(\"sent\", end=\"\")'",
           e.port);
  expect_out(&e, cmd, "sent");
  run_until(&e.loop, &drip_both, 5000);
  /* EPIPE or ECONNRESET: the client's kernel reset the connection on the first byte. */
  ASSERT(drip_status != 0);
  uv_timer_t t;
  uv_timer_init(&e.loop, &t);
  t.data = &e.srv;
  conns_gone = 0;
  uv_timer_start(&t, watch_conns, 20, 20);
  run_until(&e.loop, &conns_gone, 3000);
  uv_close((uv_handle_t *)&t, NULL);
  ASSERT_EQ(conns_gone, 1);
  env_stop(&e);
}

/* A client that never reads: the response's writes stop completing, and
 * after send_timeout_ms the exchange is cut (UV_ETIMEDOUT) and its
 * connection closed; a slow client that keeps reading is not. */
#define FLOOD_CHUNK (256u << 10) /* ~80 ms of the slow reader below: well within 600 ms */
#define FLOOD_TOTAL (64u << 20)
static char flood_buf[FLOOD_CHUNK];
static int flood_result, flood_done;

static void flood_more(h2rev_http_write_t *w, int status) {
  h2rev_http_req_t *req = w->req;
  uint64_t *sent = req->data; /* [0] sent, [1] total */
  if (status != 0) {
    h2rev_http_abort(req);
    return;
  }
  if (sent[0] >= sent[1]) {
    h2rev_http_end(req);
    return;
  }
  uv_buf_t b = uv_buf_init(flood_buf, FLOOD_CHUNK);
  *sent += FLOOD_CHUNK;
  if (h2rev_http_write(w, req, &b, 1, flood_more) != 0)
    h2rev_http_abort(req);
}

static void flood_finished(h2rev_http_req_t *req, int status) {
  free(req->data);
  flood_result = status;
  flood_done = 1;
}

static void flood(h2rev_http_req_t *req, void *arg) {
  uint64_t total = *(uint64_t *)arg;
  h2rev_http_on_done(req, flood_finished);
  ASSERT_OK(h2rev_http_respond(req, 200, NULL, 0, (int64_t)total));
  uint64_t *sent = calloc(1, 2 * sizeof(*sent) + sizeof(h2rev_http_write_t));
  req->data = sent;
  sent[1] = total;
  h2rev_http_write_t *w = (h2rev_http_write_t *)(sent + 2);
  uv_buf_t b = uv_buf_init(flood_buf, FLOOD_CHUNK);
  *sent = FLOOD_CHUNK;
  ASSERT_OK(h2rev_http_write(w, req, &b, 1, flood_more));
}

TEST(send_timeout_cuts_a_client_that_never_reads) {
  env_t e;
  env_send_timeout_ms = 600;
  env_init(&e);
  env_send_timeout_ms = 0;
  uint64_t total = FLOOD_TOTAL;
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/flood", flood, &total));
  char cmd[700];
  /* Asks, then sleeps without reading; killed by the shell's timeout at the latest. */
  snprintf(cmd, sizeof(cmd),
           "timeout 20 python3 -c 'import socket,time\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4096)\n"
           "s.sendall(b\"GET /flood HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\")\n"
           "time.sleep(15)' > /dev/null 2>&1 &",
           e.port);
  ASSERT_OK(system(cmd));
  flood_done = 0;
  uint64_t t0 = uv_now(&e.loop);
  run_until(&e.loop, &flood_done, 10000);
  uint64_t took = uv_now(&e.loop) - t0;
  ASSERT_EQ(flood_result, UV_ETIMEDOUT);
  ASSERT_LT(took, 6000); /* 600 ms without progress, looked at every 250 ms */
  uv_timer_t t;
  uv_timer_init(&e.loop, &t);
  t.data = &e.srv;
  conns_gone = 0;
  uv_timer_start(&t, watch_conns, 20, 20);
  run_until(&e.loop, &conns_gone, 3000);
  uv_close((uv_handle_t *)&t, NULL);

  /* 6 MiB to a client that reads 64 KiB every 20 ms (at most 3.2 MB/s): slow,
   * never stalled for 600 ms. Not curl --limit-rate: it reads in bursts and
   * then sleeps to keep its average, for longer than the limit under load. */
  total = 6u << 20;
  flood_done = 0;
  char script[600];
  snprintf(script, sizeof(script), "%s/slow.py", e.dir);
  FILE *f = fopen(script, "w");
  ASSERT(f != NULL);
  fprintf(f,
          "import socket, time\n"
          "s = socket.create_connection(('127.0.0.1', %d))\n"
          "s.sendall(b'GET /flood HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
          "d = b''\n"
          "while b'\\r\\n\\r\\n' not in d:\n"
          "    c = s.recv(65536)\n"
          "    if not c: break\n"
          "    d += c\n"
          "head, _, body = d.partition(b'\\r\\n\\r\\n')\n"
          "lines = head.decode().split('\\r\\n')\n"
          "n = [int(l[15:]) for l in lines if l.lower()[:15] == 'content-length:'][0]\n"
          "got = len(body)\n"
          "while got < n:\n"
          "    c = s.recv(65536)\n"
          "    if not c: break\n"
          "    got += len(c)\n"
          "    time.sleep(0.02)\n"
          "print(lines[0].split()[1], got, end='')\n",
          e.port);
  fclose(f);
  snprintf(cmd, sizeof(cmd), "timeout 30 python3 %s", script);
  expect_out(&e, cmd, "200 6291456");
  run_until(&e.loop, &flood_done, 5000);
  ASSERT_EQ(flood_result, 0);
  env_stop(&e);
}

/* ------------------------------------------ the upstream as a route */

/* What the upstream handler's requests gave the access log: the last 32. */
static struct {
  int n;
  char method[32][8], path[32][64];
  int status[32], local[32], result[32];
  uint64_t in[32], out[32];
} UR;

static void route_access(void *arg, const h2rev_upstream_access_t *a) {
  ASSERT(arg == &UR);
  int i = UR.n++ % 32;
  snprintf(UR.method[i], sizeof(UR.method[0]), "%s", a->method);
  snprintf(UR.path[i], sizeof(UR.path[0]), "%s", a->path != NULL ? a->path : "(null)");
  UR.status[i] = a->status;
  UR.local[i] = a->local;
  UR.result[i] = a->result;
  UR.in[i] = a->bytes_in;
  UR.out[i] = a->bytes_out;
  ASSERT_LE(a->ttfb_us, a->duration_us);
}

static void redirect(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_header_t h[] = {{"location", "/r/there"}, {"set-cookie", "a=1; Path=/r"}};
  ASSERT_OK(h2rev_http_respond(req, 302, h, 2, 0));
  ASSERT_OK(h2rev_http_end(req));
}

static int free_port(uv_loop_t *loop) {
  uv_tcp_t t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(uv_tcp_init(loop, &t));
  ASSERT_OK(uv_tcp_bind(&t, (struct sockaddr *)&a, 0));
  int len = sizeof(a);
  ASSERT_OK(uv_tcp_getsockname(&t, (struct sockaddr *)&a, &len));
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return ntohs(a.sin_port);
}

static int ups_closed;
static void ups_closed_cb(h2rev_upstream_t *u) {
  (void)u;
  ups_closed++;
}

/* An application's server with h2rev_upstream_handler on its routes, the
 * upstream another h2rev server on loopback: HTTP/1.1 and HTTP/2 clients,
 * bodies of several MiB both ways (Content-Length, chunked, HTTP/2), one
 * upstream connection for all the sequential requests, the Location and
 * Set-Cookie Path of a redirect under the route, 502 from a dead upstream,
 * 504 from a slow one, 405 for a CONNECT, and each request in the access
 * log and the counters. */
TEST(upstream_handler) {
  env_t e;
  env_init(&e);
  memset(&UR, 0, sizeof(UR));
  /* The upstream. */
  h2rev_http_server_t back;
  ASSERT_OK(h2rev_http_server_init(&e.loop, &back, NULL));
  back.data = &e;
  unsigned slow_ms = 1500;
  slow_seen = 0;
  ASSERT_OK(h2rev_http_server_route(&back, "/echo", echo, NULL));
  ASSERT_OK(h2rev_http_server_route(&back, "/info", info, NULL));
  ASSERT_OK(h2rev_http_server_route(&back, "/r", redirect, NULL));
  ASSERT_OK(h2rev_http_server_route(&back, "/slow", slow, &slow_ms));
  ASSERT_OK(h2rev_http_server_route(&back, "/up", upgrading, NULL));
  int bp = listen_on(&back, NULL, 0);
  /* Three upstreams: the live one, a dead port, and a slow path. */
  char url[3][128];
  snprintf(url[0], sizeof(url[0]), "http://127.0.0.1:%d", bp);
  snprintf(url[1], sizeof(url[1]), "http://127.0.0.1:%d/x", free_port(&e.loop));
  snprintf(url[2], sizeof(url[2]), "http://127.0.0.1:%d/slow", bp);
  h2rev_upstream_t ups[3];
  for (int i = 0; i < 3; i++) {
    h2rev_upstream_options_t uo = {
        .url = url[i], .access_log = route_access, .access_log_arg = &UR};
    if (i == 2)
      uo.response_timeout_ms = 300;
    test_logger(&uo.log, "upstream");
    ASSERT_OK(h2rev_upstream_init(&e.loop, &ups[i], &uo));
  }
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/px", h2rev_upstream_handler, &ups[0]));
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/dead", h2rev_upstream_handler, &ups[1]));
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/slowpx", h2rev_upstream_handler, &ups[2]));

  const char *modes[] = {"--http1.1", "--http2-prior-knowledge"};
  char cmd[4096];
  int requests = 0;
  /* Plain requests, both protocols; the upstream is spoken to in HTTP/1.1. */
  for (int m = 0; m < 2; m++) {
    snprintf(cmd, sizeof(cmd), "curl -s %s 'http://127.0.0.1:%d/px/info/x?y=z'", modes[m], e.port);
    expect_out(&e, cmd, "GET /info/x?y=z 1.1 xfp=/px\n");
    snprintf(cmd, sizeof(cmd),
             "curl -s %s -o /dev/null -w '%%{http_code} %%header{location} "
             "%%header{set-cookie}' http://127.0.0.1:%d/px/r",
             modes[m], e.port);
    expect_out(&e, cmd, "302 /px/r/there a=1; Path=/px/r");
    requests += 2;
  }
  for (int i = 0; i < 3; i++) {
    snprintf(cmd, sizeof(cmd), "curl -s http://127.0.0.1:%d/px/info", e.port);
    expect_out(&e, cmd, "GET /info 1.1 xfp=/px\n");
    requests++;
  }
  /* Keep-alive: every one of those sequential requests on one connection. */
  h2rev_http_server_stats_t bst;
  h2rev_http_server_stats(&back, &bst);
  ASSERT_EQ(bst.connections_total, 1u);
  ASSERT_EQ(bst.requests[0][2] + bst.requests[0][3], (uint64_t)requests);

  /* Bodies of 6 MiB echoed, compared by SHA-256 (cmp). */
  const uint64_t big = 6u << 20;
  snprintf(cmd, sizeof(cmd), "head -c %llu /dev/urandom > %s/in", (unsigned long long)big, e.dir);
  ASSERT_EQ(sh(&e, cmd), 0);
  const char *variants[] = {
      "--http1.1 http://127.0.0.1:%d/px/echo",
      "--http1.1 -H 'Transfer-Encoding: chunked' http://127.0.0.1:%d/px/echo",
      "--http2-prior-knowledge http://127.0.0.1:%d/px/echo",
  };
  int first_post = requests;
  for (int i = 0; i < 3; i++) {
    char target[256];
    snprintf(target, sizeof(target), variants[i], e.port);
    snprintf(cmd, sizeof(cmd),
             "curl -sf --data-binary @%s/in -o %s/got %s && "
             "test \"$(sha256sum < %s/in)\" = \"$(sha256sum < %s/got)\"",
             e.dir, e.dir, target, e.dir, e.dir);
    ASSERT_EQ(sh(&e, cmd), 0);
    requests++;
  }
  h2rev_http_server_stats(&back, &bst);
  ASSERT_EQ(bst.connections_total, 1u); /* still the one */

  /* An upgrade (a WebSocket's way): the 101, then bytes both ways as they
   * are, the first ones right behind the head. */
  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import socket,sys\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"GET /px/up HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
           "Upgrade: echo\\r\\n\\r\\nhello \")\n"
           "b=b\"\"\n"
           "while not b.endswith(b\"hello \"): b+=s.recv(100)\n"
           "s.sendall(b\"world\")\n"
           "while not b.endswith(b\"world\"): b+=s.recv(100)\n"
           "h,_,t=b.partition(b\"\\r\\n\\r\\n\")\n"
           "sys.stdout.write(h.split(b\"\\r\\n\")[0].decode()+\"|\"+"
           "str(b\"upgrade: echo\" in h.lower())+\"|\"+t.decode())'",
           e.port);
  expect_out(&e, cmd, "HTTP/1.1 101 Switching Protocols|True|hello world");
  requests++;
  /* A client that ends its side is answered to the end: the upstream's
   * connection has no half-close, it has LINGER_MS (5 s) to end its own. */
  snprintf(cmd, sizeof(cmd),
           "timeout 20 python3 -c 'import socket,sys\n"
           "s=socket.create_connection((\"127.0.0.1\",%d))\n"
           "s.sendall(b\"GET /px/up HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
           "Upgrade: echo\\r\\n\\r\\nbye\")\n"
           "b=b\"\"\n"
           "while not b.endswith(b\"bye\"): b+=s.recv(100)\n"
           "s.shutdown(socket.SHUT_WR)\n"
           "while True:\n"
           " d=s.recv(100)\n"
           " if not d: break\n"
           " b+=d\n"
           "sys.stdout.write(b.split(b\"\\r\\n\")[0].decode()+\"|\"+"
           "b.partition(b\"\\r\\n\\r\\n\")[2].decode())'",
           e.port);
  expect_out(&e, cmd, "HTTP/1.1 101 Switching Protocols|bye");
  requests++;

  /* The upstream cannot be reached: 502, whatever the client speaks. */
  for (int m = 0; m < 2; m++) {
    snprintf(cmd, sizeof(cmd), "curl -s %s -w ' %%{http_code}' http://127.0.0.1:%d/dead/a",
             modes[m], e.port);
    expect_out(&e, cmd, "upstream unavailable\n 502");
    requests++;
  }
  /* It does not answer in time: 504. */
  snprintf(cmd, sizeof(cmd), "curl -s -w ' %%{http_code}' http://127.0.0.1:%d/slowpx", e.port);
  expect_out(&e, cmd, "upstream did not answer in time\n 504");
  requests++;
  /* No tunnels to wherever a client names. */
  snprintf(cmd, sizeof(cmd),
           "curl -s -o /dev/null -w '%%{http_code}' -X CONNECT http://127.0.0.1:%d/px/a", e.port);
  expect_out(&e, cmd, "405");
  requests++;

  /* Each request once in the access log, once in the counters. */
  uint64_t deadline = uv_now(&e.loop) + 5000;
  while (UR.n < requests && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(UR.n, requests);
  ASSERT_STR_EQ(UR.method[0], "GET");
  ASSERT_STR_EQ(UR.path[0], "/info/x?y=z");
  ASSERT_EQ(UR.status[0], 200);
  ASSERT_EQ(UR.local[0], 0);
  ASSERT_EQ(UR.result[0], 0);
  ASSERT_STR_EQ(UR.path[1], "/r");
  ASSERT_EQ(UR.status[1], 302);
  for (int i = first_post; i < first_post + 3; i++) {
    ASSERT_STR_EQ(UR.method[i], "POST");
    ASSERT_STR_EQ(UR.path[i], "/echo");
    ASSERT_EQ(UR.status[i], 200);
    ASSERT_EQ(UR.result[i], 0);
    ASSERT_EQ(UR.in[i], big);
    ASSERT_GT(UR.out[i], big);
  }
  ASSERT_STR_EQ(UR.path[first_post + 3], "/up");
  ASSERT_EQ(UR.status[first_post + 3], 101);
  ASSERT_EQ(UR.in[first_post + 3], 11u); /* "hello world" */
  ASSERT_EQ(UR.status[first_post + 4], 101);
  int d = first_post + 5;
  ASSERT_STR_EQ(UR.path[d], "/x/a");
  for (int i = d; i < d + 2; i++) {
    ASSERT_EQ(UR.status[i], 502);
    ASSERT_EQ(UR.local[i], 1);
  }
  ASSERT_STR_EQ(UR.path[d + 2], "/slow/");
  ASSERT_EQ(UR.status[d + 2], 504);
  ASSERT_EQ(UR.local[d + 2], 1);
  ASSERT_STR_EQ(UR.method[d + 3], "CONNECT");
  ASSERT_EQ(UR.status[d + 3], 405);
  h2rev_upstream_stats_t st;
  h2rev_upstream_stats(&ups[0], &st);
  ASSERT_EQ(st.requests[1], 2u); /* the 101s */
  ASSERT_EQ(st.requests[2], (uint64_t)(first_post - 2 + 3));
  ASSERT_EQ(st.requests[3], 2u);
  ASSERT_EQ(st.requests[4], 1u); /* the 405 */
  ASSERT_EQ(st.errors, 0u);
  ASSERT_EQ(st.bytes_in, 3 * big + 11 + 3);
  ASSERT_EQ(st.streams_total, 0u); /* no reverse connection served */
  h2rev_upstream_stats(&ups[1], &st);
  ASSERT_EQ(st.requests[5], 2u);
  ASSERT_EQ(st.errors, 2u);
  h2rev_upstream_stats(&ups[2], &st);
  ASSERT_EQ(st.errors, 1u);

  /* The slow handler answers a request whose client has gone; then all
   * closes, the upstreams once their exchanges are over. */
  run_until(&e.loop, &slow_seen, 5000);
  deadline = uv_now(&e.loop) + slow_ms + 500;
  while (uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ups_closed = 0;
  for (int i = 0; i < 3; i++)
    h2rev_upstream_close(&ups[i], ups_closed_cb);
  deadline = uv_now(&e.loop) + 5000;
  while (ups_closed < 3 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(ups_closed, 3);
  h2rev_http_server_close(&back, srv_closed);
  run_until(&e.loop, &e.closed, 5000);
  e.closed = 0;
  env_stop(&e);
}

/* Many requests at once through h2rev_upstream_handler (h2load: HTTP/2,
 * 4 connections of 16 streams), each answered, on at most as many upstream
 * connections as were in flight at once, all counted; and an upstream that
 * cuts its response short leaves the client with a cut response, never a
 * complete-looking one, over either protocol. */
TEST(upstream_handler_concurrent) {
  env_t e;
  env_init(&e);
  memset(&UR, 0, sizeof(UR));
  h2rev_http_server_t back;
  ASSERT_OK(h2rev_http_server_init(&e.loop, &back, NULL));
  back.data = &e;
  ASSERT_OK(h2rev_http_server_route(&back, "/echo", echo, NULL));
  ASSERT_OK(h2rev_http_server_route(&back, "/abort", aborting, NULL));
  int bp = listen_on(&back, NULL, 0);
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", bp);
  h2rev_upstream_t up;
  h2rev_upstream_options_t uo = {.url = url, .access_log = route_access, .access_log_arg = &UR};
  test_logger(&uo.log, "upstream");
  ASSERT_OK(h2rev_upstream_init(&e.loop, &up, &uo));
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/px", h2rev_upstream_handler, &up));
  char cmd[2048];
  int n = 0;
  if (sh(&e, "command -v h2load >/dev/null") == 0) {
    n = 2000;
    snprintf(cmd, sizeof(cmd), "head -c 3000 /dev/urandom > %s/body", e.dir);
    ASSERT_EQ(sh(&e, cmd), 0);
    snprintf(cmd, sizeof(cmd),
             "h2load -n %d -c 4 -m 16 -d %s/body http://127.0.0.1:%d/px/echo | "
             "grep -o '[0-9]* 2xx' | cut -d' ' -f1",
             n, e.dir, e.port);
    char want[32];
    snprintf(want, sizeof(want), "%d\n", n);
    expect_out(&e, cmd, want);
    h2rev_http_server_stats_t bst;
    h2rev_http_server_stats(&back, &bst);
    ASSERT_LE(bst.connections_total, 64u);
    ASSERT_EQ(bst.requests[0][2], (uint64_t)n);
  } else {
    fprintf(stderr, "no h2load: the concurrent part is skipped\n");
  }
  /* 1000 bytes announced, 10 sent, then the upstream's connection cut. */
  const char *modes[] = {"--http1.1", "--http2-prior-knowledge"};
  for (int m = 0; m < 2; m++) {
    snprintf(cmd, sizeof(cmd), "curl -s %s -o %s/cut http://127.0.0.1:%d/px/abort", modes[m], e.dir,
             e.port);
    int rc = sh(&e, cmd);
    if (rc != 18 && rc != 92 && rc != 56) /* partial file, HTTP/2 stream error, recv failure */
      test_fail(__FILE__, __LINE__, "%s: curl exited %d, want a cut response", cmd, rc);
  }
  uint64_t deadline = uv_now(&e.loop) + 5000;
  while (UR.n < n + 2 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(UR.n, n + 2);
  for (int i = n; i < n + 2; i++) {
    ASSERT_EQ(UR.status[i % 32], 200);
    ASSERT_NE(UR.result[i % 32], 0);
  }
  h2rev_upstream_stats_t st;
  h2rev_upstream_stats(&up, &st);
  ASSERT_EQ(st.requests[2], (uint64_t)(n + 2));
  ASSERT_EQ(st.requests_incomplete, 2u);
  ASSERT_EQ(st.bytes_in, (uint64_t)n * 3000);
  ups_closed = 0;
  h2rev_upstream_close(&up, ups_closed_cb);
  run_until(&e.loop, &ups_closed, 5000);
  h2rev_http_server_close(&back, srv_closed);
  run_until(&e.loop, &e.closed, 5000);
  e.closed = 0;
  env_stop(&e);
}

/* An https:// upstream through h2rev_upstream_handler: its certificate
 * checked against the CA given, a body of 3 MiB echoed both ways over TLS,
 * and an upstream whose certificate the CA did not sign answered 502. */
TEST(upstream_handler_tls) {
  env_t e;
  env_init(&e);
  memset(&UR, 0, sizeof(UR));
  h2rev_http_server_t back;
  ASSERT_OK(h2rev_http_server_init(&e.loop, &back, NULL));
  back.data = &e;
  ASSERT_OK(h2rev_http_server_route(&back, "/echo", echo, NULL));
  char cert[512], key[512], ca[512], other[512];
  test_path(cert, sizeof(cert), test_certs(), "server.pem");
  test_path(key, sizeof(key), test_certs(), "server.key");
  test_path(ca, sizeof(ca), test_certs(), "ca.pem");
  test_path(other, sizeof(other), test_certs(), "other-ca.pem");
  h2rev_tls_options_t tls = {.cert_file = cert, .key_file = key};
  int bp = listen_on(&back, &tls, 0);
  char url[128];
  snprintf(url, sizeof(url), "https://localhost:%d", bp);
  h2rev_upstream_t ups[2];
  const char *cas[2] = {ca, other};
  for (int i = 0; i < 2; i++) {
    h2rev_upstream_options_t uo = {.url = url, .access_log = route_access, .access_log_arg = &UR};
    uo.tls.ca_file = cas[i];
    test_logger(&uo.log, "upstream");
    ASSERT_OK(h2rev_upstream_init(&e.loop, &ups[i], &uo));
  }
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/s", h2rev_upstream_handler, &ups[0]));
  ASSERT_OK(h2rev_http_server_route(&e.srv, "/bad", h2rev_upstream_handler, &ups[1]));
  char cmd[4096];
  snprintf(cmd, sizeof(cmd), "head -c 3145728 /dev/urandom > %s/in", e.dir);
  ASSERT_EQ(sh(&e, cmd), 0);
  const char *modes[] = {"--http1.1", "--http2-prior-knowledge"};
  for (int m = 0; m < 2; m++) {
    snprintf(cmd, sizeof(cmd),
             "curl -sf %s --data-binary @%s/in -o %s/got http://127.0.0.1:%d/s/echo && "
             "cmp %s/in %s/got",
             modes[m], e.dir, e.dir, e.port, e.dir, e.dir);
    ASSERT_EQ(sh(&e, cmd), 0);
  }
  snprintf(cmd, sizeof(cmd), "curl -s -w ' %%{http_code}' http://127.0.0.1:%d/bad/echo", e.port);
  expect_out(&e, cmd, "upstream unavailable\n 502");
  uint64_t deadline = uv_now(&e.loop) + 5000;
  while (UR.n < 3 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(UR.n, 3);
  h2rev_upstream_stats_t st;
  h2rev_upstream_stats(&ups[0], &st);
  ASSERT_EQ(st.requests[2], 2u);
  ASSERT_EQ(st.bytes_in, 2u * 3145728);
  h2rev_http_server_stats_t bst;
  h2rev_http_server_stats(&back, &bst);
  ASSERT_EQ(bst.requests[0][2], 2u);
  h2rev_upstream_stats(&ups[1], &st);
  ASSERT_EQ(st.errors, 1u);
  ups_closed = 0;
  for (int i = 0; i < 2; i++)
    h2rev_upstream_close(&ups[i], ups_closed_cb);
  deadline = uv_now(&e.loop) + 5000;
  while (ups_closed < 2 && uv_now(&e.loop) < deadline)
    uv_run(&e.loop, UV_RUN_ONCE);
  ASSERT_EQ(ups_closed, 2);
  h2rev_http_server_close(&back, srv_closed);
  run_until(&e.loop, &e.closed, 5000);
  e.closed = 0;
  env_stop(&e);
}
