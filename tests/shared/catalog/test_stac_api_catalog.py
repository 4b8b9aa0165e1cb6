"""The STAC API backend against a real stac-fastapi-pgstac (Transactions) on loopback."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from geozarr_local.processes import LOOPBACK, free_port
from geozarr_pipeline.catalog import open_catalog, opened_catalog
from geozarr_pipeline.catalog.stac_api import StacApiCatalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import TransientError, UpstreamRejected, status_code_for
from tests.fixtures.sample import LOCAL_SOURCES
from tests.fixtures.stac_api import FaultProxy, StacApiInfo, place_converted


def _item(collection: str, item_id: str, title: str = "first") -> dict[str, Any]:
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
        "properties": {"datetime": "2025-01-01T00:00:00Z", "title": title},
        "links": [{"rel": "derived_from", "href": "http://source/item"}],
        "assets": {"reflectance": {"href": "/data/x.zarr/measurements/reflectance"}},
    }


def _catalog(url: str, **settings: Any) -> StacApiCatalog:
    catalog = open_catalog(
        Settings(
            catalog_backend="stac-api", stac_api_url=url, stac_api_backoff_seconds=0.01, **settings
        )
    )
    assert isinstance(catalog, StacApiCatalog)
    return catalog


def _collection() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_collection_created_on_first_use(stac_api: StacApiInfo) -> None:
    collection = _collection()
    assert httpx.get(f"{stac_api.url}/collections/{collection}").status_code == 404
    catalog = _catalog(stac_api.url)
    url = catalog.put_item(_item(collection, "a"), "create-or-skip")
    assert url == f"{stac_api.url}/collections/{collection}/items/a"
    created = httpx.get(f"{stac_api.url}/collections/{collection}").json()
    assert created["id"] == collection
    assert created["license"]
    assert httpx.get(url).json()["properties"]["title"] == "first"


def test_create_skip_upsert_replace(stac_api: StacApiInfo) -> None:
    collection = _collection()
    catalog = _catalog(stac_api.url)
    catalog.put_item(_item(collection, "b", "first"), "create-or-skip")
    catalog.put_item(_item(collection, "b", "second"), "create-or-skip")
    assert catalog.get_item(collection, "b")["properties"]["title"] == "first"

    augmented = catalog.get_item(collection, "b")
    augmented["assets"]["thumbnail"] = {"href": "http://tiles/p.png", "roles": ["thumbnail"]}
    augmented["links"].append({"rel": "viewer", "href": "http://tiles/viewer"})
    catalog.put_item(augmented, "upsert")

    catalog.put_item(_item(collection, "b", "third"), "upsert")
    upserted = catalog.get_item(collection, "b")
    assert upserted["properties"]["title"] == "third"
    assert "thumbnail" in upserted["assets"]
    assert any(link["rel"] == "viewer" for link in upserted["links"])

    catalog.put_item(_item(collection, "b", "fourth"), "replace")
    replaced = catalog.get_item(collection, "b")
    assert replaced["properties"]["title"] == "fourth"
    assert "thumbnail" not in replaced["assets"]
    assert not any(link["rel"] == "viewer" for link in replaced["links"])
    found = httpx.get(f"{stac_api.url}/collections/{collection}/items").json()["features"]
    assert [f["id"] for f in found] == ["b"]


def test_upsert_never_deletes(stac_api: StacApiInfo) -> None:
    """An update is one PUT: no DELETE is ever sent, so readers never see the item missing."""
    proxy = FaultProxy(stac_api.url)
    try:
        collection = _collection()
        catalog = _catalog(proxy.url)
        catalog.put_item(_item(collection, "c"), "upsert")
        catalog.put_item(_item(collection, "c", "again"), "upsert")
        catalog.put_item(_item(collection, "c", "replaced"), "replace")
        methods = [method for method, _path, _status in proxy.seen]
        assert "DELETE" not in methods
        assert methods.count("PUT") == 2
    finally:
        proxy.close()


def test_delete_item(stac_api: StacApiInfo) -> None:
    collection = _collection()
    catalog = _catalog(stac_api.url)
    catalog.put_item(_item(collection, "gone"), "create-or-skip")
    catalog.put_item(_item(collection, "kept"), "create-or-skip")
    assert catalog.delete_item(collection, "gone") is True
    assert httpx.get(catalog.item_url(collection, "gone")).status_code == 404
    found = httpx.get(f"{stac_api.url}/collections/{collection}/items").json()["features"]
    assert [f["id"] for f in found] == ["kept"]
    assert catalog.delete_item(collection, "gone") is False
    assert catalog.delete_item(_collection(), "never") is False


def test_delete_item_retries_transient_and_rejects_other_4xx(stac_api: StacApiInfo) -> None:
    proxy = FaultProxy(stac_api.url)
    try:
        collection = _collection()
        catalog = _catalog(proxy.url)
        catalog.put_item(_item(collection, "del"), "create-or-skip")
        proxy.failures = [("DELETE", 403)]
        with pytest.raises(UpstreamRejected) as excinfo:
            catalog.delete_item(collection, "del")
        assert "deleting item 'del'" in excinfo.value.message
        assert "injected 403" in excinfo.value.message
        assert catalog.get_item(collection, "del")["id"] == "del"
        proxy.failures = [("DELETE", 503), ("DELETE", 502)]
        assert catalog.delete_item(collection, "del") is True
        deletes = [s for m, _p, s in proxy.seen if m == "DELETE"]
        assert deletes == [403, 503, 502, 200]
        assert httpx.get(f"{stac_api.url}/collections/{collection}/items/del").status_code == 404
    finally:
        proxy.close()


def test_flaky_api_succeeds_after_retries(
    stac_api: StacApiInfo, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = FaultProxy(stac_api.url)
    try:
        collection = _collection()
        catalog = _catalog(proxy.url)
        catalog.ensure_collection(collection)
        proxy.failures = [("POST", 503), ("POST", 502)]
        caplog.set_level(logging.WARNING, logger="geozarr_pipeline.retries")
        catalog.put_item(_item(collection, "d"), "create-or-skip")
        posts = [s for m, _p, s in proxy.seen if m == "POST"]
        assert posts[-3:] == [503, 502, 201]
        assert catalog.get_item(collection, "d")["id"] == "d"
        retries = [r for r in caplog.records if r.getMessage() == "retrying"]
        assert [(getattr(r, "kind", None), getattr(r, "item_id", None)) for r in retries] == [
            ("stac_api", "d"),
            ("stac_api", "d"),
        ]
    finally:
        proxy.close()


def test_persistent_5xx_is_transient(stac_api: StacApiInfo) -> None:
    proxy = FaultProxy(stac_api.url)
    try:
        collection = _collection()
        catalog = _catalog(proxy.url, stac_api_retries=2)
        catalog.ensure_collection(collection)
        proxy.failures = [("POST", 500)] * 3
        with pytest.raises(TransientError) as excinfo:
            catalog.put_item(_item(collection, "e"), "create-or-skip")
        assert status_code_for(excinfo.value) == 503
    finally:
        proxy.close()


def test_400_is_not_retried_and_carries_the_api_message(stac_api: StacApiInfo) -> None:
    proxy = FaultProxy(stac_api.url)
    try:
        collection = _collection()
        catalog = _catalog(proxy.url)
        catalog.ensure_collection(collection)
        proxy.failures = [("POST", 400)]
        before = len(proxy.seen)
        with pytest.raises(UpstreamRejected) as excinfo:
            catalog.put_item(_item(collection, "f"), "create-or-skip")
        assert status_code_for(excinfo.value) == 422
        assert "injected 400" in excinfo.value.message
        assert [m for m, _p, _s in proxy.seen[before:]] == ["POST"]
    finally:
        proxy.close()


def test_real_api_rejection_is_permanent(stac_api: StacApiInfo) -> None:
    collection = _collection()
    catalog = _catalog(stac_api.url)
    bad = _item(collection, "g")
    bad["geometry"] = {"type": "Polygon", "coordinates": "nope"}
    with pytest.raises(UpstreamRejected):
        catalog.put_item(bad, "create-or-skip")


def test_bearer_token(stac_api: StacApiInfo, caplog: pytest.LogCaptureFixture) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    proxy = FaultProxy(stac_api.url, required_token=token)
    try:
        collection = _collection()
        with pytest.raises(UpstreamRejected):
            _catalog(proxy.url).put_item(_item(collection, "h"), "create-or-skip")
        assert [status for _m, _p, status in proxy.seen] == [401], "a static token is not resent"
        caplog.set_level(logging.DEBUG)
        _catalog(proxy.url, stac_api_token=token).put_item(_item(collection, "h"), "upsert")
        assert httpx.get(f"{stac_api.url}/collections/{collection}/items/h").status_code == 200
        assert token not in caplog.text
    finally:
        proxy.close()


class TokenEndpoint:
    """A tiny OIDC token endpoint: client credentials in, short-lived bearer tokens out."""

    def __init__(self, client_id: str, secret: str, lifetime: int) -> None:
        self.issued: list[str] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                import base64

                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode()
                expected = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
                ok = self.headers.get("Authorization") == f"Basic {expected}"
                if not ok or "grant_type=client_credentials" not in form:
                    self.send_response(401)
                    self.end_headers()
                    return
                token = f"oidc-{uuid.uuid4().hex}"
                endpoint.issued.append(token)
                body = json.dumps(
                    {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TokenCheckingProxy(FaultProxy):
    """Accepts only the tokens the endpoint has issued."""

    def __init__(self, upstream: str, endpoint: TokenEndpoint) -> None:
        super().__init__(upstream)
        self.endpoint = endpoint

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str]:
        auth = headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.endpoint.issued:
            return 401, b'{"detail": "bad token"}', "application/json"
        return super().answer(method, path, headers, body)


@pytest.fixture
def oidc(stac_api: StacApiInfo) -> Iterator[tuple[TokenEndpoint, TokenCheckingProxy]]:
    endpoint = TokenEndpoint("register", "s3cr3t-value", lifetime=3600)
    proxy = TokenCheckingProxy(stac_api.url, endpoint)
    yield endpoint, proxy
    proxy.close()
    endpoint.close()


def test_oidc_client_credentials_cached_and_never_logged(
    oidc: tuple[TokenEndpoint, TokenCheckingProxy], caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, proxy = oidc
    caplog.set_level(logging.DEBUG)
    catalog = _catalog(
        proxy.url,
        oidc_token_url=endpoint.url,
        oidc_client_id="register",
        oidc_client_secret="s3cr3t-value",
    )
    collection = _collection()
    catalog.put_item(_item(collection, "i"), "upsert")
    catalog.put_item(_item(collection, "i", "again"), "upsert")
    assert len(endpoint.issued) == 1, "the token is cached across requests"
    assert catalog.get_item(collection, "i")["properties"]["title"] == "again"
    for secret in [*endpoint.issued, "s3cr3t-value"]:
        assert secret not in caplog.text
        assert secret not in repr(catalog)


def test_oidc_token_refreshed_before_expiry(
    oidc: tuple[TokenEndpoint, TokenCheckingProxy],
) -> None:
    from geozarr_pipeline.catalog.auth import OidcClientCredentials

    endpoint, _proxy = oidc
    now = [1000.0]
    with httpx.Client() as client:
        auth = OidcClientCredentials(
            token_url=endpoint.url,
            client_id="register",
            client_secret="s3cr3t-value",
            client=client,
            clock=lambda: now[0],
        )
        first = auth.headers()
        now[0] += 60
        assert auth.headers() == first
        now[0] += 3600 * 0.8  # past 80 % of the lifetime, still before expiry
        second = auth.headers()
    assert second != first
    assert len(endpoint.issued) == 2


def test_oidc_wrong_secret_is_permanent(oidc: tuple[TokenEndpoint, TokenCheckingProxy]) -> None:
    endpoint, proxy = oidc
    catalog = _catalog(
        proxy.url, oidc_token_url=endpoint.url, oidc_client_id="register", oidc_client_secret="x"
    )
    with pytest.raises(UpstreamRejected):
        catalog.put_item(_item(_collection(), "j"), "upsert")


def _same_instants(value: Any) -> Any:
    """pgstac rewrites timestamps (`...13Z` -> `...13.000000Z`): compare them as instants."""
    from datetime import datetime

    if isinstance(value, dict):
        return {k: _same_instants(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_instants(v) for v in value]
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T":
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def test_concurrent_upserts_leave_one_item(stac_api: StacApiInfo) -> None:
    """Redeliveries racing each other: every write succeeds, one item remains."""
    from concurrent.futures import ThreadPoolExecutor

    collection = _collection()
    _catalog(stac_api.url).ensure_collection(collection)

    def write(n: int) -> str:
        return _catalog(stac_api.url).put_item(_item(collection, "k", f"write-{n}"), "upsert")

    with ThreadPoolExecutor(max_workers=4) as pool:
        urls = set(pool.map(write, range(8)))
    assert len(urls) == 1
    found = httpx.get(f"{stac_api.url}/collections/{collection}/items").json()["features"]
    assert [f["id"] for f in found] == ["k"]


def test_static_and_api_store_the_same_item(
    stac_api: StacApiInfo, converted_l2a: Any, tmp_path: Any
) -> None:
    from geozarr_pipeline.catalog.static import StaticCatalog
    from geozarr_pipeline.stages import register

    event = place_converted(converted_l2a, converted_l2a.root, _collection())
    settings = Settings(output_root=str(converted_l2a.root), **LOCAL_SOURCES)
    api = _catalog(stac_api.url)
    static = StaticCatalog(tmp_path)
    register.run(event, settings, catalog=api)
    register.run(event, settings, catalog=static)
    from_api = api.get_item(event.collection, event.item_id)
    from_disk = static.get_item(event.collection, event.item_id)
    for key in ("assets", "properties", "geometry", "bbox", "stac_extensions"):
        assert _same_instants(from_api[key]) == _same_instants(from_disk[key]), key
    non_backend = [
        link
        for link in from_disk["links"]
        if link["rel"] not in {"self", "root", "parent", "collection"}
    ]
    for link in non_backend:
        assert link in from_api["links"]


def test_rate_limit_is_retried(stac_api: StacApiInfo) -> None:
    proxy = FaultProxy(stac_api.url)
    try:
        collection = _collection()
        catalog = _catalog(proxy.url)
        catalog.ensure_collection(collection)
        proxy.failures = [("POST", 429)]
        catalog.put_item(_item(collection, "l"), "create-or-skip")
        assert [s for m, _p, s in proxy.seen if m == "POST"][-2:] == [429, 201]
    finally:
        proxy.close()


def test_unreachable_api_is_transient() -> None:
    catalog = _catalog(f"http://{LOOPBACK}:{free_port()}", stac_api_retries=1)
    with pytest.raises(TransientError) as excinfo:
        catalog.put_item(_item("anything", "m"), "upsert")
    assert "ConnectError" in excinfo.value.message


def test_opened_catalog_closes_its_client() -> None:
    settings = Settings(catalog_backend="stac-api", stac_api_url=f"http://{LOOPBACK}:1")
    with opened_catalog(settings) as catalog:
        assert isinstance(catalog, StacApiCatalog)
        assert not catalog.client.is_closed
    assert catalog.client.is_closed


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, "<html>sign in</html>", UpstreamRejected),
        (200, '["not", "an", "object"]', UpstreamRejected),
        (408, "", TransientError),
        (503, "", TransientError),
    ],
)
def test_oidc_token_endpoint_answers_are_classified(
    status: int, body: str, error: type[Exception]
) -> None:
    """A token endpoint answering HTML (a login page) is a permanent refusal, not a crash;
    a transient answer is tried again under the token policy, a refusal is not."""
    from geozarr_pipeline.catalog.auth import OidcClientCredentials
    from geozarr_pipeline.retries import RetryPolicy

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text=body)

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        auth = OidcClientCredentials(
            token_url="http://token.invalid/token",
            client_id="c",
            client_secret="s",
            client=client,
            retry=RetryPolicy("token", 2, 0.0, 0.0),
        )
        with pytest.raises(error):
            auth.headers()
    assert len(seen) == (2 if error is TransientError else 1)
