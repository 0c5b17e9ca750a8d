/* Helpers for h2rev tests. */
#ifndef H2REV_TEST_UTIL_H
#define H2REV_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* A fresh directory /tmp/h2rev-test-XXXXXX, created on first call, removed (rm -rf) at
 * exit of the process that created it. Not removed when the test aborts. */
const char *test_tmpdir(void);

/* Writes "<dir>/<name>" into buf (aborts if it does not fit); returns buf. */
char *test_path(char *buf, size_t len, const char *dir, const char *name);

/* Generates PEM files into dir (EC P-256 keys, SHA-256 signatures):
 *   ca.pem/ca.key             CA "h2rev test CA" (basicConstraints CA:TRUE, keyCertSign)
 *   server.pem/server.key     CN localhost, SAN DNS:localhost IP:127.0.0.1 IP:::1,
 *                             EKU serverAuth, signed by ca, valid now-1h .. now+1d
 *   expired.pem/expired.key   same as server but valid now-2d .. now-1d
 *   client.pem/client.key     CN client-1, SAN DNS:client-1, EKU clientAuth, signed by ca
 *   other-ca.pem/other-ca.key an unrelated CA "h2rev other CA"
 * Aborts on failure. */
void test_certs_make(const char *dir);

/* Certificates made once per process in test_tmpdir()/certs; returns that directory. */
const char *test_certs(void);

/* SHA-256, one shot and incremental. */
void test_sha256(const void *p, size_t n, unsigned char out[32]);

typedef struct {
  void *ctx; /* EVP_MD_CTX * */
} test_sha_t;

void test_sha_init(test_sha_t *s);
void test_sha_update(test_sha_t *s, const void *p, size_t n);
void test_sha_final(test_sha_t *s, unsigned char out[32]); /* also frees the context */

/* Deterministic pseudo-random bytes (xorshift64*) from seed. */
void test_fill_random(void *p, size_t n, uint64_t seed);

#endif /* H2REV_TEST_UTIL_H */
