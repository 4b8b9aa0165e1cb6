"""What made a registered item: the STAC processing extension (v1.2.0).

`processing:software` names the converter and this pipeline with their versions,
`processing:datetime` is when the conversion completed, and `processing:expression` holds the
conversion options, so `status` and `backfill --reprocess-if-older` can find items made by an
older converter or with other options. The values come from the convert stage's completion
marker, written beside the store when the conversion finished.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# The convert stage's completion marker `{store}.done.json`: written last, it makes a store
# complete and records how it was made.
MARKER_FORMAT = "geozarr-pipeline/convert-marker/1"
MARKER_SUFFIX = ".done.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
PIPELINE_NAME = "eopf-geozarr-pipeline"
PIPELINE_DISTRIBUTION = "geozarr-pipeline-shared"
CONVERTER_NAME = "eopf-geozarr"
OPTIONS_FORMAT = "eopf-geozarr-options"


@cache
def pipeline_version() -> str:
    try:
        return version(PIPELINE_DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def processing_properties(
    marker: dict[str, Any] | None, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The processing:* properties of an item converted as `marker` records.

    The source product's own processing (e.g. `{"EOPF-CPM": "2.6.2"}`, lineage
    "systematic") is kept: ours is added to its software and its lineage.
    """
    source = source or {}
    known = source.get("processing:software")
    software: dict[str, str] = dict(known) if isinstance(known, dict) else {}
    software[PIPELINE_NAME] = str((marker or {}).get("pipeline") or pipeline_version())
    properties: dict[str, Any] = {"processing:software": software}
    if marker and marker.get("eopf_geozarr"):
        software[CONVERTER_NAME] = str(marker["eopf_geozarr"])
    if marker and marker.get("completed_at"):
        properties["processing:datetime"] = str(marker["completed_at"])
    if marker and isinstance(marker.get("options"), dict):
        properties["processing:expression"] = {
            "format": OPTIONS_FORMAT,
            "expression": dict(marker["options"]),
        }
    converter = f"{CONVERTER_NAME} {software[CONVERTER_NAME]}" if CONVERTER_NAME in software else ""
    ours = f"converted to GeoZarr by {converter or CONVERTER_NAME} in {PIPELINE_NAME}"
    earlier = source.get("processing:lineage")
    properties["processing:lineage"] = f"{earlier}; {ours}" if earlier else ours
    return properties


def converter_version(item: dict[str, Any]) -> str | None:
    """The converter version an item records, if any."""
    software = (item.get("properties") or {}).get("processing:software") or {}
    value = software.get(CONVERTER_NAME) if isinstance(software, dict) else None
    return str(value) if value else None
