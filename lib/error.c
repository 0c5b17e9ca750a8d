/* Error codes: h2rev's own range and its text, falling back to libuv's. */
#include "internal.h"

#include <string.h>

/* libuv allocates (and never frees) a string for codes it does not know. */
static bool uv_knows(int err) {
  char b[32];
  uv_err_name_r(err, b, sizeof(b));
  return strncmp(b, "Unknown", 7) != 0;
}

const char *h2rev_version(void) {
  return H2REV_VERSION_STRING;
}

const char *h2rev_strerror(int err) {
  switch (err) {
#define H2REV_ERR_TEXT(name, val, text)                                                            \
  case (val):                                                                                      \
    return text;
    H2REV_ERRNO_MAP(H2REV_ERR_TEXT)
#undef H2REV_ERR_TEXT
  default:
    return uv_knows(err) ? uv_strerror(err) : "unknown error";
  }
}

const char *h2rev_err_name(int err) {
  switch (err) {
#define H2REV_ERR_NAME(name, val, text)                                                            \
  case (val):                                                                                      \
    return "H2REV_E" #name;
    H2REV_ERRNO_MAP(H2REV_ERR_NAME)
#undef H2REV_ERR_NAME
  default:
    return uv_knows(err) ? uv_err_name(err) : "EUNKNOWN";
  }
}
