"""No planted secret leaves the register function: upstreams that echo every request header
(and body) in their 4xx/5xx answers, for the STAC API with a static token or OIDC client
credentials, the token endpoint itself, and S3. Every reply, every log line (as the JSON
formatter writes it) and every failure record is searched for the planted values, raw and
base64, and for the `Authorization` value each request carried."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import flask
import functions_framework
import pytest

from geozarr_local.processes import LOOPBACK, free_port
from geozarr_local.stack import function_source
from geozarr_pipeline import attempts, config
from geozarr_pipeline.events import EventType, Stage
from geozarr_pipeline.failures.recorder import FailureRecorder
from geozarr_pipeline.failures.store import open_failure_store
from geozarr_pipeline.logs import JsonFormatter
from tests.fixtures.loopback import serve, shut
from tests.fixtures.sample import LOCAL_SOURCES_ENV
from tests.fixtures.stac_api import ConvertedStore, place_converted
from tests.functions.hostile import encoded

PLANTED = {
    "stac_token": "planted-stac-token-Q7w2e9",
    "oidc_secret": "planted-oidc-secret-R4t6y8",
    "access_token": "planted-access-token-Z1x3c5",
    "s3_secret": "planted-s3-secret-V8b0n2",
}
OIDC_CLIENT = "pipeline-client"
# Scenarios whose upstream answer the problem quotes (a 4xx body says why).
QUOTED = ("stac-token-400", "oidc-api-400")


@dataclass
class Echo:
    """Answers every request with `status` and a body holding all it was sent."""

    status: dict[str, int] = field(default_factory=dict)  # path prefix -> status
    port: int = field(default_factory=free_port)
    authorizations: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Echo:
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sent = self.rfile.read(length).decode(errors="replace") if length else ""
                if "Authorization" in self.headers:
                    echo.authorizations.append(self.headers["Authorization"])
                if self.path.startswith("/token-ok"):
                    body = json.dumps({"access_token": PLANTED["access_token"], "expires_in": 300})
                    status = 200
                else:
                    status = next(
                        (s for prefix, s in echo.status.items() if self.path.startswith(prefix)),
                        400,
                    )
                    headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
                    body = f"refused. You sent:\n{headers}\n{sent}"
                    if self.path.startswith("/bucket"):
                        body = (
                            "<?xml version='1.0'?><Error><Code>AccessDenied</Code>"
                            f"<Message>{body}</Message></Error>"
                        )
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_HEAD = _answer  # noqa: N815

        self.server = serve(Handler, self.port)
        return self

    def stop(self) -> None:
        shut(self.server)


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo().start()
    yield server
    server.stop()


def load_app() -> flask.Flask:
    """The register function as functions-framework loads it (settings read now)."""
    source = function_source("geozarr_register.main")
    return functions_framework.create_app("handle", str(source), "http")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, base64.b64encode(raw).decode().rstrip("=")]


SCENARIOS = {
    "stac-token-400": {"GEOZARR_STAC_API_TOKEN": PLANTED["stac_token"]},
    "stac-token-500": {"GEOZARR_STAC_API_TOKEN": PLANTED["stac_token"], "status": "500"},
    "oidc-api-400": {"oidc": "/token-ok"},
    "oidc-token-refused": {"oidc": "/token-refused"},
    "s3-403": {"s3": "yes"},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_planted_secret_in_replies_logs_or_failure_records(
    scenario: str,
    echo: Echo,
    converted_l2a: ConvertedStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = SCENARIOS[scenario]
    for key in list(os.environ):
        if key.startswith("GEOZARR_"):
            monkeypatch.delenv(key)
    env = {
        **LOCAL_SOURCES_ENV,
        "GEOZARR_CATALOG_BACKEND": "stac-api",
        "GEOZARR_STAC_API_URL": f"{echo.url}/stac",
        "GEOZARR_STAC_API_RETRIES": "1",
        "GEOZARR_STAC_API_BACKOFF_SECONDS": "0.01",
        "GEOZARR_OUTPUT_ROOT": str(tmp_path / "geozarr"),
        "GEOZARR_S3_ACCESS_KEY_ID": "planted-key-id",
        "GEOZARR_S3_SECRET_ACCESS_KEY": PLANTED["s3_secret"],
        "GEOZARR_S3_ENDPOINT_URL": echo.url,
        "GEOZARR_S3_REGION": "us-east-1",
    }
    env.update({k: v for k, v in spec.items() if k.startswith("GEOZARR_")})
    if "oidc" in spec:
        env.update(
            GEOZARR_OIDC_TOKEN_URL=echo.url + spec["oidc"],
            GEOZARR_OIDC_CLIENT_ID=OIDC_CLIENT,
            GEOZARR_OIDC_CLIENT_SECRET=PLANTED["oidc_secret"],
        )
    echo.status = {"/stac": int(spec.get("status", "400")), "/token-refused": 401}
    done = place_converted(converted_l2a, tmp_path / "geozarr")
    if "s3" in spec:
        env["GEOZARR_OUTPUT_ROOT"] = "s3://bucket/geozarr"
        done = done.model_copy(
            update={"output_url": f"s3://bucket/geozarr/{done.collection}/{done.item_id}.zarr"}
        )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config.get_settings.cache_clear()
    attempts.process_journal.cache_clear()

    app = load_app()
    collect = Collect()
    logging.getLogger().addHandler(collect)
    try:
        headers, body = encoded(
            Stage.REGISTER, done.model_dump(mode="json"), "binary", f"leak-{scenario}"
        )
        response = app.test_client().post("/", headers=headers, data=body)
    finally:
        logging.getLogger().removeHandler(collect)
        config.get_settings.cache_clear()
        attempts.process_journal.cache_clear()

    assert response.status_code in (200, 429, 503), response.data[:300]
    written = [response.data.decode(errors="replace"), *collect.lines]
    if response.headers.get("ce-type") == EventType.FAILED.value:
        store = open_failure_store(config.Settings(failures_root=str(tmp_path / "failures")))
        record, _ = FailureRecorder(store).record(dict(response.headers), response.data)
        written += [p.read_text() for p in (tmp_path / "failures").rglob("*.json")]
        assert record.problem.message, "the failure names its problem"
    text = "\n".join(written)
    if scenario in QUOTED:
        assert "You sent" in text, "the upstream's answer is quoted (minus the secrets)"
    secrets = [*PLANTED.values(), f"{OIDC_CLIENT}:{PLANTED['oidc_secret']}"]
    # The bearer and basic credentials sent (an S3 request signature is no reusable secret).
    sent = [a.split(" ", 1)[1] for a in echo.authorizations if a.startswith(("Bearer ", "Basic "))]
    assert sent or scenario.startswith("s3"), "the upstream saw credentials"
    secrets += sent
    for secret in secrets:
        for form in forms(secret):
            assert form not in text, f"{scenario}: {form!r} leaked"
