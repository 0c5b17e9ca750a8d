/*
 * The transport: a byte stream over a libuv TCP socket, in clear or through
 * OpenSSL (the socket is libuv's; OpenSSL only sees buffers, through a BIO of
 * ours that reads the socket's bytes where libuv put them and writes
 * ciphertext into a buffer we hand to libuv). Layers above see plaintext
 * bytes and never which of the two it is.
 */
#include "internal.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void x_fail_open(h2r_xport_t *x, int err);
static void x_tls_engine(h2r_xport_t *x);

static void x_handle_closed(uv_handle_t *h) {
  h2r_xport_t *x = h->data;
  if (--x->nhandles > 0)
    return;
  if (x->ssl != NULL)
    SSL_free(x->ssl); /* frees the BIO */
  x->ssl = NULL;
  free(x->in_kept);
  x->in_kept = NULL;
  free(x->obuf);
  x->obuf = NULL;
  free(x->ospare);
  x->ospare = NULL;
  free(x->g_iov);
  x->g_iov = NULL;
  if (x->rbuf != x->shared_rbuf)
    free(x->rbuf);
  x->rbuf = NULL;
  x->cbs->on_close(x);
}

/* Runs the callbacks of writes whose bytes the socket took at once. */
static void x_done_run(h2r_xport_t *x) {
  h2r_xwrite_t *w = x->done_head;
  x->done_head = x->done_tail = NULL;
  while (w != NULL) {
    h2r_xwrite_t *next = w->next;
    w->cb(w, w->status);
    w = next;
  }
}

static void x_gather_flush(h2r_xport_t *x);
static void x_tls_read(h2r_xport_t *x, const uint8_t *p, size_t n);
static void x_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void x_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* After the poll phase (the loop does not block in it while this is due):
 * the turn's writes go out together, then the callbacks of those the socket
 * took whole run; TLS records held while reading was paused are read. */
static void x_work(void *arg) {
  h2r_xport_t *x = arg;
  x_gather_flush(x);
  x_done_run(x);
  if (x->resume_due) {
    x->resume_due = false;
    if (x->state == H2R_X_OPEN && x->reading) {
      x_tls_read(x, (const uint8_t *)"", 0);
      if (x->state == H2R_X_OPEN && x->reading) /* not paused again by what it read */
        uv_read_start((uv_stream_t *)&x->tcp, x_alloc, x_read);
    }
  }
}

static void x_work_closed(uv_handle_t *h) {
  x_done_run(h->data); /* their bytes went out: 0, before on_close */
  x_handle_closed(h);
}

void h2r_xport_close(h2r_xport_t *x) {
  if (x->state == H2R_X_CLOSING)
    return;
  x_gather_flush(x); /* what the socket takes now still goes out */
  x->state = H2R_X_CLOSING;
  uv_close((uv_handle_t *)&x->tcp, x_handle_closed);
  uv_close((uv_handle_t *)&x->timer, x_handle_closed);
  h2r_defer_close(&x->work, x_work_closed); /* two handles */
}

static void x_addr_name(h2r_xport_t *x, const struct sockaddr *sa) {
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    uv_ip4_name(a, ip, sizeof(ip));
    port = ntohs(a->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(a, ip, sizeof(ip));
    port = ntohs(a->sin6_port);
  }
  snprintf(x->peer, sizeof(x->peer), sa->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

static void x_peer_name(h2r_xport_t *x) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  if (uv_tcp_getpeername(&x->tcp, (struct sockaddr *)&ss, &len) == 0)
    x_addr_name(x, (struct sockaddr *)&ss);
}

/* ------------------------------------------------------ the TLS BIO */

/* Ciphertext is appended to obuf; no memory BIO (which copies, and clears
 * its whole capacity at every reset). */
static int x_obuf_reserve(h2r_xport_t *x, size_t more) {
  if (x->olen + more <= x->ocap)
    return 0;
  if (x->obuf == NULL && x->ospare != NULL && x->ospare_cap >= more) {
    x->obuf = x->ospare;
    x->ocap = x->ospare_cap;
    x->ospare = NULL;
    return 0;
  }
  /* Grown by half again, in 16 KiB steps: a flush's ciphertext is a little
   * more than its batch, and doubling would hold nearly twice that. */
  size_t cap = x->ocap ? x->ocap + x->ocap / 2 : (x->ohint ? x->ohint : 16384);
  if (cap < x->olen + more)
    cap = x->olen + more;
  cap = (cap + 16383) & ~(size_t)16383;
  char *p = realloc(x->obuf, cap);
  if (p == NULL)
    return UV_ENOMEM;
  x->obuf = p;
  x->ocap = cap;
  return 0;
}

static int xb_write(BIO *b, const char *data, int len) {
  h2r_xport_t *x = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (len <= 0)
    return 0;
  if (x_obuf_reserve(x, (size_t)len) != 0)
    return -1;
  memcpy(x->obuf + x->olen, data, (size_t)len);
  x->olen += (size_t)len;
  return len;
}

/* OpenSSL reads records straight from the bytes the socket gave us. */
static int xb_read(BIO *b, char *out, int len) {
  h2r_xport_t *x = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (x->in_len == 0) {
    BIO_set_retry_read(b); /* more will come: not end of file */
    return -1;
  }
  size_t k = H2R_MIN((size_t)len, x->in_len);
  memcpy(out, x->in_p, k);
  x->in_p += k;
  x->in_len -= k;
  return (int)k;
}

static long xb_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)num, (void)ptr;
  h2r_xport_t *x = BIO_get_data(b);
  switch (cmd) {
  case BIO_CTRL_FLUSH:
    return 1; /* the owner flushes once the engine is done */
  case BIO_CTRL_PENDING:
    return (long)x->in_len;
  case BIO_CTRL_WPENDING:
    return (long)x->olen;
  default:
    return 0;
  }
}

static int xb_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static BIO_METHOD *x_bio_method;
static uv_once_t x_bio_once = UV_ONCE_INIT;

static void x_bio_method_init(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "h2rev transport");
  if (m != NULL && (!BIO_meth_set_write(m, xb_write) || !BIO_meth_set_read(m, xb_read) ||
                    !BIO_meth_set_ctrl(m, xb_ctrl) || !BIO_meth_set_create(m, xb_create))) {
    BIO_meth_free(m);
    m = NULL;
  }
  x_bio_method = m;
}

static BIO *x_bio_new(h2r_xport_t *x) {
  uv_once(&x_bio_once, x_bio_method_init);
  BIO *b = x_bio_method != NULL ? BIO_new(x_bio_method) : NULL;
  if (b != NULL)
    BIO_set_data(b, x);
  return b;
}

/* ------------------------------------------------------------ setup */

static int x_init(h2r_xport_t *x, uv_loop_t *loop, SSL_CTX *ctx, bool server, unsigned hs_ms,
                  const h2r_xport_cbs *cbs, void *owner) {
  const h2rev_logger_t *log = x->log;
  uint8_t *shared = x->shared_rbuf;
  bool unref = x->unref;
  memset(x, 0, sizeof(*x));
  x->log = log;
  x->shared_rbuf = shared;
  x->unref = unref;
  x->loop = loop;
  x->cbs = cbs;
  x->owner = owner;
  x->server = server;
  x->handshake_ms = hs_ms;
  x->rbuf_len = H2R_RBUF_SIZE / 2;
  /* The handles first: a failure below leaves a socket that h2r_xport_accept
   * can still take from its server, and that closes as any other. */
  uv_tcp_init(loop, &x->tcp);
  uv_timer_init(loop, &x->timer);
  h2r_defer_init(loop, &x->work, x_work, x);
  x->tcp.data = x;
  x->timer.data = x;
  x->nhandles = 4; /* tcp, timer, work's two */
  if (unref)
    h2r_xport_set_unref(x, true);
  x->rbuf = shared != NULL ? shared : malloc(ctx != NULL ? H2R_RBUF_SIZE : x->rbuf_len);
  if (x->rbuf == NULL)
    return UV_ENOMEM;
  if (ctx != NULL) {
    x->ssl = SSL_new(ctx);
    BIO *b = x->ssl != NULL ? x_bio_new(x) : NULL;
    if (b == NULL)
      return UV_ENOMEM;
    SSL_set_bio(x->ssl, b, b); /* one reference, for both directions */
  }
  return 0;
}

static void x_internal_write_done(h2r_xwrite_t *w, int status) {
  (void)status;
  free(w);
}

static void x_write_done(uv_write_t *req, int status) {
  h2r_xwrite_t *w = H2R_CONTAINER_OF(req, h2r_xwrite_t, req);
  /* Writes the socket took at once came before this one: their callbacks
   * first (libuv may report a write it finished inside uv_write before our
   * idle handle runs). */
  h2r_xport_t *x = w->x;
  x_done_run(x);
  if (w->tls_out != NULL && x->ospare == NULL && x->state != H2R_X_CLOSING) {
    x->ospare = (char *)w->tls_out;
    x->ospare_cap = w->tls_cap;
  } else {
    free(w->tls_out);
  }
  w->tls_out = NULL;
  w->cb(w, status);
}

/* The write's bytes are all on the socket: its callback comes on a later
 * turn, without the empty write(2) (TLS) or the epoll_ctl (libuv re-arms
 * the socket after every write it completes) that uv_write would cost. */
static void x_wlist_append(h2r_xwrite_t **head, h2r_xwrite_t **tail, h2r_xwrite_t *w) {
  w->next = NULL;
  if (*tail != NULL)
    (*tail)->next = w;
  else
    *head = w;
  *tail = w;
}

static void x_done_push(h2r_xport_t *x, h2r_xwrite_t *w, h2r_xwrite_cb cb) {
  w->x = x;
  w->cb = cb;
  w->status = 0;
  w->tls_out = NULL;
  x_wlist_append(&x->done_head, &x->done_tail, w);
  h2r_defer_arm(&x->work);
}

/* Writes the gathered writes: what the socket takes at once from all of
 * them in one writev, the rest through libuv, in order. */
static void x_gather_flush(h2r_xport_t *x) {
  h2r_xwrite_t *w = x->g_head;
  if (w == NULL)
    return;
  uv_buf_t *iov = x->g_iov;
  unsigned n = x->g_n;
  x->g_head = x->g_tail = NULL;
  x->g_n = 0;
  int k = x->tcp.write_queue_size == 0 ? uv_try_write((uv_stream_t *)&x->tcp, iov, n) : 0;
  size_t took = k > 0 ? (size_t)k : 0; /* an error is reported by uv_write's callback */
  unsigned i = 0;
  while (w != NULL) {
    h2r_xwrite_t *next = w->next;
    unsigned end = i + w->nbufs;
    while (i < end && took >= iov[i].len)
      took -= iov[i++].len;
    if (i == end) {
      x_done_push(x, w, w->cb);
    } else {
      iov[i].base += took; /* uv_write copies the array */
      iov[i].len -= took;
      took = 0;
      int r = uv_write(&w->req, (uv_stream_t *)&x->tcp, iov + i, end - i, x_write_done);
      if (r != 0) {
        x_done_push(x, w, w->cb);
        w->status = r;
      }
    }
    i = end;
    w = next;
  }
}

/* obuf went out whole and is kept for the next flush. After a large burst
 * a buffer much larger than what it carries, many times in a row, is let
 * go, so that an idle connection does not hold the burst's size. */
static void x_obuf_sent(h2r_xport_t *x, size_t carried) {
  x->olen = 0;
  bool small = x->ocap > (256u << 10) && carried < x->ocap / 16;
  x->small_flushes = small ? x->small_flushes + 1 : 0;
  if (x->small_flushes >= 256) { /* the burst is over, not just paused */
    x->small_flushes = 0;
    free(x->obuf);
    free(x->ospare);
    x->obuf = x->ospare = NULL;
    x->ocap = x->ohint = 0;
  }
}

/* Sends what the TLS engine has produced, with w (or an internal request). */
static int x_tls_flush(h2r_xport_t *x, h2r_xwrite_t *w, h2r_xwrite_cb cb) {
  size_t n = x->olen;
  if (n == 0 && w == NULL)
    return 0;
  /* Most of the time the socket takes the ciphertext at once, from obuf,
   * which is then reused. */
  size_t off = 0;
  if (n > 0 && x->tcp.write_queue_size == 0) {
    uv_buf_t b = uv_buf_init(x->obuf, (unsigned)n);
    int k = uv_try_write((uv_stream_t *)&x->tcp, &b, 1);
    if (k > 0)
      off = (size_t)k;
  }
  if (off == n && (w == NULL || x->tcp.write_queue_size == 0)) {
    if (n > 0)
      x_obuf_sent(x, n);
    if (w != NULL)
      x_done_push(x, w, cb);
    return 0;
  }
  if (w == NULL) {
    w = malloc(sizeof(*w));
    if (w == NULL)
      return UV_ENOMEM;
    cb = x_internal_write_done;
  }
  w->x = x;
  w->cb = cb;
  w->tls_out = NULL;
  uv_buf_t b = uv_buf_init(NULL, 0);
  if (off < n) {
    /* The rest goes with obuf itself (no copy); the next flush starts a
     * buffer of the same size. */
    w->tls_out = (uint8_t *)x->obuf;
    w->tls_cap = x->ocap;
    b = uv_buf_init(x->obuf + off, (unsigned)(n - off));
    x->ohint = x->ocap;
    x->obuf = NULL;
    x->olen = x->ocap = 0;
  } else if (n > 0) {
    x_obuf_sent(x, n);
  }
  /* The rest (or an empty write behind what libuv still holds, so that cb
   * keeps its place) in order. */
  int r = uv_write(&w->req, (uv_stream_t *)&x->tcp, &b, 1, x_write_done);
  if (r != 0) {
    free(w->tls_out);
    w->tls_out = NULL;
    if (cb == x_internal_write_done)
      free(w);
  }
  return r;
}

static void x_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  h2r_xport_t *x = h->data;
  *buf = uv_buf_init((char *)x->rbuf, (unsigned)x->rbuf_len);
}

static void x_opened(h2r_xport_t *x) {
  uv_timer_stop(&x->timer);
  x->state = H2R_X_OPEN;
  if (x->ssl != NULL) {
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(x->ssl, &p, &len);
    if (len >= sizeof(x->alpn))
      len = 0;
    if (len > 0)
      memcpy(x->alpn, p, len);
    x->alpn[len] = '\0';
  }
  x->cbs->on_open(x, 0);
}

/* The handshake failed: say why, as precisely as OpenSSL lets us. */
static int x_tls_error(h2r_xport_t *x) {
  long v = SSL_get_verify_result(x->ssl);
  unsigned long e = ERR_peek_error();
  if (v != X509_V_OK && ERR_GET_LIB(e) == ERR_LIB_SSL &&
      ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
    snprintf(x->errmsg, sizeof(x->errmsg), "certificate verify failed: %s",
             X509_verify_cert_error_string(v));
    ERR_clear_error();
    return H2REV_ECERT;
  }
  if (!x->server && ERR_GET_LIB(e) == ERR_LIB_SSL &&
      ERR_GET_REASON(e) == SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL) {
    snprintf(x->errmsg, sizeof(x->errmsg), "TLS alert no_application_protocol");
    ERR_clear_error();
    return H2REV_EALPN;
  }
  h2r_tls_errstr(x->errmsg, sizeof(x->errmsg));
  return H2REV_ETLS;
}

/* Ciphertext OpenSSL has not read when reading pauses is kept for later:
 * the read buffer is the socket's (and may be shared). */
static void x_tls_keep(h2r_xport_t *x) {
  if (x->in_len == 0 || x->state != H2R_X_OPEN) {
    x->in_len = 0;
    return;
  }
  if (x->in_own) {
    memmove(x->in_kept, x->in_p, x->in_len);
  } else {
    if (x->in_len > x->in_kept_cap) {
      uint8_t *k = realloc(x->in_kept, x->in_len);
      if (k == NULL) {
        x->in_len = 0;
        x->cbs->on_error(x, UV_ENOMEM);
        return;
      }
      x->in_kept = k;
      x->in_kept_cap = x->in_len;
    }
    memcpy(x->in_kept, x->in_p, x->in_len);
  }
  x->in_p = x->in_kept;
  x->in_own = true;
}

/* Offers new ciphertext to OpenSSL, behind what was kept. */
static int x_tls_input(h2r_xport_t *x, const uint8_t *p, size_t n) {
  if (x->in_len == 0) {
    x->in_p = p;
    x->in_len = n;
    x->in_own = false;
    return 0;
  }
  if (n == 0)
    return 0;
  size_t have = x->in_len; /* kept: at the start of in_kept */
  if (have + n > x->in_kept_cap) {
    uint8_t *k = realloc(x->in_kept, have + n);
    if (k == NULL)
      return UV_ENOMEM;
    x->in_kept = k;
    x->in_kept_cap = have + n;
  }
  memcpy(x->in_kept + have, p, n);
  x->in_p = x->in_kept;
  x->in_len = have + n;
  return 0;
}

static void x_tls_read(h2r_xport_t *x, const uint8_t *p, size_t n) {
  /* A client's handshake answered by something other than TLS, whose
   * records start with a content type of 20 to 23 (a cleartext server on
   * this port): say so, rather than what OpenSSL makes of "HTTP/1.1". */
  if (x->state == H2R_X_HANDSHAKE && !x->server && x->in_len == 0 && n > 0 &&
      (p[0] < 20 || p[0] > 23)) {
    size_t l = 0;
    while (l < n && l < 60 && p[l] >= 0x20 && p[l] < 0x7f)
      l++;
    if (l > 0)
      snprintf(x->errmsg, sizeof(x->errmsg), "not TLS: answered \"%.*s\"", (int)l, (const char *)p);
    else
      snprintf(x->errmsg, sizeof(x->errmsg), "not TLS: first byte 0x%02x", p[0]);
    x_fail_open(x, H2REV_ETLS);
    return;
  }
  if (x_tls_input(x, p, n) != 0) {
    x->in_len = 0;
    x_fail_open(x, UV_ENOMEM);
    return;
  }
  x_tls_engine(x);
  x_tls_keep(x);
}

static void x_tls_engine(h2r_xport_t *x) {
  uint8_t *plain = x->rbuf + x->rbuf_len; /* the other half */
  if (x->state == H2R_X_HANDSHAKE) {
    int r = SSL_do_handshake(x->ssl);
    x_tls_flush(x, NULL, NULL);
    if (r != 1) {
      int e = SSL_get_error(x->ssl, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        x_fail_open(x, x_tls_error(x));
      return;
    }
    x_opened(x);
  }
  while (x->state == H2R_X_OPEN && x->reading) {
    /* Records (16 KiB at most) are gathered into one read for the layer
     * above: an HTTP/2 frame of 64 KiB reaches its stream's reader whole,
     * and the listener writes it to its upstream with one system call, not
     * four. */
    size_t got = 0;
    int r = 1;
    while (got < x->rbuf_len && (r = SSL_read(x->ssl, plain + got, (int)(x->rbuf_len - got))) > 0)
      got += (size_t)r;
    /* The reason the reading stopped, asked before the callback may use
     * the engine to write. */
    int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(x->ssl, r);
    if (got > 0)
      x->cbs->on_read(x, plain, got);
    if (e == SSL_ERROR_NONE)
      continue;
    if (x->state != H2R_X_OPEN)
      return;
    x_tls_flush(x, NULL, NULL);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      return;
    if (e == SSL_ERROR_ZERO_RETURN) {
      x->cbs->on_error(x, UV_EOF);
    } else {
      h2r_tls_errstr(x->errmsg, sizeof(x->errmsg));
      x->cbs->on_error(x, H2REV_ETLS);
    }
    return;
  }
}

static void x_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  h2r_xport_t *x = s->data;
  (void)buf;
  if (n == 0 || x->state == H2R_X_CLOSING)
    return;
  if (n < 0) {
    if (x->state == H2R_X_HANDSHAKE || x->state == H2R_X_CONNECTING) {
      snprintf(x->errmsg, sizeof(x->errmsg), "connection closed during TLS handshake");
      /* A client's peer that goes away (a dialer restarting) is not a TLS
       * failure: what it means is for the owner to decide. */
      x_fail_open(x, n != UV_EOF ? (int)n : x->server ? H2REV_ETLS : H2REV_ECLOSED);
    } else {
      x->cbs->on_error(x, (int)n);
    }
    return;
  }
  if (x->ssl != NULL)
    x_tls_read(x, x->rbuf, (size_t)n);
  else
    x->cbs->on_read(x, x->rbuf, (size_t)n);
}

static void x_fail_open(h2r_xport_t *x, int err) {
  if (x->state == H2R_X_OPEN) {
    x->cbs->on_error(x, err);
    return;
  }
  uv_timer_stop(&x->timer);
  x->state = H2R_X_INIT;
  uv_read_stop((uv_stream_t *)&x->tcp);
  x->cbs->on_open(x, err);
}

static void x_timeout(uv_timer_t *t) {
  h2r_xport_t *x = t->data;
  snprintf(x->errmsg, sizeof(x->errmsg), "no connection within %u ms", x->handshake_ms);
  x_fail_open(x, UV_ETIMEDOUT);
}

static int x_start(h2r_xport_t *x) {
  if (x->server)
    x_peer_name(x);
  uv_tcp_nodelay(&x->tcp, 1);
  x->reading = true;
  int r = uv_read_start((uv_stream_t *)&x->tcp, x_alloc, x_read);
  if (r != 0)
    return r;
  if (x->ssl == NULL)
    return 0;
  x->state = H2R_X_HANDSHAKE;
  if (!x->server) {
    SSL_do_handshake(x->ssl); /* produces the ClientHello */
    return x_tls_flush(x, NULL, NULL);
  }
  return 0;
}

static void x_connected(uv_connect_t *req, int status) {
  h2r_xport_t *x = req->data;
  if (x->state == H2R_X_CLOSING || x->state == H2R_X_INIT)
    return;
  if (status == 0)
    status = x_start(x);
  if (status != 0) {
    snprintf(x->errmsg, sizeof(x->errmsg), "%s", uv_strerror(status));
    x_fail_open(x, status);
    return;
  }
  if (x->ssl == NULL)
    x_opened(x);
}

static bool is_ip_literal(const char *host) {
  unsigned char tmp[16];
  return uv_inet_pton(AF_INET, host, tmp) == 0 || uv_inet_pton(AF_INET6, host, tmp) == 0;
}

void h2r_xport_set_unref(h2r_xport_t *x, bool unref) {
  x->unref = unref;
  if (x->nhandles == 0)
    return;
  h2r_handle_ref(&x->tcp, unref);
  h2r_handle_ref(&x->timer, unref);
  h2r_defer_set_unref(&x->work, unref);
}

int h2r_xport_connect(h2r_xport_t *x, uv_loop_t *loop, const struct sockaddr *addr, SSL_CTX *ctx,
                      const char *host, unsigned handshake_ms, const h2r_xport_cbs *cbs,
                      void *owner) {
  int r = x_init(x, loop, ctx, false, handshake_ms, cbs, owner);
  x_addr_name(x, addr);
  if (r == 0 && x->ssl != NULL && host != NULL) {
    if (is_ip_literal(host)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(x->ssl), host);
    } else {
      SSL_set_tlsext_host_name(x->ssl, host);
      SSL_set1_host(x->ssl, host);
    }
  }
  if (r == 0 && x->ssl != NULL)
    SSL_set_connect_state(x->ssl);
  if (r == 0) {
    x->connect.data = x;
    x->state = H2R_X_CONNECTING;
    r = uv_tcp_connect(&x->connect, &x->tcp, addr, x_connected);
  }
  if (r == 0 && handshake_ms > 0)
    uv_timer_start(&x->timer, x_timeout, handshake_ms, 0);
  return r;
}

int h2r_xport_accept(h2r_xport_t *x, uv_loop_t *loop, uv_stream_t *server, SSL_CTX *ctx,
                     unsigned handshake_ms, const h2r_xport_cbs *cbs, void *owner) {
  int r = x_init(x, loop, ctx, true, handshake_ms, cbs, owner);
  /* Accepted even when x_init failed: libuv polls the server no more
   * until its pending connection is taken; closing x closes it. */
  int a = uv_accept(server, (uv_stream_t *)&x->tcp);
  if (r == 0)
    r = a;
  if (r == 0 && x->ssl != NULL)
    SSL_set_accept_state(x->ssl);
  if (r == 0)
    r = x_start(x);
  if (r == 0 && x->ssl != NULL && handshake_ms > 0)
    uv_timer_start(&x->timer, x_timeout, handshake_ms, 0);
  if (r == 0 && x->ssl == NULL)
    x->state = H2R_X_OPEN;
  return r;
}

/* Cleartext: the write joins the loop turn's others, written after the poll
 * phase (x_gather_flush); its buffers stay the caller's. A large write met
 * with nothing gathered goes at once: there is nothing to gain by waiting. */
#define X_GATHER_NOW (64u << 10)

static int x_tcp_write(h2r_xport_t *x, h2r_xwrite_t *w, const uv_buf_t *bufs, unsigned n,
                       h2r_xwrite_cb cb) {
  if (x->g_n + n > x->g_cap) {
    unsigned cap = x->g_cap != 0 ? x->g_cap : 16;
    while (cap < x->g_n + n)
      cap *= 2;
    uv_buf_t *iov = realloc(x->g_iov, cap * sizeof(*iov));
    if (iov == NULL)
      return UV_ENOMEM;
    x->g_iov = iov;
    x->g_cap = cap;
  }
  memcpy(x->g_iov + x->g_n, bufs, n * sizeof(*bufs));
  x->g_n += n;
  w->x = x;
  w->cb = cb;
  w->tls_out = NULL;
  w->nbufs = n;
  x_wlist_append(&x->g_head, &x->g_tail, w);
  size_t total = 0;
  for (unsigned i = 0; i < n && x->g_head == w; i++)
    total += bufs[i].len;
  if (total >= X_GATHER_NOW) {
    x_gather_flush(x);
    return 0;
  }
  h2r_defer_arm(&x->work);
  return 0;
}

#define X_RECORD 16384 /* TLS's largest record payload */

static bool x_seal(h2r_xport_t *x, const char *p, size_t n) {
  /* Memory BIOs grow: SSL_write takes everything at once. */
  if (SSL_write(x->ssl, p, (int)n) > 0)
    return true;
  h2r_tls_errstr(x->errmsg, sizeof(x->errmsg));
  return false;
}

int h2r_xport_write(h2r_xport_t *x, h2r_xwrite_t *w, const uv_buf_t *bufs, unsigned n,
                    h2r_xwrite_cb cb) {
  if (x->state != H2R_X_OPEN)
    return UV_ENOTCONN;
  if (x->ssl == NULL)
    return x_tcp_write(x, w, bufs, n, cb);
  /* Pieces are gathered into full TLS records: the frames of one flush
   * (a HEADERS, a DATA header, a body of 100 bytes) would otherwise each
   * be a record of their own, and a record costs far more to seal than its
   * bytes cost to copy. Only whole records' worth of a large buffer, met
   * with nothing gathered, goes to SSL_write without the copy. */
  char stage[X_RECORD];
  size_t sl = 0;
  for (unsigned i = 0; i < n; i++) {
    const char *p = bufs[i].base;
    size_t len = bufs[i].len;
    while (len > 0) {
      if (sl == 0 && len >= X_RECORD) {
        size_t k = len - len % X_RECORD;
        if (!x_seal(x, p, k))
          return H2REV_ETLS;
        p += k;
        len -= k;
        continue;
      }
      size_t k = H2R_MIN(len, X_RECORD - sl);
      memcpy(stage + sl, p, k);
      sl += k;
      p += k;
      len -= k;
      if (sl == X_RECORD) {
        if (!x_seal(x, stage, sl))
          return H2REV_ETLS;
        sl = 0;
      }
    }
  }
  if (sl > 0 && !x_seal(x, stage, sl))
    return H2REV_ETLS;
  return x_tls_flush(x, w, cb);
}

void h2r_xport_read_pause(h2r_xport_t *x, bool pause) {
  if (x->state == H2R_X_CLOSING || x->read_paused == pause)
    return;
  x->read_paused = pause;
  x->reading = !pause;
  if (pause) {
    uv_read_stop((uv_stream_t *)&x->tcp);
  } else if (x->ssl != NULL && x->state == H2R_X_OPEN &&
             (SSL_pending(x->ssl) > 0 || x->in_len > 0)) {
    /* TLS holds records that arrived while paused: they are read later in
     * the turn (x_work), never inside whatever resumed us (the read buffer
     * may be shared and in use), and the socket only after them (its EOF
     * must not overtake them). */
    x->resume_due = true;
    h2r_defer_arm(&x->work);
  } else {
    uv_read_start((uv_stream_t *)&x->tcp, x_alloc, x_read);
  }
}

X509 *h2r_xport_peer_cert(const h2r_xport_t *x) {
  return x->ssl != NULL ? SSL_get0_peer_certificate(x->ssl) : NULL;
}
