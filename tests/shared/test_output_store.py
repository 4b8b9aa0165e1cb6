"""Output locations: marker, staging, leases on the filesystem and on a loopback S3 API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from geozarr_pipeline import output_store
from geozarr_pipeline.errors import InProgress, InvalidInput, TransientError
from tests.fixtures.s3 import S3Server
from tests.shared.convert.conftest import local_settings, s3_settings


def test_local_location_is_deterministic_and_contained(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    location = output_store.output_for(settings, "sentinel-2-l2a", "S2A_X")
    assert location.url == str((tmp_path / "geozarr/sentinel-2-l2a/S2A_X.zarr").resolve())
    for collection, item_id in (("..", "x"), ("c", "../x"), ("c", "a/b"), ("/abs", "x")):
        with pytest.raises(ValueError, match="not a safe identifier"):
            output_store.output_for(settings, collection, item_id)
    with pytest.raises(InvalidInput):
        output_store.output_for(local_settings(tmp_path, output_root="gs://b/p"), "c", "x")


def test_local_lease_is_exclusive_until_released(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    first = output_store.output_for(settings, "c", "item").acquire(60)
    with pytest.raises(InProgress):
        output_store.output_for(settings, "c", "item").acquire(60)
    other_item = output_store.output_for(settings, "c", "other").acquire(60)
    first.release()
    output_store.output_for(settings, "c", "item").acquire(60).release()
    other_item.release()


def test_local_publish_is_a_rename_and_marker_comes_last(tmp_path: Path) -> None:
    location = output_store.output_for(local_settings(tmp_path), "c", "item")
    assert isinstance(location, output_store.LocalOutput)
    location.prepare()
    staged = Path(location.write_url)
    staged.mkdir()
    (staged / "zarr.json").write_text("{}")
    assert not location.store_exists()
    location.publish()
    assert location.store_exists()
    assert not staged.exists()
    assert location.read_marker() is None
    location.write_marker({"format": output_store.MARKER_FORMAT, "done": {}})
    assert location.read_marker() == {"format": output_store.MARKER_FORMAT, "done": {}}
    location.clear()
    assert location.read_marker() is None
    assert not location.store_exists()


def test_s3_lease_is_exclusive_and_expires(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    settings = s3_settings(tmp_path, s3_server, s3_bucket)
    location = output_store.output_for(settings, "c", "item")
    assert isinstance(location, output_store.S3Output)
    lease = location.acquire(60)
    with pytest.raises(InProgress):
        output_store.output_for(settings, "c", "item").acquire(60)
    lease.verify()
    lease.release()
    assert f"geozarr/c/item.zarr{output_store.LOCK_SUFFIX}" not in s3_server.keys(s3_bucket)

    # A holder that died leaves its lock object behind: taken over only once expired.
    client = s3_server.client()
    stale = {"owner": "dead", "expires_at": time.time() + 1.5}
    client.put_object(Bucket=s3_bucket, Key=location.lock_key, Body=json.dumps(stale))
    with pytest.raises(InProgress):
        output_store.output_for(settings, "c", "item").acquire(60)
    time.sleep(1.6)
    taken = output_store.output_for(settings, "c", "item").acquire(60)
    taken.verify()
    taken.release()


def test_s3_lease_lost_to_a_takeover_is_noticed(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    settings = s3_settings(tmp_path, s3_server, s3_bucket)
    first = output_store.output_for(settings, "c", "item").acquire(0.3)
    assert isinstance(first, output_store._S3Lease)
    first._stop.set()  # the holder hangs: it no longer renews its lease
    time.sleep(0.5)
    second = output_store.output_for(settings, "c", "item").acquire(60)
    with pytest.raises(InProgress, match="lost the lease"):
        first.verify()
    first.release()
    second.verify()
    second.release()


def test_s3_staged_publish_uploads_and_clear_removes(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    location = output_store.output_for(s3_settings(tmp_path, s3_server, s3_bucket), "c", "item")
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="geozarr/c/item.zarr/stale/0.0", Body=b"x")
    location.clear()
    location.prepare()
    assert s3_server.keys(s3_bucket, "geozarr/c/item.zarr/") == []
    staged = Path(location.write_url)
    (staged / "b" / "c").mkdir(parents=True)
    (staged / "zarr.json").write_text("{}")
    (staged / "b" / "zarr.json").write_text("{}")
    (staged / "b" / "c" / "0").write_bytes(b"data")
    location.publish()
    assert sorted(s3_server.keys(s3_bucket, "geozarr/c/item.zarr/")) == [
        "geozarr/c/item.zarr/b/c/0",
        "geozarr/c/item.zarr/b/zarr.json",
        "geozarr/c/item.zarr/zarr.json",
    ]
    assert not staged.exists()
    assert location.store_exists()
    location.write_marker({"format": output_store.MARKER_FORMAT, "done": {"x": 1}})
    assert location.read_marker() == {"format": output_store.MARKER_FORMAT, "done": {"x": 1}}
    location.clear()
    assert s3_server.keys(s3_bucket) == []


def test_s3_location_closes_its_client_on_exit(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    settings = s3_settings(tmp_path, s3_server, s3_bucket)
    with output_store.output_for(settings, "c", "item") as location:
        assert isinstance(location, output_store.S3Output)
        assert not location.store_exists()
        client = location._client
        assert client is not None
    assert location._client is None
    # A closed location opens a new client if it is used again.
    assert not location.store_exists()
    assert location._client is not client
    location.close()


def test_s3_clear_is_transient_when_a_leftover_stays(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "geozarr/c/item.zarr/b/c/0"
    s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=b"stale")
    settings = s3_settings(tmp_path, s3_server, s3_bucket, retry_s3_backoff_seconds=0.0)
    batches: list[dict[str, Any]] = []
    with output_store.output_for(settings, "c", "item") as location:
        assert isinstance(location, output_store.S3Output)

        def refusing(**kwargs: Any) -> dict[str, Any]:
            # What S3 answers when some keys of a batch delete fail (moto never does).
            batches.append(kwargs)
            return {"Errors": [{"Key": key, "Code": "InternalError", "Message": "try again"}]}

        monkeypatch.setattr(location.client, "delete_objects", refusing)
        with pytest.raises(TransientError, match="could not delete 1 leftover"):
            location.clear()
    # Listed and deleted again under the S3 retry policy, then left to the broker.
    assert len(batches) == settings.retry_s3_attempts
    assert s3_server.keys(s3_bucket) == [key]


class FailFirstSends:
    """Answers the first `count` requests of an S3 operation with a 503 SlowDown, as S3 does,
    before botocore sends them; the later ones go to the server."""

    def __init__(self, client: Any, operation: str, count: int) -> None:
        self.left = count
        self.failed: list[str] = []
        client.meta.events.register(f"before-send.s3.{operation}", self)

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        if self.left <= 0:
            return None
        self.left -= 1
        self.failed.append(request.url)
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your rate</Message></Error>"

        class Raw:
            def stream(self, **_: Any) -> Any:
                yield body

        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, Raw())


def test_s3_upload_retried_after_a_slow_down_sends_the_whole_file(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """Each attempt reopens the staged file: the retried upload is the whole chunk."""
    settings = s3_settings(tmp_path, s3_server, s3_bucket, retry_s3_backoff_seconds=0.0)
    with output_store.output_for(settings, "c", "item") as location:
        assert isinstance(location, output_store.S3Output)
        location.prepare()
        staged = Path(location.write_url)
        (staged / "b").mkdir(parents=True)
        (staged / "zarr.json").write_text("{}")
        chunk = bytes(range(256)) * 1024
        (staged / "b" / "0").write_bytes(chunk)
        faults = FailFirstSends(location.client, "PutObject", 2)
        location.publish()
        assert len(faults.failed) == 2
    stored = s3_server.client().get_object(Bucket=s3_bucket, Key="geozarr/c/item.zarr/b/0")
    assert stored["Body"].read() == chunk
