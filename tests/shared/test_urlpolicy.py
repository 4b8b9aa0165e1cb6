"""The private-host check of the URL policy: every literal form of a non-public address,
IPv4 and IPv6, including the IPv6 forms that carry an IPv4 address (refused by what they
reach), while the public counterparts of the same forms pass."""

from __future__ import annotations

import ipaddress

import pytest

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput
from geozarr_pipeline.urlpolicy import check_url, embedded_ipv4, non_public_reason

NO_PRIVATE = Settings(allow_plain_http=False, allow_private_hosts=False)

REFUSED = [
    "127.0.0.1",
    "2130706433",  # decimal 127.0.0.1
    "0x7f.0.0.1",  # hex
    "0177.0.0.1",  # octal
    "169.254.169.254",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fd00::1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:a9fe:a9fe]",
    "[::127.0.0.1]",  # IPv4-compatible (deprecated)
    "[::169.254.169.254]",
    "[::10.0.0.1]",
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[64:ff9b:1::a00:1]",  # local-use NAT64 of 10.0.0.1
    "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
    "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
    "[2002:c0a8:1::1]",  # 6to4 of 192.168.0.1
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("host", REFUSED)
def test_every_form_of_a_non_public_address_is_refused(host: str) -> None:
    with pytest.raises(InvalidInput, match="non-public address"):
        check_url(f"https://{host}/items/x", NO_PRIVATE)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"],
)
def test_public_addresses_in_the_same_forms_pass(address: str) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) is None


def test_the_embedded_address_is_named() -> None:
    nat64 = ipaddress.IPv6Address("64:ff9b::a9fe:a9fe")
    assert embedded_ipv4(nat64) == [ipaddress.IPv4Address("169.254.169.254")]
    assert non_public_reason(nat64) == "embeds link-local 169.254.169.254"


@pytest.mark.parametrize(
    "url",
    ["https://example.org/a b", "https://example.org/x\r\nHost: evil", "https://exa\tmple.org/"],
)
def test_control_characters_and_spaces_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput, match="control characters"):
        check_url(url, NO_PRIVATE)


@pytest.mark.parametrize(
    "host",
    ["[64:ff9b:1:a9fe:a9:fe00:808:808]", "[::ffff:0:a9fe:a9fe]", "[::ffff:0:7f00:1]"],
    ids=["local-use-nat64", "ipv4-translated-link-local", "ipv4-translated-loopback"],
)
def test_translation_prefixes_are_refused_whole(host: str) -> None:
    with pytest.raises(InvalidInput, match="non-public address"):
        check_url(f"https://{host}/x", NO_PRIVATE)
