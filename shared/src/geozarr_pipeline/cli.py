"""The `geozarr-pipeline` command: each subcommand lives beside the code it drives.

The operator commands are this package's; other installed packages add theirs through the
`geozarr_pipeline.commands` entry point group (the local stand-ins add `stack`, `demo`,
`broker`, ...), so this package never imports them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points

type SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

COMMAND_GROUP = "geozarr_pipeline.commands"

# Each module exposes `register(subparsers)`, adding its subcommands with a `func` default
# that takes the parsed arguments and returns an exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "geozarr_pipeline.failures.commands",
    "geozarr_pipeline.submit",
    "geozarr_pipeline.convert.commands",
    "geozarr_pipeline.catalog.commands",
    "geozarr_pipeline.operations.status",
    "geozarr_pipeline.operations.removal",
    "geozarr_pipeline.operations.backfill",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geozarr-pipeline",
        description="EOPF Sentinel-2 Zarr -> GeoZarr -> STAC -> web map.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for entry_point in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry_point.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
