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
