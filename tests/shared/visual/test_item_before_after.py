"""The augmented item built with pystac against the one from before the move, field by field.

Both are built from the inputs of `golden.py`: the "before" JSON by the code of commit 9cc0e64
(dict-based), the "after" item here by the current `add_visualisation` (pystac). No
difference is allowed but the one made on purpose since: tile and TileJSON links name their
tile size (`tilesize=256` first in the query), without which titiler-eopf reads the finest
level at every zoom.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pystac.extensions.render import RenderExtension

from geozarr_pipeline.stac.item import item_dict, read_registered_item
from geozarr_pipeline.visual import RENDER_EXTENSION, RasterApi, true_color, visualise
from geozarr_pipeline.visual.item import render_of
from geozarr_pipeline.visual.links import TILE_SIZE
from tests.shared.register.test_item_before_after import differences
from tests.shared.visual.golden import (
    CASES,
    RASTER_BASE,
    Case,
    augmented_item,
    before_path,
    registered,
)

DATA = Path(__file__).parent / "data"
SIZED_RELS = ("xyz", "tilejson")
IDS = [case.name for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_augmented_item_is_the_one_from_before(case: Case) -> None:
    before = json.loads(before_path(DATA, case).read_text())
    for link in before["links"]:
        if link["rel"] in SIZED_RELS:
            link["href"] = link["href"].replace("?", f"?tilesize={TILE_SIZE}&", 1)
    after = augmented_item(case)
    assert differences(before, after) == []
    assert before["properties"]["renders"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_render_entry_is_written_in_the_same_order(case: Case) -> None:
    before = json.loads(before_path(DATA, case).read_text())
    after = augmented_item(case)
    for key, entry in before["properties"]["renders"].items():
        assert list(after["properties"]["renders"][key].items()) == list(entry.items())
    assert after["stac_extensions"] == before["stac_extensions"]
    assert [link["rel"] for link in after["links"]] == [link["rel"] for link in before["links"]]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_registered_item_reads_back_as_it_was(case: Case) -> None:
    """What the stage compares to decide whether to write: read and written unchanged."""
    item = registered(case)
    read = read_registered_item(item, case.name)
    assert differences(item, read.to_dict(include_self_link=True, transform_hrefs=False)) == []
    without_self = [link for link in item["links"] if link["rel"] != "self"]
    assert item_dict(read)["links"] == without_self


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_stage_view_of_the_item_is_the_same(case: Case) -> None:
    """`visualise` on the pystac Item gives what `add_visualisation` gives, less the self link."""
    item = read_registered_item(registered(case), case.name)
    visualise(item, RasterApi(RASTER_BASE))
    expected = augmented_item(case)
    expected["links"] = [link for link in expected["links"] if link["rel"] != "self"]
    assert differences(expected, item_dict(item)) == []


def test_pystac_render_is_the_rendering_entry() -> None:
    rendering = true_color()
    render = render_of(rendering)
    assert list(render.to_dict().items()) == list(rendering.render_entry().items())
    assert render.assets == ["reflectance"]
    assert render.rescale == [[0.0, 1.0]]
    assert RenderExtension.get_schema_uri() == RENDER_EXTENSION
