/* The dialer tool's access log (--access-log) and metrics listener
 * (--metrics). */
#ifndef H2REV_OPS_H
#define H2REV_OPS_H

#include "h2rev.h"

/* Opens path ("-": standard output) for appending. proxy_route is the
 * dialer's proxy prefix ("<base>/proxy"), whose requests get their
 * listener id logged. Exits 2 when the file cannot be opened. */
void ops_access_open(uv_loop_t *loop, const char *path, const char *proxy_route);
/* For h2rev_dialer_options_t.access_log; a no-op before ops_access_open. */
void ops_access_log(void *arg, const h2rev_access_t *a);
/* Writes what is buffered (blocking: at exit, once the loop has ended). */
void ops_access_close(void);

/* Serves /metrics (Prometheus text format) and /healthz on addr in cleartext.
 * Returns 0 or a libuv error. */
int ops_metrics_listen(uv_loop_t *loop, h2rev_dialer_t *dialer, const struct sockaddr *addr);
/* The bound address, for the log (port 0). */
int ops_metrics_getsockname(struct sockaddr *addr, int *len);
/* At the drain: closes the metrics listener and lets the log's timer go
 * (lines still logged are written by ops_access_close). */
void ops_stop(void);

#endif
