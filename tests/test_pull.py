"""Origin pull end to end (issue 5): real `edge serve` processes in front of real aiohttp origins on loopback.

Each origin (tests/origin_server.py) counts and logs every request it gets, so the tests check what
reached the origin, not only what the client saw. Every test ends by checking that edge still runs and
that its cache's tmp/ holds nothing but the lock file once the requests are over.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest
import yarl
from conftest import (
    Client,
    EdgeProcess,
    H2Client,
    h2_get,
    read_until_closed,
    request,
    wait_for,
)
from origin_server import gen_body, pattern, vary_body
from test_supervisor import serving_pid

from adapter_harness import Edge, make_config

from edge.cachekey import digest
from edge.core import Fetch, store_name
from edge.diskcache import DiskCache, Meta, read_meta
from edge.follow import HIT_FOR_MISS, MARK_SLOTS, Follower, HitForMiss
from edge.reports import FLUSH_DELAY
from edge.ring import Ring
from edge.variants import suffix

HERE = Path(__file__).resolve().parent
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
HIT = re.compile(r"edge; hit; ttl=(\d+)")
MISS_STORED = "edge; fwd=miss; stored"
MISS = "edge; fwd=miss"
COLLAPSED = "edge; fwd=miss; stored; collapsed"
STALE_REVALIDATE = "edge; hit; fwd=stale; detail=stale-while-revalidate"
STALE_ERROR = "edge; fwd=stale; detail=stale-if-error"  # forwarded and failed: not a hit (RFC 9211 §2.1)
REVALIDATED = "edge; fwd=stale; fwd-status=304"
STALE_REFETCHED = "edge; fwd=stale; stored"


# -- origins ----------------------------------------------------------------------------------------------


class Origin:
    """One origin_server.py process: its URL, and what it was asked (GET /_stats on it, never through edge)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "origin_server.py")], stdout=subprocess.PIPE,
                                     text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        """{"counts": {path?query: n}, "log": [{"path", "method", "headers"}], "waiting": [gate names]}."""
        return httpx.get(self.url + "/_stats", timeout=10).json()

    def count(self, target: str) -> int:
        """How many requests for `target` (path and query as sent) reached this origin."""
        return self.stats()["counts"].get(target, 0)

    def requests(self, target: str) -> list[dict[str, str]]:
        """The header fields of each request for `target`, oldest first."""
        return [r["headers"] for r in self.stats()["log"] if r["path"] == target]

    def ctl(self, path: str) -> None:
        """A control route (/_health/fail, /_fail/NAME/on, /_bump/NAME, /_release/NAME)."""
        httpx.get(self.url + path, timeout=10).raise_for_status()

    def kill(self) -> None:
        """Kill the process (its port then refuses connections)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def origins():
    """A factory of origin processes: origins(2) -> [Origin, Origin]; all killed afterwards."""
    started: list[Origin] = []

    def start(n: int = 1) -> list[Origin]:
        new = [Origin() for _ in range(n)]
        started.extend(new)
        return new

    yield start
    for origin in started:
        origin.kill()


def closed_url() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- helpers ----------------------------------------------------------------------------------------------


def gen(name: str, **params: str) -> str:
    """The target of /gen/NAME with its response shaped by `params` (cc, etag, lm, expires, cookie, vary, status, size)."""
    if not params:
        return f"/gen/{name}"
    # `,` `;` `/` `:` left as they are: the origin client (yarl) would unquote them, and the origin's counts
    # are by the raw target it receives.
    target = f"/gen/{name}?" + "&".join(f"{k}={quote(str(v), safe=',;/:')}" for k, v in params.items())
    assert yarl.URL("http://o" + target).raw_path_qs == target, target
    return target


def get(server: EdgeProcess, target: str, headers: dict | None = None, method: str = "GET"):
    """One HTTP/1.1 request on a fresh connection: (status, lower-cased headers, body)."""
    return request(server, target, headers=headers, method=method)


def head_of(server: EdgeProcess, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET on a fresh connection, reading only the head: (status, lower-cased headers, bytes after the head
    within a short wait). For answers without a body, whatever framing fields they carry."""
    sock = server.connect(timeout=10)
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before the end of the head: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        sock.settimeout(0.3)
        try:
            rest += sock.recv(65536)
        except TimeoutError:
            pass
    finally:
        sock.close()
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def object_files(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """(body, metadata) paths of the stored object for cache key `key`."""
    name = digest(key.encode("latin-1"))
    base = cache_dir / "objects" / name[:2] / name
    return base, Path(str(base) + ".meta")


def stored(cache_dir: Path, key: str) -> dict | None:
    """The metadata of the stored object for `key` (None when there is no complete object)."""
    body, meta = object_files(cache_dir, key)
    found = read_meta(str(body), str(meta)) if body.exists() else None
    return None if found is None else json.loads(found.dumps())


def stored_soon(cache_dir: Path, key: str) -> dict:
    """The metadata of `key`'s object, waiting for it: a body is published just after its last byte is sent."""
    assert wait_for(lambda: stored(cache_dir, key) is not None, 5), f"{key} was not stored"
    return stored(cache_dir, key)


def stored_keys(cache_dir: Path) -> set[str]:
    """The keys of every object in the cache directory."""
    metas = (read_meta(str(p), f"{p}.meta") for p in (cache_dir / "objects").glob("*/*") if p.suffix != ".meta")
    return {m.key for m in metas if m is not None}


def settled(server: EdgeProcess, cache_dir: Path) -> None:
    """Edge still runs, and tmp/ has gone back to the node's two fixed files, the key locks and the
    hit-for-miss marks (no bodies, no fetches to follow)."""
    assert server.alive(), server.stderr()
    tmp = cache_dir / "tmp"
    fixed = {"locks", "hit-for-miss"}
    wait_for(lambda: not set(os.listdir(tmp)) - fixed, 10)
    left = sorted(set(os.listdir(tmp)) - fixed)
    assert not left, f"leftovers in {tmp}: {left}"


def until(fetch, predicate, timeout: float = 15.0, step: float = 0.1):
    """Call `fetch()` until `predicate(result)` holds; returns that result (fails after `timeout`)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fetch()
        if predicate(last):
            return last
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s; last result: {last!r}"[:2000])


def owner(upstreams: list[Origin], key: str) -> int:
    """Index of the origin the ring gives `key` (edge names each origin by its URL, weight 1)."""
    return Ring([(o.url, 1) for o in upstreams]).candidates(key.encode("latin-1"))[0]


def curl(url: str, out: Path, *args: str) -> tuple[int, dict[str, str]]:
    """curl to a file: (exit status, lower-cased headers of the last response)."""
    head = out.with_suffix(".head")
    done = subprocess.run([CURL, "-sS", "--max-time", "20", "-o", str(out), "-D", str(head), *args, url],
                          check=False, capture_output=True, timeout=30)
    headers: dict[str, str] = {}
    if head.exists():
        blocks = [b for b in head.read_bytes().split(b"\r\n\r\n") if b.strip()]
        for line in blocks[-1].decode("latin-1").split("\r\n")[1:] if blocks else []:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return done.returncode, headers


# -- miss, hit, what reaches the origin ---------------------------------------------------------------


def test_miss_then_hit_asks_the_origin_once(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    client_fields = {"Cookie": "session=secret", "X-Secret": "do-not-forward", "Accept-Encoding": "gzip, br",
                     "User-Agent": "test-agent/1"}
    status, h1, body1 = get(server, "/obj/a", client_fields)
    assert status == 200
    assert body1 == f"a@{origin.port}".encode()
    assert h1["cache-status"] == MISS_STORED
    assert h1["age"] == "0"
    assert h1["x-origin"] == str(origin.port)
    assert h1["cache-control"] == "max-age=60"
    assert h1["server"] == "edge"
    for dropped in ("keep-alive", "surrogate-key", "transfer-encoding"):
        assert dropped not in h1, f"{dropped} passed on: {h1}"
    assert int(h1["content-length"]) == len(body1)

    status, h2, body2 = get(server, "/obj/a")
    assert status == 200 and body2 == body1
    m = HIT.fullmatch(h2["cache-status"])
    assert m, h2["cache-status"]
    assert 0 < int(m.group(1)) <= 60
    assert 0 <= int(h2["age"]) <= 60
    assert h2["x-origin"] == str(origin.port) and "surrogate-key" not in h2

    assert origin.count("/obj/a") == 1
    [sent] = origin.requests("/obj/a")
    assert sent["Host"] == f"127.0.0.1:{origin.port}"
    assert sent["Via"] == "1.1 edge"
    assert sent["Accept-Encoding"] == "identity"  # a first fetch asks for identity
    for name in ("Cookie", "X-Secret", "User-Agent"):
        assert name not in sent, f"client field {name} forwarded: {sent}"

    meta = stored_soon(cache_dir, "/obj/a")
    assert meta is not None and meta["status"] == 200 and meta["length"] == len(body1)
    assert meta["tags"] == ["a", "b"]  # from Surrogate-Key
    assert object_files(cache_dir, "/obj/a")[0].read_bytes() == body1
    settled(server, cache_dir)
    assert server.stop() == 0
    # The workers' shared stats count it: one miss, one hit, one origin request.
    assert "origin pull: 1 cache hits, 1 misses, 0 stale, 1 origin requests, 0 origin errors" in server.stderr()


def test_local_file_wins_over_the_origin(pull, origins, cache_dir, www):
    [origin] = origins(1)
    server = pull([origin])
    status, headers, body = get(server, "/hello.txt")
    assert status == 200 and body == (www / "hello.txt").read_bytes()
    assert "cache-status" not in headers and "x-origin" not in headers
    status, headers, body = get(server, "/elsewhere.txt")  # not in the root: the origin has it
    assert status == 200 and body == b"origin /elsewhere.txt\n"
    assert headers["cache-status"] == MISS_STORED
    counts = origin.stats()["counts"]
    assert "/hello.txt" not in counts
    assert counts["/elsewhere.txt"] == 1
    settled(server, cache_dir)


# -- choosing the origin ------------------------------------------------------------------------------


def test_each_key_always_goes_to_its_ring_origin(pull, origins, cache_dir):
    upstreams = origins(2)
    server = pull(upstreams, "--workers", "2", "--cpu-affinity", "off")
    targets = [gen(f"k{i}", cc="no-store") for i in range(16)]
    seen = defaultdict(set)
    for _ in range(3):
        for target in targets:
            status, headers, _ = get(server, target)
            assert status == 200 and headers["cache-status"] == MISS
            seen[target].add(int(headers["x-origin"]))
    used = set()
    for target in targets:
        expected = upstreams[owner(upstreams, target)]
        assert seen[target] == {expected.port}, f"{target} went to {seen[target]}, its ring origin is {expected.port}"
        used.add(expected.port)
        other = upstreams[1 - upstreams.index(expected)]
        assert expected.count(target) == 3 and other.count(target) == 0
    assert used == {o.port for o in upstreams}, "the keys should spread over both origins"
    settled(server, cache_dir)


def test_failover_when_the_keys_origin_is_killed(pull, origins, cache_dir):
    upstreams = origins(2)
    server = pull(upstreams)  # active checks every 5 s: they will not notice in time, the retry must
    target = next(t for t in (gen(f"f{i}", cc="no-store") for i in range(100)) if owner(upstreams, t) == 0)
    cached = next(t for t in (gen(f"g{i}", cc="max-age=60") for i in range(100)) if owner(upstreams, t) == 0)
    first, second = upstreams
    status, headers, _ = get(server, target)
    assert status == 200 and headers["x-origin"] == str(first.port)
    status, headers, body = get(server, cached)
    assert status == 200 and headers["x-origin"] == str(first.port) and headers["cache-status"] == MISS_STORED
    first.kill()
    for _ in range(3):
        status, headers, body = get(server, target)
        assert status == 200, (status, headers, body)
        assert headers["x-origin"] == str(second.port)
        assert body.startswith(f"{target.split('/')[2].split('?')[0]}@{second.port}".encode())
    assert second.count(target) == 3
    status, headers, _ = get(server, cached)  # what was stored from the dead origin is still served
    assert status == 200 and HIT.fullmatch(headers["cache-status"]) and headers["x-origin"] == str(first.port)
    settled(server, cache_dir)


def test_origin_tables_set_weight_and_host_header(pull, origins, cache_dir):
    heavy, light = origins(2)
    server = pull([], config=f'[[origin]]\nurl = "{heavy.url}"\nweight = 3\nhost_header = "cdn.example"\n\n'
                             f'[[origin]]\nurl = "{light.url}/"\n')
    ring = Ring([(heavy.url, 3), (light.url, 1)])
    targets = [gen(f"w{i}", cc="no-store") for i in range(40)]
    for target in targets:
        status, headers, _ = get(server, target)
        assert status == 200
        assert int(headers["x-origin"]) == (heavy, light)[ring.candidates(target.encode())[0]].port, target
    on_heavy = sum(heavy.count(t) for t in targets)
    assert on_heavy + sum(light.count(t) for t in targets) == 40 and on_heavy > 20, "weight 3 takes most keys"
    sent = heavy.requests(next(t for t in targets if heavy.count(t)))[0]
    assert sent["Host"] == "cdn.example"
    sent = light.requests(next(t for t in targets if light.count(t)))[0]
    assert sent["Host"] == f"127.0.0.1:{light.port}"
    settled(server, cache_dir)


def test_a_listed_field_the_clients_connection_names_is_not_forwarded(pull, origins, cache_dir):
    """RFC 9110 §7.6.1: a field named in the client's Connection is hop-by-hop, even if proxy.forward_headers
    lists it (the HTTP/1.1 parser collects Connection for the origin client to read)."""
    (origin,) = origins(1)
    server = pull([origin], config='[proxy]\nforward_headers = ["X-Request-Id", "Accept-Language"]\n')
    target = gen("conn", cc="no-store")
    assert get(server, target, {"Connection": "X-Request-Id", "X-Request-Id": "7", "Accept-Language": "fr"})[0] == 200
    again = {"X-Request-Id": "8", "Connection": "accept-language", "Accept-Language": "de"}
    assert get(server, target, again)[0] == 200
    first, second = ({k.lower(): v for k, v in sent.items()} for sent in origin.requests(target))
    assert "x-request-id" not in first and first["accept-language"] == "fr"
    assert second["x-request-id"] == "8" and "accept-language" not in second
    settled(server, cache_dir)


def test_all_origins_down_and_nothing_cached_is_a_502(pull, cache_dir):
    server = pull([closed_url(), closed_url()])
    for target in ("/gen/nothing", "/gen/other?x=1"):
        status, headers, body = get(server, target)  # request() gives up after 5 s: it must come quickly
        assert status == 502
        assert headers["cache-status"] == "edge; fwd=miss; detail=unreachable"
        assert body == b"502 Bad Gateway\n"
    status, headers, body = get(server, "/gen/nothing", method="HEAD")
    assert status == 502 and body == b""
    assert stored_keys(cache_dir) == set()
    settled(server, cache_dir)


def test_origin_slower_than_read_timeout_is_a_504(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin], config="[proxy]\nread_timeout = 0.5\n")
    status, headers, body = get(server, "/slow?delay=4")
    assert status == 504
    assert headers["cache-status"] == "edge; fwd=miss; detail=timeout"
    assert body == b"504 Gateway Timeout\n"
    assert origin.count("/slow?delay=4") == 1
    assert stored_keys(cache_dir) == set()
    settled(server, cache_dir)


# -- broken and uncacheable answers ---------------------------------------------------------------------


@needs_curl
def test_origin_dying_mid_body_cuts_the_client_and_stores_nothing(pull, origins, cache_dir, tmp_path):
    [origin] = origins(1)
    server = pull([origin])
    out = tmp_path / "cut.body"
    rc, headers = curl(server.url + "/cut", out)  # the origin sends 1000 of 100000 bytes and hangs up
    assert rc == 18, "curl should report a partial transfer (exit 18)"
    assert headers["content-length"] == "100000"
    assert not out.exists() or out.stat().st_size < 100000
    # Nothing was stored: the next request asks the origin again, and is cut off the same way.
    client = server.connect(timeout=10)
    client.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = read_until_closed(client, 10).partition(b"\r\n\r\n")
    client.close()
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100000" in head
    assert len(body) < 100000, "the client must see the body end short of its Content-Length"
    assert set(body) <= {ord("x")}
    assert origin.count("/cut") == 2
    assert stored(cache_dir, "/cut") is None
    assert not any(p.exists() for p in object_files(cache_dir, "/cut"))
    settled(server, cache_dir)


def test_server_errors_are_passed_on_not_stored(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    for status_code in (500, 503):
        target = gen(f"e{status_code}", status=status_code, cc="max-age=60")
        for _ in range(2):
            status, headers, body = get(server, target)
            assert status == status_code
            assert headers["cache-status"] == MISS
            assert body == gen_body(f"e{status_code}", origin.port, 0)
        assert origin.count(target) == 2
        assert stored(cache_dir, target) is None
    settled(server, cache_dir)


def test_cacheable_statuses_are_stored_and_head_on_a_miss_stores_too(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    for code in (404, 410, 301, 204):
        target = gen(f"st{code}", status=code, cc="max-age=60")
        fetch = head_of if code == 204 else get  # (a 204 has no body, and should have no Content-Length)
        first, second = fetch(server, target), fetch(server, target)
        assert first[0] == second[0] == code
        assert first[1]["cache-status"] == MISS_STORED and HIT.fullmatch(second[1]["cache-status"])
        assert first[2] == second[2]
        assert origin.count(target) == 1
        assert stored_soon(cache_dir, target)["status"] == code
    target = gen("hd", cc="max-age=60")
    status, headers, body = get(server, target, method="HEAD")
    assert status == 200 and body == b"" and headers["cache-status"] == MISS_STORED
    assert headers["content-length"] == str(len(gen_body("hd", origin.port, 0)))
    assert [r["method"] for r in origin.stats()["log"] if r["path"] == target] == ["GET"]  # always GET upstream
    status, headers, body = get(server, target)
    assert status == 200 and HIT.fullmatch(headers["cache-status"]) and body == gen_body("hd", origin.port, 0)
    assert origin.count(target) == 1
    settled(server, cache_dir)


def test_freshness_comes_from_s_maxage_max_age_expires_or_the_default_ttl(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin], config="[cache]\ndefault_ttl = 600\n")
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    cases = {gen("f1", cc="max-age=0, s-maxage=300"): range(200, 301),  # s-maxage wins over max-age
             gen("f2", expires=future): range(3500, 3601),
             gen("f3"): range(500, 601)}  # nothing said: cache.default_ttl
    for target, ttls in cases.items():
        status, headers, _ = get(server, target)
        assert status == 200 and headers["cache-status"] == MISS_STORED
        status, headers, _ = get(server, target)
        m = HIT.fullmatch(headers["cache-status"])
        assert m and int(m.group(1)) in ttls, (target, headers["cache-status"])
        assert origin.count(target) == 1
    settled(server, cache_dir)


def test_a_204_from_the_origin_gets_no_content_length(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("nocontent", status=204, cc="max-age=60")
    for expected in (MISS_STORED, "edge; hit"):
        status, headers, rest = head_of(server, target)
        assert status == 204 and rest == b""
        assert headers["cache-status"].startswith(expected)
        assert "content-length" not in headers, headers


@pytest.mark.parametrize("char", ["?", "#"], ids=["percent-3F", "percent-23"])
def test_reserved_characters_in_the_path_reach_the_origin_encoded(pull, origins, cache_dir, char):
    [origin] = origins(1)
    server = pull([origin])
    encoded = quote(char, safe="")
    status, _, body = get(server, f"/gen/x{encoded}y")
    assert f"/gen/x{encoded}y" in origin.stats()["counts"], origin.stats()["counts"]
    assert status == 200 and body == gen_body(f"x{char}y", origin.port, 0)


@pytest.mark.parametrize("params", [{"cc": "no-store"}, {"cc": "private, max-age=60"},
                                    {"cc": "max-age=60", "cookie": "sid=42; Path=/"},
                                    {"cc": "max-age=60", "vary": "User-Agent"},
                                    {"cc": "max-age=0"}, {"cc": "no-cache"}],
                         ids=["no-store", "private", "set-cookie", "vary-user-agent",
                              "stale-on-arrival-without-validators", "no-cache-without-validators"])
def test_uncacheable_answers_are_not_stored(pull, origins, cache_dir, params):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("u", **params)
    for _ in range(3):
        status, headers, body = get(server, target)
        assert status == 200 and body == gen_body("u", origin.port, 0)
        assert headers["cache-status"] == MISS
        if "cookie" in params:
            assert headers["set-cookie"] == params["cookie"]  # passed on to the one client it was for
    assert origin.count(target) == 3
    assert stored_keys(cache_dir) == set()
    settled(server, cache_dir)


# -- freshness, revalidation, stale answers --------------------------------------------------------------


def test_expired_object_is_revalidated_with_its_etag(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    lm = "Tue, 01 Jun 2021 10:00:00 GMT"
    target = gen("v", cc="max-age=2", etag="1", lm=lm)
    status, headers, body = get(server, target)
    assert status == 200 and headers["cache-status"] == MISS_STORED and headers["etag"] == '"v-v0"'
    before = stored_soon(cache_dir, target)
    assert before is not None
    status, later, again = until(lambda: get(server, target), lambda r: not HIT.fullmatch(r[1]["cache-status"]))
    assert status == 200
    assert later["cache-status"] == REVALIDATED
    assert again == body and later["etag"] == '"v-v0"'
    sent = origin.requests(target)
    assert len(sent) == 2
    assert "If-None-Match" not in sent[0]
    assert sent[1]["If-None-Match"] == '"v-v0"'
    assert sent[1]["If-Modified-Since"] == lm
    after = stored_soon(cache_dir, target)
    assert after is not None and after["stored_at"] > before["stored_at"], "the 304 refreshes the stored metadata"
    # Without validators an expired object is simply fetched again, and the new answer stored.
    plain = gen("v2", cc="max-age=1")
    status, headers, _ = get(server, plain)
    assert status == 200 and headers["cache-status"] == MISS_STORED
    origin.ctl("/_bump/v2")
    status, later, body = until(lambda: get(server, plain), lambda r: not HIT.fullmatch(r[1]["cache-status"]))
    assert status == 200 and later["cache-status"] == STALE_REFETCHED
    assert body == gen_body("v2", origin.port, 1)
    assert [("If-None-Match" in h, "If-Modified-Since" in h) for h in origin.requests(plain)] == [(False, False)] * 2
    assert stored_soon(cache_dir, plain)["headers"] and ["x-version", "1"] in stored_soon(cache_dir, plain)["headers"]
    settled(server, cache_dir)


@pytest.mark.parametrize("notmod, why", [
    ({"ETag": '"another"'}, "its validator is another response's (RFC 9111 §4.3.4)"),
    ({"Cache-Control": "private, max-age=100"}, "private: not for a shared cache"),
    ({"Cache-Control": "no-store"}, "no-store"),
    ({"Vary": "User-Agent"}, "a Vary this cache does not keep"),
], ids=["other-etag", "private", "no-store", "vary"])
def test_a_304_that_cannot_refresh_the_stored_copy_is_followed_by_a_plain_request(pull, origins, cache_dir,
                                                                                  notmod, why):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("nm", cc="max-age=1", etag="1", size=100)
    status, headers, first = get(server, target)
    assert status == 200 and headers["cache-status"] == MISS_STORED
    origin.ctl("/_notmod/nm?" + "&".join(f"{k}={quote(v)}" for k, v in notmod.items()))
    status, headers, body = until(lambda: get(server, target), lambda r: not HIT.fullmatch(r[1]["cache-status"]))
    assert (status, body) == (200, first)
    sent = origin.requests(target)
    assert len(sent) == 3, f"{why}: asked again without conditions"
    assert sent[1]["If-None-Match"] == '"nm-v0"' and "If-None-Match" not in sent[2]
    # What is served and stored is the 200's, not the 304's fields.
    assert headers["cache-status"] == STALE_REFETCHED
    assert headers["etag"] == '"nm-v0"' and headers["cache-control"] == "max-age=1" and "vary" not in headers
    settled(server, cache_dir)


def test_a_stored_answer_keeps_the_origins_date_beside_its_age(pull, origins, cache_dir):
    # A Date of now beside Age would make a downstream cache count the time spent here twice (an
    # Expires-based lifetime is Expires - Date, then Age is taken off it: RFC 9111 §4.2).
    [origin] = origins(1)
    server = pull([origin])
    target = gen("dt", cc="max-age=60")
    status, first, _ = get(server, target)
    assert status == 200 and first["cache-status"] == MISS_STORED
    time.sleep(2.1)
    status, head, _ = get(server, target)
    assert HIT.fullmatch(head["cache-status"]) and int(head["age"]) >= 2
    assert head["date"] == first["date"], "the stored Date, not now (two Date fields would read 'a, b' here)"
    h2 = H2Client.connect(server)
    try:
        sid = h2.request(target)
        assert h2.wait(lambda: sid in h2.streams and h2.streams[sid].done, 10)
        assert h2.streams[sid].headers["date"] == first["date"]
    finally:
        h2.close()
    settled(server, cache_dir)


def test_no_cache_is_stored_but_revalidated_every_time(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("nc", cc="no-cache", etag="1")
    status, headers, body = get(server, target)
    assert status == 200 and headers["cache-status"] == MISS_STORED
    stored_soon(cache_dir, target)
    for n in range(2, 4):
        status, headers, again = get(server, target)
        assert status == 200 and again == body
        assert headers["cache-status"] == REVALIDATED
        assert origin.count(target) == n
        assert origin.requests(target)[-1]["If-None-Match"] == '"nc-v0"'
    settled(server, cache_dir)


@pytest.mark.parametrize("failure", ["500", "killed"])
def test_stale_if_error_serves_the_stale_copy(pull, origins, cache_dir, failure):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("s", cc="max-age=1, stale-if-error=60")
    status, headers, body = get(server, target)
    assert status == 200 and headers["cache-status"] == MISS_STORED
    if failure == "500":
        origin.ctl("/_fail/s/on")
    else:
        origin.kill()
    status, headers, again = until(lambda: get(server, target), lambda r: not HIT.fullmatch(r[1]["cache-status"]))
    label = STALE_ERROR.replace("; detail", "; fwd-status=500; detail") if failure == "500" else STALE_ERROR
    assert status == 200, (status, headers, again)
    assert headers["cache-status"] == label
    assert again == body
    assert int(headers["age"]) >= 1
    if failure == "500":
        assert origin.count(target) >= 2  # the origin was asked, and failed
        status, headers, again = get(server, target)
        assert status == 200 and headers["cache-status"] == label and again == body
    settled(server, cache_dir)


def test_must_revalidate_is_never_served_stale(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("mr", cc="max-age=1, must-revalidate, stale-if-error=60, stale-while-revalidate=60")
    status, headers, _ = get(server, target)
    assert status == 200 and headers["cache-status"] == MISS_STORED
    origin.ctl("/_fail/mr/on")
    status, headers, again = until(lambda: get(server, target), lambda r: not HIT.fullmatch(r[1]["cache-status"]))
    assert status == 500, "must-revalidate: the origin's error, not the stale copy"
    assert again == b"origin failure\n"
    assert headers["cache-status"] == "edge; fwd=stale", "forwarded because stale (RFC 9211 §2.2), not stored"
    origin.kill()
    status, headers, _ = get(server, target)
    assert status == 504, "a stale object that must be revalidated, origin unreachable (RFC 9111 §5.2.2.2)"
    assert headers["cache-status"] == "edge; fwd=stale; detail=unreachable"
    settled(server, cache_dir)


def test_an_entry_retired_while_its_request_waits_for_the_puller_is_not_served(pull, origins, cache_dir):
    # Core hands a cached entry to the puller, which runs a loop turn later; a background refresh (or a
    # purge) may retire and close it meanwhile. Served anyway, it gave headers and then no body. A race:
    # a few seconds of requests while the origin changes every 50 ms (it showed ~1 in 7000 answers). With
    # two workers (the EDGE_TEST_WORKERS=2 pass) ~2 % of them were cut off with no body: a disk check put an
    # entry retired meanwhile back in the file cache (see the in-process test below).
    [origin] = origins(1)
    server = pull([origin])
    target = gen("rt", cc="max-age=1,stale-while-revalidate=2", etag="1", size=20000)  # not inline: sendfile
    stop = threading.Event()
    bad: list = []
    answered = [0]

    def hammer() -> None:
        while not stop.is_set():
            client = Client(server.connect(timeout=10))
            try:
                client.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                status, headers, body = client.response()
                version = body.split(b" v", 1)[1].split(b"\n", 1)[0].decode()
                if len(body) != 20000 or headers["etag"] != f'"rt-v{version}"':  # whole, and the version it says
                    bad.append((status, headers.get("cache-status"), len(body)))
            except (ConnectionError, OSError, IndexError) as e:
                bad.append(repr(e))
            finally:
                client.close()
            answered[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.05)
        origin.ctl("/_bump/rt")
    stop.set()
    for thread in threads:
        thread.join(20)
    assert answered[0] > 1000 and not bad, (answered[0], len(bad), bad[:5], server.stderr()[-3000:])
    settled(server, cache_dir)


def test_an_entry_retired_while_the_disk_is_asked_is_neither_served_nor_put_back(tmp_path):
    # In process: a refresh, purge or eviction may retire the entry a disk check was asked about while the
    # check is in the I/O pool. "Unchanged" then named an entry whose fd was closed: it was put back in the
    # file cache and served, a head and no body (~2 % of requests under refreshes with two workers).
    (tmp_path / "www").mkdir()
    config = make_config(tmp_path / "www", {"origin": [{"url": "http://127.0.0.1:9"}],
                                            "cache": {"dir": str(tmp_path / "cache")}})
    edge = Edge(config)
    puller = edge.worker.puller
    puller.executor = edge.worker.executor  # the harness's inline one
    key = edge.worker.site.cache_keys.key("/x", b"")
    fetch = Fetch("/x", b"", key, store_name(key), None, None)
    writer = puller.store.writer(key)
    writer.write(b"body")
    now = time.time()
    assert writer.commit(Meta(key=key.decode("latin-1"), status=200, headers=[("cache-control", "max-age=60")],
                              length=4, stored_at=now, request_time=now, lifetime=60.0, initial_age=0.0))
    first = edge.loop.run_until_complete(puller._from_disk(fetch))
    assert first is not None and puller.cache.peek(fetch.name) is first
    real = puller._open_stored

    def retired_meanwhile(*args):
        found = real(*args)  # the disk: unchanged since `first` was loaded
        puller._open_stored = real
        puller.cache.purge(fetch.name)  # meanwhile, on the loop: `first` retired, its fd closed
        return found

    puller._open_stored = retired_meanwhile
    second = edge.loop.run_until_complete(puller._from_disk(fetch))
    assert first.dead and first.fd == -1
    assert second is not first and not second.dead and os.pread(second.fd, 10, 0) == b"body"
    assert puller.cache.peek(fetch.name) is second
    edge.close()


def test_stale_while_revalidate_answers_at_once_and_refreshes_behind(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("w", cc="max-age=1, stale-while-revalidate=60")
    status, headers, body = get(server, target)
    assert status == 200 and headers["cache-status"] == MISS_STORED and body == gen_body("w", origin.port, 0)
    origin.ctl("/_bump/w")  # the origin now has version 1
    status, headers, stale = until(lambda: get(server, target), lambda r: not HIT.fullmatch(r[1]["cache-status"]))
    assert status == 200
    assert headers["cache-status"] == STALE_REVALIDATE
    assert stale == body, "the stale copy is served while the refresh runs"
    assert wait_for(lambda: origin.count(target) == 2, 10), "the background refresh should reach the origin"
    status, headers, _ = until(lambda: get(server, target), lambda r: r[2] == gen_body("w", origin.port, 1))
    assert status == 200 and HIT.fullmatch(headers["cache-status"])
    assert headers["x-version"] == "1"
    assert origin.count(target) == 2
    settled(server, cache_dir)


# -- collapsing and streaming ---------------------------------------------------------------------------


def spread_connections(server: EdgeProcess, per_worker: int) -> list:
    """Connections accepted by the workers, `per_worker` on each (SO_REUSEPORT spreads them by hash)."""
    socks = []
    workers = [pid for pid, _ in server.banner.values()]  # worker_pids() also lists the cache manager
    for _ in range(20):
        socks += [server.connect(timeout=30) for _ in range(8)]
        wait_for(lambda opened=socks: len(serving_pid(server, opened)) == len(opened), 5)
        owners = serving_pid(server, socks)
        by_worker = defaultdict(list)
        for s in socks:
            pid = owners.get(s.getsockname()[1])
            if pid is not None:
                by_worker[pid].append(s)
        if all(len(by_worker[w]) >= per_worker for w in workers):
            chosen = [s for w in workers for s in by_worker[w][:per_worker]]
            for s in socks:
                if s not in chosen:
                    s.close()
            return chosen
    raise AssertionError(f"connections did not reach every worker: {serving_pid(server, socks)}")


def fetch_concurrently(socks: list, target: str) -> list:
    """GET `target` on every socket at once (one thread each, started together): per socket
    (status, cache-status, body), or the exception it raised."""
    barrier = threading.Barrier(len(socks))
    results: list = [None] * len(socks)

    def fetch(i: int) -> None:
        client = Client(socks[i])
        try:
            barrier.wait(10)
            client.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, headers, body = client.response()
            results[i] = (status, headers.get("cache-status"), body)
        except BaseException as e:  # noqa: BLE001 - the test reports it
            results[i] = e
        finally:
            client.close()

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(socks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, tuple) for r in results), results
    return results


def test_concurrent_misses_on_two_workers_make_one_origin_request(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off")
    size = 1 << 20
    target = f"/stream/c?size={size}&chunk=65536&delay=0.05"  # about a second to send it all
    expected = hashlib.sha256(pattern("c", size)).hexdigest()
    socks = spread_connections(server, 5)  # five clients on each worker
    results = [(status, cs, len(body), hashlib.sha256(body).hexdigest())
               for status, cs, body in fetch_concurrently(socks, target)]
    assert [(r[0], r[2], r[3]) for r in results] == [(200, size, expected)] * 10, "ten whole, identical bodies"
    assert origin.count(target) == 1
    statuses = [r[1] for r in results]
    assert set(statuses) <= {MISS_STORED, COLLAPSED}, statuses
    assert COLLAPSED in statuses, "the other worker's clients follow the fetch (collapsed)"
    assert stored_soon(cache_dir, target)["length"] == size
    status, headers, body = get(server, target)
    assert status == 200 and HIT.fullmatch(headers["cache-status"]) and hashlib.sha256(body).hexdigest() == expected
    assert origin.count(target) == 1
    settled(server, cache_dir)


@pytest.mark.parametrize("shape, fetches", [("chunked=1", 1), ("cc=no-store", 6)], ids=["chunked", "no-store"])
def test_a_long_body_does_not_time_out_the_other_workers_requests(pull, origins, cache_dir, shape, fetches):
    # A body of unknown length (which the other worker follows as it grows) or one not to be shared (which
    # it asks the origin for itself) takes longer than read_timeout: the other worker's requests must
    # neither give up nor be served a copy they may not have.
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off", config="[proxy]\nread_timeout = 1\n")
    size = 512 * 1024
    target = f"/stream/long-{shape[:2]}?size={size}&chunk=32768&delay=0.15&{shape}"  # ~2.4 s in all
    expected = hashlib.sha256(pattern(f"long-{shape[:2]}", size)).hexdigest()
    socks = spread_connections(server, 3)
    results = [(status, len(body), hashlib.sha256(body).hexdigest())
               for status, _, body in fetch_concurrently(socks, target)]
    assert results == [(200, size, expected)] * len(socks), results
    assert origin.count(target) == fetches
    settled(server, cache_dir)


def test_requests_joining_a_refetch_of_a_stale_object_say_collapsed(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    target = "/stream/rc?size=200000&chunk=20000&delay=0.05&cc=max-age%3D1"  # half a second to send
    assert get(server, target)[1]["cache-status"] == MISS_STORED
    time.sleep(1.2)
    socks = [server.connect(timeout=10) for _ in range(3)]
    labels = sorted(cs for _, cs, _ in fetch_concurrently(socks, target))
    assert origin.count(target) == 2
    assert labels == [STALE_REFETCHED] + [STALE_REFETCHED + "; collapsed"] * 2
    settled(server, cache_dir)


def test_an_object_another_worker_refreshed_is_a_hit(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off")
    target = gen("rh", cc="max-age=1")
    one, two = spread_connections(server, 1)
    answers = []
    for sock in (one, two):  # both workers hold the object
        client = Client(sock)
        client.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answers.append(client.response()[1]["cache-status"])
    assert answers[0] == MISS_STORED and (HIT.fullmatch(answers[1]) or answers[1] == COLLAPSED)
    time.sleep(1.2)
    labels = []
    for sock in (one, two):  # the first worker refreshes it; the second finds the new copy on disk
        client = Client(sock)
        client.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        labels.append(client.response()[1]["cache-status"])
        sock.close()
    assert origin.count(target) == 2
    assert labels[0] == STALE_REFETCHED and HIT.fullmatch(labels[1]), labels
    settled(server, cache_dir)


def test_once_an_answer_may_not_be_stored_its_requests_stop_queueing_behind_one_another(pull, origins, cache_dir):
    # Hit-for-miss, as Varnish does: the next requests for the key go to the origin at once, side by side,
    # instead of waiting for one fetch's answer and then each asking again.
    [origin] = origins(1)
    server = pull([origin])
    target = "/slow?delay=1&cc=no-store&k=hfm"  # its head comes after a second
    assert get(server, target)[1]["cache-status"] == MISS
    socks = [server.connect(timeout=10) for _ in range(3)]
    assert [r[:2] for r in fetch_concurrently(socks, target)] == [(200, MISS)] * 3
    assert origin.count(target) == 4
    assert origin.stats()["peak"][target] == 3, "all three were at the origin together"
    settled(server, cache_dir)


def test_hit_for_miss_marks_are_shared_expire_and_stay_bounded(tmp_path):
    one, two = HitForMiss(str(tmp_path / "marks")), HitForMiss(str(tmp_path / "marks"))  # two workers
    a, b = digest(b"/a"), digest(b"/b")
    one.mark(a, 10.0)
    assert two.marked(a, 10.0 + HIT_FOR_MISS - 1) and not two.marked(a, 10.0 + HIT_FOR_MISS), "expires"
    assert not two.marked(b, 10.0)
    two.clear(b)  # another key's clear leaves the mark alone
    assert one.marked(a, 11.0)
    two.clear(a)
    assert not one.marked(a, 11.0)
    same_slot = next(d for d in (digest(f"/k{i}".encode()) for i in range(10**6))
                     if int(d[:8], 16) % MARK_SLOTS == int(a[:8], 16) % MARK_SLOTS and d != a)
    one.mark(a, 20.0)
    two.mark(same_slot, 21.0)  # fixed size: the newer key takes the slot, the older loses its mark
    assert one.marked(same_slot, 22.0) and not one.marked(a, 22.0)
    assert os.path.getsize(tmp_path / "marks") == MARK_SLOTS * 16
    assert os.stat(tmp_path / "marks").st_blocks * 512 >= MARK_SLOTS * 16, "allocated: no SIGBUS on a full disk"
    one.close()
    two.close()
    alone = HitForMiss(str(tmp_path / "no-such-dir" / "marks"))  # cannot be made: this worker's own marks
    assert not alone.shared
    alone.mark(a, 1.0)
    assert alone.marked(a, 2.0)
    alone.close()


def test_concurrent_requests_for_a_no_store_answer_each_ask_the_origin(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off")
    size = 256 * 1024
    target = f"/stream/ns?size={size}&chunk=16384&delay=0.05&cc=no-store"
    socks = spread_connections(server, 2)
    results = [(status, cs, body == pattern("ns", size)) for status, cs, body in fetch_concurrently(socks, target)]
    assert results == [(200, MISS, True)] * 4, results
    assert origin.count(target) == 4, "an answer that may not be stored is not shared with other clients either"
    assert stored_keys(cache_dir) == set()
    settled(server, cache_dir)


def read_head_and_some(sock, timeout: float = 10.0) -> tuple[dict[str, str], bytes]:
    """Read a response head and at least one body byte (raises on timeout)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or data.index(b"\r\n\r\n") + 4 >= len(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed early: {data[:300]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def read_rest(sock, body: bytes, length: int, timeout: float = 20.0) -> bytes:
    """Go on reading a body begun with `body` until `length` bytes or the connection ends."""
    sock.settimeout(timeout)
    while len(body) < length:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        body += chunk
    return body


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "unknown-length"])
def test_first_bytes_reach_clients_on_both_workers_before_the_origin_finishes(pull, origins, cache_dir, chunked):
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off")
    size = 256 * 1024
    target = f"/gate/g?size={size}" + ("&chunked=1" if chunked else "")
    full = pattern("g", size)
    fetcher, joiner, follower, spare = spread_connections(server, 2)  # two on one worker, two on the other
    spare.close()
    readers = []
    # The origin holds back the second half until released: whatever a client has before that was streamed
    # through edge while the origin was still sending.
    for sock in (fetcher, joiner, follower):
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headers, early = read_head_and_some(sock)
        assert origin.stats()["waiting"] == ["g"], "the origin is still holding the second half"
        if chunked:
            assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
            so_far, complete = dechunk(early)
            assert not complete
        else:
            assert headers["content-length"] == str(size)
            so_far = early
        assert 0 < len(so_far) <= size // 2 and full.startswith(so_far)
        readers.append((sock, headers, early))
    assert readers[0][1]["cache-status"] == MISS_STORED
    assert readers[2][1]["cache-status"] == COLLAPSED  # the other worker follows the first one's temp file
    origin.ctl("/_release/g")
    for sock, _, early in readers:
        assert (read_chunked(sock, early) == (full, True)) if chunked else read_rest(sock, early, size) == full
        sock.close()
    assert origin.count(target) == 1
    assert stored_soon(cache_dir, target)["length"] == size
    settled(server, cache_dir)


def connection_not_on(server: EdgeProcess, pid: int) -> socket.socket:
    """A connection some other worker than `pid` accepted."""
    for _ in range(50):
        sock = server.connect(timeout=30)
        wait_for(lambda: sock.getsockname()[1] in serving_pid(server, [sock]), 5)
        if serving_pid(server, [sock]).get(sock.getsockname()[1], pid) != pid:
            return sock
        sock.close()
    raise AssertionError(f"every connection went to worker {pid}")


def read_whole(sock: socket.socket, chunked: bool, size: int) -> bytes | None:
    """A response's body, or None when it ends short (its head read here)."""
    headers, early = read_head_and_some(sock)
    if chunked and headers.get("transfer-encoding") == "chunked":
        body, complete = read_chunked(sock, early)
        return body if complete else None
    body = read_rest(sock, early, size)
    return body if len(body) == int(headers["content-length"]) else None


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "unknown-length"])
def test_the_temp_file_of_a_killed_worker_is_not_followed(pull, origins, cache_dir, chunked):
    # A killed fetcher leaves tmp/<digest>.fetch with its head. While the next fetcher waits for the
    # origin's answer, a request on another worker must wait for that fetch, not serve the dead one's half.
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off")
    size = 200_000
    target = f"/gate/dead?size={size}&late=1" + ("&chunked=1" if chunked else "")
    first, _, second, _ = spread_connections(server, 2)
    owners = serving_pid(server, [first, second])
    first.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    read_head_and_some(first)
    # The manager clears a dead worker's temp files once told of its death: stopped meanwhile, so the
    # leftover is surely there when the next requests come.
    os.kill(server.manager_pid, signal.SIGSTOP)
    try:
        killed = owners[first.getsockname()[1]]
        os.kill(killed, signal.SIGKILL)
        first.close()
        assert wait_for(lambda: not os.path.exists(f"/proc/{killed}"), 10), "reaped (its key's lock is free)"
        assert any((cache_dir / "tmp").glob("*.fetch")), "the killed fetch left its temp file"
        fetcher = owners[second.getsockname()[1]]
        second.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_for(lambda: origin.count(target) == 2, 10), "the second fetch waits for the origin's answer"
        third = connection_not_on(server, fetcher)  # on the killed worker's replacement
        third.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        origin.ctl("/_release/dead")
    finally:
        os.kill(server.manager_pid, signal.SIGCONT)
    assert read_whole(second, chunked, size) == pattern("dead", size)
    assert read_whole(third, chunked, size) == pattern("dead", size)
    assert origin.count(target) == 2
    second.close()
    third.close()


def test_followers_of_a_fetcher_that_dies_are_cut_off_at_once(pull, origins, cache_dir):
    # Not after proxy.read_timeout: the fetcher's pid is in the head, and a stalled follower checks it.
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off", config="[proxy]\nread_timeout = 60\n")
    size = 200_000
    target = f"/gate/orphan?size={size}"
    fetcher, _, follower, _ = spread_connections(server, 2)
    owners = serving_pid(server, [fetcher])
    heads = []
    for sock in (fetcher, follower):
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        heads.append(read_head_and_some(sock))
    assert heads[1][0]["cache-status"] == COLLAPSED
    os.kill(owners[fetcher.getsockname()[1]], signal.SIGKILL)
    fetcher.close()
    got = read_rest(follower, heads[1][1], size, timeout=20)  # timing out here: it waited for read_timeout
    follower.close()
    assert len(got) < size and pattern("orphan", size).startswith(got)
    # The dead fetcher's temp file goes too (the manager clears it after the worker's death), not at the next start.
    assert wait_for(lambda: not any((cache_dir / "tmp").glob("*.fetch")), 10)
    origin.ctl("/_release/orphan")


@pytest.mark.parametrize("ending", ["stored-then-replaced", "not-stored"])
def test_a_follower_learns_where_a_body_of_unknown_length_ends_through_its_own_fd(tmp_path, ending):
    # By its next poll the stored object may be purged or replaced by a newer fetch, or never stored (a
    # purge while it was fetched): the follower's open file still says how long the body is.
    cache = DiskCache(str(tmp_path / "c"), 1 << 20)
    key = b"/unknown-length"
    name = digest(key)
    writer = cache.writer(key, name, followed=name)
    meta = Meta(key=key.decode(), status=200, headers=[], length=0, stored_at=1.0, request_time=1.0,
                lifetime=60.0, initial_age=0.0)
    assert writer.publish_head(True, False, meta.dumps())
    fd = os.open(cache.follow_path(name), os.O_RDONLY)
    try:
        writer.write(b"x" * 1000)
        assert Follower._final_length(fd) is None, "still growing"
        meta.length = 1000
        if ending == "stored-then-replaced":
            assert writer.commit(meta)
            os.unlink(cache.paths(name)[0])
        else:
            assert writer.publish_head(True, True, meta.dumps())  # as _answer does when the body ends
            writer.abort()
        assert Follower._final_length(fd) == 1000
    finally:
        os.close(fd)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "unknown-length"])
def test_origin_dying_mid_body_cuts_every_reader_on_both_workers(pull, origins, cache_dir, chunked):
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off")
    size = 256 * 1024
    target = f"/gate/x?size={size}&cut=1" + ("&chunked=1" if chunked else "")
    full = pattern("x", size)
    socks = spread_connections(server, 2)
    readers = []
    for sock in socks:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headers, early = read_head_and_some(sock)
        assert headers["transfer-encoding" if chunked else "content-length"] == ("chunked" if chunked else str(size))
        readers.append((sock, early))
    origin.ctl("/_release/x")  # the origin hangs up instead of sending the second half
    for sock, early in readers:
        if chunked:
            got, complete = read_chunked(sock, early)
            assert not complete, "a cut body must not end with the last chunk"
        else:
            got = read_rest(sock, early, size)
        sock.close()
        assert len(got) < size, "a truncated origin body must not reach the client as a complete one"
        assert full.startswith(got)
    assert origin.count(target) == 1
    assert stored(cache_dir, target) is None
    settled(server, cache_dir)
    # Nothing was stored: the next request asks the origin again (and is cut again).
    client = server.connect(timeout=10)
    client.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert len(read_until_closed(client, 10).partition(b"\r\n\r\n")[2]) < size
    client.close()
    assert origin.count(target) == 2
    assert stored(cache_dir, target) is None
    settled(server, cache_dir)


@pytest.mark.parametrize("framing", ["", "&chunked=1"], ids=["content-length", "chunked"])
def test_http2_streams_a_growing_body_and_resets_a_cut_one(pull, origins, cache_dir, framing):
    [origin] = origins(1)
    server = pull([origin])
    size = 256 * 1024
    client = H2Client.connect(server)
    try:
        sid = client.request(f"/gate/h2g?size={size}{framing}")
        stream = client.streams[sid]
        assert client.wait(lambda: len(stream.body) > 0, 10), client.log()
        assert origin.stats()["waiting"] == ["h2g"]
        assert stream.status == 200 and stream.headers["cache-status"] == MISS_STORED and not stream.done
        # A body of unknown length goes without one (an empty DATA frame ends it), a known one with it.
        assert stream.headers.get("content-length") == (None if framing else str(size))
        origin.ctl("/_release/h2g")
        client.response(sid)
        assert stream.ended and stream.reset is None and bytes(stream.body) == pattern("h2g", size)

        sid = client.request(f"/gate/h2x?size={size}&cut=1{framing}")
        stream = client.streams[sid]
        assert client.wait(lambda: len(stream.body) > 0, 10), client.log()
        origin.ctl("/_release/h2x")
        client.wait(lambda: stream.done or client.eof, 10)
        assert not stream.ended, "a cut body must not end with END_STREAM"
        assert stream.reset is not None or client.eof
        assert len(stream.body) < size and pattern("h2x", size).startswith(bytes(stream.body))
        assert client.h2_error is None and not client.violations
    finally:
        client.close()
    assert stored_soon(cache_dir, f"/gate/h2g?size={size}{framing}")["length"] == size
    assert stored(cache_dir, f"/gate/h2x?size={size}&cut=1{framing}") is None
    settled(server, cache_dir)


def test_a_body_of_unknown_length_that_starts_late_is_not_taken_for_a_stalled_client(pull, origins, cache_dir):
    # The origin sends its head at once and its body 2.5 s later: the client waits for the origin, which
    # the send timeout (1 Hz sweep) must not count against the client.
    [origin] = origins(1)
    server = pull([origin])
    target = "/stream/late?size=5000&chunk=5000&chunked=1&first=2.5&delay=0"
    status, headers, body = get(server, target)
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body == pattern("late", 5000)


def test_http2_ends_a_body_of_unknown_length_that_fills_the_stream_window_exactly(pull, origins, cache_dir):
    # The last DATA frame is an empty one with END_STREAM: it needs no window (RFC 9113 §6.9.1).
    [origin] = origins(1)
    server = pull([origin])
    size = 65_535  # the default stream window, which this client never raises
    client = H2Client.connect(server, auto_window=False)
    try:
        client.grant(1 << 20)  # the connection's window only
        sid = client.request(f"/stream/win?size={size}&chunk={size}&chunked=1&delay=0")
        assert client.wait(lambda: client.streams.get(sid) is not None and client.streams[sid].done, 10)
        stream = client.streams[sid]
        assert stream.ended and stream.reset is None and bytes(stream.body) == pattern("win", size)
    finally:
        client.close()


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """A chunked body (RFC 9112 §7.1) as far as it goes: (the data, whether its last chunk arrived)."""
    body, at = b"", 0
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            return body, False
        size = int(data[at:eol].split(b";")[0], 16)
        if size == 0:
            return body, data[eol + 2:eol + 4] == b"\r\n"
        piece = data[eol + 2:eol + 2 + size]
        body += piece
        if len(piece) < size or data[eol + 2 + size:eol + 4 + size] != b"\r\n":
            return body, False
        at = eol + 4 + size


def read_chunked(sock, data: bytes, timeout: float = 20.0) -> tuple[bytes, bool]:
    """Go on reading a chunked body begun with `data` to its last chunk or the connection's end: (body, complete)."""
    sock.settimeout(timeout)
    while True:
        body, complete = dechunk(data)
        if complete:
            return body, True
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return body, False
        data += chunk


def test_a_body_of_unknown_length_streams_chunked_and_a_cut_one_never_gets_its_last_chunk(pull, origins, cache_dir,
                                                                                         tmp_path):
    [origin] = origins(1)
    server = pull([origin])
    size = 256 * 1024
    for name, cut in (("u1", ""), ("u2", "&cut=1")):
        target = f"/gate/{name}?size={size}&chunked=1{cut}"
        sock = server.connect(timeout=10)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headers, early = read_head_and_some(sock)
        # The client has bytes while the origin still holds back the second half: streamed, not stored first.
        assert origin.stats()["waiting"] == [name]
        assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
        assert headers["cache-status"] == MISS_STORED
        origin.ctl(f"/_release/{name}")  # with cut=1 the origin hangs up instead of sending the second half
        body, complete = read_chunked(sock, early)
        if cut:
            sock.close()
            assert not complete, "a cut body must not end with the last chunk"
            assert len(body) < size and pattern(name, size).startswith(body)
            assert stored(cache_dir, target) is None
            continue
        assert complete and body == pattern(name, size)
        # The connection stays open for the next request: now a hit with its length known.
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headers, body = read_head_and_some(sock)
        assert HIT.match(headers["cache-status"]) and headers["content-length"] == str(size)
        assert read_rest(sock, body, size) == pattern(name, size)
        sock.close()
        assert origin.count(target) == 1
        assert stored_soon(cache_dir, target)["length"] == size
    settled(server, cache_dir)
    if CURL is not None:  # a real client calls a cut chunked body a partial transfer too
        seen: list = []
        fetch = threading.Thread(target=lambda: seen.append(
            curl(server.url + "/gate/u3?size=262144&chunked=1&cut=1", tmp_path / "u3.body")))
        fetch.start()
        assert wait_for(lambda: origin.stats()["waiting"] == ["u3"], 10)
        origin.ctl("/_release/u3")
        fetch.join(30)
        assert seen and seen[0][0] in (18, 56), f"curl: {seen}: the cut should be reported"


def test_a_body_of_unknown_length_goes_close_delimited_to_http10(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    size = 100_000
    target = f"/stream/u4?size={size}&chunked=1&chunk=20000&delay=0.02"
    sock = server.connect(timeout=10)
    sock.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
    head, _, body = read_until_closed(sock, 20).partition(b"\r\n\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert b"Content-Length" not in head and b"Transfer-Encoding" not in head
    assert body == pattern("u4", size)
    assert stored_soon(cache_dir, target)["length"] == size


def test_a_request_joining_a_fetch_in_the_same_worker_says_collapsed(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])  # one worker: the second request joins the first one's flight
    size = 128 * 1024
    target = f"/gate/j?size={size}"
    first = server.connect(timeout=10)
    first.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    headers, early = read_head_and_some(first)
    second = server.connect(timeout=10)
    second.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    headers2, early2 = read_head_and_some(second)
    origin.ctl("/_release/j")
    assert read_rest(first, early, size) == read_rest(second, early2, size) == pattern("j", size)
    first.close()
    second.close()
    assert origin.count(target) == 1
    assert headers["cache-status"] == MISS_STORED
    assert headers2["cache-status"] == COLLAPSED


# -- the disk cache across restarts, and its size ---------------------------------------------------------


def test_restart_serves_the_warm_cache_without_the_origin(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    targets = [gen("r1", cc="max-age=300"), gen("r2", cc="max-age=300", size=50_000)]
    bodies = {}
    for target in targets:
        status, headers, bodies[target] = get(server, target)
        assert status == 200 and headers["cache-status"] == MISS_STORED
    settled(server, cache_dir)
    assert server.stop() == 0
    origin.kill()
    # What a crash could leave: an unfinished body and head in tmp/, a body whose metadata never landed.
    leftovers = [cache_dir / "tmp" / "0123456789abcdef0123456789abcdef.999.1",
                 cache_dir / "tmp" / "0123456789abcdef0123456789abcdef.fetch",
                 cache_dir / "objects" / "ff" / ("f" * 32)]
    leftovers[2].parent.mkdir(exist_ok=True)
    for path in leftovers:
        path.write_bytes(b"junk")
    again = pull([origin])
    assert wait_for(lambda: "2 objects" in again.stderr(), 5), again.stderr()
    assert not any(p.exists() for p in leftovers)
    for target in targets:
        status, headers, body = get(again, target)
        assert status == 200, (status, headers, body)
        assert HIT.fullmatch(headers["cache-status"]), headers["cache-status"]
        assert body == bodies[target]
        assert int(headers["age"]) >= 0
    settled(again, cache_dir)


def test_eviction_keeps_the_cache_under_its_size(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin], "--cache-max-size", "200K")
    size = 100 * 1024
    targets = [gen(f"big{i}", cc="max-age=300", size=size) for i in range(4)]
    for i, target in enumerate(targets):
        status, headers, body = get(server, target)
        assert status == 200 and len(body) == size and headers["cache-status"] == MISS_STORED
        assert wait_for(lambda t=target: stored(cache_dir, t) is not None, 5)
        # The manager's LRU order is the order workers' reports reach it: with two workers, wait for each
        # before the next request, or a later store may be indexed first (and be the oldest).
        assert wait_for(lambda i=i: sum(map(cache_status(server).get, ("objects", "evictions"))) == i + 1, 5)
    # 4 x 100 KiB under 200K: the two oldest go, the two newest stay.
    assert wait_for(lambda: stored_keys(cache_dir) == set(targets[2:]), 10), stored_keys(cache_dir)
    for target in targets[:2]:
        assert not any(p.exists() for p in object_files(cache_dir, target))
    total = sum(p.stat().st_size for p in (cache_dir / "objects").glob("*/*") if not p.name.endswith(".meta"))
    assert total <= 200 * 1024
    status, headers, _ = get(server, targets[3])
    assert HIT.fullmatch(headers["cache-status"])
    # An evicted object is fetched again once the worker re-checks the disk.
    status, headers, body = until(lambda: get(server, targets[0]), lambda r: not HIT.fullmatch(r[1]["cache-status"]))
    assert status == 200 and headers["cache-status"] == MISS_STORED and len(body) == size
    assert origin.count(targets[0]) == 2
    settled(server, cache_dir)


# -- representations: Vary, ranges, conditionals, HTTP/2 ---------------------------------------------------


def test_vary_accept_encoding_is_stored_per_coding(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    plain = vary_body("z")
    status, headers, body = get(server, "/vary/z")  # no Accept-Encoding
    assert status == 200 and body == plain and "content-encoding" not in headers
    assert headers["cache-status"] == MISS_STORED
    status, headers, body = get(server, "/vary/z", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip", headers
    assert gzip.decompress(body) == plain
    assert headers["cache-status"] == MISS_STORED
    assert "accept-encoding" in headers["vary"].lower()
    for _ in range(2):
        status, headers, body = get(server, "/vary/z", {"Accept-Encoding": "identity"})
        assert status == 200 and body == plain and "content-encoding" not in headers
        assert HIT.fullmatch(headers["cache-status"])
        status, headers, body = get(server, "/vary/z", {"Accept-Encoding": "gzip, deflate"})
        assert status == 200 and headers.get("content-encoding") == "gzip" and gzip.decompress(body) == plain
        assert HIT.fullmatch(headers["cache-status"])
    # A browser's list: the origin is asked for both codings it takes and chooses (this one has no brotli).
    status, headers, body = get(server, "/vary/z", {"Accept-Encoding": "gzip, deflate, br, zstd"})
    assert status == 200 and headers.get("content-encoding") == "gzip" and gzip.decompress(body) == plain
    sent = [h.get("Accept-Encoding") for h in origin.requests("/vary/z")]
    assert sent == ["identity", "gzip", "br, gzip"]
    assert {"/vary/z\0identity", "/vary/z\0gzip", "/vary/z\0br, gzip"} <= stored_keys(cache_dir)
    settled(server, cache_dir)


LANG_CONFIG = '[proxy]\nforward_headers = ["Accept-Language"]\n[cache]\nmax_variants = 3\n'


def _variant(target: str, lang: str | None, names: tuple[str, ...] = ("accept-language",)) -> str:
    """The stored key of `target`'s variant for an Accept-Language value (None: the field absent)."""
    fields = [] if lang is None else [(b"Accept-Language", lang.encode())]
    return target + "\0" + suffix(names, "identity", fields)


def test_vary_on_a_forwarded_field_keeps_a_variant_per_value(pull, origins, cache_dir):
    """Vary: Accept-Language (forwarded): one stored answer per normalised value, each a hit; beyond
    cache.max_variants the least recently stored goes; a purge of the path removes every variant."""
    [origin] = origins(1)
    server = pull([origin], config=LANG_CONFIG)
    target = "/lang/l"
    for lang, want, normalised in (("en", MISS_STORED, "en"), ("fr", MISS_STORED, "fr"), ("en", "hit", ""),
                                   ("fr", "hit", ""), ("EN , fr-ca", MISS_STORED, "en,fr-ca"), ("en,fr-CA", "hit", "")):
        status, headers, body = get(server, target, {"Accept-Language": lang})
        assert status == 200 and headers["vary"] == "Accept-Language"
        assert headers["cache-status"] == want if want == MISS_STORED else HIT.fullmatch(headers["cache-status"]), \
            (lang, headers["cache-status"])
        if want == MISS_STORED:
            # The manager orders a key's variants as it hears of their stores, which each worker reports in a
            # batch within FLUSH_DELAY: stores by two workers closer together than that may arrive either way
            # round (seen once in the two-worker pass). What this test orders is the stores, so it spaces them.
            assert wait_for(lambda: _variant(target, normalised) in stored_keys(cache_dir), 10)
            time.sleep(5 * FLUSH_DELAY)
    assert [h.get("Accept-Language") for h in origin.requests(target)] == ["en", "fr", "EN , fr-ca"]
    assert get(server, target, {"Accept-Language": "fr"})[2] == b"l lang=fr v0\n"
    variants = {_variant(target, lang) for lang in ("en", "fr", "en,fr-ca")}
    assert wait_for(lambda: variants | {target} <= stored_keys(cache_dir), 10), stored_keys(cache_dir)
    # A fourth variant (no Accept-Language at all): the least recently stored one ("en") goes.
    status, headers, body = get(server, target)
    assert body == b"l lang=- v0\n" and headers["cache-status"] == MISS_STORED
    four = variants - {_variant(target, "en")} | {_variant(target, None), target}
    assert wait_for(lambda: stored_keys(cache_dir) == four, 10), stored_keys(cache_dir)
    r = httpx.post(server.admin_url + "/purge", json={"paths": [target]}, timeout=10)
    assert r.status_code == 200, r.text
    assert wait_for(lambda: stored_keys(cache_dir) == set(), 10), stored_keys(cache_dir)
    status, headers, body = get(server, target, {"Accept-Language": "fr"})
    assert headers["cache-status"] == MISS_STORED and body == b"l lang=fr v0\n"
    settled(server, cache_dir)


def test_a_vary_edge_cannot_key_on_is_not_stored_and_a_new_vary_replaces_the_variants(pull, origins, cache_dir):
    """Vary: * and a field edge does not forward are never stored (RFC 9111 §4.1); an answer naming another
    set of fields replaces the stored variants."""
    [origin] = origins(1)
    server = pull([origin], config=LANG_CONFIG)
    for vary in ("*", "User-Agent", "Accept-Language, User-Agent"):
        target = f"/lang/n?vary={quote(vary)}"
        for _ in range(2):
            status, headers, _ = get(server, target, {"Accept-Language": "en"})
            assert status == 200 and headers["cache-status"] == MISS, (vary, headers["cache-status"])
        assert origin.count(target) == 2
    target = "/lang/r"
    get(server, target, {"Accept-Language": "en"})
    get(server, target, {"Accept-Language": "fr"})
    old = {_variant(target, "en"), _variant(target, "fr")}
    assert wait_for(lambda: old | {target} <= stored_keys(cache_dir), 10), stored_keys(cache_dir)
    httpx.get(f"{origin.url}/_vary/r", params={"value": "Accept-Encoding, Accept-Language"}, timeout=5)
    status, headers, body = get(server, target, {"Accept-Language": "de"})  # a new variant, with the new Vary
    assert headers["cache-status"] == MISS_STORED and headers["vary"] == "Accept-Encoding, Accept-Language"
    names = ("accept-encoding", "accept-language")
    assert wait_for(lambda: stored_keys(cache_dir) == {target, _variant(target, "de", names)}, 10), \
        stored_keys(cache_dir)
    # The marker names the new set. A worker holding the old marker in memory (EDGE_TEST_WORKERS=2) sees the
    # replacement when it next checks the key against the disk, within 5 s, as for any object another worker
    # replaced (README, "Serving stored objects"); a purge, unlike this, reaches every worker at once.
    status, headers, body = until(lambda: get(server, target, {"Accept-Language": "en"}),
                                  lambda answer: answer[1]["vary"] == "Accept-Encoding, Accept-Language", 10)
    assert headers["cache-status"] == MISS_STORED and body == b"r lang=en v0\n"
    settled(server, cache_dir)


def test_an_authorised_request_goes_to_the_origin_and_its_answer_is_shared_only_when_it_says_so(pull, origins,
                                                                                                 cache_dir):
    """RFC 9111 §3.5: Authorization is forwarded; such a request never takes a stored answer; its answer is
    stored only with public, s-maxage or must-revalidate (then others get it)."""
    [origin] = origins(1)
    server = pull([origin])
    auth = {"Authorization": "Bearer secret"}
    target = gen("au", cc="max-age=60")
    assert get(server, target)[1]["cache-status"] == MISS_STORED
    assert HIT.fullmatch(get(server, target)[1]["cache-status"])
    for _ in range(2):
        status, headers, body = get(server, target, auth)
        assert status == 200 and headers["cache-status"] == MISS, "a stored answer is not for it"
    assert [h.get("Authorization") for h in origin.requests(target)] == [None, "Bearer secret", "Bearer secret"]
    assert HIT.fullmatch(get(server, target)[1]["cache-status"]), "the shared answer is still the anonymous one"
    for cc in ("public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"):
        shared = gen("as", cc=cc)
        assert get(server, shared, auth)[1]["cache-status"] == MISS_STORED, cc
        assert HIT.fullmatch(get(server, shared)[1]["cache-status"]), cc
        assert get(server, shared, auth)[1]["cache-status"] == MISS_STORED, "still asked of the origin"
    settled(server, cache_dir)


class RawOrigin:
    """An origin that answers each path (query ignored) with canned bytes, written as given (a pause at each
    b"|"), then closes: for answers aiohttp will not send (1xx, extension codes)."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests.append(head)
            path = head.split(b" ", 2)[1].decode().partition("?")[0]
            for i, piece in enumerate(self.answers.get(path, b"HTTP/1.1 404 Not Found\r\n\r\n").split(b"|")):
                if i:
                    time.sleep(0.3)
                try:
                    conn.sendall(piece)
                except OSError:
                    return  # edge is done with this answer (a status it does not pass on): it closed the connection

    def count(self, path: str) -> int:
        """Requests for `path` so far."""
        return sum(1 for h in self.requests if h.split(b" ", 2)[1].decode().partition("?")[0] == path)

    def close(self) -> None:
        self.sock.close()


RAW_ANSWERS = {
    "/hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload; as=style\r\n\r\n"
              b"HTTP/1.1 100 Continue\r\nX-Dropped: 1\r\n\r\n|"
              b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nhello",
    "/s299": b"HTTP/1.1 299 Whatever\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok",
    "/s599": b"HTTP/1.1 599 Network Thing\r\nContent-Length: 4\r\n\r\nfail",
    "/s499": b"HTTP/1.1 499 Client Closed\r\nContent-Length: 2\r\n\r\nno",
    "/cr": b"HTTP/1.1 200 OK\r\nContent-Range: bytes 0-4/10\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nabcde",
    "/te-identity": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nCache-Control: max-age=60\r\n\r\nuntil |the close",
    "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nCache-Control: max-age=60\r\n\r\n"
                + gzip.compress(b"the content, transfer-coded", mtime=0),
    "/te-gzip-cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nCache-Control: max-age=60\r\n\r\n"
                    + gzip.compress(b"x" * 5000 + os.urandom(3000), mtime=0)[:-20],
    "/te-br": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br\r\n\r\nwhatever",
}


@pytest.fixture
def raw_origin():
    """A RawOrigin with RAW_ANSWERS, closed after the test."""
    origin = RawOrigin(RAW_ANSWERS)
    yield origin
    origin.close()


def test_an_origins_103_reaches_the_client_before_the_answer_and_is_never_stored(pull, raw_origin, cache_dir):
    """RFC 8297: the origin's 103 goes on at once (HTTP/1.1 and HTTP/2), other 1xx are dropped, and a hit
    later carries no hint (1xx are never stored)."""
    server = pull([raw_origin.url])
    sock = server.connect(timeout=10)
    try:
        sock.sendall(b"GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload; as=style\r\n\r\n"), data
    assert data.count(b"HTTP/1.1 ") == 2 and b"X-Dropped" not in data and b"100 Continue" not in data, data
    assert data.endswith(b"hello") and b"HTTP/1.1 200 OK\r\n" in data
    status, headers, body = get(server, "/hints")
    assert HIT.fullmatch(headers["cache-status"]) and body == b"hello" and "link" not in headers
    stream = h2_get(server, "/hints?h2")  # another key: asked of the origin, the 103 first
    assert stream.status == 200 and bytes(stream.body) == b"hello"
    assert [f.get("link") for f in stream.informational] == ["</a.css>; rel=preload; as=style"]
    settled(server, cache_dir)


def test_a_transfer_coding_without_chunked_ends_with_the_close_and_is_undone(pull, raw_origin, cache_dir):
    """RFC 9112 §6.3 rule 4: the body ends when the origin closes; identity passes, gzip is undone, both
    stream and are stored without the field; a cut coded body or a coding edge cannot read is a 502."""
    server = pull([raw_origin.url])
    for target, content in (("/te-identity", b"until the close"), ("/te-gzip", b"the content, transfer-coded")):
        status, headers, body = get(server, target)
        assert (status, body) == (200, content), (target, headers)
        assert headers.get("transfer-encoding") == "chunked", "edge's own framing of a body of unknown length"
        assert headers["cache-status"] == MISS_STORED
        status, headers, body = get(server, target)
        # Another worker (EDGE_TEST_WORKERS=2) may still follow the fetch, its store not yet renamed into place.
        assert HIT.fullmatch(headers["cache-status"]) or headers["cache-status"] == COLLAPSED, headers
        assert body == content
        if headers["cache-status"] != COLLAPSED:  # a followed body of unknown length goes chunked until stored
            assert "transfer-encoding" not in headers and headers["content-length"] == str(len(content))
    status, headers, body = get(server, "/te-br")
    assert status == 502 and "transfer-encoding" not in headers
    sock = server.connect(timeout=10)
    try:  # the head went out before the cut: the chunked body never ends properly
        sock.sendall(b"GET /te-gzip-cut HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)
    finally:
        sock.close()
    assert not data.endswith(b"0\r\n\r\n"), data[-40:]
    assert "/te-gzip-cut" not in stored_keys(cache_dir)
    settled(server, cache_dir)


def test_extension_status_codes_and_a_200s_content_range_pass_through(pull, raw_origin, cache_dir):
    """Any status 200-599 reaches the client (not a 502); an unknown one is stored only with explicit
    freshness (RFC 9111 §3); a 200's own Content-Range is kept, and no range is cut from it."""
    server = pull([raw_origin.url])
    for target, code, body in (("/s299", 299, b"ok"), ("/s599", 599, b"fail"), ("/s499", 499, b"no")):
        for _ in range(2):
            status, headers, got = get(server, target)
            assert (status, got) == (code, body), (target, status)
    assert raw_origin.count("/s299") == 1, "explicit freshness: stored"
    assert raw_origin.count("/s599") == 2 and raw_origin.count("/s499") == 2, "no freshness: not stored"
    sock = server.connect(timeout=10)
    try:
        sock.sendall(b"GET /s599 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 599 Server Error\r\n")
    finally:
        sock.close()
    for headers_in in (None, {"Range": "bytes=1-2"}):
        status, headers, body = get(server, "/cr", headers_in)
        assert status == 200 and body == b"abcde" and headers["content-range"] == "bytes 0-4/10"
        assert "accept-ranges" not in headers
    assert raw_origin.count("/cr") == 1
    settled(server, cache_dir)


def test_header_rules_apply_to_origin_objects_and_win_over_the_origins_fields(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin], config='[[headers]]\nmatch = "/gen/ruled*"\n'
                                  'set = { "X-Frame-Options" = "DENY", "Cache-Control" = "public, max-age=5" }\n')
    target = gen("ruled", cc="max-age=60", etag="1")
    for want in (MISS_STORED, "hit"):
        status, headers, _ = get(server, target)
        assert status == 200 and headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "public, max-age=5", "the rule's field replaces the origin's"
        assert want == MISS_STORED and headers["cache-status"] == want or HIT.match(headers["cache-status"])
    # What the origin said still rules freshness: stored for its 60 s, not the 5 s sent to clients.
    assert int(HIT.match(headers["cache-status"]).group(1)) > 50
    status, headers, _ = get(server, target, headers={"If-None-Match": '"ruled-v0"'})
    assert status == 304 and headers["x-frame-options"] == "DENY" and headers["cache-control"] == "public, max-age=5"
    stream = h2_get(server, target)
    assert stream.headers["x-frame-options"] == "DENY" and stream.headers["cache-control"] == "public, max-age=5"
    status, headers, _ = get(server, gen("other", cc="max-age=60"))
    assert status == 200 and headers["cache-control"] == "max-age=60" and "x-frame-options" not in headers
    assert origin.count(target) == 1


def test_ranges_and_conditionals_on_a_cached_object(pull, origins, cache_dir):
    [origin] = origins(1)
    server = pull([origin])
    lm = "Tue, 01 Jun 2021 10:00:00 GMT"
    target = gen("rg", cc="max-age=300", etag="1", lm=lm, size=5000)
    status, headers, full = get(server, target)
    assert status == 200 and len(full) == 5000 and headers["cache-status"] == MISS_STORED
    etag = headers["etag"]
    assert etag == '"rg-v0"'

    status, headers, part = get(server, target, {"Range": "bytes=100-199"})
    assert status == 206
    assert headers["content-range"] == "bytes 100-199/5000"
    assert part == full[100:200] and headers["content-length"] == "100"
    assert HIT.fullmatch(headers["cache-status"])
    status, headers, part = get(server, target, {"Range": "bytes=-10"})
    assert status == 206 and part == full[-10:] and headers["content-range"] == "bytes 4990-4999/5000"
    status, headers, _ = get(server, target, {"Range": "bytes=9000-"})
    assert status == 416 and headers["content-range"] == "bytes */5000"

    status, headers, body = get(server, target, {"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["etag"] == etag
    status, headers, body = get(server, target, {"If-None-Match": '"something-else"'})
    assert status == 200 and body == full
    status, headers, body = get(server, target, {"If-Modified-Since": lm})
    assert status == 304
    status, headers, body = get(server, target, {"If-Range": etag, "Range": "bytes=0-9"})
    assert status == 206 and body == full[:10]
    status, headers, body = get(server, target, {"If-Range": '"stale"', "Range": "bytes=0-9"})
    assert status == 200 and body == full
    status, headers, body = get(server, target, method="HEAD")
    assert status == 200 and headers["content-length"] == "5000" and body == b""
    assert origin.count(target) == 1
    settled(server, cache_dir)


def test_ranges_of_a_body_still_arriving_are_answered_as_their_bytes_arrive(pull, origins, cache_dir):
    # As nginx's range filter does on a miss: a 206 at once, each range's bytes as they come from the origin.
    [origin] = origins(1)
    server = pull([origin])
    size = 200_000
    target = f"/gate/rr?size={size}"
    full = pattern("rr", size)
    fetcher = Client(server.connect(timeout=10))
    fetcher.send(f"GET {target} HTTP/1.1\r\nHost: x\r\nRange: bytes=100-199\r\n\r\n".encode())
    status, headers, body = fetcher.response()  # in the first half: whole before the origin sends the rest
    assert origin.stats()["waiting"] == ["rr"], "the origin still holds back the second half"
    assert (status, headers["content-range"], headers["cache-status"], body) == (
        206, f"bytes 100-199/{size}", MISS_STORED, full[100:200])
    h2 = H2Client.connect(server)
    try:
        sid = h2.request(target, headers={"range": "bytes=50-59"})
        assert h2.wait(lambda: sid in h2.streams and h2.streams[sid].done, 10)
        assert h2.streams[sid].status == 206 and bytes(h2.streams[sid].body) == full[50:60]
    finally:
        h2.close()
    tail = server.connect(timeout=10)
    tail.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9,-10\r\n\r\n".encode())
    headers, early = read_head_and_some(tail)  # the head and the first range now, the last range later
    assert headers["content-type"].startswith("multipart/byteranges")
    while full[:10] not in early:
        more = tail.recv(65536)
        assert more, "closed before the first range"
        early += more
    assert origin.stats()["waiting"] == ["rr"]
    origin.ctl("/_release/rr")
    body = read_rest(tail, early, int(headers["content-length"]))
    tail.close()
    assert body.count(full[:10]) == 1 and body.count(full[-10:]) == 1 and body.rstrip().endswith(b"--")
    assert origin.count(target) == 1
    fetcher.close()
    settled(server, cache_dir)


@needs_curl
def test_http2_miss_then_hit(pull, origins, cache_dir, tmp_path):
    [origin] = origins(1)
    server = pull([origin])
    target = gen("h2", cc="max-age=300", size=100_000)
    stream = h2_get(server, target)
    assert stream.status == 200
    assert stream.headers["cache-status"] == MISS_STORED
    assert stream.body == gen_body("h2", origin.port, 0, 100_000)
    out = tmp_path / "h2.body"
    rc, headers = curl(server.url + target, out, "--http2-prior-knowledge")
    assert rc == 0
    assert HIT.fullmatch(headers["cache-status"]), headers
    assert out.read_bytes() == stream.body
    stream = h2_get(server, target, {"range": "bytes=10-19"})
    assert stream.status == 206 and stream.body == gen_body("h2", origin.port, 0, 100_000)[10:20]
    assert origin.count(target) == 1
    settled(server, cache_dir)


# -- health ------------------------------------------------------------------------------------------------


def test_health_flapping_moves_keys_away_and_back(pull, origins, cache_dir):
    upstreams = origins(2)
    server = pull(upstreams, "--health-interval", "0.2")
    first, second = upstreams
    target = next(t for t in (gen(f"h{i}", cc="no-store") for i in range(100)) if owner(upstreams, t) == 0)

    def served_by():
        status, headers, _ = get(server, target)
        assert status == 200
        return int(headers["x-origin"])

    assert served_by() == first.port
    first.ctl("/_health/fail")
    until(served_by, lambda port: port == second.port)
    assert wait_for(lambda: f"origin {first.url} is down" in server.stderr(), 5), server.stderr()
    asked = first.count(target)
    for _ in range(3):
        assert served_by() == second.port
    assert first.count(target) == asked, "a down origin gets no requests"
    first.ctl("/_health/ok")
    until(served_by, lambda port: port == first.port)
    assert wait_for(lambda: f"origin {first.url} is up" in server.stderr(), 5), server.stderr()
    assert served_by() == first.port
    settled(server, cache_dir)


def test_failing_origin_opens_its_circuit_then_a_trial_closes_it(pull, origins, cache_dir):
    upstreams = origins(2)
    first, second = upstreams
    server = pull(upstreams, "--workers", "1",  # one worker: the breaker under test is per worker
                  config="[health]\nfailures = 2\ncooldown = 1.5\ninterval = 60\nfailure_statuses = [503]\n")
    probe = next(t for t in (gen(f"p{i}", cc="no-store") for i in range(100)) if owner(upstreams, t) == 0)
    broken = next(t for t in (gen(f"b{i}", cc="no-store") for i in range(100)) if owner(upstreams, t) == 0)
    name = broken.split("/")[2].split("?")[0]

    def served_by():
        status, headers, _ = get(server, probe)
        assert status == 200
        return int(headers["x-origin"])

    assert served_by() == first.port
    first.ctl(f"/_fail/{name}/on")  # 500, not listed: one resource's bug, the origin's answer
    for _ in range(3):
        status, headers, _ = get(server, broken)
        assert status == 500 and headers["x-origin"] == str(first.port)
    assert served_by() == first.port, "a 500 must not open the circuit"
    first.ctl(f"/_fail/{name}/on?status=503")
    for _ in range(2):  # two listed 503s in a row (failures = 2) open the first origin's circuit
        status, headers, _ = get(server, broken)
        assert status == 200 and headers["x-origin"] == str(second.port), "a listed status tries the next origin"
    assert first.count(broken) == 5
    asked = first.count(probe)
    assert served_by() == second.port, "an open circuit sends the origin's keys to the next one"
    assert first.count(probe) == asked
    first.ctl(f"/_fail/{name}/off")
    until(served_by, lambda port: port == first.port)  # after the cooldown a trial request succeeds
    assert served_by() == first.port
    settled(server, cache_dir)


def cache_status(server: EdgeProcess) -> dict:
    """The admin endpoint's `cache` of /status: the manager's objects, bytes, evictions..."""
    return httpx.get(server.admin_url + "/status", timeout=10).json()["cache"]


def origin_rows(server: EdgeProcess) -> list[dict]:
    """The admin endpoint's `origins` of /status: url, healthy (active check), circuit, requests_ok/failed..."""
    return httpx.get(server.admin_url + "/status", timeout=10).json()["origins"]


def circuit_soon(server: EdgeProcess, index: int, state: str) -> list[dict]:
    """origin_rows() once origin `index`'s circuit reads `state` (workers publish their circuits each second)."""
    return until(lambda: origin_rows(server), lambda rows: rows[index]["circuit"] == state, timeout=5)


@pytest.mark.parametrize("code", [500, 503])
def test_a_single_origins_5xx_reach_the_client_and_never_become_502s(pull, origins, cache_dir, code):
    """Issue 16: a 5xx is the origin's answer, not its failure (by default): 100 in a row reach the client as
    the origin sent them, none becomes a 502, and the circuit stays closed."""
    [origin] = origins(1)
    server = pull([origin])
    origin.ctl(f"/_fail/down/on?status={code}")  # /gen/down answers `code` with no freshness: never stored
    target = gen("down")
    seen = defaultdict(int)
    for _ in range(100):
        status, headers, body = get(server, target)
        seen[status] += 1
        assert headers["cache-status"] == MISS and headers["x-origin"] == str(origin.port), headers
        assert headers["content-type"].startswith("text/plain") and body == b"origin failure\n"
    assert dict(seen) == {code: 100}
    assert origin.count(target) == 100
    time.sleep(1.2)  # the worker's circuits are published each second
    [row] = origin_rows(server)
    assert row["circuit"] == "closed" and row["requests_failed"] == 0 and row["requests_ok"] == 100, row
    assert stored(cache_dir, target) is None
    settled(server, cache_dir)


def test_failure_statuses_never_cut_off_the_last_origin_the_active_check_keeps(pull, origins, cache_dir):
    """failure_statuses = [500] with one origin: its 500s open its circuit, but with no other origin to try it
    is still asked (the client gets its 500s, never a 502) until the active check marks it down."""
    [origin] = origins(1)
    # One worker: each worker keeps its own passive breaker, and the test counts one breaker's failures.
    server = pull([origin], "--workers", "1", "--health-interval", "0.2",
                  config="[health]\nfailure_statuses = [500]\nfailures = 3\n")
    origin.ctl("/_fail/down/on")
    target = gen("down")
    for _ in range(30):
        status, headers, body = get(server, target)
        assert status == 500 and headers["x-origin"] == str(origin.port) and body == b"origin failure\n"
    assert origin.count(target) == 30, "each request asked the origin once, the open circuit notwithstanding"
    [row] = circuit_soon(server, 0, "open in 1 of 1 workers")
    assert row["healthy"] is True and row["requests_failed"] == 30
    status, _, _ = get(server, gen("fine", cc="no-store"))  # its other paths still work: a success closes it
    assert status == 200
    circuit_soon(server, 0, "closed")
    origin.ctl("/_health/fail")  # the active check, not the breaker, takes the last origin out
    until(lambda: get(server, target)[0], lambda status: status == 502)
    assert wait_for(lambda: f"origin {origin.url} is down" in server.stderr(), 5), server.stderr()
    status, headers, _ = get(server, target)
    assert status == 502 and headers["cache-status"] == "edge; fwd=miss; detail=unreachable"
    settled(server, cache_dir)


def test_two_origins_one_refusing_requests_succeed_and_its_circuit_opens(pull, origins, cache_dir):
    """A refused connection is the origin's failure: retried on the next origin, counted, and after
    health.failures (5) in a row the dead origin's circuit opens and it is no longer tried."""
    [live] = origins(1)
    dead = closed_url()
    server = pull([dead, live.url], "--workers", "1", config="[health]\ninterval = 60\ncooldown = 60\n")  # one breaker
    ring = Ring([(dead, 1), (live.url, 1)])
    targets = [gen(f"d{i}", cc="no-store") for i in range(40)]
    assert sum(ring.candidates(t.encode())[0] == 0 for t in targets) >= 6, "keys of the dead origin"
    for _ in range(2):
        for target in targets:
            status, headers, _ = get(server, target)
            assert status == 200 and headers["x-origin"] == str(live.port), (status, headers)
    rows = circuit_soon(server, 0, "open in 1 of 1 workers")
    assert rows[0]["healthy"] is True, rows
    assert rows[0]["requests_failed"] == 5, "tried until its circuit opened, then left alone"
    assert rows[1]["circuit"] == "closed" and rows[1]["requests_ok"] == 80 and rows[1]["requests_failed"] == 0
    settled(server, cache_dir)


def test_torn_bodies_open_the_circuit(pull, origins, cache_dir):
    """An origin that closes before the end of the body it announced fails the exchange (counted once:
    a head counted as a success first would reset the failures in a row and the circuit never opens)."""
    upstreams = origins(2)
    server = pull(upstreams, "--workers", "1", config="[health]\nfailures = 3\ninterval = 60\ncooldown = 60\n")
    cutter = owner(upstreams, "/cut")  # one worker: one breaker counts the three
    for _ in range(3):
        client = server.connect(timeout=10)
        client.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = read_until_closed(client, 10).partition(b"\r\n\r\n")
        client.close()
        assert head.startswith(b"HTTP/1.1 200") and len(body) < 100000
    assert upstreams[cutter].count("/cut") == 3
    rows = circuit_soon(server, cutter, "open in 1 of 1 workers")
    assert rows[cutter]["requests_failed"] == 3, rows
    assert rows[cutter]["requests_ok"] == 0, "one outcome per exchange"
    probe = next(t for t in (gen(f"t{i}", cc="no-store") for i in range(100)) if owner(upstreams, t) == cutter)
    status, headers, _ = get(server, probe)
    assert status == 200 and headers["x-origin"] == str(upstreams[1 - cutter].port)
    settled(server, cache_dir)


# -- the cache key ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule, fetches", [(None, 2), ('"ignore"', 1), ('["a"]', 1)], ids=["keep", "ignore", "list"])
def test_query_in_the_cache_key(pull, origins, cache_dir, rule, fetches):
    [origin] = origins(1)
    server = pull([origin], config=f"[cache]\nquery = {rule}\n" if rule else None)
    first, second = ("/obj/q?a=1&b=1", "/obj/q?b=2&a=1") if rule == '["a"]' else ("/obj/q?a=1", "/obj/q?a=2")
    status, headers, _ = get(server, first)
    assert status == 200 and headers["cache-status"] == MISS_STORED
    status, headers, _ = get(server, second)
    assert status == 200
    if fetches == 2:
        assert headers["cache-status"] == MISS_STORED
    else:
        assert HIT.fullmatch(headers["cache-status"])
    counts = origin.stats()["counts"]
    assert sum(n for path, n in counts.items() if path.startswith("/obj/q")) == fetches
    assert counts.get(first) == 1
    settled(server, cache_dir)
