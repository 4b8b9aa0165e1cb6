"""The augment stage: RegisterDone -> AugmentDone."""

from __future__ import annotations

from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import AugmentDone, RegisterDone


def run(event: RegisterDone, settings: Settings) -> AugmentDone:
    raise NotImplementedError
