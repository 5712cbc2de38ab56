"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 server (SeaweedFS).

Requests are forwarded byte for byte (SigV4 signs the Host header, which the proxy leaves as the
client sent it); a seeded fraction of them is answered instead with a 500, a 503 SlowDown, a
connection reset, or a stall before forwarding; `delay_writes_s` holds every write (PUT, POST, DELETE)
that long before forwarding it, as a slow or distant store would. `outage(seconds)` refuses every request for that
long, as a storage outage would. Bounded: it only ever serves the test's own clients on loopback.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Faults:
    """Probabilities per request; the rest are forwarded untouched."""

    error_500: float = 0.0
    slow_down_503: float = 0.0
    reset: float = 0.0
    stall: float = 0.0
    stall_s: float = 2.0
    delay_writes_s: float = 0.0
    seed: int = 0
    counts: Counter = field(default_factory=Counter)
    outage_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def draw(self) -> str:
        with self._lock:
            if time.monotonic() < self.outage_until:
                self.counts["outage"] += 1
                return "outage"
            x = self._rng.random()
            for name in ("error_500", "slow_down_503", "reset", "stall"):
                p = getattr(self, name)
                if x < p:
                    self.counts[name] += 1
                    return name
                x -= p
            self.counts["forwarded"] += 1
            return "forward"


def _handler(upstream: tuple[str, int], faults: Faults) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def _reset(self) -> None:
            # SO_LINGER 0: close with a TCP RST, as a dropped connection looks to the client.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            self.close_connection = True

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = faults.draw()
            if fault in ("outage", "reset"):
                return self._reset()
            if fault == "error_500":
                return self._reply(500, INTERNAL)
            if fault == "slow_down_503":
                return self._reply(503, SLOW_DOWN)
            if fault == "stall":
                time.sleep(faults.stall_s)
            if self.command in ("PUT", "POST", "DELETE"):
                time.sleep(faults.delay_writes_s)
            conn = http.client.HTTPConnection(*upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status, resp.reason)
            head = self.command == "HEAD"  # its Content-Length is the object's, with no body sent
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and (head or k.lower() != "content-length"):
                    self.send_header(k, v)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


@contextmanager
def s3_proxy(upstream_endpoint: str, faults: Faults) -> Iterator[str]:
    """Serve on a free 127.0.0.1 port; yields the proxy's endpoint URL. Stopped on exit."""
    parsed = urlparse(upstream_endpoint)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler((parsed.hostname, parsed.port), faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="s3-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def outage(faults: Faults, seconds: float) -> None:
    """From now on, every request for `seconds` is dropped (connection reset)."""
    with faults._lock:
        faults.outage_until = time.monotonic() + seconds
