"""Every manifest under knative/ passes its upstream schema and the deployment is consistent.

Everything is rendered by the real kustomize (`kubectl kustomize`, kubectl from the virtual
environment). Each consistency rule lives in `consistency.py` as a function returning its
problems; the tests check that the manifests have none and that a broken copy has some.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from geozarr_local.broker.routing import DeliverySpec, load_routes, parse_duration
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import EventType, Stage
from tests.knative import consistency as rules
from tests.knative.consistency import (
    PREFETCH,
    ClusterSettings,
    cluster_settings,
    container,
    dead_letter_sink,
    delivery,
    parallelism,
    subscriber,
    template,
    worst_delivery_seconds,
    worst_unacked_seconds,
)
from tests.knative.immutable import changed, immutable_fields, record_key, recorded
from tests.knative.manifests import (
    BASE,
    CLUSTER,
    CLUSTER_RABBITMQ,
    CRDS,
    KNATIVE,
    KUSTOMIZATIONS,
    OVERLAYS,
    PATCH_SCRIPT,
    REFERENCE_CRDS,
    Document,
    by_name,
    cluster_patches,
    kubectl,
    kustomization_files,
    kustomize_build,
    of_kind,
    patch_errors,
    structural,
    validation_errors,
)

DEPLOYMENTS = [BASE, *OVERLAYS]
DEPLOYMENT_IDS = [record_key(p) for p in DEPLOYMENTS]
STAGE_SERVICES = {stage: f"geozarr-{stage.value}" for stage in Stage}
FAILURES = "geozarr-failures"
TERMINAL = EventType.AUGMENT_DONE
ENTRY_TYPES = (EventType.CONVERT_REQUESTED, EventType.RABBITMQ_MESSAGE)
SECRET_NAMES = {"geozarr-s3", "geozarr-stac-api", "geozarr-rabbitmq"}
GUIDE = KNATIVE.parent / "docs" / "deploy.md"
UPGRADE_SECTION = "Upgrading from the dead-letter sink"

deployments = pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)


def rendered(folder: Path = BASE) -> list[Document]:
    """A private copy of a rendered kustomization, safe to break."""
    return copy.deepcopy(list(kustomize_build(folder)))


def service_for(documents: Sequence[Document], name: str) -> Document:
    services = by_name(documents, "Service")
    assert name in services, f"no Knative Service {name}"
    return services[name]


def trigger_for(documents: list[Document], name: str) -> Document:
    return by_name(documents, "Trigger")[name]


def guide() -> str:
    return GUIDE.read_text()


# --- rendering and schemas ----------------------------------------------------------------


def test_kubectl_is_the_virtual_environments_with_kustomize() -> None:
    tool = kubectl()
    assert tool.parent == Path(sys.prefix) / "bin"
    version = subprocess.run(
        [str(tool), "version", "--client"], capture_output=True, text=True, check=True
    ).stdout
    assert "Kustomize Version: v5" in version


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=[record_key(p) for p in KUSTOMIZATIONS])
def test_every_rendered_document_passes_its_schema(folder: Path) -> None:
    documents = kustomize_build(folder)
    assert documents
    for document in documents:
        errors = validation_errors(document)
        assert errors == [], f"{document['kind']} {document['metadata']['name']}: {errors}"


def test_every_manifest_file_is_rendered_or_a_cluster_patch() -> None:
    listed = {p for folder in KUSTOMIZATIONS for p in kustomization_files(folder)}
    patches = {p.path for p in cluster_patches()}
    present = {p for p in KNATIVE.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert present == listed | patches
    assert not listed & patches


def test_cluster_patches_are_partial_merge_patches() -> None:
    patches = cluster_patches()
    assert {(p.namespace, p.resource, p.name) for p in patches} == {
        ("knative-serving", "configmap", "config-defaults"),
        ("knative-serving", "configmap", "config-features"),
        ("knative-serving", "deployment", "activator"),
        ("knative-eventing", "configmap", "config-features"),
    }
    for patch in patches:
        assert patch_errors(patch) == [], patch.path
    whole = dataclasses.replace(patches[0], body={**patches[0].body, "metadata": {"name": "x"}})
    assert patch_errors(whole), "a patch carrying a whole object must be refused"


def test_vendored_crds_are_the_reference_copies() -> None:
    """tests/knative/crds holds the team's reference CRDs unchanged (when that folder exists)."""
    if not REFERENCE_CRDS.is_dir():
        pytest.skip(f"{REFERENCE_CRDS} is not on this machine")
    reference = {p.name: p.read_bytes() for p in REFERENCE_CRDS.glob("*.yaml")}
    vendored = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    assert vendored == reference


def test_structural_reading_of_a_crd_schema() -> None:
    schema = structural(
        {
            "type": "object",
            "properties": {
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
                "open": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"a": {"type": "string"}},
                },
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
                "quantity": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "x-kubernetes-int-or-string": True,
                },
                "maybe": {"type": "string", "nullable": True},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["closed"]["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["open"]
    assert schema["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert "type" not in schema["properties"]["quantity"]
    assert schema["properties"]["maybe"]["type"] == ["string", "null"]


Mutation = Callable[[Document], None]


def _set(path: tuple[str | int, ...], value: Any) -> Mutation:
    def mutate(document: Document) -> None:
        node: Any = document
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


_CONTAINER: tuple[str | int, ...] = ("spec", "template", "spec", "containers", 0)
_VOLUME: tuple[str | int, ...] = ("spec", "template", "spec", "volumes", 0)
REJECTED: dict[str, tuple[str, str, Mutation]] = {
    "service: unknown field": (
        "Service",
        "geozarr-convert",
        _set(("spec", "template", "spec", "containerConcurency"), 1),
    ),
    "service: ephemeral storage as a list": (
        "Service",
        "geozarr-convert",
        _set((*_CONTAINER, "resources", "requests", "ephemeral-storage"), ["10Gi"]),
    ),
    "service: misspelt emptyDir sizeLimit (closed by the webhook)": (
        "Service",
        "geozarr-convert",
        _set((*_VOLUME, "emptyDir", "sizeLimt"), "1Gi"),
    ),
    "service: status in a manifest": ("Service", "geozarr-convert", _set(("status",), {})),
    "trigger: misspelt delivery field (closed by the webhook)": (
        "Trigger",
        "geozarr-convert",
        _set(("spec", "delivery", "retries"), 3),
    ),
    "trigger: misspelt subscriber ref field": (
        "Trigger",
        "geozarr-convert",
        _set(("spec", "subscriber", "ref", "nmae"), "x"),
    ),
    "trigger: retry as a string": (
        "Trigger",
        "geozarr-convert",
        _set(("spec", "delivery", "retry"), "2"),
    ),
    "queue: deletionPolicy outside its enum": (
        "Queue",
        "geozarr-items",
        _set(("spec", "deletionPolicy"), "keep"),
    ),
    "queue: misspelt deletionPolicy": (
        "Queue",
        "geozarr-items",
        _set(("spec", "deletetionPolicy"), "retain"),
    ),
    "source: parallelism below its minimum": (
        "RabbitmqSource",
        "geozarr-items",
        _set(("spec", "rabbitmqResourcesConfig", "parallelism"), 0),
    ),
    "broker config: queue type outside its enum": (
        "RabbitmqBrokerConfig",
        "geozarr-broker-config",
        _set(("spec", "queueType"), "stream"),
    ),
    "binding: unknown field": ("Binding", "geozarr-items", _set(("spec", "routingKeys"), [])),
    "metadata: a label that is not a string": (
        "Exchange",
        "geozarr",
        _set(("metadata", "labels"), {"tier": 1}),
    ),
    "configmap: a value that is not a string": (
        "ConfigMap",
        "geozarr-settings",
        _set(("data", "GEOZARR_SPATIAL_CHUNK"), 1024),
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_schemas_reject_what_the_cluster_rejects(case: str) -> None:
    kind, name, mutate = REJECTED[case]
    document = by_name(rendered(), kind)[name]
    assert validation_errors(document) == []
    mutate(document)
    assert validation_errors(document), f"{case}: accepted"


ACCEPTED: dict[str, tuple[str, str, Mutation]] = {
    "service: cpu as an integer (int-or-string)": (
        "Service",
        "geozarr-convert",
        _set((*_CONTAINER, "resources", "requests", "cpu"), 2),
    ),
    "queue: any argument (preserved)": (
        "Queue",
        "geozarr-items",
        _set(("spec", "arguments", "x-delivery-limit"), 50),
    ),
    "trigger: any filter attribute (preserved)": (
        "Trigger",
        "geozarr-convert",
        _set(("spec", "filter", "attributes", "source"), "urn:operator"),
    ),
    "trigger: delivery retryAfterMax (a DeliverySpec field the CRD does not list)": (
        "Trigger",
        "geozarr-convert",
        _set(("spec", "delivery", "retryAfterMax"), "PT1M"),
    ),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_schemas_accept_what_the_cluster_accepts(case: str) -> None:
    kind, name, mutate = ACCEPTED[case]
    document = by_name(rendered(), kind)[name]
    mutate(document)
    assert validation_errors(document) == [], case


def test_local_router_reads_the_same_triggers() -> None:
    routes = load_routes(BASE, broker="geozarr")
    triggers = by_name(kustomize_build(BASE), "Trigger")
    assert {r.name for r in routes} == set(triggers)


# --- consistency: the checks pass ---------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> ClusterSettings:
    return cluster_settings()


@deployments
def test_consumer_timeout_covers_a_full_prefetch(folder: Path, cluster: ClusterSettings) -> None:
    assert rules.consumer_timeout_problems(rendered(folder), cluster) == []


@deployments
def test_timeouts_nest_from_delivery_to_the_activator(
    folder: Path, cluster: ClusterSettings
) -> None:
    assert rules.timeout_problems(rendered(folder), cluster) == []


@deployments
def test_deliveries_fit_the_autoscaling_limits(folder: Path) -> None:
    assert rules.capacity_problems(rendered(folder)) == []


@deployments
def test_convert_runs_one_request_per_pod(folder: Path) -> None:
    assert rules.one_request_per_pod_problems(rendered(folder)) == []


@deployments
def test_scratch_volumes_request_ephemeral_storage(folder: Path) -> None:
    assert rules.scratch_storage_problems(rendered(folder)) == []


@deployments
def test_cluster_enables_the_features_the_deployment_uses(
    folder: Path, cluster: ClusterSettings
) -> None:
    assert rules.feature_problems(rendered(folder), cluster) == []


# --- consistency: the arithmetic, and the checks catch a broken copy -----------------------


def test_worst_delivery_formula() -> None:
    convert = DeliverySpec(retry=2, backoff_delay=10, timeout=parse_duration("PT30M"))
    assert worst_delivery_seconds(convert) == 3 * 1800 + 20 + 40
    assert worst_unacked_seconds(convert, 2) == 50 * 5460
    assert worst_unacked_seconds(convert, 3) == 34 * 5460


def test_consumer_timeout_arithmetic(cluster: ClusterSettings) -> None:
    """The numbers the manifests and docs/deploy.md quote, from the manifests themselves."""
    convert = trigger_for(rendered(), "geozarr-convert")
    assert PREFETCH == 100
    assert parallelism(convert) == 2
    assert worst_delivery_seconds(delivery(convert)) == 5460
    assert math.ceil(PREFETCH / parallelism(convert)) == 50
    worst = max(
        worst_unacked_seconds(spec, workers)
        for _, spec, workers in rules.unacked_holders(rendered())
    )
    assert worst == 50 * 5460 == 273000
    assert cluster.consumer_timeout == 96 * 3600 > worst


def _with(cluster: ClusterSettings, **changes: Any) -> ClusterSettings:
    return ClusterSettings(**{**cluster.__dict__, **changes})


def test_consumer_timeout_check_catches_a_slower_backlog(cluster: ClusterSettings) -> None:
    documents = rendered()
    trigger_for(documents, "geozarr-convert")["metadata"]["annotations"][
        rules.PARALLELISM_ANNOTATION
    ] = "1"
    problems = rules.consumer_timeout_problems(documents, cluster)
    assert [p.split(":")[0] for p in problems] == [
        "Trigger geozarr-convert",
        "Trigger geozarr-convert (dead letters)",
    ]
    assert all("ceil(100/1) * 5460 s = 546000 s" in p for p in problems)
    assert rules.consumer_timeout_problems(rendered(), _with(cluster, consumer_timeout=1800))


def test_timeout_check_catches_each_broken_link(cluster: ClusterSettings) -> None:
    longer = rendered()
    trigger_for(longer, "geozarr-convert")["spec"]["delivery"]["timeout"] = "PT40M"
    assert any("exceeds geozarr-convert's" in p for p in rules.timeout_problems(longer, cluster))
    shorter = rendered()
    trigger_for(shorter, "geozarr-convert")["spec"]["delivery"]["timeout"] = "PT10M"
    assert any("worst conversion" in p for p in rules.timeout_problems(shorter, cluster))
    over = rendered()
    template(service_for(over, "geozarr-convert"))[1]["timeoutSeconds"] = 3000
    assert any("max-revision" in p for p in rules.timeout_problems(over, cluster))
    short_grace = _with(cluster, activator_grace=cluster.max_revision_timeout)
    assert any("activator" in p for p in rules.timeout_problems(rendered(), short_grace))


def test_capacity_check_catches_more_deliveries_than_pods() -> None:
    documents = rendered()
    template(service_for(documents, "geozarr-convert"))[0]["autoscaling.knative.dev/max-scale"] = (
        "3"
    )
    assert rules.capacity_problems(documents) == [
        "geozarr-convert: 4 concurrent deliveries but only 3 slots"
    ]


def test_one_request_check_catches_threads_and_spare_pods() -> None:
    threads = rendered()
    for entry in container(service_for(threads, "geozarr-convert"))["env"]:
        if entry["name"] == "THREADS":
            entry["value"] = "2"
    assert rules.one_request_per_pod_problems(threads)
    spare = rendered()
    del template(service_for(spare, "geozarr-convert"))[0][
        "autoscaling.knative.dev/target-utilization-percentage"
    ]
    assert rules.one_request_per_pod_problems(spare)


def test_scratch_check_catches_a_missing_or_small_request() -> None:
    missing = rendered()
    del container(service_for(missing, "geozarr-convert"))["resources"]["requests"][
        "ephemeral-storage"
    ]
    assert rules.scratch_storage_problems(missing)
    small = rendered()
    container(service_for(small, "geozarr-register"))["resources"]["requests"][
        "ephemeral-storage"
    ] = "100Mi"
    assert rules.scratch_storage_problems(small)


def test_feature_check_catches_a_disabled_flag(cluster: ClusterSettings) -> None:
    no_timeout = _with(cluster, eventing_features={})
    assert rules.feature_problems(rendered(), no_timeout) == [
        "knative-eventing config-features: delivery-timeout is not enabled"
    ]
    assert rules.feature_problems(rendered(), _with(cluster, serving_features={}))


# --- topology: exchange, queues, source ---------------------------------------------------


@deployments
def test_rabbitmq_source_reads_the_geozarr_exchange_into_the_broker(folder: Path) -> None:
    documents = kustomize_build(folder)
    (source,) = of_kind(documents, "RabbitmqSource")
    config = source["spec"]["rabbitmqResourcesConfig"]
    assert config["predeclared"] is True
    exchanges = {e["spec"]["name"]: e["spec"] for e in of_kind(documents, "Exchange")}
    assert exchanges[config["exchangeName"]] | {"rabbitmqClusterReference": None} == {
        "name": "geozarr",
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "rabbitmqClusterReference": None,
    }
    queues = {q["spec"]["name"] for q in of_kind(documents, "Queue")}
    assert config["queueName"] in queues
    bindings = [
        b["spec"]
        for b in of_kind(documents, "Binding")
        if b["spec"]["destination"] == config["queueName"]
    ]
    assert len(bindings) == 1
    assert (bindings[0]["source"], bindings[0]["destinationType"], bindings[0]["routingKey"]) == (
        "geozarr",
        "queue",
        "eopf.items.*",
    )
    sink = source["spec"]["sink"]["ref"]
    assert sink["kind"] == "Broker"
    assert sink["name"] in by_name(documents, "Broker")
    secrets = {
        d["spec"]["rabbitmqClusterReference"]["connectionSecret"]["name"]
        for d in documents
        if "rabbitmqClusterReference" in d.get("spec", {})
    }
    assert secrets == {"geozarr-rabbitmq"}


@deployments
def test_source_queue_dead_letters_into_a_retained_queue(folder: Path) -> None:
    """The adapter nacks without requeue after its retries (eventing-rabbitmq
    pkg/adapter/adapter.go): the source queue needs a dead-letter exchange to lose nothing."""
    documents = kustomize_build(folder)
    (source,) = of_kind(documents, "RabbitmqSource")
    queues = {q["spec"]["name"]: q["spec"] for q in of_kind(documents, "Queue")}
    items = queues[source["spec"]["rabbitmqResourcesConfig"]["queueName"]]
    arguments = items["arguments"]
    exchanges = {e["spec"]["name"]: e["spec"] for e in of_kind(documents, "Exchange")}
    dlx = arguments["x-dead-letter-exchange"]
    assert exchanges[dlx]["durable"] is True
    # at-least-once dead-lettering: quorum queues only, and only with reject-publish overflow.
    assert (items["type"], arguments["x-dead-letter-strategy"], arguments["x-overflow"]) == (
        "quorum",
        "at-least-once",
        "reject-publish",
    )
    targets = [
        b["spec"]["destination"]
        for b in of_kind(documents, "Binding")
        if b["spec"]["source"] == dlx and b["spec"]["destinationType"] == "queue"
    ]
    assert len(targets) == 1
    assert targets[0] in queues
    # fanout: every dead-lettered message reaches the queue, whatever its routing key.
    assert exchanges[dlx]["type"] == "fanout"


@deployments
def test_every_queue_is_retained_when_its_object_is_deleted(folder: Path) -> None:
    for queue in of_kind(kustomize_build(folder), "Queue"):
        assert queue["spec"]["deletionPolicy"] == "retain", queue["metadata"]["name"]


@pytest.mark.parametrize("folder", [*OVERLAYS, CLUSTER_RABBITMQ], ids=record_key)
def test_every_namespace_used_is_declared(folder: Path) -> None:
    documents = kustomize_build(folder)
    declared = set(by_name(documents, "Namespace"))
    used = {d["metadata"]["namespace"] for d in documents if "namespace" in d["metadata"]}
    assert used
    assert used <= declared
    assert not any("namespace" in d["metadata"] for d in kustomize_build(BASE))


def test_nothing_rendered_replaces_a_cluster_object() -> None:
    """Knative's and other cluster-wide objects are patched (patch.sh), never applied whole."""
    for folder in KUSTOMIZATIONS:
        for document in kustomize_build(folder):
            assert document["metadata"].get("namespace") not in (
                "knative-serving",
                "knative-eventing",
            ), folder
            if document["kind"] == "ConfigMap":
                assert document["metadata"]["name"] == "geozarr-settings", folder
            assert document["kind"] != "Deployment", folder
    assert not (CLUSTER / "kustomization.yaml").exists(), "`kubectl apply -k knative/cluster`"


# --- services and triggers ----------------------------------------------------------------


@deployments
def test_services_scale_to_zero_with_kpa(folder: Path) -> None:
    documents = kustomize_build(folder)
    assert not list(of_kind(documents, "PersistentVolumeClaim"))
    for name in [*STAGE_SERVICES.values(), FAILURES]:
        annotations, spec = template(service_for(documents, name))
        assert annotations["autoscaling.knative.dev/min-scale"] == "0", name
        assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
        assert int(annotations["autoscaling.knative.dev/max-scale"]) > 1, name
        assert container(service_for(documents, name))["securityContext"]["runAsNonRoot"]
        assert "persistentVolumeClaim" not in json.dumps(spec.get("volumes", []))
    resources = container(service_for(documents, "geozarr-convert"))["resources"]
    assert rules.memory_bytes(resources["requests"]["memory"]) >= 3 * 2**30
    assert rules.memory_bytes(resources["limits"]["memory"]) <= 6 * 2**30
    for stage in (Stage.REGISTER, Stage.AUGMENT):
        small = container(service_for(documents, STAGE_SERVICES[stage]))["resources"]
        assert rules.memory_bytes(small["limits"]["memory"]) <= 2**30


@deployments
def test_every_trigger_references_existing_objects(folder: Path) -> None:
    documents = kustomize_build(folder)
    services = by_name(documents, "Service")
    brokers = by_name(documents, "Broker")
    configs = by_name(documents, "RabbitmqBrokerConfig")
    for broker in brokers.values():
        assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == (
            "RabbitMQBroker"
        )
        assert broker["spec"]["config"]["name"] in configs
    triggers = list(of_kind(documents, "Trigger"))
    assert triggers
    for trigger in triggers:
        name, spec = trigger["metadata"]["name"], trigger["spec"]
        assert spec["broker"] in brokers, name
        ref = spec["subscriber"]["ref"]
        assert (ref["apiVersion"], ref["kind"]) == ("serving.knative.dev/v1", "Service"), name
        assert subscriber(trigger) in services, name
        assert dead_letter_sink(trigger) == FAILURES, name
        assert set(spec["filter"]["attributes"]) == {"type"}, f"{name}: filter on type only"


@deployments
def test_failure_events_go_to_the_recorder(folder: Path) -> None:
    documents = kustomize_build(folder)
    failed = [
        t
        for t in of_kind(documents, "Trigger")
        if t["spec"]["filter"]["attributes"]["type"] == EventType.FAILED
    ]
    assert [subscriber(t) for t in failed] == [FAILURES]
    assert [
        t["metadata"]["name"] for t in of_kind(documents, "Trigger") if subscriber(t) == FAILURES
    ] == ["geozarr-failures"]


@deployments
def test_each_reply_type_has_exactly_one_trigger_and_the_chain_completes(folder: Path) -> None:
    documents = kustomize_build(folder)
    stage_of_service = {name: stage for stage, name in STAGE_SERVICES.items()}
    routes: dict[str, list[Stage]] = {}
    for trigger in of_kind(documents, "Trigger"):
        if subscriber(trigger) == FAILURES:
            continue
        event_type = trigger["spec"]["filter"]["attributes"]["type"]
        stage = stage_of_service[subscriber(trigger)]
        assert EventType(event_type) in stage.accepts, f"{stage} cannot take {event_type}"
        assert stage.replies_with != event_type, f"{stage} would receive its own reply"
        routes.setdefault(event_type, []).append(stage)
    for stage in Stage:
        expected = 0 if stage.replies_with == TERMINAL else 1
        assert len(routes.get(stage.replies_with, [])) == expected, stage
    for entry in ENTRY_TYPES:
        assert len(routes.get(entry, [])) == 1, entry
        seen: set[str] = set()
        queue: deque[str] = deque([entry])
        while queue:
            event_type = queue.popleft()
            if event_type not in seen:
                seen.add(event_type)
                queue.extend(stage.replies_with for stage in routes.get(event_type, []))
        assert TERMINAL in seen, f"the chain from {entry} stops at {sorted(seen)}"


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list | tuple):
        for value in node:
            found.extend(_walk(value))
    return found


@deployments
def test_secrets_are_referenced_never_inlined(folder: Path) -> None:
    documents = kustomize_build(folder)
    assert not list(of_kind(documents, "Secret"))
    sensitive = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")
    for config_map in of_kind(documents, "ConfigMap"):
        assert not [k for k in config_map["data"] if any(s in k.upper() for s in sensitive)]
    references: set[str] = set()
    for node in _walk(documents):
        name = str(node.get("name", "")).upper()
        if "value" in node and any(s in name for s in sensitive):
            raise AssertionError(f"{node['name']} is inlined")
        if "secretKeyRef" in node:
            references.add(node["secretKeyRef"]["name"])
    assert references <= SECRET_NAMES
    assert {"geozarr-s3", "geozarr-stac-api"} <= references


@deployments
def test_settings_configmap_is_valid_settings(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = kustomize_build(folder)
    data = by_name(documents, "ConfigMap")["geozarr-settings"]["data"]
    fields = {f"GEOZARR_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in data if k.startswith("GEOZARR_")} - fields
    assert not unknown, f"not Settings fields: {unknown}"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.output_root == data["GEOZARR_OUTPUT_ROOT"]
    assert settings.failures_root == f"{data['GEOZARR_OUTPUT_ROOT']}/_failures"
    env_names = {n["name"] for n in _walk(list(of_kind(documents, "Service"))) if "valueFrom" in n}
    assert not {n for n in env_names if n.startswith("GEOZARR_")} - fields
    for service in of_kind(documents, "Service"):
        envs = container(service)["envFrom"]
        assert {"configMapRef": {"name": "geozarr-settings"}} in envs, service["metadata"]


@deployments
def test_failure_recorder_writes_to_object_storage(folder: Path) -> None:
    recorder = service_for(kustomize_build(folder), FAILURES)
    main = container(recorder)
    assert {e["name"] for e in main["env"]} == {
        "GEOZARR_S3_ACCESS_KEY_ID",
        "GEOZARR_S3_SECRET_ACCESS_KEY",
    }
    assert main["image"].split("/")[-1].startswith("geozarr-failures:")
    assert main["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert [v["name"] for v in template(recorder)[1]["volumes"]] == ["tmp"]


# --- immutable fields ---------------------------------------------------------------------


@deployments
def test_immutable_fields_match_the_deployed_record(folder: Path) -> None:
    current = immutable_fields(kustomize_build(folder))
    assert changed(current, recorded()[record_key(folder)]) == [], (
        "these fields cannot be changed in place: delete and recreate the objects "
        "(docs/deploy.md, 'Changing what cannot be changed'), then update "
        "tests/knative/immutable-fields.json"
    )


def test_immutable_record_catches_a_changed_filter_and_queue_arguments() -> None:
    documents = rendered()
    trigger_for(documents, "geozarr-register")["spec"]["filter"]["attributes"]["type"] = "x"
    by_name(documents, "Queue")["geozarr-items"]["spec"]["arguments"]["x-overflow"] = "drop-head"
    trigger_for(documents, "geozarr-register")["spec"]["delivery"]["retry"] = 9  # mutable
    problems = changed(immutable_fields(documents), recorded()["base"])
    assert [p.split(":")[0] for p in problems] == [
        "Queue/geozarr-items",
        "Trigger/geozarr-register",
    ]


# --- cluster-wide settings: merge patches -------------------------------------------------


def test_patch_script_merges_every_patch_file(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "kubectl"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    subprocess.run(
        ["sh", str(PATCH_SCRIPT), "--dry-run=server"],
        env={**os.environ, "KUBECTL": str(fake)},
        check=True,
        timeout=30,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(calls) == sorted(
        [
            "-n",
            p.namespace,
            "patch",
            p.resource,
            p.name,
            "--type",
            "merge",
            "--patch-file",
            str(p.path),
            "--dry-run=server",
        ]
        for p in cluster_patches()
    )


def installed_configmap(name: str, namespace: str) -> Document:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"_example": "kept", "set-by-an-admin": "kept"},
    }


def installed_deployment(name: str, namespace: str) -> Document:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 600,
                    "containers": [{"name": name, "image": "kept"}],
                },
            },
        },
    }


# Objects as Knative installs them, with keys the patches must keep.
INSTALLED: dict[str, Callable[[str, str], Document]] = {
    "configmap": installed_configmap,
    "deployment": installed_deployment,
}


def test_merge_patches_keep_what_is_installed(tmp_path: Path) -> None:
    """The real `kubectl patch --type merge` (offline, --local) on objects as installed."""
    for patch in cluster_patches():
        installed = INSTALLED[patch.resource](patch.name, patch.namespace)
        source = tmp_path / f"{patch.namespace}.{patch.path.name}"
        source.write_text(yaml.safe_dump(installed))
        result = subprocess.run(
            [
                str(kubectl()),
                "patch",
                "--local",
                "-f",
                str(source),
                "--type",
                "merge",
                "--patch-file",
                str(patch.path),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env={**os.environ, "KUBECONFIG": str(tmp_path / "none")},
        )
        patched = json.loads(result.stdout)
        if patch.resource == "configmap":
            assert patched["data"] == {**installed["data"], **patch.body["data"]}
        else:
            pod = patched["spec"]["template"]["spec"]
            assert pod["containers"] == installed["spec"]["template"]["spec"]["containers"]
            assert (
                pod["terminationGracePeriodSeconds"]
                == (patch.body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
            )


# --- the deployment guide -----------------------------------------------------------------


def test_guide_states_the_consumer_timeout_and_its_arithmetic(cluster: ClusterSettings) -> None:
    text = guide()
    assert f"consumer_timeout = {int(cluster.consumer_timeout * 1000)}" in text
    assert "ceil(100 / 2) * (3 * 1800 s + 20 s + 40 s) = 50 * 5460 s = 273000 s" in text


def test_guide_names_the_prerequisites() -> None:
    text = guide()
    assert "Kubernetes 1.30 or later" in text
    assert "1.28" not in text
    assert "set_user_tags" in text
    assert "policymaker" in text
    assert "URL-safe" in text


def guide_section(title: str) -> str:
    """The text of one `## title` section of the guide."""
    return guide().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_guide_describes_the_failure_recorder() -> None:
    text = guide()
    for needed in ("geozarr-failures", "GEOZARR_FAILURES_ROOT", "geozarr-pipeline failures list"):
        assert needed in text, needed
    upgrade = guide_section(UPGRADE_SECTION)
    assert "geozarr-dead-letters" in upgrade
    assert "dead-letters" not in text.replace(upgrade, "")


def test_guide_documents_the_cluster_patch_procedure() -> None:
    text = guide()
    assert "knative/cluster/patch.sh" in text
    assert "--type merge" in text
    assert "kubectl apply -k knative/cluster\n" not in text
    for patch in cluster_patches():
        assert str(patch.path.relative_to(KNATIVE.parent)) in text, patch.path


def test_guide_documents_delete_and_recreate() -> None:
    section = guide_section("Changing what cannot be changed")
    for kind in ("Broker", "RabbitmqBrokerConfig", "Trigger", "RabbitmqSource", "Queue"):
        assert kind in section, kind
    assert re.search(r"kubectl -n \S+ delete (trigger|rabbitmqsource|broker) ", section)
    assert "immutable-fields.json" in section


def test_guide_says_what_the_local_twin_cannot_model() -> None:
    section = guide_section("What the local twin cannot model")
    assert "prefetch" in section
    assert "consumer_timeout" in section
    assert "tests/knative" in section


def test_guide_names_every_manifest_file() -> None:
    text = guide()
    for path in sorted({p for f in KUSTOMIZATIONS for p in kustomization_files(f)}):
        assert str(path.relative_to(KNATIVE.parent)) in text, path
