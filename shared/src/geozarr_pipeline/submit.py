"""Submit runs: a convert.requested CloudEvent over HTTP, or a message on the AMQP exchange.

    geozarr-pipeline submit http --url http://127.0.0.1:8080 --source-url URL --collection C
    geozarr-pipeline submit amqp --amqp-url amqp://... --items items.jsonl [--format legacy]

HTTP posts to a broker ingress (Knative or the local broker) or to a function, in binary
(default) or structured mode. AMQP publishes on the `geozarr` exchange (routing key
`eopf.items.convert`) either a CloudEvent in `ce-*` headers or the legacy JSON body that
operators publish. CloudEvent ids are derived from the item (and `--run-id`), so submitting the
same item twice yields the same id: a redelivery, not a second run.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from pydantic import ValidationError

from geozarr_pipeline.events import (
    GEOZARR_EXCHANGE,
    SPEC_VERSION,
    ConvertRequested,
    EventType,
    validation_problems,
)
from geozarr_pipeline.redaction import redact

SUBMIT_SOURCE = "urn:eopf-geozarr:submit"
SUBMIT_NAMESPACE = uuid.UUID("0d7f1a52-3c1e-4f7e-9a3b-5b8e2f6c9d41")
DEFAULT_EXCHANGE = GEOZARR_EXCHANGE
DEFAULT_ROUTING_KEY = "eopf.items.convert"

Mode = Literal["binary", "structured"]
AmqpFormat = Literal["cloudevent", "legacy"]


class SubmitError(RuntimeError):
    """A submission that cannot be made (bad item, unreachable endpoint, refused event)."""


@dataclass(frozen=True)
class Submission:
    """One item to run, with the CloudEvent attributes it is sent with."""

    request: ConvertRequested
    event_id: str
    event_type: str = EventType.CONVERT_REQUESTED.value
    source: str = SUBMIT_SOURCE

    @property
    def subject(self) -> str:
        return self.request.resolved_item_id

    @property
    def data(self) -> dict[str, Any]:
        return self.request.model_dump(mode="json", exclude_defaults=True) | {
            "item_id": self.subject
        }

    def event(self) -> CloudEvent:
        return CloudEvent(self.attributes(), self.data)

    def attributes(self) -> dict[str, str]:
        return {
            "specversion": SPEC_VERSION,
            "id": self.event_id,
            "source": self.source,
            "type": self.event_type,
            "subject": self.subject,
            "datacontenttype": "application/json",
        }


def event_id_for(request: ConvertRequested, run_id: str = "") -> str:
    """The same item (and run id) always gets the same CloudEvent id."""
    key = json.dumps(
        {"run": run_id, **request.model_dump(mode="json"), "item_id": request.resolved_item_id},
        sort_keys=True,
    )
    return str(uuid.uuid5(SUBMIT_NAMESPACE, key))


def make_submission(item: dict[str, Any], run_id: str = "") -> Submission:
    try:
        request = ConvertRequested.model_validate(item)
    except ValidationError as exc:
        raise SubmitError(f"invalid item {item!r}: {validation_problems(exc, 'item')}") from exc
    return Submission(request=request, event_id=event_id_for(request, run_id))


def read_items(path: Path, collection: str | None = None) -> list[dict[str, Any]]:
    """Items from a JSON array, JSON lines, or plain lines of source URLs (with --collection).

    Blank lines and lines starting with '#' are skipped.
    """
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise SubmitError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(loaded, list) or not all(isinstance(i, dict) for i in loaded):
            raise SubmitError(f"{path}: a JSON file must hold an array of objects")
        return [dict(i) for i in loaded]
    items: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise SubmitError(f"{path}:{number}: not valid JSON: {exc}") from exc
            items.append(item)
        else:
            if collection is None:
                raise SubmitError(f"{path}:{number}: a plain URL line needs --collection")
            items.append({"source_url": line})
    if collection is not None:
        items = [{"collection": collection, **item} for item in items]
    return items


# --- HTTP -------------------------------------------------------------------------------------


def http_request(submission: Submission, mode: Mode) -> tuple[dict[str, str], bytes]:
    """The HTTP request of a submission, encoded by the CloudEvents SDK."""
    event = submission.event()
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    return {k: str(v) for k, v in headers.items()}, body or b""


def submit_http(
    submissions: Iterable[Submission], url: str, mode: Mode = "binary", timeout: float = 30.0
) -> list[dict[str, Any]]:
    """POST each event; a 4xx/5xx answer stops the batch with the receiver's message."""
    results: list[dict[str, Any]] = []
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for submission in submissions:
            headers, body = http_request(submission, mode)
            try:
                response = client.post(url, headers=headers, content=body)
            except httpx.HTTPError as exc:
                raise SubmitError(f"cannot reach {url}: {exc}") from exc
            if response.status_code >= 400:
                raise SubmitError(
                    f"{url} refused event {submission.event_id} ({submission.subject}): "
                    f"{response.status_code} {response.text[:500]}"
                )
            result: dict[str, Any] = {
                "id": submission.event_id,
                "subject": submission.subject,
                "status": response.status_code,
            }
            seq = _journal_seq(response)
            if seq is not None:
                result["seq"] = seq
            results.append(result)
    return results


def _journal_seq(response: httpx.Response) -> int | None:
    """The local broker's journal position of the accepted event; None from other receivers."""
    try:
        answer = response.json()
    except ValueError:
        return None
    seq = answer.get("seq") if isinstance(answer, dict) else None
    return seq if isinstance(seq, int) else None


# --- AMQP -------------------------------------------------------------------------------------


def amqp_message(submission: Submission, fmt: AmqpFormat) -> tuple[dict[str, str], bytes]:
    """AMQP headers and body: a binary-mode CloudEvent in ce-* headers, or the legacy body."""
    body = json.dumps(submission.data).encode()
    if fmt == "legacy":
        return {}, body
    headers, encoded = to_binary(submission.event())
    # In AMQP the content type is a message property (datacontenttype): only ce-* go in headers.
    return {k: str(v) for k, v in headers.items() if k.lower().startswith("ce-")}, encoded or body


def submit_amqp(
    submissions: Iterable[Submission],
    amqp_url: str,
    *,
    exchange: str = DEFAULT_EXCHANGE,
    routing_key: str = DEFAULT_ROUTING_KEY,
    fmt: AmqpFormat = "cloudevent",
) -> list[dict[str, Any]]:
    """Publish persistent messages with publisher confirms; an unroutable message is an error."""
    import pika
    import pika.exceptions

    results: list[dict[str, Any]] = []
    try:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    except pika.exceptions.AMQPError as exc:
        raise SubmitError(f"cannot connect to {amqp_url.split('@')[-1]}: {exc!r}") from exc
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for submission in submissions:
            headers, body = amqp_message(submission, fmt)
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                headers=headers or None,
                message_id=submission.event_id,
            )
            try:
                channel.basic_publish(
                    exchange, routing_key, body, properties=properties, mandatory=True
                )
            except pika.exceptions.UnroutableError as exc:
                raise SubmitError(
                    f"no queue is bound to exchange {exchange!r} for {routing_key!r}: "
                    "is the RabbitmqSource (or the local AMQP bridge) running?"
                ) from exc
            except pika.exceptions.AMQPChannelError as exc:
                raise SubmitError(f"publish to exchange {exchange!r} failed: {exc!r}") from exc
            results.append(
                {
                    "id": submission.event_id if fmt == "cloudevent" else None,
                    "subject": submission.subject,
                    "exchange": exchange,
                    "routing_key": routing_key,
                    "format": fmt,
                }
            )
    finally:
        if connection.is_open:
            connection.close()
    return results


# --- CLI --------------------------------------------------------------------------------------


def _submissions(args: argparse.Namespace) -> list[Submission]:
    if args.items is not None:
        items = read_items(Path(args.items), args.collection)
    else:
        if not args.source_url or not args.collection:
            raise SubmitError("give --source-url and --collection, or --items FILE")
        item: dict[str, Any] = {"source_url": args.source_url, "collection": args.collection}
        if args.item_id:
            item["item_id"] = args.item_id
        items = [item]
    if args.force:
        items = [{**i, "options": {**i.get("options", {}), "force": True}} for i in items]
    if not items:
        raise SubmitError("no items to submit")
    return [make_submission(item, args.run_id) for item in items]


def _print(results: list[dict[str, Any]]) -> None:
    for result in results:
        sys.stdout.write(json.dumps(result) + "\n")


def _wait(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Wait for each item's augment.done of this run: journal entries before it do not count."""
    from geozarr_pipeline.broker_client import wait_for_event

    for result in results:
        if "seq" not in result:
            raise SubmitError(f"{args.url} is not the local broker: --wait cannot follow the run")
        entry = wait_for_event(
            args.url,
            event_type=EventType.AUGMENT_DONE.value,
            subject=result["subject"],
            timeout=args.wait,
            after=result["seq"] - 1,
        )
        sys.stdout.write(json.dumps({"done": result["subject"], "event": entry["event"]}) + "\n")


def _http_command(args: argparse.Namespace) -> int:
    try:
        results = submit_http(_submissions(args), args.url, mode=args.mode, timeout=args.timeout)
        _print(results)
        if args.wait:
            _wait(args, results)
    except (SubmitError, OSError, RuntimeError, httpx.HTTPError) as exc:
        sys.stderr.write(f"submit: {redact(str(exc))}\n")
        return 1
    return 0


def _amqp_command(args: argparse.Namespace) -> int:
    try:
        submissions = _submissions(args)
        _print(
            submit_amqp(
                submissions,
                args.amqp_url,
                exchange=args.exchange,
                routing_key=args.routing_key,
                fmt=args.format,
            )
        )
    except (SubmitError, OSError) as exc:
        sys.stderr.write(f"submit: {redact(str(exc))}\n")
        return 1
    return 0


def _add_item_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source-url", help="source STAC item URL or Zarr URL")
    parser.add_argument("--collection", help="collection id (also the default for --items)")
    parser.add_argument("--item-id", help="item id (default: derived from the URL)")
    parser.add_argument(
        "--items",
        metavar="FILE",
        help="many items: a JSON array, JSON lines ({source_url, collection, item_id}), or "
        "one source URL per line with --collection",
    )
    parser.add_argument(
        "--run-id",
        default="",
        help="salt for the deterministic event ids: the same item with a new run id is a new run",
    )
    parser.add_argument(
        "--force", action="store_true", help="ask convert to redo an existing output"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("submit", help="submit runs over HTTP or AMQP")
    transports = parser.add_subparsers(dest="transport", required=True)

    http = transports.add_parser(
        "http", help="POST convert.requested CloudEvents to a broker ingress or a function"
    )
    http.add_argument("--url", required=True, help="broker ingress URL (or a function URL)")
    http.add_argument("--mode", choices=("binary", "structured"), default="binary")
    http.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
    http.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="local broker only: wait up to SECONDS for each item's augment.done",
    )
    _add_item_arguments(http)
    http.set_defaults(func=_http_command)

    amqp = transports.add_parser("amqp", help="publish on the RabbitMQ exchange")
    amqp.add_argument("--amqp-url", required=True, help="e.g. amqp://user:pass@host:5672/%%2F")
    amqp.add_argument("--exchange", default=DEFAULT_EXCHANGE)
    amqp.add_argument("--routing-key", default=DEFAULT_ROUTING_KEY)
    amqp.add_argument(
        "--format",
        choices=("cloudevent", "legacy"),
        default="cloudevent",
        help="cloudevent: ce-* headers and a deterministic id; legacy: the plain JSON body "
        "operators publish (arrives as dev.knative.rabbitmq.event)",
    )
    _add_item_arguments(amqp)
    amqp.set_defaults(func=_amqp_command)
