"""Table-driven tests of preconditions in RFC 9110 §13.2.2 order (edge.conditional)."""

import pytest

from edge.conditional import Conditions, evaluate, if_range_allows, parse_etags, strong_match, weak_match
from edge.httpdate import format_http_date

ETAG = b'"abc-1"'
MTIME = 1_700_000_000
AT = format_http_date(MTIME).encode()
BEFORE = format_http_date(MTIME - 60).encode()
AFTER = format_http_date(MTIME + 60).encode()

CASES = [
    # (conditions, expected status)
    (Conditions(), 0),
    (Conditions(if_none_match=ETAG), 304),
    (Conditions(if_none_match=b'W/"abc-1"'), 304),  # weak comparison
    (Conditions(if_none_match=b'"x", "abc-1"'), 304),
    (Conditions(if_none_match=b"*"), 304),
    (Conditions(if_none_match=b'"other"'), 0),
    (Conditions(if_modified_since=AT), 304),
    (Conditions(if_modified_since=AFTER), 304),
    (Conditions(if_modified_since=BEFORE), 0),
    (Conditions(if_modified_since=b"not a date"), 0),
    # If-None-Match present: If-Modified-Since is not looked at
    (Conditions(if_none_match=b'"other"', if_modified_since=AFTER), 0),
    (Conditions(if_match=ETAG), 0),
    (Conditions(if_match=b"*"), 0),
    (Conditions(if_match=b'"other"'), 412),
    (Conditions(if_match=b'W/"abc-1"'), 412),  # If-Match uses strong comparison
    (Conditions(if_unmodified_since=BEFORE), 412),
    (Conditions(if_unmodified_since=AT), 0),
    (Conditions(if_unmodified_since=b"garbage"), 0),
    # If-Match present: If-Unmodified-Since is not looked at
    (Conditions(if_match=ETAG, if_unmodified_since=BEFORE), 0),
    # step 1 fails before step 3 is reached
    (Conditions(if_match=b'"other"', if_none_match=ETAG), 412),
    (Conditions(if_match=ETAG, if_none_match=ETAG), 304),
]


@pytest.mark.parametrize("cond, expected", CASES)
def test_evaluate(cond, expected):
    assert evaluate(cond, ETAG, MTIME) == expected


def test_unsafe_method_gets_412_not_304():
    assert evaluate(Conditions(if_none_match=ETAG), ETAG, MTIME, safe=False) == 412


@pytest.mark.parametrize("value, expected", [
    (b'"a"', [b'"a"']),
    (b'"a", W/"b" ,"c"', [b'"a"', b'W/"b"', b'"c"']),
    (b'"a,b"', [b'"a,b"']),
    (b"*", None),
    (b"garbage, \"ok\"", [b'"ok"']),
    (b'"unterminated', []),
])
def test_parse_etags(value, expected):
    assert parse_etags(value) == expected


def test_comparisons():
    assert strong_match([b'"a"'], b'"a"')
    assert not strong_match([b'W/"a"'], b'"a"')
    assert weak_match([b'W/"a"'], b'"a"')
    assert not weak_match([b'"b"'], b'"a"')


@pytest.mark.parametrize("value, expected", [
    (ETAG, True),
    (b'"other"', False),
    (b'W/"abc-1"', False),  # a weak tag never satisfies If-Range
    (AT, True),
    (BEFORE, False),
    (AFTER, False),
    (b"nonsense", False),
])
def test_if_range(value, expected):
    assert if_range_allows(value, ETAG, MTIME, MTIME + 10) is expected


def test_if_range_by_date_needs_a_strong_last_modified():
    # RFC 9110 §8.8.2.2: at least a second before the Date (60 s in a cache); without a Date it is weak.
    assert if_range_allows(AT, ETAG, MTIME, MTIME + 1)
    assert not if_range_allows(AT, ETAG, MTIME, MTIME + 0.5)  # modified within the second: could change again
    assert not if_range_allows(AT, ETAG, MTIME, MTIME + 30, margin=60.0)
    assert if_range_allows(AT, ETAG, MTIME, MTIME + 60, margin=60.0)
    assert not if_range_allows(AT, ETAG, MTIME, None)
