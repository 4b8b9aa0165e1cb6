"""Submission over HTTP (binary, structured) and AMQP (CloudEvent headers, legacy body)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pika
import pytest

from geozarr_local.processes import ManagedProcess, free_port, http_ready
from geozarr_pipeline.events import EventType
from geozarr_pipeline.submit import (
    SubmitError,
    make_submission,
    read_items,
    submit_amqp,
    submit_http,
)
from tests.fixtures.rabbitmq import RabbitMQ
from tests.shared.submit.receiver import receiver

ROOT = Path(__file__).resolve().parents[3]
CLI = str(Path(sys.executable).parent / "geozarr-pipeline")
ITEM = {
    "source_url": "https://stac.example.test/collections/c/items/S2A_MSIL2A_X",
    "collection": "sentinel-2-l2a",
}


def test_event_id_is_deterministic_per_item_and_run() -> None:
    first = make_submission(ITEM)
    assert make_submission(dict(ITEM)).event_id == first.event_id
    assert make_submission(ITEM, run_id="again").event_id != first.event_id
    other = make_submission({**ITEM, "collection": "other"})
    assert other.event_id != first.event_id
    assert first.subject == "S2A_MSIL2A_X"
    uuid.UUID(first.event_id)


def test_invalid_item_names_the_problem() -> None:
    with pytest.raises(SubmitError, match="collection"):
        make_submission({"source_url": "https://x.test/items/A"})
    with pytest.raises(SubmitError, match="item_id"):
        make_submission({**ITEM, "item_id": "../escape"})


def test_read_items_formats(tmp_path: Path) -> None:
    as_json = tmp_path / "items.json"
    as_json.write_text(json.dumps([ITEM, {**ITEM, "item_id": "B"}]))
    assert [i.get("item_id") for i in read_items(as_json)] == [None, "B"]
    lines = tmp_path / "items.jsonl"
    lines.write_text("# a comment\n" + json.dumps(ITEM) + "\n\n")
    assert read_items(lines) == [ITEM]
    urls = tmp_path / "urls.txt"
    urls.write_text("https://x.test/items/A\nhttps://x.test/items/B\n")
    with pytest.raises(SubmitError, match="--collection"):
        read_items(urls)
    assert read_items(urls, "c") == [
        {"collection": "c", "source_url": "https://x.test/items/A"},
        {"collection": "c", "source_url": "https://x.test/items/B"},
    ]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_http_modes_carry_the_same_event(mode: str) -> None:
    submission = make_submission(ITEM)
    with receiver() as sink:
        results = submit_http([submission], sink.url, mode=mode)  # type: ignore[arg-type]
        (request,) = sink.wait_for(1)
    assert results[0]["status"] == 202
    content_type = request.headers.get("content-type", "")
    if mode == "structured":
        assert content_type.startswith("application/cloudevents+json")
    else:
        assert request.headers.get("ce-id") == submission.event_id
    event = request.event()
    assert event["id"] == submission.event_id
    assert event["type"] == EventType.CONVERT_REQUESTED.value
    assert event["subject"] == "S2A_MSIL2A_X"
    data = event.data if isinstance(event.data, dict) else json.loads(event.data)
    assert data == {**ITEM, "item_id": "S2A_MSIL2A_X"}


def test_http_refusal_is_an_error_with_the_answer() -> None:
    with receiver() as sink:
        sink.status = 400
        with pytest.raises(SubmitError, match="400"):
            submit_http([make_submission(ITEM)], sink.url)


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        name="broker",
        command=[
            sys.executable,
            "-m",
            "geozarr_local.broker",
            "--port",
            str(port),
            "--manifests",
            str(ROOT / "knative" / "base"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        log_path=tmp_path / "broker.log",
    ).start()
    try:
        url = f"http://127.0.0.1:{port}"
        process.wait_ready(http_ready(url + "/healthz"), timeout=30)
        yield url
    finally:
        process.stop()


def test_cli_submits_a_list_to_the_local_broker(local_broker: str, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({**ITEM, "item_id": f"S2_{n}"}) for n in range(3)))
    for mode in ("binary", "structured"):
        result = subprocess.run(
            [CLI, "submit", "http", "--url", local_broker, "--items", str(items), "--mode", mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        printed = [json.loads(line) for line in result.stdout.splitlines()]
        assert [p["subject"] for p in printed] == ["S2_0", "S2_1", "S2_2"]
    journal = httpx.get(
        local_broker + "/events",
        params={"type": EventType.CONVERT_REQUESTED.value, "subject": "S2_1"},
        trust_env=False,
    ).json()
    # The same item sent twice (binary, then structured) carries one deterministic id.
    assert {e["event"]["attributes"]["id"] for e in journal} == {printed[1]["id"]}


def test_cli_reports_a_bad_item(local_broker: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "submit", "http", "--url", local_broker, "--source-url", "https://x.test/a"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "--collection" in result.stderr


@pytest.fixture
def bound_queue(rabbitmq: RabbitMQ) -> Iterator[tuple[pika.adapters.BlockingConnection, str]]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    channel = connection.channel()
    channel.exchange_declare("geozarr", exchange_type="topic", durable=True)
    queue = f"submit-test-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, exclusive=True)
    channel.queue_bind(queue, "geozarr", routing_key="eopf.items.*")
    try:
        yield connection, queue
    finally:
        connection.close()


def _get(connection: pika.adapters.BlockingConnection, queue: str) -> tuple[object, bytes]:
    channel = connection.channel()
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None, "no message on the queue"
    assert method.routing_key == "eopf.items.convert"
    return properties, body


def test_amqp_cloudevent_and_legacy_messages(
    rabbitmq: RabbitMQ, bound_queue: tuple[pika.adapters.BlockingConnection, str]
) -> None:
    connection, queue = bound_queue
    submission = make_submission(ITEM)
    submit_amqp([submission], rabbitmq.amqp_url, fmt="cloudevent")
    properties, body = _get(connection, queue)
    headers = properties.headers  # type: ignore[attr-defined]
    assert headers["ce-id"] == submission.event_id
    assert headers["ce-type"] == EventType.CONVERT_REQUESTED.value
    assert headers["ce-specversion"] == "1.0"
    assert json.loads(body)["collection"] == "sentinel-2-l2a"

    submit_amqp([submission], rabbitmq.amqp_url, fmt="legacy")
    properties, body = _get(connection, queue)
    assert not properties.headers  # type: ignore[attr-defined]
    assert json.loads(body) == {**ITEM, "item_id": "S2A_MSIL2A_X"}


def test_amqp_unroutable_message_is_an_error(rabbitmq: RabbitMQ) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    connection.channel().exchange_declare("geozarr", exchange_type="topic", durable=True)
    connection.close()
    with pytest.raises(SubmitError, match="no queue is bound"):
        submit_amqp([make_submission(ITEM)], rabbitmq.amqp_url, routing_key="nobody.listens")


def test_cli_wait_reports_a_chain_that_does_not_finish(local_broker: str) -> None:
    result = subprocess.run(
        [
            CLI,
            "submit",
            "http",
            "--url",
            local_broker,
            "--wait",
            "1",
            "--source-url",
            ITEM["source_url"],
            "--collection",
            ITEM["collection"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[0])["subject"] == "S2A_MSIL2A_X"
    assert EventType.AUGMENT_DONE.value in result.stderr


def submit_and_wait(url: str, item_id: str) -> subprocess.CompletedProcess[str]:
    item = ["--item-id", item_id, "--source-url", ITEM["source_url"], "--collection", "c"]
    return subprocess.run(
        [CLI, "submit", "http", "--url", url, *item, "--wait", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_wait_follows_this_run_not_an_earlier_one(local_broker: str, tmp_path: Path) -> None:
    earlier = {
        "ce-specversion": "1.0",
        "ce-id": "earlier-run",
        "ce-source": "urn:test",
        "ce-type": EventType.AUGMENT_DONE.value,
        "ce-subject": "S2_EARLIER",
        "content-type": "application/json",
    }
    posted = httpx.post(local_broker, headers=earlier, content=b"{}", trust_env=False)
    assert posted.status_code == 202
    result = submit_and_wait(local_broker, "S2_EARLIER")
    assert result.returncode == 1, result.stdout
    assert json.loads(result.stdout.splitlines()[0])["seq"] == posted.json()["seq"] + 1
    assert "no eopf.geozarr.augment.done event for S2_EARLIER" in result.stderr

    with receiver() as function:
        elsewhere = submit_and_wait(function.url, "S2_ELSEWHERE")
    assert elsewhere.returncode == 1
    assert "not the local broker" in elsewhere.stderr
