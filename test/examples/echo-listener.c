/* echo-listener URL [CA]: attaches as "app1" to the dialer at URL
 * (https://..., or http://... for HTTP/2 cleartext) and echoes every reverse
 * connection until the other side ends it. */
#include <h2rev.h>
#include <stdio.h>
#include <stdlib.h>

static void on_alloc(h2rev_stream_t *s, size_t n, uv_buf_t *b) {
  *b = uv_buf_init(malloc(n), (unsigned)n);
}

static void on_closed(h2rev_stream_t *s) {
  free(s);
}

static void on_wrote(h2rev_write_t *w, int status) {
  free(w->data);
  free(w);
}

static void on_shut(h2rev_shutdown_t *req, int status) {
  h2rev_stream_close(req->handle, on_closed); /* both sides are done */
  free(req);
}

static void on_read(h2rev_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n <= 0) {
    free(b->base);
    if (n == UV_EOF) { /* the peer is done: end our side once the echo is out */
      h2rev_shutdown_t *req = malloc(sizeof(*req));
      if (h2rev_stream_shutdown(req, s, on_shut) == 0)
        return;
      free(req);
    }
    if (n < 0) /* a reset, or the connection failed */
      h2rev_stream_close(s, on_closed);
    return;
  }
  h2rev_write_t *w = malloc(sizeof(*w));
  w->data = b->base;
  uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
  if (h2rev_stream_write(w, s, &out, 1, on_wrote) != 0) {
    free(b->base);
    free(w);
    h2rev_stream_close(s, on_closed);
  }
}

static void on_connection(h2rev_listener_t *l, int status) {
  h2rev_stream_t *s = malloc(sizeof(*s));
  if (h2rev_listener_accept(l, s) == 0)
    h2rev_stream_read_start(s, on_alloc, on_read);
  else
    free(s);
}

int main(int argc, char **argv) {
  h2rev_listener_t l;
  h2rev_listener_options_t o = {.url = argc > 1 ? argv[1] : "https://relay.example.com/reverse",
                                .id = "app1"};
  o.tls.ca_file = argc > 2 ? argv[2] : NULL; /* NULL: the system store */
  int r = h2rev_listener_init(uv_default_loop(), &l, &o);
  if (r != 0) {
    fprintf(stderr, "listener: %s\n", h2rev_strerror(r));
    return 1;
  }
  h2rev_listener_start(&l, on_connection); /* reconnects by itself, with backoff */
  return uv_run(uv_default_loop(), UV_RUN_DEFAULT);
}
