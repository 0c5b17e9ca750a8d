/* h2rev_stream_bridge: a reverse connection's listener end handed to code
 * written only against libuv's uv_stream_t (an echo server: uv_read_start,
 * uv_write, uv_shutdown, uv_close on the uv_pipe_t), the dialer end driven
 * through the h2rev stream API. A dialer and a listener on loopback
 * (HTTP/2 cleartext) give the real reverse stream. */
#include "h2util.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS     60000 /* generous: ASan on a loaded 2-CPU machine */
#define ECHO_BYTES  (4u << 20)
#define PAUSE_BYTES (16u << 20) /* far beyond every window and buffer on the way */
#define PAUSE_BOUND (8u << 20)  /* what may get through to a reader that does not read */
#define PAUSE_MS    1000        /* long enough for a stall to show */
#define CHUNK       (64 * 1024)

static void run_ms(uv_loop_t *loop, unsigned ms);

#define WAIT(loop, cond)                                                                           \
  do {                                                                                             \
    uint64_t t0_ = uv_hrtime();                                                                    \
    while (!(cond)) {                                                                              \
      if ((uv_hrtime() - t0_) / 1000000 > WAIT_MS)                                                 \
        test_fail(__FILE__, __LINE__, "not within %d ms: %s", WAIT_MS, #cond);                     \
      run_ms((loop), 5);                                                                           \
    }                                                                                              \
  } while (0)

/* ------------------------------------------- the environment */

typedef struct env {
  uv_loop_t loop;
  h2rev_dialer_t d;
  h2rev_listener_t l;
  int attached, lclosed, dclosed;
  h2rev_stream_t *accepted; /* the listener end of the newest reverse connection */
} env_t;

static void on_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  (void)err, (void)delay;
  if (state == H2REV_LISTENER_ATTACHED)
    ((env_t *)l->data)->attached = 1;
}

/* The listener end is known by the one byte its dialer end sends first
 * ('P'), read alone before the stream is bridged. */
typedef struct lend {
  h2rev_stream_t s;
  env_t *e;
  char c;
} lend_t;

static void pair_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *b) {
  lend_t *x = (lend_t *)s;
  (void)sz;
  *b = uv_buf_init(&x->c, 1);
}

static void pair_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *b) {
  lend_t *x = (lend_t *)s;
  (void)b;
  ASSERT_EQ(n, 1);
  ASSERT_EQ(x->c, 'P');
  ASSERT_OK(h2rev_stream_read_stop(s));
  ASSERT_NULL(x->e->accepted);
  x->e->accepted = s;
}

static void on_conn(h2rev_listener_t *l, int status) {
  env_t *e = l->data;
  ASSERT_OK(status);
  lend_t *x = calloc(1, sizeof(*x));
  ASSERT_NOT_NULL(x);
  x->e = e;
  if (h2rev_listener_accept(l, &x->s) != 0) {
    free(x);
    return;
  }
  ASSERT_OK(h2rev_stream_read_start(&x->s, pair_alloc, pair_read));
}

static void env_open(env_t *e) {
  memset(e, 0, sizeof(*e));
  ASSERT_OK(uv_loop_init(&e->loop));
  h2rev_dialer_options_t dopts = {.base_path = "/base"};
  test_logger(&dopts.log, "dialer");
  dopts.log.level = H2REV_LOG_WARN;
  ASSERT_OK(h2rev_dialer_init(&e->loop, &e->d, &dopts));
  e->d.data = e;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_dialer_listen(&e->d, (struct sockaddr *)&a, NULL));
  int len = sizeof(a);
  ASSERT_OK(h2rev_dialer_getsockname(&e->d, 0, (struct sockaddr *)&a, &len));
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/base", ntohs(a.sin_port));
  h2rev_listener_options_t lo = {0};
  lo.url = url;
  lo.id = "bridge";
  lo.on_state = on_state;
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
  run_until(&e->loop, &e->lclosed, WAIT_MS);
  run_until(&e->loop, &e->dclosed, WAIT_MS);
  loop_drain(&e->loop);
}

/* ------------------------------- the dialer end (h2rev API) */

typedef struct dend {
  h2rev_stream_t s;
  h2rev_dial_t dial;
  int dialed, dial_status;
  /* sending: total bytes of a deterministic pattern, in CHUNK writes
   * chained from the callbacks, then a shutdown */
  uint64_t to_send, sent, acked;
  int shut_after, shut_done;
  h2rev_write_t w;
  h2rev_shutdown_t sh;
  char wbuf[CHUNK];
  test_sha_t tx;
  /* receiving */
  int reading, eof, err, closed;
  uint64_t nread;
  test_sha_t rx;
  char text[256]; /* the first bytes received, NUL-terminated */
  char rbuf[CHUNK];
} dend_t;

static void d_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *b) {
  dend_t *x = s->data;
  (void)sz;
  *b = uv_buf_init(x->rbuf, sizeof(x->rbuf));
}

static void d_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *b) {
  dend_t *x = s->data;
  ASSERT_EQ(x->eof, 0);
  ASSERT_EQ(x->err, 0);
  if (n > 0) {
    size_t have = strlen(x->text);
    size_t room = sizeof(x->text) - 1 - have;
    memcpy(x->text + have, b->base, (size_t)n < room ? (size_t)n : room);
    x->nread += (uint64_t)n;
    test_sha_update(&x->rx, b->base, (size_t)n);
  } else if (n == UV_EOF) {
    x->eof = 1;
  } else if (n < 0) {
    x->err = (int)n;
  }
}

static void d_dialed(h2rev_dial_t *req, int status) {
  dend_t *x = req->data;
  x->dialed = 1;
  x->dial_status = status;
}

static void d_shut(h2rev_shutdown_t *req, int status) {
  dend_t *x = req->data;
  ASSERT_OK(status);
  x->shut_done = 1;
}

static void d_send_next(dend_t *x);

static void d_wrote(h2rev_write_t *req, int status) {
  dend_t *x = req->data;
  ASSERT_OK(status);
  x->acked = x->sent;
  d_send_next(x);
}

static void d_send_next(dend_t *x) {
  if (x->sent == x->to_send) {
    if (x->shut_after) {
      x->sh.data = x;
      ASSERT_OK(h2rev_stream_shutdown(&x->sh, &x->s, d_shut));
    }
    return;
  }
  size_t n = x->to_send - x->sent < CHUNK ? (size_t)(x->to_send - x->sent) : CHUNK;
  test_fill_random(x->wbuf, n, 1000 + x->sent);
  test_sha_update(&x->tx, x->wbuf, n);
  x->sent += n;
  uv_buf_t b = uv_buf_init(x->wbuf, (unsigned)n);
  x->w.data = x;
  ASSERT_OK(h2rev_stream_write(&x->w, &x->s, &b, 1, d_wrote));
}

static void d_closed_cb(h2rev_stream_t *s) {
  ((dend_t *)s->data)->closed = 1;
}

static void text_wrote(h2rev_write_t *req, int status) {
  (void)req;
  ASSERT_OK(status);
}

static void d_write_text(dend_t *x, const char *text) {
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)strlen(text));
  ASSERT_OK(h2rev_stream_write(&x->w, &x->s, &b, 1, text_wrote));
}

static void dend_open(env_t *e, dend_t *x) {
  memset(x, 0, sizeof(*x));
  x->s.data = x;
  x->dial.data = x;
  test_sha_init(&x->tx);
  test_sha_init(&x->rx);
  e->accepted = NULL;
  ASSERT_OK(h2rev_dial(&x->dial, &e->d, "bridge", &x->s, WAIT_MS, d_dialed));
  run_until(&e->loop, &x->dialed, WAIT_MS);
  ASSERT_OK(x->dial_status);
  static h2rev_write_t hello;
  uv_buf_t b = uv_buf_init("P", 1);
  ASSERT_OK(h2rev_stream_write(&hello, &x->s, &b, 1, text_wrote));
  WAIT(&e->loop, e->accepted != NULL);
}

static void dend_read(dend_t *x) {
  ASSERT_OK(h2rev_stream_read_start(&x->s, d_alloc, d_read));
  x->reading = 1;
}

static void sha_equal(test_sha_t *a, test_sha_t *b) {
  unsigned char da[32], db[32];
  test_sha_final(a, da);
  test_sha_final(b, db);
  ASSERT_MEM_EQ(da, db, 32);
}

/* ------------------------------ the libuv side: uv_stream_t only */

/* An echo server as any libuv program writes it: what it reads it writes
 * back; at the peer's end it shuts its side down and closes. Nothing in it
 * knows about h2rev. */
typedef struct echo {
  uv_pipe_t pipe;
  int eof, shut, closed, err;
  uint64_t echoed;
} echo_t;

typedef struct ewrite {
  uv_write_t req;
  char data[];
} ewrite_t;

static void e_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)h;
  ewrite_t *w = malloc(sizeof(*w) + sz);
  ASSERT_NOT_NULL(w);
  *b = uv_buf_init(w->data, (unsigned)sz);
}

static void e_closed(uv_handle_t *h) {
  ((echo_t *)h->data)->closed = 1;
}

static void e_wrote(uv_write_t *req, int status) {
  ASSERT_OK(status);
  free(req);
}

static void e_shut(uv_shutdown_t *req, int status) {
  echo_t *e = req->data;
  ASSERT_OK(status);
  e->shut = 1;
  free(req);
  uv_close((uv_handle_t *)&e->pipe, e_closed);
}

static void e_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  echo_t *e = s->data;
  ewrite_t *w = b->base != NULL ? (ewrite_t *)(b->base - offsetof(ewrite_t, data)) : NULL;
  if (n > 0) {
    uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
    ASSERT_OK(uv_write(&w->req, s, &out, 1, e_wrote));
    e->echoed += (uint64_t)n;
    return;
  }
  free(w);
  if (n == UV_EOF) {
    e->eof = 1;
    uv_shutdown_t *sh = malloc(sizeof(*sh));
    ASSERT_NOT_NULL(sh);
    sh->data = e;
    ASSERT_OK(uv_shutdown(sh, s, e_shut));
  } else if (n < 0) {
    e->err = (int)n;
    uv_close((uv_handle_t *)s, e_closed);
  }
}

static int bridge_done;

static void on_bridge_done(h2rev_stream_t *s) {
  bridge_done++;
  free(s);
}

static void bridge(env_t *e, uv_pipe_t *out) {
  bridge_done = 0;
  ASSERT_OK(h2rev_stream_bridge(e->accepted, &e->loop, out, on_bridge_done));
  e->accepted = NULL;
}

static void ms_fired(uv_timer_t *t) {
  *(int *)t->data = 1;
}

/* Runs the loop for ms, whatever happens. */
static void run_ms(uv_loop_t *loop, unsigned ms) {
  uv_timer_t t;
  int fired = 0;
  uv_timer_init(loop, &t);
  t.data = &fired;
  uv_timer_start(&t, ms_fired, ms, 0);
  while (!fired)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* ------------------------------------------------------------ cases */

TEST(echo_4mib) {
  env_t e;
  dend_t x;
  echo_t srv = {0};
  env_open(&e);
  dend_open(&e, &x);
  srv.pipe.data = &srv;
  bridge(&e, &srv.pipe);
  srv.pipe.data = &srv; /* uv_pipe_init leaves data alone, but be explicit */
  ASSERT_OK(uv_read_start((uv_stream_t *)&srv.pipe, e_alloc, e_read));
  dend_read(&x);
  x.to_send = ECHO_BYTES;
  x.shut_after = 1;
  d_send_next(&x);
  run_until(&e.loop, &x.eof, WAIT_MS);
  ASSERT_EQ(x.err, 0);
  ASSERT_EQ(x.nread, ECHO_BYTES);
  ASSERT_EQ(srv.echoed, ECHO_BYTES);
  sha_equal(&x.tx, &x.rx);
  /* Both directions ended cleanly: the bridge is over, the server's pipe
   * closed after its shutdown. */
  run_until(&e.loop, &bridge_done, WAIT_MS);
  run_until(&e.loop, &srv.closed, WAIT_MS);
  ASSERT_EQ(srv.err, 0);
  ASSERT_EQ(bridge_done, 1);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  env_close(&e);
}

/* A libuv program at the pipe that speaks first, then half-closes, and
 * still reads what the peer says after that. */
typedef struct side {
  uv_pipe_t pipe;
  uv_write_t w;
  uv_shutdown_t sh;
  int shut, eof, err, closed, writes_done, said_status;
  uint64_t nread, to_send, sent;
  test_sha_t rx, tx;
  char text[256];
  char buf[CHUNK];
  char wbuf[CHUNK];
} side_t;

static void side_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  side_t *p = h->data;
  (void)sz;
  *b = uv_buf_init(p->buf, sizeof(p->buf));
}

static void side_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  side_t *p = s->data;
  ASSERT_EQ(p->eof, 0);
  if (n > 0) {
    size_t have = strlen(p->text);
    size_t room = sizeof(p->text) - 1 - have;
    memcpy(p->text + have, b->base, (size_t)n < room ? (size_t)n : room);
    p->nread += (uint64_t)n;
    test_sha_update(&p->rx, b->base, (size_t)n);
  } else if (n == UV_EOF) {
    p->eof = 1;
  } else if (n < 0) {
    p->err = (int)n;
    uv_read_stop(s);
  }
}

static void side_shut(uv_shutdown_t *req, int status) {
  side_t *p = req->data;
  ASSERT_OK(status);
  p->shut = 1;
}

static void side_closed(uv_handle_t *h) {
  ((side_t *)h->data)->closed = 1;
}

static void side_init(side_t *p) {
  memset(p, 0, sizeof(*p));
  p->pipe.data = p;
  test_sha_init(&p->rx);
  test_sha_init(&p->tx);
}

static void side_send_next(side_t *p);

static void side_wrote(uv_write_t *req, int status) {
  side_t *p = req->data;
  ASSERT_OK(status);
  p->writes_done++;
  side_send_next(p);
}

/* to_send bytes of a pattern, chained from the callbacks, then shutdown. */
static void side_send_next(side_t *p) {
  if (p->sent == p->to_send) {
    p->sh.data = p;
    ASSERT_OK(uv_shutdown(&p->sh, (uv_stream_t *)&p->pipe, side_shut));
    return;
  }
  size_t n = p->to_send - p->sent < CHUNK ? (size_t)(p->to_send - p->sent) : CHUNK;
  test_fill_random(p->wbuf, n, 5000 + p->sent);
  test_sha_update(&p->tx, p->wbuf, n);
  p->sent += n;
  uv_buf_t b = uv_buf_init(p->wbuf, (unsigned)n);
  p->w.data = p;
  ASSERT_OK(uv_write(&p->w, (uv_stream_t *)&p->pipe, &b, 1, side_wrote));
}

static void side_said(uv_write_t *req, int status) {
  side_t *p = req->data;
  p->said_status = status;
  p->writes_done++;
}

static void side_say(side_t *p, const char *text) {
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)strlen(text));
  p->w.data = p;
  ASSERT_OK(uv_write(&p->w, (uv_stream_t *)&p->pipe, &b, 1, side_said));
}

static void side_sha_free(side_t *p) {
  unsigned char d[32];
  test_sha_final(&p->rx, d);
  test_sha_final(&p->tx, d);
}

static void dend_sha_free(dend_t *x) {
  unsigned char d[32];
  test_sha_final(&x->rx, d);
  test_sha_final(&x->tx, d);
}

TEST(half_close_both_ways) {
  env_t e;
  dend_t x;
  side_t p;
  env_open(&e);
  dend_open(&e, &x);
  side_init(&p);
  bridge(&e, &p.pipe);
  ASSERT_OK(uv_read_start((uv_stream_t *)&p.pipe, side_alloc, side_read));
  dend_read(&x);

  /* The pipe's side speaks first and half-closes: the dialer end reads the
   * greeting, then UV_EOF. */
  side_say(&p, "220 hello\r\n");
  p.sh.data = &p;
  ASSERT_OK(uv_shutdown(&p.sh, (uv_stream_t *)&p.pipe, side_shut));
  run_until(&e.loop, &x.eof, WAIT_MS);
  ASSERT_STR_EQ(x.text, "220 hello\r\n");
  ASSERT_EQ(p.shut, 1);
  ASSERT_EQ(bridge_done, 0); /* the other direction is still open */

  /* The other direction still carries bytes, then its own end. */
  d_write_text(&x, "QUIT\r\n");
  x.sh.data = &x;
  ASSERT_OK(h2rev_stream_shutdown(&x.sh, &x.s, d_shut));
  run_until(&e.loop, &p.eof, WAIT_MS);
  ASSERT_STR_EQ(p.text, "QUIT\r\n");
  ASSERT_EQ(p.err, 0);
  ASSERT_EQ(x.err, 0); /* no reset anywhere */
  run_until(&e.loop, &bridge_done, WAIT_MS);

  /* The reverse order: the dialer end half-closes first. */
  uv_close((uv_handle_t *)&p.pipe, side_closed);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  run_until(&e.loop, &p.closed, WAIT_MS);
  side_sha_free(&p);
  dend_sha_free(&x);

  dend_open(&e, &x);
  side_init(&p);
  bridge(&e, &p.pipe);
  ASSERT_OK(uv_read_start((uv_stream_t *)&p.pipe, side_alloc, side_read));
  dend_read(&x);
  d_write_text(&x, "GET / HTTP/1.0\r\n\r\n");
  x.sh.data = &x;
  ASSERT_OK(h2rev_stream_shutdown(&x.sh, &x.s, d_shut));
  run_until(&e.loop, &p.eof, WAIT_MS);
  ASSERT_STR_EQ(p.text, "GET / HTTP/1.0\r\n\r\n");
  ASSERT_EQ(bridge_done, 0);
  side_say(&p, "HTTP/1.0 200 OK\r\n\r\nbody");
  run_until(&e.loop, &p.writes_done, WAIT_MS);
  ASSERT_OK(p.said_status);
  p.sh.data = &p;
  ASSERT_OK(uv_shutdown(&p.sh, (uv_stream_t *)&p.pipe, side_shut));
  run_until(&e.loop, &x.eof, WAIT_MS);
  ASSERT_STR_EQ(x.text, "HTTP/1.0 200 OK\r\n\r\nbody");
  ASSERT_EQ(x.err, 0);
  run_until(&e.loop, &bridge_done, WAIT_MS);
  uv_close((uv_handle_t *)&p.pipe, side_closed);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  run_until(&e.loop, &p.closed, WAIT_MS);
  side_sha_free(&p);
  dend_sha_free(&x);
  env_close(&e);
}

TEST(close_from_pipe_side) {
  env_t e;
  dend_t x;
  side_t p;
  env_open(&e);
  dend_open(&e, &x);
  side_init(&p);
  bridge(&e, &p.pipe);
  ASSERT_OK(uv_read_start((uv_stream_t *)&p.pipe, side_alloc, side_read));
  dend_read(&x);
  side_say(&p, "hi");
  run_until(&e.loop, &p.writes_done, WAIT_MS);
  /* The program closes its pipe: the dialer end sees the end of the stream. */
  uv_close((uv_handle_t *)&p.pipe, side_closed);
  run_until(&e.loop, &x.eof, WAIT_MS);
  ASSERT_STR_EQ(x.text, "hi");
  ASSERT_EQ(x.err, 0);
  /* Bytes sent towards the closed pipe end the bridge (stream reset); the
   * dialer end need not close first. */
  d_write_text(&x, "anyone?");
  run_until(&e.loop, &bridge_done, WAIT_MS);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  side_sha_free(&p);
  dend_sha_free(&x);
  env_close(&e);
}

TEST(close_from_stream_side) {
  env_t e;
  dend_t x;
  side_t p;
  env_open(&e);
  dend_open(&e, &x);
  side_init(&p);
  bridge(&e, &p.pipe);
  ASSERT_OK(uv_read_start((uv_stream_t *)&p.pipe, side_alloc, side_read));
  d_write_text(&x, "bye");
  WAIT(&e.loop, p.nread == 3);
  ASSERT_STR_EQ(p.text, "bye");
  /* The dialer end closes (a reset: both directions were open): the pipe
   * ends, the bridge is over. */
  h2rev_stream_close(&x.s, d_closed_cb);
  WAIT(&e.loop, p.eof || p.err);
  run_until(&e.loop, &bridge_done, WAIT_MS);
  run_until(&e.loop, &x.closed, WAIT_MS);
  /* Writes to the pipe fail now, as to a closed socket. */
  side_say(&p, "late");
  WAIT(&e.loop, p.writes_done == 1);
  ASSERT_LT(p.said_status, 0);
  uv_close((uv_handle_t *)&p.pipe, side_closed);
  run_until(&e.loop, &p.closed, WAIT_MS);
  side_sha_free(&p);
  dend_sha_free(&x);
  env_close(&e);
}

/* A pipe reader that stops pauses the HTTP/2 sender: the dialer end's
 * writes stop completing well short of the total, and resume when it reads. */
TEST(backpressure_pipe_reader) {
  env_t e;
  dend_t x;
  side_t p;
  env_open(&e);
  dend_open(&e, &x);
  side_init(&p);
  bridge(&e, &p.pipe);
  x.to_send = PAUSE_BYTES;
  x.shut_after = 1;
  d_send_next(&x);
  run_ms(&e.loop, PAUSE_MS);
  uint64_t stalled = x.acked;
  run_ms(&e.loop, PAUSE_MS / 2);
  ASSERT_EQ(x.acked, stalled); /* not moving */
  ASSERT_LT(x.acked, PAUSE_BOUND);
  ASSERT_GT(x.acked, 0);
  fprintf(stderr, "pipe not read: %llu of %u bytes sent got through\n", (unsigned long long)x.acked,
          PAUSE_BYTES);
  ASSERT_OK(uv_read_start((uv_stream_t *)&p.pipe, side_alloc, side_read));
  WAIT(&e.loop, p.eof);
  ASSERT_EQ(p.nread, PAUSE_BYTES);
  ASSERT_EQ(p.err, 0);
  sha_equal(&x.tx, &p.rx);
  test_sha_final(&x.rx, (unsigned char[32]){0});
  test_sha_final(&p.tx, (unsigned char[32]){0});
  uv_close((uv_handle_t *)&p.pipe, side_closed);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  run_until(&e.loop, &p.closed, WAIT_MS);
  env_close(&e);
}

/* A dialer end that does not read pauses the writer of the pipe: its
 * uv_write callbacks stop, and resume when the dialer end reads. */
TEST(backpressure_stream_reader) {
  env_t e;
  dend_t x;
  side_t p;
  env_open(&e);
  dend_open(&e, &x);
  side_init(&p);
  bridge(&e, &p.pipe);
  p.to_send = PAUSE_BYTES;
  side_send_next(&p);
  run_ms(&e.loop, PAUSE_MS);
  int stalled = p.writes_done;
  run_ms(&e.loop, PAUSE_MS / 2);
  ASSERT_EQ(p.writes_done, stalled);
  ASSERT_LT((uint64_t)p.writes_done * CHUNK, PAUSE_BOUND);
  ASSERT_GT(p.writes_done, 0);
  fprintf(stderr, "stream not read: %llu of %u bytes written got through\n",
          (unsigned long long)p.writes_done * CHUNK, PAUSE_BYTES);
  dend_read(&x);
  run_until(&e.loop, &x.eof, WAIT_MS);
  ASSERT_EQ(x.nread, PAUSE_BYTES);
  ASSERT_EQ(x.err, 0);
  sha_equal(&p.tx, &x.rx);
  test_sha_final(&x.tx, (unsigned char[32]){0});
  test_sha_final(&p.rx, (unsigned char[32]){0});
  uv_close((uv_handle_t *)&p.pipe, side_closed);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  run_until(&e.loop, &p.closed, WAIT_MS);
  env_close(&e);
}

#define XFER_BYTES (64u << 20)

static void free_stream(h2rev_stream_t *s) {
  free(s); /* the lend_t that holds it */
}

static double mib_per_s(uint64_t bytes, uint64_t ns) {
  return (double)bytes / (1 << 20) / ((double)ns / 1e9);
}

/* The cost of the bridge: one direction (dialer end to listener side) of
 * XFER_BYTES, read by the h2rev stream API directly, then by a libuv
 * reader through the bridge; both checked by SHA-256, both rates printed. */
TEST(throughput_vs_direct) {
  env_t e;
  dend_t x, sink;
  side_t p;
  env_open(&e);

  dend_open(&e, &x);
  memset(&sink, 0, sizeof(sink));
  test_sha_init(&sink.rx);
  test_sha_init(&sink.tx);
  h2rev_stream_t *direct = e.accepted;
  e.accepted = NULL;
  direct->data = &sink;
  uint64_t t0 = uv_hrtime();
  ASSERT_OK(h2rev_stream_read_start(direct, d_alloc, d_read));
  x.to_send = XFER_BYTES;
  x.shut_after = 1;
  d_send_next(&x);
  run_until(&e.loop, &sink.eof, WAIT_MS);
  uint64_t direct_ns = uv_hrtime() - t0;
  ASSERT_EQ(sink.nread, XFER_BYTES);
  sha_equal(&x.tx, &sink.rx);
  test_sha_final(&x.rx, (unsigned char[32]){0});
  test_sha_final(&sink.tx, (unsigned char[32]){0});
  h2rev_stream_close(direct, free_stream);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);

  dend_open(&e, &x);
  side_init(&p);
  t0 = uv_hrtime();
  bridge(&e, &p.pipe);
  ASSERT_OK(uv_read_start((uv_stream_t *)&p.pipe, side_alloc, side_read));
  x.to_send = XFER_BYTES;
  x.shut_after = 1;
  d_send_next(&x);
  run_until(&e.loop, &p.eof, WAIT_MS);
  uint64_t bridge_ns = uv_hrtime() - t0;
  ASSERT_EQ(p.nread, XFER_BYTES);
  sha_equal(&x.tx, &p.rx);
  test_sha_final(&x.rx, (unsigned char[32]){0});
  test_sha_final(&p.tx, (unsigned char[32]){0});
  fprintf(stderr, "%u MiB one way: direct stream %.0f MiB/s, bridged uv_pipe_t %.0f MiB/s\n",
          XFER_BYTES >> 20, mib_per_s(XFER_BYTES, direct_ns), mib_per_s(XFER_BYTES, bridge_ns));
  uv_close((uv_handle_t *)&p.pipe, side_closed);
  h2rev_stream_close(&x.s, d_closed_cb);
  run_until(&e.loop, &x.closed, WAIT_MS);
  run_until(&e.loop, &p.closed, WAIT_MS);
  env_close(&e);
}
