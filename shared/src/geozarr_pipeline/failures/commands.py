"""`geozarr-pipeline failures list|show`: read the failure records, locally or on the cluster.

Run with the same GEOZARR_* settings as the stages (or `--root`), the CLI reads the records
the recorder wrote, from the folder or the S3 prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import TransientError
from geozarr_pipeline.failures.records import FailureRecord
from geozarr_pipeline.failures.store import open_failure_store

FILTERS = ("stage", "collection", "kind", "item_id")


def _matches(record: FailureRecord, args: argparse.Namespace) -> bool:
    if args.code and record.problem.code != args.code:
        return False
    if args.since and record.recorded_at < args.since:
        return False
    return all(
        getattr(args, name) is None or getattr(record, name) == getattr(args, name)
        for name in FILTERS
    )


def _row(record: FailureRecord) -> list[str]:
    return [
        record.recorded_at,
        record.record_id,
        record.stage or "-",
        record.item_id or "-",
        record.kind,
        record.problem.code,
        record.problem.field or "-",
        record.problem.message[:80],
    ]


def format_table(records: Sequence[FailureRecord]) -> str:
    header = ["RECORDED", "RECORD", "STAGE", "ITEM", "KIND", "PROBLEM", "FIELD", "MESSAGE"]
    rows = [header, *(_row(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _list(args: argparse.Namespace) -> int:
    with open_failure_store(Settings(), args.root) as store:
        records = [r for r in store.list() if _matches(r, args)]
        location = store.location
    if args.json:
        json.dump([r.model_dump(mode="json") for r in records], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif records:
        print(format_table(records))
    else:
        print(f"no failure records in {location}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_failure_store(Settings(), args.root) as store:
        record = store.get(args.record_id)
        location = store.location
    if record is None:
        print(f"no failure record {args.record_id} in {location}", file=sys.stderr)
        return 1
    json.dump(record.model_dump(mode="json"), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _reading(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A store that cannot be read is one line on stderr and exit 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (TransientError, ValueError) as exc:
            print(f"failures: {exc}", file=sys.stderr)
            return 1

    return run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("failures", help="list and show failure records")
    commands = parser.add_subparsers(dest="failures_command", required=True)
    root_help = "failures root: a folder or s3://bucket/prefix (default: GEOZARR_FAILURES_ROOT, "
    root_help += "else GEOZARR_OUTPUT_ROOT/_failures)"
    listing = commands.add_parser("list", help="list failure records, oldest first")
    listing.add_argument("--root", default=None, help=root_help)
    listing.add_argument("--stage", default=None)
    listing.add_argument("--collection", default=None)
    listing.add_argument("--item-id", dest="item_id", default=None)
    listing.add_argument("--kind", choices=["failure_event", "dead_letter"], default=None)
    listing.add_argument("--code", default=None, help="problem code, e.g. invalid_input")
    listing.add_argument("--since", default=None, help="ISO time; records at or after it")
    listing.add_argument("--json", action="store_true", help="print the records as JSON")
    listing.set_defaults(func=_reading(_list))
    show = commands.add_parser("show", help="print one record whole")
    show.add_argument("record_id")
    show.add_argument("--root", default=None, help=root_help)
    show.set_defaults(func=_reading(_show))
