"""Tests of HTTP date formatting and parsing (edge.httpdate)."""

import calendar
import time

import pytest

from edge.httpdate import format_http_date, parse_http_date, parse_http_date_strict

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


# -- the strict parser (RFC 9110 §5.6.7 exactly): Expires, Date and Last-Modified of origin responses ----------

NOW = 1_800_000_000  # Fri, 15 Jan 2027 08:00:00 GMT: the clock RFC 850 years are placed by


@pytest.mark.parametrize("value, expected", [
    ("Sun, 06 Nov 1994 08:49:37 GMT", T),  # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:37 GMT", T),  # RFC 850
    ("Sun Nov  6 08:49:37 1994", T),  # asctime, the day padded with a space
    ("Sun Nov 06 08:49:37 1994", T),  # asctime's day may also be two digits (date3 = month SP (2DIGIT / SP DIGIT))
    ("Wed Nov 16 08:49:37 1994", T + 10 * 86400),
    (b"Sun, 06 Nov 1994 08:49:37 GMT", T),
    ("Mon, 06 Nov 1994 08:49:37 GMT", T),  # a day name that does not match the date: accepted (the date rules)
    ("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800),  # a leap day
    ("Sat, 31 Dec 2016 23:59:60 GMT", 1483228800),  # a leap second (00:00:00 - 23:59:60)
])
def test_strict_accepts_exactly_the_three_forms(value, expected):
    assert parse_http_date_strict(value, NOW) == expected


@pytest.mark.parametrize("value", [
    "Sun 06 Nov 1994 08:49:37 GMT",  # no comma after the day name
    "Sun,06 Nov 1994 08:49:37 GMT",  # no space after it
    "Sun,  06 Nov 1994 08:49:37 GMT",  # doubled spaces
    "Sun, 06 Nov  1994 08:49:37 GMT",
    "Sun, 06 Nov 1994  08:49:37 GMT",
    "Sun, 06-Nov-1994 08:49:37 GMT",  # dashes in an IMF-fixdate
    "Sun, 6 Nov 1994 08:49:37 GMT",  # a one-digit day
    "Sun, 06 Nov 94 08:49:37 GMT",  # a two-digit year in an IMF-fixdate
    "Sun, 06 Nov 1994 08:49:37 gmt",  # lower-case GMT
    "Sun, 06 Nov 1994 08:49:37 UTC",
    "Sun, 06 Nov 1994 08:49:37 +0000",  # a numeric zone
    "Sun, 06 Nov 1994 08:49:37",  # no zone
    "Sun, 06 Nov 1994 08:49:37 GMT ",  # trailing garbage, even a space
    "Sun, 06 Nov 1994 08:49:37 GMTx",
    "Sun, 06 Nov 1994 08:49:37 GMT\n",
    " Sun, 06 Nov 1994 08:49:37 GMT",  # leading space
    "sun, 06 Nov 1994 08:49:37 GMT",  # names are case-sensitive (%s"Sun")
    "Sun, 06 nov 1994 08:49:37 GMT",
    "Sunday, 06 Nov 1994 08:49:37 GMT",  # a long day name in an IMF-fixdate
    "Xyz, 06 Nov 1994 08:49:37 GMT",
    "Sun, 06-Nov-94 08:49:37 GMT",  # a short day name in an RFC 850 date
    "Sunday, 06-Nov-1994 08:49:37 GMT",  # a four-digit year in an RFC 850 date
    "Sunday, 06 Nov 94 08:49:37 GMT",  # spaces for dashes
    "Sun Nov 6 08:49:37 1994",  # asctime's one-digit day not padded
    "Sunday Nov  6 08:49:37 1994",
    "Sun Nov  6 08:49:37 1994 GMT",
    "Sun Nov  6 08:49:37 94",
    "Sun, 06 Nov 1994 8:49:37 GMT",  # a one-digit hour
    "Sun, 06 Nov 1994 24:00:00 GMT",
    "Sun, 06 Nov 1994 08:60:00 GMT",
    "Sun, 06 Nov 1994 08:49:61 GMT",
    "Sun, 00 Nov 1994 08:49:37 GMT",
    "Sun, 31 Apr 1994 08:49:37 GMT",  # no 31 April
    "Wed, 29 Feb 2023 08:49:37 GMT",  # no leap day in 2023
    "Tue, 29 Feb 2100 08:49:37 GMT",  # nor in 2100
    "Sat, 01 Jan 0000 00:00:00 GMT",  # no year 0
    "Sun, \uff10\uff16 Nov 1994 08:49:37 GMT",  # full-width digits
    "0",
    "",
    "-1",
    "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",  # two field lines joined
    b"\xff\xfe",
])
def test_strict_refuses_anything_else(value):
    assert parse_http_date_strict(value, NOW) is None


@pytest.mark.parametrize("value", ["Sun 06 Nov 1994 08:49:37 GMT", "Sun,  06 Nov 1994 08:49:37 GMT",
                                   "Sun, 6 Nov 1994 08:49:37 GMT", "Mon, 06-Nov-1994 08:49:37 GMT"])
def test_the_lenient_parser_still_takes_what_request_fields_send(value):
    # If-Modified-Since and the like stay lenient (RFC 9110 §5.6.7: recipients are encouraged to be robust).
    assert parse_http_date(value) == T
    assert parse_http_date_strict(value, NOW) is None


def at(year: int, month: int = 1, day: int = 1, clock: str = "00:00:00") -> int:
    """Unix seconds of a date and time in GMT."""
    return calendar.timegm((year, month, day, *map(int, clock.split(":")), 0, 0, 0))


@pytest.mark.parametrize("value, now, year", [
    # RFC 9110 §5.6.7: more than 50 years ahead of now is the most recent past year with those two digits.
    ("Thursday, 01-Jan-76 00:00:00 GMT", at(2026), 2076),  # exactly 50 years ahead: not more
    ("Thursday, 01-Jan-76 00:00:01 GMT", at(2026), 1976),  # a second more: the past one
    ("Thursday, 01-Jan-76 00:00:01 GMT", at(2026, clock="00:00:01"), 2076),
    ("Saturday, 01-Jan-77 00:00:00 GMT", at(2026), 1977),
    ("Friday, 01-Jan-99 00:00:00 GMT", at(2026), 1999),
    ("Saturday, 01-Jan-00 00:00:00 GMT", at(2026), 2000),
    ("Friday, 15-Jan-27 08:00:00 GMT", NOW, 2027),
    ("Sunday, 06-Nov-94 08:49:37 GMT", at(1994, 11, 6), 1994),
    ("Sunday, 06-Nov-94 08:49:37 GMT", at(2044), 1994),  # 50 years and 10 months ahead: the past one
    ("Sunday, 06-Nov-94 08:49:37 GMT", at(2045), 2094),  # 49 years and 10 months ahead: not 1994
    ("Tuesday, 01-Jan-30 00:00:00 GMT", at(2090), 2130),  # the nearest 2-digit reading, 40 years ahead
    ("Friday, 01-Jan-41 00:00:00 GMT", at(2090), 2041),  # 49 years back
    ("Thursday, 29-Feb-24 12:00:00 GMT", NOW, 2024),  # a leap day, once the century is known
])
def test_strict_rfc850_two_digit_years_against_the_clock(value, now, year):
    assert time.gmtime(parse_http_date_strict(value, now)).tm_year == year


def test_strict_rfc850_leap_day_of_a_year_without_one():
    assert parse_http_date_strict("Monday, 29-Feb-25 12:00:00 GMT", NOW) is None  # 2025 has no 29 February
    assert parse_http_date_strict("Monday, 29-Feb-00 12:00:00 GMT", NOW) is not None  # 2000 has


def test_strict_round_trip():
    for t in (0, 1, 951782400, 1700000000, 4102444800):
        assert parse_http_date_strict(format_http_date(t), NOW) == t
