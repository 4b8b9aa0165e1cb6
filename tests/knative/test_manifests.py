"""Every manifest under knative/ is schema-valid and the deployment is consistent."""

from __future__ import annotations

import copy
import re
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import yaml

from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import EventType, Stage
from geozarr_pipeline.local.routing import (
    DeliverySpec,
    load_routes,
    parse_duration,
    route_from_trigger,
)
from tests.knative.manifests import (
    BASE,
    CLUSTER,
    KNATIVE,
    OVERLAYS,
    by_name,
    kubectl,
    kustomization_files,
    kustomize_build,
    load_documents,
    of_kind,
    validate_with_models,
    validation_errors,
)

DEPLOYMENTS = [BASE, *OVERLAYS]
DEPLOYMENT_IDS = [str(p.relative_to(KNATIVE)) for p in DEPLOYMENTS]
STAGE_SERVICES = {stage: f"geozarr-{stage.value}" for stage in Stage}
DEAD_LETTER_SERVICE = "geozarr-dead-letters"
TERMINAL = EventType.AUGMENT_DONE
ENTRY_TYPES = (EventType.CONVERT_REQUESTED, EventType.RABBITMQ_MESSAGE)
PARALLELISM = "rabbitmq.eventing.knative.dev/parallelism"
SECRET_NAMES = {"geozarr-s3", "geozarr-stac-api", "geozarr-rabbitmq"}


def all_manifest_files() -> list[Path]:
    return sorted(p for p in KNATIVE.rglob("*.yaml") if p.name != "kustomization.yaml")


def service_for(documents: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    services = by_name(documents, "Service")
    assert name in services, f"no Knative Service {name}"
    return services[name]


def template(service: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    tpl = service["spec"]["template"]
    return tpl.get("metadata", {}).get("annotations", {}), tpl["spec"]


def memory_gib(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    value = float(match.group(1))
    return value if match.group(2) == "Gi" else value / 1024


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def cluster_documents() -> list[dict[str, Any]]:
    return load_documents(kustomization_files(CLUSTER))


def consumer_timeout_seconds() -> float:
    clusters = list(of_kind(cluster_documents(), "RabbitmqCluster"))
    assert len(clusters) == 1
    config = clusters[0]["spec"]["rabbitmq"]["additionalConfig"]
    match = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)\s*$", config, re.MULTILINE)
    assert match, "consumer_timeout is not set in the RabbitmqCluster's additionalConfig"
    return int(match.group(1)) / 1000


def max_revision_timeout() -> int:
    maps = [
        d
        for d in of_kind(cluster_documents(), "ConfigMap")
        if (d["metadata"]["namespace"], d["metadata"]["name"])
        == ("knative-serving", "config-defaults")
    ]
    assert len(maps) == 1
    return int(maps[0]["data"]["max-revision-timeout-seconds"])


def worst_case_seconds(delivery: DeliverySpec) -> float:
    """How long the dispatcher may hold one message: every attempt times out, plus backoffs."""
    assert delivery.timeout is not None
    attempts = delivery.retry + 1
    return attempts * delivery.timeout + sum(
        delivery.backoff(n) for n in range(1, delivery.retry + 1)
    )


# --- schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", all_manifest_files(), ids=lambda p: str(p.relative_to(KNATIVE)))
def test_every_manifest_file_is_schema_valid(path: Path) -> None:
    documents = load_documents([path])
    assert documents, f"{path} has no documents"
    for document in documents:
        assert validation_errors(document) == [], f"{path}: {document['kind']}"
        validate_with_models(document)


@pytest.mark.parametrize("folder", [*DEPLOYMENTS, CLUSTER], ids=[*DEPLOYMENT_IDS, "cluster"])
def test_built_kustomization_is_schema_valid(folder: Path) -> None:
    documents = kustomize_build(folder)
    assert documents
    for document in documents:
        assert validation_errors(document) == [], document["metadata"]["name"]


def test_kustomization_lists_every_base_file() -> None:
    listed = {p.name for p in kustomization_files(BASE)}
    present = {p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present


@pytest.mark.skipif(kubectl() is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_build_matches_the_listed_files() -> None:
    built = {(d["kind"], d["metadata"]["name"]) for d in kustomize_build(BASE)}
    listed = {(d["kind"], d["metadata"]["name"]) for d in load_documents(kustomization_files(BASE))}
    assert built == listed


def test_schemas_reject_a_misspelt_field() -> None:
    documents = kustomize_build(BASE)
    service = copy.deepcopy(service_for(documents, "geozarr-convert"))
    service["spec"]["template"]["spec"]["containerConcurency"] = 1
    assert any("containerConcurency" in e for e in validation_errors(service))
    trigger = copy.deepcopy(next(of_kind(documents, "Trigger")))
    trigger["spec"]["delivery"]["retries"] = 3
    assert validation_errors(trigger)
    source = copy.deepcopy(next(of_kind(documents, "RabbitmqSource")))
    del source["spec"]["rabbitmqResourcesConfig"]["queueName"]
    assert validation_errors(source)
    binding = copy.deepcopy(next(of_kind(documents, "Binding")))
    binding["spec"]["rabbitmqClusterReference"]["name"] = "both-set"
    assert validation_errors(binding)


def test_local_router_reads_the_same_triggers() -> None:
    routes = load_routes(BASE, broker="geozarr")
    triggers = by_name(kustomize_build(BASE), "Trigger")
    assert {r.name for r in routes} == set(triggers)


# --- consistency ------------------------------------------------------------------------


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_stage_services_scale_to_zero_with_kpa(folder: Path) -> None:
    documents = kustomize_build(folder)
    for name in [*STAGE_SERVICES.values(), DEAD_LETTER_SERVICE]:
        annotations, spec = template(service_for(documents, name))
        assert annotations["autoscaling.knative.dev/min-scale"] == "0", name
        assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
        assert int(annotations["autoscaling.knative.dev/max-scale"]) >= 1
        (container,) = spec["containers"]
        assert container["securityContext"]["runAsNonRoot"] is True
    _, convert = template(service_for(documents, "geozarr-convert"))
    assert convert["containerConcurrency"] == 1
    resources = convert["containers"][0]["resources"]
    assert cpu_cores(resources["requests"]["cpu"]) >= 2
    assert 3 <= memory_gib(resources["requests"]["memory"]) <= 6
    assert 3 <= memory_gib(resources["limits"]["memory"]) <= 6
    for stage in (Stage.REGISTER, Stage.AUGMENT):
        _, small = template(service_for(documents, STAGE_SERVICES[stage]))
        assert memory_gib(small["containers"][0]["resources"]["limits"]["memory"]) <= 1


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_every_trigger_references_existing_objects(folder: Path) -> None:
    documents = kustomize_build(folder)
    services = by_name(documents, "Service")
    brokers = by_name(documents, "Broker")
    configs = by_name(documents, "RabbitmqBrokerConfig")
    for broker in brokers.values():
        assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == (
            "RabbitMQBroker"
        )
        assert broker["spec"]["config"]["kind"] == "RabbitmqBrokerConfig"
        assert broker["spec"]["config"]["name"] in configs
    triggers = list(of_kind(documents, "Trigger"))
    assert triggers
    for trigger in triggers:
        name = trigger["metadata"]["name"]
        spec = trigger["spec"]
        assert spec["broker"] in brokers, name
        ref = spec["subscriber"]["ref"]
        assert (ref["apiVersion"], ref["kind"]) == ("serving.knative.dev/v1", "Service"), name
        assert ref["name"] in services, f"{name}: subscriber {ref['name']} does not exist"
        sink = spec["delivery"]["deadLetterSink"]["ref"]
        assert sink["name"] == DEAD_LETTER_SERVICE, name
        assert sink["name"] in services, name
        assert set(spec["filter"]["attributes"]) == {"type"}, f"{name}: filter on type only"


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_each_reply_type_has_exactly_one_trigger_and_the_chain_completes(folder: Path) -> None:
    documents = kustomize_build(folder)
    stage_of_service = {name: stage for stage, name in STAGE_SERVICES.items()}
    routes: dict[str, list[Stage]] = {}
    for trigger in of_kind(documents, "Trigger"):
        event_type = trigger["spec"]["filter"]["attributes"]["type"]
        stage = stage_of_service[trigger["spec"]["subscriber"]["ref"]["name"]]
        assert EventType(event_type) in stage.accepts, f"{stage} cannot take {event_type}"
        assert stage.replies_with != event_type, f"{stage} would receive its own reply"
        routes.setdefault(event_type, []).append(stage)
    for stage in Stage:
        reply = stage.replies_with
        expected = 0 if reply == TERMINAL else 1
        assert len(routes.get(reply, [])) == expected, f"{reply}: {routes.get(reply)}"
    for entry in ENTRY_TYPES:
        assert len(routes.get(entry, [])) == 1, entry
        seen: set[str] = set()
        queue: deque[str] = deque([entry])
        while queue:
            event_type = queue.popleft()
            if event_type in seen:
                continue
            seen.add(event_type)
            queue.extend(stage.replies_with for stage in routes.get(event_type, []))
        assert TERMINAL in seen, f"the chain from {entry} stops at {sorted(seen)}"


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_delivery_timeouts_fit_the_service_timeouts(folder: Path) -> None:
    documents = kustomize_build(folder)
    limit = max_revision_timeout()
    for service in of_kind(documents, "Service"):
        _, spec = template(service)
        assert spec["timeoutSeconds"] <= limit, service["metadata"]["name"]
        assert spec.get("responseStartTimeoutSeconds", 0) <= spec["timeoutSeconds"]
    for trigger in of_kind(documents, "Trigger"):
        delivery = route_from_trigger(Path("built"), trigger).delivery
        assert delivery.timeout is not None, trigger["metadata"]["name"]
        _, spec = template(service_for(documents, trigger["spec"]["subscriber"]["ref"]["name"]))
        response_start = spec.get("responseStartTimeoutSeconds", spec["timeoutSeconds"])
        assert delivery.timeout <= min(spec["timeoutSeconds"], response_start), (
            f"{trigger['metadata']['name']}: delivery.timeout {delivery.timeout}s exceeds the "
            f"Service's timeouts"
        )
    _, convert = template(service_for(documents, "geozarr-convert"))
    # A full-tile conversion takes about 40 s locally and minutes against object storage.
    assert convert["timeoutSeconds"] >= 900


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_trigger_parallelism_fits_the_autoscaling_limits(folder: Path) -> None:
    documents = kustomize_build(folder)
    in_flight: dict[str, int] = {}
    for trigger in of_kind(documents, "Trigger"):
        target = trigger["spec"]["subscriber"]["ref"]["name"]
        parallelism = int(trigger["metadata"].get("annotations", {}).get(PARALLELISM, "1"))
        in_flight[target] = in_flight.get(target, 0) + parallelism
    for name, parallelism in in_flight.items():
        annotations, spec = template(service_for(documents, name))
        concurrency = spec.get("containerConcurrency", 0)
        if concurrency == 0:
            continue
        capacity = int(annotations["autoscaling.knative.dev/max-scale"]) * concurrency
        assert parallelism <= capacity, (
            f"{name}: {parallelism} concurrent deliveries but only {capacity} slots"
        )


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_consumer_timeout_covers_the_worst_delivery(folder: Path) -> None:
    documents = kustomize_build(folder)
    limit = consumer_timeout_seconds()
    for trigger in of_kind(documents, "Trigger"):
        worst = worst_case_seconds(route_from_trigger(Path("built"), trigger).delivery)
        assert worst < limit, (
            f"{trigger['metadata']['name']}: one message may stay unacknowledged {worst}s, "
            f"RabbitMQ's consumer_timeout is {limit}s"
        )


def test_worst_case_formula() -> None:
    delivery = DeliverySpec(retry=2, backoff_delay=10, timeout=parse_duration("PT30M"))
    assert worst_case_seconds(delivery) == 3 * 1800 + 20 + 40


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_rabbitmq_source_reads_the_geozarr_exchange_into_the_broker(folder: Path) -> None:
    documents = kustomize_build(folder)
    (source,) = of_kind(documents, "RabbitmqSource")
    config = source["spec"]["rabbitmqResourcesConfig"]
    assert config["predeclared"] is True
    assert config["exchangeName"] == "geozarr"
    queues = {q["spec"]["name"]: q for q in of_kind(documents, "Queue")}
    assert config["queueName"] in queues
    bindings = [
        b for b in of_kind(documents, "Binding") if b["spec"]["destination"] == config["queueName"]
    ]
    assert len(bindings) == 1
    assert bindings[0]["spec"]["source"] == "geozarr"
    assert bindings[0]["spec"]["destinationType"] == "queue"
    assert bindings[0]["spec"]["routingKey"] == "eopf.items.*"
    sink = source["spec"]["sink"]["ref"]
    assert sink["kind"] == "Broker"
    assert sink["name"] in by_name(documents, "Broker")
    secrets = {
        d["spec"]["rabbitmqClusterReference"]["connectionSecret"]["name"]
        for d in documents
        if "rabbitmqClusterReference" in d.get("spec", {})
    }
    assert secrets == {"geozarr-rabbitmq"}


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


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_secrets_are_referenced_never_inlined(folder: Path) -> None:
    documents = kustomize_build(folder)
    assert not list(of_kind(documents, "Secret"))
    sensitive = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", re.IGNORECASE)
    for config_map in of_kind(documents, "ConfigMap"):
        assert not [k for k in config_map["data"] if sensitive.search(k)]
    references: set[str] = set()
    for node in _walk(documents):
        if "name" in node and "value" in node and sensitive.search(str(node["name"])):
            raise AssertionError(f"{node['name']} is inlined")
        if "secretKeyRef" in node:
            references.add(node["secretKeyRef"]["name"])
    assert references <= SECRET_NAMES
    assert {"geozarr-s3", "geozarr-stac-api"} <= references


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_settings_configmap_is_valid_settings(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = kustomize_build(folder)
    config_map = by_name(documents, "ConfigMap")["geozarr-settings"]
    fields = {f"GEOZARR_{name.upper()}" for name in Settings.model_fields}
    data = config_map["data"]
    unknown = {k for k in data if k.startswith("GEOZARR_")} - fields
    assert not unknown, f"not Settings fields: {unknown}"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.output_root == data["GEOZARR_OUTPUT_ROOT"]
    env_names = {
        node["name"]
        for service in of_kind(documents, "Service")
        for node in _walk(service)
        if "valueFrom" in node
    }
    assert not {n for n in env_names if n.startswith("GEOZARR_")} - fields
    for service in of_kind(documents, "Service"):
        if service["metadata"]["name"] == DEAD_LETTER_SERVICE:
            continue
        container = template(service)[1]["containers"][0]
        assert {"configMapRef": {"name": "geozarr-settings"}} in container["envFrom"]


def test_cluster_settings_enable_what_the_services_use() -> None:
    features = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d["data"]
        for d in of_kind(cluster_documents(), "ConfigMap")
    }
    serving = features[("knative-serving", "config-features")]
    documents = kustomize_build(BASE)
    volumes = [v for s in of_kind(documents, "Service") for v in template(s)[1].get("volumes", [])]
    if any("emptyDir" in v for v in volumes):
        assert serving["kubernetes.podspec-emptydir"] == "enabled"
    if any("persistentVolumeClaim" in v for v in volumes):
        assert serving["kubernetes.podspec-persistent-volume-claim"] == "enabled"
        assert serving["kubernetes.podspec-persistent-volume-write"] == "enabled"
    eventing = features[("knative-eventing", "config-features")]
    assert eventing["delivery-timeout"] == "enabled"


def test_manifests_yaml_parses_as_plain_documents() -> None:
    for path in all_manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            assert document is None or isinstance(document, dict), path


def test_deployment_guide_states_the_configured_consumer_timeout() -> None:
    guide = (KNATIVE.parent / "docs" / "deploy.md").read_text()
    configured = int(consumer_timeout_seconds() * 1000)
    assert f"consumer_timeout = {configured}" in guide
    convert = route_from_trigger(
        Path("built"), by_name(kustomize_build(BASE), "Trigger")["geozarr-convert"]
    ).delivery
    assert f"= {round(worst_case_seconds(convert) / 60)} min" in guide


@pytest.mark.parametrize("folder", DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_server_threads_match_container_concurrency(folder: Path) -> None:
    """functions-framework sizes gunicorn's threads from THREADS (else 4 x the node's CPUs)."""
    for name in STAGE_SERVICES.values():
        _, spec = template(service_for(kustomize_build(folder), name))
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert int(env["THREADS"]) >= spec["containerConcurrency"] >= 1, name
