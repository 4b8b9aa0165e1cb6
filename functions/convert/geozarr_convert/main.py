"""Knative entrypoint of the convert stage: a thin functions-framework handler.

Built by the one stage runner: settings read and checked when functions-framework loads this
module (a broken configuration refuses to start), then each event handed to the stage.
"""

from __future__ import annotations

import functions_framework

from geozarr_pipeline.events import ConvertRequested, Stage
from geozarr_pipeline.stage_function import StageRun, deferred, stage_function


def load_run() -> StageRun[ConvertRequested]:
    """The stage itself, imported on the first event (see `deferred`)."""
    from geozarr_pipeline.stages import convert

    return convert.run


handle = functions_framework.http(
    stage_function(Stage.CONVERT, ConvertRequested, deferred(load_run))
)
