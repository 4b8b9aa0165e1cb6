"""Validation with pystac's shipped core schemas and our profile, and nothing fetched."""

from __future__ import annotations

import copy
import json
import socket
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import pystac
import pytest

from geozarr_pipeline.errors import OutputCheckFailed
from geozarr_pipeline.stac.validate import validate_item, validation_errors

REGISTERED = Path(__file__).parent / "data" / "registered-item.before.l2a.json"


@pytest.fixture
def item() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REGISTERED.read_text())
    return data


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise AssertionError("validation reached for the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(pystac.StacIO, "read_text", refuse)


@pytest.mark.usefixtures("no_network")
def test_a_registered_item_validates_offline(item: dict[str, Any]) -> None:
    assert validation_errors(item) == []
    # Extension schemas are not checked, so an unknown one is not fetched either.
    item["stac_extensions"].append("https://extensions.example.invalid/thing/v1.0.0/schema.json")
    assert validation_errors(item) == []


@pytest.mark.usefixtures("no_network")
def test_core_and_profile_violations_are_all_reported(item: dict[str, Any]) -> None:
    broken = copy.deepcopy(item)
    del broken["geometry"]
    broken["properties"]["datetime"] = "yesterday"
    broken["assets"]["reflectance"]["proj:shape"] = ["wide", "tall"]
    problems = validation_errors(broken)
    assert any(p.startswith("properties/datetime:") for p in problems)  # core schema
    assert any("geometry" in p for p in problems)
    assert any(p.startswith("assets/reflectance/proj:shape/0:") for p in problems)  # profile
    with pytest.raises(OutputCheckFailed) as excinfo:
        validate_item(broken)
    assert "geometry" in excinfo.value.message


@pytest.mark.usefixtures("no_network")
def test_an_item_of_another_stac_version_fails_the_shipped_schema(item: dict[str, Any]) -> None:
    item["stac_version"] = "1.0.0"
    assert any(p.startswith("stac_version:") for p in validation_errors(item))


def test_only_our_profile_is_bundled() -> None:
    schemas = resources.files("geozarr_pipeline.stac").joinpath("schemas")
    assert sorted(entry.name for entry in schemas.iterdir()) == ["README.md", "geozarr-item.json"]
