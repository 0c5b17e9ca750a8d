/* TLS material from memory, and the peer identity the dialer's authorize
 * callback sees (lib/tls.c). */
#include "internal.h"
#include "test.h"
#include "util.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>

static char *slurp(const char *name) {
  char path[4096];
  FILE *f = fopen(test_path(path, sizeof(path), test_certs(), name), "rb");
  ASSERT_NOT_NULL(f);
  char *buf = calloc(1, 65536);
  ASSERT_NOT_NULL(buf);
  size_t n = fread(buf, 1, 65535, f);
  fclose(f);
  ASSERT_GT(n, 0);
  return buf;
}

static X509 *load_cert(const char *name) {
  char *pem = slurp(name);
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  free(pem);
  ASSERT_NOT_NULL(x);
  return x;
}

/* Runs a TLS handshake between two contexts in memory; returns the client's
 * verification result (X509_V_OK when it trusts the server), or -1 when
 * the handshake failed. */
static long handshake(SSL_CTX *server, SSL_CTX *client, const char *host) {
  SSL *s = SSL_new(server), *c = SSL_new(client);
  BIO *sb, *cb;
  ASSERT_EQ(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
  SSL_set_bio(s, sb, sb);
  SSL_set_bio(c, cb, cb);
  SSL_set_accept_state(s);
  SSL_set_connect_state(c);
  SSL_set_tlsext_host_name(c, host);
  SSL_set1_host(c, host);
  int sd = 0, cd = 0;
  for (int i = 0; i < 100 && !(sd == 1 && cd == 1); i++) {
    if (cd != 1)
      cd = SSL_do_handshake(c);
    if (sd != 1)
      sd = SSL_do_handshake(s);
    if ((cd <= 0 && SSL_get_error(c, cd) != SSL_ERROR_WANT_READ) ||
        (sd <= 0 && SSL_get_error(s, sd) != SSL_ERROR_WANT_READ))
      break;
  }
  long r = sd == 1 && cd == 1 ? SSL_get_verify_result(c) : -1;
  ERR_clear_error();
  SSL_free(s);
  SSL_free(c);
  return r;
}

TEST(pem_from_memory) {
  char *cert = slurp("server.pem"), *key = slurp("server.key"), *ca = slurp("ca.pem");
  char *other = slurp("other-ca.pem");
  char why[256];
  int err = 0;
  h2rev_tls_options_t so = {.cert_pem = cert, .key_pem = key};
  SSL_CTX *server = h2r_tls_ctx_new(&so, true, H2R_ALPN_H2, &err, why, sizeof(why));
  ASSERT_NOT_NULL(server);
  h2rev_tls_options_t co = {.ca_pem = ca};
  SSL_CTX *client = h2r_tls_ctx_new(&co, false, H2R_ALPN_H2, &err, why, sizeof(why));
  ASSERT_NOT_NULL(client);
  ASSERT_EQ(handshake(server, client, "localhost"), X509_V_OK);
  SSL_CTX_free(client);

  /* Another CA in memory: the server is not trusted. */
  h2rev_tls_options_t bo = {.ca_pem = other};
  client = h2r_tls_ctx_new(&bo, false, H2R_ALPN_H2, &err, why, sizeof(why));
  ASSERT_NOT_NULL(client);
  ASSERT_EQ(handshake(server, client, "localhost"), -1);
  SSL_CTX_free(client);
  SSL_CTX_free(server);

  /* Certificate and key in one text, as in a single PEM file. */
  char *both = malloc(strlen(cert) + strlen(key) + 1);
  ASSERT_NOT_NULL(both);
  strcpy(both, cert);
  strcat(both, key);
  h2rev_tls_options_t one = {.cert_pem = both};
  server = h2r_tls_ctx_new(&one, true, H2R_ALPN_H2, &err, why, sizeof(why));
  ASSERT_NOT_NULL(server);
  SSL_CTX_free(server);

  /* Garbage, a key that is not the certificate's, a CA text with no certificate. */
  h2rev_tls_options_t bad = {.cert_pem = "not a certificate", .key_pem = key};
  ASSERT_NULL(h2r_tls_ctx_new(&bad, true, H2R_ALPN_H2, &err, why, sizeof(why)));
  ASSERT_EQ(err, H2REV_ETLS);
  ASSERT_NOT_NULL(strstr(why, "certificate (PEM text)"));
  char *okey = slurp("client.key");
  h2rev_tls_options_t mism = {.cert_pem = cert, .key_pem = okey};
  ASSERT_NULL(h2r_tls_ctx_new(&mism, true, H2R_ALPN_H2, &err, why, sizeof(why)));
  ASSERT_NOT_NULL(strstr(why, "private key (PEM text)"));
  h2rev_tls_options_t noca = {.ca_pem = key};
  ASSERT_NULL(h2r_tls_ctx_new(&noca, false, H2R_ALPN_H2, &err, why, sizeof(why)));
  ASSERT_NOT_NULL(strstr(why, "CA (PEM text)"));
  free(okey);
  free(both);
  free(cert);
  free(key);
  free(ca);
  free(other);
}

/* A certificate for the identity checks only (not signed); a UTF8String
 * set as it is, past the 64 characters OpenSSL itself would allow. */
static X509 *cert_with_cn(const unsigned char *cn, int len) {
  X509 *x = X509_new();
  X509_NAME *nm = X509_get_subject_name(x);
  ASSERT(X509_NAME_add_entry_by_txt(nm, "CN", V_ASN1_UTF8STRING, cn, len, -1, 0) == 1);
  ASSERT(X509_set_issuer_name(x, nm) == 1);
  EVP_PKEY *k = EVP_EC_gen("P-256");
  ASSERT(k != NULL && X509_set_pubkey(x, k) == 1);
  ASSERT(X509_sign(x, k, EVP_sha256()) > 0); /* DER needs a signature */
  EVP_PKEY_free(k);
  return x;
}

/* The common name the authorize callback sees is the certificate's whole:
 * not cut at 255 bytes (it was), and none at all when it hides a NUL
 * ("app\0evil" must not pass for "app"). */
TEST(peer_common_name_whole) {
  unsigned char longcn[300];
  memset(longcn, 'c', sizeof(longcn));
  X509 *x = cert_with_cn(longcn, (int)sizeof(longcn));
  h2rev_peer_t p = {.address = "127.0.0.1:1"};
  ASSERT_OK(h2r_tls_peer_fill(&p, x));
  ASSERT_EQ(strlen(p.cert_cn), sizeof(longcn));
  h2r_tls_peer_free(&p);
  X509_free(x);
  x = cert_with_cn((const unsigned char *)"app\0evil", 8);
  ASSERT_OK(h2r_tls_peer_fill(&p, x));
  ASSERT_STR_EQ(p.cert_cn, "");
  h2r_tls_peer_free(&p);
  X509_free(x);
}

TEST(peer_identity) {
  h2rev_peer_t p = {.address = "127.0.0.1:1"};
  ASSERT_OK(h2r_tls_peer_fill(&p, NULL));
  ASSERT_NULL(p.cert_cn);
  ASSERT_NULL(p.cert_der);
  ASSERT_EQ(p.cert_ndns, 0);
  h2r_tls_peer_free(&p);

  X509 *x = load_cert("client.pem");
  ASSERT_OK(h2r_tls_peer_fill(&p, x));
  ASSERT_STR_EQ(p.cert_cn, "client-1");
  ASSERT_EQ(p.cert_ndns, 1);
  ASSERT_STR_EQ(p.cert_dns[0], "client-1");
  ASSERT_GT(p.cert_der_len, 100);
  unsigned char *der = NULL;
  int dl = i2d_X509(x, &der);
  ASSERT_EQ((size_t)dl, p.cert_der_len);
  ASSERT_MEM_EQ(der, p.cert_der, p.cert_der_len);
  unsigned char sha[32];
  test_sha256(der, (size_t)dl, sha);
  ASSERT_MEM_EQ(sha, p.cert_sha256, 32);
  OPENSSL_free(der);
  h2r_tls_peer_free(&p);
  ASSERT_NULL(p.cert_cn);
  X509_free(x);

  /* The server certificate: CN localhost, DNS names among its SANs (IPs are not). */
  x = load_cert("server.pem");
  ASSERT_OK(h2r_tls_peer_fill(&p, x));
  ASSERT_STR_EQ(p.cert_cn, "localhost");
  ASSERT_EQ(p.cert_ndns, 1);
  ASSERT_STR_EQ(p.cert_dns[0], "localhost");
  h2r_tls_peer_free(&p);
  X509_free(x);
}
