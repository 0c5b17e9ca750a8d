/*
 * h2rev for Node.js: the N-API glue. Everything runs on the environment's own
 * libuv loop (napi_get_uv_event_loop), without threads. index.js builds the
 * JavaScript API on top of these low-level functions.
 *
 * Each native object (dialer, listener, stream) has a numeric id; events go to
 * JavaScript through one dispatch function per environment,
 * dispatch(id, event, a, b, c, d), so that the glue holds one reference to
 * JavaScript per environment and none per object. JavaScript holds each
 * object's pointer as an external and never uses it after asking for the
 * close; the memory is freed once the library's close callback has run.
 *
 * Workers: all state is per environment (napi_set_instance_data). When an
 * environment goes away (a Worker ends or is terminated), an async cleanup
 * hook closes every handle still open and completes once their close
 * callbacks have run, so no callback runs into an unloaded addon.
 */
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "h2rev.h"

/* Keep in step with index.js. */
enum {
  EV_READ = 1,
  EV_EOF = 2,
  EV_ERROR = 3,
  EV_WRITE = 4,
  EV_SHUTDOWN = 5,
  EV_CLOSE = 6,
  EV_DIAL = 7,
  EV_ATTACH = 8,
  EV_DETACH = 9,
  EV_CONNECTION = 10,
  EV_STATE = 11,
};

enum { K_DIALER = 1, K_LISTENER = 2, K_STREAM = 3 };

/* One read's buffer; larger reads come in several calls. */
#define READ_BUF_SIZE (64 * 1024)
/* Buffers one write call may gather (a _writev batch). */
#define MAX_WRITE_BUFS 1024
/* Extra request headers a listener may send (the library's bound). */
#define MAX_HEADERS 32
/* Longest text taken from JavaScript (URLs, ids, host names, tokens). */
#define MAX_STRING (16 * 1024)
/* Longest PEM text (a certificate chain, a CA bundle). */
#define MAX_PEM (4 * 1024 * 1024)

typedef struct nenv nenv_t;
typedef struct nobj nobj_t;

struct nobj {
  int kind;
  int closing;
  double id;
  nenv_t *e;
  nobj_t *prev, *next;
};

struct nenv {
  napi_env env;
  uv_loop_t *loop;
  napi_ref dispatch;
  napi_async_cleanup_hook_handle hook;
  nobj_t objs; /* list head */
  unsigned live;
  int gone;      /* the environment is being torn down: no JavaScript any more */
  int finalized; /* napi's instance data finalizer ran */
  double next_id;
  int rbuf_busy;
  char rbuf[READ_BUF_SIZE];
};

typedef struct {
  nobj_t o;
  h2rev_dialer_t d;
  char *auth; /* "Bearer <token>" listeners must send, or NULL */
} ndialer_t;

typedef struct {
  nobj_t o;
  h2rev_listener_t l;
  int forward; /* serves every connection from the upstream */
  int up_init;
  h2rev_upstream_t up;
} nlistener_t;

typedef struct {
  nobj_t o;
  h2rev_stream_t s;
  h2rev_dial_t dial;
  int dialing;
  int open;
} nstream_t;

/* ------------------------------------------------------------ plumbing */

static void env_maybe_done(nenv_t *e);

static void obj_add(nenv_t *e, nobj_t *o, int kind) {
  o->kind = kind;
  o->e = e;
  o->id = ++e->next_id;
  o->next = e->objs.next;
  o->prev = &e->objs;
  e->objs.next->prev = o;
  e->objs.next = o;
  e->live++;
}

/* Out of the list (and of the live count) before its last event reaches
 * JavaScript, so that code run on that event sees it gone. */
static void obj_unlink(nobj_t *o) {
  if (o->prev == NULL)
    return;
  o->prev->next = o->next;
  o->next->prev = o->prev;
  o->prev = o->next = NULL;
  o->e->live--;
}

static void obj_free(nobj_t *o) {
  nenv_t *e = o->e;
  obj_unlink(o);
  free(o);
  env_maybe_done(e);
}

/* Calls dispatch(id, ev, a, b, c, d) from a libuv callback (NULL args are
 * undefined). make_callback runs the microtasks and the nextTick queue after
 * it, as for any I/O callback; an exception becomes 'uncaughtException'. */
static void emit(nobj_t *o, int ev, napi_value a, napi_value b, napi_value c, napi_value d) {
  nenv_t *e = o->e;
  napi_env env = e->env;
  napi_value fn, recv, undef, argv[6], res;
  if (e->gone || e->dispatch == NULL)
    return;
  if (napi_get_reference_value(env, e->dispatch, &fn) != napi_ok || fn == NULL)
    return;
  napi_get_undefined(env, &undef);
  napi_get_global(env, &recv);
  napi_create_double(env, o->id, &argv[0]);
  napi_create_int32(env, ev, &argv[1]);
  argv[2] = a ? a : undef;
  argv[3] = b ? b : undef;
  argv[4] = c ? c : undef;
  argv[5] = d ? d : undef;
  if (napi_make_callback(env, NULL, recv, fn, 6, argv, &res) == napi_pending_exception) {
    napi_value exc;
    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok)
      napi_fatal_exception(env, exc);
  }
}

static napi_value int_value(napi_env env, int v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

static napi_value str_value(napi_env env, const char *s) {
  napi_value r;
  if (s == NULL)
    napi_get_null(env, &r);
  else
    napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r);
  return r;
}

/* Throws an Error with code (ENOLISTENER, ETIMEDOUT: the name without the
 * library's prefix) and errno (the library's number). */
static napi_value throw_code(napi_env env, int err) {
  const char *name = h2rev_err_name(err);
  napi_value msg, code, error;
  if (strncmp(name, "H2REV_", 6) == 0)
    name += 6;
  napi_create_string_utf8(env, h2rev_strerror(err), NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, NULL, msg, &error);
  napi_set_named_property(env, error, "code", code);
  napi_set_named_property(env, error, "errno", int_value(env, err));
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

static nenv_t *get_env(napi_env env) {
  nenv_t *e = NULL;
  napi_get_instance_data(env, (void **)&e);
  return e;
}

/* A string argument, malloc'ed (NULL for null/undefined, or on error with
 * *bad set). */
static char *get_string(napi_env env, napi_value v, size_t max, int *bad) {
  napi_valuetype t;
  size_t len;
  char *s;
  if (napi_typeof(env, v, &t) != napi_ok || t == napi_undefined || t == napi_null)
    return NULL;
  if (t != napi_string || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok ||
      len > max) {
    *bad = 1;
    return NULL;
  }
  s = malloc(len + 1);
  if (s == NULL || napi_get_value_string_utf8(env, v, s, len + 1, &len) != napi_ok) {
    free(s);
    *bad = 1;
    return NULL;
  }
  return s;
}

static char *get_prop_string(napi_env env, napi_value obj, const char *name, size_t max, int *bad) {
  napi_value v;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) {
    *bad = 1;
    return NULL;
  }
  return get_string(env, v, max, bad);
}

static double get_prop_number(napi_env env, napi_value obj, const char *name, double dflt) {
  napi_value v;
  double d;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok ||
      napi_get_value_double(env, v, &d) != napi_ok)
    return dflt;
  return d;
}

static int get_prop_bool(napi_env env, napi_value obj, const char *name) {
  napi_value v;
  bool b = false;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok)
    return 0;
  napi_coerce_to_bool(env, v, &v);
  napi_get_value_bool(env, v, &b);
  return b;
}

static void *get_ptr(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external)
    return NULL;
  napi_get_value_external(env, v, &p);
  return p;
}

/* The object an external names, if of that kind and not closing. */
static nobj_t *get_obj(napi_env env, napi_value v, int kind) {
  nobj_t *o = get_ptr(env, v);
  if (o == NULL || o->kind != kind || o->closing)
    return NULL;
  return o;
}

static napi_value make_handle(napi_env env, nobj_t *o) {
  napi_value arr, ext, id;
  napi_create_array_with_length(env, 2, &arr);
  napi_create_external(env, o, NULL, NULL, &ext);
  napi_create_double(env, o->id, &id);
  napi_set_element(env, arr, 0, ext);
  napi_set_element(env, arr, 1, id);
  return arr;
}

#define ARGS(n)                                                                                    \
  size_t argc = (n);                                                                               \
  napi_value argv[(n) > 0 ? (n) : 1];                                                              \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)                             \
    return NULL;                                                                                   \
  for (size_t i_ = argc; i_ < (n); i_++)                                                           \
    napi_get_undefined(env, &argv[i_]);

static napi_value undefined(napi_env env) {
  napi_value r;
  napi_get_undefined(env, &r);
  return r;
}

/* --------------------------------------------------------------- streams */

static nstream_t *stream_new(nenv_t *e) {
  nstream_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  obj_add(e, &s->o, K_STREAM);
  s->s.data = s;
  return s;
}

static void on_alloc(h2rev_stream_t *stream, size_t suggested, uv_buf_t *buf) {
  nstream_t *s = stream->data;
  nenv_t *e = s->o.e;
  (void)suggested;
  if (!e->rbuf_busy) {
    e->rbuf_busy = 1;
    *buf = uv_buf_init(e->rbuf, sizeof(e->rbuf));
    return;
  }
  buf->base = malloc(READ_BUF_SIZE);
  buf->len = buf->base ? READ_BUF_SIZE : 0;
}

static void release_buf(nenv_t *e, const uv_buf_t *buf) {
  if (buf == NULL || buf->base == NULL)
    return;
  if (buf->base == e->rbuf)
    e->rbuf_busy = 0;
  else
    free(buf->base);
}

static void on_read(h2rev_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  nstream_t *s = stream->data;
  nenv_t *e = s->o.e;
  napi_handle_scope scope;
  if (nread == 0 || e->gone || s->o.closing) {
    release_buf(e, buf);
    return;
  }
  napi_open_handle_scope(e->env, &scope);
  if (nread > 0) {
    napi_value b;
    void *data;
    if (napi_create_buffer_copy(e->env, (size_t)nread, buf->base, &data, &b) == napi_ok) {
      release_buf(e, buf);
      emit(&s->o, EV_READ, b, NULL, NULL, NULL);
    } else {
      release_buf(e, buf);
      emit(&s->o, EV_ERROR, int_value(e->env, UV_ENOMEM), NULL, NULL, NULL);
    }
  } else {
    release_buf(e, buf);
    if (nread == UV_EOF)
      emit(&s->o, EV_EOF, NULL, NULL, NULL, NULL);
    else
      emit(&s->o, EV_ERROR, int_value(e->env, (int)nread), NULL, NULL, NULL);
  }
  napi_close_handle_scope(e->env, scope);
}

static void on_write(h2rev_write_t *req, int status) {
  nstream_t *s = req->data;
  nenv_t *e = s->o.e;
  free(req);
  if (!e->gone) {
    napi_handle_scope scope;
    napi_open_handle_scope(e->env, &scope);
    emit(&s->o, EV_WRITE, int_value(e->env, status), NULL, NULL, NULL);
    napi_close_handle_scope(e->env, scope);
  }
}

static void on_shutdown(h2rev_shutdown_t *req, int status) {
  nstream_t *s = req->data;
  nenv_t *e = s->o.e;
  free(req);
  if (!e->gone) {
    napi_handle_scope scope;
    napi_open_handle_scope(e->env, &scope);
    emit(&s->o, EV_SHUTDOWN, int_value(e->env, status), NULL, NULL, NULL);
    napi_close_handle_scope(e->env, scope);
  }
}

static void on_stream_closed(h2rev_stream_t *stream) {
  nstream_t *s = stream->data;
  nenv_t *e = s->o.e;
  obj_unlink(&s->o);
  if (!e->gone) {
    napi_handle_scope scope;
    napi_open_handle_scope(e->env, &scope);
    emit(&s->o, EV_CLOSE, NULL, NULL, NULL, NULL);
    napi_close_handle_scope(e->env, scope);
  }
  obj_free(&s->o);
}

static void stream_close(nstream_t *s) {
  s->o.closing = 1;
  h2rev_stream_close(&s->s, on_stream_closed);
}

/* readStart(h) -> 0 or an error code */
static napi_value js_read_start(napi_env env, napi_callback_info info) {
  ARGS(1);
  nstream_t *s = (nstream_t *)get_obj(env, argv[0], K_STREAM);
  if (s == NULL || !s->open)
    return int_value(env, UV_EBADF);
  int r = h2rev_stream_read_start(&s->s, on_alloc, on_read);
  return int_value(env, r == UV_EALREADY ? 0 : r);
}

static napi_value js_read_stop(napi_env env, napi_callback_info info) {
  ARGS(1);
  nstream_t *s = (nstream_t *)get_obj(env, argv[0], K_STREAM);
  if (s == NULL || !s->open)
    return int_value(env, UV_EBADF);
  return int_value(env, h2rev_stream_read_stop(&s->s));
}

/* write(h, buffer | buffer[]) -> 0 or an error code; EV_WRITE(status) follows
 * a 0. The caller keeps the buffers alive until then. */
static napi_value js_write(napi_env env, napi_callback_info info) {
  ARGS(2);
  nstream_t *s = (nstream_t *)get_obj(env, argv[0], K_STREAM);
  uv_buf_t one, *bufs = &one;
  unsigned n = 1;
  bool is_array = false;
  h2rev_write_t *req;
  int r;
  if (s == NULL || !s->open)
    return int_value(env, UV_EBADF);
  napi_is_array(env, argv[1], &is_array);
  if (is_array) {
    uint32_t len;
    napi_get_array_length(env, argv[1], &len);
    if (len == 0 || len > MAX_WRITE_BUFS)
      return throw_type(env, "write: 1 to 1024 buffers");
    bufs = malloc(len * sizeof(*bufs));
    if (bufs == NULL)
      return int_value(env, UV_ENOMEM);
    for (uint32_t i = 0; i < len; i++) {
      napi_value el;
      void *data;
      size_t blen;
      napi_get_element(env, argv[1], i, &el);
      if (napi_get_buffer_info(env, el, &data, &blen) != napi_ok) {
        free(bufs);
        return throw_type(env, "write: chunks must be Buffers");
      }
      bufs[i] = uv_buf_init(data, (unsigned)blen);
    }
    n = len;
  } else {
    void *data;
    size_t blen;
    if (napi_get_buffer_info(env, argv[1], &data, &blen) != napi_ok)
      return throw_type(env, "write: chunk must be a Buffer");
    one = uv_buf_init(data, (unsigned)blen);
  }
  req = malloc(sizeof(*req));
  if (req == NULL) {
    r = UV_ENOMEM;
  } else {
    req->data = s;
    r = h2rev_stream_write(req, &s->s, bufs, n, on_write);
    if (r != 0)
      free(req);
  }
  if (bufs != &one)
    free(bufs);
  return int_value(env, r);
}

/* shutdown(h) -> 0 or an error code; EV_SHUTDOWN(status) follows a 0. */
static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  ARGS(1);
  nstream_t *s = (nstream_t *)get_obj(env, argv[0], K_STREAM);
  h2rev_shutdown_t *req;
  int r;
  if (s == NULL || !s->open)
    return int_value(env, UV_EBADF);
  req = malloc(sizeof(*req));
  if (req == NULL)
    return int_value(env, UV_ENOMEM);
  req->data = s;
  r = h2rev_stream_shutdown(req, &s->s, on_shutdown);
  if (r != 0)
    free(req);
  return int_value(env, r);
}

/* close(h): EV_CLOSE follows; the handle is not to be used again. */
static napi_value js_close_stream(napi_env env, napi_callback_info info) {
  ARGS(1);
  nstream_t *s = (nstream_t *)get_obj(env, argv[0], K_STREAM);
  if (s != NULL && s->open)
    stream_close(s);
  return undefined(env);
}

static napi_value js_write_queue(napi_env env, napi_callback_info info) {
  ARGS(1);
  nstream_t *s = (nstream_t *)get_obj(env, argv[0], K_STREAM);
  napi_value r;
  napi_create_double(env, s && s->open ? (double)h2rev_stream_write_queue_size(&s->s) : 0, &r);
  return r;
}

/* ---------------------------------------------------------------- dialer */

static int dialer_authorize(void *arg, const char *id, const h2rev_header_t *headers,
                            size_t nheaders, const h2rev_peer_t *peer) {
  ndialer_t *d = arg;
  (void)id;
  (void)peer;
  for (size_t i = 0; i < nheaders; i++) {
    if (strcmp(headers[i].name, "authorization") != 0)
      continue;
    /* Compared in full whatever the first difference, so that the time
     * taken says nothing about the token. */
    size_t la = strlen(d->auth), lb = strlen(headers[i].value);
    unsigned char diff = la != lb;
    for (size_t k = 0; k < la && k < lb; k++)
      diff |= (unsigned char)(d->auth[k] ^ headers[i].value[k]);
    return diff ? -1 : 0;
  }
  return -1;
}

static void dialer_on_listener(h2rev_dialer_t *dialer, int event, const h2rev_listener_info_t *li) {
  ndialer_t *d = dialer->data;
  nenv_t *e = d->o.e;
  napi_handle_scope scope;
  if (e->gone || d->o.closing)
    return;
  napi_open_handle_scope(e->env, &scope);
  emit(&d->o, event == H2REV_EV_ATTACH ? EV_ATTACH : EV_DETACH, str_value(e->env, li->id),
       str_value(e->env, li->peer), NULL, NULL);
  napi_close_handle_scope(e->env, scope);
}

/* dialerNew({basePath, token, dialTimeout}) -> [external, id] */
static napi_value js_dialer_new(napi_env env, napi_callback_info info) {
  ARGS(1);
  nenv_t *e = get_env(env);
  h2rev_dialer_options_t opts;
  int bad = 0, r;
  char *base = get_prop_string(env, argv[0], "basePath", MAX_STRING, &bad);
  char *token = get_prop_string(env, argv[0], "token", MAX_STRING, &bad);
  ndialer_t *d = NULL;
  if (bad) {
    free(base);
    free(token);
    return throw_type(env, "dialer: basePath and token must be strings");
  }
  d = calloc(1, sizeof(*d));
  if (d == NULL)
    goto nomem;
  if (token != NULL) {
    d->auth = malloc(strlen(token) + sizeof("Bearer "));
    if (d->auth == NULL)
      goto nomem;
    strcpy(d->auth, "Bearer ");
    strcat(d->auth, token);
  }
  memset(&opts, 0, sizeof(opts));
  opts.base_path = base;
  opts.dial_timeout_ms = (unsigned)get_prop_number(env, argv[0], "dialTimeout", 0);
  opts.on_listener = dialer_on_listener;
  if (d->auth != NULL) {
    opts.authorize = dialer_authorize;
    opts.authorize_arg = d;
  }
  r = h2rev_dialer_init(e->loop, &d->d, &opts);
  free(base);
  free(token);
  if (r != 0) {
    free(d->auth);
    free(d);
    return throw_code(env, r);
  }
  d->d.data = d;
  obj_add(e, &d->o, K_DIALER);
  return make_handle(env, &d->o);
nomem:
  free(base);
  free(token);
  if (d != NULL)
    free(d->auth);
  free(d);
  return throw_code(env, UV_ENOMEM);
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (strchr(host, ':') != NULL)
    return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
  return uv_ip4_addr(host, port, (struct sockaddr_in *)ss);
}

/* dialerListen(h, host, port, {cert, key, ca, requestCert}|null) */
static napi_value js_dialer_listen(napi_env env, napi_callback_info info) {
  ARGS(4);
  ndialer_t *d = (ndialer_t *)get_obj(env, argv[0], K_DIALER);
  int bad = 0, r, port;
  char *host, *cert = NULL, *key = NULL, *ca = NULL;
  napi_valuetype t;
  struct sockaddr_storage ss;
  h2rev_tls_options_t tls;
  if (d == NULL)
    return throw_code(env, UV_EBADF);
  host = get_string(env, argv[1], MAX_STRING, &bad);
  if (bad || host == NULL || napi_get_value_int32(env, argv[2], &port) != napi_ok) {
    free(host);
    return throw_type(env, "listen: host must be a string, port a number");
  }
  r = parse_addr(host, port, &ss);
  free(host);
  if (r != 0)
    return throw_code(env, r);
  napi_typeof(env, argv[3], &t);
  memset(&tls, 0, sizeof(tls));
  if (t == napi_object) {
    cert = get_prop_string(env, argv[3], "cert", MAX_PEM, &bad);
    key = get_prop_string(env, argv[3], "key", MAX_PEM, &bad);
    ca = get_prop_string(env, argv[3], "ca", MAX_PEM, &bad);
    if (bad || cert == NULL || key == NULL) {
      free(cert);
      free(key);
      free(ca);
      return throw_type(env, "listen: cert and key must be PEM text");
    }
    tls.cert_pem = cert;
    tls.key_pem = key;
    tls.ca_pem = ca;
    if (ca != NULL)
      tls.verify_client = get_prop_bool(env, argv[3], "requireCert") ? H2REV_VERIFY_CLIENT_REQUIRE
                                                                     : H2REV_VERIFY_CLIENT_REQUEST;
  }
  r = h2rev_dialer_listen(&d->d, (struct sockaddr *)&ss, t == napi_object ? &tls : NULL);
  free(cert);
  free(key);
  free(ca);
  if (r != 0)
    return throw_code(env, r);
  return undefined(env);
}

/* dialerAddress(h, n) -> {address, family, port} or null */
static napi_value js_dialer_address(napi_env env, napi_callback_info info) {
  ARGS(1);
  ndialer_t *d = (ndialer_t *)get_obj(env, argv[0], K_DIALER);
  struct sockaddr_storage ss;
  int len = sizeof(ss), port;
  char name[64];
  napi_value obj;
  if (d == NULL || h2rev_dialer_getsockname(&d->d, 0, (struct sockaddr *)&ss, &len) != 0) {
    napi_get_null(env, &obj);
    return obj;
  }
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, name, sizeof(name));
    port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, name, sizeof(name));
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "address", str_value(env, name));
  napi_set_named_property(env, obj, "family",
                          str_value(env, ss.ss_family == AF_INET6 ? "IPv6" : "IPv4"));
  napi_set_named_property(env, obj, "port", int_value(env, port));
  return obj;
}

static void on_dial(h2rev_dial_t *req, int status) {
  nstream_t *s = req->data;
  nenv_t *e = s->o.e;
  s->dialing = 0;
  if (status == 0)
    s->open = 1;
  if (e->gone) {
    if (status == 0)
      stream_close(s);
    else
      obj_free(&s->o);
    return;
  }
  napi_handle_scope scope;
  napi_open_handle_scope(e->env, &scope);
  if (status == 0) {
    napi_value ext;
    napi_create_external(e->env, s, NULL, NULL, &ext);
    emit(&s->o, EV_DIAL, int_value(e->env, 0), ext, NULL, NULL);
  } else {
    emit(&s->o, EV_DIAL, int_value(e->env, status), str_value(e->env, h2rev_dial_strerror(req)),
         NULL, NULL);
  }
  napi_close_handle_scope(e->env, scope);
  if (status != 0)
    obj_free(&s->o);
}

/* dialerDial(h, id, timeoutMs) -> the stream's id; EV_DIAL(status, external
 * or message) to that id follows. */
static napi_value js_dialer_dial(napi_env env, napi_callback_info info) {
  ARGS(3);
  ndialer_t *d = (ndialer_t *)get_obj(env, argv[0], K_DIALER);
  nenv_t *e = get_env(env);
  int bad = 0, r;
  double timeout = 0;
  char *id;
  nstream_t *s;
  napi_value v;
  if (d == NULL)
    return throw_code(env, UV_EBADF);
  id = get_string(env, argv[1], MAX_STRING, &bad);
  if (bad || id == NULL) {
    free(id);
    return throw_type(env, "dial: id must be a string");
  }
  napi_get_value_double(env, argv[2], &timeout);
  s = stream_new(e);
  if (s == NULL) {
    free(id);
    return throw_code(env, UV_ENOMEM);
  }
  s->dial.data = s;
  r = h2rev_dial(&s->dial, &d->d, id, &s->s, timeout > 0 ? (unsigned)timeout : 0, on_dial);
  free(id);
  if (r != 0) {
    obj_free(&s->o);
    return throw_code(env, r);
  }
  s->dialing = 1;
  napi_create_double(env, s->o.id, &v);
  return v;
}

static void on_dialer_closed(h2rev_dialer_t *dialer) {
  ndialer_t *d = dialer->data;
  nenv_t *e = d->o.e;
  obj_unlink(&d->o);
  if (!e->gone) {
    napi_handle_scope scope;
    napi_open_handle_scope(e->env, &scope);
    emit(&d->o, EV_CLOSE, NULL, NULL, NULL, NULL);
    napi_close_handle_scope(e->env, scope);
  }
  free(d->auth);
  obj_free(&d->o);
}

static napi_value js_dialer_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  ndialer_t *d = (ndialer_t *)get_obj(env, argv[0], K_DIALER);
  if (d != NULL) {
    d->o.closing = 1;
    h2rev_dialer_close(&d->d, on_dialer_closed);
  }
  return undefined(env);
}

static napi_value js_dialer_ref(napi_env env, napi_callback_info info) {
  ARGS(2);
  ndialer_t *d = (ndialer_t *)get_obj(env, argv[0], K_DIALER);
  bool ref = true;
  napi_get_value_bool(env, argv[1], &ref);
  if (d != NULL) {
    if (ref)
      h2rev_dialer_ref(&d->d);
    else
      h2rev_dialer_unref(&d->d);
  }
  return undefined(env);
}

/* -------------------------------------------------------------- listener */

static void listener_on_state(h2rev_listener_t *listener, int state, int err, unsigned delay) {
  nlistener_t *l = listener->data;
  nenv_t *e = l->o.e;
  napi_handle_scope scope;
  char text[512] = "";
  int permanent = 0;
  napi_value extra, v;
  if (e->gone || l->o.closing)
    return;
  if (state == H2REV_LISTENER_LOST || state == H2REV_LISTENER_RETRYING ||
      state == H2REV_LISTENER_STOPPED)
    h2rev_listener_last_error(listener, text, sizeof(text), &permanent);
  napi_open_handle_scope(e->env, &scope);
  napi_create_object(e->env, &extra);
  napi_create_uint32(e->env, delay, &v);
  napi_set_named_property(e->env, extra, "delay", v);
  napi_set_named_property(e->env, extra, "message", str_value(e->env, text));
  napi_get_boolean(e->env, permanent != 0, &v);
  napi_set_named_property(e->env, extra, "permanent", v);
  emit(&l->o, EV_STATE, int_value(e->env, state), int_value(e->env, err), extra, NULL);
  napi_close_handle_scope(e->env, scope);
}

static void forward_done(h2rev_stream_t *stream) {
  free(stream);
}

static void listener_on_connection(h2rev_listener_t *listener, int status) {
  nlistener_t *l = listener->data;
  nenv_t *e = l->o.e;
  if (status != 0)
    return;
  for (;;) {
    if (l->forward) {
      h2rev_stream_t *st = malloc(sizeof(*st));
      if (st == NULL)
        return;
      if (h2rev_listener_accept(listener, st) != 0) {
        free(st);
        return;
      }
      if (h2rev_upstream_serve(&l->up, st, forward_done) != 0) {
        h2rev_stream_close(st, forward_done);
      }
      continue;
    }
    nstream_t *s = stream_new(e);
    if (s == NULL)
      return;
    if (h2rev_listener_accept(listener, &s->s) != 0) {
      obj_free(&s->o);
      return;
    }
    s->s.data = s;
    s->open = 1;
    if (e->gone || l->o.closing) {
      stream_close(s);
      continue;
    }
    napi_handle_scope scope;
    napi_value ext, id;
    napi_open_handle_scope(e->env, &scope);
    napi_create_external(e->env, s, NULL, NULL, &ext);
    napi_create_double(e->env, s->o.id, &id);
    emit(&l->o, EV_CONNECTION, ext, id, NULL, NULL);
    napi_close_handle_scope(e->env, scope);
  }
}

static void on_upstream_abandoned(h2rev_upstream_t *up) {
  nlistener_t *l = up->data;
  obj_free(&l->o);
}

/* listenerNew({url, id, headers, ca, cert, key, insecure, serverName,
 *              spares, upstream, upstreamInsecure}) -> [external, id].
 * With upstream set, every reverse connection is served from that URL
 * (h2rev_upstream) and none reaches JavaScript. */
static napi_value js_listener_new(napi_env env, napi_callback_info info) {
  ARGS(1);
  nenv_t *e = get_env(env);
  h2rev_listener_options_t opts;
  h2rev_upstream_options_t uopts;
  nlistener_t *l;
  int bad = 0, r;
  char *url, *id, *ca, *cert, *key, *sni, *upstream, *headers[MAX_HEADERS + 1];
  napi_value hv;
  bool is_array = false;
  uint32_t nh = 0;

  memset(headers, 0, sizeof(headers));
  url = get_prop_string(env, argv[0], "url", MAX_STRING, &bad);
  id = get_prop_string(env, argv[0], "id", MAX_STRING, &bad);
  ca = get_prop_string(env, argv[0], "ca", MAX_PEM, &bad);
  cert = get_prop_string(env, argv[0], "cert", MAX_PEM, &bad);
  key = get_prop_string(env, argv[0], "key", MAX_PEM, &bad);
  sni = get_prop_string(env, argv[0], "serverName", MAX_STRING, &bad);
  upstream = get_prop_string(env, argv[0], "upstream", MAX_STRING, &bad);
  if (napi_get_named_property(env, argv[0], "headers", &hv) == napi_ok &&
      napi_is_array(env, hv, &is_array) == napi_ok && is_array) {
    napi_get_array_length(env, hv, &nh);
    if (nh > MAX_HEADERS) {
      bad = 1;
      nh = 0;
    }
    for (uint32_t i = 0; i < nh; i++) {
      napi_value el;
      napi_get_element(env, hv, i, &el);
      headers[i] = get_string(env, el, MAX_STRING, &bad);
    }
  }
  l = calloc(1, sizeof(*l));
  r = 0;
  if (bad || url == NULL || id == NULL) {
    r = 1;
  } else if (l == NULL) {
    r = UV_ENOMEM;
  } else {
    memset(&opts, 0, sizeof(opts));
    opts.url = url;
    opts.id = id;
    opts.tls.ca_pem = ca;
    opts.tls.cert_pem = cert;
    opts.tls.key_pem = key;
    opts.tls.server_name = sni;
    opts.tls.insecure = get_prop_bool(env, argv[0], "insecure");
    opts.headers = nh > 0 ? (const char *const *)headers : NULL;
    opts.spares = (unsigned)get_prop_number(env, argv[0], "spares", 0);
    opts.on_state = listener_on_state;
    if (upstream != NULL) {
      memset(&uopts, 0, sizeof(uopts));
      uopts.url = upstream;
      uopts.tls.insecure = get_prop_bool(env, argv[0], "upstreamInsecure");
      r = h2rev_upstream_init(e->loop, &l->up, &uopts);
      if (r == 0) {
        l->up_init = 1;
        l->forward = 1;
      }
    }
    if (r == 0)
      r = h2rev_listener_init(e->loop, &l->l, &opts);
  }
  free(url);
  free(id);
  free(ca);
  free(cert);
  free(key);
  free(sni);
  free(upstream);
  for (uint32_t i = 0; i < nh; i++)
    free(headers[i]);
  if (r == 1) {
    free(l);
    return throw_type(env, "listen: url and id must be strings");
  }
  if (r != 0) {
    if (l != NULL && l->up_init) {
      /* The upstream's handles close on a later turn: l lives until then. */
      l->up.data = l;
      obj_add(e, &l->o, K_LISTENER);
      l->o.closing = 1;
      h2rev_upstream_close(&l->up, on_upstream_abandoned);
    } else {
      free(l);
    }
    return throw_code(env, r);
  }
  l->l.data = l;
  l->up.data = l;
  obj_add(e, &l->o, K_LISTENER);
  r = h2rev_listener_start(&l->l, listener_on_connection);
  if (r != 0) {
    /* Not reachable for a fresh listener with a callback; kept safe. */
    return throw_code(env, r);
  }
  return make_handle(env, &l->o);
}

static void listener_finish(nlistener_t *l) {
  nenv_t *e = l->o.e;
  obj_unlink(&l->o);
  if (!e->gone) {
    napi_handle_scope scope;
    napi_open_handle_scope(e->env, &scope);
    emit(&l->o, EV_CLOSE, NULL, NULL, NULL, NULL);
    napi_close_handle_scope(e->env, scope);
  }
  obj_free(&l->o);
}

static void on_upstream_closed(h2rev_upstream_t *up) {
  listener_finish(up->data);
}

static void on_listener_closed(h2rev_listener_t *listener) {
  nlistener_t *l = listener->data;
  if (l->up_init)
    h2rev_upstream_close(&l->up, on_upstream_closed);
  else
    listener_finish(l);
}

static napi_value js_listener_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  nlistener_t *l = (nlistener_t *)get_obj(env, argv[0], K_LISTENER);
  if (l != NULL) {
    l->o.closing = 1;
    h2rev_listener_close(&l->l, on_listener_closed);
  }
  return undefined(env);
}

static napi_value js_listener_ref(napi_env env, napi_callback_info info) {
  ARGS(2);
  nlistener_t *l = (nlistener_t *)get_obj(env, argv[0], K_LISTENER);
  bool ref = true;
  napi_get_value_bool(env, argv[1], &ref);
  if (l != NULL) {
    if (ref) {
      h2rev_listener_ref(&l->l);
      if (l->up_init)
        h2rev_upstream_ref(&l->up);
    } else {
      h2rev_listener_unref(&l->l);
      if (l->up_init)
        h2rev_upstream_unref(&l->up);
    }
  }
  return undefined(env);
}

/* ------------------------------------------------------------ utilities */

/* errName(code) -> "ENOLISTENER", "ETIMEDOUT", ... */
static napi_value js_err_name(napi_env env, napi_callback_info info) {
  ARGS(1);
  int err = 0;
  const char *name;
  napi_get_value_int32(env, argv[0], &err);
  name = h2rev_err_name(err);
  if (strncmp(name, "H2REV_", 6) == 0)
    name += 6;
  return str_value(env, name);
}

static napi_value js_strerror(napi_env env, napi_callback_info info) {
  ARGS(1);
  int err = 0;
  napi_get_value_int32(env, argv[0], &err);
  return str_value(env, h2rev_strerror(err));
}

/* Objects open now, for the tests' leak checks. */
static napi_value js_live(napi_env env, napi_callback_info info) {
  nenv_t *e = get_env(env);
  napi_value r;
  (void)info;
  napi_create_uint32(env, e->live, &r);
  return r;
}

static napi_value js_init(napi_env env, napi_callback_info info) {
  ARGS(1);
  nenv_t *e = get_env(env);
  napi_valuetype t;
  napi_typeof(env, argv[0], &t);
  if (t != napi_function)
    return throw_type(env, "init: a function");
  if (e->dispatch != NULL)
    napi_delete_reference(env, e->dispatch);
  napi_create_reference(env, argv[0], 1, &e->dispatch);
  return undefined(env);
}

/* -------------------------------------------------------------- teardown */

/* The hook is removed (and with it the hold on napi's environment) once
 * the last object's close callback has run. */
static void env_maybe_done(nenv_t *e) {
  if (!e->gone || e->live > 0 || e->hook == NULL)
    return;
  napi_async_cleanup_hook_handle h = e->hook;
  e->hook = NULL;
  napi_remove_async_cleanup_hook(h);
}

static void env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  nenv_t *e = arg;
  nobj_t *o, *next;
  e->hook = handle;
  e->gone = 1;
  if (e->dispatch != NULL) {
    napi_delete_reference(e->env, e->dispatch);
    e->dispatch = NULL;
  }
  /* Streams first (a listener's close leaves its accepted streams to their
   * owners), then listeners and dialers. Closing needs the loop to run:
   * unref'd handles are ref'd again so that it does. Close callbacks come
   * on later loop turns, so the list is not changed under the walk; a dial
   * in progress ends (UV_ECANCELED) with its dialer's close. */
  for (int pass = 0; pass < 2; pass++) {
    for (o = e->objs.next; o != &e->objs; o = next) {
      next = o->next;
      if (o->closing)
        continue;
      if (pass == 0 && o->kind == K_STREAM && ((nstream_t *)o)->open) {
        stream_close((nstream_t *)o);
      } else if (pass == 1 && o->kind == K_LISTENER) {
        nlistener_t *l = (nlistener_t *)o;
        h2rev_listener_ref(&l->l);
        if (l->up_init)
          h2rev_upstream_ref(&l->up);
        o->closing = 1;
        h2rev_listener_close(&l->l, on_listener_closed);
      } else if (pass == 1 && o->kind == K_DIALER) {
        ndialer_t *d = (ndialer_t *)o;
        h2rev_dialer_ref(&d->d);
        o->closing = 1;
        h2rev_dialer_close(&d->d, on_dialer_closed);
      }
    }
  }
  env_maybe_done(e);
}

static void env_finalize(napi_env env, void *data, void *hint) {
  nenv_t *e = data;
  (void)env;
  (void)hint;
  e->finalized = 1;
  /* After the cleanup hook has completed, nothing refers to it; without a
   * cleanup (objects still open), it is left to the process's end. */
  if (e->live == 0)
    free(e);
}

#define FN(name, fn)                                                                               \
  { name, NULL, fn, NULL, NULL, NULL, napi_default, NULL }

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  nenv_t *e = calloc(1, sizeof(*e));
  napi_property_descriptor props[] = {
      FN("init", js_init),
      FN("dialerNew", js_dialer_new),
      FN("dialerListen", js_dialer_listen),
      FN("dialerAddress", js_dialer_address),
      FN("dialerDial", js_dialer_dial),
      FN("dialerClose", js_dialer_close),
      FN("dialerRef", js_dialer_ref),
      FN("listenerNew", js_listener_new),
      FN("listenerClose", js_listener_close),
      FN("listenerRef", js_listener_ref),
      FN("readStart", js_read_start),
      FN("readStop", js_read_stop),
      FN("write", js_write),
      FN("shutdown", js_shutdown),
      FN("close", js_close_stream),
      FN("writeQueueSize", js_write_queue),
      FN("errName", js_err_name),
      FN("strerror", js_strerror),
      FN("live", js_live),
  };
  if (e == NULL) {
    napi_throw_error(env, "ENOMEM", "h2rev: out of memory");
    return NULL;
  }
  e->env = env;
  e->objs.next = e->objs.prev = &e->objs;
  if (napi_get_uv_event_loop(env, &e->loop) != napi_ok ||
      napi_set_instance_data(env, e, env_finalize, NULL) != napi_ok) {
    free(e);
    napi_throw_error(env, NULL, "h2rev: cannot set up the environment");
    return NULL;
  }
  if (napi_add_async_cleanup_hook(env, env_cleanup, e, NULL) != napi_ok) {
    napi_throw_error(env, NULL, "h2rev: cannot add the cleanup hook");
    return NULL;
  }
  napi_value version;
  napi_create_string_utf8(env, h2rev_version(), NAPI_AUTO_LENGTH, &version);
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  napi_set_named_property(env, exports, "version", version);
  return exports;
}
