/* Tests of the test harness itself (test/util.c). */
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

static X509 *load_cert(const char *dir, const char *name) {
  char path[4096];
  FILE *f = fopen(test_path(path, sizeof(path), dir, name), "r");
  X509 *cert;
  ASSERT_NOT_NULL(f);
  cert = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  ASSERT_NOT_NULL(cert);
  return cert;
}

static EVP_PKEY *load_key(const char *dir, const char *name) {
  char path[4096];
  FILE *f = fopen(test_path(path, sizeof(path), dir, name), "r");
  EVP_PKEY *key;
  ASSERT_NOT_NULL(f);
  key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  ASSERT_NOT_NULL(key);
  return key;
}

/* Returns the X509_V_* result of verifying dir/leaf against dir/ca (purpose may be 0). */
static int verify(const char *dir, const char *leaf, const char *ca, int purpose) {
  X509 *cert = load_cert(dir, leaf);
  X509 *root = load_cert(dir, ca);
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  int err;
  ASSERT_NOT_NULL(store);
  ASSERT_NOT_NULL(ctx);
  ASSERT_EQ(X509_STORE_add_cert(store, root), 1);
  ASSERT_EQ(X509_STORE_CTX_init(ctx, store, cert, NULL), 1);
  if (purpose)
    ASSERT_EQ(X509_STORE_CTX_set_purpose(ctx, purpose), 1);
  if (X509_verify_cert(ctx) == 1)
    err = X509_V_OK;
  else
    err = X509_STORE_CTX_get_error(ctx);
  ASSERT_NE(err, X509_V_ERR_UNSPECIFIED);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(root);
  X509_free(cert);
  return err;
}

TEST(certs_verify) {
  const char *dir = test_certs();
  X509 *server;
  EVP_PKEY *key;

  ASSERT_EQ(verify(dir, "server.pem", "ca.pem", X509_PURPOSE_SSL_SERVER), X509_V_OK);
  ASSERT_EQ(verify(dir, "client.pem", "ca.pem", X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  ASSERT_NE(verify(dir, "server.pem", "other-ca.pem", 0), X509_V_OK);
  ASSERT_NE(verify(dir, "client.pem", "other-ca.pem", 0), X509_V_OK);
  ASSERT_EQ(verify(dir, "expired.pem", "ca.pem", 0), X509_V_ERR_CERT_HAS_EXPIRED);
  /* EKU: the client certificate is not good for a server, and vice versa. */
  ASSERT_NE(verify(dir, "client.pem", "ca.pem", X509_PURPOSE_SSL_SERVER), X509_V_OK);
  ASSERT_NE(verify(dir, "server.pem", "ca.pem", X509_PURPOSE_SSL_CLIENT), X509_V_OK);

  server = load_cert(dir, "server.pem");
  ASSERT_EQ(X509_check_host(server, "localhost", 0, 0, NULL), 1);
  ASSERT_EQ(X509_check_ip_asc(server, "127.0.0.1", 0), 1);
  ASSERT_EQ(X509_check_ip_asc(server, "::1", 0), 1);
  ASSERT_NE(X509_check_host(server, "example.com", 0, 0, NULL), 1);
  key = load_key(dir, "server.key");
  ASSERT_EQ(X509_check_private_key(server, key), 1);
  EVP_PKEY_free(key);
  X509_free(server);
}

TEST(sha256_and_random) {
  static const unsigned char abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                        0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                        0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
  unsigned char out[32], out2[32];
  unsigned char *buf, *buf2;
  test_sha_t s;
  size_t n = 100003;

  test_sha256("abc", 3, out);
  ASSERT_MEM_EQ(out, abc, 32);

  test_sha_init(&s);
  test_sha_update(&s, "a", 1);
  test_sha_update(&s, "", 0);
  test_sha_update(&s, "bc", 2);
  test_sha_final(&s, out2);
  ASSERT_MEM_EQ(out2, abc, 32);

  buf = malloc(n);
  buf2 = malloc(n);
  ASSERT_NOT_NULL(buf);
  ASSERT_NOT_NULL(buf2);
  test_fill_random(buf, n, 42);
  test_fill_random(buf2, n, 42);
  ASSERT_MEM_EQ(buf, buf2, n);
  test_fill_random(buf2, n, 43);
  ASSERT_NE(memcmp(buf, buf2, n), 0);
  free(buf);
  free(buf2);

  ASSERT_STR_EQ(test_tmpdir(), test_tmpdir());
  ASSERT_EQ(strncmp(test_tmpdir(), "/tmp/", 5), 0);
}
