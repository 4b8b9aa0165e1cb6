"""Validate items offline: against the STAC core item schema pystac ships, and our profile.

The core check is pystac's own validation (`pystac.validation.validate_dict` with its
JSON-schema validator), held to the schemas in pystac's local schema cache: extension schemas
are not checked, and a `$ref` outside the shipped schemas fails instead of being fetched.
Our profile, `schemas/geozarr-item.json`, checks the fields the register stage promises.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from pystac import STACObjectType, STACValidationError
from pystac.validation import GetSchemaError, JsonSchemaSTACValidator, validate_dict
from pystac.version import STACVersion
from referencing.exceptions import Unresolvable

from geozarr_pipeline.errors import OutputCheckFailed

if TYPE_CHECKING:
    from jsonschema.protocols import Validator  # type: ignore[import-untyped]

# The core schemas pystac ships are of this STAC version, the one our items are written in.
STAC_VERSION = STACVersion.DEFAULT_STAC_VERSION
PROFILE_SCHEMA_URL = "https://eopf-geozarr.invalid/schemas/geozarr-item.json"


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator that only knows the schemas pystac ships."""

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        schema = self.schema_cache.get(schema_uri)
        if schema is None:
            raise GetSchemaError(schema_uri, LookupError("not shipped with pystac, not fetched"))
        return schema


@cache
def _core_validator() -> OfflineValidator:
    return OfflineValidator()


@cache
def _profile_validator() -> Validator:
    from jsonschema import Draft7Validator  # type: ignore[import-untyped]
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource
    from referencing.jsonschema import DRAFT7

    text = resources.files("geozarr_pipeline.stac").joinpath("schemas", "geozarr-item.json")
    profile = json.loads(text.read_text())

    def refuse(uri: str) -> Resource[Any]:
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]

    registry: Registry[Any] = Registry(retrieve=refuse).with_resource(  # type: ignore[call-arg]
        PROFILE_SCHEMA_URL, Resource.from_contents(profile, default_specification=DRAFT7)
    )
    return Draft7Validator(profile, registry=registry)


def _location(error: Any) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(item)"


def _core_problems(item: dict[str, Any]) -> list[str]:
    try:
        validate_dict(
            item,
            stac_object_type=STACObjectType.ITEM,
            stac_version=STAC_VERSION,
            extensions=[],
            validator=_core_validator(),
        )
    except STACValidationError as exc:
        errors = exc.source if isinstance(exc.source, list) else []
        return [f"{_location(e)}: {e.message[:300]}" for e in errors] or [str(exc)[:300]]
    except (GetSchemaError, Unresolvable) as exc:
        # A schema pystac does not ship: refused, never fetched.
        return [f"(item): {exc}"[:300]]
    return []


def validation_errors(item: dict[str, Any]) -> list[str]:
    """Every schema violation of the item, as `path: message` lines (empty when valid)."""
    problems = _core_problems(item)
    for error in _profile_validator().iter_errors(item):
        problems.append(f"{_location(error)}: {error.message[:300]}")
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
