"""End to end through RabbitMQ: messages on the `geozarr` exchange run the chain to augment.done.

A legacy JSON message (no ce-* headers, arriving as dev.knative.rabbitmq.event) and a CloudEvent
message (ce-* headers) are published with routing key eopf.items.convert; the local AMQP bridge
feeds them to the local broker, which runs convert -> register -> augment. An invalid message
published between them is rejected and does not block the queue.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from geozarr_local.processes import ManagedProcess
from geozarr_local.sample.layout import item_url
from geozarr_local.stack import LocalStack
from geozarr_pipeline.events import EventType
from geozarr_pipeline.submit import make_submission, submit_amqp
from tests.fixtures.rabbitmq import RabbitMQ, start_bridge
from tests.fixtures.stack import add_sample


@pytest.fixture
def bridge(rabbitmq: RabbitMQ, local_stack: LocalStack, tmp_path: Path) -> Iterator[ManagedProcess]:
    queue = f"chain-{uuid.uuid4().hex[:8]}"
    process = start_bridge(
        rabbitmq.amqp_url, local_stack.broker_url + "/", queue, tmp_path / "bridge.log"
    )
    try:
        yield process
    finally:
        process.stop()


def test_legacy_and_cloudevent_messages_run_the_chain(
    rabbitmq: RabbitMQ, local_stack: LocalStack, bridge: ManagedProcess
) -> None:
    suffix = uuid.uuid4().hex[:8].upper()
    legacy = add_sample(local_stack, f"S2A_MSIL2A_AMQPLEGACY_{suffix}")
    cloudevent = add_sample(local_stack, f"S2A_MSIL2A_AMQPCE_{suffix}")

    legacy_item = {
        "source_url": item_url(local_stack.sample_url, legacy.collection, legacy.item_id),
        "item_id": legacy.item_id,
        "collection": legacy.collection,
    }
    submit_amqp([make_submission(legacy_item)], rabbitmq.amqp_url, fmt="legacy")

    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    try:
        connection.channel().basic_publish(
            "geozarr",
            "eopf.items.convert",
            b"this is not an item",
            properties=pika.BasicProperties(content_type="text/plain"),
        )
    finally:
        connection.close()

    ce_submission = make_submission(
        {
            "source_url": item_url(
                local_stack.sample_url, cloudevent.collection, cloudevent.item_id
            ),
            "item_id": cloudevent.item_id,
            "collection": cloudevent.collection,
        }
    )
    submit_amqp([ce_submission], rabbitmq.amqp_url, fmt="cloudevent")

    for sample in (legacy, cloudevent):
        done = local_stack.wait_for(EventType.AUGMENT_DONE.value, sample.item_id, timeout=240)
        assert done["item_id"] == sample.item_id
        assert done["collection"] == sample.collection

    legacy_in = local_stack.events(EventType.RABBITMQ_MESSAGE.value)
    assert any(e["event"]["data"].get("item_id") == legacy.item_id for e in legacy_in)
    ce_in = local_stack.events(EventType.CONVERT_REQUESTED.value, cloudevent.item_id)
    assert [e["event"]["attributes"]["id"] for e in ce_in] == [ce_submission.event_id]

    rejected = [
        json.loads(line) for line in bridge.log_tail(400).splitlines() if "message rejected" in line
    ]
    assert len(rejected) == 1
    assert "not JSON" in rejected[0]["msg"]


def _ce_headers(**changes: object) -> dict[str, object]:
    return {
        "ce-specversion": "1.0",
        "ce-id": f"poison-{uuid.uuid4().hex[:8]}",
        "ce-source": "urn:test:poison",
        "ce-type": EventType.CONVERT_REQUESTED.value,
        **changes,
    }


POISON: list[tuple[str, bytes, dict[str, object] | None, str]] = [
    ("deep-plain", b"[" * 100_000 + b"]" * 100_000, None, "application/json"),
    ("deep-object", b'{"a":' * 50 + b"1" + b"}" * 50, None, "application/json"),
    (
        "deep-structured",
        b'{"specversion":"1.0","id":"d","source":"s","type":"t","data":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        None,
        "application/cloudevents+json",
    ),
    (
        "non-ascii-header",
        b"{}",
        _ce_headers(**{"ce-subject": "S2A_\u00e9t\u00e9"}),
        "application/json",
    ),
    ("crlf-header", b"{}", _ce_headers(**{"ce-subject": "a\r\nX-Injected: 1"}), "application/json"),
    ("bad-header-name", b"{}", _ce_headers(**{"ce-bad name": "x"}), "application/json"),
    ("over-size", b'{"pad": "' + b"x" * 300_000 + b'"}', None, "application/json"),
    ("deep-with-ce-headers", b"[" * 100_000 + b"]" * 100_000, _ce_headers(), "application/json"),
]


def test_poison_messages_are_rejected_and_the_messages_behind_them_run_the_chain(
    rabbitmq: RabbitMQ, local_stack: LocalStack, bridge: ManagedProcess
) -> None:
    """Each poison message is rejected with one log line; the bridge never exits, nothing
    is requeued, and valid messages published after them all reach augment.done."""
    suffix = uuid.uuid4().hex[:8].upper()
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    try:
        channel = connection.channel()
        for _name, body, headers, content_type in POISON:
            channel.basic_publish(
                "geozarr",
                "eopf.items.convert",
                body,
                properties=pika.BasicProperties(content_type=content_type, headers=headers),
            )
    finally:
        connection.close()
    samples = [add_sample(local_stack, f"S2A_MSIL2A_AFTERPOISON{n}_{suffix}") for n in range(2)]
    submissions = [
        make_submission(
            {
                "source_url": item_url(local_stack.sample_url, s.collection, s.item_id),
                "item_id": s.item_id,
                "collection": s.collection,
            }
        )
        for s in samples
    ]
    submit_amqp(submissions[:1], rabbitmq.amqp_url, fmt="legacy")
    submit_amqp(submissions[1:], rabbitmq.amqp_url, fmt="cloudevent")
    for sample in samples:
        done = local_stack.wait_for(EventType.AUGMENT_DONE.value, sample.item_id, timeout=240)
        assert done["item_id"] == sample.item_id

    assert bridge.process is not None
    assert bridge.process.poll() is None, bridge.log_tail()
    lines = [json.loads(line) for line in bridge.log_tail(400).splitlines() if line.startswith("{")]
    rejected = [line for line in lines if "message rejected" in line["msg"]]
    assert len(rejected) == len(POISON), [r["msg"] for r in rejected]
    reasons = " | ".join(r["msg"] for r in rejected)
    for fragment in ("nests deeper", "cannot carry", "letters and digits", "limited to"):
        assert fragment in reasons, reasons
    assert not any("broker unreachable" in line["msg"] for line in lines)
    assert all(len(json.dumps(line)) < 2048 for line in rejected)
