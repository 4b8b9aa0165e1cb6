"""S3 output: local staging + parallel upload vs the library writing through s3fs directly.

    uv run python benchmarks/convert/s3_write.py --scale 0.1 --runs 2 --work /tmp/s3bench

Starts a moto S3 server on loopback, synthesizes an L2A product, then runs the convert
stage (`geozarr-pipeline convert`, a fresh process each time) with
GEOZARR_CONVERT_S3_WRITE=staged and =direct, alternating. Prints one JSON line per run:
wall time of the process, and the number of requests the S3 server answered.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

from geozarr_local.processes import LOOPBACK, ManagedProcess, free_port, http_ready
from geozarr_local.sample.synthesize import synthesize_product

# Credentials of the throwaway loopback moto server (it accepts any).
MOTO_KEY = "bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    product = synthesize_product("l2a", args.work / "S2B_S3BENCH.zarr", args.scale, 3)
    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    log = args.work / "moto.log"
    moto = ManagedProcess(
        name="moto",
        command=[
            str(Path(sys.executable).with_name("moto_server")),
            "-H",
            LOOPBACK,
            "-p",
            str(port),
        ],
        log_path=log,
    )
    with moto.start():
        moto.wait_ready(http_ready(f"{endpoint}/moto-api/"))
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=MOTO_KEY,
            aws_secret_access_key=MOTO_KEY,
        )
        s3.create_bucket(Bucket="out")
        for run in range(args.runs):
            for mode in ("staged", "direct"):
                env = {
                    **os.environ,
                    "GEOZARR_OUTPUT_ROOT": "s3://out/geozarr",
                    "GEOZARR_WORK_DIR": str(args.work / "work"),
                    "GEOZARR_S3_ENDPOINT_URL": endpoint,
                    "GEOZARR_S3_ACCESS_KEY_ID": MOTO_KEY,
                    "GEOZARR_S3_SECRET_ACCESS_KEY": MOTO_KEY,
                    "GEOZARR_ALLOW_FILE_URLS": "true",
                    "GEOZARR_CONVERT_S3_WRITE": mode,
                }
                requests_before = len(log.read_text().splitlines())
                started = time.monotonic()
                subprocess.run(
                    [
                        str(Path(sys.executable).with_name("geozarr-pipeline")),
                        "convert",
                        "--source-url",
                        product.resolve().as_uri(),
                        "--collection",
                        "bench",
                        "--item-id",
                        f"{mode}-{run}",
                    ],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                print(
                    json.dumps(
                        {
                            "mode": mode,
                            "run": run,
                            "scale": args.scale,
                            "wall_s": round(time.monotonic() - started, 2),
                            "s3_requests": len(log.read_text().splitlines()) - requests_before,
                            "load_1m": round(os.getloadavg()[0], 2),
                        }
                    ),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
