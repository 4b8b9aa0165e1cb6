"""A base for the small standard-library HTTP servers (broker, dead-letter sink, bridge health)."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger(__name__)
# An over-size body up to this many times the limit is read and dropped before the answer.
DRAIN_FACTOR = 4


class JsonRequestHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 with JSON answers; access lines go to the debug log."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY a keep-alive client's
    # delayed ACK adds ~40 ms to every request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, error: str, message: str) -> None:
        self._send_json(status, {"error": error, "message": message})

    def _read_body(self, limit: int) -> bytes | None:
        """The request body (Content-Length or chunked); None when it is over `limit` bytes.

        Raises ValueError for malformed framing.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = _non_negative(int(self.rfile.readline().split(b";")[0].strip() or b"0", 16))
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > limit:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = _non_negative(int(self.headers.get("Content-Length") or 0))
        if length > limit:
            # Read (and drop) a body up to a few times the limit before answering, so that
            # the client is not reset while it still sends and sees the 413; a larger one is
            # left unread.
            if length <= DRAIN_FACTOR * limit:
                remaining = length
                while remaining > 0 and (chunk := self.rfile.read(min(remaining, 65536))):
                    remaining -= len(chunk)
            return None
        return self.rfile.read(length) if length else b""

    def _read_body_or_refuse(self, limit: int) -> bytes | None:
        """The body, or None after answering 400 (bad framing) or 413 (over `limit`)."""
        try:
            body = self._read_body(limit)
        except ValueError:
            self.close_connection = True
            self._send_error(400, "bad_request", "malformed body framing (Content-Length/chunks)")
            return None
        if body is None:
            self.close_connection = True
            self._send_error(413, "event_too_large", f"events are limited to {limit} bytes")
        return body


def _non_negative(size: int) -> int:
    """A body or chunk size; a negative one would read until the client hangs up."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    return size
