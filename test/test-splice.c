/* h2rev_stream_splice_tcp: a reverse connection's listener end spliced to a
 * TCP server on loopback (an in-process libuv echo server that half-closes
 * at EOF), the dialer end driven through the h2rev stream API. A dialer and
 * a listener on loopback (HTTP/2 cleartext) give the real reverse stream. */
#include "h2util.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 60000 /* generous: ASan on a loaded 2-CPU machine */
#define MSG     "hello through a splice"

typedef struct env {
  uv_loop_t loop;
  h2rev_dialer_t d;
  h2rev_listener_t l;
  uv_tcp_t srv; /* the echo server */
  struct sockaddr_in srv_addr, dead_addr;
  int attached, lclosed, dclosed, srv_closed;
  int in_call; /* inside h2rev_stream_splice_tcp */
  int done, done_status, done_in_call;
} env_t;

static env_t *env;

/* ------------------------------------------- the echo server */

typedef struct econn {
  uv_tcp_t t;
  char buf[4096];
  uv_write_t w;
  uv_shutdown_t sh;
} econn_t;

static void e_closed(uv_handle_t *h) {
  free(h);
}

static void e_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)sz;
  econn_t *c = (econn_t *)h;
  *b = uv_buf_init(c->buf, sizeof(c->buf));
}

static void e_shut(uv_shutdown_t *req, int status) {
  (void)status;
  uv_close((uv_handle_t *)req->handle, e_closed);
}

static void e_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  econn_t *c = (econn_t *)s;
  if (n > 0) {
    /* One message at a time in these tests: the buffer is not reused
     * before the write completes (the peer waits for the echo). */
    uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
    ASSERT_OK(uv_write(&c->w, s, &out, 1, NULL));
  } else if (n == UV_EOF) {
    ASSERT_OK(uv_shutdown(&c->sh, s, e_shut));
  } else if (n < 0) {
    uv_close((uv_handle_t *)s, e_closed);
  }
}

static void e_conn(uv_stream_t *srv, int status) {
  ASSERT_OK(status);
  econn_t *c = calloc(1, sizeof(*c));
  ASSERT_NOT_NULL(c);
  uv_tcp_init(srv->loop, &c->t);
  ASSERT_OK(uv_accept(srv, (uv_stream_t *)&c->t));
  ASSERT_OK(uv_read_start((uv_stream_t *)&c->t, e_alloc, e_read));
}

/* ------------------------------------------- the listener end */

typedef struct lend {
  h2rev_stream_t s;
  uv_tcp_t t;
} lend_t;

static void spliced(h2rev_stream_t *s, uv_tcp_t *t, int status) {
  lend_t *x = (lend_t *)s;
  ASSERT_PTR_EQ(t, &x->t);
  env->done++;
  env->done_status = status;
  env->done_in_call |= env->in_call;
  free(x);
}

static bool use_dead;

static void on_conn(h2rev_listener_t *l, int status) {
  ASSERT_OK(status);
  lend_t *x = calloc(1, sizeof(*x));
  ASSERT_NOT_NULL(x);
  if (h2rev_listener_accept(l, &x->s) != 0) {
    free(x);
    return;
  }
  const struct sockaddr *a = (const struct sockaddr *)(use_dead ? &env->dead_addr : &env->srv_addr);
  env->in_call = 1;
  ASSERT_OK(h2rev_stream_splice_tcp(&x->s, &x->t, a, NULL, spliced));
  env->in_call = 0;
}

static void on_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  (void)err, (void)delay;
  if (state == H2REV_LISTENER_ATTACHED)
    ((env_t *)l->data)->attached = 1;
}

static void srv_closed(uv_handle_t *h) {
  ((env_t *)h->loop->data)->srv_closed = 1;
}

static void env_open(env_t *e, bool dead) {
  memset(e, 0, sizeof(*e));
  env = e;
  use_dead = dead;
  ASSERT_OK(uv_loop_init(&e->loop));
  uv_ip4_addr("127.0.0.1", 0, &e->srv_addr);
  uv_tcp_init(&e->loop, &e->srv);
  ASSERT_OK(uv_tcp_bind(&e->srv, (struct sockaddr *)&e->srv_addr, 0));
  ASSERT_OK(uv_listen((uv_stream_t *)&e->srv, 64, e_conn));
  int len = sizeof(e->srv_addr);
  ASSERT_OK(uv_tcp_getsockname(&e->srv, (struct sockaddr *)&e->srv_addr, &len));
  /* A port nothing listens on: a socket bound, never listening. */
  uv_tcp_t dead_sock;
  uv_tcp_init(&e->loop, &dead_sock);
  uv_ip4_addr("127.0.0.1", 0, &e->dead_addr);
  ASSERT_OK(uv_tcp_bind(&dead_sock, (struct sockaddr *)&e->dead_addr, 0));
  len = sizeof(e->dead_addr);
  ASSERT_OK(uv_tcp_getsockname(&dead_sock, (struct sockaddr *)&e->dead_addr, &len));
  e->loop.data = e;
  uv_close((uv_handle_t *)&dead_sock, srv_closed);
  run_until(&e->loop, &e->srv_closed, WAIT_MS);
  e->srv_closed = 0;

  h2rev_dialer_options_t dopts = {.base_path = "/base"};
  test_logger(&dopts.log, "dialer");
  dopts.log.level = H2REV_LOG_WARN;
  ASSERT_OK(h2rev_dialer_init(&e->loop, &e->d, &dopts));
  e->d.data = e;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_dialer_listen(&e->d, (struct sockaddr *)&a, NULL));
  len = sizeof(a);
  ASSERT_OK(h2rev_dialer_getsockname(&e->d, 0, (struct sockaddr *)&a, &len));
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/base", ntohs(a.sin_port));
  h2rev_listener_options_t lo = {0};
  lo.url = url;
  lo.id = "splice";
  lo.on_state = on_state;
  lo.spares = 1;
  lo.accept_idle = 1; /* each stream connects as soon as it is open */
  test_logger(&lo.log, "listener");
  lo.log.level = H2REV_LOG_WARN;
  ASSERT_OK(h2rev_listener_init(&e->loop, &e->l, &lo));
  e->l.data = e;
  ASSERT_OK(h2rev_listener_start(&e->l, on_conn));
  run_until(&e->loop, &e->attached, WAIT_MS);
}

static void l_closed(h2rev_listener_t *l) {
  ((env_t *)l->data)->lclosed = 1;
}

static void d_closed(h2rev_dialer_t *d) {
  ((env_t *)d->data)->dclosed = 1;
}

static void env_close(env_t *e) {
  h2rev_listener_close(&e->l, l_closed);
  h2rev_dialer_close(&e->d, d_closed);
  e->loop.data = e;
  uv_close((uv_handle_t *)&e->srv, srv_closed);
  run_until(&e->loop, &e->lclosed, WAIT_MS);
  run_until(&e->loop, &e->dclosed, WAIT_MS);
  run_until(&e->loop, &e->srv_closed, WAIT_MS);
  loop_drain(&e->loop);
}

/* ------------------------------------------- the dialer end */

typedef struct dend {
  h2rev_stream_t s;
  h2rev_dial_t dial;
  h2rev_write_t w;
  h2rev_shutdown_t sh;
  int dialed, dial_status, shut, eof, err, closed;
  char rbuf[256];
  size_t nread;
} dend_t;

static void d_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *b) {
  dend_t *x = s->data;
  (void)sz;
  *b = uv_buf_init(x->rbuf + x->nread, (unsigned)(sizeof(x->rbuf) - 1 - x->nread));
}

static void d_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *b) {
  dend_t *x = s->data;
  (void)b;
  if (n > 0)
    x->nread += (size_t)n;
  else if (n == UV_EOF)
    x->eof = 1;
  else if (n < 0)
    x->err = (int)n;
}

static void d_dialed(h2rev_dial_t *req, int status) {
  dend_t *x = req->data;
  x->dialed = 1;
  x->dial_status = status;
}

static void d_shut(h2rev_shutdown_t *req, int status) {
  ((dend_t *)req->data)->shut = status == 0 ? 1 : -1;
}

static void d_wrote(h2rev_write_t *req, int status) {
  (void)req;
  ASSERT_OK(status);
}

static void d_closed_cb(h2rev_stream_t *s) {
  ((dend_t *)s->data)->closed = 1;
}

static void dial(env_t *e, dend_t *x) {
  memset(x, 0, sizeof(*x));
  x->s.data = x;
  x->dial.data = x;
  ASSERT_OK(h2rev_dial(&x->dial, &e->d, "splice", &x->s, WAIT_MS, d_dialed));
  run_until(&e->loop, &x->dialed, WAIT_MS);
  ASSERT_OK(x->dial_status);
  x->s.data = x;
  ASSERT_OK(h2rev_stream_read_start(&x->s, d_alloc, d_read));
}

/* Bytes both ways and the half-close of each side: the dialer's END_STREAM
 * reaches the TCP server as EOF, whose FIN comes back as END_STREAM after
 * the echo; the splice then ends with status 0. */
TEST(echo_and_half_close) {
  env_t e;
  env_open(&e, false);
  dend_t x;
  dial(&e, &x);
  uv_buf_t b = uv_buf_init(MSG, sizeof(MSG) - 1);
  ASSERT_OK(h2rev_stream_write(&x.w, &x.s, &b, 1, d_wrote));
  x.sh.data = &x;
  ASSERT_OK(h2rev_stream_shutdown(&x.sh, &x.s, d_shut));
  run_until(&e.loop, &x.eof, WAIT_MS);
  ASSERT_EQ(x.err, 0);
  ASSERT_EQ(x.nread, sizeof(MSG) - 1);
  ASSERT_MEM_EQ(x.rbuf, MSG, sizeof(MSG) - 1);
  /* The splice is over once both directions ended: done runs, status 0
   * (the idle spare, spliced too, ends only with the listener). */
  run_until(&e.loop, &e.done, WAIT_MS);
  ASSERT_EQ(e.done_status, 0);
  ASSERT_EQ(e.done_in_call, 0);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  env_close(&e);
}

/* An upstream that refuses: done reports UV_ECONNREFUSED (on a later loop
 * turn, not inside the call) and the dialer's end reads a reset. */
TEST(refused_resets_the_stream) {
  env_t e;
  env_open(&e, true);
  dend_t x;
  dial(&e, &x);
  run_until(&e.loop, &x.err, WAIT_MS);
  ASSERT_EQ(x.err, H2REV_ERESET);
  ASSERT_EQ(x.nread, 0);
  ASSERT_GE(e.done, 1);
  ASSERT_EQ(e.done_status, UV_ECONNREFUSED);
  ASSERT_EQ(e.done_in_call, 0);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  env_close(&e);
}
