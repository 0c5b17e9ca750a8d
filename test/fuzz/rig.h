/*
 * A whole tunnel in one process, for the fuzz targets that need the real
 * thing: a dialer on 127.0.0.1 (cleartext), a listener attached to it as
 * RIG_ID whose reverse connections go to an h2rev upstream, and a fake
 * upstream server that answers every request head with bytes of the
 * target's choosing. Built once, on the first call; each input is then one
 * client connection to the dialer, run on the same loop.
 */
#ifndef H2REV_FUZZ_RIG_H
#define H2REV_FUZZ_RIG_H

#include "h2rev.h"

#include <stdbool.h>
#include <stddef.h>

#define RIG_ID "app"

/* Sets the tunnel up (once); aborts when it cannot. */
void rig_init(void);
uv_loop_t *rig_loop(void);

/* What the fake upstream answers each request head with (copied), and
 * whether it closes its connection after that (else it waits for the next
 * request on it). */
void rig_set_response(const void *p, size_t n, bool close_after);

typedef struct rig_client_ops {
  /* Bytes from the dialer; return true when the exchange is over. */
  bool (*on_read)(void *arg, const char *p, size_t n);
} rig_client_ops;

enum {
  RIG_SHUT = 1 << 0,  /* half-close right after the input */
  RIG_QUIET = 1 << 1, /* over once the dialer is silent for RIG_QUIET_MS */
};
#define RIG_QUIET_MS 5

/* One client connection to the dialer: writes the pieces, reads until the
 * dialer closes, ops->on_read says it is over, the flags' conditions hold
 * or limit_ms passes; then closes it. Returns true when the dialer closed
 * the connection or ops->on_read ended it, false on the time limit. */
bool rig_exchange(const uv_buf_t *bufs, unsigned n, unsigned flags, unsigned limit_ms,
                  const rig_client_ops *ops, void *arg);

/* During an exchange (from ops->on_read): more bytes to the dialer (copied). */
void rig_write(const void *p, size_t n);

#endif
