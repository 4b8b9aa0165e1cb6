"""Benchmark of the convert stage against direct eopf-geozarr calls and a copy floor.

    uv run python benchmarks/convert/run.py --product /path/full.zarr --work /path/work \
        [--synthesize] [--configs stage,direct-1024,...] [--results results.jsonl]

Every configuration runs in its own fresh Python process (so peak RSS is its own), one after
the other, on the same source product and the same disk. Measured per run: wall time of the
work (the library is imported before the clock starts; import time is reported apart), peak
RSS of the process (`wait4` rusage), output bytes and object (file) count, and the 1-minute
load average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STAGE = {"kind": "stage", "spatial_chunk": 1024, "check": "sample", "shard_size": 4096}
CONFIGS: dict[str, dict[str, Any]] = {
    # The stage with its defaults: integer reflectance, 1024 chunks in 4096 shards.
    "stage": {**STAGE, "sharding": True, "integer": True},
    "stage-full-check": {**STAGE, "sharding": True, "integer": True, "check": "full"},
    "stage-int": {**STAGE, "sharding": False, "integer": True},
    "stage-float": {**STAGE, "sharding": False, "integer": False},
    "stage-float-sharded": {**STAGE, "sharding": True, "integer": False},
    "stage-int-sharded-2048": {**STAGE, "sharding": True, "integer": True, "shard_size": 2048},
    "stage-2048": {**STAGE, "spatial_chunk": 2048, "sharding": False, "integer": False},
    "direct-1024": {"kind": "direct", "spatial_chunk": 1024, "sharding": False},
    "direct-2048": {"kind": "direct", "spatial_chunk": 2048, "sharding": False},
    "direct-4096": {"kind": "direct", "spatial_chunk": 4096, "sharding": False},
    "direct-256-sharded": {"kind": "direct", "spatial_chunk": 256, "sharding": True},
    "direct-1024-sharded": {"kind": "direct", "spatial_chunk": 1024, "sharding": True},
    "cli-default": {"kind": "cli"},
    "copy-floor": {"kind": "copy", "spatial_chunk": 1024, "native": False},
    "copy-native": {"kind": "copy", "spatial_chunk": 1024, "native": True},
}
DEFAULT_ORDER = (
    "copy-native",
    "direct-1024",
    "stage",
    "stage-int",
    "stage-float",
    "stage-float-sharded",
    "copy-floor",
    "stage-full-check",
    "direct-2048",
    "direct-4096",
    "cli-default",
    "direct-256-sharded",
)


def tree_size(path: Path) -> tuple[int, int]:
    total = count = 0
    for entry in path.rglob("*"):
        if entry.is_file():
            total += entry.stat().st_size
            count += 1
    return total, count


def run_one(name: str, product: Path, output: Path, work: Path) -> dict[str, Any]:
    """Inside the child process: do one configuration, return its measurements."""
    config = CONFIGS[name]
    result: dict[str, Any] = {"config": name, **config}
    if config["kind"] == "cli":
        started = time.monotonic()
        subprocess.run(
            [
                str(Path(sys.executable).with_name("eopf-geozarr")),
                "convert",
                str(product),
                str(output),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result["wall_s"] = round(time.monotonic() - started, 2)
        result["note"] = "includes the CLI's own import (~4 s) and its output validation"
        return result

    started = time.monotonic()
    from geozarr_pipeline.convert import engine

    library = engine.load_library()
    result["import_s"] = round(time.monotonic() - started, 2)

    if config["kind"] == "direct":
        import warnings

        warnings.filterwarnings("ignore")
        started = time.monotonic()
        tree = library.open_source_datatree(str(product))
        library.convert_s2_optimized(
            tree,
            output_path=str(output),
            enable_sharding=config["sharding"],
            spatial_chunk=config["spatial_chunk"],
            compression_level=3,
            validate_output=False,
            keep_scale_offset=False,
        )
        result["wall_s"] = round(time.monotonic() - started, 2)
    elif config["kind"] == "copy":
        started = time.monotonic()
        copy_floor(product, output, config["spatial_chunk"], native=config["native"])
        result["wall_s"] = round(time.monotonic() - started, 2)
    else:
        result.update(run_stage(config, product, output, work))
    return result


def run_stage(config: dict[str, Any], product: Path, output: Path, work: Path) -> dict[str, Any]:
    from geozarr_pipeline.config import Settings
    from geozarr_pipeline.events import ConvertRequested
    from geozarr_pipeline.stages import convert

    steps: list[tuple[str, float]] = []

    class Steps(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            step = getattr(record, "step", None)
            if step in ("resolved", "open", "converted", "checked", "done"):
                steps.append((step, float(getattr(record, "elapsed_s", 0.0))))

    logger = logging.getLogger("geozarr_pipeline.convert")
    logger.addHandler(Steps())
    logger.setLevel(logging.INFO)
    settings = Settings(
        output_root=str(output),
        work_dir=work,
        allow_file_urls=True,
        spatial_chunk=config["spatial_chunk"],
        enable_sharding=config["sharding"],
        shard_size=config["shard_size"],
        keep_scale_offset=config["integer"],
        convert_check_native=config["check"],
    )
    event = ConvertRequested(
        source_url=Path(os.path.abspath(product)).as_uri(),
        collection="sentinel-2-l2a",
        item_id="BENCH",
    )
    started = time.monotonic()
    done = convert.run(event, settings)
    wall = round(time.monotonic() - started, 2)
    timeline = dict(steps)
    started = time.monotonic()
    again = convert.run(event, settings)
    assert again == done
    return {
        "wall_s": wall,
        "convert_s": round(timeline.get("converted", 0) - timeline.get("open", 0), 2),
        "open_s": round(timeline.get("open", 0) - timeline.get("resolved", 0), 2),
        "check_s": round(timeline.get("checked", 0) - timeline.get("converted", 0), 2),
        "redelivery_s": round(time.monotonic() - started, 4),
        "store": done.output_url,
    }


def copy_floor(product: Path, output: Path, chunk: int, *, native: bool) -> None:
    """The same arrays decoded and re-encoded with the same codec (blosc zstd 3), no
    resampling: as float32 like the converter's float mode, or (`native`) in the source's
    own dtype with its CF scale, offset and fill value."""
    import numpy as np
    from zarr.codecs import BloscCodec

    from geozarr_pipeline.config import Settings
    from geozarr_pipeline.convert.engine import open_source

    # Opened as the stage opens it (single-precision decoding), so that the floor is the
    # cheapest copy of the same arrays, not one the stage beats by decoding differently.
    tree = open_source(str(product), Settings())
    compressor = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", blocksize=0)
    for path in tree.groups:
        node = tree[path]
        if path == "/" or node.children or "quicklook" in path:
            continue
        dataset = node.to_dataset()
        if not dataset.data_vars:
            continue
        dataset = dataset.chunk({dim: min(chunk, size) for dim, size in dataset.sizes.items()})
        encoding: dict[str, Any] = {}
        for name, variable in dataset.data_vars.items():
            cf = {
                key: variable.encoding[key]
                for key in ("dtype", "scale_factor", "add_offset", "_FillValue")
                if native and key in variable.encoding
            }
            if variable.dtype == np.float64 and "dtype" not in cf:
                dataset[name] = variable.astype("float32")
            encoding[str(name)] = {"compressors": (compressor,), **cf}
        dataset.attrs = {}
        for variable in dataset.variables.values():
            variable.encoding = {}
            variable.attrs = {
                k: v for k, v in variable.attrs.items() if isinstance(v, str | int | float)
            }
        dataset.to_zarr(
            str(output), group=path, mode="w", zarr_format=3, consolidated=False, encoding=encoding
        )


def measure(name: str, product: Path, work: Path) -> dict[str, Any]:
    """In the parent: run one configuration in a child and add RSS, size and load."""
    root = work / f"out-{name}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work / "staging", ignore_errors=True)
    root.mkdir(parents=True)
    # The stage gets an output root (it picks {root}/{collection}/{id}.zarr); the rest a store.
    target = root if CONFIGS[name]["kind"] == "stage" else root / "store.zarr"
    result_file = work / f"result-{name}.json"
    load_before = os.getloadavg()[0]
    with (work / f"log-{name}.txt").open("w") as log:
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                "--product",
                str(product),
                "--work",
                str(work),
                "--output",
                str(target),
                "--result-file",
                str(result_file),
            ],
            stderr=log,
        )
        _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed (status {status}); see {work}/log-{name}.txt")
    result: dict[str, Any] = json.loads(result_file.read_text())
    store = Path(result["store"]) if "store" in result else target
    size, count = tree_size(store)
    result.update(
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
        output_bytes=size,
        objects=count,
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
    )
    shutil.rmtree(root, ignore_errors=True)
    return result


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per run; wall against the fastest direct run, CPU against the median CPU of
    the native-dtype copy floor runs (the same run's)."""
    direct = [r["wall_s"] for r in results if r["kind"] == "direct"]
    native = sorted(r["cpu_s"] for r in results if r["config"] == "copy-native")
    fastest = min(direct) if direct else None
    floor_cpu = native[len(native) // 2] if native else None
    lines = [
        "| # | configuration | wall s | CPU s | peak RSS MiB | output GiB | objects "
        "| wall / fastest direct | CPU / native copy floor | check s | load 1m before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, r in enumerate(results, 1):
        ratio = f"{r['wall_s'] / fastest:.2f}" if fastest else "-"
        to_floor = f"{r['cpu_s'] / floor_cpu:.2f}" if floor_cpu else "-"
        lines.append(
            f"| {index} | {r['config']} | {r['wall_s']:.1f} | {r.get('cpu_s', '-')} "
            f"| {r['peak_rss_mib']:.0f} | {r['output_bytes'] / 2**30:.2f} | {r['objects']} "
            f"| {ratio} | {to_floor} | {r.get('check_s', '-')} "
            f"| {r['load_before']}/{r['load_after']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--synthesize", action="store_true", help="write a full-size product first")
    parser.add_argument("--kind", choices=("l2a", "l1c"), default="l2a", help="what to synthesize")
    parser.add_argument("--configs", default=",".join(DEFAULT_ORDER))
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--table", action="store_true", help="print a markdown table of --results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_one(args.child, args.product, args.output, args.work)
        args.result_file.write_text(json.dumps(result))
        return 0

    if args.table:
        print(markdown_table([json.loads(line) for line in args.results.read_text().splitlines()]))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    if args.synthesize or not args.product.exists():
        from geozarr_local.sample.synthesize import synthesize_product

        started = time.monotonic()
        synthesize_product(args.kind, args.product, 1.0, 7)
        print(f"synthesized {args.product} in {time.monotonic() - started:.0f} s", flush=True)
    results_path = args.results or args.work / "results.jsonl"
    for name in args.configs.split(","):
        result = measure(name, args.product, args.work)
        print(json.dumps(result), flush=True)
        with results_path.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
