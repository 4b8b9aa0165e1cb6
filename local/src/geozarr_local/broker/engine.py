"""The local broker's delivery engine: journal, per-Trigger queues, retries, dead letters.

Each matching Trigger's queue delivers an accepted event in binary mode with the Trigger's
timeout, parallelism and retries, and decides what to do with each answer exactly as
eventing-rabbitmq's dispatcher does (the table in `dispatch.py`): a reply is published back
into the broker, a non-retried 4xx is acked and dropped, and once retries are exhausted the
event goes to the Trigger's dead-letter queue, which delivers it to the `deadLetterSink` (the
failure recorder) with the `knativeerror*` extensions.

Nothing accepted is lost when the broker dies: on start it delivers again every journaled
event whose delivery was never acknowledged, as RabbitMQ redelivers unacked messages.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_local.broker.api import handler_for
from geozarr_local.broker.dispatch import NO_STATUS, Decision, Outcome, decide
from geozarr_local.broker.journal import BrokerState, matches_query
from geozarr_local.broker.routing import (
    Route,
    matching_routes,
)
from geozarr_pipeline.cloudevent_http import event_from_json, parse_event, utc_now
from geozarr_pipeline.errors import InvalidEvent

log = logging.getLogger(__name__)

MAX_LONG_POLL_SECONDS = 300.0
DEAD_LETTER_QUEUE_SUFFIX = ".dlq"


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
    def decision(self) -> Decision:
        return decide(self.status)

    def summary(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "started_at": self.started_at,
            "elapsed_s": round(self.elapsed_s, 4),
            "status": self.status,
            "error": self.error,
        }


@dataclass(frozen=True)
class DeliveryQueue:
    """A Trigger's queue, or its dead-letter queue (delivering to the deadLetterSink)."""

    name: str
    route: Route
    url: str
    dead_letters: bool = False


@dataclass
class Delivery:
    queue: DeliveryQueue
    event: CloudEvent
    seq: int


class LocalBroker:
    """Ingress, journal and per-Trigger worker pools; usable in-process too."""

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
        self._queues: dict[str, DeliveryQueue] = {}
        self._pending: dict[str, queue.Queue[Delivery | None]] = {}
        self._workers: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        for route in self.routes:
            url = route.target_url(self.subscribers)
            if url is None:
                log.warning(
                    "trigger has no subscriber URL: its events are journaled, not delivered",
                    extra={"trigger": route.name, "subscriber": route.subscriber},
                )
                continue
            self._add_queue(
                DeliveryQueue(route.name, route, url), route.parallelism or default_parallelism
            )
            sink = route.delivery.dead_letter_sink
            sink_url = self.subscribers.get(sink) if sink else None
            if sink_url is not None:
                name = route.name + DEAD_LETTER_QUEUE_SUFFIX
                self._add_queue(DeliveryQueue(name, route, sink_url, dead_letters=True), 1)
        self._redeliver_unfinished()
        for worker in self._workers:
            worker.start()

    def _add_queue(self, delivery_queue: DeliveryQueue, workers: int) -> None:
        self._queues[delivery_queue.name] = delivery_queue
        pending: queue.Queue[Delivery | None] = queue.Queue()
        self._pending[delivery_queue.name] = pending
        for index in range(workers):
            self._workers.append(
                threading.Thread(
                    target=self._work,
                    args=(pending,),
                    name=f"deliver-{delivery_queue.name}-{index}",
                    daemon=True,
                )
            )

    def _redeliver_unfinished(self) -> None:
        """Queue again every journaled delivery that was never acknowledged (a crash)."""
        unfinished = self.state.unfinished()
        served = [(entry, name) for entry, name in unfinished if name in self._pending]
        for entry, name in served:
            event = event_from_json(entry["event"])
            self._pending[name].put(Delivery(self._queues[name], event, int(entry["seq"])))
        if served:
            log.warning(
                "redelivering unacknowledged events",
                extra={
                    "deliveries": len(served),
                    "seqs": sorted({int(e["seq"]) for e, _ in served}),
                },
            )
        unserved = sorted({name for _, name in unfinished if name not in self._pending})
        if unserved:
            log.warning(
                "unacknowledged events kept for queues without a subscriber URL",
                extra={"queues": unserved, "deliveries": len(unfinished) - len(served)},
            )

    # Publishing -----------------------------------------------------------------------------

    def publish(
        self, event: CloudEvent, origin: str = "ingress", parent: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Journal an event and queue it for every matching Trigger; never blocks on delivery."""
        attributes = event.get_attributes()
        matched = matching_routes(self.routes, attributes)
        served = [r.name for r in matched if r.name in self._pending]
        unserved = [r.name for r in matched if r.name not in self._pending]
        entry = self.state.append_event(event, origin, parent, served, unserved)
        if entry is None:
            return None
        self._enqueue(entry, event, served)
        log.info(
            "event accepted",
            extra={
                "seq": entry["seq"],
                "origin": origin,
                "event_type": attributes.get("type"),
                "event_id": attributes.get("id"),
                "subject": attributes.get("subject"),
                "routes": served,
                "duplicate": entry["duplicate"],
            },
        )
        return entry

    def _enqueue(self, entry: Mapping[str, Any], event: CloudEvent, names: Sequence[str]) -> None:
        for name in names:
            self._pending[name].put(Delivery(self._queues[name], event, int(entry["seq"])))

    # Delivery -------------------------------------------------------------------------------

    def _work(self, deliveries: queue.Queue[Delivery | None]) -> None:
        while not self._stopping.is_set():
            delivery = deliveries.get()
            if delivery is None:
                return
            try:
                self._deliver(delivery)
            except Exception as exc:
                # A bug of the broker itself: the delivery ends as a dead letter, never stalls.
                log.exception("delivery crashed", extra={"queue": delivery.queue.name})
                crashed = Attempt(0, utc_now(), 0.0, error=f"broker crash: {exc!r}")
                self._failed(delivery, [crashed], {"knativeerrorcode": str(NO_STATUS)})

    def _attempt(self, delivery: Delivery, number: int) -> Attempt:
        headers, body = binary_request(delivery.event)
        timeout = delivery.queue.route.delivery.timeout or self.default_timeout
        started_at = utc_now()
        started = time.monotonic()
        try:
            response = self._client.post(
                delivery.queue.url, headers=headers, content=body, timeout=timeout
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
        """One message of a queue, from first attempt to acknowledgement.

        Returning without an acknowledgement (the broker is stopping) leaves the delivery
        unfinished in the journal, so the next start delivers it again.
        """
        spec = delivery.queue.route.delivery
        attempts: list[Attempt] = []
        for number in range(1, spec.retry + 2):
            if number > 1 and self._stopping.wait(spec.backoff(number - 1)):
                return
            attempt = self._attempt(delivery, number)
            attempts.append(attempt)
            if self._stopping.is_set() and attempt.decision is not Decision.ACK:
                return
            log.info(
                "delivery attempt",
                extra={
                    "queue": delivery.queue.name,
                    "event_id": delivery.event["id"],
                    "attempt": number,
                    "status": attempt.status,
                    "error": attempt.error,
                    "decision": attempt.decision.value,
                },
            )
            if attempt.decision is Decision.ACK:
                self._succeeded(delivery, attempts)
                return
            if attempt.decision is Decision.DROP:
                log.warning(
                    "event acked and dropped: a status the dispatcher does not retry",
                    extra={
                        "queue": delivery.queue.name,
                        "event_id": delivery.event["id"],
                        "status": attempt.status,
                    },
                )
                self._acknowledge(delivery, attempts, Outcome.DROPPED)
                return
        self._failed(
            delivery, attempts, {"knativeerrorcode": str(attempts[-1].status or NO_STATUS)}
        )

    def _parent(self, delivery: Delivery) -> dict[str, Any]:
        return {
            "seq": delivery.seq,
            "queue": delivery.queue.name,
            "trigger": delivery.queue.route.name,
            "source": str(delivery.event["source"]),
            "id": str(delivery.event["id"]),
        }

    def _succeeded(self, delivery: Delivery, attempts: list[Attempt]) -> None:
        last = attempts[-1]
        try:
            reply = self._reply_event(last)
        except InvalidEvent as exc:
            # The SDK's client.Request drops a reply it cannot decode: the message is acked.
            last.error = f"reply dropped, not a valid CloudEvent: {exc.message}"
            log.warning(
                "reply dropped: not a valid CloudEvent (as upstream)",
                extra={"queue": delivery.queue.name, "event_id": delivery.event["id"]},
            )
            reply = None
        if reply is None:
            self._acknowledge(delivery, attempts, Outcome.DELIVERED)
            return
        if delivery.queue.route.matches(reply.get_attributes()):
            last.error = f"reply of type {reply['type']!r} matches its own Trigger (a loop)"
            # dispatcher.go sets knativeerrordata to a value the SDK refuses: only dest and code.
            self._failed(delivery, attempts, {"knativeerrorcode": str(last.status)})
            return
        entry = self.publish(reply, origin="reply", parent=self._parent(delivery))
        if entry is not None:
            self._acknowledge(delivery, attempts, Outcome.DELIVERED, reply_seq=entry["seq"])

    @staticmethod
    def _reply_event(attempt: Attempt) -> CloudEvent | None:
        """The CloudEvent in a 2xx reply: binary mode needs ce-specversion, as the SDK reads it."""
        content_type = attempt.headers.get("content-type", "")
        structured = content_type.startswith("application/cloudevents+json")
        if not structured and "ce-specversion" not in attempt.headers:
            return None
        return parse_event(attempt.headers, attempt.body)

    def _failed(
        self, delivery: Delivery, attempts: list[Attempt], extensions: Mapping[str, str]
    ) -> None:
        """Retries exhausted or reply unpublishable: to the dead-letter queue, or gone."""
        if delivery.queue.dead_letters:
            log.error(
                "dead letter lost: the dead-letter sink failed too (as upstream, it is acked)",
                extra={"queue": delivery.queue.name, "event_id": delivery.event["id"]},
            )
            self._acknowledge(delivery, attempts, Outcome.LOST)
            return
        dead_letter_queue = delivery.queue.name + DEAD_LETTER_QUEUE_SUFFIX
        dead = CloudEvent(
            {
                **delivery.event.get_attributes(),
                "knativeerrordest": delivery.queue.url,
                **extensions,
            },
            delivery.event.data,
        )
        queues = [dead_letter_queue] if dead_letter_queue in self._pending else []
        entry = self.state.append_event(dead, "dead-letter", self._parent(delivery), queues)
        if entry is None:
            return
        self._enqueue(entry, dead, queues)
        outcome = Outcome.DEAD_LETTERED if queues else Outcome.LOST
        self._acknowledge(delivery, attempts, outcome, dead_letter_seq=entry["seq"])
        log.warning(
            "event dead-lettered" if queues else "event lost: its Trigger has no dead-letter sink",
            extra={
                "queue": delivery.queue.name,
                "event_id": delivery.event["id"],
                "status": attempts[-1].status,
                "attempts": len(attempts),
                "dead_letter_seq": entry["seq"],
            },
        )

    def _acknowledge(
        self, delivery: Delivery, attempts: list[Attempt], outcome: Outcome, **extra: Any
    ) -> None:
        self.state.append_delivery(
            {
                "finished_at": utc_now(),
                "queue": delivery.queue.name,
                "trigger": delivery.queue.route.name,
                "subscriber": delivery.queue.route.subscriber,
                "url": delivery.queue.url,
                "seq": delivery.seq,
                "event": {
                    "type": str(delivery.event["type"]),
                    "source": str(delivery.event["source"]),
                    "id": str(delivery.event["id"]),
                    "subject": delivery.event.get("subject"),
                },
                "outcome": outcome.value,
                "attempts": [a.summary() for a in attempts],
                **extra,
            }
        )

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
                str(d.get(k) if k in ("trigger", "outcome", "queue") else d["event"].get(k)) == v
                for k, v in query.items()
            )
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
                "dead_letter_url": (
                    self._queues[r.name + DEAD_LETTER_QUEUE_SUFFIX].url
                    if r.name + DEAD_LETTER_QUEUE_SUFFIX in self._queues
                    else None
                ),
                "parallelism": r.parallelism,
                "manifest": str(r.manifest) if r.manifest else None,
            }
            for r in self.routes
        ]

    # Serving --------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> str:
        """Start the HTTP ingress in a background thread; returns its base URL."""
        server = ThreadingHTTPServer((host, port), handler_for(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="ingress", daemon=True
        ).start()
        bound_host, bound_port = server.server_address[:2]
        return f"http://{bound_host!s}:{bound_port}"

    def close(self, grace: float = 2.0) -> None:
        """Stop taking events, give in-flight deliveries `grace` seconds, then stop.

        A delivery still running is not acknowledged: the next start delivers it again.
        """
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for pending in self._pending.values():
            for _ in range(len(self._workers)):
                pending.put(None)
        deadline = time.monotonic() + grace
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.state.close()
        self._client.close()

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
