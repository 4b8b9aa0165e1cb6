"""Dead-letter records of the local broker: one JSON file per event that could not be delivered.

Each record is written atomically (temporary file + rename in the same folder), so a reader
never sees half a record, and a crash leaves at most a stray `.tmp` file that listing skips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEAD_LETTER_DIR = "dead-letters"
RECORD_VERSION = 1


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter_dir(state_dir: Path) -> Path:
    return state_dir / DEAD_LETTER_DIR


def write_record(state_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write one record as `<recorded_at>-<trigger>-<record id>.json`, atomically."""
    folder = dead_letter_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = str(record["recorded_at"]).replace(":", "").replace("-", "").replace(".", "")
    final = folder / f"{stamp}-{record['trigger']}-{record['record_id']}.json"
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return final


def new_record_id() -> str:
    return uuid.uuid4().hex


def list_records(state_dir: Path) -> list[dict[str, Any]]:
    """Every complete record, oldest first, each with the `file` it was read from."""
    folder = dead_letter_dir(state_dir)
    if not folder.is_dir():
        return []
    records: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            record["file"] = str(path)
            records.append(record)
    records.sort(key=lambda r: (str(r.get("recorded_at", "")), str(r.get("file", ""))))
    return records


def _row(record: Mapping[str, Any]) -> list[str]:
    attributes = (record.get("event") or {}).get("attributes") or {}
    status = record.get("last_status")
    return [
        str(record.get("recorded_at", "")),
        str(record.get("trigger", "")),
        str(attributes.get("type", "")),
        str(attributes.get("subject", "") or "-"),
        str(attributes.get("id", "")),
        str(status) if status is not None else str(record.get("last_error") or "-"),
        str(record.get("attempts", "")),
        str(record.get("reason", "")),
    ]


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    header = ["RECORDED", "TRIGGER", "TYPE", "SUBJECT", "EVENT ID", "LAST", "ATTEMPTS", "REASON"]
    rows = [header, *(_row(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _list_command(args: argparse.Namespace) -> int:
    records = list_records(Path(args.state_dir))
    if args.json:
        json.dump(records, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif records:
        print(format_table(records))
    else:
        print(f"no dead letters in {dead_letter_dir(Path(args.state_dir))}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dead-letters", help="inspect events the local broker could not deliver"
    )
    commands = parser.add_subparsers(dest="dead_letters_command", required=True)
    listing = commands.add_parser("list", help="list dead-letter records")
    listing.add_argument(
        "--state-dir", required=True, help="the local broker's --state-dir (records live in it)"
    )
    listing.add_argument("--json", action="store_true", help="print the records as JSON")
    listing.set_defaults(func=_list_command)
