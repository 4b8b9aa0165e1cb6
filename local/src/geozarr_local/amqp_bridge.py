"""The local counterpart of the RabbitmqSource: AMQP messages in, CloudEvents to the broker.

    python -m geozarr_local.amqp_bridge --amqp-url amqp://guest:guest@127.0.0.1:5672/%2F \\
        --broker-url http://127.0.0.1:8080 [--health-port N]

Declares a durable queue bound to the `geozarr` topic exchange with `eopf.items.*` and turns
each message into a CloudEvent as eventing-rabbitmq's source does: a message without `ce-*`
headers becomes `dev.knative.rabbitmq.event` with a random id and the body as data; a message
with `ce-*` headers passes its CloudEvent through unchanged. The event is POSTed in binary
mode to the broker ingress with the RabbitmqSource's `spec.delivery` retries (read from the
same manifest, `knative/base/source.yaml`), and the message is acknowledged once the broker
accepted it. As the upstream adapter does (`geozarr_local/broker/dispatch.py`), a message that
is not a valid event, or that the broker does not accept after the retries, is nacked without
requeue: the queue's dead-letter exchange (`<queue>-dlx`, declared here with its queue
`<queue>-dead`) keeps it, so the queue never blocks and nothing is lost while the broker is
down.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_local.broker.dispatch import source_retries
from geozarr_local.broker.routing import DeliverySpec, ManifestError, load_source_delivery
from geozarr_pipeline.events import (
    GEOZARR_EXCHANGE,
    MAX_EVENT_BYTES,
    MAX_JSON_DEPTH,
    REQUIRED_ATTRIBUTES,
    SPEC_VERSION,
    EventType,
    json_depth,
)
from geozarr_pipeline.jsonhttp import JsonRequestHandler
from geozarr_pipeline.logs import configure_logging
from geozarr_pipeline.redaction import quoted

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel
    from pika.spec import Basic, BasicProperties

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = GEOZARR_EXCHANGE
DEFAULT_QUEUE = "geozarr-items-local"
DEAD_LETTER_EXCHANGE_SUFFIX = "-dlx"
DEAD_LETTER_QUEUE_SUFFIX = "-dead"
# The adapter's defaults for a source without spec.delivery: no retry, PT0.2S backoff.
DEFAULT_DELIVERY = DeliverySpec(retry=0, backoff_policy="exponential", backoff_delay=0.2)
DEFAULT_ROUTING_KEYS = ("eopf.items.*",)
DEFAULT_SOURCE = "/apis/v1/namespaces/local/rabbitmqsources/geozarr-items"
REQUIRED = REQUIRED_ATTRIBUTES
# Prefixes under which publishers put CloudEvent attributes in AMQP headers: eventing-rabbitmq
# uses ce-; the CloudEvents AMQP binding uses cloudEvents: (or cloudEvents_).
HEADER_PREFIXES = ("ce-", "ce_", "cloudevents:", "cloudevents_")
STRUCTURED = "application/cloudevents+json"
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,64}")


class InvalidMessage(ValueError):
    """A message that can never become an event: rejected without requeue."""


@dataclass(frozen=True)
class Outgoing:
    """The binary-mode HTTP request for one message."""

    headers: dict[str, str]
    body: bytes
    event_id: str
    event_type: str


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def ce_attributes(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """CloudEvent attributes carried in AMQP headers, by attribute name."""
    found: dict[str, str] = {}
    for key, value in (headers or {}).items():
        lowered = key.lower()
        for prefix in HEADER_PREFIXES:
            if lowered.startswith(prefix) and len(lowered) > len(prefix):
                found[lowered[len(prefix) :]] = _text(value)
                break
    return found


def _json_body(body: bytes, what: str) -> Any:
    """The body as JSON, bounded like the broker bounds an event (size, nesting)."""
    try:
        value = json.loads(body)
    except RecursionError as exc:
        raise InvalidMessage(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:
        raise InvalidMessage(f"{what} is not JSON ({quoted(str(exc), 200)})") from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidMessage(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _bounded_if_json(body: bytes) -> None:
    """Binary-mode data: not necessarily JSON, but if it is, bounded like the broker's."""
    try:
        value = json.loads(body)
    except RecursionError as exc:
        raise InvalidMessage(f"data nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError:
        return
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidMessage(f"data nests deeper than {MAX_JSON_DEPTH} levels")


def _header_value(name: str, value: str) -> str:
    """An attribute as an HTTP header value: printable ASCII only (no CR/LF, no controls)."""
    if not all(32 <= ord(c) < 127 for c in value):
        raise InvalidMessage(
            f"ce-{quoted(name, 60)} holds characters an HTTP header cannot carry "
            "(control characters, CR/LF or non-ASCII)"
        )
    return value


def _attribute_name(name: str) -> str:
    """CloudEvents attribute names are lower-case letters and digits (spec 1.0)."""
    if not _ATTRIBUTE_NAME.fullmatch(name):
        raise InvalidMessage(
            f"header ce-{quoted(name, 60)}: attribute names are letters and digits only"
        )
    return name


def to_event(properties: BasicProperties, body: bytes, *, source: str = DEFAULT_SOURCE) -> Outgoing:
    """Translate one AMQP message, or raise InvalidMessage naming what is wrong."""
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidMessage(f"body of {len(body)} bytes; events are limited to {MAX_EVENT_BYTES}")
    content_type = _header_value("content-type", (properties.content_type or "").strip())
    attributes = ce_attributes(properties.headers)
    if not attributes and content_type.lower().startswith(STRUCTURED):
        envelope = _json_body(body, "structured CloudEvent body")
        if not isinstance(envelope, dict):
            raise InvalidMessage("structured CloudEvent body is not a JSON object")
        missing = [a for a in REQUIRED if not envelope.get(a)]
        if missing:
            raise InvalidMessage(f"structured CloudEvent lacks {', '.join(missing)}")
        return Outgoing(
            {"content-type": content_type}, body, str(envelope["id"]), str(envelope["type"])
        )
    if attributes:
        missing = [a for a in REQUIRED if not attributes.get(a)]
        if missing:
            raise InvalidMessage(f"ce-* headers lack {', '.join(missing)}")
        if attributes["specversion"] != SPEC_VERSION:
            raise InvalidMessage(
                f"unsupported ce-specversion {quoted(attributes['specversion'], 40)}"
            )
        _bounded_if_json(body)
        headers = {
            f"ce-{_attribute_name(k)}": _header_value(k, v)
            for k, v in attributes.items()
            if k != "datacontenttype"
        }
        headers["content-type"] = _header_value(
            "datacontenttype",
            attributes.get("datacontenttype") or content_type or "application/json",
        )
        return Outgoing(headers, body, attributes["id"], attributes["type"])
    # A plain message: what operators publish. Its body must be the JSON object convert takes.
    data = _json_body(body, "body (a message without ce-* headers)")
    if not isinstance(data, dict):
        raise InvalidMessage("body is not a JSON object and there are no ce-* headers")
    event_id = str(uuid.uuid4())
    event = CloudEvent(
        {
            "specversion": SPEC_VERSION,
            "id": event_id,
            "source": source,
            "type": EventType.RABBITMQ_MESSAGE.value,
            "datacontenttype": "application/json",
        },
        body,  # bytes: the SDK passes the body through as the source adapter does
    )
    headers, encoded = to_binary(event)
    return Outgoing(
        {k: str(v) for k, v in headers.items()},
        encoded or body,
        event_id,
        EventType.RABBITMQ_MESSAGE.value,
    )


class Bridge:
    """Consume the queue, post to the broker, ack/reject; stop() from any thread."""

    def __init__(
        self,
        amqp_url: str,
        broker_url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        queue: str = DEFAULT_QUEUE,
        routing_keys: Sequence[str] = DEFAULT_ROUTING_KEYS,
        source: str = DEFAULT_SOURCE,
        prefetch: int = 1,
        delivery: DeliverySpec = DEFAULT_DELIVERY,
        post_timeout: float = 30.0,
    ) -> None:
        self.amqp_url = amqp_url
        self.broker_url = broker_url
        self.exchange = exchange
        self.queue = queue
        self.routing_keys = tuple(routing_keys)
        self.source = source
        self.prefetch = prefetch
        self.delivery = delivery
        self.dead_letter_exchange = queue + DEAD_LETTER_EXCHANGE_SUFFIX
        self.dead_letter_queue = queue + DEAD_LETTER_QUEUE_SUFFIX
        self.stopping = threading.Event()
        self.consuming = threading.Event()
        self.counts = {"forwarded": 0, "rejected": 0, "dead_lettered": 0}
        self._client = httpx.Client(timeout=post_timeout, trust_env=False)

    def stop(self) -> None:
        self.stopping.set()

    def _declare(self, channel: BlockingChannel) -> None:
        channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        channel.exchange_declare(self.dead_letter_exchange, exchange_type="fanout", durable=True)
        channel.queue_declare(self.dead_letter_queue, durable=True)
        channel.queue_bind(self.dead_letter_queue, self.dead_letter_exchange)
        channel.queue_declare(
            self.queue,
            durable=True,
            arguments={"x-dead-letter-exchange": self.dead_letter_exchange},
        )
        for key in self.routing_keys:
            channel.queue_bind(self.queue, self.exchange, routing_key=key)
        channel.basic_qos(prefetch_count=self.prefetch)

    def _post(self, outgoing: Outgoing) -> int | None:
        """The broker's last status (None if never reached), with the source's retries."""
        status: int | None = None
        for attempt in range(1, self.delivery.retry + 2):
            if attempt > 1 and self.stopping.wait(self.delivery.backoff(attempt - 1)):
                break
            try:
                response = self._client.post(
                    self.broker_url, headers=outgoing.headers, content=outgoing.body
                )
            except httpx.LocalProtocolError as exc:
                # The request this message makes cannot be sent: the message's fault.
                raise InvalidMessage(f"cannot be sent as an HTTP request: {exc}") from exc
            except httpx.HTTPError as exc:
                status = None
                log.warning(
                    "broker unreachable",
                    extra={"attempt": attempt, "error": str(exc), "broker_url": self.broker_url},
                )
                continue
            status = response.status_code
            if not source_retries(status):
                if not 200 <= status < 300:
                    log.error(
                        "the broker refused the event",
                        extra={
                            "event_id": outgoing.event_id,
                            "status": status,
                            "answer": quoted(response.text, 300),
                        },
                    )
                return status
        return status

    def on_message(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        context = {
            "routing_key": method.routing_key,
            "delivery_tag": method.delivery_tag,
            "message_id": quoted(str(properties.message_id), 100)
            if properties.message_id
            else None,
        }
        try:
            outgoing = to_event(properties, body, source=self.source)
        except Exception as exc:  # noqa: BLE001  # whatever a message makes fail is its own fault
            self._reject(channel, method, context, body, exc)
            return
        try:
            status = self._post(outgoing)
        except InvalidMessage as exc:
            self._reject(channel, method, context, body, exc)
            return
        except Exception as exc:  # noqa: BLE001  # our side (configuration, client): keep it
            log.error(
                "message requeued: the bridge cannot post it",
                extra={**context, "event_id": outgoing.event_id, "error": quoted(repr(exc))},
            )
            channel.basic_nack(method.delivery_tag, requeue=True)
            self.stopping.wait(1.0)
            return
        if status is not None and 200 <= status < 300:
            channel.basic_ack(method.delivery_tag)
            self.counts["forwarded"] += 1
            log.info(
                "message forwarded",
                extra={**context, "event_id": outgoing.event_id, "event_type": outgoing.event_type},
            )
            return
        channel.basic_nack(method.delivery_tag, requeue=False)
        self.counts["dead_lettered"] += 1
        log.error(
            f"message dead-lettered to {self.dead_letter_exchange}: the broker did not accept it",
            extra={**context, "event_id": outgoing.event_id, "status": status},
        )

    def _reject(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        context: dict[str, Any],
        body: bytes,
        exc: Exception,
    ) -> None:
        """Reject a message that can never become an event: to the DLX, one log line."""
        reason = str(exc) if isinstance(exc, InvalidMessage) else f"{type(exc).__name__}: {exc}"
        log.error(
            f"message rejected to {self.dead_letter_exchange}: {quoted(reason, 300)}",
            extra={
                **context,
                "reason": quoted(reason, 300),
                "body_head": quoted(body[:4096].decode(errors="replace"), 200),
            },
        )
        channel.basic_nack(method.delivery_tag, requeue=False)
        self.counts["rejected"] += 1

    def run(self) -> None:
        """Consume until stop(); reconnect after a lost connection."""
        try:
            self._consume_until_stopped()
        finally:
            self._client.close()

    def _consume_until_stopped(self) -> None:
        import pika  # here, not at import: the CLI lists this command without loading pika
        import pika.exceptions

        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
            except pika.exceptions.AMQPConnectionError as exc:
                log.warning("cannot connect to RabbitMQ; retrying", extra={"error": repr(exc)})
                self.stopping.wait(1.0)
                continue
            try:
                channel = connection.channel()
                self._declare(channel)
                channel.basic_consume(self.queue, self.on_message, auto_ack=False)
                self.consuming.set()
                log.info(
                    "amqp bridge consuming",
                    extra={
                        "exchange": self.exchange,
                        "queue": self.queue,
                        "routing_keys": list(self.routing_keys),
                        "broker_url": self.broker_url,
                    },
                )
                while not self.stopping.is_set():
                    connection.process_data_events(time_limit=0.2)
            except pika.exceptions.AMQPError as exc:
                log.warning("RabbitMQ connection lost; reconnecting", extra={"error": repr(exc)})
                self.stopping.wait(1.0)
            finally:
                self.consuming.clear()
                if connection.is_open:
                    connection.close()


def _serve_health(bridge: Bridge, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(JsonRequestHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path != "/healthz":
                self._send_error(404, "not_found", "GET /healthz")
                return
            ready = bridge.consuming.is_set()
            self._send_json(200 if ready else 503, {"consuming": ready, **bridge.counts})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amqp-url", required=True, help="e.g. amqp://guest:guest@127.0.0.1:5672/%%2F"
    )
    parser.add_argument("--broker-url", required=True, help="the local broker's ingress URL")
    parser.add_argument("--exchange", default=DEFAULT_EXCHANGE)
    parser.add_argument("--queue", default=DEFAULT_QUEUE)
    parser.add_argument(
        "--routing-key",
        action="append",
        default=None,
        help=f"binding key (repeatable; default {', '.join(DEFAULT_ROUTING_KEYS)})",
    )
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="ce-source of plain messages")
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument(
        "--manifests",
        type=Path,
        default=None,
        help="Knative manifests whose RabbitmqSource spec.delivery sets the retries "
        "(default: <repo>/knative/base)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="health endpoint address")
    parser.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="serve GET /healthz (200 once consuming) on this port",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from geozarr_local.broker.commands import default_manifests

    try:
        delivery = load_source_delivery(args.manifests or default_manifests())
    except ManifestError as exc:
        log.error("cannot start the amqp bridge", extra={"error": str(exc)})
        return 2
    bridge = Bridge(
        args.amqp_url,
        args.broker_url,
        exchange=args.exchange,
        queue=args.queue,
        routing_keys=args.routing_key or DEFAULT_ROUTING_KEYS,
        source=args.source,
        prefetch=args.prefetch,
        delivery=delivery,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        bridge.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server = _serve_health(bridge, args.host, args.health_port) if args.health_port else None
    started = time.monotonic()
    try:
        bridge.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info(
        "amqp bridge stopped",
        extra={**bridge.counts, "uptime_s": round(time.monotonic() - started, 1)},
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "amqp-bridge", help="feed the local broker from the geozarr AMQP exchange"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geozarr_local.amqp_bridge",
        description="Local counterpart of the RabbitmqSource: AMQP messages to the local broker.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
