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
