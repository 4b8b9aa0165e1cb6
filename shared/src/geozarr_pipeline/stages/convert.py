"""The convert stage: ConvertRequested -> ConvertDone."""

from __future__ import annotations

from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import ConvertDone, ConvertRequested


def run(event: ConvertRequested, settings: Settings) -> ConvertDone:
    raise NotImplementedError
