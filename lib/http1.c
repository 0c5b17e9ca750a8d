/*
 * HTTP/1.1 server connections: requests parsed with llhttp, one exchange at
 * a time (a pipelined request waits for the response before it),
 * keep-alive, limits with clear errors (400, 408, 431), and the response
 * framing. A connection rides on an accepted socket (a session's transport)
 * or on a virtual stream; the two differ only in the small I/O interface
 * below. Requests go to the server's handlers through server.c's request
 * object. After a 101 (WebSocket) the bytes pass as they are.
 */
#include "control.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OUT_HIGH (1u << 20)
/* Draining: an upgraded connection (WebSocket) quiet both ways this long
 * ends, rather than hold the drain until its timeout; one in use goes on. */
#define RAW_DRAIN_IDLE_MS 1000
#define VREAD_SIZE        (16 * 1024)

typedef struct h1write h1write_t;

/* What the connection rides on. */
typedef struct h1io {
  int (*write)(h2r_h1c_t *c, h1write_t *w);
  void (*pause)(h2r_h1c_t *c, bool pause);
  /* Ends the connection now; graceful once every write has completed. */
  void (*close)(h2r_h1c_t *c, bool graceful);
} h1io_t;

struct h2r_h1c {
  const h1io_t *io;
  h2r_session_t *s;   /* on a session's transport, or */
  h2rev_stream_t *vs; /* on a virtual stream */
  h2rev_close_cb vs_done;
  h2rev_shutdown_t vsh;
  h2r_h1c_t *vnext, *vprev; /* the server's virtual-stream connections */
  char *vrbuf;
  h2r_server_t *srv;
  const h2rev_logger_t *log;
  const char *peer, *scheme;
  llhttp_t parser;
  llhttp_settings_t settings;
  uv_timer_t timer;
  bool timer_open;
  h2r_hbuf_t hb;    /* the head of the request being parsed */
  h2r_hreq_t *rq;   /* the request being answered */
  bool busy;        /* a request is being answered */
  bool keep_alive;  /* of the current request */
  bool head_only;   /* HEAD: no response body */
  bool chunked_out; /* response body chunked */
  bool raw;         /* upgraded: bytes pass as they are */
  uint64_t raw_io;  /* upgraded: when bytes last passed either way */
  bool peer_eof;    /* a CONNECT tunnel's client ended its side */
  bool closing;     /* close once the output is written */
  bool draining;    /* no request after the current one */
  bool input_paused;
  bool dead;         /* the transport or stream is gone */
  bool in_message;   /* between message begin and complete */
  bool parsing;      /* inside llhttp_execute */
  bool next_pending; /* the exchange ended while parsing */
  int refs;          /* the transport (or stream), and a handler's request */
  uint8_t *pending;  /* input received while busy */
  size_t npending;
  size_t out_queued; /* bytes written, not yet on the socket */
  unsigned writes;
  /* Corked (h2rev_http_cork): the writes are held, their buffers gathered
   * into one write at the uncork, so that a small response is one TLS
   * record and one system call, not three. Counted in out_queued and
   * writes from the start. */
  bool corking;
  h1write_t *ck_head, **ck_tail;
  unsigned ck_niov;
  h1write_t *cancelled; /* held writes of a dead connection, completed from cancel */
  h2r_later_t cancel;   /* on the server's deferred work */
};

struct h1write {
  union {
    h2r_xwrite_t x;
    h2rev_write_t s;
  } u;
  h2r_h1c_t *c;
  h2r_hreq_t *rq;           /* a handler's response, or NULL */
  h2rev_http_write_t *user; /* the handler's write request, or NULL */
  size_t len;
  uv_buf_t *iov;
  unsigned niov;
  h1write_t *next;                /* among the held writes */
  h1write_t *members;             /* a write gathering held ones: they complete with it */
  _Alignas(uv_buf_t) char data[]; /* iov entries first, then bytes */
};

static void c_input(h2r_h1c_t *c, const uint8_t *p, size_t n);
static void slow_head(uv_timer_t *t);
static void wrote(h1write_t *w, int status);

/* ------------------------------------------- I/O: a session's transport */

static void x_wrote(h2r_xwrite_t *w, int status) {
  wrote(H2R_CONTAINER_OF(w, h1write_t, u.x), status);
}

static int x_write(h2r_h1c_t *c, h1write_t *w) {
  return h2r_xport_write(&c->s->x, &w->u.x, w->iov, w->niov, x_wrote);
}

static void x_pause(h2r_h1c_t *c, bool pause) {
  h2r_xport_read_pause(&c->s->x, pause);
}

static void x_close(h2r_h1c_t *c, bool graceful) {
  (void)graceful; /* every write has completed or is to be cut alike */
  h2r_session_close(c->s, 0);
}

static const h1io_t x_io = {x_write, x_pause, x_close};

/* ------------------------------------------------ I/O: a virtual stream */

static void c_dead(h2r_h1c_t *c, int err);
static void c_unref(h2r_h1c_t *c);
static void c_shutdown(h2r_h1c_t *c);

static void v_wrote(h2rev_write_t *w, int status) {
  wrote(H2R_CONTAINER_OF(w, h1write_t, u.s), status);
}

static int v_write(h2r_h1c_t *c, h1write_t *w) {
  return h2rev_stream_write(&w->u.s, c->vs, w->iov, w->niov, v_wrote);
}

static void v_alloc(h2rev_stream_t *s, size_t sz, uv_buf_t *buf) {
  (void)sz;
  h2r_h1c_t *c = s->data;
  *buf = uv_buf_init(c->vrbuf, VREAD_SIZE);
}

static void v_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  h2r_h1c_t *c = s->data;
  if (n > 0) {
    c_input(c, (const uint8_t *)buf->base, (size_t)n);
  } else if (n == UV_EOF && !c->in_message && !c->raw) {
    c_shutdown(c); /* the client is done: finish the exchange, then close */
  } else if (n < 0) {
    c_dead(c, n == UV_EOF ? H2REV_ECLOSED : (int)n);
    c->io->close(c, false);
  }
}

static void v_pause(h2r_h1c_t *c, bool pause) {
  if (c->dead)
    return;
  if (pause)
    h2rev_stream_read_stop(c->vs);
  else
    h2rev_stream_read_start(c->vs, v_alloc, v_read);
}

static void v_closed(h2rev_stream_t *s) {
  h2r_h1c_t *c = s->data;
  if (c->vs_done != NULL)
    c->vs_done(s);
  c_unref(c);
}

static void v_shut(h2rev_shutdown_t *req, int status) {
  (void)status;
  h2r_h1c_t *c = req->data;
  h2rev_stream_close(c->vs, v_closed);
}

static void v_close(h2r_h1c_t *c, bool graceful) {
  h2r_server_t *srv = c->srv;
  if (c->vprev != NULL)
    c->vprev->vnext = c->vnext;
  else if (srv->vconns == c)
    srv->vconns = c->vnext;
  if (c->vnext != NULL)
    c->vnext->vprev = c->vprev;
  c->vnext = c->vprev = NULL;
  if (h2rev_stream_is_closing(c->vs) || c->vsh.data != NULL)
    return;
  c_dead(c, H2REV_ECLOSED);
  c->vsh.data = c;
  if (!graceful || h2rev_stream_shutdown(&c->vsh, c->vs, v_shut) != 0)
    h2rev_stream_close(c->vs, v_closed);
}

static const h1io_t v_io = {v_write, v_pause, v_close};

/* --------------------------------------------------------------- output */

static void pause_input(h2r_h1c_t *c, bool pause) {
  c->input_paused = pause;
  c->io->pause(c, pause);
}

static void cork_flush(h2r_h1c_t *c);

static void c_close_now(h2r_h1c_t *c) {
  if (c->ck_head != NULL && !c->dead) {
    cork_flush(c); /* what was held goes first; close once it is written */
    if (c->writes > 0) {
      c->closing = true;
      return;
    }
  }
  if (c->timer_open)
    uv_timer_stop(&c->timer);
  c->io->close(c, c->writes == 0);
}

static void wrote(h1write_t *w, int status) {
  h2r_h1c_t *c = w->c;
  if (w->members != NULL) {
    h1write_t *m = w->members;
    free(w);
    while (m != NULL) {
      h1write_t *next = m->next;
      wrote(m, status);
      m = next;
    }
    return;
  }
  c->out_queued -= w->len;
  c->writes--;
  h2r_hreq_t *rq = w->rq;
  h2rev_http_write_t *user = w->user;
  free(w);
  if (rq != NULL)
    c->srv->h1_events->written(rq, user, status);
  if (c->dead)
    return;
  if (status != 0) {
    /* The client is gone (EPIPE, ECONNRESET). Its FIN may have come before
     * the answer, and reading stopped there: nothing else will say so. */
    c_dead(c, status);
    c->io->close(c, false);
    return;
  }
  if (c->closing && c->writes == 0)
    c_close_now(c);
}

/* Held writes of a connection that died: they complete (UV_ECANCELED) from
 * the server's deferred work, never inside the call that found the
 * connection dead. */
static void cancel_run(h2r_later_t *l) {
  h2r_h1c_t *c = H2R_CONTAINER_OF(l, h2r_h1c_t, cancel);
  h1write_t *m = c->cancelled;
  c->cancelled = NULL;
  while (m != NULL) {
    h1write_t *next = m->next;
    wrote(m, UV_ECANCELED);
    m = next;
  }
}

static void cancel_held(h2r_h1c_t *c, h1write_t *list) {
  if (list == NULL)
    return;
  h1write_t **tail = &c->cancelled;
  while (*tail != NULL)
    tail = &(*tail)->next;
  *tail = list;
  h2r_defer_call(&c->srv->work, &c->cancel);
}

/* Writes what the cork held, as one write. */
static void cork_flush(h2r_h1c_t *c) {
  h1write_t *list = c->ck_head;
  unsigned niov = c->ck_niov;
  if (list == NULL)
    return;
  c->ck_head = NULL;
  c->ck_tail = &c->ck_head;
  c->ck_niov = 0;
  h1write_t *w = list;
  if (list->next != NULL) {
    w = malloc(sizeof(*w) + niov * sizeof(uv_buf_t));
    if (w == NULL) {
      cancel_held(c, list);
      c_dead(c, UV_ENOMEM);
      c->io->close(c, false);
      return;
    }
    w->c = c;
    w->rq = NULL;
    w->user = NULL;
    w->len = 0;
    w->next = NULL;
    w->members = list;
    w->iov = (uv_buf_t *)w->data;
    w->niov = 0;
    for (h1write_t *m = list; m != NULL; m = m->next)
      for (unsigned i = 0; i < m->niov; i++)
        w->iov[w->niov++] = m->iov[i];
  }
  if (c->io->write(c, w) != 0) {
    if (w != list)
      free(w);
    cancel_held(c, list);
    c_dead(c, H2REV_ECLOSED);
    c->io->close(c, false);
  }
}

/* Writes keep their order: while corked they are held, else what the cork
 * held goes first. */
static int submit(h2r_h1c_t *c, h1write_t *w) {
  w->next = NULL;
  w->members = NULL;
  if (c->raw)
    c->raw_io = uv_now(c->srv->loop);
  if (c->corking && !c->dead) {
    *c->ck_tail = w;
    c->ck_tail = &w->next;
    c->ck_niov += w->niov;
    c->out_queued += w->len;
    c->writes++;
    return 0;
  }
  cork_flush(c);
  if (c->dead)
    return H2REV_ECLOSED;
  int r = c->io->write(c, w);
  if (r != 0)
    return r;
  c->out_queued += w->len;
  c->writes++;
  return 0;
}

void h2r_h1c_cork(h2r_h1c_t *c, bool cork) {
  c->corking = cork;
  if (!cork && !c->dead)
    cork_flush(c);
}

size_t h2r_h1c_queued(const h2r_h1c_t *c) {
  return c->out_queued;
}

/* Copies up to three pieces into one write. */
static int out_rq(h2r_h1c_t *c, h2r_hreq_t *rq, const char *a, size_t al, const char *b, size_t bl,
                  const char *d, size_t dl) {
  if (c->dead)
    return H2REV_ECLOSED;
  h1write_t *w = malloc(sizeof(*w) + sizeof(uv_buf_t) + al + bl + dl);
  if (w == NULL) {
    c_close_now(c);
    return UV_ENOMEM;
  }
  w->iov = (uv_buf_t *)w->data;
  char *p = w->data + sizeof(uv_buf_t);
  memcpy(p, a, al);
  if (bl)
    memcpy(p + al, b, bl);
  if (dl)
    memcpy(p + al + bl, d, dl);
  w->c = c;
  w->rq = rq;
  w->user = NULL;
  w->len = al + bl + dl;
  w->iov[0] = uv_buf_init(p, (unsigned)w->len);
  w->niov = 1;
  int r = submit(c, w);
  if (r != 0) {
    free(w);
    c_close_now(c);
  }
  return r;
}

static void out(h2r_h1c_t *c, const char *a, size_t al, const char *b, size_t bl, const char *d,
                size_t dl) {
  out_rq(c, NULL, a, al, b, bl, d, dl);
}

static const char *reason(int status) {
  switch (status) {
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 204:
    return "No Content";
  case 206:
    return "Partial Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 304:
    return "Not Modified";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 413:
    return "Content Too Large";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  default:
    return "Status";
  }
}

static void status_line(h2r_out_t *o, int status) {
  const char *why = reason(status);
  H2R_OUT_LIT(o, "HTTP/1.1 ");
  h2r_out_uint(o, (uint64_t)status, 10);
  H2R_OUT_LIT(o, " ");
  h2r_out_put(o, why, strlen(why));
  H2R_OUT_LIT(o, "\r\n");
}

/* A complete text response of our own. */
static void respond_text(h2r_h1c_t *c, int status, const char *text, bool close) {
  char head[256];
  size_t tl = strlen(text);
  h2r_out_t o = {head, 0, sizeof(head), false};
  status_line(&o, status);
  H2R_OUT_LIT(&o, "Content-Type: text/plain\r\nContent-Length: ");
  h2r_out_uint(&o, tl, 10);
  H2R_OUT_LIT(&o, "\r\n");
  if (close)
    H2R_OUT_LIT(&o, "Connection: close\r\n");
  if (status == 429 || status == 503) /* a refusal for load says when to come back */
    H2R_OUT_LIT(&o, "Retry-After: 1\r\n");
  H2R_OUT_LIT(&o, "\r\n");
  out(c, head, o.len, c->head_only ? "" : text, c->head_only ? 0 : tl, NULL, 0);
  if (close) {
    c->closing = true;
    if (c->writes == 0)
      c_close_now(c);
  }
}

/* ---------------------------------------------------------- lifetime */

static void timer_closed(uv_handle_t *h) {
  h2r_h1c_t *c = h->data;
  h2r_server_t *srv = c->srv;
  free(c->vrbuf);
  free(c);
  srv->h1_events->unref(srv);
}

static void c_unref(h2r_h1c_t *c) {
  if (--c->refs > 0)
    return;
  h2r_hbuf_free(&c->hb);
  free(c->pending);
  c->pending = NULL;
  /* Held writes left now are the connection's own (a request holds a
   * reference until its writes complete): nobody waits for them. */
  for (h1write_t *lists[2] = {c->ck_head, c->cancelled}, **l = lists; l < lists + 2; l++)
    while (*l != NULL) {
      h1write_t *next = (*l)->next;
      free(*l);
      *l = next;
    }
  c->ck_head = c->cancelled = NULL;
  h2r_defer_uncall(&c->srv->work, &c->cancel);
  c->timer_open = false;
  uv_close((uv_handle_t *)&c->timer, timer_closed);
}

/* The transport or stream is gone: whoever holds the exchange is told. */
static void c_dead(h2r_h1c_t *c, int err) {
  if (c->dead)
    return;
  c->dead = true;
  if (c->timer_open)
    uv_timer_stop(&c->timer);
  h1write_t *held = c->ck_head;
  c->ck_head = NULL;
  c->ck_tail = &c->ck_head;
  c->ck_niov = 0;
  cancel_held(c, held);
  if (c->rq != NULL) {
    h2r_hreq_t *rq = c->rq;
    c->rq = NULL;
    c->srv->h1_events->gone(rq, err);
  }
}

/* ------------------------------------------------- after an exchange */

static void next_request(h2r_h1c_t *c) {
  c->busy = false;
  c->rq = NULL;
  if (c->closing || c->dead)
    return;
  if (c->parsing) {
    c->next_pending = true; /* c_input goes on once llhttp has returned */
    return;
  }
  if (!c->keep_alive || c->draining) {
    c->closing = true;
    if (c->writes == 0)
      c_close_now(c);
    return;
  }
  uv_timer_start(&c->timer, slow_head, c->srv->o.idle_timeout_ms, 0);
  llhttp_resume(&c->parser);
  uint8_t *pend = c->pending;
  size_t n = c->npending;
  c->pending = NULL;
  c->npending = 0;
  if (c->input_paused)
    pause_input(c, false);
  if (pend != NULL) {
    c_input(c, pend, n);
    free(pend);
  }
}

/* A response cut short: the connection closes, so that it never looks complete. */
static void c_abort(h2r_h1c_t *c) {
  c->busy = false;
  c->closing = true;
  c_dead(c, UV_ECANCELED);
  c->io->close(c, false); /* a response cut short must not look complete */
}

/* ---------------------------------------------- a handler's response */

int h2r_h1c_respond(h2r_h1c_t *c, h2r_hreq_t *rq, int status, const h2rev_header_t *hdrs, size_t n,
                    int64_t cl, bool *no_body) {
  if (c->rq != rq || c->dead)
    return H2REV_ECLOSED;
  size_t cap = 256;
  for (size_t i = 0; i < n; i++)
    cap += strlen(hdrs[i].name) + strlen(hdrs[i].value) + 4;
  char *h = malloc(cap);
  if (h == NULL)
    return UV_ENOMEM;
  h2r_out_t o = {h, 0, cap, false};
  status_line(&o, status);
  /* A 2xx to CONNECT turns the connection into a tunnel as a 101 does
   * (RFC 9110 9.3.6), without the 101's Upgrade fields. */
  bool tunnel = status >= 200 && status < 300 && c->parser.method == HTTP_CONNECT &&
                llhttp_get_upgrade(&c->parser);
  bool upgrade = status == 101 || tunnel;
  for (size_t i = 0; i < n; i++) {
    const char *name = hdrs[i].name;
    size_t nl = strlen(name);
    /* The handler's "connection: close": this exchange is the last. */
    if (nl == 10 && strcasecmp(name, "connection") == 0 && h2r_list_has(hdrs[i].value, "close"))
      c->keep_alive = false;
    bool keep = upgrade && nl == 7 && strcasecmp(name, "upgrade") == 0;
    if (!keep && (h2r_hop_by_hop(name, nl) || strcasecmp(name, "content-length") == 0))
      continue;
    h2r_out_header(&o, name, nl, hdrs[i].value, strlen(hdrs[i].value));
  }
  bool body_ok = status != 204 && status != 304 && !upgrade;
  *no_body = c->head_only || (!body_ok && !upgrade);
  c->chunked_out = false;
  if (upgrade) {
    if (!tunnel)
      H2R_OUT_LIT(&o, "Connection: Upgrade\r\n");
    H2R_OUT_LIT(&o, "\r\n");
    c->raw = true;
    c->raw_io = uv_now(c->srv->loop);
    c->keep_alive = false;
    int r = out_rq(c, rq, h, o.len, NULL, 0, NULL, 0);
    free(h);
    if (r < 0)
      return r;
    /* The client's bytes after its head are the request's body now; they
     * reach the handler from the server's next run, never inside this call. */
    if (c->npending > 0) {
      c->srv->h1_events->stash(rq, (const char *)c->pending, c->npending);
      free(c->pending);
      c->pending = NULL;
      c->npending = 0;
    }
    return 1;
  }
  if (cl >= 0 && body_ok) {
    H2R_OUT_LIT(&o, "Content-Length: ");
    h2r_out_uint(&o, (uint64_t)cl, 10);
    H2R_OUT_LIT(&o, "\r\n");
  } else if (!*no_body) {
    if (c->parser.http_minor >= 1) {
      c->chunked_out = true;
      H2R_OUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
    } else {
      c->keep_alive = false; /* HTTP/1.0: the end of the connection ends the body */
    }
  }
  if (!c->keep_alive || c->draining)
    H2R_OUT_LIT(&o, "Connection: close\r\n");
  H2R_OUT_LIT(&o, "\r\n");
  if (o.over) { /* cap is computed above: a bug, never a head cut short */
    free(h);
    return UV_ENOBUFS;
  }
  int r = out_rq(c, rq, h, o.len, NULL, 0, NULL, 0);
  free(h);
  return r < 0 ? r : 1;
}

int h2r_h1c_write(h2r_h1c_t *c, h2r_hreq_t *rq, h2rev_http_write_t *uw, const uv_buf_t *bufs,
                  unsigned n, bool discard) {
  if (c->rq != rq || c->dead)
    return H2REV_ECLOSED;
  size_t total = 0;
  for (unsigned i = 0; i < n && !discard; i++)
    total += bufs[i].len;
  bool chunk = c->chunked_out && total > 0;
  h1write_t *w = malloc(sizeof(*w) + (n + 2) * sizeof(uv_buf_t) + 24);
  if (w == NULL)
    return UV_ENOMEM;
  w->c = c;
  w->rq = rq;
  w->user = uw;
  w->iov = (uv_buf_t *)w->data;
  w->niov = 0;
  w->len = total;
  if (chunk) {
    h2r_out_t o = {(char *)(w->iov + n + 2), 0, 24, false};
    h2r_out_uint(&o, total, 16);
    H2R_OUT_LIT(&o, "\r\n");
    w->iov[w->niov++] = uv_buf_init(o.p, (unsigned)o.len);
    w->len += o.len + 2;
  }
  for (unsigned i = 0; i < n && total > 0; i++)
    if (bufs[i].len > 0)
      w->iov[w->niov++] = bufs[i];
  if (chunk)
    w->iov[w->niov++] = uv_buf_init("\r\n", 2);
  if (w->niov == 0) /* nothing to send: completes in order all the same */
    w->iov[w->niov++] = uv_buf_init(w->data, 0);
  int r = submit(c, w);
  if (r != 0)
    free(w);
  return r;
}

int h2r_h1c_finish(h2r_h1c_t *c, h2r_hreq_t *rq, bool complete) {
  if (c->rq != rq || c->dead)
    return H2REV_ECLOSED;
  c->rq = NULL;
  if (!complete) {
    c_abort(c);
    return 0;
  }
  int queued = 0;
  if (c->chunked_out && out_rq(c, rq, "0\r\n\r\n", 5, NULL, 0, NULL, 0) == 0)
    queued = 1;
  c->chunked_out = false;
  next_request(c);
  return queued;
}

void h2r_h1c_read_resume(h2r_h1c_t *c) {
  if (c->input_paused && c->pending == NULL && !c->dead)
    pause_input(c, false);
}

void h2r_h1c_release(h2r_h1c_t *c) {
  c_unref(c);
}

h2r_h1c_t *h2r_h1c_next(h2r_h1c_t *c) {
  return c->vnext;
}

/* ------------------------------------------------------- requests */

static int on_message_begin(llhttp_t *h) {
  h2r_h1c_t *c = h->data;
  h2r_hbuf_reset(&c->hb);
  c->in_message = true;
  uv_timer_start(&c->timer, slow_head, c->srv->o.header_timeout_ms, 0);
  return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_url(&((h2r_h1c_t *)h->data)->hb, at, len);
}

static int on_hfield(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_field(&((h2r_h1c_t *)h->data)->hb, at, len);
}

static int on_hvalue(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_value(&((h2r_h1c_t *)h->data)->hb, at, len);
}

static int on_hvalue_done(llhttp_t *h) {
  return h2r_hbuf_value_done(&((h2r_h1c_t *)h->data)->hb);
}

/* A request for a handler of the server's. */
static int start_handler(h2r_h1c_t *c, const h2r_route_t *route, const h2r_h1head_t *hd,
                         bool chunked, bool has_cl) {
  llhttp_t *h = &c->parser;
  if (hd->upgrade)
    c->keep_alive = false; /* after a 101, or any other answer, the connection ends */
  int64_t cl = has_cl ? (int64_t)h->content_length : chunked ? -1 : 0;
  h2r_hreq_t *rq = c->srv->h1_events->request(c->srv, c, route, hd, h->http_minor, cl);
  if (rq == NULL) {
    respond_text(c, 503, "out of memory\n", true);
    return -1;
  }
  c->rq = rq;
  c->refs++;
  c->srv->h1_events->run(rq);
  return 0;
}

/* The request offers HTTP/2 in its Upgrade header. */
static bool offers_h2c(const h2r_kv_t *kv) {
  const char *v = kv->value, *end = v + kv->vl;
  while (v < end) {
    while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
      v++;
    const char *tok = v;
    while (v < end && *v != ',' && *v != ' ' && *v != '\t')
      v++;
    if (v - tok == 3 && strncasecmp(tok, "h2c", 3) == 0)
      return true;
  }
  return false;
}

/* What RFC 9112 says a server must refuse (400): a field name that is not a
 * token ("Foo Bar", "X :"), and an HTTP/1.1 request without exactly one
 * Host. NULL when the head is fine. */
static const char *bad_head(const llhttp_t *h, const h2r_kv_t *kv, size_t n) {
  unsigned hosts = 0;
  for (size_t i = 0; i < n; i++) {
    if (!h2r_is_token(kv[i].name, kv[i].nl))
      return "a header field name is not a token";
    hosts += kv[i].nl == 4 && strncasecmp(kv[i].name, "host", 4) == 0;
  }
  if (hosts > 1)
    return "more than one Host";
  if (hosts == 0 && (h->http_major > 1 || (h->http_major == 1 && h->http_minor >= 1)))
    return "HTTP/1.1 without Host";
  return NULL;
}

static bool expects_continue(const h2r_kv_t *kv, unsigned n) {
  for (unsigned i = 0; i < n; i++)
    if (h2r_kv_expects_continue(&kv[i]))
      return true;
  return false;
}

static int on_headers_complete(llhttp_t *h) {
  h2r_h1c_t *c = h->data;
  uv_timer_stop(&c->timer);
  c->busy = true;
  c->keep_alive = llhttp_should_keep_alive(h);
  const char *method = llhttp_method_name((llhttp_method_t)llhttp_get_method(h));
  c->head_only = strcmp(method, "HEAD") == 0;
  c->chunked_out = false;
  h2r_kv_t kv[H2R_MAX_HEADERS];
  const h2r_hbuf_t *hb = &c->hb;
  bool chunked = false, has_cl = false, upgrade = llhttp_get_upgrade(h) != 0;
  const char *authority = "";
  size_t alen = 0;
  for (unsigned i = 0; i < hb->n; i++) {
    kv[i] = h2r_hbuf_kv(hb, i);
    if (kv[i].nl == 17 && strncasecmp(kv[i].name, "transfer-encoding", 17) == 0)
      chunked = true;
    if (kv[i].nl == 14 && strncasecmp(kv[i].name, "content-length", 14) == 0)
      has_cl = true;
    if (kv[i].nl == 4 && strncasecmp(kv[i].name, "host", 4) == 0)
      authority = kv[i].value, alen = kv[i].vl;
    /* No h2c upgrade here (RFC 9113 deprecates it): the request is served as
     * a plain one, as a server may ignore Upgrade; a proxy must not pass the
     * offer on to a server behind that could take it. */
    if (upgrade && h->method != HTTP_CONNECT && kv[i].nl == 7 &&
        strncasecmp(kv[i].name, "upgrade", 7) == 0 && offers_h2c(&kv[i]))
      upgrade = false;
  }
  if (!upgrade && h->upgrade)
    h->upgrade = 0; /* llhttp reads the body, if any, and parses what follows */
  const char *bad = bad_head(h, kv, hb->n);
  if (bad != NULL) {
    h2r_log_limited(c->log, &c->srv->rl, c->srv->loop, H2REV_LOG_INFO,
                    "%s: HTTP/1.1 request refused (400): %s", c->peer, bad);
    respond_text(c, 400, "bad request\n", true);
    return -1;
  }
  /* A client that waits for leave to send its body (curl does, a second,
   * for uploads over 1 MiB) gets it at once: the body is read as it comes,
   * with back-pressure, whatever the handler or the upstream will say. */
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  if ((chunked || has_cl) && h->http_minor >= 1 && expects_continue(kv, hb->n))
    out(c, cont, sizeof(cont) - 1, NULL, 0, NULL, 0);
  /* The URL and the Host are bounded by the head's limit (431) alone: the
   * request copies them whole. */
  h2r_h1head_t hd = {
      .method = method,
      .url = hb->buf,
      .urllen = hb->url_len,
      .authority = authority,
      .alen = alen,
      .scheme = c->scheme,
      .peer = c->peer,
      .hdrs = kv,
      .nhdrs = hb->n,
      .upgrade = upgrade,
  };
  /* CONNECT host:port (authority form): no path to route by; the
   * authority asked for is the request's. */
  if (h->method == HTTP_CONNECT && (hb->url_len == 0 || hb->buf[0] != '/')) {
    hd.authority = hb->buf;
    hd.alen = hb->url_len;
    hd.urllen = 0;
  }
  const h2r_route_t *route = c->srv->closing ? NULL
                             : h->method == HTTP_CONNECT && hd.urllen == 0
                                 ? c->srv->h1_events->connect_route(c->srv)
                                 : c->srv->h1_events->route(c->srv, hb->buf, hb->url_len);
  if (route == NULL) {
    respond_text(c, 404, "not found\n", true);
    return -1;
  }
  /* llhttp reports an upgrade request as having no body: the bytes after
   * the head wait for the handler's 101. */
  return start_handler(c, route, &hd, chunked, has_cl);
}

static int on_body(llhttp_t *h, const char *at, size_t len) {
  h2r_h1c_t *c = h->data;
  if (c->rq != NULL && c->srv->h1_events->body(c->rq, at, len))
    pause_input(c, true);
  return 0;
}

static int on_message_complete(llhttp_t *h) {
  h2r_h1c_t *c = h->data;
  c->in_message = false;
  /* An upgrade request's body is what follows a 101, not nothing. */
  if (c->rq != NULL && !llhttp_get_upgrade(h))
    c->srv->h1_events->end(c->rq);
  /* One exchange at a time: stop here until the response is done. */
  return c->busy ? HPE_PAUSED : 0;
}

static void keep_rest(h2r_h1c_t *c, const uint8_t *rest, size_t n) {
  if (n == 0)
    return;
  uint8_t *b = realloc(c->pending, c->npending + n);
  if (b == NULL) {
    c_dead(c, UV_ENOMEM);
    c_close_now(c);
    return;
  }
  memcpy(b + c->npending, rest, n);
  c->pending = b;
  c->npending += n;
  pause_input(c, true);
}

static void parse_error(h2r_h1c_t *c) {
  int status = c->hb.too_large ? 431 : 400;
  h2r_log_limited(c->log, &c->srv->rl, c->srv->loop, H2REV_LOG_INFO,
                  "%s: HTTP/1.1 request refused (%d): %s", c->peer, status,
                  c->hb.too_large ? "header block too large" : llhttp_get_error_reason(&c->parser));
  if (c->busy) {
    c_dead(c, H2REV_EPROTO);
    c_close_now(c);
    return;
  }
  respond_text(c, status, status == 431 ? "request header fields too large\n" : "bad request\n",
               true);
}

static void c_input(h2r_h1c_t *c, const uint8_t *p, size_t n) {
  if (c->closing || c->dead)
    return;
  if (c->raw) {
    c->raw_io = uv_now(c->srv->loop);
    if (c->rq != NULL && c->srv->h1_events->body(c->rq, (const char *)p, n))
      pause_input(c, true);
    return;
  }
  if (c->busy && llhttp_get_errno(&c->parser) == HPE_PAUSED) {
    keep_rest(c, p, n);
    return;
  }
  c->parsing = true;
  llhttp_errno_t e = llhttp_execute(&c->parser, (const char *)p, n);
  c->parsing = false;
  if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
    const uint8_t *rest = (const uint8_t *)llhttp_get_error_pos(&c->parser);
    keep_rest(c, rest, (size_t)(p + n - rest));
  } else if (e != HPE_OK && !c->closing && !c->dead) {
    parse_error(c);
    return;
  }
  if (c->next_pending) {
    c->next_pending = false;
    next_request(c);
  }
}

/* ---------------------------------------------- the session's hooks */

static void ops_read(h2r_session_t *s, const uint8_t *p, size_t n) {
  c_input(s->h1_data, p, n);
}

static void ops_dead(h2r_session_t *s, int err) {
  c_dead(s->h1_data, err != 0 ? err : H2REV_ECLOSED);
}

static void raw_idle_check(uv_timer_t *t) {
  h2r_h1c_t *c = t->data;
  if (c->dead || uv_now(c->srv->loop) - c->raw_io < RAW_DRAIN_IDLE_MS)
    return;
  H2R_DEBUG(c->log, "%s: draining: an upgraded connection idle both ways: closing", c->peer);
  c_dead(c, H2REV_ECLOSED);
  c_close_now(c);
}

static void c_shutdown(h2r_h1c_t *c) {
  c->draining = true;
  if (c->raw && c->busy && !c->dead && c->timer_open)
    uv_timer_start(&c->timer, raw_idle_check, RAW_DRAIN_IDLE_MS / 4, RAW_DRAIN_IDLE_MS / 4);
  if (!c->busy && !c->closing) {
    c->closing = true;
    if (c->writes == 0)
      c_close_now(c);
  }
}

static void ops_shutdown(h2r_session_t *s) {
  c_shutdown(s->h1_data);
}

/* The client ended its side (a TCP FIN, TLS close_notify). A CONNECT
 * tunnel's client still reads the answer, as over TCP: the end reaches the
 * handler as the end of the body, the connection stays. With no request
 * under way, or one whose body is complete, the answer still goes out and
 * the connection closes after it. Cut in the middle of a request, or
 * upgraded otherwise (WebSocket), the connection is over. */
static bool ops_eof(h2r_session_t *s) {
  h2r_h1c_t *c = s->h1_data;
  if (c->dead)
    return false;
  if (c->raw) {
    if (c->rq == NULL || c->parser.method != HTTP_CONNECT)
      return false;
    if (!c->peer_eof) {
      c->peer_eof = true;
      c->srv->h1_events->end(c->rq);
    }
    return true;
  }
  if (c->in_message)
    return false;
  c_shutdown(c);
  return true;
}

const h2r_h1_ops h2r_h1c_ops = {ops_read, ops_dead, ops_shutdown, ops_eof};

void h2r_h1c_shutdown(h2r_h1c_t *c) {
  c_shutdown(c);
}

void h2r_h1c_close(h2r_h1c_t *c) {
  c->closing = true;
  c_dead(c, H2REV_ECLOSED);
  c_close_now(c);
}

static void slow_head(uv_timer_t *t) {
  h2r_h1c_t *c = t->data;
  if (c->busy) {
    c_dead(c, UV_ETIMEDOUT);
    c_close_now(c);
    return;
  }
  if (!c->in_message) { /* idle between requests: just close */
    c->closing = true;
    c_close_now(c);
    return;
  }
  h2r_log_limited(c->log, &c->srv->rl, c->srv->loop, H2REV_LOG_INFO,
                  "%s: no complete request head in time: closing", c->peer);
  respond_text(c, 408, "request timeout\n", true);
}

static h2r_h1c_t *c_new(h2r_server_t *srv, const h1io_t *io, const char *peer, const char *scheme) {
  h2r_h1c_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->io = io;
  c->srv = srv;
  c->log = &srv->o.log;
  c->peer = peer;
  c->scheme = scheme;
  c->refs = 1;
  c->cancel.fn = cancel_run;
  c->ck_tail = &c->ck_head;
  c->hb.max = srv->o.max_header_bytes;
  llhttp_settings_init(&c->settings);
  c->settings.on_message_begin = on_message_begin;
  c->settings.on_url = on_url;
  c->settings.on_header_field = on_hfield;
  c->settings.on_header_value = on_hvalue;
  c->settings.on_header_value_complete = on_hvalue_done;
  c->settings.on_headers_complete = on_headers_complete;
  c->settings.on_body = on_body;
  c->settings.on_message_complete = on_message_complete;
  llhttp_init(&c->parser, HTTP_REQUEST, &c->settings);
  c->parser.data = c;
  uv_timer_init(srv->loop, &c->timer);
  c->timer.data = c;
  c->timer_open = true;
  if (srv->unref)
    uv_unref((uv_handle_t *)&c->timer);
  /* The first request head is due within the header timeout. */
  c->in_message = true;
  uv_timer_start(&c->timer, slow_head, srv->o.header_timeout_ms, 0);
  srv->h1_events->ref(srv);
  return c;
}

void h2r_h1c_set_unref(h2r_h1c_t *c, bool unref) {
  if (c->timer_open)
    h2r_handle_ref(&c->timer, unref);
}

h2r_h1c_t *h2r_h1c_new(h2r_session_t *s, h2r_server_t *srv) {
  h2r_h1c_t *c = c_new(srv, &x_io, s->x.peer, s->x.ssl != NULL ? "https" : "http");
  if (c != NULL)
    c->s = s;
  return c;
}

h2r_h1c_t *h2r_h1c_new_stream(h2r_server_t *srv, h2rev_stream_t *stream, h2rev_close_cb done) {
  char *buf = malloc(VREAD_SIZE);
  if (buf == NULL)
    return NULL;
  h2r_h1c_t *c = c_new(srv, &v_io, "", "http");
  if (c == NULL) {
    free(buf);
    return NULL;
  }
  c->vrbuf = buf;
  c->vs = stream;
  c->vs_done = done;
  stream->data = c;
  c->vnext = srv->vconns;
  if (srv->vconns != NULL)
    srv->vconns->vprev = c;
  srv->vconns = c;
  h2rev_stream_read_start(stream, v_alloc, v_read);
  return c;
}

void h2r_h1c_free(h2r_h1c_t *c) {
  c_dead(c, H2REV_ECLOSED);
  c_unref(c);
}
