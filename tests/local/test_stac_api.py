"""The local STAC API's PostgreSQL: a failed start leaves nothing running behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geozarr_local.stac_api import LocalPostgres


def test_a_failed_migration_stops_the_database_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_migrate(self: LocalPostgres) -> None:
        raise RuntimeError("pypgstac migrate failed (injected)")

    monkeypatch.setattr(LocalPostgres, "migrate", broken_migrate)
    postgres = LocalPostgres(data_dir=tmp_path)
    with pytest.raises(RuntimeError, match="injected"):
        postgres.start()
    assert postgres.process is not None, "the server had been started"
    with pytest.raises(ProcessLookupError):
        os.kill(postgres.process.pid, 0)
    assert postgres.cluster_dir is not None
    assert not postgres.cluster_dir.exists()
