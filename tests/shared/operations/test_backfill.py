"""`geozarr-pipeline backfill` against a real STAC API, a real HTTP receiver and RabbitMQ.

The source catalog: 30 items in three collections of the session's stac-fastapi-pgstac
(unique names per module run), with known dates, footprints and cloud cover.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pika
import pystac
import pytest
from packaging.version import Version

from geozarr_local.processes import LOOPBACK, free_port
from geozarr_pipeline.cli import main
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import ConvertDone, EventType
from geozarr_pipeline.operations.backfill import (
    Action,
    Cursor,
    PlanOptions,
    SearchParams,
    Summary,
    plan,
    plan_item,
    run_backfill,
)
from geozarr_pipeline.output_store import MARKER_FORMAT, output_for
from geozarr_pipeline.submit import Submission, make_submission, submit_http
from tests.fixtures.rabbitmq import RabbitMQ
from tests.fixtures.stac_api import StacApiInfo

# --- the source catalog ------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceCatalog:
    url: str
    a: str  # 20 items a-00..a-19: 2025-01-(i+1), lon i..i+0.5, cloud cover 5*i
    b: str  # 6 items: b-00..b-04 and b..bad (an id the event model refuses)
    c: str  # 4 items c-00..c-03, December 2024

    def item_url(self, collection: str, item_id: str) -> str:
        return f"{self.url}/collections/{collection}/items/{item_id}"


def _collection_body(collection: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection,
        "description": "backfill test source",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[None, None]]},
        },
        "links": [],
    }


def _item_body(
    collection: str, item_id: str, when: str, lon: float, cloud: float
) -> dict[str, Any]:
    box = [lon, 40.0, lon + 0.5, 40.5]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": item_id,
        "collection": collection,
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [box[0], box[1]],
                    [box[2], box[1]],
                    [box[2], box[3]],
                    [box[0], box[3]],
                    [box[0], box[1]],
                ]
            ],
        },
        "bbox": box,
        "properties": {"datetime": when, "eo:cloud_cover": cloud},
        "links": [
            {
                "rel": "self",
                "href": f"https://eopf.example.test/collections/{collection}/items/{item_id}",
            }
        ],
        "assets": {},
    }


@pytest.fixture(scope="module")
def source(stac_api: StacApiInfo) -> SourceCatalog:
    suffix = uuid.uuid4().hex[:8]
    catalog = SourceCatalog(
        url=stac_api.url, a=f"bf-a-{suffix}", b=f"bf-b-{suffix}", c=f"bf-c-{suffix}"
    )
    items: list[dict[str, Any]] = []
    for i in range(20):
        when = f"2025-01-{i + 1:02d}T10:00:00Z"
        items.append(_item_body(catalog.a, f"a-{i:02d}", when, float(i), 5.0 * i))
    for i, item_id in enumerate(["b-00", "b-01", "b-02", "b-03", "b-04", "b..bad"]):
        when = f"2025-02-{i + 1:02d}T10:00:00Z"
        items.append(_item_body(catalog.b, item_id, when, 100.0 + i, 10.0 * i))
    for i in range(4):
        when = f"2024-12-{i + 1:02d}T10:00:00Z"
        items.append(_item_body(catalog.c, f"c-{i:02d}", when, -50.0 - i, 0.0))
    with httpx.Client(base_url=stac_api.url, timeout=30, trust_env=False) as client:
        for collection in (catalog.a, catalog.b, catalog.c):
            created = client.post("/collections", json=_collection_body(collection))
            assert created.status_code in (200, 201), created.text
        for item in items:
            posted = client.post(f"/collections/{item['collection']}/items", json=item)
            assert posted.status_code in (200, 201), posted.text
    assert len(items) == 30
    return catalog


def a_ids(*indexes: int) -> set[str]:
    return {f"a-{i:02d}" for i in indexes}


# --- a receiver of the submitted events ---------------------------------------------------------


@dataclass
class Sink:
    """Accepts binary CloudEvents (202), or only the first `accept` of them, then answers 503;
    `delay` seconds pass between receiving an event (recorded at once) and answering."""

    url: str
    accept: int | None = None
    delay: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def subjects(self) -> list[str]:
        with self.lock:
            return [e["subject"] for e in self.events]

    def by_subject(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {e["subject"]: e for e in self.events}


@contextmanager
def sink(accept: int | None = None, delay: float = 0.0) -> Iterator[Sink]:
    state: dict[str, Sink] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver = state["sink"]
            with receiver.lock:
                full = receiver.accept is not None and len(receiver.events) >= receiver.accept
                if full:
                    receiver.refused += 1
                else:
                    receiver.events.append(
                        {
                            "id": self.headers["ce-id"],
                            "type": self.headers["ce-type"],
                            "subject": self.headers["ce-subject"],
                            "data": json.loads(body),
                        }
                    )
            time.sleep(receiver.delay)
            payload = b"broker is full (injected)" if full else b""
            self.send_response(503 if full else 202)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    url = f"http://{LOOPBACK}:{server.server_address[1]}/"
    state["sink"] = Sink(url=url, accept=accept, delay=delay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["sink"]
    finally:
        server.shutdown()
        server.server_close()


def backfill(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any] | None, str]:
    """Run the CLI in-process with --json: exit code, the summary, stderr."""
    code = main(["backfill", *args, "--json", "--rate", "0"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def cursor_entries(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


# --- search filters -------------------------------------------------------------------------


FILTER_CASES = [
    pytest.param([], set(range(20)), id="collection"),
    pytest.param(["--bbox", "4.9,39,10.1,41"], set(range(5, 11)), id="bbox"),
    pytest.param(
        ["--datetime", "2025-01-03T00:00:00Z/2025-01-07T23:59:59Z"], set(range(2, 7)), id="dt"
    ),
    pytest.param(["--max-cloud-cover", "20"], set(range(5)), id="cloud"),
    pytest.param(["--limit", "7"], set(range(13, 20)), id="limit"),
    pytest.param(
        [
            "--bbox",
            "0,39,10.1,41",
            "--datetime",
            "2025-01-01/2025-01-09",
            "--max-cloud-cover",
            "30",
        ],
        set(range(7)),
        id="combined",
    ),
]


@pytest.mark.parametrize(("filters", "expected"), FILTER_CASES)
def test_search_filters_select_exactly_the_expected_items(
    source: SourceCatalog,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    filters: list[str],
    expected: set[int],
) -> None:
    with sink() as receiver:
        code, summary, err = backfill(
            capsys,
            *("--stac-api", source.url, "--collection", source.a, *filters),
            *("--page-size", "4", "--url", receiver.url, "--cursor", str(tmp_path / "c.jsonl")),
        )
        assert code == 0, err
        assert sorted(receiver.subjects) == sorted(a_ids(*expected))
        event = receiver.events[0]
    assert summary is not None
    assert summary["selected"] == summary["submitted"] == len(expected)
    assert summary["rejected"] == []
    assert summary["skipped_done"] == 0
    assert event["type"] == EventType.CONVERT_REQUESTED.value
    assert event["data"] == {
        "source_url": source.item_url(source.a, event["subject"]),
        "item_id": event["subject"],
        "collection": source.a,
    }
    assert event["id"] == make_submission(event["data"]).event_id
    assert len(cursor_entries(tmp_path / "c.jsonl")) == len(expected)


def test_other_collections_target_collection_and_rejections(
    source: SourceCatalog, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ("--stac-api", source.url, "--collection", source.b, "--cursor", str(tmp_path / "b"))
    with sink() as receiver:
        code, summary, err = backfill(
            capsys, *args, "--target-collection", "sentinel-2-l2a", "--url", receiver.url
        )
        assert code == 0, err
        assert sorted(receiver.subjects) == ["b-00", "b-01", "b-02", "b-03", "b-04"]
        assert {e["data"]["collection"] for e in receiver.events} == {"sentinel-2-l2a"}
        assert receiver.by_subject()["b-03"]["data"]["source_url"] == source.item_url(
            source.b, "b-03"
        )
    assert summary is not None
    assert (summary["selected"], summary["submitted"]) == (6, 5)
    (rejected,) = summary["rejected"]
    assert rejected["item_id"] == "b..bad"
    assert rejected["collection"] == "sentinel-2-l2a"
    assert "item_id" in rejected["reason"]
    assert "not a safe identifier" in rejected["reason"]

    with sink() as receiver:
        code, summary, _ = backfill(
            capsys,
            "--stac-api",
            source.url,
            "--collection",
            source.c,
            "--url",
            receiver.url,
            "--cursor",
            str(tmp_path / "c"),
        )
        assert code == 0
        assert sorted(receiver.subjects) == ["c-00", "c-01", "c-02", "c-03"]
        assert {e["data"]["collection"] for e in receiver.events} == {source.c}


def test_plan_rejects_an_item_without_self_link_and_decides_a_duplicate_once() -> None:
    bare = pystac.Item("S2B_NO_LINK", None, None, pystac.utils.str_to_datetime("2025-01-01"), {})
    bare.collection_id = "sentinel-2-l2a"
    decision = plan_item(bare, PlanOptions(), set(), lambda c, i: None)
    assert decision.action is Action.REJECT
    assert decision.reason == "the item has no self link"

    linked = pystac.Item("S2B_LINKED", None, None, pystac.utils.str_to_datetime("2025-01-01"), {})
    linked.collection_id = "sentinel-2-l2a"
    linked.set_self_href("https://eopf.example.test/collections/x/items/S2B_LINKED")
    decisions = list(plan([linked, bare, linked], PlanOptions(), set(), lambda c, i: None))
    assert [d.action for d in decisions] == [Action.SUBMIT, Action.REJECT, Action.DUPLICATE]
    submission = decisions[0].submission
    assert submission is not None
    assert submission.request.source_url.endswith("/items/S2B_LINKED")


# --- resuming ---------------------------------------------------------------------------------


def test_a_refusing_broker_stops_the_run_and_the_rerun_submits_the_rest_once(
    source: SourceCatalog, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cursor = tmp_path / "cursor.jsonl"
    args = ["--stac-api", source.url, "--collection", source.a, "--page-size", "4"]
    args += ["--cursor", str(cursor)]
    with sink(accept=7) as first:
        code, summary, err = backfill(capsys, *args, "--url", first.url)
        assert code == 1
        assert first.refused == 1
        accepted_first = first.subjects
    assert "503" in err
    assert "broker is full (injected)" in err
    assert summary is not None
    assert summary["submitted"] == 7
    assert "503" in summary["error"]
    assert [e["item_id"] for e in cursor_entries(cursor)] == accepted_first

    with sink() as second:
        code, summary, err = backfill(capsys, *args, "--url", second.url)
        assert code == 0, err
        accepted_second = second.subjects
    assert summary is not None
    assert (summary["submitted"], summary["skipped_submitted"]) == (13, 7)
    together = accepted_first + accepted_second
    assert sorted(together) == sorted(a_ids(*range(20))), "each item exactly once"

    with sink() as third:
        code, summary, _ = backfill(capsys, *args, "--url", third.url)
        assert code == 0
        assert third.subjects == []
    assert summary is not None
    assert (summary["submitted"], summary["skipped_submitted"]) == (0, 20)
    assert len(cursor_entries(cursor)) == 20


def test_ctrl_c_finishes_the_submission_in_flight_and_the_same_command_continues(
    source: SourceCatalog, tmp_path: Path
) -> None:
    cursor = tmp_path / "cursor.jsonl"
    args = ["backfill", "--stac-api", source.url, "--collection", source.a]
    args += ["--cursor", str(cursor), "--rate", "0", "--json"]
    with sink(delay=0.5) as receiver:
        process = subprocess.Popen(
            [sys.executable, "-m", "geozarr_pipeline", *args, "--url", receiver.url],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while len(receiver.subjects) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            # The fifth event is in flight: received, its answer 0.5 s away.
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 130, err
        assert "stopping after the submission in flight" in err
        summary = json.loads(out)
        assert summary["interrupted"] is True
        first_run = receiver.subjects
        assert len(first_run) == 5, "nothing sent after Ctrl-C"
        assert summary["submitted"] == 5
        assert [e["item_id"] for e in cursor_entries(cursor)] == first_run

        receiver.delay = 0.0
        assert main([*args, "--url", receiver.url, "--no-progress"]) == 0
        subjects = receiver.subjects
    assert len(subjects) == 20
    assert set(subjects) == a_ids(*range(20)), "each item exactly once"


def test_a_cursor_of_another_search_is_refused(
    source: SourceCatalog, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cursor = tmp_path / "shared.jsonl"
    base = ("--stac-api", source.url, "--collection", source.a)
    with sink() as receiver:
        code, _, err = backfill(
            capsys, *base, "--limit", "2", "--cursor", str(cursor), "--url", receiver.url
        )
        assert code == 0, err
        before = cursor.read_bytes()
        code, summary, err = backfill(
            capsys, *base, "--limit", "3", "--cursor", str(cursor), "--url", receiver.url
        )
        assert code == 2
        assert summary is None
        assert f"the cursor {cursor} belongs to another search" in err
        assert '"limit": {"cursor": 2, "now": 3}' in err
        assert len(receiver.subjects) == 2
    assert cursor.read_bytes() == before

    not_a_cursor = tmp_path / "notes.txt"
    not_a_cursor.write_text("hello\n")
    code, _, err = backfill(capsys, *base, "--cursor", str(not_a_cursor), "--dry-run")
    assert code == 2
    assert "is not a backfill cursor" in err


def test_default_cursor_is_per_search_under_the_current_folder(
    source: SourceCatalog,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ("--stac-api", source.url, "--collection", source.a)
    with sink() as receiver:
        _, first, _ = backfill(capsys, *base, "--limit", "2", "--url", receiver.url)
        _, again, _ = backfill(capsys, *base, "--limit", "2", "--url", receiver.url)
        _, other, _ = backfill(capsys, *base, "--limit", "3", "--url", receiver.url)
        assert len(receiver.subjects) == 2 + 3
    assert first is not None
    assert again is not None
    assert other is not None
    assert first["cursor"] == again["cursor"] != other["cursor"]
    assert Path(first["cursor"]).parent == Path(".backfill")
    assert (again["submitted"], again["skipped_submitted"]) == (0, 2)
    assert (other["submitted"], other["skipped_submitted"]) == (3, 0)
    assert sorted(p.name for p in (tmp_path / ".backfill").iterdir()) == sorted(
        Path(s["cursor"]).name for s in (first, other)
    )


# --- dry run ----------------------------------------------------------------------------------


def test_dry_run_lists_what_would_be_submitted_and_writes_nothing(
    source: SourceCatalog,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["backfill", "--stac-api", source.url, "--collection", source.a]
    args += ["--max-cloud-cover", "10"]
    with sink() as receiver:
        assert main([*args, "--dry-run", "--url", receiver.url]) == 0
        out, _ = capsys.readouterr()
        assert receiver.subjects == []
    assert not (tmp_path / ".backfill").exists()
    listed = [line.split()[2] for line in out.splitlines() if line.startswith("would submit")]
    assert sorted(listed) == [f"{source.a}/{i}" for i in sorted(a_ids(0, 1, 2))]
    assert f"{source.item_url(source.a, 'a-02')}" in out
    assert "(dry run: nothing submitted)" in out
    assert "would submit                  3" in out

    # After a partial run, the dry run shows what is left and leaves the cursor as it was.
    with sink(accept=1) as receiver:
        assert main([*args, "--url", receiver.url, "--no-progress"]) == 1
    capsys.readouterr()
    (cursor,) = (tmp_path / ".backfill").iterdir()
    before = cursor.read_bytes()
    code, summary, _ = backfill(capsys, *args[1:], "--dry-run")
    assert code == 0
    assert summary is not None
    assert summary["skipped_submitted"] == 1
    assert len(summary["would_submit"]) == 2
    assert summary["submitted"] == 0
    assert summary["cursor"] is None
    assert cursor.read_bytes() == before


# --- skip done, reprocess -----------------------------------------------------------------------


def write_converted(
    settings: Settings,
    collection: str,
    item_id: str,
    *,
    version: str | None = "0.12.0",
    store: bool = True,
    marker: bool = True,
    fmt: str = MARKER_FORMAT,
) -> None:
    """What the convert stage leaves: the store's root metadata, then the marker."""
    with output_for(settings, collection, item_id) as location:
        if store:
            Path(location.url).mkdir(parents=True)
            (Path(location.url) / "zarr.json").write_text('{"zarr_format": 3}')
        if marker:
            done = ConvertDone(
                item_id=item_id,
                collection=collection,
                source_url=f"https://eopf.example.test/{item_id}",
                zarr_url=f"https://eopf.example.test/{item_id}.zarr",
                output_url=location.url,
            )
            body: dict[str, Any] = {
                "format": fmt,
                "done": done.model_dump(mode="json"),
                "options": {},
                "completed_at": "2025-06-01T00:00:00+00:00",
            }
            if version is not None:
                body["eopf_geozarr"] = version
            location.write_marker(body)


def test_skip_done_skips_what_the_convert_stage_completed(
    source: SourceCatalog, tmp_path: Path
) -> None:
    settings = Settings(output_root=str(tmp_path / "out"))
    write_converted(settings, source.a, "a-00")
    write_converted(settings, source.a, "a-01")
    write_converted(settings, source.a, "a-02", store=False)  # marker of a removed store
    write_converted(settings, source.a, "a-03", fmt="something/else")
    write_converted(settings, source.a, "a-04", marker=False)  # store of an unfinished run

    search = SearchParams(
        stac_api=source.url, collection=source.a, datetime="2025-01-01/2025-01-06", page_size=2
    )
    options = PlanOptions(skip_done=True)
    cursor = Cursor.load(tmp_path / "cursor.jsonl", search, options)
    summary = Summary(stac_api=source.url, collection=source.a, cursor=str(cursor.path))
    with sink() as receiver:

        def send(submissions: Any) -> object:
            return submit_http(submissions, receiver.url)

        run_backfill(search, options, cursor, summary, send=send, settings=settings, rate=0)
        assert sorted(receiver.subjects) == sorted(a_ids(2, 3, 4, 5))
    assert (summary.selected, summary.submitted, summary.skipped_done) == (6, 4, 2)
    assert summary.reprocessed == 0
    assert summary.rejected == []
    assert summary.error is None


def test_reprocess_if_older_resubmits_only_the_older_ones_with_force(
    source: SourceCatalog,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(output_root=str(tmp_path / "out"))
    monkeypatch.setenv("GEOZARR_OUTPUT_ROOT", settings.output_root)
    write_converted(settings, source.a, "a-00", version="0.10.0")
    write_converted(settings, source.a, "a-01", version="0.11.3")
    write_converted(settings, source.a, "a-02", version="0.12.0")
    write_converted(settings, source.a, "a-03", version="0.13.0")
    write_converted(settings, source.a, "a-05", version=None)  # no version: reprocessed
    args = ["--stac-api", source.url, "--collection", source.a]
    args += ["--datetime", "2025-01-01/2025-01-06", "--cursor", str(tmp_path / "c.jsonl")]
    with sink() as receiver:
        code, summary, err = backfill(
            capsys, *args, "--reprocess-if-older", "0.12", "--url", receiver.url
        )
        assert code == 0, err
        events = receiver.by_subject()
    assert sorted(events) == sorted(a_ids(0, 1, 4, 5))
    forced = {s for s, e in events.items() if e["data"].get("options", {}).get("force")}
    assert forced == a_ids(0, 1, 5)
    assert "options" not in events["a-04"]["data"]
    for subject in forced:
        plain = make_submission(
            {k: v for k, v in events[subject]["data"].items() if k != "options"}
        )
        assert events[subject]["id"] != plain.event_id, "a new run, not a redelivery"
    assert events["a-04"]["id"] == make_submission(events["a-04"]["data"]).event_id
    assert summary is not None
    assert (summary["submitted"], summary["reprocessed"], summary["skipped_done"]) == (4, 3, 2)
    entries = {e["item_id"]: e for e in cursor_entries(tmp_path / "c.jsonl")}
    assert {i for i, e in entries.items() if e["force"]} == forced

    # With --skip-done alone, every converted item is skipped whatever its version.
    code, summary, _ = backfill(
        capsys, *args[:6], "--skip-done", "--cursor", str(tmp_path / "d.jsonl"), "--dry-run"
    )
    assert summary is not None
    assert [w["item_id"] for w in summary["would_submit"]] == ["a-04"]
    assert summary["skipped_done"] == 5


# --- transports, errors, rate ---------------------------------------------------------------------


def test_amqp_publishes_one_message_per_item(
    source: SourceCatalog,
    rabbitmq: RabbitMQ,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    try:
        channel = connection.channel()
        channel.exchange_declare("geozarr", exchange_type="topic", durable=True)
        queue = f"backfill-test-{uuid.uuid4().hex[:8]}"
        channel.queue_declare(queue, exclusive=True)
        channel.queue_bind(queue, "geozarr", routing_key="eopf.items.convert")
        args = ["--stac-api", source.url, "--collection", source.b]
        args += ["--cursor", str(tmp_path / "amqp.jsonl"), "--amqp-url", rabbitmq.amqp_url]
        code, summary, err = backfill(capsys, *args)
        assert code == 0, err
        messages: dict[str, tuple[Any, dict[str, Any]]] = {}
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            messages[properties.headers["ce-subject"]] = (properties, json.loads(body))
        assert sorted(messages) == ["b-00", "b-01", "b-02", "b-03", "b-04"]
        properties, data = messages["b-01"]
        assert properties.headers["ce-type"] == EventType.CONVERT_REQUESTED.value
        assert data == {
            "source_url": source.item_url(source.b, "b-01"),
            "item_id": "b-01",
            "collection": source.b,
        }
        entries = {e["item_id"]: e["event_id"] for e in cursor_entries(tmp_path / "amqp.jsonl")}
        assert entries == {s: m[0].headers["ce-id"] for s, m in messages.items()}
        assert summary is not None
        assert len(summary["rejected"]) == 1

        code, summary, _ = backfill(capsys, *args)
        assert code == 0
        assert channel.basic_get(queue, auto_ack=True)[0] is None
        assert summary is not None
        assert (summary["submitted"], summary["skipped_submitted"]) == (0, 5)
    finally:
        connection.close()


def test_unreachable_broker_and_search_are_errors(
    source: SourceCatalog, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cursor = tmp_path / "c.jsonl"
    closed = f"http://{LOOPBACK}:{free_port()}/"
    code, summary, err = backfill(
        capsys,
        "--stac-api",
        source.url,
        "--collection",
        source.c,
        "--url",
        closed,
        "--cursor",
        str(cursor),
    )
    assert code == 1
    assert f"backfill: cannot reach {closed}" in err
    assert summary is not None
    assert summary["submitted"] == 0
    assert summary["selected"] == 4
    assert not cursor.exists() or cursor_entries(cursor) == []

    with sink() as receiver:
        code, summary, err = backfill(
            capsys,
            "--stac-api",
            closed,
            "--collection",
            source.c,
            "--url",
            receiver.url,
            "--cursor",
            str(cursor),
        )
        assert receiver.subjects == []
    assert code == 1
    assert f"search of {closed} failed" in err

    code = main(["backfill", "--stac-api", source.url, "--collection", source.c])
    assert code == 2
    assert "--url BROKER_URL or --amqp-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["backfill", "--stac-api", source.url, "--collection", "x", "--bbox", "1,2,3"])
    assert "W,S,E,N" in capsys.readouterr().err


def test_rate_bounds_the_submissions_and_the_text_summary(
    source: SourceCatalog, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["backfill", "--stac-api", source.url, "--collection", source.b]
    args += ["--cursor", str(tmp_path / "c.jsonl"), "--rate", "10"]
    with sink() as receiver:
        started = time.monotonic()
        assert main([*args, "--url", receiver.url]) == 0
        elapsed = time.monotonic() - started
        assert len(receiver.subjects) == 5
    assert elapsed >= 0.4, "5 submissions at 10/s take at least 4 intervals"
    out, err = capsys.readouterr()
    assert "submit: 100%" in err
    assert "5/5" in err
    assert "  submitted                     5\n" in out
    assert "  rejected                      1\n" in out
    assert "b..bad: invalid item" in out
    assert f"  cursor                        {tmp_path / 'c.jsonl'}" in out


def test_plan_options_shape_the_cursor_identity(source: SourceCatalog, tmp_path: Path) -> None:
    search = SearchParams(stac_api=source.url, collection=source.a)
    plain = Cursor.load(tmp_path / "x", search, PlanOptions())
    reprocess = Cursor.load(tmp_path / "x", search, PlanOptions(reprocess_if_older=Version("1")))
    assert plain.header["fingerprint"] != reprocess.header["fingerprint"]
    skip = Cursor.load(tmp_path / "x", search, PlanOptions(skip_done=True))
    assert plain.header["fingerprint"] == skip.header["fingerprint"]
    paged = Cursor.load(
        tmp_path / "x", SearchParams(source.url + "/", source.a, page_size=3), PlanOptions()
    )
    assert paged.header["fingerprint"] == plain.header["fingerprint"]


def test_a_cursor_line_cut_short_is_ignored_and_repaired(tmp_path: Path) -> None:
    search = SearchParams(stac_api="http://api.test", collection="c")
    path = tmp_path / "cursor.jsonl"
    first = Cursor.load(path, search, PlanOptions())
    one = make_submission({"source_url": "http://api.test/items/one", "collection": "c"})
    first.record(one)
    first.close()
    with path.open("a") as handle:
        handle.write('{"item_id": "tw')  # killed while writing
    again = Cursor.load(path, search, PlanOptions())
    assert again.submitted == {"c/one"}
    two: Submission = make_submission(
        {"source_url": "http://api.test/items/two", "collection": "c"}
    )
    again.record(two)
    again.close()
    assert Cursor.load(path, search, PlanOptions()).submitted == {"c/one", "c/two"}
    assert [e["item_id"] for e in cursor_entries(path)] == ["one", "two"]
