/* h2rev-listener: runs behind the NAT. Attaches to a dialer as --id and
 * forwards every reverse connection to the --upstream server. */
#include "tool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: h2rev-listener --url URL --upstream URL [options]\n"
    "  --url URL            the dialer's base URL, e.g. https://relay:8443/base\n"
    "                       (http:// for cleartext HTTP/2)\n"
    "  --id ID              the name to attach as (default: the host name)\n"
    "  --upstream URL       where reverse connections go: http://HOST:PORT\n"
    "  --ca FILE            trust this CA (or certificate) for the dialer\n"
    "  --cert FILE --key FILE  client certificate (mTLS)\n"
    "  --token TOKEN        sent as Authorization: Bearer TOKEN\n"
    "  --insecure           do not verify the dialer's certificate (tests only)\n"
    "  --drain-timeout MS   on SIGINT/SIGTERM: detach (the dialer sends no new\n"
    "                       connections), let those in flight finish for up to\n"
    "                       MS, then exit (default 10000)\n"
    "  --log-level LEVEL    error, warn, info (default), debug\n"
    "  --help, --version\n";

static uv_loop_t *loop;
static h2rev_listener_t listener;
static struct sockaddr_storage upstream;
static unsigned active;
static unsigned drain_timeout = 10000;

/* One reverse connection spliced to one upstream TCP connection. The
 * upstream is dialled at the first bytes, so idle spare streams cost no
 * upstream connection. Both directions end with a half-close; the stream is
 * closed once both have ended (a reset only on errors or after a linger). */
typedef struct pipe_s {
  h2rev_stream_t s;
  uv_tcp_t tcp;
  uv_timer_t linger;
  uv_connect_t conn;
  uv_shutdown_t tcp_shut;
  h2rev_shutdown_t s_shut;
  int refs;
  bool closing;
  bool connecting, connected;
  bool tcp_eof, s_eof, s_shut_done;
  struct chunk *early;      /* bytes read before the upstream was connected */
  size_t to_tcp, to_stream; /* bytes queued each way */
} pipe_t;

typedef struct chunk {
  union {
    uv_write_t uw;
    h2rev_write_t hw;
  } w;
  pipe_t *p;
  size_t len;
  struct chunk *next;
  char data[];
} chunk_t;

#define HIGH      (1u << 20)
#define LINGER_MS 5000

static void tcp_read(uv_stream_t *t, ssize_t n, const uv_buf_t *buf);
static void s_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void pipe_release(pipe_t *p) {
  if (--p->refs > 0)
    return;
  while (p->early != NULL) {
    chunk_t *c = p->early;
    p->early = c->next;
    free(c);
  }
  free(p);
  active--;
}
static void s_closed(h2rev_stream_t *s) {
  pipe_release(s->data);
}
static void h_closed(uv_handle_t *h) {
  pipe_release(h->data);
}

static void pipe_close(pipe_t *p) {
  if (p->closing)
    return;
  p->closing = true;
  p->refs = 3;
  h2rev_stream_close(&p->s, s_closed);
  uv_close((uv_handle_t *)&p->tcp, h_closed);
  uv_close((uv_handle_t *)&p->linger, h_closed);
}

static void linger_done(uv_timer_t *t) {
  pipe_close(t->data);
}

/* Closes once both directions have ended, or after LINGER_MS of waiting. */
static void pipe_check(pipe_t *p) {
  if (p->closing)
    return;
  if (p->s_shut_done && p->s_eof)
    pipe_close(p);
  else if (p->s_shut_done || (p->s_eof && p->tcp_eof))
    uv_timer_start(&p->linger, linger_done, LINGER_MS, 0);
}

static void alloc_chunk(size_t sz, uv_buf_t *buf) {
  chunk_t *c = malloc(sizeof(*c) + sz);
  *buf = c ? uv_buf_init(c->data, (unsigned)sz) : uv_buf_init(NULL, 0);
}
static void s_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)s, alloc_chunk(sz, buf);
}
static void t_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  (void)h, alloc_chunk(sz, buf);
}
static chunk_t *chunk_of(const uv_buf_t *b) {
  return b->base ? (chunk_t *)(b->base - offsetof(chunk_t, data)) : NULL;
}

static void wrote_tcp(uv_write_t *w, int status) {
  chunk_t *c = (chunk_t *)w;
  pipe_t *p = c->p;
  p->to_tcp -= c->len;
  free(c);
  if (status == 0 && !p->closing && !p->s_eof && p->to_tcp < HIGH / 2)
    h2rev_stream_read_start(&p->s, s_alloc, s_read);
}

static void wrote_stream(h2rev_write_t *w, int status) {
  chunk_t *c = (chunk_t *)w;
  pipe_t *p = c->p;
  p->to_stream -= c->len;
  free(c);
  if (status == 0 && !p->closing && !p->tcp_eof && p->to_stream < HIGH / 2)
    uv_read_start((uv_stream_t *)&p->tcp, t_alloc, tcp_read);
}

static void tcp_shut_done(uv_shutdown_t *r, int status) {
  (void)r, (void)status;
}

static void s_shut_done(h2rev_shutdown_t *r, int status) {
  pipe_t *p = r->data;
  if (status != 0) {
    pipe_close(p);
    return;
  }
  p->s_shut_done = true;
  pipe_check(p);
}

static void send_tcp(pipe_t *p, chunk_t *c) {
  p->to_tcp += c->len;
  uv_buf_t b = uv_buf_init(c->data, (unsigned)c->len);
  if (uv_write(&c->w.uw, (uv_stream_t *)&p->tcp, &b, 1, wrote_tcp) != 0) {
    free(c);
    pipe_close(p);
  }
}

static void end_stream(pipe_t *p) {
  p->s_shut.data = p;
  if (h2rev_stream_shutdown(&p->s_shut, &p->s, s_shut_done) != 0)
    pipe_close(p);
}

static void connected(uv_connect_t *req, int status) {
  pipe_t *p = req->data;
  p->connecting = false;
  if (p->closing)
    return;
  if (status != 0) {
    tool_logf(H2REV_LOG_WARN, "upstream: %s", uv_strerror(status));
    static const char resp[] = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 21\r\nConnection: close\r\n\r\n"
                               "upstream unreachable\n";
    chunk_t *c = malloc(sizeof(*c) + sizeof(resp));
    if (c == NULL) {
      pipe_close(p);
      return;
    }
    memcpy(c->data, resp, sizeof(resp) - 1);
    c->p = p;
    c->len = 0;
    uv_buf_t b = uv_buf_init(c->data, sizeof(resp) - 1);
    if (h2rev_stream_write(&c->w.hw, &p->s, &b, 1, wrote_stream) != 0)
      free(c);
    p->tcp_eof = true;
    end_stream(p);
    return;
  }
  p->connected = true;
  uv_tcp_nodelay(&p->tcp, 1);
  while (p->early != NULL && !p->closing) {
    chunk_t *c = p->early;
    p->early = c->next;
    send_tcp(p, c);
  }
  if (p->closing)
    return;
  uv_read_start((uv_stream_t *)&p->tcp, t_alloc, tcp_read);
  if (p->s_eof)
    uv_shutdown(&p->tcp_shut, (uv_stream_t *)&p->tcp, tcp_shut_done);
  else
    h2rev_stream_read_start(&p->s, s_alloc, s_read);
}

static void s_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  pipe_t *p = s->data;
  chunk_t *c = chunk_of(buf);
  if (n <= 0) {
    free(c);
    if (n == 0 || p->closing)
      return;
    if (n != UV_EOF) {
      tool_logf(H2REV_LOG_DEBUG, "reverse connection aborted: %s", h2rev_strerror((int)n));
      pipe_close(p);
      return;
    }
    p->s_eof = true;
    if (p->connected)
      uv_shutdown(&p->tcp_shut, (uv_stream_t *)&p->tcp, tcp_shut_done);
    else if (!p->connecting)
      pipe_close(p); /* a spare the dialer closed unused */
    pipe_check(p);
    return;
  }
  c->p = p;
  c->len = (size_t)n;
  c->next = NULL;
  if (!p->connected) {
    /* Hold the first bytes and pause until the upstream answers. */
    chunk_t **tail = &p->early;
    while (*tail != NULL)
      tail = &(*tail)->next;
    *tail = c;
    h2rev_stream_read_stop(s);
    if (!p->connecting) {
      p->connecting = true;
      if (uv_tcp_connect(&p->conn, &p->tcp, (struct sockaddr *)&upstream, connected) != 0)
        pipe_close(p);
    }
    return;
  }
  send_tcp(p, c);
  if (p->to_tcp >= HIGH && !p->closing)
    h2rev_stream_read_stop(s);
}

static void tcp_read(uv_stream_t *t, ssize_t n, const uv_buf_t *buf) {
  pipe_t *p = t->data;
  chunk_t *c = chunk_of(buf);
  if (n <= 0) {
    free(c);
    if (n == 0 || p->closing)
      return;
    if (n != UV_EOF) {
      tool_logf(H2REV_LOG_DEBUG, "upstream connection failed: %s", uv_strerror((int)n));
      pipe_close(p);
      return;
    }
    p->tcp_eof = true;
    uv_read_stop(t);
    end_stream(p);
    return;
  }
  c->p = p;
  c->len = (size_t)n;
  p->to_stream += c->len;
  uv_buf_t b = uv_buf_init(c->data, (unsigned)n);
  if (h2rev_stream_write(&c->w.hw, &p->s, &b, 1, wrote_stream) != 0) {
    free(c);
    pipe_close(p);
    return;
  }
  if (p->to_stream >= HIGH)
    uv_read_stop(t);
}

static void on_connection(h2rev_listener_t *l, int status) {
  if (status != 0)
    return;
  pipe_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return;
  if (h2rev_listener_accept(l, &p->s) != 0) {
    free(p);
    return;
  }
  active++;
  p->s.data = p;
  uv_tcp_init(loop, &p->tcp);
  uv_timer_init(loop, &p->linger);
  p->tcp.data = p->linger.data = p->conn.data = p;
  h2rev_stream_read_start(&p->s, s_alloc, s_read);
}

static void on_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  (void)l, (void)state, (void)err, (void)delay; /* the library logs each change */
}

static void closed(h2rev_listener_t *l) {
  (void)l;
  tool_signals_close();
}

static void drain(void) {
  tool_logf(H2REV_LOG_INFO, "draining for up to %u ms (%u reverse connection%s open)",
            drain_timeout, active, active == 1 ? "" : "s");
  if (h2rev_listener_shutdown(&listener, drain_timeout, closed) != 0)
    h2rev_listener_close(&listener, closed);
}

int main(int argc, char **argv) {
  tool_name = "h2rev-listener";
  const char *url = NULL, *id = NULL, *up = NULL, *ca = NULL, *cert = NULL, *key = NULL;
  const char *token = NULL;
  bool insecure = false;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage, stdout);
      return 0;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("h2rev-listener %s\n", h2rev_version());
      return 0;
    } else if (strcmp(argv[i], "--insecure") == 0) {
      insecure = true;
    } else if ((v = tool_flag(argc, argv, &i, "--url")) != NULL) {
      url = v;
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
      token = v;
    } else if ((v = tool_flag(argc, argv, &i, "--drain-timeout")) != NULL) {
      drain_timeout = tool_parse_ms("--drain-timeout", v);
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
  if (strncmp(up, "https://", 8) == 0)
    tool_usage_error("--upstream: https:// is not supported (reverse connections are forwarded "
                     "as they are to a TCP port: use http://HOST:PORT)");
  if (strncmp(up, "http://", 7) != 0)
    tool_usage_error("--upstream: only http://HOST:PORT is supported");
  char hp[300];
  snprintf(hp, sizeof(hp), "%s", up + 7);
  size_t hpl = strcspn(hp, "/?#");
  if (hp[hpl] != '\0' && strcmp(hp + hpl, "/") != 0)
    tool_usage_error("--upstream: a path is not supported (requests keep their own): use "
                     "http://HOST:PORT");
  hp[hpl] = '\0';
  if (strchr(hp, ':') == NULL)
    strncat(hp, ":80", sizeof(hp) - strlen(hp) - 1);
  if (tool_parse_hostport(hp, &upstream) != 0)
    tool_usage_error("--upstream: \"%s\" needs a numeric HOST:PORT", up);
  char host[256];
  if (id == NULL) {
    if (gethostname(host, sizeof(host)) != 0)
      tool_usage_error("--id is required (no host name)");
    host[sizeof(host) - 1] = '\0';
    id = host;
  }
  if ((cert == NULL) != (key == NULL))
    tool_usage_error("--cert and --key go together");
  const char *files[] = {ca, cert, key};
  for (int i = 0; i < 3; i++)
    if (files[i] != NULL && !tool_readable(files[i]))
      tool_usage_error("cannot read %s", files[i]);
  char auth[600];
  const char *headers[2] = {NULL, NULL};
  if (token != NULL) {
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    headers[0] = auth;
  }
  loop = uv_default_loop();
  h2rev_listener_options_t o = {0};
  o.url = url;
  o.id = id;
  o.tls.ca_file = ca;
  o.tls.cert_file = cert;
  o.tls.key_file = key;
  o.tls.insecure = insecure;
  o.headers = headers;
  o.on_state = on_state;
  o.log = (h2rev_logger_t){tool_log, NULL, tool_log_level};
  char why[512];
  tool_capture(why, sizeof(why));
  int r = h2rev_listener_init(loop, &listener, &o);
  tool_capture_end();
  if (r != 0) {
    fprintf(stderr, "h2rev-listener: %s%s%s\n", h2rev_strerror(r), why[0] ? ": " : "", why);
    return 2;
  }
  h2rev_listener_start(&listener, on_connection);
  tool_on_signal(loop, drain);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  tool_logf(H2REV_LOG_INFO, "stopped");
  return 0;
}
