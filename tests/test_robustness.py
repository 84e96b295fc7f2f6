"""Robustness: thousands of mixed, hostile and aborted requests; fds and RSS return to their baseline.

Also: a file evicted from the open-file cache while a slow client still downloads it, and a file
truncated while it is being sent.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import Client, EdgeProcess, wait_for

REQUESTS_PER_ROUND = 3000
THREADS = 8
MIB = 1 << 20


# -- helpers ------------------------------------------------------------------------------------------

def connect(server: EdgeProcess, *, rcvbuf: int | None = None, timeout: float = 15.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((server.host, server.port))
    return sock


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def get(target: str, extra: str = "", close: bool = True) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"GET {target} HTTP/1.1\r\nHost: edge.test\r\n{extra}{conn}\r\n".encode("latin-1")


def one(server: EdgeProcess, raw: bytes) -> tuple[int, dict[str, str], bytes, Client]:
    """Send raw bytes on a fresh connection and read one response (the client is returned open)."""
    client = Client(connect(server))
    client.send(raw)
    status, headers, body = client.response(head=raw.startswith(b"HEAD "))
    return status, headers, body, client


def settled_fds(server: EdgeProcess) -> int:
    """The server's fd count once closed client connections have been processed (two equal readings)."""
    last = server.fds()
    for _ in range(50):
        time.sleep(0.3)
        now = server.fds()
        if now == last:
            return now
        last = now
    return last


def fd_targets(pid: int) -> list[str]:
    out = []
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            out.append(os.readlink(f"{base}/{name}"))
        except OSError:
            pass
    return out


# -- the mixed workload -------------------------------------------------------------------------------

HOSTILE = [
    "/../secret.txt", "/../../../../../../etc/passwd", "/%2e%2e/secret.txt", "/%2E%2E/%2e%2e/etc/passwd",
    "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/sub/../../secret.txt", "/sub/%2e%2e/%2e%2e/secret.txt",
    "/..%5csecret.txt", "/%5c..%5csecret.txt", "//etc/passwd", "///../secret.txt", "/.%2e/secret.txt",
    "/1k.bin%00.txt", "/%00", "/etc/passwd", "/.secret", "/.git/config", "/sub/.hidden",
    "http://evil.example/../secret.txt", "/%252e%252e/secret.txt", "/sub/..%2f..%2fsecret.txt",
]

# (raw request, acceptable statuses, whether the server must close afterwards)
MALFORMED = [
    (b"GARBAGE\r\n\r\n", {400}, True),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", {400, 505}, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", {400}, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", {400}, True),
    (b"GET / HTTP/1.1\r\n\r\n", {400}, True),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", {400}, True),
    (b"\x00\x01\x02\xff binary\r\n\r\n", {400}, True),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {414}, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n", {400}, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n", {400}, True),
]


class Workload:
    """Builds and runs rounds of mixed requests against one server; each job raises on a wrong answer."""

    def __init__(self, server: EdgeProcess, files: dict[str, bytes]) -> None:
        self.server = server
        self.files = files
        self.digests = {name: hashlib.sha256(data).digest() for name, data in files.items()}

    # each job: one client behaviour
    def normal(self, name: str) -> None:
        status, headers, body, client = one(self.server, get("/" + name))
        client.close()
        assert status == 200, (name, status)
        assert hashlib.sha256(body).digest() == self.digests[name], name

    def keepalive(self, names: list[str]) -> None:
        """Several requests pipelined on one keep-alive connection; answers in order."""
        client = Client(connect(self.server))
        try:
            client.send(b"".join(get("/" + n, close=False) for n in names))
            for n in names:
                status, _, body = client.response()
                assert status == 200, (n, status)
                assert hashlib.sha256(body).digest() == self.digests[n], n
        finally:
            client.close()

    def not_found(self, rng: random.Random) -> None:
        status, _, _, client = one(self.server, get(f"/missing-{rng.randrange(50)}.html"))
        client.close()
        assert status == 404

    def hostile(self, target: str) -> None:
        client = Client(connect(self.server))
        try:
            client.send(get(target))
            try:
                status, _, body = client.response()
            except ConnectionError:
                return  # closing without an answer is a refusal too
            assert status in (400, 403, 404), (target, status)
            assert b"TOP SECRET" not in body and b"root:" not in body, target
        finally:
            client.close()

    def ranges(self, rng: random.Random) -> None:
        data = self.files["1m.bin"]
        choice = rng.randrange(4)
        if choice == 0:
            a = rng.randrange(len(data) - 1)
            b = rng.randrange(a, min(len(data), a + 200_000))
            status, headers, body, client = one(self.server, get("/1m.bin", f"Range: bytes={a}-{b}\r\n"))
            assert status == 206 and body == data[a:b + 1], (a, b, status)
            assert headers["content-range"] == f"bytes {a}-{b}/{len(data)}"
        elif choice == 1:
            n = rng.randrange(1, 5000)
            status, _, body, client = one(self.server, get("/1m.bin", f"Range: bytes=-{n}\r\n"))
            assert status == 206 and body == data[-n:]
        elif choice == 2:
            status, headers, body, client = one(self.server, get("/1m.bin", "Range: bytes=0-9,100-109,5000-5009\r\n"))
            assert status == 206
            assert headers["content-type"].startswith("multipart/byteranges")
            assert data[0:10] in body and data[100:110] in body and data[5000:5010] in body
        else:
            status, headers, _, client = one(self.server, get("/1m.bin", f"Range: bytes={len(data) + 10}-\r\n"))
            assert status == 416
            assert headers["content-range"] == f"bytes */{len(data)}"
        client.close()

    def malformed(self, case: tuple[bytes, set[int], bool]) -> None:
        raw, statuses, must_close = case
        client = Client(connect(self.server))
        try:
            client.send(raw)
            status, _, _ = client.response()
            assert status in statuses, (raw[:60], status)
            if must_close:
                assert client.closed(10), f"connection left open after {status} for {raw[:60]!r}"
        finally:
            client.close()

    def oversized_head(self) -> None:
        client = Client(connect(self.server))
        try:
            try:
                client.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n")
                status, _, _ = client.response()
            except (ConnectionError, OSError):
                return  # the server may reset while the rest of the oversized head is unread
            assert status == 431, status
        finally:
            client.close()

    def abort_download(self, rst: bool, rng: random.Random) -> None:
        """Start downloading, read a little, then vanish (FIN or RST).

        1 MiB fits in the server's socket send buffer (up to 4 MiB on loopback), so sendfile may finish
        before the client goes; the 16 MiB file makes sure the server is mid-transfer when it does.
        """
        name = rng.choice(["1m.bin", "16m.bin"])
        sock = connect(self.server, rcvbuf=rng.choice([None, 16384]))
        sock.sendall(get("/" + name, close=False) + get("/100k.bin", close=False))
        want = rng.randrange(1, 300_000)
        got = 0
        while got < want:
            chunk = sock.recv(min(65536, want - got))
            if not chunk:
                raise AssertionError("server closed during a download")
            got += len(chunk)
        if rst:
            rst_close(sock)
        else:
            sock.close()

    def half_request(self, rst: bool) -> None:
        sock = connect(self.server)
        sock.sendall(b"GET /1k.bin HTTP/1.1\r\nHost: edge.test\r\nUser-Ag")
        if rst:
            rst_close(sock)
        else:
            sock.close()

    def silent(self) -> None:
        sock = connect(self.server)
        rst_close(sock)

    def jobs(self, count: int, seed: int) -> list:
        rng = random.Random(seed)
        kinds = [
            (20, lambda: (self.normal, "1k.bin")),
            (12, lambda: (self.normal, "100k.bin")),
            (6, lambda: (self.normal, "1m.bin")),
            (4, lambda: (self.normal, rng.choice(["index.html", "hello.txt", "sub/index.html"]))),
            (6, lambda: (self.keepalive, rng.choices(["1k.bin", "100k.bin", "index.html", "hello.txt"], k=5))),
            (8, lambda: (self.not_found, random.Random(rng.random()))),
            (10, lambda: (self.hostile, rng.choice(HOSTILE))),
            (10, lambda: (self.ranges, random.Random(rng.random()))),
            (10, lambda: (self.malformed, rng.choice(MALFORMED))),
            (1, lambda: (self.oversized_head,)),
            (6, lambda: (self.abort_download, rng.random() < 0.5, random.Random(rng.random()))),
            (5, lambda: (self.half_request, rng.random() < 0.5)),
            (2, lambda: (self.silent,)),
        ]
        weights = [w for w, _ in kinds]
        makers = [m for _, m in kinds]
        return [rng.choices(makers, weights)[0]() for _ in range(count)]

    def run(self, count: int, seed: int) -> list[str]:
        """Run `count` jobs over several threads; returns the failures (empty when all went well)."""
        jobs = self.jobs(count, seed)

        def call(job):
            fn, *args = job
            try:
                fn(*args)
            except Exception as e:  # collected and reported together
                return f"{fn.__name__}{tuple(a for a in args if not isinstance(a, random.Random))}: {e!r}"
            return None

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(call, jobs))
        return [r for r in results if r is not None]

    def warm(self) -> None:
        """Every file once, so the open-file cache holds all of them before the baseline is taken."""
        for name in self.files:
            self.normal(name)
        for target in ("/sub/", "/sub", "/noindex/", "/missing.html"):
            _, _, _, client = one(self.server, get(target))
            client.close()


def served_files(www: Path) -> dict[str, bytes]:
    (www / "16m.bin").write_bytes(os.urandom(16 * MIB))
    names = ["16m.bin", "1k.bin", "100k.bin", "1m.bin", "index.html", "hello.txt", "sub/index.html", "noindex/a.txt"]
    return {name: (www / name).read_bytes() for name in names}


def test_thousands_of_mixed_requests_leave_no_leak(edge, www: Path, tmp_path: Path):
    (tmp_path / "secret.txt").write_text("TOP SECRET\n")
    (www / "sub" / ".hidden").write_text("TOP SECRET\n")
    (www / ".secret").write_text("TOP SECRET\n")
    server = edge()
    load = Workload(server, served_files(www))
    load.warm()
    time.sleep(1.2)  # let the first revalidation interval pass, then warm again (revalidation path)
    load.warm()
    baseline = settled_fds(server)

    failures = load.run(REQUESTS_PER_ROUND, seed=1)
    assert server.alive(), server.stderr() if not server.alive() else ""
    assert not failures, f"{len(failures)} wrong answers, e.g. {failures[:5]}"
    time.sleep(1.0)
    assert wait_for(lambda: server.fds() == baseline, 10), \
        f"fds {server.fds()} after round 1, baseline {baseline}: {sorted(fd_targets(server.worker_pid))}"
    rss_after_first = server.rss()

    failures = load.run(REQUESTS_PER_ROUND, seed=2)
    assert server.alive()
    assert not failures, f"{len(failures)} wrong answers, e.g. {failures[:5]}"
    time.sleep(1.0)
    assert wait_for(lambda: server.fds() == baseline, 10), \
        f"fds {server.fds()} after round 2, baseline {baseline}: {sorted(fd_targets(server.worker_pid))}"
    rss_after_second = server.rss()
    assert rss_after_second - rss_after_first <= 20 * MIB, \
        f"RSS grew by {(rss_after_second - rss_after_first) / MIB:.1f} MiB over an identical round"

    # Still serving, correctly.
    load.normal("1m.bin")
    load.keepalive(["1k.bin", "hello.txt"])


def test_evicted_file_finishes_for_a_slow_client(edge, www: Path, tmp_path: Path):
    big = os.urandom(32 * MIB)
    (www / "big.bin").write_bytes(big)
    others = [f"other-{i}.bin" for i in range(24)]  # more than any floor the cache size may have
    for name in others:
        (www / name).write_bytes(os.urandom(20_000))
    config = tmp_path / "edge.toml"
    config.write_text("[file_cache]\nmax_entries = 2\n")
    server = edge(config=config)

    def fetch(name: str) -> None:
        status, _, body, client = one(server, get("/" + name))
        client.close()
        assert status == 200 and body == (www / name).read_bytes(), name

    for name in others:  # the cache is full of small files; take the baseline now
        fetch(name)
    baseline = settled_fds(server)
    big_path = str((www / "big.bin").resolve())

    sock = connect(server, rcvbuf=32768, timeout=20)
    sock.sendall(get("/big.bin"))
    buf = b""
    while len(buf) < 256 * 1024:
        chunk = sock.recv(65536)
        assert chunk, "closed early"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: %d" % len(big) in head.lower()
    time.sleep(0.3)
    assert big_path in fd_targets(server.worker_pid)

    for name in others:  # evict big.bin from the LRU while its transfer is still under way
        fetch(name)
    assert server.alive()
    assert big_path in fd_targets(server.worker_pid), "the fd of a file still being sent was closed"

    parts = [body]
    got = len(body)
    while got < len(big):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    sock.close()
    received = b"".join(parts)
    assert len(received) == len(big), f"slow download ended after {len(received)} of {len(big)} bytes"
    assert received == big

    # The evicted entry's fd is closed once its last transfer ended; nothing else leaked.
    assert wait_for(lambda: big_path not in fd_targets(server.worker_pid), 10), \
        "big.bin is still open after it was evicted and its transfer ended"
    assert wait_for(lambda: server.fds() == baseline, 10), \
        f"fds {server.fds()}, baseline {baseline}: {sorted(fd_targets(server.worker_pid))}"
    fetch(others[0])
    assert server.alive()


def test_file_truncated_while_sent_is_never_a_complete_short_body(edge, www: Path):
    big = os.urandom(32 * MIB)
    path = www / "shrinking.bin"
    path.write_bytes(big)
    server = edge()

    sock = connect(server, rcvbuf=32768, timeout=20)
    # Keep-alive, with a second request pipelined behind: its bytes must never pass as the rest of the body.
    sock.sendall(get("/shrinking.bin", close=False) + get("/hello.txt", close=False))
    buf = b""
    while b"\r\n\r\n" not in buf or len(buf) < MIB:
        chunk = sock.recv(65536)
        assert chunk, "closed early"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    assert length == len(big)

    os.truncate(path, MIB)

    parts = [body]
    got = len(body)
    closed = False
    deadline = time.monotonic() + 30
    sock.settimeout(5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            closed = True
            break
        except socket.timeout:
            continue
        if not chunk:
            closed = True
            break
        parts.append(chunk)
        got += len(chunk)
    sock.close()
    received = b"".join(parts)
    assert closed, "the server neither finished nor closed the connection after the file shrank"
    assert len(received) < length, \
        f"{len(received)} bytes received for Content-Length {length}: a short file passed as a complete body"
    # Bytes below the new size are the file's. (Bytes past it that were already queued in the socket
    # when the file shrank reference page-cache pages the kernel may have dropped: zero-copy's price.)
    kept = min(len(received), MIB)
    assert received[:kept] == big[:kept], "bytes other than the file's were sent as its body"

    assert server.alive()
    # The shrunken file is served afresh with its new length.
    status, headers, body, client = one(server, get("/shrinking.bin"))
    client.close()
    assert status == 200
    assert int(headers["content-length"]) == MIB
    assert body == big[:MIB]


MAX_HEAD = 64 * 1024
ONE_READ = 256 * 1024  # uvloop reads up to 256 KiB at a time


def endless_line(server: EdgeProcess, prefix: bytes, total: int) -> tuple[int | None, int]:
    """Send a head whose last line never ends (up to `total` bytes); returns (status, bytes sent when it came).

    Past the limit each 16 KiB waits for the answer, so the count says how far the server let the head go.
    """
    sock = connect(server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    chunk = b"a" * 16 * 1024
    sent = 0
    try:
        sock.sendall(prefix)
        sent = len(prefix)
        while sent < total:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            ready, _, _ = select.select([sock], [], [], 0 if sent < MAX_HEAD else 0.5)
            if ready or sent > MAX_HEAD + 4 * ONE_READ:
                break
        sock.settimeout(5)
        try:
            status = Client(sock).response()[0]
        except (ConnectionError, OSError):
            status = None
        return status, sent
    finally:
        sock.close()


def test_endless_header_lines_are_cut_at_the_head_limit(edge, www: Path):
    """A name or value streamed without CRLF gets 431 once the head passes 64 KiB, holding no memory."""
    server = edge()
    request = b"GET /hello.txt HTTP/1.1\r\nHost: edge.test\r\n"
    shapes = [request + b"X-Endless-Name", request + b"X-Endless-Value: "] * 4  # 8 connections at once
    for _ in range(50):
        assert one(server, get("/hello.txt"))[0] == 200
    rss_before = server.rss()
    latencies: list[float] = []
    statuses: list[int] = []
    done = threading.Event()

    def other_client() -> None:
        client = Client(connect(server))
        try:
            while not done.is_set():
                started = time.monotonic()
                client.send(get("/hello.txt", close=False))
                statuses.append(client.response()[0])
                latencies.append(time.monotonic() - started)
        finally:
            client.close()

    watcher = threading.Thread(target=other_client)
    watcher.start()
    try:
        with ThreadPoolExecutor(len(shapes)) as pool:
            results = list(pool.map(lambda prefix: endless_line(server, prefix, 100 * MIB), shapes))
    finally:
        done.set()
        watcher.join()
    for status, sent in results:
        assert status == 431, (status, sent)
        assert sent <= MAX_HEAD + ONE_READ, f"431 only after {sent} bytes of head"
    grown = server.rss() - rss_before
    assert grown < MIB, f"worker RSS grew by {grown / 1024:.0f} KiB"
    assert statuses and set(statuses) == {200}, statuses[-5:]
    latencies.sort()
    print(f"other client: {len(latencies)} requests, p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.2f} ms")
    assert server.alive() and "Traceback" not in server.stderr()


def test_refused_heads_leave_nothing_behind(edge, www: Path):
    """431 and 414 heads and abandoned half-heads: the worker keeps none of them (the parser and its connection
    refer to each other; a cycle would wait for a full collection, which the worker runs rarely)."""
    server = edge()
    for _ in range(20):
        assert one(server, get("/hello.txt"))[0] == 200
    rss_before = server.rss()
    for i in range(100):
        sock = connect(server)
        try:
            if i % 3 == 2:
                sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Half: " + b"h" * 60_000)  # then it goes
            else:
                big = b"X-Big: " + b"b" * 200_000 if i % 3 == 0 else b""
                target = b"/" + b"t" * 30_000 if i % 3 == 1 else b"/hello.txt"
                sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n\r\n")
                sock.settimeout(5)
                try:
                    assert sock.recv(12) in (b"HTTP/1.1 431", b"HTTP/1.1 414")
                except ConnectionError:
                    pass  # reset while the rest of a refused head was unread
        except ConnectionError:
            pass
        finally:
            sock.close()
    time.sleep(0.5)
    grown = server.rss() - rss_before
    assert grown < 4 * MIB, f"worker RSS grew by {grown / MIB:.1f} MiB over 100 refused heads"
    assert server.alive() and "Traceback" not in server.stderr()
