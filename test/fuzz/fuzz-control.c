/*
 * The control protocol (control.c): bytes of a control stream go through
 * the line reader in pieces and through the JSON parser in one piece. Every
 * message parsed must survive the encoder: its err, written by
 * h2r_ctl_encode and parsed again, comes back the same. An id the parser
 * hands over is escaped into a request path made only of unreserved bytes
 * and %XX.
 *
 * Input: one byte for the size of the reader's pieces, then the bytes.
 */
#include "control.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_BYTES 4096 /* h2rev_dialer_options_t.max_control_line's default */
#define ENCODE_CAP     1024 /* an err of sizeof(err) bytes escaped 6 to 1, and the rest */

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz-control: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static void check_msg(const h2r_ctl_msg *m) {
  CHECK(memchr(m->command, '\0', sizeof(m->command)) != NULL);
  CHECK(memchr(m->err, '\0', sizeof(m->err)) != NULL);
  CHECK(memchr(m->conn_path, '\0', sizeof(m->conn_path)) != NULL);

  char line[ENCODE_CAP];
  size_t n = h2r_ctl_encode(line, sizeof(line), H2R_CMD_PICKUP_FAILED, m->err);
  CHECK(n > 0 && n < sizeof(line) && line[n - 1] == '\n' && line[n] == '\0');
  h2r_ctl_msg back;
  CHECK(h2r_ctl_parse(line, n - 1, &back) == 0);
  CHECK(strcmp(back.command, H2R_CMD_PICKUP_FAILED) == 0);
  CHECK(strcmp(back.err, m->err) == 0);

  char path[600];
  if (h2r_revdial_path(path, sizeof(path), "/base/", m->command) == 0) {
    const char *q = path + strlen("/base/revdial?id=");
    CHECK(strncmp(path, "/base/revdial?id=", strlen("/base/revdial?id=")) == 0);
    for (; *q != '\0'; q++)
      CHECK(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-%", *q) !=
            NULL);
  }
  (void)h2r_id_valid(m->command, strlen(m->command));
}

static int on_msg(void *arg, const h2r_ctl_msg *m) {
  ++*(unsigned *)arg;
  check_msg(m);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t piece = (size_t)data[0] + 1;
  size -= 1;
  /* A copy of the exact size: a read past the end is caught. */
  char *in = malloc(size > 0 ? size : 1);
  if (in == NULL)
    return 0;
  memcpy(in, data + 1, size);

  h2r_ctl_msg m;
  if (h2r_ctl_parse(in, size, &m) == 0)
    check_msg(&m);

  h2r_ctl_reader r = {.max = LINE_MAX_BYTES};
  unsigned msgs = 0;
  for (size_t off = 0; off < size; off += piece) {
    size_t k = size - off < piece ? size - off : piece;
    int rc = h2r_ctl_feed(&r, in + off, k, on_msg, &msgs);
    if (rc != 0) {
      CHECK(rc == H2REV_ECONTROL);
      CHECK(memchr(r.why, '\0', sizeof(r.why)) != NULL && r.why[0] != '\0');
      break;
    }
    CHECK(r.len <= r.max);
  }
  h2r_ctl_reader_free(&r);
  free(in);
  return 0;
}
