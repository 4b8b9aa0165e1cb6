"""Registered items built through the register stage from fixed inputs.

The inputs: the synthetic L2A and L1C samples (`write_sample`, scale 0.05), converted by
eopf-geozarr with the options of `tests/fixtures/stac_api.py` `converted_l2a`; the source
item and product served in-process (an httpx mock transport) at the sample's placeholder
base; a completion marker with fixed values; asset hrefs under a fixed public base. So the
item depends on no temp path, clock or installed version, and two runs give the same JSON.

`data/registered-item.before.<case>.json` were written by this module from the code of
commit 768a44e, the last one before items were built with pystac:

    git worktree add /tmp/before 768a44e
    PYTHONPATH=/tmp/before/shared/src:/tmp/before/local/src \\
        python -m uv run python -m tests.shared.register.golden tests/shared/register/data
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import ConvertDone
from geozarr_pipeline.output_store import MARKER_FORMAT, LocalOutput
from geozarr_pipeline.stages.register import build_registered_item

BEFORE_COMMIT = "768a44e"
SAMPLE_SCALE = 0.05
SAMPLE_BASE = "http://sample.invalid"  # geozarr_local.sample.layout.PLACEHOLDER_BASE
PUBLIC_BASE = "https://data.example.org/geozarr"
CATALOG_BASE = "https://stac.example.org"
CONVERSION_OPTIONS = {"spatial_chunk": 256, "enable_sharding": False, "keep_scale_offset": False}
FIXED_MARKER = {
    "options": CONVERSION_OPTIONS,
    "completed_at": "2026-01-01T00:00:00+00:00",
    "eopf_geozarr": "0.0.0-fixed",
    "pipeline": "0.0.0-fixed",
}


@dataclass(frozen=True)
class Case:
    """One registered item: a sample product, registered from its source item or its Zarr."""

    name: str
    product: str
    from_source_item: bool


CASES = (
    Case("l2a", "l2a", from_source_item=True),
    Case("l1c", "l1c", from_source_item=True),
    # The product's own stac_discovery: its bbox has west > east without crossing 180.
    Case("l2a-zarr", "l2a", from_source_item=False),
)


@dataclass(frozen=True)
class Converted:
    """A sample written under `sample_root` and converted under `output_root`."""

    sample_root: Path
    output_root: Path
    item_id: str
    collection: str
    store: Path

    def done(self, *, from_source_item: bool) -> ConvertDone:
        item_url = f"{SAMPLE_BASE}/collections/{self.collection}/items/{self.item_id}"
        zarr_url = f"{SAMPLE_BASE}/products/{self.item_id}.zarr"
        return ConvertDone(
            item_id=self.item_id,
            collection=self.collection,
            source_url=item_url if from_source_item else zarr_url,
            source_item_url=item_url if from_source_item else None,
            zarr_url=zarr_url,
            output_url=str(self.store),
        )


def convert_sample(root: Path, product: str) -> Converted:
    """Write the `product` sample under `root` and convert it as convert would."""
    from geozarr_local.sample.build import write_sample
    from geozarr_pipeline.convert.engine import load_library

    sample = write_sample(root / "sample", product, scale=SAMPLE_SCALE)
    output_root = root / "output"
    store = output_root / sample.collection / f"{sample.item_id}.zarr"
    library = load_library()
    library.convert_s2_optimized(
        library.open_source_datatree(str(sample.product_path)),
        output_path=str(store),
        compression_level=3,
        validate_output=False,
        **CONVERSION_OPTIONS,
    )
    return Converted(root / "sample", output_root, sample.item_id, sample.collection, store)


def _sample_transport(sample_root: Path) -> httpx.MockTransport:
    """The sample server's routes, answered from its folder (hrefs stay on SAMPLE_BASE)."""

    def handle(request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "collections" and parts[2] == "items":
            path = sample_root / "items" / parts[1] / f"{parts[3]}.json"
        elif parts[0] == "products":
            path = sample_root.joinpath(*parts)
        else:
            return httpx.Response(404)
        if not path.is_file():
            return httpx.Response(404)
        return httpx.Response(200, content=path.read_bytes())

    return httpx.MockTransport(handle)


def registered_item(converted: Converted, case: Case) -> dict[str, Any]:
    """The item register builds for `converted`, with the fixed marker and URLs."""
    done = converted.done(from_source_item=case.from_source_item)
    with LocalOutput(converted.output_root, done.collection, done.item_id) as location:
        marker = {"format": MARKER_FORMAT, "done": done.model_dump(mode="json"), **FIXED_MARKER}
        location.write_marker(marker)
    settings = Settings(
        output_root=str(converted.output_root),
        public_base_url=PUBLIC_BASE,
        allow_plain_http=True,
        allow_private_hosts=True,
    )
    collection_url = f"{CATALOG_BASE}/collections/{done.collection}"
    with httpx.Client(transport=_sample_transport(converted.sample_root)) as client:
        return build_registered_item(done, settings, client, collection_url)


def before_path(data_dir: Path, case: Case) -> Path:
    return data_dir / f"registered-item.before.{case.name}.json"


def main(argv: list[str]) -> int:
    import geozarr_pipeline

    if len(argv) != 1:
        print("usage: python -m tests.shared.register.golden DATA_DIR", file=sys.stderr)
        return 2
    data_dir = Path(argv[0])
    print(f"building with {geozarr_pipeline.__file__}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as temp:
        converted: dict[str, Converted] = {}
        for case in CASES:
            if case.product not in converted:
                converted[case.product] = convert_sample(Path(temp) / case.product, case.product)
            item = registered_item(converted[case.product], case)
            text = json.dumps(item, indent=1, ensure_ascii=False) + "\n"
            before_path(data_dir, case).write_text(text)
            print(f"wrote {before_path(data_dir, case)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
