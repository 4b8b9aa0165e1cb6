"""Routes come from the Knative Trigger manifests: parsing, durations, backoff, the repo chain."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geozarr_local.broker.routing import (
    DeliverySpec,
    ManifestError,
    load_routes,
    matching_routes,
    parse_duration,
    parse_subscriber_options,
)
from geozarr_pipeline.events import EventType, Stage

REPO_MANIFESTS = Path(__file__).resolve().parents[2] / "knative" / "base"
STAGE_SERVICES = {f"geozarr-{stage.value}": stage for stage in Stage}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT2S", 2.0),
        ("PT0.05S", 0.05),
        ("PT1M30S", 90.0),
        ("PT30M", 1800.0),
        ("PT2H", 7200.0),
        ("P1DT2H", 93600.0),
        ("P1W", 604800.0),
        ("pt1,5s", 1.5),
    ],
)
def test_iso8601_durations_are_parsed(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2s", "PT", "P", "P1M", "P1Y", "PT-1S", "T2S", "PT2", "", "PTS"])
def test_invalid_or_ambiguous_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_duration(text)


def test_backoff_follows_the_policy() -> None:
    exponential = DeliverySpec(retry=3, backoff_policy="exponential", backoff_delay=0.5)
    linear = DeliverySpec(retry=3, backoff_policy="linear", backoff_delay=0.5)
    assert [exponential.backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert [linear.backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]


def test_repo_triggers_are_exact_type_filters_with_delivery() -> None:
    routes = {route.name: route for route in load_routes(REPO_MANIFESTS)}
    assert set(routes) >= {
        "geozarr-convert",
        "geozarr-convert-rabbitmq",
        "geozarr-register",
        "geozarr-augment",
        "geozarr-failures",
    }
    assert routes["geozarr-failures"].filters == {"type": EventType.FAILED.value}
    assert routes["geozarr-failures"].subscriber == "geozarr-failures"
    for route in routes.values():
        assert route.broker == "geozarr"
        assert set(route.filters) == {"type"}
        assert route.delivery.retry >= 1
        assert route.delivery.backoff_policy == "exponential"
        assert route.delivery.backoff_delay > 0
        assert route.delivery.timeout is not None
        assert route.delivery.dead_letter_sink == "geozarr-failures"
    for name in ("geozarr-convert", "geozarr-convert-rabbitmq"):
        assert routes[name].parallelism is not None
        timeout = routes[name].delivery.timeout
        assert timeout is not None
        assert timeout >= 600, "convert's delivery timeout must cover a long conversion"


def test_repo_triggers_chain_every_stage_to_augment_done() -> None:
    routes = load_routes(REPO_MANIFESTS)
    for start in (EventType.CONVERT_REQUESTED, EventType.RABBITMQ_MESSAGE):
        event_type = start.value
        visited: list[Stage] = []
        while True:
            matched = matching_routes(routes, {"type": event_type})
            if event_type == EventType.AUGMENT_DONE:
                assert matched == [], "nothing consumes augment.done"
                break
            assert len(matched) == 1, f"{event_type} must have exactly one Trigger"
            stage = STAGE_SERVICES[matched[0].subscriber]
            assert event_type in stage.accepts
            assert stage not in visited, "the chain must not loop"
            visited.append(stage)
            event_type = stage.replies_with.value
        assert visited == [Stage.CONVERT, Stage.REGISTER, Stage.AUGMENT]


def _trigger(name: str, event_type: str, subscriber: str, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {
            "broker": "geozarr",
            "filter": {"attributes": {"type": event_type}},
            "subscriber": {"ref": {"kind": "Service", "name": subscriber}},
            **spec,
        },
    }


def test_every_yaml_document_under_the_folder_is_read(tmp_path: Path) -> None:
    nested = tmp_path / "nested"
    nested.mkdir()
    (tmp_path / "a.yaml").write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
                _trigger("one", "t.one", "svc-one"),
            ]
        )
    )
    (nested / "b.yml").write_text(
        yaml.safe_dump_all([_trigger("two", "t.two", "svc-two"), None])
        + "---\n"
        + yaml.safe_dump(_trigger("other-broker", "t.two", "svc-x"))
    )
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\n")
    (tmp_path / "notes.txt").write_text(yaml.safe_dump(_trigger("ignored", "t", "s")))
    names = sorted(route.name for route in load_routes(tmp_path))
    assert names == ["one", "other-broker", "two"]
    assert [r.subscriber for r in matching_routes(load_routes(tmp_path), {"type": "t.two"})] == [
        "svc-two",
        "svc-x",
    ]


def test_broker_name_selects_its_triggers(tmp_path: Path) -> None:
    other = _trigger("elsewhere", "t.one", "svc")
    other["spec"]["broker"] = "default"  # type: ignore[index]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump_all([_trigger("mine", "t.one", "svc"), other]))
    assert [r.name for r in load_routes(tmp_path, broker="geozarr")] == ["mine"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"delivery": {"backoffDelay": "2s"}}, "ISO-8601"),
        ({"delivery": {"timeout": "soon"}}, "ISO-8601"),
        ({"delivery": {"retry": -1}}, "retry"),
        ({"delivery": {"backoffPolicy": "random"}}, "backoffPolicy"),
        ({"filters": [{"prefix": {"type": "eopf."}}]}, "exact-match"),
    ],
)
def test_manifests_the_rabbitmq_broker_would_refuse_are_refused(
    tmp_path: Path, spec: dict[str, object], problem: str
) -> None:
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(_trigger("bad", "t", "svc", **spec)))
    with pytest.raises(ManifestError, match=problem):
        load_routes(tmp_path)


def test_duplicate_trigger_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(_trigger("same", "t.a", "svc")))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_trigger("same", "t.b", "svc")))
    with pytest.raises(ManifestError, match="also defined"):
        load_routes(tmp_path)


def test_subscriber_options_map_service_names_to_urls() -> None:
    mapping = parse_subscriber_options(
        ["geozarr-convert=http://127.0.0.1:8081", "geozarr-register=http://127.0.0.1:8082/x"]
    )
    assert mapping == {
        "geozarr-convert": "http://127.0.0.1:8081",
        "geozarr-register": "http://127.0.0.1:8082/x",
    }
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_subscriber_options(["geozarr-convert"])
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_subscriber_options(["geozarr-convert=127.0.0.1:8081"])
