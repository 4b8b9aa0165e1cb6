"""`geozarr-pipeline failures list|show|replay`: the failure records, locally or on the cluster.

Run with the same GEOZARR_* settings as the stages (or `--root`), the CLI reads the records
the recorder wrote, from the folder or the S3 prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

from geozarr_pipeline.config import Settings, read_settings
from geozarr_pipeline.failures.records import FailureRecord
from geozarr_pipeline.failures.resolutions import open_resolution_log
from geozarr_pipeline.failures.store import open_failure_store
from geozarr_pipeline.guard import guarded
from geozarr_pipeline.operations.status import iso_time
from geozarr_pipeline.redaction import redact
from geozarr_pipeline.submit import DEFAULT_EXCHANGE, DEFAULT_ROUTING_KEY

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


def _row(record: FailureRecord, state: str) -> list[str]:
    return [
        record.recorded_at,
        record.record_id,
        record.stage or "-",
        record.item_id or "-",
        record.kind,
        record.problem.code,
        state,
        record.problem.message[:80],
    ]


def format_table(records: Sequence[FailureRecord], states: Sequence[str]) -> str:
    header = ["RECORDED", "RECORD", "STAGE", "ITEM", "KIND", "PROBLEM", "STATE", "MESSAGE"]
    rows = [header, *(_row(r, s) for r, s in zip(records, states, strict=True))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _states(settings: Settings, root: str | None, records: Sequence[FailureRecord]) -> list[str]:
    """open, replayed (N times) or resolved, for each record."""
    log = open_resolution_log(settings, root)
    try:
        resolved = log.resolved_ids()
        replays = log.replay_counts()
    finally:
        log.close()
    return [
        "resolved"
        if record.record_id in resolved
        else (f"replayed x{replays[record.record_id]}" if record.record_id in replays else "open")
        for record in records
    ]


def _list(args: argparse.Namespace) -> int:
    settings = read_settings()
    with open_failure_store(settings, args.root) as store:
        records = [r for r in store.list() if _matches(r, args)]
        location = store.location
    states = _states(settings, args.root, records)
    if args.open:
        records = [r for r, s in zip(records, states, strict=True) if s != "resolved"]
        states = [s for s in states if s != "resolved"]
    if args.json:
        payload = [
            {**r.model_dump(mode="json"), "state": s} for r, s in zip(records, states, strict=True)
        ]
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif records:
        print(format_table(records, states))
    else:
        print(f"no failure records in {location}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from geozarr_pipeline.operations.replay import (
        AmqpSender,
        HttpSender,
        Sender,
        replay_one,
        superseding,
        wait_resolved,
    )
    from geozarr_pipeline.operations.status import open_sources

    if not (
        args.record_ids or args.all or any(getattr(args, n) for n in (*FILTERS, "code", "since"))
    ):
        print("failures replay: give record ids, filters, or --all", file=sys.stderr)
        return 2
    sender: Sender | None = None
    if not args.dry_run:
        if bool(args.url) == bool(args.amqp_url):
            print("failures replay: give --url (HTTP) or --amqp-url (AMQP)", file=sys.stderr)
            return 2
        sender = (
            HttpSender(args.url)
            if args.url
            else AmqpSender(args.amqp_url, args.exchange, args.routing_key)
        )
    settings = read_settings()
    with open_failure_store(settings, args.root) as store:
        every = store.list()
    records = [r for r in every if _matches(r, args)]
    if args.record_ids:
        wanted = set(args.record_ids)
        records = [r for r in records if r.record_id in wanted]
        missing = wanted - {r.record_id for r in records}
        if missing:
            print(f"failures replay: no record {', '.join(sorted(missing))}", file=sys.stderr)
            return 1
    log = open_resolution_log(settings, args.root)
    try:
        with open_sources(settings, args.root) as sources:
            newer = superseding(every)
            outcomes = [
                replay_one(record, sources, log, sender, newer, again=args.again)
                for record in records
            ]
            if args.wait and sender is not None:
                by_id = {r.record_id: r for r in records}
                wait_resolved(outcomes, by_id, sources, log, args.wait)
    finally:
        log.close()
    for outcome in outcomes:
        if args.json:
            print(json.dumps(outcome.as_json()))
        else:
            detail = f" ({redact(outcome.detail)})" if outcome.detail else ""
            print(f"{outcome.action:12} {outcome.record_id} {outcome.item_id or '-'}{detail}")
    counts = Counter(o.action for o in outcomes)
    if not args.json:
        print(", ".join(f"{a}: {n}" for a, n in sorted(counts.items())) or "nothing to replay")
    return 1 if counts.get("failed") else 0


def _show(args: argparse.Namespace) -> int:
    with open_failure_store(read_settings(), args.root) as store:
        record = store.get(args.record_id)
        location = store.location
    if record is None:
        print(f"no failure record {args.record_id} in {location}", file=sys.stderr)
        return 1
    json.dump(record.model_dump(mode="json"), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", default=None)
    parser.add_argument("--collection", default=None)
    parser.add_argument("--item-id", dest="item_id", default=None)
    parser.add_argument("--kind", choices=["failure_event", "dead_letter"], default=None)
    parser.add_argument("--code", default=None, help="problem code, e.g. invalid_input")
    parser.add_argument(
        "--since", type=iso_time, default=None, help="ISO time; records at or after it"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("failures", help="list, show and replay failure records")
    commands = parser.add_subparsers(dest="failures_command", required=True)
    root_help = "failures root: a folder or s3://bucket/prefix (default: GEOZARR_FAILURES_ROOT, "
    root_help += "else GEOZARR_OUTPUT_ROOT/_failures)"
    listing = commands.add_parser("list", help="list failure records, oldest first")
    listing.add_argument("--root", default=None, help=root_help)
    _add_filters(listing)
    listing.add_argument("--open", action="store_true", help="only records not resolved")
    listing.add_argument("--json", action="store_true", help="print the records as JSON")
    listing.set_defaults(func=guarded("failures list", _list))
    replay = commands.add_parser(
        "replay",
        help="send records' input events again (skips what has succeeded since)",
    )
    replay.add_argument("record_ids", nargs="*", help="records to replay (else by the filters)")
    replay.add_argument("--root", default=None, help=root_help)
    _add_filters(replay)
    replay.add_argument("--all", action="store_true", help="every open record")
    replay.add_argument("--url", default=None, help="broker ingress URL (HTTP)")
    replay.add_argument("--amqp-url", default=None, help="RabbitMQ URL: publish on the exchange")
    replay.add_argument("--exchange", default=DEFAULT_EXCHANGE)
    replay.add_argument("--routing-key", default=DEFAULT_ROUTING_KEY)
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    replay.add_argument(
        "--again",
        action="store_true",
        help="send records replayed before and not resolved yet once more",
    )
    replay.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for each replayed stage to succeed, and mark it resolved",
    )
    replay.add_argument("--json", action="store_true", help="one JSON line per record")
    replay.set_defaults(func=guarded("failures replay", _replay))
    show = commands.add_parser("show", help="print one record whole")
    show.add_argument("record_id")
    show.add_argument("--root", default=None, help=root_help)
    show.set_defaults(func=guarded("failures show", _show))
