"""A local STAC API: PostgreSQL + pgstac + stac-fastapi-pgstac (Transactions) on loopback.

Run as `python -m geozarr_local.stac_api --host 127.0.0.1 --port N --data-dir D`.
It starts a private PostgreSQL server (as user `postgres` when run as root), migrates pgstac
into it, then serves stac-fastapi-pgstac in this process with `GET /healthz` added. Stopping
this process (SIGTERM/SIGINT) stops the database it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geozarr_local.processes import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    http_ready,
    tcp_ready,
)

PG_USER = "postgres"
PG_PASSWORD = "postgres"  # noqa: S105 - loopback-only throwaway server with trust auth
PG_DATABASE = "postgres"
CLUSTER_POINTER = "cluster-dir"


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL server binaries (Debian layout)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return versions[-1].parent


def _as_postgres(command: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: switch to the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *command]
    return list(command)


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(PG_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class LocalPostgres:
    """A private PostgreSQL server with pgstac migrated, in its own data directory."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    cluster_dir: Path | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@{LOOPBACK}:{self.port}/{PG_DATABASE}"

    def env(self) -> dict[str, str]:
        """The libpq variables stac-fastapi-pgstac reads."""
        return {
            "PGHOST": LOOPBACK,
            "PGPORT": str(self.port),
            "PGUSER": PG_USER,
            "PGPASSWORD": PG_PASSWORD,
            "PGDATABASE": PG_DATABASE,
        }

    def start(self) -> LocalPostgres:
        bin_dir = postgres_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The cluster lives in a short /tmp path the postgres user can reach (a pytest tmp dir
        # is private to root, and socket paths are limited to ~100 characters).
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="geozarr-pg-"))
        (self.data_dir / CLUSTER_POINTER).write_text(str(self.cluster_dir))
        try:
            self._start_cluster(bin_dir, self.cluster_dir)
            self.migrate()
        except BaseException:
            self.stop()  # never leave a half-started server or its cluster behind
            raise
        return self

    def _start_cluster(self, bin_dir: Path, cluster_dir: Path) -> None:
        _chown_to_postgres(cluster_dir)
        pgdata = cluster_dir / "pgdata"
        sockets = cluster_dir / "sockets"
        for path in (pgdata, sockets):
            path.mkdir()
            _chown_to_postgres(path)
        result = subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    *("-D", str(pgdata), "-A", "trust", "-U", PG_USER),
                    *("--no-sync", "-E", "UTF8"),
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        self.process = ManagedProcess(
            name="postgres",
            command=_as_postgres(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(pgdata),
                    "-p",
                    str(self.port),
                    "-k",
                    str(sockets),
                    "-c",
                    f"listen_addresses={LOOPBACK}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ]
            ),
            log_path=self.data_dir / "postgres.log",
        ).start()
        self.process.wait_ready(tcp_ready(self.port), timeout=60)

    def migrate(self) -> None:
        pypgstac = shutil.which("pypgstac") or str(Path(sys.executable).parent / "pypgstac")
        result = subprocess.run(
            [pypgstac, "migrate", "--dsn", self.dsn],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pypgstac migrate failed:\n{result.stdout}\n{result.stderr}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=20)
        if self.cluster_dir is not None:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)


def reap(data_dir: Path) -> None:
    """Stop and remove a cluster left behind by a server that was killed (SIGKILL skips its
    own cleanup): the postmaster's PID is the first line of its `postmaster.pid`."""
    pointer = data_dir / CLUSTER_POINTER
    if not pointer.exists():
        return
    cluster = Path(pointer.read_text().strip())
    pid_file = cluster / "pgdata" / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGINT)  # fast shutdown
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
    shutil.rmtree(cluster, ignore_errors=True)
    pointer.unlink(missing_ok=True)


def api_env(postgres: LocalPostgres) -> dict[str, str]:
    """Environment of a stac-fastapi-pgstac server on this database, Transactions enabled."""
    return {
        **postgres.env(),
        "ENABLE_TRANSACTIONS_EXTENSIONS": "TRUE",
        "DB_MIN_CONN_SIZE": "1",
        "DB_MAX_CONN_SIZE": "4",
    }


def serve(host: str, port: int, data_dir: Path) -> int:
    """Start PostgreSQL, migrate, serve the API until interrupted, then stop PostgreSQL."""
    import uvicorn

    def stop_on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal with the
    # handler it found: this one turns it into SystemExit so the database is stopped below.
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    postgres = LocalPostgres(data_dir=data_dir).start()
    try:
        os.environ.update(api_env(postgres))
        from fastapi import FastAPI
        from stac_fastapi.pgstac.app import create_app  # type: ignore[import-untyped]

        app: FastAPI = create_app()

        @app.get("/healthz", include_in_schema=False)
        def healthz() -> dict[str, str]:
            return {"status": "ok"}

        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        postgres.stop()
    return 0


@contextlib.contextmanager
def running_api(data_dir: Path, log_path: Path, timeout: float = 120) -> Iterator[str]:
    """This module as a server process on a free loopback port: yields its URL once ready,
    then stops it by PID and reaps its database."""
    port = free_port()
    process = ManagedProcess(
        name="stac-api",
        command=[
            sys.executable,
            "-m",
            "geozarr_local.stac_api",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        log_path=log_path,
    ).start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        process.wait_ready(http_ready(f"{url}/_mgmt/ping"), timeout=timeout)
        yield url
    finally:
        process.stop(grace=30)
        reap(data_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)


def _serve_command(args: argparse.Namespace) -> int:
    return serve(args.host, args.port, args.data_dir)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = subparsers.add_parser(
        "stac-api",
        help="serve a local STAC API (PostgreSQL + pgstac + stac-fastapi-pgstac, Transactions)",
    )
    add_arguments(api)
    api.set_defaults(func=_serve_command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    return _serve_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
