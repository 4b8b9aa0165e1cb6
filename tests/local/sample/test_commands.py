"""`geozarr-pipeline sample synthesize` writes the server layout and reports it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geozarr_pipeline.cli import main


def test_synthesize_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "sample",
            "synthesize",
            "--product",
            "l2a",
            "--scale",
            "0.02",
            "--root",
            str(tmp_path),
            "--item-id",
            "my-item",
            "--collection",
            "my-collection",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["item_id"] == "my-item"
    assert summary["collection"] == "my-collection"
    sizes = {int(k): v for k, v in summary["raster_sizes"].items()}
    assert sizes[10980] == 2 * sizes[5490] == 6 * sizes[1830]
    assert sizes[10980] == round(10980 * summary["effective_scale"])
    assert Path(summary["product_path"]) == tmp_path / "products/my-item.zarr"
    assert Path(summary["item_path"]) == tmp_path / "items/my-collection/my-item.json"
    item = json.loads(Path(summary["item_path"]).read_text())
    assert item["id"] == "my-item"
    assert item["collection"] == "my-collection"
    assert (tmp_path / "products/my-item.zarr/.zmetadata").is_file()
