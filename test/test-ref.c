/* uv_ref semantics of the library's handles (h2rev_*_ref/unref): an unref'd
 * dialer, listener or HTTP server does not keep uv_run(UV_RUN_DEFAULT)
 * running, with connections open or a reconnect pending; ref restores it.
 * Each case proves both halves: uv_run returns by itself (an unref'd
 * watchdog fails the test if it does not), and after ref it only returns
 * because a timer of the test stops the loop. */
#include "h2util.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS     30000 /* bound on anything that should happen at once */
#define WATCHDOG_MS 10000 /* uv_run returning by itself takes well under this */
#define HOLD_MS     300   /* a referenced loop is still running after this */

static void watchdog_fired(uv_timer_t *t) {
  (void)t;
  test_fail(__FILE__, __LINE__, "uv_run(UV_RUN_DEFAULT) did not return by itself");
}

/* uv_run(DEFAULT) returns with nothing but the unref'd handles left. */
static void assert_run_returns(uv_loop_t *loop) {
  uv_timer_t wd;
  uv_timer_init(loop, &wd);
  uv_timer_start(&wd, watchdog_fired, WATCHDOG_MS, 0);
  uv_unref((uv_handle_t *)&wd);
  uv_run(loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_alive(loop), 0);
  uv_close((uv_handle_t *)&wd, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void stopper_fired(uv_timer_t *t) {
  *(int *)t->data = 1;
  uv_stop(t->loop);
}

/* uv_run(DEFAULT) keeps running until the test's own timer stops it. */
static void assert_run_held(uv_loop_t *loop) {
  uv_timer_t st;
  int stopped = 0;
  uv_timer_init(loop, &st);
  st.data = &stopped;
  uv_timer_start(&st, stopper_fired, HOLD_MS, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  ASSERT_EQ(stopped, 1);
  uv_close((uv_handle_t *)&st, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  ASSERT_NE(uv_loop_alive(loop), 0); /* without the test's timer, too */
}

typedef struct env {
  uv_loop_t loop;
  h2rev_dialer_t d;
  h2rev_listener_t l;
  int attached, retrying, lclosed, dclosed, sclosed;
} env_t;

static void on_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  env_t *e = l->data;
  (void)err, (void)delay;
  if (state == H2REV_LISTENER_ATTACHED)
    e->attached = 1;
  if (state == H2REV_LISTENER_RETRYING)
    e->retrying++;
}

static void on_conn(h2rev_listener_t *l, int status) {
  (void)l, (void)status;
}

static void l_closed(h2rev_listener_t *l) {
  ((env_t *)l->data)->lclosed = 1;
}

static void d_closed(h2rev_dialer_t *d) {
  ((env_t *)d->data)->dclosed = 1;
}

static void listener_init(env_t *e, int port) {
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/base", port);
  h2rev_listener_options_t lo = {0};
  lo.url = url;
  lo.id = "ref";
  lo.on_state = on_state;
  lo.backoff_min_ms = 20;
  lo.backoff_max_ms = 50;
  test_logger(&lo.log, "listener");
  lo.log.level = H2REV_LOG_ERROR;
  ASSERT_OK(h2rev_listener_init(&e->loop, &e->l, &lo));
  e->l.data = e;
}

TEST(dialer_and_listener_unref) {
  env_t e;
  memset(&e, 0, sizeof(e));
  ASSERT_OK(uv_loop_init(&e.loop));
  h2rev_dialer_options_t dopts = {.base_path = "/base"};
  test_logger(&dopts.log, "dialer");
  dopts.log.level = H2REV_LOG_ERROR;
  ASSERT_OK(h2rev_dialer_init(&e.loop, &e.d, &dopts));
  e.d.data = &e;
  /* Unref'd before it listens: the handles it creates later are unref'd too. */
  h2rev_dialer_unref(&e.d);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_dialer_listen(&e.d, (struct sockaddr *)&a, NULL));
  assert_run_returns(&e.loop); /* a listening socket alone */
  int len = sizeof(a);
  ASSERT_OK(h2rev_dialer_getsockname(&e.d, 0, (struct sockaddr *)&a, &len));
  listener_init(&e, ntohs(a.sin_port));
  ASSERT_OK(h2rev_listener_start(&e.l, on_conn));
  run_until(&e.loop, &e.attached, WAIT_MS);
  h2rev_dialer_stats_t st;
  h2rev_dialer_stats(&e.d, &st);
  ASSERT_EQ(st.listeners, 1);

  /* The listener's connection keeps the loop alive (and with it the
   * dialer's side of that connection). */
  assert_run_held(&e.loop);
  h2rev_listener_unref(&e.l);
  /* Both unref'd: HTTP/2 connection, timers, listening socket all let go. */
  assert_run_returns(&e.loop);
  h2rev_dialer_stats(&e.d, &st);
  ASSERT_EQ(st.listeners, 1); /* still attached: unref closes nothing */

  /* Either side referenced again holds the loop. */
  h2rev_dialer_ref(&e.d);
  assert_run_held(&e.loop);
  h2rev_dialer_unref(&e.d);
  assert_run_returns(&e.loop);
  h2rev_listener_ref(&e.l);
  assert_run_held(&e.loop);
  h2rev_listener_unref(&e.l);
  assert_run_returns(&e.loop);
  h2rev_listener_unref(&e.l); /* idempotent */
  assert_run_returns(&e.loop);

  /* Closing works from the unref'd state. */
  h2rev_listener_close(&e.l, l_closed);
  h2rev_dialer_close(&e.d, d_closed);
  run_until(&e.loop, &e.lclosed, WAIT_MS);
  run_until(&e.loop, &e.dclosed, WAIT_MS);
  loop_drain(&e.loop);
}

TEST(listener_retrying_unref) {
  env_t e;
  memset(&e, 0, sizeof(e));
  ASSERT_OK(uv_loop_init(&e.loop));
  /* A port nobody listens on: bound, then closed. */
  uv_tcp_t t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(uv_tcp_init(&e.loop, &t));
  ASSERT_OK(uv_tcp_bind(&t, (struct sockaddr *)&a, 0));
  int len = sizeof(a);
  ASSERT_OK(uv_tcp_getsockname(&t, (struct sockaddr *)&a, &len));
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&e.loop, UV_RUN_NOWAIT);
  listener_init(&e, ntohs(a.sin_port));
  h2rev_listener_unref(&e.l);
  ASSERT_OK(h2rev_listener_start(&e.l, on_conn));
  /* Connect attempts fail at once; the backoff timer between them is
   * unref'd, so uv_run returns while the listener goes on retrying. */
  assert_run_returns(&e.loop);

  h2rev_listener_ref(&e.l);
  int before = e.retrying;
  assert_run_held(&e.loop);
  ASSERT_GT(e.retrying, before); /* it did retry while the loop ran */
  h2rev_listener_unref(&e.l);
  assert_run_returns(&e.loop);

  h2rev_listener_close(&e.l, l_closed);
  run_until(&e.loop, &e.lclosed, WAIT_MS);
  loop_drain(&e.loop);
}

static void hello(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_reply(req, 200, "text/plain", "hi\n", 3);
}

typedef struct client {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t w;
  char buf[1024];
  size_t n;
  int got;
} client_t;

static void c_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  client_t *c = h->data;
  (void)sz;
  *b = uv_buf_init(c->buf + c->n, (unsigned)(sizeof(c->buf) - 1 - c->n));
}

static void c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client_t *c = s->data;
  (void)b;
  ASSERT_GT(n, 0); /* the server keeps the connection open */
  c->n += (size_t)n;
  c->buf[c->n] = '\0';
  if (strstr(c->buf, "\r\n\r\nhi\n") != NULL)
    c->got = 1;
}

static void c_wrote(uv_write_t *w, int status) {
  (void)w;
  ASSERT_OK(status);
}

static void c_connected(uv_connect_t *req, int status) {
  client_t *c = req->data;
  ASSERT_OK(status);
  static char rq[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
  uv_buf_t b = uv_buf_init(rq, sizeof(rq) - 1);
  ASSERT_OK(uv_write(&c->w, (uv_stream_t *)&c->tcp, &b, 1, c_wrote));
  ASSERT_OK(uv_read_start((uv_stream_t *)&c->tcp, c_alloc, c_read));
}

static void s_closed(h2rev_http_server_t *s) {
  *(int *)s->data = 1;
}

TEST(server_unref) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  h2rev_http_server_t srv;
  int closed = 0;
  ASSERT_OK(h2rev_http_server_init(&loop, &srv, NULL));
  srv.data = &closed;
  ASSERT_OK(h2rev_http_server_route(&srv, "/hello", hello, NULL));
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_http_server_listen(&srv, (struct sockaddr *)&a, NULL));
  int len = sizeof(a);
  ASSERT_OK(h2rev_http_server_getsockname(&srv, 0, (struct sockaddr *)&a, &len));
  assert_run_held(&loop); /* referenced by default */
  h2rev_http_server_unref(&srv);
  assert_run_returns(&loop);

  /* A keep-alive HTTP/1.1 connection the server accepted (its socket and
   * idle timer) is let go too; the test's own client socket is unref'd. */
  client_t c;
  memset(&c, 0, sizeof(c));
  ASSERT_OK(uv_tcp_init(&loop, &c.tcp));
  c.tcp.data = c.conn.data = &c;
  ASSERT_OK(uv_tcp_connect(&c.conn, &c.tcp, (struct sockaddr *)&a, c_connected));
  run_until(&loop, &c.got, WAIT_MS);
  uv_unref((uv_handle_t *)&c.tcp);
  assert_run_returns(&loop);
  h2rev_http_server_ref(&srv);
  assert_run_held(&loop);
  h2rev_http_server_unref(&srv);
  assert_run_returns(&loop);

  uv_close((uv_handle_t *)&c.tcp, NULL);
  h2rev_http_server_close(&srv, s_closed);
  run_until(&loop, &closed, WAIT_MS);
  loop_drain(&loop);
}

/* The upstream: a reverse connection served from an HTTP server on
 * loopback keeps a pooled keep-alive connection to that server and waits
 * for the stream's next request; with everything else unref'd, those are
 * what holds the loop until the upstream is unref'd too. */
typedef struct uenv {
  env_t e;
  h2rev_upstream_t u;
  h2rev_stream_t *served; /* the listener end, given to the upstream */
  h2rev_stream_t a;       /* the dialer end */
  h2rev_dial_t dial;
  h2rev_write_t w;
  int dialed, got, uclosed, sclosed;
  char buf[4096];
  size_t n;
} uenv_t;

static void u_conn(h2rev_listener_t *l, int status) {
  uenv_t *ue = l->data;
  ASSERT_OK(status);
  h2rev_stream_t *s = calloc(1, sizeof(*s));
  ASSERT_NOT_NULL(s);
  if (h2rev_listener_accept(l, s) != 0) {
    free(s);
    return;
  }
  ASSERT_NULL(ue->served);
  ue->served = s;
  ASSERT_OK(h2rev_upstream_serve(&ue->u, s, (h2rev_close_cb)NULL));
}

static void u_dialed(h2rev_dial_t *req, int status) {
  uenv_t *ue = req->data;
  ASSERT_OK(status);
  ue->dialed = 1;
}

static void u_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *b) {
  uenv_t *ue = s->data;
  (void)sz;
  *b = uv_buf_init(ue->buf + ue->n, (unsigned)(sizeof(ue->buf) - 1 - ue->n));
}

static void u_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *b) {
  uenv_t *ue = s->data;
  (void)b;
  ASSERT_GT(n, 0);
  ue->n += (size_t)n;
  ue->buf[ue->n] = '\0';
  if (strstr(ue->buf, "\r\n\r\nhi\n") != NULL)
    ue->got = 1;
}

static void u_wrote(h2rev_write_t *req, int status) {
  (void)req;
  ASSERT_OK(status);
}

static void u_closed(h2rev_upstream_t *u) {
  ((uenv_t *)u->data)->uclosed = 1;
}

static void us_closed(h2rev_http_server_t *s) {
  *(int *)s->data = 1;
}

static void a_closed(h2rev_stream_t *s) {
  (void)s;
}

TEST(upstream_unref) {
  uenv_t ue;
  memset(&ue, 0, sizeof(ue));
  env_t *e = &ue.e;
  ASSERT_OK(uv_loop_init(&e->loop));
  /* The upstream's server. */
  h2rev_http_server_t srv;
  ASSERT_OK(h2rev_http_server_init(&e->loop, &srv, NULL));
  srv.data = &ue.sclosed;
  ASSERT_OK(h2rev_http_server_route(&srv, "/hello", hello, NULL));
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_http_server_listen(&srv, (struct sockaddr *)&a, NULL));
  int len = sizeof(a);
  ASSERT_OK(h2rev_http_server_getsockname(&srv, 0, (struct sockaddr *)&a, &len));
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(a.sin_port));
  h2rev_upstream_options_t uo = {.url = url};
  ASSERT_OK(h2rev_upstream_init(&e->loop, &ue.u, &uo));
  ue.u.data = &ue;
  /* The reverse connection. */
  h2rev_dialer_options_t dopts = {.base_path = "/base"};
  ASSERT_OK(h2rev_dialer_init(&e->loop, &e->d, &dopts));
  e->d.data = e;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_dialer_listen(&e->d, (struct sockaddr *)&a, NULL));
  len = sizeof(a);
  ASSERT_OK(h2rev_dialer_getsockname(&e->d, 0, (struct sockaddr *)&a, &len));
  listener_init(e, ntohs(a.sin_port));
  e->l.data = &ue; /* env_t is the first member: on_state still finds it */
  ASSERT_OK(h2rev_listener_start(&e->l, u_conn));
  run_until(&e->loop, &e->attached, WAIT_MS);
  ue.dial.data = &ue;
  ASSERT_OK(h2rev_dial(&ue.dial, &e->d, "ref", &ue.a, WAIT_MS, u_dialed));
  run_until(&e->loop, &ue.dialed, WAIT_MS);
  ue.a.data = &ue;
  static char rq[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
  uv_buf_t b = uv_buf_init(rq, sizeof(rq) - 1);
  ASSERT_OK(h2rev_stream_write(&ue.w, &ue.a, &b, 1, u_wrote));
  ASSERT_OK(h2rev_stream_read_start(&ue.a, u_alloc, u_read));
  run_until(&e->loop, &ue.got, WAIT_MS);
  ASSERT_EQ(h2rev_upstream_active(&ue.u), 1);

  h2rev_http_server_unref(&srv);
  h2rev_dialer_unref(&e->d);
  h2rev_listener_unref(&e->l);
  assert_run_held(&e->loop); /* the upstream's connection and stream timer */
  h2rev_upstream_unref(&ue.u);
  assert_run_returns(&e->loop);
  h2rev_upstream_ref(&ue.u);
  assert_run_held(&e->loop);
  h2rev_upstream_unref(&ue.u);
  assert_run_returns(&e->loop);

  h2rev_stream_close(&ue.a, a_closed);
  h2rev_upstream_close(&ue.u, u_closed);
  run_until(&e->loop, &ue.uclosed, WAIT_MS);
  free(ue.served);
  h2rev_listener_close(&e->l, l_closed);
  h2rev_dialer_close(&e->d, d_closed);
  h2rev_http_server_close(&srv, us_closed);
  run_until(&e->loop, &e->lclosed, WAIT_MS);
  run_until(&e->loop, &e->dclosed, WAIT_MS);
  run_until(&e->loop, &ue.sclosed, WAIT_MS);
  loop_drain(&e->loop);
}
