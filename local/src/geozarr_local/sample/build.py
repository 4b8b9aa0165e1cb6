"""Write one sample (product + source item) into a server root folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import zarr

from geozarr_local.sample.hierarchy import (
    load_hierarchy,
    native_sizes,
    plan_scale,
    reference_product_id,
    walk,
)
from geozarr_local.sample.item import make_source_item
from geozarr_local.sample.layout import PLACEHOLDER_BASE, SampleLayout, product_url
from geozarr_local.sample.synthesize import synthesize_product

DEFAULT_COLLECTIONS = {"l2a": "sentinel-2-l2a", "l1c": "sentinel-2-l1c"}


@dataclass(frozen=True)
class Sample:
    item_id: str
    collection: str
    product_path: Path
    item_path: Path
    # The achieved scale (nearest to the requested one keeping exact pixel grids) and the
    # raster sizes: native size -> written size.
    effective_scale: float = 1.0
    sizes: dict[int, int] | None = None


def write_sample(
    root: Path,
    product: str = "l2a",
    *,
    scale: float = 0.1,
    seed: int = 0,
    item_id: str | None = None,
    collection: str | None = None,
) -> Sample:
    """Synthesize `product` ("l2a" / "l1c") and its item under `root` (see layout.py)."""
    spec = load_hierarchy(product)
    item_id = item_id or reference_product_id(product)
    collection = collection or DEFAULT_COLLECTIONS[product]
    layout = SampleLayout(Path(root))
    store = synthesize_product(spec, layout.product_path(item_id), scale=scale, seed=seed)
    item = make_source_item(
        item_id,
        collection,
        product_url(PLACEHOLDER_BASE, item_id),
        # The written product's attributes: they state the synthetic scene's cloud cover.
        zarr.open_group(str(store), mode="r").attrs.asdict(),
        members={path for path, _ in walk(spec)},
    )
    item_path = layout.item_path(collection, item_id)
    item_path.parent.mkdir(parents=True, exist_ok=True)
    partial = item_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(item, indent=2))
    partial.replace(item_path)
    plan = plan_scale(spec, scale)
    sizes = {n: plan.size(n) for n in sorted(native_sizes(spec), reverse=True)}
    return Sample(item_id, collection, store, item_path, plan.scale, sizes)
