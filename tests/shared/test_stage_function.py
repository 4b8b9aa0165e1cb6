"""The stage runner: settings checked at start (a broken configuration refuses to start,
naming the setting), input narrowed to the stage's model, the settings read once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import flask
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from geozarr_local.processes import ManagedProcess, free_port
from geozarr_local.stack import function_command
from geozarr_pipeline import attempts, config
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import ConvertDone, EventType, RegisterDone, Stage
from geozarr_pipeline.stage_function import (
    ConfigurationError,
    StageRun,
    configuration_problems,
    deferred,
    stage_function,
)

BROKEN = [
    ({"output_root": "s3://"}, Stage.CONVERT, "GEOZARR_OUTPUT_ROOT"),
    ({"output_root": "gs://bucket/x"}, Stage.REGISTER, "GEOZARR_OUTPUT_ROOT"),
    ({"catalog_backend": "stac-api"}, Stage.REGISTER, "GEOZARR_STAC_API_URL"),
    ({"catalog_backend": "stac-api"}, Stage.AUGMENT, "GEOZARR_STAC_API_URL"),
    (
        {"catalog_backend": "stac-api", "stac_api_url": "https://x", "oidc_client_id": "c"},
        Stage.REGISTER,
        "GEOZARR_OIDC_TOKEN_URL, GEOZARR_OIDC_CLIENT_SECRET missing",
    ),
    (
        {
            "catalog_backend": "stac-api",
            "stac_api_url": "https://x",
            "stac_api_token": "t0ken-value",
            "oidc_token_url": "https://x/token",
            "oidc_client_id": "c",
            "oidc_client_secret": "s3cret-value",
        },
        Stage.AUGMENT,
        "GEOZARR_STAC_API_TOKEN and GEOZARR_OIDC_*",
    ),
]


@pytest.mark.parametrize(("changes", "stage", "named"), BROKEN)
def test_each_broken_setting_is_named(changes: dict[str, str], stage: Stage, named: str) -> None:
    problems = configuration_problems(Settings(**changes), stage)  # type: ignore[arg-type]
    assert len(problems) == 1
    assert named in problems[0]


def test_the_defaults_and_the_production_shape_start() -> None:
    for stage in Stage:
        assert configuration_problems(Settings(), stage) == []
    production = Settings(
        output_root="s3://geozarr/sentinel-2-l2a",
        catalog_backend="stac-api",
        stac_api_url="https://api.example/stac",
    )
    assert all(configuration_problems(production, stage) == [] for stage in Stage)
    # convert needs no catalog
    assert configuration_problems(Settings(catalog_backend="stac-api"), Stage.CONVERT) == []


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for key in list(os.environ):
        if key.startswith("GEOZARR_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GEOZARR_OUTPUT_ROOT", str(tmp_path / "geozarr"))
    config.get_settings.cache_clear()
    attempts.process_journal.cache_clear()
    yield monkeypatch
    config.get_settings.cache_clear()
    attempts.process_journal.cache_clear()


def _echo_run(event: ConvertDone, settings: Settings) -> RegisterDone:
    return RegisterDone(
        item_id=event.item_id,
        collection=event.collection,
        item_url=f"{settings.output_root}/{event.item_id}",
        output_url=event.output_url,
    )


def test_a_broken_configuration_is_refused_when_the_handler_is_built(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("GEOZARR_CATALOG_BACKEND", "stac-api")
    config.get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="GEOZARR_STAC_API_URL"):
        stage_function(Stage.REGISTER, ConvertDone, _echo_run)


def test_the_model_must_be_the_stage_input() -> None:
    with pytest.raises(TypeError, match="takes"):
        stage_function(Stage.REGISTER, RegisterDone, _echo_run)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_events_reach_run_typed_with_the_settings_read_at_start(
    environment: pytest.MonkeyPatch, tmp_path: Path, mode: str
) -> None:
    handle = stage_function(Stage.REGISTER, ConvertDone, _echo_run)
    environment.setenv("GEOZARR_OUTPUT_ROOT", "/changed/after/start")
    config.get_settings.cache_clear()
    app = flask.Flask("stage-function-test")
    app.add_url_rule("/", "handle", lambda: handle(flask.request), methods=["POST"])
    data = {
        "item_id": "S2A_X",
        "collection": "c",
        "source_url": "https://x.test/i",
        "zarr_url": "https://x.test/i.zarr",
        "output_url": "/o/S2A_X.zarr",
    }
    event = CloudEvent(
        {"type": EventType.CONVERT_DONE.value, "source": "urn:test", "id": f"sf-{mode}"}, data
    )
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    response = app.test_client().post("/", headers=dict(headers), data=body)
    assert response.status_code == 200, response.data
    assert response.headers["ce-type"] == EventType.REGISTER_DONE.value
    assert response.json is not None
    assert response.json["item_url"] == f"{tmp_path / 'geozarr'}/S2A_X"


def test_a_deferred_stage_is_loaded_by_its_first_event_only(
    environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loads: list[int] = []

    def load() -> StageRun[ConvertDone]:
        loads.append(1)
        return _echo_run

    handle = stage_function(Stage.REGISTER, ConvertDone, deferred(load))
    assert loads == []
    app = flask.Flask("deferred-test")
    app.add_url_rule("/", "handle", lambda: handle(flask.request), methods=["POST"])
    client = app.test_client()
    refused = CloudEvent(
        {"type": EventType.CONVERT_DONE.value, "source": "urn:test", "id": "d-0"},
        {"item_id": "../x"},
    )
    headers, body = to_binary(refused)
    assert client.post("/", headers=dict(headers), data=body).status_code == 200
    assert loads == []  # refused by validation: the stage was never needed
    for number in (1, 2):
        event = CloudEvent(
            {"type": EventType.CONVERT_DONE.value, "source": "urn:test", "id": f"d-{number}"},
            {
                "item_id": "S2A_X",
                "collection": "c",
                "source_url": "https://x.test/i",
                "zarr_url": "https://x.test/i.zarr",
                "output_url": "/o/S2A_X.zarr",
            },
        )
        headers, body = to_binary(event)
        response = client.post("/", headers=dict(headers), data=body)
        assert response.headers["ce-type"] == EventType.REGISTER_DONE.value
    assert len(loads) == 2  # asked each time; Python's import cache makes the rest free


def test_a_function_with_a_broken_configuration_does_not_start(tmp_path: Path) -> None:
    process = ManagedProcess(
        name="broken-register",
        command=function_command("geozarr_register.main", free_port()),
        log_path=tmp_path / "register.log",
        env={"GEOZARR_CATALOG_BACKEND": "stac-api", "GEOZARR_STAC_API_URL": ""},
    ).start()
    try:
        assert process.process is not None
        code = process.process.wait(timeout=60)
    finally:
        process.stop()
    assert code != 0
    log = (tmp_path / "register.log").read_text()
    assert "GEOZARR_STAC_API_URL is required" in log
