#!/usr/bin/env python3
"""A floor for edge's cache-miss cost: the least a Python (uvloop + httptools) caching proxy miss can cost.

Each client connection gets one keep-alive connection to the origin; every response is written to a
new file (open, write, setxattr with its header fields as JSON, close, rename into place, as edge stores
an object) and sent back. No cache key rules, freshness, coalescing, LRU, stats or error handling: not
a server to use, a measurement of what is left for all of that. On SIGINT it prints the CPU time it
spent per request.

    scripts/proxy_floor.py --origin 127.0.0.1:8081 --port 18090 --cache /var/tmp/floor &
    wrk -t1 -c64 -d5s -s new-key-per-request.lua http://127.0.0.1:18090/
    kill -INT %1
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import time

import httptools
import uvloop

DROPPED = frozenset({b"content-length", b"connection", b"keep-alive", b"server", b"date", b"transfer-encoding"})


class Store:
    """Files named by the BLAKE2b of the target, written to tmp/ and renamed into objects/ab/."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(f"{root}/tmp", exist_ok=True)
        for i in range(256):
            os.makedirs(f"{root}/objects/{i:02x}", exist_ok=True)
        self.served = 0

    def put(self, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write one response as a new file with its metadata and publish it by rename."""
        name = hashlib.blake2b(target, digest_size=16).hexdigest()
        tmp = f"{self.root}/tmp/{name}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, body)
            meta = {"key": target.decode("latin-1"), "length": len(body), "stored_at": time.time(),
                    "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]}
            os.setxattr(fd, "user.edge.meta", json.dumps(meta).encode())
        finally:
            os.close(fd)
        os.rename(tmp, f"{self.root}/objects/{name[:2]}/{name}")
        self.served += 1


class Upstream(asyncio.Protocol):
    """The origin side of one client connection: parses responses and hands each one back whole."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        self.transport = transport

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:  # noqa: D102
        self.body.append(body)

    def on_message_complete(self) -> None:  # noqa: D102
        headers, body = self.headers, b"".join(self.body)
        self.headers, self.body = [], []
        self.client.answer(headers, body)


class Client(asyncio.Protocol):
    """One client connection: each request goes to the origin, each answer is stored, then sent."""

    def __init__(self, origin: tuple[str, int], store: Store) -> None:
        self.origin = origin
        self.store = store
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.targets: list[bytes] = []
        self.upstream: Upstream | None = None
        self.waiting: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        self.transport = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        _, self.upstream = await asyncio.get_running_loop().create_connection(lambda: Upstream(self), *self.origin)
        for request in self.waiting:
            self.upstream.transport.write(request)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:  # noqa: D102
        self.url += url

    def on_message_complete(self) -> None:  # noqa: D102
        target, self.url = self.url, b""
        self.targets.append(target)
        request = b"GET %s HTTP/1.1\r\nHost: origin\r\nVia: 1.1 floor\r\n\r\n" % target
        if self.upstream is None:
            self.waiting.append(request)
        else:
            self.upstream.transport.write(request)

    def answer(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The origin's answer to the oldest request: store it, send it."""
        self.store.put(self.targets.pop(0), headers, body)
        head = [b"HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Length: %d\r\n" % len(body)]
        head.extend(b"%s: %s\r\n" % (k, v) for k, v in headers if k not in DROPPED)
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + body)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(args: argparse.Namespace) -> None:
    """Listen until SIGINT, then print the CPU time per request served."""
    host, _, port = args.origin.rpartition(":")
    store = Store(args.cache)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client((host, int(port)), store), "127.0.0.1", args.port, backlog=4096)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    start = resource.getrusage(resource.RUSAGE_SELF)
    served = store.served
    await stop
    end = resource.getrusage(resource.RUSAGE_SELF)
    server.close()
    n = store.served - served
    if n:
        user = (end.ru_utime - start.ru_utime) / n * 1e6
        system = (end.ru_stime - start.ru_stime) / n * 1e6
        print(f"proxy_floor: {n} requests, {user + system:.1f} us CPU per request (user {user:.1f}, system {system:.1f})")


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="HOST:PORT of the origin")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--cache", required=True, help="directory for the stored responses")
    args = parser.parse_args()
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
