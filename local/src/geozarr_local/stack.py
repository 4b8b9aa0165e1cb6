"""The whole pipeline on one machine: sample server, three functions, failure recorder,
broker, raster server.

Every part is a real server process on a free loopback port, started here and stopped by
its PID; the broker routes by the Trigger manifests in `knative/`. A process that dies is
started again on the same port (and the broker on the same state folder), as Kubernetes
restarts a pod: the broker then redelivers what it had not finished.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_local.broker.commands import default_manifests
from geozarr_local.processes import (
    LOOPBACK,
    ManagedProcess,
    ServiceFailed,
    free_port,
    http_ready,
    module_command,
)
from geozarr_pipeline.broker_client import wait_for_event
from geozarr_pipeline.events import EventType

log = logging.getLogger(__name__)

FAILURE_RECORDER = "geozarr-failures"
SUPERVISE_INTERVAL_SECONDS = 0.2
# A component that dies within this long after a restart waits longer before the next one.
RESTART_BACKOFF_RESET_SECONDS = 30.0
RESTART_BACKOFF_SECONDS = 0.5
MAX_RESTART_BACKOFF_SECONDS = 30.0
FUNCTION_SERVICES = {
    "geozarr-convert": "geozarr_convert.main",
    "geozarr-register": "geozarr_register.main",
    "geozarr-augment": "geozarr_augment.main",
}


def function_source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"function module {module} is not installed")
    return Path(spec.origin)


def function_command(module: str, port: int, python: str = sys.executable) -> list[str]:
    """The functions-framework server of one stage entrypoint, as its image runs it."""
    source = str(function_source(module))
    target = ("--target", "handle", "--source", source)
    return module_command("functions_framework", port, *target, python=python)


@dataclass
class LocalStack:
    """Start with `with LocalStack(root) as stack:`; every process is stopped on exit."""

    root: Path
    manifests: Path = field(default_factory=default_manifests)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Fixed ports by component name ("broker", "samples", "raster"); others are picked free.
    ports: dict[str, int] = field(default_factory=dict)
    # URLs the broker delivers to instead of a Service's own (a fault-injecting proxy).
    subscriber_urls: dict[str, str] = field(default_factory=dict)
    # Register into a local STAC API (PostgreSQL + pgstac + stac-fastapi-pgstac) started for
    # the run, instead of the static catalog.
    stac_api: bool = False
    # Take GEOZARR_* settings from this process's environment over the embedded defaults
    # (e.g. GEOZARR_OUTPUT_ROOT=s3://... with GEOZARR_S3_*): a rehearsal of production.
    inherit_env: bool = False
    processes: list[ManagedProcess] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    # How often each component was started again after it died.
    restarts: dict[str, int] = field(default_factory=dict)
    _probes: dict[str, Callable[[], bool]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None
    _services: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def failures_root(self) -> Path:
        """Where the recorder writes (a folder: with an s3:// root use the CLI instead)."""
        env = self.settings_env()
        return Path(env.get("GEOZARR_FAILURES_ROOT") or f"{env['GEOZARR_OUTPUT_ROOT']}/_failures")

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def broker_url(self) -> str:
        return self.urls["broker"]

    @property
    def sample_url(self) -> str:
        return self.urls["samples"]

    @property
    def raster_url(self) -> str:
        return self.urls["raster"]

    def settings_env(self) -> dict[str, str]:
        """The GEOZARR_* settings every function and the raster server share.

        Embedded defaults, then (with `inherit_env`) the caller's own GEOZARR_* variables,
        then the started STAC API, then `extra_env`; the raster server is always the stack's.
        """
        settings = self._default_env()
        if self.inherit_env:
            settings |= {k: v for k, v in os.environ.items() if k.startswith("GEOZARR_")}
        if "stac-api" in self.urls:
            settings["GEOZARR_CATALOG_BACKEND"] = "stac-api"
            settings["GEOZARR_STAC_API_URL"] = self.urls["stac-api"]
        return {**settings, **self.extra_env, "GEOZARR_RASTER_API_URL": self.urls["raster"]}

    def _default_env(self) -> dict[str, str]:
        return {
            "GEOZARR_OUTPUT_ROOT": str(self.root / "geozarr"),
            "GEOZARR_WORK_DIR": str(self.root / "work"),
            "GEOZARR_CATALOG_BACKEND": "static",
            "GEOZARR_CATALOG_ROOT": str(self.root / "catalog"),
            "GEOZARR_ALLOW_FILE_URLS": "true",
            "GEOZARR_ALLOW_PLAIN_HTTP": "true",
            "GEOZARR_ALLOW_PRIVATE_HOSTS": "true",
        }

    def _start(
        self,
        name: str,
        command: Callable[[int], list[str]],
        ready_path: str,
        env: dict[str, str] | None = None,
    ) -> str:
        port = self.ports.get(name) or free_port()
        url = f"http://{LOOPBACK}:{port}"
        process = ManagedProcess(
            name=name,
            command=command(port),
            log_path=self.root / "logs" / f"{name}.log",
            env=env or {},
        ).start()
        self.processes.append(process)
        probe = http_ready(url + ready_path)
        process.wait_ready(probe, timeout=120)
        self._probes[name] = probe
        self.urls[name] = url
        return url

    def process(self, name: str) -> ManagedProcess:
        with self._lock:
            return next(p for p in self.processes if p.name == name)

    def kill(self, name: str) -> int:
        """SIGKILL a component's process group (the supervisor starts it again); its old PID."""
        pid = self.process(name).pid
        os.killpg(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 120.0) -> None:
        """Until a new process of the component answers its readiness probe."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.process(name)
            if current.pid != old_pid and self._probes[name]():
                return
            time.sleep(0.1)
        raise ServiceFailed(f"{name} was not restarted within {timeout}s")

    def _supervise(self) -> None:
        """Restart what died, with a growing delay for what keeps dying (as CrashLoopBackOff)."""
        delays: dict[str, float] = {}
        started_at: dict[str, float] = {}
        while not self._stopping.wait(SUPERVISE_INTERVAL_SECONDS):
            with self._lock:
                dead = [p for p in self.processes if p.process and p.process.poll() is not None]
            for process in dead:
                now = time.monotonic()
                if now - started_at.get(process.name, 0.0) > RESTART_BACKOFF_RESET_SECONDS:
                    delays[process.name] = 0.0
                if self._stopping.wait(delays.get(process.name, 0.0)):
                    return
                # The leader is gone; its workers (gunicorn's) may still hold the port.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                log.warning("restarting a dead component", extra={"component": process.name})
                replacement = ManagedProcess(
                    name=process.name,
                    command=process.command,
                    log_path=process.log_path,
                    env=process.env,
                )
                try:
                    replacement.start()
                except OSError:
                    log.exception("cannot restart a component", extra={"component": process.name})
                    continue
                started_at[process.name] = time.monotonic()
                delays[process.name] = min(
                    max(2 * delays.get(process.name, 0.0), RESTART_BACKOFF_SECONDS),
                    MAX_RESTART_BACKOFF_SECONDS,
                )
                with self._lock:
                    self.processes[self.processes.index(process)] = replacement
                    self.restarts[process.name] = self.restarts.get(process.name, 0) + 1

    def start(self) -> LocalStack:
        self._stopping.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        python = sys.executable
        # The functions' settings name the raster server, so its port is fixed first.
        self.ports.setdefault("raster", free_port())
        self.urls["raster"] = f"http://{LOOPBACK}:{self.ports['raster']}"
        if self.stac_api:
            from geozarr_local.stac_api import running_api

            self.urls["stac-api"] = self._services.enter_context(
                running_api(self.root / "stac-api", self.root / "logs" / "stac-api.log")
            )
        env = self.settings_env()

        def module_server(module: str, *args: str) -> Callable[[int], list[str]]:
            return lambda port: module_command(module, port, *args, python=python)

        try:
            self._start("raster", module_server("geozarr_local.raster"), "/healthz", env)
            self._start(
                "samples",
                module_server("geozarr_local.sample.server", "--root", str(self.samples_dir)),
                "/healthz",
            )
            recorder = self._start(
                FAILURE_RECORDER,
                module_server("geozarr_pipeline.failures.recorder"),
                "/healthz",
                env,
            )
            subscribers = [
                "--subscriber",
                f"{FAILURE_RECORDER}={self.subscriber_urls.get(FAILURE_RECORDER, recorder)}",
            ]
            for service, module in FUNCTION_SERVICES.items():
                url = self._start(
                    service, partial(function_command, module, python=python), "/", env
                )
                subscribers += [
                    "--subscriber",
                    f"{service}={self.subscriber_urls.get(service, url)}",
                ]
            broker = module_server(
                "geozarr_local.broker",
                "--manifests",
                str(self.manifests),
                "--state-dir",
                str(self.root / "broker"),
                *subscribers,
            )
            self._start("broker", broker, "/healthz")
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(
            target=self._supervise, name="stack-supervisor", daemon=True
        )
        self._supervisor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        self._services.close()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def publish(self, event: CloudEvent) -> int:
        """Send an event to the broker ingress in binary mode; returns its journal seq."""
        headers, body = to_binary(event)
        response = httpx.post(self.broker_url + "/", headers=headers, content=body, timeout=30)
        response.raise_for_status()
        seq: int = response.json()["seq"]
        return seq

    def events(self, event_type: str | None = None, subject: str | None = None) -> list[Any]:
        params = {k: v for k, v in (("type", event_type), ("subject", subject)) if v}
        response = httpx.get(self.broker_url + "/events", params=params, timeout=30)
        response.raise_for_status()
        entries: list[Any] = response.json()
        return entries

    def wait_for(
        self, event_type: str, subject: str, timeout: float = 300.0, after: int = 0
    ) -> dict[str, Any]:
        """The data of the first such event after journal seq `after`; raises RunFailed."""
        entry = wait_for_event(
            self.broker_url, event_type=event_type, subject=subject, timeout=timeout, after=after
        )
        data: dict[str, Any] = entry["event"]["data"]
        return data

    def wait_for_chain(
        self, subject: str, timeout: float = 300.0, after: int = 0
    ) -> dict[str, Any]:
        return self.wait_for(EventType.AUGMENT_DONE.value, subject, timeout, after)
