/*
 * The virtual stream: one HTTP/2 stream's bodies as a duplex byte stream with
 * the semantics of uv_stream_t. Owns the receive buffer of a stream that is
 * not being read, its write queue (the caller's buffers, never copied), and
 * the deferred delivery of every callback.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define H2R_READ_SUGGEST (64 * 1024)

static bool sess_alive(const h2r_strm_t *st) {
  return st->sess->state != H2R_S_DEAD;
}

h2r_strm_t *h2r_strm_new(h2r_session_t *s, int32_t id) {
  h2r_strm_t *st = calloc(1, sizeof(*st));
  if (st == NULL)
    return NULL;
  st->sess = s;
  st->id = id;
  st->next = s->streams;
  if (s->streams != NULL)
    s->streams->prev = st;
  s->streams = st;
  s->nstreams++;
  return st;
}

static void free_chunks(h2r_strm_t *st) {
  while (st->rq_head != NULL) {
    h2r_chunk_t *c = st->rq_head;
    st->rq_head = c->next;
    free(c);
  }
  st->rq_tail = NULL;
  st->rq_bytes = 0;
}

void h2r_strm_free(h2r_strm_t *st) {
  h2r_session_t *s = st->sess;
  if (st->on_used != NULL) {
    /* Closed before use: for the owner it is no longer a spare either. */
    void (*used)(h2r_strm_t *) = st->on_used;
    st->on_used = NULL;
    used(st);
  }
  if (st->prev != NULL)
    st->prev->next = st->next;
  else
    s->streams = st->next;
  if (st->next != NULL)
    st->next->prev = st->prev;
  if (!(st->flags & H2R_F_NG_CLOSED) && st->id > 0 && s->ng != NULL)
    nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
  free_chunks(st);
  s->hdr_held -= st->hcap;
  if (s->o.hdr_total != NULL)
    *s->o.hdr_total -= st->hcap;
  free(st->hbuf);
  free(st->hdrs);
  free(st->rbody);
  s->nstreams--;
  free(st);
  if (s->cbs->on_stream_freed != NULL)
    s->cbs->on_stream_freed(s);
}

void h2r_strm_schedule(h2r_strm_t *st) {
  h2r_session_t *s = st->sess;
  if (!(st->flags & H2R_F_PENDING)) {
    st->flags |= H2R_F_PENDING;
    st->pnext = NULL;
    *s->pending_tail = st;
    s->pending_tail = &st->pnext;
  }
  h2r_defer_arm(&s->work); /* the session pumps its pending streams */
}

int h2r_strm_add_header(h2r_strm_t *st, const uint8_t *name, size_t nl, const uint8_t *value,
                        size_t vl) {
  h2r_session_t *s = st->sess;
  size_t need = st->hlen + nl + vl + 2;
  if (need > s->o.max_header_bytes)
    return UV_E2BIG;
  if (need > st->hcap) {
    size_t cap = st->hcap ? st->hcap * 2 : 256;
    while (cap < need)
      cap *= 2;
    /* HPACK lets a few bytes on the wire decode to a large block: what the
     * blocks hold, not what they cost to send, is bounded. */
    size_t more = cap - st->hcap;
    if ((s->o.max_conn_header_bytes != 0 && s->hdr_held + more > s->o.max_conn_header_bytes) ||
        (s->o.hdr_total != NULL && *s->o.hdr_total + more > s->o.max_total_header_bytes))
      return UV_ENOBUFS;
    char *p = realloc(st->hbuf, cap);
    if (p == NULL)
      return UV_ENOMEM;
    st->hbuf = p;
    st->hcap = cap;
    s->hdr_held += more;
    if (s->o.hdr_total != NULL)
      *s->o.hdr_total += more;
  }
  if (st->nhdrs == st->hdrcap) {
    unsigned cap = st->hdrcap ? st->hdrcap * 2 : 8;
    h2r_hdr_t *h = realloc(st->hdrs, cap * sizeof(*h));
    if (h == NULL)
      return UV_ENOMEM;
    st->hdrs = h;
    st->hdrcap = cap;
  }
  /* NUL-terminated copies, so values can be used as C strings too. */
  h2r_hdr_t *h = &st->hdrs[st->nhdrs++];
  h->name = (uint32_t)st->hlen;
  h->namelen = (uint32_t)nl;
  memcpy(st->hbuf + st->hlen, name, nl);
  st->hbuf[st->hlen + nl] = '\0';
  st->hlen += nl + 1;
  h->value = (uint32_t)st->hlen;
  h->valuelen = (uint32_t)vl;
  memcpy(st->hbuf + st->hlen, value, vl);
  st->hbuf[st->hlen + vl] = '\0';
  st->hlen += vl + 1;
  return 0;
}

void h2r_strm_drop_headers(h2r_strm_t *st) {
  h2r_session_t *s = st->sess;
  s->hdr_held -= st->hcap;
  if (s->o.hdr_total != NULL)
    *s->o.hdr_total -= st->hcap;
  free(st->hbuf);
  free(st->hdrs);
  st->hbuf = NULL;
  st->hdrs = NULL;
  st->hcap = st->hlen = 0;
  st->nhdrs = st->hdrcap = 0;
}

const char *h2r_strm_header(const h2r_strm_t *st, const char *name, size_t *len) {
  size_t nl = strlen(name);
  for (unsigned i = 0; i < st->nhdrs; i++) {
    const h2r_hdr_t *h = &st->hdrs[i];
    if (h->namelen == nl && memcmp(st->hbuf + h->name, name, nl) == 0) {
      if (len != NULL)
        *len = h->valuelen;
      return st->hbuf + h->value;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------ reading */

/* Returns window to the peer. The WINDOW_UPDATE nghttp2 may queue here must
 * be flushed on this loop turn: the caller may be outside the session's own
 * callbacks (a reader that consumes later), and the peer may have nothing
 * else to send until it gets the window. */
static void consumed(h2r_strm_t *st, size_t n) {
  if (n > 0 && sess_alive(st) && !(st->flags & H2R_F_NG_CLOSED)) {
    nghttp2_session_consume_stream(st->sess->ng, st->id, n);
    h2r_defer_arm(&st->sess->work); /* the WINDOW_UPDATE goes out */
  }
}

/* Hands bytes to the application until it stops reading; returns how many
 * it took. */
static size_t deliver(h2r_strm_t *st, const uint8_t *p, size_t n) {
  size_t done = 0;
  while (done < n && (st->flags & H2R_F_READING) && !(st->flags & H2R_F_CLOSING)) {
    uv_buf_t buf = uv_buf_init(NULL, 0);
    /* Suggest what is there: a reader that allocates per read then gets
     * buffers of the frame's size, not 64 KiB for every 16 KiB frame. */
    st->alloc_cb(st->pub, H2R_MIN(n - done, H2R_READ_SUGGEST), &buf);
    if (buf.base == NULL || buf.len == 0) {
      st->read_cb(st->pub, UV_ENOBUFS, &buf);
      break;
    }
    size_t k = H2R_MIN(n - done, buf.len);
    memcpy(buf.base, p + done, k);
    done += k;
    if (!(st->flags & H2R_F_MANUAL))
      consumed(st, k);
    st->read_cb(st->pub, (ssize_t)k, &buf);
  }
  return done;
}

void h2r_strm_on_data(h2r_strm_t *st, const uint8_t *p, size_t n) {
  if (st->on_used != NULL && n > 0) {
    void (*used)(h2r_strm_t *) = st->on_used;
    st->on_used = NULL;
    used(st);
  }
  if (st->flags & H2R_F_CLOSING) {
    consumed(st, n);
    return;
  }
  if (st->pub != NULL && st->rq_head == NULL) {
    size_t k = deliver(st, p, n);
    p += k;
    n -= k;
  }
  if (n == 0 || (st->flags & H2R_F_CLOSING))
    return;
  /* Not being read: keep it. The stream window bounds how much. */
  h2r_chunk_t *c = malloc(sizeof(*c) + n);
  if (c == NULL) {
    nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  c->next = NULL;
  c->len = n;
  c->off = 0;
  memcpy(c->data, p, n);
  if (st->rq_tail != NULL)
    st->rq_tail->next = c;
  else
    st->rq_head = c;
  st->rq_tail = c;
  st->rq_bytes += n;
}

static void pump_reads(h2r_strm_t *st) {
  while (st->rq_head != NULL && (st->flags & H2R_F_READING) && !(st->flags & H2R_F_CLOSING)) {
    h2r_chunk_t *c = st->rq_head;
    size_t k = deliver(st, c->data + c->off, c->len - c->off);
    if (st->flags & H2R_F_CLOSING)
      return; /* closed by read_cb: the chunks are freed already */
    c->off += k;
    st->rq_bytes -= k;
    if (c->off < c->len)
      return;
    st->rq_head = c->next;
    if (st->rq_head == NULL)
      st->rq_tail = NULL;
    free(c);
  }
  if (st->rq_head != NULL || !(st->flags & H2R_F_READING) ||
      (st->flags & (H2R_F_CLOSING | H2R_F_EOF_DONE)))
    return;
  if (st->flags & H2R_F_EOF) {
    st->flags |= H2R_F_EOF_DONE;
    uv_buf_t none = uv_buf_init(NULL, 0);
    st->read_cb(st->pub, UV_EOF, &none);
  } else if (st->err != 0) {
    st->flags |= H2R_F_EOF_DONE;
    uv_buf_t none = uv_buf_init(NULL, 0);
    st->read_cb(st->pub, st->err, &none);
  }
}

/* ------------------------------------------------------------ writing */

ssize_t h2r_strm_data_len(h2r_strm_t *st, size_t max, uint32_t *flags) {
  if (st->flags & H2R_F_CLOSING)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  uint64_t avail = st->wcur != NULL ? st->queued - st->sent : 0;
  if (avail == 0) {
    if (st->flags & H2R_F_SHUT) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    st->flags |= H2R_F_DEFERRED;
    return NGHTTP2_ERR_DEFERRED;
  }
  size_t n = avail < max ? (size_t)avail : max;
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if ((st->flags & H2R_F_SHUT) && n == avail)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

int h2r_strm_take(h2r_strm_t *st, size_t len, uv_buf_t **iov, unsigned *niov, unsigned *cap) {
  st->sent += len;
  while (len > 0) {
    h2rev_write_t *w = st->wcur;
    if (st->wcur_buf == w->nbufs_) {
      st->wcur = w->next_;
      st->wcur_buf = 0;
      st->wcur_off = 0;
      continue;
    }
    const uv_buf_t *b = &w->bufs_[st->wcur_buf];
    size_t k = H2R_MIN(b->len - st->wcur_off, len);
    if (k > 0 && h2r_iov_push(iov, niov, cap, b->base + st->wcur_off, k) != 0)
      return UV_ENOMEM;
    st->wcur_off += k;
    len -= k;
    if (st->wcur_off == b->len) {
      st->wcur_buf++;
      st->wcur_off = 0;
    }
  }
  return 0;
}

void h2r_strm_acked(h2r_strm_t *st, size_t n, int status) {
  st->inflight--;
  if (status == 0)
    st->acked += n;
  else if (st->err == 0)
    st->err = status;
  h2r_strm_schedule(st);
}

static void wake_writer(h2r_strm_t *st) {
  if ((st->flags & H2R_F_DEFERRED) && sess_alive(st) && !(st->flags & H2R_F_NG_CLOSED)) {
    st->flags &= ~H2R_F_DEFERRED;
    nghttp2_session_resume_data(st->sess->ng, st->id);
  }
  h2r_strm_schedule(st);
}

static void free_bufs(h2rev_write_t *w) {
  if (w->bufs_ != w->bufsml_)
    free(w->bufs_);
  w->bufs_ = NULL;
}

/* Takes the head of the write queue off, leaving the queue consistent: its
 * callback may queue the next write (the usual libuv pattern), which must
 * link to what is left, not to the finished request. */
static h2rev_write_t *wq_pop(h2r_strm_t *st) {
  h2rev_write_t *w = st->wq_head;
  st->wq_head = w->next_;
  if (st->wq_head == NULL)
    st->wq_tail = NULL;
  w->next_ = NULL;
  if (st->wcur == w) {
    st->wcur = st->wq_head;
    st->wcur_buf = 0;
    st->wcur_off = 0;
  }
  free_bufs(w);
  return w;
}

/* Completes the writes whose bytes are on the socket, and fails the rest
 * once nothing of the stream can be sent any more. Only the writes queued
 * when it starts: one queued by a callback (a zero-length one is complete
 * at once) waits for the next run, so a callback that always writes again
 * cannot keep this loop, or the loop turn, from ending. */
static void pump_writes(h2r_strm_t *st) {
  h2rev_write_t *last = st->wq_tail;
  bool more = last != NULL;
  while (more && st->wq_head != NULL && st->wq_head->end_ <= st->acked) {
    h2rev_write_t *w = wq_pop(st);
    more = w != last;
    w->cb_(w, 0);
  }
  bool ended = (st->flags & (H2R_F_NG_CLOSED | H2R_F_CLOSING)) || !sess_alive(st);
  if (ended && st->inflight == 0) {
    int err = st->flags & H2R_F_CLOSING ? UV_ECANCELED : (st->err ? st->err : H2REV_ERESET);
    last = st->wq_tail;
    more = last != NULL;
    while (more && st->wq_head != NULL) {
      h2rev_write_t *w = wq_pop(st);
      more = w != last;
      w->cb_(w, err);
    }
    if (st->wq_head == NULL)
      st->queued = st->sent; /* the failed writes' bytes will not be asked for */
    /* A shutdown whose END_STREAM never reached the socket (not sent, or in
     * a transport write that failed or was cancelled) fails with the rest:
     * it will not complete now. */
    bool shut_done = (st->flags & H2R_F_SHUT_SENT) && st->acked == st->queued;
    if (st->shut_req != NULL && !shut_done) {
      h2rev_shutdown_t *req = st->shut_req;
      st->shut_req = NULL;
      if (req->cb_ != NULL)
        req->cb_(req, err);
    }
  }
  if (st->wq_head != NULL && (ended || st->wq_head->end_ <= st->acked))
    h2r_strm_schedule(st);
}

static void pump_shutdown(h2r_strm_t *st) {
  if (st->shut_req != NULL && (st->flags & H2R_F_SHUT_SENT) && st->acked == st->queued &&
      st->inflight == 0) {
    h2rev_shutdown_t *req = st->shut_req;
    st->shut_req = NULL;
    if (req->cb_ != NULL)
      req->cb_(req, 0);
  }
}

void h2r_strm_pump(h2r_strm_t *st) {
  if (st->pub != NULL) {
    pump_reads(st);
    pump_writes(st);
    pump_shutdown(st);
  }
  if (st->flags & H2R_F_PENDING)
    return; /* rescheduled by a callback: finish on that run */
  bool ng_done = (st->flags & H2R_F_NG_CLOSED) || !sess_alive(st) || st->id == 0;
  if (st->pub != NULL && (st->flags & H2R_F_CLOSING) && ng_done && st->inflight == 0 &&
      st->wq_head == NULL && st->shut_req == NULL) {
    h2rev_stream_t *pub = st->pub;
    h2rev_close_cb cb = st->close_cb;
    pub->s_ = NULL;
    h2r_strm_free(st);
    if (cb != NULL)
      cb(pub);
    return;
  }
  if (st->pub == NULL && (st->flags & H2R_F_ORPHAN) && ng_done && st->inflight == 0) {
    if (!(st->flags & H2R_F_CLOSING) && st->hooks != NULL && st->hooks->on_gone != NULL)
      st->hooks->on_gone(st, st->err ? st->err : H2REV_ERESET);
    h2r_strm_free(st);
  }
}

/* ------------------------------------------------------ state changes */

void h2r_strm_on_close(h2r_strm_t *st, uint32_t error_code) {
  st->flags |= H2R_F_NG_CLOSED;
  st->rst_code = error_code;
  if (st->err == 0 &&
      (error_code != NGHTTP2_NO_ERROR || !(st->flags & H2R_F_EOF) || st->wq_head != NULL))
    st->err = H2REV_ERESET;
  h2r_strm_schedule(st);
}

void h2r_strm_on_dead(h2r_strm_t *st, int err) {
  if (st->err == 0)
    st->err = err;
  h2r_strm_schedule(st);
}

void h2r_strm_attach(h2r_strm_t *st, h2rev_stream_t *pub) {
  st->pub = pub;
  st->flags &= ~H2R_F_ORPHAN;
  st->hooks = NULL;
  pub->s_ = st;
  pub->loop = st->sess->loop;
  h2r_strm_schedule(st);
}

static void reset(h2r_strm_t *st) {
  /* A complete response is on its way: the session resets the peer's side
   * once it is sent. */
  if (st->flags & H2R_F_REJECT)
    return;
  if (sess_alive(st) && !(st->flags & H2R_F_NG_CLOSED) && st->id > 0) {
    nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
  }
}

void h2r_strm_manual_consume(h2rev_stream_t *pub) {
  if (pub->s_ != NULL)
    pub->s_->flags |= H2R_F_MANUAL;
}

void h2r_strm_consume(h2rev_stream_t *pub, size_t n) {
  if (pub->s_ != NULL)
    consumed(pub->s_, n);
}

/* Takes the stream back from an idle handle (keep-alive reuse): possible
 * only when nothing of it is pending either way and it is still open. */
h2r_strm_t *h2r_strm_detach(h2rev_stream_t *pub) {
  h2r_strm_t *st = pub->s_;
  if (st == NULL || st->wq_head != NULL || st->shut_req != NULL || st->rq_head != NULL ||
      st->inflight > 0 || st->err != 0 || !sess_alive(st) ||
      (st->flags & (H2R_F_CLOSING | H2R_F_EOF | H2R_F_SHUT | H2R_F_NG_CLOSED)))
    return NULL;
  return h2r_strm_unhook(pub);
}

h2r_strm_t *h2r_strm_unhook(h2rev_stream_t *pub) {
  h2r_strm_t *st = pub->s_;
  if (st == NULL || (st->flags & H2R_F_CLOSING))
    return NULL;
  st->flags &= ~H2R_F_READING;
  st->flags |= H2R_F_ORPHAN;
  st->alloc_cb = NULL;
  st->read_cb = NULL;
  st->pub = NULL;
  pub->s_ = NULL;
  return st;
}

void h2r_strm_abandon(h2r_strm_t *st) {
  st->flags |= H2R_F_CLOSING | H2R_F_ORPHAN;
  st->pub = NULL;
  free_chunks(st);
  if (!(st->flags & H2R_F_REJECT))
    reset(st);
  h2r_strm_schedule(st);
}

/* --------------------------------------------------------- public API */

int h2rev_stream_read_start(h2rev_stream_t *stream, h2rev_alloc_cb alloc_cb,
                            h2rev_read_cb read_cb) {
  h2r_strm_t *st = stream->s_;
  if (alloc_cb == NULL || read_cb == NULL)
    return UV_EINVAL;
  if (st == NULL || (st->flags & H2R_F_CLOSING))
    return UV_EBADF;
  if (st->flags & H2R_F_READING)
    return UV_EALREADY;
  st->flags |= H2R_F_READING;
  st->alloc_cb = alloc_cb;
  st->read_cb = read_cb;
  if (st->rq_head != NULL || (st->flags & H2R_F_EOF) || st->err != 0)
    h2r_strm_schedule(st);
  return 0;
}

int h2rev_stream_read_stop(h2rev_stream_t *stream) {
  h2r_strm_t *st = stream->s_;
  if (st == NULL || (st->flags & H2R_F_CLOSING))
    return UV_EBADF;
  st->flags &= ~H2R_F_READING;
  return 0;
}

int h2rev_stream_write(h2rev_write_t *req, h2rev_stream_t *stream, const uv_buf_t bufs[],
                       unsigned int nbufs, h2rev_write_cb cb) {
  h2r_strm_t *st = stream->s_;
  if (st == NULL || (st->flags & H2R_F_CLOSING))
    return UV_EBADF;
  if (st->flags & H2R_F_SHUT)
    return UV_EPIPE;
  if (cb == NULL)
    return UV_EINVAL;
  req->bufs_ = req->bufsml_;
  if (nbufs > sizeof(req->bufsml_) / sizeof(req->bufsml_[0])) {
    req->bufs_ = malloc(nbufs * sizeof(uv_buf_t));
    if (req->bufs_ == NULL)
      return UV_ENOMEM;
  }
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; i++) {
    req->bufs_[i] = bufs[i];
    total += bufs[i].len;
  }
  req->nbufs_ = nbufs;
  req->handle = stream;
  req->cb_ = cb;
  req->next_ = NULL;
  st->queued += total;
  req->end_ = st->queued;
  if (st->wq_tail != NULL)
    st->wq_tail->next_ = req;
  else
    st->wq_head = req;
  st->wq_tail = req;
  if (st->wcur == NULL) {
    st->wcur = req;
    st->wcur_buf = 0;
    st->wcur_off = 0;
  }
  wake_writer(st);
  return 0;
}

int h2rev_stream_shutdown(h2rev_shutdown_t *req, h2rev_stream_t *stream, h2rev_shutdown_cb cb) {
  h2r_strm_t *st = stream->s_;
  if (st == NULL || (st->flags & H2R_F_CLOSING))
    return UV_EBADF;
  if (st->flags & H2R_F_SHUT)
    return UV_EALREADY;
  st->flags |= H2R_F_SHUT;
  req->handle = stream;
  req->cb_ = cb;
  st->shut_req = req;
  wake_writer(st);
  return 0;
}

void h2rev_stream_close(h2rev_stream_t *stream, h2rev_close_cb close_cb) {
  h2r_strm_t *st = stream->s_;
  if (st == NULL || (st->flags & H2R_F_CLOSING))
    return;
  st->flags |= H2R_F_CLOSING;
  st->flags &= ~H2R_F_READING;
  st->close_cb = close_cb;
  free_chunks(st);
  reset(st);
  h2r_strm_schedule(st);
}

int h2rev_stream_is_closing(const h2rev_stream_t *stream) {
  return stream->s_ == NULL || (stream->s_->flags & H2R_F_CLOSING) != 0;
}

size_t h2rev_stream_buffered(const h2rev_stream_t *stream) {
  return stream->s_ != NULL ? stream->s_->rq_bytes : 0;
}

size_t h2rev_stream_write_queue_size(const h2rev_stream_t *stream) {
  return stream->s_ != NULL ? (size_t)(stream->s_->queued - stream->s_->acked) : 0;
}
