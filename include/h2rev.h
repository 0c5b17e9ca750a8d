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

/* TLS settings. Strings are copied or only read during the call that takes
 * the options; the caller keeps ownership. */
typedef struct h2rev_tls_options_s {
  const char *ca_file;     /* trust anchors; NULL: the system store (client) */
  const char *cert_file;   /* our certificate chain (PEM); server: required */
  const char *key_file;    /* its private key (PEM) */
  const char *server_name; /* client: SNI and name to verify; NULL: the URL's host */
  int insecure;            /* client: skip peer verification (tests only) */
  int verify_client;       /* server: require a client certificate signed by ca_file */
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
 * Callbacks run in order, after the bytes have reached the socket.
 * Errors: UV_EPIPE (after shutdown), UV_EBADF (closing), UV_ENOMEM;
 * cb's status: 0, UV_ECANCELED (closed first), H2REV_ERESET, or the
 * connection's error. */
H2REV_EXTERN int h2rev_stream_write(h2rev_write_t *req, h2rev_stream_t *stream,
                                    const uv_buf_t bufs[], unsigned int nbufs, h2rev_write_cb cb);
/* Sends END_STREAM after the queued writes (a half-close). cb runs once it is
 * sent. Errors: UV_EALREADY (shut down already), UV_EBADF (closing). */
H2REV_EXTERN int h2rev_stream_shutdown(h2rev_shutdown_t *req, h2rev_stream_t *stream,
                                       h2rev_shutdown_cb cb);
/* Closes the stream, resetting it (RST_STREAM CANCEL) if still open in either
 * direction. Pending writes and shutdown complete with UV_ECANCELED, then
 * close_cb (may be NULL) runs; after it the struct may be freed. */
H2REV_EXTERN void h2rev_stream_close(h2rev_stream_t *stream, h2rev_close_cb close_cb);
H2REV_EXTERN int h2rev_stream_is_closing(const h2rev_stream_t *stream);
/* Bytes received but not yet handed to read_cb (bounded by the stream window). */
H2REV_EXTERN size_t h2rev_stream_buffered(const h2rev_stream_t *stream);
/* Bytes written but not yet on the socket. */
H2REV_EXTERN size_t h2rev_stream_write_queue_size(const h2rev_stream_t *stream);

#ifdef __cplusplus
}
#endif
#endif /* H2REV_H */
