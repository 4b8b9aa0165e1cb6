"""Progress of one conversion as structured log lines (item id, step, elapsed seconds)."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("geozarr_pipeline.convert")


class Progress:
    def __init__(self, item_id: str, collection: str) -> None:
        self.item_id = item_id
        self.collection = collection
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def step(self, step: str, **fields: Any) -> None:
        log.info(
            f"convert {step}",
            extra={
                "stage": "convert",
                "item_id": self.item_id,
                "collection": self.collection,
                "step": step,
                "elapsed_s": self.elapsed,
                **fields,
            },
        )
