"""Benchmark: register one item against the local STAC API (stac-fastapi-pgstac).

Synthesizes a small L2A sample, converts it with eopf-geozarr once, starts the local STAC API
and the sample server, then times `register.run` (fetch source item over HTTP, read the store's
metadata, build, validate, upsert) many times and prints the median.

    uv run python benchmarks/register/run.py --runs 50 [--scale 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from geozarr_local.stac_api import running_api
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import ConvertDone
from geozarr_local.processes import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    http_ready,
    module_command,
)
from geozarr_local.sample.build import Sample, write_sample
from geozarr_local.sample.layout import item_url, product_url
from geozarr_pipeline.stages import register


def _time_runs(
    api_url: str, sample_url: str, sample: Sample, store: Path, runs: int
) -> tuple[float, list[float]]:
    """Seconds of the first run (creates collection and item) and of each later upsert."""
    source = item_url(sample_url, sample.collection, sample.item_id)
    event = ConvertDone(
        item_id=sample.item_id,
        collection=sample.collection,
        source_url=source,
        source_item_url=source,
        zarr_url=product_url(sample_url, sample.item_id),
        output_url=str(store),
    )
    settings = Settings(
        catalog_backend="stac-api",
        stac_api_url=api_url,
        output_root=str(store.parent),
        register_mode="upsert",
        allow_plain_http=True,
        allow_private_hosts=True,
    )
    first = time.perf_counter()
    register.run(event, settings)
    cold = time.perf_counter() - first
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        register.run(event, settings)
        times.append(time.perf_counter() - started)
    with httpx.Client() as client:
        client.get(
            f"{api_url}/collections/{sample.collection}/items/{sample.item_id}"
        ).raise_for_status()
    return cold, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--scale", type=float, default=0.05)
    args = parser.parse_args()

    from eopf_geozarr.conversion import open_source_datatree
    from eopf_geozarr.s2_optimization.s2_converter import convert_s2_optimized

    with tempfile.TemporaryDirectory(prefix="bench-register-") as tmp_name:
        tmp = Path(tmp_name)
        sample = write_sample(tmp / "sample", "l2a", scale=args.scale)
        store = tmp / "out" / f"{sample.item_id}.zarr"
        convert_s2_optimized(
            open_source_datatree(str(sample.product_path)),
            output_path=str(store),
            spatial_chunk=256,
            enable_sharding=False,
            keep_scale_offset=False,
            validate_output=False,
            compression_level=3,
        )
        sample_port = free_port()
        server = ManagedProcess(
            name="sample-server",
            command=module_command(
                "geozarr_local.sample.server", sample_port, "--root", str(tmp / "sample")
            ),
            log_path=tmp / "sample.log",
        ).start()
        try:
            sample_url = f"http://{LOOPBACK}:{sample_port}"
            server.wait_ready(http_ready(f"{sample_url}/healthz"), timeout=60)
            with running_api(tmp / "api", tmp / "api.log") as api_url:
                cold, times = _time_runs(api_url, sample_url, sample, store, args.runs)
        finally:
            server.stop()
    times.sort()
    print(f"register.run against the local STAC API, {args.runs} runs (upsert of an existing item)")
    print(f"first run (creates collection + item): {cold * 1000:.0f} ms")
    print(f"median: {statistics.median(times) * 1000:.0f} ms")
    print(f"p90:    {times[int(len(times) * 0.9) - 1] * 1000:.0f} ms")
    print(f"min/max: {times[0] * 1000:.0f} / {times[-1] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
