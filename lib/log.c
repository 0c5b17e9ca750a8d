/* Formats a log line and hands it to the handle's logger. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

void h2r_log(const h2rev_logger_t *lg, int level, const char *fmt, ...) {
  if (!H2R_LOG_ON(lg, level))
    return;
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  lg->cb(lg->arg, level, line);
}

void h2r_log_limited(const h2rev_logger_t *lg, h2r_ratelog_t *rl, uv_loop_t *loop, int level,
                     const char *fmt, ...) {
  if (!H2R_LOG_ON(lg, level))
    return;
  uint64_t sec = uv_now(loop) / 1000;
  if (sec != rl->sec) {
    rl->sec = sec;
    rl->n = 0;
  }
  if (++rl->n > H2R_LOG_BURST) {
    rl->dropped++;
    return;
  }
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (rl->dropped > 0 && n >= 0 && (size_t)n < sizeof(line))
    snprintf(line + n, sizeof(line) - (size_t)n, " (and %u such lines not logged)", rl->dropped);
  rl->dropped = 0;
  lg->cb(lg->arg, level, line);
}
