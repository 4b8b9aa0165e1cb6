"""Redirects go through the URL policy, hop by hop, for every fetch a stage makes.

An allowed loopback server (host 127.0.0.1, on the allow-list) proxies the sample server and
redirects some paths to a forbidden one (the same machine named `localhost`, off the list),
which would serve the same bytes: a stage that followed the redirect would get them, so
only the policy stands between them. The forbidden server records every request it gets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from geozarr_local.processes import LOOPBACK, free_port
from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert import engine, sources
from geozarr_pipeline.errors import InvalidInput
from geozarr_pipeline.stages import register
from tests.fixtures.loopback import serve, shut
from tests.fixtures.sample import SampleServerInfo
from tests.fixtures.stac_api import ConvertedStore, place_converted

METADATA = (".zmetadata", ".zattrs", ".zgroup", ".zarray", "zarr.json")


@dataclass
class Hop:
    """A loopback HTTP server that proxies `upstream`, or redirects where `redirect` says."""

    upstream: str
    redirect: Callable[[str], str | None] = lambda path: None
    port: int = field(default_factory=free_port)
    seen: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Hop:
        hop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                hop.seen.append(self.path)
                target = hop.redirect(self.path)
                if target is not None:
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = httpx.get(hop.upstream + self.path, trust_env=False, timeout=10)
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = serve(Handler, self.port)
        return self

    def stop(self) -> None:
        shut(self.server)


@pytest.fixture
def hops(sample_server: SampleServerInfo) -> Iterator[tuple[Hop, Hop]]:
    """(allowed, forbidden): set `allowed.redirect` to choose what is sent to `forbidden`."""
    forbidden = Hop(sample_server.base_url).start()
    allowed = Hop(sample_server.base_url).start()
    try:
        yield allowed, forbidden
    finally:
        allowed.stop()
        forbidden.stop()


def policy(**changes: Any) -> Settings:
    return Settings(
        allow_plain_http=True, allow_private_hosts=True, allowed_hosts=[LOOPBACK], **changes
    )


def via(hop: Hop, url: str) -> str:
    """`url` of the sample server, reached through `hop` as the allowed host."""
    return f"http://{LOOPBACK}:{hop.port}{urlparse(url).path}"


def to_forbidden(forbidden: Hop, when: Callable[[str], bool]) -> Callable[[str], str | None]:
    return lambda path: f"http://localhost:{forbidden.port}{path}" if when(path) else None


def test_a_redirected_source_item_is_refused(
    hops: tuple[Hop, Hop], sample_server: SampleServerInfo
) -> None:
    allowed, forbidden = hops
    allowed.redirect = to_forbidden(forbidden, lambda path: True)
    with pytest.raises(InvalidInput, match="'localhost' is not in the allowed hosts"):
        sources.resolve_source(via(allowed, sample_server.l2a_item_url), policy())
    assert allowed.seen
    assert forbidden.seen == []


def test_redirected_product_metadata_is_refused(
    hops: tuple[Hop, Hop], sample_server: SampleServerInfo
) -> None:
    allowed, forbidden = hops
    allowed.redirect = to_forbidden(forbidden, lambda path: path.endswith(".zmetadata"))
    zarr_url = via(allowed, sample_server.zarr_url(sample_server.l2a_id))
    with pytest.raises(InvalidInput, match="'localhost' is not in the allowed hosts"):
        sources.read_root_metadata(zarr_url, policy())
    assert forbidden.seen == []


def _first_band(tree: Any) -> Any:
    for node in tree.subtree:
        for name, variable in node.data_vars.items():
            if variable.ndim == 2:
                return name, variable
    raise AssertionError("no 2-D variable in the product")


def _read_first_band(zarr_url: str, settings: Settings) -> Any:
    _name, band = _first_band(engine.open_source(zarr_url, settings))
    return band.values


def test_redirected_chunk_reads_are_refused(
    hops: tuple[Hop, Hop], sample_server: SampleServerInfo
) -> None:
    allowed, forbidden = hops
    zarr_url = via(allowed, sample_server.zarr_url(sample_server.l2a_id))
    settings = policy()
    assert _read_first_band(zarr_url, settings).size > 0, "the allowed host alone serves chunks"

    allowed.redirect = to_forbidden(
        forbidden, lambda path: not path.rsplit("/", 1)[-1].startswith(METADATA)
    )
    with pytest.raises(InvalidInput, match="'localhost' is not in the allowed hosts"):
        _read_first_band(zarr_url, settings)  # opening decodes coordinates: chunks already
    assert any(not path.endswith(METADATA) for path in allowed.seen)
    assert forbidden.seen == []


def test_register_refuses_a_redirected_source_item(
    hops: tuple[Hop, Hop],
    sample_server: SampleServerInfo,
    converted_l2a: ConvertedStore,
    tmp_path: Path,
) -> None:
    allowed, forbidden = hops
    allowed.redirect = to_forbidden(forbidden, lambda path: True)
    done = place_converted(
        converted_l2a, tmp_path, source_item_url=via(allowed, sample_server.l2a_item_url)
    )
    settings = policy(output_root=str(tmp_path), catalog_root=tmp_path / "catalog")
    with pytest.raises(InvalidInput, match="'localhost' is not in the allowed hosts"):
        register.run(done, settings)
    assert allowed.seen
    assert forbidden.seen == []
    assert not (tmp_path / "catalog").exists()


def test_a_name_resolving_to_a_private_address_is_refused_when_connecting(
    hops: tuple[Hop, Hop], sample_server: SampleServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk reader checks the addresses a name resolves to when it connects (what a
    rebinding name resolves to then), not only the name before: `localhost` is let through
    by name (on the allow-list) and refused by address, without a request reaching it."""
    import fsspec

    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # behind a proxy the middleware resolves
    _allowed, forbidden = hops
    settings = Settings(allow_plain_http=True, allowed_hosts=["localhost"])
    url = f"http://localhost:{forbidden.port}{urlparse(sample_server.l2a_item_url).path}"
    options = sources.storage_options(url, settings)
    assert options is not None
    filesystem = fsspec.filesystem("http", skip_instance_cache=True, **options)
    with pytest.raises(InvalidInput, match="resolves to a non-public address"):
        filesystem.cat(url)
    assert forbidden.seen == []
