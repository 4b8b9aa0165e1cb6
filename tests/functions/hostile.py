"""Hostile events and the guards that watch what a stage does with them.

Each case is an event as an attacker who can post to the broker would send it, with what the
stage must answer. The guards record every connection attempt and name lookup that leaves
the test, every file written under the stage's roots, and every log line of the delivery.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from geozarr_pipeline.events import (
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_URL_CHARS,
    EventType,
    Stage,
)

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "sentinel-2-l2a"
ITEM = "S2A_MSIL2A_20251008T100041_N0511_R122_T32TQM_20251008T122613"
ALLOWED_SOURCE = f"https://stac.core.eopf.eodc.eu/collections/{COLLECTION}/items/{ITEM}"
INPUT_TYPES = {
    Stage.CONVERT: EventType.CONVERT_REQUESTED,
    Stage.REGISTER: EventType.CONVERT_DONE,
    Stage.AUGMENT: EventType.REGISTER_DONE,
}


def production_env(root: Path) -> dict[str, str]:
    """The GEOZARR_* settings of knative/base/config.yaml, with storage in `root`.

    Only the output, failure and status roots change (to folders), so a stage that reached
    for its object storage would not leave the machine unseen; the URL policy (https and s3
    only, the allow-listed hosts, no private hosts), the STAC API and the raster API are
    the production ones, which the socket guard would see any attempt to reach.
    """
    config = yaml.safe_load((REPO / "knative/base/config.yaml").read_text())
    env = {k: str(v) for k, v in config["data"].items() if k.startswith("GEOZARR_")}
    env.update(
        GEOZARR_OUTPUT_ROOT=str(root / "geozarr"),
        GEOZARR_FAILURES_ROOT=str(root / "geozarr" / "_failures"),
        GEOZARR_WORK_DIR=str(root / "work"),
    )
    env.pop("GEOZARR_S3_ENDPOINT_URL", None)
    return env


def local_env(root: Path) -> dict[str, str]:
    """Local mode: file:// and plain http allowed, private hosts allowed, a static catalog."""
    return {
        "GEOZARR_OUTPUT_ROOT": str(root / "geozarr"),
        "GEOZARR_WORK_DIR": str(root / "work"),
        "GEOZARR_CATALOG_BACKEND": "static",
        "GEOZARR_CATALOG_ROOT": str(root / "catalog"),
        "GEOZARR_ALLOW_FILE_URLS": "true",
        "GEOZARR_ALLOW_PLAIN_HTTP": "true",
        "GEOZARR_ALLOW_PRIVATE_HOSTS": "true",
        "GEOZARR_RASTER_API_URL": "http://127.0.0.1:9",
    }


def deep_json(depth: int) -> bytes:
    """`depth` levels of nested arrays as text, built without a Python object that deep."""
    return b"[" * depth + b"]" * depth


@dataclass(frozen=True)
class Case:
    """One hostile request to one stage, and the answer it must get."""

    name: str
    stage: Stage
    headers: dict[str, str]
    body: bytes
    status: int
    code: str
    names: str  # a fragment the answer's message must hold
    policies: tuple[str, ...] = ("local", "production")
    field: str | None = None


def _event(stage: Stage, data: Any, event_id: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": INPUT_TYPES[stage].value,
            "source": "urn:test:hostile",
            "id": event_id,
            "datacontenttype": "application/json",
        },
        data,
    )


def encoded(stage: Stage, data: Any, mode: str, event_id: str) -> tuple[dict[str, str], bytes]:
    event = _event(stage, data, event_id)
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    return {k: str(v) for k, v in headers.items()}, body or b""


def valid_data(stage: Stage, output_root: Path) -> dict[str, Any]:
    """A well-formed input of `stage` for the sample item (the base every case spoils)."""
    store = str(output_root / COLLECTION / f"{ITEM}.zarr")
    if stage is Stage.CONVERT:
        return {"source_url": ALLOWED_SOURCE, "collection": COLLECTION, "item_id": ITEM}
    if stage is Stage.REGISTER:
        return {
            "item_id": ITEM,
            "collection": COLLECTION,
            "source_url": ALLOWED_SOURCE,
            "source_item_url": ALLOWED_SOURCE,
            "zarr_url": f"https://objects.eodc.eu/e05ab01a9d56408d82ac32d69a5aae2a/{ITEM}.zarr",
            "output_url": store,
        }
    return {
        "item_id": ITEM,
        "collection": COLLECTION,
        "item_url": f"https://api.example/collections/{COLLECTION}/items/{ITEM}",
        "output_url": store,
    }


def envelope_cases(stage: Stage, output_root: Path) -> Iterator[Case]:
    """What is wrong with the request itself: answered 400/413 by the broker and each stage."""
    base = valid_data(stage, output_root)
    for mode in ("binary", "structured"):
        for depth in (MAX_JSON_DEPTH + 8, 100_000):
            headers, _ = encoded(stage, base, mode, f"deep-{depth}-{mode}")
            if mode == "binary":
                body = deep_json(depth)
            else:
                envelope = {
                    **{k.removeprefix("ce-"): v for k, v in _binary_attributes(stage).items()},
                    "data": "PLACEHOLDER",
                }
                text = json.dumps(envelope).encode()
                body = text.replace(b'"PLACEHOLDER"', deep_json(depth))
            yield Case(
                f"json-{depth}-deep-{mode}", stage, headers, body, 400, "invalid_event", "nested"
            )
        big = {**base, "padding": "x" * (MAX_EVENT_BYTES + 1024)}
        headers, body = encoded(stage, big, mode, f"big-{mode}")
        yield Case(f"over-size-{mode}", stage, headers, body, 413, "event_too_large", "limited")
        if mode == "binary":
            # The SDK decodes JSON whatever the content type says: no label, or a wrong one.
            for label in ("", "text/plain"):
                headers, _ = encoded(stage, base, mode, f"deep-unlabelled-{label}")
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
                if label:
                    headers["content-type"] = label
                yield Case(
                    f"json-deep-labelled-{label or 'nothing'}",
                    stage,
                    headers,
                    deep_json(MAX_JSON_DEPTH + 8),
                    400,
                    "invalid_event",
                    "nested",
                )
        long_id = "i" * (MAX_URL_CHARS + 1)
        headers, body = encoded(stage, base, mode, long_id)
        yield Case(f"long-event-id-{mode}", stage, headers, body, 400, "invalid_event", "id is")


def _binary_attributes(stage: Stage) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-type": INPUT_TYPES[stage].value,
        "ce-source": "urn:test:hostile",
        "ce-id": "structured-deep",
        "ce-datacontenttype": "application/json",
    }


def data_cases(stage: Stage, output_root: Path) -> Iterator[Case]:
    """Well-formed events whose data can never succeed: a failure reply, nothing done."""
    base = valid_data(stage, output_root)
    spoiled: list[tuple[str, dict[str, Any], str, str, tuple[str, ...]]] = [
        ("item-traversal", {"item_id": "../../etc"}, "item_id", "safe identifier", ()),
        ("collection-slash", {"collection": "a/../b"}, "collection", "safe identifier", ()),
        ("collection-dotdot", {"collection": ".."}, "collection", "safe identifier", ()),
        ("id-too-long", {"item_id": "S" * (MAX_ID_CHARS + 40)}, "item_id", "at most", ()),
        ("id-nul", {"item_id": "S2A\u0000x"}, "item_id", "safe identifier", ()),
    ]
    if stage is Stage.CONVERT:
        spoiled += [
            (
                "source-url-200k",
                {"source_url": "https://stac.core.eopf.eodc.eu/" + "a" * 60_000},
                "source_url",
                "at most",
                (),
            ),
            (
                "source-plain-http",
                {"source_url": ALLOWED_SOURCE.replace("https", "http")},
                "",
                "plain http",
                ("production",),
            ),
            ("source-file", {"source_url": "file:///etc/passwd"}, "", "file://", ("production",)),
            (
                "source-off-list",
                {"source_url": "https://evil.example.net/items/x"},
                "",
                "allowed hosts",
                ("production",),
            ),
            (
                "source-metadata-ip",
                {"source_url": "https://169.254.169.254/latest/meta-data"},
                "",
                "allowed hosts",
                ("production",),
            ),
            (
                "source-nat64",
                {"source_url": "https://[64:ff9b::a9fe:a9fe]/x"},
                "",
                "allowed hosts",
                ("production",),
            ),
            (
                "source-credentials",
                {"source_url": "https://u:p@stac.core.eopf.eodc.eu/x"},
                "",
                "credentials",
                ("production",),
            ),
            (
                "source-crlf",
                {"source_url": ALLOWED_SOURCE + "\r\nHost: evil"},
                "",
                "control characters",
                ("production", "local"),
            ),
        ]
    if stage is Stage.REGISTER:
        store = Path(base["output_url"])
        spoiled += [
            (
                "output-traversal",
                {"output_url": str(store.parent / ".." / "other" / store.name)},
                "output_url",
                "is not the store",
                (),
            ),
            (
                "output-other-item",
                {"output_url": str(store.parent / "S2B_OTHER.zarr")},
                "output_url",
                "is not the store",
                (),
            ),
            (
                "output-staging",
                {"output_url": str(store.parent / ".staging" / f"{ITEM}.zarr.a1")},
                "output_url",
                "is not the store",
                (),
            ),
            (
                "output-plain-http",
                {"output_url": "http://127.0.0.1:1/x.zarr"},
                "output_url",
                "is not the store",
                (),
            ),
            (
                "output-other-bucket",
                {"output_url": "s3://elsewhere/x.zarr"},
                "output_url",
                "is not the store",
                (),
            ),
            (
                "output-file-url",
                {"output_url": "file:///etc"},
                "output_url",
                "is not the store",
                (),
            ),
            ("output-no-marker", {}, "output_url", "no completed conversion", ()),
            (
                "output-url-long",
                {"output_url": "s3://b/" + "k" * MAX_URL_CHARS},
                "output_url",
                "at most",
                (),
            ),
            ("output-nul", {"output_url": str(store) + "\x00x"}, "output_url", "control", ()),
            ("output-crlf", {"output_url": str(store) + "\r\n"}, "output_url", "control", ()),
        ]
    # Data that is a JSON string holding a document nested 100,000 levels deep: the envelope
    # is shallow, the data is not.
    headers, body = encoded(stage, deep_json(100_000).decode(), "structured", "deep-string")
    yield Case("json-deep-inside-a-string", stage, headers, body, 200, "invalid_event", "nested")
    for name, change, field_name, names, only in spoiled:
        data = {**base, **change}
        for mode in ("binary", "structured"):
            headers, body = encoded(stage, data, mode, f"{name}-{mode}")
            yield Case(
                f"{name}-{mode}",
                stage,
                headers,
                body,
                200,
                "invalid_input",
                names,
                policies=only or ("local", "production"),
                field=field_name or None,
            )


# Guards --------------------------------------------------------------------------------------


@dataclass
class Watch:
    """What one delivery did beyond answering."""

    connections: list[Any] = field(default_factory=list)
    lookups: list[Any] = field(default_factory=list)
    records: list[logging.LogRecord] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO and not record.name.startswith("werkzeug"):
            self.sink.append(record)


@contextmanager
def watched() -> Iterator[Watch]:
    """Record every connect and every name lookup made in this process, and every log line."""
    watch = Watch()
    patch = pytest.MonkeyPatch()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        watch.connections.append(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        watch.connections.append(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        watch.lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    patch.setattr(socket.socket, "connect", connect)
    patch.setattr(socket.socket, "connect_ex", connect_ex)
    patch.setattr(socket, "getaddrinfo", getaddrinfo)
    handler = _Collect(watch.records)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield watch
    finally:
        root.removeHandler(handler)
        patch.undo()


def files_under(root: Path, *, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, int]:
    """Every file under `root` with its modification time (what a stage may have written)."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): path.stat().st_mtime_ns
        for path in root.rglob("*")
        if path.is_file() and not skip(path.relative_to(root))
    }


def raw_exchange(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    """Send bytes as they are; the status and JSON body of the answer (never a dropped
    connection: a reset or an empty read fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        try:
            connection.sendall(head.encode() + body)
            connection.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the server answered before reading all of it: read that answer
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    assert received, "the connection was dropped without an answer"
    status_line, _, rest = received.partition(b"\r\n")
    _headers, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload or b"{}")
