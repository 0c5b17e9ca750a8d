/* The control-stream protocol shared by dialer and listener (DESIGN §2.4). */
#ifndef H2REV_CONTROL_H
#define H2REV_CONTROL_H

#include "internal.h"

#define H2R_CMD_CONN_READY    "conn-ready"
#define H2R_CMD_KEEP_ALIVE    "keep-alive"
#define H2R_CMD_PICKUP_FAILED "pickup-failed"

typedef struct h2r_ctl_msg {
  char command[32];
  char err[128];
  char conn_path[128];
} h2r_ctl_msg;

/* Accumulates bytes into lines of at most max bytes. */
typedef struct h2r_ctl_reader {
  char *buf;
  size_t len, cap, max;
  char why[200]; /* reason of the last error */
} h2r_ctl_reader;

typedef int (*h2r_ctl_on_msg)(void *arg, const h2r_ctl_msg *m);

/* Parses one JSON object. Returns 0 or H2REV_ECONTROL. */
int h2r_ctl_parse(const char *line, size_t len, h2r_ctl_msg *m);
/* Feeds bytes; calls on_msg per complete line. Returns 0, H2REV_ECONTROL
 * (r->why says why), UV_ENOMEM or what on_msg returned. */
int h2r_ctl_feed(h2r_ctl_reader *r, const char *p, size_t n, h2r_ctl_on_msg on_msg, void *arg);
void h2r_ctl_reader_free(h2r_ctl_reader *r);
/* Writes {"command":"...","err":"..."}\n (err may be NULL); returns the length. */
size_t h2r_ctl_encode(char *out, size_t cap, const char *command, const char *err);

/* The request path of a listener's stream: <base>/revdial?id=<escaped id>. */
int h2r_revdial_path(char *out, size_t cap, const char *base, const char *id);
/* Ids: 1..H2R_ID_MAX bytes of [A-Za-z0-9._~:@-]. */
#define H2R_ID_MAX 128
bool h2r_id_valid(const char *id, size_t len);

#define H2R_ROLE_HEADER "x-h2rev-role"
/* A dialer's answer to /revdial names the replica that gave it and, when it
 * knows, how many replicas there are (an extension: Go's listener ignores
 * them, Go's dialer sends none). */
#define H2R_REPLICA_HEADER  "x-h2rev-replica"
#define H2R_REPLICAS_HEADER "x-h2rev-replicas"
/* Replica ids: 1..H2R_REPLICA_MAX bytes of the id alphabet; the random
 * default is H2R_REPLICA_RANDOM bytes of the OS RNG in hex. */
#define H2R_REPLICA_MAX    64
#define H2R_REPLICA_RANDOM 4
/* x-h2rev-replicas above this is not believed (a listener holds one
 * connection per replica). */
#define H2R_REPLICAS_MAX 1024

#endif
