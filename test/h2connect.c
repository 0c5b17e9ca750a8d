/* h2rev-h2connect: an HTTP/2 CONNECT client for the tests (curl and nghttp here do not
 * send one), driving libnghttp2 by hand over a blocking socket and poll():
 *
 *   h2rev-h2connect [--ca FILE] [--protocol P --path PATH] HOST PORT AUTHORITY
 *
 * Without --protocol: a CONNECT (RFC 9113 8.5, :authority only). With it: an extended
 * CONNECT (RFC 8441: :protocol, :scheme, :path), which the server must have allowed in its
 * SETTINGS (ENABLE_CONNECT_PROTOCOL), or the tool fails. TLS with ALPN h2 when --ca is
 * given ("none": no verification), else cleartext with prior knowledge.
 *
 * On a 2xx, stdin goes out on the stream's DATA frames (its end as END_STREAM, a
 * half-close) and the DATA frames received go to stdout; exit 0 once the server has ended
 * the stream cleanly. Prints "status N" on stderr; exit 2 on another status, 1 on errors. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define IO_BUF          (64u << 10)
#define OPEN_TIMEOUT_MS 30000

static int sock = -1;
static SSL *ssl;
static nghttp2_session *ng;
static int32_t sid = -1;
static int status;
static bool settings_seen, closed, ended, stdin_eof, out_eof_sent;
static uint32_t close_code;
static char inbuf[IO_BUF];
static size_t in_len, in_off;

static void die(const char *msg) {
  fprintf(stderr, "h2rev-h2connect: %s\n", msg);
  exit(1);
}

static void put_all(const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w;
    if (ssl != NULL) {
      int r = SSL_write(ssl, p, (int)n);
      w = r > 0 ? r : -1;
    } else {
      w = write(sock, p, n);
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      die("write to the server failed");
    p += w;
    n -= (size_t)w;
  }
}

static void flush(void) {
  for (;;) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(ng, &data);
    if (n < 0)
      die(nghttp2_strerror((int)n));
    if (n == 0)
      return;
    put_all(data, (size_t)n);
  }
}

static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *u) {
  (void)s, (void)u;
  if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
    settings_seen = true;
  if (f->hd.stream_id == sid && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
    ended = true;
  return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *u) {
  (void)s, (void)flags, (void)u;
  if (f->hd.stream_id == sid && nl == 7 && memcmp(name, ":status", 7) == 0 && vl == 3 &&
      status == 0) {
    status = atoi((const char *)value);
    fprintf(stderr, "status %d\n", status);
  }
  return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *d, size_t n,
                   void *u) {
  (void)s, (void)flags, (void)u;
  if (id != sid)
    return 0;
  while (n > 0) {
    ssize_t w = write(STDOUT_FILENO, d, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      die("write to stdout failed");
    d += w;
    n -= (size_t)w;
  }
  return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *u) {
  (void)s, (void)u;
  if (id == sid) {
    closed = true;
    close_code = code;
  }
  return 0;
}

/* stdin's bytes, END_STREAM at its end; deferred while none are there. */
static ssize_t source(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                      nghttp2_data_source *src, void *u) {
  (void)s, (void)id, (void)src, (void)u;
  size_t n = in_len - in_off;
  if (n == 0) {
    if (stdin_eof) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      out_eof_sent = true;
      return 0;
    }
    return NGHTTP2_ERR_DEFERRED;
  }
  n = n < len ? n : len;
  memcpy(buf, inbuf + in_off, n);
  in_off += n;
  return (ssize_t)n;
}

static void read_server(void) {
  uint8_t buf[IO_BUF];
  do {
    ssize_t n;
    if (ssl != NULL) {
      int r = SSL_read(ssl, buf, sizeof(buf));
      n = r > 0 ? r : (SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1);
    } else {
      n = read(sock, buf, sizeof(buf));
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (closed)
        return;
      die(n == 0 ? "the server closed the connection" : "read from the server failed");
    }
    ssize_t r = nghttp2_session_mem_recv(ng, buf, (size_t)n);
    if (r < 0)
      die(nghttp2_strerror((int)r));
  } while (ssl != NULL && SSL_pending(ssl) > 0);
}

static void dial(const char *host, const char *port, const char *ca) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
  if (getaddrinfo(host, port, &hints, &ai) != 0)
    die("cannot resolve the host");
  sock = socket(ai->ai_family, SOCK_STREAM, 0);
  if (sock < 0 || connect(sock, ai->ai_addr, ai->ai_addrlen) != 0)
    die("cannot connect");
  freeaddrinfo(ai);
  int one = 1;
  setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (ca == NULL)
    return;
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  static const unsigned char alpn[] = "\x02h2";
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
  if (strcmp(ca, "none") != 0) {
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
      die("cannot read the CA file");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  ssl = SSL_new(ctx);
  SSL_CTX_free(ctx);
  SSL_set_fd(ssl, sock);
  SSL_set_tlsext_host_name(ssl, host);
  if (SSL_connect(ssl) != 1)
    die("TLS handshake failed");
  const unsigned char *got;
  unsigned glen;
  SSL_get0_alpn_selected(ssl, &got, &glen);
  if (glen != 2 || memcmp(got, "h2", 2) != 0)
    die("the server did not choose h2");
}

static void usage(void) {
  fprintf(stderr, "usage: h2rev-h2connect [--ca FILE|none] [--protocol P --path PATH] HOST PORT "
                  "AUTHORITY\n");
  exit(1);
}

int main(int argc, char **argv) {
  const char *ca = NULL, *protocol = NULL, *path = NULL;
  int i = 1;
  for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
    if (strcmp(argv[i], "--ca") == 0)
      ca = argv[i + 1];
    else if (strcmp(argv[i], "--protocol") == 0)
      protocol = argv[i + 1];
    else if (strcmp(argv[i], "--path") == 0)
      path = argv[i + 1];
    else
      usage();
  }
  if (argc - i != 3 || (protocol == NULL) != (path == NULL))
    usage();
  signal(SIGPIPE, SIG_IGN);
  dial(argv[i], argv[i + 1], ca);

  nghttp2_session_callbacks *cb;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
  nghttp2_session_client_new(&ng, cb, NULL);
  nghttp2_session_callbacks_del(cb);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20}};
  nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, iv, 1);
  flush();
  /* The server's SETTINGS say whether an extended CONNECT may be sent at all. */
  while (!settings_seen) {
    struct pollfd pf = {sock, POLLIN, 0};
    if (poll(&pf, 1, OPEN_TIMEOUT_MS) <= 0)
      die("no SETTINGS from the server");
    read_server();
    flush();
  }
  if (protocol != NULL &&
      nghttp2_session_get_remote_settings(ng, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) != 1)
    die("the server does not allow extended CONNECT (no SETTINGS_ENABLE_CONNECT_PROTOCOL)");

  const char *auth = argv[i + 2];
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE}
  nghttp2_nv nva[5] = {NV(":method", "CONNECT"), NV(":authority", auth)};
  size_t nn = 2;
  if (protocol != NULL) {
    nva[nn++] = (nghttp2_nv)NV(":protocol", protocol);
    nva[nn++] = (nghttp2_nv)NV(":scheme", ca != NULL ? "https" : "http");
    nva[nn++] = (nghttp2_nv)NV(":path", path);
  }
  nghttp2_data_provider dp = {.read_callback = source};
  sid = nghttp2_submit_request(ng, NULL, nva, nn, &dp, NULL);
  if (sid < 0)
    die(nghttp2_strerror(sid));
  flush();

  while (!closed) {
    /* stdin is read once the tunnel is open, one buffer at a time. */
    bool want_in = status >= 200 && status < 300 && !stdin_eof && in_off == in_len;
    struct pollfd pf[2] = {{sock, POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
    int np = want_in ? 2 : 1;
    if (poll(pf, (nfds_t)np, status == 0 ? OPEN_TIMEOUT_MS : -1) <= 0)
      die(status == 0 ? "no answer in time" : "poll failed");
    if (pf[0].revents)
      read_server();
    if (np == 2 && pf[1].revents) {
      ssize_t n = read(STDIN_FILENO, inbuf, sizeof(inbuf));
      if (n < 0 && errno != EINTR)
        die("read from stdin failed");
      if (n == 0)
        stdin_eof = true;
      if (n > 0) {
        in_len = (size_t)n;
        in_off = 0;
      }
      nghttp2_session_resume_data(ng, sid);
    }
    static bool cancelled;
    if (status != 0 && (status < 200 || status >= 300) && ended && !closed && !cancelled) {
      cancelled = true; /* refused: nothing of ours is wanted */
      nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
    }
    flush();
  }
  int rc = status >= 200 && status < 300 ? 0 : 2;
  /* A server that ended its side may reset ours after it (NO_ERROR): still clean. */
  if (rc == 0 && !(ended && close_code == NGHTTP2_NO_ERROR)) {
    fprintf(stderr, "h2rev-h2connect: the stream was reset (code %u)\n", close_code);
    rc = 1;
  }
  nghttp2_session_del(ng);
  if (ssl != NULL) {
    SSL_shutdown(ssl);
    SSL_free(ssl);
  }
  close(sock);
  return rc;
}
