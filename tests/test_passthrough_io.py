"""Passed-through methods in memory (edge/passthrough.py): request bytes in, response bytes out, through edge's
real Worker and a real HTTP/1.1 origin on the same event loop (a scripted server on loopback, httptools-parsed).

The framing decisions (RFC 9112 §6-7: Content-Length and Transfer-Encoding together, codings other than chunked,
a malformed chunk; RFC 9110 §10.1.1: Expect: 100-continue; [proxy] max_body_size: 413 at once or while the body
streams), pipelining after a body, back-pressure from a slow origin to the client (HTTP/1.1: reading pauses;
HTTP/2: the stream's window is not given back), and what a worker without origins still does (405).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import httptools
import pytest

from adapter_harness import (
    WINDOW_UPDATE,
    Conn,
    Edge,
    H2Client,
    make_config,
    make_root,
    parse_h1,
    request_fields,
)

from edge.passthrough import BODY_HIGH

WAIT = 10.0  # seconds a test waits for the loop to bring an answer


# -- a scripted origin on the worker's own loop ------------------------------------------------------------


class OriginConn(asyncio.Protocol):
    """One connection to the scripted origin: parses requests (httptools), records them, answers each once its
    body is whole with JSON {method, path, headers, sha256, length}; ?status= sets the status."""

    def __init__(self, origin: ScriptedOrigin) -> None:
        self.origin = origin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.digest = hashlib.sha256()
        self.length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport
        self.origin.conns.append(self)
        if self.origin.paused:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            self.origin.loop.call_soon(transport.pause_reading)  # (uvloop starts reading after connection_made)


    def data_received(self, data: bytes) -> None:  # noqa: D102
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.origin.broken += 1
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.origin.conns.remove(self)

    def on_message_begin(self) -> None:  # noqa: D102
        self.url, self.headers, self.digest, self.length = b"", [], hashlib.sha256(), 0

    def on_url(self, url: bytes) -> None:  # noqa: D102
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:  # noqa: D102
        self.digest.update(body)
        self.length += len(body)

    def on_message_complete(self) -> None:  # noqa: D102
        seen = {"method": self.parser.get_method().decode(), "path": self.url.decode("latin-1"),
                "headers": self.headers, "sha256": self.digest.hexdigest(), "length": self.length}
        self.origin.requests.append(seen)
        status = 200
        if b"status=" in self.url:
            status = int(self.url.split(b"status=")[1][:3])
        body = json.dumps(seen).encode()
        self.transport.write(b"HTTP/1.1 %d Whatever\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, len(body), body))


class ScriptedOrigin:
    """A loopback HTTP/1.1 server on `loop`: what it was asked (`requests`), its open connections, and a
    `paused` mode in which it reads nothing (a slow origin: a small receive buffer, reading paused)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.requests: list[dict] = []
        self.conns: list[OriginConn] = []
        self.broken = 0  # requests it could not parse (a body cut short, a bad framing)
        self.paused = False
        self.server = loop.run_until_complete(loop.create_server(lambda: OriginConn(self), "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def resume(self) -> None:
        """Read again (the slow origin catches up)."""
        self.paused = False
        for conn in self.conns:
            conn.transport.resume_reading()

    def close(self) -> None:
        """Stop listening, drop the connections."""
        self.server.close()
        for conn in list(self.conns):
            conn.transport.abort()


@pytest.fixture
def setup(tmp_path: Path):
    """(Edge with one origin, that origin): the worker's real Puller and Passer, a disk cache in tmp_path."""
    made: list[tuple[Edge, ScriptedOrigin | None]] = []

    def make(settings: dict | None = None, origins: bool = True, engine: str | None = None):
        root = make_root(tmp_path / f"www{len(made)}")
        import uvloop

        loop = uvloop.new_event_loop()
        origin = ScriptedOrigin(loop) if origins else None
        config_settings = {"origin": [{"url": origin.url}], "cache": {"dir": str(tmp_path / f"cache{len(made)}")},
                           "proxy": {"read_timeout": 2.0, **(settings or {})}} if origins else (settings or {})
        config = make_config(root, config_settings, engine)
        asyncio.set_event_loop(loop)
        edge = _edge_on(loop, config)
        made.append((edge, origin))
        return edge, origin

    yield make
    for edge, origin in made:
        if origin is not None:
            origin.close()
        worker = edge.worker
        if worker.passer is not None:
            worker.passer.close()
        if worker.puller is not None:
            edge.loop.run_until_complete(worker.puller.close())
        edge.close()


def _edge_on(loop: asyncio.AbstractEventLoop, config) -> Edge:  # noqa: ANN001
    """An Edge (adapter_harness) whose Worker runs on `loop` (the origin's), not a loop of its own."""
    import adapter_harness

    new_loop = adapter_harness.uvloop.new_event_loop
    adapter_harness.uvloop.new_event_loop = lambda: loop
    try:
        return Edge(config)
    finally:
        adapter_harness.uvloop.new_event_loop = new_loop


def run_until(conn: Conn, done: Callable[[], bool], timeout: float = WAIT) -> None:
    """Turn the loop (the origin's I/O included) until `done()`; AssertionError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"not done within {timeout} s; received {conn.received[:300]!r}")
        conn.edge.loop.run_until_complete(asyncio.sleep(0.001))
        conn.turn()


def answers(conn: Conn, n: int = 1) -> list:
    """Run until `n` final answers came (or the connection closed); the parsed answers."""
    run_until(conn, lambda: len(parse_h1(conn.received)[0]) >= n or conn.closed)
    conn.settle()
    return parse_h1(conn.received)[0]


def h2_until_ended(client: H2Client, sid: int) -> None:
    """Turn the loop until stream `sid` of `client` has its whole answer."""
    def ended() -> bool:
        client.read()
        return client.reader.stream(sid).ended

    run_until(client.conn, ended)


def post(target: str = "/pass/a", body: bytes = b"", *, method: str = "POST", fields: tuple = (),
         version: str = "HTTP/1.1", length: bool = True) -> bytes:
    """A request with `body` (Content-Length unless `length` is False: then `fields` frame it)."""
    lines = [f"{method} {target} {version}", "Host: edge.test"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes) -> bytes:
    """A chunked body (RFC 9112 §7.1) of `pieces`, with its last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# -- framing decisions --------------------------------------------------------------------------------------

TE = ("Transfer-Encoding", "chunked")
FRAMING = [
    # (name, request bytes, status, does the origin get a whole request?)
    ("content-length body", post(body=b"hello"), 200, True),
    ("chunked body", post(body=chunked(b"hel", b"lo"), fields=(TE,), length=False), 200, True),
    ("CL and TE together: 400 (RFC 9112 §6.3)", post(body=chunked(b"hello"), fields=(TE,)), 400, False),
    ("a coding edge cannot read: 501", post(body=b"x", fields=(("Transfer-Encoding", "gzip, chunked"),),
                                            length=False), 501, False),
    ("TE in HTTP/1.0: 400 (§6.1)", post(body=chunked(b"x"), fields=(TE,), length=False, version="HTTP/1.0"),
     400, False),
    ("a bad chunk size: 400", post(body=b"5\r\nhello\r\nzz\r\n", fields=(TE,), length=False), 400, False),
    ("a chunk longer than its size: 400", post(body=b"3\r\nhello\r\n0\r\n\r\n", fields=(TE,), length=False),
     400, False),
    ("Content-Length over max_body_size: 413 at once", post(body=b"", fields=(("Content-Length", "2000"),),
                                                            length=False), 413, False),
    ("chunked past max_body_size: 413", post(body=chunked(b"a" * 600, b"b" * 600), fields=(TE,), length=False),
     413, False),
    ("CONNECT is not passed: 405", b"CONNECT edge.test:443 HTTP/1.1\r\nHost: edge.test:443\r\n\r\n", 405, False),
    ("TRACE is not passed: 405", post(method="TRACE"), 405, False),
    ("no Host: 400", b"POST /pass/a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", 400, False),
    ("two Hosts: 400", b"POST /pass/a HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi", 400, False),
    ("two Hosts in HTTP/1.0: 400", b"POST /pass/a HTTP/1.0\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi",
     400, False),
    ("HTTP/1.2: 400", b"POST /pass/a HTTP/1.2\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", 400, False),
    ("HTTP/1.0 without Host", b"POST /pass/a HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", 200, True),
    ("a bodiless DELETE", b"DELETE /pass/a HTTP/1.1\r\nHost: edge.test\r\n\r\n", 200, True),
    ("an unknown token method", post(method="PROPFIND", body=b"<x/>"), 200, True),
]


@pytest.mark.parametrize("name,data,status,reaches", FRAMING, ids=[row[0] for row in FRAMING])
def test_framing(setup, name: str, data: bytes, status: int, reaches: bool) -> None:
    """Each row's status; a refused body never reaches the origin whole; an error closes the connection."""
    edge, origin = setup({"max_body_size": 1000})
    conn = edge.connect()
    conn.send(data, settle=False)
    got = answers(conn)
    assert got and got[0].status == status, conn.received[:400]
    assert bool(origin.requests) == reaches
    if status == 405:
        assert got[0].get("allow") == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    if status >= 400 and b"TRACE" not in data:  # (a bodiless TRACE's 405 keeps the connection, as GET's 404)
        assert got[0].get("connection") == "close"
        run_until(conn, lambda: conn.closed or conn.transport.eof_written)
    if reaches:
        seen = origin.requests[0]
        body = data.split(b"\r\n\r\n", 1)[1]
        if "chunked" in name:
            body = b"hello"
        assert seen["sha256"] == hashlib.sha256(body).hexdigest()
        assert got[0].get("cache-status") == "edge; fwd=method"


def test_expect_100_continue_only_when_the_body_is_wanted(setup) -> None:
    """RFC 9110 §10.1.1: the head alone brings 100 Continue (the origin connection is about to read the body);
    then the body, then the answer. Over max_body_size: 413 and no 100 at all."""
    edge, origin = setup({"max_body_size": 1000})
    conn = edge.connect()
    conn.send(post(body=b"", fields=(("Content-Length", "5"), ("Expect", "100-continue")), length=False),
              settle=False)
    run_until(conn, lambda: b"100 Continue" in conn.received)
    assert conn.received == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(b"hello", settle=False)
    got = answers(conn)
    assert got[0].status == 200 and [r.status for r in got[0].informational] == [100]
    assert origin.requests[0]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert all(k.lower() != "expect" for k, _ in origin.requests[0]["headers"])  # edge answered it itself

    refused = edge.connect()
    refused.send(post(body=b"", fields=(("Content-Length", "5000"), ("Expect", "100-continue")), length=False),
                 settle=False)
    got = answers(refused)
    assert got[0].status == 413 and not got[0].informational and b"100 Continue" not in refused.received


def test_pipelined_request_after_a_body_waits_for_the_body(setup) -> None:
    """A passed request with a body, a chunked one, then a GET, in one segment: three answers in order, each
    body whole at the origin (the next head is parsed only after the body was read)."""
    edge, origin = setup()
    conn = edge.connect()
    conn.send(post("/pass/one", b"GET /pass/x HTTP/1.1\r\n\r\n") +
              post("/pass/two", chunked(b"POST /x HTTP/1.1\r\n"), method="PUT", fields=(TE,), length=False) +
              b"DELETE /pass/three HTTP/1.1\r\nHost: edge.test\r\n\r\n", settle=False)
    got = answers(conn, 3)
    assert [r.status for r in got] == [200, 200, 200]
    assert [(r["method"], r["path"]) for r in origin.requests] == [("POST", "/pass/one"), ("PUT", "/pass/two"),
                                                                   ("DELETE", "/pass/three")]
    assert origin.requests[0]["sha256"] == hashlib.sha256(b"GET /pass/x HTTP/1.1\r\n\r\n").hexdigest()
    assert origin.requests[1]["sha256"] == hashlib.sha256(b"POST /x HTTP/1.1\r\n").hexdigest()
    assert not conn.closed and got[0].get("connection") is None  # kept alive: every body was read whole


def test_fields_pass_and_hop_by_hop_stay(setup) -> None:
    """Every end-to-end field goes on (Authorization, Cookie, Content-Type, If-Match...), Host and Via are
    edge's, hop-by-hop ones and those Connection names stay behind (RFC 9110 §7.6.1)."""
    edge, origin = setup()
    conn = edge.connect()
    conn.send(post(body=b"{}", fields=(("Authorization", "Bearer t"), ("Cookie", "a=1"), ("Content-Type", "x/y"),
                                       ("If-Match", '"v1"'), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
                                       ("Keep-Alive", "timeout=5"), ("Via", "1.0 client"), ("User-Agent", "t"))),
              settle=False)
    assert answers(conn)[0].status == 200
    fields = dict((k.lower(), v) for k, v in origin.requests[0]["headers"])
    assert fields["authorization"] == "Bearer t" and fields["cookie"] == "a=1" and fields["content-type"] == "x/y"
    assert fields["if-match"] == '"v1"' and fields["user-agent"] == "t" and fields["content-length"] == "2"
    assert fields["host"] == origin.url.split("//")[1] and fields["via"] == "1.0 client, 1.1 edge"
    assert "x-hop" not in fields and "keep-alive" not in fields and "connection" not in fields


def test_slow_origin_pauses_reading_from_the_client(setup) -> None:
    """HTTP/1.1 back-pressure: an origin that reads nothing makes edge stop reading the client once about
    BODY_HIGH bytes wait (memory stays bounded); when it reads again, the whole body goes through."""
    edge, origin = setup({"max_body_size": 0, "read_timeout": 30.0})
    origin.paused = True
    conn = edge.connect(tls=False)
    size = 48 << 20
    conn.send(post(body=b"", fields=(("Content-Length", str(size)),), length=False), settle=False)
    piece = b"z" * (1 << 20)
    sent = 0
    while sent < size and not conn.transport.reading_paused:
        conn.send(piece, settle=False)
        sent += len(piece)
        for _ in range(20):
            conn.turn()
    assert conn.transport.reading_paused, "edge kept reading while its origin took nothing"
    assert sent < size
    body = conn.protocol.body
    assert body.buffered <= BODY_HIGH + len(piece)
    origin.resume()
    while sent < size:
        conn.send(piece, settle=False)
        sent += len(piece)
        run_until(conn, lambda: not conn.transport.inbox)
    got = answers(conn)
    assert got[0].status == 200
    assert origin.requests[0]["length"] == size
    assert origin.requests[0]["sha256"] == hashlib.sha256(b"z" * size).hexdigest()


def test_client_gone_mid_body_ends_the_origin_exchange(setup) -> None:
    """The client leaves inside its body: the origin connection is dropped (it never takes a cut body for a
    whole one) and nothing is left open."""
    edge, origin = setup()
    conn = edge.connect()
    conn.send(post(body=b"", fields=(("Content-Length", "100000"),), length=False) + b"a" * 1000, settle=False)
    run_until(conn, lambda: bool(origin.conns))
    conn.drop()
    run_until(conn, lambda: not origin.conns)
    assert not origin.requests
    assert not edge.worker.passer.copies


def test_without_origins_a_post_is_405_and_its_body_unread(setup) -> None:
    """Nothing changes without origins: 405 with Allow: GET, HEAD, and the connection closes unread."""
    edge, _ = setup(origins=False)
    conn = edge.connect()
    conn.send(post(body=b"x" * 100), settle=False)
    got = answers(conn)
    assert got[0].status == 405 and got[0].get("allow") == "GET, HEAD" and got[0].get("connection") == "close"
    assert edge.worker.passer is None


# -- HTTP/2 -------------------------------------------------------------------------------------------------


def test_h2_body_streams_and_its_window_follows_the_origin(setup) -> None:
    """DATA frames reach the origin whole. While the origin reads nothing, edge gives the connection's window
    back but not the stream's once the origin stops taking bytes: the client is held at its window (nothing
    waits in edge beyond it); then the origin reads, and the rest goes."""
    edge, origin = setup({"max_body_size": 0, "read_timeout": 30.0})
    origin.paused = True
    conn = edge.connect(tls=False)
    client = H2Client(conn)
    sid = client.next_sid
    size = 32 << 20
    windows = {0: 65_535, sid: 65_535}  # our send windows, as edge's WINDOW_UPDATEs open them

    def granted(frames: list) -> None:
        for f in frames:
            if f.kind == WINDOW_UPDATE and f.sid in windows:
                windows[f.sid] += struct.unpack(">I", f.payload)[0] & 0x7FFFFFFF

    granted(client.send(client.headers(request_fields("/pass/h2", "POST", extra=[("content-length", str(size))]),
                                       end_stream=False)))
    sent = 0
    digest = hashlib.sha256()

    def push(limit: int) -> bool:
        """Send what the windows allow (up to `limit` bytes in all); False when they allow nothing."""
        nonlocal sent
        room = min(windows[0], windows[sid], size - sent, limit - sent)
        if room <= 0:
            return False
        frames = b""
        while room > 0:
            n = min(room, 16384)
            payload = bytes([sent % 251]) * n
            digest.update(payload)
            frames += client.data(sid, payload, end_stream=sent + n == size)
            windows[0] -= n
            windows[sid] -= n
            sent += n
            room -= n
        granted(client.send(frames))
        return True

    stalled = 0
    while sent < size and stalled < 100:
        if push(size):
            stalled = 0
            continue
        stalled += 1
        conn.edge.loop.run_until_complete(asyncio.sleep(0.002))
        conn.turn()
        granted(client.read())
    assert sent < size, "the stream's window kept coming back while the origin read nothing"
    assert windows[sid] <= 0 and windows[0] > 0  # held at its stream window; the connection's came back
    body = conn.protocol.bodies[sid]
    assert body.buffered <= 65_535  # what waits in edge for this stream: at most its window
    origin.resume()
    end = time.monotonic() + WAIT
    while sent < size and time.monotonic() < end:
        if not push(size):
            conn.edge.loop.run_until_complete(asyncio.sleep(0.002))
            conn.turn()
            granted(client.read())
    assert sent == size
    h2_until_ended(client, sid)
    stream = client.reader.stream(sid)
    assert stream.status == 200
    seen = json.loads(bytes(stream.body))
    assert seen["length"] == size and seen["sha256"] == digest.hexdigest()


def test_h2_content_length_over_the_limit_is_413(setup) -> None:
    """A content-length over max_body_size: 413 at once; the origin is never asked."""
    edge, origin = setup({"max_body_size": 1000})
    conn = edge.connect()
    client = H2Client(conn)
    sid = client.next_sid
    client.send(client.headers(request_fields("/pass/big", "PUT", extra=[("content-length", "5000")]),
                               end_stream=False))
    client.send(client.data(sid, b"x" * 5000, end_stream=True))
    stream = client.reader.stream(sid)
    assert stream.status == 413 and not origin.requests


def test_h2_fields_and_body(setup) -> None:
    """An HTTP/2 PATCH with two DATA frames and no content-length: the origin gets it chunked, whole, with the
    client's fields and :authority as Host... of the origin (edge's Host rule), and the client's in none."""
    edge, origin = setup()
    conn = edge.connect()
    client = H2Client(conn)
    sid = client.next_sid
    client.send(client.headers(request_fields("/pass/p?q=1", "PATCH", extra=[("cookie", "c=2"), ("x-a", "b")]),
                               end_stream=False))
    client.send(client.data(sid, b"first ") + client.data(sid, b"second", end_stream=True))
    h2_until_ended(client, sid)
    stream = client.reader.stream(sid)
    assert stream.status == 200 and stream.headers["cache-status"] == "edge; fwd=method"
    seen = origin.requests[0]
    assert seen["method"] == "PATCH" and seen["path"] == "/pass/p?q=1"
    assert seen["sha256"] == hashlib.sha256(b"first second").hexdigest()
    fields = dict((k.lower(), v) for k, v in seen["headers"])
    assert fields["cookie"] == "c=2" and fields["x-a"] == "b" and fields["transfer-encoding"] == "chunked"
