/*
 * The dialer's HTTP/2 server fed raw frames: a client connection to the
 * dialer of an in-process tunnel (rig.h) sends the connection preface, then
 * the input. Everything h2rev hangs on nghttp2's callbacks runs for real
 * (session.c, stream.c, server.c's routing, the dialer's /revdial and
 * /proxy/<id> with a live listener, proxy.c for HTTP/2 clients), on a real
 * socket, under ASan and UBSan.
 *
 * Input: one byte of flags, then the frames. Flag bit 0: the client
 * half-closes right after its bytes (the dialer sees it leave with work in
 * flight); else the exchange lasts until the dialer is silent for
 * RIG_QUIET_MS (answers from the tunnel come back first).
 */
#include "rig.h"

#include <stdint.h>

#define PREFACE  "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define LIMIT_MS 200

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  unsigned flags = (data[0] & 1) ? RIG_SHUT : RIG_QUIET;
  uv_buf_t bufs[2] = {uv_buf_init(PREFACE, sizeof(PREFACE) - 1),
                      uv_buf_init((char *)data + 1, (unsigned)(size - 1))};
  rig_exchange(bufs, 2, flags, LIMIT_MS, NULL, NULL);
  return 0;
}
