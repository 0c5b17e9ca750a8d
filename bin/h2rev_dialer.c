/* h2rev-dialer: the public server. Serves <base>/revdial for listeners and
 * <base>/proxy/<id>/<path> for clients, over HTTP/2 (TLS, or cleartext with
 * prior knowledge). */
#include "tool.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: h2rev-dialer [options]\n"
    "  --listen HOST:PORT   address to serve on (default 127.0.0.1:8443)\n"
    "  --cert FILE --key FILE\n"
    "                       TLS certificate and key; without them a self-signed\n"
    "                       certificate is made at start (see --self-signed-dir)\n"
    "  --self-signed-dir D  where the made certificate is written (default .)\n"
    "  --cleartext          HTTP/2 without TLS (prior knowledge; behind a TLS proxy)\n"
    "  --base-path PATH     mount point, e.g. /reverse/connections (default none)\n"
    "  --token TOKEN        listeners must send Authorization: Bearer TOKEN\n"
    "  --client-ca FILE     listeners must present a certificate from this CA whose\n"
    "                       common name equals their id\n"
    "  --dial-timeout MS    wait for a reverse connection (default 10000)\n"
    "  --log-level LEVEL    error, warn, info (default), debug\n"
    "  --help, --version\n";

static uv_loop_t *loop;
static h2rev_dialer_t dialer;
static const char *token;
static bool check_cn;

static int authorize(void *arg, const char *id, const h2rev_header_t *h, size_t n,
                     const void *peer_cert) {
  (void)arg;
  if (token != NULL) {
    bool ok = false;
    for (size_t i = 0; i < n; i++)
      if (strcmp(h[i].name, "authorization") == 0 && strncmp(h[i].value, "Bearer ", 7) == 0 &&
          strcmp(h[i].value + 7, token) == 0)
        ok = true;
    if (!ok)
      return -1;
  }
  if (check_cn) {
    if (peer_cert == NULL)
      return -1;
    char cn[256] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name((X509 *)peer_cert), NID_commonName, cn,
                              sizeof(cn));
    if (strcmp(cn, id) != 0)
      return -1;
  }
  return 0;
}

/* A self-signed certificate for localhost, 127.0.0.1 and ::1. */
static int make_self_signed(const char *dir, char *cert, char *key, size_t len) {
  snprintf(cert, len, "%s/h2rev-dialer.crt", dir);
  snprintf(key, len, "%s/h2rev-dialer.key", dir);
  EVP_PKEY *pk = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  if (pk == NULL || x == NULL)
    return -1;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(uv_hrtime() & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600);
  X509_set_pubkey(x, pk);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                             0);
  X509_set_issuer_name(x, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
  X509_EXTENSION *ext =
      X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints, "critical,CA:TRUE");
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  int rc = X509_sign(x, pk, EVP_sha256()) > 0 ? 0 : -1;
  FILE *f = rc == 0 ? fopen(cert, "w") : NULL;
  if (f == NULL || PEM_write_X509(f, x) != 1)
    rc = -1;
  if (f)
    fclose(f);
  f = rc == 0 ? fopen(key, "w") : NULL;
  if (f == NULL || PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) != 1)
    rc = -1;
  if (f)
    fclose(f);
  X509_free(x);
  EVP_PKEY_free(pk);
  return rc;
}

static void closed(h2rev_dialer_t *d) {
  (void)d;
  tool_signals_close();
}

static void drain(void) {
  h2rev_dialer_close(&dialer, closed);
}

int main(int argc, char **argv) {
  tool_name = "h2rev-dialer";
  const char *listen = "127.0.0.1:8443", *cert = NULL, *key = NULL, *base = "";
  const char *client_ca = NULL, *ssdir = ".";
  bool cleartext = false;
  unsigned dial_timeout = 10000;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage, stdout);
      return 0;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("h2rev-dialer %s\n", h2rev_version());
      return 0;
    } else if (strcmp(argv[i], "--cleartext") == 0) {
      cleartext = true;
    } else if ((v = tool_flag(argc, argv, &i, "--listen")) != NULL) {
      listen = v;
    } else if ((v = tool_flag(argc, argv, &i, "--cert")) != NULL) {
      cert = v;
    } else if ((v = tool_flag(argc, argv, &i, "--key")) != NULL) {
      key = v;
    } else if ((v = tool_flag(argc, argv, &i, "--self-signed-dir")) != NULL) {
      ssdir = v;
    } else if ((v = tool_flag(argc, argv, &i, "--base-path")) != NULL) {
      base = v;
    } else if ((v = tool_flag(argc, argv, &i, "--token")) != NULL) {
      token = v;
    } else if ((v = tool_flag(argc, argv, &i, "--client-ca")) != NULL) {
      client_ca = v;
    } else if ((v = tool_flag(argc, argv, &i, "--dial-timeout")) != NULL) {
      dial_timeout = (unsigned)strtoul(v, NULL, 10);
      if (dial_timeout == 0)
        tool_usage_error("--dial-timeout must be a positive number of milliseconds");
    } else if ((v = tool_flag(argc, argv, &i, "--log-level")) != NULL) {
      tool_log_level = tool_parse_level(v);
    } else {
      tool_usage_error("unknown argument \"%s\"", argv[i]);
    }
  }
  struct sockaddr_storage addr;
  if (tool_parse_hostport(listen, &addr) != 0)
    tool_usage_error("--listen: \"%s\" is not HOST:PORT", listen);
  if ((cert == NULL) != (key == NULL))
    tool_usage_error("--cert and --key go together");
  if (cert != NULL && !tool_readable(cert))
    tool_usage_error("cannot read certificate file %s", cert);
  if (key != NULL && !tool_readable(key))
    tool_usage_error("cannot read key file %s", key);
  if (client_ca != NULL && !tool_readable(client_ca))
    tool_usage_error("cannot read CA file %s", client_ca);
  if (base[0] != '\0' && base[0] != '/')
    tool_usage_error("--base-path must start with /");

  char scert[1024], skey[1024];
  if (!cleartext && cert == NULL) {
    if (make_self_signed(ssdir, scert, skey, sizeof(scert)) != 0) {
      fprintf(stderr, "h2rev-dialer: cannot write a self-signed certificate into %s\n", ssdir);
      return 2;
    }
    cert = scert;
    key = skey;
    tool_logf(H2REV_LOG_INFO, "self-signed certificate written to %s (listeners: --ca %s)", cert,
              cert);
  }

  loop = uv_default_loop();
  h2rev_dialer_options_t o = {0};
  o.base_path = base;
  o.dial_timeout_ms = dial_timeout;
  o.log = (h2rev_logger_t){tool_log, NULL, tool_log_level};
  check_cn = client_ca != NULL;
  if (token != NULL || check_cn)
    o.authorize = authorize;
  int r = h2rev_dialer_init(loop, &dialer, &o);
  if (r != 0) {
    fprintf(stderr, "h2rev-dialer: %s\n", h2rev_strerror(r));
    return 2;
  }
  h2rev_tls_options_t tls = {.cert_file = cert, .key_file = key};
  if (client_ca != NULL) {
    tls.ca_file = client_ca;
    tls.verify_client = 1;
  }
  r = h2rev_dialer_listen(&dialer, (struct sockaddr *)&addr, cleartext ? NULL : &tls);
  if (r != 0) {
    fprintf(stderr, "h2rev-dialer: cannot serve on %s: %s\n", listen, h2rev_strerror(r));
    return r == H2REV_ETLS ? 2 : 1;
  }
  tool_logf(H2REV_LOG_INFO, "serving %s on %s: %s/revdial?id=ID and %s/proxy/ID/PATH",
            cleartext ? "h2c" : "h2 over TLS", listen, base, base);
  tool_on_signal(loop, drain);
  uv_run(loop, UV_RUN_DEFAULT);
  tool_logf(H2REV_LOG_INFO, "stopped");
  return 0;
}
