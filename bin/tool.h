/* What both tools share: logging to stderr, flag helpers, signals. */
#ifndef H2REV_TOOL_H
#define H2REV_TOOL_H

#include "h2rev.h"

#include <stdbool.h>
#include <stddef.h>

/* The struct that holds `ptr` as its `field`. */
#define TOOL_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

extern int tool_log_level;
extern const char *tool_name;

void tool_log(void *arg, int level, const char *msg);
void tool_logf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes --help to standard output in one write: read by `head -n 1` or
 * `grep -q`, a help longer than stdio's 4 KiB pipe buffer went out in two,
 * and the second died of SIGPIPE once the reader had stopped. */
void tool_help(const char *text);
/* Prints "<tool>: <message>" and exits with status 2. */
void tool_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
int tool_parse_level(const char *s);
/* "host:port" into a sockaddr (host may be [v6]). */
int tool_parse_hostport(const char *s, struct sockaddr_storage *ss);
/* "ip:port" or "[v6]:port". */
void tool_format_addr(const struct sockaddr *sa, char *buf, size_t len);
bool tool_readable(const char *path);
/* The value of --flag VALUE or --flag=VALUE at argv[*i]; NULL when it is not flag. */
const char *tool_flag(int argc, char **argv, int *i, const char *flag);
/* SIGINT/SIGTERM call cb once (then a second signal exits at once). */
void tool_on_signal(uv_loop_t *loop, void (*cb)(void));
/* SIGHUP calls cb (not once draining). */
void tool_on_reload(uv_loop_t *loop, void (*cb)(void));
void tool_signals_close(void);
/* Prints "<tool>: <message>" (one line) and exits with status 2. */
void tool_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* A number of milliseconds (digits only, at most a day) for --flag; exits 2 otherwise. */
unsigned tool_parse_ms(const char *flag, const char *v);
/* A count (digits only, at most max) for --flag; exits 2 otherwise. */
unsigned tool_parse_count(const char *flag, const char *v, unsigned max);
/* While on, library log lines at error level go into buf (the first one)
 * instead of stderr, so that a failure is reported as one line. */
void tool_capture(char *buf, size_t len);
void tool_capture_end(void);
/* A shutdown that has not finished after ms (a bug: something was not
 * released) logs an error and exits with status 1 rather than hang. */
void tool_watchdog(uv_loop_t *loop, unsigned ms);
/* Raises the soft limit of open files to the hard one (each listener and
 * each client takes a descriptor; distributions start processes at 1024);
 * returns the limit now in force, 0 when it cannot be read. */
unsigned long tool_raise_nofile(void);

/* A bearer token: at most TOOL_SECRET_MAX visible ASCII characters
 * (RFC 6750's token68 and more, no space or control character). OAuth
 * access tokens (JWTs carrying group claims) run past 4 KiB; a request's
 * header block may hold 64 KiB at the dialer. */
#define TOOL_SECRET_MAX 16384
#define TOOL_TOKEN_ENV  "H2REV_TOKEN"
/* The token in path (its first line; surrounding white space dropped) into
 * a malloc'd *out. 0, or -1 with why set. */
int tool_read_secret(const char *path, char **out, char *why, size_t len);
/* The token from --token (flag_value), else --token-file (file), else the
 * environment's H2REV_TOKEN; NULL when none is given. Both flags at once, an
 * unreadable file or a malformed token: exits 2. *from names the source. */
char *tool_token(const char *flag_value, const char *file, const char **from);

#endif
