"""Augmented items built by `add_visualisation` from fixed inputs.

The inputs: the predecessor's registered item (`data/registered-item.json`) and a registered
item of ours (`tests/shared/register/data/registered-item.before.l2a.json`), augmented with
the raster API at RASTER_BASE. Nothing else goes in, so two runs give the same JSON.

`data/augmented-item.before.<case>.json` were written by this module from the code of commit
9cc0e64, the last one before the augment stage built items with pystac (dict-based, the
titiler-eopf links already in):

    git worktree add /tmp/before-augment 9cc0e64
    PYTHONPATH=/tmp/before-augment/shared/src \\
        python -m uv run python -m tests.shared.visual.golden tests/shared/visual/data
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geozarr_pipeline.visual import RasterApi, add_visualisation

BEFORE_COMMIT = "9cc0e64"
RASTER_BASE = "https://raster.example.test/raster"
TESTS = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    """One registered item to augment."""

    name: str
    source: Path


CASES = (
    # Another pipeline's item: old extension versions, its own visual links and thumbnail,
    # backend links (self, root, parent, collection) as a catalog returns them.
    Case("predecessor", TESTS / "shared" / "visual" / "data" / "registered-item.json"),
    # Ours, as the register stage writes it (alternate hrefs, STAC 1.1 bands).
    Case("l2a", TESTS / "shared" / "register" / "data" / "registered-item.before.l2a.json"),
)


def registered(case: Case) -> dict[str, Any]:
    item: dict[str, Any] = json.loads(case.source.read_text())
    return item


def augmented_item(case: Case) -> dict[str, Any]:
    """The item `add_visualisation` builds for the case."""
    return add_visualisation(registered(case), RasterApi(RASTER_BASE))


def before_path(data_dir: Path, case: Case) -> Path:
    return data_dir / f"augmented-item.before.{case.name}.json"


def main(argv: list[str]) -> int:
    import geozarr_pipeline

    if len(argv) != 1:
        print("usage: python -m tests.shared.visual.golden DATA_DIR", file=sys.stderr)
        return 2
    data_dir = Path(argv[0])
    print(f"building with {geozarr_pipeline.__file__}", file=sys.stderr)
    for case in CASES:
        text = json.dumps(augmented_item(case), indent=1, ensure_ascii=False) + "\n"
        before_path(data_dir, case).write_text(text)
        print(f"wrote {before_path(data_dir, case)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
