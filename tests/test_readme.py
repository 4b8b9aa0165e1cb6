"""The README's manual-run curl commands drive the local stack to augment.done."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from geozarr_local.demo import DEFAULT_PORTS
from geozarr_local.sample.build import Sample, write_sample
from geozarr_local.stack import LocalStack
from geozarr_pipeline.events import EventType

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_curl_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [b.strip() for b in blocks if b.lstrip().startswith("curl") and "-d '" in b]


def on_stack(command: str, stack: LocalStack) -> str:
    """The command with the README's fixed ports replaced by the test stack's ports."""
    for name in ("broker", "samples"):
        command = command.replace(
            f"127.0.0.1:{DEFAULT_PORTS[name]}", stack.urls[name].removeprefix("http://")
        )
    return command


def test_readme_has_binary_and_structured_examples() -> None:
    commands = readme_curl_commands()
    assert len(commands) == 2
    assert any("ce-type: eopf.geozarr.convert.requested" in c for c in commands)
    assert any("application/cloudevents+json" in c for c in commands)


@pytest.fixture(scope="module")
def reference_sample(local_stack: LocalStack) -> Sample:
    """The sample the README names: the reference product's id, as `stack` writes it."""
    return write_sample(local_stack.samples_dir, "l2a", scale=0.05)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_readme_curl_runs_the_chain(
    local_stack: LocalStack, reference_sample: Sample, mode: str
) -> None:
    sample = reference_sample
    [command] = [
        c for c in readme_curl_commands() if ("cloudevents+json" in c) == (mode == "structured")
    ]
    assert sample.item_id in command
    before = len(local_stack.events(EventType.AUGMENT_DONE.value, sample.item_id))
    result = subprocess.run(
        ["bash", "-c", on_stack(command, local_stack)], capture_output=True, text=True, check=True
    )
    assert " 202 " in result.stdout.splitlines()[0]
    deadline = time.monotonic() + 300
    while len(local_stack.events(EventType.AUGMENT_DONE.value, sample.item_id)) <= before:
        assert time.monotonic() < deadline, "the chain did not reach augment.done"
        failed = local_stack.events(EventType.FAILED.value, sample.item_id)
        dead = httpx.get(
            local_stack.broker_url + "/events",
            params={"subject": sample.item_id, "origin": "dead-letter"},
        ).json()
        assert not failed, f"the run failed: {failed}"
        assert not dead, f"the run was dead-lettered: {dead}"
        time.sleep(0.5)
