"""Load the `knative/` kustomizations and validate their documents against schemas.

Knative kinds are checked against JSON schemas exported from the cloudcoil models (Knative
1.17 CRDs), made strict (`additionalProperties: false` wherever the CRD lists properties) so
that a misspelt field fails; the RabbitMQ kinds against the schemas in `schemas/`.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
KNATIVE = ROOT / "knative"
BASE = KNATIVE / "base"
CLUSTER = KNATIVE / "cluster"
OVERLAYS = sorted(p.parent for p in (KNATIVE / "overlays").glob("*/kustomization.yaml"))
SCHEMAS = Path(__file__).resolve().parent / "schemas"

Document = dict[str, Any]

# Trigger spec.delivery.timeout exists in Knative Eventing (feature flag `delivery-timeout`)
# but the 1.17 CRD schema the cloudcoil models come from does not list it.
DELIVERY_EXTRA = {"timeout": {"type": "string"}}

_CORE_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
CORE_SCHEMAS: dict[tuple[str, str], Document] = {
    ("v1", "ConfigMap"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "data"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "ConfigMap"},
            "metadata": _CORE_METADATA,
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    ("v1", "Namespace"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "Namespace"},
            "metadata": _CORE_METADATA,
        },
    },
    ("v1", "PersistentVolumeClaim"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "PersistentVolumeClaim"},
            "metadata": _CORE_METADATA,
            "spec": {
                "type": "object",
                "required": ["accessModes", "resources"],
                "additionalProperties": False,
                "properties": {
                    "accessModes": {
                        "type": "array",
                        "items": {
                            "enum": [
                                "ReadWriteOnce",
                                "ReadOnlyMany",
                                "ReadWriteMany",
                                "ReadWriteOncePod",
                            ]
                        },
                    },
                    "storageClassName": {"type": "string"},
                    "resources": {
                        "type": "object",
                        "required": ["requests"],
                        "properties": {
                            "requests": {
                                "type": "object",
                                "required": ["storage"],
                                "properties": {"storage": {"type": "string"}},
                            }
                        },
                    },
                },
            },
        },
    },
}


def strict(schema: Any) -> Any:
    """Forbid unknown fields wherever a schema object lists its properties."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def knative_schemas() -> dict[tuple[str, str], Document]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cloudcoil.models.knative_eventing.eventing.v1 import Broker, Trigger
        from cloudcoil.models.knative_serving.serving.v1 import Service

    schemas: dict[tuple[str, str], Document] = {}
    for api_version, model in (
        ("serving.knative.dev/v1", Service),
        ("eventing.knative.dev/v1", Broker),
        ("eventing.knative.dev/v1", Trigger),
    ):
        schema = copy.deepcopy(model.model_json_schema(by_alias=True))
        # The models list `status`; a manifest must not set it.
        schema["properties"].pop("status", None)
        for name, definition in schema.get("$defs", {}).items():
            if name.startswith("Delivery"):
                definition["properties"].update(DELIVERY_EXTRA)
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "spec"})
        schema["properties"]["apiVersion"] = {"const": api_version}
        schema["properties"]["kind"] = {"const": model.__name__}
        schemas[(api_version, model.__name__)] = strict(schema)
    return schemas


@cache
def own_schemas() -> dict[tuple[str, str], Document]:
    schemas: dict[tuple[str, str], Document] = {}
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


def schema_for(document: Document) -> Document:
    key = (str(document.get("apiVersion")), str(document.get("kind")))
    for table in (knative_schemas(), own_schemas(), CORE_SCHEMAS):
        if key in table:
            return table[key]
    raise LookupError(f"no schema for {key[1]} {key[0]}: add one before using this kind")


def validation_errors(document: Document) -> list[str]:
    """Every schema violation of one document, as readable lines (empty: valid)."""
    validator = jsonschema.Draft202012Validator(schema_for(document))
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def validate_with_models(document: Document) -> None:
    """The cloudcoil pydantic models also type-check the Knative kinds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cloudcoil.models.knative_eventing.eventing.v1 import Broker, Trigger
        from cloudcoil.models.knative_serving.serving.v1 import Service

    models = {"Service": Service, "Broker": Broker, "Trigger": Trigger}
    model = models.get(str(document.get("kind")))
    if model is not None and str(document.get("apiVersion", "")).endswith(".knative.dev/v1"):
        model.model_validate(document)


def kustomization_files(folder: Path) -> list[Path]:
    """The resource files a kustomization lists, recursively through folder resources."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    files: list[Path] = []
    for entry in spec.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            files.extend(kustomization_files(target))
        else:
            files.append(target)
    return files


def load_documents(paths: list[Path]) -> list[Document]:
    documents: list[Document] = []
    for path in paths:
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    return documents


def kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def kustomize_build(folder: Path) -> tuple[Document, ...]:
    """`kubectl kustomize` output when kubectl is on PATH, else the listed files as they are."""
    tool = kubectl()
    if tool is None:
        return tuple(load_documents(kustomization_files(folder)))
    result = subprocess.run(
        [tool, "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=60
    )
    return tuple(d for d in yaml.safe_load_all(result.stdout) if isinstance(d, dict))


def of_kind(documents: tuple[Document, ...] | list[Document], kind: str) -> Iterator[Document]:
    return (d for d in documents if d.get("kind") == kind)


def by_name(documents: tuple[Document, ...] | list[Document], kind: str) -> dict[str, Document]:
    return {d["metadata"]["name"]: d for d in of_kind(documents, kind)}
