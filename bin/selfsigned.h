/* The dialer's self-signed certificate (see selfsigned.c). */
#ifndef H2REV_SELFSIGNED_H
#define H2REV_SELFSIGNED_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* Names a self-signed certificate carries: the defaults, the listen
 * addresses (every interface's for a wildcard) and --self-signed-names. */
#define SS_MAX_NAMES 64
#define SS_NAME_MAX  254 /* a DNS name (253) or an IP address, and the NUL */

typedef struct {
  char v[SS_MAX_NAMES][SS_NAME_MAX];
  size_t n;
} ss_names_t;

void ss_names_init(ss_names_t *n);
/* Adds a DNS name (a "*." wildcard allowed) or an IP address, once.
 * 0: added or there already; -1: neither a DNS name nor an IP address;
 * -2: SS_MAX_NAMES reached. */
int ss_names_add(ss_names_t *n, const char *name);
/* "a, b, c" for the log. */
void ss_names_join(const ss_names_t *n, char *buf, size_t len);

enum { SS_MADE = 0, SS_REUSED = 1, SS_REPLACED = 2 };
/* dir/h2rev-dialer.crt and .key (paths into cert and key): the pair an
 * earlier run left when it is still good and names every name (SS_REUSED),
 * else a new pair (SS_MADE; SS_REPLACED when the old one lacked a name, why
 * says which). -1: failed, why says why. */
int ss_make(const char *dir, const ss_names_t *names, char *cert, char *key, size_t len, char *why,
            size_t wlen);

#endif
