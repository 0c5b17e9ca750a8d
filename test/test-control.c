/* The control protocol without a network: the JSON line parser, the line
 * reader, the encoder, the request path and id validation. */
#include "control.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(const char *s, h2r_ctl_msg *m) {
  return h2r_ctl_parse(s, strlen(s), m);
}

TEST(parse_accepts) {
  h2r_ctl_msg m;
  ASSERT_OK(parse("{\"command\":\"conn-ready\"}", &m));
  ASSERT_STR_EQ(m.command, "conn-ready");
  ASSERT_STR_EQ(m.err, "");
  ASSERT_STR_EQ(m.conn_path, "");

  ASSERT_OK(parse("{\"command\":\"pickup-failed\",\"err\":\"x \\\"y\\\"\"}", &m));
  ASSERT_STR_EQ(m.command, "pickup-failed");
  ASSERT_STR_EQ(m.err, "x \"y\"");

  /* Escapes of every kind. */
  ASSERT_OK(parse("{\"err\":\"a\\\\b\\/c\\n\\t\\u0041\\u00e9\",\"connPath\":\"/p\"}", &m));
  ASSERT_STR_EQ(m.err, "a\\b/c\n\tA?");
  ASSERT_STR_EQ(m.conn_path, "/p");
  ASSERT_STR_EQ(m.command, "");

  /* Unknown fields of every JSON type are skipped. */
  ASSERT_OK(parse("{\"s\":\"str\",\"i\":1,\"n\":-2.5e+3,\"z\":0,\"f\":0.25E-1,\"t\":true,"
                  "\"fa\":false,\"nu\":null,\"a\":[1,\"x\",[],{},[null]],"
                  "\"o\":{\"k\":{\"kk\":[true]}},\"command\":\"keep-alive\",\"e\":[]}",
                  &m));
  ASSERT_STR_EQ(m.command, "keep-alive");

  /* Whitespace everywhere JSON allows it. */
  ASSERT_OK(parse(" \t{ \"command\" :\r\n \"conn-ready\" , \"x\" : [ 1 , 2 ] } \r", &m));
  ASSERT_STR_EQ(m.command, "conn-ready");

  /* An empty object, an unknown command: accepted (ignored by the caller). */
  ASSERT_OK(parse("{}", &m));
  ASSERT_STR_EQ(m.command, "");
  ASSERT_OK(parse("{\"command\":\"something-new\"}", &m));
  ASSERT_STR_EQ(m.command, "something-new");

  /* A long err is truncated, never overflows. */
  char big[1024];
  int o = snprintf(big, sizeof(big), "{\"command\":\"pickup-failed\",\"err\":\"");
  memset(big + o, 'e', 500);
  snprintf(big + o + 500, sizeof(big) - (size_t)o - 500, "\"}");
  ASSERT_OK(parse(big, &m));
  ASSERT_EQ(strlen(m.err), sizeof(m.err) - 1);
}

TEST(parse_rejects) {
  static const char *bad[] = {
      "",
      "not json",
      "[]",
      "\"command\"",
      "{",
      "{\"command\"}",
      "{\"command\":}",
      "{\"command\" \"x\"}",
      "{\"command\":\"x\",}",
      "{,\"command\":\"x\"}",
      "{\"command\":1}",
      "{\"command\":null}",
      "{\"command\":[\"conn-ready\"]}",
      "{\"err\":true}",
      "{\"command\":\"x\"} x",
      "{\"command\":\"x\"}{}",
      "{\"command\":\"unterminated}",
      "{\"command\":\"bad escape \\q\"}",
      "{\"command\":\"bad \\u12\"}",
      "{\"command\":\"ctl\x01char\"}",
      "{command:\"x\"}",
      "{'command':'x'}",
      "{\"a\":tru}",
      "{\"a\":nul}",
      "{\"a\":01}",
      "{\"a\":-}",
      "{\"a\":1.}",
      "{\"a\":1e}",
      "{\"a\":+1}",
      "{\"a\":1.2.3}",
      "{\"a\":--1}",
      "{\"a\":[1,]}",
      "{\"a\":[1 2]}",
      "{\"a\":{\"b\"}}",
      "{\"a\":{1:2}}",
      "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
  };
  h2r_ctl_msg m;
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (parse(bad[i], &m) != H2REV_ECONTROL)
      test_fail(__FILE__, __LINE__, "accepted: %s", bad[i]);
  }
  /* Binary, with NULs, and a NUL inside an otherwise valid object. */
  static const char bin1[] = "\x00\xff\xfe{\"command\":\"x\"}";
  ASSERT_EQ(h2r_ctl_parse(bin1, sizeof(bin1) - 1, &m), H2REV_ECONTROL);
  static const char bin2[] = "{\"command\":\"x\"}\x00";
  ASSERT_EQ(h2r_ctl_parse(bin2, sizeof(bin2) - 1, &m), H2REV_ECONTROL);
  static const char bin3[] = "{\"command\":\"a\x00b\"}";
  ASSERT_EQ(h2r_ctl_parse(bin3, sizeof(bin3) - 1, &m), H2REV_ECONTROL);
  /* Random bytes never crash and are never accepted. */
  char rnd[4096];
  for (uint64_t seed = 1; seed < 200; seed++) {
    size_t n = (size_t)(seed * 37 % sizeof(rnd));
    test_fill_random(rnd, n, seed);
    ASSERT_EQ(h2r_ctl_parse(rnd, n, &m), H2REV_ECONTROL);
  }
  /* Deep nesting is bounded, not recursed without end. */
  char deep[20000];
  size_t o = (size_t)snprintf(deep, sizeof(deep), "{\"a\":");
  for (int i = 0; i < 5000; i++)
    deep[o++] = '[';
  deep[o++] = '}';
  ASSERT_EQ(h2r_ctl_parse(deep, o, &m), H2REV_ECONTROL);
}

/* --------------------------------------------------------------- feed */

typedef struct got {
  int n;
  char cmd[8][32];
  char err[8][128];
  int fail_at; /* return an error from the n-th message (1-based) */
} got_t;

static int on_msg(void *arg, const h2r_ctl_msg *m) {
  got_t *g = arg;
  if (g->n < 8) {
    snprintf(g->cmd[g->n], sizeof(g->cmd[0]), "%s", m->command);
    snprintf(g->err[g->n], sizeof(g->err[0]), "%s", m->err);
  }
  g->n++;
  return g->fail_at == g->n ? UV_EPIPE : 0;
}

TEST(feed_splits_lines) {
  const char *stream = "{\"command\":\"conn-ready\"}\n"
                       "\r\n"
                       "  \n"
                       "{\"command\":\"pickup-failed\",\"err\":\"no route\"}\r\n"
                       "{\"command\":\"keep-alive\"}\n";
  size_t len = strlen(stream);
  /* Every chunk size, so every split point is crossed. */
  for (size_t chunk = 1; chunk <= len; chunk++) {
    h2r_ctl_reader r = {0};
    r.max = 4096;
    got_t g = {0};
    for (size_t off = 0; off < len; off += chunk) {
      size_t n = len - off < chunk ? len - off : chunk;
      ASSERT_OK(h2r_ctl_feed(&r, stream + off, n, on_msg, &g));
    }
    ASSERT_EQ(g.n, 3);
    ASSERT_STR_EQ(g.cmd[0], "conn-ready");
    ASSERT_STR_EQ(g.cmd[1], "pickup-failed");
    ASSERT_STR_EQ(g.err[1], "no route");
    ASSERT_STR_EQ(g.cmd[2], "keep-alive");
    ASSERT_EQ(r.len, 0);
    h2r_ctl_reader_free(&r);
  }
  /* A partial line waits for its end. */
  h2r_ctl_reader r = {0};
  r.max = 4096;
  got_t g = {0};
  ASSERT_OK(h2r_ctl_feed(&r, "{\"command\":", 11, on_msg, &g));
  ASSERT_EQ(g.n, 0);
  ASSERT_OK(h2r_ctl_feed(&r, "\"conn-ready\"}", 13, on_msg, &g));
  ASSERT_EQ(g.n, 0);
  ASSERT_OK(h2r_ctl_feed(&r, "\n", 1, on_msg, &g));
  ASSERT_EQ(g.n, 1);
  /* The callback's error stops the feed and is returned. */
  g.fail_at = 2;
  const char *two = "{\"command\":\"a\"}\n{\"command\":\"b\"}\n{\"command\":\"c\"}\n";
  ASSERT_EQ(h2r_ctl_feed(&r, two, strlen(two), on_msg, &g), UV_EPIPE);
  ASSERT_EQ(g.n, 2);
  h2r_ctl_reader_free(&r);
  h2r_ctl_reader_free(&r); /* twice is harmless */
}

TEST(feed_rejects) {
  /* A line of exactly max bytes is fine, one more is not. */
  h2r_ctl_reader r = {0};
  r.max = 64;
  got_t g = {0};
  char line[200];
  int n = snprintf(line, sizeof(line), "{\"command\":\"x\",\"pad\":\"");
  while (n < 62)
    line[n++] = 'p';
  line[n++] = '"';
  line[n++] = '}';
  ASSERT_EQ(n, 64);
  line[n++] = '\n';
  ASSERT_OK(h2r_ctl_feed(&r, line, (size_t)n, on_msg, &g));
  ASSERT_EQ(g.n, 1);
  h2r_ctl_reader_free(&r);

  /* Over max without a newline, across many small chunks. */
  r = (h2r_ctl_reader){0};
  r.max = 1000;
  char chunk[100];
  memset(chunk, 'a', sizeof(chunk));
  int rc = 0;
  size_t fed = 0;
  while (rc == 0 && fed < 5000) {
    rc = h2r_ctl_feed(&r, chunk, sizeof(chunk), on_msg, &g);
    fed += sizeof(chunk);
  }
  ASSERT_EQ(rc, H2REV_ECONTROL);
  ASSERT_LE(fed, 1100);
  ASSERT(strstr(r.why, "over 1000 bytes") != NULL);
  ASSERT_LE(r.cap, 2048);
  h2r_ctl_reader_free(&r);

  /* One huge chunk: rejected before anything is copied. */
  r = (h2r_ctl_reader){0};
  r.max = 4096;
  size_t big = 1 << 20;
  char *p = malloc(big);
  memset(p, 'x', big);
  ASSERT_EQ(h2r_ctl_feed(&r, p, big, on_msg, &g), H2REV_ECONTROL);
  ASSERT(r.why[0] != '\0');
  ASSERT_NULL(r.buf);
  free(p);
  h2r_ctl_reader_free(&r);

  /* Malformed: the reason shows the line, escaped. */
  r = (h2r_ctl_reader){0};
  r.max = 4096;
  g.n = 0;
  const char *bad = "{\"command\":\"ok\"}\nnot json\x01\n{\"command\":\"never\"}\n";
  ASSERT_EQ(h2r_ctl_feed(&r, bad, strlen(bad), on_msg, &g), H2REV_ECONTROL);
  ASSERT_EQ(g.n, 1);
  ASSERT(strstr(r.why, "malformed") != NULL);
  ASSERT(strstr(r.why, "not json\\x01") != NULL);
  h2r_ctl_reader_free(&r);

  /* Binary with newlines. */
  r = (h2r_ctl_reader){0};
  r.max = 4096;
  char rnd[4096];
  test_fill_random(rnd, sizeof(rnd), 99);
  for (size_t i = 0; i < sizeof(rnd); i += 97)
    rnd[i] = '\n';
  ASSERT_EQ(h2r_ctl_feed(&r, rnd, sizeof(rnd), on_msg, &g), H2REV_ECONTROL);
  ASSERT(r.why[0] != '\0');
  h2r_ctl_reader_free(&r);
}

/* ------------------------------------------------------------- encode */

TEST(encode) {
  char out[256];
  size_t n = h2r_ctl_encode(out, sizeof(out), "pickup-failed", "a\"b");
  ASSERT_STR_EQ(out, "{\"command\":\"pickup-failed\",\"err\":\"a\\\"b\"}\n");
  ASSERT_EQ(n, strlen(out));

  n = h2r_ctl_encode(out, sizeof(out), "conn-ready", NULL);
  ASSERT_STR_EQ(out, "{\"command\":\"conn-ready\"}\n");
  ASSERT_EQ(n, strlen(out));

  n = h2r_ctl_encode(out, sizeof(out), "pickup-failed", "back\\slash\nnl\x01");
  ASSERT_STR_EQ(out, "{\"command\":\"pickup-failed\",\"err\":\"back\\\\slash\\u000anl\\u0001\"}\n");
  ASSERT_EQ(n, strlen(out));
  /* Round trip. */
  h2r_ctl_msg m;
  ASSERT_OK(h2r_ctl_parse(out, n - 1, &m));
  ASSERT_STR_EQ(m.err, "back\\slash\nnl\x01");

  /* A long err is cut, the line stays whole and parses, for every size. */
  char err[600];
  for (size_t i = 0; i < sizeof(err) - 1; i++)
    err[i] = i % 7 == 0 ? '"' : 'x';
  err[sizeof(err) - 1] = '\0';
  for (size_t cap = 30; cap <= 300; cap++) {
    char buf[301];
    memset(buf, '#', sizeof(buf));
    n = h2r_ctl_encode(buf, cap, "pickup-failed", err);
    ASSERT_GT(n, 0);
    ASSERT_LT(n, cap);
    ASSERT_EQ(buf[n], '\0');
    ASSERT_EQ(buf[n - 1], '\n');
    ASSERT_EQ(buf[n - 2], '}');
    ASSERT_EQ(buf[cap], '#');
    ASSERT_OK(h2r_ctl_parse(buf, n - 1, &m));
    ASSERT_STR_EQ(m.command, "pickup-failed");
  }
  /* Too small for even the command: nothing. */
  n = h2r_ctl_encode(out, 10, "pickup-failed", "x");
  ASSERT_EQ(n, 0);
}

/* ----------------------------------------------------------- paths, ids */

TEST(revdial_path) {
  char out[256];
  ASSERT_OK(h2r_revdial_path(out, sizeof(out), "/base/", "my id"));
  ASSERT_STR_EQ(out, "/base/revdial?id=my%20id");
  ASSERT_OK(h2r_revdial_path(out, sizeof(out), "/base", "abc"));
  ASSERT_STR_EQ(out, "/base/revdial?id=abc");
  ASSERT_OK(h2r_revdial_path(out, sizeof(out), "", "a.b_c~d-e"));
  ASSERT_STR_EQ(out, "/revdial?id=a.b_c~d-e");
  ASSERT_OK(h2r_revdial_path(out, sizeof(out), "/", "x"));
  ASSERT_STR_EQ(out, "/revdial?id=x");
  ASSERT_OK(h2r_revdial_path(out, sizeof(out), "/a//", "u@h:1&x=/?#%"));
  ASSERT_STR_EQ(out, "/a/revdial?id=u%40h%3A1%26x%3D%2F%3F%23%25");
  ASSERT_EQ(h2r_revdial_path(out, 10, "/base", "abc"), UV_ENOBUFS);
  ASSERT_EQ(h2r_revdial_path(out, 22, "/base", "my id"), UV_ENOBUFS);
  /* The length and its NUL are enough, to the byte. */
  ASSERT_OK(h2r_revdial_path(out, 21, "/base", "abc"));
  ASSERT_STR_EQ(out, "/base/revdial?id=abc");
  ASSERT_EQ(h2r_revdial_path(out, 20, "/base", "abc"), UV_ENOBUFS);
  ASSERT_OK(h2r_revdial_path(out, 25, "/base", "my id"));
  ASSERT_STR_EQ(out, "/base/revdial?id=my%20id");
  ASSERT_EQ(h2r_revdial_path(out, 24, "/base", "my id"), UV_ENOBUFS);
}

TEST(id_valid) {
  ASSERT(h2r_id_valid("a", 1));
  ASSERT(h2r_id_valid("node-1.example_x~y:z@w", 22));
  char id[200];
  memset(id, 'a', sizeof(id));
  ASSERT(h2r_id_valid(id, 128));
  ASSERT(!h2r_id_valid(id, 129));
  ASSERT(!h2r_id_valid("", 0));
  ASSERT(!h2r_id_valid("my id", 5));
  ASSERT(!h2r_id_valid("a/b", 3));
  ASSERT(!h2r_id_valid("a\0b", 3));
  ASSERT(!h2r_id_valid("a%20", 4));
  ASSERT(!h2r_id_valid("a\nb", 3));
  ASSERT(!h2r_id_valid("a?b", 3));
  ASSERT(!h2r_id_valid("\xc3\xa9", 2));
  ASSERT(!h2r_id_valid("..\\x", 4));
}
