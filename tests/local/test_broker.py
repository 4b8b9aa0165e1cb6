"""The local broker over real HTTP: a broker process, tiny subscriber servers, Trigger files."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from geozarr_local.broker.dispatch import Decision, decide
from geozarr_local.broker.journal import BrokerState, matches_query
from geozarr_local.processes import ManagedProcess, free_port, http_ready
from geozarr_pipeline import cli
from geozarr_pipeline.broker_client import RunFailed, wait_for_event
from geozarr_pipeline.events import EventType, Stage, reply_id
from tests.fixtures.failures import RecorderFactory

REPO_TRIGGERS = Path(__file__).resolve().parents[2] / "knative" / "base" / "triggers.yaml"
RECORDER = "geozarr-failures"
CONVERT_REQUESTED = EventType.CONVERT_REQUESTED.value
CONVERT_DONE = EventType.CONVERT_DONE.value
REGISTER_DONE = EventType.REGISTER_DONE.value
AUGMENT_DONE = EventType.AUGMENT_DONE.value


# Subscribers ---------------------------------------------------------------------------------


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def subject(self) -> str:
        return self.headers.get("ce-subject", "")


Reply = tuple[int, dict[str, str], bytes]
Responder = Callable[["Subscriber", Received], Reply]


@dataclass
class Subscriber:
    """A tiny HTTP server standing in for a Knative Service; records every request."""

    respond: Responder
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Subscriber:
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Received(
                    time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body
                )
                with subscriber.lock:
                    subscriber.received.append(request)
                    subscriber.active += 1
                    subscriber.max_active = max(subscriber.max_active, subscriber.active)
                    subscriber.lock.notify_all()
                try:
                    status, headers, payload = subscriber.respond(subscriber, request)
                finally:
                    with subscriber.lock:
                        subscriber.active -= 1
                # The broker may have given up on this attempt (a delivery timeout).
                with contextlib.suppress(ConnectionError):
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _matching(self, subject: str | None) -> list[Received]:
        return [r for r in self.received if subject is None or r.subject == subject]

    def attempts(self, subject: str | None = None) -> list[Received]:
        with self.lock:
            return self._matching(subject)

    def wait_for(self, count: int, subject: str | None = None, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self._matching(subject)) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"expected {count} requests, got {len(self.received)}"
                self.lock.wait(remaining)


def answer(status: int, body: Any = None) -> Reply:
    payload = json.dumps(body).encode() if body is not None else b""
    return status, {"Content-Type": "application/json"}, payload


def stage_reply(stage: Stage, request: Received, structured: bool = False) -> Reply:
    """What a stage function answers: its 'done' event, in binary or structured mode."""
    data = json.loads(request.body)
    subject = data.get("item_id") or request.subject
    reply = CloudEvent(
        {
            "type": stage.replies_with.value,
            "source": stage.event_source,
            "id": reply_id(stage, request.headers["ce-source"], request.headers["ce-id"]),
            "subject": subject,
            "datacontenttype": "application/json",
        },
        {"item_id": subject, "stage": stage.value, "input_type": request.headers["ce-type"]},
    )
    headers, body = to_structured(reply) if structured else to_binary(reply)
    return 200, {k: str(v) for k, v in headers.items()}, body or b""


@pytest.fixture
def subscribers() -> Iterator[Callable[[Responder], Subscriber]]:
    started: list[Subscriber] = []

    def start(respond: Responder) -> Subscriber:
        subscriber = Subscriber(respond).start()
        started.append(subscriber)
        return subscriber

    yield start
    for subscriber in started:
        subscriber.stop()


# Broker -------------------------------------------------------------------------------------


@dataclass
class Broker:
    process: ManagedProcess
    url: str
    state_dir: Path

    def post(self, headers: Mapping[str, str], body: bytes) -> httpx.Response:
        return httpx.post(self.url + "/", headers=dict(headers), content=body, timeout=5)

    def send(self, event: CloudEvent, structured: bool = False) -> dict[str, Any]:
        headers, body = to_structured(event) if structured else to_binary(event)
        if not structured:
            headers = {**headers, "content-type": "application/json"}
        response = self.post({k: str(v) for k, v in headers.items()}, body or b"")
        assert response.status_code == 202, response.text
        accepted: dict[str, Any] = response.json()
        return accepted

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead letters the broker journaled (each also queued for the sink)."""
        found: list[dict[str, Any]] = self.get("/events", origin="dead-letter")
        return found

    def wait_dead_letters(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            entries = self.dead_letters()
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)

    def wait_deliveries(self, count: int, timeout: float = 10.0, **query: str) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            found: list[Any] = self.get("/deliveries", **query)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


BrokerFactory = Callable[..., Broker]


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[BrokerFactory]:
    started: list[ManagedProcess] = []

    def start(
        manifests: Path,
        subscribers: Mapping[str, str],
        *extra: str,
        console_script: bool = False,
        state_dir: Path | None = None,
    ) -> Broker:
        port = free_port()
        state_dir = state_dir or tmp_path / f"state-{port}"
        entry = (
            [str(Path(sys.executable).parent / "geozarr-pipeline"), "broker"]
            if console_script
            else [sys.executable, "-m", "geozarr_local.broker"]
        )
        command = [
            *entry,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--manifests",
            str(manifests),
            "--state-dir",
            str(state_dir),
            *(f"--subscriber={name}={url}" for name, url in subscribers.items()),
            *extra,
        ]
        process = ManagedProcess(f"broker-{port}", command, tmp_path / f"broker-{port}.log")
        started.append(process.start())
        url = f"http://127.0.0.1:{port}"
        process.wait_ready(http_ready(url + "/healthz"), timeout=30)
        return Broker(process, url, state_dir)

    yield start
    for process in started:
        process.stop()


def triggers_copy(
    directory: Path, change: Callable[[dict[str, Any]], None] | None = None, **delivery: Any
) -> Path:
    """The repo's triggers.yaml with tiny delivery values (and any other change) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    documents = [d for d in yaml.safe_load_all(REPO_TRIGGERS.read_text()) if d]
    for document in documents:
        document["spec"]["delivery"].update(
            {"retry": 2, "backoffDelay": "PT0.05S", "timeout": "PT5S", **delivery}
        )
        document["spec"]["delivery"]["deadLetterSink"] = {
            "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": RECORDER}
        }
        if change is not None:
            change(document)
    (directory / "triggers.yaml").write_text(yaml.safe_dump_all(documents))
    return directory


def event(event_type: str, subject: str, event_id: str | None = None, **data: Any) -> CloudEvent:
    return CloudEvent(
        {
            "type": event_type,
            "source": "urn:test:broker",
            "id": event_id or f"{subject}-{event_type}",
            "subject": subject,
            "datacontenttype": "application/json",
        },
        {"item_id": subject, "collection": "sentinel-2-l2a", **data},
    )


# Ingress ------------------------------------------------------------------------------------


def test_binary_and_structured_ingress_are_journaled_and_delivered_in_binary_mode(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    convert = subscribers(lambda s, r: answer(202))
    broker = start_broker(REPO_TRIGGERS.parent, {"geozarr-convert": convert.url})

    first = broker.send(event(CONVERT_REQUESTED, "item-a", source_url="http://x/item-a"))
    second = broker.send(
        event(CONVERT_REQUESTED, "item-b", source_url="http://x/item-b"), structured=True
    )
    assert first["routes"] == ["geozarr-convert"]
    assert second["routes"] == ["geozarr-convert"]
    assert (first["duplicate"], second["duplicate"]) == (False, False)

    convert.wait_for(2)
    by_subject = {r.subject: r for r in convert.attempts()}
    assert set(by_subject) == {"item-a", "item-b"}
    for subject, request in by_subject.items():
        assert request.headers["ce-type"] == CONVERT_REQUESTED
        assert request.headers["ce-id"] == f"{subject}-{CONVERT_REQUESTED}"
        assert request.headers["ce-source"] == "urn:test:broker"
        assert request.headers["content-type"].startswith("application/json")
        assert json.loads(request.body)["source_url"] == f"http://x/{subject}"

    journal = broker.get("/events", type=CONVERT_REQUESTED)
    assert [e["event"]["attributes"]["subject"] for e in journal] == ["item-a", "item-b"]
    assert broker.get("/events", subject="item-b")[0]["event"]["data"]["source_url"] == (
        "http://x/item-b"
    )
    lines = (broker.state_dir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]

    again = broker.send(event(CONVERT_REQUESTED, "item-a", source_url="http://x/item-a"))
    assert again["duplicate"] is True
    convert.wait_for(2, subject="item-a")
    entries = broker.get("/events", subject="item-a")
    assert [e["duplicate"] for e in entries] == [False, True]
    delivered = broker.wait_deliveries(3, outcome="delivered")
    assert len(delivered) == 3


MALFORMED: list[tuple[dict[str, str], bytes, str]] = [
    (
        {"ce-specversion": "1.0", "ce-type": CONVERT_REQUESTED, "ce-source": "urn:t"},
        b"{}",
        "missing CloudEvent attribute(s): id",
    ),
    ({"content-type": "application/json"}, b"{}", "missing CloudEvent attribute"),
    ({"content-type": "application/cloudevents+json"}, b"{not json", "not valid JSON"),
    ({"content-type": "application/cloudevents+json"}, b"[1, 2]", "JSON object"),
    (
        {"content-type": "application/cloudevents+json"},
        json.dumps({"specversion": "1.0", "id": "1", "source": "urn:t"}).encode(),
        "missing CloudEvent attribute(s): type",
    ),
]


def test_malformed_ingress_gets_400_naming_the_problem(
    subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    convert = subscribers(lambda s, r: answer(200))
    broker = start_broker(REPO_TRIGGERS.parent, {"geozarr-convert": convert.url})
    for headers, body, problem in MALFORMED:
        response = broker.post(headers, body)
        assert response.status_code == 400, (headers, body)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == "invalid_event"
        assert problem in response.json()["message"]
    assert httpx.post(broker.url + "/elsewhere", content=b"{}").status_code == 404
    assert broker.get("/events") == []
    time.sleep(0.2)
    assert convert.attempts() == []
    assert not (broker.state_dir / "events.jsonl").exists()


# Routing and replies ------------------------------------------------------------------------


def test_reply_events_are_republished_and_run_the_repo_chain_to_augment_done(
    subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    convert = subscribers(lambda s, r: stage_reply(Stage.CONVERT, r))
    register = subscribers(lambda s, r: stage_reply(Stage.REGISTER, r, structured=True))
    augment = subscribers(lambda s, r: stage_reply(Stage.AUGMENT, r))
    broker = start_broker(
        REPO_TRIGGERS.parent,
        {
            "geozarr-convert": convert.url,
            "geozarr-register": register.url,
            "geozarr-augment": augment.url,
        },
    )
    broker.send(event(CONVERT_REQUESTED, "chain-1", source_url="http://x/chain-1"))
    done = wait_for_event(broker.url, event_type=AUGMENT_DONE, subject="chain-1", timeout=20)
    assert done["origin"] == "reply"
    assert done["parent"]["trigger"] == "geozarr-augment"

    chain = broker.get("/events", subject="chain-1")
    assert [e["event"]["attributes"]["type"] for e in chain] == [
        CONVERT_REQUESTED,
        CONVERT_DONE,
        REGISTER_DONE,
        AUGMENT_DONE,
    ]
    assert [e["routes"] for e in chain] == [
        ["geozarr-convert"],
        ["geozarr-register"],
        ["geozarr-augment"],
        [],
    ]
    for parent, child in itertools.pairwise(chain):
        assert child["parent"]["seq"] == parent["seq"]
        assert child["parent"]["id"] == parent["event"]["attributes"]["id"]
    assert chain[2]["event"]["data"]["input_type"] == CONVERT_DONE

    # A header-less RabbitMQ message arrives as dev.knative.rabbitmq.event and starts the chain.
    broker.send(
        CloudEvent(
            {"type": EventType.RABBITMQ_MESSAGE.value, "source": "urn:rabbitmq", "id": "r-1"},
            {"source_url": "http://x/chain-2", "item_id": "chain-2", "collection": "c"},
        )
    )
    wait_for_event(broker.url, event_type=AUGMENT_DONE, subject="chain-2", timeout=20)
    assert broker.dead_letters() == []


def test_routes_follow_a_modified_copy_of_the_trigger_file(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    def retarget(document: dict[str, Any]) -> None:
        if document["metadata"]["name"] == "geozarr-register":
            document["spec"]["filter"]["attributes"]["type"] = "eopf.geozarr.convert.done.v2"

    manifests = triggers_copy(tmp_path / "manifests", retarget)
    (manifests / "extra.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": "audit"},
                "spec": {
                    "broker": "geozarr",
                    "filter": {"attributes": {"type": CONVERT_DONE}},
                    "subscriber": {"ref": {"kind": "Service", "name": "audit"}},
                },
            }
        )
    )
    register = subscribers(lambda s, r: answer(200))
    audit = subscribers(lambda s, r: answer(200))
    broker = start_broker(manifests, {"geozarr-register": register.url, "audit": audit.url})

    old = broker.send(event(CONVERT_DONE, "r-old"))
    new = broker.send(event("eopf.geozarr.convert.done.v2", "r-new"))
    assert old["routes"] == ["audit"]
    assert new["routes"] == ["geozarr-register"]
    register.wait_for(1, subject="r-new")
    audit.wait_for(1, subject="r-old")
    time.sleep(0.2)
    assert [r.subject for r in register.attempts()] == ["r-new"]
    assert [r.subject for r in audit.attempts()] == ["r-old"]
    routes = {r["trigger"]: r for r in broker.get("/routes")}
    assert routes["geozarr-register"]["filters"] == {"type": "eopf.geozarr.convert.done.v2"}
    assert routes["geozarr-convert"]["url"] is None


# Retries and dead letters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected_gaps"), [("exponential", [0.4, 0.8]), ("linear", [0.2, 0.4])]
)
def test_transient_failures_are_retried_as_the_trigger_says_then_succeed(
    tmp_path: Path,
    subscribers: Callable[[Responder], Subscriber],
    start_broker: BrokerFactory,
    policy: str,
    expected_gaps: list[float],
) -> None:
    def flaky(subscriber: Subscriber, request: Received) -> Reply:
        if len(subscriber.attempts(request.subject)) <= 2:
            return answer(503, {"error": "transient_error", "message": "try later"})
        return stage_reply(Stage.REGISTER, request)

    register = subscribers(flaky)
    manifests = triggers_copy(
        tmp_path / "manifests", retry=3, backoffPolicy=policy, backoffDelay="PT0.2S"
    )
    broker = start_broker(manifests, {"geozarr-register": register.url})
    broker.send(event(CONVERT_DONE, "flaky-1"))

    reply = wait_for_event(broker.url, event_type=REGISTER_DONE, subject="flaky-1", timeout=10)
    assert reply["parent"]["trigger"] == "geozarr-register"
    attempts = register.attempts("flaky-1")
    assert len(attempts) == 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    for gap, expected in zip(gaps, expected_gaps, strict=True):
        assert expected - 0.02 <= gap <= expected + 0.5, gaps
    [delivery] = broker.wait_deliveries(1, trigger="geozarr-register")
    assert delivery["outcome"] == "delivered"
    assert [a["status"] for a in delivery["attempts"]] == [503, 503, 200]
    assert broker.dead_letters() == []


def test_a_subscriber_that_keeps_failing_ends_in_one_failure_record_listed_by_the_cli(
    tmp_path: Path,
    subscribers: Callable[[Responder], Subscriber],
    start_broker: BrokerFactory,
    start_recorder: RecorderFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register = subscribers(lambda s, r: answer(500, {"error": "internal_error", "message": "boom"}))
    recorder = start_recorder()
    manifests = triggers_copy(tmp_path / "manifests", retry=2, backoffDelay="PT0.05S")
    broker = start_broker(
        manifests,
        {"geozarr-register": register.url, RECORDER: recorder.url},
        console_script=True,
    )
    sent = event(CONVERT_DONE, "doomed-1", output_url="file:///tmp/x")
    broker.send(sent)

    with pytest.raises(RunFailed, match="dead-lettered by geozarr-register: last status 500"):
        wait_for_event(broker.url, event_type=REGISTER_DONE, subject="doomed-1", timeout=10)
    [dead] = broker.wait_dead_letters(1)
    attributes = dead["event"]["attributes"]
    assert attributes["knativeerrordest"] == register.url
    assert attributes["knativeerrorcode"] == "500"
    assert "knativeerrordata" not in attributes, "upstream sends no response body"
    [delivery] = broker.wait_deliveries(1, queue="geozarr-register")
    assert delivery["outcome"] == "dead-lettered"
    assert [a["status"] for a in delivery["attempts"]] == [500, 500, 500]
    [to_sink] = broker.wait_deliveries(1, queue="geozarr-register.dlq")
    assert to_sink["outcome"] == "delivered"
    assert to_sink["url"] == recorder.url
    time.sleep(0.3)
    assert len(register.attempts()) == 3

    [record] = recorder.records()
    assert record["kind"] == "dead_letter"
    assert record["stage"] == "register"
    assert record["problem"]["code"] == "retries_exhausted"  # type: ignore[index]
    assert record["problem"]["status"] == 500  # type: ignore[index]
    assert record["input_event"]["attributes"]["id"] == sent["id"]  # type: ignore[index]
    assert record["input_event"]["data"]["output_url"] == "file:///tmp/x"  # type: ignore[index]

    assert cli.main(["failures", "list", "--root", recorder.root]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2
    for expected in ("register", "doomed-1", "dead_letter", "retries_exhausted"):
        assert expected in table[1]


# The decision table, pinned to eventing-rabbitmq pkg/dispatcher/dispatcher.go getStatus and
# knative/eventing pkg/kncloudevents/retries.go SelectiveRetry (commits in
# geozarr_local/broker/dispatch.py).
UPSTREAM_DECISIONS = {
    None: Decision.RETRY,  # timeout, connection refused: no HTTP result, code -1
    100: Decision.DROP,
    200: Decision.ACK,
    202: Decision.ACK,
    204: Decision.ACK,
    301: Decision.DROP,
    304: Decision.DROP,
    400: Decision.DROP,
    401: Decision.DROP,
    403: Decision.DROP,
    404: Decision.RETRY,
    408: Decision.RETRY,
    409: Decision.RETRY,
    410: Decision.DROP,
    413: Decision.DROP,
    422: Decision.DROP,
    429: Decision.RETRY,
    500: Decision.RETRY,
    502: Decision.RETRY,
    503: Decision.RETRY,
    504: Decision.RETRY,
    599: Decision.RETRY,
}


@pytest.mark.parametrize(("status", "decision"), list(UPSTREAM_DECISIONS.items()))
def test_each_status_is_decided_as_the_upstream_dispatcher_does(
    status: int | None, decision: Decision
) -> None:
    assert decide(status) is decision


def test_status_codes_steer_retries_and_drops_like_the_rabbitmq_dispatcher(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    """A bare 4xx is acked and dropped, never dead-lettered: exactly what upstream does.

    This is why the stages answer permanent failures with an eopf.geozarr.failed reply.
    """

    def first_fails(subscriber: Subscriber, request: Received) -> Reply:
        code = int(request.subject.removeprefix("status-"))
        if len(subscriber.attempts(request.subject)) == 1:
            return answer(code, {"error": "scripted", "message": f"scripted {code}"})
        return answer(200)

    register = subscribers(first_fails)
    sink = subscribers(lambda s, r: answer(202))
    manifests = triggers_copy(tmp_path / "manifests", retry=1, backoffDelay="PT0.05S")
    broker = start_broker(manifests, {"geozarr-register": register.url, RECORDER: sink.url})
    retried = [404, 408, 409, 429, 500, 503]
    dropped = [301, 400, 403, 410, 422]
    for code in retried + dropped:
        broker.send(event(CONVERT_DONE, f"status-{code}"))
    deliveries = broker.wait_deliveries(len(retried + dropped), queue="geozarr-register")
    outcomes = {d["event"]["subject"]: d for d in deliveries}

    for code in retried:
        assert len(register.attempts(f"status-{code}")) == 2, code
        assert outcomes[f"status-{code}"]["outcome"] == "delivered"
    for code in dropped:
        assert len(register.attempts(f"status-{code}")) == 1, code
        assert outcomes[f"status-{code}"]["outcome"] == "dropped"
    time.sleep(0.3)
    assert broker.dead_letters() == []
    assert sink.attempts() == []


def test_an_undecodable_reply_is_dropped_and_a_looping_one_dead_lettered(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    """As the SDK's client.Request: a reply it cannot decode is no reply, the message is acked.

    A reply matching its own Trigger would loop on the cluster; locally it is dead-lettered,
    with only knativeerrordest and knativeerrorcode, as upstream sends them.
    """

    def bad_reply(subscriber: Subscriber, request: Received) -> Reply:
        if request.subject == "half-event":
            headers = {"ce-specversion": "1.0", "ce-type": REGISTER_DONE}
            return 200, {**headers, "Content-Type": "application/json"}, b"{}"
        if request.subject == "no-specversion":
            return 200, {"ce-type": REGISTER_DONE, "Content-Type": "application/json"}, b"{}"
        looped = CloudEvent(
            {"type": CONVERT_DONE, "source": "urn:loop", "id": "loop", "subject": request.subject},
            {"item_id": request.subject},
        )
        headers, body = to_binary(looped)
        return 200, {k: str(v) for k, v in headers.items()}, body or b""

    register = subscribers(bad_reply)
    sink = subscribers(lambda s, r: answer(202))
    manifests = triggers_copy(tmp_path / "manifests")
    broker = start_broker(manifests, {"geozarr-register": register.url, RECORDER: sink.url})
    for subject in ("half-event", "no-specversion", "loop-event"):
        broker.send(event(CONVERT_DONE, subject))

    deliveries = broker.wait_deliveries(3, queue="geozarr-register")
    outcomes = {d["event"]["subject"]: d for d in deliveries}
    assert outcomes["half-event"]["outcome"] == "delivered"
    assert "not a valid CloudEvent" in outcomes["half-event"]["attempts"][0]["error"]
    assert outcomes["no-specversion"]["outcome"] == "delivered"
    assert outcomes["loop-event"]["outcome"] == "dead-lettered"
    assert "matches its own Trigger" in outcomes["loop-event"]["attempts"][0]["error"]
    sink.wait_for(1)
    [forwarded] = sink.attempts()
    assert forwarded.subject == "loop-event"
    assert forwarded.headers["ce-knativeerrorcode"] == "200"
    assert forwarded.headers["ce-knativeerrordest"] == register.url
    assert "ce-knativeerrordata" not in forwarded.headers
    assert len(register.attempts()) == 3
    assert broker.get("/events", origin="reply") == []


def test_timeouts_and_connection_errors_are_retried_then_dead_lettered_with_code_minus_1(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    def slow_first(subscriber: Subscriber, request: Received) -> Reply:
        if len(subscriber.attempts(request.subject)) == 1:
            time.sleep(3)
        return answer(200)

    register = subscribers(slow_first)
    sink = subscribers(lambda s, r: answer(202))
    manifests = triggers_copy(tmp_path / "manifests", timeout="PT0.4S", retry=2)
    nobody = f"http://127.0.0.1:{free_port()}"
    broker = start_broker(
        manifests,
        {"geozarr-register": register.url, "geozarr-convert": nobody, RECORDER: sink.url},
    )
    broker.send(event(CONVERT_DONE, "slow-1"))
    broker.send(event(CONVERT_REQUESTED, "refused-1", source_url="http://x/refused-1"))

    [delivered] = broker.wait_deliveries(1, queue="geozarr-register")
    assert delivered["outcome"] == "delivered"
    assert delivered["attempts"][0]["status"] is None
    assert delivered["attempts"][0]["error"].startswith("timeout")
    assert delivered["attempts"][0]["elapsed_s"] < 2.5
    assert delivered["attempts"][1]["status"] == 200

    sink.wait_for(1, subject="refused-1")
    [forwarded] = sink.attempts("refused-1")
    assert forwarded.headers["ce-knativeerrorcode"] == "-1"
    assert forwarded.headers["ce-knativeerrordest"] == nobody
    [failed] = broker.wait_deliveries(1, queue="geozarr-convert")
    assert len(failed["attempts"]) == 3
    assert "ConnectError" in failed["attempts"][-1]["error"]


def test_a_dead_letter_the_sink_refuses_is_lost_as_upstream(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    register = subscribers(lambda s, r: answer(503))
    sink = subscribers(lambda s, r: answer(503))
    manifests = triggers_copy(tmp_path / "manifests", retry=1)
    broker = start_broker(manifests, {"geozarr-register": register.url, RECORDER: sink.url})
    broker.send(event(CONVERT_DONE, "lost-1"))
    [to_sink] = broker.wait_deliveries(1, queue="geozarr-register.dlq")
    assert to_sink["outcome"] == "lost"
    assert len(sink.attempts("lost-1")) == 2
    # No sink known at all: the dead letter has nowhere to go either.
    alone = start_broker(manifests, {"geozarr-register": register.url})
    alone.send(event(CONVERT_DONE, "lost-2"))
    [delivery] = alone.wait_deliveries(1, queue="geozarr-register")
    assert delivery["outcome"] == "lost"


def test_parallelism_annotation_sets_concurrency_and_ingress_never_blocks(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    def parallel(document: dict[str, Any]) -> None:
        if document["metadata"]["name"] == "geozarr-convert":
            annotations = document["metadata"]["annotations"]
            annotations["rabbitmq.eventing.knative.dev/parallelism"] = "3"

    def slow(subscriber: Subscriber, request: Received) -> Reply:
        time.sleep(0.8)
        return answer(200)

    convert = subscribers(slow)
    register = subscribers(slow)
    manifests = triggers_copy(tmp_path / "manifests", parallel)
    broker = start_broker(
        manifests, {"geozarr-convert": convert.url, "geozarr-register": register.url}
    )
    for index in range(3):
        for event_type in (CONVERT_REQUESTED, CONVERT_DONE):
            started = time.monotonic()
            broker.send(event(event_type, f"p-{index}", source_url="http://x/p"))
            assert time.monotonic() - started < 0.6
    convert.wait_for(3)
    register.wait_for(3)
    assert broker.wait_deliveries(6, timeout=15)
    assert convert.max_active == 3
    assert register.max_active == 1


def test_sigterm_stops_quickly_and_a_restart_redelivers_what_was_not_acknowledged(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    def hang(subscriber: Subscriber, request: Received) -> Reply:
        time.sleep(20)
        return answer(503)

    register = subscribers(hang)
    manifests = triggers_copy(tmp_path / "manifests", retry=3, timeout="PT30S")
    broker = start_broker(manifests, {"geozarr-register": register.url}, "--grace", "0.5")
    for index in range(3):
        broker.send(event(CONVERT_DONE, f"stop-{index}"))
    register.wait_for(1)

    started = time.monotonic()
    broker.process.stop(grace=10)
    elapsed = time.monotonic() - started
    assert broker.process.process is not None
    assert broker.process.process.returncode == 0
    assert elapsed < 6.0, "in-flight deliveries must be left for redelivery, not awaited"
    journal = (broker.state_dir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"]["attributes"]["subject"] for line in journal] == [
        "stop-0",
        "stop-1",
        "stop-2",
    ]
    deliveries = broker.state_dir / "deliveries.jsonl"
    assert not deliveries.exists() or deliveries.read_text() == ""
    assert "local broker stopped" in broker.process.log_tail()

    register.respond = lambda s, r: stage_reply(Stage.REGISTER, r)
    again = start_broker(manifests, {"geozarr-register": register.url}, state_dir=broker.state_dir)
    done = again.wait_deliveries(3, queue="geozarr-register")
    assert sorted(d["event"]["subject"] for d in done) == ["stop-0", "stop-1", "stop-2"]
    assert {d["outcome"] for d in done} == {"delivered"}
    replies = again.get("/events", type=REGISTER_DONE)
    assert sorted(e["event"]["attributes"]["subject"] for e in replies) == [
        "stop-0",
        "stop-1",
        "stop-2",
    ]
    accepted = again.send(event(CONVERT_DONE, "stop-0"))
    assert (accepted["seq"], accepted["duplicate"]) == (7, True)


def test_kill_9_mid_delivery_then_restart_delivers_once_more_and_never_twice_after_ack(
    tmp_path: Path, subscribers: Callable[[Responder], Subscriber], start_broker: BrokerFactory
) -> None:
    release = threading.Event()

    def held(subscriber: Subscriber, request: Received) -> Reply:
        if request.subject == "held" and not release.is_set():
            time.sleep(30)
        return stage_reply(Stage.REGISTER, request)

    register = subscribers(held)
    manifests = triggers_copy(tmp_path / "manifests", timeout="PT60S")
    broker = start_broker(manifests, {"geozarr-register": register.url})
    broker.send(event(CONVERT_DONE, "acked"))
    broker.wait_deliveries(1, queue="geozarr-register")
    broker.send(event(CONVERT_DONE, "held"))
    register.wait_for(1, subject="held")
    assert broker.process.process is not None
    broker.process.process.kill()
    broker.process.process.wait(timeout=10)

    release.set()
    again = start_broker(manifests, {"geozarr-register": register.url}, state_dir=broker.state_dir)
    reply = wait_for_event(again.url, event_type=REGISTER_DONE, subject="held", timeout=15)
    assert reply["parent"]["id"] == "held-" + CONVERT_DONE
    time.sleep(0.5)
    assert len(register.attempts("held")) == 2
    assert len(register.attempts("acked")) == 1, "an acknowledged delivery is not redone"
    assert len(again.get("/events", type=REGISTER_DONE, subject="acked")) == 1


def test_the_journal_survives_a_torn_line_and_a_journaled_reply_counts_as_delivered(
    tmp_path: Path,
) -> None:
    state = BrokerState(tmp_path)
    first = state.append_event(event(CONVERT_DONE, "one"), "ingress", None, ["geozarr-register"])
    second = state.append_event(event(CONVERT_DONE, "two"), "ingress", None, ["geozarr-register"])
    assert first is not None
    assert second is not None
    parent = {"seq": first["seq"], "queue": "geozarr-register"}
    state.append_event(event(REGISTER_DONE, "one"), "reply", parent, [])
    state.close()
    with (tmp_path / "events.jsonl").open("a") as handle:
        handle.write('{"seq": 4, "torn')

    reopened = BrokerState(tmp_path)
    assert [e["seq"] for e in reopened.entries] == [1, 2, 3]
    assert [(e["seq"], q) for e, q in reopened.unfinished()] == [(2, "geozarr-register")]
    reopened.append_event(event(CONVERT_DONE, "three"), "ingress", None, [])
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4]
    reopened.close()

    # A line corrupted in the middle is skipped, and its seq is never given out again.
    lines[1] = lines[1][:-5]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    damaged = BrokerState(tmp_path)
    assert [e["seq"] for e in damaged.entries] == [1, 3, 4]
    added = damaged.append_event(event(CONVERT_DONE, "four"), "ingress", None, [])
    assert added is not None
    assert added["seq"] == 5


def test_queries_match_entry_fields_and_event_attributes() -> None:
    entry = {
        "origin": "reply",
        "event": {"attributes": {"type": CONVERT_DONE, "subject": "S2A_X"}},
    }
    assert matches_query(entry, {"origin": "reply", "type": CONVERT_DONE, "subject": "S2A_X"})
    assert not matches_query(entry, {"origin": "ingress"})
    assert not matches_query(entry, {"subject": "S2A_Y"})
    assert not matches_query(entry, {"id": "1"})
