"""Tests of the sans-I/O core (edge.core): requests and cache answers become plans, for both protocols."""

import gc
import os

import pytest

from edge.conditional import Conditions
from edge.config import HeaderRule
from edge.core import Miss, Request, Site
from edge.filecache import FileCache, FileEntry, Resolver


@pytest.fixture
def root(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"0123456789" * 10)
    (tmp_path / "app.js").write_bytes(b"console.log(1);" * 100)
    (tmp_path / "app.js.br").write_bytes(b"BR" * 10)
    (tmp_path / "app.js.gz").write_bytes(b"GZ" * 20)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "index.html").write_bytes(b"<p>dir</p>")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".env").write_bytes(b"SECRET=1")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "x.css").write_bytes(b"body{}")
    return tmp_path


def make_site(root, **kw):
    cache = FileCache(Resolver(str(root), inline_max=kw.pop("inline_max", 0)), max_entries=100, valid=60)
    return Site(cache, **kw)


def answer(site, target, method=b"GET", **fields):
    """Resolve like an adapter does: on a Miss, load synchronously (tests may block) and respond."""
    req = Request(method, target)
    cond = {k: v for k, v in fields.items() if k.startswith("if_")}
    if cond:
        req.conditions = Conditions(**cond)
    req.range = fields.get("range")
    req.accept_encoding = fields.get("accept_encoding")
    plan = site.resolve(req, now=1.0)
    if isinstance(plan, Miss):
        found = site.cache.store(plan.path, site.cache.resolver.load(plan.path), 1.0)
        plan = site.respond(req, found, plan.query)
    return plan


def header(plan, name):
    values = [v for k, v in plan.headers if k == name]
    return values[0] if values else None


def test_full_file_plan(root):
    site = make_site(root)
    plan = answer(site, b"/a.txt")
    assert plan.status == 200
    assert plan.parts == ((0, 100),) and plan.length == 100
    assert header(plan, b"content-length") == b"100"
    assert header(plan, b"content-type") == b"text/plain; charset=utf-8"
    assert header(plan, b"accept-ranges") == b"bytes"
    assert header(plan, b"etag").startswith(b'"') and header(plan, b"last-modified").endswith(b"GMT")
    assert header(plan, b"vary") is None
    assert answer(site, b"/a.txt") is plan  # a hit reuses the precomputed plan


def test_inline_small_files(root):
    site = make_site(root, inline_max=1024)
    plan = answer(site, b"/a.txt")
    assert plan.parts == ((b"0123456789" * 10),)


@pytest.mark.parametrize("target, status", [
    (b"/missing", 404), (b"/.env", 404), (b"/empty/", 404), (b"/../a.txt", 400), (b"/a%00", 400),
    (b"/a.txt/", 404), (b"*", 400),
])
def test_errors(root, target, status):
    assert answer(make_site(root), target).status == status


def test_dotfiles_when_allowed(root):
    assert answer(make_site(root, serve_dotfiles=True), b"/.env").status == 200


def test_method_not_allowed(root):
    plan = answer(make_site(root), b"/a.txt", method=b"POST")
    assert plan.status == 405 and header(plan, b"allow") == b"GET, HEAD"


def test_directory_redirect_and_index(root):
    site = make_site(root)
    plan = answer(site, b"/dir?x=1")
    assert plan.status == 301 and header(plan, b"location") == b"/dir/?x=1"
    plan = answer(site, b"/dir/")
    assert plan.status == 200 and plan.length == len(b"<p>dir</p>")
    assert header(plan, b"content-type") == b"text/html; charset=utf-8"


def test_not_modified_keeps_validators(root):
    site = make_site(root, header_rules=[HeaderRule("/assets/*", (("Cache-Control", "max-age=60"),))])
    etag = header(answer(site, b"/assets/x.css"), b"etag")
    plan = answer(site, b"/assets/x.css", if_none_match=etag)
    assert plan.status == 304 and plan.parts == ()
    assert header(plan, b"etag") == etag and header(plan, b"cache-control") == b"max-age=60"
    assert answer(site, b"/assets/x.css", if_match=b'"nope"').status == 412


def test_ranges(root):
    site = make_site(root)
    plan = answer(site, b"/a.txt", range=b"bytes=10-19")
    assert plan.status == 206 and plan.parts == ((10, 10),)
    assert header(plan, b"content-range") == b"bytes 10-19/100"
    plan = answer(site, b"/a.txt", range=b"bytes=200-")
    assert plan.status == 416 and header(plan, b"content-range") == b"bytes */100"
    plan = answer(site, b"/a.txt", range=b"bytes=0-0,-1")
    assert plan.status == 206
    assert header(plan, b"content-type").startswith(b"multipart/byteranges; boundary=")
    body_len = sum(len(p) if isinstance(p, bytes) else p[1] for p in plan.parts)
    assert body_len == plan.length == int(header(plan, b"content-length"))
    etag = header(answer(site, b"/a.txt"), b"etag")
    assert answer(site, b"/a.txt", range=b"bytes=0-1", if_range=etag).status == 206
    assert answer(site, b"/a.txt", range=b"bytes=0-1", if_range=b'"stale"').status == 200


def test_precompressed_variants(root):
    site = make_site(root)
    plain = answer(site, b"/app.js")
    br = answer(site, b"/app.js", accept_encoding=b"gzip, br")
    gz = answer(site, b"/app.js", accept_encoding=b"gzip")
    assert header(br, b"content-encoding") == b"br" and br.length == 20
    assert header(gz, b"content-encoding") == b"gzip" and gz.length == 40
    assert header(plain, b"content-encoding") is None and plain.length == 1500
    assert {header(p, b"vary") for p in (plain, br, gz)} == {b"Accept-Encoding"}
    assert len({header(p, b"etag") for p in (plain, br, gz)}) == 3
    assert header(br, b"content-type") == b"text/javascript; charset=utf-8"


def test_header_rules_match_globs(root):
    site = make_site(root, header_rules=[HeaderRule("/assets/*", (("Cache-Control", "immutable"),))])
    assert header(answer(site, b"/assets/x.css"), b"cache-control") == b"immutable"
    assert header(answer(site, b"/a.txt"), b"cache-control") is None


def test_changed_file_is_seen_after_valid(root):
    cache = FileCache(Resolver(str(root)), max_entries=10, valid=0.5)
    site = Site(cache)
    req = Request(b"GET", b"/a.txt")
    first = answer(site, b"/a.txt")
    assert site.resolve(req, now=1.2) is first  # within `valid`: no I/O
    (root / "a.txt").write_bytes(b"short")
    miss = site.resolve(req, now=2.0)
    assert isinstance(miss, Miss)
    found = cache.store(miss.path, cache.resolver.load(miss.path, cache.stale(miss.path)), 2.0)
    plan = site.respond(req, found, b"")
    assert plan.length == 5 and header(plan, b"etag") != header(first, b"etag")
    assert first.entry.fd == -1  # the old fd was closed (no transfer held it)
    os.unlink(root / "a.txt")
    miss = site.resolve(req, now=3.0)
    found = cache.store(miss.path, cache.resolver.load(miss.path, cache.stale(miss.path)), 3.0)
    assert site.respond(req, found, b"").status == 404


def test_dropped_entries_need_no_cycle_collector(root):
    """A plan refers to its entry and the entry keeps its plans: once purged (or evicted) the two must not stay
    a cycle, or the entry and its inline body wait for the cycle collector (in a worker, for minutes)."""
    site = make_site(root, inline_max=1024)
    gc.collect()
    gc.disable()
    try:
        answer(site, b"/a.txt")
        answer(site, b"/assets/x.css", if_none_match=header(answer(site, b"/assets/x.css"), b"etag"))  # 200 and 304
        answer(site, b"/app.js", accept_encoding=b"gzip")  # a plan on a variant's entry
        site.cache.purge(None)
        left = [o for o in gc.get_objects() if isinstance(o, FileEntry)]
    finally:
        gc.enable()
    assert left == []
