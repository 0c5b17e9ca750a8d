/* h2rev-listener: runs behind the NAT. Attaches to a dialer as --id and
 * forwards every reverse connection to the --upstream server: HTTP requests
 * to an http(s):// one, the raw bytes to a tcp:// one. */
#include "admin.h"
#include "tool.h"

#include <netdb.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --url given more than once: the library's default max_attachments. */
#define URLS_MAX 63
/* --max-streams: at most this many (nghttp2 holds a stream's state each). */
#define MAX_STREAMS_LIMIT (1u << 20)

static const char usage[] =
    "usage: h2rev-listener --url URL --upstream URL [options]\n"
    "  --url URL            the dialer's base URL, e.g. https://relay:8443/base\n"
    "                       (http:// for cleartext HTTP/2); may be repeated, one\n"
    "                       per dialer replica; the URL of a load balancer in\n"
    "                       front of dialer replicas that say how many they are\n"
    "                       gets one connection to each\n"
    "  --id ID              the name to attach as (default: the host name)\n"
    "  --upstream URL       where requests go: http://HOST:PORT[/PATH] or https://...;\n"
    "                       tcp://HOST:PORT: each reverse connection is spliced to\n"
    "                       a TCP connection there, bytes unchanged (SSH, databases;\n"
    "                       HOST is resolved once, at start)\n"
    "  --upstream-ca FILE   trust this CA for an https:// upstream (default: system)\n"
    "  --upstream-insecure  do not verify the upstream's certificate\n"
    "  --keep-host          pass the client's Host header (default: the upstream's)\n"
    "  --upstream-idle N    idle keep-alive connections to the upstream kept for\n"
    "                       the next requests (default 256; at least the requests\n"
    "                       in flight at once, or some pay a new connection each)\n"
    "  --max-streams N      reverse connections open at once (per dialer replica),\n"
    "                       and so requests served at once: the dialer's requests\n"
    "                       beyond them wait in its queue (default: what the\n"
    "                       dialer allows, 1000 for h2rev-dialer)\n"
    "  --ca FILE            trust this CA (or certificate) for the dialer\n"
    "  --cert FILE --key FILE  client certificate (mTLS)\n"
    "  --token TOKEN        sent as Authorization: Bearer TOKEN (visible in ps:\n"
    "                       prefer one of the next two)\n"
    "  --token-file FILE    the token is the first line of FILE\n"
    "                       without either flag, the environment's H2REV_TOKEN\n"
    "                       is the token, if set\n"
    "  --insecure           do not verify the dialer's certificate (tests only)\n"
    "  --min-backoff MS --max-backoff MS\n"
    "                       after a failed attempt or a lost connection, wait\n"
    "                       between MS/2 and MS before the next; MS doubles from\n"
    "                       --min-backoff (default 500) up to --max-backoff\n"
    "                       (default 30000): the downtime after a dialer outage\n"
    "                       a permanent failure (refused: wrong token, unknown\n"
    "                       id or path, id taken; a certificate that does not\n"
    "                       verify; a server that is not an h2rev dialer) is\n"
    "                       logged once, with what to do, and retried after\n"
    "                       --max-backoff\n"
    "  --exit-on-permanent  exit with status 1 at a permanent failure instead\n"
    "  --drain-timeout MS   on SIGINT/SIGTERM: detach (the dialer sends no new\n"
    "                       connections), let those in flight finish for up to\n"
    "                       MS, then exit (default 10000)\n"
    "  --access-log FILE    one line per request served from an http(s)://\n"
    "                       upstream (time, method, path, status, by, bytes, in,\n"
    "                       ms, ttfb_ms, result), appended to FILE; - for standard\n"
    "                       output; SIGHUP opens FILE again (log rotation)\n"
    "  --log-format FORMAT  of the access log: text (logfmt, default) or json\n"
    "                       (one object a line)\n"
    "  --metrics ADDR:PORT  serve /metrics (Prometheus text format), /healthz and\n"
    "                       /readyz (200 while attached) there, cleartext (keep it\n"
    "                       on loopback, e.g. 127.0.0.1:9091)\n"
    "  --log-level LEVEL    error, warn, info (default), debug\n"
    "  --help, --version\n"
    "SIGHUP reads --token-file, --ca, --cert and --key again for the next\n"
    "connection (the one attached keeps its own) and, while waiting to retry\n"
    "after a failure, tries again at once; a file that does not load is logged\n"
    "and what it would replace stays in use.\n"
    "Under systemd (Type=notify) it tells READY=1 once started, RELOADING=1 and\n"
    "READY=1 around a reload, STOPPING=1 when it drains.\n";

/* The library's default backoff_min_ms. */
#define LISTENER_MIN_BACKOFF 500

static uv_loop_t *loop;
static h2rev_listener_t listener;
static h2rev_upstream_t upstream;
static unsigned active;
static unsigned drain_timeout = 10000;
static int exit_status;
static bool draining;
/* What SIGHUP reads again. */
static struct {
  const char *token_file, *ca, *cert, *key;
  bool insecure, tls;
} files;

static void stream_free(h2rev_stream_t *s) {
  free(s);
}

static void stream_done(h2rev_stream_t *s) {
  free(s);
  active--;
}

/* ------------------------------------------------ --upstream tcp:// */

/* An upstream that refuses is tried again after a delay, doubling from the
 * first to the second while it keeps refusing: with accept_idle, every
 * reverse connection closed unused is replaced at once, so without it a
 * refusing upstream would cost a connect, a reset and a log line per round
 * trip to the dialer. Streams accepted meanwhile wait (their client's bytes
 * in the stream's window) for the next attempt. */
#define TCP_RETRY_MIN_MS 250
#define TCP_RETRY_MAX_MS 5000

typedef struct tcp_conn {
  h2rev_stream_t s;
  uv_tcp_t t;
  struct tcp_conn *next; /* in tcp_up.held */
} tcp_conn_t;

static struct {
  bool on;
  struct sockaddr_storage addr;
  char name[300]; /* as given, for the log */
  unsigned backoff_ms;
  uint64_t down_until, last_fail;
  uv_timer_t retry;
  tcp_conn_t *held; /* accepted while the upstream refuses */
} tcp_up;

/* Errors of the connect itself: the upstream is not there (yet). */
static bool unreachable(int status) {
  return status == UV_ECONNREFUSED || status == UV_ETIMEDOUT || status == UV_EHOSTUNREACH ||
         status == UV_ENETUNREACH || status == UV_EADDRNOTAVAIL;
}

static void tcp_conn_free(h2rev_stream_t *s) {
  free(TOOL_CONTAINER_OF(s, tcp_conn_t, s));
}

static void tcp_done(h2rev_stream_t *s, uv_tcp_t *t, int status) {
  (void)t;
  active--;
  if (status == 0) {
    tool_logf(H2REV_LOG_DEBUG, "upstream %s: connection ended", tcp_up.name);
  } else if (unreachable(status)) {
    uint64_t now = uv_now(loop);
    /* One delay per round of attempts (the streams held meanwhile fail
     * together); a failure long after the last one starts over. */
    if (now >= tcp_up.down_until) {
      if (tcp_up.backoff_ms == 0 || now - tcp_up.last_fail > 2ull * tcp_up.backoff_ms + 1000)
        tcp_up.backoff_ms = TCP_RETRY_MIN_MS;
      else if (tcp_up.backoff_ms < TCP_RETRY_MAX_MS)
        tcp_up.backoff_ms =
            tcp_up.backoff_ms * 2 < TCP_RETRY_MAX_MS ? tcp_up.backoff_ms * 2 : TCP_RETRY_MAX_MS;
      tcp_up.down_until = now + tcp_up.backoff_ms;
    }
    tcp_up.last_fail = now;
    tool_logf(H2REV_LOG_WARN,
              "upstream %s: cannot connect: %s: reverse connection reset (next attempt in %u ms)",
              tcp_up.name, h2rev_strerror(status), (unsigned)(tcp_up.down_until - now));
  } else {
    tool_logf(H2REV_LOG_INFO, "upstream %s: connection aborted: %s (%s)", tcp_up.name,
              h2rev_strerror(status), h2rev_err_name(status));
  }
  free(TOOL_CONTAINER_OF(s, tcp_conn_t, s));
}

static void tcp_splice(tcp_conn_t *c) {
  h2rev_splice_options_t so = {0};
  if (h2rev_stream_splice_tcp(&c->s, &c->t, (struct sockaddr *)&tcp_up.addr, &so, tcp_done) != 0) {
    h2rev_stream_close(&c->s, tcp_conn_free);
    return;
  }
  active++;
}

static void tcp_retry(uv_timer_t *t) {
  (void)t;
  tcp_conn_t *c = tcp_up.held;
  tcp_up.held = NULL;
  while (c != NULL) {
    tcp_conn_t *next = c->next;
    tcp_splice(c);
    c = next;
  }
}

static void tcp_accepted(h2rev_listener_t *l) {
  tcp_conn_t *c = malloc(sizeof(*c));
  if (c == NULL)
    return;
  if (h2rev_listener_accept(l, &c->s) != 0) {
    free(c);
    return;
  }
  uint64_t now = uv_now(loop);
  if (now >= tcp_up.down_until) {
    tcp_splice(c);
    return;
  }
  c->next = tcp_up.held;
  tcp_up.held = c;
  if (!uv_is_active((uv_handle_t *)&tcp_up.retry))
    uv_timer_start(&tcp_up.retry, tcp_retry, tcp_up.down_until - now, 0);
}

/* Draining: the held streams' clients get no answer now. */
static void tcp_stop(void) {
  uv_timer_stop(&tcp_up.retry);
  while (tcp_up.held != NULL) {
    tcp_conn_t *c = tcp_up.held;
    tcp_up.held = c->next;
    h2rev_stream_close(&c->s, tcp_conn_free);
  }
}

/* HOST:PORT of tcp://HOST:PORT, HOST resolved now. */
static void tcp_parse(const char *url) {
  const char *hp = url + strlen("tcp://");
  snprintf(tcp_up.name, sizeof(tcp_up.name), "%s", url);
  if (tool_parse_hostport(hp, &tcp_up.addr) == 0)
    return;
  char host[256];
  const char *colon = strrchr(hp, ':');
  if (colon == NULL || colon == hp || (size_t)(colon - hp) >= sizeof(host) || colon[1] == '\0' ||
      strspn(colon + 1, "0123456789") != strlen(colon + 1))
    tool_usage_error("--upstream: \"%s\" is not tcp://HOST:PORT", url);
  memcpy(host, hp, (size_t)(colon - hp));
  host[colon - hp] = '\0';
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
  uv_getaddrinfo_t req;
  int r = uv_getaddrinfo(uv_default_loop(), &req, NULL, host, colon + 1, &hints);
  if (r != 0)
    tool_fatal("--upstream %s: cannot resolve %s: %s", url, host, uv_strerror(r));
  memcpy(&tcp_up.addr, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
  uv_freeaddrinfo(req.addrinfo);
}

/* Each reverse connection carries HTTP/1.1 requests for the upstream, one at
 * a time, or the bytes of one TCP connection (tcp://). */
static void on_connection(h2rev_listener_t *l, int status) {
  if (status != 0)
    return;
  if (tcp_up.on) {
    tcp_accepted(l);
    return;
  }
  h2rev_stream_t *s = malloc(sizeof(*s));
  if (s == NULL)
    return;
  if (h2rev_listener_accept(l, s) != 0) {
    free(s);
    return;
  }
  if (h2rev_upstream_serve(&upstream, s, stream_done) != 0) {
    h2rev_stream_close(s, stream_free);
    return;
  }
  active++;
}

static void upstream_closed(h2rev_upstream_t *u) {
  (void)u;
  admin_stop();
  tool_signals_close();
}

static void closed(h2rev_listener_t *l) {
  (void)l;
  if (tcp_up.on) {
    uv_close((uv_handle_t *)&tcp_up.retry, NULL);
    admin_stop();
    tool_signals_close();
    return;
  }
  h2rev_upstream_close(&upstream, upstream_closed);
}

/* The library logs each change; a listener that stopped by itself
 * (--exit-on-permanent) has said why: the process ends with it. */
static void on_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  (void)delay;
  if (state == H2REV_LISTENER_STOPPED && err != 0 && !draining) {
    draining = true;
    exit_status = 1;
    h2rev_listener_close(l, closed);
  }
}

static void drain(void) {
  if (draining)
    return;
  draining = true;
  admin_notify("STOPPING=1");
  tool_logf(H2REV_LOG_INFO, "draining for up to %u ms (%u reverse connection%s open)",
            drain_timeout, active, active == 1 ? "" : "s");
  tool_watchdog(loop, drain_timeout + 5000);
  if (tcp_up.on) {
    tcp_stop();
  } else {
    /* Idle WebSockets end, not at the drain's timeout. */
    h2rev_upstream_drain(&upstream);
  }
  if (h2rev_listener_shutdown(&listener, drain_timeout, closed) != 0)
    h2rev_listener_close(&listener, closed);
}

static void reload_files(void);

/* The Authorization header for token, into auth (cap bytes); headers[0]
 * points to it, or is NULL without a token. */
static void auth_header(const char *token, char *auth, size_t cap, const char *headers[2]) {
  headers[0] = headers[1] = NULL;
  if (token == NULL)
    return;
  snprintf(auth, cap, "Authorization: Bearer %s", token);
  headers[0] = auth;
}

static void reload(void) {
  admin_notify_reloading();
  admin_log_reopen();
  reload_files();
  admin_notify("READY=1");
}

static void reload_files(void) {
  int changed = 0;
  if (files.token_file != NULL) {
    char why[512], *token = NULL;
    if (tool_read_secret(files.token_file, &token, why, sizeof(why)) != 0) {
      tool_logf(H2REV_LOG_ERROR, "reload: --token-file: %s: the token in use is kept", why);
    } else {
      char auth[TOOL_SECRET_MAX + 32];
      const char *headers[2];
      auth_header(token, auth, sizeof(auth), headers);
      int r = h2rev_listener_set_headers(&listener, headers);
      OPENSSL_cleanse(auth, sizeof(auth));
      OPENSSL_cleanse(token, strlen(token));
      free(token);
      if (r != 0) {
        tool_logf(H2REV_LOG_ERROR, "reload: --token-file: %s: the token in use is kept",
                  h2rev_strerror(r));
      } else {
        tool_logf(H2REV_LOG_INFO, "reload: token from %s: for the next connection",
                  files.token_file);
        changed++;
      }
    }
  }
  if (files.tls && (files.ca != NULL || files.cert != NULL)) {
    h2rev_tls_options_t tls = {.ca_file = files.ca,
                               .cert_file = files.cert,
                               .key_file = files.key,
                               .insecure = files.insecure};
    char why[512];
    tool_capture(why, sizeof(why));
    int r = h2rev_listener_set_tls(&listener, &tls);
    tool_capture_end();
    if (r != 0) {
      tool_logf(H2REV_LOG_ERROR, "reload: %s: the CA and certificate in use are kept",
                why[0] ? why : h2rev_strerror(r));
    } else {
      tool_logf(H2REV_LOG_INFO, "reload: %s%s%s%s: for the next connection", files.ca ? "CA " : "",
                files.ca ? files.ca : "", files.ca && files.cert ? ", " : "",
                files.cert ? "client certificate and key" : "");
      changed++;
    }
  }
  if (changed == 0) {
    tool_logf(H2REV_LOG_WARN, "SIGHUP: nothing reloaded (--token-file, --ca, --cert and --key "
                              "are; restart to change other settings)");
    return;
  }
  /* Waiting after a failure: what was fixed may be what it said. */
  if (h2rev_listener_retry_now(&listener) == 0)
    tool_logf(H2REV_LOG_INFO, "reload: trying again now");
}

/* ---------------------------------------------- access log, metrics */

#define METRICS_BODY_MAX (16 * 1024) /* the /metrics answer */

static void access_line(void *arg, const h2rev_upstream_access_t *a) {
  (void)arg;
  typedef unsigned long long ull;
  const char *path = a->path != NULL ? a->path : "";
  admin_line_t l;
  admin_line_begin(&l);
  admin_line_str(&l, "method", a->method, strlen(a->method), ADMIN_FIELD_MAX);
  admin_line_str(&l, "path", path, strlen(path), ADMIN_PATH_MAX);
  admin_line_num(&l, "status", "%d", a->status);
  admin_line_word(&l, "by", a->local ? "listener" : "upstream");
  admin_line_num(&l, "bytes", "%llu", (ull)a->bytes_out);
  admin_line_num(&l, "in", "%llu", (ull)a->bytes_in);
  admin_line_num(&l, "ms", "%llu.%03llu", (ull)(a->duration_us / 1000),
                 (ull)(a->duration_us % 1000));
  admin_line_num(&l, "ttfb_ms", "%llu.%03llu", (ull)(a->ttfb_us / 1000), (ull)(a->ttfb_us % 1000));
  admin_line_word(&l, "result", a->result == 0 ? "ok" : h2rev_err_name(a->result));
  admin_line_end(&l);
}

static const char *state_name(int state) {
  switch (state) {
  case H2REV_LISTENER_CONNECTING:
    return "connecting";
  case H2REV_LISTENER_ATTACHED:
    return "attached";
  case H2REV_LISTENER_LOST:
    return "lost";
  case H2REV_LISTENER_RETRYING:
    return "retrying";
  case H2REV_LISTENER_STOPPED:
    return "stopped";
  default:
    return "starting";
  }
}

static bool ready(const char **why) {
  h2rev_listener_stats_t st;
  h2rev_listener_stats(&listener, &st);
  if (draining) {
    *why = "draining";
    return false;
  }
  if (st.state != H2REV_LISTENER_ATTACHED) {
    *why = state_name(st.state);
    return false;
  }
  return true;
}

static void metrics_page(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  static const int states[] = {H2REV_LISTENER_CONNECTING, H2REV_LISTENER_ATTACHED,
                               H2REV_LISTENER_LOST, H2REV_LISTENER_RETRYING,
                               H2REV_LISTENER_STOPPED};
  static const char *classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  typedef unsigned long long ull;
  h2rev_listener_stats_t st;
  h2rev_listener_stats(&listener, &st);
  h2rev_upstream_stats_t us;
  h2rev_upstream_stats(&upstream, &us);
  admin_out_t o;
  if (!admin_out_init(&o, METRICS_BODY_MAX)) {
    admin_reply(req, &o, NULL);
    return;
  }
  admin_metric(&o, "h2rev_listener_state", "gauge", "The connection's state (1: the current one).");
  for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
    admin_put(&o, "h2rev_listener_state{state=\"%s\"} %d\n", state_name(states[i]),
              st.state == states[i]);
  admin_metric(&o, "h2rev_listener_attached_seconds", "gauge",
               "Time since it attached (0: not attached).");
  admin_put(&o, "h2rev_listener_attached_seconds %.3f\n",
            st.attached_at != 0 ? (double)(uv_now(loop) - st.attached_at) / 1000.0 : 0.0);
  admin_metric(&o, "h2rev_listener_attempts_total", "counter", "Connection attempts.");
  admin_put(&o, "h2rev_listener_attempts_total %llu\n", (ull)st.attempts);
  admin_metric(&o, "h2rev_listener_attachments_total", "counter",
               "Attempts that attached (the first and each reconnection).");
  admin_put(&o, "h2rev_listener_attachments_total %llu\n", (ull)st.attachments);
  admin_metric(&o, "h2rev_listener_failures_total", "counter",
               "Attempts that failed and attachments lost.");
  admin_put(&o, "h2rev_listener_failures_total %llu\n", (ull)st.failures);
  admin_metric(&o, "h2rev_listener_last_error", "gauge",
               "The last failure since it last attached (1), by class and error; "
               "class none: none.");
  admin_put(&o, "h2rev_listener_last_error{class=\"%s\",error=\"%s\"} %d\n",
            st.last_error == 0  ? "none"
            : st.last_permanent ? "permanent"
                                : "transient",
            st.last_error == 0 ? "" : h2rev_err_name(st.last_error), st.last_error != 0);
  admin_metric(&o, "h2rev_listener_streams_open", "gauge",
               "Streams open on the connection to the dialer (control and spares included).");
  admin_put(&o, "h2rev_listener_streams_open %llu\n", (ull)st.streams_open);
  admin_metric(&o, "h2rev_reverse_connections_accepted_total", "counter",
               "Reverse connections accepted.");
  admin_put(&o, "h2rev_reverse_connections_accepted_total %llu\n", (ull)st.accepted);
  admin_metric(&o, "h2rev_reverse_connections_open", "gauge",
               "Reverse connections accepted and not yet over.");
  admin_put(&o, "h2rev_reverse_connections_open %u\n", active);
  admin_metric(&o, "h2rev_upstream_requests_total", "counter",
               "Requests served from the upstream, by status class (none: no head; the "
               "listener's own 502 and 400 included).");
  for (int c = 0; c < 6; c++)
    admin_put(&o, "h2rev_upstream_requests_total{code=\"%s\"} %llu\n", classes[c],
              (ull)us.requests[c]);
  admin_metric(&o, "h2rev_upstream_requests_incomplete_total", "counter",
               "Requests whose exchange was cut or got no answer from the upstream.");
  admin_put(&o, "h2rev_upstream_requests_incomplete_total %llu\n", (ull)us.requests_incomplete);
  admin_metric(&o, "h2rev_upstream_errors_total", "counter",
               "Requests the upstream could not be reached for (answered 502 here).");
  admin_put(&o, "h2rev_upstream_errors_total %llu\n", (ull)us.errors);
  admin_metric(&o, "h2rev_upstream_refused_total", "counter", "Requests refused here (400).");
  admin_put(&o, "h2rev_upstream_refused_total %llu\n", (ull)us.refused);
  admin_metric(&o, "h2rev_upstream_request_duration_seconds", "histogram",
               "From the request head to the end of the exchange.");
  admin_histogram(&o, "h2rev_upstream_request_duration_seconds", us.duration, us.duration_us_sum);
  admin_metric(&o, "h2rev_upstream_request_bytes_total", "counter",
               "Request bytes after the head sent to the upstream.");
  admin_put(&o, "h2rev_upstream_request_bytes_total %llu\n", (ull)us.bytes_in);
  admin_metric(&o, "h2rev_upstream_response_bytes_total", "counter",
               "Response bytes (heads included) sent back to the dialer.");
  admin_put(&o, "h2rev_upstream_response_bytes_total %llu\n", (ull)us.bytes_out);
  admin_metric(&o, "h2rev_access_log_dropped_total", "counter",
               "Access log lines dropped because writes fell behind.");
  admin_put(&o, "h2rev_access_log_dropped_total %llu\n", (ull)admin_log_dropped());
  admin_reply(req, &o, "text/plain; version=0.0.4");
}

int main(int argc, char **argv) {
  tool_name = "h2rev-listener";
  const char *urls[URLS_MAX + 1] = {0};
  size_t nurls = 0;
  const char *url = NULL, *id = NULL, *up = NULL, *ca = NULL, *cert = NULL, *key = NULL;
  const char *token_flag = NULL, *token_file = NULL, *upstream_ca = NULL;
  bool insecure = false, upstream_insecure = false, keep_host = false, exit_permanent = false;
  unsigned upstream_idle = 0, min_backoff = 0, max_backoff = 0, max_streams = 0;
  const char *access_log = NULL, *log_format = NULL, *metrics = NULL;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      tool_help(usage);
      return 0;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("h2rev-listener %s\n", h2rev_version());
      return 0;
    } else if (strcmp(argv[i], "--insecure") == 0) {
      insecure = true;
    } else if (strcmp(argv[i], "--exit-on-permanent") == 0) {
      exit_permanent = true;
    } else if (strcmp(argv[i], "--upstream-insecure") == 0) {
      upstream_insecure = true;
    } else if (strcmp(argv[i], "--keep-host") == 0) {
      keep_host = true;
    } else if ((v = tool_flag(argc, argv, &i, "--upstream-ca")) != NULL) {
      upstream_ca = v;
    } else if ((v = tool_flag(argc, argv, &i, "--url")) != NULL) {
      if (url == NULL)
        url = v;
      else if (nurls == URLS_MAX)
        tool_usage_error("--url: more than %d", URLS_MAX + 1);
      else
        urls[nurls++] = v;
    } else if ((v = tool_flag(argc, argv, &i, "--id")) != NULL) {
      id = v;
    } else if ((v = tool_flag(argc, argv, &i, "--upstream")) != NULL) {
      up = v;
    } else if ((v = tool_flag(argc, argv, &i, "--ca")) != NULL) {
      ca = v;
    } else if ((v = tool_flag(argc, argv, &i, "--cert")) != NULL) {
      cert = v;
    } else if ((v = tool_flag(argc, argv, &i, "--key")) != NULL) {
      key = v;
    } else if ((v = tool_flag(argc, argv, &i, "--token")) != NULL) {
      token_flag = v;
    } else if ((v = tool_flag(argc, argv, &i, "--token-file")) != NULL) {
      token_file = v;
    } else if ((v = tool_flag(argc, argv, &i, "--upstream-idle")) != NULL) {
      upstream_idle = tool_parse_count("--upstream-idle", v, 65536);
      if (upstream_idle == 0)
        tool_usage_error("--upstream-idle: must be at least 1");
    } else if ((v = tool_flag(argc, argv, &i, "--max-streams")) != NULL) {
      max_streams = tool_parse_count("--max-streams", v, MAX_STREAMS_LIMIT);
      if (max_streams == 0)
        tool_usage_error("--max-streams: must be at least 1");
    } else if ((v = tool_flag(argc, argv, &i, "--min-backoff")) != NULL) {
      min_backoff = tool_parse_ms("--min-backoff", v);
      if (min_backoff == 0)
        tool_usage_error("--min-backoff: must be at least 1 ms");
    } else if ((v = tool_flag(argc, argv, &i, "--max-backoff")) != NULL) {
      max_backoff = tool_parse_ms("--max-backoff", v);
      if (max_backoff == 0)
        tool_usage_error("--max-backoff: must be at least 1 ms");
    } else if ((v = tool_flag(argc, argv, &i, "--drain-timeout")) != NULL) {
      drain_timeout = tool_parse_ms("--drain-timeout", v);
    } else if ((v = tool_flag(argc, argv, &i, "--access-log")) != NULL) {
      access_log = v;
    } else if ((v = tool_flag(argc, argv, &i, "--log-format")) != NULL) {
      log_format = v;
    } else if ((v = tool_flag(argc, argv, &i, "--metrics")) != NULL) {
      metrics = v;
    } else if ((v = tool_flag(argc, argv, &i, "--log-level")) != NULL) {
      tool_log_level = tool_parse_level(v);
    } else {
      tool_usage_error("unknown argument \"%s\"", argv[i]);
    }
  }
  if (url == NULL)
    tool_usage_error("--url is required");
  if (up == NULL)
    tool_usage_error("--upstream is required");
  tcp_up.on = strncmp(up, "tcp://", 6) == 0;
  if (!tcp_up.on && strncmp(up, "https://", 8) != 0 && strncmp(up, "http://", 7) != 0)
    tool_usage_error("--upstream: \"%s\" is not an http://, https:// or tcp:// URL", up);
  if (tcp_up.on && (upstream_ca != NULL || upstream_insecure || keep_host || upstream_idle != 0))
    tool_usage_error("--upstream-ca, --upstream-insecure, --keep-host and --upstream-idle are for "
                     "an http:// or https:// upstream");
  if (tcp_up.on)
    tcp_parse(up);
  int format = log_format != NULL ? admin_parse_format(log_format) : ADMIN_FMT_TEXT;
  if (log_format != NULL && access_log == NULL)
    tool_usage_error("--log-format is the access log's: give --access-log too");
  if (access_log != NULL && tcp_up.on)
    tool_usage_error("--access-log is for an http:// or https:// upstream (requests)");
  struct sockaddr_storage maddr;
  if (metrics != NULL && tool_parse_hostport(metrics, &maddr) != 0)
    tool_usage_error("--metrics: \"%s\" is not HOST:PORT (e.g. 127.0.0.1:9091)", metrics);
  if (upstream_ca != NULL && !tool_readable(upstream_ca))
    tool_usage_error("cannot read %s", upstream_ca);
  char host[256];
  if (id == NULL) {
    if (gethostname(host, sizeof(host)) != 0)
      tool_usage_error("--id is required (no host name)");
    host[sizeof(host) - 1] = '\0';
    id = host;
  }
  if ((cert == NULL) != (key == NULL))
    tool_usage_error("--cert and --key go together");
  if (min_backoff != 0 && max_backoff != 0 && max_backoff < min_backoff)
    tool_usage_error("--max-backoff %u is below --min-backoff %u", max_backoff, min_backoff);
  /* The library raises a maximum below its minimum: a small --max-backoff
   * alone lowers the minimum instead. */
  if (min_backoff == 0 && max_backoff != 0 && max_backoff < LISTENER_MIN_BACKOFF)
    min_backoff = max_backoff;
  const char *inputs[] = {ca, cert, key};
  for (int i = 0; i < 3; i++)
    if (inputs[i] != NULL && !tool_readable(inputs[i]))
      tool_usage_error("cannot read %s", inputs[i]);
  const char *from;
  char *token = tool_token(token_flag, token_file, &from);
  char auth[TOOL_SECRET_MAX + 32];
  const char *headers[2];
  auth_header(token, auth, sizeof(auth), headers);
  if (token != NULL)
    tool_logf(H2REV_LOG_DEBUG, "token from %s", from);
  files.token_file = token_file;
  files.ca = ca;
  files.cert = cert;
  files.key = key;
  files.insecure = insecure;
  files.tls = strncmp(url, "https://", 8) == 0;
  loop = uv_default_loop();
  h2rev_listener_options_t o = {0};
  o.url = url;
  o.urls = nurls > 0 ? urls : NULL;
  o.id = id;
  o.tls.ca_file = ca;
  o.tls.cert_file = cert;
  o.tls.key_file = key;
  o.tls.insecure = insecure;
  o.headers = headers;
  o.on_state = on_state;
  o.backoff_min_ms = min_backoff;
  o.backoff_max_ms = max_backoff;
  o.stop_on_permanent = exit_permanent;
  o.max_streams = max_streams;
  o.log = (h2rev_logger_t){tool_log, NULL, tool_log_level};
  /* SSH, SMTP and the like speak first: each stream connects to the
   * upstream as soon as it is open, so that the greeting waits at the
   * dialer for the client. */
  o.accept_idle = tcp_up.on;
  char why[512];
  tool_capture(why, sizeof(why));
  int r = h2rev_listener_init(loop, &listener, &o);
  tool_capture_end();
  /* The library keeps its own copy: the secret leaves this process's other memory. */
  OPENSSL_cleanse(auth, sizeof(auth));
  if (token != NULL)
    OPENSSL_cleanse(token, strlen(token));
  free(token);
  if (r == H2REV_EURL)
    tool_usage_error("--url: \"%s\" is not a dialer URL: expected https://HOST[:PORT][/BASE-PATH] "
                     "(or http:// for cleartext HTTP/2)",
                     url);
  if (r == H2REV_EBADID)
    tool_usage_error(
        "%s \"%s\" is not a valid id: expected 1 to 128 letters, digits or . _ ~ : @ -%s",
        id == host ? "the host name" : "--id:", id, id == host ? " (give --id)" : "");
  if (r != 0) {
    fprintf(stderr, "h2rev-listener: %s%s%s\n", h2rev_strerror(r), why[0] ? ": " : "", why);
    return 2;
  }
  h2rev_upstream_options_t uo = {0};
  uo.url = up;
  uo.tls.ca_file = upstream_ca;
  uo.tls.insecure = upstream_insecure;
  uo.keep_host = keep_host;
  uo.max_idle_conns = upstream_idle;
  uo.log = o.log;
  if (access_log != NULL) {
    admin_log_open(loop, access_log, format);
    uo.access_log = access_line;
  }
  if (tcp_up.on)
    uv_timer_init(loop, &tcp_up.retry);
  r = tcp_up.on ? 0 : h2rev_upstream_init(loop, &upstream, &uo);
  if (r != 0) {
    if (r == H2REV_EURL)
      tool_usage_error("--upstream: \"%s\" is not an upstream URL: expected "
                       "http://HOST[:PORT][/PATH] or https://...",
                       up);
    fprintf(stderr, "h2rev-listener: --upstream %s: %s\n", up, h2rev_strerror(r));
    return 2;
  }
  if (metrics != NULL) {
    r = admin_listen(loop, (struct sockaddr *)&maddr, ready);
    if (r == 0)
      r = admin_route("/metrics", metrics_page);
    if (r != 0) {
      fprintf(stderr, "h2rev-listener: --metrics %s: cannot serve: %s\n", metrics,
              h2rev_strerror(r));
      return 1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    char where[INET6_ADDRSTRLEN + 16] = "";
    if (admin_getsockname((struct sockaddr *)&bound, &blen) == 0)
      tool_format_addr((struct sockaddr *)&bound, where, sizeof(where));
    tool_logf(H2REV_LOG_INFO, "metrics on http://%s/metrics", where[0] ? where : metrics);
  }
  h2rev_listener_start(&listener, on_connection);
  tool_raise_nofile(); /* each reverse connection's upstream connection takes one */
  tool_on_signal(loop, drain);
  tool_on_reload(loop, reload);
  /* After the handlers: systemd may send SIGHUP as soon as it is told. */
  admin_notify("READY=1");
  uv_run(loop, UV_RUN_DEFAULT);
  admin_log_close();
  uv_loop_close(loop);
  if (exit_status == 0)
    tool_logf(H2REV_LOG_INFO, "stopped");
  return exit_status;
}
