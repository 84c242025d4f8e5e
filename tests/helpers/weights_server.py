"""A local HTTP server (127.0.0.1, a thread) standing in for the release download host: serves bytes by path with
HTTP Range support, records every request, and can break a transfer off mid-way."""
from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.lstrip("/")
        requested = self.headers.get("Range")
        owner.requests.append((path, requested))
        if path in owner.redirects:  # as GitHub sends release assets to its storage host
            self.send_response(302)
            self.send_header("Location", f"/{owner.redirects[path]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = owner.files.get(path)
        if data is None:
            self.send_error(404, "no such asset")
            return
        start = 0
        match = None if owner.ignore_range else re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = owner.cut_after.pop(path, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True  # the client sees fewer bytes than announced

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    owner: "WeightsServer"


class WeightsServer:
    """`files` maps a path (e.g. "gelan-s.pt") to its bytes; `redirects[path] = other` answers 302 to /other;
    `cut_after[path] = n` makes the next response for it stop after n body bytes; `requests` lists (path, Range
    header) in arrival order."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.ignore_range = False  # answer every request with the whole file (200), as some servers do
        self.cut_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{{name}}.pt"

    def requests_for(self, name: str) -> list[str | None]:
        """The Range headers of the requests for `<name>.pt`."""
        return [requested for path, requested in self.requests if path == f"{name}.pt"]


@contextmanager
def serve_weights() -> Iterator[WeightsServer]:
    server = WeightsServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def unreachable_url_template() -> str:
    """A URL template on a local port nothing listens on (bound, then closed), for offline errors."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{{name}}.pt"
