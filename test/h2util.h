/* Test peers for the transport, session and stream layers: an HTTP/2 server
 * on loopback with a few handlers, and a client session. */
#ifndef H2REV_TEST_H2UTIL_H
#define H2REV_TEST_H2UTIL_H

#include "internal.h"

/* Handlers by :path:
 *   /echo        echoes the request body, ends when it ends
 *   /echo-tail   echoes, then after the client's END_STREAM writes "tail" and ends
 *   /source?n=N  answers N pseudo-random bytes (seed 7), then ends
 *   /reset       answers 200 then resets the stream */
typedef struct tserver {
  uv_loop_t *loop;
  uv_tcp_t tcp;
  SSL_CTX *ctx;
  h2r_session_opts o;
  int port;
  int sessions; /* accepted */
  int open;     /* alive */
  int last_err; /* last session error */
  int requests;
  h2rev_logger_t log;
} tserver_t;

/* Starts on 127.0.0.1, a free port; TLS with test certs (cert name: server
 * or expired) when cert != NULL. */
void tserver_start(tserver_t *t, uv_loop_t *loop, const char *cert, const h2r_session_opts *o);
void tserver_stop(tserver_t *t);

typedef struct tclient {
  h2r_session_t s;
  int opened; /* 1 ok, -1 failed */
  int err;    /* open error or death reason */
  int dead;
  int closed;
  void (*on_open)(struct tclient *c);
  void *data;
  h2rev_logger_t log;
} tclient_t;

/* Connects to 127.0.0.1:port; TLS when ca != NULL ("none" = insecure). */
void tclient_connect(tclient_t *c, uv_loop_t *loop, int port, const char *ca, const char *host,
                     const h2r_session_opts *o);
/* Opens a stream with POST path; the application handle is pub. */
void tclient_stream(tclient_t *c, h2rev_stream_t *pub, const char *path);
SSL_CTX *tls_client_ctx(const char *ca);
void test_logger(h2rev_logger_t *lg, const char *who);

/* Runs the loop until *flag is non-zero or timeout_ms passes (then aborts). */
void run_until(uv_loop_t *loop, volatile int *flag, unsigned timeout_ms);
/* A server and a client session connected to it: TLS with the test
 * certificates when cert != NULL (the client verifies host), else cleartext;
 * session options o for both (NULL: defaults). */
void tpair_open(uv_loop_t *loop, tserver_t *srv, tclient_t *cl, const char *cert, const char *host,
                const h2r_session_opts *o);
/* Ends the client's session, stops the server, checks the loop ends clean. */
void tpair_close(uv_loop_t *loop, tserver_t *srv, tclient_t *cl);
/* Closes everything left and checks the loop ends clean. */
void loop_drain(uv_loop_t *loop);
/* SHA-256 of what /source?n=total sends. */
void source_sha(uint64_t total, unsigned char out[32]);

#endif
