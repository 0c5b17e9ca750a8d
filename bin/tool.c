#include "tool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int tool_log_level = H2REV_LOG_INFO;
const char *tool_name = "h2rev";

static const char *level_name(int level) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  return level >= 0 && level <= 3 ? names[level] : "?";
}

static char *capture_buf;
static size_t capture_len;

void tool_capture(char *buf, size_t len) {
  capture_buf = buf;
  capture_len = len;
  if (len > 0)
    buf[0] = '\0';
}

void tool_capture_end(void) {
  capture_buf = NULL;
  capture_len = 0;
}

void tool_log(void *arg, int level, const char *msg) {
  (void)arg;
  if (capture_buf != NULL && level == H2REV_LOG_ERROR) {
    if (capture_buf[0] == '\0')
      snprintf(capture_buf, capture_len, "%s", msg);
    return;
  }
  if (level > tool_log_level)
    return;
  char ts[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
  fprintf(stderr, "%s %s %s: %s\n", ts, tool_name, level_name(level), msg);
}

void tool_help(const char *text) {
  fflush(stdout);
  size_t n = strlen(text), off = 0;
  while (off < n) {
    ssize_t w = write(STDOUT_FILENO, text + off, n - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      break;
    off += (size_t)w;
  }
}

void tool_logf(int level, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  tool_log(NULL, level, line);
}

void tool_usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", tool_name);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, " (see --help)\n");
  va_end(ap);
  exit(2);
}

int tool_parse_level(const char *s) {
  for (int i = 0; i <= 3; i++)
    if (strcmp(s, level_name(i)) == 0)
      return i;
  tool_usage_error("unknown log level \"%s\" (error, warn, info, debug)", s);
}

int tool_parse_hostport(const char *s, struct sockaddr_storage *ss) {
  char host[256];
  const char *colon;
  if (s[0] == '[') {
    const char *end = strchr(s, ']');
    if (end == NULL || end[1] != ':' || (size_t)(end - s - 1) >= sizeof(host))
      return UV_EINVAL;
    memcpy(host, s + 1, (size_t)(end - s - 1));
    host[end - s - 1] = '\0';
    colon = end + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
      return UV_EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
  }
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || port < 0 || port > 65535 || colon[1] == '\0')
    return UV_EINVAL;
  if (host[0] == '\0' || strcmp(host, "localhost") == 0)
    snprintf(host, sizeof(host), "%s", host[0] == '\0' ? "0.0.0.0" : "127.0.0.1");
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
    return 0;
  return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss);
}

void tool_format_addr(const struct sockaddr *sa, char *buf, size_t len) {
  char ip[64] = "?";
  uv_ip_name(sa, ip, sizeof(ip));
  int port = ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                             : ((const struct sockaddr_in *)sa)->sin_port);
  snprintf(buf, len, sa->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

bool tool_readable(const char *path) {
  return access(path, R_OK) == 0;
}

const char *tool_flag(int argc, char **argv, int *i, const char *flag) {
  size_t n = strlen(flag);
  const char *a = argv[*i];
  if (strncmp(a, flag, n) != 0)
    return NULL;
  if (a[n] == '=')
    return a + n + 1;
  if (a[n] != '\0')
    return NULL;
  if (*i + 1 >= argc)
    tool_usage_error("%s needs a value", flag);
  return argv[++*i];
}

static uv_signal_t sigint, sigterm, sighup;
static void (*on_hup)(void);
static uv_timer_t watchdog; /* tool_watchdog */
static void (*on_sig)(void);
static int signals_seen;

static void got_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (signals_seen++ > 0) {
    tool_logf(H2REV_LOG_WARN, "second signal: exiting now");
    exit(1);
  }
  tool_logf(H2REV_LOG_INFO, "signal %d: draining", signum);
  on_sig();
}

void tool_on_signal(uv_loop_t *loop, void (*cb)(void)) {
  on_sig = cb;
  /* A peer that closes while we write must be an error code, not the end of
   * the process. */
  signal(SIGPIPE, SIG_IGN);
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigint, got_signal, SIGINT);
  uv_signal_start(&sigterm, got_signal, SIGTERM);
}

static void got_hup(uv_signal_t *h, int signum) {
  (void)h, (void)signum;
  if (signals_seen > 0) {
    tool_logf(H2REV_LOG_WARN, "SIGHUP while draining: ignored");
    return;
  }
  on_hup();
}

void tool_on_reload(uv_loop_t *loop, void (*cb)(void)) {
  on_hup = cb;
  uv_signal_init(loop, &sighup);
  uv_signal_start(&sighup, got_hup, SIGHUP);
}

void tool_signals_close(void) {
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_close((uv_handle_t *)&sigterm, NULL);
  if (on_hup != NULL)
    uv_close((uv_handle_t *)&sighup, NULL);
  if (uv_is_active((uv_handle_t *)&watchdog))
    uv_close((uv_handle_t *)&watchdog, NULL);
}

static void watchdog_fired(uv_timer_t *t) {
  (void)t;
  tool_logf(H2REV_LOG_ERROR, "shutdown did not finish in time: exiting");
  exit(1);
}

void tool_watchdog(uv_loop_t *loop, unsigned ms) {
  uv_timer_init(loop, &watchdog);
  uv_timer_start(&watchdog, watchdog_fired, ms, 0);
  uv_unref((uv_handle_t *)&watchdog); /* never what keeps the loop running */
}

void tool_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", tool_name);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static unsigned parse_uint(const char *flag, const char *v, unsigned long max, const char *what) {
  char *end = NULL;
  unsigned long n = v[0] >= '0' && v[0] <= '9' ? strtoul(v, &end, 10) : max + 1;
  if (n > max || *end != '\0')
    tool_usage_error("%s: \"%s\" is not a number of %s (at most %lu)", flag, v, what, max);
  return (unsigned)n;
}

unsigned tool_parse_ms(const char *flag, const char *v) {
  return parse_uint(flag, v, 86400000UL, "milliseconds");
}

unsigned tool_parse_count(const char *flag, const char *v, unsigned max) {
  return parse_uint(flag, v, max, "items");
}

static bool secret_ok(const char *s, size_t n) {
  if (n == 0 || n > TOOL_SECRET_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] < 0x21 || s[i] > 0x7e)
      return false;
  return true;
}

int tool_read_secret(const char *path, char **out, char *why, size_t len) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    snprintf(why, len, "cannot read %s: %s", path, strerror(errno));
    return -1;
  }
  /* The whole first line, however long: its length is judged below, once
   * the white space around the token is gone. */
  char *line = NULL;
  size_t cap = 0;
  ssize_t n = getline(&line, &cap, f);
  bool err = ferror(f) != 0;
  int e = errno;
  fclose(f);
  int rc = 0;
  if (err) {
    snprintf(why, len, "cannot read %s: %s", path, strerror(e));
    rc = -1;
  }
  char *start = n > 0 ? line : "";
  size_t l = n > 0 ? (size_t)n : 0;
  while (l > 0 && (start[l - 1] == '\n' || start[l - 1] == '\r' || start[l - 1] == ' ' ||
                   start[l - 1] == '\t'))
    l--;
  while (l > 0 && (*start == ' ' || *start == '\t'))
    start++, l--;
  if (rc == 0 && !secret_ok(start, l)) {
    snprintf(why, len,
             "%s: the first line must be the token (1 to %d printable characters, no spaces)", path,
             TOOL_SECRET_MAX);
    rc = -1;
  }
  if (rc == 0 && (*out = strndup(start, l)) == NULL) {
    snprintf(why, len, "out of memory");
    rc = -1;
  }
  if (line != NULL)
    OPENSSL_cleanse(line, cap);
  free(line);
  return rc;
}

char *tool_token(const char *flag_value, const char *file, const char **from) {
  if (flag_value != NULL && file != NULL)
    tool_usage_error("--token and --token-file: give one of them");
  char *t = NULL;
  if (file != NULL) {
    char why[512];
    if (tool_read_secret(file, &t, why, sizeof(why)) != 0)
      tool_fatal("--token-file: %s", why);
    *from = "--token-file";
    return t;
  }
  const char *v = flag_value;
  *from = "--token";
  if (v == NULL) {
    v = getenv(TOOL_TOKEN_ENV);
    /* Empty (a blank value in a systemd EnvironmentFile): none. */
    if (v != NULL && v[0] == '\0')
      v = NULL;
    *from = TOOL_TOKEN_ENV;
  }
  if (v == NULL)
    return NULL;
  if (!secret_ok(v, strlen(v)))
    tool_usage_error("%s: a token is 1 to %d printable characters, no spaces", *from,
                     TOOL_SECRET_MAX);
  if ((t = strdup(v)) == NULL)
    tool_fatal("out of memory");
  return t;
}

unsigned long tool_raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rlim_t want = rl.rlim_max;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) != 0)
      return 0;
  }
  return rl.rlim_cur == RLIM_INFINITY ? (unsigned long)-1 : (unsigned long)rl.rlim_cur;
}
