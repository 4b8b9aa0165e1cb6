"""The `geozarr-pipeline` command: each subcommand lives beside the code it drives."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

type SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

# Each module exposes `register(subparsers)`, adding its subcommands with a `func` default
# that takes the parsed arguments and returns an exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "geozarr_pipeline.local.broker",
    "geozarr_pipeline.failures.commands",
    "geozarr_pipeline.sample.commands",
    "geozarr_pipeline.local.demo",
    "geozarr_pipeline.submit",
    "geozarr_pipeline.local.amqp_bridge",
    "geozarr_pipeline.convert.commands",
    "geozarr_pipeline.catalog.commands",
    "geozarr_pipeline.operations.status",
    "geozarr_pipeline.operations.removal",
    "geozarr_pipeline.operations.backfill",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geozarr-pipeline",
        description="EOPF Sentinel-2 Zarr -> GeoZarr -> STAC -> web map, on one machine.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
