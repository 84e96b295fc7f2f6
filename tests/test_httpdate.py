"""Tests of HTTP date formatting and parsing (edge.httpdate)."""

import pytest

from edge.httpdate import format_http_date, parse_http_date

T = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example


def test_format():
    assert format_http_date(T) == "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
    b"Sun, 06 Nov 1994 08:49:37 GMT",
])
def test_parse_three_forms(value):
    assert parse_http_date(value) == T


@pytest.mark.parametrize("value", ["", "yesterday", "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 32 Nov 1994 08:49:37 GMT",
                                   "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49 GMT", b"\xff\xfe",
                                   "Sun, 06 Nov 1994 08:49:37 PST"])
def test_parse_invalid(value):
    assert parse_http_date(value) is None


def test_round_trip():
    for t in (0, 1, 951782400, 1700000000, 4102444800):
        assert parse_http_date(format_http_date(t)) == t
