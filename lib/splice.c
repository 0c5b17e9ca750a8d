/*
 * h2rev_stream_splice_tcp, h2rev_stream_splice_tcp_open: a virtual stream
 * spliced to a TCP connection, for any TCP service behind a reverse
 * connection (SSH, databases) and for raw TCP ports in front of a dialer.
 *
 * The same shape as bridge.c: back-pressure by bounds on the bytes in
 * flight each way (the stream's bytes return their HTTP/2 window only once
 * they are on the TCP socket; the socket is not read while more than
 * SPLICE_HIGH bytes wait for the stream's window), half-close passed both
 * ways, and an abort of either side aborts the other: a TCP error resets
 * the stream, a stream error closes the socket with RST.
 */
#include "internal.h"

#include <stdlib.h>

/* Bytes read at once from either side. */
#define SPLICE_CHUNK (64 * 1024)
/* Bytes queued towards one side above which the other is not read, and
 * below which reading resumes: the splice's memory is bounded by about
 * twice SPLICE_HIGH + SPLICE_CHUNK, whatever either peer does. */
#define SPLICE_HIGH (256 * 1024)
#define SPLICE_LOW  (64 * 1024)
/* Free chunks kept for the next reads, per thread (a loop, and so every
 * splice on it, runs on one): a transfer that malloc'd and freed a chunk
 * per read cost five times the CPU, as glibc gives the top of its heap
 * back to the kernel on each free (128 KiB trim threshold) and the next
 * malloc faults zeroed pages in again (1 GiB through a splice: 50 MiB/s,
 * 500 MiB/s with the pool). Bounded for the process, not per connection,
 * so idle splices hold none. */
#define SPLICE_POOL_MAX 32
/* Defaults of h2rev_splice_options_t. */
#define SPLICE_CONNECT_TIMEOUT_MS 10000
#define SPLICE_KEEPALIVE_S        60

typedef struct splice splice_t;

/* One chunk on its way, to the socket or to the stream. */
typedef struct swrite {
  union {
    uv_write_t tw;
    h2rev_write_t sw;
  } w;
  splice_t *sp;
  struct swrite *next; /* in the pool */
  size_t len;
  char data[];
} swrite_t;

static _Thread_local struct {
  swrite_t *head;
  unsigned n;
} pool;

enum splice_state { SP_CONNECTING, SP_OPEN, SP_CLOSING };

struct splice {
  h2rev_stream_t *s;
  uv_tcp_t *t;
  h2rev_splice_cb done;
  enum splice_state state;
  int status; /* the first error, or 0 */
  unsigned keepalive_s;
  uv_connect_t conn;
  uv_timer_t timer; /* connect timeout; initialised by the connecting form only */
  bool has_timer;
  h2rev_shutdown_t s_sh;
  uv_shutdown_t t_sh;
  size_t to_tcp, to_stream; /* bytes queued each way, callbacks not run yet */
  bool s_reading, t_reading;
  bool s_eof, t_eof;             /* each side's reader saw its end */
  bool s_shut_done, t_shut_done; /* our half-close of each side has completed */
  int pending;                   /* close callbacks still to come */
};

/* Every chunk has SPLICE_CHUNK bytes, so that any may be reused. */
static swrite_t *sw_new(splice_t *sp) {
  swrite_t *w = pool.head;
  if (w != NULL) {
    pool.head = w->next;
    pool.n--;
  } else if ((w = malloc(sizeof(*w) + SPLICE_CHUNK)) == NULL) {
    return NULL;
  }
  w->sp = sp;
  w->len = SPLICE_CHUNK;
  return w;
}

static void sw_free(swrite_t *w) {
  if (w == NULL)
    return;
  if (pool.n >= SPLICE_POOL_MAX) {
    free(w);
    return;
  }
  w->next = pool.head;
  pool.head = w;
  pool.n++;
}

static swrite_t *sw_of(const uv_buf_t *buf) {
  return buf != NULL && buf->base != NULL ? (swrite_t *)(buf->base - offsetof(swrite_t, data))
                                          : NULL;
}

static void sp_release(splice_t *sp) {
  if (--sp->pending > 0)
    return;
  h2rev_stream_t *s = sp->s;
  uv_tcp_t *t = sp->t;
  h2rev_splice_cb done = sp->done;
  int status = sp->status;
  free(sp);
  if (done != NULL)
    done(s, t, status);
}

static void handle_closed(uv_handle_t *h) {
  sp_release(h->data);
}

static void s_closed(h2rev_stream_t *s) {
  sp_release(s->data);
}

/* The one way out. err 0: both directions ended, nothing is reset. A TCP
 * side failure (err from the socket or the connect) resets the stream; a
 * stream side failure closes the socket with RST, so that the TCP peer sees
 * an abort as the HTTP/2 peer does. */
static void sp_close(splice_t *sp, int err, bool tcp_reset) {
  if (sp->state == SP_CLOSING)
    return;
  sp->state = SP_CLOSING;
  sp->status = err;
  sp->pending = 2;
  h2rev_stream_close(sp->s, s_closed);
  /* A shutdown in flight makes libuv refuse the reset: a plain close then. */
  if (!tcp_reset || uv_tcp_close_reset(sp->t, handle_closed) != 0)
    uv_close((uv_handle_t *)sp->t, handle_closed);
  if (sp->has_timer) {
    sp->pending++;
    uv_close((uv_handle_t *)&sp->timer, handle_closed);
  }
}

static void sp_check(splice_t *sp) {
  if (sp->s_eof && sp->t_shut_done && sp->t_eof && sp->s_shut_done)
    sp_close(sp, 0, false);
}

/* ------------------------------------------------ stream -> TCP */

static void s_alloc(h2rev_stream_t *s, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  swrite_t *w = sw_new(s->data);
  *buf = w != NULL ? uv_buf_init(w->data, (unsigned)w->len) : uv_buf_init(NULL, 0);
}

static void s_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void s_resume(splice_t *sp) {
  if (!sp->s_reading && !sp->s_eof && sp->state == SP_OPEN && sp->to_tcp <= SPLICE_LOW) {
    if (h2rev_stream_read_start(sp->s, s_alloc, s_read) == 0)
      sp->s_reading = true;
  }
}

static void t_wrote(uv_write_t *req, int status) {
  swrite_t *w = H2R_CONTAINER_OF(req, swrite_t, w.tw);
  splice_t *sp = w->sp;
  size_t n = w->len;
  sp->to_tcp -= n;
  sw_free(w);
  if (sp->state == SP_CLOSING)
    return;
  if (status != 0) { /* the TCP peer went away (UV_EPIPE, UV_ECONNRESET) */
    sp_close(sp, status, false);
    return;
  }
  /* On the socket: the HTTP/2 sender may have these bytes' window. */
  h2r_strm_consume(sp->s, n);
  s_resume(sp);
}

static void t_shut(uv_shutdown_t *req, int status) {
  splice_t *sp = req->data;
  if (sp->state == SP_CLOSING)
    return;
  if (status != 0) {
    sp_close(sp, status, false);
    return;
  }
  sp->t_shut_done = true;
  sp_check(sp);
}

static void s_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  splice_t *sp = s->data;
  swrite_t *w = sw_of(buf);
  if (n <= 0) {
    sw_free(w);
    if (n == 0)
      return;
    sp->s_reading = false;
    if (n != UV_EOF) { /* reset, or the connection is gone */
      sp_close(sp, (int)n, true);
      return;
    }
    sp->s_eof = true;
    /* libuv sends the FIN after the writes queued before it. */
    sp->t_sh.data = sp;
    int r = uv_shutdown(&sp->t_sh, (uv_stream_t *)sp->t, t_shut);
    if (r != 0)
      sp_close(sp, r, false);
    return;
  }
  if (w == NULL) {
    sp_close(sp, UV_ENOMEM, true); /* the bytes are lost, so is the stream */
    return;
  }
  w->len = (size_t)n;
  uv_buf_t out = uv_buf_init(w->data, (unsigned)n);
  int r = uv_write(&w->w.tw, (uv_stream_t *)sp->t, &out, 1, t_wrote);
  if (r != 0) {
    sw_free(w);
    sp_close(sp, r, false);
    return;
  }
  sp->to_tcp += (size_t)n;
  if (sp->to_tcp > SPLICE_HIGH) {
    h2rev_stream_read_stop(s);
    sp->s_reading = false;
  }
}

/* ------------------------------------------------ TCP -> stream */

static void t_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  swrite_t *w = sw_new(h->data);
  *buf = w != NULL ? uv_buf_init(w->data, (unsigned)w->len) : uv_buf_init(NULL, 0);
}

static void t_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf);

static void t_resume(splice_t *sp) {
  if (!sp->t_reading && !sp->t_eof && sp->state == SP_OPEN && sp->to_stream <= SPLICE_LOW) {
    if (uv_read_start((uv_stream_t *)sp->t, t_alloc, t_read) == 0)
      sp->t_reading = true;
  }
}

static void s_wrote(h2rev_write_t *req, int status) {
  swrite_t *w = H2R_CONTAINER_OF(req, swrite_t, w.sw);
  splice_t *sp = w->sp;
  sp->to_stream -= w->len;
  sw_free(w);
  if (sp->state == SP_CLOSING)
    return;
  if (status != 0) {
    sp_close(sp, status, true);
    return;
  }
  t_resume(sp);
}

static void s_shut(h2rev_shutdown_t *req, int status) {
  splice_t *sp = req->data;
  if (sp->state == SP_CLOSING)
    return;
  if (status != 0) {
    sp_close(sp, status, true);
    return;
  }
  sp->s_shut_done = true;
  sp_check(sp);
}

static void t_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf) {
  splice_t *sp = h->data;
  swrite_t *w = sw_of(buf);
  if (n <= 0) {
    sw_free(w);
    if (n == 0)
      return;
    uv_read_stop(h);
    sp->t_reading = false;
    if (n != UV_EOF) { /* UV_ECONNRESET: the TCP peer aborted */
      sp_close(sp, (int)n, false);
      return;
    }
    sp->t_eof = true;
    sp->s_sh.data = sp;
    int r = h2rev_stream_shutdown(&sp->s_sh, sp->s, s_shut);
    if (r != 0)
      sp_close(sp, r, true);
    return;
  }
  if (w == NULL) {
    sp_close(sp, UV_ENOMEM, false);
    return;
  }
  w->len = (size_t)n;
  uv_buf_t out = uv_buf_init(w->data, (unsigned)n);
  int r = h2rev_stream_write(&w->w.sw, sp->s, &out, 1, s_wrote);
  if (r != 0) {
    sw_free(w);
    sp_close(sp, r, true);
    return;
  }
  sp->to_stream += (size_t)n;
  if (sp->to_stream > SPLICE_HIGH) {
    uv_read_stop(h);
    sp->t_reading = false;
  }
}

/* ------------------------------------------------------------ API */

/* Both sides open: the bytes flow. */
static void sp_start(splice_t *sp) {
  sp->state = SP_OPEN;
  /* Interactive protocols (SSH keystrokes, request/response) pay no
   * Nagle delay; bulk transfers fill their segments anyway. Keep-alive:
   * a peer that vanished without a FIN is noticed, and NATs between us
   * and it keep the mapping. Neither failing is a reason to stop. */
  uv_tcp_nodelay(sp->t, 1);
  uv_tcp_keepalive(sp->t, 1, sp->keepalive_s);
  h2r_strm_manual_consume(sp->s);
  s_resume(sp);
  t_resume(sp);
  if (!sp->s_reading || !sp->t_reading)
    sp_close(sp, UV_EBADF, true);
}

static void connected(uv_connect_t *req, int status) {
  splice_t *sp = req->data;
  if (sp->state == SP_CLOSING)
    return; /* cancelled by the close (timeout, or the stream's end) */
  if (status != 0) {
    sp_close(sp, status, false);
    return;
  }
  uv_timer_stop(&sp->timer);
  sp_start(sp);
}

static void connect_timeout(uv_timer_t *t) {
  sp_close(t->data, UV_ETIMEDOUT, false);
}

static splice_t *sp_new(h2rev_stream_t *stream, uv_tcp_t *tcp, const h2rev_splice_options_t *opts,
                        h2rev_splice_cb done) {
  splice_t *sp = calloc(1, sizeof(*sp));
  if (sp == NULL)
    return NULL;
  sp->s = stream;
  sp->t = tcp;
  sp->done = done;
  sp->keepalive_s = opts != NULL && opts->keepalive_s != 0 ? opts->keepalive_s : SPLICE_KEEPALIVE_S;
  return sp;
}

int h2rev_stream_splice_tcp(h2rev_stream_t *stream, uv_tcp_t *tcp, const struct sockaddr *addr,
                            const h2rev_splice_options_t *opts, h2rev_splice_cb done) {
  if (stream == NULL || tcp == NULL || addr == NULL)
    return UV_EINVAL;
  if (h2rev_stream_is_closing(stream))
    return UV_EBADF;
  splice_t *sp = sp_new(stream, tcp, opts, done);
  if (sp == NULL)
    return UV_ENOMEM;
  int r = uv_tcp_init(stream->loop, tcp);
  if (r != 0) {
    free(sp);
    return r;
  }
  tcp->data = sp;
  stream->data = sp;
  sp->state = SP_CONNECTING;
  uv_timer_init(stream->loop, &sp->timer);
  sp->timer.data = sp;
  sp->has_timer = true;
  unsigned ms = opts != NULL && opts->connect_timeout_ms != 0 ? opts->connect_timeout_ms
                                                              : SPLICE_CONNECT_TIMEOUT_MS;
  uv_timer_start(&sp->timer, connect_timeout, ms, 0);
  sp->conn.data = sp;
  r = uv_tcp_connect(&sp->conn, tcp, addr, connected);
  /* From here on done always runs: a connect that fails at once is
   * reported like one that fails later, on a later loop turn (the closes). */
  if (r != 0)
    sp_close(sp, r, false);
  return 0;
}

int h2rev_stream_splice_tcp_open(h2rev_stream_t *stream, uv_tcp_t *tcp,
                                 const h2rev_splice_options_t *opts, h2rev_splice_cb done) {
  if (stream == NULL || tcp == NULL)
    return UV_EINVAL;
  if (h2rev_stream_is_closing(stream) || uv_is_closing((uv_handle_t *)tcp))
    return UV_EBADF;
  splice_t *sp = sp_new(stream, tcp, opts, done);
  if (sp == NULL)
    return UV_ENOMEM;
  tcp->data = sp;
  stream->data = sp;
  sp_start(sp);
  return 0;
}
