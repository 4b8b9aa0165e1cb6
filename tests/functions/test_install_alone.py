"""Each function, installed alone into a fresh virtual environment, starts and answers.

The environment gets exactly what the function's image gets: the function's package, the
shared member it pulls in, and their dependencies at the versions pinned in uv.lock
(`uv export --package geozarr-<stage>`), installed with `uv pip install`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from geozarr_local.images import function_environment
from geozarr_local.processes import ManagedProcess, free_port, tcp_ready
from geozarr_local.stack import function_command
from geozarr_pipeline.events import EventType, Stage
from tests.functions.failures import problem_of

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("xarray", "dask", "eopf_geozarr", "zarr")
# The local stand-ins and what only they need: no function image has them.
LOCAL_ONLY = ("geozarr_local", "titiler")

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")


@dataclass(frozen=True)
class Installed:
    stage: Stage
    python: Path
    bin: Path
    workdir: Path

    @property
    def module(self) -> str:
        return f"geozarr_{self.stage.value}.main"


def install(stage: Stage, root: Path) -> Installed:
    bin_dir = function_environment(stage, root, ROOT)
    workdir = root / "work"
    workdir.mkdir()
    return Installed(stage, bin_dir / "python", bin_dir, workdir)


@pytest.fixture(scope="module", params=list(Stage), ids=[s.value for s in Stage])
def installed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Installed:
    stage: Stage = request.param
    return install(stage, tmp_path_factory.mktemp(f"alone-{stage.value}"))


@pytest.fixture(scope="module")
def served(installed: Installed) -> Iterator[tuple[Installed, str]]:
    port = free_port()
    module = f"geozarr_{installed.stage.value}.main"
    process = ManagedProcess(
        name=f"{installed.stage.value}-alone",
        command=function_command(module, port, python=str(installed.bin / "python")),
        log_path=installed.workdir / "function.log",
        cwd=installed.workdir,
        env={"GEOZARR_OUTPUT_ROOT": str(installed.workdir / "out")},
    ).start()
    try:
        process.wait_ready(tcp_ready(port), timeout=60)
        yield installed, f"http://127.0.0.1:{port}/"
    finally:
        process.stop()


def test_the_environment_has_only_what_the_function_needs(installed: Installed) -> None:
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        f"for m in {HEAVY + LOCAL_ONLY!r}}}))"
    )
    found = json.loads(
        subprocess.run(
            [str(installed.python), "-c", probe], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not any(found[m] for m in LOCAL_ONLY), found
    if installed.stage is Stage.CONVERT:
        assert found["xarray"]
        assert found["eopf_geozarr"]
    else:
        assert not any(found[m] for m in HEAVY), found


def test_importing_the_function_loads_no_array_stack(installed: Installed) -> None:
    probe = (
        "import json, sys; "
        f"import {installed.module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    result = subprocess.run(
        [str(installed.python), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=installed.workdir,
    )
    loaded = json.loads(result.stdout)
    if installed.stage is not Stage.CONVERT:
        assert loaded == []
    assert "dask" not in loaded or installed.stage is Stage.CONVERT


def _post(url: str, headers: dict[str, str], body: object) -> httpx.Response:
    return httpx.post(url, headers=headers, content=json.dumps(body), timeout=30, trust_env=False)


def test_answers_a_malformed_event_with_a_4xx_naming_the_problem(
    served: tuple[Installed, str],
) -> None:
    installed, url = served
    response = _post(
        url,
        {
            "ce-specversion": "1.0",
            "ce-source": "urn:test",
            "ce-type": next(iter(installed.stage.accepts)).value,
            "content-type": "application/json",
        },
        {"source_url": "x"},
    )
    assert response.status_code == 400
    assert "id" in response.json()["message"]


def test_answers_a_foreign_event_type_with_a_failure_reply(
    served: tuple[Installed, str],
) -> None:
    installed, url = served
    response = _post(
        url,
        {
            "ce-specversion": "1.0",
            "ce-id": "alone-1",
            "ce-source": "urn:test",
            "ce-type": EventType.AUGMENT_DONE.value,
            "content-type": "application/json",
        },
        {},
    )
    assert installed.stage.value in problem_of(response)["message"]


def test_answers_invalid_data_with_a_failure_reply(served: tuple[Installed, str]) -> None:
    installed, url = served
    event_type = sorted(installed.stage.accepts)[0].value
    envelope = {
        "specversion": "1.0",
        "id": "alone-2",
        "source": "urn:test",
        "type": event_type,
        "datacontenttype": "application/json",
        "data": {"item_id": "../escape"},
    }
    response = _post(url, {"content-type": "application/cloudevents+json"}, envelope)
    assert problem_of(response)["message"]
