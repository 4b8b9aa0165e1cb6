"""`status` and `failures replay` against the local stack: real stages, broker and recorder."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from geozarr_local.demo import convert_requested_event
from geozarr_local.sample.build import write_sample
from geozarr_local.sample.layout import item_url
from geozarr_local.stack import LocalStack
from geozarr_pipeline.broker_client import RunFailed
from geozarr_pipeline.cli import main
from geozarr_pipeline.events import EventType
from tests.fixtures.stack import ChainRun


@pytest.fixture
def stack_env(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """The CLI reads the same GEOZARR_* settings as the stack's functions."""
    for name, value in local_stack.settings_env().items():
        monkeypatch.setenv(name, value)
    return local_stack


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def wait_for_record(root: Path, item_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in root.glob("*.json"):
            record: dict[str, Any] = json.loads(path.read_text())
            if record.get("item_id") == item_id:
                return record
        time.sleep(0.2)
    raise AssertionError(f"no failure record for {item_id}")


def test_status_of_a_finished_run_shows_every_stage_done_with_timings(
    stack_env: LocalStack, chain_run: ChainRun, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = chain_run.sample
    status = cli_json(capsys, "status", sample.item_id, "--collection", sample.collection)

    assert status["state"] == "done"
    stages = {s["stage"]: s for s in status["stages"]}
    assert list(stages) == ["convert", "register", "augment"]
    for stage in stages.values():
        assert stage["state"] == "done"
        assert stage["attempts"] >= 1
        assert stage["started_at"] <= stage["finished_at"]
        assert stage["duration_s"] > 0
        assert stage["problem"] is None
    assert stages["convert"]["started_at"] < stages["register"]["started_at"]
    assert stages["register"]["started_at"] < stages["augment"]["started_at"]
    assert status["store_url"] == chain_run.convert_done["output_url"]
    store = Path(status["store_url"])
    files = [p for p in store.rglob("*") if p.is_file()]
    assert status["store_objects"] == len(files)
    assert status["store_bytes"] == sum(p.stat().st_size for p in files)
    assert status["item_url"] == chain_run.augment_done["item_url"]
    assert status["viewer_url"] == chain_run.augment_done["viewer_url"]
    assert status["converter_version"]

    # Without --collection the item is found; the listing counts it as done.
    assert main(["status", sample.item_id]) == 0
    text = capsys.readouterr().out
    assert f"{sample.collection}/{sample.item_id}: done" in text
    assert "viewer: " + chain_run.augment_done["viewer_url"] in text
    listing = cli_json(capsys, "status", "--collection", sample.collection)
    assert any(s["item_id"] == sample.item_id and s["state"] == "done" for s in listing)
    future = cli_json(capsys, "status", "--collection", sample.collection, "--since", "2999-01-01")
    assert future == []
    since = stages["convert"]["started_at"].replace("Z", "+00:00")
    recent = cli_json(capsys, "status", "--collection", sample.collection, "--since", since)
    assert sample.item_id in {s["item_id"] for s in recent}


def test_a_missing_source_is_failed_then_replayed_once_fixed_and_resolved(
    stack_env: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = stack_env
    item_id = f"S2A_MSIL2A_REPLAY_{uuid.uuid4().hex[:6].upper()}"
    collection = "sentinel-2-l2a"
    source = item_url(stack.sample_url, collection, item_id)
    after = stack.publish(convert_requested_event(source, item_id, collection)) - 1
    with pytest.raises(RunFailed, match="source_not_found"):
        stack.wait_for_chain(item_id, timeout=120, after=after)
    record = wait_for_record(stack.failures_root, item_id)

    status = cli_json(capsys, "status", item_id, "--collection", collection)
    convert = status["stages"][0]
    assert status["state"] == "convert failed"
    assert convert["state"] == "failed"
    assert convert["problem"]["code"] == "source_not_found"
    assert convert["failure_record"] == record["record_id"]
    assert [s["state"] for s in status["stages"][1:]] == ["not started", "not started"]

    # Nothing changes while the cause is not fixed: a dry run only says what it would do.
    assert main(["failures", "replay", record["record_id"], "--dry-run"]) == 0
    assert "would replay" in capsys.readouterr().out

    # The source now exists: the replay runs the whole chain and resolves the record.
    write_sample(stack.samples_dir, "l2a", scale=0.05, item_id=item_id)
    replayed = cli_json(
        capsys,
        "failures",
        "replay",
        record["record_id"],
        "--url",
        stack.broker_url,
        "--wait",
        "300",
    )
    assert replayed["action"] == "resolved", replayed
    stack.wait_for_chain(item_id, timeout=300, after=after)
    done = cli_json(capsys, "status", item_id, "--collection", collection)
    assert done["state"] == "done"
    assert done["stages"][0]["failure_record"] is None
    states = {r["record_id"]: r["state"] for r in cli_json(capsys, "failures", "list")}
    assert states[record["record_id"]] == "resolved"
    converted = [e for e in stack.events(EventType.CONVERT_DONE.value, item_id) if e["seq"] > after]
    marker = Path(done["store_url"] + ".done.json").read_text()

    # Replaying again (one record or all) sends nothing: the record is resolved.
    replay_again = ["failures", "replay", "--item-id", item_id, "--url", stack.broker_url]
    assert main([*replay_again, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [again] = [o for o in lines if o["record_id"] == record["record_id"]]
    assert again["action"] == "skipped"
    assert again["detail"] == "already resolved"
    time.sleep(2)
    assert stack.events(EventType.CONVERT_DONE.value, item_id)[-len(converted) :] == converted
    assert Path(done["store_url"] + ".done.json").read_text() == marker


def test_replay_skips_and_resolves_a_record_whose_stage_succeeded_since(
    stack_env: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """The failure was followed by a successful run that was not a replay."""
    stack = stack_env
    item_id = f"S2A_MSIL2A_RERUN_{uuid.uuid4().hex[:6].upper()}"
    collection = "sentinel-2-l2a"
    source = item_url(stack.sample_url, collection, item_id)
    after = stack.publish(convert_requested_event(source, item_id, collection)) - 1
    with pytest.raises(RunFailed):
        stack.wait_for_chain(item_id, timeout=120, after=after)
    record = wait_for_record(stack.failures_root, item_id)
    write_sample(stack.samples_dir, "l2a", scale=0.05, item_id=item_id)
    rerun = stack.publish(convert_requested_event(source, item_id, collection)) - 1
    stack.wait_for_chain(item_id, timeout=300, after=rerun)
    seen = len(stack.events(EventType.CONVERT_REQUESTED.value, item_id))

    outcome = cli_json(
        capsys, "failures", "replay", "--item-id", item_id, "--url", stack.broker_url
    )
    assert outcome["record_id"] == record["record_id"]
    assert outcome["action"] == "resolved"
    assert len(stack.events(EventType.CONVERT_REQUESTED.value, item_id)) == seen
    open_records = cli_json(capsys, "failures", "list", "--open", "--item-id", item_id)
    assert open_records == []


def test_a_replay_that_cannot_be_sent_keeps_the_record_open(
    stack_env: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = stack_env
    item_id = f"S2A_MSIL2A_UNSENT_{uuid.uuid4().hex[:6].upper()}"
    source = item_url(stack.sample_url, "sentinel-2-l2a", item_id)
    after = stack.publish(convert_requested_event(source, item_id, "sentinel-2-l2a")) - 1
    with pytest.raises(RunFailed):
        stack.wait_for_chain(item_id, timeout=120, after=after)
    record = wait_for_record(stack.failures_root, item_id)

    code = main(["failures", "replay", record["record_id"], "--url", "http://127.0.0.1:9/"])
    out = capsys.readouterr().out
    assert code == 1
    assert "failed" in out
    assert "cannot reach" in out
    [listed] = cli_json(capsys, "failures", "list", "--item-id", item_id)
    assert listed["state"] == "open"
    assert listed["record_id"] == record["record_id"]
