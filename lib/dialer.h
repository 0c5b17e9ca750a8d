/*
 * The dialer's parts, between dialer.c (the registry of attached listeners,
 * the dials, the control protocol, /revdial, the mount on a server) and
 * relay.c, which composes a dialer with a server of its own: listening,
 * /healthz, the drain and the close of both. relay.c calls down into
 * dialer.c, never the other way (the drain is told of changes through
 * on_change).
 */
#ifndef H2REV_DIALER_H
#define H2REV_DIALER_H

#include "control.h"

typedef struct h2r_dialer h2r_dialer_t;
typedef struct dlst dlst_t;
typedef struct orphan orphan_t;

struct h2r_dialer {
  h2rev_dialer_t *pub;
  uv_loop_t *loop;
  h2rev_dialer_options_t o;
  char *base;
  dlst_t **table;
  unsigned tsize, count;
  /* The server it is mounted on: its own (h2rev_dialer_listen) or the
   * application's (h2rev_dialer_mount); NULL once that server is closed. */
  h2r_server_t *srv;
  bool own_srv;
  h2rev_http_server_t own;
  h2r_session_t **waiting; /* closing: listener connections not yet released */
  size_t nwaiting;
  uv_timer_t keepalive;
  h2r_defer_t serve;  /* hands recycled spares to waiting dials (serve_pending) */
  dlst_t *serve_head; /* the listeners it serves next */
  uint64_t ka_slice;  /* the next keep-alive slice, in timer ticks since the loop's epoch */
  h2rev_dialer_stats_t st;
  void (*close_cb)(h2rev_dialer_t *);
  h2rev_dialer_close_cb user_close_cb;
  bool closing;
  int pending_closes;
  unsigned completing; /* dials whose timer handle is closing */
  /* h2rev_dialer_shutdown: the drain timer and the sockets it closes count in
   * `completing`, so a close during the drain waits for them. */
  bool draining;
  uv_timer_t drain_timer;
  uint64_t drain_deadline;
  h2rev_dialer_close_cb drain_cb;
  h2r_ratelog_t rl;
  bool unref; /* h2rev_dialer_unref: its own server's handles are unref'd */
  /* Set by a drain (relay.c): something it waits for may have ended (a
   * stream freed, a connection closed, a listener gone). */
  void (*on_change)(h2r_dialer_t *d);
  /* The replica headers of every answer to /revdial. */
  char replica[H2R_REPLICA_MAX + 1];
  /* Dials for an id no listener holds here yet (replicas > 1: its listener
   * may be reaching this replica), waiting for it to attach. */
  orphan_t *orphans;
  unsigned norphans;
  bool unhealthy; /* h2rev_dialer_set_healthy(0): /healthz answers 503 */
  char replicas[16];
  nghttp2_nv replica_nv[2];
  size_t nreplica_nv;
};

/* <base>/revdial and <base>/proxy on srv, and its connections watched. */
int h2r_dialer_mount(h2r_dialer_t *d, h2r_server_t *srv);
/* Begins the close: every listener goes, and the listeners' connections
 * too unless conns_go_with_server (the server they are on closes them
 * all). The caller holds one count of the close, released with
 * h2r_dialer_release, as is each count it adds to pending_closes. */
void h2r_dialer_close_begin(h2r_dialer_t *d, h2rev_dialer_close_cb cb, bool conns_go_with_server);
void h2r_dialer_release(h2r_dialer_t *d);
/* The connections holding attached listeners, sorted by address (for
 * bsearch with h2r_ptr_cmp), *n of them; NULL with *n 0 when there are
 * none or memory is short. */
h2r_session_t **h2r_dialer_listener_conns(h2r_dialer_t *d, size_t *n);
int h2r_ptr_cmp(const void *a, const void *b);
/* The streams that are no work in flight: each listener's control stream
 * and idle spares. */
long h2r_dialer_idle_streams(const h2r_dialer_t *d);

#endif
