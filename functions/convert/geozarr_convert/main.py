"""Knative entrypoint of the convert stage: a thin functions-framework handler."""

from __future__ import annotations

import flask
import functions_framework

from geozarr_pipeline.attempts import process_journal
from geozarr_pipeline.cloudevent_http import handle_request
from geozarr_pipeline.config import get_settings
from geozarr_pipeline.events import ConvertRequested, EventData, Stage
from geozarr_pipeline.logs import configure_logging
from geozarr_pipeline.stages import convert

configure_logging()


def _run(data: EventData) -> EventData:
    assert isinstance(data, ConvertRequested)
    return convert.run(data, get_settings())


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return handle_request(request, Stage.CONVERT, _run, process_journal)
