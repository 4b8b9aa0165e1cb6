"""The failure recorder Service: failure events and dead letters become durable records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from geozarr_local.processes import free_port, module_command
from geozarr_pipeline.cloudevent_http import build_failure
from geozarr_pipeline.errors import InvalidInput, SourceNotFound
from geozarr_pipeline.events import EventType, Stage
from tests.fixtures.failures import RecorderFactory
from tests.fixtures.s3 import S3Server

CLI = str(Path(sys.executable).parent / "geozarr-pipeline")


def convert_requested(event_id: str = "run-1", **data: Any) -> CloudEvent:
    return CloudEvent(
        {
            "type": EventType.CONVERT_REQUESTED.value,
            "source": "urn:test:recorder",
            "id": event_id,
            "subject": "S2A_TEST",
            "datacontenttype": "application/json",
        },
        {"source_url": "https://example.com/items/S2A_TEST", "collection": "c", **data},
    )


def post(url: str, event: CloudEvent, structured: bool = False) -> httpx.Response:
    headers, body = to_structured(event) if structured else to_binary(event)
    return httpx.post(url + "/", headers=dict(headers), content=body, timeout=10)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, check=False, env=env, timeout=60
    )


def test_a_failure_event_is_recorded_once_with_its_whole_input(
    start_recorder: RecorderFactory,
) -> None:
    recorder = start_recorder()
    source = convert_requested(collection="../etc")
    failure = build_failure(
        Stage.CONVERT, source, InvalidInput("collection: not safe", field="collection")
    )

    first = post(recorder.url, failure)
    assert first.status_code == 202, first.text
    assert first.json()["created"] is True
    assert not any(k.startswith("ce-") for k in first.headers)
    again = post(recorder.url, failure, structured=True)
    assert again.json() == {**first.json(), "created": False}

    [record] = recorder.records()
    assert record["kind"] == "failure_event"
    assert record["stage"] == "convert"
    assert record["item_id"] is None
    assert record["problem"] == {
        "code": "invalid_input",
        "message": "collection: not safe",
        "field": "collection",
        "retryable": False,
        "status": 422,
    }
    assert record["input"] == {
        "id": "run-1",
        "type": EventType.CONVERT_REQUESTED.value,
        "source": "urn:test:recorder",
        "subject": "S2A_TEST",
    }
    assert record["input_event"]["data"]["collection"] == "../etc"
    assert record["input_event"]["attributes"]["id"] == "run-1"
    files = list(Path(recorder.root).glob("*.json"))
    assert [f.stem for f in files] == [record["record_id"]]

    listed = cli("failures", "list", "--root", recorder.root)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["RECORDED", "RECORD", "STAGE", "ITEM"]
    for expected in ("convert", "invalid_input", "collection", str(record["record_id"])):
        assert expected in row
    shown = cli("failures", "show", str(record["record_id"]), "--root", recorder.root)
    assert json.loads(shown.stdout) == record
    missing = cli("failures", "show", "no-such-record", "--root", recorder.root)
    assert missing.returncode == 1
    assert "no failure record" in missing.stderr


def test_a_dead_letter_is_recorded_as_the_event_to_replay(
    start_recorder: RecorderFactory,
) -> None:
    recorder = start_recorder()
    original = convert_requested("run-2", item_id="S2A_TEST")
    dead = CloudEvent(
        {
            **original.get_attributes(),
            "knativeerrordest": "http://geozarr-convert.geozarr.svc.cluster.local",
            "knativeerrorcode": "503",
        },
        original.data,
    )
    assert post(recorder.url, dead).status_code == 202
    [record] = recorder.records()
    assert record["kind"] == "dead_letter"
    assert record["stage"] == "convert"
    assert record["item_id"] == "S2A_TEST"
    assert record["collection"] == "c"
    assert record["problem"]["code"] == "retries_exhausted"
    assert record["problem"]["status"] == 503
    assert record["problem"]["retryable"] is True
    assert "geozarr-convert" in record["problem"]["message"]
    assert record["knative"] == {
        "knativeerrordest": "http://geozarr-convert.geozarr.svc.cluster.local",
        "knativeerrorcode": "503",
    }
    replay = record["input_event"]
    assert not any(k.startswith("knativeerror") for k in replay["attributes"])
    assert replay["attributes"]["id"] == "run-2"
    assert replay["data"] == original.data


def test_a_reply_that_could_not_be_published_and_a_timeout_are_named(
    start_recorder: RecorderFactory,
) -> None:
    recorder = start_recorder()
    for event_id, extensions in (
        ("run-3", {"knativeerrorcode": "200", "knativeerrordata": "broker ingress down"}),
        ("run-4", {"knativeerrorcode": "-1"}),
    ):
        original = convert_requested(event_id)
        dead = CloudEvent(
            {**original.get_attributes(), "knativeerrordest": "http://x", **extensions},
            original.data,
        )
        assert post(recorder.url, dead).status_code == 202
    records = {r["input"]["id"]: r for r in recorder.records()}  # type: ignore[index]
    assert records["run-3"]["problem"]["code"] == "reply_not_published"
    assert "broker ingress down" in records["run-3"]["problem"]["message"]
    assert records["run-4"]["problem"]["code"] == "retries_exhausted"
    assert records["run-4"]["problem"]["status"] is None
    assert "no HTTP answer" in records["run-4"]["problem"]["message"]


def test_records_go_to_an_s3_prefix_and_the_cli_reads_them_with_the_same_settings(
    start_recorder: RecorderFactory, s3_server: S3Server
) -> None:
    bucket = s3_server.create_bucket()
    env = {**s3_server.settings_env(), "GEOZARR_OUTPUT_ROOT": f"s3://{bucket}/stores"}
    recorder = start_recorder(root=f"s3://{bucket}/stores/_failures", env=env)
    source = convert_requested("run-5", item_id="S2A_S3")
    failure = build_failure(Stage.CONVERT, source, SourceNotFound("item gone"))
    assert post(recorder.url, failure).json()["created"] is True
    assert post(recorder.url, failure).json()["created"] is False
    [key] = s3_server.keys(bucket)
    assert key.startswith("stores/_failures/")
    assert key.endswith(".json")

    cli_env = {**os.environ, **env}
    listed = cli("failures", "list", "--json", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    [record] = json.loads(listed.stdout)
    assert record["item_id"] == "S2A_S3"
    assert record["problem"]["code"] == "source_not_found"
    filtered = cli(
        "failures", "list", "--json", "--code", "invalid_input", env={**os.environ, **env}
    )
    assert json.loads(filtered.stdout) == []


def test_an_unwritable_store_is_retryable_and_junk_is_refused(
    start_recorder: RecorderFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recorder = start_recorder(root=str(blocker / "failures"))
    failure = build_failure(Stage.CONVERT, convert_requested(), InvalidInput("bad"))
    response = post(recorder.url, failure)
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    junk = httpx.post(recorder.url + "/", content=b"{}", headers={"content-type": "text/plain"})
    assert junk.status_code == 400


def test_the_recorder_refuses_to_start_with_an_unusable_root(tmp_path: Path) -> None:
    command = module_command(
        "geozarr_pipeline.failures.recorder", free_port(), "--root", "ftp://host/failures"
    )
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2
    assert "must be a folder or an s3:// URL" in finished.stderr + finished.stdout
