"""Replay failure records: send each record's input event again, through the broker.

Idempotent: a record is never replayed once resolved, and a record whose stage has since
succeeded for its item (the stores say so, as `status` reads them) is marked resolved and
skipped. The record itself is never changed or deleted, so a replay that fails to send loses
nothing: the record stays open and the command reports the error. Each replay is a new event
(id derived from the record and the replay's number, extension `replayof` = record id): the
broker treats it as new work, and a repeated failure of it is a record of its own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_pipeline.cloudevent_http import event_from_json
from geozarr_pipeline.errors import PipelineError
from geozarr_pipeline.events import Stage, is_safe_id
from geozarr_pipeline.failures.records import KNATIVE_ERROR_PREFIX, FailureRecord
from geozarr_pipeline.failures.resolutions import ResolutionLog, Transport
from geozarr_pipeline.operations.status import Sources, item_status
from geozarr_pipeline.redaction import redact

REPLAY_NAMESPACE = uuid.UUID("5f0c1e8a-9b2d-4c37-8e61-2a7d4b9c0f13")
REPLAY_OF = "replayof"


class ReplayFailed(RuntimeError):
    """The replay event could not be sent (the record stays open)."""


class Sender(Protocol):
    transport: Transport
    target: str

    def send(self, event: CloudEvent) -> None: ...


@dataclass
class HttpSender:
    """POST a binary-mode CloudEvent to a broker ingress (or a function)."""

    target: str
    timeout: float = 30.0
    transport: Transport = "http"

    def send(self, event: CloudEvent) -> None:
        import httpx

        headers, body = to_binary(event)
        try:
            response = httpx.post(
                self.target, headers=headers, content=body, timeout=self.timeout, trust_env=False
            )
        except httpx.HTTPError as exc:
            raise ReplayFailed(f"cannot reach {self.target}: {exc}") from exc
        if response.status_code >= 300:
            raise ReplayFailed(
                f"{self.target} refused the replay ({response.status_code}): {response.text[:200]}"
            )


@dataclass
class AmqpSender:
    """Publish on the `geozarr` exchange with the event in ce-* headers (the SDK's binary
    form), confirmed and persistent; the RabbitmqSource passes it through unchanged."""

    target: str
    exchange: str
    routing_key: str
    transport: Transport = "amqp"

    def send(self, event: CloudEvent) -> None:
        import pika
        import pika.exceptions

        headers, body = to_binary(event)
        content_type = headers.pop("content-type", "application/json")
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.target))
        except pika.exceptions.AMQPError as exc:
            raise ReplayFailed(f"cannot connect to {self.target.split('@')[-1]}: {exc!r}") from exc
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(
                self.exchange,
                self.routing_key,
                body,
                properties=pika.BasicProperties(
                    content_type=content_type,
                    delivery_mode=pika.DeliveryMode.Persistent,
                    headers=headers,
                    message_id=str(event["id"]),
                ),
                mandatory=True,
            )
        except pika.exceptions.AMQPError as exc:
            raise ReplayFailed(f"publish to exchange {self.exchange!r} failed: {exc!r}") from exc
        finally:
            if connection.is_open:
                connection.close()


def replay_event(record: FailureRecord, number: int) -> CloudEvent:
    """The record's input event as a new event: a fresh id, `replayof`, no dead-letter marks."""
    original = event_from_json(record.input_event)
    attributes: dict[str, Any] = {
        k: v for k, v in original.get_attributes().items() if not k.startswith(KNATIVE_ERROR_PREFIX)
    }
    attributes["id"] = str(uuid.uuid5(REPLAY_NAMESPACE, f"{record.record_id}\n{number}"))
    attributes[REPLAY_OF] = record.record_id
    attributes.pop("time", None)
    return CloudEvent(attributes, original.data)


def stage_succeeded(sources: Sources, record: FailureRecord) -> bool:
    """Whether the record's stage is done for its item now."""
    if record.stage is None or not (is_safe_id(record.item_id) and is_safe_id(record.collection)):
        return False
    status = item_status(sources, record.collection, record.item_id, with_size=False)
    return any(s.stage == record.stage and s.state == "done" for s in status.stages)


@dataclass
class ReplayOutcome:
    record_id: str
    item_id: str | None
    stage: str | None
    action: str  # replayed, resolved, skipped, failed, would replay
    detail: str = ""
    event_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.__dict__.items() if v not in (None, "")}
        if "detail" in fields:
            fields["detail"] = redact(fields["detail"])
        return fields


def superseding(records: list[FailureRecord]) -> dict[str, str]:
    """record id -> the newest record of a replay of it that failed again.

    A replayed record is superseded by the newest failure of its replays, and so is every
    older failure of a replay of the same record: one open record per chain, never more.
    """
    children: dict[str, list[str]] = {}
    for record in records:  # oldest first
        replayed = record.input_event.get("attributes", {}).get(REPLAY_OF)
        if isinstance(replayed, str) and replayed != record.record_id:
            children.setdefault(replayed, []).append(record.record_id)
    newer: dict[str, str] = {}
    for parent, ids in children.items():
        newest = ids[-1]
        newer[parent] = newest
        newer.update({older: newest for older in ids[:-1]})
    return newer


def replay_one(
    record: FailureRecord,
    sources: Sources,
    log: ResolutionLog,
    sender: Sender | None,
    superseded_by: dict[str, str] | None = None,
    *,
    again: bool = False,
) -> ReplayOutcome:
    """Replay one record (sender None: a dry run).

    A record whose replay failed again is superseded by that failure's own record: it is
    resolved as such and not sent again, so repeated replays never multiply the records.
    """
    outcome = ReplayOutcome(record.record_id, record.item_id, record.stage, "skipped")
    if log.resolution(record.record_id) is not None:
        outcome.detail = "already resolved"
        return outcome
    newer = (superseded_by or {}).get(record.record_id)
    if newer is not None:
        if sender is not None:
            log.resolve(record.record_id, f"superseded by record {newer} (its replay failed)")
        outcome.action, outcome.detail = "superseded", f"by record {newer}"
        return outcome
    if stage_succeeded(sources, record):
        log.resolve(record.record_id, f"the {record.stage} stage has succeeded since")
        outcome.action, outcome.detail = "resolved", f"{record.stage} is done for the item"
        return outcome
    if "data_excerpt" in record.input_event:
        outcome.detail = "its input event was too large to keep whole: it cannot be replayed"
        return outcome
    replays = log.replays(record.record_id)
    if replays and not again:
        outcome.detail = (
            f"replayed at {replays[-1].replayed_at}, not resolved yet: the replay may still be "
            "in flight (--again sends it once more)"
        )
        return outcome
    event = replay_event(record, len(replays) + 1)
    outcome.event_id = str(event["id"])
    if sender is None:
        outcome.action = "would replay"
        return outcome
    try:
        sender.send(event)
    except ReplayFailed as exc:
        outcome.action, outcome.detail = "failed", str(exc)
        return outcome
    outcome.action = "replayed"
    try:
        log.add_replay(record.record_id, outcome.event_id, sender.transport, sender.target)
    except PipelineError as exc:
        outcome.detail = f"sent, but the replay was not noted: {exc}"
    return outcome


def wait_resolved(
    outcomes: list[ReplayOutcome],
    records: dict[str, FailureRecord],
    sources: Sources,
    log: ResolutionLog,
    timeout: float,
    poll: float = 1.0,
) -> None:
    """Until each replayed record's stage is done (then mark it resolved), or the timeout."""
    stages = {stage.value for stage in Stage}
    pending = [o for o in outcomes if o.action == "replayed" and o.stage in stages]
    deadline = time.monotonic() + timeout
    while pending:
        for outcome in list(pending):
            if stage_succeeded(sources, records[outcome.record_id]):
                log.resolve(outcome.record_id, "replayed and succeeded")
                outcome.action = "resolved"
                outcome.detail = "replayed; the stage has succeeded"
                pending.remove(outcome)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(poll)
    for outcome in pending:
        outcome.detail = (
            f"replayed; not done within {timeout:g} s (status shows its progress; replay "
            "marks it resolved once the stage has succeeded)"
        )
