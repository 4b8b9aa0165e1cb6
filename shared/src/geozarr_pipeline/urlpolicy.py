"""Which URLs a stage may fetch: schemes, host allow-list, no private addresses by default.

Every URL that arrives in event data goes through `check_url` before it is fetched, so an
event cannot make a stage reach into the cluster's own network.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, TransientError

ALWAYS_ALLOWED_SCHEMES = frozenset({"https", "s3"})


def check_url(url: str, settings: Settings, *, what: str = "source URL") -> None:
    """Refuse a URL that the policy does not allow; return quietly if it is fine."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if not settings.allow_file_urls:
            raise InvalidInput(f"{what} {url!r}: file:// URLs are not allowed here")
        if parsed.netloc not in ("", "localhost"):
            raise InvalidInput(f"{what} {url!r}: file:// URLs must not name a host")
        return
    if scheme == "http":
        if not settings.allow_plain_http:
            raise InvalidInput(f"{what} {url!r}: plain http is not allowed (use https)")
    elif scheme not in ALWAYS_ALLOWED_SCHEMES:
        raise InvalidInput(
            f"{what} {url!r}: scheme {scheme or '(none)'!r} is not allowed "
            "(https or s3; file:// and http only in local mode)"
        )
    if parsed.username is not None or parsed.password is not None:
        raise InvalidInput(f"{what} {url!r}: credentials in URLs are not accepted")
    host = parsed.hostname
    if not host:
        raise InvalidInput(f"{what} {url!r} has no host")
    _check_allow_list(host, settings, url, what)
    # An s3 bucket is a name on the configured endpoint, not a network address.
    if scheme != "s3" and not settings.allow_private_hosts:
        _check_public_host(host, parsed.port, url, what)


def _check_allow_list(host: str, settings: Settings, url: str, what: str) -> None:
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
    raise InvalidInput(f"{what} {url!r}: host {host!r} is not in the allowed hosts")


def _check_public_host(host: str, port: int | None, url: str, what: str) -> None:
    """Resolve the host; refuse it if any address is private, loopback, link-local, ..."""
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            raise InvalidInput(f"{what} {url!r}: host {host!r} does not resolve") from exc
        raise TransientError(f"cannot resolve {host!r} for {url!r}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise InvalidInput(
                f"{what} {url!r}: host {host!r} resolves to a non-public address ({address}); "
                "private, loopback and link-local hosts are refused"
            )
