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
  /* The calls queued until now, one at a time from the list (a call may
   * take back another); those they queue have armed d again. */
  for (unsigned n = d->ncalls; n > 0 && d->calls != NULL; n--) {
    h2r_later_t *l = d->calls;
    d->calls = l->next;
    if (d->calls == NULL)
      d->calls_tail = &d->calls;
    d->ncalls--;
    l->next = NULL;
    l->queued = false;
    l->fn(l);
  }
}

static void d_idle(uv_idle_t *h) {
  (void)h; /* only there so that the poll phase does not wait */
}

void h2r_defer_init(uv_loop_t *loop, h2r_defer_t *d, void (*cb)(void *arg), void *arg) {
  uv_check_init(loop, &d->check);
  uv_idle_init(loop, &d->idle);
  d->check.data = d->idle.data = arg;
  d->cb = cb;
  d->calls = NULL;
  d->calls_tail = &d->calls;
  d->ncalls = 0;
  d->armed = d->closed = false;
}

void h2r_defer_arm(h2r_defer_t *d) {
  if (d->armed || d->closed)
    return;
  d->armed = true;
  uv_check_start(&d->check, d_check);
  uv_idle_start(&d->idle, d_idle);
}

void h2r_defer_call(h2r_defer_t *d, h2r_later_t *l) {
  if (l->queued || d->closed)
    return;
  l->queued = true;
  l->next = NULL;
  *d->calls_tail = l;
  d->calls_tail = &l->next;
  d->ncalls++;
  h2r_defer_arm(d);
}

void h2r_defer_uncall(h2r_defer_t *d, h2r_later_t *l) {
  if (!l->queued)
    return;
  h2r_later_t **p = &d->calls;
  while (*p != NULL && *p != l)
    p = &(*p)->next;
  if (*p == NULL)
    return;
  *p = l->next;
  if (d->calls_tail == &l->next)
    d->calls_tail = p;
  d->ncalls--;
  l->next = NULL;
  l->queued = false;
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
