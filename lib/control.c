/*
 * The control protocol of h2rev2: newline-terminated JSON objects with the
 * optional string fields "command", "connPath" and "err". A strict little
 * parser (unknown fields of any JSON type are skipped) and the encoder.
 */
#include "control.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jp {
  const char *p, *end;
} jp_t;

static void ws(jp_t *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n'))
    j->p++;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Parses a string into out (truncated to cap-1, always terminated; out may
 * be NULL to skip). */
static int jstring(jp_t *j, char *out, size_t cap) {
  size_t n = 0;
  if (j->p >= j->end || *j->p != '"')
    return -1;
  j->p++;
  while (j->p < j->end) {
    unsigned char c = (unsigned char)*j->p++;
    if (c == '"') {
      if (out != NULL)
        out[n] = '\0';
      return 0;
    }
    if (c < 0x20)
      return -1;
    if (c == '\\') {
      if (j->p >= j->end)
        return -1;
      char e = *j->p++;
      switch (e) {
      case '"':
      case '\\':
      case '/':
        c = (unsigned char)e;
        break;
      case 'b':
        c = '\b';
        break;
      case 'f':
        c = '\f';
        break;
      case 'n':
        c = '\n';
        break;
      case 'r':
        c = '\r';
        break;
      case 't':
        c = '\t';
        break;
      case 'u': {
        if (j->end - j->p < 4)
          return -1;
        int v = 0;
        for (int i = 0; i < 4; i++) {
          int h = hexval(j->p[i]);
          if (h < 0)
            return -1;
          v = v * 16 + h;
        }
        j->p += 4;
        c = v < 0x80 ? (unsigned char)v : '?'; /* text for logs only */
        break;
      }
      default:
        return -1;
      }
    }
    if (out != NULL && n + 1 < cap)
      out[n++] = (char)c;
  }
  return -1;
}

static int jvalue(jp_t *j, int depth);

static int jcompound(jp_t *j, int depth, char open, char close) {
  if (depth > 16)
    return -1;
  j->p++; /* open */
  (void)open;
  ws(j);
  if (j->p < j->end && *j->p == close) {
    j->p++;
    return 0;
  }
  for (;;) {
    ws(j);
    if (close == '}') {
      if (jstring(j, NULL, 0) != 0)
        return -1;
      ws(j);
      if (j->p >= j->end || *j->p++ != ':')
        return -1;
      ws(j);
    }
    if (jvalue(j, depth + 1) != 0)
      return -1;
    ws(j);
    if (j->p >= j->end)
      return -1;
    char c = *j->p++;
    if (c == close)
      return 0;
    if (c != ',')
      return -1;
  }
}

static int jliteral(jp_t *j, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
    return -1;
  j->p += n;
  return 0;
}

static int jdigits(jp_t *j) {
  const char *start = j->p;
  while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
    j->p++;
  return j->p > start ? 0 : -1;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int jnumber(jp_t *j) {
  if (j->p < j->end && *j->p == '-')
    j->p++;
  if (j->p < j->end && *j->p == '0')
    j->p++;
  else if (jdigits(j) != 0)
    return -1;
  if (j->p < j->end && *j->p == '.') {
    j->p++;
    if (jdigits(j) != 0)
      return -1;
  }
  if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
    j->p++;
    if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
      j->p++;
    if (jdigits(j) != 0)
      return -1;
  }
  return 0;
}

static int jvalue(jp_t *j, int depth) {
  if (j->p >= j->end)
    return -1;
  switch (*j->p) {
  case '"':
    return jstring(j, NULL, 0);
  case '{':
    return jcompound(j, depth, '{', '}');
  case '[':
    return jcompound(j, depth, '[', ']');
  case 't':
    return jliteral(j, "true");
  case 'f':
    return jliteral(j, "false");
  case 'n':
    return jliteral(j, "null");
  default:
    return jnumber(j);
  }
}

int h2r_ctl_parse(const char *line, size_t len, h2r_ctl_msg *m) {
  jp_t j = {line, line + len};
  memset(m, 0, sizeof(*m));
  ws(&j);
  if (j.p >= j.end || *j.p != '{')
    return H2REV_ECONTROL;
  j.p++;
  ws(&j);
  if (j.p < j.end && *j.p == '}') {
    j.p++;
  } else {
    for (;;) {
      char key[16];
      ws(&j);
      if (jstring(&j, key, sizeof(key)) != 0)
        return H2REV_ECONTROL;
      ws(&j);
      if (j.p >= j.end || *j.p++ != ':')
        return H2REV_ECONTROL;
      ws(&j);
      char *dst = NULL;
      size_t cap = 0;
      if (strcmp(key, "command") == 0)
        dst = m->command, cap = sizeof(m->command);
      else if (strcmp(key, "err") == 0)
        dst = m->err, cap = sizeof(m->err);
      else if (strcmp(key, "connPath") == 0)
        dst = m->conn_path, cap = sizeof(m->conn_path);
      int r = dst != NULL ? jstring(&j, dst, cap) : jvalue(&j, 1);
      if (r != 0)
        return H2REV_ECONTROL;
      ws(&j);
      if (j.p >= j.end)
        return H2REV_ECONTROL;
      char c = *j.p++;
      if (c == '}')
        break;
      if (c != ',')
        return H2REV_ECONTROL;
    }
  }
  ws(&j);
  return j.p == j.end ? 0 : H2REV_ECONTROL;
}

int h2r_ctl_feed(h2r_ctl_reader *r, const char *p, size_t n, h2r_ctl_on_msg on_msg, void *arg) {
  while (n > 0) {
    const char *nl = memchr(p, '\n', n);
    size_t take = nl != NULL ? (size_t)(nl - p) : n;
    if (r->len + take > r->max) {
      snprintf(r->why, sizeof(r->why), "control line over %zu bytes", r->max);
      return H2REV_ECONTROL;
    }
    if (r->len + take > r->cap) {
      size_t cap = r->cap ? r->cap : 256;
      while (cap < r->len + take)
        cap *= 2;
      char *b = realloc(r->buf, cap);
      if (b == NULL)
        return UV_ENOMEM;
      r->buf = b;
      r->cap = cap;
    }
    if (take > 0)
      memcpy(r->buf + r->len, p, take);
    r->len += take;
    p += take;
    n -= take;
    if (nl == NULL)
      break;
    p++; /* the newline */
    n--;
    size_t len = r->len;
    r->len = 0;
    size_t k = 0;
    while (k < len && (r->buf[k] == ' ' || r->buf[k] == '\r' || r->buf[k] == '\t'))
      k++;
    if (k == len)
      continue; /* blank line: JSON allows whitespace between values */
    h2r_ctl_msg m;
    if (h2r_ctl_parse(r->buf, len, &m) != 0) {
      size_t show = len < 40 ? len : 40;
      size_t o = 0;
      o += (size_t)snprintf(r->why, sizeof(r->why), "malformed control line (%zu bytes): ", len);
      for (size_t i = 0; i < show && o + 5 < sizeof(r->why); i++) {
        unsigned char c = (unsigned char)r->buf[i];
        o += (size_t)snprintf(r->why + o, sizeof(r->why) - o,
                              c >= 0x20 && c < 0x7f && c != '\\' ? "%c" : "\\x%02x", c);
      }
      return H2REV_ECONTROL;
    }
    int rc = on_msg(arg, &m);
    if (rc != 0)
      return rc;
  }
  return 0;
}

void h2r_ctl_reader_free(h2r_ctl_reader *r) {
  free(r->buf);
  r->buf = NULL;
  r->len = r->cap = 0;
}

size_t h2r_ctl_encode(char *out, size_t cap, const char *command, const char *err) {
  /* Always a whole line: err is cut short to fit, never the closing "}\n". */
  int n = snprintf(out, cap, "{\"command\":\"%s\"", command);
  if (n < 0 || (size_t)n + 3 > cap) {
    if (cap > 0)
      out[0] = '\0';
    return 0;
  }
  size_t o = (size_t)n;
  if (err != NULL && o + 12 <= cap) {
    o += (size_t)snprintf(out + o, cap - o, ",\"err\":\"");
    /* Room for the longest escape (6), the closing quote and "}\n\0". */
    for (const char *q = err; *q != '\0' && o + 6 + 4 <= cap; q++) {
      unsigned char c = (unsigned char)*q;
      if (c == '"' || c == '\\')
        o += (size_t)snprintf(out + o, cap - o, "\\%c", c);
      else if (c < 0x20)
        o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
      else
        out[o++] = (char)c;
    }
    out[o++] = '"';
  }
  out[o++] = '}';
  out[o++] = '\n';
  out[o] = '\0';
  return o;
}

bool h2r_id_valid(const char *id, size_t len) {
  if (len == 0 || len > H2R_ID_MAX)
    return false;
  for (size_t i = 0; i < len; i++) {
    char c = id[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._~:@-", c) != NULL;
    if (!ok || c == '\0')
      return false;
  }
  return true;
}

int h2r_revdial_path(char *out, size_t cap, const char *base, const char *id) {
  size_t bl = strlen(base);
  while (bl > 0 && base[bl - 1] == '/')
    bl--;
  int n = snprintf(out, cap, "%.*s/revdial?id=", (int)bl, base);
  if (n < 0 || (size_t)n >= cap)
    return UV_ENOBUFS;
  size_t o = (size_t)n;
  for (const char *p = id; *p != '\0'; p++) {
    unsigned char c = (unsigned char)*p;
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '~' || c == '-';
    if (o + (plain ? 1 : 3) + 1 > cap) /* the byte or its %XX, and the NUL */
      return UV_ENOBUFS;
    if (plain)
      out[o++] = (char)c;
    else
      o += (size_t)snprintf(out + o, cap - o, "%%%02X", c);
  }
  out[o] = '\0';
  return 0;
}
