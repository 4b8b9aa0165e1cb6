"""The local AMQP bridge against a real RabbitMQ node and a real HTTP receiver."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pika
import pytest
import yaml

from geozarr_local.amqp_bridge import DEFAULT_SOURCE, InvalidMessage, to_event
from geozarr_local.processes import ManagedProcess, free_port, tcp_ready
from geozarr_pipeline.events import EventType
from tests.fixtures.rabbitmq import RabbitMQ, start_bridge
from tests.shared.submit.receiver import Receiver, receiver

LEGACY = {"source_url": "https://x.test/items/S2_A", "item_id": "S2_A", "collection": "c"}
CE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "fixed-id-1",
    "ce-source": "urn:publisher",
    "ce-type": EventType.CONVERT_REQUESTED.value,
    "ce-subject": "S2_A",
}


def props(
    headers: dict[str, object] | None = None, content_type: str = "application/json"
) -> pika.BasicProperties:
    return pika.BasicProperties(content_type=content_type, headers=headers)


def test_plain_message_becomes_a_rabbitmq_event_with_a_random_id() -> None:
    body = json.dumps(LEGACY).encode()
    first = to_event(props(), body)
    second = to_event(props(), body)
    assert first.headers["ce-type"] == EventType.RABBITMQ_MESSAGE.value
    assert first.headers["ce-source"] == DEFAULT_SOURCE
    assert first.event_id != second.event_id
    assert first.body == body


def test_cloudevent_headers_pass_through_unchanged() -> None:
    encoded = {k: v.encode() for k, v in CE_HEADERS.items()}
    out = to_event(props(encoded), b'{"a": 1}')
    assert {k: out.headers[k] for k in CE_HEADERS} == CE_HEADERS
    assert out.event_id == "fixed-id-1"
    amqp_binding = {f"cloudEvents:{k[3:]}": v for k, v in CE_HEADERS.items()}
    assert to_event(props(amqp_binding), b"{}").headers["ce-id"] == "fixed-id-1"


def test_structured_message_passes_through() -> None:
    envelope = {"specversion": "1.0", "id": "s-1", "source": "urn:x", "type": "t", "data": {}}
    out = to_event(
        props(content_type="application/cloudevents+json"), json.dumps(envelope).encode()
    )
    assert out.headers == {"content-type": "application/cloudevents+json"}
    assert out.event_id == "s-1"


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        (None, b"not json", "not JSON"),
        (None, b"[1, 2]", "not a JSON object"),
        ({k: v for k, v in CE_HEADERS.items() if k != "ce-id"}, b"{}", "lack id"),
        ({**CE_HEADERS, "ce-specversion": "0.3"}, b"{}", "specversion"),
    ],
)
def test_invalid_messages_are_refused_with_a_reason(
    headers: dict[str, object] | None, body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        to_event(props(headers), body)


# --- against RabbitMQ -------------------------------------------------------------------


@pytest.fixture
def publish(rabbitmq: RabbitMQ) -> Iterator[Callable[..., None]]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    channel = connection.channel()

    def send(body: bytes, headers: dict[str, object] | None = None, **kwargs: object) -> None:
        properties = pika.BasicProperties(
            content_type=str(kwargs.get("content_type", "application/json")), headers=headers
        )
        channel.basic_publish("geozarr", "eopf.items.convert", body, properties=properties)

    try:
        yield send
    finally:
        connection.close()


def queue_depth(rabbitmq: RabbitMQ, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of a queue, from rabbitmqctl."""
    out = rabbitmq.ctl("list_queues", "-q", "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue} not found in:\n{out}")


def wait_depth(
    rabbitmq: RabbitMQ, queue: str, expected: tuple[int, int], timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while (depth := queue_depth(rabbitmq, queue)) != expected:
        assert time.monotonic() < deadline, f"{queue}: {depth}, expected {expected}"
        time.sleep(0.3)


REPO_SOURCE = Path(__file__).resolve().parents[2] / "knative" / "base" / "source.yaml"


def fast_source(directory: Path, retry: int = 2) -> Path:
    """The repo's RabbitmqSource with tiny backoff, for the bridge to read its retries from."""
    directory.mkdir(parents=True, exist_ok=True)
    documents = [d for d in yaml.safe_load_all(REPO_SOURCE.read_text()) if d]
    for document in documents:
        if document.get("kind") == "RabbitmqSource":
            document["spec"]["delivery"] = {
                "retry": retry,
                "backoffPolicy": "exponential",
                "backoffDelay": "PT0.05S",
            }
    (directory / "source.yaml").write_text(yaml.safe_dump_all(documents))
    return directory


def dead_queue(queue: str) -> str:
    return queue + "-dead"


@pytest.fixture
def bridged(rabbitmq: RabbitMQ, tmp_path: Path) -> Iterator[tuple[Receiver, ManagedProcess, str]]:
    queue = f"bridge-{uuid.uuid4().hex[:8]}"
    with receiver() as sink:
        bridge = start_bridge(
            rabbitmq.amqp_url,
            sink.url,
            queue,
            tmp_path / "bridge.log",
            manifests=fast_source(tmp_path / "manifests"),
        )
        try:
            yield sink, bridge, queue
        finally:
            bridge.stop()


def test_bridge_forwards_valid_and_rejects_invalid_without_blocking(
    rabbitmq: RabbitMQ,
    bridged: tuple[Receiver, ManagedProcess, str],
    publish: Callable[..., None],
) -> None:
    sink, bridge, queue = bridged
    publish(json.dumps(LEGACY).encode())
    publish(b"{not json")
    publish(b"{}", headers={k: v for k, v in CE_HEADERS.items() if k != "ce-source"})
    publish(json.dumps(LEGACY).encode(), headers=dict(CE_HEADERS))
    publish(json.dumps({**LEGACY, "item_id": "S2_B"}).encode())

    requests = sink.wait_for(3)
    time.sleep(0.5)
    assert len(sink.requests) == 3
    events = [r.event() for r in requests]
    assert [e["type"] for e in events] == [
        EventType.RABBITMQ_MESSAGE.value,
        EventType.CONVERT_REQUESTED.value,
        EventType.RABBITMQ_MESSAGE.value,
    ]
    assert events[1]["id"] == "fixed-id-1"
    assert events[1]["subject"] == "S2_A"
    wait_depth(rabbitmq, queue, (0, 0))
    wait_depth(rabbitmq, dead_queue(queue), (2, 0))
    log = bridge.log_tail(200)
    rejected = [json.loads(line) for line in log.splitlines() if "message rejected" in line]
    assert len(rejected) == 2
    assert "not JSON" in rejected[0]["msg"]
    assert rejected[0]["routing_key"] == "eopf.items.convert"
    assert "lack source" in rejected[1]["msg"]


@pytest.mark.parametrize(("status", "requests"), [(400, 1), (500, 1), (503, 3), (429, 3)])
def test_an_event_the_broker_does_not_accept_goes_to_the_dead_letter_queue(
    rabbitmq: RabbitMQ,
    bridged: tuple[Receiver, ManagedProcess, str],
    publish: Callable[..., None],
    status: int,
    requests: int,
) -> None:
    """As the RabbitmqSource adapter: the SDK's retried statuses, then nack without requeue."""
    sink, bridge, queue = bridged
    sink.status = status
    publish(json.dumps(LEGACY).encode())
    sink.wait_for(requests)
    wait_depth(rabbitmq, queue, (0, 0))
    wait_depth(rabbitmq, dead_queue(queue), (1, 0))
    time.sleep(0.3)
    assert len(sink.requests) == requests
    assert "message dead-lettered" in bridge.log_tail()


def test_a_message_is_kept_in_the_dead_letter_queue_while_the_broker_is_down(
    rabbitmq: RabbitMQ, tmp_path: Path, publish: Callable[..., None]
) -> None:
    queue = f"bridge-{uuid.uuid4().hex[:8]}"
    down = f"http://127.0.0.1:{free_port()}/"
    bridge = start_bridge(
        rabbitmq.amqp_url,
        down,
        queue,
        tmp_path / "bridge.log",
        manifests=fast_source(tmp_path / "manifests"),
    )
    try:
        publish(json.dumps(LEGACY).encode())
        wait_depth(rabbitmq, dead_queue(queue), (1, 0))
        wait_depth(rabbitmq, queue, (0, 0))
        assert bridge.log_tail().count("broker unreachable") == 3
    finally:
        bridge.stop()


def test_health_is_503_until_consuming(tmp_path: Path) -> None:
    health = free_port()
    no_rabbitmq = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    bridge = start_bridge(
        no_rabbitmq, "http://127.0.0.1:9/", "q", tmp_path / "b.log", health_port=health, wait=False
    )
    try:
        bridge.wait_ready(tcp_ready(health), timeout=30)
        answer = httpx.get(f"http://127.0.0.1:{health}/healthz", trust_env=False)
        assert answer.status_code == 503
        assert answer.json()["consuming"] is False
        assert httpx.get(f"http://127.0.0.1:{health}/other", trust_env=False).status_code == 404
    finally:
        bridge.stop()
