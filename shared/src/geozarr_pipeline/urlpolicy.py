"""Which URLs a stage may fetch: schemes, host allow-list, no private addresses by default.

Every URL that arrives in event data goes through `check_url` before it is fetched, so an
event cannot make a stage reach into the cluster's own network.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, TransientError
from geozarr_pipeline.events import quoted_value

if TYPE_CHECKING:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, ClientSession
    from aiohttp.abc import AbstractResolver

ALWAYS_ALLOWED_SCHEMES = frozenset({"https", "s3"})
MAX_REDIRECTS = 5
# How long the chunk reads trust a host that passed the check before checking it again.
PASSED_HOST_SECONDS = 30.0


@dataclass(frozen=True)
class UrlPolicy:
    """The settings that decide what may be fetched (hashable: one middleware per policy)."""

    allow_file_urls: bool
    allow_plain_http: bool
    allow_private_hosts: bool
    allowed_hosts: tuple[str, ...]

    @classmethod
    def of(cls, settings: Settings | UrlPolicy) -> UrlPolicy:
        if isinstance(settings, UrlPolicy):
            return settings
        return cls(
            allow_file_urls=settings.allow_file_urls,
            allow_plain_http=settings.allow_plain_http,
            allow_private_hosts=settings.allow_private_hosts,
            allowed_hosts=tuple(settings.allowed_hosts),
        )


def check_url(url: str, settings: Settings | UrlPolicy, *, what: str = "source URL") -> None:
    """Refuse a URL that the policy does not allow; return quietly if it is fine."""
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidInput(
            f"{what} {quoted_value(url, 200)}: spaces and control characters are not allowed"
        )
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if not settings.allow_file_urls:
            raise InvalidInput(
                f"{what} {quoted_value(url, 200)}: file:// URLs are not allowed here"
            )
        if parsed.netloc not in ("", "localhost"):
            raise InvalidInput(
                f"{what} {quoted_value(url, 200)}: file:// URLs must not name a host"
            )
        return
    if scheme == "http":
        if not settings.allow_plain_http:
            raise InvalidInput(
                f"{what} {quoted_value(url, 200)}: plain http is not allowed (use https)"
            )
    elif scheme not in ALWAYS_ALLOWED_SCHEMES:
        raise InvalidInput(
            f"{what} {quoted_value(url, 200)}: scheme {scheme or '(none)'!r} is not allowed "
            "(https or s3; file:// and http only in local mode)"
        )
    if parsed.username is not None or parsed.password is not None:
        raise InvalidInput(f"{what} {quoted_value(url, 200)}: credentials in URLs are not accepted")
    host = parsed.hostname
    if not host:
        raise InvalidInput(f"{what} {quoted_value(url, 200)} has no host")
    _check_allow_list(host, settings, url, what)
    # An s3 bucket is a name on the configured endpoint, not a network address.
    if scheme != "s3" and not settings.allow_private_hosts:
        _check_public_host(host, parsed.port, url, what)


def policy_client(settings: Settings, *, user_agent: str) -> httpx.Client:
    """An HTTP client whose every request, each redirect hop included, passes the policy."""

    def check_request(request: httpx.Request) -> None:
        check_url(str(request.url), settings, what="URL")

    return httpx.Client(
        timeout=settings.http_timeout_seconds,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=True,
        event_hooks={"request": [check_request]},
        headers={"User-Agent": user_agent},
    )


ClientMiddleware = Callable[["ClientRequest", "ClientHandlerType"], Awaitable["ClientResponse"]]


def fsspec_http_options(settings: Settings | UrlPolicy) -> dict[str, Any]:
    """fsspec HTTP filesystem options under which every request passes the policy.

    A client middleware checks each request, redirect hops included, before it connects
    (scheme, credentials, allow-list, literal addresses); a resolver checks every address a
    name resolves to when the connection is made, so a name that rebinds to a private
    address between the check and the connect is still refused. Behind a proxy (HTTP(S)_PROXY
    set) the resolver would only see the proxy, so the middleware resolves and checks each
    host itself, again every PASSED_HOST_SECONDS. Both are one per policy, so fsspec's
    filesystem cache still applies.
    """
    import urllib.request  # here: only the convert stage reads over fsspec

    policy = UrlPolicy.of(settings)
    proxied = bool(urllib.request.getproxies())
    return {
        "client_kwargs": {"trust_env": True, "middlewares": (_middleware_for(policy, proxied),)},
        "get_client": _client_factory_for(policy.allow_private_hosts or proxied),
    }


@functools.lru_cache(maxsize=8)
def _middleware_for(policy: UrlPolicy, proxied: bool) -> ClientMiddleware:
    resolver_checks = not policy.allow_private_hosts and not proxied
    # With the resolver on guard, a name is checked without resolving it here.
    by_name = dataclasses.replace(policy, allow_private_hosts=True) if resolver_checks else policy
    passed: dict[tuple[str, str, int | None], float] = {}

    async def check_request(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        url = request.url
        origin = (url.scheme, url.host or "", url.port)
        now = time.monotonic()
        if passed.get(origin, 0.0) < now:
            # aiohttp connects to a literal address without asking the resolver.
            literal = _is_address(url.host or "")
            check_url(str(url), policy if literal else by_name, what="product URL")
            passed[origin] = now + PASSED_HOST_SECONDS
        return await handler(request)

    return check_request


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=2)
def _client_factory_for(unguarded: bool) -> Callable[..., Awaitable[ClientSession]]:
    async def get_client(**kwargs: Any) -> ClientSession:
        import aiohttp

        if unguarded:
            return aiohttp.ClientSession(**kwargs)
        connector = aiohttp.TCPConnector(resolver=public_only_resolver())
        return aiohttp.ClientSession(connector=connector, **kwargs)

    return get_client


def public_only_resolver() -> AbstractResolver:
    """An aiohttp resolver that refuses a name resolving to any non-public address (aiohttp
    is imported here: the light stages never load it)."""
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

    class PublicOnlyResolver(AbstractResolver):
        def __init__(self) -> None:
            self._resolver = aiohttp.ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            results = await self._resolver.resolve(host, port, family)
            for result in results:
                address = ipaddress.ip_address(result["host"])
                refused = non_public_reason(address)
                if refused:
                    raise InvalidInput(
                        f"product host {host!r} resolves to a non-public address ({address}, "
                        f"{refused}); private, loopback and link-local hosts are refused"
                    )
            return results

        async def close(self) -> None:
            await self._resolver.close()

    return PublicOnlyResolver()


def _check_allow_list(host: str, settings: Settings | UrlPolicy, url: str, what: str) -> None:
    if not settings.allowed_hosts:
        return
    host = host.lower()
    for allowed in settings.allowed_hosts:
        entry = allowed.lower()
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return
        elif host == entry:
            return
    raise InvalidInput(
        f"{what} {quoted_value(url, 200)}: host {host!r} is not in the allowed hosts"
    )


def _check_public_host(host: str, port: int | None, url: str, what: str) -> None:
    """Resolve the host; refuse it if any address is private, loopback, link-local, ..."""
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            raise InvalidInput(
                f"{what} {quoted_value(url, 200)}: host {host!r} does not resolve"
            ) from exc
        raise TransientError(
            f"cannot resolve {host!r} for {quoted_value(url, 200)}: {exc}"
        ) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        refused = non_public_reason(address)
        if refused:
            raise InvalidInput(
                f"{what} {quoted_value(url, 200)}: host {host!r} resolves to a non-public address "
                f"({address}, {refused}); private, loopback and link-local hosts are refused"
            )


# The IPv6 prefix that carries an IPv4 address in its last 32 bits (RFC 6052 well-known NAT64).
_NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"),)
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Prefixes refused whole, whatever the Python release's tables say: local-use NAT64 (RFC 8215,
# its IPv4 position depends on the operator's prefix length) and IPv4-translated (RFC 2765).
_REFUSED_PREFIXES = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 transition form reaches: mapped, compatible, NAT64, 6to4,
    Teredo. A packet to such an address ends up at the IPv4 host, so that host is checked."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # not :: and ::1 themselves
        found.append(low32)
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        found.append(low32)
    return found


def non_public_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not a public unicast host, or None if it is one."""
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in prefix for prefix in _REFUSED_PREFIXES):
            return "a translation prefix that is not routed publicly"
        candidates.extend(embedded_ipv4(address))
    for candidate in candidates:
        if candidate.is_multicast:
            return f"multicast {candidate}"
        if not candidate.is_global:
            kind = (
                "loopback"
                if candidate.is_loopback
                else "link-local"
                if candidate.is_link_local
                else "not global"
            )
            return kind if candidate == address else f"embeds {kind} {candidate}"
    return None
