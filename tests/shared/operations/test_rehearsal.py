"""The local stack configured as production: S3 output, a real STAC API, secrets that must
never be written anywhere."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from geozarr_local.demo import convert_requested_event
from geozarr_local.processes import LOOPBACK, free_port
from geozarr_local.sample.build import write_sample
from geozarr_local.sample.layout import item_url
from geozarr_local.stack import LocalStack
from geozarr_pipeline.broker_client import RunFailed
from geozarr_pipeline.cli import main
from geozarr_pipeline.events import EventType
from tests.fixtures.s3 import S3Server

PLANTED_TOKEN = "planted-stac-token-7f3a9c1e5b"
PLANTED_S3_SECRET = "planted-s3-secret-2d8e4b6a0c"


def run_sample(stack: LocalStack, item_id: str) -> int:
    sample = write_sample(stack.samples_dir, "l2a", scale=0.05, item_id=item_id)
    source = item_url(stack.sample_url, sample.collection, sample.item_id)
    return stack.publish(convert_requested_event(source, sample.item_id, sample.collection)) - 1


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_rehearsal_on_s3_and_a_stac_api_then_status_and_delete(
    tmp_path: Path,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = s3_server.create_bucket()
    monkeypatch.setenv("GEOZARR_OUTPUT_ROOT", f"s3://{bucket}/geozarr")
    for name, value in s3_server.settings_env().items():
        monkeypatch.setenv(name, value)
    item_id = f"S2A_MSIL2A_REHEARSAL_{uuid.uuid4().hex[:6].upper()}"
    with LocalStack(tmp_path / "stack", stac_api=True, inherit_env=True) as stack:
        env = stack.settings_env()
        assert env["GEOZARR_CATALOG_BACKEND"] == "stac-api"
        assert env["GEOZARR_OUTPUT_ROOT"] == f"s3://{bucket}/geozarr"
        done = stack.wait_for_chain(item_id, timeout=300, after=run_sample(stack, item_id))
        assert done["item_url"].startswith(stack.urls["stac-api"])
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        status = cli_json(capsys, "status", item_id, "--collection", "sentinel-2-l2a")
        assert [s["state"] for s in status["stages"]] == ["done", "done", "done"]
        prefix = f"geozarr/sentinel-2-l2a/{item_id}.zarr/"
        assert status["store_url"] == f"s3://{bucket}/{prefix.rstrip('/')}"
        assert status["store_objects"] == len(s3_server.keys(bucket, prefix))
        item = httpx.get(done["item_url"], timeout=10).json()
        software = item["properties"]["processing:software"]
        assert software["eopf-geozarr"] == status["converter_version"]
        assert "eopf-geozarr-pipeline" in software
        assert item["properties"]["processing:datetime"]
        attempts = [k for k in s3_server.keys(bucket, "geozarr/_status/") if item_id in k]
        assert len(attempts) == 3

        assert main(["delete", item_id, "--collection", "sentinel-2-l2a"]) == 0
        capsys.readouterr()
        assert httpx.get(done["item_url"], timeout=10).status_code == 404
        assert s3_server.keys(bucket, f"geozarr/sentinel-2-l2a/{item_id}") == []
        gone = cli_json(capsys, "status", item_id, "--collection", "sentinel-2-l2a")
        assert gone["item_url"] is None
        assert gone["store_url"] is None
        assert gone["stages"][0]["state"] != "done"


class EchoingApi:
    """A STAC API that refuses every request with the request's own headers in the body, as
    some gateways do: what a leak of the token through an error message would look like."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def _refuse(self) -> None:
                body = json.dumps({"detail": f"refused, request headers: {dict(self.headers)}"})
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = do_PUT = _refuse  # noqa: N815

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echoing_api() -> Iterator[EchoingApi]:
    api = EchoingApi()
    yield api
    api.close()


def planted_forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw).rstrip(b"=")]


def test_no_planted_secret_is_written_by_a_failing_run(
    tmp_path: Path, echoing_api: EchoingApi, capsys: pytest.CaptureFixture[str]
) -> None:
    item_id = f"S2A_MSIL2A_SECRETS_{uuid.uuid4().hex[:6].upper()}"
    extra = {
        "GEOZARR_CATALOG_BACKEND": "stac-api",
        "GEOZARR_STAC_API_URL": echoing_api.url,
        "GEOZARR_STAC_API_TOKEN": PLANTED_TOKEN,
        "GEOZARR_S3_SECRET_ACCESS_KEY": PLANTED_S3_SECRET,
    }
    with LocalStack(tmp_path / "stack", extra_env=extra) as stack:
        after = run_sample(stack, item_id)
        with pytest.raises(RunFailed, match="upstream_rejected"):
            stack.wait_for_chain(item_id, timeout=300, after=after)
        [failure] = stack.events(EventType.FAILED.value, item_id)
        message = failure["event"]["data"]["problem"]["message"]
        # The upstream's answer is still quoted (so the operator sees why), minus the token.
        assert "refused, request headers" in message
        assert "[REDACTED]" in message
        records = sorted(stack.failures_root.glob("*.json"))
        assert records, "the failure was not recorded"
    written = [p for p in (tmp_path / "stack").rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in written)
    for path in written:
        content = path.read_bytes()
        for secret in (PLANTED_TOKEN, PLANTED_S3_SECRET):
            for form in planted_forms(secret):
                assert form not in content, f"{secret} ({form!r}) written to {path}"
