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
import pytest
import yaml

from geozarr_pipeline.local.processes import ManagedProcess, free_port, tcp_ready
from tests.knative.test_dockerfile import DOCKERFILE, ROOT, Stage, lineage, parse_dockerfile

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")


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
                command = shlex.split(args[args.index("uv sync") :])
                subprocess.run(command, cwd=workdir, env=env, check=True, timeout=600)


def start_target(
    stages: dict[str, Stage], target: str, scratch: Path
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
    installed = {
        p.name.split("-")[0].lower()
        for p in (tmp_path / "app" / ".venv").glob("lib/python*/site-packages/*.dist-info")
    }
    assert "geozarr_register" in installed
    assert not installed & {"xarray", "dask", "eopf_geozarr", "zarr"}


def test_dead_letters_image_build_and_command(tmp_path: Path) -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    # The image writes under /var/lib/geozarr (a volume); point it at the scratch folder.
    stages["dead-letters"].instructions = [
        (k, v.replace("/var/lib/geozarr", str(tmp_path / "records")))
        for k, v in stages["dead-letters"].instructions
    ]
    process, port = start_target(stages, "dead-letters", tmp_path)
    try:
        process.wait_ready(tcp_ready(port), timeout=60)
        listed = httpx.get(f"http://127.0.0.1:{port}/", trust_env=False)
    finally:
        process.stop()
    assert listed.status_code == 200
    assert listed.json() == []
    installed = {
        p.name.split("-")[0].lower()
        for p in (tmp_path / "app" / ".venv").glob("lib/python*/site-packages/*.dist-info")
    }
    assert "functions_framework" not in installed
