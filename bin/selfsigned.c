/* The dialer's self-signed certificate: which names it carries, whether the
 * one an earlier run left can be reused, and making a new one. */
#include "selfsigned.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* RFC 1035: 253 characters in all, 63 a label. */
#define DNS_NAME_MAX  253
#define DNS_LABEL_MAX 63
/* A reused certificate must stay good this long, or a new one is made. */
#define REUSE_MARGIN_S (24 * 3600)
#define VALIDITY_S     (365L * 24 * 3600)

static bool is_ip(const char *s) {
  unsigned char b[16];
  return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* A host name (letters, digits, '-' in dot-separated labels), optionally
 * "*." and a name for a wildcard certificate. */
static bool is_dns_name(const char *s) {
  size_t len = strlen(s);
  if (len == 0 || len > DNS_NAME_MAX)
    return false;
  if (strncmp(s, "*.", 2) == 0)
    s += 2;
  size_t label = 0;
  for (const char *p = s;; p++) {
    char c = *p;
    if (c == '.' || c == '\0') {
      if (label == 0 || label > DNS_LABEL_MAX || p[-1] == '-')
        return false;
      if (c == '\0')
        return true;
      label = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c == '-' && label > 0);
    if (!ok)
      return false;
    label++;
  }
}

void ss_names_init(ss_names_t *n) {
  n->n = 0;
}

int ss_names_add(ss_names_t *n, const char *name) {
  if (!is_ip(name) && !is_dns_name(name))
    return -1;
  for (size_t i = 0; i < n->n; i++)
    if (strcasecmp(n->v[i], name) == 0)
      return 0;
  if (n->n == SS_MAX_NAMES)
    return -2;
  snprintf(n->v[n->n++], sizeof(n->v[0]), "%s", name);
  return 0;
}

void ss_names_join(const ss_names_t *n, char *buf, size_t len) {
  size_t o = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n->n && o < len; i++) {
    int w = snprintf(buf + o, len - o, "%s%s", i ? ", " : "", n->v[i]);
    if (w < 0)
      break;
    o += (size_t)w;
  }
}

/* Whether x's subjectAltName carries name: DNS names compared without case,
 * IP addresses by their bytes. */
static bool names_has(const GENERAL_NAMES *sans, const char *name) {
  ASN1_OCTET_STRING *ip = is_ip(name) ? a2i_IPADDRESS(name) : NULL;
  bool found = false;
  for (int i = 0; !found && i < sk_GENERAL_NAME_num(sans); i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
    if (ip != NULL && g->type == GEN_IPADD) {
      found = ASN1_STRING_cmp(ip, g->d.iPAddress) == 0;
    } else if (ip == NULL && g->type == GEN_DNS) {
      const char *v = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
      int vl = ASN1_STRING_length(g->d.dNSName);
      found = vl >= 0 && (size_t)vl == strlen(name) && strncasecmp(v, name, (size_t)vl) == 0;
    }
  }
  ASN1_OCTET_STRING_free(ip);
  return found;
}

/* 1: cert and key match, are good for REUSE_MARGIN_S more and name every
 * name; 0: no (missing, another key, expiring); -1: the names fall short,
 * the first missing one in *missing. */
static int reusable(const char *cert, const char *key, const ss_names_t *names,
                    const char **missing) {
  FILE *f = fopen(cert, "r");
  X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
  if (f != NULL)
    fclose(f);
  f = fopen(key, "r");
  EVP_PKEY *pk = f != NULL ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
  if (f != NULL)
    fclose(f);
  time_t soon = time(NULL) + REUSE_MARGIN_S;
  int ok = x != NULL && pk != NULL && X509_check_private_key(x, pk) == 1 &&
           X509_cmp_time(X509_get0_notAfter(x), &soon) > 0;
  if (ok) {
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (size_t i = 0; ok == 1 && i < names->n; i++) {
      if (sans == NULL || !names_has(sans, names->v[i])) {
        *missing = names->v[i];
        ok = -1;
      }
    }
    GENERAL_NAMES_free(sans);
  }
  X509_free(x);
  EVP_PKEY_free(pk);
  ERR_clear_error();
  return ok;
}

/* The subjectAltName extension for names, built item by item (no
 * configuration string that a comma in a name could extend). */
static bool add_sans(X509 *x, const ss_names_t *names) {
  GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
  bool ok = gens != NULL;
  for (size_t i = 0; ok && i < names->n; i++) {
    GENERAL_NAME *g = GENERAL_NAME_new();
    if (g == NULL) {
      ok = false;
      break;
    }
    if (is_ip(names->v[i])) {
      ASN1_OCTET_STRING *ip = a2i_IPADDRESS(names->v[i]);
      GENERAL_NAME_set0_value(g, GEN_IPADD, ip);
      ok = ip != NULL;
    } else {
      ASN1_IA5STRING *s = ASN1_IA5STRING_new();
      ok = s != NULL && ASN1_STRING_set(s, names->v[i], -1) == 1;
      if (s != NULL)
        GENERAL_NAME_set0_value(g, GEN_DNS, s);
    }
    if (!ok || sk_GENERAL_NAME_push(gens, g) == 0) {
      GENERAL_NAME_free(g);
      ok = false;
    }
  }
  ok = ok && X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1;
  GENERAL_NAMES_free(gens);
  return ok;
}

static int make(const char *cert, const char *key, const ss_names_t *names, char *why,
                size_t wlen) {
  EVP_PKEY *pk = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  bool ok = pk != NULL && x != NULL;
  if (ok) {
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(uv_hrtime() & 0x7fffffff));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), VALIDITY_S);
    X509_set_pubkey(x, pk);
    X509_NAME *name = X509_get_subject_name(x);
    /* The common name is only informative (clients check the
     * subjectAltName); the first name, within its 64-character bound. */
    char cn[65];
    snprintf(cn, sizeof(cn), "%.64s", names->n > 0 ? names->v[0] : "localhost");
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints, "critical,CA:TRUE");
    ok = ext != NULL && X509_add_ext(x, ext, -1) == 1 && add_sans(x, names) &&
         X509_sign(x, pk, EVP_sha256()) > 0;
    X509_EXTENSION_free(ext);
    if (!ok)
      snprintf(why, wlen, "cannot make a certificate (OpenSSL)");
  }
  FILE *f = ok ? fopen(cert, "w") : NULL;
  if (ok && f == NULL) {
    snprintf(why, wlen, "cannot write %s: %s", cert, strerror(errno));
    ok = false;
  }
  if (f != NULL) {
    bool wrote = PEM_write_X509(f, x) == 1;
    if (fclose(f) != 0 || !wrote) {
      snprintf(why, wlen, "cannot write %s", cert);
      ok = false;
    }
  }
  /* The key is for this user only. */
  int fd = ok ? open(key, O_WRONLY | O_CREAT | O_TRUNC, 0600) : -1;
  if (ok && fd < 0) {
    snprintf(why, wlen, "cannot write %s: %s", key, strerror(errno));
    ok = false;
  }
  f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (fd >= 0 && f == NULL)
    close(fd);
  if (fd >= 0) {
    bool wrote = f != NULL && PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) == 1;
    if (f != NULL && fclose(f) != 0)
      wrote = false;
    if (!wrote) {
      snprintf(why, wlen, "cannot write %s", key);
      ok = false;
    }
  }
  X509_free(x);
  EVP_PKEY_free(pk);
  ERR_clear_error();
  return ok ? 0 : -1;
}

int ss_make(const char *dir, const ss_names_t *names, char *cert, char *key, size_t len, char *why,
            size_t wlen) {
  why[0] = '\0';
  snprintf(cert, len, "%s/h2rev-dialer.crt", dir);
  snprintf(key, len, "%s/h2rev-dialer.key", dir);
  const char *missing = NULL;
  int r = reusable(cert, key, names, &missing);
  if (r == 1)
    return SS_REUSED;
  if (access(dir, W_OK) != 0) {
    snprintf(why, wlen, "cannot write into %s: %s", dir, strerror(errno));
    return -1;
  }
  if (make(cert, key, names, why, wlen) != 0)
    return -1;
  if (r < 0) {
    snprintf(why, wlen, "the one there did not name %s", missing);
    return SS_REPLACED;
  }
  return SS_MADE;
}
