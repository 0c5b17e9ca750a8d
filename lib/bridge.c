/*
 * h2rev_stream_bridge: a virtual stream spliced to one end of a socketpair,
 * the other end handed out as a uv_pipe_t, for code written against
 * libuv's own stream types.
 *
 * Back-pressure is by bounds on the bytes in flight each way: the stream's
 * bytes return their HTTP/2 window only once they are on the socketpair
 * (h2r_strm_consume from the pipe write's callback), so a reader of the
 * pipe that stops pauses the sender at the stream's window; and the pipe
 * is not read while more than BRIDGE_HIGH bytes wait for the stream's
 * window, so a peer that stops reading pauses the writer of the pipe at the
 * socketpair's buffer.
 */
#include "internal.h"

#include <stdlib.h>
#include <unistd.h>

/* Bytes read at once from either side. */
#define BRIDGE_CHUNK (64 * 1024)
/* Bytes queued towards one side above which the other is not read, and
 * below which reading resumes. */
#define BRIDGE_HIGH (256 * 1024)
#define BRIDGE_LOW  (64 * 1024)

typedef struct bridge bridge_t;

/* One chunk on its way, to the pipe or to the stream. */
typedef struct bwrite {
  union {
    uv_write_t pw;
    h2rev_write_t sw;
  } w;
  bridge_t *b;
  size_t len;
  char data[];
} bwrite_t;

struct bridge {
  h2rev_stream_t *s;
  uv_pipe_t p; /* our end of the socketpair */
  h2rev_close_cb done;
  h2rev_shutdown_t s_sh;
  uv_shutdown_t p_sh;
  size_t to_pipe, to_stream; /* bytes queued each way, callbacks not run yet */
  bool s_reading, p_reading;
  bool s_eof, p_eof;             /* each side's reader saw its end */
  bool s_shut_done, p_shut_done; /* our half-close of each side has completed */
  bool closing;
  int pending; /* close callbacks still to come */
};

static bwrite_t *bw_new(bridge_t *b, size_t size) {
  if (size == 0 || size > BRIDGE_CHUNK)
    size = BRIDGE_CHUNK;
  bwrite_t *w = malloc(sizeof(*w) + size);
  if (w != NULL) {
    w->b = b;
    w->len = size;
  }
  return w;
}

static bwrite_t *bw_of(const uv_buf_t *buf) {
  return buf != NULL && buf->base != NULL ? (bwrite_t *)(buf->base - offsetof(bwrite_t, data))
                                          : NULL;
}

static void b_release(bridge_t *b) {
  if (--b->pending > 0)
    return;
  h2rev_stream_t *s = b->s;
  h2rev_close_cb done = b->done;
  free(b);
  if (done != NULL)
    done(s);
}

static void free_data(uv_handle_t *h) {
  free(h->data);
}

static void p_closed(uv_handle_t *h) {
  b_release(h->data);
}

static void s_closed(h2rev_stream_t *s) {
  b_release(s->data);
}

/* Closes both sides: gracefully when both directions have ended (the
 * stream is closed both ways, nothing is reset), else as an abort (the
 * stream is reset, the pipe's other end sees its end). */
static void b_close(bridge_t *b) {
  if (b->closing)
    return;
  b->closing = true;
  b->pending = 2;
  h2rev_stream_close(b->s, s_closed);
  uv_close((uv_handle_t *)&b->p, p_closed);
}

static void b_check(bridge_t *b) {
  if (b->s_eof && b->p_shut_done && b->p_eof && b->s_shut_done)
    b_close(b);
}

/* ------------------------------------------------ stream -> pipe */

static void s_alloc(h2rev_stream_t *s, size_t suggested, uv_buf_t *buf) {
  bwrite_t *w = bw_new(s->data, suggested);
  *buf = w != NULL ? uv_buf_init(w->data, (unsigned)w->len) : uv_buf_init(NULL, 0);
}

static void s_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void s_resume(bridge_t *b) {
  if (!b->s_reading && !b->s_eof && !b->closing && b->to_pipe <= BRIDGE_LOW) {
    if (h2rev_stream_read_start(b->s, s_alloc, s_read) == 0)
      b->s_reading = true;
  }
}

static void p_wrote(uv_write_t *req, int status) {
  bwrite_t *w = H2R_CONTAINER_OF(req, bwrite_t, w.pw);
  bridge_t *b = w->b;
  size_t n = w->len;
  b->to_pipe -= n;
  free(w);
  if (b->closing)
    return;
  if (status != 0) { /* the pipe's other end is closed (UV_EPIPE) */
    b_close(b);
    return;
  }
  /* On the socketpair: the HTTP/2 sender may have these bytes' window. */
  h2r_strm_consume(b->s, n);
  s_resume(b);
}

static void p_shut(uv_shutdown_t *req, int status) {
  bridge_t *b = req->data;
  if (b->closing)
    return;
  if (status != 0) {
    b_close(b);
    return;
  }
  b->p_shut_done = true;
  b_check(b);
}

static void s_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  bridge_t *b = s->data;
  bwrite_t *w = bw_of(buf);
  if (n <= 0) {
    free(w);
    if (n == 0)
      return;
    b->s_reading = false;
    if (n != UV_EOF) { /* reset, or the connection is gone */
      b_close(b);
      return;
    }
    b->s_eof = true;
    /* libuv sends the FIN after the writes queued before it. */
    b->p_sh.data = b;
    if (uv_shutdown(&b->p_sh, (uv_stream_t *)&b->p, p_shut) != 0)
      b_close(b);
    return;
  }
  if (w == NULL) {
    b_close(b); /* out of memory: the bytes are lost, so is the stream */
    return;
  }
  w->len = (size_t)n;
  uv_buf_t out = uv_buf_init(w->data, (unsigned)n);
  if (uv_write(&w->w.pw, (uv_stream_t *)&b->p, &out, 1, p_wrote) != 0) {
    free(w);
    b_close(b);
    return;
  }
  b->to_pipe += (size_t)n;
  if (b->to_pipe > BRIDGE_HIGH) {
    h2rev_stream_read_stop(s);
    b->s_reading = false;
  }
}

/* ------------------------------------------------ pipe -> stream */

static void p_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  bwrite_t *w = bw_new(h->data, suggested);
  *buf = w != NULL ? uv_buf_init(w->data, (unsigned)w->len) : uv_buf_init(NULL, 0);
}

static void p_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf);

static void p_resume(bridge_t *b) {
  if (!b->p_reading && !b->p_eof && !b->closing && b->to_stream <= BRIDGE_LOW) {
    if (uv_read_start((uv_stream_t *)&b->p, p_alloc, p_read) == 0)
      b->p_reading = true;
  }
}

static void s_wrote(h2rev_write_t *req, int status) {
  bwrite_t *w = H2R_CONTAINER_OF(req, bwrite_t, w.sw);
  bridge_t *b = w->b;
  b->to_stream -= w->len;
  free(w);
  if (b->closing)
    return;
  if (status != 0) {
    b_close(b);
    return;
  }
  p_resume(b);
}

static void s_shut(h2rev_shutdown_t *req, int status) {
  bridge_t *b = req->data;
  if (b->closing)
    return;
  if (status != 0) {
    b_close(b);
    return;
  }
  b->s_shut_done = true;
  b_check(b);
}

static void p_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf) {
  bridge_t *b = h->data;
  bwrite_t *w = bw_of(buf);
  if (n <= 0) {
    free(w);
    if (n == 0)
      return;
    uv_read_stop(h);
    b->p_reading = false;
    if (n != UV_EOF) {
      b_close(b);
      return;
    }
    b->p_eof = true;
    b->s_sh.data = b;
    if (h2rev_stream_shutdown(&b->s_sh, b->s, s_shut) != 0)
      b_close(b);
    return;
  }
  if (w == NULL) {
    b_close(b);
    return;
  }
  w->len = (size_t)n;
  uv_buf_t out = uv_buf_init(w->data, (unsigned)n);
  if (h2rev_stream_write(&w->w.sw, b->s, &out, 1, s_wrote) != 0) {
    free(w);
    b_close(b);
    return;
  }
  b->to_stream += (size_t)n;
  if (b->to_stream > BRIDGE_HIGH) {
    uv_read_stop(h);
    b->p_reading = false;
  }
}

/* ------------------------------------------------------------ API */

int h2rev_stream_bridge(h2rev_stream_t *stream, uv_loop_t *loop, uv_pipe_t *out,
                        h2rev_close_cb done) {
  if (stream == NULL || loop == NULL || out == NULL)
    return UV_EINVAL;
  if (h2rev_stream_is_closing(stream))
    return UV_EBADF;
  bridge_t *b = calloc(1, sizeof(*b));
  if (b == NULL)
    return UV_ENOMEM;
  uv_os_sock_t fds[2];
  int r = uv_socketpair(SOCK_STREAM, 0, fds, UV_NONBLOCK_PIPE, UV_NONBLOCK_PIPE);
  if (r != 0) {
    free(b);
    return r;
  }
  /* Our end first: when it cannot be opened nothing is handed out. */
  uv_pipe_init(loop, &b->p, 0);
  b->p.data = b;
  r = uv_pipe_open(&b->p, fds[0]);
  if (r == 0) {
    uv_pipe_init(loop, out, 0);
    r = uv_pipe_open(out, fds[1]);
    if (r != 0) {
      uv_close((uv_handle_t *)out, NULL);
      uv_close((uv_handle_t *)&b->p, free_data); /* and fds[0] with it */
      close(fds[1]);
      return r;
    }
  }
  if (r != 0) {
    uv_close((uv_handle_t *)&b->p, free_data);
    close(fds[0]);
    close(fds[1]);
    return r;
  }
  /* Like the stream's connection, the bridge does not keep the loop
   * alive on its own: the application's handles and the connection's
   * owner decide (writes in flight do, as libuv's requests). */
  uv_unref((uv_handle_t *)&b->p);
  b->s = stream;
  b->done = done;
  stream->data = b;
  h2r_strm_manual_consume(stream);
  s_resume(b);
  p_resume(b);
  if (!b->s_reading || !b->p_reading) {
    b_close(b);
  }
  return 0;
}
