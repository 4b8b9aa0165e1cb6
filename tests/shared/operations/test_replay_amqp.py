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

    replay = ["failures", "replay", record.record_id, "--amqp-url", rabbitmq.amqp_url]
    ids = []
    for again in ([], ["--again"]):
        assert main([*replay, *again]) == 0
        assert "replayed " in capsys.readouterr().out
        method, properties, body = channel.basic_get(name, auto_ack=True)
        assert method is not None, "nothing was published"
        assert method.routing_key == "eopf.items.convert"
        headers = properties.headers
        assert headers["ce-type"] == EventType.CONVERT_REQUESTED.value
        assert headers["ce-source"] == "urn:test"
        assert headers[f"ce-{REPLAY_OF}"] == record.record_id
        assert json.loads(body) == DATA
        ids.append(headers["ce-id"])
        # A replay in flight is not sent again unless asked for.
        assert main(replay) == 0
        assert "not resolved yet" in capsys.readouterr().out
        assert channel.basic_get(name, auto_ack=True)[0] is None
    assert len(set(ids)) == 2
    assert "original-1" not in ids

    assert main(["failures", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["state"] == "replayed x2"


def test_a_replay_that_failed_again_supersedes_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replayed twice, both replays failed (B, C): only C stays open, nothing is sent."""
    monkeypatch.setenv("GEOZARR_OUTPUT_ROOT", str(tmp_path / "geozarr"))
    monkeypatch.setenv("GEOZARR_CATALOG_ROOT", str(tmp_path / "catalog"))
    store = FailureStore(FolderObjectStore(tmp_path / "geozarr" / "_failures"))

    def failed(event_id: str, replay_of: str | None) -> str:
        attributes = {"type": EventType.CONVERT_REQUESTED.value, "source": "urn:t", "id": event_id}
        if replay_of:
            attributes[REPLAY_OF] = replay_of
        record = record_from_event(
            build_failure(Stage.CONVERT, CloudEvent(attributes, DATA), SourceNotFound("no"))
        )
        assert store.put(record)
        return record.record_id

    first = failed("e-1", None)
    second = failed("e-2", first)
    third = failed("e-3", first)
    assert main(["failures", "replay", "--all", "--url", "http://127.0.0.1:9/", "--json"]) == 1
    outcomes = {o["record_id"]: o for o in map(json.loads, capsys.readouterr().out.splitlines())}
    assert outcomes[first]["action"] == "superseded"
    assert outcomes[second]["action"] == "superseded"
    assert outcomes[first]["detail"] == outcomes[second]["detail"] == f"by record {third}"
    assert outcomes[third]["action"] == "failed"  # the one open record, and nothing listens
    assert main(["failures", "list", "--open", "--json"]) == 0
    assert [r["record_id"] for r in json.loads(capsys.readouterr().out)] == [third]


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
