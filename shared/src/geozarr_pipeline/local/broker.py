"""A local stand-in for the Knative RabbitMQ broker, routed by the same Trigger manifests.

    python -m geozarr_pipeline.local.broker --host 127.0.0.1 --port 8080 \\
        --manifests knative/base --state-dir data/broker \\
        --subscriber geozarr-convert=http://127.0.0.1:8081 ...

Ingress `POST /` takes CloudEvents (binary or structured) and answers 202; every accepted
event is appended to `<state-dir>/events.jsonl` and handed to each matching Trigger's worker
pool, which delivers it in binary mode with the Trigger's timeout, retries like
eventing-rabbitmq's dispatcher (404, 408, 409, 429, 5xx, timeouts, connection errors, with the
Trigger's backoff), publishes a CloudEvent found in a 2xx reply back into the broker, and
writes a dead-letter record to `<state-dir>/dead-letters/` when it gives up.
"""

from __future__ import annotations

import argparse
import base64
import logging
import queue
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_pipeline.cloudevent_http import parse_event
from geozarr_pipeline.errors import InvalidEvent, is_retryable_status
from geozarr_pipeline.jsonhttp import JsonRequestHandler
from geozarr_pipeline.local import deadletters
from geozarr_pipeline.local.deadletters import utc_now
from geozarr_pipeline.local.journal import BrokerState, event_to_record, matches_query
from geozarr_pipeline.local.routing import (
    ManifestError,
    Route,
    load_routes,
    matching_routes,
    parse_subscriber_options,
)
from geozarr_pipeline.logs import configure_logging

log = logging.getLogger(__name__)

DESCRIPTION = "A local stand-in for the Knative RabbitMQ broker, routed by the Trigger manifests."
MAX_INGRESS_BYTES = 16 * 1024 * 1024
RECORDED_BODY_BYTES = 64 * 1024
KNATIVE_ERROR_DATA_BYTES = 1024
MAX_LONG_POLL_SECONDS = 300.0
SINK_TIMEOUT_SECONDS = 10.0


def binary_request(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of an event in binary mode (JSON data gets a JSON content type)."""
    headers, body = to_binary(event)
    headers = {k: str(v) for k, v in headers.items()}
    if event.data is not None and not isinstance(event.data, bytes | bytearray | str):
        headers.setdefault("content-type", "application/json")
    return headers, body or b""


@dataclass
class Attempt:
    """The outcome of one HTTP delivery attempt."""

    number: int
    started_at: str
    elapsed_s: float
    status: int | None = None
    error: str | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return True
        return is_retryable_status(self.status)

    def summary(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "started_at": self.started_at,
            "elapsed_s": round(self.elapsed_s, 4),
            "status": self.status,
            "error": self.error,
        }


@dataclass
class Delivery:
    route: Route
    url: str
    event: CloudEvent
    seq: int


EVENT_QUERY_KEYS = ("type", "subject", "source", "id", "origin")
DEAD_LETTER_QUERY_KEYS = ("type", "subject", "source", "id", "trigger")


class LocalBroker:
    """Ingress, journal, per-Trigger worker pools and dead letters; usable in-process too."""

    def __init__(
        self,
        routes: Sequence[Route],
        subscribers: Mapping[str, str],
        state_dir: Path,
        *,
        default_parallelism: int = 1,
        default_timeout: float = 300.0,
    ) -> None:
        self.routes = list(routes)
        self.subscribers = dict(subscribers)
        self.state = BrokerState(state_dir)
        self.default_timeout = default_timeout
        self._stopping = threading.Event()
        self._client = httpx.Client(follow_redirects=False, trust_env=False)
        self._queues: dict[str, queue.Queue[Delivery | None]] = {}
        self._workers: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        for route in self.routes:
            url = route.target_url(self.subscribers)
            if url is None:
                log.warning(
                    "trigger has no subscriber URL: its events are journaled, not delivered",
                    extra={"trigger": route.name, "subscriber": route.subscriber},
                )
                continue
            self._queues[route.name] = queue.Queue()
            for index in range(route.parallelism or default_parallelism):
                worker = threading.Thread(
                    target=self._work,
                    args=(self._queues[route.name],),
                    name=f"deliver-{route.name}-{index}",
                    daemon=True,
                )
                self._workers.append(worker)
        for worker in self._workers:
            worker.start()

    # Publishing -----------------------------------------------------------------------------

    def publish(
        self, event: CloudEvent, origin: str = "ingress", parent: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Journal an event and queue it for every matching Trigger; never blocks on delivery."""
        attributes = event.get_attributes()
        matched = matching_routes(self.routes, attributes)
        served = [r for r in matched if r.name in self._queues]
        unserved = [r.name for r in matched if r.name not in self._queues]
        entry = self.state.append_event(event, origin, parent, [r.name for r in served], unserved)
        if entry is None:
            return None
        for route in served:
            url = route.target_url(self.subscribers)
            assert url is not None
            self._queues[route.name].put(Delivery(route, url, event, int(entry["seq"])))
        log.info(
            "event accepted",
            extra={
                "seq": entry["seq"],
                "origin": origin,
                "event_type": attributes.get("type"),
                "event_id": attributes.get("id"),
                "subject": attributes.get("subject"),
                "routes": entry["routes"],
                "duplicate": entry["duplicate"],
            },
        )
        return entry

    # Delivery -------------------------------------------------------------------------------

    def _work(self, deliveries: queue.Queue[Delivery | None]) -> None:
        while not self._stopping.is_set():
            delivery = deliveries.get()
            if delivery is None:
                return
            try:
                self._deliver(delivery)
            except Exception:
                log.exception("delivery crashed", extra={"trigger": delivery.route.name})

    def _attempt(self, delivery: Delivery, number: int) -> Attempt:
        headers, body = binary_request(delivery.event)
        timeout = delivery.route.delivery.timeout or self.default_timeout
        started_at = utc_now()
        started = time.monotonic()
        try:
            response = self._client.post(
                delivery.url, headers=headers, content=body, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            return Attempt(
                number, started_at, time.monotonic() - started, error=f"timeout: {exc!r}"
            )
        except httpx.HTTPError as exc:
            return Attempt(
                number, started_at, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}"
            )
        return Attempt(
            number,
            started_at,
            time.monotonic() - started,
            status=response.status_code,
            body=response.content,
            headers={k.lower(): v for k, v in response.headers.items()},
        )

    def _deliver(self, delivery: Delivery) -> None:
        spec = delivery.route.delivery
        attempts: list[Attempt] = []
        for number in range(1, spec.retry + 2):
            if number > 1 and self._stopping.wait(spec.backoff(number - 1)):
                return
            attempt = self._attempt(delivery, number)
            attempts.append(attempt)
            if self._stopping.is_set() and not attempt.succeeded:
                return
            log.info(
                "delivery attempt",
                extra={
                    "trigger": delivery.route.name,
                    "event_id": delivery.event["id"],
                    "attempt": number,
                    "status": attempt.status,
                    "error": attempt.error,
                },
            )
            if attempt.succeeded:
                self._succeeded(delivery, attempts)
                return
            if not attempt.retryable:
                self._dead_letter(delivery, attempts, "non_retryable_status")
                return
        self._dead_letter(delivery, attempts, "retries_exhausted")

    def _succeeded(self, delivery: Delivery, attempts: list[Attempt]) -> None:
        last = attempts[-1]
        try:
            reply = self._reply_event(last)
        except InvalidEvent as exc:
            last.error = f"invalid reply event: {exc.message}"
            self._dead_letter(delivery, attempts, "invalid_reply")
            return
        if reply is not None and delivery.route.matches(reply.get_attributes()):
            # The design rule "never reply with a type your own Trigger matches": in a cluster
            # this loops forever; here it is refused loudly.
            last.error = f"reply of type {reply['type']!r} matches its own Trigger (a loop)"
            self._dead_letter(delivery, attempts, "reply_loop")
            return
        reply_entry = None
        if reply is not None:
            parent = {
                "seq": delivery.seq,
                "trigger": delivery.route.name,
                "source": str(delivery.event["source"]),
                "id": str(delivery.event["id"]),
            }
            reply_entry = self.publish(reply, origin="reply", parent=parent)
        self._record_delivery(
            delivery,
            attempts,
            "delivered",
            reply_seq=reply_entry["seq"] if reply_entry else None,
        )

    @staticmethod
    def _reply_event(attempt: Attempt) -> CloudEvent | None:
        """The CloudEvent in a 2xx reply, if the reply carries one (binary or structured)."""
        content_type = attempt.headers.get("content-type", "")
        structured = content_type.startswith("application/cloudevents+json")
        if not structured and not any(name.startswith("ce-") for name in attempt.headers):
            return None
        return parse_event(attempt.headers, attempt.body)

    def _record_delivery(
        self, delivery: Delivery, attempts: list[Attempt], outcome: str, **extra: Any
    ) -> None:
        self.state.append_delivery(
            {
                "finished_at": utc_now(),
                "trigger": delivery.route.name,
                "subscriber": delivery.route.subscriber,
                "url": delivery.url,
                "seq": delivery.seq,
                "event": {
                    "type": str(delivery.event["type"]),
                    "source": str(delivery.event["source"]),
                    "id": str(delivery.event["id"]),
                    "subject": delivery.event.get("subject"),
                },
                "outcome": outcome,
                "attempts": [a.summary() for a in attempts],
                **extra,
            }
        )

    def _dead_letter(self, delivery: Delivery, attempts: list[Attempt], reason: str) -> None:
        last = attempts[-1]
        code = str(last.status) if last.status is not None else "-1"
        extensions = {
            "knativeerrordest": delivery.url,
            "knativeerrorcode": code,
            "knativeerrordata": base64.b64encode(last.body[:KNATIVE_ERROR_DATA_BYTES]).decode(),
        }
        record: dict[str, Any] = {
            "version": deadletters.RECORD_VERSION,
            "record_id": deadletters.new_record_id(),
            "recorded_at": utc_now(),
            "reason": reason,
            "trigger": delivery.route.name,
            "subscriber": {"service": delivery.route.subscriber, "url": delivery.url},
            "event": event_to_record(delivery.event),
            "journal_seq": delivery.seq,
            "last_status": last.status,
            "last_error": last.error,
            "response_body": last.body[:RECORDED_BODY_BYTES].decode("utf-8", errors="replace"),
            "response_content_type": last.headers.get("content-type"),
            "attempts": len(attempts),
            "attempt_log": [a.summary() for a in attempts],
            "first_attempt_at": attempts[0].started_at,
            "last_attempt_at": last.started_at,
            "delivery": {
                "retry": delivery.route.delivery.retry,
                "backoff_policy": delivery.route.delivery.backoff_policy,
                "backoff_delay_s": delivery.route.delivery.backoff_delay,
                "timeout_s": delivery.route.delivery.timeout,
            },
            "knative_extensions": extensions,
            "sink": self._forward_to_sink(delivery, extensions),
        }
        path = self.state.write_dead_letter(record)
        self._record_delivery(
            delivery, attempts, "dead-lettered", reason=reason, record=str(path) if path else None
        )
        log.warning(
            "event dead-lettered",
            extra={
                "trigger": delivery.route.name,
                "event_id": delivery.event["id"],
                "reason": reason,
                "status": last.status,
                "attempts": len(attempts),
                "record": str(path),
            },
        )

    def _forward_to_sink(
        self, delivery: Delivery, extensions: Mapping[str, str]
    ) -> dict[str, Any] | None:
        """Also send the event to the Trigger's deadLetterSink, when a URL is known for it."""
        sink = delivery.route.delivery.dead_letter_sink
        url = self.subscribers.get(sink) if sink else None
        if sink is None or url is None:
            return None
        event = CloudEvent({**delivery.event.get_attributes(), **extensions}, delivery.event.data)
        headers, body = binary_request(event)
        try:
            response = self._client.post(
                url, headers=headers, content=body, timeout=SINK_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            return {"service": sink, "url": url, "status": None, "error": str(exc)}
        return {"service": sink, "url": url, "status": response.status_code, "error": None}

    # Queries --------------------------------------------------------------------------------

    def events(
        self, query: Mapping[str, str], after: int = 0, wait: float = 0.0
    ) -> list[dict[str, Any]]:
        """Journal entries matching every query attribute; with `wait`, long-poll for one."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_LONG_POLL_SECONDS)
        with self.state.changed:
            while True:
                found = [
                    e
                    for e in self.state.entries
                    if int(e.get("seq", 0)) > after and matches_query(e, query)
                ]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0 or self.state.closed:
                    return found
                self.state.changed.wait(remaining)

    def deliveries(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        with self.state.lock:
            entries = list(self.state.deliveries)
        return [
            d
            for d in entries
            if all(
                str(d.get(k) if k in ("trigger", "outcome") else d["event"].get(k)) == v
                for k, v in query.items()
            )
        ]

    def dead_letters(self, query: Mapping[str, str], after: int = 0) -> list[dict[str, Any]]:
        """Dead-letter records matching the query, of journal entries after seq `after`."""
        records = deadletters.list_records(self.state.state_dir)
        return [
            r for r in records if int(r.get("journal_seq") or 0) > after and matches_query(r, query)
        ]

    def routes_table(self) -> list[dict[str, Any]]:
        return [
            {
                "trigger": r.name,
                "broker": r.broker,
                "filters": dict(r.filters),
                "subscriber": r.subscriber,
                "url": r.target_url(self.subscribers),
                "retry": r.delivery.retry,
                "backoff_policy": r.delivery.backoff_policy,
                "backoff_delay_s": r.delivery.backoff_delay,
                "timeout_s": r.delivery.timeout,
                "dead_letter_sink": r.delivery.dead_letter_sink,
                "parallelism": r.parallelism,
                "manifest": str(r.manifest) if r.manifest else None,
            }
            for r in self.routes
        ]

    # Serving --------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> str:
        """Start the HTTP ingress in a background thread; returns its base URL."""
        server = ThreadingHTTPServer((host, port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._server_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="ingress", daemon=True
        )
        self._server_thread.start()
        bound_host, bound_port = server.server_address[:2]
        return f"http://{bound_host!s}:{bound_port}"

    def close(self, grace: float = 2.0) -> None:
        """Stop taking events, give in-flight deliveries `grace` seconds, then drop the rest.

        A dropped delivery leaves no record: the journal shows the event, and at-least-once
        delivery means it may simply be submitted again.
        """
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for deliveries in self._queues.values():
            for _ in range(len(self._workers)):
                deliveries.put(None)
        deadline = time.monotonic() + grace
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.state.close()
        self._client.close()

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _single_values(raw_query: str, keys: Sequence[str]) -> dict[str, str]:
    parsed = parse_qs(raw_query)
    return {k: parsed[k][-1] for k in keys if parsed.get(k)}


def _handler_for(broker: LocalBroker) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonRequestHandler):
        server_version = "geozarr-local-broker"

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/":
                self._send_error(404, "not_found", "POST CloudEvents to /")
                return
            body = self._read_body_or_refuse(MAX_INGRESS_BYTES)
            if body is None:
                return
            try:
                event = parse_event(dict(self.headers.items()), body)
            except InvalidEvent as exc:
                self._send_error(400, "invalid_event", exc.message)
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
            elif parts.path == "/dead-letters":
                try:
                    after = int(parse_qs(parts.query).get("after", ["0"])[-1])
                except ValueError:
                    self._send_error(400, "bad_query", "after must be an integer")
                    return
                query = _single_values(parts.query, DEAD_LETTER_QUERY_KEYS)
                self._send_json(200, broker.dead_letters(query, after=after))
            elif parts.path == "/deliveries":
                query = _single_values(
                    parts.query, ("trigger", "outcome", "type", "subject", "source", "id")
                )
                self._send_json(200, broker.deliveries(query))
            elif parts.path == "/routes":
                self._send_json(200, broker.routes_table())
            else:
                self._send_error(404, "not_found", f"no such path: {parts.path}")

    return Handler


class EventNotSeen(TimeoutError):
    """No matching event reached the broker in time."""


class DeadLettered(RuntimeError):
    """The run being waited for ended in a dead-letter record."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        super().__init__(
            f"dead-lettered by trigger {record.get('trigger')}: {record.get('reason')} "
            f"(last status {record.get('last_status')}, {record.get('last_error')}): "
            f"{str(record.get('response_body', ''))[:300]}"
        )
        self.record = dict(record)


def wait_for_event(
    broker_url: str,
    *,
    event_type: str,
    subject: str | None = None,
    timeout: float = 600.0,
    after: int = 0,
    fail_on_dead_letter: bool = True,
    poll: float = 1.0,
) -> dict[str, Any]:
    """Long-poll the broker's journal until an event of `event_type` (and `subject`) arrives.

    Only journal entries after seq `after` count (pass the ingress answer's `seq` minus one to
    ignore earlier runs of the same item). With `fail_on_dead_letter`, a dead-letter record
    for the same subject raises DeadLettered instead of waiting for the timeout.
    """
    deadline = time.monotonic() + timeout
    query: dict[str, Any] = {"type": event_type, "after": after}
    if subject:
        query["subject"] = subject
    with httpx.Client(base_url=broker_url, trust_env=False, timeout=poll + 10) as client:
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0.0, min(poll, remaining))
            found = client.get("/events", params={**query, "wait": wait}).raise_for_status()
            entries: list[dict[str, Any]] = found.json()
            if entries:
                return entries[0]
            if fail_on_dead_letter and subject:
                dead = client.get(
                    "/dead-letters", params={"subject": subject, "after": after}
                ).raise_for_status()
                records: list[dict[str, Any]] = dead.json()
                if records:
                    raise DeadLettered(records[0])
            if time.monotonic() >= deadline:
                raise EventNotSeen(
                    f"no {event_type} event for {subject or 'any subject'} in {timeout}s"
                )


def default_manifests() -> Path:
    """`<repo>/knative/base` of the checkout this package runs from, else of the cwd."""
    in_checkout = Path(__file__).resolve().parents[4] / "knative" / "base"
    return in_checkout if in_checkout.is_dir() else Path("knative/base")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    parser.add_argument(
        "--manifests",
        type=Path,
        default=None,
        help="folder (or file) of Knative manifests; every Trigger in it is a route "
        "(default: <repo>/knative/base)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="where events.jsonl, deliveries.jsonl and dead-letters/ are kept",
    )
    parser.add_argument(
        "--subscriber",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="local URL of a Trigger subscriber Service, e.g. "
        "geozarr-convert=http://127.0.0.1:8081 (repeatable; a deadLetterSink Service named "
        "here also receives dead letters)",
    )
    parser.add_argument(
        "--broker-name", default=None, help="only Triggers of this broker (default: all)"
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=1,
        help="concurrent deliveries per Trigger without the parallelism annotation (default 1, "
        "as eventing-rabbitmq)",
    )
    parser.add_argument(
        "--default-timeout",
        type=float,
        default=300.0,
        help="delivery timeout in seconds for Triggers without delivery.timeout (default 300)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=2.0,
        help="seconds in-flight deliveries get on SIGTERM before they are dropped (default 2)",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; exit code 2 for a bad manifest or option."""
    configure_logging(args.log_level)
    try:
        subscribers = parse_subscriber_options(args.subscriber)
        manifests = args.manifests or default_manifests()
        routes = load_routes(manifests, broker=args.broker_name)
    except (ManifestError, ValueError) as exc:
        log.error("cannot start the local broker", extra={"error": str(exc)})
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    broker = LocalBroker(
        routes,
        subscribers,
        args.state_dir,
        default_parallelism=args.parallelism,
        default_timeout=args.default_timeout,
    )
    try:
        url = broker.serve(args.host, args.port)
        log.info(
            "local broker ready",
            extra={
                "url": url,
                "manifests": str(manifests),
                "state_dir": str(args.state_dir),
                "triggers": [r.name for r in routes],
            },
        )
        stop.wait()
    finally:
        broker.close(grace=args.grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("local broker stopped")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "broker", help="run the local broker (routes by the Knative Trigger manifests)"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geozarr_pipeline.local.broker", description=DESCRIPTION
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
