"""A base for the small standard-library HTTP servers (broker, dead-letter sink, bridge health)."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger(__name__)


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
