"""Every stage function against hostile events, in-process (functions-framework's app and
Flask's test client), under the local and the production settings.

For each case: the status, the problem named in the answer, no connection or name lookup
made, nothing written under the stage's roots (attempt records aside), at most the
delivery's transition lines logged, and no answer that echoes the input back whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import functions_framework
import pytest

from geozarr_local.stack import function_source
from geozarr_pipeline import attempts, config
from geozarr_pipeline.events import EventType, Stage, StageFailed
from tests.functions.hostile import (
    Case,
    data_cases,
    encoded,
    envelope_cases,
    files_under,
    local_env,
    production_env,
    valid_data,
    watched,
)

MODULES = {
    Stage.CONVERT: "geozarr_convert.main",
    Stage.REGISTER: "geozarr_register.main",
    Stage.AUGMENT: "geozarr_augment.main",
}
POLICIES = {"local": local_env, "production": production_env}
# An answer to a refused request names the problem; it never carries the input back.
MAX_ERROR_BODY = 4096


@pytest.fixture
def apps(policy: tuple[str, Path]) -> dict[Stage, flask.Flask]:
    """The three functions as functions-framework loads them, with the policy's settings."""
    return {
        stage: functions_framework.create_app("handle", str(function_source(module)), "http")
        for stage, module in MODULES.items()
    }


@pytest.fixture(params=sorted(POLICIES))
def policy(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path]]:
    """The settings of one deployment kind, read fresh by the stages (their caches cleared)."""
    name = str(request.param)
    for key in list(__import__("os").environ):
        if key.startswith("GEOZARR_"):
            monkeypatch.delenv(key)
    for key, value in POLICIES[name](tmp_path).items():
        monkeypatch.setenv(key, value)
    config.get_settings.cache_clear()
    attempts.process_journal.cache_clear()
    yield name, tmp_path
    config.get_settings.cache_clear()
    attempts.process_journal.cache_clear()


def _not_status(path: Path) -> bool:
    return path.parts[:2] == ("geozarr", "_status")


def _cases(stage: Stage, output_root: Path) -> list[Case]:
    return [*envelope_cases(stage, output_root), *data_cases(stage, output_root)]


def _check_answer(case: Case, response: Any) -> None:
    assert response.status_code == case.status, (case.name, response.data[:300])
    if case.status == 200:
        assert response.headers["ce-type"] == EventType.FAILED.value, case.name
        failure = StageFailed.model_validate_json(response.data)
        assert failure.problem.code == case.code, (case.name, failure.problem)
        assert case.names in failure.problem.message, (case.name, failure.problem.message)
        assert failure.problem.retryable is False
        if case.field:
            assert failure.problem.field == case.field, (case.name, failure.problem)
        assert len(failure.problem.message) <= 600, case.name
        return
    assert len(response.data) <= MAX_ERROR_BODY, (case.name, len(response.data))
    body = json.loads(response.data)
    assert body["error"] == case.code, (case.name, body)
    assert case.names in body["message"], (case.name, body)


@pytest.mark.parametrize("stage", list(MODULES), ids=[s.value for s in MODULES])
def test_hostile_events_are_refused_naming_the_problem_and_nothing_is_done(
    stage: Stage, policy: tuple[str, Path], apps: dict[Stage, flask.Flask]
) -> None:
    name, root = policy
    output_root = root / "geozarr"
    client = apps[stage].test_client()
    cases = [c for c in _cases(stage, output_root.resolve()) if name in c.policies]
    assert len(cases) >= 16
    before = files_under(root, skip=_not_status)
    for case in cases:
        with watched() as watch:
            response = client.post("/", headers=case.headers, data=case.body)
        _check_answer(case, response)
        assert watch.connections == [], (case.name, watch.connections)
        assert watch.lookups == [], (case.name, watch.lookups)
        messages = [record.getMessage() for record in watch.records]
        terminal = [m for m in messages if m in (f"{stage} failed", f"{stage} refused")]
        assert len(terminal) == 1, (case.name, messages)
        assert set(messages) <= {f"{stage} started", *terminal}, (case.name, messages)
        for record in watch.records:
            line = json.dumps({k: str(v) for k, v in record.__dict__.items()})
            assert len(line) < 8192, (case.name, len(line))
    assert files_under(root, skip=_not_status) == before


def test_the_guard_sees_what_a_valid_event_reaches_for(
    policy: tuple[str, Path], apps: dict[Stage, flask.Flask]
) -> None:
    """The guard is not blind: a valid production event looks its allow-listed host up."""
    name, root = policy
    if name != "production":
        pytest.skip("the production policy resolves allow-listed hosts")
    headers, body = encoded(Stage.CONVERT, valid_data(Stage.CONVERT, root), "binary", "ok-1")
    with watched() as watch:
        apps[Stage.CONVERT].test_client().post("/", headers=headers, data=body)
    assert "stac.core.eopf.eodc.eu" in watch.lookups
