"""The catalog CLI: register a converted store into the static catalog, then show it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geozarr_pipeline.cli import main
from tests.fixtures.sample import LOCAL_SOURCES_ENV
from tests.fixtures.stac_api import ConvertedStore


def test_register_store_then_show_item(
    converted_l2a: ConvertedStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GEOZARR_CATALOG_BACKEND", "static")
    monkeypatch.setenv("GEOZARR_CATALOG_ROOT", str(tmp_path / "catalog"))
    monkeypatch.setenv("GEOZARR_OUTPUT_ROOT", str(converted_l2a.root))
    for name, value in LOCAL_SOURCES_ENV.items():
        monkeypatch.setenv(name, value)
    code = main(
        [
            "register-store",
            "--item-id",
            converted_l2a.item_id,
            "--collection",
            converted_l2a.collection,
        ]
    )
    assert code == 0
    done = json.loads(capsys.readouterr().out)
    assert done["item_url"].startswith("file://")
    assert main(["show-item", converted_l2a.collection, converted_l2a.item_id]) == 0
    item = json.loads(capsys.readouterr().out)
    assert item["id"] == converted_l2a.item_id
    assert "reflectance" in item["assets"]
