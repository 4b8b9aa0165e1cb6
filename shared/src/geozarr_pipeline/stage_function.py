"""The one runner every stage function is built with.

    handle = stage_function(Stage.REGISTER, ConvertDone, register.run)
    handle = stage_function(Stage.REGISTER, ConvertDone, deferred(load_run))

At start (when functions-framework loads the entrypoint) it configures logging, reads the
settings once and checks that they make a working deployment of the stage: a function with
a broken configuration refuses to start, naming the setting, instead of failing every event
it is given. No network is touched: what needs one is opened on the first event. Each event
is then narrowed to the stage's input model (a typed check, not an assert) and handed to
`run` with the settings read at start. `deferred` imports a stage's module on its first
event, so that starting the function loads only what parsing and refusing an event needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from geozarr_pipeline.attempts import process_journal
from geozarr_pipeline.config import Settings, get_settings
from geozarr_pipeline.delivery import handle_request
from geozarr_pipeline.errors import InvalidEvent
from geozarr_pipeline.events import INPUT_MODELS, EventData, Stage
from geozarr_pipeline.logs import configure_logging

if TYPE_CHECKING:
    import flask

Handler = Callable[["flask.Request"], "flask.Response"]
type StageRun[Input: EventData] = Callable[[Input, Settings], EventData]


class ConfigurationError(RuntimeError):
    """The settings cannot make a working deployment of a stage; raised at start."""


def configuration_problems(settings: Settings, stage: Stage) -> list[str]:
    """What is wrong with the settings for `stage`, each naming its GEOZARR_* variable."""
    problems: list[str] = []
    root = settings.output_root
    if root.startswith("s3://"):
        if not urlparse(root).netloc:
            problems.append(f"GEOZARR_OUTPUT_ROOT={root!r} names no bucket (s3://bucket/prefix)")
    elif "://" in root and not root.startswith("file://"):
        problems.append(
            f"GEOZARR_OUTPUT_ROOT={root!r}: a folder or s3://bucket/prefix, nothing else"
        )
    if stage is not Stage.CONVERT and settings.catalog_backend == "stac-api":
        if not settings.stac_api_url:
            problems.append(
                "GEOZARR_STAC_API_URL is required with GEOZARR_CATALOG_BACKEND=stac-api"
            )
        oidc = {
            "GEOZARR_OIDC_TOKEN_URL": settings.oidc_token_url,
            "GEOZARR_OIDC_CLIENT_ID": settings.oidc_client_id,
            "GEOZARR_OIDC_CLIENT_SECRET": settings.oidc_client_secret,
        }
        missing = [name for name, value in oidc.items() if not value]
        if 0 < len(missing) < len(oidc):
            problems.append(
                f"OIDC client credentials are half set: {', '.join(missing)} missing "
                f"(set all of {', '.join(oidc)} or none)"
            )
        if settings.stac_api_token is not None and len(missing) == 0:
            problems.append(
                "GEOZARR_STAC_API_TOKEN and GEOZARR_OIDC_* are both set: choose one way to "
                "authenticate to the STAC API"
            )
    return problems


def deferred[Input: EventData](load: Callable[[], StageRun[Input]]) -> StageRun[Input]:
    """A stage's `run` imported on its first event (`load` imports it; Python caches it).

    The stage's own dependencies (httpx, the STAC and storage adapters, the converter) then
    cost the first event that needs them, not the start of every instance.
    """

    def run(data: Input, settings: Settings) -> EventData:
        return load()(data, settings)

    return run


def stage_function[Input: EventData](
    stage: Stage, model: type[Input], run: StageRun[Input]
) -> Handler:
    """The functions-framework handler of `stage`; raises ConfigurationError at start."""
    if INPUT_MODELS[next(iter(stage.accepts))] is not model:
        raise TypeError(f"the {stage} stage takes {INPUT_MODELS[next(iter(stage.accepts))]}")
    configure_logging()
    settings = get_settings()
    problems = configuration_problems(settings, stage)
    if problems:
        raise ConfigurationError(f"the {stage} function cannot start: {'; '.join(problems)}")

    def narrowed(data: EventData) -> EventData:
        if not isinstance(data, model):
            raise InvalidEvent(f"the {stage} stage takes {model.__name__} data")
        return run(data, settings)

    def handle(request: flask.Request) -> flask.Response:
        return handle_request(request, stage, narrowed, process_journal)

    return handle
