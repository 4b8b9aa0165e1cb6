"""Helpers for the convert tests: settings on tmp folders, events for the sample products."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import ConvertRequested
from tests.fixtures.s3 import S3Server
from tests.fixtures.sample import SampleServerInfo


def local_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Local mode: loopback sample server over plain http, output on the filesystem."""
    values: dict[str, Any] = {
        "output_root": str(tmp_path / "geozarr"),
        "work_dir": tmp_path / "work",
        "allow_file_urls": True,
        "allow_plain_http": True,
        "allow_private_hosts": True,
        "convert_lease_seconds": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


def s3_settings(tmp_path: Path, server: S3Server, bucket: str, **overrides: Any) -> Settings:
    return local_settings(
        tmp_path,
        output_root=f"s3://{bucket}/geozarr",
        s3_endpoint_url=server.endpoint_url,
        s3_region=server.region,
        s3_access_key_id=server.access_key_id,
        s3_secret_access_key=server.secret_access_key,
        **overrides,
    )


def item_event(sample: SampleServerInfo, **options: Any) -> ConvertRequested:
    return ConvertRequested(
        source_url=sample.l2a_item_url,
        collection=sample.l2a.collection,
        item_id=sample.l2a_id,
        options=options,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return local_settings(tmp_path)
