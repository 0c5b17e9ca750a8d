/*
 * h2rev-connect URL ID: a byte stream through an h2rev dialer's
 * "CONNECT <base>/proxy/<id>" (HTTP/1.1, over TLS for https://), to the
 * service behind listener <id> (a listener with --upstream tcp://):
 *
 *   ssh -o ProxyCommand='h2rev-connect https://relay/base app1' host
 *
 * stdin/stdout by default; with --listen ADDR:PORT each accepted
 * connection gets a tunnel of its own (a child process each).
 *
 * The end of the input half-closes the tunnel (TLS close_notify, then a
 * FIN); the tunnel ends when the service ends its side.
 *
 * One tunnel is two byte pumps and nothing else: blocking sockets and
 * poll(2) say it in fewer lines than an event loop, and a process per
 * tunnel keeps one tunnel's failure from touching another.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Bytes read at once either way. */
#define PUMP_BUF (64u << 10)
/* The dialer's answer head, at most. */
#define HEAD_MAX 8192
/* Connecting and the dialer's answer (which waits for a reverse
 * connection to the listener) must come within this time. */
#define OPEN_TIMEOUT_MS 30000
#define HOST_MAX        256
#define PATH_MAX_LEN    4096

static const char *prog = "h2rev-connect";
/* Freed on every way out, so that a leak checker sees only real leaks. */
static SSL_CTX *g_ctx;
static SSL *g_ssl;

static void release(void) {
  SSL_free(g_ssl);
  g_ssl = NULL;
  SSL_CTX_free(g_ctx);
  g_ctx = NULL;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
#include <stdarg.h>
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", prog);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  release();
  exit(1);
}

/* To stdout when asked for (--help, and the man page made from it), else to stderr. */
static void usage(FILE *to) {
  fprintf(to,
          "usage: %s [options] URL ID\n"
          "  --ca FILE            CA certificates that verify the dialer (default: the system's)\n"
          "  --insecure           do not verify the dialer's certificate (tests only)\n"
          "  --token TOKEN        sent as Authorization: Bearer TOKEN\n"
          "  --listen ADDR:PORT   forward a local port instead of stdin/stdout: each\n"
          "                       accepted connection gets a tunnel of its own\n"
          "  -h, --help, --version\n"
          "A byte stream to the TCP service behind listener ID, through the h2rev\n"
          "dialer at URL (http:// or https://, with its base path), by HTTP/1.1\n"
          "CONNECT <base>/proxy/ID. The listener must serve --upstream tcp://.\n"
          "e.g. ssh -o ProxyCommand='%s https://relay/base app1' host\n",
          prog, prog);
}

typedef struct {
  bool tls;
  char host[HOST_MAX];
  char port[8];
  char base[PATH_MAX_LEN];
} url_t;

static void parse_url(const char *s, url_t *u) {
  const char *p;
  if (strncmp(s, "https://", 8) == 0) {
    u->tls = true;
    p = s + 8;
  } else if (strncmp(s, "http://", 7) == 0) {
    u->tls = false;
    p = s + 7;
  } else {
    die("URL must start with http:// or https://: %s", s);
  }
  size_t hl = strcspn(p, "/");
  const char *path = p + hl;
  const char *hostend = p + hl;
  const char *colon = NULL;
  if (*p == '[') { /* [v6]:port */
    const char *rb = memchr(p, ']', hl);
    if (rb == NULL)
      die("bad URL: %s", s);
    colon = rb + 1 < hostend && rb[1] == ':' ? rb + 1 : NULL;
    if ((size_t)(rb - p - 1) >= sizeof(u->host))
      die("host too long");
    memcpy(u->host, p + 1, (size_t)(rb - p - 1));
    u->host[rb - p - 1] = '\0';
  } else {
    colon = memchr(p, ':', hl);
    size_t n = (size_t)((colon != NULL ? colon : hostend) - p);
    if (n == 0 || n >= sizeof(u->host))
      die("bad host in URL: %s", s);
    memcpy(u->host, p, n);
    u->host[n] = '\0';
  }
  if (colon != NULL) {
    size_t n = (size_t)(hostend - colon - 1);
    if (n == 0 || n >= sizeof(u->port))
      die("bad port in URL: %s", s);
    memcpy(u->port, colon + 1, n);
    u->port[n] = '\0';
  } else {
    snprintf(u->port, sizeof(u->port), "%s", u->tls ? "443" : "80");
  }
  size_t pl = strlen(path);
  while (pl > 0 && path[pl - 1] == '/')
    pl--;
  if (pl >= sizeof(u->base))
    die("base path too long");
  memcpy(u->base, path, pl);
  u->base[pl] = '\0';
  for (size_t i = 0; i < pl; i++)
    if (path[i] <= ' ' || path[i] == '?' || path[i] == '#' || path[i] == 0x7f)
      die("bad base path in URL: %s", s);
}

static bool id_ok(const char *id) {
  if (*id == '\0' || strlen(id) > 255)
    return false;
  for (const char *c = id; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '-' || *c == '_' || *c == '.'))
      return false;
  return true;
}

typedef struct {
  int fd;
  SSL *ssl;
} conn_t;

static int dial(const url_t *u) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res, *ai;
  int r = getaddrinfo(u->host, u->port, &hints, &res);
  if (r != 0)
    die("%s: %s", u->host, gai_strerror(r));
  int fd = -1, err = 0;
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
      continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
      break;
    err = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0)
    die("cannot connect to %s port %s: %s", u->host, u->port, strerror(err));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  return fd;
}

static SSL_CTX *make_ctx(const char *ca, bool insecure) {
  SSL_CTX *ctx = g_ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL)
    die("TLS: cannot make a context");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  /* The dialer ends a tunnel with its FIN, without close_notify: that is
   * the service's end, not a truncation attack on a byte stream that has
   * no length to check anyway (a reset still reads as an error). */
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
  if (!insecure) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca != NULL ? SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1
                   : SSL_CTX_set_default_verify_paths(ctx) != 1)
      die("TLS: cannot load CA certificates%s%s", ca ? " from " : "", ca ? ca : "");
  }
  static const unsigned char alpn[] = "\x08http/1.1";
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
  return ctx;
}

static void tls_fail(const char *what) {
  unsigned long e = ERR_get_error();
  char buf[256] = "";
  if (e != 0)
    ERR_error_string_n(e, buf, sizeof(buf));
  die("TLS %s failed%s%s", what, buf[0] ? ": " : "", buf);
}

static ssize_t c_write_all(conn_t *c, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w;
    if (c->ssl != NULL) {
      int r = SSL_write(c->ssl, p, (int)n);
      if (r <= 0)
        return -1;
      w = r;
    } else {
      w = send(c->fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0)
        return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* >0 bytes, 0 end, -1 error. */
static ssize_t c_read(conn_t *c, char *p, size_t n) {
  if (c->ssl != NULL) {
    int r = SSL_read(c->ssl, p, (int)n);
    if (r > 0)
      return r;
    int e = SSL_get_error(c->ssl, r);
    return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
  }
  ssize_t r;
  do
    r = recv(c->fd, p, n, 0);
  while (r < 0 && errno == EINTR);
  return r;
}

static ssize_t fd_write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Opens the tunnel: connect, TLS, CONNECT, the 200. Bytes the dialer sent
 * behind its head go to out. */
static void open_tunnel(conn_t *c, const url_t *u, SSL_CTX *ctx, const char *id, const char *token,
                        int out) {
  c->fd = dial(u);
  c->ssl = NULL;
  struct timeval tv = {OPEN_TIMEOUT_MS / 1000, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (u->tls) {
    c->ssl = g_ssl = SSL_new(ctx);
    if (c->ssl == NULL)
      tls_fail("setup");
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, u->host);
    if (SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER)
      SSL_set1_host(c->ssl, u->host);
    if (SSL_connect(c->ssl) != 1) {
      long v = SSL_get_verify_result(c->ssl);
      if (v != X509_V_OK)
        die("TLS: the dialer's certificate: %s", X509_verify_cert_error_string(v));
      tls_fail("handshake");
    }
  }
  char *req = NULL;
  int n = asprintf(&req,
                   "CONNECT %s/proxy/%s HTTP/1.1\r\nHost: %s%s%s\r\nUser-Agent: h2rev-connect\r\n"
                   "%s%s%s\r\n",
                   u->base, id, strchr(u->host, ':') ? "[" : "", u->host,
                   strchr(u->host, ':') ? "]" : "", token ? "Authorization: Bearer " : "",
                   token ? token : "", token ? "\r\n" : "");
  if (n < 0)
    die("out of memory");
  if (c_write_all(c, req, (size_t)n) != 0)
    die("cannot send the CONNECT request");
  free(req);
  char head[HEAD_MAX + 1];
  size_t len = 0;
  char *end = NULL;
  while (end == NULL) {
    if (len == HEAD_MAX)
      die("the dialer's answer head is over %u bytes", HEAD_MAX);
    ssize_t r = c_read(c, head + len, HEAD_MAX - len);
    if (r <= 0)
      die("the dialer closed the connection before answering%s",
          r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? " (timed out)" : "");
    len += (size_t)r;
    head[len] = '\0';
    end = strstr(head, "\r\n\r\n");
  }
  int status = 0;
  if (sscanf(head, "HTTP/1.%*d %d", &status) != 1)
    die("not an HTTP answer from the dialer");
  if (status != 200) {
    /* The body of a dialer's error says what went wrong. */
    char *body = end + 4;
    size_t bl = strcspn(body, "\r\n");
    *strchr(head, '\r') = '\0';
    die("CONNECT refused: %s%s%.*s", head, bl ? ": " : "", (int)bl, body);
  }
  tv.tv_sec = 0;
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  size_t rest = len - (size_t)(end + 4 - head);
  if (rest > 0 && fd_write_all(out, end + 4, rest) != 0)
    exit(1);
}

/* Our end of the tunnel, sent once what was read is out: TLS close_notify
 * (written whole, so the socket blocks for it), then a FIN. */
static void half_close(conn_t *c) {
  if (c->ssl != NULL) {
    int fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
    SSL_shutdown(c->ssl);
    fcntl(c->fd, F_SETFL, fl);
  }
  shutdown(c->fd, SHUT_WR);
}

/* Bytes both ways until the service ends its side. The tunnel's socket
 * does not block: with an echoing service, a write to it that waits while
 * nobody reads what comes back would wait for ever. The local side may
 * block: its peer (ssh, a client socket) reads and writes independently. */
static int pump(conn_t *c, int in, int out) {
  static char ubuf[PUMP_BUF], dbuf[PUMP_BUF];
  size_t dlen = 0, doff = 0;
  bool in_open = true, shut = false, r_wants_write = false, w_wants_read = false;
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  for (;;) {
    bool pending = c->ssl != NULL && SSL_pending(c->ssl) > 0;
    short ev = r_wants_write ? POLLOUT : POLLIN;
    if (dlen > 0)
      ev |= w_wants_read ? POLLIN : POLLOUT;
    struct pollfd pf[2] = {{in, in_open && dlen == 0 ? POLLIN : 0, 0}, {c->fd, ev, 0}};
    if (poll(pf, 2, pending ? 0 : -1) < 0) {
      if (errno == EINTR)
        continue;
      return 1;
    }
    if (pf[0].revents) {
      ssize_t r = read(in, dbuf, sizeof(dbuf));
      if (r > 0) {
        dlen = (size_t)r;
        doff = 0;
      } else if (r == 0 || errno != EINTR) {
        in_open = false;
      }
    }
    if (dlen > 0) {
      ssize_t w;
      if (c->ssl != NULL) {
        int r = SSL_write(c->ssl, dbuf + doff, (int)(dlen - doff));
        int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
        w_wants_read = e == SSL_ERROR_WANT_READ;
        if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
          return 1;
        w = r > 0 ? r : 0;
      } else {
        w = send(c->fd, dbuf + doff, dlen - doff, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          return 1;
        w = w < 0 ? 0 : w;
      }
      doff += (size_t)w;
      if (doff == dlen)
        dlen = doff = 0;
    }
    if (!in_open && dlen == 0 && !shut) {
      /* Half-close: the service sees the end and may still answer. */
      shut = true;
      half_close(c);
    }
    if (pf[1].revents || pending) {
      ssize_t r;
      if (c->ssl != NULL) {
        int n = SSL_read(c->ssl, ubuf, sizeof(ubuf));
        int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
        r_wants_write = e == SSL_ERROR_WANT_WRITE;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
          continue;
        r = e == SSL_ERROR_NONE ? n : e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
      } else {
        r = recv(c->fd, ubuf, sizeof(ubuf), 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
          continue;
      }
      if (r > 0) {
        if (fd_write_all(out, ubuf, (size_t)r) != 0)
          return 1;
        continue;
      }
      if (r < 0) {
        /* A reset: the tunnel was cut, not ended. */
        fprintf(stderr, "%s: the tunnel was cut (connection reset)\n", prog);
        return 1;
      }
      /* The service ended: nothing more it could be sent matters. */
      if (out == in)
        shutdown(out, SHUT_WR);
      else
        close(out);
      return 0;
    }
  }
}

static int run(const url_t *u, SSL_CTX *ctx, const char *id, const char *token, int in, int out) {
  conn_t c;
  open_tunnel(&c, u, ctx, id, token, out);
  int r = pump(&c, in, out);
  close(c.fd);
  release();
  return r;
}

static int listen_on(const char *spec) {
  char host[HOST_MAX];
  const char *colon = strrchr(spec, ':');
  if (colon == NULL || (size_t)(colon - spec) >= sizeof(host))
    die("--listen wants ADDR:PORT: %s", spec);
  memcpy(host, spec, (size_t)(colon - spec));
  host[colon - spec] = '\0';
  char *h = host;
  if (h[0] == '[' && h[strlen(h) - 1] == ']') {
    h[strlen(h) - 1] = '\0';
    h++;
  }
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
  int r = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &res);
  if (r != 0)
    die("--listen %s: %s", spec, gai_strerror(r));
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0)
    die("--listen %s: %s", spec, strerror(errno));
  freeaddrinfo(res);
  return fd;
}

int main(int argc, char **argv) {
  const char *ca = NULL, *token = NULL, *listen_spec = NULL, *pos[2] = {NULL, NULL};
  bool insecure = false;
  int npos = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--version") == 0) {
      printf("%s %s\n", prog, H2REV_CONNECT_VERSION);
      return 0;
    } else if (strcmp(a, "--insecure") == 0) {
      insecure = true;
    } else if (strcmp(a, "--ca") == 0 || strcmp(a, "--token") == 0 || strcmp(a, "--listen") == 0) {
      if (i + 1 >= argc)
        die("%s wants a value", a);
      const char **dst = a[2] == 'c' ? &ca : a[2] == 't' ? &token : &listen_spec;
      *dst = argv[++i];
    } else if ((a[0] == '-' && a[1] != '\0') || npos == 2) {
      usage(stderr);
      fprintf(stderr, "%s: %s %s\n", prog, npos == 2 ? "too many arguments:" : "unknown option", a);
      return 2;
    } else {
      pos[npos++] = a;
    }
  }
  if (npos != 2) {
    usage(stderr);
    return 2;
  }
  url_t u;
  parse_url(pos[0], &u);
  if (!id_ok(pos[1]))
    die("bad listener id: %s", pos[1]);
  if (token != NULL && strpbrk(token, "\r\n") != NULL)
    die("bad token");
  signal(SIGPIPE, SIG_IGN);
  SSL_CTX *ctx = g_ctx = u.tls ? make_ctx(ca, insecure) : NULL;
  if (listen_spec == NULL)
    return run(&u, ctx, pos[1], token, 0, 1);
  int lfd = listen_on(listen_spec);
  signal(SIGCHLD, SIG_IGN); /* children reaped by the kernel */
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
        continue;
      die("accept: %s", strerror(errno));
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(lfd);
      _exit(run(&u, ctx, pos[1], token, fd, fd));
    }
    if (pid < 0)
      fprintf(stderr, "%s: fork: %s\n", prog, strerror(errno));
    close(fd);
  }
}
