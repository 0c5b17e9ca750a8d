#define _GNU_SOURCE
#include "util.h"
#include "test.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* ------------------------------------------------------------------ tmpdir */

static char tmpdir[64];
static pid_t tmpdir_owner;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  if (flag == FTW_DP)
    rmdir(path);
  else
    unlink(path);
  return 0;
}

static void tmpdir_cleanup(void) {
  if (tmpdir[0] && getpid() == tmpdir_owner)
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *test_tmpdir(void) {
  if (tmpdir[0] == '\0') {
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/h2rev-test-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
      perror("mkdtemp");
      abort();
    }
    tmpdir_owner = getpid();
    atexit(tmpdir_cleanup);
  }
  return tmpdir;
}

char *test_path(char *buf, size_t len, const char *dir, const char *name) {
  int n = snprintf(buf, len, "%s/%s", dir, name);
  ASSERT(n > 0 && (size_t)n < len);
  return buf;
}

/* ------------------------------------------------------------------ certificates */

static void ssl_check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "test_certs_make: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    abort();
  }
}

static EVP_PKEY *gen_key(void) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  ssl_check(k != NULL, "EVP_EC_gen");
  return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509_EXTENSION *ext;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  ssl_check(ext != NULL, value);
  ssl_check(X509_add_ext(cert, ext, -1), "X509_add_ext");
  X509_EXTENSION_free(ext);
}

/* issuer == NULL: self-signed. san/eku may be NULL. Validity in seconds relative to now. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       long not_before, long not_after, int is_ca, const char *san,
                       const char *eku) {
  static long serial = 1;
  X509 *cert = X509_new();
  X509_NAME *name;
  ssl_check(cert != NULL, "X509_new");
  ssl_check(X509_set_version(cert, 2), "X509_set_version");
  ssl_check(ASN1_INTEGER_set(X509_get_serialNumber(cert), (long)time(NULL) * 100 + serial++),
            "serial");
  ssl_check(X509_gmtime_adj(X509_getm_notBefore(cert), not_before) != NULL, "notBefore");
  ssl_check(X509_gmtime_adj(X509_getm_notAfter(cert), not_after) != NULL, "notAfter");
  ssl_check(X509_set_pubkey(cert, key), "X509_set_pubkey");

  name = X509_get_subject_name(cert);
  ssl_check(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"h2rev test",
                                       -1, -1, 0),
            "O");
  ssl_check(
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0),
      "CN");
  ssl_check(X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name), "issuer");

  add_ext(cert, issuer ? issuer : cert, NID_subject_key_identifier, "hash");
  if (issuer)
    add_ext(cert, issuer, NID_authority_key_identifier, "keyid:always");
  if (is_ca) {
    add_ext(cert, issuer ? issuer : cert, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(cert, issuer ? issuer : cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_ext(cert, issuer, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(cert, issuer, NID_key_usage, "critical,digitalSignature,keyAgreement");
  }
  if (eku)
    add_ext(cert, issuer ? issuer : cert, NID_ext_key_usage, eku);
  if (san)
    add_ext(cert, issuer ? issuer : cert, NID_subject_alt_name, san);

  ssl_check(X509_sign(cert, issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

static void write_pair(const char *dir, const char *base, X509 *cert, EVP_PKEY *key) {
  char path[4096], file[256];
  FILE *f;

  snprintf(file, sizeof(file), "%s.pem", base);
  f = fopen(test_path(path, sizeof(path), dir, file), "w");
  ssl_check(f != NULL, path);
  ssl_check(PEM_write_X509(f, cert), "PEM_write_X509");
  fclose(f);

  snprintf(file, sizeof(file), "%s.key", base);
  f = fopen(test_path(path, sizeof(path), dir, file), "w");
  ssl_check(f != NULL, path);
  ssl_check(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), "PEM_write_PrivateKey");
  fclose(f);
}

void test_certs_make(const char *dir) {
  static const char server_san[] = "DNS:localhost,IP:127.0.0.1,IP:::1";
  const long hour = 3600, day = 24 * 3600;
  EVP_PKEY *ca_key = gen_key(), *other_key = gen_key(), *server_key = gen_key(),
           *expired_key = gen_key(), *client_key = gen_key();
  X509 *ca, *other, *server, *expired, *client;

  ca = make_cert(ca_key, "h2rev test CA", NULL, NULL, -hour, 30 * day, 1, NULL, NULL);
  other = make_cert(other_key, "h2rev other CA", NULL, NULL, -hour, 30 * day, 1, NULL, NULL);
  server = make_cert(server_key, "localhost", ca, ca_key, -hour, day, 0, server_san, "serverAuth");
  expired =
      make_cert(expired_key, "localhost", ca, ca_key, -2 * day, -day, 0, server_san, "serverAuth");
  client =
      make_cert(client_key, "client-1", ca, ca_key, -hour, day, 0, "DNS:client-1", "clientAuth");

  write_pair(dir, "ca", ca, ca_key);
  write_pair(dir, "other-ca", other, other_key);
  write_pair(dir, "server", server, server_key);
  write_pair(dir, "expired", expired, expired_key);
  write_pair(dir, "client", client, client_key);

  X509_free(ca);
  X509_free(other);
  X509_free(server);
  X509_free(expired);
  X509_free(client);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(other_key);
  EVP_PKEY_free(server_key);
  EVP_PKEY_free(expired_key);
  EVP_PKEY_free(client_key);
}

const char *test_certs(void) {
  static char dir[128];
  if (dir[0] == '\0') {
    test_path(dir, sizeof(dir), test_tmpdir(), "certs");
    if (mkdir(dir, 0700) != 0) {
      perror("mkdir");
      abort();
    }
    test_certs_make(dir);
  }
  return dir;
}

/* ------------------------------------------------------------------ sha256 */

void test_sha256(const void *p, size_t n, unsigned char out[32]) {
  test_sha_t s;
  test_sha_init(&s);
  test_sha_update(&s, p, n);
  test_sha_final(&s, out);
}

void test_sha_init(test_sha_t *s) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  ssl_check(ctx != NULL, "EVP_MD_CTX_new");
  ssl_check(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), "EVP_DigestInit_ex");
  s->ctx = ctx;
}

void test_sha_update(test_sha_t *s, const void *p, size_t n) {
  ssl_check(EVP_DigestUpdate((EVP_MD_CTX *)s->ctx, p, n), "EVP_DigestUpdate");
}

void test_sha_final(test_sha_t *s, unsigned char out[32]) {
  unsigned int len = 0;
  ssl_check(EVP_DigestFinal_ex((EVP_MD_CTX *)s->ctx, out, &len) && len == 32, "EVP_DigestFinal_ex");
  EVP_MD_CTX_free((EVP_MD_CTX *)s->ctx);
  s->ctx = NULL;
}

/* ------------------------------------------------------------------ random */

void test_fill_random(void *p, size_t n, uint64_t seed) {
  unsigned char *out = p;
  uint64_t x = seed ^ 0x9e3779b97f4a7c15ULL;
  if (x == 0)
    x = 0x2545f4914f6cdd1dULL;
  while (n > 0) {
    uint64_t v;
    size_t k = n < 8 ? n : 8;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    v = x * 0x2545f4914f6cdd1dULL;
    memcpy(out, &v, k);
    out += k;
    n -= k;
  }
}
