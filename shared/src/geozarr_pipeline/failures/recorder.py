"""The failure recorder Service: one durable record per failure event or dead letter.

    python -m geozarr_pipeline.failures.recorder --host 0.0.0.0 --port 8080

The Trigger `geozarr-failures` delivers every `eopf.geozarr.failed` reply here, and every
Trigger's `deadLetterSink` is this Service. `POST /` records the event in the failure store
(`failures.store`, configured by the same GEOZARR_* settings as the stages) and answers 202
without a CloudEvent, so nothing is published back; a store that cannot be written answers
503, which the dispatcher retries. `GET /` lists the records, `GET /healthz` answers 200.
Standard library HTTP only: the image carries the shared package and boto3, nothing else.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import urlsplit

from geozarr_pipeline.cloudevent_http import parse_event
from geozarr_pipeline.config import Settings, get_settings
from geozarr_pipeline.errors import InvalidEvent, TransientError
from geozarr_pipeline.events import MAX_EVENT_BYTES
from geozarr_pipeline.failures.records import FailureRecord, record_from_event
from geozarr_pipeline.failures.store import FailureStore, open_failure_store
from geozarr_pipeline.jsonhttp import JsonRequestHandler
from geozarr_pipeline.logs import configure_logging

log = logging.getLogger(__name__)


class FailureRecorder:
    """Records events in one store; serves the HTTP API in a background thread."""

    def __init__(self, store: FailureStore) -> None:
        self.store = store
        self.server: ThreadingHTTPServer | None = None

    def record(self, headers: Mapping[str, str], body: bytes) -> tuple[FailureRecord, bool]:
        record = record_from_event(parse_event(headers, body))
        created = self.store.put(record)
        log.warning(
            "failure recorded" if created else "failure already recorded",
            extra={
                "record_id": record.record_id,
                "kind": record.kind,
                "stage": record.stage,
                "item_id": record.item_id,
                "problem": record.problem.code,
                "event_id": record.input.id,
                "store": self.store.location,
            },
        )
        return record, created

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
        self.store.close()


def _handler_for(recorder: FailureRecorder) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonRequestHandler):
        server_version = "geozarr-failure-recorder"

        def do_POST(self) -> None:
            body = self._read_body_or_refuse(MAX_EVENT_BYTES)
            if body is None:
                return
            try:
                record, created = recorder.record(dict(self.headers.items()), body)
            except InvalidEvent as exc:
                self._send_error(400, "invalid_event", exc.message)
                return
            except TransientError as exc:
                log.error("failure not recorded", extra={"error": exc.message})
                self._send_error(503, "store_unavailable", exc.message)
                return
            self._send_json(202, {"record_id": record.record_id, "created": created})

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/healthz":
                self._send_json(200, {"status": "ok", "store": recorder.store.location})
            elif path == "/":
                records = [r.model_dump(mode="json") for r in recorder.store.list()]
                self._send_json(200, records)
            else:
                self._send_error(404, "not_found", f"no such path: {path}")

    return Handler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--root", default=None, help="failures root (default: GEOZARR_FAILURES_ROOT)"
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Serve until SIGTERM/SIGINT; exit 2 when the failures root is unusable."""
    configure_logging(args.log_level)
    try:
        store = open_failure_store(settings or get_settings(), args.root)
    except ValueError as exc:
        log.error("cannot start the failure recorder", extra={"error": str(exc)})
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    recorder = FailureRecorder(store)
    url = recorder.serve(args.host, args.port)
    log.info("failure recorder ready", extra={"url": url, "store": store.location})
    try:
        stop.wait()
    finally:
        recorder.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geozarr_pipeline.failures.recorder",
        description="Record failure events and dead letters in the failure store.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
