"""`geozarr-pipeline sample synthesize|serve`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from geozarr_local.sample.hierarchy import PRODUCTS

SubParsers = Any


def register(subparsers: SubParsers) -> None:
    sample = subparsers.add_parser("sample", help="synthetic Sentinel-2 products and their server")
    commands = sample.add_subparsers(dest="sample_command", required=True)

    synth = commands.add_parser(
        "synthesize", help="write a product and its source item into a server root"
    )
    synth.add_argument("--product", choices=sorted(PRODUCTS), default="l2a")
    synth.add_argument("--scale", type=float, default=0.1, help="1.0 = full 10980^2 tile")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--root", type=Path, required=True)
    synth.add_argument("--item-id", default=None, help="default: the reference product id")
    synth.add_argument("--collection", default=None, help="default: sentinel-2-l2a / -l1c")
    synth.set_defaults(func=_synthesize)

    serve = commands.add_parser("serve", help="serve a root folder on loopback")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--root", type=Path, required=True)
    serve.set_defaults(func=_serve)


def _synthesize(args: argparse.Namespace) -> int:
    from geozarr_local.sample.build import write_sample

    started = time.monotonic()
    sample = write_sample(
        args.root,
        args.product,
        scale=args.scale,
        seed=args.seed,
        item_id=args.item_id,
        collection=args.collection,
    )
    summary = {
        "item_id": sample.item_id,
        "collection": sample.collection,
        "product_path": str(sample.product_path),
        "item_path": str(sample.item_path),
        # Routes on `geozarr-pipeline sample serve --root <root>`.
        "item_route": f"/collections/{sample.collection}/items/{sample.item_id}",
        "product_route": f"/products/{sample.item_id}.zarr",
        "effective_scale": round(sample.effective_scale, 6),
        "raster_sizes": sample.sizes,
        "seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(summary))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from geozarr_local.sample.server import main

    return main(["--host", args.host, "--port", str(args.port), "--root", str(args.root)])
