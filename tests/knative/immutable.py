"""The fields of the deployed objects that cannot be changed in place, and their record.

Changing one of them with `kubectl apply` is refused by a webhook (or, for queue arguments,
accepted and then refused by RabbitMQ, leaving the Queue not Ready): the object must be
deleted and recreated (docs/deploy.md, "Changing what cannot be changed"). The record in
`immutable-fields.json` holds what is deployed; a test fails when the manifests differ from
it, so the change is a deliberate one, made together with that procedure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.knative.manifests import KNATIVE, Document

RECORD = Path(__file__).resolve().parent / "immutable-fields.json"

Path_ = tuple[str, ...]
_REFERENCE: Path_ = ("spec", "rabbitmqClusterReference")
_TOPOLOGY: tuple[Path_, ...] = (("spec", "name"), ("spec", "vhost"), _REFERENCE)

# Where each rule is enforced (eventing-rabbitmq at commit bd1ee997, knative/eventing at
# 8cf4c4b6, rabbitmq/messaging-topology-operator api/v1beta1/*_webhook.go).
IMMUTABLE: dict[str, tuple[Path_, ...]] = {
    # pkg/apis/eventing/v1alpha1/broker_validation.go: the class annotation and the spec.
    "Broker": (("metadata", "annotations", "eventing.knative.dev/broker.class"), ("spec",)),
    # pkg/apis/eventing/v1alpha1/rabbitmq_validation.go: the spec.
    "RabbitmqBrokerConfig": (("spec",),),
    # knative/eventing pkg/apis/eventing/v1/trigger_validation.go: spec.broker;
    # eventing-rabbitmq pkg/apis/eventing/v1alpha1/trigger_validation.go: spec.filter.
    "Trigger": (("spec", "broker"), ("spec", "filter")),
    # pkg/apis/sources/v1alpha1/rabbitmq_validation.go: the spec.
    "RabbitmqSource": (("spec",),),
    # exchange_webhook.go: name, vhost, cluster reference, type, autoDelete, durable.
    "Exchange": (*_TOPOLOGY, ("spec", "type"), ("spec", "autoDelete"), ("spec", "durable")),
    # queue_webhook.go: the same; arguments are fixed by RabbitMQ at declaration.
    "Queue": (
        *_TOPOLOGY,
        ("spec", "type"),
        ("spec", "autoDelete"),
        ("spec", "durable"),
        ("spec", "arguments"),
    ),
    # binding_webhook.go: everything but the name.
    "Binding": (
        ("spec", "vhost"),
        _REFERENCE,
        ("spec", "source"),
        ("spec", "destination"),
        ("spec", "destinationType"),
        ("spec", "routingKey"),
        ("spec", "arguments"),
    ),
}


def _get(document: Document, path: Path_) -> Any:
    node: Any = document
    for step in path:
        if not isinstance(node, dict) or step not in node:
            return None
        node = node[step]
    return node


def immutable_fields(documents: Sequence[Document]) -> dict[str, Any]:
    """`Kind/name` -> {dotted path: value} for every immutable field of every object."""
    fields: dict[str, Any] = {}
    for document in documents:
        paths = IMMUTABLE.get(str(document.get("kind")))
        if paths:
            key = f"{document['kind']}/{document['metadata']['name']}"
            fields[key] = {".".join(p): _get(document, p) for p in paths}
    return dict(sorted(fields.items()))


def recorded() -> dict[str, Any]:
    """The record: deployment folder (relative to knative/) -> immutable fields."""
    return dict(json.loads(RECORD.read_text()))


def record_key(folder: Path) -> str:
    return str(folder.relative_to(KNATIVE))


def changed(current: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """Objects in both whose immutable fields differ (new and removed objects are fine)."""
    return [
        f"{key}: deployed {record[key]!r}, manifests {current[key]!r}"
        for key in sorted(current.keys() & record.keys())
        if current[key] != record[key]
    ]
