"""The origin client (edge/origin.py) against real origin servers on loopback: ring choice, retry, headers."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge.origin import OriginError, OriginPool, TruncatedBody, Upstream

HERE = Path(__file__).resolve().parent


@pytest.fixture
def origins():
    """A factory of real origin processes; returns their base URLs."""
    procs = []

    def start(n: int) -> list[str]:
        urls = []
        for _ in range(n):
            proc = subprocess.Popen([sys.executable, str(HERE / "origin_server.py")], stdout=subprocess.PIPE,
                                    text=True)
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{int(proc.stdout.readline())}")
        return urls

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def closed_port() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def run(coro):
    """Run one coroutine to the end."""
    return asyncio.run(coro)


async def get(pool: OriginPool, key: str, **kw) -> tuple[int, dict, bytes]:
    """Fetch `key` (also the target) and read the whole body."""
    fetched = await pool.fetch(key.encode(), "GET", key, **kw)
    return fetched.status, {k.decode(): v.decode() for k, v in fetched.headers}, await read_all(fetched)


async def read_all(fetched) -> bytes:  # noqa: ANN001
    """The whole body of an origin response, which then goes back to its pool."""
    parts = []
    try:
        while chunk := await fetched.read():
            parts.append(chunk)
    finally:
        fetched.close()
    return b"".join(parts)


def test_each_key_goes_to_its_ring_origin_every_time(origins):
    urls = origins(3)

    async def main():
        pool = OriginPool([Upstream(u) for u in urls])
        try:
            for i in range(30):
                key = f"/obj/k{i}"
                owner = urls[pool.ring.lookup(key.encode())]
                for _ in range(2):
                    status, headers, body = await get(pool, key)
                    assert status == 200 and body == f"k{i}@{owner.rsplit(':', 1)[1]}".encode()
        finally:
            await pool.close()

    run(main())


def test_a_refused_origin_is_retried_on_the_next_node_and_reported(origins):
    live = origins(1)[0]
    dead = closed_port()

    async def main():
        pool = OriginPool([Upstream(dead), Upstream(live)])
        failed = []
        key = next(f"/obj/r{i}" for i in range(200) if pool.ring.lookup(f"/obj/r{i}".encode()) == 0)
        try:
            status, _, body = await get(pool, key, on_failure=failed.append)
            assert status == 200 and body.endswith(live.rsplit(":", 1)[1].encode())
            assert failed == [0]
            # POST is not idempotent: no second try.
            with pytest.raises(OriginError):
                await pool.fetch(key.encode(), "POST", key)
        finally:
            await pool.close()

    run(main())


def test_a_listed_failure_status_is_retried_on_the_next_origin_and_reported(origins):
    """health.failure_statuses: such an answer counts and goes to the next origin (nginx proxy_next_upstream
    http_503); any other status is the answer; the last origin's answer is returned whatever it is."""
    urls = origins(2)

    async def main():
        pool = OriginPool([Upstream(u) for u in urls])
        key = next(f"/gen/s{i}" for i in range(200) if pool.ring.lookup(f"/gen/s{i}".encode()) == 0)
        name = key.rsplit("/", 1)[1]
        ports = [u.rsplit(":", 1)[1] for u in urls]
        listed = {503}.__contains__
        try:
            await control(urls[0], f"/_fail/{name}/on?status=503")
            failed: list[int] = []
            status, headers, _ = await get(pool, key, on_failure=failed.append)
            assert (status, headers["x-origin"], failed) == (503, ports[0], []), "not listed: the answer"
            status, headers, _ = await get(pool, key, on_failure=failed.append, failed_status=listed)
            assert (status, headers["x-origin"], failed) == (200, ports[1], [0])
            await control(urls[1], f"/_fail/{name}/on?status=503")
            failed.clear()
            status, headers, body = await get(pool, key, on_failure=failed.append, failed_status=listed)
            assert (status, headers["x-origin"], body) == (503, ports[1], b"origin failure\n")
            assert failed == [0], "the last answer is the caller's to judge"
            failed.clear()
            await control(urls[1], f"/_fail/{name}/on?status=500")
            status, headers, _ = await get(pool, key, on_failure=failed.append, failed_status=listed)
            assert (status, headers["x-origin"], failed) == (500, ports[1], [0])
        finally:
            await pool.close()

    run(main())


async def control(url: str, path: str) -> None:
    """A control route of an origin_server.py process (not through the pool)."""
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()


def test_with_no_healthy_origin_the_up_ones_are_the_last_resort(origins):
    """Every breaker open (healthy() false everywhere): the origins `up` (the active check) still get it."""
    urls = origins(2)

    async def main():
        pool = OriginPool([Upstream(u) for u in urls])
        try:
            with pytest.raises(OriginError, match="no healthy origin"):
                await pool.fetch(b"/obj/x", "GET", "/obj/x", healthy=lambda i: False)
            with pytest.raises(OriginError, match="no healthy origin"):
                await pool.fetch(b"/obj/x", "GET", "/obj/x", healthy=lambda i: False, up=lambda i: False)
            status, _, body = await get(pool, "/obj/x", healthy=lambda i: False, up=lambda i: i == 1)
            assert status == 200 and body == f"x@{urls[1].rsplit(':', 1)[1]}".encode()
        finally:
            await pool.close()

    run(main())


def test_a_timeout_on_every_origin_is_a_timeout_error(origins):
    urls = origins(2)

    async def main():
        pool = OriginPool([Upstream(u) for u in urls], read_timeout=0.3)
        failed = []
        try:
            with pytest.raises(OriginError) as info:
                await pool.fetch(b"/slow", "GET", "/slow", on_failure=failed.append)
            assert info.value.timeout and sorted(failed) == [0, 1]
        finally:
            await pool.close()

    run(main())


def test_request_headers_host_via_and_only_listed_fields(origins):
    url = origins(1)[0]

    async def main():
        pool = OriginPool([Upstream(url, host_header="www.example.com")], forward_headers=["Accept-Language",
                                                                                            "Connection"])
        try:
            fetched = await pool.fetch(b"/echo", "GET", "/echo",
                                       incoming=[("Accept-Language", "fr"), ("Cookie", "secret=1"),
                                                 ("Connection", "x-private")],
                                       extra=[("If-None-Match", '"v1"')])
            seen = json.loads(await read_all(fetched))
        finally:
            await pool.close()
        assert seen["Host"] == "www.example.com" and seen["Via"] == "1.1 edge"
        assert seen["Accept-Language"] == "fr" and seen["If-None-Match"] == '"v1"'
        assert "Cookie" not in seen, "a field not listed was forwarded"
        assert seen.get("Connection", "keep-alive").lower() != "x-private", "a hop-by-hop field was forwarded"

    run(main())


def test_hop_by_hop_response_fields_are_dropped(origins):
    url = origins(1)[0]

    async def main():
        pool = OriginPool([Upstream(url)])
        try:
            _, headers, _ = await get(pool, "/obj/h")
        finally:
            await pool.close()
        assert "keep-alive" not in headers and "connection" not in headers
        assert headers["cache-control"] == "max-age=60" and headers["surrogate-key"] == "a b"

    run(main())


async def scripted_origin(heads: list[bytes]) -> tuple[asyncio.AbstractServer, str]:
    """A loopback origin (in this process) that answers each request on a connection with the next of `heads`
    (raw status line and fields, without the blank line) and the body "ok"."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for head in heads:
            if not await reader.readuntil(b"\r\n\r\n"):
                break
            writer.write(head + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("head, dropped, kept", [
    # RFC 9110 §7.6.1: every field the Connection field names is hop-by-hop, before or after it, any case.
    (b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nConnection: x-before, X-After\r\nX-After: 2\r\nX-Kept: 3",
     {"x-before", "x-after"}, {"x-kept"}),
    ((b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nConnection: keep-alive,x-b , ,X-C\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n"
      b"Cache-Control: max-age=60"), {"x-a", "x-b", "x-c"}, {"cache-control"}),
    ((b"HTTP/1.1 200 OK\r\nConnection: cache-control, set-cookie\r\nCache-Control: no-store\r\nSet-Cookie: a=1\r\n"
      b"ETag: \"v1\""), {"cache-control", "set-cookie"}, {"etag"}),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-Kept: 1", set(), {"x-kept"}),
    # what an interim answer's Connection names is not the final answer's business
    ((b"HTTP/1.1 103 Early Hints\r\nConnection: x-kept\r\nLink: </a.css>; rel=preload\r\n\r\n"
      b"HTTP/1.1 200 OK\r\nX-Kept: 1"), set(), {"x-kept"}),
])
def test_fields_the_origins_connection_names_are_dropped(head, dropped, kept):
    async def main():
        server, url = await scripted_origin([head])
        pool = OriginPool([Upstream(url)])
        try:
            status, headers, body = await get(pool, "/x")
        finally:
            await pool.close()
            server.close()
        assert status == 200 and body == b"ok"
        names = {name.lower() for name in headers}
        assert not names & (dropped | {"connection"}), names
        assert kept <= names and "content-length" in names

    run(main())


def test_a_field_the_origin_nominated_once_is_kept_on_the_next_answer_of_the_connection():
    async def main():
        server, url = await scripted_origin([b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1",
                                             b"HTTP/1.1 200 OK\r\nX-A: 2"])
        pool = OriginPool([Upstream(url)])
        try:
            _, first, _ = await get(pool, "/1")
            _, second, _ = await get(pool, "/2")  # the same keep-alive connection
        finally:
            await pool.close()
            server.close()
        assert "x-a" not in first and second["x-a"] == "2"

    run(main())


@pytest.mark.parametrize("incoming, sent", [
    # RFC 9110 §7.6.1: a field the client's Connection names is not forwarded, even when listed.
    ([("Connection", "X-Request-Id"), ("X-Request-Id", "7"), ("Accept-Language", "fr")],
     {"Accept-Language": "fr"}),
    ([("X-Request-Id", "7"), ("Accept-Language", "fr"), ("connection", "close, accept-language")],
     {"X-Request-Id": "7"}),
    ([("Connection", "keep-alive"), ("Connection", " x-request-id ,"), ("X-Request-Id", "7")], {}),
    ([("Connection", "close"), ("X-Request-Id", "7")], {"X-Request-Id": "7"}),
    ([("X-Request-Id", "7")], {"X-Request-Id": "7"}),
])
def test_fields_the_clients_connection_names_are_not_forwarded(incoming, sent):
    pool = OriginPool([Upstream("http://127.0.0.1:1")], forward_headers=["X-Request-Id", "Accept-Language",
                                                                         "Connection"])
    out = pool.request_headers(pool.upstreams[0], incoming)
    assert {k: v for k, v in out.items() if k not in ("Host", "Via")} == sent


def test_a_body_cut_short_raises_and_a_whole_one_streams(origins):
    url = origins(1)[0]

    async def main():
        pool = OriginPool([Upstream(url)])
        try:
            with pytest.raises(TruncatedBody):
                await get(pool, "/cut")
            status, _, body = await get(pool, "/big")
            assert status == 200 and body == b"".join(bytes([i]) * 65536 for i in range(16))
        finally:
            await pool.close()

    run(main())


def test_pool_figures_and_active_counts_follow_each_exchange(origins):
    """Issue 17: the pool publishes open/idle/in-use and opened totals to its shared figures, and its active
    count (least-conn's load) is back to 0 once every response was let go, failures included."""
    from edge.health import POOL_FIELDS, POOL_IDLE, POOL_IN_USE, POOL_OPEN, POOL_OPENED

    [url] = origins(1)
    dead = closed_port()
    figures = memoryview(bytearray(8 * 2 * POOL_FIELDS)).cast("q")

    async def main():
        pool = OriginPool([Upstream(url), Upstream(dead)], figures=figures, balance="least-conn")
        try:
            held = [await pool.fetch(f"/obj/f{i}".encode(), "GET", f"/obj/f{i}", eligible=lambda i: i == 0)
                    for i in range(3)]
            assert pool.pools[0].active == 3
            assert (figures[POOL_OPEN], figures[POOL_IDLE], figures[POOL_IN_USE]) == (3, 0, 3)
            for fetched in held:
                await read_all(fetched)
            assert pool.pools[0].active == 0
            assert (figures[POOL_OPEN], figures[POOL_IDLE], figures[POOL_IN_USE], figures[POOL_OPENED]) == (3, 3, 0, 3)
            for i in range(5):  # one at a time: the idle connections are reused, none opened
                await get(pool, f"/obj/g{i}", eligible=lambda i: i == 0)
            assert figures[POOL_OPENED] == 3 and figures[POOL_IDLE] == 3
            with pytest.raises(OriginError):  # refused: counted active while it tried, not after
                await pool.fetch(b"/x", "GET", "/x", healthy=lambda i: i == 1)
            assert pool.pools[1].active == 0 and figures[POOL_FIELDS + POOL_OPEN] == 0
            pool.track(1, 1)  # a tunnel to origin 1: least-conn now prefers origin 0 ...
            assert pool.order("least-conn") == [0, 1]
            pool.pools[0].active = 2  # ... until origin 0 is busier
            assert pool.order("least-conn") == [1, 0]
            pool.pools[0].active = 0
            pool.track(1, -1)
        finally:
            await pool.close()
        assert (figures[POOL_OPEN], figures[POOL_IDLE], figures[POOL_IN_USE], figures[POOL_OPENED]) == (0, 0, 0, 3)

    run(main())
