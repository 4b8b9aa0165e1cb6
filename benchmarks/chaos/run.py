"""Chaos through the local stack: injected 503s, killed processes, a killed broker.

Three scenarios on the real stack (sample server, three functions, failure recorder, broker),
each counted from the broker's journal and delivery log, the failure records and the stores:

- `load`: N distinct items, a proxy in front of every stage answering 503 to a share of the
  requests (seeded), and the register function killed (SIGKILL) once mid-run; the stack
  restarts it. Lost = no augment.done and no failure record; duplicated = more than one
  augment.done id or catalog item per item; every injected 503 is retried to success or
  recorded.
- `convert-kills`: convert killed at five points of a conversion (fractions of its measured
  duration); the broker retries, the stack restarts convert. Checks that every registered item
  points at a complete store (its completion marker present, every array readable).
- `broker-kill`: items queued, the broker killed with SIGKILL mid-chain and restarted on the same
  state; every accepted event reaches augment.done.

    uv run python benchmarks/chaos/run.py --items 200 --fault-rate 0.1 --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from geozarr_pipeline.events import EventType
from geozarr_local.demo import convert_requested_event
from geozarr_local.processes import LOOPBACK, free_port
from geozarr_local.stack import FUNCTION_SERVICES, LocalStack
from geozarr_local.sample.build import write_sample
from geozarr_local.sample.layout import item_url

SCALE = 0.02


class FaultProxy:
    """Forwards to one Service; answers 503 instead to a seeded share of the requests."""

    def __init__(self, target: str, rate: float, seed: int) -> None:
        self.target = target
        self.rate = rate
        self.random = random.Random(seed)  # noqa: S311 - a reproducible fault schedule
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        # When the first request of each subject was forwarded (monotonic seconds).
        self.first_forwarded: dict[str, float] = {}
        self.client = httpx.Client(timeout=3600, trust_env=False)
        self.server = ThreadingHTTPServer((LOOPBACK, free_port()), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                skipped = ("content-length", "transfer-encoding", "connection")
                # The broker may be gone (killed) by the time the answer comes back.
                with contextlib.suppress(ConnectionError):
                    self.send_response(status)
                    for name, value in headers.items():
                        if name.lower() not in skipped:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    inject = proxy.random.random() < proxy.rate
                    if inject:
                        proxy.injected[self.headers.get("ce-id", "")] += 1
                if inject:
                    self._send(503, {"Content-Type": "application/json"}, b'{"error":"injected"}')
                    return
                with proxy.lock:
                    proxy.first_forwarded.setdefault(
                        self.headers.get("ce-subject", ""), time.monotonic()
                    )
                try:
                    answer = proxy.client.post(
                        proxy.target, headers=dict(self.headers.items()), content=body
                    )
                except httpx.HTTPError:
                    self._send(502, {"Content-Type": "application/json"}, b'{"error":"down"}')
                    return
                with proxy.lock:
                    proxy.forwarded += 1
                self._send(answer.status_code, dict(answer.headers.items()), answer.content)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@contextmanager
def chaos_stack(
    root: Path, fault_rate: float, seed: int
) -> Iterator[tuple[LocalStack, list[FaultProxy]]]:
    ports = {service: free_port() for service in FUNCTION_SERVICES}
    proxies = {
        service: FaultProxy(f"http://{LOOPBACK}:{port}", fault_rate, seed + index)
        for index, (service, port) in enumerate(ports.items())
    }
    stack = LocalStack(root, ports=ports, subscriber_urls={s: p.url for s, p in proxies.items()})
    try:
        with stack:
            yield stack, list(proxies.values())
    finally:
        for proxy in proxies.values():
            proxy.close()


def journal(stack: LocalStack, **query: str) -> list[dict[str, Any]]:
    response = httpx.get(stack.broker_url + "/events", params=query, timeout=60)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def deliveries(stack: LocalStack) -> list[dict[str, Any]]:
    response = httpx.get(stack.broker_url + "/deliveries", timeout=60)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def failure_records(stack: LocalStack) -> list[dict[str, Any]]:
    folder = stack.failures_root
    return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []


def submit(stack: LocalStack, item_ids: list[str], collection: str) -> None:
    for item_id in item_ids:
        source = item_url(stack.sample_url, collection, item_id)
        stack.publish(convert_requested_event(source, item_id, collection))


def wait_until_settled(
    stack: LocalStack, item_ids: list[str], timeout: float, on_progress: Any = None
) -> dict[str, int]:
    """Until every item has augment.done or a failure record; counts per outcome."""
    deadline = time.monotonic() + timeout
    wanted = set(item_ids)
    while True:
        done = {
            e["event"]["attributes"]["subject"]
            for e in journal(stack, type=EventType.AUGMENT_DONE.value)
        }
        failed = {r["item_id"] for r in failure_records(stack)}
        settled = (done | failed) & wanted
        if on_progress is not None:
            on_progress(len(done & wanted))
        if settled == wanted or time.monotonic() > deadline:
            return {"done": len(done & wanted), "failed": len((failed - done) & wanted)}
        time.sleep(1.0)


def write_samples(stack: LocalStack, prefix: str, count: int) -> tuple[list[str], str]:
    """One real sample product, and `count` item ids that point at copies of its item."""
    base = write_sample(stack.samples_dir, "l2a", scale=SCALE, item_id=f"{prefix}_0000")
    item = json.loads(base.item_path.read_text())
    ids = [f"{prefix}_{index:04d}" for index in range(count)]
    for item_id in ids[1:]:
        path = base.item_path.with_name(f"{item_id}.json")
        path.write_text(json.dumps({**item, "id": item_id}))
    return ids, base.collection


def load_scenario(root: Path, items: int, fault_rate: float, seed: int) -> dict[str, Any]:
    with chaos_stack(root, fault_rate, seed) as (stack, proxies):
        ids, collection = write_samples(stack, "S2A_MSIL2A_CHAOS", items)
        started = time.monotonic()
        submit(stack, ids, collection)
        killed = {"done": False}

        def kill_register_halfway(done: int) -> None:
            if not killed["done"] and done >= items // 2:
                old = stack.kill("geozarr-register")
                stack.wait_restarted("geozarr-register", old)
                killed["done"] = True

        counts = wait_until_settled(stack, ids, timeout=3600, on_progress=kill_register_halfway)
        elapsed = time.monotonic() - started
        done_events = journal(stack, type=EventType.AUGMENT_DONE.value)
        per_item = Counter(e["event"]["attributes"]["subject"] for e in done_events)
        ids_per_item: dict[str, set[str]] = {}
        for entry in done_events:
            attributes = entry["event"]["attributes"]
            ids_per_item.setdefault(attributes["subject"], set()).add(attributes["id"])
        catalog_items = Counter(
            p.stem for p in (stack.root / "catalog").rglob("*.json") if p.stem in set(ids)
        )
        injected_ids = set().union(*(p.injected for p in proxies))
        records = failure_records(stack)
        recorded_inputs = {r["input"]["id"] for r in records}
        unresolved = [
            d
            for d in deliveries(stack)
            if d["event"]["id"] in injected_ids
            and d["outcome"] != "delivered"
            and d["event"]["id"] not in recorded_inputs
        ]
        return {
            "items": items,
            "fault_rate": fault_rate,
            "elapsed_s": round(elapsed, 1),
            "augment_done": counts["done"],
            "failure_records": len(records),
            "lost": items - counts["done"] - counts["failed"],
            "duplicated_augment_done_ids": sum(1 for s in ids_per_item.values() if len(s) > 1),
            "augment_done_events_beyond_one": sum(n - 1 for n in per_item.values() if n > 1),
            "duplicated_catalog_items": sum(1 for n in catalog_items.values() if n > 1),
            "injected_503": sum(sum(p.injected.values()) for p in proxies),
            "injected_unresolved": len(unresolved),
            "register_restarts": stack.restarts.get("geozarr-register", 0),
        }


def store_is_complete(output_url: str) -> bool:
    import xarray as xr

    store = Path(output_url.removeprefix("file://"))
    marker = store.with_name(store.name + ".done.json")
    if not marker.exists():
        return False
    tree = xr.open_datatree(store, engine="zarr")
    for node in tree.subtree:
        for variable in node.data_vars.values():
            variable.values  # noqa: B018 - reads every chunk
    return True


def convert_kill_scenario(root: Path, fractions: list[float]) -> dict[str, Any]:
    """Kill convert at `fractions` of a measured conversion, timed from its request."""
    with chaos_stack(root, 0.0, 0) as (stack, proxies):
        convert_proxy = proxies[list(FUNCTION_SERVICES).index("geozarr-convert")]
        ids, collection = write_samples(stack, "S2A_MSIL2A_KILLCONV", len(fractions) + 1)
        submit(stack, ids[:1], collection)
        wait_until_settled(stack, ids[:1], timeout=600)
        [first] = [d for d in deliveries(stack) if d["queue"] == "geozarr-convert"]
        convert_s = float(first["attempts"][-1]["elapsed_s"])
        kills = []
        for item_id, fraction in zip(ids[1:], fractions, strict=True):
            submit(stack, [item_id], collection)
            while item_id not in convert_proxy.first_forwarded:
                time.sleep(0.01)
            time.sleep(convert_s * fraction)
            old = stack.kill("geozarr-convert")
            stack.wait_restarted("geozarr-convert", old)
            kills.append({"item": item_id, "after_s": round(convert_s * fraction, 2)})
        wait_until_settled(stack, ids, timeout=1200)
        convert_attempts = {
            d["event"]["subject"]: len(d["attempts"])
            for d in deliveries(stack)
            if d["queue"] == "geozarr-convert"
        }
        registered = journal(stack, type=EventType.REGISTER_DONE.value)
        complete = [store_is_complete(e["event"]["data"]["output_url"]) for e in registered]
        return {
            "convert_s": round(convert_s, 2),
            "kills": kills,
            "killed_conversions_redone": sum(
                1 for kill in kills if convert_attempts.get(kill["item"], 0) >= 2
            ),
            "registered": len(registered),
            "registered_incomplete_stores": complete.count(False),
            "augment_done": len(journal(stack, type=EventType.AUGMENT_DONE.value)),
            "convert_restarts": stack.restarts.get("geozarr-convert", 0),
        }


def broker_kill_scenario(root: Path, items: int) -> dict[str, Any]:
    with chaos_stack(root, 0.0, 0) as (stack, _):
        ids, collection = write_samples(stack, "S2A_MSIL2A_KILLBROKER", items)
        submit(stack, ids, collection)
        accepted = len(journal(stack, origin="ingress"))
        while len(journal(stack, type=EventType.CONVERT_DONE.value)) < 2:
            time.sleep(0.2)
        old = stack.kill("broker")
        stack.wait_restarted("broker", old)
        counts = wait_until_settled(stack, ids, timeout=1800)
        per_item = Counter(
            e["event"]["attributes"]["subject"]
            for e in journal(stack, type=EventType.AUGMENT_DONE.value)
        )
        return {
            "items": items,
            "accepted_before_kill": accepted,
            "augment_done": counts["done"],
            "failed": counts["failed"],
            "lost": items - counts["done"] - counts["failed"],
            "augment_done_events_beyond_one": sum(n - 1 for n in per_item.values() if n > 1),
            "broker_restarts": stack.restarts.get("broker", 0),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--broker-items", type=int, default=20)
    parser.add_argument(
        "--scenario", choices=["load", "convert-kills", "broker-kill", "all"], default="all"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="geozarr-chaos-") as tmp:
        root = Path(tmp)
        if args.scenario in ("load", "all"):
            results["load"] = load_scenario(root / "load", args.items, args.fault_rate, args.seed)
            print(json.dumps({"load": results["load"]}), flush=True)
        if args.scenario in ("convert-kills", "all"):
            fractions = [0.1, 0.3, 0.5, 0.7, 0.9]
            results["convert_kills"] = convert_kill_scenario(root / "convert", fractions)
            print(json.dumps({"convert_kills": results["convert_kills"]}), flush=True)
        if args.scenario in ("broker-kill", "all"):
            results["broker_kill"] = broker_kill_scenario(root / "broker", args.broker_items)
            print(json.dumps({"broker_kill": results["broker_kill"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
