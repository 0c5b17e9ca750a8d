/* http:// and https:// URLs as the dialer and upstream options give them. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

char *h2r_strndup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p != NULL) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

void h2r_url_free(h2r_url_t *u) {
  free(u->host);
  free(u->port);
  free(u->authority);
  free(u->path);
  memset(u, 0, sizeof(*u));
}

int h2r_url_parse(const char *url, h2r_url_t *u) {
  memset(u, 0, sizeof(*u));
  const char *p;
  if (strncmp(url, "https://", 8) == 0)
    u->tls = true, p = url + 8;
  else if (strncmp(url, "http://", 7) == 0)
    p = url + 7;
  else
    return H2REV_EURL;
  const char *auth = p, *hs = p, *he;
  if (*p == '[') { /* [v6]:port */
    he = strchr(p, ']');
    if (he == NULL)
      return H2REV_EURL;
    hs = p + 1;
    p = he + 1;
  } else {
    he = p + strcspn(p, ":/?#");
    p = he;
  }
  if (he == hs)
    return H2REV_EURL;
  const char *port = u->tls ? "443" : "80";
  size_t portlen = strlen(port);
  if (*p == ':') {
    port = p + 1;
    portlen = strspn(port, "0123456789");
    if (portlen == 0 || portlen > 5)
      return H2REV_EURL;
    p = port + portlen;
  }
  if (*p != '\0' && *p != '/')
    return H2REV_EURL;
  size_t pathlen = strcspn(p, "?#");
  while (pathlen > 0 && p[pathlen - 1] == '/')
    pathlen--;
  u->host = h2r_strndup(hs, (size_t)(he - hs));
  u->port = h2r_strndup(port, portlen);
  u->authority = h2r_strndup(auth, (size_t)(p - auth));
  u->path = h2r_strndup(p, pathlen);
  if (u->host == NULL || u->port == NULL || u->authority == NULL || u->path == NULL) {
    h2r_url_free(u);
    return UV_ENOMEM;
  }
  return 0;
}
