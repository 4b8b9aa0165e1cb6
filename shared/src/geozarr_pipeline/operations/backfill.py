"""Backfill: submit a convert.requested for every item of a search of the source STAC API.

    geozarr-pipeline backfill --stac-api URL --collection C [--bbox W,S,E,N]
        [--datetime RANGE] [--max-cloud-cover N] [--limit N] [--skip-done]
        [--reprocess-if-older VERSION] [--dry-run] [--cursor FILE] [--rate PER_SECOND]
        (--url BROKER_URL | --amqp-url URL [--exchange X --routing-key K])

Three steps, each a function: `search_items` pages through the item search (pystac-client);
`plan` decides per item (submit, reprocess with force, skip as converted, skip as submitted
by an earlier run, reject with the reason); `submit_planned` sends the submissions at a
bounded rate and appends each accepted one to the cursor (fsynced) before the next is sent.

The cursor (`--cursor`, default `.backfill/<collection>-<hash>.jsonl` under the current
folder, the hash taken over the search and what shapes the events) is a JSON-lines file: a
header naming the search, then one line per accepted submission. Interrupt a run (Ctrl-C, a
refusing or unreachable broker) and run the same command again: what was accepted is skipped,
the rest is submitted. A cursor of another search is refused. An event accepted by the broker
just before the process died, and not yet in the cursor, is sent again with the same
deterministic id: a redelivery, not a second run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from packaging.version import InvalidVersion, Version

from geozarr_pipeline.guard import say, store_errors
from geozarr_pipeline.redaction import redact
from geozarr_pipeline.submit import (
    DEFAULT_EXCHANGE,
    DEFAULT_ROUTING_KEY,
    Submission,
    SubmitError,
    make_submission,
)

if TYPE_CHECKING:
    import pystac

    from geozarr_pipeline.config import Settings

CURSOR_FORMAT = "geozarr-pipeline/backfill-cursor/1"
CURSOR_DIR = Path(".backfill")
DEFAULT_RATE = 10.0
DEFAULT_PAGE_SIZE = 100

# Sends every submission it is given, in order, raising SubmitError on the first failure.
# It must take the next submission only once the previous one was accepted, as
# `submit.submit_http` and `submit.submit_amqp` do: that is when the cursor records it.
Transport = Callable[[Iterable[Submission]], object]
# Whether an item's conversion is complete: its marker, or None.
DoneCheck = Callable[[str, str], dict[str, Any] | None]


class BackfillError(RuntimeError):
    """A backfill that cannot go on: the search failed, the output storage cannot be read."""


class CursorMismatch(BackfillError):
    """The cursor file belongs to another search."""


# --- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchParams:
    """The item search of the source catalog; `page_size` does not change what is selected."""

    stac_api: str
    collection: str
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    max_cloud_cover: float | None = None
    limit: int | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    timeout: float = 30.0

    def identity(self) -> dict[str, Any]:
        return {
            "stac_api": self.stac_api.rstrip("/"),
            "collection": self.collection,
            "bbox": list(self.bbox) if self.bbox is not None else None,
            "datetime": self.datetime,
            "max_cloud_cover": self.max_cloud_cover,
            "limit": self.limit,
        }


@dataclass
class SearchResult:
    items: Iterator[pystac.Item]
    matched: int | None


def cloud_cover_arguments(client: Any, max_cloud_cover: float) -> dict[str, Any]:
    """A CQL2 filter if the API has the Filter extension, else the Query extension."""
    from pystac_client import ConformanceClasses

    if client.conforms_to(ConformanceClasses.FILTER):
        return {
            "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud_cover]},
            "filter_lang": "cql2-json",
        }
    if client.conforms_to(ConformanceClasses.QUERY):
        return {"query": {"eo:cloud_cover": {"lte": max_cloud_cover}}}
    raise BackfillError(
        "the STAC API has neither the Filter nor the Query extension: "
        "it cannot select by --max-cloud-cover"
    )


def search_items(params: SearchParams) -> SearchResult:
    """Open the API and start the search; the items are fetched page by page as consumed."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(params.stac_api, timeout=params.timeout)
        extra: dict[str, Any] = {}
        if params.max_cloud_cover is not None:
            extra = cloud_cover_arguments(client, params.max_cloud_cover)
        page = params.page_size if params.limit is None else min(params.page_size, params.limit)
        search = client.search(
            collections=[params.collection],
            bbox=params.bbox,
            datetime=params.datetime,
            max_items=params.limit,
            limit=page,
            **extra,
        )
        with warnings.catch_warnings():
            # An API without the count (pgstac without the context extension) warns: no total.
            warnings.simplefilter("ignore")
            matched = search.matched()
    except (APIError, OSError, ValueError) as exc:
        raise BackfillError(f"search of {params.stac_api} failed: {exc}") from exc
    if matched is not None and params.limit is not None:
        matched = min(matched, params.limit)
    return SearchResult(items=_guarded(search.items(), params.stac_api), matched=matched)


def _guarded(items: Iterator[pystac.Item], url: str) -> Iterator[pystac.Item]:
    """The items, with a failure on a later page reported as a BackfillError."""
    from pystac_client.exceptions import APIError

    try:
        yield from items
    except (APIError, OSError, ValueError) as exc:
        raise BackfillError(f"search of {url} failed while paging: {exc}") from exc


# --- plan -------------------------------------------------------------------------------------


class Action(StrEnum):
    SUBMIT = "submit"
    REPROCESS = "reprocess"
    SKIP_DONE = "skip_done"
    SKIP_SUBMITTED = "skip_submitted"
    DUPLICATE = "duplicate"
    REJECT = "reject"


@dataclass(frozen=True)
class PlanOptions:
    """What shapes the events and which items are skipped."""

    target_collection: str | None = None
    run_id: str = ""
    skip_done: bool = False
    reprocess_if_older: Version | None = None

    @property
    def reads_markers(self) -> bool:
        return self.skip_done or self.reprocess_if_older is not None

    def identity(self) -> dict[str, Any]:
        return {
            "target_collection": self.target_collection,
            "run_id": self.run_id,
            "reprocess_if_older": str(self.reprocess_if_older)
            if self.reprocess_if_older is not None
            else None,
        }


@dataclass(frozen=True)
class Decision:
    action: Action
    item_id: str
    collection: str | None
    submission: Submission | None = None
    reason: str = ""

    @property
    def sends(self) -> bool:
        return self.submission is not None and self.action in (Action.SUBMIT, Action.REPROCESS)


def item_key(collection: str, item_id: str) -> str:
    return f"{collection}/{item_id}"


def reprocess_run_id(run_id: str, version: Version) -> str:
    """A run id of its own, so the forced event is a new run, not a redelivery."""
    return "|".join(part for part in (run_id, f"reprocess-if-older:{version}") if part)


def completed_conversion(
    settings: Settings, collection: str, item_id: str
) -> dict[str, Any] | None:
    """The convert stage's completion marker if the item is converted, the way the stage
    itself decides it (`output_store.completed_marker`)."""
    from geozarr_pipeline.errors import PipelineError
    from geozarr_pipeline.output_store import completed_marker, output_for

    try:
        with output_for(settings, collection, item_id) as location:
            return completed_marker(location)
    except PipelineError as exc:
        raise BackfillError(f"cannot read the output of {collection}/{item_id}: {exc}") from exc


def converted_with(marker: dict[str, Any]) -> Version | None:
    """The eopf-geozarr version a marker names, None if absent or not a version."""
    try:
        return Version(str(marker["eopf_geozarr"]))
    except (KeyError, InvalidVersion):
        return None


def source_request(item: pystac.Item, target_collection: str | None) -> dict[str, Any]:
    """The convert.requested data of a source item; SubmitError if it cannot have one."""
    source_url = item.get_self_href()
    if not source_url:
        raise SubmitError("the item has no self link")
    request: dict[str, Any] = {"source_url": source_url, "item_id": item.id}
    collection = target_collection or item.collection_id
    if collection:
        request["collection"] = collection
    return request


def plan_item(
    item: pystac.Item,
    options: PlanOptions,
    already_submitted: set[str],
    done: DoneCheck,
) -> Decision:
    collection = options.target_collection or item.collection_id
    try:
        request = source_request(item, options.target_collection)
        submission = make_submission(request, options.run_id)
    except SubmitError as exc:
        return Decision(Action.REJECT, item.id, collection, reason=str(exc))
    collection = submission.request.collection
    if item_key(collection, item.id) in already_submitted:
        return Decision(Action.SKIP_SUBMITTED, item.id, collection, reason="in the cursor")
    if not options.reads_markers:
        return Decision(Action.SUBMIT, item.id, collection, submission)
    marker = done(collection, item.id)
    if marker is None:
        return Decision(Action.SUBMIT, item.id, collection, submission)
    version = converted_with(marker)
    converted = (
        f"converted {marker.get('completed_at', '?')} with eopf-geozarr {version or 'unknown'}"
    )
    threshold = options.reprocess_if_older
    if threshold is not None and (version is None or version < threshold):
        forced = make_submission(
            {**request, "options": {"force": True}}, reprocess_run_id(options.run_id, threshold)
        )
        return Decision(
            Action.REPROCESS, item.id, collection, forced, reason=f"{converted} < {threshold}"
        )
    return Decision(Action.SKIP_DONE, item.id, collection, reason=converted)


def plan(
    items: Iterable[pystac.Item],
    options: PlanOptions,
    already_submitted: set[str],
    done: DoneCheck,
) -> Iterator[Decision]:
    """One decision per item; an item the search returns twice is decided once."""
    seen: set[str] = set()
    for item in items:
        decision = plan_item(item, options, already_submitted, done)
        key = item_key(decision.collection or "", decision.item_id)
        if key in seen:
            decision = Decision(Action.DUPLICATE, decision.item_id, decision.collection)
        seen.add(key)
        yield decision


# --- cursor -----------------------------------------------------------------------------------


def fingerprint(search: SearchParams, options: PlanOptions) -> str:
    identity = {"search": search.identity(), "events": options.identity()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def default_cursor_path(search: SearchParams, options: PlanOptions) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", search.collection)[:64]
    return CURSOR_DIR / f"{name}-{fingerprint(search, options)[:16]}.jsonl"


class Cursor:
    """The submissions of earlier runs of one search, and an append-only record of new ones."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.submitted: set[str] = set()
        self._handle: TextIO | None = None

    @classmethod
    def load(cls, path: Path, search: SearchParams, options: PlanOptions) -> Cursor:
        """The cursor at `path` (empty if absent); CursorMismatch if it is another search's."""
        header = {
            "cursor": CURSOR_FORMAT,
            "fingerprint": fingerprint(search, options),
            **search.identity(),
            **options.identity(),
        }
        cursor = cls(path, header)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return cursor
        except OSError as exc:
            raise BackfillError(f"cannot read the cursor {path}: {exc}") from exc
        if not lines:
            return cursor
        cursor._check_header(lines[0])
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                cursor.submitted.add(item_key(entry["collection"], entry["item_id"]))
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines):
                    continue  # the last line of a run killed while writing it
                raise BackfillError(f"{path}:{number}: not a cursor entry: {line[:200]}") from exc
        return cursor

    def _check_header(self, line: str) -> None:
        try:
            stored = json.loads(line)
        except ValueError:
            stored = None
        if not isinstance(stored, dict) or stored.get("cursor") != CURSOR_FORMAT:
            raise CursorMismatch(f"{self.path} is not a backfill cursor")
        if stored.get("fingerprint") != self.header["fingerprint"]:
            differences = {
                k: {"cursor": stored.get(k), "now": v}
                for k, v in self.header.items()
                if k not in ("fingerprint", "cursor") and stored.get(k) != v
            }
            raise CursorMismatch(
                f"the cursor {self.path} belongs to another search "
                f"({json.dumps(differences, sort_keys=True)}): run the same search again to "
                "continue it, or give another --cursor (or remove that file) to start afresh"
            )

    def record(self, submission: Submission) -> None:
        """Append one accepted submission, on disk before the next one is sent."""
        handle = self._open()
        entry = {
            "item_id": submission.subject,
            "collection": submission.request.collection,
            "event_id": submission.event_id,
            "force": submission.request.options.force,
            "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self.submitted.add(item_key(submission.request.collection, submission.subject))

    def _open(self) -> TextIO:
        if self._handle is not None:
            return self._handle
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = self.path.read_bytes() if self.path.exists() else b""
        if existing and not existing.endswith(b"\n"):
            # Drop a line cut short by a killed run (its item was not recorded).
            os.truncate(self.path, existing.rfind(b"\n") + 1)
        handle = self.path.open("a")
        if not existing:
            handle.write(json.dumps(self.header, sort_keys=True) + "\n")
        self._handle = handle
        return handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# --- submit -----------------------------------------------------------------------------------


class Pacer:
    """At most `rate` calls of `wait()` per second (0: no limit); a set `stop` ends a wait."""

    def __init__(self, rate: float, stop: threading.Event | None = None) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.stop = stop or threading.Event()
        self.next_at: float | None = None

    def wait(self) -> None:
        now = time.monotonic()
        if self.next_at is not None and now < self.next_at:
            self.stop.wait(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the run stops after the submission in flight, which
    is recorded); a second one interrupts at once. Outside the main thread: only the event."""
    stop = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write(
            "\nbackfill: stopping after the submission in flight (Ctrl-C again: now)\n"
        )

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


@dataclass
class Summary:
    stac_api: str
    collection: str
    cursor: str | None
    dry_run: bool = False
    selected: int = 0
    submitted: int = 0
    reprocessed: int = 0
    skipped_done: int = 0
    skipped_submitted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, str | None]] = field(default_factory=list)
    would_submit: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False

    def count(self, decision: Decision) -> None:
        self.selected += 1
        if decision.action is Action.SKIP_DONE:
            self.skipped_done += 1
        elif decision.action is Action.SKIP_SUBMITTED:
            self.skipped_submitted += 1
        elif decision.action is Action.DUPLICATE:
            self.duplicates += 1
        elif decision.action is Action.REJECT:
            self.rejected.append(
                {
                    "item_id": decision.item_id,
                    "collection": decision.collection,
                    "reason": decision.reason,
                }
            )
        elif self.dry_run and decision.submission is not None:
            self.would_submit.append(
                {
                    "item_id": decision.item_id,
                    "collection": decision.collection,
                    "source_url": decision.submission.request.source_url,
                    "event_id": decision.submission.event_id,
                    "force": decision.action is Action.REPROCESS,
                    "reason": decision.reason or None,
                }
            )

    def sent(self, submission: Submission) -> None:
        self.submitted += 1
        if submission.request.options.force:
            self.reprocessed += 1

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.dry_run:
            del data["would_submit"]
        return data

    def render(self) -> str:
        lines = [
            f"backfill of {self.collection} from {self.stac_api}"
            + (" (dry run: nothing submitted)" if self.dry_run else ""),
            f"  selected by the search        {self.selected}",
        ]
        if self.dry_run:
            forced = sum(1 for w in self.would_submit if w["force"])
            lines.append(
                f"  would submit                  {len(self.would_submit)}"
                + (f" ({forced} reprocessed with force)" if forced else "")
            )
        else:
            lines.append(
                f"  submitted                     {self.submitted}"
                + (f" ({self.reprocessed} reprocessed with force)" if self.reprocessed else "")
            )
        lines += [
            f"  skipped, already converted    {self.skipped_done}",
            f"  skipped, submitted earlier    {self.skipped_submitted}",
        ]
        if self.duplicates:
            lines.append(f"  skipped, returned twice       {self.duplicates}")
        lines.append(f"  rejected                      {len(self.rejected)}")
        lines += [f"    {r['collection']}/{r['item_id']}: {r['reason']}" for r in self.rejected]
        if self.cursor is not None:
            lines.append(f"  cursor                        {self.cursor}")
        if self.interrupted:
            lines.append("  interrupted: run the same command again to continue")
        if self.error is not None:
            lines.append(f"  stopped: {self.error}")
        return "\n".join(lines)


def _progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=not enabled)


def decide_all(
    search: SearchParams,
    options: PlanOptions,
    cursor: Cursor,
    done: DoneCheck,
    summary: Summary,
    *,
    progress: bool = False,
    stop: threading.Event | None = None,
) -> list[Submission]:
    """Search and plan every item (counted in the summary); the submissions, in order."""
    result = search_items(search)
    submissions: list[Submission] = []
    with _progress_bar(result.matched, "plan", progress) as bar:
        for decision in plan(result.items, options, cursor.submitted, done):
            _check(stop)
            summary.count(decision)
            if decision.sends and decision.submission is not None:
                submissions.append(decision.submission)
            bar.update()
    return submissions


def submit_planned(
    submissions: Sequence[Submission],
    send: Transport,
    cursor: Cursor,
    summary: Summary,
    *,
    rate: float = DEFAULT_RATE,
    progress: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Send at most `rate` per second; each accepted one goes to the cursor before the next.

    A set `stop` ends the run (KeyboardInterrupt) between two submissions.
    """
    pacer = Pacer(rate, stop)
    with _progress_bar(len(submissions), "submit", progress) as bar:

        def paced() -> Generator[Submission]:
            for submission in submissions:
                _check(stop)
                pacer.wait()
                _check(stop)
                yield submission
                # Resumed only when the transport asks for the next one: this one was accepted.
                summary.sent(submission)
                cursor.record(submission)
                bar.update()

        stream = paced()
        try:
            send(stream)
        finally:
            stream.close()


def run_backfill(
    search: SearchParams,
    options: PlanOptions,
    cursor: Cursor,
    summary: Summary,
    *,
    send: Transport | None,
    settings: Settings | None = None,
    rate: float = DEFAULT_RATE,
    progress: bool = False,
    stop: threading.Event | None = None,
) -> Summary:
    """Search, plan, then (unless `send` is None: a dry run) submit. Errors propagate; the
    summary (filled as the run goes) and the cursor keep what was done until then."""
    if options.reads_markers and settings is None:
        raise BackfillError("--skip-done and --reprocess-if-older need the output settings")

    def done(collection: str, item_id: str) -> dict[str, Any] | None:
        assert settings is not None
        return completed_conversion(settings, collection, item_id)

    try:
        submissions = decide_all(
            search, options, cursor, done, summary, progress=progress, stop=stop
        )
        if send is not None and submissions:
            submit_planned(
                submissions, send, cursor, summary, rate=rate, progress=progress, stop=stop
            )
    finally:
        cursor.close()
    return summary


# --- CLI --------------------------------------------------------------------------------------


def parse_bbox(value: str) -> tuple[float, float, float, float]:
    parts = value.split(",")
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: expected W,S,E,N (four numbers)") from exc
    if not (-90 <= south <= north <= 90 and -180 <= west <= 180 and -180 <= east <= 180):
        raise argparse.ArgumentTypeError(f"{value!r}: not a W,S,E,N box in degrees")
    return west, south, east, north


def parse_version(value: str) -> Version:
    try:
        return Version(value)
    except InvalidVersion as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a version (e.g. 0.12.0)") from exc


def _cloud_cover(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"{value}: a percentage from 0 to 100")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return number


def _rate(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 0 (0: no limit)")
    return number


def transport_for(args: argparse.Namespace) -> Transport | None:
    """How the events go out: HTTP binary CloudEvents, or the AMQP exchange."""
    from geozarr_pipeline.submit import submit_amqp, submit_http

    if args.url:
        url: str = args.url
        timeout: float = args.timeout

        def post(submissions: Iterable[Submission]) -> object:
            return submit_http(submissions, url, mode="binary", timeout=timeout)

        return post
    if args.amqp_url:
        amqp_url: str = args.amqp_url
        exchange: str = args.exchange
        routing_key: str = args.routing_key

        def publish(submissions: Iterable[Submission]) -> object:
            return submit_amqp(submissions, amqp_url, exchange=exchange, routing_key=routing_key)

        return publish
    return None


def _report(summary: Summary, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary.as_dict(), indent=2) + "\n")
        return
    if summary.dry_run:
        for w in summary.would_submit:
            force = f"  [force: {w['reason']}]" if w["force"] else ""
            sys.stdout.write(
                f"would submit {w['collection']}/{w['item_id']}  {w['source_url']}{force}\n"
            )
    sys.stdout.write(summary.render() + "\n")


def _command(args: argparse.Namespace) -> int:
    send = transport_for(args)
    if send is None and not args.dry_run:
        sys.stderr.write("backfill: give --url BROKER_URL or --amqp-url URL (or --dry-run)\n")
        return 2
    search = SearchParams(
        stac_api=args.stac_api,
        collection=args.collection,
        bbox=args.bbox,
        datetime=args.datetime,
        max_cloud_cover=args.max_cloud_cover,
        limit=args.limit,
        page_size=args.page_size,
        timeout=args.timeout,
    )
    options = PlanOptions(
        target_collection=args.target_collection,
        run_id=args.run_id,
        skip_done=args.skip_done,
        reprocess_if_older=args.reprocess_if_older,
    )
    path = Path(args.cursor) if args.cursor else default_cursor_path(search, options)
    try:
        cursor = Cursor.load(path, search, options)
    except BackfillError as exc:
        say("backfill", exc)
        return 2
    settings = None
    if options.reads_markers:
        from geozarr_pipeline.config import read_settings

        settings = read_settings()
    summary = Summary(
        stac_api=args.stac_api,
        collection=args.collection,
        cursor=None if args.dry_run else str(path),
        dry_run=args.dry_run,
    )
    code = 0
    try:
        with graceful_interrupt() as stop:
            run_backfill(
                search,
                options,
                cursor,
                summary,
                send=None if args.dry_run else send,
                settings=settings,
                rate=args.rate,
                progress=not args.no_progress,
                stop=stop,
            )
    except (BackfillError, SubmitError) as exc:
        summary.error = redact(str(exc))
        code = 1
    except store_errors() as exc:
        summary.error = redact(str(exc))
        code = 1
    except KeyboardInterrupt:
        summary.interrupted = True
        code = 130
    _report(summary, args.json)
    if summary.error is not None:
        sys.stderr.write(f"backfill: {summary.error}\n")
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="submit a convert.requested for every item of a STAC API search (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search = parser.add_argument_group("search of the source catalog")
    search.add_argument("--stac-api", required=True, metavar="URL", help="source STAC API")
    search.add_argument("--collection", required=True, help="source collection to search")
    search.add_argument("--bbox", type=parse_bbox, metavar="W,S,E,N")
    search.add_argument("--datetime", metavar="RANGE", help="e.g. 2025-01-01/2025-02-01")
    search.add_argument("--max-cloud-cover", type=_cloud_cover, metavar="N", help="percent")
    search.add_argument("--limit", type=_positive, metavar="N", help="at most N items")
    search.add_argument("--page-size", type=_positive, default=DEFAULT_PAGE_SIZE, metavar="N")

    events = parser.add_argument_group("what is submitted")
    events.add_argument(
        "--target-collection", help="collection of the events (default: the item's collection)"
    )
    events.add_argument(
        "--skip-done", action="store_true", help="skip items the convert stage has completed"
    )
    events.add_argument(
        "--reprocess-if-older",
        type=parse_version,
        metavar="VERSION",
        help="submit again, with force, items converted with an eopf-geozarr older than "
        "VERSION; the other converted items are skipped (implies --skip-done)",
    )
    events.add_argument(
        "--run-id", default="", help="salt of the deterministic event ids (see submit)"
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--dry-run", action="store_true", help="list what would be submitted; write nothing"
    )
    run.add_argument(
        "--cursor",
        metavar="FILE",
        help="resumable record of what was submitted "
        f"(default: {CURSOR_DIR}/<collection>-<hash of the search>.jsonl)",
    )
    run.add_argument(
        "--rate",
        type=_rate,
        default=DEFAULT_RATE,
        metavar="PER_SECOND",
        help=f"at most this many submissions per second (default {DEFAULT_RATE:g}; 0: no limit)",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")

    transport = parser.add_argument_group("transport (one of)")
    exclusive = transport.add_mutually_exclusive_group()
    exclusive.add_argument("--url", metavar="BROKER_URL", help="HTTP binary CloudEvents")
    exclusive.add_argument("--amqp-url", metavar="URL", help="publish on the RabbitMQ exchange")
    transport.add_argument("--exchange", default=DEFAULT_EXCHANGE)
    transport.add_argument("--routing-key", default=DEFAULT_ROUTING_KEY)
    parser.set_defaults(func=_command)
