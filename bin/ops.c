/* The dialer tool's access log lines and admin pages. */
#include "ops.h"

#include "admin.h"
#include "tool.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define METRICS_BODY_MAX (16 * 1024) /* the /metrics answer */
/* /listeners: per listener at most its id (128 bytes, 6 each escaped), its
 * address and the numbers. */
#define LISTENERS_ENTRY_MAX 1024

#define OPS_MIN(a, b) ((a) < (b) ? (a) : (b))

static char route[512]; /* the proxy's prefix */
static size_t route_len;
static h2rev_dialer_t *dialer;
static bool draining;

/* ------------------------------------------------------------ access log */

void ops_access_route(const char *proxy_route) {
  snprintf(route, sizeof(route), "%s", proxy_route);
  route_len = strlen(route);
}

void ops_access_log(void *arg, const h2rev_access_t *a) {
  (void)arg;
  if (!admin_log_on())
    return;
  const h2rev_http_req_t *rq = a->req;
  /* CONNECT <id>:<port> has no path: the target stands for it, and names the listener. */
  bool by_authority = rq->path[0] == '\0' && strcmp(rq->method, "CONNECT") == 0;
  const char *target = by_authority ? rq->authority : rq->path;
  const char *id = "";
  size_t il = 0;
  const char *colon = by_authority ? strrchr(rq->authority, ':') : NULL;
  if (colon != NULL) {
    id = rq->authority;
    il = (size_t)(colon - rq->authority);
  }
  /* <proxy>/<id>/...: the listener it went to. */
  if (!by_authority && route_len > 0 && strcmp(rq->route, route) == 0 &&
      strncmp(rq->path, route, route_len) == 0 && rq->path[route_len] == '/') {
    id = rq->path + route_len + 1;
    il = strcspn(id, "/?");
  }
  char proto[12];
  if (rq->http_major == 2)
    snprintf(proto, sizeof(proto), "HTTP/2");
  else
    snprintf(proto, sizeof(proto), "HTTP/1.%d", rq->http_minor == 0 ? 0 : 1);
  typedef unsigned long long ull;
  admin_line_t l;
  admin_line_begin(&l);
  admin_line_word(&l, "peer", rq->peer[0] ? rq->peer : "-");
  admin_line_str(&l, "method", rq->method, strlen(rq->method), ADMIN_FIELD_MAX);
  admin_line_str(&l, "path", target, strlen(target), ADMIN_PATH_MAX);
  admin_line_word(&l, "proto", proto);
  admin_line_num(&l, "status", "%d", a->status);
  admin_line_num(&l, "bytes", "%llu", (ull)a->bytes_out);
  admin_line_num(&l, "in", "%llu", (ull)a->bytes_in);
  admin_line_num(&l, "ms", "%llu.%03llu", (ull)(a->duration_us / 1000),
                 (ull)(a->duration_us % 1000));
  admin_line_word(&l, "result", a->result == 0 ? "ok" : h2rev_err_name(a->result));
  admin_line_str(&l, "listener", id, il, ADMIN_FIELD_MAX);
  admin_line_end(&l);
}

/* -------------------------------------------------------------- metrics */

static void metrics(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  static const char *classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  static const char *protos[] = {"http1", "http2"};
  h2rev_dialer_stats_t d;
  h2rev_dialer_stats(dialer, &d);
  h2rev_http_server_stats_t s = {0};
  h2rev_http_server_t *srv = h2rev_dialer_server(dialer);
  if (srv != NULL)
    h2rev_http_server_stats(srv, &s);
  /* Pending dials live with each listener. */
  size_t n = h2rev_dialer_listeners(dialer, NULL, 0);
  h2rev_listener_info_t *li = n > 0 ? malloc(n * sizeof(*li)) : NULL;
  uint64_t pending = 0;
  if (li != NULL) {
    n = OPS_MIN(h2rev_dialer_listeners(dialer, li, n), n);
    for (size_t i = 0; i < n; i++)
      pending += li[i].pending;
    free(li);
  }
  admin_out_t o;
  if (!admin_out_init(&o, METRICS_BODY_MAX)) {
    admin_reply(req, &o, NULL);
    return;
  }
  typedef unsigned long long ull;
  admin_metric(&o, "h2rev_listeners", "gauge", "Listeners attached now.");
  admin_put(&o, "h2rev_listeners %llu\n", (ull)d.listeners);
  admin_metric(&o, "h2rev_spares", "gauge", "Idle reverse connections ready for a dial.");
  admin_put(&o, "h2rev_spares %llu\n", (ull)d.spares);
  admin_metric(&o, "h2rev_dials_pending", "gauge", "Dials waiting for a reverse connection.");
  admin_put(&o, "h2rev_dials_pending %llu\n", (ull)pending);
  admin_metric(&o, "h2rev_dials_total", "counter", "Dials completed, by result.");
  uint64_t known = d.dials_nolistener + d.dials_timeout + d.dials_pickup + d.dials_closed +
                   d.dials_toomany + d.dials_canceled;
  admin_put(&o, "h2rev_dials_total{result=\"ok\"} %llu\n", (ull)d.dials_ok);
  admin_put(&o, "h2rev_dials_total{result=\"no_listener\"} %llu\n", (ull)d.dials_nolistener);
  admin_put(&o, "h2rev_dials_total{result=\"timeout\"} %llu\n", (ull)d.dials_timeout);
  admin_put(&o, "h2rev_dials_total{result=\"pickup_failed\"} %llu\n", (ull)d.dials_pickup);
  admin_put(&o, "h2rev_dials_total{result=\"listener_gone\"} %llu\n", (ull)d.dials_closed);
  admin_put(&o, "h2rev_dials_total{result=\"too_many\"} %llu\n", (ull)d.dials_toomany);
  admin_put(&o, "h2rev_dials_total{result=\"canceled\"} %llu\n", (ull)d.dials_canceled);
  admin_put(&o, "h2rev_dials_total{result=\"other\"} %llu\n",
            (ull)(d.dials_failed > known ? d.dials_failed - known : 0));
  admin_metric(&o, "h2rev_conn_ready_sent_total", "counter",
               "conn-ready commands sent to listeners.");
  admin_put(&o, "h2rev_conn_ready_sent_total %llu\n", (ull)d.conn_ready_sent);
  admin_metric(&o, "h2rev_revdial_refused_total", "counter", "Listener attachments refused.");
  admin_put(&o, "h2rev_revdial_refused_total %llu\n", (ull)d.refused);
  admin_metric(&o, "h2rev_http_requests_total", "counter",
               "Finished requests, by protocol and status class (none: no head was sent).");
  for (int p = 0; p < 2; p++)
    for (int c = 0; c < 6; c++)
      admin_put(&o, "h2rev_http_requests_total{proto=\"%s\",code=\"%s\"} %llu\n", protos[p],
                classes[c], (ull)s.requests[p][c]);
  admin_metric(&o, "h2rev_http_requests_incomplete_total", "counter",
               "Requests whose response did not complete (client gone, aborted).");
  admin_put(&o, "h2rev_http_requests_incomplete_total %llu\n", (ull)s.requests_incomplete);
  admin_metric(&o, "h2rev_http_request_duration_seconds", "histogram",
               "From the request head to the end of the response.");
  admin_histogram(&o, "h2rev_http_request_duration_seconds", s.duration, s.duration_us_sum);
  admin_metric(&o, "h2rev_http_request_bytes_total", "counter", "Request body bytes received.");
  admin_put(&o, "h2rev_http_request_bytes_total %llu\n", (ull)s.bytes_in);
  admin_metric(&o, "h2rev_http_response_bytes_total", "counter", "Response body bytes sent.");
  admin_put(&o, "h2rev_http_response_bytes_total %llu\n", (ull)s.bytes_out);
  admin_metric(&o, "h2rev_http_connections", "gauge", "Client and listener connections open now.");
  admin_put(&o, "h2rev_http_connections %llu\n", (ull)s.connections);
  admin_metric(&o, "h2rev_http_connections_total", "counter", "Connections accepted.");
  admin_put(&o, "h2rev_http_connections_total %llu\n", (ull)s.connections_total);
  admin_metric(&o, "h2rev_http_connections_refused_total", "counter",
               "Connections accepted and closed at once (out of memory, TLS setup).");
  admin_put(&o, "h2rev_http_connections_refused_total %llu\n", (ull)s.connections_refused);
  admin_metric(&o, "h2rev_http_connection_limit_reached_total", "counter",
               "Times --max-connections stopped accepting (new ones wait in the backlog).");
  admin_put(&o, "h2rev_http_connection_limit_reached_total %llu\n", (ull)s.limit_reached);
  admin_metric(&o, "h2rev_access_log_dropped_total", "counter",
               "Access log lines dropped because writes fell behind.");
  admin_put(&o, "h2rev_access_log_dropped_total %llu\n", (ull)admin_log_dropped());
  admin_reply(req, &o, "text/plain; version=0.0.4");
}

/* ------------------------------------------------------------ listeners */

static int listener_json(void *arg, const h2rev_listener_info_t *li) {
  admin_out_t *o = arg;
  uint64_t now = uv_now(dialer->loop);
  uint64_t age = now > li->attached_at ? now - li->attached_at : 0;
  /* The wall-clock time it attached, from the loop's clock. */
  double since = (double)time(NULL) - (double)age / 1000.0;
  admin_put(o, "%s{\"id\":", o->len > 1 ? "," : "");
  admin_json_str(o, li->id, strlen(li->id));
  admin_put(o, ",\"peer\":");
  admin_json_str(o, li->peer, strlen(li->peer));
  admin_put(o,
            ",\"attached_since\":%.3f,\"attached_seconds\":%.3f,\"streams\":%u,\"spares\":%u,"
            "\"pending\":%u}",
            since, (double)age / 1000.0, li->streams, li->spares, li->pending);
  return 0;
}

static void listeners(h2rev_http_req_t *req, void *arg) {
  (void)arg;
  size_t n = h2rev_dialer_listeners(dialer, NULL, 0);
  admin_out_t o;
  if (admin_out_init(&o, 64 + (n + 1) * LISTENERS_ENTRY_MAX)) {
    admin_put(&o, "[");
    h2rev_dialer_foreach(dialer, listener_json, &o);
    admin_put(&o, "]\n");
  }
  admin_reply(req, &o, "application/json");
}

static bool ready(const char **why) {
  if (draining) {
    *why = "draining";
    return false;
  }
  return true;
}

void ops_draining(void) {
  draining = true;
}

int ops_metrics_listen(uv_loop_t *loop, h2rev_dialer_t *d, const struct sockaddr *addr) {
  dialer = d;
  int r = admin_listen(loop, addr, ready);
  if (r == 0 && (r = admin_route("/metrics", metrics)) == 0)
    r = admin_route("/listeners", listeners);
  return r;
}
