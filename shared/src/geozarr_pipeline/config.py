"""Typed settings, read once from the environment (prefix GEOZARR_) and passed in."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEOZARR_", env_file=None, extra="ignore")

    # Where converted stores go: a local folder or s3://bucket/prefix.
    output_root: str = "data/geozarr"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    # Failure records: a folder or s3://bucket/prefix; default {output_root}/_failures.
    failures_root: str | None = None
    # Stage attempt records for `status`: a folder or s3://bucket/prefix; default
    # {output_root}/_status.
    status_root: str | None = None
    # Public https form of output_root, for hrefs a browser can follow.
    public_base_url: str | None = None

    # Source resolution policy.
    allow_file_urls: bool = False
    allow_plain_http: bool = False
    allow_private_hosts: bool = False
    allowed_hosts: list[str] = Field(default_factory=list)
    http_timeout_seconds: float = 30.0

    # Conversion defaults, overridable per event (benchmarks/convert/RESULTS.md): integer
    # reflectance with its CF scale/offset/_FillValue, 1024 chunks in 4096 shards.
    spatial_chunk: int = 1024
    enable_sharding: bool = True
    keep_scale_offset: bool = True
    # Side of a shard in pixels (whole inner chunks of spatial_chunk) when sharding.
    shard_size: int = Field(default=4096, ge=64, le=32768)
    work_dir: Path = Path("data/work")
    # Convert stage: source S3 access, lease of a running conversion, depth of the output check.
    source_s3_endpoint_url: str | None = None
    source_s3_anonymous: bool = True
    convert_lease_seconds: float = Field(default=120.0, gt=0)
    convert_check_native: Literal["full", "sample"] = "sample"
    convert_s3_write: Literal["staged", "direct"] = "staged"

    # Catalog.
    catalog_backend: Literal["static", "stac-api"] = "static"
    catalog_root: Path = Path("data/catalog")
    stac_api_url: str | None = None
    stac_api_token: SecretStr | None = None
    oidc_token_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    register_mode: Literal["create-or-skip", "upsert", "replace"] = "upsert"
    oidc_scope: str | None = None
    stac_api_timeout_seconds: float = 10.0
    # The STAC API retry policy (retries.py): retries after the first attempt, also of a write
    # that raced a concurrent writer, and the base of their backoff.
    stac_api_retries: int = Field(default=4, ge=0)
    stac_api_backoff_seconds: float = Field(default=0.25, ge=0)

    # In-process retries of the other kinds of call (retries.py): attempts, the first included,
    # and the base of the jittered exponential backoff between them; past them the broker
    # redelivers the event. Source item and product metadata reads:
    retry_source_attempts: int = Field(default=3, ge=1)
    retry_source_backoff_seconds: float = Field(default=0.5, ge=0)
    # Calls on our own object storage (botocore itself makes a single attempt, see s3.py):
    retry_s3_attempts: int = Field(default=4, ge=1)
    retry_s3_backoff_seconds: float = Field(default=0.2, ge=0)
    # OIDC token fetches:
    retry_token_attempts: int = Field(default=3, ge=1)
    retry_token_backoff_seconds: float = Field(default=0.5, ge=0)
    # The longest wait between two attempts of any kind.
    retry_backoff_cap_seconds: float = Field(default=10.0, ge=0)

    # Visualisation.
    raster_api_url: str = "http://127.0.0.1:8010"


def read_settings() -> Settings:
    """Settings read from the environment now, their secrets registered for redaction
    before anything can log them (the CLI reads them per command)."""
    from geozarr_pipeline.redaction import register_secrets, settings_secrets

    settings = Settings()
    register_secrets(settings_secrets(settings))
    return settings


@cache
def get_settings() -> Settings:
    """The process-wide settings of a stage, read on first use (not at import)."""
    return read_settings()
