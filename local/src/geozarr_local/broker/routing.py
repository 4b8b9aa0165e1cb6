"""Routes of the local broker, read from the same Knative Trigger manifests the cluster uses.

Only what eventing-rabbitmq supports is accepted: exact-match `spec.filter.attributes`,
a subscriber `ref` (a Service name, mapped to a local URL) or an absolute `uri`, and
`spec.delivery` with retry, backoffPolicy, backoffDelay, timeout and deadLetterSink.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlparse

from geozarr_local.broker.dispatch import backoff_seconds

TRIGGER_API_GROUP = "eventing.knative.dev"
PARALLELISM_ANNOTATION = "rabbitmq.eventing.knative.dev/parallelism"
MANIFEST_SUFFIXES = (".yaml", ".yml")

BackoffPolicy = Literal["linear", "exponential"]

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+(?:[.,]\d+)?)W)?(?:(?P<days>\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?!$)(?:(?P<hours>\d+(?:[.,]\d+)?)H)?(?:(?P<minutes>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?$"
)
_UNIT_SECONDS = {
    "weeks": 604800.0,
    "days": 86400.0,
    "hours": 3600.0,
    "minutes": 60.0,
    "seconds": 1.0,
}


class ManifestError(ValueError):
    """A Trigger manifest the local broker cannot route by (names the file and the problem)."""


def parse_duration(text: str) -> float:
    """An ISO-8601 duration (`PT2S`, `PT1M30S`, `P1DT2H`, `PT0.05S`) in seconds.

    Years and months are refused: their length is ambiguous, and Knative durations never
    need them.
    """
    if not isinstance(text, str):
        raise ValueError(f"duration must be an ISO-8601 string such as 'PT2S', got {text!r}")
    match = _DURATION.fullmatch(text.strip().upper())
    if match is None:
        raise ValueError(
            f"{text!r} is not an ISO-8601 duration of weeks/days/hours/minutes/seconds "
            "(e.g. 'PT2S', 'PT30M', 'P1DT2H')"
        )
    return sum(
        float(value.replace(",", ".")) * _UNIT_SECONDS[unit]
        for unit, value in match.groupdict().items()
        if value is not None
    )


@dataclass(frozen=True)
class DeliverySpec:
    """`spec.delivery` of a Trigger, in seconds."""

    retry: int = 0
    backoff_policy: BackoffPolicy = "exponential"
    backoff_delay: float = 0.0
    timeout: float | None = None
    dead_letter_sink: str | None = None

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry number `retry_number` (1 for the first retry)."""
        return backoff_seconds(self.backoff_policy, self.backoff_delay, retry_number)


@dataclass(frozen=True)
class Route:
    """One Trigger: which events it takes and where it sends them."""

    name: str
    broker: str
    filters: Mapping[str, str]
    subscriber: str
    subscriber_uri: str | None = None
    delivery: DeliverySpec = field(default_factory=DeliverySpec)
    parallelism: int | None = None
    manifest: Path | None = None

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """Exact match on every filter attribute; a Trigger without filters takes everything."""
        return all(
            attributes.get(name) is not None and str(attributes.get(name)) == value
            for name, value in self.filters.items()
        )

    def target_url(self, subscribers: Mapping[str, str]) -> str | None:
        """The local URL of the subscriber, or None when no URL is known for it."""
        if self.subscriber_uri and urlparse(self.subscriber_uri).scheme:
            return self.subscriber_uri
        base = subscribers.get(self.subscriber)
        if base is None:
            return None
        if self.subscriber_uri:
            return urljoin(base.rstrip("/") + "/", self.subscriber_uri.lstrip("/"))
        return base


def iter_manifest_documents(manifests: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every YAML mapping document in a file or, recursively, under a folder."""
    if manifests.is_file():
        files = [manifests]
    elif manifests.is_dir():
        files = sorted(p for p in manifests.rglob("*") if p.suffix in MANIFEST_SUFFIXES)
    else:
        raise ManifestError(f"{manifests}: no such file or folder")
    import yaml  # on first use: the CLI imports this module only to list its commands

    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
        for document in documents:
            if isinstance(document, dict):
                yield path, document


def _is_trigger(document: Mapping[str, Any]) -> bool:
    api_version = str(document.get("apiVersion", ""))
    return document.get("kind") == "Trigger" and api_version.startswith(f"{TRIGGER_API_GROUP}/")


def _delivery(
    path: Path,
    name: str,
    spec: Mapping[str, Any] | None,
    kind: str = "Trigger",
    default_delay: float = 0.0,
) -> DeliverySpec:
    if not spec:
        return DeliverySpec(backoff_delay=default_delay)
    where = f"{path}: {kind} {name}: spec.delivery"
    retry = spec.get("retry", 0)
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise ManifestError(f"{where}.retry must be a non-negative integer, got {retry!r}")
    policy = str(spec.get("backoffPolicy", "exponential")).lower()
    if policy not in ("linear", "exponential"):
        raise ManifestError(f"{where}.backoffPolicy must be linear or exponential, got {policy!r}")
    try:
        delay = parse_duration(spec["backoffDelay"]) if "backoffDelay" in spec else default_delay
        timeout = parse_duration(spec["timeout"]) if "timeout" in spec else None
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from exc
    if timeout is not None and timeout <= 0:
        raise ManifestError(f"{where}.timeout must be positive")
    sink = spec.get("deadLetterSink") or {}
    sink_name = (sink.get("ref") or {}).get("name") or sink.get("uri")
    return DeliverySpec(
        retry=retry,
        backoff_policy="linear" if policy == "linear" else "exponential",
        backoff_delay=delay,
        timeout=timeout,
        dead_letter_sink=sink_name,
    )


def route_from_trigger(path: Path, document: Mapping[str, Any]) -> Route:
    """Build a Route from one Trigger document, refusing what the RabbitMQ broker refuses."""
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        raise ManifestError(f"{path}: a Trigger has no metadata.name")
    spec = document.get("spec") or {}
    where = f"{path}: Trigger {name}"
    if spec.get("filters"):
        raise ManifestError(
            f"{where}: spec.filters (CESQL/prefix filters) is not supported by the RabbitMQ "
            "broker; use exact-match spec.filter.attributes"
        )
    raw_filters = (spec.get("filter") or {}).get("attributes") or {}
    if not isinstance(raw_filters, dict):
        raise ManifestError(f"{where}: spec.filter.attributes must be a mapping")
    filters = {str(k): str(v) for k, v in raw_filters.items() if v not in (None, "")}
    subscriber = spec.get("subscriber") or {}
    ref = subscriber.get("ref") or {}
    uri = subscriber.get("uri")
    if not ref.get("name") and not uri:
        raise ManifestError(f"{where}: spec.subscriber needs a ref.name or a uri")
    annotations = metadata.get("annotations") or {}
    parallelism: int | None = None
    if PARALLELISM_ANNOTATION in annotations:
        try:
            parallelism = int(annotations[PARALLELISM_ANNOTATION])
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: {PARALLELISM_ANNOTATION} must be an integer") from exc
        if parallelism < 1:
            raise ManifestError(f"{where}: {PARALLELISM_ANNOTATION} must be at least 1")
    return Route(
        name=str(name),
        broker=str(spec.get("broker", "default")),
        filters=filters,
        subscriber=str(ref.get("name") or uri),
        subscriber_uri=str(uri) if uri else None,
        delivery=_delivery(path, str(name), spec.get("delivery")),
        parallelism=parallelism,
        manifest=path,
    )


def load_routes(manifests: Path, broker: str | None = None) -> list[Route]:
    """All Triggers under `manifests` (every YAML document), optionally of one broker only."""
    routes: list[Route] = []
    seen: dict[str, Path] = {}
    for path, document in iter_manifest_documents(manifests):
        if not _is_trigger(document):
            continue
        route = route_from_trigger(path, document)
        if broker is not None and route.broker != broker:
            continue
        if route.name in seen:
            raise ManifestError(
                f"{path}: Trigger {route.name} is also defined in {seen[route.name]}"
            )
        seen[route.name] = path
        routes.append(route)
    return routes


def matching_routes(routes: Sequence[Route], attributes: Mapping[str, Any]) -> list[Route]:
    return [route for route in routes if route.matches(attributes)]


def parse_subscriber_options(options: list[str]) -> dict[str, str]:
    """`NAME=URL` options (repeatable) into a mapping; names are Service names."""
    mapping: dict[str, str] = {}
    for option in options:
        name, sep, url = option.partition("=")
        if not sep or not name or not urlparse(url).scheme:
            raise ValueError(
                "--subscriber expects NAME=URL "
                f"(e.g. geozarr-convert=http://127.0.0.1:8081), got {option!r}"
            )
        mapping[name.strip()] = url.strip()
    return mapping


SOURCE_KIND = "RabbitmqSource"
# The adapter's HTTP_SENDER_BACKOFF_DELAY default (eventing-rabbitmq pkg/adapter/adapter.go).
SOURCE_DEFAULT_BACKOFF_SECONDS = 0.2


def load_source_delivery(manifests: Path, name: str | None = None) -> DeliverySpec:
    """`spec.delivery` of the RabbitmqSource (the one named `name`, or the only one)."""
    found = [
        (path, document)
        for path, document in iter_manifest_documents(manifests)
        if document.get("kind") == SOURCE_KIND
        and (name is None or (document.get("metadata") or {}).get("name") == name)
    ]
    if len(found) != 1:
        raise ManifestError(
            f"{manifests}: expected one {SOURCE_KIND}{f' named {name}' if name else ''}, "
            f"found {len(found)}"
        )
    path, document = found[0]
    source_name = str((document.get("metadata") or {}).get("name"))
    return _delivery(
        path,
        source_name,
        (document.get("spec") or {}).get("delivery"),
        kind=SOURCE_KIND,
        default_delay=SOURCE_DEFAULT_BACKOFF_SECONDS,
    )
