"""Knative entrypoint of the augment stage: a thin functions-framework handler."""

from __future__ import annotations

import flask
import functions_framework

from geozarr_pipeline.attempts import process_journal
from geozarr_pipeline.cloudevent_http import handle_request
from geozarr_pipeline.config import get_settings
from geozarr_pipeline.events import EventData, RegisterDone, Stage
from geozarr_pipeline.logs import configure_logging
from geozarr_pipeline.stages import augment

configure_logging()


def _run(data: EventData) -> EventData:
    assert isinstance(data, RegisterDone)
    return augment.run(data, get_settings())


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return handle_request(request, Stage.AUGMENT, _run, process_journal)
