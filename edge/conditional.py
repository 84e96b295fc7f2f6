"""Conditional requests (RFC 9110 §13): entity-tag comparison and precondition evaluation in §13.2.2 order."""

from __future__ import annotations

from dataclasses import dataclass

from .httpdate import parse_http_date


@dataclass(slots=True)
class Conditions:
    """The precondition header fields of one request, raw as received (None when absent)."""

    if_match: bytes | None = None
    if_none_match: bytes | None = None
    if_modified_since: bytes | None = None
    if_unmodified_since: bytes | None = None
    if_range: bytes | None = None


def parse_etags(value: bytes) -> list[bytes] | None:
    """Split an If-Match/If-None-Match list into entity-tags (b'W/"x"' or b'"x"'); None for '*'."""
    value = value.strip()
    if value == b"*":
        return None
    tags = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in b" \t,":
            i += 1
        if i >= n:
            break
        start = i
        if value.startswith(b"W/", i):
            i += 2
        if i >= n or value[i] != 0x22:  # not a quoted tag: skip to the next comma
            j = value.find(b",", i)
            i = n if j < 0 else j
            continue
        end = value.find(b'"', i + 1)
        if end < 0:
            break
        tags.append(value[start:end + 1])
        i = end + 1
    return tags


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def strong_match(tags: list[bytes] | None, etag: bytes) -> bool:
    """Strong comparison: some tag is not weak and equals `etag` (which is strong); '*' matches."""
    if tags is None:
        return True
    return etag in tags


def weak_match(tags: list[bytes] | None, etag: bytes) -> bool:
    """Weak comparison: some tag's opaque part equals `etag`'s; '*' matches."""
    if tags is None:
        return True
    target = _opaque(etag)
    return any(_opaque(t) == target for t in tags)


def evaluate(cond: Conditions, etag: bytes, last_modified: int | None, safe: bool = True) -> int:
    """Evaluate preconditions in RFC 9110 §13.2.2 order: 0 to go on, 304 or 412 to answer with.

    An origin object may have no ETag (pass b"", which no tag matches) or no Last-Modified (None:
    the date conditions are then ignored, RFC 9110 §13.1.3-4).
    """
    if cond.if_match is not None:
        if not strong_match(parse_etags(cond.if_match), etag):
            return 412
    elif cond.if_unmodified_since is not None:
        date = parse_http_date(cond.if_unmodified_since)
        if date is not None and last_modified is not None and last_modified > date:
            return 412
    if cond.if_none_match is not None:
        if weak_match(parse_etags(cond.if_none_match), etag):
            return 304 if safe else 412
    elif cond.if_modified_since is not None and safe:
        date = parse_http_date(cond.if_modified_since)
        if date is not None and last_modified is not None and last_modified <= date:
            return 304
    return 0


def if_range_allows(value: bytes, etag: bytes, last_modified: int | None, dated: float | None,
                    margin: float = 1.0) -> bool:
    """If-Range (RFC 9110 §13.1.5): True when the Range may be honoured for this representation.

    A date matches only a strong Last-Modified (§8.8.2.2): at least `margin` seconds before `dated`, the
    representation's Date (now, for a file served as its origin; the stored Date in a cache, where the
    margin is 60 s). Without a Date it is weak.
    """
    value = value.strip()
    if value.startswith(b'"') or value.startswith(b"W/"):
        return not value.startswith(b"W/") and bool(etag) and value == etag
    date = parse_http_date(value)
    if date is None or last_modified is None or date != last_modified:
        return False
    return dated is not None and last_modified <= dated - margin
