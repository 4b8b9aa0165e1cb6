"""Knative entrypoint of the convert stage: a thin functions-framework handler.

Built by the one stage runner: settings read and checked when functions-framework loads this
module (a broken configuration refuses to start), then each event handed to the stage.
"""

from __future__ import annotations

import functions_framework

from geozarr_pipeline.events import ConvertRequested, Stage
from geozarr_pipeline.stage_function import stage_function
from geozarr_pipeline.stages import convert

handle = functions_framework.http(stage_function(Stage.CONVERT, ConvertRequested, convert.run))
