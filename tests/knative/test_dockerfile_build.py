"""Replay the Dockerfile's build without docker: its COPYs and `uv sync` commands in a scratch
root, then its CMD, which must serve on $PORT.

Paths under `/src` and `/app` in the Dockerfile are mapped into the scratch folder; the image's
interpreter is replaced by this one (same Python minor version). This proves that the files
the Dockerfile copies are enough for `uv sync --frozen` and that the command starts the server.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from geozarr_local.processes import ManagedProcess, free_port, tcp_ready
from tests.knative.test_dockerfile import (
    DOCKERFILE,
    FAILURES_TARGET,
    ROOT,
    Stage,
    lineage,
    parse_dockerfile,
    uv_binary,
)


def stage_env(chain: list[Stage]) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(chain):
        for args in stage.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def remap(value: str, scratch: Path) -> str:
    return value.replace("/app/", f"{scratch}/app/").replace("/src", f"{scratch}/src")


def replay_build(stages: dict[str, Stage], build_stage: str, scratch: Path) -> None:
    """Run the COPY and `uv sync` instructions of a build stage and its ancestors."""
    chain = lineage(stages, build_stage)
    env = {
        **os.environ,
        **{k: remap(v, scratch) for k, v in stage_env(chain).items()},
        "UV_PYTHON": sys.executable,
        "UV_PROJECT_ENVIRONMENT": str(scratch / "app" / ".venv"),
    }
    workdir = scratch / "src"
    workdir.mkdir(parents=True, exist_ok=True)
    for stage in reversed(chain):
        for keyword, args in stage.instructions:
            if keyword == "COPY" and not args.startswith("--from="):
                *sources, dest = args.split()
                into_folder = dest.endswith("/") or len(sources) > 1
                for source in sources:
                    target = workdir / dest / Path(source).name if into_folder else workdir / dest
                    if (ROOT / source).is_dir():
                        shutil.copytree(
                            ROOT / source,
                            target,
                            dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        )
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(ROOT / source, target)
            elif keyword == "RUN" and "uv sync" in args:
                command = [uv_binary(), *shlex.split(args[args.index("uv sync") :])[1:]]
                subprocess.run(command, cwd=workdir, env=env, check=True, timeout=600)


def start_target(
    stages: dict[str, Stage], target: str, scratch: Path, env: dict[str, str] | None = None
) -> tuple[ManagedProcess, int]:
    for args in stages[target].all("COPY"):
        words = args.split()
        if words[0].startswith("--from="):
            replay_build(stages, words[0].removeprefix("--from="), scratch)
        else:
            source, dest = words
            shutil.copytree(ROOT / source, Path(remap(dest, scratch)), dirs_exist_ok=True)
    cmd = yaml.safe_load(stages[target].all("CMD")[-1] if stages[target].all("CMD") else "[]")
    assert cmd[:2] == ["sh", "-c"]
    port = free_port()
    script = remap(cmd[2], scratch).replace("0.0.0.0", "127.0.0.1")
    venv_bin = scratch / "app" / ".venv" / "bin"
    process = ManagedProcess(
        name=f"image-{target}",
        command=["sh", "-c", script],
        log_path=scratch / "server.log",
        env={
            "PORT": str(port),
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(venv_bin.parent),
            "PYTHONPATH": "",
            **(env or {}),
        },
        cwd=scratch,
    ).start()
    return process, port


def test_register_image_build_and_command(tmp_path: Path) -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    process, port = start_target(stages, "register", tmp_path)
    try:
        process.wait_ready(tcp_ready(port), timeout=60)
        response = httpx.post(
            f"http://127.0.0.1:{port}/",
            headers={"ce-specversion": "1.0", "ce-source": "urn:t", "ce-type": "x"},
            content=b"{}",
            trust_env=False,
        )
    finally:
        process.stop()
    assert response.status_code == 400
    assert "id" in response.json()["message"]
    installed = installed_distributions(tmp_path)
    assert "geozarr_register" in installed
    assert not installed & {"xarray", "dask", "eopf_geozarr", "zarr"}


def installed_distributions(scratch: Path) -> set[str]:
    return {
        p.name.split("-")[0].lower()
        for p in (scratch / "app" / ".venv").glob("lib/python*/site-packages/*.dist-info")
    }


def test_failures_image_build_and_command(tmp_path: Path) -> None:
    """The recorder starts from the image's command with the GEOZARR_* settings alone."""
    stages = parse_dockerfile(DOCKERFILE.read_text())
    records = tmp_path / "records"
    process, port = start_target(
        stages, FAILURES_TARGET, tmp_path, env={"GEOZARR_FAILURES_ROOT": str(records)}
    )
    try:
        process.wait_ready(tcp_ready(port), timeout=60)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False)
        listed = httpx.get(f"http://127.0.0.1:{port}/", trust_env=False)
    finally:
        process.stop()
    assert health.status_code == 200
    assert health.json()["store"].endswith("records")
    assert listed.json() == []
    installed = installed_distributions(tmp_path)
    assert "boto3" in installed
    assert not installed & {"functions_framework", "xarray", "dask", "eopf_geozarr"}
