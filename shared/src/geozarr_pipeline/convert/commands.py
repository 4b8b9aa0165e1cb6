"""`geozarr-pipeline convert`: run the convert stage once, outside any event machinery.

Settings come from the GEOZARR_* environment like the function's; prints the ConvertDone
data as JSON. Exit codes: 0 done, 2 permanent error (4xx), 3 retryable error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

SubParsers = Any


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert one product to GeoZarr (the convert stage, run once)"
    )
    parser.add_argument("--source-url", required=True, help="STAC item URL or .zarr URL")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--item-id", default=None, help="default: derived from the URL")
    parser.add_argument("--spatial-chunk", type=int, default=None)
    parser.add_argument(
        "--sharding", action=argparse.BooleanOptionalAction, default=None, dest="sharding"
    )
    parser.add_argument("--shard-size", type=int, default=None, help="pixels a side of a shard")
    parser.add_argument("--keep-scale-offset", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--force", action="store_true", help="convert again even if done")
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from geozarr_pipeline.config import get_settings
    from geozarr_pipeline.errors import PipelineError, status_code_for
    from geozarr_pipeline.events import ConvertRequested
    from geozarr_pipeline.logs import configure_logging
    from geozarr_pipeline.stages import convert

    configure_logging()
    try:
        event = ConvertRequested(
            source_url=args.source_url,
            collection=args.collection,
            item_id=args.item_id,
            options={
                "spatial_chunk": args.spatial_chunk,
                "enable_sharding": args.sharding,
                "shard_size": args.shard_size,
                "keep_scale_offset": args.keep_scale_offset,
                "force": args.force,
            },
        )
    except ValidationError as exc:
        print(f"invalid request: {exc}", file=sys.stderr)
        return 2
    try:
        done = convert.run(event, get_settings())
    except PipelineError as exc:
        print(json.dumps({"status": status_code_for(exc), **exc.to_body()}), file=sys.stderr)
        return 3 if exc.retryable else 2
    print(json.dumps(done.model_dump(mode="json")))
    return 0
