/* The dialer tool's access log lines (--access-log) and admin pages
 * (--metrics): /metrics, /listeners, /readyz, on bin/admin.c. */
#ifndef H2REV_OPS_H
#define H2REV_OPS_H

#include "h2rev.h"

/* proxy_route is the dialer's proxy prefix ("<base>/proxy"), whose
 * requests get their listener id logged (call before the first line). */
void ops_access_route(const char *proxy_route);
/* For h2rev_dialer_options_t.access_log; a no-op without admin_log_open. */
void ops_access_log(void *arg, const h2rev_access_t *a);

/* Serves /metrics (Prometheus text format), /listeners (JSON), /healthz
 * and /readyz (listening, not draining) on addr in cleartext. Returns 0
 * or a libuv error. */
int ops_metrics_listen(uv_loop_t *loop, h2rev_dialer_t *dialer, const struct sockaddr *addr);
/* The drain has begun: /readyz says so (the admin server closes with
 * admin_stop). */
void ops_draining(void);

#endif
