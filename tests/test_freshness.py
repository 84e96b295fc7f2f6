"""RFC 9111 rules (edge/freshness.py): storability, lifetime, age, stale windows, Cache-Status values."""

from __future__ import annotations

import pytest

from edge.freshness import FRESH, STALE, STALE_REVALIDATE, assess, parse_cache_control
from edge.httpdate import format_http_date

NOW = 1_800_000_000.0
DATE = format_http_date(NOW)


def fresh(status: int = 200, default_ttl: float = 60.0, authorized: bool = False, **headers: str):
    """assess() for a response received at NOW (request sent at NOW) with `headers` (underscores -> dashes)."""
    hs = {k.replace("_", "-"): v for k, v in headers.items()}
    hs.setdefault("date", DATE)
    return assess(status, hs, NOW, NOW, default_ttl, authorized=authorized)


@pytest.mark.parametrize("value, parsed", [
    ("max-age=60, public", {"max-age": "60", "public": None}),
    ('Max-Age="30", no-cache="set-cookie, x"', {"max-age": "30", "no-cache": "set-cookie, x"}),
    ("max-age=1, max-age=99", {"max-age": "1"}),
    ("", {}),
    (None, {}),
    (" , private ,", {"private": None}),
])
def test_parse_cache_control(value, parsed):
    assert parse_cache_control(value) == parsed


@pytest.mark.parametrize("headers, lifetime", [
    ({"cache_control": "max-age=100"}, 100),
    ({"cache_control": "max-age=100, s-maxage=5"}, 5),
    ({"expires": format_http_date(NOW + 300)}, 300),
    ({"expires": format_http_date(NOW + 300), "cache_control": "max-age=7"}, 7),
    ({"expires": "0"}, 0),  # invalid Expires: already stale
    ({"last_modified": format_http_date(NOW - 10_000)}, 1000),  # heuristic: 10% of the age of the content
    ({"last_modified": format_http_date(NOW - 100 * 86_400)}, 86_400),  # capped at a day
    ({}, 60),  # nothing said: the configured default
    ({"cache_control": "max-age=abc"}, 0),  # a bad argument: stale at once (RFC 9111 §4.2.1), not the default
    ({"cache_control": "max-age=-1"}, 0),
    ({"cache_control": "s-maxage=x, max-age=100"}, 0),
])
def test_lifetime(headers, lifetime):
    assert fresh(**headers).lifetime == lifetime


@pytest.mark.parametrize("status, headers, storable", [
    (200, {}, True),
    (404, {}, True),
    (301, {}, True),
    (302, {}, False),  # not heuristically cacheable and nothing explicit
    (302, {"cache_control": "max-age=60"}, True),  # with explicit freshness (RFC 9111 §3)
    (307, {"expires": DATE}, True),
    (307, {}, False),
    (206, {"cache_control": "max-age=60"}, False),
    (500, {}, False),
    (500, {"cache_control": "max-age=60"}, False),  # known, and not a status this cache keeps
    (299, {"cache_control": "max-age=60"}, True),  # an extension code: with explicit freshness only
    (599, {"cache_control": "s-maxage=60"}, True),
    (299, {}, False),
    (499, {"expires": DATE}, True),
    (200, {"cache_control": "no-store"}, False),
    (200, {"cache_control": "private"}, False),
    (200, {"cache_control": "private=\"x\", max-age=5"}, False),
])
def test_storable(status, headers, storable):
    assert fresh(status, **headers).storable is storable


def test_authorized_requests_only_with_public_s_maxage_or_must_revalidate():
    assert not fresh(authorized=True, cache_control="max-age=60").storable
    assert fresh(authorized=True, cache_control="public, max-age=60").storable
    assert fresh(authorized=True, cache_control="s-maxage=60").storable
    assert fresh(authorized=True, cache_control="must-revalidate, max-age=60").storable


def test_age_from_age_header_delay_and_date():
    # Sent at NOW-2, received at NOW, the origin says Age: 10 and its Date is 30 s old.
    f = assess(200, {"date": format_http_date(NOW - 30), "age": "10", "cache-control": "max-age=100"},
               NOW - 2, NOW, 60)
    assert f.initial_age == 30  # apparent age (30) beats Age + delay (12)
    g = assess(200, {"date": DATE, "age": "10", "cache-control": "max-age=100"}, NOW - 2, NOW, 60)
    assert g.initial_age == 12
    assert g.age(NOW, NOW + 5) == 17


def test_states_over_time():
    f = fresh(cache_control="max-age=10, stale-while-revalidate=20, stale-if-error=100")
    assert f.state(NOW, NOW + 5) == FRESH
    assert f.state(NOW, NOW + 15) == STALE_REVALIDATE
    assert f.state(NOW, NOW + 31) == STALE
    assert f.usable_on_error(NOW, NOW + 105)
    assert not f.usable_on_error(NOW, NOW + 111)


def test_no_cache_and_must_revalidate():
    assert fresh(cache_control="no-cache, max-age=100").state(NOW, NOW) == STALE
    assert fresh(pragma="no-cache").state(NOW, NOW) == STALE
    assert fresh(pragma="no-cache", cache_control="max-age=5").state(NOW, NOW) == FRESH  # CC wins over Pragma
    strict = fresh(cache_control="max-age=1, must-revalidate, stale-while-revalidate=60, stale-if-error=60")
    assert strict.state(NOW, NOW + 5) == STALE
    assert not strict.usable_on_error(NOW, NOW + 5)


def test_cdn_cache_control_wins_over_cache_control_and_expires():
    # RFC 9213: a CDN cache uses the targeted field when it has a valid value, and ignores the others.
    assert fresh(cdn_cache_control="max-age=600", cache_control="no-store").lifetime == 600
    assert fresh(cdn_cache_control="max-age=600", cache_control="no-store").storable
    assert not fresh(cdn_cache_control="no-store", cache_control="max-age=600").storable
    assert fresh(cdn_cache_control="max-age=5", expires=format_http_date(NOW + 100)).lifetime == 5
    assert fresh(cdn_cache_control="", cache_control="max-age=7").lifetime == 7  # empty: as if absent


def test_s_maxage_implies_proxy_revalidate_unless_stale_directives_say_otherwise():
    assert fresh(cache_control="s-maxage=1").must_revalidate
    swr = fresh(cache_control="s-maxage=1, stale-while-revalidate=59")
    assert not swr.must_revalidate and swr.state(NOW, NOW + 5) == STALE_REVALIDATE
    assert fresh(cache_control="s-maxage=1, stale-if-error=60").usable_on_error(NOW, NOW + 5)
    assert fresh(cache_control="s-maxage=1, must-revalidate, stale-while-revalidate=59").must_revalidate


# -- Age (RFC 9111 §5.1): the first member counts; an invalid one makes the answer stale on arrival ------------

@pytest.mark.parametrize("age, initial_age", [
    ("10", 10),
    ("10, 7", 10),  # a list: the first member (RFC 9111 §5.1)
    ("10,7", 10),
    ("10 , 99999", 10),
    (", 10", 10),  # empty list elements are ignored (RFC 9110 §5.6.1.2)
    ("0", 0),
    ("99999999999999999999", 2**31),  # too large to represent: 2^31 (RFC 9111 §1.2.2)
    ("9" * 5000, 2**31),  # not even parsed
])
def test_age_first_member(age, initial_age):
    f = fresh(cache_control="max-age=100", age=age)
    assert f.initial_age == initial_age
    assert f.lifetime == 100


def test_age_from_repeated_field_lines_as_the_puller_joins_them():
    from edge.pull import _header_dict

    joined = _header_dict([("date", DATE), ("age", "5"), ("cache-control", "max-age=100"), ("age", "70")])
    assert joined["age"] == "5, 70"
    f = assess(200, joined, NOW, NOW, 60)
    assert f.initial_age == 5 and f.state(NOW, NOW + 90) == FRESH


@pytest.mark.parametrize("age", ["-1", "abc", "1.5", "+5", "5 7", "", " ", "0x10", "1e3", "\u0665",
                                 "abc, 5", "-3, 10"])
def test_invalid_age_is_stale_on_arrival(age):
    f = fresh(cache_control="max-age=100, stale-while-revalidate=30, stale-if-error=300", age=age)
    assert f.lifetime == 0 and f.state(NOW, NOW) != FRESH
    assert f.initial_age == 0, "stale by its lifetime, not by a made-up age"
    # stale-while-revalidate and stale-if-error still count from arrival (RFC 9111 §4.2.4)
    assert f.state(NOW, NOW + 10) == STALE_REVALIDATE and f.state(NOW, NOW + 31) == STALE
    assert f.usable_on_error(NOW, NOW + 200)


# -- Expires, Date, Last-Modified: the strict HTTP-date (RFC 9111 §5.3, RFC 9110 §5.6.7) -------------------

IN_300 = NOW + 300  # Fri, 15 Jan 2027 08:05:00 GMT


@pytest.mark.parametrize("expires, lifetime", [
    ("Fri, 15 Jan 2027 08:05:00 GMT", 300),  # IMF-fixdate
    ("Friday, 15-Jan-27 08:05:00 GMT", 300),  # RFC 850
    ("Fri Jan 15 08:05:00 2027", 300),  # asctime
    ("Fri, 15 Jan 2027 07:00:00 GMT", 0),  # in the past
    ("Fri 15 Jan 2027 08:05:00 GMT", 0),  # no comma: invalid, already expired
    ("Fri, 15 Jan 2027  08:05:00 GMT", 0),  # a doubled space
    ("Fri, 15-Jan-2027 08:05:00 GMT", 0),  # dashes in an IMF-fixdate
    ("Fri, 15 Jan 2027 08:05:00 gmt", 0),
    ("Fri, 15 Jan 2027 08:05:00 +0000", 0),  # a numeric zone
    ("Fri, 15 Jan 2027 08:05:00 GMT; x", 0),  # trailing garbage
    ("Fri, 15 Jan 27 08:05:00 GMT", 0),
    ("Fri Jan 15 08:05:00 2027 GMT", 0),
    ("0", 0),  # RFC 9111 §5.3's example
    ("Fri, 15 Jan 2027 08:05:00 GMT, Fri, 15 Jan 2027 09:00:00 GMT", 0),  # two Expires lines
])
def test_expires_exact_forms(expires, lifetime):
    assert IN_300 == 1_800_000_300 and fresh(expires=expires).lifetime == lifetime


def test_rfc850_expires_year_is_placed_by_the_response_time():
    # In 2070 an RFC 850 "71" is 2071 (RFC 9110 §5.6.7: only more than 50 years ahead is the past century).
    received = 3_155_760_000.0  # Sun, 01 Jan 2070 00:00:00 GMT
    f = assess(200, {"date": "Sun, 01 Jan 2070 00:00:00 GMT", "expires": "Thursday, 01-Jan-71 00:00:00 GMT"},
               received, received, 60)
    assert f.lifetime == 365 * 86400


@pytest.mark.parametrize("date", ["Fri, 15 Jan 2027 07:00:00 gmt", "Fri,15 Jan 2027 07:00:00 GMT",
                                  "Fri, 15 Jan 2027 07:00:00", "yesterday", "Fri, 15 Jan 2027 07:00:00 GMT, x"])
def test_an_invalid_date_is_as_if_absent(date):
    # The receipt time stands in (RFC 9110 §6.6.1): no apparent age, and Expires counts from arrival.
    f = fresh(date=date, expires="Fri, 15 Jan 2027 08:05:00 GMT")
    assert f.initial_age == 0 and f.lifetime == 300


@pytest.mark.parametrize("last_modified, lifetime", [
    (format_http_date(NOW - 10_000), 1000),
    ("Fri,  15 Jan 2027 05:13:20 GMT", 60),  # not an HTTP-date: no heuristic, the default TTL
    ("Fri, 15 Jan 2027 05:13:20 UTC", 60),
])
def test_last_modified_heuristic_needs_an_exact_date(last_modified, lifetime):
    assert fresh(last_modified=last_modified).lifetime == lifetime


# -- CDN-Cache-Control (RFC 9213): a Structured Field Dictionary, ignored whole when it does not fit -----------

FALLBACK = {"lifetime": 7, "storable": True}  # what Cache-Control: max-age=7 says when CDN-Cache-Control is ignored


@pytest.mark.parametrize("cdn, expected", [
    ("max-age=60", {"lifetime": 60}),
    ("max-age=60, stale-while-revalidate=30", {"lifetime": 60, "stale_while_revalidate": 30}),
    ("s-maxage=10, stale-if-error=5, max-age=99", {"lifetime": 10, "stale_if_error": 5, "must_revalidate": False}),
    ("s-maxage=10", {"lifetime": 10, "must_revalidate": True}),
    ("max-age=60, max-age=5", {"lifetime": 5}),  # a later duplicate overwrites (RFC 8941 §4.2.2)
    ("max-age=60;unit=s", {"lifetime": 60}),  # parameters are ignored (RFC 9213 §2.2)
    ("max-age=60, extension=(1 2);x, other=:YQ==:", {"lifetime": 60}),  # unknown members: any type
    ("no-store", {"storable": False}),
    ("no-store=?1", {"storable": False}),
    ("private", {"storable": False}),
    ('private="set-cookie"', {"storable": False}),  # Boolean true or a String of field names
    ("no-cache, max-age=60", {"no_cache": True}),
    ('no-cache="set-cookie, x-id", max-age=60', {"no_cache": True}),
    ("must-revalidate, max-age=60", {"must_revalidate": True}),
    ("public, max-age=60", {"storable": True}),
    ("none", {"lifetime": 60, "storable": True}),  # RFC 9213 §3.1: valid, non-empty: Cache-Control is ignored
    ("  max-age=60  ", {"lifetime": 60}),
    # ignored as a whole: Cache-Control (max-age=7) applies as if CDN-Cache-Control were absent
    ("", FALLBACK),
    ("Max-Age=60", FALLBACK),  # keys are lower case (RFC 8941 §3.2)
    ("max-age=60,", FALLBACK),  # a parse error
    ('max-age=60, x="open', FALLBACK),
    ("max-age=60, é", FALLBACK),
    ("max-age=1.5", FALLBACK),  # RFC 9213 §2.2: an Integer, never coerced
    ('max-age="60"', FALLBACK),
    ("max-age=-1", FALLBACK),
    ("max-age=sixty", FALLBACK),
    ("max-age, no-store", FALLBACK),  # Boolean true is not an Integer
    ("stale-while-revalidate=?1, max-age=60", FALLBACK),
    ("s-maxage=(60)", FALLBACK),
    ("no-store=?0", FALLBACK),  # no-store is always Boolean true
    ('no-store="yes"', FALLBACK),
    ("no-store=1", FALLBACK),
    ("must-revalidate=1, max-age=60", FALLBACK),
    ("public=?0, max-age=60", FALLBACK),
    ("private=set-cookie", FALLBACK),  # a Token is not a String
    ('private="a b"', FALLBACK),  # not a field-name list
    ('no-cache=""', FALLBACK),
    ("no-cache=5", FALLBACK),
])
def test_cdn_cache_control(cdn, expected):
    f = fresh(cdn_cache_control=cdn, cache_control="max-age=7", expires=format_http_date(NOW + 1000))
    defaults = {"storable": True, "stale_while_revalidate": 0, "stale_if_error": 0, "no_cache": False,
                "must_revalidate": False}
    for name, value in {**defaults, **expected}.items():
        assert getattr(f, name) == value, name


def test_ignored_cdn_cache_control_leaves_expires_in_force():
    f = fresh(cdn_cache_control="max-age=1.5", expires=format_http_date(NOW + 500))
    assert f.lifetime == 500
    g = fresh(cdn_cache_control="no-store=?0", cache_control="no-store")
    assert not g.storable  # Cache-Control's no-store, once the targeted field is ignored


def test_cdn_cache_control_lines_are_one_dictionary():
    from edge.pull import _header_dict

    joined = _header_dict([("date", DATE), ("cdn-cache-control", "max-age=60"), ("cdn-cache-control", "max-age=5"),
                           ("cache-control", "max-age=7")])
    assert assess(200, joined, NOW, NOW, 60).lifetime == 5


# -- The RFC 9111 table: response fields + request + clock -> store? state? ttl? serve stale on error? --------

LM_10D = format_http_date(NOW - 10 * 86_400)
IN_1H = format_http_date(NOW + 3600)

# (status, response fields, authorized, seconds after receipt) -> (storable, state, ttl left, usable when the
# origin fails: fresh, or within stale-if-error)
RFC9111_TABLE = [
    pytest.param(200, {"cache-control": "max-age=60"}, False, 30, (True, FRESH, 30, True), id="max-age: fresh"),
    pytest.param(200, {"cache-control": "max-age=60"}, False, 61, (True, STALE, -1, False), id="max-age: stale"),
    pytest.param(200, {"cache-control": "max-age=60, s-maxage=10"}, False, 30, (True, STALE, -20, False),
                 id="s-maxage wins for a shared cache (§5.2.2.10)"),
    pytest.param(200, {"expires": IN_1H}, False, 600, (True, FRESH, 3000, True), id="Expires - Date (§4.2.1)"),
    pytest.param(200, {"expires": IN_1H, "cache-control": "max-age=5"}, False, 10, (True, STALE, -5, False),
                 id="max-age over Expires"),
    pytest.param(200, {"expires": "Sun, 06 Nov 2094 08:49:37 gmt"}, False, 0, (True, STALE, 0, False),
                 id="invalid Expires: already expired (§5.3)"),
    pytest.param(200, {"expires": "0"}, False, 0, (True, STALE, 0, False), id="Expires: 0"),
    pytest.param(200, {"last-modified": LM_10D}, False, 3600, (True, FRESH, 86_400 - 3600, True),
                 id="heuristic: 10% of Date - Last-Modified (§4.2.2)"),
    pytest.param(200, {}, False, 30, (True, FRESH, 30, True), id="nothing said: default_ttl"),
    pytest.param(200, {"cache-control": "max-age=60", "age": "50"}, False, 5, (True, FRESH, 5, True),
                 id="Age counts (§4.2.3)"),
    pytest.param(200, {"cache-control": "max-age=60", "age": "5, 50"}, False, 0, (True, FRESH, 55, True),
                 id="Age as a list: the first value"),
    pytest.param(200, {"cache-control": "max-age=60", "age": "-1"}, False, 0, (True, STALE, 0, False),
                 id="invalid Age: stale on arrival (§5.1)"),
    pytest.param(200, {"cache-control": "no-store, max-age=60"}, False, 0, (False, FRESH, 60, True),
                 id="no-store: never stored"),
    pytest.param(200, {"cache-control": "private, max-age=60"}, False, 0, (False, FRESH, 60, True),
                 id="private: not for a shared cache"),
    pytest.param(200, {"cache-control": "no-cache, max-age=60"}, False, 0, (True, STALE, None, False),
                 id="no-cache: stored, validated before each reuse"),
    pytest.param(200, {"cache-control": "max-age=1, stale-while-revalidate=60"}, False, 30,
                 (True, STALE_REVALIDATE, -29, False), id="stale-while-revalidate window (RFC 5861)"),
    pytest.param(200, {"cache-control": "max-age=1, stale-if-error=60"}, False, 30, (True, STALE, -29, True),
                 id="stale-if-error window"),
    pytest.param(200, {"cache-control": "max-age=1, stale-if-error=60, must-revalidate"}, False, 30,
                 (True, STALE, -29, False), id="must-revalidate closes the stale windows (§5.2.2.2)"),
    pytest.param(200, {"cache-control": "s-maxage=1, stale-if-error=60"}, False, 30, (True, STALE, -29, True),
                 id="s-maxage with its own stale-if-error"),
    pytest.param(200, {"cache-control": "s-maxage=1"}, False, 30, (True, STALE, -29, False),
                 id="s-maxage alone implies proxy-revalidate"),
    pytest.param(200, {"cache-control": "max-age=60"}, True, 0, (False, FRESH, 60, True),
                 id="Authorization: not stored without public/s-maxage/must-revalidate (§3.5)"),
    pytest.param(200, {"cache-control": "public, max-age=60"}, True, 0, (True, FRESH, 60, True),
                 id="Authorization with public"),
    pytest.param(200, {"cache-control": "no-store", "cdn-cache-control": "max-age=60"}, False, 0,
                 (True, FRESH, 60, True), id="CDN-Cache-Control speaks to this cache (RFC 9213)"),
    pytest.param(200, {"cache-control": "max-age=60", "cdn-cache-control": "max-age=\"60\""}, False, 0,
                 (True, FRESH, 60, True), id="a CDN-Cache-Control of the wrong type is ignored"),
    pytest.param(302, {}, False, 0, (False, FRESH, 60, True), id="302 without explicit freshness"),
    pytest.param(299, {"cache-control": "max-age=60"}, False, 0, (True, FRESH, 60, True),
                 id="an extension status with explicit freshness (§3)"),
]


@pytest.mark.parametrize(("status", "fields", "authorized", "later", "expected"), RFC9111_TABLE)
def test_rfc9111_table(status: int, fields: dict[str, str], authorized: bool, later: float,
                       expected: tuple) -> None:
    """One row per rule: what assess() and the reuse windows production uses say at a point in time."""
    headers = {"date": DATE, **fields}
    judged = assess(status, headers, NOW, NOW, 60.0, authorized=authorized)
    storable, state, ttl, on_error = expected
    assert judged.storable is storable
    assert judged.state(NOW, NOW + later) == state
    _, fresh_left, _, _ = judged.windows(NOW, NOW + later)
    assert (None if fresh_left == float("-inf") else round(fresh_left)) == ttl
    assert judged.usable_on_error(NOW, NOW + later) is on_error
