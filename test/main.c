/* Test runner linked into every test executable.
 *
 *   exe                 list the test cases (one per line)
 *   exe --list          same
 *   exe <case>          run one case in-process; prints "ok <case>" and exits 0
 *   exe --all           run every case in this process, in registration order
 *
 * Each run is guarded by alarm(): H2REV_TEST_TIMEOUT seconds (default 60).
 */
#include "test.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_MAX 1024

struct test_entry {
  const char *name;
  test_fn fn;
};

static struct test_entry tests[TEST_MAX];
static int ntests;
static const char *current;
static const char *(*error_name_hook)(int);

void test_register(const char *name, test_fn fn) {
  if (ntests == TEST_MAX) {
    fprintf(stderr, "test.h: too many tests (max %d)\n", TEST_MAX);
    abort();
  }
  tests[ntests].name = name;
  tests[ntests].fn = fn;
  ntests++;
}

const char *test_current(void) {
  return current;
}

void test_set_error_name(const char *(*fn)(int err)) {
  error_name_hook = fn;
}

const char *test_error_name(long long err) {
  static char buf[128];
  const char *s;
  if (error_name_hook == NULL)
    return "";
  s = error_name_hook((int)err);
  snprintf(buf, sizeof(buf), ", %s", s ? s : "?");
  return buf;
}

void test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "%s:%d: assertion failed in %s: ", file, line, current ? current : "?");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
  abort();
}

static void hexdump(const char *label, const unsigned char *p, size_t off, size_t end) {
  fprintf(stderr, "  %s @%zu:", label, off);
  for (size_t i = off; i < end; i++)
    fprintf(stderr, " %02x", p[i]);
  fputc('\n', stderr);
}

void test_fail_mem(const char *file, int line, const char *ea, const char *eb, const void *a,
                   const void *b, size_t n) {
  const unsigned char *pa = a, *pb = b;
  size_t i = 0, start, end;
  while (i < n && pa[i] == pb[i])
    i++;
  start = i > 8 ? i - 8 : 0;
  end = i + 8 < n ? i + 8 : n;
  fflush(stdout);
  fprintf(stderr,
          "%s:%d: assertion failed in %s: memcmp(%s, %s, %zu) == 0 (first difference at %zu)\n",
          file, line, current ? current : "?", ea, eb, n, i);
  hexdump(ea, pa, start, end);
  hexdump(eb, pb, start, end);
  fflush(stderr);
  abort();
}

static void on_alarm(int sig) {
  static const char msg[] = "test timed out: ";
  (void)sig;
  if (write(2, msg, sizeof(msg) - 1) < 0) {
  }
  if (current && write(2, current, strlen(current)) < 0) {
  }
  if (write(2, "\n", 1) < 0) {
  }
  abort();
}

static void list(void) {
  for (int i = 0; i < ntests; i++)
    printf("%s\n", tests[i].name);
}

static unsigned timeout = 60;

static void run(const struct test_entry *t) {
  alarm(timeout);
  current = t->name;
  t->fn();
  current = NULL;
  printf("ok %s\n", t->name);
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *env = getenv("H2REV_TEST_TIMEOUT");

  if (argc < 2 || strcmp(argv[1], "--list") == 0) {
    list();
    return 0;
  }
  if (argc > 2) {
    fprintf(stderr, "usage: %s [--list | --all | <test>]\n", argv[0]);
    return 2;
  }

  if (env && *env) {
    long v = strtol(env, NULL, 10);
    if (v >= 0)
      timeout = (unsigned)v;
  }

  setvbuf(stdout, NULL, _IOLBF, 0);
  /* Tests write to sockets that the peer may have closed. */
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, on_alarm);

  if (strcmp(argv[1], "--all") == 0) {
    for (int i = 0; i < ntests; i++)
      run(&tests[i]);
    return 0;
  }
  for (int i = 0; i < ntests; i++) {
    if (strcmp(tests[i].name, argv[1]) == 0) {
      run(&tests[i]);
      return 0;
    }
  }
  fprintf(stderr, "%s: no such test: %s\n", argv[0], argv[1]);
  return 2;
}
