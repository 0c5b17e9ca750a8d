/* The in-process tunnel of rig.h. */
#include "rig.h"

#include <signal.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SETUP_MS       10000 /* for the listener to attach */
#define UP_HEAD_MAX    (1u << 20)
#define CLIENT_MAX_BUF 65536
#define UP_CLOSE_MS    200 /* for the listener to close what the upstream closed */

#define DIE(...)                                                                                   \
  do {                                                                                             \
    fprintf(stderr, "rig: " __VA_ARGS__);                                                          \
    fputc('\n', stderr);                                                                           \
    abort();                                                                                       \
  } while (0)

static uv_loop_t loop;
static bool ready;
static h2rev_dialer_t dialer;
static h2rev_listener_t listener;
static h2rev_upstream_t upstream;
static uv_tcp_t up_server;
static struct sockaddr_in dialer_addr;
static bool attached;

static char *resp;
static size_t resp_len;
static bool resp_close = true;

uv_loop_t *rig_loop(void) {
  return &loop;
}

void rig_set_response(const void *p, size_t n, bool close_after) {
  rig_init(); /* which sets a response of its own */
  char *b = malloc(n > 0 ? n : 1);
  if (b == NULL)
    DIE("out of memory");
  memcpy(b, p, n);
  free(resp);
  resp = b;
  resp_len = n;
  resp_close = close_after;
}

/* ------------------------------------------------------ fake upstream */

typedef struct upc {
  uv_tcp_t tcp;
  uv_shutdown_t sh;
  char *buf;
  size_t len, cap, scan;
  bool done; /* answered for the last time */
  bool shut;
} upc_t;

typedef struct upw {
  uv_write_t w;
  upc_t *c;
  bool close_after;
  char data[];
} upw_t;

static unsigned upc_open; /* fake upstream connections */

static void upc_closed(uv_handle_t *h) {
  upc_t *c = h->data;
  upc_open--;
  free(c->buf);
  free(c);
}

static void upc_close(upc_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, upc_closed);
}

static void upc_shut(uv_shutdown_t *req, int status) {
  (void)req, (void)status; /* reading goes on until the listener closes */
}

static void upc_wrote(uv_write_t *req, int status) {
  upw_t *w = (upw_t *)req;
  upc_t *c = w->c;
  bool close_after = w->close_after;
  free(w);
  if (status != 0) {
    upc_close(c);
    return;
  }
  if (close_after && !c->shut && !uv_is_closing((uv_handle_t *)&c->tcp)) {
    c->shut = true;
    c->sh.data = c;
    if (uv_shutdown(&c->sh, (uv_stream_t *)&c->tcp, upc_shut) != 0)
      upc_close(c);
  }
}

static void upc_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  upc_t *c = h->data;
  if (c->cap - c->len < sz) {
    size_t cap = c->len + sz;
    char *b = realloc(c->buf, cap);
    if (b == NULL) {
      *buf = uv_buf_init(NULL, 0);
      return;
    }
    c->buf = b;
    c->cap = cap;
  }
  *buf = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

/* Answers each request head (what ends with an empty line) it sees. */
static void upc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  upc_t *c = s->data;
  if (n < 0) {
    upc_close(c);
    return;
  }
  c->len += (size_t)n;
  while (!c->done) {
    char *end = NULL;
    for (size_t i = c->scan; i + 4 <= c->len; i++)
      if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) {
        end = c->buf + i + 4;
        break;
      }
    if (end == NULL) {
      c->scan = c->len >= 3 ? c->len - 3 : 0;
      if (c->len > UP_HEAD_MAX)
        upc_close(c);
      return;
    }
    size_t used = (size_t)(end - c->buf);
    memmove(c->buf, end, c->len - used);
    c->len -= used;
    c->scan = 0;
    upw_t *w = malloc(sizeof(*w) + resp_len);
    if (w == NULL) {
      upc_close(c);
      return;
    }
    w->c = c;
    w->close_after = resp_close;
    memcpy(w->data, resp, resp_len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)resp_len);
    if (uv_write(&w->w, s, &b, 1, upc_wrote) != 0) {
      free(w);
      upc_close(c);
      return;
    }
    if (resp_close)
      c->done = true; /* one answer: the rest is the request's body or junk */
  }
}

static void up_conn(uv_stream_t *server, int status) {
  if (status != 0)
    return;
  upc_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return;
  uv_tcp_init(&loop, &c->tcp);
  c->tcp.data = c;
  upc_open++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, upc_alloc, upc_read) != 0)
    upc_close(c);
}

/* ------------------------------------------------------------ listener */

static void stream_free(h2rev_stream_t *s) {
  free(s);
}

static void on_connection(h2rev_listener_t *l, int status) {
  if (status != 0)
    return;
  h2rev_stream_t *s = malloc(sizeof(*s));
  if (s == NULL)
    return;
  if (h2rev_listener_accept(l, s) != 0) {
    free(s);
    return;
  }
  if (h2rev_upstream_serve(&upstream, s, stream_free) != 0)
    h2rev_stream_close(s, stream_free);
}

static void on_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  (void)l, (void)err, (void)delay;
  attached = state == H2REV_LISTENER_ATTACHED;
}

/* H2REV_FUZZ_LOG=<level> (1 error .. 4 debug): the library's logs on stderr. */
static void log_line(void *arg, int level, const char *msg) {
  fprintf(stderr, "[%s %d] %s\n", (const char *)arg, level, msg);
}

static h2rev_logger_t logger(const char *who) {
  const char *env = getenv("H2REV_FUZZ_LOG");
  h2rev_logger_t lg = {0};
  if (env != NULL) {
    lg.cb = log_line;
    lg.arg = (void *)who;
    lg.level = atoi(env);
  }
  return lg;
}

static void timer_flag(uv_timer_t *t) {
  *(bool *)t->data = true;
}

void rig_init(void) {
  /* As any libuv program (h2rev.h says so): a write to a peer that has
   * gone must fail with EPIPE, not kill the fuzzer without a word. */
  signal(SIGPIPE, SIG_IGN);
  if (ready)
    return;
  ready = true;
  if (uv_loop_init(&loop) != 0)
    DIE("uv_loop_init");
  rig_set_response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 40, false);

  struct sockaddr_in a;
  int len = sizeof(a);
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&loop, &up_server);
  if (uv_tcp_bind(&up_server, (struct sockaddr *)&a, 0) != 0 ||
      uv_listen((uv_stream_t *)&up_server, 128, up_conn) != 0 ||
      uv_tcp_getsockname(&up_server, (struct sockaddr *)&a, &len) != 0)
    DIE("fake upstream: cannot listen");
  char url[64];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(a.sin_port));
  h2rev_upstream_options_t uo = {.url = url, .log = logger("upstream")};
  if (h2rev_upstream_init(&loop, &upstream, &uo) != 0)
    DIE("h2rev_upstream_init");

  h2rev_dialer_options_t dopts = {.dial_timeout_ms = 2000, .log = logger("dialer")};
  uv_ip4_addr("127.0.0.1", 0, &dialer_addr);
  len = sizeof(dialer_addr);
  if (h2rev_dialer_init(&loop, &dialer, &dopts) != 0 ||
      h2rev_dialer_listen(&dialer, (struct sockaddr *)&dialer_addr, NULL) != 0 ||
      h2rev_dialer_getsockname(&dialer, 0, (struct sockaddr *)&dialer_addr, &len) != 0)
    DIE("dialer: cannot listen");

  snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(dialer_addr.sin_port));
  h2rev_listener_options_t lo = {.url = url,
                                 .id = RIG_ID,
                                 .backoff_min_ms = 10,
                                 .backoff_max_ms = 100,
                                 .on_state = on_state,
                                 .log = logger("listener")};
  if (h2rev_listener_init(&loop, &listener, &lo) != 0 ||
      h2rev_listener_start(&listener, on_connection) != 0)
    DIE("listener");
  bool late = false;
  static uv_timer_t t; /* closed on a later loop turn */
  uv_timer_init(&loop, &t);
  t.data = &late;
  uv_timer_start(&t, timer_flag, SETUP_MS, 0);
  while (!attached && !late)
    uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  if (!attached)
    DIE("the listener did not attach in %d ms", SETUP_MS);
}

/* -------------------------------------------------------------- client */

typedef struct client {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t wr;
  uv_shutdown_t sh;
  uv_timer_t limit, quiet;
  const uv_buf_t *bufs;
  unsigned nbufs, flags;
  const rig_client_ops *ops;
  void *arg;
  bool done, ended; /* ended: by the dialer or ops->on_read */
  int handles;      /* still to close */
  char rbuf[CLIENT_MAX_BUF];
} client_t;

static void c_finish(client_t *c, bool ended) {
  if (c->done)
    return;
  c->done = true;
  c->ended = ended;
}

static void c_limit(uv_timer_t *t) {
  c_finish(t->data, false);
}

static void c_quiet(uv_timer_t *t) {
  c_finish(t->data, true);
}

static void c_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  (void)sz;
  client_t *c = h->data;
  *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  client_t *c = s->data;
  if (c->done)
    return;
  if (n < 0) {
    c_finish(c, true);
    return;
  }
  if (n > 0 && c->ops != NULL && c->ops->on_read(c->arg, buf->base, (size_t)n)) {
    c_finish(c, true);
    return;
  }
  if (c->flags & RIG_QUIET)
    uv_timer_start(&c->quiet, c_quiet, RIG_QUIET_MS, 0);
}

static void c_shut(uv_shutdown_t *req, int status) {
  (void)req, (void)status;
}

static void c_wrote(uv_write_t *req, int status) {
  client_t *c = req->data;
  if (status != 0 || c->done)
    return;
  if (c->flags & RIG_QUIET)
    uv_timer_start(&c->quiet, c_quiet, RIG_QUIET_MS, 0);
}

static void c_connected(uv_connect_t *req, int status) {
  client_t *c = req->data;
  if (status != 0) {
    c_finish(c, false);
    return;
  }
  c->wr.data = c;
  if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, c->bufs, c->nbufs, c_wrote) != 0) {
    c_finish(c, false);
    return;
  }
  if (c->flags & RIG_SHUT) {
    c->sh.data = c;
    uv_shutdown(&c->sh, (uv_stream_t *)&c->tcp, c_shut);
  }
  uv_read_start((uv_stream_t *)&c->tcp, c_alloc, c_read);
}

static void c_closed(uv_handle_t *h) {
  client_t *c = h->data;
  c->handles--;
}

static client_t *current;

static void c_more_wrote(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

void rig_write(const void *p, size_t n) {
  client_t *c = current;
  if (c == NULL || c->done || n == 0)
    return;
  uv_write_t *w = malloc(sizeof(*w) + n);
  if (w == NULL)
    return;
  memcpy(w + 1, p, n);
  uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
  if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, c_more_wrote) != 0)
    free(w);
}

bool rig_exchange(const uv_buf_t *bufs, unsigned n, unsigned flags, unsigned limit_ms,
                  const rig_client_ops *ops, void *arg) {
  rig_init();
  static client_t c;
  memset(&c, 0, sizeof(c));
  c.bufs = bufs;
  c.nbufs = n;
  c.flags = flags;
  c.ops = ops;
  c.arg = arg;
  uv_tcp_init(&loop, &c.tcp);
  uv_timer_init(&loop, &c.limit);
  uv_timer_init(&loop, &c.quiet);
  c.tcp.data = c.limit.data = c.quiet.data = c.conn.data = &c;
  c.handles = 3;
  current = &c;
  /* The listener may have lost its connection to a previous input. */
  uv_timer_start(&c.limit, c_limit, SETUP_MS, 0);
  while (!attached && !c.done)
    uv_run(&loop, UV_RUN_ONCE);
  if (!attached)
    DIE("the listener is not attached again after %d ms", SETUP_MS);
  uv_timer_start(&c.limit, c_limit, limit_ms, 0);
  if (uv_tcp_connect(&c.conn, &c.tcp, (struct sockaddr *)&dialer_addr, c_connected) != 0)
    c_finish(&c, false);
  while (!c.done)
    uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&c.tcp, c_closed);
  uv_close((uv_handle_t *)&c.limit, c_closed);
  uv_close((uv_handle_t *)&c.quiet, c_closed);
  while (c.handles > 0)
    uv_run(&loop, UV_RUN_ONCE);
  current = NULL;
  /* What the dialer still has to do about it, it does now. An upstream
   * that closes after each answer is seen closing before the next input
   * (else the listener could send that input's request on a connection the
   * upstream has closed: a race of keep-alive that no input is about). */
  uv_run(&loop, UV_RUN_NOWAIT);
  if (resp_close && upc_open > 0) {
    bool late = false;
    c.limit.data = &late;
    uv_timer_init(&loop, &c.limit);
    uv_timer_start(&c.limit, timer_flag, UP_CLOSE_MS, 0);
    while (upc_open > 0 && !late)
      uv_run(&loop, UV_RUN_ONCE);
    c.handles = 1;
    c.limit.data = &c;
    uv_close((uv_handle_t *)&c.limit, c_closed);
    while (c.handles > 0)
      uv_run(&loop, UV_RUN_ONCE);
  }
  return c.ended;
}
