/* h2rev-many: COUNT listeners (ids PREFIX0 .. PREFIX<COUNT-1>) in one process,
 * on one loop, attached to one dialer, each serving HTTP/1.1 on its reverse
 * connections with the library's server: GET anything answers "ok\n".
 * For bench/many.sh (issue 19: 10,000 listeners on one dialer).
 *
 *   h2rev-many URL COUNT [--ca FILE] [--prefix P] [--batch N]
 *
 * Starts the listeners BATCH at a time (every 10 ms: a burst of thousands
 * of connects overflows the dialer's accept backlog), prints
 * "attached COUNT in MS ms" on stdout once every one has attached, then
 * serves until SIGTERM or SIGINT. The file-descriptor limit is raised to
 * its hard limit (one descriptor per listener). Exits 1 when a listener
 * stops, or when not all attach within 10 minutes. */
#include "h2rev.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define BATCH_MS      10
#define ATTACH_MAX_MS (10 * 60 * 1000)
#define ID_MAX        64

typedef struct one {
  h2rev_listener_t l;
  char id[ID_MAX];
  int attached;
} one_t;

static uv_loop_t *loop;
static h2rev_http_server_t srv;
static one_t *all;
static unsigned count, started, batch = 200, attached_now;
static uint64_t t0;
static const char *url, *ca, *prefix = "m";
static uv_timer_t starter, deadline;
static uv_signal_t sigterm, sigint;
static int closing, exit_code;

static void answer(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  h2rev_http_reply(req, 200, "text/plain", "ok\n", 3);
}

static void served(h2rev_stream_t *s) {
  free(s);
}

static void on_conn(h2rev_listener_t *l, int status) {
  if (status != 0)
    return;
  for (;;) {
    h2rev_stream_t *s = malloc(sizeof(*s));
    if (s == NULL || h2rev_listener_accept(l, s) != 0) {
      free(s);
      return;
    }
    if (h2rev_http_server_serve_stream(&srv, s, served) != 0)
      h2rev_stream_close(s, served);
  }
}

static void on_state(h2rev_listener_t *l, int state, int err, unsigned delay) {
  (void)delay;
  one_t *o = l->data;
  if (state == H2REV_LISTENER_ATTACHED && !o->attached) {
    o->attached = 1;
    if (++attached_now == count) {
      printf("attached %u in %llu ms\n", count, (unsigned long long)(uv_now(loop) - t0));
      fflush(stdout);
      uv_timer_stop(&deadline);
    }
  } else if (state == H2REV_LISTENER_LOST && o->attached) {
    o->attached = 0;
    attached_now--;
    fprintf(stderr, "h2rev-many: %s lost: %s\n", o->id, h2rev_strerror(err));
  } else if (state == H2REV_LISTENER_STOPPED && !closing) {
    fprintf(stderr, "h2rev-many: %s stopped: %s\n", o->id, h2rev_strerror(err));
    exit_code = 1;
  }
}

static void start_batch(uv_timer_t *t) {
  for (unsigned k = 0; k < batch && started < count; k++, started++) {
    one_t *o = &all[started];
    snprintf(o->id, sizeof(o->id), "%s%u", prefix, started);
    h2rev_listener_options_t lo = {.url = url, .id = o->id, .on_state = on_state};
    lo.tls.ca_file = ca;
    int r = h2rev_listener_init(loop, &o->l, &lo);
    if (r == 0) {
      o->l.data = o;
      r = h2rev_listener_start(&o->l, on_conn);
    }
    if (r != 0) {
      fprintf(stderr, "h2rev-many: listener %s: %s\n", o->id, h2rev_strerror(r));
      exit(1);
    }
  }
  if (started == count)
    uv_timer_stop(t);
}

static void nothing(uv_handle_t *h) {
  (void)h;
}

static void shut(void) {
  if (closing)
    return;
  closing = 1;
  for (unsigned i = 0; i < started; i++)
    h2rev_listener_close(&all[i].l, NULL);
  h2rev_http_server_close(&srv, NULL);
  uv_close((uv_handle_t *)&starter, nothing);
  uv_close((uv_handle_t *)&deadline, nothing);
  uv_close((uv_handle_t *)&sigterm, nothing);
  uv_close((uv_handle_t *)&sigint, nothing);
}

static void on_signal(uv_signal_t *s, int sig) {
  (void)s, (void)sig;
  shut();
}

static void too_slow(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "h2rev-many: %u of %u attached after %d s\n", attached_now, count,
          ATTACH_MAX_MS / 1000);
  exit_code = 1;
  shut();
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: h2rev-many URL COUNT [--ca FILE] [--prefix P] [--batch N]\n");
    return 2;
  }
  url = argv[1];
  count = (unsigned)strtoul(argv[2], NULL, 10);
  for (int i = 3; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--ca") == 0)
      ca = argv[i + 1];
    else if (strcmp(argv[i], "--prefix") == 0)
      prefix = argv[i + 1];
    else if (strcmp(argv[i], "--batch") == 0)
      batch = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else {
      fprintf(stderr, "h2rev-many: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (count == 0 || batch == 0 || strlen(prefix) > ID_MAX - 12) {
    fprintf(stderr, "h2rev-many: COUNT and --batch must be positive, --prefix short\n");
    return 2;
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)count + 64)
    fprintf(stderr, "h2rev-many: warning: %llu file descriptors for %u listeners\n",
            (unsigned long long)rl.rlim_cur, count);
  all = calloc(count, sizeof(*all));
  if (all == NULL)
    return 1;
  loop = uv_default_loop();
  h2rev_http_server_options_t so = {0};
  if (h2rev_http_server_init(loop, &srv, &so) != 0 ||
      h2rev_http_server_route(&srv, "/", answer, NULL) != 0)
    return 1;
  t0 = uv_now(loop);
  uv_timer_init(loop, &starter);
  uv_timer_start(&starter, start_batch, 0, BATCH_MS);
  uv_timer_init(loop, &deadline);
  uv_timer_start(&deadline, too_slow, ATTACH_MAX_MS, 0);
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_init(loop, &sigint);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  free(all);
  return exit_code;
}
