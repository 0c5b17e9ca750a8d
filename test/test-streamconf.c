/* Conformance of h2rev_stream_t to the contract of a connected uv_stream_t,
 * case by case after libuv's own TCP stream tests (write queue order,
 * writealot, shutdown twice, close and read-stop inside callbacks, callback
 * order), on real reverse connections: a dialer and a listener on loopback
 * (HTTP/2 cleartext), one end from h2rev_dial, the other from
 * h2rev_listener_accept. Only the public API is used.
 *
 * Every API call goes through a wrapper that marks "inside a call", and
 * every callback checks it is not: no callback runs inside the call that
 * asked for it, in any case below. Every callback also checks that its
 * stream's close callback has not run: nothing after close_cb. */
#define _GNU_SOURCE /* memmem */
#include "h2util.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 100000 /* generous: under ASan on a loaded machine the 5-byte chain takes 30 s */

/* ------------------------------------------------- calls and callbacks */

static int in_api;

typedef struct end end_t;

/* One side of a reverse connection, as the application holds it. */
struct end {
  h2rev_stream_t s;
  const char *name;
  int reading; /* read_start called and not stopped, as we believe */
  int closing; /* we called close */
  int closed;  /* close callbacks seen */
  int eof;     /* UV_EOF seen */
  int err;     /* a negative read status other than UV_EOF */
  int reads;   /* read callbacks with data */
  uint64_t nread;
  test_sha_t rx;
  /* Optional behaviour inside read_cb; return nonzero to skip the default. */
  int (*on_read)(end_t *e, ssize_t n, const uv_buf_t *buf);
  void *arg;
  char rbuf[65536];
};

/* Entered at the start of every callback of e. */
static void cb_enter(end_t *e) {
  if (in_api)
    test_fail(__FILE__, __LINE__, "%s: a callback ran inside the call that asked for it", e->name);
  if (e->closed)
    test_fail(__FILE__, __LINE__, "%s: a callback ran after the close callback", e->name);
}

static void r_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  end_t *e = s->data;
  (void)sz;
  cb_enter(e);
  *buf = uv_buf_init(e->rbuf, sizeof(e->rbuf));
}

static void r_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  end_t *e = s->data;
  cb_enter(e);
  if (!e->reading)
    test_fail(__FILE__, __LINE__, "%s: read_cb after read_stop", e->name);
  if (e->eof || e->err)
    test_fail(__FILE__, __LINE__, "%s: read_cb after the end of the stream", e->name);
  if (e->on_read != NULL && e->on_read(e, n, buf))
    return;
  if (n > 0) {
    e->reads++;
    e->nread += (uint64_t)n;
    test_sha_update(&e->rx, buf->base, (size_t)n);
  } else if (n == UV_EOF) {
    e->eof = 1;
  } else if (n < 0) {
    e->err = (int)n;
  }
}

static void end_closed(h2rev_stream_t *s) {
  end_t *e = s->data;
  cb_enter(e);
  e->closed++;
}

static int s_read_start(end_t *e) {
  in_api++;
  int r = h2rev_stream_read_start(&e->s, r_alloc, r_read);
  in_api--;
  if (r == 0)
    e->reading = 1;
  return r;
}

static int s_read_stop(end_t *e) {
  in_api++;
  int r = h2rev_stream_read_stop(&e->s);
  in_api--;
  e->reading = 0;
  return r;
}

static int s_write(h2rev_write_t *w, end_t *e, const uv_buf_t *bufs, unsigned n,
                   h2rev_write_cb cb) {
  in_api++;
  int r = h2rev_stream_write(w, &e->s, bufs, n, cb);
  in_api--;
  return r;
}

static int s_shutdown(h2rev_shutdown_t *req, end_t *e, h2rev_shutdown_cb cb) {
  in_api++;
  int r = h2rev_stream_shutdown(req, &e->s, cb);
  in_api--;
  return r;
}

static void s_close(end_t *e) {
  e->closing = 1;
  e->reading = 0;
  in_api++;
  h2rev_stream_close(&e->s, end_closed);
  in_api--;
}

/* ------------------------------------------------------- the event log */

enum { EV_WRITE = 1, EV_SHUT, EV_CLOSE };

typedef struct ev {
  end_t *end;
  int kind, idx, status;
} ev_t;

#define MAX_EV 4096
static ev_t evlog[MAX_EV];
static int nev;

static void ev_add(end_t *e, int kind, int idx, int status) {
  ASSERT_LT(nev, MAX_EV);
  evlog[nev++] = (ev_t){e, kind, idx, status};
}

/* A write request that logs its completion. */
typedef struct wreq {
  h2rev_write_t w;
  end_t *end;
  int idx;
  int done;
  int status;
} wreq_t;

static void logged_wrote(h2rev_write_t *req, int status) {
  wreq_t *w = H2R_CONTAINER_OF(req, wreq_t, w);
  cb_enter(w->end);
  ASSERT_EQ(w->done, 0);
  w->done = 1;
  w->status = status;
  ev_add(w->end, EV_WRITE, w->idx, status);
}

static int logged_write(wreq_t *w, end_t *e, int idx, const uv_buf_t *bufs, unsigned n) {
  memset(w, 0, sizeof(*w));
  w->end = e;
  w->idx = idx;
  return s_write(&w->w, e, bufs, n, logged_wrote);
}

typedef struct sreq {
  h2rev_shutdown_t sh;
  end_t *end;
  int calls;
  int status;
} sreq_t;

static void logged_shut(h2rev_shutdown_t *req, int status) {
  sreq_t *s = H2R_CONTAINER_OF(req, sreq_t, sh);
  cb_enter(s->end);
  s->calls++;
  s->status = status;
  ev_add(s->end, EV_SHUT, 0, status);
}

static void logged_closed(h2rev_stream_t *st) {
  end_t *e = st->data;
  cb_enter(e);
  e->closed++;
  ev_add(e, EV_CLOSE, 0, 0);
}

static void s_close_logged(end_t *e) {
  e->closing = 1;
  e->reading = 0;
  in_api++;
  h2rev_stream_close(&e->s, logged_closed);
  in_api--;
}

/* Waiting: the loop runs until a condition holds, woken at least every
 * WAIT_TICK_MS; the test fails after WAIT_MS. */
#define WAIT_TICK_MS 10

typedef struct waiter {
  uv_timer_t t;
  uint64_t t0;
} waiter_t;

static void wait_tick(uv_timer_t *t) {
  (void)t;
}

static void wait_begin(waiter_t *w, uv_loop_t *loop) {
  uv_timer_init(loop, &w->t);
  uv_timer_start(&w->t, wait_tick, WAIT_TICK_MS, WAIT_TICK_MS);
  w->t0 = uv_hrtime();
}

static void wait_step(waiter_t *w, const char *what, int line) {
  if ((uv_hrtime() - w->t0) / 1000000 > WAIT_MS)
    test_fail(__FILE__, line, "not within %d ms: %s", WAIT_MS, what);
  uv_run(w->t.loop, UV_RUN_ONCE);
}

static void wait_end(waiter_t *w) {
  uv_close((uv_handle_t *)&w->t, NULL);
  uv_run(w->t.loop, UV_RUN_NOWAIT);
}

#define WAIT(loop, cond)                                                                           \
  do {                                                                                             \
    waiter_t w_;                                                                                   \
    wait_begin(&w_, (loop));                                                                       \
    while (!(cond))                                                                                \
      wait_step(&w_, #cond, __LINE__);                                                             \
    wait_end(&w_);                                                                                 \
  } while (0)

static void on_wait_timer(uv_timer_t *t) {
  *(int *)t->data = 1;
}

/* Runs the loop for ms, whatever happens. */
static void run_for(uv_loop_t *loop, unsigned ms) {
  uv_timer_t t;
  int expired = 0;
  uv_timer_init(loop, &t);
  t.data = &expired;
  uv_timer_start(&t, on_wait_timer, ms, 0);
  while (!expired)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* ----------------------------------------------------- the environment */

#define MAX_ACCEPTED 64

typedef struct env {
  uv_loop_t loop;
  h2rev_dialer_t d;
  h2rev_listener_t l;
  int port;
  int attached;
  int closing;
  int states[64]; /* on_state's reports, in order */
  int nstates;
  int listener_closed, dialer_closed;
  end_t *acc[MAX_ACCEPTED]; /* every stream the listener handed over */
  int nacc;
  struct pair *pairing; /* waiting for its listener side */
} env_t;

/* A reverse connection: a from h2rev_dial, b its other end at the listener. */
typedef struct pair {
  env_t *env;
  end_t a;
  end_t *b;
  h2rev_dial_t dial;
  int dialed, dial_status;
  h2rev_write_t hello;
} pair_t;

static void env_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  env_t *e = l->data;
  (void)err, (void)delay;
  if (in_api)
    test_fail(__FILE__, __LINE__, "on_state(%d) inside the call that caused it", state);
  if (e->listener_closed)
    test_fail(__FILE__, __LINE__, "on_state(%d) after the listener's close callback", state);
  ASSERT_LT(e->nstates, 64);
  e->states[e->nstates++] = state;
  if (state == H2REV_LISTENER_ATTACHED)
    e->attached = 1;
}

static void env_listener_closed(h2rev_listener_t *l) {
  env_t *e = l->data;
  if (in_api)
    test_fail(__FILE__, __LINE__, "listener close callback inside h2rev_listener_close");
  ASSERT_EQ(e->listener_closed, 0);
  ASSERT_GT(e->nstates, 0);
  ASSERT_EQ(e->states[e->nstates - 1], H2REV_LISTENER_STOPPED);
  e->listener_closed = 1;
}

static void env_dialer_closed(h2rev_dialer_t *d) {
  env_t *e = d->data;
  if (in_api)
    test_fail(__FILE__, __LINE__, "dialer close callback inside h2rev_dialer_close");
  ASSERT_EQ(e->dialer_closed, 0);
  e->dialer_closed = 1;
}

static void env_close_listener(env_t *e) {
  in_api++;
  h2rev_listener_close(&e->l, env_listener_closed);
  in_api--;
  ASSERT_EQ(e->listener_closed, 0);
  WAIT(&e->loop, e->listener_closed);
}

static void env_close_dialer(env_t *e) {
  in_api++;
  h2rev_dialer_close(&e->d, env_dialer_closed);
  in_api--;
  ASSERT_EQ(e->dialer_closed, 0);
  WAIT(&e->loop, e->dialer_closed);
}

/* Listener side, until paired: the first byte the dialer side sends names
 * the stream of the pair being made. */
static int pairing_read(end_t *x, ssize_t n, const uv_buf_t *buf) {
  env_t *e = x->arg;
  if (n > 0) {
    ASSERT_EQ(n, 1);
    ASSERT_EQ(buf->base[0], 'P');
    ASSERT_NOT_NULL(e->pairing);
    ASSERT_NULL(e->pairing->b);
    e->pairing->b = x;
    x->on_read = NULL;
    ASSERT_OK(s_read_stop(x));
    return 1;
  }
  return 0;
}

static void env_conn(h2rev_listener_t *l, int status) {
  env_t *e = l->data;
  ASSERT_OK(status);
  /* Closing: a spare replacing one closed by env_close stays with the
   * listener (its close ends it). Taking and closing each would have the
   * listener open another, as fast as the loop turns. */
  if (e->closing)
    return;
  ASSERT_LT(e->nacc, MAX_ACCEPTED);
  end_t *x = calloc(1, sizeof(*x));
  ASSERT_NOT_NULL(x);
  x->name = "listener side";
  x->s.data = x;
  x->arg = e;
  x->on_read = pairing_read;
  test_sha_init(&x->rx);
  in_api++;
  int r = h2rev_listener_accept(l, &x->s);
  in_api--;
  if (r != 0) {
    test_sha_final(&x->rx, (unsigned char[32]){0});
    free(x);
    return;
  }
  e->acc[e->nacc++] = x;
  ASSERT_OK(s_read_start(x));
}

/* accept_idle: the listener option (on_connection for idle spares too). */
static void env_open_idle(env_t *e, int accept_idle) {
  memset(e, 0, sizeof(*e));
  nev = 0;
  in_api = 0;
  ASSERT_OK(uv_loop_init(&e->loop));
  h2rev_dialer_options_t dopts = {.base_path = "/base"};
  test_logger(&dopts.log, "dialer");
  dopts.log.level = H2REV_LOG_WARN;
  ASSERT_OK(h2rev_dialer_init(&e->loop, &e->d, &dopts));
  e->d.data = e;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_dialer_listen(&e->d, (struct sockaddr *)&a, NULL));
  struct sockaddr_in b;
  int len = sizeof(b);
  ASSERT_OK(h2rev_dialer_getsockname(&e->d, 0, (struct sockaddr *)&b, &len));
  e->port = ntohs(b.sin_port);
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/base", e->port);
  h2rev_listener_options_t lo = {0};
  lo.url = url;
  lo.id = "conf";
  lo.on_state = env_state;
  lo.accept_idle = accept_idle;
  test_logger(&lo.log, "listener");
  lo.log.level = H2REV_LOG_WARN;
  ASSERT_OK(h2rev_listener_init(&e->loop, &e->l, &lo));
  e->l.data = e;
  in_api++;
  ASSERT_OK(h2rev_listener_start(&e->l, env_conn));
  in_api--;
  run_until(&e->loop, &e->attached, WAIT_MS);
}

static void env_open(env_t *e) {
  env_open_idle(e, 0);
}

static void pair_dialed(h2rev_dial_t *req, int status) {
  pair_t *p = req->data;
  cb_enter(&p->a);
  p->dialed = 1;
  p->dial_status = status;
}

static void hello_wrote(h2rev_write_t *req, int status) {
  pair_t *p = req->data;
  cb_enter(&p->a);
  ASSERT_OK(status);
}

static void end_init(end_t *x, const char *name) {
  memset(x, 0, sizeof(*x));
  x->name = name;
  x->s.data = x;
  test_sha_init(&x->rx);
}

static int paired(void *arg) {
  return ((pair_t *)arg)->b != NULL;
}

/* Dials and finds the listener's end; neither end is reading when it
 * returns, and nothing is in flight either way. */
static void pair_open(env_t *e, pair_t *p) {
  memset(p, 0, sizeof(*p));
  p->env = e;
  end_init(&p->a, "dialer side");
  p->dial.data = p;
  in_api++;
  ASSERT_OK(h2rev_dial(&p->dial, &e->d, "conf", &p->a.s, WAIT_MS, pair_dialed));
  in_api--;
  run_until(&e->loop, &p->dialed, WAIT_MS);
  ASSERT_OK(p->dial_status);
  e->pairing = p;
  p->hello.data = p;
  uv_buf_t b = uv_buf_init("P", 1);
  ASSERT_OK(s_write(&p->hello, &p->a, &b, 1, hello_wrote));
  WAIT(&e->loop, paired(p));
  ASSERT_NOT_NULL(p->b);
  e->pairing = NULL;
  p->b->name = "listener side";
}

static void sha_done(end_t *x) {
  if (x->rx.ctx != NULL) {
    unsigned char d[32];
    test_sha_final(&x->rx, d);
    x->rx.ctx = NULL;
  }
}

static void close_if_open(end_t *x) {
  if (!x->closing)
    s_close(x);
}

/* Closes what is left (pairs given), the listener and the dialer; checks
 * every close callback ran exactly once and the loop ends clean. */
static void env_close(env_t *e, pair_t *pairs, int npairs) {
  e->closing = 1;
  for (int i = 0; i < npairs; i++)
    close_if_open(&pairs[i].a);
  for (int i = 0; i < e->nacc; i++)
    close_if_open(e->acc[i]);
  for (int i = 0; i < npairs; i++)
    WAIT(&e->loop, pairs[i].a.closed >= 1);
  for (int i = 0; i < e->nacc; i++)
    WAIT(&e->loop, e->acc[i]->closed >= 1);
  if (!e->listener_closed)
    env_close_listener(e);
  if (!e->dialer_closed)
    env_close_dialer(e);
  run_for(&e->loop, 20);
  for (int i = 0; i < npairs; i++) {
    ASSERT_EQ(pairs[i].a.closed, 1);
    sha_done(&pairs[i].a);
  }
  for (int i = 0; i < e->nacc; i++) {
    ASSERT_EQ(e->acc[i]->closed, 1);
    sha_done(e->acc[i]);
    free(e->acc[i]);
  }
  loop_drain(&e->loop);
}

static void check_sha(end_t *x, const void *data, size_t len) {
  unsigned char got[32], want[32];
  test_sha_final(&x->rx, got);
  x->rx.ctx = NULL;
  test_sha256(data, len, want);
  ASSERT_EQ(x->nread, len);
  ASSERT_MEM_EQ(got, want, 32);
}

/* ============================================== writes from callbacks */

/* Sends data in pieces, each write issued from the previous write's
 * callback (Node's Writable does exactly this), then shuts down. Two
 * requests take turns, as a new request per write would. */
typedef struct chain {
  end_t *from;
  const char *data;
  size_t len, piece, off;
  h2rev_write_t w[2];
  int turn;
  int writes;
  sreq_t sh;
} chain_t;

static void chain_next(chain_t *c);

static void chain_wrote(h2rev_write_t *req, int status) {
  chain_t *c = req->data;
  cb_enter(c->from);
  ASSERT_OK(status);
  c->writes++;
  chain_next(c);
}

static void chain_next(chain_t *c) {
  if (c->off == c->len) {
    c->sh.end = c->from;
    ASSERT_OK(s_shutdown(&c->sh.sh, c->from, logged_shut));
    return;
  }
  size_t k = H2R_MIN(c->piece, c->len - c->off);
  uv_buf_t b = uv_buf_init((char *)c->data + c->off, (unsigned)k);
  c->off += k;
  h2rev_write_t *w = &c->w[c->turn];
  c->turn ^= 1;
  w->data = c;
  ASSERT_OK(s_write(w, c->from, &b, 1, chain_wrote));
}

static void chained(int from_dialer, size_t len, size_t piece) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  end_t *from = from_dialer ? &p.a : p.b, *to = from_dialer ? p.b : &p.a;
  char *data = malloc(len);
  test_fill_random(data, len, piece);
  ASSERT_OK(s_read_start(to));
  chain_t c = {.from = from, .data = data, .len = len, .piece = piece};
  uint64_t t0 = uv_hrtime();
  chain_next(&c);
  WAIT(&e.loop, to->eof >= 1);
  fprintf(stderr, "%zu bytes in %zu-byte writes chained from callbacks: %.0f ms\n", len, piece,
          (double)(uv_hrtime() - t0) / 1e6);
  ASSERT_EQ(c.writes, (int)((len + piece - 1) / piece));
  ASSERT_EQ(c.sh.calls, 1);
  ASSERT_OK(c.sh.status);
  ASSERT_EQ(to->err, 0);
  check_sha(to, data, len);
  env_close(&e, &p, 1);
  free(data);
}

TEST(write_from_write_cb_5_bytes) {
  chained(1, 1u << 20, 5);
}

TEST(write_from_write_cb_64k) {
  chained(0, 1u << 20, 64u << 10);
}

/* A single write issued from the first write's callback, both small: the
 * pattern that stalled (the second write never completed). */
TEST(write_from_write_cb_once) {
  chained(1, 2, 1);
}

/* ======================================================== write order */

/* 1000 writes queued at once: the bytes arrive in order and the callbacks
 * run in order, each with 0. */
TEST(queued_1000_writes_in_order) {
  enum { N = 1000, LEN = 1024 };
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  char *data = malloc((size_t)N * LEN);
  test_fill_random(data, (size_t)N * LEN, 1000);
  wreq_t *w = calloc(N, sizeof(*w));
  ASSERT_OK(s_read_start(p.b));
  for (int i = 0; i < N; i++) {
    uv_buf_t b = uv_buf_init(data + (size_t)i * LEN, LEN);
    ASSERT_OK(logged_write(&w[i], &p.a, i, &b, 1));
  }
  ASSERT_EQ(nev, 0);
  sreq_t sh = {.end = &p.a};
  ASSERT_OK(s_shutdown(&sh.sh, &p.a, logged_shut));
  WAIT(&e.loop, p.b->eof >= 1);
  WAIT(&e.loop, sh.calls >= 1);
  ASSERT_EQ(nev, N + 1);
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(evlog[i].kind, EV_WRITE);
    ASSERT_EQ(evlog[i].idx, i);
    ASSERT_OK(evlog[i].status);
  }
  ASSERT_EQ(evlog[N].kind, EV_SHUT);
  ASSERT_OK(evlog[N].status);
  check_sha(p.b, data, (size_t)N * LEN);
  env_close(&e, &p, 1);
  free(w);
  free(data);
}

/* ================================================ both ways at once */

#define BOTH_WAYS_LEN   (32u << 20)
#define BOTH_WAYS_PIECE (1u << 20)

TEST(both_ways_32mib_at_once) {
  enum { N = BOTH_WAYS_LEN / BOTH_WAYS_PIECE };
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  char *ab = malloc(BOTH_WAYS_LEN), *ba = malloc(BOTH_WAYS_LEN);
  test_fill_random(ab, BOTH_WAYS_LEN, 1);
  test_fill_random(ba, BOTH_WAYS_LEN, 2);
  static wreq_t wa[N], wb[N];
  ASSERT_OK(s_read_start(&p.a));
  ASSERT_OK(s_read_start(p.b));
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < N; i++) {
    uv_buf_t b1 = uv_buf_init(ab + (size_t)i * BOTH_WAYS_PIECE, BOTH_WAYS_PIECE);
    uv_buf_t b2 = uv_buf_init(ba + (size_t)i * BOTH_WAYS_PIECE, BOTH_WAYS_PIECE);
    ASSERT_OK(logged_write(&wa[i], &p.a, i, &b1, 1));
    ASSERT_OK(logged_write(&wb[i], p.b, i, &b2, 1));
  }
  sreq_t sa = {.end = &p.a}, sb = {.end = p.b};
  ASSERT_OK(s_shutdown(&sa.sh, &p.a, logged_shut));
  ASSERT_OK(s_shutdown(&sb.sh, p.b, logged_shut));
  WAIT(&e.loop, p.a.eof >= 1);
  WAIT(&e.loop, p.b->eof >= 1);
  WAIT(&e.loop, sa.calls >= 1);
  WAIT(&e.loop, sb.calls >= 1);
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  fprintf(stderr, "%u MiB each way at once: %.0f ms (%.0f MiB/s each way)\n", BOTH_WAYS_LEN >> 20,
          ms, (BOTH_WAYS_LEN >> 20) / (ms / 1000));
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(wa[i].done, 1);
    ASSERT_OK(wa[i].status);
    ASSERT_EQ(wb[i].done, 1);
    ASSERT_OK(wb[i].status);
  }
  check_sha(p.b, ab, BOTH_WAYS_LEN);
  check_sha(&p.a, ba, BOTH_WAYS_LEN);
  env_close(&e, &p, 1);
  free(ab);
  free(ba);
}

/* ==================================== read_stop / read_start in read_cb */

typedef struct toggler {
  end_t *x;
  uv_timer_t t;
  int n;
  int restarts_later;
} toggler_t;

static void restart_later(uv_timer_t *t) {
  toggler_t *g = t->data;
  ASSERT_EQ(g->x->reading, 0);
  ASSERT_OK(s_read_start(g->x));
}

/* Stops in every read_cb; restarts at once (inside the callback) one time
 * in two, else from a timer on a later loop turn. */
static int toggling_read(end_t *x, ssize_t n, const uv_buf_t *buf) {
  toggler_t *g = x->arg;
  if (n <= 0)
    return 0;
  x->reads++;
  x->nread += (uint64_t)n;
  test_sha_update(&x->rx, buf->base, (size_t)n);
  ASSERT_OK(s_read_stop(x));
  if (g->n++ % 2 == 0) {
    ASSERT_OK(s_read_start(x));
  } else {
    g->restarts_later++;
    uv_timer_start(&g->t, restart_later, 0, 0);
  }
  return 1;
}

TEST(read_stop_and_start_inside_read_cb) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  size_t len = 4u << 20;
  char *data = malloc(len);
  test_fill_random(data, len, 44);
  toggler_t g = {.x = p.b};
  uv_timer_init(&e.loop, &g.t);
  g.t.data = &g;
  p.b->arg = &g;
  p.b->on_read = toggling_read;
  ASSERT_OK(s_read_start(p.b));
  wreq_t w[4];
  for (int i = 0; i < 4; i++) {
    uv_buf_t b = uv_buf_init(data + i * (len / 4), (unsigned)(len / 4));
    ASSERT_OK(logged_write(&w[i], &p.a, i, &b, 1));
  }
  sreq_t sh = {.end = &p.a};
  ASSERT_OK(s_shutdown(&sh.sh, &p.a, logged_shut));
  WAIT(&e.loop, p.b->eof >= 1);
  ASSERT_GT(g.restarts_later, 0);
  check_sha(p.b, data, len);
  uv_close((uv_handle_t *)&g.t, NULL);
  env_close(&e, &p, 1);
  free(data);
}

/* =========================================== close inside a callback */

static int close_at_first_read(end_t *x, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  ASSERT_GT(n, 0);
  x->reads++;
  s_close_logged(x);
  return 1;
}

static int buffered_at_least(end_t *x, size_t n) {
  return h2rev_stream_buffered(&x->s) >= n;
}

/* The reader closes inside its first read_cb: no read_cb after it, one close
 * callback, and the peer sees the stream reset. Once with the bytes
 * arriving as it reads, once with bytes it had buffered while not reading. */
TEST(close_inside_read_cb) {
  env_t e;
  env_open(&e);
  pair_t pp[2];
  static char data[256 << 10];
  test_fill_random(data, sizeof(data), 5);
  for (int buffered = 0; buffered < 2; buffered++) {
    pair_t *p = &pp[buffered];
    pair_open(&e, p);
    nev = 0;
    ASSERT_OK(s_read_start(&p->a));
    p->b->on_read = close_at_first_read;
    if (!buffered)
      ASSERT_OK(s_read_start(p->b));
    wreq_t w[4];
    for (int i = 0; i < 4; i++) {
      uv_buf_t b = uv_buf_init(data + i * (sizeof(data) / 4), sizeof(data) / 4);
      ASSERT_OK(logged_write(&w[i], &p->a, i, &b, 1));
    }
    if (buffered) {
      WAIT(&e.loop, buffered_at_least(p->b, sizeof(data) / 2));
      ASSERT_OK(s_read_start(p->b));
    }
    WAIT(&e.loop, p->b->closed >= 1);
    ASSERT_EQ(p->b->reads, 1);
    WAIT(&e.loop, p->a.err != 0 || p->a.eof != 0);
    ASSERT_EQ(p->a.err, H2REV_ERESET);
    for (int i = 0; i < 4; i++)
      ASSERT_EQ(w[i].done, 1);
    run_for(&e.loop, 50);
    ASSERT_EQ(p->b->closed, 1);
    ASSERT_EQ(p->b->reads, 1);
  }
  env_close(&e, pp, 2);
}

static void close_in_write_cb(h2rev_write_t *req, int status) {
  logged_wrote(req, status);
  wreq_t *w = H2R_CONTAINER_OF(req, wreq_t, w);
  s_close_logged(w->end);
}

/* Closed inside the first write's callback while two more are queued (the
 * peer does not read, so they cannot finish): 0 for the first, then
 * UV_ECANCELED for the others in order, then the close callback; nothing
 * after it. */
TEST(close_inside_write_cb) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  static char big[1 << 20];
  static uv_buf_t many[64];
  for (int i = 0; i < 64; i++)
    many[i] = uv_buf_init(big, sizeof(big)); /* 64 MiB: far beyond the windows */
  wreq_t w[3];
  uv_buf_t small = uv_buf_init(big, 1024);
  memset(&w[0], 0, sizeof(w[0]));
  w[0].end = &p.a;
  w[0].idx = 0;
  ASSERT_OK(s_write(&w[0].w, &p.a, &small, 1, close_in_write_cb));
  ASSERT_OK(logged_write(&w[1], &p.a, 1, many, 64));
  ASSERT_OK(logged_write(&w[2], &p.a, 2, &small, 1));
  WAIT(&e.loop, p.a.closed >= 1);
  run_for(&e.loop, 50);
  ASSERT_EQ(nev, 4);
  ASSERT_EQ(evlog[0].kind, EV_WRITE);
  ASSERT_EQ(evlog[0].idx, 0);
  ASSERT_OK(evlog[0].status);
  ASSERT_EQ(evlog[1].idx, 1);
  ASSERT_EQ(evlog[1].status, UV_ECANCELED);
  ASSERT_EQ(evlog[2].idx, 2);
  ASSERT_EQ(evlog[2].status, UV_ECANCELED);
  ASSERT_EQ(evlog[3].kind, EV_CLOSE);
  /* The peer: what reached it, then the reset. */
  ASSERT_OK(s_read_start(p.b));
  WAIT(&e.loop, p.b->err != 0 || p.b->eof != 0);
  ASSERT_EQ(p.b->err, H2REV_ERESET);
  env_close(&e, &p, 1);
}

/* ================================================= shutdown and write */

/* As libuv: the second shutdown fails at once, the first completes once,
 * with 0, and the peer reads UV_EOF. */
TEST(shutdown_twice) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  ASSERT_OK(s_read_start(p.b));
  sreq_t s1 = {.end = &p.a}, s2 = {.end = &p.a};
  ASSERT_OK(s_shutdown(&s1.sh, &p.a, logged_shut));
  int r = s_shutdown(&s2.sh, &p.a, logged_shut);
  ASSERT_NE(r, 0);
  ASSERT_LT(r, 0);
  WAIT(&e.loop, s1.calls >= 1);
  WAIT(&e.loop, p.b->eof >= 1);
  run_for(&e.loop, 50);
  ASSERT_EQ(s1.calls, 1);
  ASSERT_OK(s1.status);
  ASSERT_EQ(s2.calls, 0);
  ASSERT_EQ(p.b->nread, 0);
  env_close(&e, &p, 1);
}

/* A write after shutdown fails at once with UV_EPIPE (as uv_write) and its
 * callback never runs; what was written before arrives, then UV_EOF. */
TEST(write_after_shutdown) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  ASSERT_OK(s_read_start(p.b));
  wreq_t w0, w1;
  uv_buf_t b = uv_buf_init("before", 6);
  ASSERT_OK(logged_write(&w0, &p.a, 0, &b, 1));
  sreq_t sh = {.end = &p.a};
  ASSERT_OK(s_shutdown(&sh.sh, &p.a, logged_shut));
  uv_buf_t b2 = uv_buf_init("after", 5);
  ASSERT_EQ(logged_write(&w1, &p.a, 1, &b2, 1), UV_EPIPE);
  WAIT(&e.loop, p.b->eof >= 1);
  WAIT(&e.loop, sh.calls >= 1);
  run_for(&e.loop, 50);
  ASSERT_EQ(nev, 2);
  ASSERT_EQ(evlog[0].kind, EV_WRITE);
  ASSERT_EQ(evlog[0].idx, 0);
  ASSERT_OK(evlog[0].status);
  ASSERT_EQ(evlog[1].kind, EV_SHUT);
  ASSERT_EQ(w1.done, 0);
  check_sha(p.b, "before", 6);
  env_close(&e, &p, 1);
}

/* ============================================ close with pending writes */

static int all_done_or(wreq_t *w, int n) {
  int k = 0;
  for (int i = 0; i < n; i++)
    k += w[i].done;
  return k;
}

/* 16 MiB queued in 1 MiB writes to a peer that does not read: some complete
 * (the windows take them), then close: the rest get UV_ECANCELED in order,
 * then the close callback, and nothing after. */
TEST(close_with_pending_writes) {
  enum { N = 16 };
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  static char mib[1 << 20];
  wreq_t w[N];
  for (int i = 0; i < N; i++) {
    uv_buf_t b = uv_buf_init(mib, sizeof(mib));
    ASSERT_OK(logged_write(&w[i], &p.a, i, &b, 1));
  }
  /* Until the windows are full: a first write completes, then the queue
   * stops moving. */
  WAIT(&e.loop, all_done_or(w, N) > 0);
  run_for(&e.loop, 100);
  int completed = all_done_or(w, N);
  ASSERT_LT(completed, N);
  s_close_logged(&p.a);
  ASSERT_EQ(p.a.closed, 0);
  WAIT(&e.loop, p.a.closed >= 1);
  run_for(&e.loop, 100);
  ASSERT_EQ(nev, N + 1);
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(evlog[i].kind, EV_WRITE);
    ASSERT_EQ(evlog[i].idx, i);
    if (i < completed)
      ASSERT_OK(evlog[i].status);
    else
      ASSERT_EQ(evlog[i].status, UV_ECANCELED);
  }
  ASSERT_EQ(evlog[N].kind, EV_CLOSE);
  env_close(&e, &p, 1);
}

/* ==================================================== zero-length writes */

typedef struct zchain {
  end_t *x;
  h2rev_write_t w[2];
  int n, target;
} zchain_t;

static void zchain_wrote(h2rev_write_t *req, int status) {
  zchain_t *z = req->data;
  cb_enter(z->x);
  ASSERT_OK(status);
  if (++z->n == z->target)
    return;
  uv_buf_t none = uv_buf_init(NULL, 0);
  h2rev_write_t *w = &z->w[z->n % 2];
  w->data = z;
  ASSERT_OK(s_write(w, z->x, &none, 1, zchain_wrote));
}

/* Empty writes complete with 0, in order with the others, and send
 * nothing; a chain of them (each from the previous callback) ends. */
TEST(zero_length_writes) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  ASSERT_OK(s_read_start(p.b));
  const char *parts[] = {"ab", "", "cd", "", "", "ef"};
  wreq_t w[6];
  for (int i = 0; i < 6; i++) {
    uv_buf_t b = uv_buf_init((char *)parts[i], (unsigned)strlen(parts[i]));
    ASSERT_OK(logged_write(&w[i], &p.a, i, &b, 1));
  }
  ASSERT_EQ(nev, 0);
  WAIT(&e.loop, nev >= 6);
  for (int i = 0; i < 6; i++) {
    ASSERT_EQ(evlog[i].idx, i);
    ASSERT_OK(evlog[i].status);
  }
  /* Alone on an idle stream, and chained. */
  zchain_t z = {.x = &p.a, .target = 1000};
  uv_buf_t none = uv_buf_init(NULL, 0);
  z.w[0].data = &z;
  ASSERT_OK(s_write(&z.w[0], &p.a, &none, 1, zchain_wrote));
  ASSERT_EQ(z.n, 0);
  WAIT(&e.loop, z.n >= 1000);
  sreq_t sh = {.end = &p.a};
  ASSERT_OK(s_shutdown(&sh.sh, &p.a, logged_shut));
  WAIT(&e.loop, p.b->eof >= 1);
  check_sha(p.b, "abcdef", 6);
  env_close(&e, &p, 1);
}

/* ================================================== 100 bufs, one write */

TEST(hundred_bufs_in_one_write) {
  enum { N = 100 };
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  ASSERT_OK(s_read_start(p.b));
  static char data[N * 1000];
  test_fill_random(data, sizeof(data), 100);
  uv_buf_t bufs[N];
  size_t off = 0;
  for (int i = 0; i < N; i++) {
    size_t k = (size_t)(i * 37) % 1000 + 1; /* 1..1000 bytes, uneven */
    bufs[i] = uv_buf_init(data + off, (unsigned)k);
    off += k;
  }
  wreq_t w;
  ASSERT_OK(logged_write(&w, &p.a, 0, bufs, N));
  /* The request copied the array: changing ours changes nothing. */
  memset(bufs, 0, sizeof(bufs));
  sreq_t sh = {.end = &p.a};
  ASSERT_OK(s_shutdown(&sh.sh, &p.a, logged_shut));
  WAIT(&e.loop, p.b->eof >= 1);
  WAIT(&e.loop, sh.calls >= 1);
  ASSERT_EQ(nev, 2);
  ASSERT_EQ(w.done, 1);
  ASSERT_OK(w.status);
  check_sha(p.b, data, off);
  env_close(&e, &p, 1);
}

/* ======================================== no callback inside the call */

/* Each call that leads to a callback returns first; the callback comes on
 * a later loop turn (the wrappers check this in every case; here each call
 * is also made where its callback is ready at once). */
TEST(no_callback_inside_the_call) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  /* read_start with bytes already buffered. */
  wreq_t w;
  uv_buf_t b = uv_buf_init("buffered", 8);
  ASSERT_OK(logged_write(&w, &p.a, 0, &b, 1));
  WAIT(&e.loop, buffered_at_least(p.b, 8));
  ASSERT_EQ(w.done, 1);
  ASSERT_OK(s_read_start(p.b));
  ASSERT_EQ(p.b->nread, 0);
  WAIT(&e.loop, p.b->reads >= 1);
  /* An empty write on an idle stream is complete at once, yet called later. */
  wreq_t z;
  uv_buf_t none = uv_buf_init(NULL, 0);
  ASSERT_OK(logged_write(&z, &p.a, 1, &none, 1));
  ASSERT_EQ(z.done, 0);
  WAIT(&e.loop, z.done >= 1);
  /* Shutdown with nothing queued. */
  sreq_t sh = {.end = &p.a};
  ASSERT_OK(s_shutdown(&sh.sh, &p.a, logged_shut));
  ASSERT_EQ(sh.calls, 0);
  WAIT(&e.loop, sh.calls >= 1);
  WAIT(&e.loop, p.b->eof >= 1);
  /* Close: its callback later, and only once. */
  s_close(&p.a);
  ASSERT_EQ(p.a.closed, 0);
  s_close(p.b);
  ASSERT_EQ(p.b->closed, 0);
  WAIT(&e.loop, p.a.closed >= 1);
  WAIT(&e.loop, p.b->closed >= 1);
  env_close(&e, &p, 1);
}

/* ==================================================== one close callback */

/* Closing twice runs one close callback; a stream whose peer reset it is
 * closed the same way; nothing runs after the close callback. */
TEST(exactly_one_close_callback) {
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  ASSERT_OK(s_read_start(&p.a));
  s_close(p.b);
  in_api++;
  h2rev_stream_close(&p.b->s, end_closed); /* again: ignored */
  in_api--;
  ASSERT_NE(h2rev_stream_is_closing(&p.b->s), 0);
  WAIT(&e.loop, p.b->closed >= 1);
  /* The dialer side sees the reset, then closes, twice too. */
  WAIT(&e.loop, p.a.err != 0);
  ASSERT_EQ(p.a.err, H2REV_ERESET);
  /* Calls on a stream that has ended are errors, not callbacks. */
  ASSERT_EQ(s_read_start(p.b), UV_EBADF);
  s_close(&p.a);
  in_api++;
  h2rev_stream_close(&p.a.s, end_closed);
  in_api--;
  WAIT(&e.loop, p.a.closed >= 1);
  run_for(&e.loop, 100);
  ASSERT_EQ(p.a.closed, 1);
  ASSERT_EQ(p.b->closed, 1);
  ASSERT_NE(h2rev_stream_is_closing(&p.a.s), 0);
  env_close(&e, &p, 1);
}

/* ====================================== peer reset while writes queued */

/* 16 MiB queued to a peer that does not read; the peer closes (resets):
 * the writes that had not reached the socket fail, in order, with
 * H2REV_ERESET (not UV_ECANCELED: the writer did not close), the reader sees
 * H2REV_ERESET, and the writer's own close then runs one callback. */
TEST(peer_reset_with_writes_queued) {
  enum { N = 16 };
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  static char mib[1 << 20];
  wreq_t w[N];
  ASSERT_OK(s_read_start(&p.a));
  for (int i = 0; i < N; i++) {
    uv_buf_t b = uv_buf_init(mib, sizeof(mib));
    ASSERT_OK(logged_write(&w[i], &p.a, i, &b, 1));
  }
  WAIT(&e.loop, all_done_or(w, N) > 0);
  run_for(&e.loop, 50);
  int completed = all_done_or(w, N);
  ASSERT_LT(completed, N);
  s_close(p.b);
  WAIT(&e.loop, nev >= N);
  WAIT(&e.loop, p.a.err != 0);
  ASSERT_EQ(p.a.err, H2REV_ERESET);
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(evlog[i].idx, i);
    if (i < completed)
      ASSERT_OK(evlog[i].status);
    else
      ASSERT_EQ(evlog[i].status, H2REV_ERESET);
  }
  /* A write now fails too, through its callback or at once. */
  wreq_t late;
  uv_buf_t b = uv_buf_init(mib, 10);
  int r = logged_write(&late, &p.a, N, &b, 1);
  if (r == 0) {
    WAIT(&e.loop, late.done >= 1);
    ASSERT_LT(late.status, 0);
  }
  s_close_logged(&p.a);
  WAIT(&e.loop, p.a.closed >= 1);
  run_for(&e.loop, 50);
  ASSERT_EQ(evlog[nev - 1].kind, EV_CLOSE);
  env_close(&e, &p, 1);
}

/* ============================================ the listener's own rules */

/* on_state never runs inside h2rev_listener_start or _close (the wrappers
 * check it), reports CONNECTING then ATTACHED, and STOPPED last, before the
 * close callback; nothing after it. */
TEST(listener_state_callbacks_deferred) {
  env_t e;
  env_open(&e);
  ASSERT_GE(e.nstates, 2);
  ASSERT_EQ(e.states[0], H2REV_LISTENER_CONNECTING);
  ASSERT_EQ(e.states[1], H2REV_LISTENER_ATTACHED);
  int before = e.nstates;
  env_close_listener(&e);
  ASSERT_EQ(e.nstates, before + 1);
  ASSERT_EQ(e.states[before], H2REV_LISTENER_STOPPED);
  run_for(&e.loop, 50);
  ASSERT_EQ(e.nstates, before + 1);
  env_close(&e, NULL, 0);
}

/* An accepted stream is open, its owner not reading, writes of its own
 * queued to a peer that does not read: h2rev_listener_close completes all
 * the same. The stream then reports H2REV_ECLOSED: its writes fail, a
 * read_start gets the error, and its close runs one callback. */
TEST(listener_close_with_accepted_stream_open) {
  enum { N = 16 };
  env_t e;
  env_open(&e);
  pair_t p;
  pair_open(&e, &p);
  static char mib[1 << 20];
  wreq_t w[N];
  for (int i = 0; i < N; i++) {
    uv_buf_t b = uv_buf_init(mib, sizeof(mib));
    ASSERT_OK(logged_write(&w[i], p.b, i, &b, 1));
  }
  WAIT(&e.loop, all_done_or(w, N) > 0);
  int completed = all_done_or(w, N);
  ASSERT_LT(completed, N);
  uint64_t t0 = uv_hrtime();
  env_close_listener(&e);
  fprintf(stderr, "listener closed in %.1f ms\n", (double)(uv_hrtime() - t0) / 1e6);
  /* The writes that did not make it fail; the reader learns why. */
  WAIT(&e.loop, all_done_or(w, N) == N);
  for (int i = completed; i < N; i++)
    ASSERT_LT(w[i].status, 0);
  ASSERT_OK(s_read_start(p.b));
  ASSERT_EQ(p.b->err, 0);
  WAIT(&e.loop, p.b->err != 0);
  ASSERT_EQ(p.b->err, H2REV_ECLOSED);
  /* A write now fails too: at once or through its callback. */
  wreq_t late;
  uv_buf_t b = uv_buf_init(mib, 10);
  if (logged_write(&late, p.b, N, &b, 1) == 0) {
    WAIT(&e.loop, late.done);
    ASSERT_LT(late.status, 0);
  }
  /* The dialer's side sees its stream end. */
  ASSERT_OK(s_read_start(&p.a));
  WAIT(&e.loop, p.a.err != 0 || p.a.eof != 0);
  ASSERT_NE(p.a.err, 0);
  s_close(p.b);
  WAIT(&e.loop, p.b->closed);
  run_for(&e.loop, 50);
  ASSERT_EQ(p.b->closed, 1);
  env_close(&e, &p, 1);
}

static h2rev_dialer_stats_t dstats(env_t *e) {
  h2rev_dialer_stats_t st;
  h2rev_dialer_stats(&e->d, &st);
  return st;
}

/* By default idle spares stay inside the library: on_connection runs once
 * a dialed stream carries its first byte, for that stream only. */
TEST(idle_spares_not_handed_out) {
  env_t e;
  env_open(&e);
  WAIT(&e.loop, dstats(&e).spares >= 2);
  run_for(&e.loop, 100);
  ASSERT_EQ(e.nacc, 0);
  pair_t p;
  pair_open(&e, &p);
  ASSERT_EQ(e.nacc, 1);
  /* The spare it used is replaced, and the replacement is not handed out. */
  WAIT(&e.loop, dstats(&e).spares >= 2);
  run_for(&e.loop, 100);
  ASSERT_EQ(e.nacc, 1);
  env_close(&e, &p, 1);
}

/* accept_idle: every data stream is handed out at once, so a server that
 * speaks first (an SSH or SMTP greeting) writes into a spare before any
 * dial, and the dialer's client reads the greeting as soon as it dials. */
static int greeting_written;

static void greeting_wrote(h2rev_write_t *req, int status) {
  (void)req;
  ASSERT_OK(status);
  greeting_written++;
}

TEST(accept_idle_server_speaks_first) {
  env_t e;
  env_open_idle(&e, 1);
  WAIT(&e.loop, e.nacc >= 2);
  ASSERT_EQ(dstats(&e).dials_ok, 0);
  static const char greeting[] = "220 greetings\r\n";
  static h2rev_write_t gw[MAX_ACCEPTED];
  greeting_written = 0;
  int n = e.nacc;
  for (int i = 0; i < n; i++) {
    uv_buf_t b = uv_buf_init((char *)greeting, sizeof(greeting) - 1);
    ASSERT_OK(s_read_stop(e.acc[i])); /* this test pairs by the greeting */
    e.acc[i]->on_read = NULL;
    ASSERT_OK(s_write(&gw[i], e.acc[i], &b, 1, greeting_wrote));
  }
  WAIT(&e.loop, greeting_written == n);
  pair_t p;
  memset(&p, 0, sizeof(p));
  p.env = &e;
  end_init(&p.a, "dialer side");
  p.dial.data = &p;
  ASSERT_OK(h2rev_dial(&p.dial, &e.d, "conf", &p.a.s, WAIT_MS, pair_dialed));
  WAIT(&e.loop, p.dialed);
  ASSERT_OK(p.dial_status);
  ASSERT_OK(s_read_start(&p.a));
  WAIT(&e.loop, p.a.nread >= sizeof(greeting) - 1);
  ASSERT_EQ(p.a.nread, sizeof(greeting) - 1);
  ASSERT_MEM_EQ(p.a.rbuf, greeting, sizeof(greeting) - 1);
  env_close(&e, &p, 1);
}

/* ================================= h2rev_http_write from its callbacks */

/* A handler that writes its body in pieces, each write issued from the
 * previous one's callback, and ends the response from the last: over
 * HTTP/1.1 on a reverse connection (http1.c on h2rev_stream_write) and over
 * HTTP/2 (server.c on h2rev_stream_write). */
#define HBODY  (256u << 10)
#define HPIECE 1000u

static char hbody[HBODY];

typedef struct hchain {
  h2rev_http_req_t *req;
  h2rev_http_write_t w[2];
  int turn;
  size_t off;
} hchain_t;

static void hchain_next(hchain_t *h);

static void hchain_wrote(h2rev_http_write_t *w, int status) {
  ASSERT_EQ(in_api, 0);
  ASSERT_OK(status);
  hchain_next(w->data);
}

static void hchain_next(hchain_t *h) {
  if (h->off == HBODY) {
    in_api++;
    ASSERT_OK(h2rev_http_end(h->req));
    in_api--;
    return;
  }
  size_t k = H2R_MIN(HPIECE, HBODY - h->off);
  uv_buf_t b = uv_buf_init(hbody + h->off, (unsigned)k);
  h->off += k;
  h2rev_http_write_t *w = &h->w[h->turn];
  h->turn ^= 1;
  w->data = h;
  in_api++;
  ASSERT_OK(h2rev_http_write(w, h->req, &b, 1, hchain_wrote));
  in_api--;
}

static int hchain_finished;

static void hchain_done(h2rev_http_req_t *req, int status) {
  ASSERT_OK(status);
  hchain_finished++;
  free(req->data);
}

static void hchain_handler(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  hchain_t *h = calloc(1, sizeof(*h));
  ASSERT_NOT_NULL(h);
  h->req = req;
  req->data = h;
  h2rev_http_on_done(req, hchain_done);
  ASSERT_OK(h2rev_http_respond(req, 200, NULL, 0, HBODY));
  hchain_next(h);
}

static void served_done(h2rev_stream_t *s) {
  end_t *x = H2R_CONTAINER_OF(s, end_t, s);
  x->closed++;
}

static int srv_closed;

static void on_srv_closed(h2rev_http_server_t *s) {
  (void)s;
  srv_closed = 1;
}

/* The body after the head, once all of it is there. */
static const char *http_body(end_t *x, const char *rx, size_t n) {
  (void)x;
  const char *p = memmem(rx, n, "\r\n\r\n", 4);
  return p != NULL && (size_t)(rx + n - (p + 4)) >= HBODY ? p + 4 : NULL;
}

static int collect(end_t *x, ssize_t n, const uv_buf_t *buf) {
  char *rx = x->arg;
  if (n > 0) {
    ASSERT_LE(x->nread + (size_t)n, HBODY + 4096);
    memcpy(rx + x->nread, buf->base, (size_t)n);
  }
  return 0;
}

TEST(http_write_from_write_cb) {
  test_fill_random(hbody, sizeof(hbody), 77);
  env_t e;
  env_open(&e);
  h2rev_http_server_t srv;
  ASSERT_OK(h2rev_http_server_init(&e.loop, &srv, NULL));
  ASSERT_OK(h2rev_http_server_route(&srv, "/chain", hchain_handler, NULL));
  hchain_finished = 0;
  srv_closed = 0;

  /* HTTP/1.1 on a reverse connection. */
  pair_t p;
  pair_open(&e, &p);
  p.b->closing = 1; /* the server's now */
  ASSERT_OK(h2rev_http_server_serve_stream(&srv, &p.b->s, served_done));
  char *rx = malloc(HBODY + 4096);
  p.a.arg = rx;
  p.a.on_read = collect;
  ASSERT_OK(s_read_start(&p.a));
  static char get[] = "GET /chain HTTP/1.1\r\nHost: x\r\n\r\n";
  wreq_t w;
  uv_buf_t b = uv_buf_init(get, sizeof(get) - 1);
  ASSERT_OK(logged_write(&w, &p.a, 0, &b, 1));
  WAIT(&e.loop, http_body(&p.a, rx, p.a.nread) != NULL);
  ASSERT_MEM_EQ(http_body(&p.a, rx, p.a.nread), hbody, HBODY);
  ASSERT_EQ(strncmp(rx, "HTTP/1.1 200", 12), 0);
  WAIT(&e.loop, hchain_finished == 1);

  /* HTTP/2 (prior knowledge) on a socket. */
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_OK(h2rev_http_server_listen(&srv, (struct sockaddr *)&a, NULL));
  struct sockaddr_in sa;
  int len = sizeof(sa);
  ASSERT_OK(h2rev_http_server_getsockname(&srv, 0, (struct sockaddr *)&sa, &len));
  tclient_t cl = {0};
  tclient_connect(&cl, &e.loop, ntohs(sa.sin_port), NULL, NULL, NULL);
  WAIT(&e.loop, cl.opened != 0);
  ASSERT_EQ(cl.opened, 1);
  end_t h2;
  end_init(&h2, "HTTP/2 client");
  tclient_stream(&cl, &h2.s, "/chain");
  sreq_t sh = {.end = &h2};
  ASSERT_OK(s_shutdown(&sh.sh, &h2, logged_shut));
  ASSERT_OK(s_read_start(&h2));
  WAIT(&e.loop, h2.eof || h2.err);
  ASSERT_EQ(h2.err, 0);
  check_sha(&h2, hbody, HBODY);
  WAIT(&e.loop, hchain_finished == 2);
  s_close(&h2);
  WAIT(&e.loop, h2.closed);
  h2r_session_close(&cl.s, 0);
  WAIT(&e.loop, cl.closed);

  s_close(&p.a);
  WAIT(&e.loop, p.b->closed);
  h2rev_http_server_close(&srv, on_srv_closed);
  WAIT(&e.loop, srv_closed);
  free(rx);
  env_close(&e, &p, 1);
}
