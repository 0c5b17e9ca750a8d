/* TLS contexts: certificates, peer verification, ALPN (h2, http/1.1). */
#include "internal.h"

#include <openssl/err.h>
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

  if (o->cert_file != NULL) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load certificate", o->cert_file);
      goto bad;
    }
    const char *key = o->key_file ? o->key_file : o->cert_file;
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load private key", key);
      goto bad;
    }
  } else if (server) {
    snprintf(errbuf, errlen, "a TLS server needs a certificate and key");
    *err = UV_EINVAL;
    goto bad;
  }

  if (o->ca_file != NULL) {
    if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
      fail(err, H2REV_ETLS, errbuf, errlen, "cannot load CA file", o->ca_file);
      goto bad;
    }
  } else if (!server) {
    SSL_CTX_set_default_verify_paths(ctx);
  }

  if (server) {
    if (o->verify_client)
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
