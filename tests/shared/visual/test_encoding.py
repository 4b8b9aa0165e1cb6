"""The one percent-encoder: spaces as %20, reserved characters escaped, order kept."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from geozarr_pipeline.visual.encoding import encode_query, quote_value, with_query


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("gamma rgb 1.3", "gamma%20rgb%201.3"),
        ("0,1", "0%2C1"),
        ("/measurements/reflectance/r10m:b04", "%2Fmeasurements%2Freflectance%2Fr10m%3Ab04"),
        ("a+b", "a%2Bb"),
        ("x&y=z", "x%26y%3Dz"),
        ("100%", "100%25"),
        ("caf\u00e9", "caf%C3%A9"),
        ("safe-chars_.~", "safe-chars_.~"),
    ],
)
def test_quote_value(value: str, encoded: str) -> None:
    assert quote_value(value) == encoded
    assert unquote(encoded) == value


def test_a_space_is_never_a_plus() -> None:
    query = encode_query([("color_formula", "sigmoidal rgb 6 0.1, saturation 1.2")])
    assert "+" not in query
    assert " " not in query
    assert query == "color_formula=sigmoidal%20rgb%206%200.1%2C%20saturation%201.2"


def test_repeated_keys_keep_their_order_and_round_trip() -> None:
    pairs = [("variables", "/g:b04"), ("variables", "/g:b03"), ("rescale", "0,1")]
    query = encode_query(pairs)
    assert parse_qsl(query) == pairs
    assert query.index("b04") < query.index("b03")


def test_with_query_appends_or_extends() -> None:
    assert with_query("http://h/p", []) == "http://h/p"
    assert with_query("http://h/p", [("a", "1 2")]) == "http://h/p?a=1%202"
    extended = with_query("http://h/p?format=png", [("a", "b c")])
    assert extended == "http://h/p?format=png&a=b%20c"
    assert parse_qsl(urlsplit(extended).query) == [("format", "png"), ("a", "b c")]
