"""The viewer link of an augmented item, opened in Debian's Chromium: real imagery on the map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Response, sync_playwright

from geozarr_local.stack import LocalStack
from tests.fixtures.stack import ChainRun
from tests.fixtures.visual import MapSetup, read_png

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1024, "height": 768}
# The page background (#e8ecef): anything far from it is imagery or the footprint outline.
BACKGROUND = np.array([0xE8, 0xEC, 0xEF])

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="apt package chromium missing")


def open_viewer(url: str, screenshot: Path) -> tuple[dict[str, Any], list[tuple[str, int, str]]]:
    """Load the viewer in Chromium until its tiles have loaded; keep a screenshot."""
    tile_responses: list[tuple[str, int, str]] = []

    def record(response: Response) -> None:
        if "/tiles/WebMercatorQuad/" in response.url:
            tile_responses.append(
                (response.url, response.status, response.headers.get("content-type", ""))
            )

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.on("response", record)
            page.goto(url, wait_until="load")
            page.wait_for_function(
                "window.viewerState && (window.viewerState.ready || window.viewerState.error)",
                timeout=60_000,
            )
            state: dict[str, Any] = page.evaluate("window.viewerState")
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return state, tile_responses


def assert_map_shows_imagery(
    state: dict[str, Any], tile_responses: list[tuple[str, int, str]], screenshot: Path
) -> None:
    assert state["error"] is None, state
    assert state["tilesLoaded"] > 0, state
    # An edge tile inside the TileJSON bounds (a lon/lat box) but outside the UTM grid is a
    # 404, which Leaflet counts as a tile error; anything else is a failure.
    loaded = [url for url, status, _ in tile_responses if status == 200]
    missing = [url for url, status, _ in tile_responses if status == 404]
    assert loaded, "the map loaded no tile"
    assert len(loaded) + len(missing) == len(tile_responses), tile_responses
    assert state["tileErrors"] == len(missing), (state, tile_responses)
    for url, status, content_type in tile_responses:
        if status == 200:
            assert content_type == "image/png", url

    pixels = read_png(screenshot.read_bytes())[:3].transpose(1, 2, 0).astype(int)
    distance = np.abs(pixels - BACKGROUND).sum(axis=2)
    imagery = distance > 40
    assert imagery.mean() > 0.05, f"only {imagery.mean():.1%} of the map differs from background"
    assert pixels[imagery].std() > 5, "imagery, not a flat fill"


def test_viewer_shows_the_item_imagery(map_setup: MapSetup) -> None:
    screenshot = ARTIFACTS / "viewer.png"
    state, tile_responses = open_viewer(map_setup.link("viewer"), screenshot)
    assert_map_shows_imagery(state, tile_responses, screenshot)


def test_viewer_of_the_demo_chain_item(local_stack: LocalStack, chain_run: ChainRun) -> None:
    """The viewer URL that augment.done reports, for the item the whole chain produced."""
    viewer_url = chain_run.augment_done["viewer_url"]
    assert viewer_url.startswith(local_stack.raster_url + "/collections/")
    screenshot = ARTIFACTS / "viewer-demo-chain.png"
    state, tile_responses = open_viewer(viewer_url, screenshot)
    assert_map_shows_imagery(state, tile_responses, screenshot)


def test_the_thumbnail_shows_in_the_browser_at_thumbnail_size(map_setup: MapSetup) -> None:
    """Chromium decodes the item's thumbnail: at most 512 px on its long side, not blank."""
    thumbnail = map_setup.item["assets"]["thumbnail"]["href"]
    screenshot = ARTIFACTS / "thumbnail.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.set_content(
                f'<body style="margin:0;background:#e8ecef"><img src="{thumbnail}"></body>'
            )
            page.wait_for_function(
                "document.images[0].complete && document.images[0].naturalWidth > 0",
                timeout=60_000,
            )
            size = page.evaluate(
                "[document.images[0].naturalWidth, document.images[0].naturalHeight]"
            )
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    width, height = size
    assert 0 < max(width, height) <= 512, size
    pixels = read_png(screenshot.read_bytes())[:3, :height, :width].transpose(1, 2, 0).astype(int)
    imagery = np.abs(pixels - BACKGROUND).sum(axis=2) > 40
    assert imagery.mean() > 0.3, f"only {imagery.mean():.1%} of the thumbnail shows imagery"
    assert pixels[imagery].std() > 5, "imagery, not a flat fill"
