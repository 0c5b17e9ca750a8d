/* What both tools' operators get: the access log writer (--access-log,
 * --log-format), the admin address (--metrics: /metrics, /healthz,
 * /readyz and the tool's own pages) and systemd's readiness protocol. */
#ifndef H2REV_ADMIN_H
#define H2REV_ADMIN_H

#include "h2rev.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------ access log */

enum { ADMIN_FMT_TEXT, ADMIN_FMT_JSON };

#define ADMIN_PATH_MAX  512  /* escaped bytes of a path kept in a line */
#define ADMIN_FIELD_MAX 64   /* escaped bytes of a method, an id, an address */
#define ADMIN_LINE_MAX  2048 /* bound of a line: the fields above and the fixed ones */

/* "--log-format text|json" into ADMIN_FMT_*; exits 2 otherwise. */
int admin_parse_format(const char *v);
/* Opens path ("-": standard output) for appending. Exits 2 when the file
 * cannot be opened. */
void admin_log_open(uv_loop_t *loop, const char *path, int format);
bool admin_log_on(void);
/* Lines dropped because writes fell behind (a metric). */
uint64_t admin_log_dropped(void);
/* SIGHUP: the file is opened again by name (logrotate without
 * copytruncate) once the write in flight is done; when it cannot be, the
 * old one stays in use. */
void admin_log_reopen(void);
/* Writes what is buffered (blocking: at exit, once the loop has ended). */
void admin_log_close(void);

/* One line, built field by field, in the log's format: text is logfmt
 * (key=value, strings in double quotes), json one object. Every field is
 * bounded and escaped: a line never exceeds ADMIN_LINE_MAX. */
typedef struct admin_line {
  char b[ADMIN_LINE_MAX];
  size_t len;
  bool json, cut, over;
} admin_line_t;

/* Starts a line with its time field (UTC, milliseconds). */
void admin_line_begin(admin_line_t *l);
/* A string (any bytes), quoted and escaped, cut at max escaped bytes. */
void admin_line_str(admin_line_t *l, const char *key, const char *s, size_t n, size_t max);
/* A word (no space or quote: an address, HTTP/2, ok): bare in text,
 * a string in json. */
void admin_line_word(admin_line_t *l, const char *key, const char *w);
/* A number, formatted by fmt, bare in both. */
void admin_line_num(admin_line_t *l, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Ends the line (json: "truncated":true when a value was cut) and queues it. */
void admin_line_end(admin_line_t *l);

/* ------------------------------------------------------- admin address */

/* A growing text (bounded by cap) for an answer. */
typedef struct admin_out {
  char *b;
  size_t len, cap;
} admin_out_t;
void admin_put(admin_out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* # HELP and # TYPE lines of a metric. */
void admin_metric(admin_out_t *o, const char *name, const char *type, const char *help);
/* A JSON string (quotes included) of any bytes: control characters,
 * '"', '\' and every byte outside ASCII as \u00XX (one per byte: the
 * text is always valid JSON, whatever the bytes). */
void admin_json_str(admin_out_t *o, const char *s, size_t n);
/* The Prometheus histogram of durations counted in the library's buckets. */
void admin_histogram(admin_out_t *o, const char *name, const uint64_t *buckets, uint64_t sum_us);
/* Sends o (and frees it); 503 when it could not be allocated. */
void admin_reply(h2rev_http_req_t *req, admin_out_t *o, const char *type);
bool admin_out_init(admin_out_t *o, size_t cap);

/* Serves on addr in cleartext: /healthz ("ok"), /readyz (200 "ready" when
 * ready() says so, else 503 with its reason) and the routes given to
 * admin_route. Returns 0 or a libuv error. */
int admin_listen(uv_loop_t *loop, const struct sockaddr *addr, bool (*ready)(const char **why));
int admin_route(const char *path, h2rev_http_handler_cb handler);
/* The bound address, for the log (port 0). */
int admin_getsockname(struct sockaddr *addr, int *len);
/* At the drain: closes the admin server and lets the log's timer go
 * (lines still logged are written by admin_log_close). */
void admin_stop(void);

/* ------------------------------------------------------------- systemd */

/* sd_notify(3)'s protocol without libsystemd: state ("READY=1", ...) as
 * one datagram to $NOTIFY_SOCKET (a path, or @ for the abstract
 * namespace); nothing when it is unset. */
void admin_notify(const char *state);
/* RELOADING=1 with the MONOTONIC_USEC= systemd 253 asks for beside it. */
void admin_notify_reloading(void);

#endif
