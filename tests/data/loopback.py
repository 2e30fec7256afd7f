"""A loopback HTTP server for download tests: serves given bytes, honours Range requests and
misbehaves on demand (ignores ranges, corrupts a byte, drops connections)."""

from __future__ import annotations

import http.server
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Site:
    """What the loopback server serves and how it misbehaves; the tests change it between requests."""

    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str | None] = field(default_factory=list)  # the Range header of every GET, in order
    statuses: list[int] = field(default_factory=list)
    ignore_range: bool = False
    corrupt: bool = False
    drops: int = 0  # how many of the next bodies are cut off after drop_after bytes
    drop_after: int = 0
    drop_with_reset: bool = False  # cut off with a TCP reset instead of an orderly close

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _SiteServer(http.server.ThreadingHTTPServer):
    site: Site


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    server: _SiteServer

    def do_GET(self) -> None:
        site = self.server.site
        range_header = self.headers.get("Range")
        site.requests.append(range_header)
        body = site.files.get(self.path.lstrip("/"))
        if body is None:
            self._respond(404)
            return
        if site.corrupt:
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        start = 0
        if range_header is not None and not site.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1])
            if start >= len(body):
                self._respond(416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"})
                return
            self._respond(206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        else:
            self._respond(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if site.drops > 0:
            site.drops -= 1
            self.wfile.write(payload[: site.drop_after])
            if site.drop_with_reset:
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            return
        self.wfile.write(payload)

    def _respond(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.server.site.statuses.append(status)
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status >= 400:
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest's output free of access logs


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[Site]:
    """Serve ``files`` (name -> bytes) on 127.0.0.1 until the block ends."""
    server = _SiteServer(("127.0.0.1", 0), _RangeHandler)
    server.site = Site(port=server.server_address[1], files=dict(files))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
