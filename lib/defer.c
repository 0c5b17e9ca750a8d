/* Work deferred to later in this loop turn: the library's one way to run
 * something outside the call that asked for it (a handler may answer
 * inside the parser that found its request; a write's callback may not run
 * inside the write). It runs in libuv's check phase, after the poll for
 * I/O; while it is due, an idle handle keeps that poll from blocking. */
#include "internal.h"

static void d_check(uv_check_t *h) {
  h2r_defer_t *d = H2R_CONTAINER_OF(h, h2r_defer_t, check);
  uv_check_stop(&d->check);
  uv_idle_stop(&d->idle);
  d->armed = false;
  d->cb(h->data);
}

static void d_idle(uv_idle_t *h) {
  (void)h; /* only there so that the poll phase does not wait */
}

void h2r_defer_init(uv_loop_t *loop, h2r_defer_t *d, void (*cb)(void *arg), void *arg) {
  uv_check_init(loop, &d->check);
  uv_idle_init(loop, &d->idle);
  d->check.data = d->idle.data = arg;
  d->cb = cb;
  d->armed = d->closed = false;
}

void h2r_defer_arm(h2r_defer_t *d) {
  if (d->armed || d->closed)
    return;
  d->armed = true;
  uv_check_start(&d->check, d_check);
  uv_idle_start(&d->idle, d_idle);
}

void h2r_defer_set_unref(h2r_defer_t *d, bool unref) {
  h2r_handle_ref(&d->check, unref);
  h2r_handle_ref(&d->idle, unref);
}

void h2r_defer_close(h2r_defer_t *d, uv_close_cb close_cb) {
  d->closed = true;
  d->armed = false;
  uv_close((uv_handle_t *)&d->check, close_cb);
  uv_close((uv_handle_t *)&d->idle, close_cb);
}
