/*
 * The dialer: the registry of attached listeners by id, the /revdial streams
 * (control and data), and h2rev_dial() which hands out data streams — idle
 * spares first, else one asked for with conn-ready.
 */
#include "dialer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct dlst {
  dlst_t *hnext;
  h2r_dialer_t *d;
  h2r_session_t *conn; /* the connection holding the control stream */
  h2rev_stream_t ctl;
  h2r_ctl_reader rd;
  h2r_strm_t *spares; /* idle data streams, linked by lnext/lprev */
  unsigned nspares;
  h2rev_dial_t *pend_head, *pend_tail;
  unsigned npending;
  unsigned asked; /* conn-ready sent, data stream not yet arrived */
  bool gone;
  bool counted;         /* in the dialer's pending closes */
  bool reuse;           /* its data streams may carry several requests in turn */
  uint64_t attached_at; /* uv_now() */
  dlst_t *snext;        /* in the dialer's serve list (serve_due) */
  bool serve_due;       /* recycled spares wait for its pending dials */
  char rxbuf[512];
  char id[];
};

static void maybe_closed(h2r_dialer_t *d) {
  if (d->closing && --d->pending_closes == 0 && d->close_cb != NULL)
    d->close_cb(d->pub);
}

enum { DIAL_IDLE, DIAL_QUEUED, DIAL_ORPHAN, DIAL_COMPLETING, DIAL_DONE };

/* A dial waiting for its id to attach (DIAL_ORPHAN; the dial's lst_). */
struct orphan {
  orphan_t *next, *prev;
  h2rev_dial_t *req;
  char id[];
};

/* max_pending_dials' default. A waiting dial costs little beyond the
 * request it is for, which the client holds open anyway; the listener's
 * connection serves max_streams of them at once and the rest wait here: at
 * 1024, 10,000 requests in flight to one listener (h2load -c 100 -m 100)
 * had 8 in 10 refused. */
#define H2R_MAX_PENDING_DIALS 16384

#define KEEPALIVE_SLICES 32 /* turns of the keep-alive timer per keepalive_ms */

static const char msg_conn_ready[] = "{\"command\":\"conn-ready\"}\n";
static const char msg_keep_alive[] = "{\"command\":\"keep-alive\"}\n";

/* -------------------------------------------------------------- table */

static uint32_t hash(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static dlst_t **slot(h2r_dialer_t *d, const char *id, size_t n) {
  dlst_t **p = &d->table[hash(id, n) & (d->tsize - 1)];
  while (*p != NULL && !(strlen((*p)->id) == n && memcmp((*p)->id, id, n) == 0))
    p = &(*p)->hnext;
  return p;
}

static void table_grow(h2r_dialer_t *d) {
  unsigned n = d->tsize * 2;
  dlst_t **t = calloc(n, sizeof(*t));
  if (t == NULL)
    return; /* longer chains, still correct */
  for (unsigned i = 0; i < d->tsize; i++) {
    while (d->table[i] != NULL) {
      dlst_t *l = d->table[i];
      d->table[i] = l->hnext;
      unsigned k = hash(l->id, strlen(l->id)) & (n - 1);
      l->hnext = t[k];
      t[k] = l;
    }
  }
  free(d->table);
  d->table = t;
  d->tsize = n;
}

/* -------------------------------------------------------------- dials */

static void dial_closed(uv_handle_t *h) {
  h2rev_dial_t *req = h->data;
  req->state_ = DIAL_DONE;
  h2r_dialer_t *d = req->dialer->d_;
  if (req->status_ == 0)
    d->st.dials_ok++;
  else
    d->st.dials_failed++;
  switch (req->status_) {
  case 0:
    break;
  case H2REV_ENOLISTENER:
    d->st.dials_nolistener++;
    break;
  case UV_ETIMEDOUT:
    d->st.dials_timeout++;
    break;
  case H2REV_EPICKUP:
    d->st.dials_pickup++;
    break;
  case H2REV_ECLOSED:
    d->st.dials_closed++;
    break;
  case H2REV_ETOOMANY:
    d->st.dials_toomany++;
    break;
  case UV_ECANCELED:
    d->st.dials_canceled++;
    break;
  default:
    break;
  }
  /* The dial counts in `completing` until its callback has returned: a
   * h2rev_dialer_close from inside the callback waits for it, not for one
   * more event than there is. */
  req->cb_(req, req->status_);
  d->completing--;
  /* A closing dialer waits for this callback: none may run after its own. */
  if (d->closing)
    maybe_closed(d);
}

static void dial_unqueue(h2rev_dial_t *req) {
  if (req->state_ == DIAL_ORPHAN) {
    h2r_dialer_t *d = req->dialer->d_;
    orphan_t *o = req->lst_;
    if (o->prev != NULL)
      o->prev->next = o->next;
    else
      d->orphans = o->next;
    if (o->next != NULL)
      o->next->prev = o->prev;
    d->norphans--;
    free(o);
    req->lst_ = NULL;
    return;
  }
  dlst_t *l = req->lst_;
  if (req->state_ != DIAL_QUEUED || l == NULL)
    return;
  if (req->prev_ != NULL)
    req->prev_->next_ = req->next_;
  else
    l->pend_head = req->next_;
  if (req->next_ != NULL)
    req->next_->prev_ = req->prev_;
  else
    l->pend_tail = req->prev_;
  l->npending--;
  req->lst_ = NULL;
}

/* Ends a dial; the callback runs once the timer handle is closed, so never
 * inside the call that started it. */
static void dial_complete(h2rev_dial_t *req, int status, const char *text) {
  if (req->state_ == DIAL_COMPLETING || req->state_ == DIAL_DONE)
    return;
  dial_unqueue(req);
  req->status_ = status;
  if (text != NULL)
    snprintf(req->err_, sizeof(req->err_), "%s", text);
  req->state_ = DIAL_COMPLETING;
  h2r_dialer_t *d = req->dialer->d_;
  d->completing++;
  if (d->closing)
    d->pending_closes++;
  uv_timer_stop(&req->timer_);
  uv_close((uv_handle_t *)&req->timer_, dial_closed);
}

static void dial_timeout(uv_timer_t *t) {
  h2rev_dial_t *req = t->data;
  if (req->state_ == DIAL_ORPHAN) {
    dial_complete(req, H2REV_ENOLISTENER, NULL); /* it did not attach in time */
    return;
  }
  dlst_t *l = req->lst_;
  if (l != NULL)
    H2R_WARN(&l->d->o.log, "dial %s: no data stream within the timeout", l->id);
  dial_complete(req, UV_ETIMEDOUT, NULL);
}

static void dial_enqueue(dlst_t *l, h2rev_dial_t *req) {
  req->state_ = DIAL_QUEUED;
  req->lst_ = l;
  req->next_ = NULL;
  req->prev_ = l->pend_tail;
  if (l->pend_tail != NULL)
    l->pend_tail->next_ = req;
  else
    l->pend_head = req;
  l->pend_tail = req;
  l->npending++;
}

/* Waits for id to attach, up to the dial's timeout: 0, or nonzero when it
 * may not wait (the dial fails as for an unknown id). */
static int orphan_wait(h2r_dialer_t *d, h2rev_dial_t *req, const char *id, size_t idlen,
                       unsigned timeout_ms) {
  if (d->o.replicas <= 1 || d->draining || d->norphans >= d->o.max_pending_dials)
    return UV_EAGAIN;
  orphan_t *o = malloc(sizeof(*o) + idlen + 1);
  if (o == NULL)
    return UV_ENOMEM;
  memcpy(o->id, id, idlen + 1);
  o->req = req;
  o->prev = NULL;
  o->next = d->orphans;
  if (d->orphans != NULL)
    d->orphans->prev = o;
  d->orphans = o;
  d->norphans++;
  req->state_ = DIAL_ORPHAN;
  req->lst_ = o;
  uv_timer_start(&req->timer_, dial_timeout, timeout_ms ? timeout_ms : d->o.dial_timeout_ms, 0);
  return 0;
}

static void ask_conn(dlst_t *l);

/* l has just attached: the dials that waited for its id are its own. */
static void adopt_orphans(h2r_dialer_t *d, dlst_t *l) {
  orphan_t *next;
  for (orphan_t *o = d->orphans; o != NULL; o = next) {
    next = o->next;
    if (strcmp(o->id, l->id) != 0)
      continue;
    h2rev_dial_t *req = o->req;
    dial_unqueue(req); /* frees o */
    dial_enqueue(l, req);
  }
  if (l->pend_head != NULL && l->asked < l->npending)
    ask_conn(l);
}

/* ---------------------------------------------------- control stream */

static void ctl_wrote(h2rev_write_t *w, int status) {
  (void)status;
  free(w);
}

static void ctl_send(dlst_t *l, const char *msg, size_t len) {
  if (l->gone)
    return;
  h2rev_write_t *w = malloc(sizeof(*w));
  if (w == NULL)
    return;
  uv_buf_t b = uv_buf_init((char *)msg, (unsigned)len);
  if (h2rev_stream_write(w, &l->ctl, &b, 1, ctl_wrote) != 0)
    free(w);
}

static void ask_conn(dlst_t *l) {
  ctl_send(l, msg_conn_ready, sizeof(msg_conn_ready) - 1);
  l->asked++;
  l->d->st.conn_ready_sent++;
}

static void ctl_closed(h2rev_stream_t *s) {
  dlst_t *l = s->data;
  h2r_dialer_t *d = l->d;
  bool counted = l->counted;
  for (dlst_t **p = &d->serve_head; l->serve_due && *p != NULL; p = &(*p)->snext)
    if (*p == l) {
      *p = l->snext;
      break;
    }
  h2r_ctl_reader_free(&l->rd);
  free(l);
  if (counted)
    maybe_closed(d);
}

static void spare_remove(dlst_t *l, h2r_strm_t *st) {
  if (st->lprev != NULL)
    st->lprev->lnext = st->lnext;
  else
    l->spares = st->lnext;
  if (st->lnext != NULL)
    st->lnext->lprev = st->lprev;
  st->lnext = st->lprev = NULL;
  l->nspares--;
  l->d->st.spares--;
}

/* The id is free again at once; its pending dials fail, its spares close. */
static void info_of(const dlst_t *l, h2rev_listener_info_t *info) {
  info->id = l->id;
  info->peer = l->conn->x.peer;
  info->attached_at = l->attached_at;
  info->spares = l->nspares;
  info->pending = l->npending;
  /* One connection per id, as listeners make them: its streams but the
   * control stream and the spares are in use. */
  unsigned n = l->conn->nstreams, idle = 1 + l->nspares;
  info->streams = n > idle ? n - idle : 0;
}

static void event(dlst_t *l, int ev) {
  h2r_dialer_t *d = l->d;
  if (d->o.on_listener == NULL || d->closing)
    return;
  h2rev_listener_info_t info;
  info_of(l, &info);
  d->o.on_listener(d->pub, ev, &info);
}

static void unregister(dlst_t *l, int err, const char *why) {
  if (l->gone)
    return;
  h2r_dialer_t *d = l->d;
  l->gone = true;
  dlst_t **p = slot(d, l->id, strlen(l->id));
  if (*p == l)
    *p = l->hnext;
  d->count--;
  d->st.listeners--;
  H2R_INFO(&d->o.log, "listener %s detached: %s", l->id, why);
  event(l, H2REV_EV_DETACH);
  while (l->pend_head != NULL)
    dial_complete(l->pend_head, err, NULL);
  while (l->spares != NULL) {
    h2r_strm_t *st = l->spares;
    spare_remove(l, st);
    h2r_strm_abandon(st);
  }
  l->counted = d->closing;
  if (l->counted)
    d->pending_closes++;
  h2rev_stream_close(&l->ctl, ctl_closed);
}

static int ctl_msg(void *arg, const h2r_ctl_msg *m) {
  dlst_t *l = arg;
  if (strcmp(m->command, H2R_CMD_PICKUP_FAILED) == 0) {
    /* Clients cause these at will (streams reset under a flood). */
    h2r_log_limited(&l->d->o.log, &l->d->rl, l->d->loop, H2REV_LOG_WARN,
                    "listener %s: pickup failed: %s", l->id, m->err);
    if (l->asked > 0)
      l->asked--;
    if (l->pend_head != NULL)
      dial_complete(l->pend_head, H2REV_EPICKUP, m->err[0] ? m->err : "pickup failed");
  }
  /* keep-alive and unknown commands: nothing to do */
  return 0;
}

static void ctl_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)sz;
  dlst_t *l = s->data;
  *buf = uv_buf_init(l->rxbuf, sizeof(l->rxbuf));
}

static void ctl_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  dlst_t *l = s->data;
  if (n == 0 || l->gone)
    return;
  if (n < 0) {
    unregister(l, H2REV_ECLOSED, n == UV_EOF ? "control stream ended" : h2rev_strerror((int)n));
    return;
  }
  int r = h2r_ctl_feed(&l->rd, buf->base, (size_t)n, ctl_msg, l);
  if (r != 0) {
    H2R_WARN(&l->d->o.log, "listener %s: closing control stream: %s", l->id,
             r == H2REV_ECONTROL ? l->rd.why : h2rev_strerror(r));
    unregister(l, H2REV_ECLOSED, "malformed control stream");
  }
}

/* ------------------------------------------------------ data streams */

static void spare_gone(h2r_strm_t *st, int err) {
  (void)err;
  dlst_t *l = st->owner;
  if (st->lnext != NULL || st->lprev != NULL || l->spares == st)
    spare_remove(l, st);
}

static const h2r_strm_hooks spare_hooks = {NULL, spare_gone};

static void give(h2rev_dial_t *req, h2r_strm_t *st) {
  h2r_strm_attach(st, req->stream);
  dial_complete(req, 0, NULL);
}

static void spare_push(dlst_t *l, h2r_strm_t *st) {
  st->hooks = &spare_hooks;
  st->owner = l;
  st->lprev = NULL;
  st->lnext = l->spares;
  if (l->spares != NULL)
    l->spares->lprev = st;
  l->spares = st;
  l->nspares++;
  l->d->st.spares++;
}

static void data_arrived(dlst_t *l, h2r_strm_t *st) {
  if (l->asked > 0)
    l->asked--;
  if (l->pend_head != NULL)
    give(l->pend_head, st);
  else
    spare_push(l, st);
}

/* A usable idle data stream of l's, out of its spares (unusable ones are
 * dropped on the way), or NULL. */
static h2r_strm_t *spare_take(dlst_t *l) {
  while (l->spares != NULL) {
    h2r_strm_t *st = l->spares;
    spare_remove(l, st);
    st->hooks = NULL;
    if ((st->flags & H2R_F_NG_CLOSED) || st->sess->state == H2R_S_DEAD)
      continue; /* reset by the listener, not yet reaped: it frees itself */
    /* A reused stream that spoke while idle is not usable; a listener's
     * spare may carry the greeting of a server that speaks first. */
    if ((st->flags & H2R_F_EOF) || (st->rq_head != NULL && st->idle_since != 0) || st->err != 0) {
      h2r_strm_abandon(st); /* ended, or spoke while idle */
      continue;
    }
    st->idle_since = 0;
    return st;
  }
  return NULL;
}

/* Dials waiting while a stream was recycled: on the turn after (a byte
 * after the response may still have been on its way in), the spares go to
 * them. Without this, at the listener connection's stream limit, a dial
 * waited for a new stream (none could open) while a recycled one sat idle:
 * 504 after the dial timeout. */
static void serve_pending(void *arg) {
  h2r_dialer_t *d = arg;
  while (d->serve_head != NULL) {
    dlst_t *l = d->serve_head;
    d->serve_head = l->snext;
    l->snext = NULL;
    l->serve_due = false;
    h2r_strm_t *st;
    while (!l->gone && l->pend_head != NULL && (st = spare_take(l)) != NULL)
      give(l->pend_head, st);
  }
}

static void serve_soon(dlst_t *l) {
  h2r_dialer_t *d = l->d;
  if (l->serve_due || l->pend_head == NULL)
    return;
  l->serve_due = true;
  l->snext = d->serve_head;
  d->serve_head = l;
  h2r_defer_arm(&d->serve);
}

#define RECYCLED_MAX     256   /* idle data streams kept per listener */
#define RECYCLED_IDLE_MS 60000 /* a reused stream idle this long is closed */

int h2rev_dialer_recycle(h2rev_dialer_t *dialer, const char *id, h2rev_stream_t *stream) {
  h2r_dialer_t *d = dialer->d_;
  if (id == NULL || stream == NULL)
    return UV_EINVAL;
  dlst_t *l = d->closing || d->draining ? NULL : *slot(d, id, strlen(id));
  if (l == NULL || l->gone)
    return UV_ENOENT;
  if (l->nspares >= RECYCLED_MAX)
    return H2REV_ETOOMANY;
  if (stream->s_ == NULL || stream->s_->sess != l->conn)
    return UV_EBUSY;
  h2r_strm_t *st = h2r_strm_detach(stream);
  if (st == NULL)
    return UV_EBUSY;
  if (!l->reuse) {
    /* Closed now rather than ended gracefully: the Go listener holds a
     * stream a second after its last write before it ends its side, and
     * past the concurrent streams we allow, its HTTP/2 client opens
     * another connection, whose data streams are refused (409). */
    st->hooks = NULL;
    h2r_strm_abandon(st);
    return 0;
  }
  /* Among the spares, not to a waiting dial at once: this runs inside the
   * stream's read callback, and a byte after the response (which would make
   * it unusable, see h2rev_dial) may still be on its way in. */
  st->idle_since = uv_now(d->loop);
  spare_push(l, st);
  serve_soon(l);
  return 0;
}

/* Reused streams idle too long are closed; the listener's own spares stay. */
static void expire_recycled(dlst_t *l, uint64_t now) {
  h2r_strm_t *st = l->spares;
  while (st != NULL) {
    h2r_strm_t *next = st->lnext;
    if (st->idle_since != 0 && now - st->idle_since >= RECYCLED_IDLE_MS) {
      spare_remove(l, st);
      st->hooks = NULL;
      h2r_strm_abandon(st);
    }
    st = next;
  }
}

/* ----------------------------------------------------------- requests */

static int hexdig(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = (char)(c | 32);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Finds id= (or key=) in a query string; decodes %XX into out. */
static int query_id(const char *q, char *out, size_t cap, size_t *len) {
  while (q != NULL && *q != '\0') {
    const char *amp = strchr(q, '&');
    size_t fl = amp ? (size_t)(amp - q) : strlen(q);
    size_t kl = fl > 3 && memcmp(q, "id=", 3) == 0    ? 3
                : fl > 4 && memcmp(q, "key=", 4) == 0 ? 4
                                                      : 0;
    if (kl == 0) {
      q = amp ? amp + 1 : NULL;
      continue;
    }
    size_t o = 0;
    for (size_t i = kl; i < fl; i++) {
      char c = q[i];
      if (c == '%') {
        if (i + 2 < fl) {
          int hi = hexdig(q[i + 1]);
          int lo = hexdig(q[i + 2]);
          if (hi < 0 || lo < 0)
            return H2REV_EBADID;
          c = (char)(hi * 16 + lo);
          i += 2;
        } else {
          return H2REV_EBADID;
        }
      }
      if (o + 1 >= cap)
        return H2REV_EBADID;
      out[o++] = c;
    }
    out[o] = '\0';
    *len = o;
    return h2r_id_valid(out, o) ? 0 : H2REV_EBADID;
  }
  return H2REV_EBADID;
}

static void refuse(h2r_dialer_t *d, h2r_strm_t *st, int status, const char *why, const char *id) {
  d->st.refused++;
  H2R_WARN(&d->o.log, "%s: /revdial refused (%d) for id \"%s\": %s", st->sess->x.peer, status, id,
           why);
  char body[160];
  snprintf(body, sizeof(body), "%s\n", why);
  /* The replica too: a listener attached to it already knows a 409 for its
   * own id as a second connection to the same replica. */
  h2r_strm_reject_nv(st, status, body, d->replica_nv, d->nreplica_nv);
}

/* A server that asks for client certificates (verify_client) lets clients
 * without one through the handshake for the proxy: a listener needs one. A
 * certificate that did not verify has failed the handshake already. */
static bool has_client_cert(const h2r_strm_t *st) {
  SSL *ssl = st->sess->x.ssl;
  if (ssl == NULL || !(SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER))
    return true;
  return h2r_xport_peer_cert(&st->sess->x) != NULL && SSL_get_verify_result(ssl) == X509_V_OK;
}

/* 0 when the authorize callback allows the listener, else the status to
 * refuse with. The callback sees every header of the request: a header
 * block is bounded by max_header_bytes, not by a count. */
static int authorized(h2r_dialer_t *d, h2r_strm_t *st, const char *id) {
  if (d->o.authorize == NULL)
    return 0;
  h2rev_header_t *hs = malloc((st->nhdrs > 0 ? st->nhdrs : 1) * sizeof(*hs));
  if (hs == NULL)
    return 503;
  for (unsigned i = 0; i < st->nhdrs; i++) {
    hs[i].name = st->hbuf + st->hdrs[i].name;
    hs[i].value = st->hbuf + st->hdrs[i].value;
  }
  h2rev_peer_t peer = {.address = st->sess->x.peer};
  int status = 503; /* h2r_tls_peer_fill: out of memory */
  if (h2r_tls_peer_fill(&peer, h2r_xport_peer_cert(&st->sess->x)) == 0) {
    status = d->o.authorize(d->o.authorize_arg, id, hs, st->nhdrs, &peer) == 0 ? 0 : 403;
    h2r_tls_peer_free(&peer);
  }
  free(hs);
  return status;
}

static void revdial(h2r_dialer_t *d, h2r_strm_t *st, const char *query) {
  h2r_session_t *c = st->sess;
  char id[H2R_ID_MAX + 1]; /* query_id refuses a longer one */
  size_t idlen = 0;
  if (query_id(query, id, sizeof(id), &idlen) != 0) {
    refuse(d, st, 400, "missing or invalid id", "");
    return;
  }
  const char *role = h2r_strm_header(st, H2R_ROLE_HEADER, NULL);
  if (!has_client_cert(st)) {
    refuse(d, st, 403, "no client certificate", id);
    return;
  }
  int denied = authorized(d, st, id);
  if (denied != 0) {
    refuse(d, st, denied, denied == 503 ? "out of memory" : "not authorized", id);
    return;
  }
  dlst_t **p = slot(d, id, idlen);
  dlst_t *l = *p;
  if (l != NULL) {
    if (l->conn != c) {
      refuse(d, st, 409, "id is attached by another connection", id);
      return;
    }
    if (role != NULL && strcmp(role, "control") == 0) {
      refuse(d, st, 409, "id already has a control stream", id);
      return;
    }
    if (h2r_strm_respond(st, 200, NULL, 0) != 0) {
      h2r_strm_abandon(st);
      return;
    }
    /* A data stream lives on as a spare and through many requests: its
     * head, read now, would hold the connection's header memory, and a
     * listener at a --max-streams of thousands saw its new data streams
     * refused (REFUSED_STREAM, then pickup-failed: 502) for want of it. */
    h2r_strm_drop_headers(st);
    data_arrived(l, st);
    return;
  }
  if (role != NULL && strcmp(role, "data") == 0) {
    refuse(d, st, 404, "no control stream for this id", id);
    return;
  }
  if (d->count >= d->o.max_listeners) {
    refuse(d, st, 503, "too many listeners", id);
    return;
  }
  l = calloc(1, sizeof(*l) + idlen + 1);
  if (l == NULL) {
    refuse(d, st, 503, "out of memory", id);
    return;
  }
  memcpy(l->id, id, idlen + 1);
  l->d = d;
  l->conn = c;
  /* Only h2rev's listener states the roles of its streams. The Go listener's
   * http.Server loses a request that reaches a kept-alive connection before
   * its handler of the previous one has returned (its pending background
   * read of one byte takes the whole chunk the revdial connection hands it),
   * and the exchange then waits for ever: one request per stream for it,
   * as the Go dialer does. */
  l->reuse = role != NULL;
  l->rd.max = d->o.max_control_line;
  l->ctl.data = l;
  /* The Go listener waits for the response head before anything else. */
  if (h2r_strm_respond(st, 200, d->replica_nv, d->nreplica_nv) != 0) {
    free(l);
    h2r_strm_abandon(st);
    return;
  }
  h2r_strm_attach(st, &l->ctl);
  h2rev_stream_read_start(&l->ctl, ctl_alloc, ctl_read);
  *p = l;
  d->count++;
  d->st.listeners++;
  if (d->count > d->tsize)
    table_grow(d);
  l->attached_at = uv_now(d->loop);
  H2R_INFO(&d->o.log, "listener %s attached from %s", l->id, st->sess->x.peer);
  if (d->orphans != NULL)
    adopt_orphans(d, l);
  event(l, H2REV_EV_ATTACH);
}

/* <base>/revdial, a handler of the server: HTTP/2 only, where the request's
 * stream becomes the listener's control stream or a data stream. */
static void revdial_handler(h2rev_http_req_t *req, void *arg) {
  h2r_dialer_t *d = ((h2rev_dialer_t *)arg)->d_;
  char next = req->path[strlen(req->route)];
  if (next != '\0' && next != '?') {
    h2rev_http_reply(req, 404, "text/plain", "not found\n", 10);
    return;
  }
  if (req->http_major != 2) {
    static const char msg[] = "/revdial needs HTTP/2\n";
    h2rev_http_reply(req, 404, "text/plain", msg, sizeof(msg) - 1);
    return;
  }
  h2r_strm_t *st = h2r_hreq_take_stream(req);
  if (st == NULL) {
    h2rev_http_abort(req);
    return;
  }
  if (d->closing) {
    refuse(d, st, 503, "shutting down", "");
    return;
  }
  /* The path is the stream's own now (the request is gone). */
  const char *path = h2r_strm_header(st, ":path", NULL);
  const char *q = path != NULL ? strchr(path, '?') : NULL;
  revdial(d, st, q != NULL ? q + 1 : "");
}

/* --------------------------------------------------------- connections */

/* What a drain waits for may have changed. */
static void changed(h2r_dialer_t *d) {
  if (d->on_change != NULL)
    d->on_change(d);
}

static void mount_conn_dead(void *arg, h2r_session_t *s, int err) {
  h2r_dialer_t *d = arg;
  changed(d);
  /* Every id of this connection is free now, not when its streams drain. */
  for (unsigned i = 0; i < d->tsize; i++) {
    dlst_t *l = d->table[i];
    while (l != NULL) {
      dlst_t *next = l->hnext;
      if (l->conn == s)
        unregister(l, H2REV_ECLOSED, err ? h2rev_strerror(err) : "connection closed");
      l = next;
    }
  }
}

static void mount_conn_closed(void *arg, h2r_session_t *s) {
  h2r_dialer_t *d = arg;
  changed(d);
  for (size_t i = 0; i < d->nwaiting; i++) {
    if (d->waiting[i] == s) {
      d->waiting[i] = d->waiting[--d->nwaiting];
      maybe_closed(d);
      return;
    }
  }
}

static void mount_server_closed(void *arg) {
  h2r_dialer_t *d = arg;
  d->srv = NULL;
}

static void mount_stream_freed(void *arg, h2r_session_t *s) {
  (void)s;
  changed(arg);
}

static const h2r_watch_ops watch_ops = {mount_conn_dead, mount_conn_closed, mount_server_closed,
                                        mount_stream_freed};

/* <base>/revdial and <base>/proxy on srv, and its connections watched. */
int h2r_dialer_mount(h2r_dialer_t *d, h2r_server_t *srv) {
  size_t bl = strlen(d->base);
  char *prefix = malloc(bl + sizeof("/revdial"));
  if (prefix == NULL)
    return UV_ENOMEM;
  memcpy(prefix, d->base, bl);
  memcpy(prefix + bl, "/revdial", sizeof("/revdial"));
  int r = h2r_server_route(srv, prefix, revdial_handler, d->pub);
  if (r == 0) {
    memcpy(prefix + bl, "/proxy", sizeof("/proxy"));
    r = h2r_server_route(srv, prefix, h2rev_dialer_proxy, d->pub);
  }
  /* CONNECT <id>:<port> too, unless the program routes those itself. */
  if (r == 0 && h2r_server_route_connect(srv, h2rev_dialer_proxy, d->pub) == UV_ENOMEM)
    r = UV_ENOMEM;
  free(prefix);
  if (r == 0)
    r = h2r_server_watch(srv, &watch_ops, d); /* UV_EBUSY: another dialer's server */
  if (r != 0) {
    h2r_server_unroute(srv, d->pub);
    return r;
  }
  d->srv = srv;
  return 0;
}

/* Each listener gets a keep-alive every keepalive_ms, the table's slots
 * taken in KEEPALIVE_SLICES turns over that time: with thousands of
 * listeners, one pass over all of them at once held the loop (tens of
 * milliseconds every 30 s, requests waiting behind it). */
static void keepalive_tick(uv_timer_t *t) {
  h2r_dialer_t *d = t->data;
  uint64_t now = uv_now(d->loop);
  /* The slices due by the clock, not by the count of turns: a loop that
   * runs the timer late catches up instead of stretching the period. */
  uint64_t due = now / uv_timer_get_repeat(t);
  if (due > d->ka_slice + KEEPALIVE_SLICES)
    d->ka_slice = due - KEEPALIVE_SLICES; /* late by a whole period: each once */
  for (; d->ka_slice < due; d->ka_slice++) {
    unsigned slice = (unsigned)(d->ka_slice % KEEPALIVE_SLICES);
    for (unsigned i = slice; i < d->tsize; i += KEEPALIVE_SLICES)
      for (dlst_t *l = d->table[i]; l != NULL; l = l->hnext) {
        ctl_send(l, msg_keep_alive, sizeof(msg_keep_alive) - 1);
        expire_recycled(l, now);
      }
  }
}

/* ------------------------------------------------------------ public */

/* The replica id given, or a random one, and the headers that carry it. */
static int replica_setup(h2r_dialer_t *d) {
  const char *rid = d->o.replica_id;
  if (rid != NULL) {
    size_t len = strlen(rid);
    if (len > H2R_REPLICA_MAX || !h2r_id_valid(rid, len))
      return UV_EINVAL;
    memcpy(d->replica, rid, len + 1);
  } else {
    unsigned char rnd[H2R_REPLICA_RANDOM];
    int r = uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL);
    if (r != 0)
      return r;
    for (size_t i = 0; i < sizeof(rnd); i++)
      snprintf(d->replica + 2 * i, 3, "%02x", rnd[i]);
  }
  d->o.replica_id = d->replica;
  if (d->o.replicas > H2R_REPLICAS_MAX)
    return UV_EINVAL;
  d->replica_nv[0] =
      (nghttp2_nv){(uint8_t *)H2R_REPLICA_HEADER, (uint8_t *)d->replica,
                   sizeof(H2R_REPLICA_HEADER) - 1, strlen(d->replica), NGHTTP2_NV_FLAG_NONE};
  d->nreplica_nv = 1;
  if (d->o.replicas > 0) {
    snprintf(d->replicas, sizeof(d->replicas), "%u", d->o.replicas);
    d->replica_nv[1] =
        (nghttp2_nv){(uint8_t *)H2R_REPLICAS_HEADER, (uint8_t *)d->replicas,
                     sizeof(H2R_REPLICAS_HEADER) - 1, strlen(d->replicas), NGHTTP2_NV_FLAG_NONE};
    d->nreplica_nv = 2;
  }
  return 0;
}

const char *h2rev_dialer_replica_id(const h2rev_dialer_t *dialer) {
  return dialer->d_ != NULL ? dialer->d_->replica : "";
}

int h2rev_dialer_init(uv_loop_t *loop, h2rev_dialer_t *dialer, const h2rev_dialer_options_t *opts) {
  h2r_dialer_t *d = calloc(1, sizeof(*d));
  if (d == NULL)
    return UV_ENOMEM;
  if (opts != NULL)
    d->o = *opts;
  const char *base = d->o.base_path ? d->o.base_path : "";
  size_t bl = strlen(base);
  while (bl > 0 && base[bl - 1] == '/')
    bl--;
  if (bl > 0 && base[0] != '/') {
    free(d);
    return UV_EINVAL;
  }
  d->base = malloc(bl + 1);
  d->tsize = 64;
  d->table = calloc(d->tsize, sizeof(*d->table));
  if (d->base == NULL || d->table == NULL) {
    free(d->base);
    free(d->table);
    free(d);
    return UV_ENOMEM;
  }
  memcpy(d->base, base, bl);
  d->base[bl] = '\0';
  d->o.base_path = d->base;
  if (d->o.dial_timeout_ms == 0)
    d->o.dial_timeout_ms = 10000;
  if (d->o.max_pending_dials == 0)
    d->o.max_pending_dials = H2R_MAX_PENDING_DIALS;
  if (d->o.max_listeners == 0)
    d->o.max_listeners = 10000;
  if (d->o.max_control_line == 0)
    d->o.max_control_line = 4096;
  if (d->o.keepalive_ms == 0)
    d->o.keepalive_ms = 30000;
  if (d->o.ping_interval_ms == 0)
    d->o.ping_interval_ms = 30000;
  if (d->o.ping_timeout_ms == 0)
    d->o.ping_timeout_ms = 15000;
  if (d->o.max_streams == 0)
    d->o.max_streams = 1000;
  if (d->o.max_client_streams == 0)
    d->o.max_client_streams = 100;
  if (d->o.body_timeout_ms == 0)
    d->o.body_timeout_ms = 30000;
  if (d->o.response_timeout_ms == 0)
    d->o.response_timeout_ms = 60000;
  int r = replica_setup(d);
  if (r != 0) {
    free(d->base);
    free(d->table);
    free(d);
    return r;
  }
  d->loop = loop;
  d->pub = dialer;
  uv_timer_init(loop, &d->keepalive);
  d->keepalive.data = d;
  unsigned tick = d->o.keepalive_ms / KEEPALIVE_SLICES;
  tick = tick ? tick : 1;
  d->ka_slice = uv_now(loop) / tick;
  uv_timer_start(&d->keepalive, keepalive_tick, tick, tick);
  uv_unref((uv_handle_t *)&d->keepalive);
  h2r_defer_init(loop, &d->serve, serve_pending, d);
  h2r_defer_set_unref(&d->serve, true); /* the dials it serves hold the loop */
  dialer->loop = loop;
  dialer->d_ = d;
  return 0;
}

int h2rev_dialer_mount(h2rev_dialer_t *dialer, h2rev_http_server_t *server) {
  h2r_dialer_t *d = dialer->d_;
  if (d == NULL || d->closing || d->srv != NULL || d->own_srv)
    return UV_EBUSY;
  if (server->s_ == NULL || server->s_->closing)
    return UV_EBADF;
  return h2r_dialer_mount(d, server->s_);
}

int h2rev_dial(h2rev_dial_t *req, h2rev_dialer_t *dialer, const char *id, h2rev_stream_t *stream,
               unsigned timeout_ms, h2rev_dial_cb cb) {
  h2r_dialer_t *d = dialer->d_;
  if (cb == NULL || stream == NULL || id == NULL)
    return UV_EINVAL;
  size_t idlen = strlen(id);
  if (!h2r_id_valid(id, idlen))
    return H2REV_EBADID;
  req->dialer = dialer;
  req->stream = stream;
  req->cb_ = cb;
  req->next_ = req->prev_ = NULL;
  req->lst_ = NULL;
  req->err_[0] = '\0';
  req->state_ = DIAL_IDLE;
  uv_timer_init(d->loop, &req->timer_);
  req->timer_.data = req;
  dlst_t *l = d->closing ? NULL : *slot(d, id, idlen);
  if (l == NULL && !d->closing && orphan_wait(d, req, id, idlen, timeout_ms) == 0)
    return 0;
  if (l == NULL) {
    dial_complete(req, d->closing ? UV_ECANCELED : H2REV_ENOLISTENER, NULL);
    return 0;
  }
  h2r_strm_t *st = spare_take(l);
  if (st != NULL) {
    give(req, st);
    return 0;
  }
  if (l->npending >= d->o.max_pending_dials) {
    dial_complete(req, H2REV_ETOOMANY, NULL);
    return 0;
  }
  dial_enqueue(l, req);
  uv_timer_start(&req->timer_, dial_timeout, timeout_ms ? timeout_ms : d->o.dial_timeout_ms, 0);
  /* Ask for a stream only when the ones already asked for do not cover the
   * dials waiting. */
  if (l->asked < l->npending)
    ask_conn(l);
  return 0;
}

int h2rev_dial_cancel(h2rev_dial_t *req) {
  if (req->state_ != DIAL_QUEUED && req->state_ != DIAL_ORPHAN)
    return UV_EINVAL;
  dial_complete(req, UV_ECANCELED, NULL);
  return 0;
}

const char *h2rev_dial_strerror(const h2rev_dial_t *req) {
  return req->status_ == H2REV_EPICKUP && req->err_[0] ? req->err_ : h2rev_strerror(req->status_);
}

const h2rev_dialer_options_t *h2r_dialer_options(const h2rev_dialer_t *dialer) {
  return &dialer->d_->o;
}

h2r_ratelog_t *h2r_dialer_ratelog(h2rev_dialer_t *dialer) {
  return &dialer->d_->rl;
}

size_t h2rev_dialer_listeners(const h2rev_dialer_t *dialer, h2rev_listener_info_t *out,
                              size_t cap) {
  const h2r_dialer_t *d = dialer->d_;
  size_t n = 0;
  for (unsigned i = 0; d != NULL && i < d->tsize; i++)
    for (const dlst_t *l = d->table[i]; l != NULL; l = l->hnext, n++)
      if (n < cap)
        info_of(l, &out[n]);
  return n;
}

int h2rev_dialer_foreach(const h2rev_dialer_t *dialer, h2rev_listener_iter_cb cb, void *arg) {
  const h2r_dialer_t *d = dialer->d_;
  for (unsigned i = 0; d != NULL && i < d->tsize; i++)
    for (const dlst_t *l = d->table[i]; l != NULL; l = l->hnext) {
      h2rev_listener_info_t info;
      info_of(l, &info);
      int r = cb(arg, &info);
      if (r != 0)
        return r;
    }
  return 0;
}

void h2rev_dialer_stats(const h2rev_dialer_t *dialer, h2rev_dialer_stats_t *out) {
  *out = dialer->d_->st;
}

h2rev_http_server_t *h2rev_dialer_server(const h2rev_dialer_t *dialer) {
  const h2r_dialer_t *d = dialer->d_;
  return d != NULL && d->srv != NULL ? d->srv->pub : NULL;
}

static void dialer_done(h2rev_dialer_t *pub) {
  h2r_dialer_t *d = pub->d_;
  h2rev_dialer_close_cb cb = d->user_close_cb;
  if (d->srv != NULL) {
    h2r_server_unroute(d->srv, d->pub);
    h2r_server_watch(d->srv, NULL, d);
  }
  free(d->waiting);
  free(d->table);
  free(d->base);
  free(d);
  pub->d_ = NULL;
  if (cb != NULL)
    cb(pub);
}

static void timer_closed(uv_handle_t *h) {
  maybe_closed(h->data);
}

/* -------------------------------------------------------------- close */

/* Begins the close: every listener goes, and the listeners' connections
 * too unless conns_go_with_server (the server they are on closes them all).
 * The caller holds one count of the close (h2r_dialer_release). */
void h2r_dialer_close_begin(h2r_dialer_t *d, h2rev_dialer_close_cb cb, bool conns_go_with_server) {
  d->closing = true;
  d->user_close_cb = cb;
  d->close_cb = dialer_done;
  d->pending_closes = 1; /* the caller's */
  d->pending_closes += (int)d->completing;
  d->pending_closes += 3; /* the keep-alive timer and the serve deferral's two handles */
  uv_close((uv_handle_t *)&d->keepalive, timer_closed);
  h2r_defer_close(&d->serve, timer_closed);
  d->serve_head = NULL;
  while (d->orphans != NULL)
    dial_complete(d->orphans->req, UV_ECANCELED, NULL);
  if (d->srv != NULL && !conns_go_with_server)
    d->waiting = h2r_dialer_listener_conns(d, &d->nwaiting);
  for (unsigned i = 0; i < d->tsize; i++)
    while (d->table[i] != NULL)
      unregister(d->table[i], UV_ECANCELED, "dialer closing");
  /* Mounted: the connections of our listeners go; the application's other
   * clients stay. */
  d->pending_closes += (int)d->nwaiting;
  for (size_t i = 0; i < d->nwaiting; i++)
    h2r_session_close(d->waiting[i], H2REV_ECLOSED);
}

void h2r_dialer_release(h2r_dialer_t *d) {
  maybe_closed(d);
}

int h2r_ptr_cmp(const void *a, const void *b) {
  const void *pa = *(void *const *)a, *pb = *(void *const *)b;
  uintptr_t x = (uintptr_t)pa, y = (uintptr_t)pb;
  return x < y ? -1 : x > y;
}

/* The connections holding attached listeners, sorted (for bsearch); *n of
 * them. NULL with *n 0 when there are none or memory is short. */
h2r_session_t **h2r_dialer_listener_conns(h2r_dialer_t *d, size_t *n) {
  *n = 0;
  if (d->count == 0)
    return NULL;
  h2r_session_t **v = malloc(d->count * sizeof(*v));
  if (v == NULL)
    return NULL;
  size_t k = 0;
  for (unsigned i = 0; i < d->tsize; i++)
    for (dlst_t *l = d->table[i]; l != NULL && k < d->count; l = l->hnext)
      v[k++] = l->conn;
  qsort(v, k, sizeof(*v), h2r_ptr_cmp);
  size_t u = 0;
  for (size_t i = 0; i < k; i++)
    if (u == 0 || v[u - 1] != v[i])
      v[u++] = v[i];
  *n = u;
  return v;
}

long h2r_dialer_idle_streams(const h2r_dialer_t *d) {
  long n = 0;
  for (unsigned i = 0; i < d->tsize; i++)
    for (const dlst_t *l = d->table[i]; l != NULL; l = l->hnext)
      n += 1 + (long)l->nspares;
  return n;
}
