"""CLI subcommands of the catalog: register a store, show an item."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from geozarr_pipeline.guard import guarded


def _register(args: argparse.Namespace) -> int:
    from geozarr_pipeline import output_store
    from geozarr_pipeline.config import read_settings
    from geozarr_pipeline.events import ConvertDone
    from geozarr_pipeline.stages import register

    overrides: dict[str, Any] = {}
    if args.mode:
        overrides["register_mode"] = args.mode
    settings = read_settings().model_copy(update=overrides)
    with output_store.output_for(settings, args.collection, args.item_id) as location:
        marker = output_store.completed_marker(location)
        if marker is None:
            print(
                f"register-store: no completed conversion of {args.collection}/{args.item_id} "
                f"at {location.url}",
                file=sys.stderr,
            )
            return 1
    done = register.run(ConvertDone.model_validate(marker["done"]), settings)
    print(done.model_dump_json(indent=2))
    return 0


def _show(args: argparse.Namespace) -> int:
    from geozarr_pipeline.catalog import opened_catalog
    from geozarr_pipeline.config import read_settings

    with opened_catalog(read_settings()) as catalog:
        item = catalog.get_item(args.collection, args.item_id)
    print(json.dumps(item, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reg = subparsers.add_parser(
        "register-store",
        help="register (again) the store convert wrote for an item into the configured "
        "catalog, from its completion marker (GEOZARR_* env)",
    )
    reg.add_argument("--item-id", required=True)
    reg.add_argument("--collection", required=True)
    reg.add_argument("--mode", choices=["create-or-skip", "upsert", "replace"], default=None)
    reg.set_defaults(func=guarded("register-store", _register))

    show = subparsers.add_parser("show-item", help="print an item of the configured catalog")
    show.add_argument("collection")
    show.add_argument("item_id")
    show.set_defaults(func=guarded("show-item", _show))
