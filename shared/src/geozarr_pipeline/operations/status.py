"""`geozarr-pipeline status`: where an item is, from the stores the pipeline already has.

Evidence, for each stage of one item:
- the stage attempt records (`attempts`): when each delivery started and ended, and how;
- the failure records that are not resolved: a problem the stage gave up on;
- the outputs themselves: convert's completion marker and lease, the catalog item, and the
  item's viewer link (augment's mark).

The outputs decide what is done; the newest of the rest decides running, failed or retrying.
The same settings as the functions (GEOZARR_*) point it at the local stack or the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from geozarr_pipeline.attempts import (
    AttemptJournal,
    StageAttempt,
    open_attempt_journal,
    utc_time,
)
from geozarr_pipeline.catalog import Catalog, opened_catalog
from geozarr_pipeline.config import Settings, read_settings
from geozarr_pipeline.errors import SourceNotFound
from geozarr_pipeline.events import Stage, check_safe_id, is_safe_id
from geozarr_pipeline.failures.records import FailureRecord
from geozarr_pipeline.failures.resolutions import ResolutionLog, open_resolution_log
from geozarr_pipeline.failures.store import open_failure_store
from geozarr_pipeline.guard import say, store_errors
from geozarr_pipeline.objects import open_object_store
from geozarr_pipeline.output_store import completed_marker, is_s3, iter_outputs, output_for
from geozarr_pipeline.s3 import S3Client, s3_client

STAGES = (Stage.CONVERT, Stage.REGISTER, Stage.AUGMENT)
RUNNING_WORDS = {
    Stage.CONVERT: "converting",
    Stage.REGISTER: "registering",
    Stage.AUGMENT: "augmenting",
}
# A register or augment attempt still `running` after this long was killed (their Trigger
# delivery timeout is far shorter).
LIGHT_STAGE_RUNNING_SECONDS = 900.0
LISTING_THREADS = 8


@dataclass
class StageStatus:
    stage: str
    state: str = "not started"
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    attempts: int = 0
    problem: dict[str, Any] | None = None
    failure_record: str | None = None


@dataclass
class ItemStatus:
    collection: str
    item_id: str
    stages: list[StageStatus]
    store_url: str | None = None
    store_objects: int | None = None
    store_bytes: int | None = None
    item_url: str | None = None
    viewer_url: str | None = None
    converter_version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """`done`, or the first stage that is not done with its state."""
        for stage in self.stages:
            if stage.state != "done":
                if stage.state == "not started" and stage is self.stages[0]:
                    return "not started"
                return f"{stage.stage} {stage.state}"
        return "done"

    @property
    def last_activity(self) -> str:
        times = [t for s in self.stages for t in (s.started_at, s.finished_at) if t]
        return max(times, default="")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state, "last_activity": self.last_activity or None}


@dataclass
class Outputs:
    """What the stores show of one item, stage by stage."""

    marker: dict[str, Any] | None = None
    lease_held: bool = False
    store_url: str | None = None
    item: dict[str, Any] | None = None
    item_url: str | None = None

    def done(self, stage: Stage) -> bool:
        if stage == Stage.CONVERT:
            return self.marker is not None
        if stage == Stage.REGISTER:
            return self.item is not None
        return self.viewer_url is not None

    @property
    def viewer_url(self) -> str | None:
        for link in (self.item or {}).get("links") or []:
            if isinstance(link, dict) and link.get("rel") == "viewer" and link.get("href"):
                return str(link["href"])
        return None


@dataclass
class Sources:
    """The stores status reads, opened once for a whole listing (one S3 client shared)."""

    settings: Settings
    journal: AttemptJournal
    failures: list[FailureRecord]
    resolutions: ResolutionLog
    catalog: Catalog
    s3: S3Client | None = None

    def outputs(self, collection: str, item_id: str) -> Outputs:
        found = Outputs()
        with output_for(self.settings, collection, item_id, self.s3) as location:
            found.marker = completed_marker(location)
            found.lease_held = location.lease_held()
            found.store_url = location.url
        try:
            found.item = self.catalog.get_item(collection, item_id)
            found.item_url = self.catalog.item_url(collection, item_id)
        except SourceNotFound:
            found.item = None
        return found

    def usage(self, store_url: str) -> tuple[int, int]:
        """(objects, bytes) of a store (S3: with the listing's one shared client)."""
        with open_object_store(self.settings, store_url, client=self.s3) as store:
            return store.usage()


@contextlib.contextmanager
def open_sources(settings: Settings, failures_root: str | None = None) -> Iterator[Sources]:
    """Everything status reads; `failures_root` as the failure commands' `--root`."""
    with contextlib.ExitStack() as stack:
        journal = open_attempt_journal(settings)
        stack.callback(journal.close)
        failure_store = stack.enter_context(open_failure_store(settings, failures_root))
        resolutions = open_resolution_log(settings, failures_root)
        stack.callback(resolutions.close)
        resolved = resolutions.resolved_ids()
        failures = [r for r in failure_store.list() if r.record_id not in resolved]
        catalog = stack.enter_context(opened_catalog(settings))
        s3 = (
            s3_client(settings, pool_connections=LISTING_THREADS)
            if is_s3(settings.output_root)
            else None
        )
        if s3 is not None:
            stack.callback(s3.close)
        yield Sources(settings, journal, failures, resolutions, catalog, s3)


def _attempt_time(attempt: StageAttempt | None) -> str:
    return (attempt.finished_at or attempt.started_at) if attempt is not None else ""


def _output_time(stage: Stage, outputs: Outputs) -> str:
    """When the stage's output was made, where the output says (convert's marker)."""
    if stage == Stage.CONVERT and outputs.marker and outputs.marker.get("completed_at"):
        with contextlib.suppress(ValueError):
            return utc_time(str(outputs.marker["completed_at"]))
    return ""


def _still_running(stage: Stage, attempt: StageAttempt, outputs: Outputs) -> bool:
    """A running attempt whose process may still work: convert while its lease is held, the
    light stages within their delivery timeout (a killed pod leaves `running` behind)."""
    if stage == Stage.CONVERT:
        return outputs.lease_held
    started = datetime.fromisoformat(attempt.started_at.replace("Z", "+00:00"))
    return (datetime.now(UTC) - started).total_seconds() < LIGHT_STAGE_RUNNING_SECONDS


def _stage_status(
    stage: Stage,
    attempts: list[StageAttempt],
    failures: list[FailureRecord],
    outputs: Outputs,
) -> StageStatus:
    """The state of one stage: the outputs decide `done`; the newest of the attempts and the
    open failure records decides running, failed, retrying or interrupted."""
    status = StageStatus(stage=stage.value, attempts=len(attempts))
    latest = attempts[-1] if attempts else None
    failure = failures[-1] if failures else None
    if latest is not None:
        status.started_at = latest.started_at
        status.finished_at = latest.finished_at
        status.duration_s = latest.duration_s
        if latest.problem is not None:
            status.problem = latest.problem.model_dump(mode="json")
    done = outputs.done(stage)
    # A failure counts when nothing newer is known: a later attempt or the output itself.
    reference = max(_attempt_time(latest), _output_time(stage, outputs))
    failure_newer = failure is not None and (
        failure.recorded_at >= reference if reference else not done
    )
    if failure is not None and failure_newer:
        status.problem = failure.problem.model_dump(mode="json")
        status.failure_record = failure.record_id
    running = latest is not None and latest.outcome == "running"
    if (
        running
        and not failure_newer
        and latest is not None
        and _still_running(stage, latest, outputs)
    ):
        status.state = RUNNING_WORDS[stage]
    elif done and not failure_newer:
        status.state = "done"
        if stage == Stage.CONVERT and outputs.marker:
            status.finished_at = status.finished_at or _output_time(stage, outputs) or None
            status.duration_s = status.duration_s or outputs.marker.get("duration_s")
        if latest is None or latest.outcome != "done":
            status.problem = None  # an older redelivery's problem, not the stage's state
    elif failure_newer or (latest is not None and latest.outcome == "failed"):
        status.state = "failed"
    elif running:
        status.state = "interrupted"
    elif latest is not None and latest.outcome in ("retry", "crashed"):
        status.state = "retrying"
    return status


def item_status(
    sources: Sources, collection: str, item_id: str, *, with_size: bool = True
) -> ItemStatus:
    attempts = sources.journal.attempts(collection, item_id)
    outputs = sources.outputs(collection, item_id)
    stages = [
        _stage_status(
            stage,
            [a for a in attempts if a.stage == stage],
            [
                r
                for r in sources.failures
                if r.stage == stage.value and r.item_id == item_id and r.collection == collection
            ],
            outputs,
        )
        for stage in STAGES
    ]
    status = ItemStatus(collection=collection, item_id=item_id, stages=stages)
    if outputs.marker is not None:
        status.store_url = outputs.store_url
        status.converter_version = outputs.marker.get("eopf_geozarr")
        if with_size and status.store_url:
            status.store_objects, status.store_bytes = sources.usage(status.store_url)
    status.item_url = outputs.item_url
    status.viewer_url = outputs.viewer_url
    converted_before = any(a.stage == Stage.CONVERT and a.outcome == "done" for a in attempts)
    if converted_before and outputs.marker is None and stages[0].state == "not started":
        status.notes.append("converted before, but the store is gone")
    return status


def item_statuses(
    sources: Sources, items: Sequence[tuple[str, str]], since: str | None
) -> list[ItemStatus]:
    """Many items, a few at a time; sizes only for those active since `since`."""

    def one(key: tuple[str, str]) -> ItemStatus | None:
        status = item_status(sources, *key, with_size=False)
        if since and status.last_activity < since:
            return None
        if status.store_url:
            status.store_objects, status.store_bytes = sources.usage(status.store_url)
        return status

    with ThreadPoolExecutor(max_workers=LISTING_THREADS) as pool:
        return [s for s in pool.map(one, items) if s is not None]


def known_items(sources: Sources, collection: str | None) -> list[tuple[str, str]]:
    """Every item with an attempt, a failure record or a converted store."""
    found = set(sources.journal.items(collection))
    found |= {
        (r.collection, r.item_id)
        for r in sources.failures
        if is_safe_id(r.collection)
        and is_safe_id(r.item_id)
        and (collection is None or r.collection == collection)
    }
    found |= {(o.collection, o.item_id) for o in iter_outputs(sources.settings, collection)}
    return sorted(found)


def collections_of(sources: Sources, item_id: str) -> list[str]:
    """The collections that know the item, probed one by one (no walk of every store)."""
    found = {
        r.collection for r in sources.failures if r.item_id == item_id and is_safe_id(r.collection)
    }
    found |= set(sources.journal.collections_of(item_id))
    with open_object_store(sources.settings, sources.settings.output_root) as outputs:
        names = [n for n in outputs.children() if n[:1].isalnum()]
    for name in names:
        if name not in found:
            with output_for(sources.settings, name, item_id, sources.s3) as location:
                if location.read_marker() is not None or location.store_exists():
                    found.add(name)
    return sorted(found)


# --- output -----------------------------------------------------------------------------------


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_item(status: ItemStatus) -> str:
    lines = [f"{status.collection}/{status.item_id}: {status.state}"]
    header = ("STAGE", "STATE", "STARTED", "FINISHED", "SECONDS", "ATTEMPTS", "PROBLEM")
    rows = [header]
    for stage in status.stages:
        problem = stage.problem or {}
        text = f"{problem.get('code')}: {problem.get('message')}" if problem else "-"
        rows.append(
            (
                stage.stage,
                stage.state,
                stage.started_at or "-",
                stage.finished_at or "-",
                f"{stage.duration_s:.1f}" if stage.duration_s is not None else "-",
                str(stage.attempts),
                text[:100],
            )
        )
    lines += _table(rows)
    store = status.store_url or "-"
    if status.store_url:
        store += f" ({_size(status.store_bytes)} in {status.store_objects} objects"
        store += f", eopf-geozarr {status.converter_version})" if status.converter_version else ")"
    lines.append(f"store:  {store}")
    lines.append(f"item:   {status.item_url or '-'}")
    lines.append(f"viewer: {status.viewer_url or '-'}")
    for stage in status.stages:
        if stage.failure_record:
            lines.append(f"failure record ({stage.stage}): {stage.failure_record}")
    lines += [f"note: {note}" for note in status.notes]
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_listing(statuses: Sequence[ItemStatus]) -> str:
    rows = [("ITEM", "COLLECTION", "STATE", "LAST ACTIVITY", "STORE")]
    rows += [
        (s.item_id, s.collection, s.state, s.last_activity or "-", _size(s.store_bytes))
        for s in statuses
    ]
    counts = Counter(s.state for s in statuses)
    summary = ", ".join(f"{state}: {n}" for state, n in sorted(counts.items()))
    return "\n".join([*_table(rows), "", f"{len(statuses)} items ({summary or 'none'})"])


# --- CLI --------------------------------------------------------------------------------------


def iso_time(value: str) -> str:
    """argparse type of a --since time."""
    try:
        return utc_time(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from exc


def _single(sources: Sources, args: argparse.Namespace) -> ItemStatus | None:
    item_id = check_safe_id(args.item_id)
    collections = [args.collection] if args.collection else collections_of(sources, item_id)
    if not collections:
        print(
            f"status: nothing known of item {item_id}; give --collection to check", file=sys.stderr
        )
        return None
    if len(collections) > 1:
        print(
            f"status: item {item_id} is in several collections ({', '.join(collections)}); "
            "give --collection",
            file=sys.stderr,
        )
        return None
    return item_status(sources, check_safe_id(collections[0]), item_id)


def _command(args: argparse.Namespace) -> int:
    if args.item_id is None and args.collection is None:
        print("status: give ITEM_ID, or --collection C for a listing", file=sys.stderr)
        return 2
    try:
        with open_sources(read_settings()) as sources:
            if args.item_id is not None:
                status = _single(sources, args)
                if status is None:
                    return 1
                print(json.dumps(status.as_json(), indent=2) if args.json else format_item(status))
                return 0
            items = known_items(sources, check_safe_id(args.collection))
            statuses = item_statuses(sources, items, args.since)
    except store_errors() as exc:
        say("status", exc)
        return 1
    if args.json:
        print(json.dumps([s.as_json() for s in statuses], indent=2))
    else:
        print(format_listing(statuses))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="each stage's state of an item (or of a collection's items), from the stores",
    )
    parser.add_argument("item_id", nargs="?", default=None)
    parser.add_argument("--collection", default=None)
    parser.add_argument(
        "--since",
        type=iso_time,
        default=None,
        help="listing: items active at or after this ISO time (e.g. 2026-12-01 or ...T06:00Z)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(func=_command)
