"""Validate items against bundled JSON schemas: the STAC 1.1.0 item schema and our profile.

No network: the schemas ship in `stac/schemas/` and any other `$ref` is refused.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from geozarr_pipeline.errors import OutputCheckFailed

if TYPE_CHECKING:
    from jsonschema.protocols import Validator  # type: ignore[import-untyped]

STAC_VERSION = "1.1.0"
ITEM_SPEC_BASE = f"https://schemas.stacspec.org/v{STAC_VERSION}/item-spec/json-schema/"
ITEM_PARTS = (
    "bands",
    "basics",
    "common",
    "data-values",
    "datetime",
    "instrument",
    "licensing",
    "provider",
)
ITEM_SCHEMA_URL = f"{ITEM_SPEC_BASE}item.json"
PROFILE_SCHEMA_URL = "https://eopf-geozarr.invalid/schemas/geozarr-item.json"


def _load(relative: str) -> dict[str, Any]:
    text = resources.files("geozarr_pipeline.stac").joinpath("schemas", relative).read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def _validators() -> tuple[Validator, Validator]:
    from jsonschema import Draft7Validator  # type: ignore[import-untyped]
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource
    from referencing.jsonschema import DRAFT7

    documents = {
        ITEM_SCHEMA_URL: _load(f"stac-spec/v{STAC_VERSION}/item.json"),
        "https://geojson.org/schema/Feature.json": _load("geojson/Feature.json"),
        "https://geojson.org/schema/Geometry.json": _load("geojson/Geometry.json"),
        PROFILE_SCHEMA_URL: _load("geozarr-item.json"),
    }
    for part in ITEM_PARTS:
        documents[f"{ITEM_SPEC_BASE}{part}.json"] = _load(f"stac-spec/v{STAC_VERSION}/{part}.json")

    def refuse(uri: str) -> Resource[Any]:
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]

    registry: Registry[Any] = Registry(retrieve=refuse).with_resources(  # type: ignore[call-arg]
        (url, Resource.from_contents(doc, default_specification=DRAFT7))
        for url, doc in documents.items()
    )
    item = Draft7Validator(documents[ITEM_SCHEMA_URL], registry=registry)
    profile = Draft7Validator(documents[PROFILE_SCHEMA_URL], registry=registry)
    return item, profile


def validation_errors(item: dict[str, Any]) -> list[str]:
    """Every schema violation of the item, as `path: message` lines (empty when valid)."""
    problems: list[str] = []
    for validator in _validators():
        for error in validator.iter_errors(item):
            where = "/".join(str(p) for p in error.absolute_path) or "(item)"
            problems.append(f"{where}: {error.message[:300]}")
    return problems


def validate_item(item: dict[str, Any]) -> None:
    """Raise OutputCheckFailed naming the problems if the item breaks a schema."""
    problems = validation_errors(item)
    if problems:
        shown = "; ".join(problems[:10])
        raise OutputCheckFailed(
            f"item {item.get('id')!r} fails STAC schema validation: {shown}",
            problems=problems[:50],
        )
