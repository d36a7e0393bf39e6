"""A real HTTP server that is slow on purpose: the URL-deadline tests' (tests/core/test_url_deadline.py,
tests/deployments/test_security.py)."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """/trickle-headers: a header a byte every 0.2 s; /trickle-body: 100 kB declared, sent at 1 kB/s."""

    def do_GET(self) -> None:
        try:
            if self.path == "/trickle-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(150):  # 30 s of headers unless the client gives up first
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif self.path == "/trickle-body":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"\x00" * 100)
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up at its deadline, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `handler` on a free port in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def slow_http_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[str]:
    """Serve the slow routes on a free port; yields the base URL."""
    return serving(_SlowHandler, host)
