/*
 * The HTTP/2 session: nghttp2 driven over a transport, client or server.
 *
 * Input: transport bytes go straight into nghttp2_session_mem_recv; DATA is
 * handed to the streams (stream.c), which return flow-control window only as
 * the application consumes. Output: frames are produced once per loop turn
 * (a check handle) and gathered into one transport write; DATA payload is
 * referenced from the application's buffers (NGHTTP2_DATA_FLAG_NO_COPY), not
 * copied, and those buffers are released when the write completes.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define H2R_BATCH_MAX    (256u << 10) /* bytes gathered into one transport write */
#define H2R_INFLIGHT_MAX (4u << 20)   /* stop producing frames above this */
#define H2R_CHUNK_SIZE   16384
#define H2R_FRAME_SIZE   65536 /* SETTINGS_MAX_FRAME_SIZE we accept */

typedef struct ctl_chunk {
  struct ctl_chunk *next;
  size_t len, cap;
  uint8_t data[];
} ctl_chunk_t;

typedef struct batch_ref {
  h2r_strm_t *st;
  size_t n;
} batch_ref_t;

/* One transport write: frame bytes copied into chunks, DATA payload
 * referenced in place. */
typedef struct batch {
  h2r_xwrite_t w;
  h2r_session_t *s;
  uv_buf_t *iov;
  unsigned niov, iovcap;
  ctl_chunk_t *chunks;
  batch_ref_t *refs;
  unsigned nrefs, refcap;
  size_t bytes;
  bool full;
} batch_t;

static void s_fail(h2r_session_t *s, int err);
static void s_maybe_closed(h2r_session_t *s);

void h2r_session_opts_default(h2r_session_opts *o) {
  memset(o, 0, sizeof(*o));
  o->stream_window = 2u << 20;
  o->conn_window = 16u << 20;
  o->max_streams = 1000;
  o->max_header_bytes = 64 * 1024;
  o->ping_interval_ms = 30000;
  o->ping_timeout_ms = 15000;
  o->handshake_ms = 10000;
}

/* ------------------------------------------------------------ batches */

static int grow(void **p, unsigned *cap, unsigned need, size_t elem) {
  if (need <= *cap)
    return 0;
  unsigned n = *cap ? *cap * 2 : 16;
  while (n < need)
    n *= 2;
  void *q = realloc(*p, n * elem);
  if (q == NULL)
    return UV_ENOMEM;
  *p = q;
  *cap = n;
  return 0;
}

static int batch_iov(batch_t *b, const void *base, size_t len) {
  return h2r_iov_push(&b->iov, &b->niov, &b->iovcap, base, len);
}

/* Copies frame bytes into the batch. Chunks never move once allocated, so
 * iov entries may point into them. */
static int batch_copy(batch_t *b, const uint8_t *p, size_t len) {
  ctl_chunk_t *c = b->chunks;
  if (c == NULL || c->cap - c->len < len) {
    /* Most flushes carry a few small frames: start small. */
    size_t want = c == NULL ? 1024 : H2R_CHUNK_SIZE;
    size_t cap = len > want ? len : want;
    c = malloc(sizeof(*c) + cap);
    if (c == NULL)
      return UV_ENOMEM;
    c->len = 0;
    c->cap = cap;
    c->next = b->chunks;
    b->chunks = c;
  }
  memcpy(c->data + c->len, p, len);
  int r = batch_iov(b, c->data + c->len, len);
  c->len += len;
  b->bytes += len;
  return r;
}

static void batch_free(batch_t *b) {
  while (b->chunks != NULL) {
    ctl_chunk_t *c = b->chunks;
    b->chunks = c->next;
    free(c);
  }
  free(b->iov);
  free(b->refs);
  free(b);
}

/* Releases the streams' bytes: acknowledged when status is 0. */
static void batch_release(batch_t *b, int status) {
  for (unsigned i = 0; i < b->nrefs; i++)
    h2r_strm_acked(b->refs[i].st, b->refs[i].n, status);
  batch_free(b);
}

static void batch_done(h2r_xwrite_t *w, int status) {
  batch_t *b = H2R_CONTAINER_OF(w, batch_t, w);
  h2r_session_t *s = b->s;
  s->inflight -= b->bytes;
  batch_release(b, status);
  if (status != 0 && status != UV_ECANCELED)
    s_fail(s, status);
  if (s->state == H2R_S_DEAD) {
    s_maybe_closed(s);
    return;
  }
  if (s->x.read_paused && s->inflight < H2R_INFLIGHT_MAX)
    h2r_xport_read_pause(&s->x, false);
  h2r_session_schedule(s);
}

/* ---------------------------------------------------- nghttp2 output */

static ssize_t cb_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *ud) {
  (void)ng;
  (void)flags;
  h2r_session_t *s = ud;
  batch_t *b = s->batch;
  if (b->bytes > 0 && b->bytes + len > H2R_BATCH_MAX) {
    b->full = true;
    return NGHTTP2_ERR_WOULDBLOCK;
  }
  if (batch_copy(b, data, len) != 0)
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  return (ssize_t)len;
}

static int cb_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *ud) {
  (void)ng;
  h2r_session_t *s = ud;
  batch_t *b = s->batch;
  h2r_strm_t *st = source->ptr;
  if (b->bytes > 0 && b->bytes + 9 + length > H2R_BATCH_MAX) {
    b->full = true;
    return NGHTTP2_ERR_WOULDBLOCK;
  }
  if (frame->data.padlen > 0)
    return NGHTTP2_ERR_CALLBACK_FAILURE; /* we never ask for padding */
  if (batch_copy(b, framehd, 9) != 0)
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (length == 0)
    return 0;
  unsigned niov = b->niov;
  if (h2r_strm_take(st, length, &b->iov, &niov, &b->iovcap) != 0)
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  b->niov = niov;
  b->bytes += length;
  s->wu_owed += length;
  st->wu_owed += (uint32_t)length; /* within the peer's window: < 2^31 */
  if (b->nrefs > 0 && b->refs[b->nrefs - 1].st == st) {
    b->refs[b->nrefs - 1].n += length;
  } else {
    if (grow((void **)&b->refs, &b->refcap, b->nrefs + 1, sizeof(batch_ref_t)) != 0)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    b->refs[b->nrefs++] = (batch_ref_t){st, length};
    st->inflight++;
  }
  return 0;
}

static ssize_t cb_read_length(nghttp2_session *ng, uint8_t frame_type, int32_t stream_id,
                              int32_t session_window, int32_t stream_window,
                              uint32_t remote_max_frame_size, void *ud) {
  (void)frame_type;
  (void)ud;
  ssize_t n = (ssize_t)remote_max_frame_size;
  if (session_window < n)
    n = session_window;
  if (stream_window < n)
    n = stream_window;
  /* No more than the stream has queued: nghttp2 grows its frame buffer to
   * any length above 16 KiB asked here, for good, even though the payload
   * is never copied there (NGHTTP2_DATA_FLAG_NO_COPY). An idle listener's
   * connection, which only ever carries small messages, kept 64 KiB. */
  h2r_strm_t *st = nghttp2_session_get_stream_user_data(ng, stream_id);
  uint64_t avail = st != NULL && st->wcur != NULL ? st->queued - st->sent : 0;
  if ((uint64_t)n > avail)
    n = (ssize_t)avail; /* nothing queued: the read callback defers */
  return n > 0 ? n : 1;
}

/* Sends whatever nghttp2 has queued, in transport writes of up to
 * H2R_BATCH_MAX bytes, with at most H2R_INFLIGHT_MAX bytes outstanding. */
static void s_flush(h2r_session_t *s) {
  while (s->state != H2R_S_DEAD && s->x.state == H2R_X_OPEN && s->inflight < H2R_INFLIGHT_MAX) {
    batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL) {
      s_fail(s, UV_ENOMEM);
      return;
    }
    b->s = s;
    s->batch = b;
    int r = nghttp2_session_send(s->ng);
    s->batch = NULL;
    if (r != 0) {
      H2R_ERR(s->log, "%s: HTTP/2 send failed: %s", s->x.peer, nghttp2_strerror(r));
      batch_release(b, UV_ECANCELED);
      s_fail(s, H2REV_EPROTO);
      return;
    }
    if (b->bytes == 0) {
      batch_free(b);
      break;
    }
    s->inflight += b->bytes;
    bool full = b->full;
    r = h2r_xport_write(&s->x, &b->w, b->iov, b->niov, batch_done);
    if (r != 0) {
      s->inflight -= b->bytes;
      batch_release(b, r);
      s_fail(s, r);
      return;
    }
    if (!full)
      break;
  }
  if (s->state != H2R_S_DEAD && s->inflight == 0 && !nghttp2_session_want_read(s->ng) &&
      !nghttp2_session_want_write(s->ng)) {
    /* Both sides said GOAWAY and every stream is done. */
    s_fail(s, 0);
  }
}

/* ----------------------------------------------------- nghttp2 input */

static h2r_strm_t *strm_of(h2r_session_t *s, int32_t id) {
  return id > 0 ? nghttp2_session_get_stream_user_data(s->ng, id) : NULL;
}

static int cb_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  (void)ng;
  h2r_session_t *s = ud;
  if (!s->server || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  h2r_strm_t *st = h2r_strm_new(s, frame->hd.stream_id);
  if (st == NULL)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  st->flags |= H2R_F_ORPHAN;
  nghttp2_session_set_stream_user_data(s->ng, frame->hd.stream_id, st);
  return 0;
}

static int cb_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  (void)ng;
  (void)flags;
  h2r_session_t *s = ud;
  h2r_strm_t *st = strm_of(s, frame->hd.stream_id);
  if (st == NULL || (st->flags & H2R_F_HEADERS) || st->err == UV_ENOBUFS)
    return 0; /* trailers are not used by this protocol */
  int r = h2r_strm_add_header(st, name, nl, value, vl);
  if (r == UV_ENOBUFS) {
    /* Not this block's fault alone: REFUSED_STREAM tells the client it may
     * retry. The rest of the block is dropped, the request never served. */
    h2r_log_limited(s->log, &s->rl, s->loop, H2REV_LOG_INFO,
                    "%s: stream %d refused: header memory used up (%zu bytes on the connection)",
                    s->x.peer, frame->hd.stream_id, s->hdr_held);
    st->err = UV_ENOBUFS;
    nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                              NGHTTP2_REFUSED_STREAM);
    return 0;
  }
  if (r != 0) {
    H2R_WARN(s->log, "%s: stream %d: header block over %u bytes, resetting", s->x.peer,
             frame->hd.stream_id, s->o.max_header_bytes);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  return 0;
}

static int cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  (void)ng;
  h2r_session_t *s = ud;
  h2r_strm_t *st = strm_of(s, frame->hd.stream_id);
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    if (st != NULL && (st->flags & H2R_F_HEADERS) && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      /* Trailers (dropped, see cb_header) end the body as END_STREAM on DATA would. */
      st->flags |= H2R_F_EOF;
      h2r_strm_schedule(st);
      break;
    }
    if (st == NULL || (st->flags & H2R_F_HEADERS) || st->err == UV_ENOBUFS)
      break;
    if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE || frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
      size_t len;
      const char *v = h2r_strm_header(st, ":status", &len);
      st->status = v != NULL ? atoi(v) : 0;
      if (st->status >= 100 && st->status < 200) {
        st->hlen = 0; /* an interim response: wait for the final one */
        st->nhdrs = 0;
        break;
      }
    }
    st->flags |= H2R_F_HEADERS;
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
      st->flags |= H2R_F_EOF;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
      s->cbs->on_request(s, st);
    else if (st->hooks != NULL && st->hooks->on_headers != NULL)
      st->hooks->on_headers(st);
    h2r_strm_schedule(st);
    break;
  case NGHTTP2_DATA:
    if (st != NULL && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      st->flags |= H2R_F_EOF;
      h2r_strm_schedule(st);
    }
    break;
  case NGHTTP2_PING:
    if (frame->hd.flags & NGHTTP2_FLAG_ACK)
      s->ping_sent = false;
    break;
  case NGHTTP2_GOAWAY:
    s->goaway_recv = true;
    H2R_INFO(s->log, "%s: GOAWAY received (error code %u)", s->x.peer, frame->goaway.error_code);
    break;
  default:
    break;
  }
  return 0;
}

static int cb_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
  (void)flags;
  h2r_session_t *s = ud;
  /* The connection window is returned at once: a stream that is not read
   * holds its own window only, and never stalls the others. */
  nghttp2_session_consume_connection(ng, len);
  h2r_strm_t *st = strm_of(s, id);
  if (st == NULL) {
    nghttp2_session_consume_stream(ng, id, len);
    return 0;
  }
  h2r_strm_on_data(st, data, len);
  return 0;
}

static int cb_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud) {
  h2r_session_t *s = ud;
  h2r_strm_t *st = strm_of(s, id);
  if (st == NULL)
    return 0;
  nghttp2_session_set_stream_user_data(ng, id, NULL);
  H2R_DEBUG(s->log, "%s: stream %d closed (error code %u, flags 0x%x, sent %llu of %llu)",
            s->x.peer, id, error_code, st->flags, (unsigned long long)st->sent,
            (unsigned long long)st->queued);
  h2r_strm_on_close(st, error_code);
  return 0;
}

static int cb_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  h2r_session_t *s = ud;
  if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    h2r_strm_t *st = strm_of(s, frame->hd.stream_id);
    if (st != NULL) {
      st->flags |= H2R_F_SHUT_SENT;
      if (st->flags & H2R_F_REJECT) /* the peer's body is of no interest */
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
      h2r_strm_schedule(st);
    }
  }
  return 0;
}

static ssize_t cb_data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *ud) {
  (void)ng;
  (void)id;
  (void)buf;
  (void)ud;
  return h2r_strm_data_len(source->ptr, length, data_flags);
}

static int cb_error(nghttp2_session *ng, int lib_error_code, const char *msg, size_t len,
                    void *ud) {
  (void)ng;
  (void)lib_error_code;
  h2r_session_t *s = ud;
  H2R_DEBUG(s->log, "%s: nghttp2: %.*s", s->x.peer, (int)len, msg);
  return 0;
}

/* ------------------------------------------------------ the session */

static void s_work(void *arg) {
  h2r_session_t *s = arg;
  /* Streams scheduled while we run are handled on the next turn. */
  h2r_strm_t *list = s->pending;
  s->pending = NULL;
  s->pending_tail = &s->pending;
  while (list != NULL) {
    h2r_strm_t *st = list;
    list = st->pnext;
    st->pnext = NULL;
    st->flags &= ~H2R_F_PENDING;
    h2r_strm_pump(st);
  }
  if (s->state != H2R_S_DEAD && s->state != H2R_S_CONNECTING && s->h1 == NULL && !s->sniffing)
    s_flush(s);
  s_maybe_closed(s);
}

void h2r_session_schedule(h2r_session_t *s) {
  h2r_defer_arm(&s->work); /* nothing once closed */
}

static void s_handle_closed(uv_handle_t *h) {
  h2r_session_t *s = h->data;
  if (--s->nhandles > 0)
    return;
  nghttp2_session_del(s->ng);
  s->ng = NULL;
  s->cbs->on_close(s);
}

static void s_maybe_closed(h2r_session_t *s) {
  if (s->state != H2R_S_DEAD || !s->x_closed || s->nstreams > 0 || s->close_reported)
    return;
  s->close_reported = true;
  h2r_defer_close(&s->work, s_handle_closed);
  uv_close((uv_handle_t *)&s->ping_timer, s_handle_closed);
}

static void s_fail(h2r_session_t *s, int err) {
  if (s->state == H2R_S_DEAD)
    return;
  bool was_open = s->state != H2R_S_CONNECTING;
  bool leaving = s->state == H2R_S_DRAINING || s->goaway_recv;
  s->state = H2R_S_DEAD;
  s->err = err;
  /* A peer closing its socket is routine (clients often reset theirs), and
   * so, for a server, is a client that gives up its TLS handshake (a probe,
   * a client that does not trust our certificate): that is the client's
   * business. So is a reset once either side said GOAWAY (a peer that
   * closes with our last frames unread resets the connection). Anything
   * else is worth a warning. */
  int level = H2REV_LOG_WARN;
  if (err == H2REV_ECLOSED || (s->server && err == UV_ECONNRESET) || (!s->server && s->o.quiet))
    level = H2REV_LOG_DEBUG;
  else if ((s->server && !was_open) || (leaving && err == UV_ECONNRESET))
    level = H2REV_LOG_INFO;
  if (err != 0)
    h2r_log(s->log, level, "%s: connection lost: %s%s%s", s->x.peer, h2rev_strerror(err),
            s->x.errmsg[0] ? ": " : "", s->x.errmsg);
  else
    H2R_DEBUG(s->log, "%s: connection closed", s->x.peer);
  uv_timer_stop(&s->ping_timer);
  for (h2r_strm_t *st = s->streams; st != NULL; st = st->next)
    h2r_strm_on_dead(st, err != 0 ? err : H2REV_ECLOSED);
  h2r_xport_close(&s->x);
  if (s->h1 != NULL && s->h1->on_dead != NULL)
    s->h1->on_dead(s, err);
  if (was_open)
    s->cbs->on_dead(s, err);
  else
    s->cbs->on_open(s, err);
  h2r_session_schedule(s);
}

static void go_h1(h2r_session_t *s) {
  s->state = H2R_S_OPEN;
  uv_timer_stop(&s->ping_timer);
  s->cbs->on_h1(s);
  if (s->h1 == NULL)
    s_fail(s, H2REV_EPROTO);
}

static void x_on_open(h2r_xport_t *x, int status) {
  h2r_session_t *s = x->owner;
  bool can_h1 = s->server && s->o.allow_h1 && s->cbs->on_h1 != NULL;
  if (status == 0 && x->ssl != NULL && strcmp(x->alpn, "h2") != 0) {
    if (can_h1) {
      go_h1(s);
      return;
    }
    if (x->alpn[0] != '\0')
      snprintf(x->errmsg, sizeof(x->errmsg), "ALPN \"%s\"", x->alpn);
    else
      snprintf(x->errmsg, sizeof(x->errmsg), "no ALPN");
    status = H2REV_EALPN;
  }
  if (status != 0) {
    s_fail(s, status);
    return;
  }
  s->last_input = uv_now(s->loop);
  if (can_h1 && x->ssl == NULL) {
    s->sniffing = true; /* decided by the first bytes */
    return;
  }
  s->state = H2R_S_OPEN;
  h2r_session_schedule(s);
  s->cbs->on_open(s, 0);
}

static void idle_frame(h2r_session_t *s) {
  if (++s->idle_frames != H2R_IDLE_FRAMES_MAX + 1)
    return;
  h2r_log_limited(
      s->log, &s->rl, s->loop, H2REV_LOG_WARN,
      "%s: %u frames in a row with nothing to do (empty DATA, PRIORITY, WINDOW_UPDATE): closing",
      s->x.peer, s->idle_frames);
  nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* A 31-bit field of a frame (a stream id, a window increment). */
static uint32_t be31(const uint8_t *b) {
  return ((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]) & 0x7fffffffu;
}

/* A WINDOW_UPDATE (f: its header and payload) returns window for DATA we
 * sent (H2R_WU_MIN_BYTES): the connection's and the stream's bytes owed go
 * down, and it counts as a frame that asked for work; one for bytes never
 * sent (a window enlarged, a stream already closed) or a sliver of what is
 * owed asks for nothing. */
static void window_update(h2r_session_t *s, const uint8_t *f) {
  uint32_t id = be31(f + 5), inc = be31(f + 9);
  uint64_t owed;
  if (id == 0) {
    owed = s->wu_owed;
    s->wu_owed -= H2R_MIN(owed, inc);
  } else {
    h2r_strm_t *st = strm_of(s, (int32_t)id);
    owed = st != NULL ? st->wu_owed : 0;
    if (st != NULL)
      st->wu_owed -= (uint32_t)H2R_MIN(owed, inc);
  }
  if (owed > 0 && (inc >= H2R_WU_MIN_BYTES || inc >= owed))
    s->idle_frames = 0;
  else
    idle_frame(s);
}

/* Counts the peer's frames that ask for nothing (H2R_IDLE_FRAMES_MAX) from
 * their headers, before nghttp2 sees them: nghttp2 passes over DATA for a
 * closed stream without a callback, so callbacks cannot count them all. */
/* Copies what is missing of want bytes into buf (have so far) from *p;
 * true once they are all there. */
static bool gather(uint8_t *buf, uint8_t *have, uint8_t want, const uint8_t **p, size_t *n) {
  size_t k = H2R_MIN(*n, (size_t)(want - *have));
  memcpy(buf + *have, *p, k);
  *have += (uint8_t)k;
  *p += k;
  *n -= k;
  return *have == want;
}

static void idle_scan(h2r_session_t *s, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (s->fr_wu) { /* its payload after its header, then it is judged */
      size_t before = n;
      bool whole = gather(s->fr_hd, &s->fr_hn, sizeof(s->fr_hd), &p, &n);
      s->fr_skip -= (uint32_t)(before - n);
      if (whole) {
        s->fr_wu = false;
        s->fr_hn = 0;
        window_update(s, s->fr_hd);
      }
      continue;
    }
    if (s->fr_skip > 0) {
      if (s->fr_pad) {
        s->fr_pad = false;
        if ((uint32_t)p[0] + 1 < s->fr_len)
          s->idle_frames = 0; /* payload besides the padding */
        else
          idle_frame(s);
      }
      size_t k = H2R_MIN(n, s->fr_skip);
      p += k;
      n -= k;
      s->fr_skip -= (uint32_t)k;
      continue;
    }
    if (!gather(s->fr_hd, &s->fr_hn, H2R_FRAME_HD, &p, &n))
      return;
    s->fr_hn = 0;
    const uint8_t *h = s->fr_hd;
    uint32_t len = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
    uint8_t type = h[3], flags = h[4];
    s->fr_skip = len;
    if (type == NGHTTP2_DATA && !(flags & NGHTTP2_FLAG_END_STREAM)) {
      if (len > 0 && (flags & NGHTTP2_FLAG_PADDED)) {
        s->fr_pad = true;
        s->fr_len = len;
      } else if (len > 0) {
        s->idle_frames = 0;
      } else {
        idle_frame(s);
      }
    } else if (type == NGHTTP2_PRIORITY) {
      idle_frame(s);
    } else if (type == NGHTTP2_HEADERS) {
      s->idle_frames = 0;
    } else if (type == NGHTTP2_WINDOW_UPDATE && len == 4) {
      s->fr_wu = true;
      s->fr_hn = H2R_FRAME_HD;
    } /* SETTINGS, PING, RST_STREAM: nghttp2 limits those */
  }
}

static void h2_input(h2r_session_t *s, const uint8_t *p, size_t n) {
  idle_scan(s, p, n);
  ssize_t r = nghttp2_session_mem_recv(s->ng, p, n);
  if (r < 0) {
    snprintf(s->x.errmsg, sizeof(s->x.errmsg), "%s", nghttp2_strerror((int)r));
    s_fail(s, H2REV_EPROTO);
    return;
  }
  if (s->inflight >= H2R_INFLIGHT_MAX)
    h2r_xport_read_pause(&s->x, true);
  h2r_session_schedule(s);
}

/* Cleartext server: the HTTP/2 preface means HTTP/2 (prior knowledge),
 * anything else is HTTP/1.1. */
static void sniff(h2r_session_t *s, const uint8_t *p, size_t n) {
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  size_t k = H2R_MIN(n, sizeof(s->sniff) - s->sniffed);
  memcpy(s->sniff + s->sniffed, p, k);
  s->sniffed += k;
  bool h2 = memcmp(s->sniff, preface, s->sniffed) == 0;
  if (h2 && s->sniffed < sizeof(s->sniff))
    return;
  s->sniffing = false;
  if (!h2) {
    go_h1(s);
    if (s->h1 != NULL && s->state != H2R_S_DEAD)
      s->h1->on_read(s, s->sniff, s->sniffed);
    if (s->h1 != NULL && s->state != H2R_S_DEAD && n > k)
      s->h1->on_read(s, p + k, n - k);
    return;
  }
  s->state = H2R_S_OPEN;
  s->cbs->on_open(s, 0);
  h2_input(s, s->sniff, s->sniffed);
  if (s->state != H2R_S_DEAD && n > k)
    h2_input(s, p + k, n - k);
}

/* A client's first bytes over cleartext: an HTTP/2 server's are a SETTINGS
 * frame, whose 24-bit length (at most 16384 before any SETTINGS) starts with
 * a zero byte. Anything else is another protocol, said by name when it can be
 * (the owner turns it into advice: a wrong port or scheme). */
static int first_bytes(h2r_session_t *s, const uint8_t *p, size_t n) {
  s->got_input = true;
  if (n == 0 || p[0] == 0)
    return 0;
  if ((p[0] == 0x15 || p[0] == 0x16) && (n < 2 || p[1] == 0x03)) {
    snprintf(s->x.errmsg, sizeof(s->x.errmsg), "answered with TLS");
    return H2REV_ETLS;
  }
  size_t l = 0;
  while (l < n && l < 60 && p[l] >= 0x20 && p[l] < 0x7f)
    l++;
  if (l == 0)
    snprintf(s->x.errmsg, sizeof(s->x.errmsg), "first byte 0x%02x", p[0]);
  else
    snprintf(s->x.errmsg, sizeof(s->x.errmsg), "answered \"%.*s\"", (int)l, (const char *)p);
  return n >= 5 && memcmp(p, "HTTP/", 5) == 0 ? H2REV_EALPN : H2REV_EPROTO;
}

static void x_on_read(h2r_xport_t *x, const uint8_t *p, size_t n) {
  h2r_session_t *s = x->owner;
  if (s->state == H2R_S_DEAD)
    return;
  s->last_input = uv_now(s->loop);
  if (!s->server && !s->got_input && x->ssl == NULL) {
    int r = first_bytes(s, p, n);
    if (r != 0) {
      s_fail(s, r);
      return;
    }
  }
  s->got_input = true;
  if (s->sniffing)
    sniff(s, p, n);
  else if (s->h1 != NULL)
    s->h1->on_read(s, p, n);
  else
    h2_input(s, p, n);
}

static void x_on_error(h2r_xport_t *x, int err) {
  h2r_session_t *s = x->owner;
  if (err == UV_EOF && !s->server && !s->got_input && x->errmsg[0] == '\0')
    snprintf(x->errmsg, sizeof(x->errmsg), "closed before any answer");
  /* An HTTP/1.1 client that half-closes after its request still gets the
   * answer (nc -N, HTTP/1.0 tools). */
  if (err == UV_EOF && s->h1 != NULL && s->h1->on_eof != NULL && s->state != H2R_S_DEAD &&
      s->h1->on_eof(s))
    return;
  /* The end of a connection either side has said GOAWAY on, with no stream
   * left: what both wanted (a peer may close as soon as it has read ours). */
  if (err == UV_EOF)
    err = (s->goaway_recv || s->state == H2R_S_DRAINING) && s->nstreams == 0 ? 0 : H2REV_ECLOSED;
  s_fail(s, err);
}

static void x_on_close(h2r_xport_t *x) {
  h2r_session_t *s = x->owner;
  s->x_closed = true;
  s_fail(s, H2REV_ECLOSED);
  s_maybe_closed(s);
}

static const h2r_xport_cbs xport_cbs = {x_on_open, x_on_read, x_on_error, x_on_close};

static void s_ping(uv_timer_t *t) {
  h2r_session_t *s = t->data;
  uint64_t now = uv_now(s->loop);
  if (s->state == H2R_S_DEAD || s->state == H2R_S_CONNECTING || s->h1 != NULL || s->sniffing)
    return;
  if (s->ping_sent) {
    if (now - s->ping_at >= s->o.ping_timeout_ms) {
      snprintf(s->x.errmsg, sizeof(s->x.errmsg), "no PING answer in %u ms", s->o.ping_timeout_ms);
      s_fail(s, H2REV_EPINGTIMEOUT);
    }
    return;
  }
  if (now - s->last_input >= s->o.ping_interval_ms) {
    nghttp2_submit_ping(s->ng, NGHTTP2_FLAG_NONE, NULL);
    s->ping_sent = true;
    s->ping_at = now;
    h2r_session_schedule(s);
  }
}

static int s_init(h2r_session_t *s, uv_loop_t *loop, bool server, const h2r_session_opts *o,
                  const h2r_session_cbs *cbs, void *owner, const h2rev_logger_t *log) {
  memset(s, 0, sizeof(*s));
  s->loop = loop;
  s->server = server;
  s->cbs = cbs;
  s->owner = owner;
  s->log = log;
  s->x.log = log;
  s->x.shared_rbuf = o != NULL ? o->rbuf : NULL;
  s->x.unref = o != NULL && o->unref;
  if (o != NULL)
    s->o = *o;
  else
    h2r_session_opts_default(&s->o);
  s->pending_tail = &s->pending;
  s->state = H2R_S_CONNECTING;
  if (server)
    s->fr_skip = sizeof(NGHTTP2_CLIENT_MAGIC) - 1; /* the client's preface */

  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb) != 0)
    return UV_ENOMEM;
  nghttp2_session_callbacks_set_send_callback(cb, cb_send);
  nghttp2_session_callbacks_set_send_data_callback(cb, cb_send_data);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cb, cb_read_length);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cb_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cb_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, cb_frame_send);
  nghttp2_session_callbacks_set_error_callback2(cb, cb_error);
  nghttp2_option *opt;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cb);
    return UV_ENOMEM;
  }
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
  int r = server ? nghttp2_session_server_new2(&s->ng, cb, s, opt)
                 : nghttp2_session_client_new2(&s->ng, cb, s, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  if (r != 0)
    return UV_ENOMEM;

  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->o.max_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, s->o.stream_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, H2R_FRAME_SIZE},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, s->o.max_header_bytes},
      /* A client refuses pushes; a server takes extended CONNECT (RFC 8441:
       * WebSocket over HTTP/2), which reaches handlers as an upgrade. */
      {server ? NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL : NGHTTP2_SETTINGS_ENABLE_PUSH,
       server ? 1u : 0u},
  };
  size_t niv = sizeof(iv) / sizeof(iv[0]);
  nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, niv);
  if (s->o.conn_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)s->o.conn_window);

  h2r_defer_init(loop, &s->work, s_work, s);
  uv_timer_init(loop, &s->ping_timer);
  s->ping_timer.data = s;
  s->nhandles = 3;
  if (s->o.unref) {
    h2r_defer_set_unref(&s->work, true);
    uv_unref((uv_handle_t *)&s->ping_timer);
  }
  if (s->o.ping_interval_ms > 0) {
    unsigned tick = H2R_MIN(s->o.ping_interval_ms, s->o.ping_timeout_ms) / 4;
    if (tick < 50)
      tick = 50;
    uv_timer_start(&s->ping_timer, s_ping, tick, tick);
  }
  return 0;
}

/* s_init fails before it makes any handle: nothing is left to close, and
 * the caller may free s at once (no callback runs). */
static int s_init_failed(h2r_session_t *s, int r) {
  if (s->ng != NULL) {
    nghttp2_session_del(s->ng);
    s->ng = NULL;
  }
  s->state = H2R_S_DEAD;
  return r;
}

void h2r_session_set_unref(h2r_session_t *s, bool unref) {
  s->o.unref = unref;
  if (s->nhandles > 0) {
    h2r_defer_set_unref(&s->work, unref);
    h2r_handle_ref(&s->ping_timer, unref);
  }
  h2r_xport_set_unref(&s->x, unref);
}

int h2r_session_connect(h2r_session_t *s, uv_loop_t *loop, const struct sockaddr *addr,
                        SSL_CTX *ctx, const char *host, const h2r_session_opts *o,
                        const h2r_session_cbs *cbs, void *owner, const h2rev_logger_t *log) {
  int r = s_init(s, loop, false, o, cbs, owner, log);
  if (r != 0)
    return s_init_failed(s, r);
  r = h2r_xport_connect(&s->x, loop, addr, ctx, host, s->o.handshake_ms, &xport_cbs, s);
  if (r != 0) {
    /* The transport's handles exist: close through the normal path. */
    s_fail(s, r);
  }
  return 0;
}

int h2r_session_accept(h2r_session_t *s, uv_loop_t *loop, uv_stream_t *server, SSL_CTX *ctx,
                       const h2r_session_opts *o, const h2r_session_cbs *cbs, void *owner,
                       const h2rev_logger_t *log) {
  int r = s_init(s, loop, true, o, cbs, owner, log);
  if (r != 0)
    return s_init_failed(s, r);
  r = h2r_xport_accept(&s->x, loop, server, ctx, s->o.handshake_ms, &xport_cbs, s);
  if (r != 0) {
    s_fail(s, r);
    return 0;
  }
  if (s->x.state == H2R_X_OPEN)
    x_on_open(&s->x, 0);
  return 0;
}

void h2r_session_shutdown(h2r_session_t *s) {
  if (s->h1 != NULL || s->sniffing) {
    if (s->h1 != NULL && s->h1->on_shutdown != NULL && s->state != H2R_S_DEAD)
      s->h1->on_shutdown(s);
    else
      s_fail(s, 0);
    return;
  }
  if (s->state != H2R_S_OPEN) {
    if (s->state == H2R_S_CONNECTING)
      s_fail(s, H2REV_ECLOSED);
    return;
  }
  s->state = H2R_S_DRAINING;
  /* Streams already started finish; the session ends when they have. */
  nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                        NGHTTP2_NO_ERROR, NULL, 0);
  h2r_session_schedule(s);
}

void h2r_session_close(h2r_session_t *s, int err) {
  if (s->h1 == NULL && !s->sniffing && (s->state == H2R_S_OPEN || s->state == H2R_S_DRAINING)) {
    /* Best effort: the GOAWAY goes out if the socket takes it now. */
    nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);
    s_flush(s);
  }
  s_fail(s, err);
}

/* ----------------------------------------------- requests, responses */

static ssize_t cb_rbody_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                             uint32_t *data_flags, nghttp2_data_source *source, void *ud) {
  (void)ng;
  (void)id;
  (void)ud;
  h2r_strm_t *st = source->ptr;
  size_t n = H2R_MIN(length, st->rbody_len - st->rbody_off);
  memcpy(buf, st->rbody + st->rbody_off, n);
  st->rbody_off += n;
  if (st->rbody_off == st->rbody_len)
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

h2r_strm_t *h2r_session_request(h2r_session_t *s, const nghttp2_nv *nva, size_t n,
                                const h2r_strm_hooks *hooks, void *owner) {
  if (s->state != H2R_S_OPEN || s->goaway_recv)
    return NULL;
  h2r_strm_t *st = h2r_strm_new(s, 0);
  if (st == NULL)
    return NULL;
  st->hooks = hooks;
  st->owner = owner;
  st->flags |= H2R_F_ORPHAN;
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = cb_data_read};
  int32_t id = nghttp2_submit_request(s->ng, NULL, nva, n, &dp, st);
  if (id < 0) {
    H2R_WARN(s->log, "%s: cannot submit request: %s", s->x.peer, nghttp2_strerror(id));
    h2r_strm_free(st);
    return NULL;
  }
  st->id = id;
  st->flags |= H2R_F_SUBMITTED;
  h2r_session_schedule(s);
  return st;
}

static int respond(h2r_strm_t *st, int status, const nghttp2_nv *nva, size_t n,
                   nghttp2_data_provider *dp) {
  h2r_session_t *s = st->sess;
  if (s->state == H2R_S_DEAD || (st->flags & (H2R_F_NG_CLOSED | H2R_F_SUBMITTED)))
    return UV_ENOTCONN;
  char code[4];
  snprintf(code, sizeof(code), "%03d", status);
  nghttp2_nv small[16];
  nghttp2_nv *all = n + 1 <= 16 ? small : malloc((n + 1) * sizeof(*all));
  if (all == NULL)
    return UV_ENOMEM;
  all[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE};
  if (n > 0)
    memcpy(all + 1, nva, n * sizeof(*nva));
  int r = nghttp2_submit_response(s->ng, st->id, all, n + 1, dp);
  if (all != small)
    free(all);
  if (r != 0)
    return H2REV_EPROTO;
  st->flags |= H2R_F_SUBMITTED;
  h2r_session_schedule(s);
  return 0;
}

int h2r_strm_respond(h2r_strm_t *st, int status, const nghttp2_nv *nva, size_t n) {
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = cb_data_read};
  return respond(st, status, nva, n, &dp);
}

int h2r_strm_respond_text(h2r_strm_t *st, int status, const char *body) {
  return h2r_strm_respond_text_nv(st, status, body, NULL, 0);
}

int h2r_strm_respond_text_nv(h2r_strm_t *st, int status, const char *body, const nghttp2_nv *extra,
                             size_t nextra) {
  if (nextra > H2R_TEXT_EXTRA_MAX)
    return UV_EINVAL;
  size_t len = strlen(body);
  free(st->rbody);
  st->rbody = malloc(len + 1);
  if (st->rbody == NULL)
    return UV_ENOMEM;
  memcpy(st->rbody, body, len + 1);
  st->rbody_len = len;
  st->rbody_off = 0;
  /* A refusal for load (429, 503) says when to come back. */
  nghttp2_nv hdrs[2 + H2R_TEXT_EXTRA_MAX] = {
      {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"retry-after", (uint8_t *)"1", 11, 1, NGHTTP2_NV_FLAG_NONE}};
  size_t n = status == 429 || status == 503 ? 2 : 1;
  for (size_t i = 0; i < nextra; i++)
    hdrs[n++] = extra[i];
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = cb_rbody_read};
  int r = respond(st, status, hdrs, n, &dp);
  if (r == 0)
    st->flags |= H2R_F_REJECT;
  return r;
}

void h2r_strm_reject(h2r_strm_t *st, int status, const char *body) {
  h2r_strm_reject_nv(st, status, body, NULL, 0);
}

void h2r_strm_reject_nv(h2r_strm_t *st, int status, const char *body, const nghttp2_nv *extra,
                        size_t nextra) {
  if (h2r_strm_respond_text_nv(st, status, body, extra, nextra) != 0)
    h2r_strm_abandon(st);
  else
    h2r_strm_schedule(st);
}
