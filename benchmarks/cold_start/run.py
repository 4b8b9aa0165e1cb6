"""Cold start per function: process start to the first answered CloudEvent.

    uv run python benchmarks/cold_start/run.py [--runs 5] [--image-env] [--json out.json]

Each run starts `functions-framework --target handle --source <main.py> --port <free>` (the
images' command), then sends the same CloudEvent every 20 ms until one is answered; the time
from `Popen` to that answer is the cold start. The event has the type the stage accepts and
data that fails validation, so the answer (200 with an `eopf.geozarr.failed` reply, as for
every permanent failure) comes from the whole request path (parse,
type check, model validation, error mapping) without the stage's real work. The figure is
the median of the runs; targets: register and augment < 1 s, convert < 2 s.

`--image-env` starts each function from its image environment (`geozarr_local.images`: the
stage's slice of uv.lock alone, as its Dockerfile target installs it) instead of the
workspace's, which also holds the dev tools and the local stand-ins. The stage module itself
is imported by the first event that needs it (`stage_function.deferred`): its import time is
measured apart and reported as what the first valid event adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from geozarr_local.images import function_environment
from geozarr_local.processes import free_port
from geozarr_pipeline.events import EventType, Stage

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {Stage.CONVERT: 2.0, Stage.REGISTER: 1.0, Stage.AUGMENT: 1.0}


def event_for(stage: Stage) -> tuple[dict[str, str], bytes]:
    event_type = sorted(stage.accepts)[0].value
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "cold-start",
        "ce-source": "urn:benchmark",
        "ce-type": event_type,
        "content-type": "application/json",
    }
    return headers, json.dumps({"item_id": "../not-valid"}).encode()


def stop_and_cpu(process: subprocess.Popen[bytes], grace: float = 10.0) -> float:
    """SIGTERM, reap, and return the CPU seconds the process (and its reaped workers) used."""
    process.terminate()
    deadline = time.monotonic() + grace
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        if time.monotonic() > deadline:
            process.kill()
            deadline = time.monotonic() + grace
        time.sleep(0.02)


# The framework's own floor: functions-framework serving a function that imports nothing.
FLOOR_FUNCTION = """
import flask


def handle(request: flask.Request) -> flask.Response:
    return flask.Response("", status=200, headers={"ce-type": "eopf.geozarr.failed"})
"""


def one_run(
    stage: Stage, python: Path, workdir: Path, timeout: float = 60.0, *, floor: bool = False
) -> tuple[float, float]:
    """(wall seconds to the first answer, CPU seconds of the server up to its exit).

    `floor`: the same command and event for FLOOR_FUNCTION instead of the stage's entrypoint.
    """
    port = free_port()
    source = ROOT / "functions" / stage.value / f"geozarr_{stage.value}" / "main.py"
    if floor:
        source = workdir / "floor.py"
        source.write_text(FLOOR_FUNCTION)
    command = [
        str(python.parent / "functions-framework"),
        "--target",
        "handle",
        "--source",
        str(source),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    headers, body = event_for(stage)
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GEOZARR_OUTPUT_ROOT": str(workdir / "out")}
    with (workdir / f"{stage.value}.log").open("ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env
        )
    try:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{stage} exited with {process.returncode}")
                try:
                    response = client.post(url, headers=headers, content=body)
                except httpx.TransportError:
                    if time.perf_counter() - started > timeout:
                        raise TimeoutError(f"{stage} did not answer in {timeout}s") from None
                    time.sleep(0.02)
                    continue
                elapsed = time.perf_counter() - started
                failed = response.headers.get("ce-type") == EventType.FAILED.value
                if response.status_code != 200 or not failed:
                    raise RuntimeError(f"{stage}: unexpected {response.status_code}")
                break
    finally:
        cpu = stop_and_cpu(process)
    return elapsed, cpu


LIBRARY_PROBE = (
    "import time, geozarr_convert.main\n"
    "from geozarr_pipeline.convert.engine import load_library\n"
    "started = time.perf_counter()\n"
    "load_library()\n"
    "print(time.perf_counter() - started)"
)


STAGE_PROBE = (
    "import time, geozarr_{stage}.main\n"
    "started = time.perf_counter()\n"
    "import geozarr_pipeline.stages.{stage}\n"
    "print(time.perf_counter() - started)"
)


def stage_import(stage: Stage, python: Path, workdir: Path) -> float:
    """Seconds the first valid event spends importing the stage module (deferred at start)."""
    result = subprocess.run(
        [str(python), "-c", STAGE_PROBE.format(stage=stage.value)],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
        env={**os.environ, "GEOZARR_OUTPUT_ROOT": str(workdir / "out")},
        timeout=300,
    )
    return float(result.stdout.strip().splitlines()[-1])


def converter_load(python: Path, workdir: Path) -> float:
    """Seconds the first conversion spends importing eopf-geozarr (convert loads it lazily)."""
    result = subprocess.run(
        [str(python), "-c", LIBRARY_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
        timeout=300,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="interpreter of the environment to start the functions from (default: this one)",
    )
    parser.add_argument(
        "--image-env",
        action="store_true",
        help="start each function from its image environment (built under a temporary folder)",
    )
    parser.add_argument("--stage", action="append", choices=[s.value for s in Stage])
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    stages = [Stage(s) for s in args.stage] if args.stage else list(Stage)
    results: dict[str, dict[str, object]] = {}
    load_before = os.getloadavg()
    pythons: dict[Stage, Path] = {}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        workdir = Path(tmp)
        for stage in stages:
            python = args.python
            if args.image_env:
                python = (
                    function_environment(stage, workdir / f"env-{stage.value}", ROOT) / "python"
                )
            pythons[stage] = python
            one_run(stage, python, workdir)  # warm the OS file cache and .pyc files
            measured = [one_run(stage, python, workdir) for _ in range(args.runs)]
            floor = statistics.median(
                one_run(stage, python, workdir, floor=True)[0] for _ in range(args.runs)
            )
            runs = [wall for wall, _ in measured]
            cpu = statistics.median(c for _, c in measured)
            median = statistics.median(runs)
            results[stage.value] = {
                "median_s": round(median, 3),
                "min_s": round(min(runs), 3),
                "max_s": round(max(runs), 3),
                "runs": [round(r, 3) for r in runs],
                "median_cpu_s": round(cpu, 3),
                "framework_floor_s": round(floor, 3),
                "target_s": TARGETS[stage],
                "meets_target": median < TARGETS[stage],
                "stage_import_s": round(
                    statistics.median(stage_import(stage, python, workdir) for _ in range(3)), 3
                ),
            }
            print(
                f"{stage.value:9s} median {median:.3f}s  min {min(runs):.3f}s  "
                f"max {max(runs):.3f}s  cpu {cpu:.3f}s  target < {TARGETS[stage]:.0f}s  "
                f"{'ok' if median < TARGETS[stage] else 'MISSED'}  floor {floor:.3f}s  "
                f"(+{results[stage.value]['stage_import_s']}s stage import on the first event)"
            )
        if Stage.CONVERT in stages:
            loads = [converter_load(pythons[Stage.CONVERT], workdir) for _ in range(3)]
            library = statistics.median(loads)
            results["convert"]["converter_import_s"] = round(library, 3)
            print(f"convert   + {library:.3f}s to import eopf-geozarr on the first conversion")
    load = os.getloadavg()
    print(f"cpus: {os.cpu_count()}, environment: {'image' if args.image_env else 'workspace'}")
    print(f"load average before the run (1 min): {load_before[0]:.2f}")
    print(f"load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        summary = {
            "results": results,
            "loadavg_before": load_before,
            "loadavg_after": load,
            "runs": args.runs,
            "environment": "image" if args.image_env else "workspace",
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(r["meets_target"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
