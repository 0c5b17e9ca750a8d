/*
 * The listener: connects out to the dialer, holds the control stream, opens
 * data streams when asked (and a few spares ahead of demand), hands them to
 * the application like accept(), and reconnects with backoff and jitter.
 *
 * Several dialer replicas (behind one load balancer, or at several URLs):
 * the application's listener is a group of attachments (struct
 * h2r_listeners), each one an h2r_listener_t that keeps one connection as a
 * single listener does, and knows the replica it reached (x-h2rev-replica).
 * An attachment that reaches a replica another one holds drops that
 * connection and tries again; the group grows to the number of replicas
 * the dialers announce (x-h2rev-replicas).
 */
#include "control.h"

#include <openssl/crypto.h>

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct h2r_listener h2r_listener_t;
typedef struct h2r_listeners h2r_listeners_t;

/* max_attachments' default: attachments (replicas) one listener holds. */
#define H2R_ATTACHMENTS_DEFAULT 64

#define H2R_MAX_SPARES 64
/* h2rev_listener_options_t.headers: at most this many (UV_EINVAL beyond). */
#define H2R_LISTENER_MAX_HEADERS 32
/* A stream's request: the 4 pseudo-headers, those headers and the role. */
#define H2R_LISTENER_NV (4 + H2R_LISTENER_MAX_HEADERS + 1)
/* Data streams the dialer refused in a row (REFUSED_STREAM) before the dial
 * they were for is given up (pickup-failed). */
#define H2R_REFUSED_RETRIES 100
/* State changes waiting for their callback: a handful per loop turn at most
 * (connecting, lost, retrying, stopped); beyond it the oldest is dropped. */
#define H2R_STATE_QUEUE 16
/* A refusal's body (the dialer says why in a line of text) is read for at
 * most this long and this many bytes before the attempt is reported. */
#define H2R_REFUSAL_BODY_MS  2000
#define H2R_REFUSAL_BODY_MAX 160
/* A control stream the dialer answered like a dialer (200, a body that does
 * not end) counts as attached once a control message or a data stream's 200
 * proves it, or once it has stayed open this long. */
#define H2R_PROOF_MS 1000
/* Through a load balancer an attachment reaches a replica another one holds
 * now and then (1 - unheld/replicas of the time): this many such attempts in
 * a row retry after backoff_min_ms, before the backoff doubles (a count of
 * replicas above the truth then costs little). */
#define H2R_DUP_FAST 10
/* An attachment that lived this long resets the backoff: one that the peer
 * ends at once (a crash loop, a server that is not a dialer) keeps doubling. */
#define H2R_STABLE_MS 5000
/* The same failure again is logged at debug, and summarised at its first
 * level this often. */
#define H2R_FAIL_SUMMARY_MS (10 * 60 * 1000)
#define H2R_FAIL_TEXT       320

/* The extra request headers, shared by the connections made while they were
 * the listener's (a reload replaces them for later connections only: data
 * streams on a connection carry the credentials its control stream did). */
typedef struct hdrset {
  char **names, **values;
  size_t n;
  unsigned refs;
} hdrset_t;

/* One attempt: a connection and its control stream. */
typedef struct lconn {
  h2r_session_t s;
  h2r_listener_t *l;         /* NULL once the listener is closed: the connection
                                lives on only for the streams the application holds */
  struct lconn *next, *prev; /* the listener's live connections */
  h2rev_logger_t log;        /* the session's, kept when the listener is gone */
  h2rev_stream_t ctl;
  h2r_ctl_reader rd;
  bool attached;
  bool dead;
  unsigned refused;  /* data streams refused (REFUSED_STREAM) in a row */
  unsigned deferred; /* conn-ready asks held back at max_streams */
  int why;           /* the reason to report when it dies */
  hdrset_t *hdrs;    /* the request headers of its streams */
  bool proven;       /* answered as a dialer does (see H2R_PROOF_MS) */
  bool refusing;     /* reading a refusal's body into rxbuf */
  bool refusal_text; /* that body is text/plain: the dialer's reason */
  bool permanent;    /* text: a failure retrying soon will not cure */
  bool duplicate;    /* reached a replica another attachment holds */
  int status;        /* the refusal's HTTP status */
  size_t rxlen;
  uint64_t attached_at;
  char text[H2R_FAIL_TEXT];          /* what went wrong, for the operator; empty: not said yet */
  char replica[H2R_REPLICA_MAX + 1]; /* x-h2rev-replica of its answer; empty: not said */
  char rxbuf[512];
} lconn_t;

enum lstate { L_IDLE, L_RESOLVING, L_CONNECTING, L_ATTACHED, L_WAITING, L_STOPPED };

/* One attachment of the group. */
struct h2r_listener {
  h2r_listeners_t *g;
  unsigned index; /* in g->slots */
  char *url;      /* for more attachments like it */
  uv_loop_t *loop;
  h2rev_listener_options_t o;
  enum lstate state;
  bool tls;
  char *host, *port, *authority, *path, *id;
  char *sni; /* tls.server_name, or NULL: the host */
  hdrset_t *hdrs;
  SSL_CTX *ctx;
  uv_getaddrinfo_t gai;
  bool gai_busy;
  uv_timer_t retry;
  uv_timer_t probe; /* the current connection's refusal body or proof */
  lconn_t *conn;
  lconn_t *conns; /* every live connection, conn among them */
  unsigned live_conns;
  h2r_strm_t *ready_head, *ready_tail; /* linked by lnext */
  h2r_strm_t *parked;                  /* open, not used yet, not announced (lnext/lprev) */
  unsigned nready, unannounced;
  unsigned unused;  /* data streams open, not yet used */
  unsigned opening; /* data streams requested, no response yet */
  unsigned spares;  /* spares kept now: grows with demand, from o.spares */
  unsigned attempt;
  unsigned dups; /* duplicate attempts in a row */
  uint64_t rng;
  bool started;
  bool closing;
  int handles;
  /* What runs later in the turn, never inside the call that caused it
   * (work_fire): on_state for the states queued, then the asks held back at
   * max_streams and the announcements of ready streams (outside nghttp2's
   * callbacks). */
  h2r_defer_t work;
  struct {
    int state, err;
    unsigned delay;
  } states[H2R_STATE_QUEUE];
  unsigned nstates;
  bool state_closed;
  /* h2rev_listener_shutdown */
  bool draining;
  lconn_t *drain_conn; /* alive while live_conns > 0 */
  uv_timer_t drain_timer;
  uint64_t drain_deadline;
  bool unref; /* h2rev_listener_unref */
  /* The failures since the last attachment: the last one's text, logged
   * once (then summarised) while it repeats. */
  int fail_err;
  bool fail_permanent;
  unsigned fail_count, fail_repeats;
  uint64_t fail_since, fail_logged_at;
  char fail_text[H2R_FAIL_TEXT];
  h2rev_listener_stats_t st; /* state, counters (h2rev_listener_stats) */
};

/* An attachment's view, for on_replica and the aggregate state. */
typedef struct slot_view {
  bool attached, stopped;
  char replica[H2R_REPLICA_MAX + 1];
} slot_view_t;

struct h2r_listeners {
  h2rev_listener_t *pub;
  uv_loop_t *loop;
  h2rev_listener_options_t o; /* the application's: on_state, on_replica, limits */
  h2r_listener_t **slots;     /* NULL once that attachment is closed */
  slot_view_t *views;
  unsigned nslots, cap;
  unsigned live;     /* attachments not yet closed */
  unsigned attached; /* views attached */
  unsigned stopped;  /* views stopped */
  unsigned next;     /* where h2rev_listener_accept looks first */
  h2rev_connection_cb cb;
  h2rev_listener_close_cb close_cb;
  bool closing, draining, unref;
};

static void connect_now(h2r_listener_t *l);
static void open_data(h2r_listener_t *l);
/* The group's side of an attachment's events. */
static void group_state(h2r_listener_t *l, int state, int err, unsigned delay);
static void group_ready(h2r_listener_t *l);
static void group_slot_done(h2r_listeners_t *g);
static bool group_holds(h2r_listener_t *l, const char *replica);
static void group_replicas(h2r_listener_t *l, unsigned n);

static void handle_closed(uv_handle_t *h);

static void kick(h2r_listener_t *l);

static void work_fire(void *arg) {
  h2r_listener_t *l = arg;
  /* A callback may cause (or close, which queues) more: they run here too. */
  for (unsigned i = 0; i < l->nstates; i++)
    group_state(l, l->states[i].state, l->states[i].err, l->states[i].delay);
  l->nstates = 0;
  if (!l->closing) {
    kick(l);
  } else if (!l->state_closed) {
    /* STOPPED, queued by the close, has run: the close may complete. */
    l->state_closed = true;
    h2r_defer_close(&l->work, handle_closed);
  }
}

static void set_state(h2r_listener_t *l, int state, int err, unsigned delay) {
  if (l->state_closed)
    return;
  l->st.state = state;
  if (l->nstates == H2R_STATE_QUEUE) {
    memmove(&l->states[0], &l->states[1], sizeof(l->states[0]) * (H2R_STATE_QUEUE - 1));
    l->nstates--;
  }
  l->states[l->nstates].state = state;
  l->states[l->nstates].err = err;
  l->states[l->nstates].delay = delay;
  l->nstates++;
  h2r_defer_arm(&l->work);
}

/* ------------------------------------------------------------- headers */

static void hdrset_release(hdrset_t *h) {
  if (h == NULL || --h->refs > 0)
    return;
  for (size_t i = 0; h->names != NULL && h->values != NULL && i < h->n; i++) {
    /* A token may be among them. */
    if (h->values[i] != NULL)
      OPENSSL_cleanse(h->values[i], strlen(h->values[i]));
    free(h->names[i]);
    free(h->values[i]);
  }
  free(h->names);
  free(h->values);
  free(h);
}

static size_t build_nv(h2r_listener_t *l, lconn_t *c, nghttp2_nv *nv, size_t cap,
                       const char *role) {
  size_t n = 0;
#define NV(k, v)                                                                                   \
  nv[n++] = (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v),                     \
                         NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}
  NV(":method", "GET");
  NV(":scheme", l->tls ? "https" : "http");
  NV(":authority", l->authority);
  NV(":path", l->path);
  for (size_t i = 0; c->hdrs != NULL && i < c->hdrs->n && n + 2 < cap; i++)
    NV(c->hdrs->names[i], c->hdrs->values[i]);
  NV(H2R_ROLE_HEADER, role);
#undef NV
  return n;
}

/* ----------------------------------------------------------- the queue */

static void ready_remove(h2r_listener_t *l, h2r_strm_t *st) {
  h2r_strm_t **p = &l->ready_head;
  h2r_strm_t *prev = NULL;
  while (*p != NULL && *p != st) {
    prev = *p;
    p = &(*p)->lnext;
  }
  if (*p == NULL)
    return;
  *p = st->lnext;
  if (l->ready_tail == st)
    l->ready_tail = prev;
  st->lnext = NULL;
  l->nready--;
  if (l->unannounced > l->nready)
    l->unannounced = l->nready;
}

static void ready_push(h2r_listener_t *l, h2r_strm_t *st) {
  st->lnext = NULL;
  if (l->ready_tail != NULL)
    l->ready_tail->lnext = st;
  else
    l->ready_head = st;
  l->ready_tail = st;
  l->nready++;
  l->unannounced++;
  h2r_defer_arm(&l->work);
}

static bool parked(h2r_listener_t *l, h2r_strm_t *st) {
  return st->lprev != NULL || l->parked == st;
}

static void park(h2r_listener_t *l, h2r_strm_t *st) {
  st->lprev = NULL;
  st->lnext = l->parked;
  if (l->parked != NULL)
    l->parked->lprev = st;
  l->parked = st;
}

static void unpark(h2r_listener_t *l, h2r_strm_t *st) {
  if (st->lprev != NULL)
    st->lprev->lnext = st->lnext;
  else
    l->parked = st->lnext;
  if (st->lnext != NULL)
    st->lnext->lprev = st->lprev;
  st->lnext = st->lprev = NULL;
}

static bool room_for_data(const h2r_listener_t *l, const lconn_t *c);

static void kick(h2r_listener_t *l) {
  lconn_t *c = l->conn;
  while (c != NULL && c->deferred > 0 && room_for_data(l, c)) {
    c->deferred--;
    open_data(l);
  }
  while (l->unannounced > 0 && !l->closing && l->started) {
    l->unannounced--;
    group_ready(l);
  }
}

static void ctl_wrote(h2rev_write_t *w, int status) {
  (void)status;
  free(w);
}

static void ctl_send(lconn_t *c, const char *command, const char *err) {
  if (!c->attached || c->dead)
    return;
  char line[256];
  size_t n = h2r_ctl_encode(line, sizeof(line), command, err);
  h2rev_write_t *w = malloc(sizeof(*w) + n);
  if (w == NULL)
    return;
  memcpy(w + 1, line, n);
  uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
  if (h2rev_stream_write(w, &c->ctl, &b, 1, ctl_wrote) != 0)
    free(w);
}

/* The dialer's side sent its first byte (or the stream closed unused). */
static void data_used(h2r_strm_t *st) {
  h2r_listener_t *l = st->used_arg;
  if (l->unused > 0)
    l->unused--;
  if (parked(l, st)) {
    unpark(l, st);
    if (!(st->flags & H2R_F_CLOSING) && st->pub == NULL)
      ready_push(l, st); /* in use now: the application gets it */
  }
  if (l->state == L_ATTACHED && l->unused + l->opening < l->spares)
    open_data(l);
}

/* A response complete at once (a length, or the end of the stream with the
 * head) is a document: a dialer's answer to /revdial is an open stream. */
static bool complete_response(h2r_strm_t *st) {
  return (st->flags & H2R_F_EOF) || h2r_strm_header(st, "content-length", NULL) != NULL;
}

static void prove(h2r_listener_t *l, lconn_t *c);
static void conn_fail(lconn_t *c, int err, bool permanent, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void data_headers(h2r_strm_t *st) {
  lconn_t *c = st->owner;
  h2r_listener_t *l = c->l;
  if (l == NULL) {
    st->hooks = NULL;
    h2r_strm_abandon(st);
    return;
  }
  if (l->opening > 0)
    l->opening--;
  if (st->status == 200 && !c->proven && complete_response(st)) {
    st->hooks = NULL;
    h2r_strm_abandon(st);
    conn_fail(c, H2REV_ECONTROL, true,
              "%s answered a data stream with a complete document, as no dialer does: it is not "
              "an h2rev dialer; check the URL (host, port, base path)",
              l->authority);
    return;
  }
  if (st->status != 200) {
    char why[64];
    snprintf(why, sizeof(why), "dialer answered %d", st->status);
    H2R_WARN(&c->log, "data stream refused: %s", why);
    ctl_send(c, H2R_CMD_PICKUP_FAILED, why);
    st->hooks = NULL;
    h2r_strm_abandon(st);
    return;
  }
  if (!c->proven)
    prove(l, c);
  c->refused = 0;
  l->unused++;
  st->on_used = data_used;
  st->used_arg = l;
  /* An idle spare is not a connection yet: it reaches on_connection when
   * the dialer's client sends its first byte, unless the application takes
   * every stream at once (protocols where the server speaks first). */
  if (l->o.accept_idle)
    ready_push(l, st);
  else
    park(l, st);
}

static void data_gone(h2r_strm_t *st, int err) {
  lconn_t *c = st->owner;
  h2r_listener_t *l = c->l;
  if (l == NULL)
    return;
  if (st->flags & H2R_F_HEADERS) {
    /* Not handed over yet; freeing it runs data_used, which counts it. */
    if (parked(l, st))
      unpark(l, st);
    ready_remove(l, st);
    return;
  }
  if (l->opening > 0)
    l->opening--;
  /* REFUSED_STREAM: the dialer had no room for the stream yet (Go's server
   * counts a stream until its handler returns, a second after its last
   * write): nothing was done with it, so it is asked for again rather than
   * failing the dial it was for. */
  if (!c->dead && st->rst_code == NGHTTP2_REFUSED_STREAM && c->refused < H2R_REFUSED_RETRIES) {
    c->refused++;
    open_data(l);
    return;
  }
  if (!c->dead)
    ctl_send(c, H2R_CMD_PICKUP_FAILED, h2rev_strerror(err));
}

static const h2r_strm_hooks data_hooks = {data_headers, data_gone};

/* Data streams c may have open at once (its control stream aside):
 * max_streams, and what the dialer allows (its SETTINGS_MAX_CONCURRENT_STREAMS,
 * the control stream among them); 0: no limit known. */
static unsigned data_limit(const h2r_listener_t *l, const lconn_t *c) {
  unsigned lim = l->o.max_streams;
  uint32_t peer =
      c->s.ng != NULL
          ? nghttp2_session_get_remote_settings(c->s.ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
          : UINT32_MAX;
  /* Past the dialer's limit nghttp2 would queue each stream asked for: at
   * 10,000 requests waiting for h2rev's dialer (1000), 9,000 of them. */
  if (peer > 1 && peer != UINT32_MAX && (lim == 0 || peer - 1 < lim))
    lim = peer - 1;
  return lim;
}

static bool room_for_data(const h2r_listener_t *l, const lconn_t *c) {
  unsigned lim = data_limit(l, c);
  return lim == 0 || c->s.nstreams < lim + 1u;
}

static void open_data(h2r_listener_t *l) {
  lconn_t *c = l->conn;
  if (c == NULL || !c->attached || c->dead)
    return;
  if (!room_for_data(l, c)) {
    /* Held back until one of them is freed (conn_stream_freed): the
     * dialer's request waits in its queue meanwhile, and the upstream sees
     * no more than max_streams exchanges at once. More asks held than
     * streams allowed would only open streams nobody waits for. */
    if (c->deferred < data_limit(l, c))
      c->deferred++;
    return;
  }
  nghttp2_nv nv[H2R_LISTENER_NV];
  size_t n = build_nv(l, c, nv, H2R_LISTENER_NV, "data");
  h2r_strm_t *st = h2r_session_request(&c->s, nv, n, &data_hooks, c);
  if (st == NULL) {
    ctl_send(c, H2R_CMD_PICKUP_FAILED, "cannot open a stream");
    return;
  }
  l->opening++;
}

/* ------------------------------------------------------ control stream */

static int ctl_msg(void *arg, const h2r_ctl_msg *m) {
  lconn_t *c = arg;
  h2r_listener_t *l = c->l;
  if (l == NULL)
    return 0;
  if (!c->proven)
    prove(l, c); /* a well-formed control line: a dialer's */
  if (strcmp(m->command, H2R_CMD_CONN_READY) == 0) {
    /* Demand outran the spares: keep more of them from now on, so that
     * the next burst costs no round trip. */
    if (l->spares < H2R_MAX_SPARES)
      l->spares++;
    open_data(l);
  }
  return 0;
}

static void ctl_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)sz;
  lconn_t *c = s->data;
  *buf = uv_buf_init(c->rxbuf, sizeof(c->rxbuf));
}

/* Ends an attempt: c->text says why, for the operator (the first reason
 * given wins), and whether retrying soon can cure it. */
static void conn_fail(lconn_t *c, int err, bool permanent, const char *fmt, ...) {
  if (c->text[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->text, sizeof(c->text), fmt, ap);
    va_end(ap);
    c->permanent = permanent;
  }
  if (c->why == 0)
    c->why = err;
  if ((c->attached || c->refusing) && !h2rev_stream_is_closing(&c->ctl))
    h2rev_stream_close(&c->ctl, NULL);
  c->refusing = false;
  h2r_session_close(&c->s, err);
}

static void ctl_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  lconn_t *c = s->data;
  h2r_listener_t *l = c->l;
  if (n == 0)
    return;
  int r = 0;
  if (n > 0) {
    r = h2r_ctl_feed(&c->rd, buf->base, (size_t)n, ctl_msg, c);
    if (r == 0)
      return;
    if (l != NULL && !c->proven && r == H2REV_ECONTROL) {
      conn_fail(c, r, true,
                "%s answered %s with something other than the control protocol (%s): it is not "
                "an h2rev dialer; check the URL (host, port, base path)",
                l->authority, l->path, c->rd.why);
      return;
    }
    H2R_WARN(&c->log, "control stream: %s", r == H2REV_ECONTROL ? c->rd.why : h2rev_strerror(r));
  } else {
    r = n == UV_EOF ? H2REV_ECLOSED : (int)n;
    if (l != NULL && !c->proven && n == UV_EOF) {
      conn_fail(c, H2REV_ECONTROL, true,
                "%s ended its answer to %s at once, as no dialer does: it is not an h2rev "
                "dialer; check the URL (host, port, base path)",
                l->authority, l->path);
      return;
    }
  }
  /* Without its control stream the registration is gone: start over. */
  if (c->why == 0)
    c->why = r;
  h2rev_stream_close(s, NULL);
  h2r_session_close(&c->s, r);
}

/* The first line of a refusal's body, when it is text: the dialer's reason. */
static void refusal_reason(lconn_t *c, char *out, size_t cap) {
  size_t k = 0;
  if (c->refusal_text)
    while (k < c->rxlen && k + 1 < cap && k < H2R_REFUSAL_BODY_MAX && c->rxbuf[k] != '\n' &&
           c->rxbuf[k] != '\r' && (unsigned char)c->rxbuf[k] >= 0x20 &&
           (unsigned char)c->rxbuf[k] < 0x7f) {
      out[k] = c->rxbuf[k];
      k++;
    }
  out[k] = '\0';
}

/* The refusal's reason is in (or the time to read it is up): say what to do. */
static void refusal_done(lconn_t *c) {
  h2r_listener_t *l = c->l;
  if (!c->refusing)
    return;
  if (l == NULL) {
    c->refusing = false;
    if (!h2rev_stream_is_closing(&c->ctl))
      h2rev_stream_close(&c->ctl, NULL);
    return;
  }
  if (l->conn == c)
    uv_timer_stop(&l->probe);
  char body[H2R_REFUSAL_BODY_MAX + 1];
  refusal_reason(c, body, sizeof(body));
  int st = c->status;
  const char *sep = body[0] ? ": " : "";
  /* Come back later (408, 425, 429, 5xx) or a misconfiguration (other 4xx). */
  bool permanent = st >= 400 && st < 500 && st != 408 && st != 425 && st != 429;
  int err = st == 401 || st == 403 ? H2REV_EFORBIDDEN : st == 409 ? H2REV_EIDTAKEN : H2REV_ESTATUS;
  c->text[0] = '\0';
  if (st == 401 || st == 403)
    conn_fail(c, err, true,
              "the dialer at %s refused id %s (%d%s%s): check the token (--token-file, "
              "H2REV_TOKEN) and the client certificate (--cert) it expects",
              l->authority, l->id, st, sep, body);
  else if (st == 404)
    conn_fail(c, err, true,
              "%s has no %s (404%s%s): is it an h2rev dialer, and is the URL's path its "
              "--base-path?",
              l->authority, l->path, sep, body);
  else if (st == 409)
    conn_fail(c, err, true,
              "the dialer at %s refused id %s (409%s%s): another listener holds this id (or "
              "the dialer still holds this one's previous connection, until its PING timeout)",
              l->authority, l->id, sep, body);
  else
    conn_fail(c, err, permanent, "the dialer at %s refused id %s (%d%s%s)%s", l->authority, l->id,
              st, sep, body, permanent ? ": check the URL and the id" : "");
}

static void refusal_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)sz;
  lconn_t *c = s->data;
  *buf = uv_buf_init(c->rxbuf + c->rxlen, (unsigned)(sizeof(c->rxbuf) - c->rxlen));
}

static void refusal_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  lconn_t *c = s->data;
  if (n == 0)
    return;
  if (n > 0) {
    c->rxlen += (size_t)n;
    if (c->rxlen < H2R_REFUSAL_BODY_MAX)
      return;
  }
  refusal_done(c);
}

static void refusal_done_timer(uv_timer_t *t) {
  h2r_listener_t *l = t->data;
  if (l->conn != NULL)
    refusal_done(l->conn);
}

static void proof_timer(uv_timer_t *t) {
  h2r_listener_t *l = t->data;
  lconn_t *c = l->conn;
  /* Still open after a while: a dialer that refuses data streams for now. */
  if (c != NULL && c->attached && !c->dead)
    prove(l, c);
}

/* The replica that answered, and how many there are, when the dialer says. */
static void read_replica(lconn_t *c, h2r_strm_t *st, unsigned *count) {
  size_t len = 0;
  const char *v = h2r_strm_header(st, H2R_REPLICA_HEADER, &len);
  if (v != NULL && len <= H2R_REPLICA_MAX && h2r_id_valid(v, len)) {
    memcpy(c->replica, v, len);
    c->replica[len] = '\0';
    if (c->l != NULL)
      memcpy(c->l->g->views[c->l->index].replica, c->replica, len + 1);
  }
  *count = 0;
  v = h2r_strm_header(st, H2R_REPLICAS_HEADER, &len);
  unsigned n = 0;
  for (size_t i = 0; v != NULL && i < len && n <= H2R_REPLICAS_MAX; i++) {
    if (v[i] < '0' || v[i] > '9')
      return;
    n = n * 10 + (unsigned)(v[i] - '0');
  }
  if (n <= H2R_REPLICAS_MAX)
    *count = n;
}

static void ctl_headers(h2r_strm_t *st) {
  lconn_t *c = st->owner;
  h2r_listener_t *l = c->l;
  if (l == NULL) {
    st->hooks = NULL;
    h2r_strm_abandon(st);
    return;
  }
  unsigned replicas = 0;
  read_replica(c, st, &replicas);
  /* A second connection to a replica held already (through a load
   * balancer): 200, or 409 from the replica where this id is attached. It
   * goes at once, and the attachment tries again, after the backoff. */
  if ((st->status == 200 || st->status == 409) && group_holds(l, c->replica)) {
    st->hooks = NULL;
    h2r_strm_abandon(st);
    c->duplicate = true;
    conn_fail(c, H2REV_EIDTAKEN, false,
              "%s led to replica %s, which another connection of this listener holds", l->authority,
              c->replica);
    return;
  }
  if (st->status != 200) {
    /* The reason comes in the body: read it (briefly) before reporting. */
    size_t len = 0;
    const char *ct = h2r_strm_header(st, "content-type", &len);
    c->refusal_text = ct != NULL && len >= 10 && strncasecmp(ct, "text/plain", 10) == 0;
    c->status = st->status;
    c->refusing = true;
    c->rxlen = 0;
    h2r_strm_attach(st, &c->ctl);
    h2rev_stream_read_start(&c->ctl, refusal_alloc, refusal_read);
    uv_timer_start(&l->probe, refusal_done_timer, H2R_REFUSAL_BODY_MS, 0);
    return;
  }
  if (complete_response(st)) {
    st->hooks = NULL;
    h2r_strm_abandon(st);
    conn_fail(c, H2REV_ECONTROL, true,
              "%s answered %s with a complete document, not a control stream: it is not an "
              "h2rev dialer; check the URL (host, port, base path)",
              l->authority, l->path);
    return;
  }
  c->attached = true;
  c->attached_at = uv_now(l->loop);
  h2r_strm_attach(st, &c->ctl);
  h2rev_stream_read_start(&c->ctl, ctl_alloc, ctl_read);
  if (replicas > 0)
    group_replicas(l, replicas);
  l->state = L_ATTACHED;
  l->spares = l->o.spares;
  for (unsigned i = 0; i < l->spares; i++)
    open_data(l);
  /* A data stream's 200 proves it within a round trip; a dialer that
   * refuses them for now is believed after a while. */
  if (!c->proven && l->conn == c)
    uv_timer_start(&l->probe, proof_timer, H2R_PROOF_MS, 0);
}

static void ctl_gone(h2r_strm_t *st, int err) {
  lconn_t *c = st->owner;
  if (c->why == 0)
    c->why = err;
  h2r_session_close(&c->s, err);
}

static const h2r_strm_hooks ctl_hooks = {ctl_headers, ctl_gone};

/* -------------------------------------------------------------- failures */

/* The attempt answered as a dialer does: attached, for the application and
 * the log. */
static void prove(h2r_listener_t *l, lconn_t *c) {
  if (c->proven || l->conn != c)
    return;
  c->proven = true;
  uv_timer_stop(&l->probe);
  char rep[H2R_REPLICA_MAX + 16] = "";
  if (c->replica[0] != '\0')
    snprintf(rep, sizeof(rep), ", replica %s", c->replica);
  if (l->fail_count > 0)
    H2R_INFO(&l->o.log, "attached as %s to %s (after %u failed attempt%s)%s", l->id, l->authority,
             l->fail_count, l->fail_count == 1 ? "" : "s", rep);
  else
    H2R_INFO(&l->o.log, "attached as %s to %s%s", l->id, l->authority, rep);
  l->fail_count = l->fail_repeats = 0;
  l->dups = 0;
  l->fail_err = 0;
  l->fail_text[0] = '\0';
  l->st.attachments++;
  l->st.attached_at = uv_now(l->loop);
  set_state(l, H2REV_LISTENER_ATTACHED, 0, 0);
}

/* An attempt that failed before the dialer answered: what the transport or
 * the peer's first bytes say, as advice. */
static void explain_connect(h2r_listener_t *l, lconn_t *c, int err) {
  const char *a = l->authority, *m = c->s.x.errmsg;
  char *t = c->text;
  size_t n = sizeof(c->text);
  if (t[0] != '\0')
    return;
  c->permanent = true;
  if (err == H2REV_ECERT)
    snprintf(t, n,
             "cannot attach to %s: its certificate does not verify (%s): trust the CA that signs "
             "it (--ca; a dialer's self-signed certificate is its h2rev-dialer.crt)",
             a, m[0] ? m : h2rev_strerror(err));
  else if (err == H2REV_EALPN && l->tls)
    snprintf(t, n,
             "%s does not speak HTTP/2 over TLS (%s): it is not an h2rev dialer; check the URL's "
             "host and port",
             a, m[0] ? m : h2rev_strerror(err));
  else if (err == H2REV_EALPN)
    snprintf(t, n,
             "%s does not speak HTTP/2 (%s): it is not an h2rev dialer (check the URL's port), "
             "or it wants TLS (https://)",
             a, m[0] ? m : h2rev_strerror(err));
  else if (err == H2REV_ETLS && !l->tls)
    snprintf(t, n, "%s answered with TLS: use https:// in the URL", a);
  else if (err == H2REV_ETLS && strncmp(m, "not TLS", 7) == 0)
    snprintf(t, n,
             "%s does not speak TLS (%s): for a cleartext dialer (--cleartext) use http://, else "
             "check the URL's port",
             a, m + 9);
  else if (err == H2REV_ETLS && strstr(m, "alert") != NULL &&
           (strstr(m, "unknown ca") != NULL || strstr(m, "bad certificate") != NULL ||
            strstr(m, "certificate required") != NULL || strstr(m, "certificate unknown") != NULL))
    snprintf(t, n,
             "the dialer at %s refused the client certificate (%s): give one its --client-ca "
             "signs (--cert, --key)",
             a, m);
  else if (err == H2REV_ETLS)
    snprintf(t, n, "TLS handshake with %s failed: %s", a, m[0] ? m : h2rev_strerror(err));
  else if (err == H2REV_EPROTO)
    snprintf(t, n, "%s does not speak HTTP/2 (%s): it is not an h2rev dialer; check the URL", a,
             m[0] ? m : h2rev_strerror(err));
  else {
    c->permanent = false;
    if (err == H2REV_ECLOSED && !l->tls && !c->s.got_input)
      snprintf(t, n,
               "%s closed the connection without answering: if the dialer serves TLS, use "
               "https://",
               a);
    else
      snprintf(t, n, "cannot connect to %s: %s%s%s", a, h2rev_strerror(err),
               m[0] && strcmp(m, h2rev_strerror(err)) != 0 ? ": " : "",
               m[0] && strcmp(m, h2rev_strerror(err)) != 0 ? m : "");
  }
}

/* One line per distinct failure; the same one again at debug, summarised
 * every H2R_FAIL_SUMMARY_MS. */
static void report_failure(h2r_listener_t *l, const char *text, bool permanent, unsigned delay) {
  uint64_t now = uv_now(l->loop);
  int level = permanent ? H2REV_LOG_ERROR : H2REV_LOG_WARN;
  l->fail_count++;
  if (strcmp(text, l->fail_text) == 0) {
    l->fail_repeats++;
    if (now - l->fail_logged_at >= H2R_FAIL_SUMMARY_MS) {
      h2r_log(&l->o.log, level, "still failing, %u times in %.0f min: %s; retrying in %.1f s",
              l->fail_repeats, (double)(now - l->fail_since) / 60000.0, text, delay / 1000.0);
      l->fail_logged_at = now;
    } else {
      H2R_DEBUG(&l->o.log, "%s (again, %u times); retrying in %.1f s", text, l->fail_repeats,
                delay / 1000.0);
    }
    return;
  }
  snprintf(l->fail_text, sizeof(l->fail_text), "%s", text);
  l->fail_repeats = 1;
  l->fail_since = l->fail_logged_at = now;
  h2r_log(&l->o.log, level, "%s; retrying in %.1f s", text, delay / 1000.0);
}

/* ---------------------------------------------------------- connection */

/* A permanent failure waits the longest delay: retrying sooner cannot help
 * until someone changes something (see h2rev_listener_retry_now). */
static unsigned backoff(h2r_listener_t *l, bool permanent) {
  uint64_t d = l->o.backoff_min_ms;
  for (unsigned i = 1; i < l->attempt && d < l->o.backoff_max_ms; i++)
    d *= 2;
  if (d > l->o.backoff_max_ms || permanent)
    d = l->o.backoff_max_ms;
  /* Full jitter in [d/2, d): many listeners restarting together spread out. */
  l->rng ^= l->rng << 13;
  l->rng ^= l->rng >> 7;
  l->rng ^= l->rng << 17;
  return (unsigned)(d / 2 + l->rng % (d / 2 + 1));
}

static void retry_fire(uv_timer_t *t) {
  connect_now(t->data);
}

static void lost(h2r_listener_t *l, int err, const char *text, bool permanent) {
  if (l->closing) {
    l->state = L_STOPPED;
    return;
  }
  set_state(l, H2REV_LISTENER_LOST, err, 0);
  l->st.failures++;
  l->st.attached_at = 0;
  l->attempt++;
  l->fail_err = err;
  l->fail_permanent = permanent;
  bool out = l->o.max_retries > 0 && l->attempt > l->o.max_retries;
  if (out || (permanent && l->o.stop_on_permanent)) {
    l->state = L_STOPPED;
    snprintf(l->fail_text, sizeof(l->fail_text), "%s", text);
    l->fail_count++;
    if (out)
      H2R_ERR(&l->o.log, "%s; giving up after %u attempts", text, l->attempt - 1);
    else
      H2R_ERR(&l->o.log, "%s; not retrying", text);
    set_state(l, H2REV_LISTENER_STOPPED, err, 0);
    return;
  }
  unsigned delay = backoff(l, permanent);
  report_failure(l, text, permanent, delay);
  l->state = L_WAITING;
  set_state(l, H2REV_LISTENER_RETRYING, err, delay);
  uv_timer_start(&l->retry, retry_fire, delay, 0);
}

/* The attempt reached a replica another attachment holds: expected through a
 * load balancer, so neither a failure to report nor one to remember. */
static void lost_duplicate(h2r_listener_t *l, const char *text) {
  if (l->closing) {
    l->state = L_STOPPED;
    return;
  }
  set_state(l, H2REV_LISTENER_LOST, H2REV_EIDTAKEN, 0);
  if (++l->dups > H2R_DUP_FAST)
    l->attempt++;
  unsigned delay = backoff(l, false);
  H2R_DEBUG(&l->o.log, "%s; retrying in %.1f s", text, delay / 1000.0);
  l->state = L_WAITING;
  set_state(l, H2REV_LISTENER_RETRYING, H2REV_EIDTAKEN, delay);
  uv_timer_start(&l->retry, retry_fire, delay, 0);
}

static void conn_open(h2r_session_t *s, int status) {
  lconn_t *c = s->owner;
  h2r_listener_t *l = c->l;
  if (l == NULL)
    return; /* closed while connecting: on_close follows */
  if (status != 0) {
    c->why = status;
    explain_connect(l, c, status);
    return; /* on_close follows */
  }
  nghttp2_nv nv[H2R_LISTENER_NV];
  size_t n = build_nv(l, c, nv, H2R_LISTENER_NV, "control");
  if (h2r_session_request(s, nv, n, &ctl_hooks, c) == NULL) {
    c->why = H2REV_EPROTO;
    h2r_session_close(s, H2REV_EPROTO);
  }
}

static void conn_request(h2r_session_t *s, h2r_strm_t *st) {
  (void)s;
  h2r_strm_reject(st, 405, "listeners take no requests\n");
}

/* Unaccepted streams die with the connection (the current one: only it
 * opens data streams). */
static void forget_streams(h2r_listener_t *l) {
  for (h2r_strm_t *st = l->ready_head; st != NULL; st = st->lnext) {
    st->hooks = NULL;
    st->on_used = NULL;
  }
  while (l->parked != NULL) {
    h2r_strm_t *st = l->parked;
    unpark(l, st);
    st->hooks = NULL;
    st->on_used = NULL;
  }
  l->ready_head = l->ready_tail = NULL;
  l->nready = l->unannounced = l->unused = l->opening = 0;
}

static void conn_unlink(h2r_listener_t *l, lconn_t *c) {
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    l->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  c->next = c->prev = NULL;
}

/* The listener is closing: the connection goes on without it, for as long as
 * the application holds streams of it (they report H2REV_ECLOSED). Nothing
 * of it may point to the listener any more. */

static void drain_tick(uv_timer_t *t);

/* A connection is gone: the last one ends a drain (on the next turn). */
static void conn_released(h2r_listener_t *l) {
  if (--l->live_conns == 0 && l->draining && !l->closing)
    uv_timer_start(&l->drain_timer, drain_tick, 0, 0);
}

static void conn_detach(h2r_listener_t *l, lconn_t *c) {
  if (l->conn == c || l->drain_conn == c)
    forget_streams(l);
  if (l->drain_conn == c)
    l->drain_conn = NULL;
  for (h2r_strm_t *st = c->s.streams; st != NULL; st = st->next) {
    if (st->on_used == data_used)
      st->on_used = NULL; /* accepted before its first byte */
  }
  conn_unlink(l, c);
  c->l = NULL;
  conn_released(l);
}

static void conn_dead(h2r_session_t *s, int err) {
  lconn_t *c = s->owner;
  h2r_listener_t *l = c->l;
  c->dead = true;
  if (c->why == 0)
    c->why = err ? err : H2REV_ECLOSED;
  if (l != NULL && !c->attached && !c->refusing && err != 0)
    explain_connect(l, c, err); /* cleartext: the peer's first bytes were not HTTP/2 */
  if (l == NULL || l->conn != c)
    return;
  forget_streams(l);
}

static void maybe_done(h2r_listener_t *l);

static void conn_free(lconn_t *c) {
  h2r_ctl_reader_free(&c->rd);
  hdrset_release(c->hdrs);
  free(c);
}

static void conn_close(h2r_session_t *s) {
  lconn_t *c = s->owner;
  h2r_listener_t *l = c->l;
  int why = c->why ? c->why : H2REV_ECLOSED;
  if (l == NULL) {
    conn_free(c);
    return;
  }
  bool current = l->conn == c;
  if (l->drain_conn == c)
    l->drain_conn = NULL;
  conn_unlink(l, c);
  conn_released(l);
  if (current) {
    l->conn = NULL;
    uv_timer_stop(&l->probe);
    if (c->proven && uv_now(l->loop) - c->attached_at >= H2R_STABLE_MS)
      l->attempt = 0; /* it lived: start the backoff over */
    if (c->text[0] == '\0' && !c->attached)
      explain_connect(l, c, why);
    else if (c->text[0] == '\0')
      snprintf(c->text, sizeof(c->text), "connection to %s lost: %s%s%s", l->authority,
               h2rev_strerror(why), c->s.x.errmsg[0] ? ": " : "", c->s.x.errmsg);
    if (c->duplicate)
      lost_duplicate(l, c->text);
    else
      lost(l, why, c->text, c->permanent);
  }
  conn_free(c);
  maybe_done(l);
}

/* A stream of c is gone: an ask held back at max_streams may go out, from
 * the deferred work (not inside the stream's own teardown). */
static void conn_stream_freed(h2r_session_t *s) {
  lconn_t *c = s->owner;
  h2r_listener_t *l = c->l;
  if (l != NULL && c->deferred > 0 && l->conn == c && !l->closing)
    h2r_defer_arm(&l->work);
}

static const h2r_session_cbs conn_cbs = {conn_open,  conn_request, conn_dead,
                                         conn_close, NULL,         conn_stream_freed};

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  h2r_listener_t *l = req->data;
  l->gai_busy = false;
  if (l->closing) {
    uv_freeaddrinfo(res);
    maybe_done(l);
    return;
  }
  char text[H2R_FAIL_TEXT];
  if (status != 0) {
    snprintf(text, sizeof(text), "cannot resolve %s: %s", l->host, uv_strerror(status));
    uv_freeaddrinfo(res);
    lost(l, status, text, false);
    return;
  }
  lconn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    uv_freeaddrinfo(res);
    lost(l, UV_ENOMEM, "out of memory", false);
    return;
  }
  c->l = l;
  c->log = l->o.log;
  c->hdrs = l->hdrs;
  if (c->hdrs != NULL)
    c->hdrs->refs++;
  c->next = l->conns;
  if (l->conns != NULL)
    l->conns->prev = c;
  l->conns = c;
  c->ctl.data = c;
  c->rd.max = 4096;
  h2r_session_opts o;
  h2r_session_opts_default(&o);
  o.ping_interval_ms = l->o.ping_interval_ms;
  o.ping_timeout_ms = l->o.ping_timeout_ms;
  o.handshake_ms = l->o.handshake_ms;
  o.unref = l->unref;
  o.quiet = true; /* lost() says what went wrong, once */
  l->conn = c;
  l->live_conns++;
  l->state = L_CONNECTING;
  const char *sni = l->sni ? l->sni : l->host;
  int r = h2r_session_connect(&c->s, l->loop, res->ai_addr, l->ctx, sni, &o, &conn_cbs, c, &c->log);
  uv_freeaddrinfo(res);
  if (r != 0) {
    /* Nothing of the session was started (a failure once it is reaches
     * conn_close): the attempt ends here, like one that failed to connect. */
    conn_unlink(l, c);
    free(c);
    conn_released(l);
    l->conn = NULL;
    lost(l, r, "cannot start a connection", false); /* logs it, once */
  }
}

static void connect_now(h2r_listener_t *l) {
  if (l->closing)
    return;
  l->state = L_RESOLVING;
  /* Attempts after a failure are logged with its outcome, when it changes. */
  h2r_log(&l->o.log, l->fail_count > 0 || l->dups > 0 ? H2REV_LOG_DEBUG : H2REV_LOG_INFO,
          "connecting to %s as %s", l->authority, l->id);
  set_state(l, H2REV_LISTENER_CONNECTING, 0, 0);
  l->st.attempts++;
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  l->gai.data = l;
  int r = uv_getaddrinfo(l->loop, &l->gai, resolved, l->host, l->port, &hints);
  if (r != 0) {
    char text[H2R_FAIL_TEXT];
    snprintf(text, sizeof(text), "cannot resolve %s: %s", l->host, uv_strerror(r));
    lost(l, r, text, false);
    return;
  }
  l->gai_busy = true;
}

/* ------------------------------------------------------------- options */

static int parse_url(h2r_listener_t *l, const char *url) {
  h2r_url_t u;
  int r = h2r_url_parse(url, &u);
  if (r != 0)
    return r;
  /* Room for the base path whatever its length, and every byte of the id
   * escaped (%XX). */
  size_t cap = strlen(u.path) + sizeof("/revdial?id=") + 3 * strlen(l->id);
  l->path = malloc(cap);
  r = l->path == NULL ? UV_ENOMEM : h2r_revdial_path(l->path, cap, u.path, l->id);
  free(u.path);
  l->tls = u.tls;
  l->host = u.host;
  l->port = u.port;
  l->authority = u.authority;
  return r;
}

/* 0 and *out (NULL when there are none), or UV_EINVAL, UV_ENOMEM. */
static int parse_headers(const char *const *h, hdrset_t **out) {
  *out = NULL;
  size_t n = 0;
  while (h != NULL && h[n] != NULL)
    n++;
  if (n > H2R_LISTENER_MAX_HEADERS)
    return UV_EINVAL;
  if (n == 0)
    return 0;
  hdrset_t *hs = calloc(1, sizeof(*hs));
  if (hs == NULL)
    return UV_ENOMEM;
  hs->refs = 1;
  hs->names = calloc(n + 1, sizeof(char *));
  hs->values = calloc(n + 1, sizeof(char *));
  int r = hs->names == NULL || hs->values == NULL ? UV_ENOMEM : 0;
  hs->n = n; /* slots not filled yet are NULL */
  for (size_t i = 0; r == 0 && i < n; i++) {
    const char *colon = strchr(h[i], ':');
    if (colon == NULL || colon == h[i] || strpbrk(h[i], "\r\n") != NULL) {
      r = UV_EINVAL;
      break;
    }
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
      v++;
    hs->names[i] = h2r_strndup(h[i], (size_t)(colon - h[i]));
    hs->values[i] = h2r_strndup(v, strlen(v));
    if (hs->names[i] == NULL || hs->values[i] == NULL) {
      r = UV_ENOMEM;
      break;
    }
    for (char *q = hs->names[i]; *q; q++)
      *q = (char)tolower((unsigned char)*q);
  }
  if (r != 0) {
    hdrset_release(hs);
    return r;
  }
  *out = hs;
  return 0;
}

static void free_listener(h2r_listener_t *l) {
  hdrset_release(l->hdrs);
  free(l->sni);
  free(l->host);
  free(l->port);
  free(l->authority);
  free(l->path);
  free(l->id);
  free(l->url);
  if (l->ctx != NULL)
    SSL_CTX_free(l->ctx);
  free(l);
}

/* An attachment to url; its TLS settings and headers are opts' or, with
 * like set, those in use by that attachment (reloads included). */
static int slot_init(h2r_listeners_t *g, const char *url, const h2rev_listener_options_t *opts,
                     const h2r_listener_t *like, h2r_listener_t **out) {
  h2r_listener_t *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return UV_ENOMEM;
  l->o = *opts;
  l->loop = g->loop;
  l->g = g;
  l->id = h2r_strndup(opts->id, strlen(opts->id));
  l->url = h2r_strndup(url, strlen(url));
  int r = l->id != NULL && l->url != NULL ? parse_url(l, url) : UV_ENOMEM;
  if (r == 0 && like != NULL) {
    l->hdrs = like->hdrs;
    if (l->hdrs != NULL)
      l->hdrs->refs++;
    if (like->sni != NULL && (l->sni = h2r_strndup(like->sni, strlen(like->sni))) == NULL)
      r = UV_ENOMEM;
    if (r == 0 && l->tls && like->ctx != NULL && SSL_CTX_up_ref(like->ctx) == 1)
      l->ctx = like->ctx;
    else if (r == 0 && l->tls)
      r = H2REV_ETLS;
  } else if (r == 0) {
    r = parse_headers(opts->headers, &l->hdrs);
    if (r == 0 && opts->tls.server_name != NULL &&
        (l->sni = h2r_strndup(opts->tls.server_name, strlen(opts->tls.server_name))) == NULL)
      r = UV_ENOMEM;
    if (r == 0 && l->tls) {
      char why[256];
      l->ctx = h2r_tls_ctx_new(&opts->tls, false, H2R_ALPN_H2, &r, why, sizeof(why));
      if (l->ctx == NULL)
        H2R_ERR(&l->o.log, "TLS setup failed: %s", why);
    }
  }
  if (r != 0) {
    free_listener(l);
    return r;
  }
  /* Only the copies are kept. */
  l->o.url = NULL;
  l->o.urls = NULL;
  l->o.id = l->id;
  l->o.headers = NULL;
  l->o.tls = (h2rev_tls_options_t){0};
  l->rng = uv_hrtime() ^ (uintptr_t)l;
  if (l->rng == 0)
    l->rng = 1;
  *out = l;
  return 0;
}

/* After slot_init: from here on it is freed by closing (slot_close). */
static void slot_handles_init(h2r_listener_t *l) {
  uv_timer_init(l->loop, &l->retry);
  uv_timer_init(l->loop, &l->probe);
  l->probe.data = l;
  h2r_defer_init(l->loop, &l->work, work_fire, l);
  l->retry.data = l;
  l->handles = 4; /* a defer is two handles */
}

static void slot_set_unref(h2r_listener_t *l, bool unref) {
  l->unref = unref;
  h2r_handle_ref(&l->retry, unref);
  h2r_handle_ref(&l->probe, unref);
  h2r_defer_set_unref(&l->work, unref);
  if (l->draining)
    h2r_handle_ref(&l->drain_timer, unref);
  for (lconn_t *c = l->conns; c != NULL; c = c->next)
    h2r_session_set_unref(&c->s, unref);
}

static void slot_start(h2r_listener_t *l) {
  l->started = true;
  connect_now(l);
}

static int slot_accept(h2r_listener_t *l, h2rev_stream_t *stream) {
  h2r_strm_t *st = l->ready_head;
  if (st == NULL)
    return UV_EAGAIN;
  l->ready_head = st->lnext;
  if (l->ready_head == NULL)
    l->ready_tail = NULL;
  st->lnext = NULL;
  l->nready--;
  if (l->unannounced > l->nready)
    l->unannounced = l->nready;
  h2r_strm_attach(st, stream);
  l->st.accepted++;
  return 0;
}

/* The figures of every attachment, summed; the state and the last error
 * as the application sees the whole (attached while one is). */
void h2rev_listener_stats(const h2rev_listener_t *listener, h2rev_listener_stats_t *out) {
  const h2r_listeners_t *g = listener->l_;
  *out = (h2rev_listener_stats_t){.state = H2REV_LISTENER_STOPPED};
  if (g == NULL)
    return;
  bool first = true;
  for (unsigned i = 0; i < g->nslots; i++) {
    const h2r_listener_t *l = g->slots[i];
    if (l == NULL)
      continue;
    if (first || l->st.state == H2REV_LISTENER_ATTACHED)
      out->state = l->st.state;
    first = false;
    out->attempts += l->st.attempts;
    out->attachments += l->st.attachments;
    out->failures += l->st.failures;
    out->accepted += l->st.accepted;
    if (l->st.attached_at != 0 && (out->attached_at == 0 || l->st.attached_at < out->attached_at))
      out->attached_at = l->st.attached_at;
    if (out->last_error == 0 && l->fail_err != 0) {
      out->last_error = l->fail_err;
      out->last_permanent = l->fail_permanent;
    }
    out->streams_open += l->conn != NULL && !l->conn->dead ? l->conn->s.nstreams : 0;
  }
  if (g->attached > 0) {
    out->state = H2REV_LISTENER_ATTACHED;
    out->last_error = out->last_permanent = 0;
  }
}

static void maybe_done(h2r_listener_t *l) {
  if (!l->closing || l->handles > 0 || l->live_conns > 0 || l->gai_busy)
    return;
  h2r_listeners_t *g = l->g;
  g->slots[l->index] = NULL;
  free_listener(l);
  group_slot_done(g);
}

static void handle_closed(uv_handle_t *h) {
  h2r_listener_t *l = h->data;
  l->handles--;
  maybe_done(l);
}

static void slot_close(h2r_listener_t *l) {
  if (l->closing)
    return;
  l->closing = true;
  if (l->gai_busy)
    uv_cancel((uv_req_t *)&l->gai);
  uv_close((uv_handle_t *)&l->retry, handle_closed);
  uv_close((uv_handle_t *)&l->probe, handle_closed);
  if (l->draining && !uv_is_closing((uv_handle_t *)&l->drain_timer))
    uv_timer_start(&l->drain_timer, drain_tick, 0, 0); /* closes it, drain or not */
  /* Every connection ends now; the close does not wait for the streams the
   * application holds (they report H2REV_ECLOSED until their owners close
   * them), as closing a uv_tcp_t server leaves the accepted sockets alone. */
  while (l->conns != NULL) {
    lconn_t *c = l->conns;
    bool ctl_open = (c->attached || c->refusing) && !c->dead && !h2rev_stream_is_closing(&c->ctl);
    conn_detach(l, c);
    if (ctl_open)
      h2rev_stream_close(&c->ctl, NULL);
    h2r_session_close(&c->s, H2REV_ECLOSED);
  }
  l->conn = NULL;
  /* The close completes once STOPPED has been reported (state_fire). */
  set_state(l, H2REV_LISTENER_STOPPED, 0, 0);
}

/* -------------------------------------------------------------- drain */

static void drain_timer_closed(uv_handle_t *h) {
  h2r_listener_t *l = h->data;
  l->handles--;
  maybe_done(l);
}

/* When the last connection is gone, or at the drain's deadline. */
static void drain_tick(uv_timer_t *t) {
  h2r_listener_t *l = t->data;
  if (!l->closing) {
    /* Only the drained connection, and older ones the application still
     * holds streams of, can be alive: no other is started. */
    uint64_t now = uv_now(l->loop);
    bool expired = now >= l->drain_deadline;
    if (l->live_conns > 0 && !expired) {
      uv_timer_start(t, drain_tick, l->drain_deadline - now, 0);
      return;
    }
    if (l->live_conns > 0) {
      unsigned n = 0;
      for (lconn_t *c = l->conns; c != NULL; c = c->next)
        n += c->s.nstreams;
      H2R_WARN(&l->o.log, "drain timeout: closing with %u stream%s in flight", n,
               n == 1 ? "" : "s");
    } else {
      H2R_INFO(&l->o.log, "drained: no reverse connection in flight");
    }
    /* Ends every connection left. */
    slot_close(l);
  }
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, drain_timer_closed);
}

static void slot_shutdown(h2r_listener_t *l, unsigned timeout_ms) {
  if (l->closing || l->draining)
    return;
  lconn_t *c = l->conn;
  if (c == NULL || !c->attached || c->dead) {
    /* Not attached: nothing in flight. */
    slot_close(l);
    return;
  }
  /* The timer first: closing the control stream below may end the drain. */
  uv_timer_init(l->loop, &l->drain_timer);
  l->drain_timer.data = l;
  if (l->unref)
    uv_unref((uv_handle_t *)&l->drain_timer);
  l->handles++;
  l->draining = true;
  l->drain_deadline = uv_now(l->loop) + timeout_ms;
  /* Detached from the listener: when it ends, nothing reconnects. */
  l->conn = NULL;
  l->drain_conn = c;
  l->state = L_STOPPED;
  uv_timer_stop(&l->retry);
  /* The dialer unregisters the id as its control stream ends and resets the
   * spares; the GOAWAY ends the connection once the streams in use are. */
  h2rev_stream_close(&c->ctl, NULL);
  h2r_session_shutdown(&c->s);
  if (c->replica[0] != '\0')
    H2R_INFO(&l->o.log, "draining: detached %s from replica %s, %u ms to go", l->id, c->replica,
             timeout_ms);
  else
    H2R_INFO(&l->o.log, "draining: detached %s, %u ms to go", l->id, timeout_ms);
  if (!l->closing)
    uv_timer_start(&l->drain_timer, drain_tick, l->live_conns > 0 ? timeout_ms : 0, 0);
}

/* ------------------------------------------------------------- reload */

static int slot_set_tls(h2r_listener_t *l, const h2rev_tls_options_t *tls) {
  if (!l->tls)
    return UV_EINVAL;
  char *sni = NULL;
  if (tls->server_name != NULL &&
      (sni = h2r_strndup(tls->server_name, strlen(tls->server_name))) == NULL)
    return UV_ENOMEM;
  int r = 0;
  char why[256];
  SSL_CTX *ctx = h2r_tls_ctx_new(tls, false, H2R_ALPN_H2, &r, why, sizeof(why));
  if (ctx == NULL) {
    H2R_ERR(&l->o.log, "new TLS settings: %s: those in use are kept", why);
    free(sni);
    return r != 0 ? r : H2REV_ETLS;
  }
  /* Connections made with the old one hold a reference of their own. */
  SSL_CTX_free(l->ctx);
  l->ctx = ctx;
  free(l->sni);
  l->sni = sni;
  return 0;
}

static int slot_retry_now(h2r_listener_t *l) {
  if (l->closing || l->state != L_WAITING)
    return UV_EALREADY;
  uv_timer_stop(&l->retry);
  l->attempt = 0;
  connect_now(l);
  return 0;
}

/* ------------------------------------------------------------ the group */

static int group_grow(h2r_listeners_t *g, unsigned want) {
  if (want <= g->cap)
    return 0;
  h2r_listener_t **s = realloc(g->slots, want * sizeof(*s));
  if (s == NULL)
    return UV_ENOMEM;
  g->slots = s;
  slot_view_t *v = realloc(g->views, want * sizeof(*v));
  if (v == NULL)
    return UV_ENOMEM;
  g->views = v;
  g->cap = want;
  return 0;
}

static int group_add(h2r_listeners_t *g, const char *url, const h2rev_listener_options_t *opts,
                     const h2r_listener_t *like) {
  int r = group_grow(g, g->nslots + 1);
  h2r_listener_t *l = NULL;
  if (r == 0)
    r = slot_init(g, url, opts, like, &l);
  if (r != 0)
    return r;
  l->index = g->nslots++;
  g->slots[l->index] = l;
  g->views[l->index] = (slot_view_t){0};
  g->live++;
  /* h2rev_listener_init makes the handles once every attachment is made. */
  if (like != NULL) {
    slot_handles_init(l);
    if (g->unref)
      slot_set_unref(l, true);
  }
  return 0;
}

static void group_free(h2r_listeners_t *g) {
  free(g->slots);
  free(g->views);
  free(g);
}

static bool group_holds(h2r_listener_t *l, const char *replica) {
  h2r_listeners_t *g = l->g;
  if (replica[0] == '\0')
    return false;
  for (unsigned i = 0; i < g->nslots; i++) {
    h2r_listener_t *o = g->slots[i];
    if (o == NULL || o == l || o->conn == NULL)
      continue;
    lconn_t *c = o->conn;
    if (c->attached && !c->dead && strcmp(c->replica, replica) == 0)
      return true;
  }
  return false;
}

/* The dialers say there are n replicas: one attachment each, on the URL of
 * the one that heard it (the load balancer's). */
static void group_replicas(h2r_listener_t *l, unsigned n) {
  h2r_listeners_t *g = l->g;
  if (g->o.no_follow_replicas || g->closing || g->draining)
    return;
  if (n > g->o.max_attachments)
    n = g->o.max_attachments;
  unsigned added = 0;
  while (g->nslots < n) {
    int r = group_add(g, l->url, &l->o, l);
    if (r != 0) {
      H2R_WARN(&l->o.log, "cannot add an attachment: %s", h2rev_strerror(r));
      break;
    }
    added++;
    if (g->cb != NULL)
      slot_start(g->slots[g->nslots - 1]);
  }
  if (added > 0)
    H2R_INFO(&l->o.log, "%s has %u replicas: %u more connection%s", l->authority, n, added,
             added == 1 ? "" : "s");
}

static void group_ready(h2r_listener_t *l) {
  h2r_listeners_t *g = l->g;
  if (g->cb != NULL)
    g->cb(g->pub, 0);
}

/* Per attachment to on_replica; to on_state as they are with one
 * attachment, else for the listener as a whole: ATTACHED when the first
 * is, LOST when none is left, CONNECTING and RETRYING while none is,
 * STOPPED when all are. */
static void group_state(h2r_listener_t *l, int state, int err, unsigned delay) {
  h2r_listeners_t *g = l->g;
  slot_view_t *v = &g->views[l->index];
  unsigned was = g->attached;
  if (state == H2REV_LISTENER_ATTACHED && !v->attached) {
    v->attached = true;
    g->attached++;
  } else if (state != H2REV_LISTENER_ATTACHED && v->attached) {
    v->attached = false;
    g->attached--;
  }
  bool all_stopped_before = g->stopped == g->nslots;
  if (state == H2REV_LISTENER_STOPPED && !v->stopped) {
    v->stopped = true;
    g->stopped++;
  } else if (state != H2REV_LISTENER_STOPPED && v->stopped) {
    v->stopped = false;
    g->stopped--;
  }
  if (g->o.on_replica != NULL)
    g->o.on_replica(g->pub, l->index, v->replica, state, err, delay);
  if (g->o.on_state == NULL)
    return;
  bool pass;
  if (g->nslots == 1)
    pass = true;
  else if (state == H2REV_LISTENER_ATTACHED)
    pass = was == 0;
  else if (state == H2REV_LISTENER_STOPPED)
    pass = g->stopped == g->nslots && !all_stopped_before;
  else
    pass = g->attached == 0; /* LOST, CONNECTING, RETRYING */
  if (pass)
    g->o.on_state(g->pub, state, err, delay);
}

static void group_slot_done(h2r_listeners_t *g) {
  if (--g->live > 0)
    return;
  h2rev_listener_t *pub = g->pub;
  h2rev_listener_close_cb cb = g->close_cb;
  group_free(g);
  pub->l_ = NULL;
  if (cb != NULL)
    cb(pub);
}

/* ------------------------------------------------------------- the API */

int h2rev_listener_init(uv_loop_t *loop, h2rev_listener_t *listener,
                        const h2rev_listener_options_t *opts) {
  if (opts == NULL || opts->url == NULL || opts->id == NULL)
    return UV_EINVAL;
  if (!h2r_id_valid(opts->id, strlen(opts->id)))
    return H2REV_EBADID;
  h2r_listeners_t *g = calloc(1, sizeof(*g));
  if (g == NULL)
    return UV_ENOMEM;
  g->pub = listener;
  g->loop = loop;
  g->o = *opts;
  h2rev_listener_options_t *o = &g->o;
  if (o->ping_interval_ms == 0)
    o->ping_interval_ms = 30000;
  if (o->ping_timeout_ms == 0)
    o->ping_timeout_ms = 15000;
  if (o->handshake_ms == 0)
    o->handshake_ms = 10000;
  if (o->backoff_min_ms == 0)
    o->backoff_min_ms = 500;
  if (o->backoff_max_ms < o->backoff_min_ms)
    o->backoff_max_ms = o->backoff_min_ms > 30000 ? o->backoff_min_ms : 30000;
  if (o->spares == 0)
    o->spares = 2;
  if (o->max_attachments == 0)
    o->max_attachments = H2R_ATTACHMENTS_DEFAULT;
  int r = group_add(g, opts->url, o, NULL);
  for (size_t i = 0; r == 0 && opts->urls != NULL && opts->urls[i] != NULL; i++)
    r = g->nslots < o->max_attachments ? group_add(g, opts->urls[i], o, NULL) : UV_EINVAL;
  if (r != 0) {
    for (unsigned i = 0; i < g->nslots; i++)
      free_listener(g->slots[i]);
    group_free(g);
    return r;
  }
  for (unsigned i = 0; i < g->nslots; i++)
    slot_handles_init(g->slots[i]);
  /* Only the copies are kept. */
  o->url = NULL;
  o->urls = NULL;
  o->id = g->slots[0]->id;
  o->headers = NULL;
  o->tls = (h2rev_tls_options_t){0};
  listener->loop = loop;
  listener->l_ = g;
  return 0;
}

static void listener_set_unref(h2rev_listener_t *listener, bool unref) {
  h2r_listeners_t *g = listener->l_;
  if (g == NULL)
    return;
  g->unref = unref;
  for (unsigned i = 0; i < g->nslots; i++)
    if (g->slots[i] != NULL)
      slot_set_unref(g->slots[i], unref);
}

void h2rev_listener_ref(h2rev_listener_t *listener) {
  listener_set_unref(listener, false);
}

void h2rev_listener_unref(h2rev_listener_t *listener) {
  listener_set_unref(listener, true);
}

int h2rev_listener_start(h2rev_listener_t *listener, h2rev_connection_cb cb) {
  h2r_listeners_t *g = listener->l_;
  if (g->cb != NULL)
    return UV_EALREADY;
  if (cb == NULL)
    return UV_EINVAL;
  g->cb = cb;
  for (unsigned i = 0; i < g->nslots; i++)
    slot_start(g->slots[i]);
  return 0;
}

int h2rev_listener_accept(h2rev_listener_t *listener, h2rev_stream_t *stream) {
  h2r_listeners_t *g = listener->l_;
  /* A stream announced already (each attachment counts those it has not
   * announced yet: taking one of another's would leave its own unsaid),
   * from each attachment in turn; else any ready one. */
  for (int pass = 0; pass < 2; pass++)
    for (unsigned k = 0; k < g->nslots; k++) {
      unsigned i = (g->next + k) % g->nslots;
      h2r_listener_t *l = g->slots[i];
      if (l == NULL || (pass == 0 && l->nready <= l->unannounced))
        continue;
      if (slot_accept(l, stream) == 0) {
        g->next = (i + 1) % g->nslots;
        return 0;
      }
    }
  return UV_EAGAIN;
}

void h2rev_listener_close(h2rev_listener_t *listener, h2rev_listener_close_cb cb) {
  h2r_listeners_t *g = listener->l_;
  if (g == NULL || g->closing)
    return;
  g->closing = true;
  g->close_cb = cb;
  /* An attachment being drained closes as the drain's deadline would. */
  for (unsigned i = 0; i < g->nslots; i++)
    if (g->slots[i] != NULL)
      slot_close(g->slots[i]);
}

int h2rev_listener_shutdown(h2rev_listener_t *listener, unsigned timeout_ms,
                            h2rev_listener_close_cb cb) {
  h2r_listeners_t *g = listener->l_;
  if (g == NULL || g->closing || g->draining)
    return UV_EALREADY;
  g->draining = true;
  g->close_cb = cb;
  for (unsigned i = 0; i < g->nslots; i++)
    if (g->slots[i] != NULL)
      slot_shutdown(g->slots[i], timeout_ms);
  return 0;
}

int h2rev_listener_last_error(const h2rev_listener_t *listener, char *buf, size_t len,
                              int *permanent) {
  const h2r_listeners_t *g = listener->l_;
  const h2r_listener_t *l = NULL;
  for (unsigned i = 0; g != NULL && i < g->nslots && l == NULL; i++)
    if (g->slots[i] != NULL && g->slots[i]->fail_err != 0)
      l = g->slots[i];
  if (l == NULL) {
    if (len > 0)
      buf[0] = '\0';
    if (permanent != NULL)
      *permanent = 0;
    return 0;
  }
  if (len > 0)
    snprintf(buf, len, "%s", l->fail_text);
  if (permanent != NULL)
    *permanent = l->fail_permanent;
  return l->fail_err;
}

int h2rev_listener_set_tls(h2rev_listener_t *listener, const h2rev_tls_options_t *tls) {
  h2r_listeners_t *g = listener->l_;
  if (g == NULL || tls == NULL)
    return UV_EINVAL;
  int r = UV_EINVAL; /* no https:// attachment */
  for (unsigned i = 0; i < g->nslots; i++) {
    h2r_listener_t *l = g->slots[i];
    if (l == NULL || !l->tls)
      continue;
    int e = slot_set_tls(l, tls);
    if (e != 0)
      return e; /* the same files for every one: the first says why */
    r = 0;
  }
  return r;
}

int h2rev_listener_set_headers(h2rev_listener_t *listener, const char *const *headers) {
  h2r_listeners_t *g = listener->l_;
  if (g == NULL)
    return UV_EINVAL;
  hdrset_t *h;
  int r = parse_headers(headers, &h);
  if (r != 0)
    return r;
  for (unsigned i = 0; i < g->nslots; i++) {
    h2r_listener_t *l = g->slots[i];
    if (l == NULL)
      continue;
    hdrset_release(l->hdrs);
    l->hdrs = h;
    if (h != NULL)
      h->refs++;
  }
  hdrset_release(h);
  return 0;
}

int h2rev_listener_retry_now(h2rev_listener_t *listener) {
  h2r_listeners_t *g = listener->l_;
  int r = UV_EALREADY;
  for (unsigned i = 0; g != NULL && i < g->nslots; i++)
    if (g->slots[i] != NULL && slot_retry_now(g->slots[i]) == 0)
      r = 0;
  return r;
}
