"""Origin objects as file-cache entries: Growth, StoredEntry freshness, and core's plans for them."""

from __future__ import annotations

import os

import pytest

from edge.cachekey import KeyRule
from edge.conditional import Conditions
from edge.core import Fetch, Plan, Request, Site, store_name
from edge.diskcache import Meta
from edge.filecache import FileCache, NotFound, Resolver
from edge.stored import NEVER, NOT_ON_DISK, STREAMED, Growth, StoredEntry, normalise_coding


def test_growth_wakes_waiters_once_per_change():
    g = Growth(10)
    seen = []
    g.wait(lambda: seen.append(("a", g.available)))
    g.grew(4)
    g.grew(4)  # no change: nobody to wake, and nothing happens
    g.wait(lambda: seen.append(("b", g.available)))
    g.grew(10)
    assert seen == [("a", 4), ("b", 10)]
    assert g.done and not g.failed


def test_growth_failure_wakes_and_sticks_but_not_after_done():
    g = Growth(5)
    woke = []
    g.wait(lambda: woke.append(g.failed))
    g.fail()
    assert woke == [True] and g.failed
    done = Growth(1)
    done.grew(1)
    done.fail()
    assert done.done and not done.failed


@pytest.mark.parametrize("accept, expected", [
    (None, "identity"), (b"", "identity"), (b"gzip", "gzip"), (b"gzip, br", "br, gzip"), (b"br;q=0, gzip", "gzip"),
    (b"deflate", "identity"), (b"*", "br, gzip"), (b"identity", "identity"), (b"br", "br"),
    (b"gzip, deflate, br, zstd", "br, gzip"), (b"gzip;q=0.5, identity", "identity"), (b"*;q=0", "identity"),
])
def test_normalise_coding(accept, expected):
    assert normalise_coding(accept) == expected


def _meta(**kw) -> Meta:
    base = dict(key="/a", status=200, headers=[("content-type", "text/plain"), ("etag", '"v1"'),
                                                ("last-modified", "Tue, 01 Dec 2026 00:00:00 GMT"),
                                                ("cache-control", "max-age=60")],
                length=5, stored_at=1000.0, request_time=1000.0, lifetime=60.0, initial_age=0.0)
    base.update(kw)
    return Meta(**base)


@pytest.fixture
def body(tmp_path):
    path = tmp_path / "obj"
    path.write_bytes(b"hello")
    fd = os.open(path, os.O_RDONLY)
    yield str(path), fd
    try:
        os.close(fd)
    except OSError:
        pass


def _entry(body, meta: Meta, now: float = 500.0, wall: float = 1010.0) -> StoredEntry:
    path, fd = body
    return StoredEntry(store_name(meta.key.encode()), path, fd, os.fstat(fd), meta, now, wall)


def test_stored_entry_freshness_on_the_loop_clock(body):
    entry = _entry(body, _meta(stale_while_revalidate=30, stale_if_error=100))
    # Stored at wall 1000, loaded at wall 1010 (loop time 500): 10 s old, 50 s fresh left.
    assert entry.fresh_until == pytest.approx(550.0)
    assert entry.revalidate_until == pytest.approx(580.0)
    assert entry.error_until == pytest.approx(650.0)
    assert entry.age(505.0) == 15
    assert entry.ttl(505.0) == 45
    assert entry.etag == b'"v1"' and entry.content_type == "text/plain" and entry.size == 5


def test_an_entry_made_while_its_body_arrives_matches_the_disk_only_once_published(body):
    # A miss makes its entry before the body is written (no fstat then); the later writes change the file's
    # mtime, so the identity to compare the disk with at the next check is the one taken after publishing.
    path, fd = body
    meta = _meta()
    entry = StoredEntry(store_name(meta.key.encode()), "", fd, NOT_ON_DISK, meta, 500.0, 1010.0)
    assert not entry.same_file(os.stat(path)) and entry.changed == 0
    entry.published(path, os.fstat(fd))
    st = os.stat(path)
    assert entry.fs_path == path and entry.same_file(st) and entry.changed == st.st_ctime_ns


def test_no_cache_and_must_revalidate_are_never_fresh_or_served_stale(body):
    entry = _entry(body, _meta(no_cache=True, must_revalidate=True, stale_while_revalidate=30, stale_if_error=30))
    assert entry.fresh_until == NEVER
    assert entry.revalidate_until == NEVER and entry.error_until == NEVER


def _site(tmp_path) -> Site:
    cache = FileCache(Resolver(str(tmp_path)), 100, 1.0)
    return Site(cache, cache_keys=KeyRule("keep"))


def test_site_sends_unknown_paths_to_the_store_then_serves_a_fresh_entry(tmp_path, body):
    site = _site(tmp_path)
    req = Request(b"GET", b"/a")
    first = site.respond(req, NotFound(404), b"", "/a", 500.0)
    assert type(first) is Fetch and first.key == b"/a" and first.entry is None
    entry = _entry(body, _meta())
    entry.checked = 500.0
    site.cache.store(first.name, entry, 500.0)
    plan = site.respond(req, NotFound(404), b"", "/a", 500.5)
    assert type(plan) is Plan and plan.status == 200 and plan.entry is entry
    headers = dict(plan.headers)
    assert headers[b"cache-status"] == b"edge; hit; ttl=49"
    assert headers[b"age"] == b"10"
    assert headers[b"content-length"] == b"5" and headers[b"etag"] == b'"v1"'
    assert plan.parts == ((0, 5),)
    # The same second of age reuses the plan; the next one builds a new one with the new Age.
    assert site.respond(req, NotFound(404), b"", "/a", 500.9) is plan
    entry.checked = 501.0  # checked against the disk again (the puller does it every `valid` seconds)
    later = site.respond(req, NotFound(404), b"", "/a", 501.5)
    assert dict(later.headers)[b"age"] == b"11"


def test_site_without_origins_answers_404(tmp_path):
    cache = FileCache(Resolver(str(tmp_path)), 100, 1.0)
    plan = Site(cache).respond(Request(b"GET", b"/a"), NotFound(404), b"", "/a", 1.0)
    assert type(plan) is Plan and plan.status == 404


def test_stale_or_unchecked_entries_go_back_to_the_puller(tmp_path, body):
    site = _site(tmp_path)
    entry = _entry(body, _meta())
    site.cache.store(store_name(b"/a"), entry, 500.0)
    stale = site.respond(Request(b"GET", b"/a"), NotFound(404), b"", "/a", 560.0)
    assert type(stale) is Fetch and stale.entry is entry
    entry.checked = 400.0  # fresh, but due for its check against the disk
    unchecked = site.respond(Request(b"GET", b"/a"), NotFound(404), b"", "/a", 501.0)
    assert type(unchecked) is Fetch and unchecked.entry is entry


def test_conditionals_and_ranges_on_stored_objects(tmp_path, body):
    site = _site(tmp_path)
    entry = _entry(body, _meta())
    req = Request(b"GET", b"/a")
    req.conditions = Conditions(if_none_match=b'"v1"')
    not_modified = site.stored(req, entry, 500.0)
    assert not_modified.status == 304
    names = [k for k, _ in not_modified.headers]
    assert b"etag" in names and b"cache-control" in names and b"content-type" not in names
    ranged = Request(b"GET", b"/a")
    ranged.range = b"bytes=1-2"
    partial = site.stored(ranged, entry, 500.0)
    assert partial.status == 206 and partial.parts == ((1, 2),)
    assert dict(partial.headers)[b"content-range"] == b"bytes 1-2/5"
    # While the body is still arriving, its ranges are planned the same way (the transfer waits for the
    # bytes); of a body whose length is known only at its end, a Range is ignored (the whole body streams).
    entry.growth = Growth(5)
    growing = site.stored(ranged, entry, 500.0)
    assert growing.status == 206 and growing.parts == ((1, 2),)
    entry.size = STREAMED
    entry.growth = Growth(STREAMED)
    assert site.stored(ranged, entry, 500.0).status == 200


@pytest.mark.parametrize("status, conditional", [(203, True), (204, True), (404, False), (301, False)])
def test_preconditions_apply_to_stored_2xx_answers_only(tmp_path, body, status, conditional):
    # RFC 9110 §13.2.1: a server ignores preconditions when its answer would not be 2xx (or 412).
    site = _site(tmp_path)
    entry = _entry(body, _meta(status=status))
    req = Request(b"GET", b"/a")
    req.conditions = Conditions(if_none_match=b'"v1"')
    assert site.stored(req, entry, 500.0).status == (304 if conditional else status)
    ranged = Request(b"GET", b"/a")
    ranged.range = b"bytes=1-2"
    assert site.stored(ranged, entry, 500.0).status == status, "ranges are for 200s"


def test_a_412_or_416_from_a_stored_object_has_age_and_cache_status(tmp_path, body):
    site = _site(tmp_path)
    entry = _entry(body, _meta())
    failed = Request(b"GET", b"/a")
    failed.conditions = Conditions(if_match=b'"other"')
    unsatisfiable = Request(b"GET", b"/a")
    unsatisfiable.range = b"bytes=100-"
    for req, status in ((failed, 412), (unsatisfiable, 416)):
        plan = site.stored(req, entry, 510.0)
        fields = dict(plan.headers)
        assert plan.status == status and fields[b"age"] == b"20" and fields[b"cache-status"].startswith(b"edge; hit")


def test_an_origin_object_without_validators_ignores_date_conditions(tmp_path, body):
    site = _site(tmp_path)
    entry = _entry(body, _meta(headers=[("content-type", "text/plain")]))
    req = Request(b"GET", b"/a")
    req.conditions = Conditions(if_modified_since=b"Tue, 01 Dec 2026 00:00:00 GMT",
                                if_unmodified_since=b"Tue, 01 Dec 2020 00:00:00 GMT")
    assert site.stored(req, entry, 500.0).status == 200
    req.conditions = Conditions(if_none_match=b'"x"')
    assert site.stored(req, entry, 500.0).status == 200


def test_if_modified_since_falls_back_to_the_stored_date_without_last_modified(tmp_path, body):
    # RFC 9111 §4.3.2: the stored Date, or the time it was stored, stands in for a missing Last-Modified.
    site = _site(tmp_path)
    dated = _entry(body, _meta(headers=[("content-type", "text/plain"), ("date", "Tue, 01 Dec 2026 00:00:00 GMT")]))
    undated = _entry(body, _meta(headers=[("content-type", "text/plain")], stored_at=1_795_000_000.0))
    for entry, when in ((dated, "Tue, 01 Dec 2026 00:00:00 GMT"), (undated, "Wed, 18 Nov 2026 11:06:40 GMT")):
        for since, status in ((when, 304), ("Mon, 30 Nov 2020 00:00:00 GMT", 200)):
            req = Request(b"GET", b"/a")
            req.conditions = Conditions(if_modified_since=since.encode())
            assert site.stored(req, entry, 500.0).status == status, (since, status)


def test_non_200_objects_are_served_whole_with_their_status(tmp_path, body):
    site = _site(tmp_path)
    entry = _entry(body, _meta(status=404, headers=[("content-type", "text/plain")]))
    req = Request(b"GET", b"/a")
    req.range = b"bytes=0-0"
    plan = site.stored(req, entry, 500.0)
    assert plan.status == 404 and plan.parts == ((0, 5),)
    assert b"accept-ranges" not in dict(plan.headers)


def test_explicit_cache_status_plans_are_not_reused(tmp_path, body):
    site = _site(tmp_path)
    entry = _entry(body, _meta())
    a = site.stored(Request(b"GET", b"/a"), entry, 500.0, b"edge; fwd=miss; stored")
    assert dict(a.headers)[b"cache-status"] == b"edge; fwd=miss; stored"
    hit = site.stored(Request(b"GET", b"/a"), entry, 500.0)
    assert hit is not a and dict(hit.headers)[b"cache-status"].startswith(b"edge; hit")


def test_vary_marker_sends_the_request_to_its_coding(tmp_path, body):
    site = _site(tmp_path)
    marker = _entry(body, _meta(vary="accept-encoding", length=5))
    marker.checked = 500.0
    site.cache.store(store_name(b"/a"), marker, 500.0)
    req = Request(b"GET", b"/a")
    req.accept_encoding = b"gzip, deflate"
    fetch = site.respond(req, NotFound(404), b"", "/a", 500.0)
    assert type(fetch) is Fetch and fetch.key == b"/a\0gzip" and fetch.coding == "gzip"
