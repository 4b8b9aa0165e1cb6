"""The register stage: ConvertDone -> RegisterDone."""

from __future__ import annotations

from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import ConvertDone, RegisterDone


def run(event: ConvertDone, settings: Settings) -> RegisterDone:
    raise NotImplementedError
