"""The dead-letter sink Service: records every event the broker gave up on, lists them.

    python -m geozarr_pipeline.dead_letter_sink --host 0.0.0.0 --port 8080 --state-dir DIR

`POST /` takes the dead-lettered CloudEvent (binary or structured; Knative adds the
`knativeerrordest`, `knativeerrorcode` and `knativeerrordata` extensions) and writes one
record in the local broker's format under `DIR/dead-letters/`, so
`geozarr-pipeline dead-letters list --state-dir DIR` lists cluster and local dead letters
alike. `GET /` returns the records as JSON; `GET /healthz` answers 200. Standard library HTTP
only: the image carries nothing but the shared package's base dependencies.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from cloudevents.http import CloudEvent

from geozarr_pipeline.cloudevent_http import parse_event
from geozarr_pipeline.errors import InvalidEvent
from geozarr_pipeline.jsonhttp import JsonRequestHandler
from geozarr_pipeline.local import deadletters
from geozarr_pipeline.local.journal import event_to_record
from geozarr_pipeline.logs import configure_logging

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
ERROR_DATA_BYTES = 4096


def _decoded_error_data(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)[:ERROR_DATA_BYTES].decode(
            "utf-8", errors="replace"
        )
    except (binascii.Error, ValueError):
        return value[:ERROR_DATA_BYTES]


def _service_name(destination: str | None) -> str:
    """`http://geozarr-convert.ns.svc.cluster.local` -> `geozarr-convert`."""
    if not destination:
        return "unknown"
    host = urlsplit(destination).hostname or destination
    return host.split(".", 1)[0] or "unknown"


def build_record(event: CloudEvent) -> dict[str, Any]:
    """A dead-letter record (the local broker's format) from an event Knative dead-lettered."""
    attributes = event.get_attributes()
    destination = attributes.get("knativeerrordest")
    code = attributes.get("knativeerrorcode")
    try:
        status: int | None = int(str(code)) if code is not None else None
    except ValueError:
        status = None
    if status is not None and status <= 0:
        status = None
    return {
        "version": deadletters.RECORD_VERSION,
        "record_id": deadletters.new_record_id(),
        "recorded_at": deadletters.utc_now(),
        "reason": "delivery failed: retries exhausted or a non-retryable status",
        "trigger": _service_name(str(destination) if destination else None),
        "subscriber": {"service": _service_name(destination), "url": destination},
        "event": event_to_record(event),
        "last_status": status,
        "last_error": None if status is not None else "no HTTP status (timeout or no response)",
        "response_body": _decoded_error_data(attributes.get("knativeerrordata")),
        "knative_extensions": {
            k: str(v) for k, v in attributes.items() if str(k).startswith("knativeerror")
        },
    }


class DeadLetterSink:
    """The HTTP server and its records folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.server: ThreadingHTTPServer | None = None
        deadletters.dead_letter_dir(state_dir).mkdir(parents=True, exist_ok=True)

    def record(self, headers: Mapping[str, str], body: bytes) -> Path:
        event = parse_event(headers, body)
        record = build_record(event)
        path = deadletters.write_record(self.state_dir, record)  # atomic, own file: no lock
        log.warning(
            "dead letter recorded",
            extra={
                "event_id": event["id"],
                "event_type": event["type"],
                "subject": event.get("subject"),
                "destination": record["subscriber"]["url"],
                "status": record["last_status"],
                "record": str(path),
            },
        )
        return path

    def serve(self, host: str, port: int) -> str:
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        bound_host, bound_port = self.server.server_address[:2]
        return f"http://{bound_host!s}:{bound_port}"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _handler_for(sink: DeadLetterSink) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonRequestHandler):
        def do_POST(self) -> None:
            body = self._read_body_or_refuse(MAX_BODY_BYTES)
            if body is None:
                return
            try:
                path = sink.record(dict(self.headers.items()), body)
            except InvalidEvent as exc:
                self._send_error(400, "invalid_event", exc.message)
                return
            self._send_json(202, {"recorded": True, "file": path.name})

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/healthz":
                self._send_json(200, {"status": "ok"})
            elif path in ("/", "/dead-letters"):
                self._send_json(200, deadletters.list_records(sink.state_dir))
            else:
                self._send_error(404, "not_found", f"no such path: {path}")

    return Handler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="records go to STATE_DIR/dead-letters/"
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    sink = DeadLetterSink(args.state_dir)
    url = sink.serve(args.host, args.port)
    log.info("dead-letter sink ready", extra={"url": url, "state_dir": str(args.state_dir)})
    try:
        stop.wait()
    finally:
        sink.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geozarr_pipeline.dead_letter_sink",
        description="Record dead-lettered CloudEvents on disk and list them over HTTP.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
