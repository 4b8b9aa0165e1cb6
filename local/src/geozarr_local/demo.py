"""`geozarr-pipeline demo` and `geozarr-pipeline stack`: the chain on embedded defaults."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from cloudevents.http import CloudEvent

from geozarr_local.broker.commands import default_manifests
from geozarr_local.sample.layout import item_url
from geozarr_local.stack import LocalStack
from geozarr_pipeline.cli import SubParsers
from geozarr_pipeline.events import EventType


def register(subparsers: SubParsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="synthesize a sample, run the whole chain locally, print the registered item",
    )
    _add_stack_options(demo)
    demo.add_argument("--scale", type=float, default=0.1, help="sample size (1.0 = full tile)")
    demo.add_argument("--product", choices=("l2a",), default="l2a")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep the stack (and the viewer) running after the run, until Ctrl-C",
    )
    demo.set_defaults(func=_demo)

    stack = subparsers.add_parser(
        "stack",
        help="synthesize the sample, start the local stack on fixed ports, run until Ctrl-C",
    )
    _add_stack_options(stack)
    stack.add_argument("--scale", type=float, default=0.1, help="sample size (1.0 = full tile)")
    for name, port in DEFAULT_PORTS.items():
        stack.add_argument(f"--{name}-port", type=int, default=port, dest=f"{name}_port")
    stack.set_defaults(func=_stack)


DEFAULT_PORTS = {"broker": 8080, "samples": 8081, "raster": 8082}


def _add_stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("data/demo"), help="state folder")
    parser.add_argument("--manifests", type=Path, default=default_manifests())
    parser.add_argument("--fresh", action="store_true", help="delete --root first")
    parser.add_argument(
        "--stac-api",
        action="store_true",
        help="register into a local STAC API (PostgreSQL + pgstac + stac-fastapi-pgstac) "
        "started for the run, instead of the static catalog",
    )
    parser.add_argument(
        "--use-env",
        action="store_true",
        help="take GEOZARR_* settings from the environment over the embedded defaults, e.g. "
        "GEOZARR_OUTPUT_ROOT=s3://bucket/prefix with GEOZARR_S3_ENDPOINT_URL and keys",
    )


def _stack_for(args: argparse.Namespace, **options: Any) -> LocalStack:
    return LocalStack(
        _prepare_root(args),
        manifests=args.manifests,
        stac_api=args.stac_api,
        inherit_env=args.use_env,
        **options,
    )


def _prepare_root(args: argparse.Namespace) -> Path:
    root: Path = args.root.resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    return root


def _print_urls(stack: LocalStack) -> None:
    print("local stack:")
    for name, url in stack.urls.items():
        print(f"  {name:18} {url}")
    print(f"  logs               {stack.root / 'logs'}")
    env = stack.settings_env()
    print(f"  output root        {env['GEOZARR_OUTPUT_ROOT']}")
    catalog = env.get("GEOZARR_STAC_API_URL") or env["GEOZARR_CATALOG_ROOT"]
    print(f"  catalog            {env['GEOZARR_CATALOG_BACKEND']} {catalog}")


def _wait_for_interrupt() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _stack(args: argparse.Namespace) -> int:
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    with _stack_for(args, ports=ports) as stack:
        _print_urls(stack)
        from geozarr_local.sample.build import write_sample

        sample = write_sample(stack.samples_dir, "l2a", scale=args.scale)
        print(f"sample item: {item_url(stack.sample_url, sample.collection, sample.item_id)}")
        print("stack running; press Ctrl-C to stop", flush=True)
        _wait_for_interrupt()
    return 0


def convert_requested_event(sample_item_url: str, item_id: str, collection: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": EventType.CONVERT_REQUESTED.value,
            "source": "urn:eopf-geozarr:demo",
            "id": str(uuid.uuid4()),
            "subject": item_id,
            "datacontenttype": "application/json",
        },
        {"source_url": sample_item_url, "item_id": item_id, "collection": collection},
    )


def _load_item(item_url_or_path: str) -> dict[str, Any]:
    if item_url_or_path.startswith(("http://", "https://")):
        response = httpx.get(item_url_or_path, timeout=30)
        response.raise_for_status()
        loaded: dict[str, Any] = response.json()
        return loaded
    path = item_url_or_path.removeprefix("file://")
    loaded = json.loads(Path(path).read_text())
    return loaded


def describe_store(output_url: str, env: dict[str, str]) -> list[str]:
    """Open the written store with xarray and list its multiscale reflectance levels."""
    import xarray as xr

    from geozarr_pipeline.config import Settings
    from geozarr_pipeline.output_store import s3_storage_options

    s3_names = ("s3_endpoint_url", "s3_region", "s3_access_key_id", "s3_secret_access_key")
    given: dict[str, Any] = {n: env.get(f"GEOZARR_{n.upper()}") for n in s3_names}
    settings = Settings.model_validate({k: v for k, v in given.items() if v})
    options = s3_storage_options(settings) if output_url.startswith("s3://") else None
    tree = xr.open_datatree(
        output_url.removeprefix("file://"), engine="zarr", storage_options=options
    )
    reflectance = tree["measurements/reflectance"]
    return [
        f"{name}: {dict(child.sizes)} {sorted(child.data_vars)}"
        for name, child in reflectance.children.items()
    ]


def _demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with _stack_for(args) as stack:
        _print_urls(stack)
        from geozarr_local.sample.build import write_sample

        sample = write_sample(stack.samples_dir, args.product, scale=args.scale)
        print(f"sample product {sample.item_id} ({sample.collection}) at scale {args.scale}")
        source_url = item_url(stack.sample_url, sample.collection, sample.item_id)
        seq = stack.publish(convert_requested_event(source_url, sample.item_id, sample.collection))
        print(f"submitted {EventType.CONVERT_REQUESTED.value} for {source_url}", flush=True)
        done = stack.wait_for_chain(sample.item_id, timeout=args.timeout, after=seq - 1)
        item = _load_item(done["item_url"])
        converted = stack.wait_for(EventType.CONVERT_DONE.value, sample.item_id, after=seq - 1)
        print(f"\nchain finished in {time.monotonic() - started:.1f} s")
        print(f"GeoZarr store: {converted['output_url']}")
        for line in describe_store(converted["output_url"], stack.settings_env()):
            print(f"  {line}")
        print(f"\nregistered item ({done['item_url']}):")
        print(json.dumps(item, indent=2))
        print("\nlinks:")
        for link in item.get("links", []):
            print(f"  {link.get('rel', ''):12} {link.get('href', '')}")
        print(f"\nviewer: {done.get('viewer_url')}")
        if args.serve:
            print("serving; press Ctrl-C to stop", flush=True)
            _wait_for_interrupt()
    return 0
