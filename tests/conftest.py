"""Shared fixtures: each real service lives in its own module under tests/fixtures/."""

import re
from functools import cache
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.sample",
    "tests.fixtures.s3",
    "tests.fixtures.stac_api",
    "tests.fixtures.rabbitmq",
    "tests.fixtures.stack",
    "tests.fixtures.visual",
    "tests.fixtures.failures",
]

# Fixtures that start a real service (directly or through another fixture).
SERVICE_FIXTURES = frozenset(
    {"sample_server", "stac_api", "s3_server", "rabbitmq", "local_stack", "map_setup"}
)
# A test module that starts processes itself (servers, functions, builds, subprocesses).
_STARTS_PROCESSES = re.compile(
    r"ManagedProcess|subprocess|start_broker|start_recorder|function_command|LocalStack\(|"
    r"start_bridge|running_api"
)


@cache
def _starts_processes(path: Path) -> bool:
    return bool(_STARTS_PROCESSES.search(path.read_text()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `service` every test that needs a real service or starts a process: the fast
    tier (`make test-fast`, `-m "not service"`) is everything else, all in-process."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVICE_FIXTURES or _starts_processes(Path(str(item.path))):
            item.add_marker(pytest.mark.service)
