/*
 * The transport: a byte stream over a libuv TCP socket, in clear or through
 * OpenSSL driven by memory BIOs (the socket is libuv's; OpenSSL only sees
 * buffers). Layers above see plaintext bytes and never which of the two it is.
 */
#include "internal.h"

#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void x_fail_open(h2r_xport_t *x, int err);

static void x_handle_closed(uv_handle_t *h) {
  h2r_xport_t *x = h->data;
  if (--x->nhandles > 0)
    return;
  if (x->ssl != NULL)
    SSL_free(x->ssl); /* frees both BIOs */
  x->ssl = NULL;
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
    w->cb(w, 0);
    w = next;
  }
}

static void x_done(uv_idle_t *h) {
  uv_idle_stop(h);
  x_done_run(h->data);
}

static void x_done_closed(uv_handle_t *h) {
  x_done_run(h->data); /* their bytes went out: 0, before on_close */
  x_handle_closed(h);
}

void h2r_xport_close(h2r_xport_t *x) {
  if (x->state == H2R_X_CLOSING)
    return;
  x->state = H2R_X_CLOSING;
  uv_close((uv_handle_t *)&x->tcp, x_handle_closed);
  uv_close((uv_handle_t *)&x->timer, x_handle_closed);
  uv_close((uv_handle_t *)&x->done, x_done_closed);
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

static int x_init(h2r_xport_t *x, uv_loop_t *loop, SSL_CTX *ctx, bool server, unsigned hs_ms,
                  const h2r_xport_cbs *cbs, void *owner) {
  const h2rev_logger_t *log = x->log;
  uint8_t *shared = x->shared_rbuf;
  memset(x, 0, sizeof(*x));
  x->log = log;
  x->shared_rbuf = shared;
  x->loop = loop;
  x->cbs = cbs;
  x->owner = owner;
  x->server = server;
  x->handshake_ms = hs_ms;
  x->rbuf_len = H2R_RBUF_SIZE;
  x->rbuf = shared != NULL ? shared : malloc(x->rbuf_len);
  if (x->rbuf == NULL)
    return UV_ENOMEM;
  uv_tcp_init(loop, &x->tcp);
  uv_timer_init(loop, &x->timer);
  uv_idle_init(loop, &x->done);
  x->tcp.data = x;
  x->timer.data = x;
  x->done.data = x;
  x->nhandles = 3;
  if (ctx != NULL) {
    x->ssl = SSL_new(ctx);
    x->rbio = BIO_new(BIO_s_mem());
    x->wbio = BIO_new(BIO_s_mem());
    if (x->ssl == NULL || x->rbio == NULL || x->wbio == NULL) {
      BIO_free(x->rbio);
      BIO_free(x->wbio);
      x->rbio = x->wbio = NULL;
      return UV_ENOMEM;
    }
    /* An empty memory BIO means "try again", not end of file. */
    BIO_set_mem_eof_return(x->rbio, -1);
    SSL_set_bio(x->ssl, x->rbio, x->wbio);
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
  x_done_run(w->x);
  free(w->tls_out);
  w->tls_out = NULL;
  w->cb(w, status);
}

/* The write's bytes are all on the socket: its callback comes on a later
 * turn, without the empty write(2) (TLS) or the epoll_ctl (libuv re-arms
 * the socket after every write it completes) that uv_write would cost. */
static void x_done_push(h2r_xport_t *x, h2r_xwrite_t *w, h2r_xwrite_cb cb) {
  w->x = x;
  w->cb = cb;
  w->tls_out = NULL;
  w->next = NULL;
  if (x->done_tail != NULL)
    x->done_tail->next = w;
  else
    x->done_head = w;
  x->done_tail = w;
  uv_idle_start(&x->done, x_done);
}

/* Empties the memory BIO of ciphertext. A reset clears the BIO's whole
 * capacity (OpenSSL memsets it): after a large burst a small write would pay
 * for the burst's size every time, so a BIO much larger than what it just
 * carried, many times in a row, is replaced by a fresh one. */
static void x_wbio_reset(h2r_xport_t *x, size_t carried) {
  BUF_MEM *bm = NULL;
  BIO_get_mem_ptr(x->wbio, &bm);
  bool small = bm != NULL && bm->max > (256u << 10) && carried < bm->max / 16;
  x->small_flushes = small ? x->small_flushes + 1 : 0;
  if (x->small_flushes >= 256) { /* the burst is over, not just paused */
    x->small_flushes = 0;
    BIO *fresh = BIO_new(BIO_s_mem());
    if (fresh != NULL) {
      SSL_set0_wbio(x->ssl, fresh); /* frees the old one */
      x->wbio = fresh;
      return;
    }
  }
  (void)BIO_reset(x->wbio);
}

/* Sends what the TLS engine has produced, with w (or an internal request). */
static int x_tls_flush(h2r_xport_t *x, h2r_xwrite_t *w, h2r_xwrite_cb cb) {
  char *data = NULL;
  long avail = BIO_get_mem_data(x->wbio, &data);
  size_t n = avail > 0 ? (size_t)avail : 0;
  if (n == 0 && w == NULL)
    return 0;
  /* Most of the time the socket takes the ciphertext at once, straight from
   * the memory BIO: no copy into a buffer of our own, no fresh pages. */
  size_t off = 0;
  if (n > 0 && x->tcp.write_queue_size == 0) {
    uv_buf_t b = uv_buf_init(data, (unsigned)n);
    int k = uv_try_write((uv_stream_t *)&x->tcp, &b, 1);
    if (k > 0)
      off = (size_t)k;
  }
  n -= off;
  if (n == 0 && w == NULL) {
    x_wbio_reset(x, n + off);
    return 0;
  }
  if (n == 0 && x->tcp.write_queue_size == 0) {
    x_wbio_reset(x, n + off);
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
  w->tls_out = n > 0 ? malloc(n) : NULL;
  if (n > 0 && w->tls_out == NULL) {
    if (cb == x_internal_write_done)
      free(w);
    return UV_ENOMEM;
  }
  if (n > 0)
    memcpy(w->tls_out, data + off, n);
  x_wbio_reset(x, n + off);
  /* The rest (or an empty write behind what libuv still holds, so that cb
   * keeps its place) in order. */
  uv_buf_t b = uv_buf_init((char *)w->tls_out, (unsigned)n);
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
  h2r_tls_errstr(x->errmsg, sizeof(x->errmsg));
  return H2REV_ETLS;
}

static void x_tls_read(h2r_xport_t *x, const uint8_t *p, size_t n) {
  if (BIO_write(x->rbio, p, (int)n) != (int)n) {
    x_fail_open(x, UV_ENOMEM);
    return;
  }
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
    int r = SSL_read(x->ssl, x->rbuf, (int)x->rbuf_len);
    if (r > 0) {
      x->cbs->on_read(x, x->rbuf, (size_t)r);
      continue;
    }
    int e = SSL_get_error(x->ssl, r);
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
      x_fail_open(x, n == UV_EOF ? H2REV_ETLS : (int)n);
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
  if (r == 0)
    r = uv_accept(server, (uv_stream_t *)&x->tcp);
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

/* Cleartext: what the socket takes at once is written from the caller's
 * buffers now; libuv queues the rest. */
static int x_tcp_write(h2r_xport_t *x, h2r_xwrite_t *w, const uv_buf_t *bufs, unsigned n,
                       h2r_xwrite_cb cb) {
  int k = 0;
  if (x->tcp.write_queue_size == 0)
    k = uv_try_write((uv_stream_t *)&x->tcp, bufs, n);
  size_t took = k > 0 ? (size_t)k : 0; /* an error is reported by uv_write's callback */
  unsigned i = 0;
  while (i < n && took >= bufs[i].len)
    took -= bufs[i++].len;
  if (i == n) {
    x_done_push(x, w, cb);
    return 0;
  }
  w->x = x;
  w->cb = cb;
  w->tls_out = NULL;
  if (took == 0)
    return uv_write(&w->req, (uv_stream_t *)&x->tcp, bufs + i, n - i, x_write_done);
  /* uv_write copies the array: only the first buffer of the rest changes. */
  uv_buf_t small[16];
  uv_buf_t *rest = n - i <= 16 ? small : malloc((n - i) * sizeof(*rest));
  if (rest == NULL)
    return UV_ENOMEM;
  memcpy(rest, bufs + i, (n - i) * sizeof(*rest));
  rest[0].base += took;
  rest[0].len -= took;
  int r = uv_write(&w->req, (uv_stream_t *)&x->tcp, rest, n - i, x_write_done);
  if (rest != small)
    free(rest);
  return r;
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

static void x_resume(uv_timer_t *t) {
  h2r_xport_t *x = t->data;
  if (x->state == H2R_X_OPEN && x->reading)
    x_tls_read(x, (const uint8_t *)"", 0);
}

void h2r_xport_read_pause(h2r_xport_t *x, bool pause) {
  if (x->state == H2R_X_CLOSING || x->read_paused == pause)
    return;
  x->read_paused = pause;
  x->reading = !pause;
  if (pause) {
    uv_read_stop((uv_stream_t *)&x->tcp);
  } else {
    uv_read_start((uv_stream_t *)&x->tcp, x_alloc, x_read);
    /* TLS may hold records that arrived while paused: read them from a
     * callback of their own, never inside whatever resumed us (the read
     * buffer may be shared and in use). */
    if (x->ssl != NULL && x->state == H2R_X_OPEN &&
        (SSL_pending(x->ssl) > 0 || BIO_ctrl_pending(x->rbio) > 0))
      uv_timer_start(&x->timer, x_resume, 0, 0);
  }
}

X509 *h2r_xport_peer_cert(const h2r_xport_t *x) {
  return x->ssl != NULL ? SSL_get0_peer_certificate(x->ssl) : NULL;
}
