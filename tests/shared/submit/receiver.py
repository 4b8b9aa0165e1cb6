"""A tiny real HTTP server that records every request it gets (a stand-in event sink)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.http import CloudEvent, from_http

from geozarr_local.processes import LOOPBACK


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def event(self) -> CloudEvent:
        return from_http(self.headers, self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    status: int = 202
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.requests)} requests, expected {count}")


@contextmanager
def receiver() -> Iterator[Receiver]:
    state: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            sink: Receiver = state["sink"]
            with sink.lock:
                sink.requests.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
            self.send_response(sink.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    sink = Receiver(url=f"http://{LOOPBACK}:{server.server_address[1]}/")
    state["sink"] = sink
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
