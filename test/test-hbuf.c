/* Heads and buffers without a network: h2r_out_t never writes past its
 * buffer, h2r_hbuf_t enforces its limits, field names and dot segments are
 * told apart as the proxy needs, h2r_bufcache_t keeps at most its bound and
 * hands buffers back most recent first. */
#include "internal.h"
#include "test.h"

#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

TEST(out_flags_overflow_instead_of_overrunning) {
  char buf[16 + 8];
  memset(buf, '#', sizeof(buf));
  h2r_out_t o = {buf, 0, 16, false};
  H2R_OUT_LIT(&o, "GET /a HTTP/1.");
  ASSERT(!o.over);
  H2R_OUT_LIT(&o, "1\r\n"); /* 17 bytes into 16: the writer must see it */
  ASSERT(o.over);
  ASSERT_EQ(o.len, 16);
  ASSERT_MEM_EQ(buf, "GET /a HTTP/1.1\r", 16);
  h2r_out_header(&o, "Host", 4, "x", 1);
  h2r_out_uint(&o, 12345, 10);
  ASSERT_EQ(o.len, 16);
  for (size_t i = 16; i < sizeof(buf); i++)
    ASSERT_EQ(buf[i], '#');
}

TEST(out_uint_and_header) {
  char buf[128];
  h2r_out_t o = {buf, 0, sizeof(buf), false};
  h2r_out_uint(&o, 0, 10);
  H2R_OUT_LIT(&o, " ");
  h2r_out_uint(&o, UINT64_MAX, 10);
  H2R_OUT_LIT(&o, " ");
  h2r_out_uint(&o, 255, 16);
  H2R_OUT_LIT(&o, " ");
  h2r_out_uint(&o, 0x10000, 16);
  h2r_out_header(&o, "\r\nContent-Length", 16, "7", 1);
  const char want[] = "0 18446744073709551615 ff 10000\r\nContent-Length: 7\r\n";
  ASSERT_EQ(o.len, sizeof(want) - 1);
  ASSERT_MEM_EQ(buf, want, sizeof(want) - 1);
}

TEST(hbuf_gathers_pieces_and_finds_headers) {
  h2r_hbuf_t h = {0};
  /* llhttp may hand a URL, a name or a value over in several pieces. */
  ASSERT_OK(h2r_hbuf_url(&h, "/pa", 3));
  ASSERT_OK(h2r_hbuf_url(&h, "th", 2));
  ASSERT_OK(h2r_hbuf_field(&h, "Conte", 5));
  ASSERT_OK(h2r_hbuf_field(&h, "nt-Type", 7));
  ASSERT_OK(h2r_hbuf_value(&h, "text/", 5));
  ASSERT_OK(h2r_hbuf_value(&h, "plain", 5));
  ASSERT_OK(h2r_hbuf_field(&h, "X-A", 3));
  ASSERT_OK(h2r_hbuf_value(&h, "1", 1));
  ASSERT_EQ(h.url_len, 5);
  ASSERT_MEM_EQ(h.buf, "/path", 5);
  ASSERT_EQ(h.n, 2);
  size_t len = 0;
  const char *v = h2r_hbuf_get(&h, "content-type", &len);
  ASSERT_NOT_NULL(v);
  ASSERT_EQ(len, 10);
  ASSERT_MEM_EQ(v, "text/plain", 10);
  h2r_kv_t kv = h2r_hbuf_kv(&h, 1);
  ASSERT_EQ(kv.nl, 3);
  ASSERT_MEM_EQ(kv.name, "X-A", 3);
  ASSERT_EQ(kv.vl, 1);
  ASSERT_NULL(h2r_hbuf_get(&h, "x-b", &len));
  ASSERT(!h.too_large);
  h2r_hbuf_free(&h);
}

TEST(hbuf_limits) {
  h2r_hbuf_t h = {.max = 16};
  ASSERT_OK(h2r_hbuf_url(&h, "/0123456789", 11));
  ASSERT_OK(h2r_hbuf_field(&h, "Host", 4));
  ASSERT_EQ(h2r_hbuf_value(&h, "xy", 2), -1); /* 17 bytes of at most 16 */
  ASSERT(h.too_large);
  h2r_hbuf_free(&h);

  h2r_hbuf_t m = {0};
  ASSERT_OK(h2r_hbuf_url(&m, "/", 1));
  for (unsigned i = 0; i < H2R_MAX_HEADERS; i++) {
    ASSERT_OK(h2r_hbuf_field(&m, "A", 1));
    ASSERT_OK(h2r_hbuf_value(&m, "b", 1));
  }
  ASSERT(!m.too_large);
  ASSERT_EQ(h2r_hbuf_field(&m, "A", 1), -1); /* one header too many */
  ASSERT(m.too_large);
  ASSERT_EQ(m.n, H2R_MAX_HEADERS);
  h2r_hbuf_free(&m);
}

/* The listener's heads (max_n) take the fields the dialer adds to a
 * client's most; never more than the array holds. */
TEST(hbuf_field_limit_per_head) {
  h2r_hbuf_t m = {.max_n = H2R_HBUF_HEADERS};
  ASSERT_OK(h2r_hbuf_url(&m, "/", 1));
  for (unsigned i = 0; i < H2R_MAX_HEADERS + H2R_PROXY_ADDED_HEADERS; i++) {
    ASSERT_OK(h2r_hbuf_field(&m, "A", 1));
    ASSERT_OK(h2r_hbuf_value(&m, "b", 1));
  }
  ASSERT_EQ(h2r_hbuf_field(&m, "A", 1), -1);
  ASSERT(m.too_large);
  h2r_hbuf_free(&m);
  h2r_hbuf_t big = {.max_n = 10 * H2R_HBUF_HEADERS};
  ASSERT_OK(h2r_hbuf_url(&big, "/", 1));
  for (unsigned i = 0; i < H2R_HBUF_HEADERS; i++) {
    ASSERT_OK(h2r_hbuf_field(&big, "A", 1));
    ASSERT_OK(h2r_hbuf_value(&big, "b", 1));
  }
  ASSERT_EQ(h2r_hbuf_field(&big, "A", 1), -1);
  h2r_hbuf_free(&big);
}

TEST(hbuf_get_last) {
  h2r_hbuf_t h = {0};
  ASSERT_OK(h2r_hbuf_url(&h, "/", 1));
  const char *kv[][2] = {{"X-P", "/client"}, {"Host", "a"}, {"x-p", "/proxy/a"}};
  for (size_t i = 0; i < 3; i++) {
    ASSERT_OK(h2r_hbuf_field(&h, kv[i][0], strlen(kv[i][0])));
    ASSERT_OK(h2r_hbuf_value(&h, kv[i][1], strlen(kv[i][1])));
  }
  size_t len;
  const char *v = h2r_hbuf_get_last(&h, "x-p", &len);
  ASSERT(v != NULL && len == 8 && memcmp(v, "/proxy/a", 8) == 0);
  v = h2r_hbuf_get(&h, "x-p", &len);
  ASSERT(v != NULL && len == 7 && memcmp(v, "/client", 7) == 0);
  ASSERT_NULL(h2r_hbuf_get_last(&h, "x-q", &len));
  h2r_hbuf_free(&h);
}

TEST(field_names_are_tokens) {
  const char *good[] = {"Host", "x-forwarded-for", "A", "!#$%&'*+-.^_`|~09azAZ"};
  const char *bad[] = {"",    "Foo Bar", "X ",  " X",   "a:b",      "a\tb", "a\"b", "(x)",
                       "a,b", "a/b",     "a@b", "\x7f", "\xc3\xa9", "a;b",  "a=b",  "{}"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    ASSERT(h2r_is_token(good[i], strlen(good[i])));
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (h2r_is_token(bad[i], strlen(bad[i])))
      test_fail(__FILE__, __LINE__, "\"%s\" taken for a token", bad[i]);
  ASSERT(!h2r_is_token("a\0b", 3));
}

TEST(dot_segments) {
  const char *dots[] = {"/..",       "/.",        "/a/../b",   "/a/./b",    "/a/..",
                        "/%2e%2e/x", "/%2E%2e",   "/.%2e/x",   "/a/%2e",    "/a/..%2fb",
                        "/a/..%2Fb", "/a\\..\\b", "/a/..%5cb", "/a/..;x/b", "/a/.;/b",
                        "..",        "/a/..?x",   "/a/%2e?x=1"};
  const char *fine[] = {
      "/",         "/a/...", "/a/..b",   "/a/b..",    "/a/.b",    "/a/%2e%2e%2e",  "/a//b",
      "/a?x=/../", "/a?..",  "/%2e%2ex", "/a/.%2ex/", "/a/;/..b", "/a/%252e%252e", ""};
  for (size_t i = 0; i < sizeof(dots) / sizeof(dots[0]); i++)
    if (!h2r_path_has_dot_segment(dots[i], strlen(dots[i])))
      test_fail(__FILE__, __LINE__, "no dot segment found in %s", dots[i]);
  for (size_t i = 0; i < sizeof(fine) / sizeof(fine[0]); i++)
    if (h2r_path_has_dot_segment(fine[i], strlen(fine[i])))
      test_fail(__FILE__, __LINE__, "a dot segment found in %s", fine[i]);
  /* Only the n bytes given are read. */
  ASSERT(!h2r_path_has_dot_segment("/a/..", 3));
}

TEST(bufcache_bounded_most_recent_first) {
  h2r_bufcache_t c;
  h2r_bufcache_init(&c, 4096, 2);
  char *a = h2r_bufcache_get(&c), *b = h2r_bufcache_get(&c), *d = h2r_bufcache_get(&c);
  ASSERT_NOT_NULL(a);
  ASSERT_NOT_NULL(b);
  ASSERT_NOT_NULL(d);
  memset(a, 1, 4096); /* the whole size is usable */
  h2r_bufcache_put(&c, a);
  h2r_bufcache_put(&c, b);
  h2r_bufcache_put(&c, d); /* over the bound: freed (ASan and valgrind see a leak otherwise) */
  h2r_bufcache_put(&c, NULL);
  ASSERT_EQ(c.n, 2);
  ASSERT_PTR_EQ(h2r_bufcache_get(&c), b);
  ASSERT_EQ(c.n, 1);
  h2r_bufcache_put(&c, b);
  h2r_bufcache_drain(&c);
  ASSERT_EQ(c.n, 0);
  ASSERT_NULL(c.head);
  char *e = h2r_bufcache_get(&c); /* empty: a new one */
  ASSERT_NOT_NULL(e);
  h2r_bufcache_put(&c, e);
  h2r_bufcache_drain(&c);

  h2r_bufcache_t tiny; /* smaller than its link: rounded up */
  h2r_bufcache_init(&tiny, 1, 4);
  ASSERT_GE(tiny.size, sizeof(void *));
  h2r_bufcache_put(&tiny, h2r_bufcache_get(&tiny));
  h2r_bufcache_drain(&tiny);
}

/* A head parsed by llhttp into an h2r_hbuf_t, as http1.c, proxy.c and
 * upstream.c do: the llhttp error, and the headers gathered. */
static int hb_field(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_field(h->data, at, len);
}
static int hb_value(llhttp_t *h, const char *at, size_t len) {
  return h2r_hbuf_value(h->data, at, len);
}
static int hb_value_done(llhttp_t *h) {
  return h2r_hbuf_value_done(h->data);
}

static llhttp_errno_t parse_head(h2r_hbuf_t *hb, llhttp_type_t type, const char *head) {
  llhttp_settings_t st;
  llhttp_settings_init(&st);
  st.on_header_field = hb_field;
  st.on_header_value = hb_value;
  st.on_header_value_complete = hb_value_done;
  llhttp_t p;
  llhttp_init(&p, type, &st);
  p.data = hb;
  return llhttp_execute(&p, head, strlen(head));
}

TEST(hbuf_refuses_headers_without_a_name) {
  h2r_hbuf_t hb = {0};
  ASSERT_EQ(parse_head(&hb, HTTP_RESPONSE, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n"), HPE_OK);
  ASSERT_EQ(hb.n, 2);
  h2r_kv_t kv = h2r_hbuf_kv(&hb, 1);
  ASSERT_MEM_EQ(kv.name, "B", 1);
  ASSERT_MEM_EQ(kv.value, "2", 1);
  /* llhttp lets ": x" through; it must not become a header, nor join the
   * value of the one before it. */
  static const char *const bad[] = {
      "HTTP/1.1 200 OK\r\n: x\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n: chunked\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    h2r_hbuf_reset(&hb);
    ASSERT_EQ(parse_head(&hb, HTTP_RESPONSE, bad[i]), HPE_USER);
  }
  h2r_hbuf_reset(&hb);
  ASSERT_EQ(parse_head(&hb, HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"), HPE_USER);
  h2r_hbuf_free(&hb);
}
