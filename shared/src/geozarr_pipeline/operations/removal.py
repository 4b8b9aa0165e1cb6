"""`geozarr-pipeline delete ITEM_ID` and `geozarr-pipeline cleanup --older-than D`.

Both remove a converted item with the same steps, in an order that never leaves a catalog
item whose data is gone. Under the item's conversion lease (refused while a conversion holds
it) the STAC item is deleted first, then the completion marker, then the store's files or
objects, then the leftovers (the lock file, staging folders). A failure stops there: what is
left is an output without an item (a store, perhaps without its marker), which a second run
removes. Deleting what does not exist is not an error.

Every removal writes one audit record, write-once, one file or object per deletion under
`{output_root}/_audit/deletions/` (S3 cannot append): time, collection, item, store and item
URLs, who (user@host) and why (`delete`, `cleanup --older-than 30d`). Each record is one JSON
line, and the same line is printed on stdout. A removal that stopped half-way (the item gone,
the store not) is recorded too, with its error.

`cleanup --older-than D` selects the outputs under output_root (of one collection with
`--collection`) that are older than now - D:
- an output with a marker, by the marker's `completed_at` (by the marker's modification time
  when it has none or cannot be read), whether its store is still there or not;
- an orphan store without a marker (a conversion killed between publishing and marking, a
  removal that stopped half-way), by its newest file or object.
It is a dry run unless `--apply`. Each selected output is looked at again under its lease (a
conversion that finished since the listing makes it new again, and it is kept); one that is
being converted is skipped. Not selected: catalog items without a store under output_root
(the Catalog protocol has no listing, a shared STAC API may hold items the pipeline never
wrote, and the removal order never leaves such an item behind; `delete` removes one), and the
staging leftovers of a killed conversion that has no store (its next conversion clears them).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from geozarr_pipeline import output_store
from geozarr_pipeline.attempts import open_attempt_journal
from geozarr_pipeline.catalog import Catalog, opened_catalog
from geozarr_pipeline.config import Settings, read_settings
from geozarr_pipeline.errors import InProgress, SourceNotFound, TransientError
from geozarr_pipeline.failures.records import FailureRecord
from geozarr_pipeline.failures.resolutions import open_resolution_log
from geozarr_pipeline.failures.store import open_failure_store
from geozarr_pipeline.guard import guarded, say, store_errors
from geozarr_pipeline.objects import ObjectStore, open_object_store
from geozarr_pipeline.output_store import OutputInfo

AUDIT_FOLDER = "_audit/deletions"
AUDIT_FORMAT = "geozarr-pipeline/deletion/1"

Record = dict[str, Any]
Emit = Callable[[Record], None]


# Durations ------------------------------------------------------------------------------

_SHORT = re.compile(r"(\d+)([smhdw])")
_ISO = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Age:
    text: str
    delta: timedelta


def _iso_duration(text: str) -> timedelta | None:
    match = _ISO.fullmatch(text.upper())
    if match is None or text.upper() in ("P", "PT") or text.upper().endswith("T"):
        return None
    weeks, days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_age(text: str) -> Age:
    """`30d`, `12h`, `90m` (also `s`, `w`) or an ISO 8601 duration without years or months
    (`P30D`, `PT12H`, `P1DT6H`, `P2W`); it must be longer than zero."""
    short = _SHORT.fullmatch(text.strip().lower())
    if short is not None:
        delta: timedelta | None = timedelta(**{_UNITS[short[2]]: int(short[1])})
    else:
        delta = _iso_duration(text.strip())
    if delta is None or delta <= timedelta(0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration longer than zero: use e.g. 30d, 12h, 90m or an "
            "ISO 8601 duration such as P30D or PT12H (no years or months)"
        )
    return Age(text=text.strip(), delta=delta)


def _expired(output: OutputInfo | None, cutoff: datetime) -> bool:
    reference = output.age_reference if output is not None else None
    return reference is not None and reference < cutoff


def _age_text(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


# Audit records --------------------------------------------------------------------------


def who() -> str:
    """user@host of the operator running the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _record_id(at: datetime, item_id: str) -> str:
    """Sorts by time; names the item; unique (a short random suffix)."""
    return f"{at:%Y%m%dT%H%M%S.%fZ}-{item_id[:100]}-{uuid.uuid4().hex[:8]}"


def _encoded(record: Record) -> bytes:
    return (json.dumps(record, sort_keys=False) + "\n").encode()


class AuditLog:
    """Write-once deletion records, one file or object each, in the object storage."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.location = store.location

    def url_for(self, record_id: str) -> str:
        return f"{self.location.rstrip('/')}/{record_id}.json"

    def write(self, record_id: str, body: bytes) -> None:
        """Store the record; never overwrite one (TransientError when it cannot be written)."""
        if not self.store.put(f"{record_id}.json", body, if_absent=True):
            raise TransientError(f"audit record {record_id} exists already in {self.location}")

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def audit_root(settings: Settings) -> str:
    return f"{settings.output_root.rstrip('/')}/{AUDIT_FOLDER}"


def open_audit_log(settings: Settings) -> AuditLog:
    return AuditLog(open_object_store(settings, audit_root(settings)))


# One removal ----------------------------------------------------------------------------


class ConversionRunning(InProgress):
    """The item's conversion lease is held: its output is being written right now."""


@dataclass(frozen=True)
class Outcome:
    result: Literal["deleted", "absent", "skipped"]
    record: Record | None = None


@dataclass
class Remover:
    """Removes items in the safe order and publishes one audit record per removal."""

    settings: Settings
    catalog: Catalog
    audit: AuditLog
    reason: str
    emit: Emit
    _failures: list[FailureRecord] | None = None

    def remove(
        self,
        collection: str,
        item_id: str,
        still_selected: Callable[[OutputInfo | None], bool] | None = None,
    ) -> Outcome:
        """Delete the item, then its output. `still_selected` re-checks the output under the
        lease (cleanup); ConversionRunning if a conversion holds the lease."""
        with (
            output_store.output_for(self.settings, collection, item_id) as location,
            self._held(location),
        ):
            output = output_store.output_info(self.settings, collection, item_id)
            if still_selected is not None and not still_selected(output):
                return Outcome("skipped")
            item_deleted = self.catalog.delete_item(collection, item_id)
            if not item_deleted and output is None:
                location.clear()  # staging leftovers, if any
                self._forget(collection, item_id)  # e.g. an item whose source never existed
                return Outcome("absent")
            record = self._record(collection, item_id, location.url, item_deleted, output)
            self._clear(location, record)
            self._publish(record)
            self._forget(collection, item_id)
        return Outcome("deleted", record)

    def _forget(self, collection: str, item_id: str) -> None:
        """The item's history goes with it: its open failure records are resolved (a replay
        must never bring a deleted item back) and its stage attempt records are removed.

        The item and its store are gone by now: a history that cannot be updated is a warning
        (run the command again to finish it), not a failed deletion.
        """
        try:
            self._forget_history(collection, item_id)
        except store_errors() as exc:
            say("warning", f"{collection}/{item_id}: its failure and attempt records: {exc}")

    def _forget_history(self, collection: str, item_id: str) -> None:
        if self._failures is None:
            with open_failure_store(self.settings) as store:
                self._failures = store.list()
        log = open_resolution_log(self.settings)
        try:
            for failure in self._failures:
                if failure.collection == collection and failure.item_id == item_id:
                    log.resolve(failure.record_id, f"item deleted ({self.reason})")
        finally:
            log.close()
        journal = open_attempt_journal(self.settings)
        try:
            journal.forget(collection, item_id)
        finally:
            journal.close()

    @contextlib.contextmanager
    def _held(self, location: output_store.OutputLocation) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    output_store.removal_lease(location, self.settings.convert_lease_seconds)
                )
            except InProgress as exc:
                raise ConversionRunning(str(exc)) from exc
            yield

    def _clear(self, location: output_store.OutputLocation, record: Record) -> None:
        """Marker, store, leftovers; a removal that stops half-way is recorded as such."""
        try:
            location.clear()
            self._check_gone(location.collection, location.item_id, location.url)
        except Exception as exc:
            unknown = {"marker_deleted": None, "store_deleted": None}
            self._publish({**record, **unknown, "result": "partial", "error": str(exc)})
            raise

    def _check_gone(self, collection: str, item_id: str, url: str) -> None:
        """A store that outlived its removal is an error, never a silent success."""
        if output_store.output_info(self.settings, collection, item_id) is not None:
            raise TransientError(f"{url} (or its marker) is still there after its removal")

    def _record(
        self,
        collection: str,
        item_id: str,
        store_url: str,
        item_deleted: bool,
        output: OutputInfo | None,
    ) -> Record:
        at = datetime.now(UTC)
        record_id = _record_id(at, item_id)
        return {
            "format": AUDIT_FORMAT,
            "result": "deleted",
            "deleted_at": at.isoformat(timespec="seconds"),
            "collection": collection,
            "item_id": item_id,
            "item_url": self.catalog.item_url(collection, item_id),
            "item_deleted": item_deleted,
            "store_url": store_url,
            "marker_deleted": bool(output and output.marker_present),
            "store_deleted": bool(output and output.store_present),
            "completed_at": _iso(output.completed_at) if output else None,
            "by": who(),
            "reason": self.reason,
            "audit_url": self.audit.url_for(record_id),
            "record_id": record_id,
        }

    def _publish(self, record: Record) -> None:
        """The durable record first; the stdout line even when that write fails."""
        try:
            self.audit.write(str(record["record_id"]), _encoded(record))
        except Exception:
            self.emit({**record, "audit_url": None})
            raise
        self.emit(record)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _json_line(record: Record) -> None:
    print(json.dumps(record), flush=True)


def _delete_text(record: Record) -> None:
    item = "deleted item" if record["item_deleted"] else "no item"
    print(f"{item} {record['item_url']}")
    parts = [name for name in ("marker", "store") if record[f"{name}_deleted"]]
    if parts:
        completed = f" (completed {record['completed_at']})" if record["completed_at"] else ""
        print(f"deleted {' and '.join(parts)} of {record['store_url']}{completed}")
    elif record["result"] == "deleted":
        print(f"no store at {record['store_url']}")
    if record.get("error"):
        print(f"stopped: {record['error']}")
    print(f"audit record {record['audit_url'] or '(not written)'}")


# delete ---------------------------------------------------------------------------------


def _item_exists(catalog: Catalog, collection: str, item_id: str) -> bool:
    try:
        catalog.get_item(collection, item_id)
    except SourceNotFound:
        return False
    return True


def _delete_plan(settings: Settings, catalog: Catalog, collection: str, item_id: str) -> Record:
    """What `delete` would do, looked up without changing anything."""
    with output_store.output_for(settings, collection, item_id) as location:
        output = output_store.output_info(settings, collection, item_id)
        running = location.lease_held()
        url = location.url
    exists = _item_exists(catalog, collection, item_id)
    result = "refused" if running else "would-delete" if exists or output else "nothing-to-delete"
    return {
        "result": result,
        "collection": collection,
        "item_id": item_id,
        "item_url": catalog.item_url(collection, item_id),
        "item_exists": exists,
        "store_url": url,
        "marker": bool(output and output.marker_present),
        "store": bool(output and output.store_present),
        "completed_at": _iso(output.completed_at) if output else None,
        "conversion_running": running,
    }


def _print_plan(plan: Record) -> None:
    print("dry run, nothing was deleted:")
    item = "would delete item" if plan["item_exists"] else "no item"
    print(f"  {item} {plan['item_url']}")
    if plan["marker"] or plan["store"]:
        parts = [name for name in ("marker", "store") if plan[name]]
        print(f"  would delete {' and '.join(parts)} of {plan['store_url']}")
    else:
        print(f"  no store at {plan['store_url']}")


def _refusal(collection: str, item_id: str) -> str:
    return (
        f"refused: {collection}/{item_id} is being converted right now (its lease is held); "
        "delete it once the conversion has finished"
    )


def _delete_dry_run(settings: Settings, catalog: Catalog, args: argparse.Namespace) -> int:
    plan = _delete_plan(settings, catalog, args.collection, args.item_id)
    if args.json:
        _json_line(plan)
    elif plan["result"] == "nothing-to-delete":
        print(_nothing(plan))
    else:
        _print_plan(plan)
    if plan["result"] == "refused":
        print(f"delete: {_refusal(args.collection, args.item_id)}", file=sys.stderr)
        return 1
    return 0


def _nothing(found: Record) -> str:
    return (
        f"nothing to delete: no item {found['item_id']} in collection {found['collection']} "
        f"and no store at {found['store_url']}"
    )


def _delete(args: argparse.Namespace) -> int:
    settings = read_settings()
    with opened_catalog(settings) as catalog:
        if args.dry_run:
            return _delete_dry_run(settings, catalog, args)
        with open_audit_log(settings) as audit:
            emit = _json_line if args.json else _delete_text
            remover = Remover(settings, catalog, audit, "delete", emit)
            try:
                outcome = remover.remove(args.collection, args.item_id)
            except ConversionRunning:
                print(f"delete: {_refusal(args.collection, args.item_id)}", file=sys.stderr)
                return 1
        if outcome.result == "absent":
            found = {
                "result": "nothing-to-delete",
                "collection": args.collection,
                "item_id": args.item_id,
                "item_url": catalog.item_url(args.collection, args.item_id),
                "store_url": output_store.output_for(settings, args.collection, args.item_id).url,
            }
            if args.json:
                _json_line(found)
            else:
                print(_nothing(found))
    return 0


# cleanup --------------------------------------------------------------------------------


def _candidate(output: OutputInfo, catalog: Catalog, now: datetime) -> Record:
    reference = output.age_reference
    return {
        "result": "would-delete",
        "collection": output.collection,
        "item_id": output.item_id,
        "item_url": catalog.item_url(output.collection, output.item_id),
        "store_url": output.url,
        "marker": output.marker_present,
        "store": output.store_present,
        "completed_at": _iso(output.completed_at),
        "modified_at": _iso(output.modified_at),
        "age": _age_text(now - reference) if reference else None,
    }


def _state(candidate: Record) -> str:
    if candidate["marker"] and candidate["store"]:
        return "converted"
    return "orphan store (no marker)" if candidate["store"] else "marker only (store gone)"


def format_candidates(candidates: Sequence[Record]) -> str:
    header = ["COLLECTION", "ITEM", "COMPLETED", "AGE", "STATE", "STORE"]
    rows = [header]
    for c in candidates:
        completed = c["completed_at"] or f"{c['modified_at']} (modified)"
        state = _state(c)
        rows.append(
            [c["collection"], c["item_id"], completed, c["age"] or "-", state, c["store_url"]]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _where(settings: Settings, collection: str | None) -> str:
    root = settings.output_root.rstrip("/")
    return f"{root}/{collection}" if collection else root


def _cleanup_dry_run(candidates: Sequence[Record], args: argparse.Namespace, where: str) -> int:
    if args.json:
        for candidate in candidates:
            _json_line(candidate)
        return 0
    if not candidates:
        print(f"dry run: nothing under {where} is older than {args.older_than.text}")
        return 0
    print(format_candidates(candidates))
    print(
        f"dry run: {len(candidates)} outputs under {where} are older than "
        f"{args.older_than.text}; nothing was deleted. Pass --apply to delete them "
        "(each item from the catalog first, then its store)."
    )
    return 0


def _cleanup_apply(
    settings: Settings, catalog: Catalog, outputs: Sequence[OutputInfo], age: Age, cutoff: datetime
) -> int:
    deleted = skipped = 0
    with open_audit_log(settings) as audit:
        remover = Remover(settings, catalog, audit, f"cleanup --older-than {age.text}", _json_line)
        for output in outputs:
            name = f"{output.collection}/{output.item_id}"
            try:
                outcome = remover.remove(
                    output.collection, output.item_id, lambda found: _expired(found, cutoff)
                )
            except ConversionRunning:
                print(f"cleanup: skipped {name}: it is being converted right now", file=sys.stderr)
                skipped += 1
                continue
            if outcome.result == "deleted":
                deleted += 1
            else:
                print(f"cleanup: skipped {name}: it changed since it was listed", file=sys.stderr)
                skipped += 1
        location = audit.location
    print(
        f"cleanup: deleted {deleted} of {len(outputs)} outputs older than {age.text}"
        f" ({skipped} skipped); audit records in {location}",
        file=sys.stderr,
    )
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    settings = read_settings()
    now = datetime.now(UTC)
    cutoff = now - args.older_than.delta
    listed = output_store.iter_outputs(settings, args.collection)
    outputs = [o for o in listed if _expired(o, cutoff)]
    with opened_catalog(settings) as catalog:
        if not args.apply:
            candidates = [_candidate(output, catalog, now) for output in outputs]
            return _cleanup_dry_run(candidates, args, _where(settings, args.collection))
        return _cleanup_apply(settings, catalog, outputs, args.older_than, cutoff)


# Command line ---------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    delete = subparsers.add_parser(
        "delete",
        help="delete one converted item: its STAC item first, then its store (GEOZARR_* env)",
    )
    delete.add_argument("item_id")
    delete.add_argument("--collection", required=True)
    delete.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    delete.add_argument("--json", action="store_true", help="print one JSON line")
    delete.set_defaults(func=guarded("delete", _delete))

    cleanup = subparsers.add_parser(
        "cleanup",
        help="delete converted items older than a duration (a dry run unless --apply)",
    )
    cleanup.add_argument(
        "--older-than",
        dest="older_than",
        type=parse_age,
        required=True,
        metavar="D",
        help="30d, 12h, 90m, or an ISO 8601 duration such as P30D",
    )
    cleanup.add_argument("--collection", default=None, help="only this collection")
    cleanup.add_argument(
        "--apply", action="store_true", help="delete them (default: only print what would go)"
    )
    cleanup.add_argument("--json", action="store_true", help="print JSON lines")
    cleanup.set_defaults(func=guarded("cleanup", _cleanup))
