/*
 * h2rev — reverse connections over HTTP/2, on libuv.
 *
 * A listener behind a NAT connects out to a public dialer over one HTTP/2
 * connection; the dialer then opens connections back to it as HTTP/2 streams.
 * Wire-compatible with the Go package github.com/aojea/h2rev2.
 *
 * Conventions (those of libuv):
 *  - every handle and request is allocated by the caller and carries a `data`
 *    pointer for the caller's use; the library never frees it;
 *  - everything runs on a caller-supplied uv_loop_t, without threads;
 *  - a callback never runs inside the call that asked for it;
 *  - a handle is left with *_close(handle, close_cb); no callback runs after
 *    close_cb, and pending requests are cancelled with UV_ECANCELED first;
 *  - errors are negative integers: libuv's UV_E* codes, or H2REV_E* below.
 *  - like any libuv program, the host process ignores SIGPIPE (the library
 *    installs no signal handler): a peer closing during a write is then
 *    UV_EPIPE, not the end of the process.
 *    h2rev_strerror() and h2rev_err_name() describe either kind.
 */
#ifndef H2REV_H
#define H2REV_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(H2REV_BUILDING)
#define H2REV_EXTERN __attribute__((visibility("default")))
#else
#define H2REV_EXTERN
#endif

#define H2REV_VERSION_MAJOR  0
#define H2REV_VERSION_MINOR  1
#define H2REV_VERSION_PATCH  0
#define H2REV_VERSION_STRING "0.1.0"

/* Returns H2REV_VERSION_STRING of the library actually linked. */
H2REV_EXTERN const char *h2rev_version(void);

/* ---------------------------------------------------------------- errors */

/* Library errors live below libuv's range (libuv uses -1 .. -4095). */
#define H2REV_ERRNO_MAP(XX)                                                                        \
  XX(TLS, -30001, "TLS failure")                                                                   \
  XX(CERT, -30002, "peer certificate verification failed")                                         \
  XX(ALPN, -30003, "peer did not negotiate HTTP/2 (ALPN h2)")                                      \
  XX(PROTO, -30004, "HTTP/2 protocol error")                                                       \
  XX(PINGTIMEOUT, -30005, "peer stopped answering PING")                                           \
  XX(RESET, -30006, "stream reset by peer")                                                        \
  XX(GOAWAY, -30007, "connection closed by peer (GOAWAY)")                                         \
  XX(NOLISTENER, -30008, "no listener attached with this id")                                      \
  XX(PICKUP, -30009, "listener could not open a data stream")                                      \
  XX(IDTAKEN, -30010, "id is already attached by another connection")                              \
  XX(FORBIDDEN, -30011, "authorization denied")                                                    \
  XX(BADID, -30012, "invalid id")                                                                  \
  XX(CONTROL, -30013, "malformed control message")                                                 \
  XX(STATUS, -30014, "unexpected HTTP status")                                                     \
  XX(URL, -30015, "invalid URL")                                                                   \
  XX(TOOMANY, -30016, "limit reached")                                                             \
  XX(CLOSED, -30017, "connection closed")

enum {
#define H2REV_ERR_ENUM(name, val, text) H2REV_E##name = (val),
  H2REV_ERRNO_MAP(H2REV_ERR_ENUM)
#undef H2REV_ERR_ENUM
};

/* Readable text for an h2rev or libuv error code; never NULL. */
H2REV_EXTERN const char *h2rev_strerror(int err);
/* Symbolic name ("H2REV_ECERT", "ECONNREFUSED") of an error code; never NULL. */
H2REV_EXTERN const char *h2rev_err_name(int err);

/* --------------------------------------------------------------- logging */

enum h2rev_log_level {
  H2REV_LOG_ERROR = 0,
  H2REV_LOG_WARN = 1,
  H2REV_LOG_INFO = 2,
  H2REV_LOG_DEBUG = 3,
};

/* Receives one formatted line (no trailing newline). `msg` lives only for the
 * duration of the call. */
typedef void (*h2rev_log_cb)(void *arg, int level, const char *msg);

/* Where a handle sends its log lines. A NULL cb means no logging. */
typedef struct h2rev_logger_s {
  h2rev_log_cb cb;
  void *arg;
  int level; /* lines above this level are dropped */
} h2rev_logger_t;

/* ------------------------------------------------------------------- TLS */

enum { H2REV_VERIFY_CLIENT_REQUIRE = 1, H2REV_VERIFY_CLIENT_REQUEST = 2 };

/* TLS settings. Strings are copied or only read during the call that takes
 * the options; the caller keeps ownership. */
typedef struct h2rev_tls_options_s {
  const char *ca_file;     /* trust anchors; NULL: the system store (client) */
  const char *cert_file;   /* our certificate chain (PEM); server: required */
  const char *key_file;    /* its private key (PEM) */
  const char *server_name; /* client: SNI and name to verify; NULL: the URL's host */
  int insecure;            /* client: skip peer verification (tests only) */
  /* Server: client certificates, verified against ca_file.
   * H2REV_VERIFY_CLIENT_REQUIRE (1): the handshake fails without one.
   * H2REV_VERIFY_CLIENT_REQUEST (2): one is asked for, and one that does not
   * verify fails the handshake, but a client may present none: the dialer
   * then refuses that connection's /revdial (403) while <base>/proxy/ and
   * /healthz serve it (mTLS for listeners beside public clients on one port). */
  int verify_client;
  /* The same material as PEM text in memory (NUL-terminated), for programs
   * that keep no files (secrets from a vault, an embedded test CA); each, when
   * set, is used instead of its file. Read during the call that takes these
   * options only. */
  const char *ca_pem;
  const char *cert_pem;
  const char *key_pem;
} h2rev_tls_options_t;

/* -------------------------------------------------------- virtual stream */

typedef struct h2rev_stream_s h2rev_stream_t;
typedef struct h2rev_write_s h2rev_write_t;
typedef struct h2rev_shutdown_s h2rev_shutdown_t;

typedef void (*h2rev_alloc_cb)(h2rev_stream_t *stream, size_t suggested_size, uv_buf_t *buf);
/* nread > 0: bytes in buf; 0: nothing (buffer returned); UV_EOF: the peer
 * ended its direction (END_STREAM); other negative: the stream was aborted
 * (H2REV_ERESET) or the connection failed. */
typedef void (*h2rev_read_cb)(h2rev_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
typedef void (*h2rev_write_cb)(h2rev_write_t *req, int status);
typedef void (*h2rev_shutdown_cb)(h2rev_shutdown_t *req, int status);
typedef void (*h2rev_close_cb)(h2rev_stream_t *stream);

struct h2rev_strm; /* private */

/* One HTTP/2 stream's bodies as a duplex byte stream (uv_stream_t semantics).
 * Initialised by the call that produces it (h2rev_listener_accept,
 * h2rev_dial's callback, ...). */
struct h2rev_stream_s {
  void *data;      /* for the caller */
  uv_loop_t *loop; /* read-only */
  /* private */
  struct h2rev_strm *s_;
};

struct h2rev_write_s {
  void *data;             /* for the caller */
  h2rev_stream_t *handle; /* read-only */
  /* private */
  h2rev_write_t *next_;
  h2rev_write_cb cb_;
  uint64_t end_; /* stream offset at which this write is complete */
  uv_buf_t *bufs_;
  unsigned int nbufs_;
  uv_buf_t bufsml_[4];
};

struct h2rev_shutdown_s {
  void *data;
  h2rev_stream_t *handle;
  /* private */
  h2rev_shutdown_cb cb_;
};

/* Starts delivering the peer's bytes. Data buffered while stopped arrives on a
 * later loop turn. Flow-control window returns to the peer only as read_cb
 * takes bytes, so a stopped reader pauses the sender.
 * Errors: UV_EINVAL (NULL callback), UV_EALREADY (reading), UV_EBADF (closing). */
H2REV_EXTERN int h2rev_stream_read_start(h2rev_stream_t *stream, h2rev_alloc_cb alloc_cb,
                                         h2rev_read_cb read_cb);
/* Stops reading; never fails on an open stream. Errors: UV_EBADF (closing). */
H2REV_EXTERN int h2rev_stream_read_stop(h2rev_stream_t *stream);

/* Queues bufs as DATA, sent from the caller's memory without a copy: the
 * bytes must stay valid until cb runs (the bufs array itself is copied).
 * Callbacks run in order, after the bytes have reached the socket; any
 * callback may write again (the next piece from the previous write's
 * callback is the usual pattern), and req may be reused once its cb runs.
 * An empty write completes in order like the others and sends nothing.
 * Errors: UV_EPIPE (after shutdown), UV_EBADF (closing), UV_ENOMEM;
 * cb's status: 0, UV_ECANCELED (closed first), H2REV_ERESET, or the
 * connection's error. */
H2REV_EXTERN int h2rev_stream_write(h2rev_write_t *req, h2rev_stream_t *stream,
                                    const uv_buf_t bufs[], unsigned int nbufs, h2rev_write_cb cb);
/* Sends END_STREAM after the queued writes (a half-close). cb (may be NULL)
 * runs once it is sent. Writes after it fail with UV_EPIPE.
 * Errors: UV_EALREADY (shut down already: libuv says UV_ENOTCONN),
 * UV_EBADF (closing). */
H2REV_EXTERN int h2rev_stream_shutdown(h2rev_shutdown_t *req, h2rev_stream_t *stream,
                                       h2rev_shutdown_cb cb);
/* Closes the stream, resetting it (RST_STREAM CANCEL) if still open in either
 * direction; may be called from any of the stream's callbacks (no read_cb
 * after it). Writes whose bytes had reached the socket complete with 0, the
 * others and a pending shutdown with UV_ECANCELED, in order, then close_cb
 * (may be NULL) runs, once, on a later loop turn; nothing of the stream
 * runs after it and the struct may be freed then. A second close is
 * ignored. To end a stream gracefully, shut it down and close it from the
 * shutdown callback (or once the peer's UV_EOF has come too). */
H2REV_EXTERN void h2rev_stream_close(h2rev_stream_t *stream, h2rev_close_cb close_cb);
/* Nonzero once h2rev_stream_close has been called, and for a handle that
 * holds no stream (never opened, or its close callback has run). */
H2REV_EXTERN int h2rev_stream_is_closing(const h2rev_stream_t *stream);
/* Bytes received but not yet handed to read_cb (bounded by the stream window). */
H2REV_EXTERN size_t h2rev_stream_buffered(const h2rev_stream_t *stream);
/* Bytes written but not yet on the socket. */
H2REV_EXTERN size_t h2rev_stream_write_queue_size(const h2rev_stream_t *stream);

/* A real libuv stream for code written against libuv's own types (an HTTP
 * or WebSocket library on uv_stream_t, a runtime that wraps a file
 * descriptor): splices the virtual stream to one end of a socketpair
 * (AF_UNIX, SOCK_STREAM) and initialises `out` (uv_pipe_init with ipc 0,
 * then uv_pipe_open) on `loop` with the other end. Bytes pass both ways
 * unchanged, with:
 *  - back-pressure both ways: the stream's bytes return their HTTP/2 window
 *    only once they are in the socketpair, so a reader of `out` that stops
 *    (uv_read_stop) pauses the HTTP/2 sender; what is written to `out` is
 *    read only while at most a bounded amount (256 KiB) waits for the
 *    stream's window, so a peer that stops reading pauses the writer of
 *    `out` once the socketpair's buffer is full;
 *  - half-close both ways: the peer's END_STREAM becomes the end of the
 *    pipe (uv_read_cb gets UV_EOF on `out` after the last byte);
 *    uv_shutdown on `out` becomes h2rev_stream_shutdown;
 *  - close either side and the other follows: once both directions have
 *    ended, or on a reset of the stream, an error of its connection or a
 *    write to `out` after `out` was closed (UV_EPIPE), the bridge closes the
 *    stream (resetting it unless both directions had ended) and its end of
 *    the socketpair: `out` then reads UV_EOF (or an error) and its writes
 *    fail. uv_close on `out` shuts the stream down as uv_shutdown does
 *    (the kernel tells a close from a shutdown only when bytes were left
 *    unread in `out`: the stream is reset then); the bridge ends once the
 *    peer ends its side too, or sends more (the stream is reset then).
 * The bridge takes over the stream (its `data` field is used; do not call
 * the stream's functions any more): when it is over the stream is closed,
 * then done(stream) (may be NULL) runs and the stream may be freed then.
 * `out` is the caller's: read, write, shut it down and close it with
 * libuv as any pipe (uv_fileno gives the descriptor). The bridge's own end
 * does not keep the loop alive (as for the stream itself, the connection's
 * owner decides; see h2rev_listener_unref).
 * Errors: UV_EINVAL (NULL argument), UV_EBADF (the stream is closing),
 * UV_ENOMEM, errors of uv_socketpair and uv_pipe_open (`out` is then being
 * closed if it was initialised; its memory must last one more loop turn).
 * done does not run after an error. */
H2REV_EXTERN int h2rev_stream_bridge(h2rev_stream_t *stream, uv_loop_t *loop, uv_pipe_t *out,
                                     h2rev_close_cb done);

/* ------------------------------------------------------------ TCP splice */

/* Any TCP service through a reverse connection: a virtual stream spliced to
 * a TCP connection, bytes passed both ways unchanged. On the listener's
 * side, each accepted stream to the service's address (use accept_idle for
 * protocols where the server speaks first, such as SSH); on the dialer's
 * side, each socket accepted on a public port to the stream h2rev_dial
 * gives (the shape of `ssh -R`).
 *
 *  - back-pressure both ways: the stream's bytes return their HTTP/2
 *    window only once they are on the socket, so a TCP peer that stops
 *    reading pauses the HTTP/2 sender; the socket is read only while at
 *    most a bounded amount (256 KiB) waits for the stream's window, so an
 *    HTTP/2 peer that stops reading pauses the TCP sender. A splice holds
 *    at most about 640 KiB of its own, whatever either peer does;
 *  - half-close both ways: the peer's END_STREAM becomes shutdown(SHUT_WR)
 *    on the socket, after the last byte; the socket's FIN becomes
 *    END_STREAM. A TCP client that shuts down its write side still
 *    receives the whole answer;
 *  - aborts both ways: a TCP error (UV_ECONNRESET, a write to a closed
 *    peer) resets the stream (RST_STREAM CANCEL); a reset of the stream or
 *    an error of its connection closes the socket with RST (the TCP peer
 *    reads ECONNRESET, not a clean end);
 *  - the socket gets TCP_NODELAY and keep-alive (keepalive_s).
 * The splice takes over the stream and the TCP handle (the `data` field of
 * each is used; call neither's functions any more). When it is over, both
 * are closed, then done(stream, tcp, status) (may be NULL) runs, once, on a
 * later loop turn; both may be freed then. status: 0 when both directions
 * ended (FIN and END_STREAM each way), else the first error, which says
 * which side failed: a TCP one (UV_ECONNREFUSED, UV_ETIMEDOUT for the
 * connect; UV_ECONNRESET, UV_EPIPE later) or the stream's (H2REV_ERESET,
 * H2REV_ECLOSED, ...). The TCP handle counts for uv_run like any the
 * caller owns (ref'd). */
typedef struct h2rev_splice_options_s {
  unsigned connect_timeout_ms; /* h2rev_stream_splice_tcp only; default 10000 */
  unsigned keepalive_s;        /* TCP keep-alive: idle seconds before probing; default 60 */
} h2rev_splice_options_t;

typedef void (*h2rev_splice_cb)(h2rev_stream_t *stream, uv_tcp_t *tcp, int status);

/* Connects to addr on the stream's loop (uv_tcp_init on `tcp`, which the
 * caller allocates, uninitialised), then splices. The stream is not read
 * before the connection is up: what its peer sends meanwhile waits in the
 * stream's window. A connect that fails or takes longer than
 * connect_timeout_ms resets the stream and is done's status. opts may be
 * NULL (defaults); it is read during the call only.
 * Errors: UV_EINVAL (NULL argument), UV_EBADF (the stream is closing),
 * UV_ENOMEM, those of uv_tcp_init; nothing is taken over and done does not
 * run then. After 0, done always runs. */
H2REV_EXTERN int h2rev_stream_splice_tcp(h2rev_stream_t *stream, uv_tcp_t *tcp,
                                         const struct sockaddr *addr,
                                         const h2rev_splice_options_t *opts, h2rev_splice_cb done);
/* The same for a connected TCP handle (one uv_accept gave, or the caller
 * connected): splices at once. connect_timeout_ms is not used.
 * Errors: UV_EINVAL (NULL argument), UV_EBADF (the stream or `tcp` is
 * closing), UV_ENOMEM; the caller keeps both then, and done does not run.
 * After 0, done always runs. */
H2REV_EXTERN int h2rev_stream_splice_tcp_open(h2rev_stream_t *stream, uv_tcp_t *tcp,
                                              const h2rev_splice_options_t *opts,
                                              h2rev_splice_cb done);

/* ----------------------------------------------------------- HTTP server */

/* A header: the request headers handlers and the dialer's authorization
 * callback see (names in lower case), or a response header to send. */
typedef struct h2rev_header_s {
  const char *name; /* NUL-terminated */
  const char *value;
} h2rev_header_t;

/* A small asynchronous HTTP server: HTTP/1.1 (llhttp) and HTTP/2 (nghttp2)
 * on TCP (HTTP/2 by prior knowledge, else HTTP/1.1) or TLS (ALPN h2 or
 * http/1.1), and HTTP/1.1 on virtual streams (a listener's reverse
 * connections). Requests are routed by path prefix to handlers, which see
 * one request API whatever the protocol:
 *
 *   static void hello(h2rev_http_req_t *req, void *arg) {
 *     h2rev_http_reply(req, 200, "text/plain", "hello\n", 6);
 *   }
 *   h2rev_http_server_init(loop, &srv, NULL);
 *   h2rev_http_server_route(&srv, "/hello", hello, NULL);
 *   h2rev_http_server_listen(&srv, (struct sockaddr *)&addr, NULL);
 *
 * The library's own handlers use nothing more than this API offers: the
 * reverse proxies (h2rev_dialer_proxy to a listener, h2rev_upstream_handler
 * to a URL; one exchange, two kinds of next hop) stream bodies both ways
 * without copies (bar one of the upstream's responses, out of a read buffer
 * its connections share), with flow credit by its own measure (read_manual,
 * consume), back-pressure (write_queue_size), gathered writes (cork) and
 * WebSocket upgrades, as any handler may.
 */
typedef struct h2rev_http_server_s h2rev_http_server_t;
typedef struct h2rev_http_req_s h2rev_http_req_t;
typedef struct h2rev_http_write_s h2rev_http_write_t;
struct h2r_server;

/* A request arrived; arg is the route's. The handler answers now or later
 * and must finish the request with h2rev_http_end or h2rev_http_abort. */
typedef void (*h2rev_http_handler_cb)(h2rev_http_req_t *req, void *arg);
typedef void (*h2rev_http_alloc_cb)(h2rev_http_req_t *req, size_t suggested_size, uv_buf_t *buf);
/* nread > 0: body bytes; 0: nothing (buffer returned); UV_EOF: the body is
 * complete; other negative: the client went away (H2REV_ECLOSED,
 * H2REV_ERESET, ...). */
typedef void (*h2rev_http_read_cb)(h2rev_http_req_t *req, ssize_t nread, const uv_buf_t *buf);
typedef void (*h2rev_http_write_cb)(h2rev_http_write_t *w, int status);
/* The request is over: 0 when the response was sent complete, else why
 * not. The request's memory is released after this callback. */
typedef void (*h2rev_http_done_cb)(h2rev_http_req_t *req, int status);
typedef void (*h2rev_http_server_close_cb)(h2rev_http_server_t *server);

/* One finished request, for an access log: given to the server's
 * access_log callback once per request that reached a handler (a path no
 * route matches too: its 404), HTTP/1.1 or HTTP/2, after the handler's done
 * callback. Not given: heads the server refuses before any handler (400,
 * 408, 431, 503 while closing), and requests whose stream an internal
 * mount takes over (/revdial). Valid during the call only. */
typedef struct h2rev_access_s {
  const h2rev_http_req_t *req; /* method, path (as sent: escape it), peer, route, version */
  int status;                  /* the response status sent; 0: no head went out */
  int result;                  /* the done callback's: 0 complete, else why not */
  uint64_t bytes_in;           /* request body bytes given to the handler */
  uint64_t bytes_out;          /* response body bytes the handler wrote */
  uint64_t duration_us;        /* from the complete request head to the end */
} h2rev_access_t;
typedef void (*h2rev_access_log_cb)(void *arg, const h2rev_access_t *access);

typedef struct h2rev_http_server_options_s {
  unsigned max_header_bytes;  /* HTTP/1.1 request line + headers, HTTP/2 header block;
                                 default and upper bound 65536; over it: 431 */
  unsigned header_timeout_ms; /* a request head must arrive in this time: 408; default 10000 */
  unsigned idle_timeout_ms;   /* HTTP/1.1 keep-alive between requests; default 60000 */
  unsigned max_streams;       /* HTTP/2 concurrent streams per connection; default 100 */
  unsigned ping_interval_ms;  /* HTTP/2 PING after this idle time; default 30000 */
  unsigned ping_timeout_ms;   /* default 15000 */
  /* Limits against clients that hold resources. At max_connections the
   * server stops accepting (the backlog waits in the kernel) until one
   * closes; default 16384 (mind RLIMIT_NOFILE). Header blocks held by the
   * open HTTP/2 streams of one connection, and of all connections: a header
   * block over either bound gets RST_STREAM REFUSED_STREAM (HPACK makes a
   * few bytes on the wire decode into a large block); defaults 2 MiB and
   * 64 MiB. */
  unsigned max_connections;
  size_t max_conn_header_bytes;
  size_t max_total_header_bytes;
  h2rev_logger_t log;
  h2rev_access_log_cb access_log; /* NULL: none; runs on the loop, must not block */
  void *access_log_arg;
  /* Nonzero: the listening sockets are bound with SO_REUSEPORT, so that
   * several processes (or loops) serve one port and the kernel spreads the
   * connections among them. */
  int reuse_port;
  /* A response (or a tunnel's bytes to the client) with bytes waiting that
   * the client takes none of for this long is cut: HTTP/2 RST_STREAM
   * CANCEL, HTTP/1.1 the connection closed; its result is UV_ETIMEDOUT.
   * Without it a client that stops reading (an HTTP/2 window left at 0, a
   * TCP receive buffer never drained) holds what serves it for ever.
   * Checked every quarter of it (at least every 250 ms); default 60000. */
  unsigned send_timeout_ms;
} h2rev_http_server_options_t;

/* Request durations are counted in these buckets: up to 5 ms, 25 ms,
 * 100 ms, 500 ms, 2.5 s, 10 s, and longer (the last). */
#define H2REV_HTTP_DURATION_BUCKETS 7
#define H2REV_HTTP_DURATION_BOUNDS_MS                                                              \
  { 5, 25, 100, 500, 2500, 10000 }

/* Counters, for monitoring (h2rev_http_server_stats). Requests are those
 * the access log sees. */
typedef struct h2rev_http_server_stats_s {
  uint64_t connections;         /* accepted connections open now */
  uint64_t connections_total;   /* accepted since init */
  uint64_t connections_refused; /* accepted and closed at once (out of memory, TLS setup) */
  uint64_t limit_reached;       /* times accepting paused at max_connections */
  /* [0]: HTTP/1.x, [1]: HTTP/2; by status class: [0] no head sent, [1..5] 1xx..5xx */
  uint64_t requests[2][6];
  uint64_t requests_incomplete; /* ended with a nonzero result (client gone, abort) */
  uint64_t duration[H2REV_HTTP_DURATION_BUCKETS]; /* not cumulative */
  uint64_t duration_us_sum;
  uint64_t bytes_in, bytes_out; /* request and response body bytes */
} h2rev_http_server_stats_t;

struct h2rev_http_server_s {
  void *data;
  uv_loop_t *loop; /* read-only */
  /* private */
  struct h2r_server *s_;
};

/* A request, owned by the library: valid from the handler call until its
 * done callback has returned (or, without one, until it is finished). The
 * strings are NUL-terminated and live as long as the request. */
struct h2rev_http_req_s {
  void *data;                    /* for the handler */
  h2rev_http_server_t *server;   /* read-only, all fields below too */
  const char *method;            /* "GET", ... */
  const char *path;              /* path and query as sent: "/a/b?x=1" */
  const char *authority;         /* Host or :authority; "" if none */
  const char *scheme;            /* "http" or "https" */
  const char *peer;              /* "ip:port", or "" on a virtual stream */
  int http_major, http_minor;    /* 1.1, 1.0 or 2.0 */
  int64_t content_length;        /* of the request body; -1: unknown (chunked, HTTP/2 stream) */
  const h2rev_header_t *headers; /* names in lower case, no HTTP/2 pseudo-headers */
  size_t nheaders;
  const char *route; /* the prefix of the route that matched ("" for "/") */
  /* Nonzero for an HTTP/1.1 request asking to switch protocols (Upgrade,
   * e.g. WebSocket; an h2c offer is ignored and the request served as a
   * plain one). Its body, for read_cb, is the client's bytes after the
   * head: they flow once the handler has answered 101, and end (UV_EOF)
   * when the client ends the connection; the handler's writes after the
   * 101 go out as they are, and h2rev_http_end closes the connection once
   * they are written. Any other answer closes the connection after it.
   * An HTTP/1.1 CONNECT has it set too: a 2xx answer (no body framing)
   * makes the same byte stream, and there the client may end its side
   * (UV_EOF) and still read the handler's bytes.
   * HTTP/2: set for a CONNECT (RFC 9113 8.5: `path` is "", `authority` the
   * host:port asked for; see h2rev_http_server_route_connect) and for an
   * extended CONNECT (RFC 8441: `protocol` says which, e.g. "websocket";
   * `path` as usual). A 2xx, or a 101 (sent as 200: HTTP/2 has no 101),
   * makes the stream a byte stream both ways on its DATA frames: the
   * client's END_STREAM is UV_EOF to read_cb, after which the handler may
   * still write; h2rev_http_end sends END_STREAM and ends the exchange. */
  int upgrade;
  /* The protocol an upgrade asks for: an HTTP/2 extended CONNECT's
   * :protocol, an HTTP/1.1 request's Upgrade header ("websocket"); NULL
   * for a plain CONNECT or no upgrade. */
  const char *protocol;
};

struct h2rev_http_write_s {
  void *data;
  h2rev_http_req_t *req; /* read-only */
  /* private */
  h2rev_http_write_cb cb_;
  h2rev_write_t w_;
};

/* Copies opts (may be NULL). Errors: UV_ENOMEM, UV_EINVAL. */
H2REV_EXTERN int h2rev_http_server_init(uv_loop_t *loop, h2rev_http_server_t *server,
                                        const h2rev_http_server_options_t *opts);
/* Listens on addr: TLS with ALPN h2 and http/1.1 when tls != NULL (read
 * during the call only), else cleartext HTTP/1.1 and HTTP/2 with prior
 * knowledge. May be called several times. Errors: those of
 * uv_tcp_bind/uv_listen, H2REV_ETLS, UV_EBADF (closing). */
H2REV_EXTERN int h2rev_http_server_listen(h2rev_http_server_t *server, const struct sockaddr *addr,
                                          const h2rev_tls_options_t *tls);
/* Replaces the TLS settings (read during the call only) of every socket
 * listening with TLS; cleartext ones stay so. Connections accepted from now
 * on use the new settings, those already open keep theirs (a certificate
 * renewal, a new client CA: no connection is cut). On an error the settings
 * in use stay. Errors: H2REV_ETLS (bad certificate, key or CA; the reason is
 * logged), UV_EINVAL (tls NULL, or no TLS socket), UV_ENOMEM, UV_EBADF
 * (closing or draining). */
H2REV_EXTERN int h2rev_http_server_set_tls(h2rev_http_server_t *server,
                                           const h2rev_tls_options_t *tls);
/* The address of the n-th listening socket, in the order of listen calls.
 * Errors: UV_EINVAL (no such socket), those of uv_tcp_getsockname. */
H2REV_EXTERN int h2rev_http_server_getsockname(const h2rev_http_server_t *server, unsigned n,
                                               struct sockaddr *addr, int *len);
/* Routes the paths below prefix ("/api" serves "/api", "/api/x" and
 * "/api?q", not "/apix"; "/" serves everything) to handler. The longest
 * matching prefix wins; a path no route matches is answered 404. prefix
 * is copied. Errors: UV_EINVAL (not starting with '/'), UV_EEXIST, UV_ENOMEM. */
H2REV_EXTERN int h2rev_http_server_route(h2rev_http_server_t *server, const char *prefix,
                                         h2rev_http_handler_cb handler, void *arg);
/* Routes the CONNECT requests that name no path (RFC 9110 9.3.6 authority
 * form: HTTP/2 CONNECT without :protocol, HTTP/1.1 "CONNECT host:port") to
 * handler: req->path is "", req->authority the "host:port" asked for,
 * req->upgrade set, and a 2xx answer opens the tunnel. Without such a
 * route they are answered 405. A mounted dialer takes this route: it
 * tunnels "CONNECT <id>:<port>" to listener <id> (see h2rev_dialer_mount).
 * Errors: UV_EEXIST (taken), UV_ENOMEM. */
H2REV_EXTERN int h2rev_http_server_route_connect(h2rev_http_server_t *server,
                                                 h2rev_http_handler_cb handler, void *arg);
/* Serves HTTP/1.1 on an open virtual stream (a reverse connection from
 * h2rev_listener_accept) exactly like on an accepted socket: requests in
 * turn (keep-alive) until the client ends its side, asks to close, or
 * errs. The stream's `data` field is used. When it is over the stream is
 * closed, then done(stream) runs: the caller may free it then.
 * Errors: UV_EBADF (stream or server closing), UV_ENOMEM; done does not run. */
H2REV_EXTERN int h2rev_http_server_serve_stream(h2rev_http_server_t *server, h2rev_stream_t *stream,
                                                h2rev_close_cb done);
/* Stops listening and closes every connection at once; requests in
 * progress see errors (reads, writes) and must still be finished by their
 * handlers. cb runs once all of that is released; then the struct may be
 * freed. Mounted dialers are told (see h2rev_dialer_mount). */
H2REV_EXTERN void h2rev_http_server_close(h2rev_http_server_t *server,
                                          h2rev_http_server_close_cb cb);
/* Graceful: stops listening, sends GOAWAY to HTTP/2 clients and lets
 * HTTP/1.1 connections finish the exchange in progress; after timeout_ms
 * what is left is closed as h2rev_http_server_close does. cb runs last.
 * Errors: UV_EALREADY (closing or draining already; no callback then). */
H2REV_EXTERN int h2rev_http_server_shutdown(h2rev_http_server_t *server, unsigned timeout_ms,
                                            h2rev_http_server_close_cb cb);

H2REV_EXTERN void h2rev_http_server_stats(const h2rev_http_server_t *server,
                                          h2rev_http_server_stats_t *out);

/* A request header's value by name (case-insensitive), or NULL. */
H2REV_EXTERN const char *h2rev_http_header(const h2rev_http_req_t *req, const char *name);
/* Called once when the request is over (see h2rev_http_done_cb). */
H2REV_EXTERN void h2rev_http_on_done(h2rev_http_req_t *req, h2rev_http_done_cb cb);
/* Reads the request body as uv_read_start does; bytes that came while not
 * reading arrive on a later loop turn. A handler that does not read pauses
 * the client (TCP or HTTP/2 flow control). Errors: UV_EINVAL, UV_EALREADY,
 * UV_EBADF (finished). */
H2REV_EXTERN int h2rev_http_read_start(h2rev_http_req_t *req, h2rev_http_alloc_cb alloc_cb,
                                       h2rev_http_read_cb read_cb);
H2REV_EXTERN int h2rev_http_read_stop(h2rev_http_req_t *req);
/* Flow control by the handler's own measure, for a handler that passes the
 * body on (a proxy): from this call on, bytes given to read_cb are counted
 * as held until h2rev_http_consume(req, n) says n of them have left (e.g.
 * their write to the next hop completed). HTTP/2: the stream's window
 * returns to the client only then, so the client, not a buffer, waits for
 * a slow destination. HTTP/1.1: the connection stops reading its socket
 * while more than H2REV_HTTP_HELD_MAX bytes are held. Call it before
 * read_start. Errors: UV_EBADF (finished). */
#define H2REV_HTTP_HELD_MAX (1u << 20)
H2REV_EXTERN int h2rev_http_read_manual(h2rev_http_req_t *req);
H2REV_EXTERN void h2rev_http_consume(h2rev_http_req_t *req, size_t n);
/* 0 while the response can still reach the client; else why not
 * (H2REV_ERESET: the HTTP/2 client reset the stream, H2REV_ECLOSED: the
 * connection is gone). A handler that waits before answering (a dial, a
 * backend) checks it before it starts work for a client that has left. */
H2REV_EXTERN int h2rev_http_client_error(const h2rev_http_req_t *req);
/* Bytes of the response written and not yet on the socket (for
 * back-pressure: stop producing above a mark, go on from a write callback). */
H2REV_EXTERN size_t h2rev_http_write_queue_size(const h2rev_http_req_t *req);
/* Between cork and uncork, HTTP/1.1 response bytes (head, body writes, the
 * end) are gathered, without a copy, into one write: one TLS record and
 * one system call for a small response instead of three. HTTP/2 frames
 * are gathered per loop turn anyway (no-ops there). Write callbacks keep
 * their order. */
H2REV_EXTERN void h2rev_http_cork(h2rev_http_req_t *req);
H2REV_EXTERN void h2rev_http_uncork(h2rev_http_req_t *req);
/* Sends the response head. content_length >= 0 announces the body's size
 * (HTTP/1.1 Content-Length), -1 streams it (HTTP/1.1 chunked, or until the
 * connection closes for an HTTP/1.0 client). Responses to HEAD and 204/304
 * carry no body: bytes written are dropped. Content-Length,
 * Transfer-Encoding and connection-specific headers in `headers` are
 * ignored, but "connection: close" closes an HTTP/1.1 connection after
 * this response; names and values are copied. For HTTP/2 a field the
 * protocol does not allow (a value with leading or trailing white space)
 * is dropped, as Go's server does. 101 answers a request with `upgrade`
 * set (its Upgrade header is sent as given; HTTP/2: sent as 200); a 2xx to
 * a CONNECT (HTTP/1.1, or HTTP/2 of either form) opens the same byte
 * stream, and no Content-Length goes out with it. Errors: UV_EINVAL (status
 * outside 200-999 and not such a 101, a CR, LF or NUL in a header, an
 * empty name), UV_EALREADY
 * (responded already), UV_EBADF (finished), H2REV_ECLOSED (client gone: the
 * handler must still end or abort the request, which releases it). */
H2REV_EXTERN int h2rev_http_respond(h2rev_http_req_t *req, int status,
                                    const h2rev_header_t *headers, size_t nheaders,
                                    int64_t content_length);
/* Queues body bytes, sent from the caller's memory without a copy: they
 * must stay valid until cb (which runs in order, after the bytes are on
 * their way, with 0, UV_ECANCELED or the connection's error).
 * Errors: UV_EINVAL (more than content_length, no head yet, NULL cb),
 * UV_EBADF (finished), H2REV_ECLOSED, UV_ENOMEM. */
H2REV_EXTERN int h2rev_http_write(h2rev_http_write_t *w, h2rev_http_req_t *req,
                                  const uv_buf_t bufs[], unsigned nbufs, h2rev_http_write_cb cb);
/* The response is complete (a head of 200 with no body is sent first if
 * there was none). A response shorter than its content_length is aborted
 * instead. The done callback follows once everything is written.
 * Errors: UV_EBADF (finished already). */
H2REV_EXTERN int h2rev_http_end(h2rev_http_req_t *req);
/* Cuts the exchange: HTTP/2 RST_STREAM, HTTP/1.1 closes the connection, so
 * that a partial response never looks complete (before the head, the client
 * sees an error too). Pending writes end with UV_ECANCELED, then done runs
 * with UV_ECANCELED. Finished already: nothing happens. */
H2REV_EXTERN void h2rev_http_abort(h2rev_http_req_t *req);
/* A complete response with a small body (copied): respond, write, end.
 * content_type may be NULL. The request is finished after this call in all
 * cases: when the response cannot be sent (errors: those of
 * h2rev_http_respond, e.g. H2REV_ECLOSED when the client has gone) it is
 * aborted. */
H2REV_EXTERN int h2rev_http_reply(h2rev_http_req_t *req, int status, const char *content_type,
                                  const void *body, size_t len);

/* ---------------------------------------------------------------- dialer */

/* The public side. Listeners attach with <base>/revdial?id=<id>; the first
 * stream of an id is its control stream, later ones are data streams (reverse
 * connections) that h2rev_dial() hands out. */
typedef struct h2rev_dialer_s h2rev_dialer_t;
typedef struct h2rev_dial_s h2rev_dial_t;
struct h2r_dialer;

/* Who is attaching: the connection's address and, when the listener
 * presented a TLS client certificate (verified against the dialer's
 * ca_file), what identifies it. No OpenSSL type crosses the API, so the
 * callback works whichever copy of OpenSSL the program has. Everything is
 * valid during the authorize call only. */
typedef struct h2rev_peer_s {
  const char *address;         /* "ip:port" ("[v6]:port") */
  const char *cert_cn;         /* the subject's common name; NULL without a certificate */
  const char *const *cert_dns; /* its subjectAltName DNS names */
  size_t cert_ndns;
  const unsigned char *cert_der; /* the certificate, DER; NULL without one */
  size_t cert_der_len;
  unsigned char cert_sha256[32]; /* SHA-256 of the DER (the usual fingerprint); zeros without */
} h2rev_peer_t;

/* Decides whether a listener may attach as `id`, from the /revdial request
 * headers (names in lower case; Authorization among them) and the peer.
 * Return 0 to allow; anything else refuses with 403. */
typedef int (*h2rev_authorize_cb)(void *arg, const char *id, const h2rev_header_t *headers,
                                  size_t nheaders, const h2rev_peer_t *peer);

/* An attached listener, as h2rev_dialer_listeners and the on_listener
 * event describe it. The strings are valid until control returns to the loop. */
typedef struct h2rev_listener_info_s {
  const char *id;
  const char *peer;     /* "ip:port" of the connection holding its control stream */
  uint64_t attached_at; /* uv_now() of the dialer's loop when it attached, in ms */
  unsigned spares;      /* idle data streams ready for a dial */
  unsigned pending;     /* dials waiting for a data stream */
  unsigned streams;     /* data streams in use on its connection (not the control
                           stream, not the idle spares) */
} h2rev_listener_info_t;

enum { H2REV_EV_ATTACH = 1, H2REV_EV_DETACH = 2 };

/* A listener attached or detached (event: H2REV_EV_ATTACH or H2REV_EV_DETACH). Not called
 * while h2rev_dialer_close runs: its callback says they are all gone. */
typedef void (*h2rev_listener_event_cb)(h2rev_dialer_t *dialer, int event,
                                        const h2rev_listener_info_t *info);

typedef struct h2rev_dialer_options_s {
  const char *base_path;      /* e.g. "/reverse/connections"; NULL or "" means "" */
  unsigned dial_timeout_ms;   /* default for h2rev_dial(timeout 0): 10000 */
  unsigned max_pending_dials; /* per id; default 16384 */
  unsigned max_listeners;     /* default 10000 */
  unsigned max_control_line;  /* bytes; default 4096 */
  unsigned keepalive_ms;      /* control keep-alive message interval; default 30000 */
  unsigned ping_interval_ms;  /* HTTP/2 PING after this idle time; default 30000 */
  unsigned ping_timeout_ms;   /* default 15000 */
  unsigned max_streams;       /* per connection; default 1000 */
  /* Limits on the clients of <base>/proxy/ (the public side): proxied
   * requests open at once on one client connection, default 100, over it
   * 429 (with Retry-After); a request that announced a body must start
   * sending it within body_timeout_ms (default 30000; 408), and the listener
   * must send the response head within response_timeout_ms of the request's
   * end (default 60000; 504). */
  unsigned max_client_streams;
  unsigned body_timeout_ms;
  unsigned response_timeout_ms;
  /* The proxy puts <base>/proxy/<id> in front of what an upstream writes
   * for its own root (nginx's proxy_redirect and proxy_cookie_path
   * defaults): a Location that is a path, or an absolute URL to host <id>,
   * and a Set-Cookie's Path; one already under the prefix stays. Nonzero:
   * they pass as they are (an upstream that builds its URLs from
   * X-Forwarded-Prefix). */
  int no_rewrite;
  /* h2rev_dialer_listen's own server: connections open at once (listeners
   * and clients), default 16384; see h2rev_http_server_options_t. */
  unsigned max_connections;
  h2rev_authorize_cb authorize; /* NULL: everyone may attach */
  void *authorize_arg;
  h2rev_listener_event_cb on_listener; /* NULL: no events */
  h2rev_logger_t log;
  /* For h2rev_dialer_listen's own server (see h2rev_http_server_options_t);
   * a program that mounts the dialer sets it on its server. */
  h2rev_access_log_cb access_log;
  void *access_log_arg;
  /* Several dialers (replicas) behind one load balancer: every answer to
   * /revdial names the replica (response header x-h2rev-replica) and, when
   * replicas is nonzero, how many there are (x-h2rev-replicas), so that a
   * listener reaching them through the balancer attaches to each one.
   * replica_id: 1..64 characters of an id's alphabet ([A-Za-z0-9._~:@-]);
   * NULL: 8 random hex digits (h2rev_dialer_replica_id has them). Go's
   * listener ignores both headers. */
  const char *replica_id;
  /* 0: unknown (no x-h2rev-replicas); at most 1024. Above 1, a dial (a
   * proxied request) for an id no listener holds here waits up to its
   * timeout for one to attach (its listener may still be reaching this
   * replica), at most max_pending_dials such dials in all, rather than
   * failing at once with H2REV_ENOLISTENER. */
  unsigned replicas;
  /* h2rev_dialer_listen's own server: SO_REUSEPORT (several dialer
   * processes on one port, each a replica; see h2rev_http_server_options_t). */
  int reuse_port;
  /* h2rev_dialer_listen's own server: a client that takes none of its
   * response for this long is cut (h2rev_http_server_options_t); default
   * 60000. */
  unsigned send_timeout_ms;
} h2rev_dialer_options_t;

struct h2rev_dialer_s {
  void *data;
  uv_loop_t *loop;
  /* private */
  struct h2r_dialer *d_;
};

/* Counters, for monitoring and tests. */
typedef struct h2rev_dialer_stats_s {
  uint64_t listeners;       /* ids attached now */
  uint64_t conn_ready_sent; /* conn-ready commands sent */
  uint64_t spares;          /* idle data streams now */
  uint64_t dials_ok, dials_failed;
  uint64_t refused; /* /revdial streams refused */
  /* dials_failed by reason: unknown id, timeout, the listener could not
   * open it, the listener went away, too many pending, cancelled */
  uint64_t dials_nolistener, dials_timeout, dials_pickup, dials_closed, dials_toomany,
      dials_canceled;
} h2rev_dialer_stats_t;

typedef void (*h2rev_dial_cb)(h2rev_dial_t *req, int status);
typedef void (*h2rev_dialer_close_cb)(h2rev_dialer_t *dialer);

struct h2rev_dial_s {
  void *data;
  h2rev_dialer_t *dialer; /* read-only */
  h2rev_stream_t *stream; /* read-only: the caller's handle, open when status is 0 */
  /* private */
  uv_timer_t timer_;
  h2rev_dial_cb cb_;
  h2rev_dial_t *next_, *prev_;
  void *lst_;
  int status_;
  int state_;
  char err_[128];
};

/* Initialises a dialer on loop. opts may be NULL (defaults); it is copied.
 * Errors: UV_ENOMEM, UV_EINVAL (bad base path, replica_id or replicas). */
H2REV_EXTERN int h2rev_dialer_init(uv_loop_t *loop, h2rev_dialer_t *dialer,
                                   const h2rev_dialer_options_t *opts);
/* Serves HTTP/2 (TLS with ALPN h2 when tls != NULL, else prior knowledge) on
 * addr for the /revdial requests, and HTTP/1.1 for the proxy, with
 * /healthz answered "ok". The first call makes the dialer an HTTP server
 * of its own and mounts it there; may be called several times.
 * Errors: those of uv_tcp_bind/uv_listen, H2REV_ETLS (bad certificate),
 * UV_EBUSY (mounted on another server). */
H2REV_EXTERN int h2rev_dialer_listen(h2rev_dialer_t *dialer, const struct sockaddr *addr,
                                     const h2rev_tls_options_t *tls);
/* Serves the dialer's requests on server, next to the server's other
 * routes: <base>/revdial (HTTP/2 only), <base>/proxy/<id>/... and, unless
 * the program routed those already, CONNECT <id>:<port> (HTTP/1.1 and
 * HTTP/2: a tunnel to listener <id>, the port ignored; see
 * h2rev_http_server_route_connect). A dialer is
 * mounted on one server: its own (h2rev_dialer_listen) or one given here.
 * Close the dialer before or after the server: closing the dialer closes
 * the connections that hold its listeners and removes its routes; closing
 * the server detaches the dialer from it.
 * Errors: UV_EBUSY (mounted or listening already), UV_EEXIST (the server
 * has a route at one of those prefixes), UV_ENOMEM. */
H2REV_EXTERN int h2rev_dialer_mount(h2rev_dialer_t *dialer, h2rev_http_server_t *server);
/* The dialer's reverse proxy as an ordinary handler (arg: the dialer), for
 * a route of any server: a request for <route>/<id>/<path> goes to <path>
 * through a reverse connection to listener <id>, as HTTP/1.1 with
 * X-Forwarded-For, -Proto, -Host and -Prefix (<route>/<id>); the response
 * streams back, with the limits of the dialer's options (client streams,
 * body and response timeouts). A CONNECT makes the reverse connection a
 * tunnel (HTTP/1.1 "CONNECT <route>/<id>", "CONNECT <id>:<port>", HTTP/2
 * CONNECT with :authority <id>:<port>); an HTTP/2 extended CONNECT
 * (RFC 8441) goes on as an HTTP/1.1 upgrade (WebSocket: GET with Upgrade,
 * a Sec-WebSocket-Key of its own), its 101 back as 200.
 * h2rev_dialer_mount routes <base>/proxy to it; a program may route any
 * other prefix as well:
 *   h2rev_http_server_route(&srv, "/tunnel", h2rev_dialer_proxy, &dialer); */
H2REV_EXTERN void h2rev_dialer_proxy(h2rev_http_req_t *req, void *dialer);
/* Keep-alive for programs that speak HTTP/1.1 over reverse connections
 * themselves: gives back an idle, open stream dialed to `id` (every
 * request on it answered, nothing of ours unsent), which the next
 * h2rev_dial to the id may get instead of a new one. Returns 0 when the
 * dialer took it (the handle is then free; no close callback runs), else
 * an error and the caller still owns it: UV_EBUSY (not idle, or not a
 * stream of that listener's connection), UV_ENOENT (no such listener now),
 * H2REV_ETOOMANY (enough kept already). A stream of a listener that serves
 * one request per stream (Go's) is taken and closed. */
H2REV_EXTERN int h2rev_dialer_recycle(h2rev_dialer_t *dialer, const char *id,
                                      h2rev_stream_t *stream);
/* h2rev_http_server_set_tls for the dialer's own server (made by
 * h2rev_dialer_listen). Errors: those of h2rev_http_server_set_tls,
 * UV_EINVAL (mounted on the application's server: call it there). */
H2REV_EXTERN int h2rev_dialer_set_tls(h2rev_dialer_t *dialer, const h2rev_tls_options_t *tls);
/* The address of the n-th listening socket (for port 0). */
H2REV_EXTERN int h2rev_dialer_getsockname(const h2rev_dialer_t *dialer, unsigned n,
                                          struct sockaddr *addr, int *len);
/* Opens a reverse connection to listener `id` into `stream`. cb runs once:
 * 0 (stream open), H2REV_ENOLISTENER (unknown id, at once), UV_ETIMEDOUT
 * (timeout_ms, 0 = the dialer's default), H2REV_EPICKUP (the listener could
 * not open it; h2rev_dial_strerror has its text), H2REV_ECLOSED (the listener
 * went away), H2REV_ETOOMANY (too many pending), UV_ECANCELED.
 * Returns UV_EINVAL / H2REV_EBADID for bad arguments (no callback then). */
H2REV_EXTERN int h2rev_dial(h2rev_dial_t *req, h2rev_dialer_t *dialer, const char *id,
                            h2rev_stream_t *stream, unsigned timeout_ms, h2rev_dial_cb cb);
/* Cancels a pending dial: its cb runs with UV_ECANCELED. */
H2REV_EXTERN int h2rev_dial_cancel(h2rev_dial_t *req);
/* The listener's text for H2REV_EPICKUP, else h2rev_strerror(status). */
H2REV_EXTERN const char *h2rev_dial_strerror(const h2rev_dial_t *req);
H2REV_EXTERN void h2rev_dialer_stats(const h2rev_dialer_t *dialer, h2rev_dialer_stats_t *out);
/* healthy 0: /healthz of h2rev_dialer_listen's server answers 503 (all else
 * goes on), so that a load balancer's health check sends it no new
 * connections before a drain; 1 (the default): 200 again. */
H2REV_EXTERN void h2rev_dialer_set_healthy(h2rev_dialer_t *dialer, int healthy);
/* The replica id this dialer answers /revdial with (replica_id, or the
 * random one); valid until the dialer is closed. */
H2REV_EXTERN const char *h2rev_dialer_replica_id(const h2rev_dialer_t *dialer);
/* The server the dialer is mounted on (its own after h2rev_dialer_listen),
 * e.g. for h2rev_http_server_stats; NULL when none. */
H2REV_EXTERN h2rev_http_server_t *h2rev_dialer_server(const h2rev_dialer_t *dialer);
/* The listeners attached now: fills out[0..cap) (in no particular order)
 * and returns how many there are, which may be more than cap. */
H2REV_EXTERN size_t h2rev_dialer_listeners(const h2rev_dialer_t *dialer, h2rev_listener_info_t *out,
                                           size_t cap);
/* Calls cb(arg, info) for each listener attached now, in no particular
 * order, until cb returns nonzero (returned then; else 0). info is valid
 * during the call only; cb must not detach listeners, dial or close the
 * dialer. */
typedef int (*h2rev_listener_iter_cb)(void *arg, const h2rev_listener_info_t *info);
H2REV_EXTERN int h2rev_dialer_foreach(const h2rev_dialer_t *dialer, h2rev_listener_iter_cb cb,
                                      void *arg);
/* Stops listening, closes every connection, fails pending dials with
 * UV_ECANCELED, then calls cb. */
H2REV_EXTERN void h2rev_dialer_close(h2rev_dialer_t *dialer, h2rev_dialer_close_cb cb);
/* Graceful drain: stops listening at once (new connections are refused),
 * sends GOAWAY to every connection that holds no listener (clients finish the
 * requests they started and open no more), and keeps the listeners attached
 * so that the requests in flight can still get their reverse connections.
 * Once no stream other than the listeners' control streams and idle spares is
 * left, or timeout_ms has passed, it does what h2rev_dialer_close does; cb
 * runs last. If h2rev_dialer_close is called during the drain, the drain ends
 * there and that call's callback runs instead of cb.
 * Errors: UV_EALREADY (draining or closing already; no callback then). */
H2REV_EXTERN int h2rev_dialer_shutdown(h2rev_dialer_t *dialer, unsigned timeout_ms,
                                       h2rev_dialer_close_cb cb);

/* -------------------------------------------------------------- listener */

/* The NAT side: connects out to the dialer and accepts reverse connections. */
typedef struct h2rev_listener_s h2rev_listener_t;
struct h2r_listeners;

enum h2rev_listener_state {
  H2REV_LISTENER_CONNECTING = 1,
  H2REV_LISTENER_ATTACHED = 2,
  H2REV_LISTENER_LOST = 3,     /* err says why */
  H2REV_LISTENER_RETRYING = 4, /* delay_ms until the next attempt */
  H2REV_LISTENER_STOPPED = 5,  /* gave up (max_retries) or closed */
};

typedef void (*h2rev_connection_cb)(h2rev_listener_t *listener, int status);
typedef void (*h2rev_listener_state_cb)(h2rev_listener_t *listener, int state, int err,
                                        unsigned delay_ms);
typedef void (*h2rev_listener_close_cb)(h2rev_listener_t *listener);
/* One attachment's state (see urls): index counts the attachments from 0
 * (url's first), replica is the dialer replica it reached last ("" until
 * one says). */
typedef void (*h2rev_listener_replica_cb)(h2rev_listener_t *listener, unsigned index,
                                          const char *replica, int state, int err,
                                          unsigned delay_ms);

typedef struct h2rev_listener_options_s {
  const char *url; /* the dialer's base URL: https://host[:port]/base or http:// (h2c) */
  const char *id;
  h2rev_tls_options_t tls;
  const char *const *headers; /* extra request headers "Name: value", NULL-terminated;
                                 at most 32 (h2rev_listener_init: UV_EINVAL beyond) */
  unsigned ping_interval_ms;  /* default 30000 */
  unsigned ping_timeout_ms;   /* default 15000 */
  unsigned handshake_ms;      /* connect + TLS; default 10000 */
  unsigned backoff_min_ms;    /* default 500 */
  unsigned backoff_max_ms;    /* default 30000 */
  unsigned max_retries;       /* 0: forever */
  /* Failures are transient (the dialer cannot be reached, the connection
   * was lost, 5xx, 408, 429): the next attempt waits a delay that doubles
   * from backoff_min_ms up to backoff_max_ms; or permanent, what retrying
   * soon cannot cure until someone changes something: a refusal (401, 403,
   * 404, 409 and other 4xx), a certificate that does not verify, a peer
   * that does not speak HTTP/2 (ALPN, HTTP/1, TLS on an http:// URL), or an
   * HTTP/2 server that is not a dialer (its answer to /revdial is a
   * complete document, or not the control protocol). A permanent failure
   * waits backoff_max_ms (with jitter), or, with stop_on_permanent set,
   * stops the listener (STOPPED, with its err). Each distinct failure is
   * logged once (error for permanent ones, warn else) with what to do about
   * it; repeats log at debug, summarised every 10 minutes
   * (h2rev_listener_last_error has the text).
   * ATTACHED is reported once the dialer has answered as one does: 200 on
   * the control stream, then a control message, a data stream's 200, or a
   * second with the control stream still open. The backoff starts over
   * after an attachment that lived 5 s. */
  int stop_on_permanent;
  unsigned spares; /* data streams kept open ahead of demand at first; default 2;
                      each conn-ready (demand beyond them) keeps one more, up to 64 */
  /* 0 (default): a data stream reaches on_connection once the dialer's
   * client has sent its first byte on it, so every stream the application
   * accepts is in use; idle spares stay inside the library (they cost the
   * application nothing and are not its to close). Fits every protocol
   * where the client speaks first (HTTP, TLS, most others).
   * Nonzero: on_connection for every data stream as soon as it is open,
   * idle spares included, for protocols where the server speaks first
   * (SSH, SMTP, FTP): write the greeting at once, it waits at the dialer
   * until a dial takes the stream (the wire says nothing when one does).
   * Such a stream may never be used; it ends with H2REV_ERESET or
   * H2REV_ECLOSED when the dialer or the listener goes away. */
  int accept_idle;
  /* Connection state changes, called on a later loop turn than the call
   * or event that caused them (never inside h2rev_listener_start or
   * _close), in order. May be NULL. */
  h2rev_listener_state_cb on_state;
  h2rev_logger_t log;
  /* Several dialer replicas. A listener attaches to each one (an id lives
   * on the connection that holds it, and a client reaches any replica):
   * one attachment to url, one to each of urls (more base URLs,
   * NULL-terminated; NULL: none) and, unless no_follow_replicas is set,
   * more to url until it holds as many as the dialers say there are
   * (x-h2rev-replicas; through a load balancer every new connection may
   * reach any replica). An attachment that reaches a replica another one
   * holds drops that connection and tries again (after backoff_min_ms for
   * 10 such in a row, then with the doubling backoff; not a failure for
   * h2rev_listener_last_error). At most max_attachments (default 64) in
   * all. Each attachment reconnects on its own, as a single one does;
   * on_replica has their states. set_tls, set_headers, retry_now, shutdown
   * and close act on every attachment; last_error gives the first
   * attachment's that has one. on_state then
   * describes the listener as a whole: ATTACHED when the first attachment
   * is, LOST when none is left (CONNECTING, RETRYING while none is),
   * STOPPED when all are; h2rev_listener_accept takes streams from all.
   * A dialer that names no replica (Go's) is one attachment as before. */
  const char *const *urls;
  int no_follow_replicas;
  unsigned max_attachments;
  h2rev_listener_replica_cb on_replica; /* may be NULL */
  /* Data streams (reverse connections) open at once on each attachment,
   * idle spares included; 0 (default): as many as the dialer allows (h2rev's
   * dialer: its max_streams, 1000). The dialer's requests beyond it wait in
   * its queue (h2rev's: max_pending_dials, then 503; a dial times out with
   * 504) until a stream is free: with h2rev_upstream_serve, at most this
   * many exchanges, and so connections in use, reach the upstream at once. */
  unsigned max_streams;
} h2rev_listener_options_t;

struct h2rev_listener_s {
  void *data;
  uv_loop_t *loop;
  /* private */
  struct h2r_listeners *l_;
};

/* Copies opts. Errors: H2REV_EURL, H2REV_EBADID, H2REV_ETLS, UV_ENOMEM,
 * UV_EINVAL (more urls than max_attachments). */
H2REV_EXTERN int h2rev_listener_init(uv_loop_t *loop, h2rev_listener_t *listener,
                                     const h2rev_listener_options_t *opts);
/* Connects (and reconnects, with backoff and jitter) and calls cb(l, 0) for
 * each reverse connection ready to be accepted (see accept_idle for when a
 * data stream is ready). Errors: UV_EALREADY, UV_EINVAL (cb NULL). */
H2REV_EXTERN int h2rev_listener_start(h2rev_listener_t *listener, h2rev_connection_cb cb);
/* Moves the next reverse connection into `stream`. Errors: UV_EAGAIN (none). */
H2REV_EXTERN int h2rev_listener_accept(h2rev_listener_t *listener, h2rev_stream_t *stream);
/* The last failed attempt since the listener last attached: returns its err
 * (0: none) and writes one line into buf (what is wrong and what to do),
 * and *permanent (may be NULL) says whether it is a permanent failure (see
 * stop_on_permanent). */
H2REV_EXTERN int h2rev_listener_last_error(const h2rev_listener_t *listener, char *buf, size_t len,
                                           int *permanent);
/* Counters and state, for monitoring (h2rev_listener_stats). */
typedef struct h2rev_listener_stats_s {
  int state;             /* the last state reported (H2REV_LISTENER_*); 0 before start */
  uint64_t attempts;     /* connection attempts since start */
  uint64_t attachments;  /* attempts that attached (the first and each reattachment) */
  uint64_t failures;     /* attempts that failed and attachments lost */
  int last_error;        /* of the last failure since the last attachment; 0: none */
  int last_permanent;    /* and whether it was permanent (see stop_on_permanent) */
  uint64_t attached_at;  /* uv_now() when it last attached; 0 while not attached */
  uint64_t accepted;     /* reverse connections h2rev_listener_accept handed out */
  uint64_t streams_open; /* streams open on the current connection (control stream and
                            idle spares included) */
} h2rev_listener_stats_t;
/* With several attachments (replicas), the counts are their sums, the state
 * is ATTACHED while one is, attached_at the earliest, last_error the first
 * attachment's that has one (0 while one is attached). */
H2REV_EXTERN void h2rev_listener_stats(const h2rev_listener_t *listener,
                                       h2rev_listener_stats_t *out);
/* Replaces the TLS settings (tls of the options: CA, client certificate
 * and key, server_name, insecure) for the connections made from now on; the
 * current one keeps its own. Files are read during the call.
 * Errors: H2REV_ETLS (a file does not load: the settings in use are kept;
 * the log says why), UV_EINVAL (an http:// listener), UV_ENOMEM. */
H2REV_EXTERN int h2rev_listener_set_tls(h2rev_listener_t *listener, const h2rev_tls_options_t *tls);
/* Replaces the extra request headers (headers of the options; a new token)
 * for the connections made from now on: the data streams of the current
 * connection carry the headers its control stream did.
 * Errors: UV_EINVAL (malformed; the headers in use are kept), UV_ENOMEM. */
H2REV_EXTERN int h2rev_listener_set_headers(h2rev_listener_t *listener, const char *const *headers);
/* Waiting for the next attempt (after a failure): makes it now, and the
 * backoff starts over; for after someone fixed what the last failure said
 * (a reload). Errors: UV_EALREADY (not waiting: connecting, attached,
 * stopped or closing). */
H2REV_EXTERN int h2rev_listener_retry_now(h2rev_listener_t *listener);
/* Closes the connection to the dialer and stops reconnecting. Accepted
 * streams are the application's, as sockets accepted from a closed uv_tcp_t
 * server are: the close does not wait for them. From then on they report
 * H2REV_ECLOSED: a reading owner gets read_cb(H2REV_ECLOSED), pending and
 * later writes complete with an error, read_start delivers it on a later
 * turn; each must still be closed by its owner (the connection's memory is
 * released after the last). STOPPED is reported to on_state, then cb (may
 * be NULL) runs, on a later loop turn; nothing of the listener runs after
 * it, and the struct may be freed then. */
H2REV_EXTERN void h2rev_listener_close(h2rev_listener_t *listener, h2rev_listener_close_cb cb);
/* Graceful drain: ends the control stream (the dialer frees the id at once,
 * so a new listener may take it, and sends no new reverse connections),
 * stops reconnecting and sends GOAWAY. Reverse connections already accepted
 * go on; once their owners have closed them all, or timeout_ms has passed
 * (they then report errors), it does what h2rev_listener_close does; cb runs
 * last. Not attached: the same as h2rev_listener_close. If
 * h2rev_listener_close is called during the drain, its callback runs instead.
 * Errors: UV_EALREADY (draining or closing already; no callback then). */
H2REV_EXTERN int h2rev_listener_shutdown(h2rev_listener_t *listener, unsigned timeout_ms,
                                         h2rev_listener_close_cb cb);

/* -------------------------------------------------------------- upstream */

/* The listener side of a reverse proxy: serves the HTTP/1.1 requests carried
 * by an accepted reverse connection from an http:// or https:// upstream. The
 * request path is h2rev's dialer's as it comes (already stripped, as its
 * X-Forwarded-Prefix says), or the Go dialer's full path without its first
 * <base>/proxy/<id>; a path with dot segments or a field name that is not a
 * token is refused (400). Host becomes the upstream's unless keep_host, and
 * the bytes after the head pass through both ways. The same upstream can
 * also serve an HTTP server's route as a reverse proxy of its own
 * (h2rev_upstream_handler), sharing its pool of connections. */
typedef struct h2rev_upstream_s h2rev_upstream_t;
struct h2r_upstream;
typedef void (*h2rev_upstream_close_cb)(h2rev_upstream_t *upstream);

/* One request served from the upstream, for an access log: given to the
 * upstream's access_log callback once per request whose head was complete
 * (HTTP/1.1 on a reverse connection; the next request on the same one
 * comes after it), when its exchange is over: both messages complete, or
 * the exchange cut. Valid during the call only; the callback runs on the
 * loop, must not block and must not close the upstream. */
typedef struct h2rev_upstream_access_s {
  const char *method; /* "GET", ... */
  const char *path;   /* as sent to the upstream (its path prefix in front), raw bytes:
                         escape them; NULL unless access_log is set */
  /* The final response status (101 for an upgrade); an answer made here in
   * the upstream's place, when local is set: 502 (the upstream could not
   * be reached) or 400 (a request refused); 0: no response head. */
  int status;
  int local;
  /* 0: the exchange completed (for an upgrade: the connection ended);
   * else why not: the error that kept the upstream from answering (with a
   * local 502), H2REV_ECLOSED when it was cut (the dialer or the upstream
   * went away mid-exchange). */
  int result;
  uint64_t bytes_in;    /* request bytes after the head, sent on to the upstream */
  uint64_t bytes_out;   /* response bytes, head included, sent back to the dialer */
  uint64_t duration_us; /* from the complete request head to the end */
  uint64_t ttfb_us;     /* from the complete request head to the response's first byte;
                           0: none came */
} h2rev_upstream_access_t;
typedef void (*h2rev_upstream_access_cb)(void *arg, const h2rev_upstream_access_t *access);

/* Counters (h2rev_upstream_stats). Requests are those access_log sees. */
typedef struct h2rev_upstream_stats_s {
  uint64_t streams;             /* reverse connections being served now */
  uint64_t streams_total;       /* taken by h2rev_upstream_serve since init */
  uint64_t requests[6];         /* by status class: [0] no head, [1..5] 1xx..5xx */
  uint64_t requests_incomplete; /* ended with a nonzero result */
  /* The upstream could not be reached (a local 502); through
   * h2rev_upstream_handler also a local 503 or 504 (it did not answer in
   * time). */
  uint64_t errors;
  /* Refused here (a local 400); through h2rev_upstream_handler any local
   * 4xx (400, 405, 408, 431). */
  uint64_t refused;
  uint64_t duration[H2REV_HTTP_DURATION_BUCKETS]; /* not cumulative; bounds as the server's */
  uint64_t duration_us_sum;
  uint64_t bytes_in, bytes_out; /* as in h2rev_upstream_access_t */
} h2rev_upstream_stats_t;

typedef struct h2rev_upstream_options_s {
  const char *url;             /* http://host[:port][/path] or https://... */
  h2rev_tls_options_t tls;     /* https: ca_file (NULL: system store), insecure, server_name */
  int keep_host;               /* pass the client's Host header unchanged */
  unsigned connect_timeout_ms; /* connect + TLS; default 10000 */
  /* Idle keep-alive connections to the upstream kept for the next requests
   * (each is closed after 30 s unused); default 256. Below the number of
   * requests in flight at once, the surplus is closed after each burst and
   * opened again for the next: a TCP (and TLS) handshake per request. */
  unsigned max_idle_conns;
  h2rev_logger_t log;
  h2rev_upstream_access_cb access_log; /* NULL: none */
  void *access_log_arg;
  /* For h2rev_upstream_handler only (on the listener's reverse connections
   * the dialer applies its own): a request body announced must start
   * within body_timeout_ms (default 30000; 408), and the upstream must send
   * the response head within response_timeout_ms of the request's end
   * (default 60000; 504). no_rewrite: as the dialer's (Location and
   * Set-Cookie Path values pass as they are). */
  unsigned body_timeout_ms;
  unsigned response_timeout_ms;
  int no_rewrite;
} h2rev_upstream_options_t;

struct h2rev_upstream_s {
  void *data;
  uv_loop_t *loop;
  /* private */
  struct h2r_upstream *u_;
};

/* Copies opts. Errors: UV_EINVAL, H2REV_EURL, H2REV_ETLS (bad CA file), UV_ENOMEM. */
H2REV_EXTERN int h2rev_upstream_init(uv_loop_t *loop, h2rev_upstream_t *upstream,
                                     const h2rev_upstream_options_t *opts);
/* Takes an open stream (from h2rev_listener_accept) and serves it; its
 * `data` field is used. Requests are served in turn while the dialer and the
 * upstream keep the connection alive (an idle stream waits 120 s for the
 * next); when it ends, the stream is closed and done(stream) runs: the
 * caller may free it then. An upstream that cannot be reached is answered
 * with 502 on the stream.
 * Errors: UV_EBADF (closing), UV_ENOMEM; done does not run then. */
H2REV_EXTERN int h2rev_upstream_serve(h2rev_upstream_t *upstream, h2rev_stream_t *stream,
                                      h2rev_close_cb done);
/* The same reverse proxy as a handler of any HTTP server (arg: the
 * upstream), for HTTP/1.1 and HTTP/2 clients alike: a request for
 * <route><rest> goes to <url path><rest> of the upstream, as HTTP/1.1 with
 * Host the upstream's (the client's with keep_host) and X-Forwarded-For,
 * -Proto, -Host and -Prefix (<route>), over the upstream's pool of
 * keep-alive connections; the response streams back, bodies both ways
 * with the client's flow credit returned as its bytes reach the upstream.
 * It is the exchange of the dialer's proxy (h2rev_dialer_proxy) with a
 * pooled connection for the reverse one: the same framing, smuggling
 * rules, rewriting of Location and Set-Cookie Path (the URL's path
 * replaced by <route>), WebSocket upgrades (HTTP/2 extended CONNECT too)
 * and errors: 502 when the upstream cannot be reached, 504 when it does
 * not answer in time, 405 for a CONNECT. Each request is given to
 * access_log and counted in h2rev_upstream_stats (path: as sent to the
 * upstream; bytes_in: body bytes sent on; bytes_out: response bytes,
 * head included, read from the upstream). h2rev_upstream_close waits for
 * these requests too; while closing, new ones get 503.
 *   h2rev_http_server_route(&srv, "/app", h2rev_upstream_handler, &upstream); */
H2REV_EXTERN void h2rev_upstream_handler(h2rev_http_req_t *req, void *upstream);
/* Streams being served now. */
H2REV_EXTERN unsigned h2rev_upstream_active(const h2rev_upstream_t *upstream);
H2REV_EXTERN void h2rev_upstream_stats(const h2rev_upstream_t *upstream,
                                       h2rev_upstream_stats_t *out);
/* For a drain (call it with h2rev_listener_shutdown): streams waiting for a
 * next request end now and no stream is kept for one after its exchange;
 * an upgraded connection (a WebSocket) ends once it has been idle both ways
 * for 1 s (at once if it has been), so that idle ones do not hold the drain
 * to its timeout; exchanges in progress go on. */
H2REV_EXTERN void h2rev_upstream_drain(h2rev_upstream_t *upstream);
/* Stops taking streams; cb runs once those being served are done. */
H2REV_EXTERN void h2rev_upstream_close(h2rev_upstream_t *upstream, h2rev_upstream_close_cb cb);

/* ------------------------------------------------------------ ref/unref */

/* uv_ref()/uv_unref() for the library's handles. An unref'd dialer,
 * listener, HTTP server or upstream does not keep uv_run(loop,
 * UV_RUN_DEFAULT) running: every libuv handle it owns is unref'd, now and
 * whenever it creates one later, until the matching *_ref call restores
 * the default (every handle referenced). uv_run then returns once nothing
 * else keeps the loop alive, with the handle still open and usable; close
 * it as usual (the close needs the loop to run once more).
 *
 * The handles concerned:
 *  - HTTP server: its listening sockets, every accepted connection (the TCP
 *    handle, its timers, check and idle handles, HTTP/1.1 timers);
 *  - dialer: its drain timer and, when it listens itself
 *    (h2rev_dialer_listen), all of its own server's handles as above. A
 *    dialer mounted on an application's server (h2rev_dialer_mount) holds
 *    no connection of its own: ref or unref that server;
 *  - listener: its reconnect, backoff and state timers, and each connection
 *    to the dialer (TCP handle, timers, check and idle handles);
 *  - upstream: each connection to the upstream, pooled or in use, and the
 *    per-stream linger timers.
 *
 * As in libuv, requests in flight are not handles and keep the loop alive
 * until they complete, whatever the setting: a name resolution or a TCP
 * connect of the listener or the upstream, a write, a pending h2rev_dial.
 * Virtual streams (h2rev_stream_t) own no libuv handle: their connection's
 * owner decides. Idempotent (no counting: one ref undoes any number of
 * unrefs); no return value, nothing can fail; does nothing once the
 * handle's close callback has run. Nothing else changes: an unref'd handle
 * works as before while the loop runs for other reasons. */
H2REV_EXTERN void h2rev_http_server_ref(h2rev_http_server_t *server);
H2REV_EXTERN void h2rev_http_server_unref(h2rev_http_server_t *server);
H2REV_EXTERN void h2rev_dialer_ref(h2rev_dialer_t *dialer);
H2REV_EXTERN void h2rev_dialer_unref(h2rev_dialer_t *dialer);
H2REV_EXTERN void h2rev_listener_ref(h2rev_listener_t *listener);
H2REV_EXTERN void h2rev_listener_unref(h2rev_listener_t *listener);
H2REV_EXTERN void h2rev_upstream_ref(h2rev_upstream_t *upstream);
H2REV_EXTERN void h2rev_upstream_unref(h2rev_upstream_t *upstream);

#ifdef __cplusplus
}
#endif
#endif /* H2REV_H */
