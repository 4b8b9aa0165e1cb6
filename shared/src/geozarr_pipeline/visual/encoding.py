"""Percent-encoding of query strings: the one place that turns values into URL text.

Every query value is encoded with `quote(value, safe="")`: a space becomes `%20` (never `+`,
which some clients and proxies keep as a literal plus), and `,`, `/`, `:` are escaped too.
Links on items, TileJSON `tiles` templates and WMTS resource URLs all go through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

QueryPairs = Iterable[tuple[str, str]]


def quote_value(value: str) -> str:
    """One query key or value, percent-encoded with nothing left unescaped but `A-Za-z0-9_.-~`."""
    return quote(value, safe="")


def encode_query(pairs: QueryPairs) -> str:
    """`k=v&k=v` in the given order; repeated keys stay repeated."""
    return "&".join(f"{quote_value(key)}={quote_value(value)}" for key, value in pairs)


def with_query(url: str, pairs: QueryPairs) -> str:
    """`url?query`, or `url` unchanged when there is nothing to add."""
    query = encode_query(pairs)
    if not query:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{query}"
