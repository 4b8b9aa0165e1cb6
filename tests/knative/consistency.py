"""The settings of a rendered deployment that must agree with each other and with the cluster.

Each check takes the rendered documents (and the cluster settings) and returns its problems
as readable lines, empty when consistent, so that a test can show both that the manifests
pass and that a broken copy is caught. The upstream behaviour each rule relies on is named
beside it (eventing-rabbitmq at commit bd1ee997d372a3aae8fdcca10fbceb61cd4e9e32).

The local broker cannot model prefetch and RabbitMQ's consumer_timeout (it has no AMQP
consumer between its journal and the functions): these checks are where they are covered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geozarr_local.broker.routing import DeliverySpec, parse_duration, route_from_trigger
from tests.knative.manifests import (
    CLUSTER_RABBITMQ,
    Document,
    by_name,
    cluster_patch,
    kustomize_build,
    of_kind,
)

Documents = Sequence[Document]

# Each dispatcher (Trigger and Trigger dead-letter queue) and the RabbitmqSource adapter set
# the channel's prefetch to 100: pkg/rabbit/connections_handler.go ChannelQoS,
# `channel.Qos(100, 0, false)` (cmd/dispatcher/main.go, pkg/adapter/adapter.go).
PREFETCH = 100
# Without the annotation the dispatcher runs one worker: pkg/reconciler/trigger/resources/
# dispatcher.go (PARALLELISM "1"); the webhook accepts 1..1000 (pkg/apis/eventing/v1alpha1/
# trigger_validation.go).
PARALLELISM_ANNOTATION = "rabbitmq.eventing.knative.dev/parallelism"
DEFAULT_PARALLELISM = 1
MAX_PARALLELISM = 1000
# The activator keeps accepting requests for up to 45 s after SIGTERM (knative.dev/networking
# DefaultDrainTimeout) and then drains them: its grace period must exceed the longest
# revision timeout by at least this much.
ACTIVATOR_DRAIN_SECONDS = 60
# The longest a conversion may take: the slowest measured full tile is ~150 s on 2 cores from
# local disk (DESIGN.md, spatial_chunk 256); against object storage, with the staged upload,
# allow 8x. Convert's delivery timeout must let one attempt finish.
WORST_CONVERSION_SECONDS = 1200
# The RabbitmqSource adapter's POST to the broker ingress has no configurable timeout
# (pkg/adapter/adapter.go postMessage); the ingress only publishes, so one attempt is bounded
# here by an assumption used in the consumer_timeout arithmetic of the source queue.
SOURCE_ATTEMPT_SECONDS = 60

CONVERT = "geozarr-convert"


@dataclass(frozen=True)
class ClusterSettings:
    """What the cluster-wide patches and the RabbitMQ cluster set."""

    max_revision_timeout: int
    activator_grace: int
    consumer_timeout: float  # seconds
    serving_features: Mapping[str, str]
    eventing_features: Mapping[str, str]


def consumer_timeout_from(config: str) -> float:
    """consumer_timeout (ms in rabbitmq.conf) in seconds."""
    match = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)\s*$", config, re.MULTILINE)
    assert match, "consumer_timeout is not set in the RabbitmqCluster's additionalConfig"
    return int(match.group(1)) / 1000


def _configmap_data(namespace: str, name: str) -> dict[str, str]:
    return dict(cluster_patch(namespace, "configmap", name).body["data"])


def cluster_settings() -> ClusterSettings:
    (rabbitmq,) = of_kind(kustomize_build(CLUSTER_RABBITMQ), "RabbitmqCluster")
    activator = cluster_patch("knative-serving", "deployment", "activator").body
    defaults = _configmap_data("knative-serving", "config-defaults")
    return ClusterSettings(
        max_revision_timeout=int(defaults["max-revision-timeout-seconds"]),
        activator_grace=int(activator["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
        consumer_timeout=consumer_timeout_from(rabbitmq["spec"]["rabbitmq"]["additionalConfig"]),
        serving_features=_configmap_data("knative-serving", "config-features"),
        eventing_features=_configmap_data("knative-eventing", "config-features"),
    )


# --- reading the documents ----------------------------------------------------------------


def template(service: Document) -> tuple[dict[str, str], dict[str, Any]]:
    """A Knative Service's revision template: (annotations, spec)."""
    tpl = service["spec"]["template"]
    return tpl.get("metadata", {}).get("annotations", {}), tpl["spec"]


def container(service: Document) -> dict[str, Any]:
    (only,) = template(service)[1]["containers"]
    return dict(only)


def env_values(service: Document) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container(service).get("env", [])}


def parallelism(trigger: Document) -> int:
    annotations = trigger["metadata"].get("annotations", {})
    return int(annotations.get(PARALLELISM_ANNOTATION, DEFAULT_PARALLELISM))


def delivery(trigger: Document) -> DeliverySpec:
    """spec.delivery as the local broker reads it (same parser, same backoff formula)."""
    return route_from_trigger(Path("rendered"), trigger).delivery


def source_delivery(source: Document) -> DeliverySpec:
    spec = source["spec"].get("delivery", {})
    return DeliverySpec(
        retry=int(spec.get("retry", 0)),
        backoff_policy="linear" if spec.get("backoffPolicy") == "linear" else "exponential",
        backoff_delay=parse_duration(spec.get("backoffDelay", "PT0.2S")),
        timeout=SOURCE_ATTEMPT_SECONDS,
    )


def subscriber(trigger: Document) -> str:
    return str(trigger["spec"]["subscriber"]["ref"]["name"])


def dead_letter_sink(trigger: Document) -> str | None:
    sink = trigger["spec"].get("delivery", {}).get("deadLetterSink", {})
    name = sink.get("ref", {}).get("name")
    return str(name) if name else None


def service_timeouts(service: Document) -> tuple[int, int]:
    """(timeoutSeconds, responseStartTimeoutSeconds), the latter defaulting to the former."""
    spec = template(service)[1]
    timeout = int(spec["timeoutSeconds"])
    return timeout, int(spec.get("responseStartTimeoutSeconds", timeout))


def memory_bytes(quantity: str | int) -> float:
    """A Kubernetes quantity (Ki/Mi/Gi/Ti, k/M/G/T or plain bytes) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|k)?", str(quantity))
    assert match, f"unexpected quantity {quantity!r}"
    unit = match.group(2) or ""
    powers = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    scale = binary.get(unit) or powers.get(unit, 1)
    return float(match.group(1)) * scale


# --- the arithmetic -----------------------------------------------------------------------


def worst_delivery_seconds(spec: DeliverySpec) -> float:
    """How long a dispatcher may hold one message: every attempt times out, plus the backoffs
    before each retry (the dispatcher acks only after the last attempt)."""
    assert spec.timeout is not None
    return (spec.retry + 1) * spec.timeout + sum(spec.backoff(n) for n in range(1, spec.retry + 1))


def worst_unacked_seconds(spec: DeliverySpec, workers: int) -> float:
    """How long the last of a full prefetch may stay unacknowledged: it waits for
    ceil(PREFETCH / workers) - 1 rounds of worst deliveries ahead of it, then has its own."""
    return math.ceil(PREFETCH / workers) * worst_delivery_seconds(spec)


def unacked_holders(documents: Documents) -> Iterator[tuple[str, DeliverySpec, int]]:
    """Every consumer that prefetches: (what, its delivery, its workers)."""
    for trigger in of_kind(documents, "Trigger"):
        name = trigger["metadata"]["name"]
        yield f"Trigger {name}", delivery(trigger), parallelism(trigger)
        if dead_letter_sink(trigger):
            # The dead-letter dispatcher uses the Trigger's delivery and parallelism too
            # (pkg/reconciler/trigger/trigger.go reconcileDispatcherDeployment(..., dlq=true)).
            yield f"Trigger {name} (dead letters)", delivery(trigger), parallelism(trigger)
    for source in of_kind(documents, "RabbitmqSource"):
        workers = source["spec"]["rabbitmqResourcesConfig"].get("parallelism", 1)
        yield f"RabbitmqSource {source['metadata']['name']}", source_delivery(source), workers


# --- checks -------------------------------------------------------------------------------


def consumer_timeout_problems(documents: Documents, cluster: ClusterSettings) -> list[str]:
    problems = []
    for what, spec, workers in unacked_holders(documents):
        worst = worst_unacked_seconds(spec, workers)
        if worst >= cluster.consumer_timeout:
            problems.append(
                f"{what}: the last of {PREFETCH} prefetched messages may stay unacknowledged "
                f"ceil({PREFETCH}/{workers}) * {worst_delivery_seconds(spec):.0f} s = "
                f"{worst:.0f} s, RabbitMQ's consumer_timeout is {cluster.consumer_timeout:.0f} s"
            )
    return problems


def timeout_problems(documents: Documents, cluster: ClusterSettings) -> list[str]:
    """delivery.timeout <= responseStart <= timeoutSeconds <= max-revision-timeout-seconds
    <= activator grace - drain, and convert's attempt fits the worst conversion."""
    problems = []
    services = by_name(documents, "Service")
    for name, service in services.items():
        timeout, response_start = service_timeouts(service)
        if not response_start <= timeout <= cluster.max_revision_timeout:
            problems.append(
                f"{name}: responseStartTimeoutSeconds {response_start} <= timeoutSeconds "
                f"{timeout} <= max-revision-timeout-seconds {cluster.max_revision_timeout} fails"
            )
    for trigger in of_kind(documents, "Trigger"):
        name, spec = trigger["metadata"]["name"], delivery(trigger)
        if spec.timeout is None:
            problems.append(f"Trigger {name}: no delivery.timeout (the dispatcher would wait)")
            continue
        # The subscriber only: a dead-letter sink with shorter timeouts answers 504 sooner,
        # which the dead-letter dispatcher retries.
        target = subscriber(trigger)
        if spec.timeout > min(service_timeouts(services[target])):
            problems.append(
                f"Trigger {name}: delivery.timeout {spec.timeout:.0f} s exceeds {target}'s "
                f"timeouts {service_timeouts(services[target])}"
            )
        if subscriber(trigger) == CONVERT and spec.timeout < WORST_CONVERSION_SECONDS:
            problems.append(
                f"Trigger {name}: delivery.timeout {spec.timeout:.0f} s is shorter than the worst "
                f"conversion ({WORST_CONVERSION_SECONDS} s): every long conversion would be "
                "started again while it runs"
            )
    needed = cluster.max_revision_timeout + ACTIVATOR_DRAIN_SECONDS
    if cluster.activator_grace < needed:
        problems.append(
            f"activator terminationGracePeriodSeconds {cluster.activator_grace} < "
            f"max-revision-timeout-seconds + {ACTIVATOR_DRAIN_SECONDS} = {needed}: an activator "
            "rollout would cut the longest requests"
        )
    return problems


def capacity_problems(documents: Documents) -> list[str]:
    """The deliveries a Service may get at once (its Triggers' and the dead-letter dispatchers'
    parallelism) fit within max-scale * containerConcurrency."""
    problems = []
    in_flight: dict[str, int] = {}
    for trigger in of_kind(documents, "Trigger"):
        workers = parallelism(trigger)
        if not DEFAULT_PARALLELISM <= workers <= MAX_PARALLELISM:
            problems.append(f"Trigger {trigger['metadata']['name']}: parallelism {workers}")
        for target in filter(None, (subscriber(trigger), dead_letter_sink(trigger))):
            in_flight[target] = in_flight.get(target, 0) + workers
    services = by_name(documents, "Service")
    for name, count in sorted(in_flight.items()):
        annotations, spec = template(services[name])
        concurrency = int(spec.get("containerConcurrency", 0))
        if concurrency == 0:
            continue
        capacity = int(annotations["autoscaling.knative.dev/max-scale"]) * concurrency
        if count > capacity:
            problems.append(f"{name}: {count} concurrent deliveries but only {capacity} slots")
    return problems


def one_request_per_pod_problems(documents: Documents) -> list[str]:
    """Convert: one conversion per pod (containerConcurrency 1, THREADS 1, target 1, 100 %
    utilization); the other functions-framework Services: THREADS = containerConcurrency."""
    problems = []
    for name, service in by_name(documents, "Service").items():
        annotations, spec = template(service)
        threads = env_values(service).get("THREADS")
        concurrency = int(spec.get("containerConcurrency", 0))
        if threads is not None and int(threads) != concurrency:
            problems.append(f"{name}: THREADS {threads} != containerConcurrency {concurrency}")
        if name == CONVERT:
            wanted = {
                "autoscaling.knative.dev/target": "1",
                "autoscaling.knative.dev/target-utilization-percentage": "100",
            }
            actual = {key: annotations.get(key) for key in wanted}
            if concurrency != 1 or threads != "1" or actual != wanted:
                problems.append(
                    f"{name}: containerConcurrency {concurrency}, THREADS {threads}, {actual}; "
                    f"one conversion per pod needs 1, 1, {wanted}"
                )
    return problems


def scratch_storage_problems(documents: Documents) -> list[str]:
    """Every emptyDir has a sizeLimit, and its container requests at least that much
    ephemeral storage (the kubelet evicts first the pods above their request) and limits it."""
    problems = []
    for name, service in by_name(documents, "Service").items():
        spec = template(service)[1]
        limits = [
            memory_bytes(v["emptyDir"]["sizeLimit"])
            for v in spec.get("volumes", [])
            if "emptyDir" in v and "sizeLimit" in v["emptyDir"]
        ]
        if len(limits) != sum("emptyDir" in v for v in spec.get("volumes", [])):
            problems.append(f"{name}: an emptyDir without sizeLimit")
        resources = container(service).get("resources", {})
        request = resources.get("requests", {}).get("ephemeral-storage")
        limit = resources.get("limits", {}).get("ephemeral-storage")
        if limits and (request is None or limit is None):
            problems.append(f"{name}: scratch volumes but no ephemeral-storage request and limit")
        elif limits and not sum(limits) <= memory_bytes(request) <= memory_bytes(limit):
            problems.append(
                f"{name}: sizeLimit {sum(limits):.0f} <= ephemeral-storage request {request} "
                f"<= limit {limit} fails"
            )
    return problems


def feature_problems(documents: Documents, cluster: ClusterSettings) -> list[str]:
    """The Knative feature flags that the Services' pod specs and the Triggers need are on."""
    needed_serving: set[str] = set()
    for service in of_kind(documents, "Service"):
        spec = template(service)[1]
        volumes = spec.get("volumes", [])
        if any("emptyDir" in v for v in volumes):
            needed_serving.add("kubernetes.podspec-emptydir")
        if any("persistentVolumeClaim" in v for v in volumes):
            needed_serving |= {
                "kubernetes.podspec-persistent-volume-claim",
                "kubernetes.podspec-persistent-volume-write",
            }
        if "securityContext" in spec:
            needed_serving.add("kubernetes.podspec-securitycontext")
    problems = [
        f"knative-serving config-features: {flag} is not enabled"
        for flag in sorted(needed_serving)
        if cluster.serving_features.get(flag) != "enabled"
    ]
    uses_timeout = any(delivery(t).timeout is not None for t in of_kind(documents, "Trigger"))
    if uses_timeout and cluster.eventing_features.get("delivery-timeout") != "enabled":
        problems.append("knative-eventing config-features: delivery-timeout is not enabled")
    return problems
