/* A request or response head as llhttp hands it over in pieces: the URL and
 * the header names and values gathered into one buffer, with a size limit;
 * the checks of field names and paths both sides of the tunnel make; the
 * writing of heads (h2r_out_t); and a cache of buffers of one size. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

void h2r_hbuf_reset(h2r_hbuf_t *h) {
  h->len = 0;
  h->nuls = 0;
  h->url_len = 0;
  h->n = 0;
  h->in_value = false;
  h->value_done = false;
  h->too_large = false;
}

void h2r_hbuf_free(h2r_hbuf_t *h) {
  free(h->buf);
  h->buf = NULL;
  h->cap = 0;
  h2r_hbuf_reset(h);
}

/* Room for len more bytes, of which `counted` count against the limit. */
static int reserve(h2r_hbuf_t *h, size_t len, size_t counted) {
  if (h->len - h->nuls + counted > (h->max != 0 ? h->max : H2R_MAX_HEAD)) {
    h->too_large = true;
    return -1;
  }
  if (h->len + len > h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 1024;
    while (cap < h->len + len)
      cap *= 2;
    char *b = realloc(h->buf, cap);
    if (b == NULL)
      return -1;
    h->buf = b;
    h->cap = cap;
  }
  return 0;
}

static int add(h2r_hbuf_t *h, const char *at, size_t len) {
  if (len == 0)
    return 0;
  if (reserve(h, len, len) != 0)
    return -1;
  memcpy(h->buf + h->len, at, len);
  h->len += len;
  return 0;
}

/* A NUL after a name or a value: not the sender's byte, not counted
 * against the limit. */
static int add_nul(h2r_hbuf_t *h) {
  if (reserve(h, 1, 0) != 0)
    return -1;
  h->buf[h->len++] = '\0';
  h->nuls++;
  return 0;
}

int h2r_hbuf_url(h2r_hbuf_t *h, const char *at, size_t len) {
  h->url_len += (uint32_t)len;
  return add(h, at, len);
}

int h2r_hbuf_field(h2r_hbuf_t *h, const char *at, size_t len) {
  if (h->in_value || h->n == 0) {
    if (h->n == (h->max_n != 0 ? H2R_MIN(h->max_n, H2R_HBUF_HEADERS) : H2R_MAX_HEADERS)) {
      h->too_large = true;
      return -1;
    }
    uint32_t *o = h->off[h->n++];
    o[0] = (uint32_t)h->len;
    o[1] = o[2] = o[3] = 0;
    h->in_value = false;
    h->value_done = false;
  }
  h->off[h->n - 1][1] += (uint32_t)len;
  return add(h, at, len);
}

/* The name is complete (it is the last thing in buf): a NUL ends it, and
 * the value starts. */
static int end_name(h2r_hbuf_t *h) {
  uint32_t *o = h->off[h->n - 1];
  while (h->trim_names && o[1] > 0 && (h->buf[h->len - 1] == ' ' || h->buf[h->len - 1] == '\t')) {
    o[1]--;
    h->len--;
  }
  if (o[1] == 0 || add_nul(h) != 0) /* a name of whitespace only is none */
    return -1;
  h->in_value = true;
  o[2] = (uint32_t)h->len;
  return 0;
}

int h2r_hbuf_value(h2r_hbuf_t *h, const char *at, size_t len) {
  /* A header line with no name (": x"), which llhttp lets through: either
   * an empty name or a value with none before it. */
  if (h->n == 0 || h->value_done || h->off[h->n - 1][1] == 0)
    return -1;
  if (!h->in_value && end_name(h) != 0)
    return -1;
  h->off[h->n - 1][3] += (uint32_t)len;
  return add(h, at, len);
}

int h2r_hbuf_value_done(h2r_hbuf_t *h) {
  if (h->n == 0)
    return -1;
  /* Names and values end with a NUL in buf, for those who need C strings
   * (h2r_hbuf_str); a value llhttp gave no piece of is empty. */
  if (!h->in_value && end_name(h) != 0)
    return -1;
  if (add_nul(h) != 0)
    return -1;
  h->value_done = true;
  return 0;
}

h2r_kv_t h2r_hbuf_kv(const h2r_hbuf_t *h, unsigned i) {
  const uint32_t *o = h->off[i];
  return (h2r_kv_t){h->buf + o[0], h->buf + o[2], o[1], o[3]};
}

const char *h2r_hbuf_get(const h2r_hbuf_t *h, const char *name, size_t *len) {
  size_t nl = strlen(name);
  for (unsigned i = 0; i < h->n; i++)
    if (h->off[i][1] == nl && strncasecmp(h->buf + h->off[i][0], name, nl) == 0) {
      *len = h->off[i][3];
      return h->buf + h->off[i][2];
    }
  return NULL;
}

const char *h2r_hbuf_get_last(const h2r_hbuf_t *h, const char *name, size_t *len) {
  size_t nl = strlen(name);
  for (unsigned i = h->n; i-- > 0;)
    if (h->off[i][1] == nl && strncasecmp(h->buf + h->off[i][0], name, nl) == 0) {
      *len = h->off[i][3];
      return h->buf + h->off[i][2];
    }
  return NULL;
}

bool h2r_kv_expects_continue(const h2r_kv_t *kv) {
  return kv->nl == 6 && strncasecmp(kv->name, "expect", 6) == 0 && kv->vl == 12 &&
         strncasecmp(kv->value, "100-continue", 12) == 0;
}

bool h2r_list_has_n(const char *v, size_t n, const char *tok, size_t tl) {
  const char *end = v + n;
  while (v < end) {
    while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
      v++;
    const char *t = v;
    while (v < end && *v != ',' && *v != ' ' && *v != '\t')
      v++;
    if ((size_t)(v - t) == tl && strncasecmp(t, tok, tl) == 0)
      return true;
  }
  return false;
}

bool h2r_list_has(const char *v, const char *tok) {
  return h2r_list_has_n(v, strlen(v), tok, strlen(tok));
}

bool h2r_hop_by_hop(const char *name, size_t len) {
  static const struct {
    const char *s;
    size_t n;
  } hop[] = {{"connection", 10},
             {"keep-alive", 10},
             {"proxy-connection", 16},
             {"transfer-encoding", 17},
             {"upgrade", 7},
             {"te", 2},
             {"trailer", 7},
             {"http2-settings", 14},
             {"proxy-authenticate", 18},
             {"proxy-authorization", 19}};
  for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
    if (hop[i].n == len && strncasecmp(hop[i].s, name, len) == 0)
      return true;
  return false;
}

bool h2r_is_token(const char *s, size_t n) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    bool alnum = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
    if (!alnum && (ch == '\0' || strchr(extra, ch) == NULL))
      return false;
  }
  return true;
}

/* The length of a segment separator at p ('/', '\\', %2f, %5c), or 0. */
static size_t separator(const char *p, const char *end) {
  if (*p == '/' || *p == '\\')
    return 1;
  if (end - p >= 3 && p[0] == '%' &&
      ((p[1] == '2' && (p[2] == 'f' || p[2] == 'F')) ||
       (p[1] == '5' && (p[2] == 'c' || p[2] == 'C'))))
    return 3;
  return 0;
}

bool h2r_path_has_dot_segment(const char *path, size_t n) {
  const char *end = path, *stop = path + n;
  while (end < stop && *end != '?')
    end++;
  const char *p = path;
  while (p < end) {
    size_t sl = separator(p, end);
    if (sl > 0) {
      p += sl;
      continue;
    }
    unsigned dots = 0;
    bool other = false;
    while (p < end && separator(p, end) == 0) {
      if (*p == '.') {
        dots++;
        p++;
      } else if (end - p >= 3 && p[0] == '%' && p[1] == '2' && (p[2] == 'e' || p[2] == 'E')) {
        dots++;
        p += 3;
      } else if (*p == ';') { /* "..;x": a path parameter (Tomcat drops it) */
        while (p < end && separator(p, end) == 0)
          p++;
      } else {
        other = true;
        p++;
      }
    }
    if (!other && (dots == 1 || dots == 2))
      return true;
  }
  return false;
}

void h2r_out_uint(h2r_out_t *o, uint64_t v, unsigned base) {
  char tmp[24];
  size_t i = sizeof(tmp);
  do {
    tmp[--i] = "0123456789abcdef"[v % base];
    v /= base;
  } while (v > 0);
  h2r_out_put(o, tmp + i, sizeof(tmp) - i);
}

/* ------------------------------------------------------------ h2r_bufcache_t */

void *h2r_bufcache_get(h2r_bufcache_t *c) {
  void *b = c->head;
  if (b == NULL)
    return malloc(c->size);
  memcpy(&c->head, b, sizeof(void *));
  c->n--;
  return b;
}

void h2r_bufcache_put(h2r_bufcache_t *c, void *b) {
  if (b == NULL)
    return;
  if (c->n >= c->max) {
    free(b);
    return;
  }
  memcpy(b, &c->head, sizeof(void *));
  c->head = b;
  c->n++;
}

void h2r_bufcache_drain(h2r_bufcache_t *c) {
  while (c->head != NULL) {
    void *b = c->head;
    memcpy(&c->head, b, sizeof(void *));
    free(b);
  }
  c->n = 0;
}

/* Appends a buffer to an iovec array, merging it with the last one when the
 * memory is contiguous. */
int h2r_iov_push(uv_buf_t **iov, unsigned *n, unsigned *cap, const void *base, size_t len) {
  if (*n > 0) {
    uv_buf_t *last = &(*iov)[*n - 1];
    if (last->base + last->len == (const char *)base) {
      last->len += len;
      return 0;
    }
  }
  if (*n == *cap) {
    unsigned nc = *cap ? *cap * 2 : 16;
    uv_buf_t *q = realloc(*iov, nc * sizeof(*q));
    if (q == NULL)
      return UV_ENOMEM;
    *iov = q;
    *cap = nc;
  }
  (*iov)[(*n)++] = uv_buf_init((char *)base, (unsigned)len);
  return 0;
}
