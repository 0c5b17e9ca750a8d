/* h2rev-dialer: the public server. Serves <base>/revdial for listeners and
 * <base>/proxy/<id>/<path> for clients, over HTTP/2 (TLS, or cleartext with
 * prior knowledge). */
#include "tool.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

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
    "  --tokens-file FILE   per-id tokens, one \"ID TOKEN\" a line (# comments);\n"
    "                       a listener must send its id's token (or --token)\n"
    "  --client-ca FILE     listeners must present a certificate from this CA whose\n"
    "                       common name equals their id\n"
    "  --dial-timeout MS    wait for a reverse connection (default 10000)\n"
    "  --max-connections N  connections open at once; at the limit new ones wait\n"
    "                       in the kernel's backlog (default 16384)\n"
    "  --max-client-streams N\n"
    "                       proxied requests open at once on one client\n"
    "                       connection; over it: 429 (default 100)\n"
    "  --body-timeout MS    a request that announced a body must start it within\n"
    "                       MS: 408 (default 30000)\n"
    "  --response-timeout MS\n"
    "                       the listener must send the response head within MS\n"
    "                       of the request's end: 504 (default 60000)\n"
    "  --drain-timeout MS   on SIGINT/SIGTERM: stop listening, let requests in\n"
    "                       flight finish for up to MS, then exit (default 10000)\n"
    "  --log-level LEVEL    error, warn, info (default), debug\n"
    "  --help, --version\n";

static uv_loop_t *loop;
static h2rev_dialer_t dialer;
static const char *token;
static bool check_cn;
static unsigned drain_timeout = 10000;

/* --tokens-file: "id token" pairs; an id may have several (rotation). */
typedef struct {
  char *id, *token;
} id_token_t;
static id_token_t *tokens;
static size_t ntokens;
static bool have_tokens_file;

static void load_tokens(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    tool_fatal("cannot read tokens file %s: %s", path, strerror(errno));
  char line[4096];
  unsigned lineno = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    lineno++;
    size_t len = strlen(line);
    if (len == sizeof(line) - 1 && line[len - 1] != '\n')
      tool_fatal("%s:%u: line too long", path, lineno);
    char *save = NULL;
    char *id = strtok_r(line, " \t\r\n", &save);
    if (id == NULL || id[0] == '#')
      continue; /* blank or comment */
    char *tok = strtok_r(NULL, " \t\r\n", &save);
    char *extra = strtok_r(NULL, " \t\r\n", &save);
    if (tok == NULL || extra != NULL)
      tool_fatal("%s:%u: expected \"ID TOKEN\"", path, lineno);
    id_token_t *t = realloc(tokens, (ntokens + 1) * sizeof(*t));
    if (t == NULL)
      tool_fatal("out of memory reading %s", path);
    tokens = t;
    tokens[ntokens].id = strdup(id);
    tokens[ntokens].token = strdup(tok);
    if (tokens[ntokens].id == NULL || tokens[ntokens].token == NULL)
      tool_fatal("out of memory reading %s", path);
    ntokens++;
  }
  if (ferror(f))
    tool_fatal("cannot read tokens file %s: %s", path, strerror(errno));
  fclose(f);
  have_tokens_file = true;
  if (ntokens == 0)
    tool_logf(H2REV_LOG_WARN, "%s has no tokens: only --token (if any) is accepted", path);
}

/* Equal strings, in a time that does not depend on where they differ. */
static bool secret_eq(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  return la == lb && CRYPTO_memcmp(a, b, la) == 0;
}

static void free_tokens(void) {
  for (size_t i = 0; i < ntokens; i++) {
    free(tokens[i].id);
    free(tokens[i].token);
  }
  free(tokens);
  tokens = NULL;
  ntokens = 0;
}

static int authorize(void *arg, const char *id, const h2rev_header_t *h, size_t n,
                     const h2rev_peer_t *peer) {
  (void)arg;
  if (token != NULL || have_tokens_file) {
    const char *got = NULL;
    for (size_t i = 0; i < n; i++) /* the scheme is case-insensitive (RFC 9110 11.1) */
      if (strcmp(h[i].name, "authorization") == 0 && strncasecmp(h[i].value, "bearer ", 7) == 0)
        got = h[i].value + 7 + strspn(h[i].value + 7, " ");
    bool ok = got != NULL && token != NULL && secret_eq(got, token);
    for (size_t i = 0; got != NULL && i < ntokens; i++)
      if (strcmp(tokens[i].id, id) == 0 && secret_eq(got, tokens[i].token))
        ok = true;
    if (!ok)
      return -1;
  }
  if (check_cn) {
    if (peer->cert_cn == NULL || strcmp(peer->cert_cn, id) != 0)
      return -1;
  }
  return 0;
}

/* A certificate and key made by an earlier run, if they match and are good
 * for at least another day: listeners given it with --ca keep trusting us
 * across restarts. */
static bool reusable(const char *cert, const char *key) {
  FILE *f = fopen(cert, "r");
  X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
  if (f != NULL)
    fclose(f);
  f = fopen(key, "r");
  EVP_PKEY *pk = f != NULL ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
  if (f != NULL)
    fclose(f);
  time_t soon = time(NULL) + 24 * 3600;
  bool ok = x != NULL && pk != NULL && X509_check_private_key(x, pk) == 1 &&
            X509_cmp_time(X509_get0_notAfter(x), &soon) > 0;
  X509_free(x);
  EVP_PKEY_free(pk);
  ERR_clear_error();
  return ok;
}

/* A self-signed certificate for localhost, 127.0.0.1 and ::1, in dir; the
 * one already there when it is still good. 1: reused, 0: made, -1: failed. */
static int make_self_signed(const char *dir, char *cert, char *key, size_t len) {
  snprintf(cert, len, "%s/h2rev-dialer.crt", dir);
  snprintf(key, len, "%s/h2rev-dialer.key", dir);
  if (reusable(cert, key))
    return 1;
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
  /* The key is for this user only. */
  int fd = rc == 0 ? open(key, O_WRONLY | O_CREAT | O_TRUNC, 0600) : -1;
  f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (fd >= 0 && f == NULL)
    close(fd);
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
  tool_logf(H2REV_LOG_INFO, "draining for up to %u ms", drain_timeout);
  tool_watchdog(loop, drain_timeout + 5000);
  if (h2rev_dialer_shutdown(&dialer, drain_timeout, closed) != 0)
    h2rev_dialer_close(&dialer, closed);
}

/* The library reads 0 as "the default": a flag given 0 is refused instead. */
static unsigned positive(const char *flag, unsigned v) {
  if (v == 0)
    tool_usage_error("%s must be positive", flag);
  return v;
}

int main(int argc, char **argv) {
  tool_name = "h2rev-dialer";
  const char *listen = "127.0.0.1:8443", *cert = NULL, *key = NULL, *base = "";
  const char *client_ca = NULL, *ssdir = ".";
  bool cleartext = false;
  unsigned dial_timeout = 10000;
  h2rev_dialer_options_t o = {0};
  const char *tokens_file = NULL;
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
    } else if ((v = tool_flag(argc, argv, &i, "--tokens-file")) != NULL) {
      tokens_file = v;
    } else if ((v = tool_flag(argc, argv, &i, "--drain-timeout")) != NULL) {
      drain_timeout = tool_parse_ms("--drain-timeout", v);
    } else if ((v = tool_flag(argc, argv, &i, "--client-ca")) != NULL) {
      client_ca = v;
    } else if ((v = tool_flag(argc, argv, &i, "--dial-timeout")) != NULL) {
      dial_timeout = tool_parse_ms("--dial-timeout", v);
      if (dial_timeout == 0)
        tool_usage_error("--dial-timeout must be a positive number of milliseconds");
    } else if ((v = tool_flag(argc, argv, &i, "--max-connections")) != NULL) {
      o.max_connections =
          positive("--max-connections", tool_parse_count("--max-connections", v, 1u << 20));
    } else if ((v = tool_flag(argc, argv, &i, "--max-client-streams")) != NULL) {
      o.max_client_streams =
          positive("--max-client-streams", tool_parse_count("--max-client-streams", v, 1u << 16));
    } else if ((v = tool_flag(argc, argv, &i, "--body-timeout")) != NULL) {
      o.body_timeout_ms = positive("--body-timeout", tool_parse_ms("--body-timeout", v));
    } else if ((v = tool_flag(argc, argv, &i, "--response-timeout")) != NULL) {
      o.response_timeout_ms =
          positive("--response-timeout", tool_parse_ms("--response-timeout", v));
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
  if (tokens_file != NULL)
    load_tokens(tokens_file);

  char scert[1024], skey[1024];
  if (!cleartext && cert == NULL) {
    int made = make_self_signed(ssdir, scert, skey, sizeof(scert));
    if (made < 0) {
      fprintf(stderr, "h2rev-dialer: cannot write a self-signed certificate into %s\n", ssdir);
      return 2;
    }
    cert = scert;
    key = skey;
    tool_logf(H2REV_LOG_INFO, "self-signed certificate %s %s (listeners: --ca %s)",
              made == 1 ? "reused from" : "written to", cert, cert);
  }

  loop = uv_default_loop();
  o.base_path = base;
  o.dial_timeout_ms = dial_timeout;
  o.log = (h2rev_logger_t){tool_log, NULL, tool_log_level};
  check_cn = client_ca != NULL;
  if (token != NULL || have_tokens_file || check_cn)
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
  char why[512];
  tool_capture(why, sizeof(why));
  r = h2rev_dialer_listen(&dialer, (struct sockaddr *)&addr, cleartext ? NULL : &tls);
  tool_capture_end();
  if (r != 0) {
    fprintf(stderr, "h2rev-dialer: cannot serve on %s: %s%s%s\n", listen, h2rev_strerror(r),
            why[0] ? ": " : "", why);
    return r == H2REV_ETLS ? 2 : 1;
  }
  tool_logf(H2REV_LOG_INFO, "serving %s on %s: %s/revdial?id=ID and %s/proxy/ID/PATH",
            cleartext ? "h2c" : "h2 over TLS", listen, base, base);
  tool_on_signal(loop, drain);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  free_tokens();
  tool_logf(H2REV_LOG_INFO, "stopped");
  return 0;
}
