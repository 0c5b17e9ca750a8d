/* h2rev-dialer: the public server. Serves <base>/revdial for listeners and
 * <base>/proxy/<id>/<path> for clients, over HTTP/2 (TLS, or cleartext with
 * prior knowledge). */
#include "admin.h"
#include "ops.h"
#include "selfsigned.h"
#include "tool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

static const char usage[] =
    "usage: h2rev-dialer [options]\n"
    "  --listen HOST:PORT   address to serve on (default 127.0.0.1:8443)\n"
    "  --cert FILE --key FILE\n"
    "                       TLS certificate and key; without them a self-signed\n"
    "                       certificate is made at start (see --self-signed-dir)\n"
    "  --self-signed-dir D  where the made certificate is written (default .); one\n"
    "                       left there by an earlier run is reused while it is\n"
    "                       good and names every name below\n"
    "  --self-signed-names NAME,...\n"
    "                       DNS names and IP addresses the self-signed certificate\n"
    "                       names besides localhost, 127.0.0.1, ::1, the host name\n"
    "                       and the --listen address (every interface's address\n"
    "                       for 0.0.0.0 or [::]); may be repeated\n"
    "  --cleartext          HTTP/2 without TLS (prior knowledge; behind a TLS proxy)\n"
    "  --base-path PATH     mount point, e.g. /reverse/connections (default none)\n"
    "  --token TOKEN        listeners must send Authorization: Bearer TOKEN (visible\n"
    "                       in ps: prefer one of the next two)\n"
    "  --token-file FILE    the token is the first line of FILE\n"
    "                       without either flag, the environment's H2REV_TOKEN\n"
    "                       is the token, if set\n"
    "  --tokens-file FILE   per-id tokens, one \"ID TOKEN\" a line (# comments);\n"
    "                       a listener must send its id's token (or the --token one)\n"
    "  --client-ca FILE     listeners must present a certificate from this CA whose\n"
    "                       common name equals their id (403 otherwise); clients of\n"
    "                       /proxy/ and /healthz need none (one they present must\n"
    "                       be from this CA)\n"
    "  --dial-timeout MS    wait for a reverse connection (default 10000)\n"
    "  --max-connections N  connections open at once; at the limit new ones wait\n"
    "                       in the kernel's backlog (default 16384)\n"
    "  --max-client-streams N\n"
    "                       proxied requests open at once on one client\n"
    "                       connection; over it: 429 (default 100)\n"
    "  --max-pending-dials N\n"
    "                       requests waiting for a reverse connection of one id;\n"
    "                       over it: 503 (default 16384)\n"
    "  --max-streams N      streams open at once on one listener's connection:\n"
    "                       the reverse connections in use, and so its requests\n"
    "                       served at once; the rest wait (default 1000)\n"
    "  --body-timeout MS    a request that announced a body must start it within\n"
    "                       MS: 408 (default 30000)\n"
    "  --response-timeout MS\n"
    "                       the listener must send the response head within MS\n"
    "                       of the request's end: 504 (default 60000)\n"
    "  --send-timeout MS    a client that takes none of its response for MS (an\n"
    "                       HTTP/2 window left at 0, a socket never read) is\n"
    "                       cut: RST_STREAM or the connection closed (default\n"
    "                       60000)\n"
    "  --no-rewrite         pass Location and Set-Cookie paths as the upstream\n"
    "                       wrote them (default: /PATH becomes\n"
    "                       BASE/proxy/ID/PATH, as nginx's proxy_redirect does)\n"
    "  --tcp ADDR:PORT=ID   a raw TCP port: each connection to ADDR:PORT is\n"
    "                       dialed to listener ID and spliced to it, bytes\n"
    "                       unchanged (the listener forwards to a tcp:// upstream);\n"
    "                       may be repeated\n"
    "  --tcp-max-conns N    connections open at once on each --tcp port; over it\n"
    "                       a new one is accepted and closed (default 1024)\n"
    "  --drain-timeout MS   on SIGINT/SIGTERM: stop listening, let requests in\n"
    "                       flight finish for up to MS, then exit (default 10000)\n"
    "  --drain-delay MS     on SIGINT/SIGTERM: first answer /healthz with 503 for MS\n"
    "                       (a load balancer's health check takes the replica out)\n"
    "                       while serving on, then drain (default 0)\n"
    "  --access-log FILE    one line per finished request (time, peer, method,\n"
    "                       path, proto, status, bytes, in, ms, result,\n"
    "                       listener), appended to FILE; - for standard output;\n"
    "                       SIGHUP opens FILE again (log rotation)\n"
    "  --log-format FORMAT  of the access log: text (logfmt, default) or json\n"
    "                       (one object a line)\n"
    "  --metrics ADDR:PORT  serve /metrics (Prometheus text format), /healthz,\n"
    "                       /readyz (200 while serving, 503 once draining) and\n"
    "                       /listeners (the attached ids, JSON) there, cleartext\n"
    "                       (keep it on loopback, e.g. 127.0.0.1:9090)\n"
    "  --replica-id NAME    this dialer's name among several behind one load\n"
    "                       balancer (default: 8 random hex digits), sent to\n"
    "                       listeners so that they attach to each replica\n"
    "  --replicas N         how many replicas there are: a listener given the load\n"
    "                       balancer's URL keeps one connection to each\n"
    "                       (default: not said, one connection)\n"
    "  --workers N          N processes serving the --listen port (SO_REUSEPORT: the\n"
    "                       kernel spreads the connections), each a replica: its\n"
    "                       id is --replica-id's (or a random one) with -wI added,\n"
    "                       and --replicas counts them (N times --replicas);\n"
    "                       signals go to every one; one that dies is restarted;\n"
    "                       worker I serves --metrics on its PORT+I (default 1)\n"
    "  --log-level LEVEL    error, warn, info (default), debug\n"
    "  --help, --version\n"
    "SIGHUP reads --cert, --key, --client-ca, --tokens-file and --token-file again\n"
    "for new connections (those open keep theirs); a file that does not load is\n"
    "logged and what it would replace stays in use.\n"
    "Under systemd (Type=notify) it tells READY=1 once serving, RELOADING=1 and\n"
    "READY=1 around a reload, STOPPING=1 when it drains.\n";

/* --max-pending-dials and --max-streams: at most these (a queue of dials
 * costs a request object each; nghttp2 holds a stream's state each). */
#define MAX_PENDING_LIMIT (1u << 20)
#define MAX_STREAMS_LIMIT (1u << 20)
/* --replica-id and --replicas: the library's limits (include/h2rev.h). */
#define REPLICA_ID_MAX 64
#define REPLICAS_LIMIT 1024
/* --workers: at most this many processes. */
#define WORKERS_MAX 64
/* A worker that dies this soon after its start is restarted after as long. */
#define WORKER_RESTART_MS 1000

static uv_loop_t *loop;

/* --------------------------------------------------------------- workers */

static unsigned port_of(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static void set_port(struct sockaddr_storage *ss, unsigned port) {
  if (ss->ss_family == AF_INET6)
    ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

static pid_t worker_pid[WORKERS_MAX];
static uint64_t worker_started[WORKERS_MAX];
static sigset_t worker_sigs, worker_oldmask;

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* 0 in the parent; in the new worker it does not return. */
static pid_t worker_spawn(unsigned w, unsigned *child_w) {
  pid_t p = fork();
  if (p < 0)
    tool_fatal("--workers: fork: %s", strerror(errno));
  if (p == 0) {
    /* A worker outlives no supervisor: its SIGTERM is a drain. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    sigprocmask(SIG_SETMASK, &worker_oldmask, NULL);
    *child_w = w;
    return 0;
  }
  worker_pid[w] = p;
  worker_started[w] = mono_ms();
  return p;
}

/* The supervisor of --workers N: returns the worker's index in each worker;
 * the supervisor itself passes SIGTERM, SIGINT and SIGHUP on to them,
 * restarts one that dies unasked, and exits when they all have after a
 * SIGTERM or SIGINT (with the worst status among them). */
static unsigned supervise(unsigned n) {
  sigemptyset(&worker_sigs);
  sigaddset(&worker_sigs, SIGTERM);
  sigaddset(&worker_sigs, SIGINT);
  sigaddset(&worker_sigs, SIGHUP);
  sigaddset(&worker_sigs, SIGCHLD);
  sigprocmask(SIG_BLOCK, &worker_sigs, &worker_oldmask);
  unsigned w = 0;
  for (unsigned i = 0; i < n; i++)
    if (worker_spawn(i, &w) == 0)
      return w;
  tool_logf(H2REV_LOG_INFO, "%u workers started", n);
  bool stopping = false;
  unsigned alive = n;
  int status = 0;
  while (alive > 0) {
    int sig = 0;
    if (sigwait(&worker_sigs, &sig) != 0)
      continue;
    if (sig != SIGCHLD) {
      if (sig != SIGHUP)
        stopping = true;
      for (unsigned i = 0; i < n; i++)
        if (worker_pid[i] > 0)
          kill(worker_pid[i], sig);
      continue;
    }
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
      unsigned i = 0;
      while (i < n && worker_pid[i] != p)
        i++;
      if (i == n)
        continue;
      worker_pid[i] = 0;
      alive--;
      int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (stopping) {
        if (code > status)
          status = code;
        continue;
      }
      tool_logf(H2REV_LOG_ERROR, "worker %u (pid %d) %s %d: restarting it", i, (int)p,
                WIFEXITED(st) ? "exited with" : "killed by signal",
                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
      uint64_t lived = mono_ms() - worker_started[i];
      if (lived < WORKER_RESTART_MS) {
        struct timespec ts = {0, (long)(WORKER_RESTART_MS - lived) * 1000000L};
        nanosleep(&ts, NULL);
      }
      if (worker_spawn(i, &w) == 0)
        return w;
      alive++;
    }
  }
  tool_logf(H2REV_LOG_INFO, "workers stopped");
  exit(status);
}
static h2rev_dialer_t dialer;
static char *token; /* --token, --token-file or H2REV_TOKEN */
static bool check_cn;
/* What SIGHUP reads again. */
static struct {
  const char *cert, *key, *client_ca, *tokens_file, *token_file;
  bool tls;
} files;
static unsigned drain_timeout = 10000;

/* --tokens-file: "id token" pairs; an id may have several (rotation). */
typedef struct {
  char *id, *token;
} id_token_t;
typedef struct {
  id_token_t *v;
  size_t n;
} token_set_t;
static token_set_t tokens;
static bool have_tokens_file;

static void tokens_free(token_set_t *t) {
  for (size_t i = 0; i < t->n; i++) {
    OPENSSL_cleanse(t->v[i].token, strlen(t->v[i].token));
    free(t->v[i].id);
    free(t->v[i].token);
  }
  free(t->v);
  t->v = NULL;
  t->n = 0;
}

/* 0, or -1 with why set and *out left empty. */
static int tokens_read(const char *path, token_set_t *out, char *why, size_t wlen) {
  out->v = NULL;
  out->n = 0;
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    snprintf(why, wlen, "cannot read tokens file %s: %s", path, strerror(errno));
    return -1;
  }
  /* Lines as long as they come: an id and a token of up to TOOL_SECRET_MAX. */
  char *line = NULL;
  size_t cap = 0;
  unsigned lineno = 0;
  int rc = 0;
  while (rc == 0 && getline(&line, &cap, f) != -1) {
    lineno++;
    char *save = NULL;
    char *id = strtok_r(line, " \t\r\n", &save);
    if (id == NULL || id[0] == '#')
      continue; /* blank or comment */
    char *tok = strtok_r(NULL, " \t\r\n", &save);
    char *extra = strtok_r(NULL, " \t\r\n", &save);
    if (tok == NULL || extra != NULL) {
      snprintf(why, wlen, "%s:%u: expected \"ID TOKEN\"", path, lineno);
      rc = -1;
      break;
    }
    if (strlen(tok) > TOOL_SECRET_MAX) {
      snprintf(why, wlen, "%s:%u: a token is at most %d characters", path, lineno, TOOL_SECRET_MAX);
      rc = -1;
      break;
    }
    id_token_t *t = realloc(out->v, (out->n + 1) * sizeof(*t));
    char *idc = strdup(id), *tokc = strdup(tok);
    if (t != NULL)
      out->v = t;
    if (t == NULL || idc == NULL || tokc == NULL) {
      free(idc);
      free(tokc);
      snprintf(why, wlen, "out of memory reading %s", path);
      rc = -1;
      break;
    }
    out->v[out->n].id = idc;
    out->v[out->n].token = tokc;
    out->n++;
  }
  if (rc == 0 && ferror(f)) {
    snprintf(why, wlen, "cannot read tokens file %s: %s", path, strerror(errno));
    rc = -1;
  }
  if (line != NULL)
    OPENSSL_cleanse(line, cap);
  free(line);
  fclose(f);
  if (rc != 0)
    tokens_free(out);
  return rc;
}

/* Equal strings, in a time that does not depend on where they differ. */
static bool secret_eq(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  return la == lb && CRYPTO_memcmp(a, b, la) == 0;
}

static int authorize(void *arg, const char *id, const h2rev_header_t *h, size_t n,
                     const h2rev_peer_t *peer) {
  (void)arg;
  if (token != NULL || have_tokens_file) {
    const char *got = NULL;
    for (size_t i = 0; i < n; i++) /* the scheme is case-insensitive (RFC 9110 11.1) */
      if (strcmp(h[i].name, "authorization") == 0 && strncasecmp(h[i].value, "bearer ", 7) == 0)
        got = h[i].value + 7 + strspn(h[i].value + 7, " ");
    bool ok = got != NULL && token != NULL && secret_eq(got, token);
    for (size_t i = 0; got != NULL && i < tokens.n; i++)
      if (strcmp(tokens.v[i].id, id) == 0 && secret_eq(got, tokens.v[i].token))
        ok = true;
    if (!ok)
      return -1;
  }
  if (check_cn) {
    if (peer->cert_cn == NULL || strcmp(peer->cert_cn, id) != 0)
      return -1;
  }
  return 0;
}

/* The names of the self-signed certificate: the host name (the first: the
 * common name), the address served on, localhost and the loopback addresses,
 * each interface's address when serving on a wildcard. */
static void default_names(ss_names_t *names, const struct sockaddr_storage *addr) {
  char host[256];
  if (gethostname(host, sizeof(host)) == 0) {
    host[sizeof(host) - 1] = '\0';
    ss_names_add(names, host); /* skipped when it is not a DNS name */
  }
  char ip[INET6_ADDRSTRLEN];
  bool wildcard = addr->ss_family == AF_INET
                      ? ((const struct sockaddr_in *)addr)->sin_addr.s_addr == htonl(INADDR_ANY)
                      : IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)addr)->sin6_addr);
  if (!wildcard && uv_ip_name((const struct sockaddr *)addr, ip, sizeof(ip)) == 0)
    ss_names_add(names, ip);
  ss_names_add(names, "localhost");
  ss_names_add(names, "127.0.0.1");
  ss_names_add(names, "::1");
  uv_interface_address_t *ifs;
  int nifs;
  if (wildcard && uv_interface_addresses(&ifs, &nifs) == 0) {
    for (int i = 0; i < nifs; i++) {
      const struct sockaddr *a = (const struct sockaddr *)&ifs[i].address;
      /* A link-local address needs a scope no URL of a listener carries. */
      if (a->sa_family == AF_INET6 && IN6_IS_ADDR_LINKLOCAL(&ifs[i].address.address6.sin6_addr))
        continue;
      if (uv_ip_name(a, ip, sizeof(ip)) == 0)
        ss_names_add(names, ip);
    }
    uv_free_interface_addresses(ifs, nifs);
  }
}

/* --self-signed-names a,b,c */
static void add_names(ss_names_t *names, const char *list) {
  char buf[4096];
  if (snprintf(buf, sizeof(buf), "%s", list) >= (int)sizeof(buf))
    tool_usage_error("--self-signed-names: too long");
  char *save = NULL;
  for (char *n = strtok_r(buf, ", ", &save); n != NULL; n = strtok_r(NULL, ", ", &save)) {
    int r = ss_names_add(names, n);
    if (r == -1)
      tool_usage_error("--self-signed-names: \"%s\" is neither a DNS name nor an IP address", n);
    if (r == -2)
      tool_usage_error("--self-signed-names: more than %d names", SS_MAX_NAMES);
  }
}

static h2rev_tls_options_t tls_options(void) {
  h2rev_tls_options_t tls = {.cert_file = files.cert, .key_file = files.key};
  if (files.client_ca != NULL) {
    tls.ca_file = files.client_ca;
    /* Proxy clients and health checks on the same port need none. */
    tls.verify_client = H2REV_VERIFY_CLIENT_REQUEST;
  }
  return tls;
}

/* SIGHUP: certificate, key, client CA, tokens file and token file read
 * again; connections open keep what they have. A file that does not load
 * leaves what it was to replace in use. */
static void reload_files(void) {
  char why[512];
  if (files.tokens_file != NULL) {
    token_set_t t;
    if (tokens_read(files.tokens_file, &t, why, sizeof(why)) != 0) {
      tool_logf(H2REV_LOG_ERROR, "reload: %s: the %zu tokens in use are kept", why, tokens.n);
    } else {
      tokens_free(&tokens);
      tokens = t;
      tool_logf(H2REV_LOG_INFO, "reload: %zu tokens from %s", tokens.n, files.tokens_file);
    }
  }
  if (files.token_file != NULL) {
    char *t;
    if (tool_read_secret(files.token_file, &t, why, sizeof(why)) != 0) {
      tool_logf(H2REV_LOG_ERROR, "reload: --token-file: %s: the token in use is kept", why);
    } else {
      OPENSSL_cleanse(token, strlen(token));
      free(token);
      token = t;
      tool_logf(H2REV_LOG_INFO, "reload: token from %s", files.token_file);
    }
  }
  if (files.tls) {
    h2rev_tls_options_t tls = tls_options();
    tool_capture(why, sizeof(why));
    int r = h2rev_dialer_set_tls(&dialer, &tls);
    tool_capture_end();
    if (r != 0)
      tool_logf(H2REV_LOG_ERROR, "reload: %s: the certificate in use is kept",
                why[0] ? why : h2rev_strerror(r));
    else
      tool_logf(H2REV_LOG_INFO, "reload: certificate %s, key %s%s%s: for new connections",
                files.cert, files.key, files.client_ca ? ", client CA " : "",
                files.client_ca ? files.client_ca : "");
  }
}

static void reload(void) {
  admin_notify_reloading();
  reload_files();
  admin_log_reopen();
  admin_notify("READY=1");
}

/* ------------------------------------------------------------ --tcp */

#define TCP_PORTS_MAX       64
#define TCP_MAX_CONNS       1024 /* --tcp-max-conns default */
#define TCP_MAX_CONNS_LIMIT (1u << 20)

typedef struct tcp_port {
  uv_tcp_t server;
  const char *addr, *id; /* the flag's, in argv */
  unsigned open;
} tcp_port_t;

typedef struct tcp_conn {
  uv_tcp_t t;
  h2rev_stream_t s;
  h2rev_dial_t dial;
  tcp_port_t *port;
  char peer[64];
} tcp_conn_t;

static tcp_port_t tcp_ports[TCP_PORTS_MAX];
static unsigned ntcp_ports;
static unsigned tcp_max_conns = TCP_MAX_CONNS;

static void tcp_conn_closed(uv_handle_t *h) {
  tcp_conn_t *c = TOOL_CONTAINER_OF(h, tcp_conn_t, t);
  c->port->open--;
  free(c);
}

static void tcp_spliced(h2rev_stream_t *s, uv_tcp_t *t, int status) {
  (void)s;
  tcp_conn_t *c = TOOL_CONTAINER_OF(t, tcp_conn_t, t);
  if (status == 0)
    tool_logf(H2REV_LOG_DEBUG, "tcp %s -> %s: %s: ended", c->port->addr, c->port->id, c->peer);
  else
    tool_logf(H2REV_LOG_INFO, "tcp %s -> %s: %s: aborted: %s (%s)", c->port->addr, c->port->id,
              c->peer, h2rev_strerror(status), h2rev_err_name(status));
  tcp_conn_closed((uv_handle_t *)t);
}

static void tcp_dialed(h2rev_dial_t *req, int status) {
  tcp_conn_t *c = TOOL_CONTAINER_OF(req, tcp_conn_t, dial);
  if (status == 0) {
    h2rev_splice_options_t so = {0};
    status = h2rev_stream_splice_tcp_open(&c->s, &c->t, &so, tcp_spliced);
    if (status == 0)
      return;
    h2rev_stream_close(&c->s, NULL);
  }
  if (status == H2REV_ENOLISTENER)
    tool_logf(H2REV_LOG_WARN, "tcp %s -> %s: %s: no listener attached as %s: connection closed",
              c->port->addr, c->port->id, c->peer, c->port->id);
  else if (status != UV_ECANCELED)
    tool_logf(H2REV_LOG_WARN, "tcp %s -> %s: %s: dial failed: %s: connection closed", c->port->addr,
              c->port->id, c->peer, h2rev_dial_strerror(req));
  /* An abort, not a clean end: the client was told nothing. */
  if (uv_tcp_close_reset(&c->t, tcp_conn_closed) != 0)
    uv_close((uv_handle_t *)&c->t, tcp_conn_closed);
}

static void tcp_refused_closed(uv_handle_t *h) {
  free(h);
}

static void tcp_accept(uv_stream_t *server, int status) {
  tcp_port_t *p = TOOL_CONTAINER_OF(server, tcp_port_t, server);
  if (status != 0) {
    tool_logf(H2REV_LOG_WARN, "tcp %s: accept: %s", p->addr, uv_strerror(status));
    return;
  }
  if (p->open >= tcp_max_conns) {
    /* Taken off the backlog and closed: a client waiting there would
     * only time out later. */
    uv_tcp_t *t = malloc(sizeof(*t));
    if (t == NULL)
      return;
    uv_tcp_init(loop, t);
    if (uv_accept(server, (uv_stream_t *)t) == 0)
      tool_logf(H2REV_LOG_WARN,
                "tcp %s -> %s: %u connections open (--tcp-max-conns): new one closed", p->addr,
                p->id, p->open);
    uv_close((uv_handle_t *)t, tcp_refused_closed);
    return;
  }
  tcp_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return;
  c->port = p;
  p->open++;
  uv_tcp_init(loop, &c->t);
  if (uv_accept(server, (uv_stream_t *)&c->t) != 0) {
    uv_close((uv_handle_t *)&c->t, tcp_conn_closed);
    return;
  }
  struct sockaddr_storage peer;
  int len = sizeof(peer);
  if (uv_tcp_getpeername(&c->t, (struct sockaddr *)&peer, &len) == 0)
    tool_format_addr((struct sockaddr *)&peer, c->peer, sizeof(c->peer));
  tool_logf(H2REV_LOG_DEBUG, "tcp %s -> %s: connection from %s", p->addr, p->id, c->peer);
  int r = h2rev_dial(&c->dial, &dialer, p->id, &c->s, 0, tcp_dialed);
  if (r != 0) {
    tool_logf(H2REV_LOG_WARN, "tcp %s -> %s: %s", p->addr, p->id, h2rev_strerror(r));
    uv_close((uv_handle_t *)&c->t, tcp_conn_closed);
  }
}

/* --tcp ADDR:PORT=ID */
static void tcp_listen(const char *spec) {
  if (ntcp_ports == TCP_PORTS_MAX)
    tool_usage_error("--tcp: more than %d ports", TCP_PORTS_MAX);
  const char *eq = strrchr(spec, '=');
  char addr[300];
  if (eq == NULL || eq == spec || eq[1] == '\0' || (size_t)(eq - spec) >= sizeof(addr))
    tool_usage_error("--tcp: \"%s\" is not ADDR:PORT=ID", spec);
  memcpy(addr, spec, (size_t)(eq - spec));
  addr[eq - spec] = '\0';
  struct sockaddr_storage ss;
  if (tool_parse_hostport(addr, &ss) != 0)
    tool_usage_error("--tcp: \"%s\" is not ADDR:PORT=ID", spec);
  tcp_port_t *p = &tcp_ports[ntcp_ports++];
  p->id = eq + 1;
  p->addr = strndup(addr, sizeof(addr));
  if (p->addr == NULL)
    tool_fatal("out of memory");
  uv_tcp_init(loop, &p->server);
  int r = uv_tcp_bind(&p->server, (struct sockaddr *)&ss, 0);
  if (r == 0)
    r = uv_listen((uv_stream_t *)&p->server, 511, tcp_accept);
  if (r != 0)
    tool_fatal("--tcp %s: cannot listen: %s", spec, uv_strerror(r));
  tool_logf(H2REV_LOG_INFO, "tcp %s: each connection is spliced to listener %s", addr, p->id);
}

/* Draining: no new TCP connections; those open go on as the dialer's
 * other streams do. */
static void tcp_close_ports(void) {
  for (unsigned i = 0; i < ntcp_ports; i++) {
    uv_close((uv_handle_t *)&tcp_ports[i].server, NULL);
  }
}

static void tcp_free_ports(void) {
  for (unsigned i = 0; i < ntcp_ports; i++)
    free((char *)tcp_ports[i].addr);
}

static void closed(h2rev_dialer_t *d) {
  (void)d;
  admin_stop();
  tool_signals_close();
}

static void drain_now(void) {
  tool_logf(H2REV_LOG_INFO, "draining for up to %u ms", drain_timeout);
  tool_watchdog(loop, drain_timeout + 5000);
  admin_notify("STOPPING=1");
  ops_draining();
  tcp_close_ports();
  if (h2rev_dialer_shutdown(&dialer, drain_timeout, closed) != 0)
    h2rev_dialer_close(&dialer, closed);
}

static unsigned drain_delay;
static uv_timer_t drain_delay_timer;

static void drain_delay_done(uv_timer_t *t) {
  uv_close((uv_handle_t *)t, NULL);
  drain_now();
}

/* --drain-delay: /healthz fails first, so that a load balancer stops
 * sending connections before the port closes (one in its backlog then
 * would be reset). */
static void drain(void) {
  if (drain_delay == 0) {
    drain_now();
    return;
  }
  tool_logf(H2REV_LOG_INFO, "/healthz answers 503: draining in %u ms", drain_delay);
  h2rev_dialer_set_healthy(&dialer, 0);
  uv_timer_init(loop, &drain_delay_timer);
  uv_timer_start(&drain_delay_timer, drain_delay_done, drain_delay, 0);
}

/* The library reads 0 as "the default": a flag given 0 is refused instead. */
static unsigned positive(const char *flag, unsigned v) {
  if (v == 0)
    tool_usage_error("%s must be positive", flag);
  return v;
}

int main(int argc, char **argv) {
  tool_name = "h2rev-dialer";
  const char *listen = "127.0.0.1:8443", *cert = NULL, *key = NULL, *base = "";
  const char *client_ca = NULL, *ssdir = ".";
  bool cleartext = false;
  unsigned dial_timeout = 10000;
  h2rev_dialer_options_t o = {0};
  unsigned workers = 1;
  const char *tokens_file = NULL, *token_flag = NULL, *token_file = NULL;
  const char *tcp_specs[TCP_PORTS_MAX];
  size_t ntcp_specs = 0;
  const char *name_lists[SS_MAX_NAMES];
  size_t nname_lists = 0;
  const char *access_log = NULL, *metrics = NULL, *log_format = NULL;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      tool_help(usage);
      return 0;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("h2rev-dialer %s\n", h2rev_version());
      return 0;
    } else if (strcmp(argv[i], "--cleartext") == 0) {
      cleartext = true;
    } else if (strcmp(argv[i], "--no-rewrite") == 0) {
      o.no_rewrite = 1;
    } else if ((v = tool_flag(argc, argv, &i, "--listen")) != NULL) {
      listen = v;
    } else if ((v = tool_flag(argc, argv, &i, "--cert")) != NULL) {
      cert = v;
    } else if ((v = tool_flag(argc, argv, &i, "--key")) != NULL) {
      key = v;
    } else if ((v = tool_flag(argc, argv, &i, "--self-signed-dir")) != NULL) {
      ssdir = v;
    } else if ((v = tool_flag(argc, argv, &i, "--self-signed-names")) != NULL) {
      if (nname_lists == SS_MAX_NAMES)
        tool_usage_error("--self-signed-names: more than %d names", SS_MAX_NAMES);
      name_lists[nname_lists++] = v;
    } else if ((v = tool_flag(argc, argv, &i, "--base-path")) != NULL) {
      base = v;
    } else if ((v = tool_flag(argc, argv, &i, "--token")) != NULL) {
      token_flag = v;
    } else if ((v = tool_flag(argc, argv, &i, "--token-file")) != NULL) {
      token_file = v;
    } else if ((v = tool_flag(argc, argv, &i, "--tokens-file")) != NULL) {
      tokens_file = v;
    } else if ((v = tool_flag(argc, argv, &i, "--drain-timeout")) != NULL) {
      drain_timeout = tool_parse_ms("--drain-timeout", v);
    } else if ((v = tool_flag(argc, argv, &i, "--drain-delay")) != NULL) {
      drain_delay = tool_parse_ms("--drain-delay", v);
    } else if ((v = tool_flag(argc, argv, &i, "--client-ca")) != NULL) {
      client_ca = v;
    } else if ((v = tool_flag(argc, argv, &i, "--dial-timeout")) != NULL) {
      dial_timeout = tool_parse_ms("--dial-timeout", v);
      if (dial_timeout == 0)
        tool_usage_error("--dial-timeout must be a positive number of milliseconds");
    } else if ((v = tool_flag(argc, argv, &i, "--max-connections")) != NULL) {
      o.max_connections =
          positive("--max-connections", tool_parse_count("--max-connections", v, 1u << 20));
    } else if ((v = tool_flag(argc, argv, &i, "--max-client-streams")) != NULL) {
      o.max_client_streams =
          positive("--max-client-streams", tool_parse_count("--max-client-streams", v, 1u << 16));
    } else if ((v = tool_flag(argc, argv, &i, "--max-pending-dials")) != NULL) {
      o.max_pending_dials = positive("--max-pending-dials",
                                     tool_parse_count("--max-pending-dials", v, MAX_PENDING_LIMIT));
    } else if ((v = tool_flag(argc, argv, &i, "--max-streams")) != NULL) {
      o.max_streams =
          positive("--max-streams", tool_parse_count("--max-streams", v, MAX_STREAMS_LIMIT));
    } else if ((v = tool_flag(argc, argv, &i, "--body-timeout")) != NULL) {
      o.body_timeout_ms = positive("--body-timeout", tool_parse_ms("--body-timeout", v));
    } else if ((v = tool_flag(argc, argv, &i, "--response-timeout")) != NULL) {
      o.response_timeout_ms =
          positive("--response-timeout", tool_parse_ms("--response-timeout", v));
    } else if ((v = tool_flag(argc, argv, &i, "--send-timeout")) != NULL) {
      o.send_timeout_ms = positive("--send-timeout", tool_parse_ms("--send-timeout", v));
    } else if ((v = tool_flag(argc, argv, &i, "--tcp")) != NULL) {
      if (ntcp_specs == TCP_PORTS_MAX)
        tool_usage_error("--tcp: more than %d ports", TCP_PORTS_MAX);
      tcp_specs[ntcp_specs++] = v;
    } else if ((v = tool_flag(argc, argv, &i, "--tcp-max-conns")) != NULL) {
      tcp_max_conns =
          positive("--tcp-max-conns", tool_parse_count("--tcp-max-conns", v, TCP_MAX_CONNS_LIMIT));
    } else if ((v = tool_flag(argc, argv, &i, "--access-log")) != NULL) {
      access_log = v;
    } else if ((v = tool_flag(argc, argv, &i, "--log-format")) != NULL) {
      log_format = v;
    } else if ((v = tool_flag(argc, argv, &i, "--metrics")) != NULL) {
      metrics = v;
    } else if ((v = tool_flag(argc, argv, &i, "--replica-id")) != NULL) {
      if (strlen(v) == 0 || strlen(v) > REPLICA_ID_MAX ||
          strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~:@-") !=
              strlen(v))
        tool_usage_error("--replica-id: \"%s\" is not 1 to %d of A-Z a-z 0-9 . _ ~ : @ -", v,
                         REPLICA_ID_MAX);
      o.replica_id = v;
    } else if ((v = tool_flag(argc, argv, &i, "--replicas")) != NULL) {
      o.replicas = positive("--replicas", tool_parse_count("--replicas", v, REPLICAS_LIMIT));
    } else if ((v = tool_flag(argc, argv, &i, "--workers")) != NULL) {
      workers = positive("--workers", tool_parse_count("--workers", v, WORKERS_MAX));
    } else if ((v = tool_flag(argc, argv, &i, "--log-level")) != NULL) {
      tool_log_level = tool_parse_level(v);
    } else {
      tool_usage_error("unknown argument \"%s\"", argv[i]);
    }
  }
  struct sockaddr_storage addr;
  if (tool_parse_hostport(listen, &addr) != 0)
    tool_usage_error("--listen: \"%s\" is not HOST:PORT", listen);
  struct sockaddr_storage maddr;
  if (metrics != NULL && tool_parse_hostport(metrics, &maddr) != 0)
    tool_usage_error("--metrics: \"%s\" is not HOST:PORT (e.g. 127.0.0.1:9090)", metrics);
  int format = log_format != NULL ? admin_parse_format(log_format) : ADMIN_FMT_TEXT;
  if (log_format != NULL && access_log == NULL)
    tool_usage_error("--log-format is the access log's: give --access-log too");
  if ((cert == NULL) != (key == NULL))
    tool_usage_error("--cert and --key go together");
  if (cert != NULL && !tool_readable(cert))
    tool_usage_error("cannot read certificate file %s", cert);
  if (key != NULL && !tool_readable(key))
    tool_usage_error("cannot read key file %s", key);
  if (client_ca != NULL && !tool_readable(client_ca))
    tool_usage_error("cannot read CA file %s", client_ca);
  if (base[0] != '\0' && base[0] != '/')
    tool_usage_error("--base-path must start with /");
  if (tokens_file != NULL) {
    char why[512];
    if (tokens_read(tokens_file, &tokens, why, sizeof(why)) != 0)
      tool_fatal("%s", why);
    have_tokens_file = true;
    if (tokens.n == 0)
      tool_logf(H2REV_LOG_WARN, "%s has no tokens: only --token (if any) is accepted", tokens_file);
  }
  const char *token_from;
  token = tool_token(token_flag, token_file, &token_from);
  if (token != NULL)
    tool_logf(H2REV_LOG_INFO, "listeners must send the token of %s", token_from);

  char scert[1024], skey[1024];
  if (!cleartext && cert == NULL) {
    ss_names_t names;
    ss_names_init(&names);
    default_names(&names, &addr);
    for (size_t i = 0; i < nname_lists; i++)
      add_names(&names, name_lists[i]);
    char why[512], joined[1024];
    int made = ss_make(ssdir, &names, scert, skey, sizeof(scert), why, sizeof(why));
    if (made < 0)
      tool_fatal("cannot make a self-signed certificate: %s", why);
    cert = scert;
    key = skey;
    ss_names_join(&names, joined, sizeof(joined));
    if (made == SS_REPLACED)
      tool_logf(H2REV_LOG_WARN,
                "self-signed certificate %s replaced: %s (listeners need the new one)", cert, why);
    tool_logf(H2REV_LOG_INFO, "self-signed certificate %s %s for %s (listeners: --ca %s)",
              made == SS_REUSED ? "reused from" : "written to", cert, joined, cert);
  } else if (nname_lists > 0) {
    tool_usage_error(
        "--self-signed-names is for the self-signed certificate (not with --cert or --cleartext)");
  }

  if (workers > 1) {
    if (ntcp_specs > 0)
      tool_usage_error("--tcp is not supported with --workers yet");
    if (port_of(&addr) == 0)
      tool_usage_error("--workers needs a port in --listen (not 0)");
    /* Each worker is a replica: the listeners attach to all of them. */
    static char rid[80];
    unsigned w = supervise(workers);
    if (o.replica_id != NULL) {
      snprintf(rid, sizeof(rid), "%s-w%u", o.replica_id, w);
      o.replica_id = rid;
    }
    o.replicas = (o.replicas > 0 ? o.replicas : 1) * workers;
    o.reuse_port = 1;
    if (metrics != NULL)
      set_port(&maddr, (unsigned)(port_of(&maddr) + w));
  }
  loop = uv_default_loop();
  o.base_path = base;
  o.dial_timeout_ms = dial_timeout;
  o.log = (h2rev_logger_t){tool_log, NULL, tool_log_level};
  check_cn = client_ca != NULL;
  if (token != NULL || have_tokens_file || check_cn)
    o.authorize = authorize;
  if (access_log != NULL) {
    /* The proxy's prefix as the library routes it (trailing slashes dropped). */
    char route[512];
    size_t rl = strlen(base);
    while (rl > 0 && base[rl - 1] == '/')
      rl--;
    snprintf(route, sizeof(route), "%.*s/proxy", (int)rl, base);
    ops_access_route(route);
    admin_log_open(loop, access_log, format);
    o.access_log = ops_access_log;
  }
  int r = h2rev_dialer_init(loop, &dialer, &o);
  if (r != 0) {
    fprintf(stderr, "h2rev-dialer: %s\n", h2rev_strerror(r));
    return 2;
  }
  files.cert = cert;
  files.key = key;
  files.client_ca = client_ca;
  files.tokens_file = tokens_file;
  files.token_file = token_file;
  files.tls = !cleartext;
  h2rev_tls_options_t tls = tls_options();
  char why[512];
  tool_capture(why, sizeof(why));
  r = h2rev_dialer_listen(&dialer, (struct sockaddr *)&addr, cleartext ? NULL : &tls);
  tool_capture_end();
  if (r != 0) {
    fprintf(stderr, "h2rev-dialer: cannot serve on %s: %s%s%s\n", listen, h2rev_strerror(r),
            why[0] ? ": " : "", why);
    return r == H2REV_ETLS ? 2 : 1;
  }
  /* The address bound (the port chosen for :0), and the base path as the
   * library mounts it (trailing slashes dropped). */
  struct sockaddr_storage bound;
  int blen = sizeof(bound);
  char where[INET6_ADDRSTRLEN + 16] = "";
  if (h2rev_dialer_getsockname(&dialer, 0, (struct sockaddr *)&bound, &blen) == 0)
    tool_format_addr((struct sockaddr *)&bound, where, sizeof(where));
  size_t bl = strlen(base);
  while (bl > 0 && base[bl - 1] == '/')
    bl--;
  tool_logf(H2REV_LOG_INFO,
            "serving %s on %s: %.*s/revdial?id=ID, %.*s/proxy/ID/PATH and CONNECT ID:PORT",
            cleartext ? "h2c" : "h2 over TLS", where[0] ? where : listen, (int)bl, base, (int)bl,
            base);
  if (o.replicas > 0)
    tool_logf(H2REV_LOG_INFO, "replica %s of %u", h2rev_dialer_replica_id(&dialer), o.replicas);
  else
    tool_logf(H2REV_LOG_INFO, "replica %s", h2rev_dialer_replica_id(&dialer));
  if (metrics != NULL) {
    r = ops_metrics_listen(loop, &dialer, (struct sockaddr *)&maddr);
    if (r != 0) {
      fprintf(stderr, "h2rev-dialer: --metrics %s: cannot serve: %s\n", metrics, h2rev_strerror(r));
      return 1;
    }
    char maddr_s[INET6_ADDRSTRLEN + 16] = "";
    blen = sizeof(bound);
    if (admin_getsockname((struct sockaddr *)&bound, &blen) == 0)
      tool_format_addr((struct sockaddr *)&bound, maddr_s, sizeof(maddr_s));
    tool_logf(H2REV_LOG_INFO, "metrics on http://%s/metrics", maddr_s[0] ? maddr_s : metrics);
  }
  for (size_t i = 0; i < ntcp_specs; i++)
    tcp_listen(tcp_specs[i]);
  unsigned long nofile = tool_raise_nofile();
  if (nofile != 0 && nofile <= 1024)
    tool_logf(H2REV_LOG_WARN,
              "only %lu open files allowed (ulimit -n): each listener and each client "
              "connection takes one; raise the hard limit (LimitNOFILE= in the unit)",
              nofile);
  else if (nofile != 0)
    tool_logf(H2REV_LOG_DEBUG, "open files allowed: %lu", nofile);
  tool_on_signal(loop, drain);
  tool_on_reload(loop, reload);
  /* After the handlers: systemd may send SIGHUP as soon as it is told. */
  admin_notify("READY=1");
  uv_run(loop, UV_RUN_DEFAULT);
  admin_log_close();
  uv_loop_close(loop);
  tcp_free_ports();
  tokens_free(&tokens);
  free(token);
  tool_logf(H2REV_LOG_INFO, "stopped");
  return 0;
}
