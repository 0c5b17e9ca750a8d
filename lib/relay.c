/*
 * A dialer with a server of its own (h2rev_dialer_listen): the server made
 * and mounted, /healthz on it, its TLS and its address; the drain
 * (h2rev_dialer_shutdown) and the close of both. The dialer itself (the
 * registry, the dials, the control protocol) is dialer.c, usable mounted
 * on any server without this file's parts.
 */
#include "dialer.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------ its own server */

/* /healthz on the dialer's own server. */
static void healthz(h2rev_http_req_t *req, void *arg) {
  h2r_dialer_t *d = arg;
  if (strcmp(req->path, "/healthz") == 0 && d->unhealthy)
    h2rev_http_reply(req, 503, "text/plain", "draining\n", 9);
  else if (strcmp(req->path, "/healthz") == 0)
    h2rev_http_reply(req, 200, "text/plain", "ok\n", 3);
  else
    h2rev_http_reply(req, 404, "text/plain", "not found\n", 10);
}

/* The dialer's own server, made by the first h2rev_dialer_listen. */
static int own_server(h2r_dialer_t *d) {
  h2rev_http_server_options_t so = {
      .max_streams = d->o.max_streams,
      .ping_interval_ms = d->o.ping_interval_ms,
      .ping_timeout_ms = d->o.ping_timeout_ms,
      .max_connections = d->o.max_connections,
      .log = d->o.log,
      .access_log = d->o.access_log,
      .access_log_arg = d->o.access_log_arg,
      .reuse_port = d->o.reuse_port,
      .send_timeout_ms = d->o.send_timeout_ms,
  };
  int r = h2rev_http_server_init(d->loop, &d->own, &so);
  if (r != 0)
    return r;
  d->own.data = d;
  d->own_srv = true;
  if (d->unref)
    h2rev_http_server_unref(&d->own);
  r = h2r_dialer_mount(d, d->own.s_);
  if (r == 0)
    r = h2rev_http_server_route(&d->own, "/healthz", healthz, d);
  return r;
}

void h2rev_dialer_set_healthy(h2rev_dialer_t *dialer, int healthy) {
  if (dialer->d_ != NULL)
    dialer->d_->unhealthy = !healthy;
}

int h2rev_dialer_listen(h2rev_dialer_t *dialer, const struct sockaddr *addr,
                        const h2rev_tls_options_t *tls) {
  h2r_dialer_t *d = dialer->d_;
  if (d == NULL || d->closing || d->draining)
    return UV_EBADF;
  if (d->srv != NULL && !d->own_srv)
    return UV_EBUSY;
  if (!d->own_srv) {
    int r = own_server(d);
    if (r != 0)
      return r; /* the server, if made, is closed with the dialer */
  }
  return h2rev_http_server_listen(&d->own, addr, tls);
}

int h2rev_dialer_set_tls(h2rev_dialer_t *dialer, const h2rev_tls_options_t *tls) {
  h2r_dialer_t *d = dialer->d_;
  if (d == NULL || d->closing || d->draining)
    return UV_EBADF;
  if (!d->own_srv || d->own.s_ == NULL)
    return UV_EINVAL;
  return h2rev_http_server_set_tls(&d->own, tls);
}

static void dialer_set_unref(h2rev_dialer_t *dialer, bool unref) {
  h2r_dialer_t *d = dialer->d_;
  if (d == NULL)
    return;
  d->unref = unref;
  if (d->own_srv) {
    if (unref)
      h2rev_http_server_unref(&d->own);
    else
      h2rev_http_server_ref(&d->own);
  }
  if (d->draining)
    h2r_handle_ref(&d->drain_timer, unref);
}

void h2rev_dialer_ref(h2rev_dialer_t *dialer) {
  dialer_set_unref(dialer, false);
}

void h2rev_dialer_unref(h2rev_dialer_t *dialer) {
  dialer_set_unref(dialer, true);
}

int h2rev_dialer_getsockname(const h2rev_dialer_t *dialer, unsigned n, struct sockaddr *addr,
                             int *len) {
  const h2r_dialer_t *d = dialer->d_;
  if (!d->own_srv || d->own.s_ == NULL)
    return UV_EINVAL;
  return h2rev_http_server_getsockname(&d->own, n, addr, len);
}

static void own_closed(h2rev_http_server_t *srv) {
  h2r_dialer_release(srv->data);
}

void h2rev_dialer_close(h2rev_dialer_t *dialer, h2rev_dialer_close_cb cb) {
  h2r_dialer_t *d = dialer->d_;
  if (d == NULL || d->closing)
    return;
  bool own = d->own_srv && d->own.s_ != NULL;
  h2r_dialer_close_begin(d, cb, own);
  if (own) {
    /* Every connection goes, with the server. */
    d->pending_closes++;
    h2rev_http_server_close(&d->own, own_closed);
  }
  h2r_dialer_release(d);
}

/* -------------------------------------------------------------- drain */

/* What is still in flight: every stream of a live connection except the
 * listeners' control streams and idle spares, plus one for each live
 * connection without a listener (a client: it ends by itself once its
 * requests are answered, HTTP/1.1 ones included). Such connections still
 * open for HTTP/2 get a GOAWAY (a listener's connection that lost its id).
 * Mounted on the application's server, its other clients are its business:
 * only the listeners' connections count. */
static unsigned drain_busy(h2r_dialer_t *d) {
  size_t nl;
  h2r_session_t **lc = h2r_dialer_listener_conns(d, &nl);
  long n = 0;
  for (h2r_hconn_t *c = d->srv != NULL ? d->srv->conns : NULL; c != NULL; c = c->next) {
    h2r_session_t *s = &c->s;
    if (s->state == H2R_S_DEAD)
      continue;
    bool holds = lc != NULL && bsearch(&s, lc, nl, sizeof(*lc), h2r_ptr_cmp) != NULL;
    if (!holds && !d->own_srv)
      continue;
    n += (long)s->nstreams;
    if (!holds) {
      n++;
      if (s->state == H2R_S_OPEN && s->h1 == NULL && !s->sniffing)
        h2r_session_shutdown(s);
    }
  }
  free(lc);
  n -= h2r_dialer_idle_streams(d);
  return n > 0 ? (unsigned)n : 0;
}

static void drain_tick(uv_timer_t *t);

/* Counted on the next turn: several events of one turn cost one count. */
static void drain_soon(h2r_dialer_t *d) {
  if (d->draining && !d->closing && !uv_is_closing((uv_handle_t *)&d->drain_timer))
    uv_timer_start(&d->drain_timer, drain_tick, 0, 0);
}

static void drain_timer_closed(uv_handle_t *h) {
  h2r_dialer_t *d = h->data;
  d->completing--;
  h2r_dialer_release(d);
}

/* When what the drain waits for may have ended (a stream freed, a
 * connection closed, a listener gone), or at its deadline. */
static void drain_tick(uv_timer_t *t) {
  h2r_dialer_t *d = t->data;
  if (!d->closing) {
    unsigned busy = drain_busy(d);
    uint64_t now = uv_now(d->loop);
    bool expired = now >= d->drain_deadline;
    if (busy > 0 && !expired) {
      uv_timer_start(t, drain_tick, d->drain_deadline - now, 0);
      return;
    }
    if (busy > 0)
      H2R_WARN(&d->o.log, "drain timeout: closing with %u stream%s in flight", busy,
               busy == 1 ? "" : "s");
    else
      H2R_INFO(&d->o.log, "drained: no request in flight");
    h2rev_dialer_close(d->pub, d->drain_cb);
  }
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, drain_timer_closed);
}

int h2rev_dialer_shutdown(h2rev_dialer_t *dialer, unsigned timeout_ms, h2rev_dialer_close_cb cb) {
  h2r_dialer_t *d = dialer->d_;
  if (d == NULL || d->closing || d->draining)
    return UV_EALREADY;
  /* The timer first: the GOAWAYs below may free streams (drain_soon). */
  uv_timer_init(d->loop, &d->drain_timer);
  d->drain_timer.data = d;
  if (d->unref)
    uv_unref((uv_handle_t *)&d->drain_timer);
  d->completing++;
  d->draining = true;
  d->on_change = drain_soon;
  d->drain_cb = cb;
  d->drain_deadline = uv_now(d->loop) + timeout_ms;
  unsigned n = 0;
  if (d->own_srv && d->srv != NULL) {
    h2r_server_stop_listening(d->srv);
    /* Clients may finish the streams they started, and open no more.
     * Listeners' connections stay as they are: their data streams serve the
     * requests in flight, including dials still waiting for one. */
    size_t nl;
    h2r_session_t **lc = h2r_dialer_listener_conns(d, &nl);
    for (h2r_hconn_t *c = d->srv->conns; c != NULL; c = c->next) {
      h2r_session_t *s = &c->s;
      if (lc == NULL || bsearch(&s, lc, nl, sizeof(*lc), h2r_ptr_cmp) == NULL) {
        h2r_session_shutdown(s);
        n++;
      }
    }
    free(lc);
  }
  H2R_INFO(&d->o.log, "draining: no longer listening, GOAWAY sent to %u connection%s, %u ms to go",
           n, n == 1 ? "" : "s", timeout_ms);
  uv_timer_start(&d->drain_timer, drain_tick, 0, 0); /* counts what is in flight now */
  return 0;
}
