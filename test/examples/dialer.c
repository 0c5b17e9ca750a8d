/* dialer PORT [CERT KEY]: serves <base>/revdial on PORT (TLS with CERT and
 * KEY, else HTTP/2 cleartext), opens a reverse connection to the listener
 * "app1" as soon as it is attached, sends a line, prints what comes back and
 * exits. */
#include <h2rev.h>
#include <stdio.h>
#include <stdlib.h>

static h2rev_dialer_t d;
static h2rev_dial_t dial_req;
static h2rev_stream_t conn;
static h2rev_write_t w;
static h2rev_shutdown_t sh;
static uv_timer_t retry;
static char line[] = "hello, app1\n";
static char buf[4096];

static void on_alloc(h2rev_stream_t *s, size_t n, uv_buf_t *b) {
  *b = uv_buf_init(buf, sizeof(buf));
}

static void on_closed(h2rev_stream_t *s) {
  uv_close((uv_handle_t *)&retry, NULL);
  h2rev_dialer_close(&d, NULL); /* nothing left: uv_run returns */
}

static void on_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n > 0)
    fwrite(b->base, 1, (size_t)n, stdout);
  else if (n < 0) /* UV_EOF: the echo is complete; or an error */
    h2rev_stream_close(s, on_closed);
}

static void on_wrote(h2rev_write_t *w, int status) {
  if (status != 0)
    fprintf(stderr, "write: %s\n", h2rev_strerror(status));
}

static void dial(uv_timer_t *t);

static void on_dialed(h2rev_dial_t *req, int status) {
  if (status == H2REV_ENOLISTENER) { /* app1 is not attached (yet): try again soon */
    uv_timer_start(&retry, dial, 100, 0);
    return;
  }
  if (status != 0) { /* UV_ETIMEDOUT, H2REV_EPICKUP... */
    fprintf(stderr, "dial: %s\n", h2rev_dial_strerror(req));
    on_closed(NULL);
    return;
  }
  /* req->stream is open: read, write, shutdown, close it like a socket */
  uv_buf_t b = uv_buf_init(line, sizeof(line) - 1);
  h2rev_stream_read_start(req->stream, on_alloc, on_read);
  h2rev_stream_write(&w, req->stream, &b, 1, on_wrote);
  h2rev_stream_shutdown(&sh, req->stream, NULL); /* after the write: our side is done */
}

static void dial(uv_timer_t *t) {
  h2rev_dial(&dial_req, &d, "app1", &conn, 5000, on_dialed);
}

int main(int argc, char **argv) {
  struct sockaddr_in addr;
  uv_ip4_addr("0.0.0.0", argc > 1 ? atoi(argv[1]) : 443, &addr);
  h2rev_dialer_options_t o = {.base_path = "/reverse"};
  h2rev_tls_options_t tls = {.cert_file = argc > 3 ? argv[2] : NULL,
                             .key_file = argc > 3 ? argv[3] : NULL};
  h2rev_dialer_init(uv_default_loop(), &d, &o);
  int r = h2rev_dialer_listen(&d, (struct sockaddr *)&addr, argc > 3 ? &tls : NULL);
  if (r != 0) { /* also serves <base>/proxy/ */
    fprintf(stderr, "listen: %s\n", h2rev_strerror(r));
    return 1;
  }
  uv_timer_init(uv_default_loop(), &retry);
  dial(&retry);
  return uv_run(uv_default_loop(), UV_RUN_DEFAULT);
}
