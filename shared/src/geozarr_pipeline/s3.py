"""The one boto3 S3 client of the pipeline (output stores, their readers, failure records).

boto3 is imported on first use: only deployments that write to S3 install it.
"""

from __future__ import annotations

from typing import Any

from geozarr_pipeline.config import Settings

# boto3 ships no type stubs here; the client is dynamically typed.
S3Client = Any

DEFAULT_POOL_CONNECTIONS = 10


def s3_client(
    settings: Settings,
    pool_connections: int = DEFAULT_POOL_CONNECTIONS,
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> S3Client:
    """A client for the configured endpoint; `pool_connections` per concurrent caller thread.

    botocore makes a single attempt per call: the S3 retry policy (`retries`, applied by
    `faults.s3_request`, the object stores and the output store) is the one retry layer, so
    the two never multiply. Short timeouts suit writes that must never hold up the work.
    """
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    secret = settings.s3_secret_access_key
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region or "us-east-1",
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(
            # total_max_attempts counts every attempt (max_attempts would count retries).
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=pool_connections,
        ),
    )
    return client
