/*
 * Internals shared by the files of lib/: the transport (TCP or TLS byte
 * stream), the HTTP/2 session and the private half of h2rev_stream_t.
 * Nothing here is part of the public API.
 */
#ifndef H2REV_INTERNAL_H
#define H2REV_INTERNAL_H

#include "h2rev.h"

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <string.h>

#define H2R_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))
#define H2R_MIN(a, b)                      ((a) < (b) ? (a) : (b))

/* uv_ref semantics of the public handles (h2rev_*_unref): every libuv
 * handle an unref'd object owns is unref'd, those it creates later too. */
static inline void h2r_handle_ref(void *h, bool unref) {
  if (unref)
    uv_unref((uv_handle_t *)h);
  else
    uv_ref((uv_handle_t *)h);
}

/* -------------------------------------------------------------- defer.c */

/* A call queued on another object's h2r_defer_t (h2r_defer_call), for an
 * object that has none of its own: fn(l) runs once, on that defer's run. */
typedef struct h2r_later {
  struct h2r_later *next;
  void (*fn)(struct h2r_later *l);
  bool queued;
} h2r_later_t;

/* Work run later in this loop turn (libuv's check phase), never inside the
 * call that asked for it: cb(arg) once per arming, however many times it
 * was armed, then the calls queued on it. */
typedef struct h2r_defer {
  uv_check_t check;
  uv_idle_t idle; /* keeps the poll phase from blocking while work is due */
  void (*cb)(void *arg);
  h2r_later_t *calls, **calls_tail;
  unsigned ncalls;
  bool armed, closed;
} h2r_defer_t;

void h2r_defer_init(uv_loop_t *loop, h2r_defer_t *d, void (*cb)(void *arg), void *arg);
void h2r_defer_arm(h2r_defer_t *d);
/* Queues l (once, however many times) and arms d. The caller keeps d open
 * while l may be queued, and takes l back (h2r_defer_uncall) before freeing it. */
void h2r_defer_call(h2r_defer_t *d, h2r_later_t *l);
void h2r_defer_uncall(h2r_defer_t *d, h2r_later_t *l);
void h2r_defer_set_unref(h2r_defer_t *d, bool unref);
/* Closes its two handles: close_cb runs twice, with handle->data arg. */
void h2r_defer_close(h2r_defer_t *d, uv_close_cb close_cb);

/* ---------------------------------------------------------------- log.c */

void h2r_log(const h2rev_logger_t *lg, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define H2R_LOG_ON(lg, lvl) ((lg) != NULL && (lg)->cb != NULL && (lvl) <= (lg)->level)
#define H2R_ERR(lg, ...)    h2r_log((lg), H2REV_LOG_ERROR, __VA_ARGS__)
#define H2R_WARN(lg, ...)   h2r_log((lg), H2REV_LOG_WARN, __VA_ARGS__)
#define H2R_INFO(lg, ...)   h2r_log((lg), H2REV_LOG_INFO, __VA_ARGS__)
#define H2R_DEBUG(lg, ...)  h2r_log((lg), H2REV_LOG_DEBUG, __VA_ARGS__)

/* Lines that clients can cause at will (refused requests, failed proxy
 * exchanges) go through a limiter: at most H2R_LOG_BURST a second, and the
 * count of those dropped is added to the next line logged. */
#define H2R_LOG_BURST 20
typedef struct h2r_ratelog {
  uint64_t sec;
  unsigned n, dropped;
} h2r_ratelog_t;
void h2r_log_limited(const h2rev_logger_t *lg, h2r_ratelog_t *rl, uv_loop_t *loop, int level,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---------------------------------------------------------------- url.c */

/* http(s)://host[:port][/path]: parts as C strings (owned), the path without
 * its trailing slashes, query and fragment. */
typedef struct h2r_url {
  bool tls;
  char *host, *port, *authority, *path;
} h2r_url_t;

int h2r_url_parse(const char *url, h2r_url_t *u); /* 0, H2REV_EURL or UV_ENOMEM */
void h2r_url_free(h2r_url_t *u);
char *h2r_strndup(const char *s, size_t n);

/* ---------------------------------------------------------------- tls.c */

enum { H2R_ALPN_H2 = 1, H2R_ALPN_H1 = 2 };

/* Builds a client or server SSL_CTX. alpn is a mask of H2R_ALPN_*: the
 * protocols offered (client) or accepted (server, h2 preferred). On failure
 * returns NULL, sets *err and writes a reason into errbuf. */
SSL_CTX *h2r_tls_ctx_new(const h2rev_tls_options_t *o, bool server, int alpn, int *err,
                         char *errbuf, size_t errlen);
/* Copies OpenSSL's error queue into buf (and clears it). */
void h2r_tls_errstr(char *buf, size_t len);
/* Fills the certificate fields of *peer from cert (NULL: none); the strings
 * it allocates are released by h2r_tls_peer_free. 0 or UV_ENOMEM. */
int h2r_tls_peer_fill(h2rev_peer_t *peer, X509 *cert);
void h2r_tls_peer_free(h2rev_peer_t *peer);

/* ----------------------------------------------------------- transport.c */

/* A transport's read buffer: socket reads of up to half of it, TLS
 * plaintext in the other half. */
#define H2R_RBUF_SIZE (128 * 1024)

typedef struct h2r_xport h2r_xport_t;
typedef struct h2r_xwrite h2r_xwrite_t;
typedef void (*h2r_xwrite_cb)(h2r_xwrite_t *w, int status);

typedef struct h2r_xport_cbs {
  /* Connected (client) and TLS handshake done; status < 0 on failure, after
   * which the owner must h2r_xport_close(). */
  void (*on_open)(h2r_xport_t *x, int status);
  /* Plaintext bytes; valid only during the call. */
  void (*on_read)(h2r_xport_t *x, const uint8_t *p, size_t n);
  /* The read side ended: UV_EOF or an error. */
  void (*on_error)(h2r_xport_t *x, int status);
  /* Fully closed; every write callback has run. */
  void (*on_close)(h2r_xport_t *x);
} h2r_xport_cbs;

enum h2r_xport_state {
  H2R_X_INIT,
  H2R_X_CONNECTING,
  H2R_X_HANDSHAKE,
  H2R_X_OPEN,
  H2R_X_CLOSING,
};

struct h2r_xport {
  uv_tcp_t tcp;
  uv_timer_t timer; /* handshake timeout */
  /* Later in the loop turn: the gathered writes go out, the callbacks of
   * writes the socket took at once run, a resumed TLS read goes on. */
  h2r_defer_t work;
  h2r_xwrite_t *done_head, *done_tail; /* written: their callbacks are due */
  /* Cleartext: the writes of a loop turn go to the socket together, in one
   * writev after the poll phase (a transfer's chunks cost a write(2) each,
   * and a wakeup of the peer each, otherwise). */
  h2r_xwrite_t *g_head, *g_tail;
  uv_buf_t *g_iov;
  unsigned g_n, g_cap;
  uv_connect_t connect;
  uv_loop_t *loop;
  const h2r_xport_cbs *cbs;
  void *owner;
  const h2rev_logger_t *log;
  SSL *ssl; /* its BIO is ours (x_bio): OpenSSL reads and writes our buffers */
  enum h2r_xport_state state;
  bool server;
  bool reading;
  bool read_paused;
  bool resume_due; /* TLS records left from before a pause are read in work */
  int nhandles;    /* libuv handles still to close */
  unsigned handshake_ms;
  uint8_t *rbuf; /* socket reads; with TLS the plaintext goes after them */
  size_t rbuf_len;
  /* Set before connect/accept: H2R_RBUF_SIZE bytes shared by the owner's
   * connections (bytes are consumed within the read callback), so an idle
   * connection holds none of its own. */
  uint8_t *shared_rbuf;
  bool unref; /* set before connect/accept too: its handles do not keep the loop alive */
  /* TLS input: the ciphertext OpenSSL is reading now (in the read buffer),
   * and what it left there when reading paused (kept here until resumed). */
  const uint8_t *in_p;
  size_t in_len;
  bool in_own; /* in_p points into in_kept */
  uint8_t *in_kept;
  size_t in_kept_cap;
  /* TLS output: ciphertext not yet handed to the socket. */
  char *obuf;
  size_t olen, ocap;
  size_t ohint; /* capacity of the last buffer handed to libuv */
  /* One such buffer back from libuv, for the next: during a transfer two
   * buffers take turns instead of fresh pages (page faults) for each. */
  char *ospare;
  size_t ospare_cap;
  unsigned small_flushes; /* in a row, much smaller than obuf's capacity */
  char alpn[16];
  char peer[64]; /* "ip:port" for logs */
  char errmsg[160];
};

struct h2r_xwrite {
  uv_write_t req;
  h2r_xport_t *x;
  h2r_xwrite_cb cb;
  uint8_t *tls_out;   /* ciphertext owned by this write (TLS) */
  size_t tls_cap;     /* its allocation */
  unsigned nbufs;     /* cleartext, gathered: its buffers in g_iov */
  int status;         /* on the list of completed writes: for cb */
  h2r_xwrite_t *next; /* on the gathered or the completed writes' list */
};

/* Client: connects to addr; TLS when ctx != NULL (then host is the SNI and
 * the name verified, may be an IP literal). */
int h2r_xport_connect(h2r_xport_t *x, uv_loop_t *loop, const struct sockaddr *addr, SSL_CTX *ctx,
                      const char *host, unsigned handshake_ms, const h2r_xport_cbs *cbs,
                      void *owner);
/* Server: accepts one connection from a listening TCP socket. */
int h2r_xport_accept(h2r_xport_t *x, uv_loop_t *loop, uv_stream_t *server, SSL_CTX *ctx,
                     unsigned handshake_ms, const h2r_xport_cbs *cbs, void *owner);
/* Writes bufs (plaintext); with TLS they are encrypted (copied) at once, with
 * TCP they must stay valid until cb. cb never runs inside this call; bytes
 * written before h2r_xport_close still go out as far as the socket takes them. */
int h2r_xport_write(h2r_xport_t *x, h2r_xwrite_t *w, const uv_buf_t *bufs, unsigned n,
                    h2r_xwrite_cb cb);
void h2r_xport_read_pause(h2r_xport_t *x, bool pause);
void h2r_xport_close(h2r_xport_t *x);
/* uv_ref / uv_unref on the transport's handles, now and later. */
void h2r_xport_set_unref(h2r_xport_t *x, bool unref);
/* The TLS peer certificate, or NULL (not reference-counted: valid while open). */
X509 *h2r_xport_peer_cert(const h2r_xport_t *x);

/* ------------------------------------------------------------- session.c */

typedef struct h2r_session h2r_session_t;
typedef struct h2rev_strm h2r_strm_t;

/* A header block as received: names and values point into `buf`. */
typedef struct h2r_hdr {
  uint32_t name, namelen, value, valuelen; /* offsets into buf */
} h2r_hdr_t;

typedef struct h2r_session_opts {
  uint32_t stream_window;    /* per-stream receive window */
  uint32_t conn_window;      /* connection receive window */
  uint32_t max_streams;      /* SETTINGS_MAX_CONCURRENT_STREAMS we accept */
  uint32_t max_header_bytes; /* per header block */
  /* Header blocks held by the connection's streams, in all; and by every
   * connection of a server (*hdr_total, shared; NULL: no such bound). Over
   * either, a new header block is refused (the stream is reset). */
  size_t max_conn_header_bytes;
  size_t max_total_header_bytes;
  size_t *hdr_total;
  unsigned ping_interval_ms; /* PING after this long without input; 0: never */
  unsigned ping_timeout_ms;  /* close if unanswered this long */
  unsigned handshake_ms;     /* TCP connect + TLS handshake */
  bool allow_h1;             /* server: serve HTTP/1.1 clients through cbs->on_h1 */
  uint8_t *rbuf;             /* H2R_RBUF_SIZE bytes shared by the owner's sessions, or NULL */
  bool unref;                /* its handles do not keep the loop alive (h2r_session_set_unref) */
  bool quiet;                /* client: its owner reports failures (logged at debug here) */
} h2r_session_opts;

void h2r_session_opts_default(h2r_session_opts *o);

typedef struct h2r_session_cbs {
  /* The connection is up (client: TLS done, preface sent) or failed. On
   * failure on_close follows. */
  void (*on_open)(h2r_session_t *s, int status);
  /* Server: a request's headers arrived. The owner calls h2r_strm_respond()
   * or h2r_strm_reject() on it now, or later. */
  void (*on_request)(h2r_session_t *s, h2r_strm_t *st);
  /* The connection is gone (err is why: 0 graceful). Streams still referenced
   * by the application report errors; once they are closed, on_close. */
  void (*on_dead)(h2r_session_t *s, int err);
  /* Everything is released; the owner may free the session. */
  void (*on_close)(h2r_session_t *s);
  /* Server with allow_h1: the client speaks HTTP/1.1 (ALPN, or its first
   * bytes are not the HTTP/2 preface). The owner sets s->h1 and s->h1_data;
   * the bytes then go to s->h1->on_read. */
  void (*on_h1)(h2r_session_t *s);
  /* Optional: one of its streams is freed (nstreams went down). */
  void (*on_stream_freed)(h2r_session_t *s);
} h2r_session_cbs;

/* An HTTP/1.1 connection riding on a session's transport. */
typedef struct h2r_h1_ops {
  void (*on_read)(h2r_session_t *s, const uint8_t *p, size_t n);
  void (*on_dead)(h2r_session_t *s, int err); /* the transport is gone */
  void (*on_shutdown)(h2r_session_t *s);      /* finish the current exchange, then close */
  /* The client ended its direction (TCP FIN, TLS close_notify): true when
   * the connection goes on to answer what it has received (a half-close),
   * false when it is dead for the connection. */
  bool (*on_eof)(h2r_session_t *s);
} h2r_h1_ops;

enum h2r_session_state {
  H2R_S_CONNECTING,
  H2R_S_OPEN,
  H2R_S_DRAINING, /* GOAWAY sent: closing once streams are done */
  H2R_S_DEAD,     /* transport closing or closed */
};

#define H2R_FRAME_HD 9 /* an HTTP/2 frame header's bytes */

struct h2r_session {
  uv_loop_t *loop;
  h2r_xport_t x;
  nghttp2_session *ng;
  const h2r_session_cbs *cbs;
  void *owner;
  const h2rev_logger_t *log;
  h2r_session_opts o;
  enum h2r_session_state state;
  bool server;
  bool x_closed;
  bool close_reported;
  int err;
  h2r_defer_t work; /* runs deferred work and flushes once per loop turn */
  uv_timer_t ping_timer;
  int nhandles;
  bool ping_sent;
  uint64_t last_input;
  uint64_t ping_at;
  size_t inflight;      /* bytes handed to the transport, not yet written */
  struct batch *batch;  /* being filled by nghttp2_session_send */
  const h2r_h1_ops *h1; /* non-NULL: this connection speaks HTTP/1.1 */
  void *h1_data;
  bool sniffing; /* cleartext server: which protocol is it? */
  uint8_t sniff[24];
  size_t sniffed;
  bool goaway_recv;
  bool got_input;      /* client: the peer has sent a byte (cleartext: checked for HTTP/2) */
  h2r_strm_t *streams; /* every stream still referenced */
  h2r_strm_t *pending; /* streams with deferred events */
  h2r_strm_t **pending_tail;
  unsigned nstreams;
  size_t hdr_held;  /* bytes of header blocks held by the streams */
  unsigned proxied; /* server: streams the dialer's proxy serves (its per-connection limit) */
  h2r_ratelog_t rl; /* for the lines its peer causes at will */
  /* The peer's frames as they pass (session.c, idle_scan): a header being
   * read, then its payload skipped; a padded DATA frame is judged by its
   * first payload byte, the padding's length. */
  unsigned idle_frames;            /* frames that asked for no work, since the last that did */
  uint32_t fr_skip;                /* payload bytes (or the client preface) still to pass */
  uint32_t fr_len;                 /* the padded DATA frame's length */
  uint8_t fr_hd[H2R_FRAME_HD + 4]; /* and a WINDOW_UPDATE's payload */
  uint8_t fr_hn;
  bool fr_pad;      /* the next byte is a padded DATA frame's pad length */
  bool fr_wu;       /* a WINDOW_UPDATE's payload is being read into fr_hd */
  uint64_t wu_owed; /* DATA bytes sent that no connection WINDOW_UPDATE returned yet */
};

/* Frames a peer may send in a row that carry nothing to act on (DATA with no
 * payload and no END_STREAM, PRIORITY): each costs a parse and nothing else,
 * so a peer can keep a core busy with them at wire speed (CVE-2019-9518,
 * CVE-2019-9513). A request's HEADERS or a byte of payload starts the count
 * again; past it the connection ends with ENHANCE_YOUR_CALM. */
#define H2R_IDLE_FRAMES_MAX 1024

/* A WINDOW_UPDATE asks for work when it returns window for DATA we sent
 * and not yet returned, at least this much of it or all of it; one that
 * enlarges a window, answers a closed stream or returns less counts among the
 * frames that ask for nothing (H2R_IDLE_FRAMES_MAX). Peers return window in
 * pieces of many sizes (nghttp2 at half the window, Go's http2 on each read
 * of the body or every 4 KiB): only a run of 1024 slivers ends a connection. */
#define H2R_WU_MIN_BYTES 32

/* h2rev_http_server_options_t.send_timeout_ms's default (nginx's send_timeout). */
#define H2R_SEND_TIMEOUT_MS 60000

/* 0: on_open follows (from inside the call when the connection fails at
 * once), then on_close. Nonzero (out of memory): nothing was started, no
 * callback runs and s may be freed at once. */
int h2r_session_connect(h2r_session_t *s, uv_loop_t *loop, const struct sockaddr *addr,
                        SSL_CTX *ctx, const char *host, const h2r_session_opts *o,
                        const h2r_session_cbs *cbs, void *owner, const h2rev_logger_t *log);
/* As h2r_session_connect. Nonzero: the pending connection is left in
 * server, and libuv polls server no more until something accepts it. */
int h2r_session_accept(h2r_session_t *s, uv_loop_t *loop, uv_stream_t *server, SSL_CTX *ctx,
                       const h2r_session_opts *o, const h2r_session_cbs *cbs, void *owner,
                       const h2rev_logger_t *log);
/* GOAWAY, then close once the open streams have finished. */
void h2r_session_shutdown(h2r_session_t *s);
/* Abort: GOAWAY if possible, close the transport now. */
void h2r_session_close(h2r_session_t *s, int err);
void h2r_session_schedule(h2r_session_t *s);
/* uv_ref / uv_unref on the session's handles and its transport's. */
void h2r_session_set_unref(h2r_session_t *s, bool unref);

/* ------------------------------------------------------------- stream.c */

enum {
  H2R_F_READING = 1 << 0,
  H2R_F_EOF = 1 << 1,       /* peer's END_STREAM received */
  H2R_F_EOF_DONE = 1 << 2,  /* UV_EOF or the error reported to read_cb */
  H2R_F_NG_CLOSED = 1 << 3, /* nghttp2 closed the stream */
  H2R_F_SHUT = 1 << 4,      /* shutdown requested */
  H2R_F_SHUT_SENT = 1 << 5, /* END_STREAM sent */
  H2R_F_CLOSING = 1 << 6,   /* h2rev_stream_close called */
  H2R_F_PENDING = 1 << 7,   /* on the session's pending list */
  H2R_F_SUBMITTED = 1 << 8, /* request/response submitted with a data source */
  H2R_F_DEFERRED = 1 << 9,  /* data source returned DEFERRED */
  H2R_F_HEADERS = 1 << 10,  /* the peer's header block is complete */
  H2R_F_ORPHAN = 1 << 11,   /* no public handle: free when nghttp2 closes it */
  H2R_F_REJECT = 1 << 12,   /* answered with a complete response, then reset */
  H2R_F_MANUAL = 1 << 13,   /* window returned by h2r_strm_consume, not by reading */
};

typedef struct h2r_chunk {
  struct h2r_chunk *next;
  size_t len, off;
  uint8_t data[];
} h2r_chunk_t;

/* Notifications to whoever drives the stream before the application has it
 * (the dialer or listener). */
typedef struct h2r_strm_hooks {
  void (*on_headers)(h2r_strm_t *st);       /* client: the response head arrived */
  void (*on_gone)(h2r_strm_t *st, int err); /* closed before it was handed over */
} h2r_strm_hooks;

struct h2rev_strm {
  h2r_session_t *sess;
  h2rev_stream_t *pub;
  h2r_strm_t *next, *prev; /* session's list */
  h2r_strm_t *pnext;       /* pending list */
  int32_t id;
  unsigned flags;
  int err;           /* abort reason to report */
  uint32_t rst_code; /* RST_STREAM error code received or sent (nghttp2's close code) */
  int status;        /* client: :status of the response */
  h2rev_alloc_cb alloc_cb;
  h2rev_read_cb read_cb;
  h2rev_close_cb close_cb;
  /* incoming */
  h2r_chunk_t *rq_head, *rq_tail;
  size_t rq_bytes;
  /* outgoing: a FIFO of write requests, the cursor of the next byte to send */
  h2rev_write_t *wq_head, *wq_tail;
  h2rev_write_t *wcur;
  unsigned wcur_buf;
  size_t wcur_off;
  uint64_t queued, sent, acked; /* stream byte offsets */
  unsigned inflight;            /* transport writes holding our bytes */
  uint32_t wu_owed;             /* DATA bytes sent that no WINDOW_UPDATE returned yet */
  h2rev_shutdown_t *shut_req;
  /* header block */
  char *hbuf;
  size_t hlen, hcap;
  h2r_hdr_t *hdrs;
  unsigned nhdrs, hdrcap;
  /* owner before hand-over */
  const h2r_strm_hooks *hooks;
  void *owner;
  void (*on_used)(h2r_strm_t *st); /* once, at the first DATA received */
  void *used_arg;
  h2r_strm_t *lnext, *lprev; /* an owner's list (spares, accept queue) */
  uint64_t idle_since;       /* reused data stream: idle in the spares since */
  char *rbody;               /* body of a rejection */
  size_t rbody_len, rbody_off;
};

h2r_strm_t *h2r_strm_new(h2r_session_t *s, int32_t id);
/* Client: a request with the given headers and an open body. */
h2r_strm_t *h2r_session_request(h2r_session_t *s, const nghttp2_nv *nva, size_t n,
                                const h2r_strm_hooks *hooks, void *owner);
/* Server: answer with status and extra headers, body left open. */
int h2r_strm_respond(h2r_strm_t *st, int status, const nghttp2_nv *nva, size_t n);
/* Server: answer with a complete response (status, text body) and forget. */
void h2r_strm_reject(h2r_strm_t *st, int status, const char *body);
/* Answers a complete text response; the stream (attached or not) is reset
 * after it, and closing it does not cut the response short. */
int h2r_strm_respond_text(h2r_strm_t *st, int status, const char *body);
/* The same two with extra headers (at most H2R_TEXT_EXTRA_MAX; copied). */
#define H2R_TEXT_EXTRA_MAX 4
int h2r_strm_respond_text_nv(h2r_strm_t *st, int status, const char *body, const nghttp2_nv *extra,
                             size_t nextra);
void h2r_strm_reject_nv(h2r_strm_t *st, int status, const char *body, const nghttp2_nv *extra,
                        size_t nextra);
/* ---------------------------------------------- proxy.c, http1.c */

/* A header as a pair of counted strings (not NUL-terminated). */
typedef struct h2r_kv {
  const char *name, *value;
  size_t nl, vl;
} h2r_kv_t;

/* A head gathered from llhttp's callbacks (hbuf.c). */
#define H2R_MAX_HEAD 65536 /* request line or status line + headers */
/* Header fields of a client's request (431 beyond) and of a response. */
#define H2R_MAX_HEADERS 128
/* The dialer replaces the client's Host and X-Forwarded-* and adds framing:
 * a request head toward the listener has at most this many fields more than
 * the client sent (Host, X-Forwarded-For, -Proto, -Host, -Prefix,
 * Transfer-Encoding or Connection; two spare). */
#define H2R_PROXY_ADDED_HEADERS 8
/* What the listener accepts from a dialer: whatever the dialer let in. */
#define H2R_HBUF_HEADERS (H2R_MAX_HEADERS + H2R_PROXY_ADDED_HEADERS)
/* Bytes of the head likewise: a client's head of H2R_MAX_HEAD at most, and
 * the dialer's fields, the largest a copy of the client's authority
 * (X-Forwarded-Host). */
#define H2R_PROXY_HEAD_BYTES (2 * H2R_MAX_HEAD + 4096)

typedef struct h2r_hbuf {
  char *buf;
  size_t len, cap;
  size_t nuls;                       /* of len: the NULs ending names and values */
  uint32_t url_len;                  /* the URL comes first in buf */
  uint32_t off[H2R_HBUF_HEADERS][4]; /* name offset, length, value offset, length */
  unsigned n;
  bool in_value;
  bool value_done; /* the last header's value is complete: a value now has no name */
  bool too_large;  /* a limit was hit: the caller answers 431 */
  /* Whitespace between a name and its colon (which llhttp lets through for
   * names it has no special state for) is dropped: a proxy removes it from
   * a response (RFC 9112 5.1). Off, it stays in the name, and a reader of
   * requests refuses the name (it is no token). */
  bool trim_names;
  size_t max;     /* bytes of URL and headers; 0: H2R_MAX_HEAD */
  unsigned max_n; /* header fields, up to H2R_HBUF_HEADERS; 0: H2R_MAX_HEADERS */
} h2r_hbuf_t;

void h2r_hbuf_reset(h2r_hbuf_t *h);
void h2r_hbuf_free(h2r_hbuf_t *h);
/* llhttp's on_url, on_header_field, on_header_value: 0, or -1 to stop. */
int h2r_hbuf_url(h2r_hbuf_t *h, const char *at, size_t len);
int h2r_hbuf_field(h2r_hbuf_t *h, const char *at, size_t len);
int h2r_hbuf_value(h2r_hbuf_t *h, const char *at, size_t len);
int h2r_hbuf_value_done(h2r_hbuf_t *h); /* llhttp's on_header_value_complete */
h2r_kv_t h2r_hbuf_kv(const h2r_hbuf_t *h, unsigned i);
/* A header's value by name (case-insensitive), or NULL. */
const char *h2r_hbuf_get(const h2r_hbuf_t *h, const char *name, size_t *len);
/* The same, the last of the fields with that name. */
const char *h2r_hbuf_get_last(const h2r_hbuf_t *h, const char *name, size_t *len);
/* A hop-by-hop field (RFC 9110 7.6.1, and the framing an HTTP/2 hop may
 * not carry): Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding,
 * Upgrade, TE, Trailer, HTTP2-Settings, Proxy-Authenticate,
 * Proxy-Authorization. One list for every hop the library makes. */
bool h2r_hop_by_hop(const char *name, size_t len);
/* A comma-separated field value (Connection, Upgrade) lists tok (any case). */
bool h2r_list_has(const char *v, const char *tok);
bool h2r_list_has_n(const char *v, size_t n, const char *tok, size_t tl);
/* A field name is a token (RFC 9110 5.1): no space, separator or control. */
bool h2r_is_token(const char *s, size_t n);
/* The field is Expect: 100-continue (answered by http1.c, not passed on by the proxy). */
bool h2r_kv_expects_continue(const h2r_kv_t *kv);
/* A request target's path (up to '?') has a "." or ".." segment, also with
 * its dots percent-encoded (%2e), segments cut by "\", %2f or %5c, or a
 * path parameter after the dots ("..;x"): a path that could climb out of
 * the prefix it is served under, for some server behind. */
bool h2r_path_has_dot_segment(const char *path, size_t n);
/* Appends a buffer to an iovec array (grown as needed), merged with the
 * last one when the memory is contiguous. */
int h2r_iov_push(uv_buf_t **iov, unsigned *n, unsigned *cap, const void *base, size_t len);

/* An HTTP/1.1 head being written into a buffer its writer sized. Appends
 * are plain copies (snprintf per header was a sixth of the proxy's time)
 * and never pass cap: what does not fit sets `over`, which the writer
 * checks before it sends anything (an error, never a head cut short). */
typedef struct h2r_out {
  char *p;
  size_t len, cap;
  bool over;
} h2r_out_t;

static inline void h2r_out_put(h2r_out_t *o, const char *s, size_t n) {
  if (n > o->cap - o->len) {
    n = o->cap - o->len;
    o->over = true;
  }
  memcpy(o->p + o->len, s, n);
  o->len += n;
}
#define H2R_OUT_LIT(o, lit) h2r_out_put((o), (lit), sizeof(lit) - 1)
static inline void h2r_out_header(h2r_out_t *o, const char *name, size_t nl, const char *value,
                                  size_t vl) {
  h2r_out_put(o, name, nl);
  H2R_OUT_LIT(o, ": ");
  h2r_out_put(o, value, vl);
  H2R_OUT_LIT(o, "\r\n");
}
/* v in decimal (base 10) or hexadecimal (16, lower case). */
void h2r_out_uint(h2r_out_t *o, uint64_t v, unsigned base);

/* A bounded cache of buffers of one size. A large transfer allocates and
 * frees a buffer per chunk; through malloc that makes the heap grow and
 * shrink as the chunks in flight come and go, and every regrowth faults
 * fresh zeroed pages in (a tenth of the dialer's time in an upload). */
typedef struct h2r_bufcache {
  void *head; /* the free buffers, linked through their first bytes */
  unsigned n, max;
  size_t size;
} h2r_bufcache_t;

static inline void h2r_bufcache_init(h2r_bufcache_t *c, size_t size, unsigned max) {
  c->head = NULL;
  c->n = 0;
  c->max = max;
  c->size = size < sizeof(void *) ? sizeof(void *) : size;
}
/* A buffer of c->size bytes, NULL when memory is out. */
void *h2r_bufcache_get(h2r_bufcache_t *c);
/* Takes back a buffer from h2r_bufcache_get (or NULL); frees it when full. */
void h2r_bufcache_put(h2r_bufcache_t *c, void *b);
void h2r_bufcache_drain(h2r_bufcache_t *c);

typedef struct h2r_h1c h2r_h1c_t;

/* The request head the dialer's proxy writes to the listener for req, whose
 * path is <prefix>/<rest> (rest: "/..." or "?..."; "" is "/"), id the
 * listener's (malloc'd, *len bytes), or NULL with the status it answers
 * instead. The proxy's own, and the fuzz targets' (test/fuzz), which check
 * the head without running a proxy. */
char *h2r_proxy_head(const h2rev_http_req_t *req, const char *prefix, size_t prefixlen,
                     const char *id, const char *rest, size_t *len, int *status);
/* The head the listener writes to the upstream (path and authority: the
 * upstream URL's) for the request bytes in p, as h2rev_upstream_serve
 * rewrites it (malloc'd, *len bytes); NULL when p holds no complete, valid
 * head. For the fuzz targets too. */
char *h2r_upstream_head(const char *p, size_t n, const char *path, const char *authority,
                        bool keep_host, size_t *len);

/* The proxy's exchange (proxy.c) over a byte stream to the next hop: a
 * reverse connection from h2rev_dial (the dialer's proxy) or a pooled
 * connection to an upstream URL (h2rev_upstream_handler). One exchange
 * code, whatever carries the bytes; the hop is what differs. */
typedef struct h2r_hop h2r_hop_t;
typedef struct h2r_hop_write h2r_hop_write_t;
typedef void (*h2r_hop_write_cb)(h2r_hop_write_t *w, int status);
struct h2r_hop_write {
  union {
    h2rev_write_t s;
    h2r_xwrite_t x;
  } u;
  h2r_hop_write_cb cb;
  size_t len; /* of the buffers, for the hop's queue size */
};

/* Every operation but close is called only between h2r_px_opened(0) and
 * the end of the hop (close, recycle). */
typedef struct h2r_hop_ops {
  /* Starts opening: h2r_px_opened follows (it may run inside this call).
   * Nonzero: nothing follows, the hop is over. */
  int (*open)(h2r_hop_t *hop);
  /* Writes bufs; w->cb runs once they are written or failed, never inside
   * this call. */
  int (*write)(h2r_hop_t *hop, h2r_hop_write_t *w, const uv_buf_t *bufs, unsigned n);
  size_t (*queued)(const h2r_hop_t *hop); /* bytes written and not yet out */
  /* Bytes arrive through h2r_px_alloc and h2r_px_read. */
  void (*read_start)(h2r_hop_t *hop);
  void (*read_stop)(h2r_hop_t *hop);
  /* Ends our direction; h2r_px_shut follows. NULL: the hop cannot
   * half-close (it closes instead once the exchange is over). */
  int (*shutdown)(h2r_hop_t *hop);
  /* Keep-alive: the exchange is over and both messages were complete;
   * true when the hop took the connection back (for another exchange):
   * it is then over, no h2r_px_gone follows. */
  bool (*recycle)(h2r_hop_t *hop);
  /* Closes (or cancels the opening); h2r_px_gone follows, never inside
   * this call. */
  void (*close)(h2r_hop_t *hop);
} h2r_hop_ops;

struct h2r_hop {
  const h2r_hop_ops *ops;
  void *px; /* the exchange, for the callbacks below */
};

/* What a proxied request was, for an owner that accounts for it. */
typedef struct h2r_px_owner {
  uv_loop_t *loop;
  const h2rev_logger_t *log;
  h2r_ratelog_t *rl;
  unsigned body_timeout_ms, response_timeout_ms;
  bool no_rewrite;
  const char *tag;                 /* what log lines start with: "proxy", "upstream" */
  const char *peer;                /* the next hop in log lines: "listener", "upstream" */
  const char *text_502, *text_504; /* the bodies of those errors, for anyone to read */
  /* NULL: none. Once, when the client's request is over (a->local: the
   * response was one of ours, an error, not the next hop's). */
  void (*account)(void *arg, const h2rev_upstream_access_t *a);
  /* NULL: none. The exchange is freed: nothing of it is left. */
  void (*released)(void *arg);
  void *arg;
} h2r_px_owner_t;

/* Where the request goes: Host `host`, target <base><rest> (rest as in
 * h2r_proxy_head), X-Forwarded-Prefix <prefix> (the part of the client's
 * path the next hop does not see; none when empty), and what Location and
 * Set-Cookie Path values of the response are rewritten from (see
 * h2rev_dialer_options_t.no_rewrite): `host` in absolute URLs, <base>
 * replaced by <prefix>. */
typedef struct h2r_px_target {
  const char *host, *base, *rest, *prefix;
  size_t hostlen, baselen, prefixlen;
  const char *name;     /* for log lines: the listener's id, the upstream's authority */
  char *acc_path;       /* the path for the access record (malloc'd, taken), or NULL */
  h2r_session_t *csess; /* an HTTP/2 client's connection, whose proxied requests count */
} h2r_px_target_t;

/* A new exchange for req toward target t, with hop_size bytes for the
 * caller's hop (an h2r_hop_t first) in the same allocation, or NULL when
 * the request was answered already (an error: 400, 405, 431, 503). The
 * caller fills in its hop, then h2r_px_go opens it; the exchange answers
 * the request either way from then on. */
h2r_hop_t *h2r_px_new(h2rev_http_req_t *req, const h2r_hop_ops *ops, size_t hop_size,
                      const h2r_px_owner_t *owner, const h2r_px_target_t *t);
void h2r_px_go(h2r_hop_t *hop);
/* A complete error response of the exchange's kind (for a request refused
 * before an exchange exists); body_unread: close after it (HTTP/1.1). */
void h2r_px_reply_error(h2rev_http_req_t *req, const h2r_px_owner_t *owner, int status,
                        bool body_unread);
/* The hop's callbacks. opened with status != 0: the hop is over (no
 * h2r_px_gone follows); why is for the log. */
void h2r_px_opened(h2r_hop_t *hop, int status, const char *why);
void h2r_px_alloc(h2r_hop_t *hop, size_t size, uv_buf_t *buf);
/* As a uv_read_cb: n bytes in buf (from h2r_px_alloc), UV_EOF, or an error. */
void h2r_px_read(h2r_hop_t *hop, ssize_t n, const uv_buf_t *buf);
void h2r_px_shut(h2r_hop_t *hop, int status);
void h2r_px_gone(h2r_hop_t *hop);

/* The dialer's options, defaults filled in; the limiter of its proxy's log lines. */
const h2rev_dialer_options_t *h2r_dialer_options(const h2rev_dialer_t *dialer);
h2r_ratelog_t *h2r_dialer_ratelog(h2rev_dialer_t *dialer);

/* HTTP/1.1 server connection (http1.c): on a session's transport (an
 * accepted socket) or on a virtual stream (h2rev_http_server_serve_stream).
 * Its requests go to the server's handlers through server.c. */
extern const h2r_h1_ops h2r_h1c_ops;
typedef struct h2r_server h2r_server_t;
h2r_h1c_t *h2r_h1c_new(h2r_session_t *s, h2r_server_t *srv);
h2r_h1c_t *h2r_h1c_new_stream(h2r_server_t *srv, h2rev_stream_t *stream, h2rev_close_cb done);
/* The session is gone: frees the connection once no request holds it. */
void h2r_h1c_free(h2r_h1c_t *c);
/* Closes the connection after the exchange in progress (or now if idle). */
void h2r_h1c_shutdown(h2r_h1c_t *c);
void h2r_h1c_close(h2r_h1c_t *c);

/* --------------------------------------------------------- server.c */

/* An HTTP/1.1 request head as http1.c parsed it. */
typedef struct h2r_h1head {
  const char *method, *scheme, *peer; /* NUL-terminated */
  const char *url, *authority;        /* counted */
  size_t urllen, alen;
  const h2r_kv_t *hdrs;
  size_t nhdrs;
  bool upgrade;
} h2r_h1head_t;

/* The life of a server's connections, for the one internal user that keeps
 * state per connection (the dialer: a connection holds its listeners). */
typedef struct h2r_watch_ops {
  /* A connection died (its streams report errors) / is released. */
  void (*conn_dead)(void *arg, h2r_session_t *s, int err);
  void (*conn_closed)(void *arg, h2r_session_t *s);
  /* The server is closed: forget it. */
  void (*server_closed)(void *arg);
  /* Optional: a stream of a connection is freed (what a drain waits for). */
  void (*stream_freed)(void *arg, h2r_session_t *s);
} h2r_watch_ops;

/* A connection accepted by a server. */
typedef struct h2r_hconn {
  h2r_session_t s;
  h2r_server_t *srv;
  struct h2r_hconn *next, *prev;
} h2r_hconn_t;

typedef struct h2r_route {
  struct h2r_route *next;
  h2rev_http_handler_cb handler;
  void *arg;
  size_t len;
  char prefix[];
} h2r_route_t;

typedef struct h2r_lsock {
  uv_tcp_t tcp;
  h2r_server_t *srv;
  SSL_CTX *ctx;
  struct h2r_lsock *next;
  struct h2r_lsock *pnext; /* srv->paused */
  bool paused;
} h2r_lsock_t;

struct h2r_server {
  h2rev_http_server_t *pub;
  uv_loop_t *loop;
  h2rev_http_server_options_t o;
  h2r_route_t *routes;
  h2r_lsock_t *socks;
  h2r_hconn_t *conns;
  unsigned live;                         /* connections, virtual-stream connections, requests */
  unsigned nconns;                       /* accepted connections open */
  size_t hdr_total;                      /* header blocks held by every connection's streams */
  h2r_ratelog_t rl;                      /* for the lines clients cause */
  struct h2r_lsock *paused;              /* listening sockets not accepted from: at max_connections,
                                            or waiting for refuse */
  uv_tcp_t refuse;                       /* closes a connection that cannot be served */
  bool refusing;                         /* refuse is closing */
  uint8_t *rbuf;                         /* read buffer shared by the connections */
  h2r_h1c_t *vconns;                     /* HTTP/1.1 on virtual streams */
  const h2r_watch_ops *watch_ops;        /* the one internal user watching connections */
  const struct h2r_h1_events *h1_events; /* its HTTP/1.1 connections report there */
  void *watch_arg;
  h2r_defer_t work; /* runs requests' deferred work once per loop turn */
  struct h2r_hreq *pend, **pend_tail;
  bool closing, draining, finishing;
  unsigned pending; /* handles being closed */
  uv_timer_t drain_timer;
  bool drain_timer_open;
  struct h2r_hreq *reqs; /* live requests, for send_timeout_ms */
  uv_timer_t send_timer; /* looks at them while there are any */
  unsigned send_tick_ms;
  uint64_t drain_deadline;
  h2rev_http_server_close_cb close_cb;
  bool unref;             /* h2rev_http_server_unref */
  h2r_route_t *notfound;  /* answers 404 as a handler, so that it is counted and logged */
  h2r_route_t *connect;   /* CONNECT in authority form (h2rev_http_server_route_connect) */
  h2r_route_t *noconnect; /* answers those 405 when there is no such route */
  h2rev_http_server_stats_t st;
};

/* A route (h2rev_http_server_route); unroute removes every route of arg. */
int h2r_server_route(h2r_server_t *srv, const char *prefix, h2rev_http_handler_cb handler,
                     void *arg);
void h2r_server_unroute(h2r_server_t *srv, void *arg);
/* Connection events to ops (NULL: none). UV_EBUSY: another arg watches. */
int h2r_server_watch(h2r_server_t *srv, const h2r_watch_ops *ops, void *arg);
/* The route for a path (longest prefix on a segment boundary), or the
 * server's 404 route. */
const h2r_route_t *h2r_server_route_find(const h2r_server_t *srv, const char *path, size_t len);
/* CONNECT host:port (no path): its route, or one that answers 405. */
const h2r_route_t *h2r_server_connect_route(const h2r_server_t *srv);
int h2r_server_route_connect(h2r_server_t *srv, h2rev_http_handler_cb handler, void *arg);
/* Closes the listening sockets; the connections go on. */
void h2r_server_stop_listening(h2r_server_t *srv);
/* Counts a live object in the server's close; released with h2r_server_unref. */
void h2r_server_ref(h2r_server_t *srv);
void h2r_server_unref(h2r_server_t *srv);

/* A request given to a public handler (HTTP/1.1 or HTTP/2). */
typedef struct h2r_hreq h2r_hreq_t;
/* HTTP/2, inside its handler, before any other call on req: the request's
 * stream itself, unhooked (the request is released, no done callback), for
 * the dialer's /revdial, where the stream becomes a reverse connection.
 * NULL for HTTP/1.1. */
h2r_strm_t *h2r_hreq_take_stream(h2rev_http_req_t *req);
/* HTTP/2: the request's connection (the dialer's proxy counts its requests
 * per connection there); NULL for HTTP/1.1. */
h2r_session_t *h2r_hreq_session(const h2rev_http_req_t *req);
/* What an HTTP/1.1 connection (http1.c: parsing, framing, the socket)
 * reports to the request layer above it (server.c: routes, request
 * objects, handlers), which gives it these with the server (srv->h1_events):
 * the layer below calls up only through them. */
typedef struct h2r_h1_events {
  /* The route for a path (h2r_server_route_find). */
  const h2r_route_t *(*route)(const h2r_server_t *srv, const char *path, size_t len);
  /* The route of CONNECT host:port (h2r_server_connect_route). */
  const h2r_route_t *(*connect_route)(const h2r_server_t *srv);
  /* A handler request for the head just parsed (NULL on failure), then
   * its handler's run, once the connection holds it. */
  h2r_hreq_t *(*request)(h2r_server_t *srv, h2r_h1c_t *c, const h2r_route_t *route,
                         const h2r_h1head_t *hd, int http_minor, int64_t content_length);
  void (*run)(h2r_hreq_t *rq);
  /* Body bytes (true: pause the input), and the end of the body. */
  bool (*body)(h2r_hreq_t *rq, const char *p, size_t n);
  void (*end)(h2r_hreq_t *rq);
  /* Body bytes kept for the handler's next run (after a 101: what the
   * client sent behind its head), never delivered inside the caller. */
  void (*stash)(h2r_hreq_t *rq, const char *p, size_t n);
  /* The connection's death, and a write's completion. */
  void (*gone)(h2r_hreq_t *rq, int err);
  void (*written)(h2r_hreq_t *rq, h2rev_http_write_t *w, int status);
  /* A connection counts in the server's close (h2r_server_ref/_unref). */
  void (*ref)(h2r_server_t *srv);
  void (*unref)(h2r_server_t *srv);
} h2r_h1_events;
/* server.c -> http1.c: the handler's response on an HTTP/1.1 connection. */
/* Each returns the writes it queued for rq (their completions come through
 * the server's h1_events->written), or a negative error. */
int h2r_h1c_respond(h2r_h1c_t *c, h2r_hreq_t *rq, int status, const h2rev_header_t *h, size_t n,
                    int64_t cl, bool *no_body);
int h2r_h1c_write(h2r_h1c_t *c, h2r_hreq_t *rq, h2rev_http_write_t *w, const uv_buf_t *bufs,
                  unsigned n, bool discard);
int h2r_h1c_finish(h2r_h1c_t *c, h2r_hreq_t *rq, bool complete); /* end or abort */
h2r_h1c_t *h2r_h1c_next(h2r_h1c_t *c);      /* the server's next virtual-stream connection */
void h2r_h1c_read_resume(h2r_h1c_t *c);     /* the handler reads again */
size_t h2r_h1c_queued(const h2r_h1c_t *c);  /* response bytes not yet on the socket */
void h2r_h1c_cork(h2r_h1c_t *c, bool cork); /* h2rev_http_cork / _uncork */
void h2r_h1c_release(h2r_h1c_t *c);         /* the handler's request is done with it */
/* uv_ref / uv_unref on its timer (the server's h2rev_http_server_unref). */
void h2r_h1c_set_unref(h2r_h1c_t *c, bool unref);

/* Flow control by the reader's own measure: bytes read return their window
 * only when the reader calls h2r_strm_consume (once it has passed them on),
 * so that the peer, not a buffer here, waits for a slow destination. */
void h2r_strm_manual_consume(h2rev_stream_t *pub);
void h2r_strm_consume(h2rev_stream_t *pub, size_t n);
/* Gives the stream to the application's handle. */
void h2r_strm_attach(h2r_strm_t *st, h2rev_stream_t *pub);
/* Takes an idle, open stream back from its handle (which is then closed
 * without a callback), or NULL when it is not idle. */
h2r_strm_t *h2r_strm_detach(h2rev_stream_t *pub);
/* Takes the stream from its handle whatever its state (buffered input,
 * END_STREAM received), or NULL when the handle is closing. */
h2r_strm_t *h2r_strm_unhook(h2rev_stream_t *pub);
/* Drops a stream no application holds: reset it if open, free it when done. */
void h2r_strm_abandon(h2r_strm_t *st);
/* A header's value by lower-case name, or NULL. */
const char *h2r_strm_header(const h2r_strm_t *st, const char *name, size_t *len);
/* Frees the stream's header block, which no longer counts against the
 * connection's and the server's header memory: for a stream that lives on
 * long after its head was used (a listener's data stream). */
void h2r_strm_drop_headers(h2r_strm_t *st);
void h2r_strm_schedule(h2r_strm_t *st);
/* Runs the deferred events of the stream: reads, completions, close. */
void h2r_strm_pump(h2r_strm_t *st);
void h2r_strm_free(h2r_strm_t *st);

/* Session glue for stream.c and session.c */
void h2r_strm_on_data(h2r_strm_t *st, const uint8_t *p, size_t n);
void h2r_strm_on_close(h2r_strm_t *st, uint32_t error_code);
void h2r_strm_on_dead(h2r_strm_t *st, int err);
int h2r_strm_add_header(h2r_strm_t *st, const uint8_t *name, size_t nl, const uint8_t *value,
                        size_t vl);
ssize_t h2r_strm_data_len(h2r_strm_t *st, size_t max, uint32_t *flags);
/* Appends `len` bytes from the write cursor to iov (advancing it). */
int h2r_strm_take(h2r_strm_t *st, size_t len, uv_buf_t **iov, unsigned *niov, unsigned *cap);
void h2r_strm_acked(h2r_strm_t *st, size_t n, int status);

#endif
