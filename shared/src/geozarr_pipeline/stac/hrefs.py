"""Asset hrefs: the public https form of object-storage locations, the s3:// form as alternate."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from geozarr_pipeline.config import Settings

ALTERNATE_ASSETS_EXTENSION = "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json"


def _normalise(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return str(Path(unquote(parsed.path) if parsed.scheme else url).resolve())
    return url.rstrip("/")


def canonical_store_url(output_url: str) -> str:
    """The store location as written into items: URLs as they are, local paths absolute."""
    return _normalise(output_url)


def storage_to_public(url: str, settings: Settings) -> str | None:
    """`url` rewritten under `public_base_url` if it lies under `output_root`, else None."""
    if not settings.public_base_url:
        return None
    root = _normalise(settings.output_root)
    target = _normalise(url)
    if target == root or target.startswith(root.rstrip("/") + "/"):
        return settings.public_base_url.rstrip("/") + target[len(root.rstrip("/")) :]
    return None


def public_to_storage(url: str, settings: Settings) -> str | None:
    """The inverse of `storage_to_public`: `url` under `public_base_url` mapped back to
    `output_root`, else None."""
    public = (settings.public_base_url or "").rstrip("/")
    if not public or not (url == public or url.startswith(public + "/")):
        return None
    return _normalise(settings.output_root).rstrip("/") + url[len(public) :]


def asset_hrefs(url: str, settings: Settings) -> tuple[str, dict[str, Any]]:
    """The href of an asset and its `alternate` entries (alternate-assets extension)."""
    public = storage_to_public(url, settings)
    if public is None:
        return url, {}
    alternates: dict[str, Any] = {}
    if urlparse(url).scheme == "s3":
        alternates["s3"] = {"href": url, "alternate:name": "S3"}
    return public, alternates
