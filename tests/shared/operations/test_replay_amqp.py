"""`failures replay --amqp-url`: the record's input event on the real `geozarr` exchange."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from cloudevents.http import CloudEvent

from geozarr_pipeline.cli import main
from geozarr_pipeline.cloudevent_http import build_failure
from geozarr_pipeline.errors import SourceNotFound
from geozarr_pipeline.events import EventType, Stage
from geozarr_pipeline.failures.records import record_from_event
from geozarr_pipeline.failures.store import FailureStore
from geozarr_pipeline.objects import FolderObjectStore
from geozarr_pipeline.operations.replay import REPLAY_OF
from tests.fixtures.rabbitmq import RabbitMQ

DATA = {"source_url": "https://example.com/items/S2A_AMQP", "collection": "sentinel-2-l2a"}


@pytest.fixture
def queue(rabbitmq: RabbitMQ) -> Iterator[tuple[pika.BlockingConnection, str]]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    channel = connection.channel()
    channel.exchange_declare("geozarr", exchange_type="topic", durable=True)
    name = f"replay-test-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(name, exclusive=True)
    channel.queue_bind(name, "geozarr", routing_key="eopf.items.*")
    yield connection, name
    connection.close()


def test_replay_over_amqp_publishes_a_new_event_and_keeps_count(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rabbitmq: RabbitMQ,
    queue: tuple[pika.BlockingConnection, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GEOZARR_OUTPUT_ROOT", str(tmp_path / "geozarr"))
    monkeypatch.setenv("GEOZARR_CATALOG_ROOT", str(tmp_path / "catalog"))
    original = CloudEvent(
        {
            "type": EventType.CONVERT_REQUESTED.value,
            "source": "urn:test",
            "id": "original-1",
            "subject": "S2A_AMQP",
        },
        DATA,
    )
    failure = build_failure(Stage.CONVERT, original, SourceNotFound("no item"))
    record = record_from_event(failure)
    assert FailureStore(FolderObjectStore(tmp_path / "geozarr" / "_failures")).put(record)
    connection, name = queue
    channel = connection.channel()

    assert main(["failures", "replay", record.record_id, "--dry-run"]) == 0
    assert "would replay" in capsys.readouterr().out
    assert channel.basic_get(name, auto_ack=True)[0] is None

    ids = []
    for _ in range(2):
        assert main(["failures", "replay", record.record_id, "--amqp-url", rabbitmq.amqp_url]) == 0
        assert "replayed" in capsys.readouterr().out
        method, properties, body = channel.basic_get(name, auto_ack=True)
        assert method is not None, "nothing was published"
        assert method.routing_key == "eopf.items.convert"
        headers = properties.headers
        assert headers["ce-type"] == EventType.CONVERT_REQUESTED.value
        assert headers["ce-source"] == "urn:test"
        assert headers[f"ce-{REPLAY_OF}"] == record.record_id
        assert json.loads(body) == DATA
        ids.append(headers["ce-id"])
    assert len(set(ids)) == 2
    assert "original-1" not in ids

    assert main(["failures", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["state"] == "replayed x2"


def test_replay_needs_one_transport_and_a_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GEOZARR_OUTPUT_ROOT", str(tmp_path))
    assert main(["failures", "replay", "--url", "http://127.0.0.1:9/"]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["failures", "replay", "--all"]) == 2
    assert "--url" in capsys.readouterr().err
    assert main(["failures", "replay", "no-such-record", "--url", "http://127.0.0.1:9/"]) == 1
    assert "no record no-such-record" in capsys.readouterr().err
