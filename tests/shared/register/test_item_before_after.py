"""The registered item built with pystac against the one from before the move, field by field.

Both are built from the inputs of `golden.py`: the "before" JSON by the code of commit 768a44e,
the "after" item here by the current register stage. The only differences allowed are
those made on purpose: a bbox that contradicted its geometry is recomputed (the EOPF
product's own bbox has west > east for a scene nowhere near the antimeridian, issue 13); and
arrays that the source stores as integers without CF scaling (the scene classification, the
cloud and snow probabilities, AOT and WVP) keep their integer type instead of the library's
float32, without a nodata they never declared (issue 11).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from geozarr_pipeline.stac.item import geometry_bbox
from tests.shared.register.golden import (
    CASES,
    Case,
    Converted,
    before_path,
    convert_sample,
    registered_item,
)

DATA = Path(__file__).parent / "data"
# Paths allowed to differ, by case: what the issue changes on purpose.
UNSCALED_INTEGER_ASSETS = ("AOT_244m", "WVP_244m", "SCL_488m", "CLD_488m", "SNW_488m")
KEPT_INTEGERS = {
    f"assets/{key}/{field}" for key in UNSCALED_INTEGER_ASSETS for field in ("data_type", "nodata")
}
INTENDED = {"l2a": KEPT_INTEGERS, "l2a-zarr": {"bbox/0", "bbox/2"} | KEPT_INTEGERS}


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Every path at which the two JSON structures differ, with both values."""
    where = path or "(item)"
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after)):
            child = f"{path}/{key}" if path else key
            if key not in after:
                found.append(f"{child}: only before ({json.dumps(before[key])[:80]})")
            elif key not in before:
                found.append(f"{child}: only after ({json.dumps(after[key])[:80]})")
            else:
                found.extend(differences(before[key], after[key], child))
        return found
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} entries before, {len(after)} after"]
        found = []
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            found.extend(differences(old, new, f"{path}/{index}" if path else str(index)))
        return found
    if type(before) is not type(after) or before != after:
        return [f"{where}: {json.dumps(before)[:80]} before, {json.dumps(after)[:80]} after"]
    return []


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Converted]:
    root = tmp_path_factory.mktemp("before-after")
    products = sorted({case.product for case in CASES})
    return {product: convert_sample(root / product, product) for product in products}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_registered_item_is_the_one_from_before(
    case: Case, converted: dict[str, Converted]
) -> None:
    before = json.loads(before_path(DATA, case).read_text())
    after = registered_item(converted[case.product], case)
    intended = INTENDED.get(case.name, set())
    found = differences(before, after)
    assert [d for d in found if d.split(":", 1)[0] not in intended] == []
    assert {d.split(":", 1)[0] for d in found} == intended
    assert after["bbox"] == geometry_bbox(after["geometry"])
    for key in UNSCALED_INTEGER_ASSETS:
        if key in after["assets"]:
            assert after["assets"][key]["data_type"] in ("uint8", "uint16")
            assert "nodata" not in after["assets"][key]


def test_the_recomputed_bbox_was_one_that_contradicted_the_geometry() -> None:
    before = json.loads(before_path(DATA, CASES[2]).read_text())
    west, _south, east, _north = before["bbox"]
    assert west > east
    assert geometry_bbox(before["geometry"]) == [east, before["bbox"][1], west, before["bbox"][3]]
