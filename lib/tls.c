/* TLS contexts: certificates, peer verification, ALPN (h2, http/1.1). */
#include "internal.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

void h2r_tls_errstr(char *buf, size_t len) {
  unsigned long e = ERR_get_error();
  if (e == 0) {
    snprintf(buf, len, "unknown TLS error");
    return;
  }
  ERR_error_string_n(e, buf, len);
  ERR_clear_error();
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  int mask = (int)(intptr_t)arg;
  /* h2 first: a client offering both gets HTTP/2. */
  static const struct {
    int bit;
    const char *name;
  } prefs[] = {{H2R_ALPN_H2, "h2"}, {H2R_ALPN_H1, "http/1.1"}};
  for (size_t p = 0; p < sizeof(prefs) / sizeof(prefs[0]); p++) {
    if (!(mask & prefs[p].bit))
      continue;
    size_t nl = strlen(prefs[p].name);
    for (unsigned i = 0; i < inlen;) {
      unsigned l = in[i];
      if (i + 1 + l > inlen)
        break;
      if (l == nl && memcmp(in + i + 1, prefs[p].name, l) == 0) {
        *out = in + i + 1;
        *outlen = (unsigned char)l;
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + l;
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int fail(int *err, int code, char *errbuf, size_t errlen, const char *what,
                const char *file) {
  char ssl[200];
  h2r_tls_errstr(ssl, sizeof(ssl));
  snprintf(errbuf, errlen, "%s%s%s: %s", what, file ? " " : "", file ? file : "", ssl);
  *err = code;
  return 0;
}

/* A certificate chain from PEM text: the first is ours, the rest its chain. */
static bool use_chain_pem(SSL_CTX *ctx, const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = b != NULL ? PEM_read_bio_X509_AUX(b, NULL, NULL, NULL) : NULL;
  bool ok = x != NULL && SSL_CTX_use_certificate(ctx, x) == 1;
  X509_free(x);
  X509 *c;
  while (ok && (c = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
    if (SSL_CTX_add0_chain_cert(ctx, c) != 1) {
      X509_free(c);
      ok = false;
    }
  }
  ERR_clear_error(); /* the end of the text reads as an error */
  BIO_free(b);
  return ok;
}

static bool use_key_pem(SSL_CTX *ctx, const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *k = b != NULL ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
  bool ok = k != NULL && SSL_CTX_use_PrivateKey(ctx, k) == 1;
  EVP_PKEY_free(k);
  BIO_free(b);
  return ok;
}

/* Trust anchors from PEM text: at least one certificate, all of them used. */
static bool trust_pem(SSL_CTX *ctx, const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  unsigned n = 0;
  X509 *c;
  while (b != NULL && (c = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
    if (X509_STORE_add_cert(store, c) == 1)
      n++;
    X509_free(c);
  }
  if (n > 0)
    ERR_clear_error();
  BIO_free(b);
  return n > 0;
}

SSL_CTX *h2r_tls_ctx_new(const h2rev_tls_options_t *o, bool server, int alpn, int *err,
                         char *errbuf, size_t errlen) {
  static const h2rev_tls_options_t none;
  if (o == NULL)
    o = &none;
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == NULL) {
    fail(err, UV_ENOMEM, errbuf, errlen, "SSL_CTX_new", NULL);
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  /* A server holds many idle connections (attached listeners): their TLS
   * buffers are released between records. A client has few, busy ones: there
   * the malloc and free per record costs more than it saves. */
  if (server)
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  /* RFC 7540 9.2.2: no renegotiation, no compression. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);

  if (o->cert_pem != NULL) {
    if (!use_chain_pem(ctx, o->cert_pem)) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load certificate", "(PEM text)");
      goto bad;
    }
    /* Without key_pem or key_file, the key is looked for beside the chain. */
    bool key_ok = o->key_file != NULL && o->key_pem == NULL
                      ? SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) == 1
                      : use_key_pem(ctx, o->key_pem != NULL ? o->key_pem : o->cert_pem);
    if (!key_ok || SSL_CTX_check_private_key(ctx) != 1) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load private key",
           o->key_file != NULL && o->key_pem == NULL ? o->key_file : "(PEM text)");
      goto bad;
    }
  } else if (o->cert_file != NULL) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load certificate", o->cert_file);
      goto bad;
    }
    const char *key = o->key_file ? o->key_file : o->cert_file;
    if (!(o->key_pem != NULL ? use_key_pem(ctx, o->key_pem)
                             : SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1) ||
        SSL_CTX_check_private_key(ctx) != 1) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load private key",
           o->key_pem != NULL ? "(PEM text)" : key);
      goto bad;
    }
  } else if (server) {
    snprintf(errbuf, errlen, "a TLS server needs a certificate and key");
    *err = UV_EINVAL;
    goto bad;
  }

  if (o->ca_pem != NULL) {
    if (!trust_pem(ctx, o->ca_pem)) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load CA", "(PEM text)");
      goto bad;
    }
  } else if (o->ca_file != NULL) {
    if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load CA file", o->ca_file);
      goto bad;
    }
  } else if (!server) {
    SSL_CTX_set_default_verify_paths(ctx);
  }

  if (server) {
    if (o->verify_client == H2REV_VERIFY_CLIENT_REQUEST)
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    else if (o->verify_client)
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)(intptr_t)alpn);
  } else {
    SSL_CTX_set_verify(ctx, o->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    /* TLS 1.3 suites, AES-128-GCM first (as Go and BoringSSL order them):
     * the tunnel's bytes are sealed twice more than a direct connection's,
     * and AES-128 does it in about 3/4 of AES-256's time. Servers keep
     * their clients' order. */
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                  "TLS_CHACHA20_POLY1305_SHA256");
    unsigned char protos[32];
    size_t n = 0;
    if (alpn & H2R_ALPN_H2) {
      memcpy(protos + n, "\x02h2", 3);
      n += 3;
    }
    if (alpn & H2R_ALPN_H1) {
      memcpy(protos + n, "\x08http/1.1", 9);
      n += 9;
    }
    if (n > 0)
      SSL_CTX_set_alpn_protos(ctx, protos, (unsigned)n);
  }
  return ctx;
bad:
  SSL_CTX_free(ctx);
  return NULL;
}

/* ------------------------------------------------------ peer identity */

/* The subject's (first) common name in UTF-8, whole, whatever its length:
 * "" when there is none, or when it holds a NUL (a name that is not what
 * it seems, as for the DNS names below); NULL when memory is out. */
static char *subject_cn(X509 *cert) {
  X509_NAME *nm = X509_get_subject_name(cert);
  int i = nm != NULL ? X509_NAME_get_index_by_NID(nm, NID_commonName, -1) : -1;
  if (i < 0)
    return h2r_strndup("", 0);
  unsigned char *u = NULL;
  int ul = ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, i)));
  char *cn = ul >= 0 && memchr(u, '\0', (size_t)ul) == NULL
                 ? h2r_strndup((const char *)u, (size_t)ul)
                 : h2r_strndup("", 0);
  OPENSSL_free(u);
  return cn;
}

int h2r_tls_peer_fill(h2rev_peer_t *peer, X509 *cert) {
  peer->cert_cn = NULL;
  peer->cert_dns = NULL;
  peer->cert_ndns = 0;
  peer->cert_der = NULL;
  peer->cert_der_len = 0;
  memset(peer->cert_sha256, 0, sizeof(peer->cert_sha256));
  if (cert == NULL)
    return 0;
  unsigned char *der = NULL;
  int dl = i2d_X509(cert, &der);
  char *cnc = subject_cn(cert);
  GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  int nsan = sans != NULL ? sk_GENERAL_NAME_num(sans) : 0;
  char **dns = nsan > 0 ? calloc((size_t)nsan, sizeof(*dns)) : NULL;
  bool ok = dl > 0 && cnc != NULL && (nsan == 0 || dns != NULL);
  size_t nd = 0;
  for (int i = 0; ok && i < nsan; i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
    if (g->type != GEN_DNS)
      continue;
    const unsigned char *v = ASN1_STRING_get0_data(g->d.dNSName);
    int vl = ASN1_STRING_length(g->d.dNSName);
    if (vl < 0 || memchr(v, '\0', (size_t)vl) != NULL)
      continue; /* an embedded NUL: a name that is not what it seems */
    if ((dns[nd] = h2r_strndup((const char *)v, (size_t)vl)) == NULL)
      ok = false;
    else
      nd++;
  }
  GENERAL_NAMES_free(sans);
  peer->cert_cn = cnc;
  peer->cert_dns = (const char *const *)dns;
  peer->cert_ndns = nd;
  peer->cert_der = der;
  peer->cert_der_len = dl > 0 ? (size_t)dl : 0;
  if (!ok) {
    h2r_tls_peer_free(peer);
    return UV_ENOMEM;
  }
  EVP_Digest(der, (size_t)dl, peer->cert_sha256, NULL, EVP_sha256(), NULL);
  return 0;
}

void h2r_tls_peer_free(h2rev_peer_t *peer) {
  for (size_t i = 0; i < peer->cert_ndns; i++)
    free((char *)peer->cert_dns[i]);
  free((void *)peer->cert_dns);
  free((char *)peer->cert_cn);
  OPENSSL_free((void *)peer->cert_der);
  peer->cert_dns = NULL;
  peer->cert_ndns = 0;
  peer->cert_cn = NULL;
  peer->cert_der = NULL;
}
