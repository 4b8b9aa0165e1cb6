"""`geozarr-pipeline delete` and `cleanup`: against real stores (a folder, a loopback S3 API)
and real catalogs (static on disk, stac-fastapi-pgstac), called in-process through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from geozarr_pipeline import output_store
from geozarr_pipeline.catalog import opened_catalog
from geozarr_pipeline.cli import main
from geozarr_pipeline.config import Settings
from geozarr_pipeline.operations import removal
from tests.fixtures.s3 import S3Server
from tests.fixtures.stac_api import FaultProxy, StacApiInfo

COLLECTION = "sentinel-2-l2a"
OLD = datetime.now(UTC) - timedelta(days=40)
RECENT = datetime.now(UTC) - timedelta(days=10)


# Setup ----------------------------------------------------------------------------------


@dataclass
class Env:
    """The GEOZARR_* environment of one test and a way to look at everything it stores."""

    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    s3: S3Server | None = None
    bucket: str | None = None

    def set(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(f"GEOZARR_{name.upper()}", value)

    def settings(self) -> Settings:
        return Settings()

    def files(self) -> dict[str, str]:
        """Every file and folder under tmp_path (with a hash of its content)."""
        found: dict[str, str] = {}
        for path in sorted(self.tmp_path.rglob("*")):
            key = str(path.relative_to(self.tmp_path))
            is_file = path.is_file() and not path.is_symlink()
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if is_file else "dir"
        return found

    def objects(self) -> dict[str, str]:
        if self.s3 is None or self.bucket is None:
            return {}
        client = self.s3.client()
        return {
            key: client.head_object(Bucket=self.bucket, Key=key)["ETag"]
            for key in self.s3.keys(self.bucket)
        }

    def everything(self) -> tuple[dict[str, str], dict[str, str]]:
        return self.files(), self.objects()


def _local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    for name in [n for n in os.environ if n.startswith("GEOZARR_")]:
        monkeypatch.delenv(name)
    env = Env(tmp_path, monkeypatch)
    env.set(
        output_root=str(tmp_path / "geozarr"),
        work_dir=str(tmp_path / "work"),
        catalog_backend="static",
        catalog_root=str(tmp_path / "catalog"),
        convert_lease_seconds="30",
    )
    return env


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return _local_env(tmp_path, monkeypatch)


@pytest.fixture
def on_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: S3Server, s3_bucket: str
) -> Env:
    env = _local_env(tmp_path, monkeypatch)
    env.s3, env.bucket = s3_server, s3_bucket
    env.set(output_root=f"s3://{s3_bucket}/geozarr")
    for name, value in s3_server.settings_env().items():
        monkeypatch.setenv(name, value)
    return env


def _item(collection: str, item_id: str) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": collection,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[1.0, 2.0], [1.5, 2.0], [1.5, 2.5], [1.0, 2.5], [1.0, 2.0]]],
        },
        "bbox": [1.0, 2.0, 1.5, 2.5],
        "properties": {"datetime": "2025-01-01T00:00:00Z"},
        "links": [],
        "assets": {},
    }


def make_output(
    settings: Settings,
    item_id: str,
    completed_at: datetime | None,
    collection: str = COLLECTION,
    *,
    store: bool = True,
    marker: bool = True,
    item: bool = True,
) -> str:
    """A small converted output the way convert makes one (staged, published, then marked),
    and its catalog item; the store URL."""
    with output_store.output_for(settings, collection, item_id) as location:
        location.prepare()
        if store:
            staged = Path(location.write_url)
            (staged / "measurements" / "b02").mkdir(parents=True)
            (staged / "zarr.json").write_text('{"zarr_format": 3}')
            (staged / "measurements" / "b02" / "zarr.json").write_text("{}")
            (staged / "measurements" / "b02" / "c.0.0").write_bytes(os.urandom(64))
            location.publish()
        if marker:
            stamp = (completed_at or datetime.now(UTC)).isoformat(timespec="seconds")
            location.write_marker(
                {
                    "format": output_store.MARKER_FORMAT,
                    "done": {"item_id": item_id},
                    "completed_at": stamp,
                }
            )
        url = location.url
    if item:
        with opened_catalog(settings) as catalog:
            catalog.put_item(_item(collection, item_id), "upsert")
    return url


def _backdate(path: Path, when: datetime) -> None:
    """Give a folder and everything in it an old modification time (an old orphan store)."""
    stamp = when.timestamp()
    for inner in [path, *path.rglob("*")]:
        os.utime(inner, (stamp, stamp))


def _items(settings: Settings, collection: str, *ids: str) -> set[str]:
    """Which of `ids` the configured catalog holds."""
    from geozarr_pipeline.errors import SourceNotFound

    present = set()
    with opened_catalog(settings) as catalog:
        for item_id in ids:
            try:
                catalog.get_item(collection, item_id)
            except SourceNotFound:
                continue
            present.add(item_id)
    return present


def _outputs(settings: Settings) -> dict[str, tuple[bool, bool]]:
    return {
        f"{o.collection}/{o.item_id}": (o.marker_present, o.store_present)
        for o in output_store.iter_outputs(settings)
    }


def _audit(env: Env) -> list[dict[str, Any]]:
    """The durable audit records, oldest first."""
    if env.s3 is not None and env.bucket is not None:
        client = env.s3.client()
        keys = sorted(env.s3.keys(env.bucket, f"geozarr/{removal.AUDIT_FOLDER}/"))
        bodies = [client.get_object(Bucket=env.bucket, Key=k)["Body"].read() for k in keys]
    else:
        folder = env.tmp_path / "geozarr" / removal.AUDIT_FOLDER
        bodies = [p.read_bytes() for p in sorted(folder.glob("*.json"))]
    return [json.loads(body) for body in bodies]


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# Durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("P30D", timedelta(days=30)),
        ("PT12H", timedelta(hours=12)),
        ("P1DT6H30M", timedelta(days=1, hours=6, minutes=30)),
        ("p2w", timedelta(weeks=2)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert removal.parse_age(text).delta == expected


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "P", "PT", "P1M", "P1Y", "-3d", "3 days"])
def test_bad_durations_are_refused(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        removal.parse_age(text)


def test_bad_duration_is_a_usage_error(local: Env, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["cleanup", "--older-than", "P1M"])
    assert exited.value.code == 2
    assert "no years or months" in capsys.readouterr().err


# delete, local folder and static catalog ------------------------------------------------


def test_delete_removes_item_then_store_and_writes_an_audit_record(
    local: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = local.settings()
    url = make_output(settings, "S2A_GONE", OLD)
    make_output(settings, "S2A_KEPT", OLD)
    location = output_store.output_for(settings, COLLECTION, "S2A_GONE")
    assert isinstance(location, output_store.LocalOutput)
    # A staging leftover of a killed conversion and the lock file of a finished one.
    leftover = location.staging_folder / "S2A_GONE.zarr.0123456789ab"
    (leftover / "b").mkdir(parents=True)
    location.acquire(30).release()
    assert location.lock.exists()

    assert main(["delete", "S2A_GONE", "--collection", COLLECTION]) == 0
    out = capsys.readouterr().out
    assert f"deleted marker and store of {url}" in out
    assert "deleted item file://" in out

    assert _items(settings, COLLECTION, "S2A_GONE", "S2A_KEPT") == {"S2A_KEPT"}
    assert _outputs(settings) == {f"{COLLECTION}/S2A_KEPT": (True, True)}
    assert not Path(url).exists()
    assert not location.marker.exists()
    assert not location.lock.exists()
    assert not leftover.exists()
    item_folder = local.tmp_path / "catalog" / COLLECTION / "S2A_GONE"
    assert not item_folder.exists()
    assert not [p for p in item_folder.parent.iterdir() if p.name.startswith(".deleted")]

    [record] = _audit(local)
    assert record["format"] == removal.AUDIT_FORMAT
    assert record["reason"] == "delete"
    assert (record["collection"], record["item_id"]) == (COLLECTION, "S2A_GONE")
    assert record["store_url"] == url
    assert record["item_url"].endswith(f"/{COLLECTION}/S2A_GONE/S2A_GONE.json")
    assert record["item_deleted"]
    assert record["marker_deleted"]
    assert record["store_deleted"]
    assert record["completed_at"] == OLD.isoformat(timespec="seconds")
    assert record["by"] == removal.who()
    assert "@" in record["by"]
    assert Path(record["audit_url"]).is_file()
    assert f"audit record {record['audit_url']}" in out


def test_delete_json_prints_the_audit_record(
    local: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    make_output(local.settings(), "S2A_J", RECENT)
    assert main(["delete", "S2A_J", "--collection", COLLECTION, "--json"]) == 0
    assert _lines(capsys.readouterr().out) == _audit(local)


def test_delete_of_nothing_says_so_and_changes_nothing(
    local: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    make_output(local.settings(), "S2A_OTHER", OLD)
    before = local.everything()
    assert main(["delete", "S2A_NOPE", "--collection", COLLECTION]) == 0
    assert "nothing to delete: no item S2A_NOPE" in capsys.readouterr().out
    assert main(["delete", "S2A_NOPE", "--collection", "no-such-collection", "--json"]) == 0
    [line] = _lines(capsys.readouterr().out)
    assert line["result"] == "nothing-to-delete"
    assert local.everything() == before
    assert _audit(local) == []


def test_delete_of_an_item_whose_store_is_gone(
    local: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = local.settings()
    make_output(settings, "S2A_ITEM_ONLY", None, store=False, marker=False)
    assert main(["delete", "S2A_ITEM_ONLY", "--collection", COLLECTION]) == 0
    assert "no store at" in capsys.readouterr().out
    assert _items(settings, COLLECTION, "S2A_ITEM_ONLY") == set()
    [record] = _audit(local)
    assert record["item_deleted"]
    assert not record["store_deleted"]


def test_delete_dry_run_changes_nothing(local: Env, capsys: pytest.CaptureFixture[str]) -> None:
    url = make_output(local.settings(), "S2A_DRY", OLD)
    before = local.everything()
    assert main(["delete", "S2A_DRY", "--collection", COLLECTION, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing was deleted" in out
    assert f"would delete marker and store of {url}" in out
    assert main(["delete", "S2A_DRY", "--collection", COLLECTION, "--dry-run", "--json"]) == 0
    [plan] = _lines(capsys.readouterr().out)
    assert plan["result"] == "would-delete"
    assert plan["item_exists"]
    assert plan["marker"]
    assert plan["store"]
    assert not plan["conversion_running"]
    assert local.everything() == before


def test_delete_refuses_while_a_conversion_holds_the_lease(
    local: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = local.settings()
    make_output(settings, "S2A_BUSY", OLD)
    lease = output_store.output_for(settings, COLLECTION, "S2A_BUSY").acquire(30)
    try:
        before = local.everything()
        assert main(["delete", "S2A_BUSY", "--collection", COLLECTION]) == 1
        err = capsys.readouterr().err
        assert "refused: sentinel-2-l2a/S2A_BUSY is being converted" in err
        assert len(err.strip().splitlines()) == 1
        assert main(["delete", "S2A_BUSY", "--collection", COLLECTION, "--dry-run", "--json"]) == 1
        assert _lines(capsys.readouterr().out)[0]["conversion_running"] is True
        assert local.everything() == before
    finally:
        lease.release()
    assert main(["delete", "S2A_BUSY", "--collection", COLLECTION]) == 0
    assert _outputs(settings) == {}


def test_a_removal_that_stops_half_way_is_recorded_and_fails(
    local: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store the removal cannot take away (a symlink: rmtree refuses it) is never a success."""
    settings = local.settings()
    elsewhere = local.tmp_path / "elsewhere" / "S2A_LINK.zarr"
    elsewhere.mkdir(parents=True)
    (elsewhere / "zarr.json").write_text("{}")
    make_output(settings, "S2A_LINK", OLD, store=False)
    location = output_store.output_for(settings, COLLECTION, "S2A_LINK")
    assert isinstance(location, output_store.LocalOutput)
    location.store.symlink_to(elsewhere, target_is_directory=True)

    assert main(["delete", "S2A_LINK", "--collection", COLLECTION, "--json"]) == 1
    captured = capsys.readouterr()
    assert "is still there after its removal" in captured.err
    [line] = _lines(captured.out)
    [record] = _audit(local)
    assert line == record
    assert record["result"] == "partial"
    assert record["item_deleted"] is True
    assert "still there" in record["error"]
    # The item went first: a search never finds an item whose data is gone.
    assert _items(settings, COLLECTION, "S2A_LINK") == set()


# delete, order against a STAC API -------------------------------------------------------


def test_a_catalog_that_fails_to_delete_leaves_the_store(
    local: Env, stac_api: StacApiInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = FaultProxy(stac_api.url)
    try:
        collection = f"rm-{uuid.uuid4().hex[:8]}"
        local.set(catalog_backend="stac-api", stac_api_url=proxy.url, stac_api_retries="0")
        settings = local.settings()
        url = make_output(settings, "S2A_API", OLD, collection)
        before = local.everything()

        proxy.failures = [("DELETE", 403)]
        assert main(["delete", "S2A_API", "--collection", collection]) == 1
        err = capsys.readouterr().err
        assert err.startswith("delete: STAC API refused deleting item 'S2A_API' (403)")
        assert local.everything() == before, "store, marker and lock untouched"
        assert _items(settings, collection, "S2A_API") == {"S2A_API"}

        proxy.failures = [("DELETE", 503)]
        assert main(["delete", "S2A_API", "--collection", collection]) == 1
        assert "failed after 1 attempts: HTTP 503" in capsys.readouterr().err
        assert local.everything() == before

        assert main(["delete", "S2A_API", "--collection", collection, "--json"]) == 0
        [record] = _lines(capsys.readouterr().out)
        assert record["item_deleted"]
        assert record["store_deleted"]
        assert record["item_url"] == f"{proxy.url}/collections/{collection}/items/S2A_API"
        assert (
            httpx.get(f"{stac_api.url}/collections/{collection}/items/S2A_API").status_code == 404
        )
        assert not Path(url).exists()
        deletes = [(m, p) for m, p, _s in proxy.seen if m == "DELETE"]
        assert deletes == [("DELETE", f"/collections/{collection}/items/S2A_API")] * 3
    finally:
        proxy.close()


# cleanup --------------------------------------------------------------------------------


@pytest.fixture
def aged(local: Env) -> Env:
    """Outputs of every kind and age in two collections, plus folders that are no collection."""
    settings = local.settings()
    make_output(settings, "OLD_A", OLD)
    make_output(settings, "OLD_B", OLD, "sentinel-2-l1c")
    make_output(settings, "RECENT", RECENT)
    make_output(settings, "JUST_NOW", None)
    make_output(settings, "MARKER_ONLY_OLD", OLD, store=False)
    make_output(settings, "ORPHAN_OLD", None, marker=False, item=False)
    make_output(settings, "ORPHAN_NEW", None, marker=False, item=False)
    root = local.tmp_path / "geozarr"
    _backdate(root / COLLECTION / "ORPHAN_OLD.zarr", OLD)
    for name in ("_failures", "_status", ".hidden"):
        (root / name / "X.zarr").mkdir(parents=True)
        _backdate(root / name, OLD)
    return local


EXPIRED = {
    "sentinel-2-l1c/OLD_B",
    f"{COLLECTION}/OLD_A",
    f"{COLLECTION}/MARKER_ONLY_OLD",
    f"{COLLECTION}/ORPHAN_OLD",
}
ALL_IDS = ("OLD_A", "RECENT", "JUST_NOW", "MARKER_ONLY_OLD", "ORPHAN_OLD", "ORPHAN_NEW")


def test_cleanup_dry_run_selects_exactly_the_expired_and_changes_nothing(
    aged: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    before = aged.everything()
    assert main(["cleanup", "--older-than", "30d", "--json"]) == 0
    selected = _lines(capsys.readouterr().out)
    assert {f"{c['collection']}/{c['item_id']}" for c in selected} == EXPIRED
    assert all(c["result"] == "would-delete" for c in selected)
    orphan = next(c for c in selected if c["item_id"] == "ORPHAN_OLD")
    assert (orphan["marker"], orphan["store"], orphan["completed_at"]) == (False, True, None)

    assert main(["cleanup", "--older-than", "30d"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 4 outputs" in out
    assert "nothing was deleted" in out
    assert "orphan store (no marker)" in out
    assert "marker only (store gone)" in out
    assert "RECENT" not in out

    assert main(["cleanup", "--older-than", "P5D", "--collection", COLLECTION, "--json"]) == 0
    ids = {c["item_id"] for c in _lines(capsys.readouterr().out)}
    assert ids == {"OLD_A", "MARKER_ONLY_OLD", "ORPHAN_OLD", "RECENT"}
    assert aged.everything() == before
    assert _audit(aged) == []


def test_cleanup_apply_deletes_exactly_the_expired(
    aged: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = aged.settings()
    outputs_before = _outputs(settings)
    assert main(["cleanup", "--older-than", "30d", "--apply"]) == 0
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert "deleted 4 of 4 outputs older than 30d (0 skipped)" in captured.err

    assert {f"{r['collection']}/{r['item_id']}" for r in lines} == EXPIRED
    assert lines == _audit(aged), "one stdout line and one durable record per deletion"
    assert {r["reason"] for r in lines} == {"cleanup --older-than 30d"}
    assert len({r["audit_url"] for r in lines}) == 4

    kept = {k: v for k, v in outputs_before.items() if k not in EXPIRED}
    assert _outputs(settings) == kept
    assert _items(settings, COLLECTION, *ALL_IDS) == {"RECENT", "JUST_NOW"}
    assert _items(settings, "sentinel-2-l1c", "OLD_B") == set()
    for name in ("_failures", "_status", ".hidden"):
        assert (aged.tmp_path / "geozarr" / name / "X.zarr").is_dir()
    leftovers = [p.name for p in (aged.tmp_path / "geozarr" / COLLECTION).iterdir()]
    assert not [name for name in leftovers if name.startswith(("OLD_A", "MARKER_", "ORPHAN_OLD"))]

    assert main(["cleanup", "--older-than", "30d", "--apply"]) == 0
    assert capsys.readouterr().out == ""
    assert len(_audit(aged)) == 4


def test_cleanup_skips_a_running_conversion(aged: Env, capsys: pytest.CaptureFixture[str]) -> None:
    settings = aged.settings()
    lease = output_store.output_for(settings, COLLECTION, "OLD_A").acquire(30)
    try:
        assert main(["cleanup", "--older-than", "30d", "--collection", COLLECTION, "--apply"]) == 0
    finally:
        lease.release()
    captured = capsys.readouterr()
    assert "skipped sentinel-2-l2a/OLD_A: it is being converted" in captured.err
    assert {r["item_id"] for r in _lines(captured.out)} == {"MARKER_ONLY_OLD", "ORPHAN_OLD"}
    assert f"{COLLECTION}/OLD_A" in _outputs(settings)
    assert _items(settings, COLLECTION, "OLD_A") == {"OLD_A"}


def test_an_output_renewed_since_the_listing_is_kept(local: Env) -> None:
    """Under the lease the output is looked at again: a fresh conversion is no longer expired."""
    settings = local.settings()
    make_output(settings, "RENEWED", RECENT)
    with (
        opened_catalog(settings) as catalog,
        removal.open_audit_log(settings) as audit,
    ):
        emitted: list[dict[str, Any]] = []
        remover = removal.Remover(settings, catalog, audit, "test", emitted.append)
        cutoff = datetime.now(UTC) - timedelta(days=30)
        before = local.everything()
        outcome = remover.remove(COLLECTION, "RENEWED", lambda o: removal._expired(o, cutoff))
        assert outcome.result == "skipped"
        assert emitted == []
        assert local.everything() == before


# On S3 ----------------------------------------------------------------------------------


def test_s3_delete_and_cleanup(on_s3: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert on_s3.s3 is not None
    assert on_s3.bucket is not None
    settings = on_s3.settings()
    make_output(settings, "OLD_A", OLD)
    make_output(settings, "RECENT", RECENT)
    make_output(settings, "MARKER_ONLY_OLD", OLD, store=False)
    # An upload of a store still on its way (no marker yet): new, so never touched.
    make_output(settings, "ORPHAN_NEW", None, marker=False, item=False)
    make_output(settings, "DOOMED", RECENT)
    on_s3.s3.client().put_object(Bucket=on_s3.bucket, Key="geozarr/_failures/x.json", Body=b"{}")

    before = on_s3.everything()
    assert main(["cleanup", "--older-than", "30d", "--json"]) == 0
    selected = {c["item_id"] for c in _lines(capsys.readouterr().out)}
    assert selected == {"OLD_A", "MARKER_ONLY_OLD"}
    assert main(["delete", "DOOMED", "--collection", COLLECTION, "--dry-run"]) == 0
    capsys.readouterr()
    assert on_s3.everything() == before

    assert main(["delete", "DOOMED", "--collection", COLLECTION, "--json"]) == 0
    [deleted] = _lines(capsys.readouterr().out)
    assert deleted["store_url"] == f"s3://{on_s3.bucket}/geozarr/{COLLECTION}/DOOMED.zarr"
    assert deleted["audit_url"].startswith(f"s3://{on_s3.bucket}/geozarr/_audit/deletions/")
    assert not on_s3.s3.keys(on_s3.bucket, f"geozarr/{COLLECTION}/DOOMED.zarr")

    assert main(["cleanup", "--older-than", "30d", "--apply"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert {r["item_id"] for r in lines} == {"OLD_A", "MARKER_ONLY_OLD"}
    assert [deleted, *lines] == _audit(on_s3)

    remaining = on_s3.s3.keys(on_s3.bucket, f"geozarr/{COLLECTION}/")
    assert {k.split("/")[2].split(".zarr")[0] for k in remaining} == {"RECENT", "ORPHAN_NEW"}
    assert f"geozarr/{COLLECTION}/RECENT.zarr{output_store.MARKER_SUFFIX}" in remaining
    assert not [k for k in remaining if k.endswith(output_store.LOCK_SUFFIX)]
    assert on_s3.s3.keys(on_s3.bucket, "geozarr/_failures/") == ["geozarr/_failures/x.json"]
    assert _items(settings, COLLECTION, "OLD_A", "RECENT", "DOOMED") == {"RECENT"}


def test_s3_delete_refuses_while_a_conversion_holds_the_lease(
    on_s3: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = on_s3.settings()
    make_output(settings, "BUSY", OLD)
    lease = output_store.output_for(settings, COLLECTION, "BUSY").acquire(30)
    try:
        before = on_s3.everything()
        assert main(["delete", "BUSY", "--collection", COLLECTION]) == 1
        assert "is being converted right now" in capsys.readouterr().err
        assert main(["delete", "BUSY", "--collection", COLLECTION, "--dry-run"]) == 1
        capsys.readouterr()
        assert on_s3.everything() == before
    finally:
        lease.release()
    assert main(["delete", "BUSY", "--collection", COLLECTION]) == 0
    assert on_s3.objects().keys() == {r["audit_url"].split("/", 3)[3] for r in _audit(on_s3)}


def test_an_unreadable_store_is_one_line_and_exit_1(
    on_s3: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    on_s3.set(output_root="s3://no-such-bucket-here/geozarr")
    assert main(["cleanup", "--older-than", "30d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cleanup: S3 listing of s3://no-such-bucket-here/geozarr/ failed")
    assert len(err.strip().splitlines()) == 1
