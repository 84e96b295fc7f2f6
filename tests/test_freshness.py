"""RFC 9111 rules (edge/freshness.py): storability, lifetime, age, stale windows, Cache-Status values."""

from __future__ import annotations

import pytest

from edge.freshness import FRESH, STALE, STALE_REVALIDATE, assess, cache_status, parse_cache_control
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


def test_cache_status_values():
    assert cache_status(hit=True, ttl=42.7) == b"edge; hit; ttl=42"
    assert cache_status(hit=False, fwd="miss", stored=True) == b"edge; fwd=miss; stored"
    assert cache_status(hit=True, fwd="stale") == b"edge; hit; fwd=stale"
    assert cache_status(hit=True, detail="stale-if-error") == b"edge; hit; detail=stale-if-error"
