/* Virtual streams over a real HTTP/2 connection on loopback (TLS and clear). */
#include "h2util.h"
#include "test.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

typedef struct cstream {
  h2rev_stream_t s;
  test_sha_t rx;
  uint64_t nread;
  int eof; /* 1: UV_EOF seen */
  int err; /* the negative code seen, if not EOF */
  int closed;
  int writes_done;
  int write_status;
  int shut_done;
  size_t max_buffered;
  const char *data;
  size_t len;
  unsigned char want[32];
  char tail[8];
  size_t taillen;
  h2rev_write_t w;
  h2rev_shutdown_t sh;
  int *done_counter;
} cstream_t;

static char rxbuf[65536];

static void c_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s;
  (void)sz;
  *buf = uv_buf_init(rxbuf, sizeof(rxbuf));
}

static void c_closed(h2rev_stream_t *s) {
  cstream_t *c = s->data;
  c->closed = 1;
  if (c->done_counter != NULL)
    (*c->done_counter)++;
}

static void c_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  cstream_t *c = s->data;
  if (n > 0) {
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
  h2rev_stream_close(s, c_closed);
}

static void c_wrote(h2rev_write_t *req, int status) {
  cstream_t *c = req->data;
  c->writes_done++;
  c->write_status = status;
}

static void c_shut(h2rev_shutdown_t *req, int status) {
  cstream_t *c = req->data;
  ASSERT_OK(status);
  c->shut_done = 1;
}

static void c_start(cstream_t *c, tclient_t *cl, const char *path, const char *data, size_t len) {
  memset(&c->s, 0, sizeof(c->s));
  c->s.data = c;
  c->data = data;
  c->len = len;
  test_sha_init(&c->rx);
  tclient_stream(cl, &c->s, path);
  ASSERT_OK(h2rev_stream_read_start(&c->s, c_alloc, c_read));
  if (len > 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    c->w.data = c;
    ASSERT_OK(h2rev_stream_write(&c->w, &c->s, &b, 1, c_wrote));
  }
  c->sh.data = c;
  ASSERT_OK(h2rev_stream_shutdown(&c->sh, &c->s, c_shut));
}

static void c_check_echo(cstream_t *c) {
  unsigned char got[32], want[32];
  test_sha_final(&c->rx, got);
  test_sha256(c->data, c->len, want);
  ASSERT_EQ(c->nread, c->len);
  ASSERT_MEM_EQ(got, want, 32);
  ASSERT_EQ(c->eof, 1);
  ASSERT_EQ(c->err, 0);
}

/* Echoes len bytes on one stream, then nsmall short messages on streams of
 * the same connection, one after the other. */
static void echo_one(size_t len, const char *cert, int nsmall) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  tserver_t srv;
  tclient_t cl = {0};
  tpair_open(&loop, &srv, &cl, cert, "127.0.0.1", NULL);
  ASSERT_EQ(cl.opened, 1);
  char *data = malloc(len);
  test_fill_random(data, len, len);
  cstream_t c = {0};
  c_start(&c, &cl, "/echo", data, len);
  run_until(&loop, &c.closed, 60000);
  c_check_echo(&c);
  ASSERT_EQ(c.writes_done, 1);
  ASSERT_OK(c.write_status);
  ASSERT_EQ(c.shut_done, 1);
  for (int i = 0; i < nsmall; i++) {
    char msg[32];
    int n = snprintf(msg, sizeof(msg), "small %d", i);
    cstream_t m = {0};
    c_start(&m, &cl, "/echo", msg, (size_t)n);
    run_until(&loop, &m.closed, 5000);
    c_check_echo(&m);
  }
  tpair_close(&loop, &srv, &cl);
  ASSERT_OK(cl.err);
  free(data);
}

/* A burst of 16 MiB, then 400 small echoes one after the other on the same
 * TLS connection: the transport replaces its grown write buffer once the
 * burst is over (after 256 small flushes), and nothing is lost or reordered
 * across the switch. */
TEST(small_writes_after_a_burst_tls) {
  echo_one(16u << 20, "server", 400);
}

TEST(echo_1_byte_tls) {
  echo_one(1, "server", 0);
}

TEST(echo_64mib_tls) {
  echo_one(64u << 20, "server", 0);
}

TEST(echo_64mib_cleartext) {
  echo_one(64u << 20, NULL, 0);
}

TEST(concurrent_1000_streams) {
  enum { N = 1000, LEN = 8192 };
  uv_loop_t loop;
  uv_loop_init(&loop);
  tserver_t srv;
  tclient_t cl = {0};
  tpair_open(&loop, &srv, &cl, "server", "localhost", NULL);
  char *data = malloc((size_t)N * LEN);
  test_fill_random(data, (size_t)N * LEN, 99);
  cstream_t *cs = calloc(N, sizeof(*cs));
  int done = 0;
  for (int i = 0; i < N; i++) {
    cs[i].done_counter = &done;
    c_start(&cs[i], &cl, "/echo", data + (size_t)i * LEN, LEN);
  }
  int all = 0;
  while (!all) {
    run_until(&loop, &done, 60000);
    all = done == N;
    if (!all)
      uv_run(&loop, UV_RUN_ONCE);
  }
  for (int i = 0; i < N; i++)
    c_check_echo(&cs[i]);
  ASSERT_EQ(srv.requests, N);
  ASSERT_EQ(srv.sessions, 1);
  tpair_close(&loop, &srv, &cl);
  free(cs);
  free(data);
}

/* A reader that stops for 2 s: the sender is paused by flow control, the
 * bytes held for the reader stay under the stream window, nothing is lost. */
static void pause_tick(uv_timer_t *t) {
  cstream_t *c = t->data;
  size_t b = h2rev_stream_buffered(&c->s);
  if (b > c->max_buffered)
    c->max_buffered = b;
}

static int resumed;
static void pause_end(uv_timer_t *t) {
  cstream_t *c = t->data;
  resumed = 1;
  ASSERT_EQ(c->nread, 0); /* nothing was delivered while stopped */
  ASSERT_OK(h2rev_stream_read_start(&c->s, c_alloc, c_read));
}

TEST(read_stop_bounds_buffering) {
  const uint64_t total = 64u << 20;
  uv_loop_t loop;
  uv_loop_init(&loop);
  h2r_session_opts o;
  h2r_session_opts_default(&o);
  o.stream_window = 256 << 10;
  tserver_t srv;
  tclient_t cl = {0};
  tpair_open(&loop, &srv, &cl, "server", "localhost", &o);
  cstream_t c = {0};
  char path[64];
  snprintf(path, sizeof(path), "/source?n=%llu", (unsigned long long)total);
  c_start(&c, &cl, path, NULL, 0);
  ASSERT_OK(h2rev_stream_read_stop(&c.s));
  uv_timer_t tick, end;
  uv_timer_init(&loop, &tick);
  uv_timer_init(&loop, &end);
  tick.data = end.data = &c;
  uv_timer_start(&tick, pause_tick, 10, 10);
  uv_timer_start(&end, pause_end, 2000, 0);
  run_until(&loop, &resumed, 5000);
  ASSERT_GT(c.max_buffered, 0);
  ASSERT_LE(c.max_buffered, o.stream_window);
  run_until(&loop, &c.closed, 60000);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_close((uv_handle_t *)&end, NULL);
  unsigned char got[32], want[32];
  test_sha_final(&c.rx, got);
  source_sha(total, want);
  ASSERT_EQ(c.nread, total);
  ASSERT_MEM_EQ(got, want, 32);
  ASSERT_EQ(c.eof, 1);
  tpair_close(&loop, &srv, &cl);
}

TEST(half_close_other_direction_flows) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  tserver_t srv;
  tclient_t cl = {0};
  tpair_open(&loop, &srv, &cl, NULL, NULL, NULL);
  static const char msg[] = "hello";
  cstream_t c = {0};
  c_start(&c, &cl, "/echo-tail", msg, 5);
  run_until(&loop, &c.closed, 5000);
  /* The server read our END_STREAM as EOF, then still wrote "tail". */
  ASSERT_EQ(c.nread, 9);
  unsigned char got[32], want[32];
  test_sha_final(&c.rx, got);
  test_sha256("hellotail", 9, want);
  ASSERT_MEM_EQ(got, want, 32);
  ASSERT_EQ(c.eof, 1);
  tpair_close(&loop, &srv, &cl);
}

TEST(reset_reads_as_error) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  tserver_t srv;
  tclient_t cl = {0};
  tpair_open(&loop, &srv, &cl, NULL, NULL, NULL);
  cstream_t c = {0};
  memset(&c.s, 0, sizeof(c.s));
  c.s.data = &c;
  test_sha_init(&c.rx);
  tclient_stream(&cl, &c.s, "/reset");
  ASSERT_OK(h2rev_stream_read_start(&c.s, c_alloc, c_read));
  run_until(&loop, &c.closed, 5000);
  ASSERT_EQ(c.eof, 0);
  ASSERT_EQ(c.err, H2REV_ERESET);
  unsigned char got[32];
  test_sha_final(&c.rx, got);
  /* The connection survives a stream reset. */
  cstream_t d = {0};
  c_start(&d, &cl, "/echo", "abc", 3);
  run_until(&loop, &d.closed, 5000);
  c_check_echo(&d);
  tpair_close(&loop, &srv, &cl);
}

TEST(close_cancels_pending_writes) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  tserver_t srv;
  tclient_t cl = {0};
  tpair_open(&loop, &srv, &cl, NULL, NULL, NULL);
  /* /source never reads: 8 MiB cannot fit in its 1 MiB window. */
  size_t len = 8u << 20;
  char *data = malloc(len);
  memset(data, 'x', len);
  cstream_t c = {0};
  c.s.data = &c;
  test_sha_init(&c.rx);
  tclient_stream(&cl, &c.s, "/source?n=1");
  uv_buf_t b = uv_buf_init(data, (unsigned)len);
  c.w.data = &c;
  ASSERT_OK(h2rev_stream_write(&c.w, &c.s, &b, 1, c_wrote));
  /* No callback inside the call. */
  ASSERT_EQ(c.writes_done, 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  h2rev_stream_close(&c.s, c_closed);
  ASSERT_EQ(c.closed, 0);
  run_until(&loop, &c.closed, 5000);
  ASSERT_EQ(c.writes_done, 1);
  ASSERT_EQ(c.write_status, UV_ECANCELED);
  unsigned char got[32];
  test_sha_final(&c.rx, got);
  tpair_close(&loop, &srv, &cl);
  free(data);
}

/* A reader that returns flow-control window on its own schedule
 * (h2r_strm_consume from a timer, as the listener does when bytes reach its
 * upstream): the WINDOW_UPDATE goes out at once, not with whatever traffic
 * happens to come next. Nothing else is on this connection: were the update
 * left queued, the transfer would stall until the next PING (30 s). */
typedef struct mreader {
  cstream_t c;
  uv_timer_t t;
  size_t owed; /* read, window not yet returned */
} mreader_t;

static void m_consume(uv_timer_t *t) {
  mreader_t *m = t->data;
  h2r_strm_consume(&m->c.s, m->owed);
  m->owed = 0;
}

static void m_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mreader_t *m = H2R_CONTAINER_OF(s->data, mreader_t, c);
  if (n > 0) {
    m->owed += (size_t)n;
    uv_timer_start(&m->t, m_consume, 1, 0);
  }
  c_read(s, n, buf);
}

TEST(window_returned_outside_callbacks) {
  const uint64_t total = 16u << 20; /* several stream windows */
  uv_loop_t loop;
  uv_loop_init(&loop);
  tserver_t srv;
  tclient_t cl = {0};
  tpair_open(&loop, &srv, &cl, "server", "localhost", NULL);
  mreader_t m = {0};
  uv_timer_init(&loop, &m.t);
  m.t.data = &m;
  char path[64];
  snprintf(path, sizeof(path), "/source?n=%llu", (unsigned long long)total);
  c_start(&m.c, &cl, path, NULL, 0);
  h2r_strm_manual_consume(&m.c.s);
  ASSERT_OK(h2rev_stream_read_stop(&m.c.s));
  ASSERT_OK(h2rev_stream_read_start(&m.c.s, c_alloc, m_read));
  run_until(&loop, &m.c.closed, 10000);
  unsigned char got[32], want[32];
  test_sha_final(&m.c.rx, got);
  source_sha(total, want);
  ASSERT_EQ(m.c.nread, total);
  ASSERT_MEM_EQ(got, want, 32);
  ASSERT_EQ(m.c.eof, 1);
  uv_close((uv_handle_t *)&m.t, NULL);
  tpair_close(&loop, &srv, &cl);
}
