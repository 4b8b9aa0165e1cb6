"""The local broker's HTTP API: ingress (`POST /`) and the queries the client and tests use.

- `POST /`: a CloudEvent (binary or structured), answered 202 once it is in the journal.
- `GET /events?after=N&wait=S&type=...`: journal entries (long poll), `GET /deliveries`,
  `GET /routes`, `GET /healthz`.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from geozarr_pipeline.cloudevent_http import parse_event
from geozarr_pipeline.errors import InvalidEvent, status_code_for
from geozarr_pipeline.events import MAX_EVENT_BYTES
from geozarr_pipeline.jsonhttp import JsonRequestHandler

if TYPE_CHECKING:
    from geozarr_local.broker.engine import LocalBroker

EVENT_QUERY_KEYS = ("type", "subject", "source", "id", "origin")


def _single_values(raw_query: str, keys: Sequence[str]) -> dict[str, str]:
    parsed = parse_qs(raw_query)
    return {k: parsed[k][-1] for k in keys if parsed.get(k)}


def handler_for(broker: LocalBroker) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonRequestHandler):
        server_version = "geozarr-local-broker"

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/":
                self._send_error(404, "not_found", "POST CloudEvents to /")
                return
            body = self._read_body_or_refuse(MAX_EVENT_BYTES)
            if body is None:
                return
            try:
                event = parse_event(dict(self.headers.items()), body)
            except InvalidEvent as exc:
                self._send_error(status_code_for(exc), exc.code, exc.message)
                return
            entry = broker.publish(event)
            if entry is None:
                self._send_error(503, "stopping", "the broker is shutting down")
                return
            self._send_json(
                HTTPStatus.ACCEPTED,
                {
                    "accepted": True,
                    "seq": entry["seq"],
                    "id": entry["event"]["attributes"]["id"],
                    "routes": entry["routes"],
                    "duplicate": entry["duplicate"],
                },
            )

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/healthz":
                self._send_json(200, {"status": "ok", "triggers": len(broker.routes)})
            elif parts.path == "/events":
                params = parse_qs(parts.query)
                try:
                    after = int(params.get("after", ["0"])[-1])
                    wait = float(params.get("wait", ["0"])[-1])
                except ValueError:
                    self._send_error(400, "bad_query", "after must be an integer, wait a number")
                    return
                query = _single_values(parts.query, EVENT_QUERY_KEYS)
                self._send_json(200, broker.events(query, after=after, wait=wait))
            elif parts.path == "/deliveries":
                query = _single_values(
                    parts.query, ("queue", "trigger", "outcome", "type", "subject", "source", "id")
                )
                self._send_json(200, broker.deliveries(query))
            elif parts.path == "/routes":
                self._send_json(200, broker.routes_table())
            else:
                self._send_error(404, "not_found", f"no such path: {parts.path}")

    return Handler
