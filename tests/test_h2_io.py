"""HTTP/2 adapter tables, in memory: frames in, frames out, through edge's real Worker and both engines.

A client writes the preface, SETTINGS and frames built here (header blocks from hpack's Encoder) to an
`H1Connection` on the harness's MemoryTransport, which switches to `H2Connection` on the preface as in
production; what comes back is split into frames and header blocks are decoded with hpack's Decoder.
Every test runs on edge's engine (edge/h2engine.py) and on the h2 library's (edge/h2lib.py). Where the
two answer differently the row says so (`h2=` and a reason): those are the places tests/test_h2diff.py
lists, plus a few it does not reach (noted in the reasons).

Covers the server preface and SETTINGS ACK, answers like HTTP/1.1's, HEAD, several streams in one
read, PING, connection errors (GOAWAY with the right code, then nothing more), stream errors (one
RST_STREAM, the connection goes on), frames on closed streams, flow control, trailers, request bodies,
the abuse limits of [http2], h2c Upgrade, and files released when a stream or connection goes away.
"""

from __future__ import annotations

import base64
import gzip
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapter_harness import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER_RULE,
    HEADERS,
    JS,
    NO_ERROR,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    RULE_VALUE,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Edge,
    H1Response,
    H2Client,
    H2Stream,
    frame,
    goaway,
    make_config,
    make_root,
    parse_h1,
    ping,
    request_fields,
    rst_stream,
    settings_frame,
    settings_of,
    window_update,
)

MIB = 1 << 20
ENGINES = ["edge", "h2"]
WARM = ("/1m.bin", "/100k.bin", "/1k.bin", "/hello.txt")


# -- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harness's document root plus a 4 MiB file for the release-the-file tests."""
    www = make_root(tmp_path_factory.mktemp("h2io") / "www")
    (www / "big.bin").write_bytes(os.urandom(4 * MIB))
    return www


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The HTTP/2 engine under test: edge's own, or the h2 library's."""
    return request.param


@pytest.fixture
def make_edge(root: Path, engine: str) -> Iterator[Callable[..., Edge]]:
    """A factory of in-memory workers on `engine` (http2: [http2] keys; other TOML-shaped keys as they are)."""
    made: list[Edge] = []

    def make(http2: dict | None = None, **settings: object) -> Edge:
        config = {**HEADER_RULE, **settings}
        if http2:
            config["http2"] = http2
        edge = Edge(make_config(root, config, engine=engine))
        made.append(edge)
        return edge

    yield make
    for edge in made:
        edge.close()


@pytest.fixture
def edge(make_edge: Callable[..., Edge]) -> Edge:
    """A worker with the default limits (plus the /assets/* header rule)."""
    return make_edge()


def client(edge: Edge, **kw: object) -> H2Client:
    """A prior-knowledge client whose preface and SETTINGS are in, and the server's answer read."""
    return H2Client(edge.connect(), **kw)


def h2_get(edge: Edge, target: str, fields: dict[str, str] | None = None, method: str = "GET") -> H2Stream:
    """One request on a fresh connection; the finished stream (h2 accepted every frame, no window violated)."""
    cl = client(edge, check=True)
    stream = cl.get(target, method, extra=(fields or {}).items())
    assert stream.ended or stream.reset is not None, f"stream {stream.sid} did not finish"
    assert not cl.violations, cl.violations
    cl.assert_conformant()
    return stream


def h1_get(edge: Edge, target: str, fields: dict[str, str] | None = None, method: str = "GET") -> H1Response:
    """The same request over HTTP/1.1 on a fresh connection."""
    conn = edge.connect()
    lines = [f"{method} {target} HTTP/1.1", "Host: x"] + [f"{k}: {v}" for k, v in (fields or {}).items()]
    conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    (resp,), rest = parse_h1(conn.received, [method])
    assert rest == b""
    return resp


def fds() -> int:
    """How many file descriptors this process (the worker's too) has open."""
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> list[str]:
    """What this process's fds point at."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return out


def warm(edge: Edge) -> int:
    """The test files in the open-file cache; returns the fd count then (the baseline)."""
    for target in WARM:
        assert h2_get(edge, target, method="HEAD").status == 200
    return fds()


def assert_recovered(edge: Edge, baseline: int) -> None:
    """The worker still serves HTTP/2 and HTTP/1.1, and the fd count is back to `baseline`."""
    stream = h2_get(edge, "/1k.bin")
    assert stream.status == 200 and len(stream.body) == 1024
    assert h1_get(edge, "/hello.txt").status == 200
    for conn in edge.conns:
        conn.drop()
    assert fds() == baseline, fd_targets()


def ended_with(cl: H2Client, code: int) -> None:
    """GOAWAY(code) is the last frame, the server half-closed, and it reads nothing more."""
    goaways = cl.reader.goaways()
    assert goaways, f"no GOAWAY: {[(f.kind, f.sid) for f in cl.frames]}"
    assert goaways[-1][1] == code, f"GOAWAY code {goaways[-1][1]}, expected {code}"
    assert cl.frames[-1].kind == GOAWAY, "frames after the GOAWAY"
    assert cl.conn.transport.eof_written or cl.conn.closed, "the connection did not end"
    assert cl.send(ping(b"after-go")) == [], "the server answered after its GOAWAY"


# -- preface, answers, streams --------------------------------------------------------------------------------


def test_connection_preface_and_settings_exchange(edge: Edge, engine: str) -> None:
    """The server's SETTINGS come first (its limits in them), then the ACK of ours; a request then works."""
    cl = client(edge, check=True)
    first, second = cl.frames[:2]
    assert (first.kind, first.flags, first.sid) == (SETTINGS, 0, 0)
    settings = settings_of(first)
    assert settings[S_MAX_CONCURRENT_STREAMS] == 128 and settings[S_MAX_HEADER_LIST_SIZE] == 65536
    if engine == "edge":  # edge's engine says only what differs from the defaults, byte for byte
        assert cl.conn.received[:21] == bytes.fromhex("00000c040000000000000300000080000600010000")
    assert (second.kind, second.flags, second.payload) == (SETTINGS, 1, b"")
    assert len(cl.frames) == 2
    assert cl.get("/hello.txt").status == 200
    cl.assert_conformant()


def test_get_head_404_frames(edge: Edge) -> None:
    """GET: HEADERS then one DATA with END_STREAM; HEAD: HEADERS with END_STREAM only; 404 with its body."""
    cl = client(edge, check=True)
    before = len(cl.frames)
    stream = cl.get("/hello.txt")
    assert [(f.kind, f.flags, f.sid) for f in cl.frames[before:]] == [(HEADERS, END_HEADERS, 1), (DATA, END_STREAM, 1)]
    assert stream.status == 200 and bytes(stream.body) == b"hello world\n"
    assert [k for k in stream.headers] == ["server", "content-type", "content-length", "last-modified", "etag",
                                           "accept-ranges", "date"]
    assert stream.headers["content-length"] == "12" and stream.headers["content-type"] == "text/plain; charset=utf-8"
    before = len(cl.frames)
    head = cl.get("/1m.bin", "HEAD")
    assert [(f.kind, f.flags) for f in cl.frames[before:]] == [(HEADERS, END_HEADERS | END_STREAM)]
    assert head.status == 200 and head.headers["content-length"] == str(MIB) and not head.body
    missing = cl.get("/missing")
    assert missing.status == 404 and bytes(missing.body) == b"404 Not Found\n" and missing.ended
    assert not cl.reader.goaways() and not cl.reader.resets()
    cl.assert_conformant()


def test_several_streams_in_one_read(edge: Edge, root: Path) -> None:
    """Four requests in one segment: each answered on its stream, HEADERS before its DATA."""
    cl = client(edge, check=True)
    paths = [("/hello.txt", "GET"), ("/missing", "GET"), ("/1k.bin", "HEAD"), ("/100k.bin", "GET")]
    cl.send(b"".join(cl.headers(request_fields(p, m)) for p, m in paths))
    streams = [cl.reader.stream(sid) for sid in (1, 3, 5, 7)]
    assert [(s.status, s.ended) for s in streams] == [(200, True), (404, True), (200, True), (200, True)]
    assert bytes(streams[0].body) == b"hello world\n" and not streams[2].body
    assert bytes(streams[3].body) == (root / "100k.bin").read_bytes()
    for sid in (1, 3, 7):
        kinds = [f.kind for f in cl.frames if f.sid == sid]
        assert kinds[0] == HEADERS and set(kinds[1:]) == {DATA}, (sid, kinds)
    assert not cl.violations
    cl.assert_conformant()


def test_ping_is_answered_with_its_payload(edge: Edge) -> None:
    """PING: one PING ACK with the same 8 bytes; a PING ACK from the client is not answered."""
    cl = client(edge)
    new = cl.send(ping(b"abcdefgh"))
    assert [(f.kind, f.flags, f.sid, f.payload) for f in new] == [(PING, 1, 0, b"abcdefgh")]
    assert cl.send(ping(b"12345678", ack=True)) == []


REPRESENTATION = ("content-type", "content-length", "content-encoding", "content-range", "vary", "etag",
                  "last-modified", "accept-ranges", "cache-control", "allow", "location", "server")

SAME_ANSWERS = {  # (method, target, fields, status): the same as over HTTP/1.1
    "whole file": ("GET", "/1m.bin", {}, 200),
    "head": ("HEAD", "/1m.bin", {}, 200),
    "small inline file": ("GET", "/hello.txt", {}, 200),
    "index": ("GET", "/", {}, 200),
    "directory redirect": ("GET", "/sub?x=1", {}, 301),
    "not found": ("GET", "/missing.txt", {}, 404),
    "dotfile": ("GET", "/.env", {}, 404),
    "traversal": ("GET", "/%2e%2e/%2e%2e/etc/passwd", {}, 400),
    "post": ("POST", "/hello.txt", {}, 405),
    "delete": ("DELETE", "/hello.txt", {}, 405),
    "single range": ("GET", "/data.bin", {"range": "bytes=100-199"}, 206),
    "suffix range": ("GET", "/data.bin", {"range": "bytes=-500"}, 206),
    "multipart ranges": ("GET", "/data.bin", {"range": "bytes=0-9,500-599,99990-"}, 206),
    "unsatisfiable range": ("GET", "/data.bin", {"range": "bytes=200000-"}, 416),
    "if-none-match star": ("GET", "/data.bin", {"if-none-match": "*"}, 304),
    "if-modified-since": ("GET", "/data.bin", {"if-modified-since": "Sat, 01 Jan 2022 00:00:00 GMT"}, 304),
    "if-unmodified-since": ("GET", "/data.bin", {"if-unmodified-since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 412),
    "if-match mismatch": ("GET", "/data.bin", {"if-match": '"nope"'}, 412),
    "brotli": ("GET", "/a.js", {"accept-encoding": "gzip, br"}, 200),
    "gzip": ("GET", "/a.js", {"accept-encoding": "gzip;q=1, br;q=0"}, 200),
    "identity": ("GET", "/a.js", {"accept-encoding": "identity"}, 200),
    "no accept-encoding": ("GET", "/a.js", {}, 200),
    "header rule": ("GET", "/assets/x.css", {}, 200),
    "header rule on a range": ("GET", "/assets/x.css", {"range": "bytes=0-3"}, 206),
}


@pytest.mark.parametrize("case", SAME_ANSWERS)
def test_same_answer_as_http1(edge: Edge, case: str) -> None:
    """The same request over both protocols: the same status, representation fields and body."""
    method, target, fields, status = SAME_ANSWERS[case]
    h1 = h1_get(edge, target, fields, method)
    stream = h2_get(edge, target, fields, method)
    assert h1.status == status and stream.status == status, (h1.status, stream.status)
    for name in REPRESENTATION:
        assert stream.headers.get(name) == h1.get(name), (name, stream.headers.get(name), h1.get(name))
    assert bytes(stream.body) == h1.body
    assert "date" in stream.headers
    for name in ("connection", "keep-alive", "transfer-encoding", "upgrade"):
        assert name not in stream.headers, f"connection-specific field {name} in an HTTP/2 response"
    if method == "HEAD" or status == 304:
        assert stream.data_frames == 0 and not stream.body
    elif "content-length" in stream.headers:
        assert len(stream.body) == int(stream.headers["content-length"])


def test_get_is_the_file_and_head_has_its_length(edge: Edge, root: Path) -> None:
    """GET /1m.bin is the file; HEAD has its length and no body."""
    data = (root / "1m.bin").read_bytes()
    stream = h2_get(edge, "/1m.bin")
    assert stream.status == 200 and bytes(stream.body) == data and stream.headers["content-length"] == str(len(data))
    head = h2_get(edge, "/1m.bin", method="HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(len(data)) and not head.body


def test_precompressed_variants_and_header_rule(edge: Edge, root: Path) -> None:
    """Variants by accept-encoding with Vary; the header rule on its path only."""
    br = h2_get(edge, "/a.js", {"accept-encoding": "gzip, br"})
    assert br.headers["content-encoding"] == "br" and bytes(br.body) == (root / "a.js.br").read_bytes()
    gz = h2_get(edge, "/a.js", {"accept-encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip" and gzip.decompress(bytes(gz.body)) == JS
    plain = h2_get(edge, "/a.js", {"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and bytes(plain.body) == JS
    for s in (br, gz, plain):
        assert "accept-encoding" in s.headers["vary"].lower()
    assert h2_get(edge, "/assets/x.css").headers["cache-control"] == RULE_VALUE
    assert "cache-control" not in h2_get(edge, "/hello.txt").headers


def test_304_by_etag_and_ranges(edge: Edge, root: Path) -> None:
    """If-None-Match, single and multipart ranges, 416, a stale If-Range."""
    data = (root / "data.bin").read_bytes()
    etag = h2_get(edge, "/data.bin").headers["etag"]
    assert h2_get(edge, "/data.bin", {"if-none-match": etag}).status == 304
    assert h2_get(edge, "/data.bin", {"if-none-match": '"other"'}).status == 200
    one = h2_get(edge, "/data.bin", {"range": "bytes=100-199"})
    assert one.status == 206 and one.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert bytes(one.body) == data[100:200]
    multi = h2_get(edge, "/data.bin", {"range": "bytes=0-9,500-599"})
    assert multi.status == 206 and multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert data[:10] in multi.body and data[500:600] in multi.body
    assert int(multi.headers["content-length"]) == len(multi.body)
    bad = h2_get(edge, "/data.bin", {"range": "bytes=200000-"})
    assert bad.status == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    stale = h2_get(edge, "/data.bin", {"range": "bytes=0-9", "if-range": '"not-the-etag"'})
    assert stale.status == 200 and bytes(stale.body) == data


# -- connection errors: GOAWAY(code), then nothing ------------------------------------------------------------


def _block(cl: H2Client, path: str = "/hello.txt", method: str = "GET") -> bytes:
    return cl.block(request_fields(path, method))


@dataclass(frozen=True)
class ConnError:
    """Bytes (made by `make` for a started client) that end the connection with GOAWAY(code)."""

    make: Callable[[H2Client], bytes]
    code: int
    h2: int | None = None  # the h2 library's code where it differs (see why)
    why: str = ""
    http2: dict = field(default_factory=dict)  # [http2] limits for the row


def _continuation_flood(piece: int) -> Callable[[H2Client], bytes]:
    def make(cl: H2Client) -> bytes:
        frames = [frame(HEADERS, END_STREAM, 1, _block(cl))]  # no END_HEADERS: CONTINUATION follows
        return b"".join(frames + [frame(CONTINUATION, 0, 1, b"\x00" * piece) for _ in range(300)])
    return make


def _bomb(cl: H2Client) -> bytes:
    # One 4000-byte field enters the dynamic table, then 100 one-byte references to it.
    block = cl.block(request_fields("/hello.txt") + [(b"x-bomb", b"a" * 4000)] * 100)
    assert len(block) < 4400
    return frame(HEADERS, END_HEADERS | END_STREAM, 1, block)


def _interloper(make_interloper: Callable[[int], bytes]) -> Callable[[H2Client], bytes]:
    def make(cl: H2Client) -> bytes:
        return frame(HEADERS, END_STREAM, 1, _block(cl)[:2]) + make_interloper(1)
    return make


HPACK_CODE = "h2 says PROTOCOL_ERROR for an undecodable header block; RFC 9113 §4.3 says COMPRESSION_ERROR " \
             "(h2's _decode_headers maps every HPACK error to ProtocolError; not in test_h2diff's list)"

CONN_ERRORS = {
    "PING of 7 bytes": ConnError(lambda cl: frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    "PING on a stream": ConnError(lambda cl: frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),
    "HEADERS on stream 0": ConnError(lambda cl: frame(HEADERS, 5, 0, _block(cl)), PROTOCOL_ERROR),
    "HEADERS on an even stream": ConnError(lambda cl: frame(HEADERS, 5, 2, _block(cl)), PROTOCOL_ERROR),
    "HEADERS on a lower stream id": ConnError(
        lambda cl: frame(HEADERS, 5, 3, _block(cl)) + frame(HEADERS, 5, 1, _block(cl)), PROTOCOL_ERROR),
    "undecodable HPACK (index 0)": ConnError(lambda cl: frame(HEADERS, 5, 1, b"\x80"), COMPRESSION_ERROR,
                                             h2=PROTOCOL_ERROR, why=HPACK_CODE),
    "undecodable HPACK (truncated integer)": ConnError(lambda cl: frame(HEADERS, 5, 1, b"\xff\xff\xff"),
                                                       COMPRESSION_ERROR, h2=PROTOCOL_ERROR, why=HPACK_CODE),
    "SETTINGS ACK with a payload": ConnError(lambda cl: frame(SETTINGS, 1, 0, b"\0" * 6), FRAME_SIZE_ERROR,
                                             h2=PROTOCOL_ERROR,
                                             why="test_h2diff CODES (6, 1): §6.5 says FRAME_SIZE_ERROR"),
    "SETTINGS of 7 bytes": ConnError(lambda cl: frame(SETTINGS, 0, 0, b"\0" * 7), FRAME_SIZE_ERROR),
    "SETTINGS on a stream": ConnError(lambda cl: frame(SETTINGS, 0, 1), PROTOCOL_ERROR),
    "ENABLE_PUSH 2": ConnError(lambda cl: settings_frame({2: 2}), PROTOCOL_ERROR),
    "INITIAL_WINDOW_SIZE over 2^31-1": ConnError(lambda cl: settings_frame({S_INITIAL_WINDOW_SIZE: 2**31}),
                                                 FLOW_CONTROL_ERROR),
    "MAX_FRAME_SIZE below 16384": ConnError(lambda cl: settings_frame({S_MAX_FRAME_SIZE: 100}), PROTOCOL_ERROR),
    "WINDOW_UPDATE of 0 on the connection": ConnError(lambda cl: window_update(0, 0), PROTOCOL_ERROR),
    "WINDOW_UPDATE of 3 bytes": ConnError(lambda cl: frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"), FRAME_SIZE_ERROR),
    "connection window over 2^31-1": ConnError(lambda cl: window_update(0, 2**31 - 1), FLOW_CONTROL_ERROR),
    "DATA beyond the connection window": ConnError(
        lambda cl: frame(HEADERS, 4, 1, _block(cl, method="POST"))
        + b"".join(frame(DATA, 0, 1, b"x" * 16384) for _ in range(5)), FLOW_CONTROL_ERROR),
    "PUSH_PROMISE from a client": ConnError(lambda cl: frame(PUSH_PROMISE, 4, 1, b"\0\0\0\2\x82"), PROTOCOL_ERROR),
    "DATA on stream 0": ConnError(lambda cl: frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    "DATA on an idle stream": ConnError(lambda cl: frame(DATA, 0, 7, b"x"), PROTOCOL_ERROR),
    "RST_STREAM on stream 0": ConnError(lambda cl: rst_stream(0, CANCEL), PROTOCOL_ERROR),
    "RST_STREAM on an idle stream": ConnError(lambda cl: rst_stream(99, CANCEL), PROTOCOL_ERROR),
    "GOAWAY on a stream": ConnError(lambda cl: frame(GOAWAY, 0, 1, b"\0" * 8), PROTOCOL_ERROR),
    "a frame over 16384 bytes": ConnError(lambda cl: frame(DATA, 0, 1, b"x" * 16385), FRAME_SIZE_ERROR),
    "CONTINUATION without HEADERS": ConnError(lambda cl: frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
    "inside a header block: PRIORITY": ConnError(
        _interloper(lambda sid: frame(PRIORITY, 0, sid, struct.pack(">IB", 0, 15))), PROTOCOL_ERROR),
    "inside a header block: RST_STREAM": ConnError(_interloper(lambda sid: rst_stream(sid, 0)), PROTOCOL_ERROR),
    "inside a header block: PING": ConnError(_interloper(lambda sid: ping()), PROTOCOL_ERROR),
    "inside a header block: GOAWAY": ConnError(_interloper(lambda sid: goaway(0)), PROTOCOL_ERROR),
    "inside a header block: HEADERS": ConnError(
        _interloper(lambda sid: frame(HEADERS, END_HEADERS, sid + 2, b"\x82")), PROTOCOL_ERROR),
    "inside a header block: another stream's CONTINUATION": ConnError(
        _interloper(lambda sid: frame(CONTINUATION, END_HEADERS, sid + 2, b"\x82")), PROTOCOL_ERROR),
    "CONTINUATION flood: bytes over max_header_block_size": ConnError(
        _continuation_flood(1000), ENHANCE_YOUR_CALM, http2={"max_header_block_size": 4096}),
    "CONTINUATION flood: frame count": ConnError(
        _continuation_flood(1), PROTOCOL_ERROR, http2={"max_header_block_size": 4096}),
    "HPACK bomb over max_header_list_size": ConnError(_bomb, ENHANCE_YOUR_CALM, http2={"max_header_list_size": 8192}),
}


def _expected(row_code: int, h2_code: int | None, engine: str) -> int:
    return h2_code if engine == "h2" and h2_code is not None else row_code


@pytest.mark.parametrize("name", CONN_ERRORS)
def test_connection_error_is_goaway_then_nothing(make_edge: Callable[..., Edge], engine: str, name: str) -> None:
    """Each bad frame (sequence) ends the connection with GOAWAY and the row's code; the worker recovers."""
    row = CONN_ERRORS[name]
    edge = make_edge(row.http2)
    baseline = warm(edge)
    cl = client(edge)
    cl.send(row.make(cl))
    ended_with(cl, _expected(row.code, row.h2, engine))
    assert not any(s.status for s in cl.reader.streams.values()), "a request in the failed read was answered"
    assert_recovered(edge, baseline)


def test_the_preface_must_be_followed_by_settings(edge: Edge, engine: str) -> None:
    """A PING where the client's SETTINGS must come (RFC 9113 §3.4): edge says GOAWAY(PROTOCOL_ERROR); the h2
    library answers the PING (a difference test_h2diff never meets: its sequences all start with SETTINGS)."""
    cl = H2Client(edge.connect(), start=False)
    cl.send(PREFACE + ping())
    if engine == "edge":
        ended_with(cl, PROTOCOL_ERROR)
    else:
        assert [(f.kind, f.flags) for f in cl.frames] == [(SETTINGS, 0), (PING, 1)]


def test_goaway_names_the_stream_in_the_failed_read(make_edge: Callable[..., Edge], engine: str) -> None:
    """The last-stream-id of a connection error's GOAWAY: edge's engine names the stream it was reading."""
    cl = client(make_edge())
    cl.send(frame(HEADERS, 5, 101, b"\x80"))
    # edge: 101, the stream being opened; h2: 0 (it opened none): both allowed by RFC 9113 §6.8.
    assert cl.reader.goaways()[-1][0] == (101 if engine == "edge" else 0)


# -- stream errors: one RST_STREAM, the connection goes on ------------------------------------------------------

BAD_HEADS = {
    "unknown pseudo-header": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                              (b":path", b"/hello.txt"), (b":foo", b"bar")],
    "pseudo-header after a regular one": [(b":method", b"GET"), (b":scheme", b"http"), (b"accept", b"*/*"),
                                          (b":authority", b"x"), (b":path", b"/hello.txt")],
    "no :method": [(b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/hello.txt")],
    "duplicate :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                        (b":path", b"/hello.txt"), (b":path", b"/index.html")],
    ":status in a request": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                             (b":path", b"/hello.txt"), (b":status", b"200")],
    "upper-case name": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                        (b":path", b"/hello.txt"), (b"Accept", b"*/*")],
    "connection-specific field": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                                  (b":path", b"/hello.txt"), (b"connection", b"keep-alive")],
    "empty :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"")],
    "newline in a value": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                           (b":path", b"/hello.txt"), (b"x-bad", b"a\nb")],
}


@dataclass(frozen=True)
class StreamError:
    """Bytes (for a started client, auto_window off) that reset stream `sid` with `code`, and only it."""

    make: Callable[[H2Client], bytes]
    sid: int
    code: int
    h2: tuple[str, int] | None = None  # h2's answer where it differs: ("goaway", code) or ("answered", status)
    why: str = ""


_OPEN_1M = lambda cl: frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(cl, "/1m.bin"))  # noqa: E731 - stays open


def _POST(cl: H2Client, extra: tuple = ()) -> bytes:  # noqa: N802
    """HEADERS of a POST on stream 1 that announces a body (no END_STREAM)."""
    return frame(HEADERS, END_HEADERS, 1, cl.block(request_fields("/hello.txt", "POST") + list(extra)))


STREAM_ERROR_IN_H2_IS_A_CONNECTION_ERROR = "test_h2diff difference 2: a stream error that h2 makes a connection error"

STREAM_ERRORS = {
    **{f"malformed head: {name}": StreamError(
        lambda cl, fields=fields: frame(HEADERS, END_HEADERS | END_STREAM, 1, cl.block(fields)), 1, PROTOCOL_ERROR)
       for name, fields in BAD_HEADS.items()},
    "HEADERS on a half-closed (remote) stream": StreamError(
        lambda cl: _OPEN_1M(cl) + frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(cl)), 1, STREAM_CLOSED),
    "DATA on a half-closed (remote) stream": StreamError(lambda cl: _OPEN_1M(cl) + frame(DATA, 0, 1, b"x"), 1,
                                                         STREAM_CLOSED),
    "DATA after the client's RST_STREAM": StreamError(
        lambda cl: frame(HEADERS, END_HEADERS, 1, _block(cl, "/1m.bin", "POST")) + rst_stream(1, CANCEL)
        + frame(DATA, 0, 1, b"x"), 1, STREAM_CLOSED),
    "PRIORITY depending on itself": StreamError(lambda cl: frame(PRIORITY, 0, 5, struct.pack(">IB", 5, 16)), 5,
                                                PROTOCOL_ERROR, h2=("goaway", PROTOCOL_ERROR),
                                                why=STREAM_ERROR_IN_H2_IS_A_CONNECTION_ERROR + " (§5.3.1)"),
    "PRIORITY of 4 bytes": StreamError(lambda cl: _OPEN_1M(cl) + frame(PRIORITY, 0, 1, b"\0\0\0\0"), 1,
                                       FRAME_SIZE_ERROR, h2=("goaway", FRAME_SIZE_ERROR),
                                       why=STREAM_ERROR_IN_H2_IS_A_CONNECTION_ERROR + " (§6.3)"),
    "WINDOW_UPDATE of 0 on a stream": StreamError(lambda cl: _POST(cl) + window_update(1, 0), 1, PROTOCOL_ERROR,
                                                  h2=("goaway", PROTOCOL_ERROR),
                                                  why=STREAM_ERROR_IN_H2_IS_A_CONNECTION_ERROR + " (§6.9)"),
    "more DATA than content-length": StreamError(
        lambda cl: _POST(cl, [(b"content-length", b"2")]) + frame(DATA, END_STREAM, 1, b"xyz"), 1, PROTOCOL_ERROR,
        h2=("goaway", PROTOCOL_ERROR), why=STREAM_ERROR_IN_H2_IS_A_CONNECTION_ERROR + " (§8.1.1; not in its list)"),
    "content-length with no body": StreamError(
        lambda cl: frame(HEADERS, END_HEADERS | END_STREAM, 1,
                         cl.block(request_fields("/hello.txt") + [(b"content-length", b"5")])), 1, PROTOCOL_ERROR,
        h2=("answered", 200), why="h2 (inbound validation off, as edge configures it) answers a request whose "
                                  "content-length its empty body contradicts; §8.1.1 makes it malformed"),
}


@pytest.mark.parametrize("name", STREAM_ERRORS)
def test_stream_error_is_one_rst_stream(make_edge: Callable[..., Edge], engine: str, name: str) -> None:
    """The stream is reset once with the row's code and never answered; the connection goes on; the worker's
    fds are back to their baseline after."""
    row = STREAM_ERRORS[name]
    edge = make_edge()
    baseline = warm(edge)
    cl = client(edge, auto_window=False)
    cl.send(row.make(cl))
    if engine == "h2" and row.h2 is not None:
        kind, value = row.h2
        if kind == "goaway":
            ended_with(cl, value)
        else:
            assert cl.reader.stream(row.sid).status == value
        assert_recovered(edge, baseline)
        return
    assert cl.reader.resets() == [(row.sid, row.code)], cl.reader.resets()
    assert not cl.reader.goaways()
    stream = cl.reader.stream(row.sid)
    assert stream.status is None or row.sid == 1 and name.startswith(("HEADERS on", "DATA on")), stream.status
    cl.next_sid = max(cl.next_sid, row.sid + 2)
    follow = cl.get("/hello.txt")
    assert follow.status == 200 and bytes(follow.body) == b"hello world\n", "the connection goes on"
    assert_recovered(edge, baseline)


TRAILERS = {"pseudo-field": (b":path", b"/other"), "uppercase": (b"X-Upper", b"v"),
            "connection": (b"connection", b"close"), "te-not-trailers": (b"te", b"gzip"),
            "newline": (b"x-bad", b"a\nb")}


@pytest.mark.parametrize("name", TRAILERS)
def test_malformed_trailers_reset_the_stream(edge: Edge, name: str) -> None:
    """RFC 9113 §8.1: trailers are checked like other fields; a malformed one is a stream error."""
    cl = client(edge, settings={S_INITIAL_WINDOW_SIZE: 1024}, auto_window=False, check=True)
    # A body that cannot finish (the window stays shut): the stream is still open when the trailers come.
    cl.send(cl.headers(request_fields("/1m.bin"), end_stream=False) + cl.data(1, b"x" * 10))
    assert cl.reader.stream(1).status == 200
    cl.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, cl.block([TRAILERS[name]])))  # not shown to h2
    assert cl.reader.resets() == [(1, PROTOCOL_ERROR)]
    assert cl.get("/hello.txt").status == 200, "the connection goes on"
    assert not cl.reader.goaways()
    cl.assert_conformant()


def test_good_trailers_are_taken(edge: Edge, root: Path) -> None:
    """Well-formed trailers end the request body quietly: the response completes, nothing is reset."""
    cl = client(edge)
    cl.send(frame(HEADERS, END_HEADERS, 1, _block(cl, "/100k.bin")) + frame(DATA, 0, 1, b"x" * 10)
            + frame(HEADERS, END_HEADERS | END_STREAM, 1, cl.block([(b"x-checksum", b"abc")])))
    stream = cl.reader.stream(1)
    assert stream.status == 200 and bytes(stream.body) == (root / "100k.bin").read_bytes()
    assert not cl.reader.goaways() and all(code == NO_ERROR for _, code in cl.reader.resets())


def test_a_request_body_gets_the_answer_then_rst_stream_no_error(edge: Edge) -> None:
    """A POST with a body: the complete 405, then (by the next sweep at the latest) one RST_STREAM(NO_ERROR);
    the connection goes on."""
    cl = client(edge, check=True)
    cl.send(cl.headers(request_fields("/hello.txt", "POST"), end_stream=False) + cl.data(1, b"x" * 1000))
    stream = cl.reader.stream(1)
    assert stream.status == 405 and stream.headers["allow"] == "GET, HEAD" and stream.ended
    edge.sweep(5.0)
    cl.read()
    assert cl.reader.resets() == [(1, NO_ERROR)]
    kinds = [f.kind for f in cl.frames if f.sid == 1]
    assert kinds.index(RST_STREAM) > max(i for i, k in enumerate(kinds) if k == DATA), "reset before the answer ended"
    assert cl.get("/hello.txt").status == 200
    cl.assert_conformant()


# -- frames on closed streams -------------------------------------------------------------------------------------


def test_frames_on_a_stream_closed_both_ways_are_ignored(edge: Edge) -> None:
    """After END_STREAM both ways: WINDOW_UPDATE, RST_STREAM, PRIORITY on the stream get no answer."""
    cl = client(edge)
    assert cl.get("/hello.txt").ended
    assert cl.send(window_update(1, 5) + rst_stream(1, CANCEL) + frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 16))) == []
    assert cl.get("/hello.txt").status == 200


def test_data_after_our_reset(edge: Edge, engine: str) -> None:
    """DATA on a stream we reset: edge ignores it (§5.1 closed), giving its window back; h2 resets it again."""
    cl = client(edge)
    cl.send(_POST(cl))
    edge.sweep(5.0)
    cl.read()
    assert cl.reader.resets() == [(1, NO_ERROR)]
    new = cl.send(frame(DATA, 0, 1, b"abc"))
    if engine == "edge":
        assert [(f.kind, f.sid, f.payload) for f in new] == [(WINDOW_UPDATE, 0, struct.pack(">I", 3))]
    else:  # test_h2diff difference 1
        assert [(f.kind, f.sid, f.payload) for f in new] == [(RST_STREAM, 1, struct.pack(">I", STREAM_CLOSED))]
    assert not cl.reader.goaways()


def test_a_stream_reset_in_the_same_read_as_the_next_request(edge: Edge) -> None:
    """HEADERS, its RST_STREAM and the next HEADERS in one read: the next is answered, nothing breaks."""
    cl = client(edge)
    assert cl.get("/hello.txt").status == 200  # cached now
    cl.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, _block(cl)) + rst_stream(3, CANCEL)
            + frame(HEADERS, END_HEADERS | END_STREAM, 5, _block(cl)))
    assert cl.reader.stream(5).status == 200 and bytes(cl.reader.stream(5).body) == b"hello world\n"
    assert not cl.reader.goaways() and not cl.conn.transport.eof_written


# -- authority ------------------------------------------------------------------------------------------------------

NO_AUTHORITY = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/hello.txt")]


def test_host_instead_of_authority_is_enough(edge: Edge) -> None:
    """A Host field stands in for :authority."""
    cl = client(edge)
    cl.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, cl.block(NO_AUTHORITY + [(b"host", b"edge.test")])))
    assert cl.reader.stream(1).status == 200 and bytes(cl.reader.stream(1).body) == b"hello world\n"


def test_missing_authority_and_host_is_400_and_the_connection_goes_on(edge: Edge, root: Path) -> None:
    """Neither :authority nor Host: 400 on that stream; another stream's download is not cut."""
    cl = client(edge)
    cl.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(cl, "/1m.bin"))
            + frame(HEADERS, END_HEADERS | END_STREAM, 3, cl.block(NO_AUTHORITY)))
    assert cl.reader.stream(3).status == 400 and cl.reader.stream(3).ended
    assert bytes(cl.reader.stream(1).body) == (root / "1m.bin").read_bytes(), "another stream was cut"
    assert not cl.reader.goaways() and not cl.violations


# -- flow control ----------------------------------------------------------------------------------------------------


def test_a_window_of_10_makes_data_wait_for_window_update(edge: Edge) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 10: 10 bytes of DATA, then nothing until a WINDOW_UPDATE opens the stream."""
    cl = client(edge, settings={S_INITIAL_WINDOW_SIZE: 10}, auto_window=False)
    stream = cl.get("/hello.txt")
    data = [(len(f.payload), f.flags) for f in cl.frames if f.kind == DATA]
    assert stream.status == 200 and data == [(10, 0)] and bytes(stream.body) == b"hello worl"
    assert cl.send(ping()) == [next(f for f in cl.frames if f.kind == PING)], "nothing but the PING ACK"
    new = cl.grant(1, 1)
    assert [(f.kind, len(f.payload), f.flags) for f in new] == [(DATA, 1, 0)]
    new = cl.grant(100, 1)
    assert [(f.kind, len(f.payload), f.flags) for f in new] == [(DATA, 1, END_STREAM)]
    assert bytes(stream.body) == b"hello world\n" and stream.ended and not cl.violations


def test_a_tiny_window_is_respected_and_the_file_arrives_exactly(edge: Edge, root: Path) -> None:
    """A 1 KiB initial window opened by odd amounts: never a byte beyond it, the file arrives whole."""
    data = (root / "1m.bin").read_bytes()
    cl = client(edge, settings={S_INITIAL_WINDOW_SIZE: 1024}, auto_window=False, check=True)
    stream = cl.get("/1m.bin")
    assert len(stream.body) == 1024 and stream.data_frames >= 1, "the first flight is exactly the window"
    assert cl.send(b"") == [] and len(stream.body) == 1024, "nothing more while the window is shut"
    grants = [1024, 7000, 16384, 50_000, 3, 65_535]
    rounds = 0
    while not stream.ended:
        assert cl.windows[1] == 0 or cl.conn_window == 0, "stalled with window left"
        step = grants[rounds % len(grants)]
        if cl.windows[1] == 0:
            cl.grant(step, 1)
        if cl.conn_window < 65_535:
            cl.grant(65_535 - cl.conn_window)
        rounds += 1
    assert stream.status == 200 and bytes(stream.body) == data
    assert not cl.violations, cl.violations
    assert rounds > 20
    cl.assert_conformant()


def test_the_connection_window_bounds_all_streams_together(edge: Edge, root: Path) -> None:
    """Two big stream windows, one 64 KiB connection window: 65535 bytes in all, then the rest once it opens."""
    cl = client(edge, auto_window=False, settings={S_INITIAL_WINDOW_SIZE: MIB}, check=True)
    a, b = cl.get("/1m.bin"), cl.get("/100k.bin")
    assert len(a.body) + len(b.body) == 65_535 and cl.conn_window == 0 and not cl.violations
    cl.grant(4 * MIB)
    assert bytes(a.body) == (root / "1m.bin").read_bytes() and bytes(b.body) == (root / "100k.bin").read_bytes()
    assert a.ended and b.ended and not cl.violations
    cl.assert_conformant()


def test_max_frame_size_is_respected(edge: Edge, root: Path) -> None:
    """DATA frames up to the peer's SETTINGS_MAX_FRAME_SIZE, bigger than 16 KiB once allowed; 16 KiB by default."""
    cl = client(edge, settings={S_MAX_FRAME_SIZE: 65_536, S_INITIAL_WINDOW_SIZE: 4 * MIB}, check=True)
    cl.grant(8 * MIB)
    assert bytes(cl.get("/1m.bin").body) == (root / "1m.bin").read_bytes()
    sizes = [len(f.payload) for f in cl.frames if f.kind == DATA]
    assert max(sizes) <= 65_536 and max(sizes) > 16_384 and not cl.violations
    cl.assert_conformant()
    default = client(edge, check=True)
    assert bytes(default.get("/1m.bin").body) == (root / "1m.bin").read_bytes()
    assert max(len(f.payload) for f in default.frames if f.kind == DATA) <= 16_384
    default.assert_conformant()


def test_two_downloads_on_one_connection_interleave(edge: Edge, root: Path) -> None:
    """Two 1 MiB downloads paced by their stream windows take turns, frame by frame."""
    data = (root / "1m.bin").read_bytes()
    cl = client(edge, check=True)
    cl.grant(16 * MIB)
    cl.send(cl.headers(request_fields("/1m.bin")) + cl.headers(request_fields("/1m.bin")))
    a, b = cl.reader.stream(1), cl.reader.stream(3)
    assert bytes(a.body) == data and bytes(b.body) == data
    frames = [f for f in cl.frames if f.kind == DATA]
    first_end = min(i for i, f in enumerate(frames) if f.flags & END_STREAM)
    before = [f.sid for f in frames[:first_end]]
    assert before.count(1) > 10 and before.count(3) > 10, (before.count(1), before.count(3))
    assert not cl.violations
    cl.assert_conformant()


def test_streams_share_a_scarce_connection_window(edge: Edge) -> None:
    """The connection window reopened 16 KiB at a time is shared between two streams."""
    cl = client(edge, auto_window=False, settings={S_INITIAL_WINDOW_SIZE: 2 * MIB}, check=True)
    cl.send(cl.headers(request_fields("/1m.bin")) + cl.headers(request_fields("/1m.bin")))
    assert cl.conn_window == 0
    for _ in range(40):
        cl.grant(16_384)
        assert cl.conn_window == 0
    got_a, got_b = len(cl.reader.stream(1).body), len(cl.reader.stream(3).body)
    assert got_a + got_b == 65_535 + 40 * 16_384 and not cl.violations
    assert min(got_a, got_b) > (got_a + got_b) // 4, (got_a, got_b)
    cl.assert_conformant()


def test_a_window_made_negative_by_settings_resumes_when_it_opens(edge: Edge) -> None:
    """RFC 9113 §6.9.2: a lowered INITIAL_WINDOW_SIZE makes the window negative; it waits until it is above 0."""
    cl = client(edge, settings={S_INITIAL_WINDOW_SIZE: 3}, auto_window=False)
    stream = cl.get("/hello.txt")
    assert bytes(stream.body) == b"hel"
    cl.send(settings_frame({S_INITIAL_WINDOW_SIZE: 2}))  # the window is -1 now
    assert len(stream.body) == 3
    cl.grant(2, 1)  # +1: one byte may go
    assert bytes(stream.body) == b"hell"
    cl.grant(100, 1)
    assert stream.ended and bytes(stream.body) == b"hello world\n" and not cl.violations


# -- abuse limits -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True], ids=["uncached targets", "cached file"])
def test_rapid_reset_ends_the_connection_with_enhance_your_calm(make_edge: Callable[..., Edge], cached: bool) -> None:
    """200 requests each reset at once, over a reset budget of 20: GOAWAY(ENHANCE_YOUR_CALM)."""
    edge = make_edge({"reset_rate": 10.0, "reset_burst": 20})
    baseline = warm(edge)
    cl = client(edge)
    frames = []
    for i in range(200):
        sid = 2 * i + 1
        block = cl.block(request_fields("/1m.bin" if cached else f"/nothing/{i}"))
        frames += [frame(HEADERS, END_HEADERS | END_STREAM, sid, block), rst_stream(sid, CANCEL)]
    cl.send(b"".join(frames))
    ended_with(cl, ENHANCE_YOUR_CALM)
    assert_recovered(edge, baseline)


def test_a_few_resets_are_fine(make_edge: Callable[..., Edge]) -> None:
    """15 requests reset by the client, under the burst of 20: the connection goes on."""
    cl = client(make_edge({"reset_rate": 10.0, "reset_burst": 20}))
    for _ in range(15):
        sid = cl.next_sid
        cl.send(cl.headers(request_fields("/1m.bin")) + rst_stream(sid, CANCEL))
    assert cl.get("/hello.txt").status == 200
    assert not cl.reader.goaways() and not cl.conn.transport.eof_written


def test_ping_flood(make_edge: Callable[..., Edge]) -> None:
    """5 PINGs are answered; 100 more over a burst of 10: GOAWAY(ENHANCE_YOUR_CALM)."""
    edge = make_edge({"ping_rate": 1.0, "ping_burst": 10})
    baseline = warm(edge)
    cl = client(edge)
    new = cl.send(b"".join(ping(b"%08d" % i) for i in range(5)))
    assert [(f.kind, f.flags) for f in new] == [(PING, 1)] * 5
    cl.send(b"".join(ping(b"%08d" % i) for i in range(100)))
    ended_with(cl, ENHANCE_YOUR_CALM)
    assert_recovered(edge, baseline)


def test_settings_flood(make_edge: Callable[..., Edge]) -> None:
    """100 SETTINGS over a burst of 10: GOAWAY(ENHANCE_YOUR_CALM)."""
    edge = make_edge({"settings_rate": 1.0, "settings_burst": 10})
    baseline = warm(edge)
    cl = client(edge)
    cl.send(b"".join(settings_frame({S_INITIAL_WINDOW_SIZE: 65_535 + i}) for i in range(100)))
    ended_with(cl, ENHANCE_YOUR_CALM)
    assert_recovered(edge, baseline)


def test_empty_data_flood(make_edge: Callable[..., Edge]) -> None:
    """10 empty DATA frames are within the burst; 200 more: GOAWAY(ENHANCE_YOUR_CALM)."""
    edge = make_edge({"empty_data_rate": 10.0, "empty_data_burst": 20})
    baseline = warm(edge)
    cl = client(edge, settings={S_INITIAL_WINDOW_SIZE: 0})
    cl.send(frame(HEADERS, END_HEADERS, 1, _block(cl, "/1m.bin")))  # a request with a body: it stays open
    cl.send(frame(DATA, 0, 1) * 10)
    assert not cl.reader.goaways() and not cl.conn.transport.eof_written, "ten empty DATA frames are fine"
    cl.send(frame(DATA, 0, 1) * 200)
    ended_with(cl, ENHANCE_YOUR_CALM)
    assert_recovered(edge, baseline)


def test_priority_flood(make_edge: Callable[..., Edge]) -> None:
    """20 PRIORITY frames are within the burst; 980 more: GOAWAY(ENHANCE_YOUR_CALM)."""
    edge = make_edge({"priority_rate": 10.0, "priority_burst": 50})
    baseline = warm(edge)
    cl = client(edge)
    prio = lambda i: frame(PRIORITY, 0, 2 * i + 1, struct.pack(">IB", 0, 15))  # noqa: E731
    cl.send(b"".join(prio(i) for i in range(20)))
    assert not cl.reader.goaways() and not cl.conn.transport.eof_written
    cl.send(b"".join(prio(i) for i in range(20, 1000)))
    ended_with(cl, ENHANCE_YOUR_CALM)
    assert_recovered(edge, baseline)


def test_a_header_block_at_the_limit_is_served(make_edge: Callable[..., Edge]) -> None:
    """A 3-4 KiB header block in 500-byte CONTINUATION pieces, under a 4096-byte limit: answered."""
    cl = client(make_edge({"max_header_block_size": 4096}))
    block = cl.block(request_fields("/hello.txt", extra=[("x-pad", "p" * 3000)]), huffman=False)
    assert 3000 < len(block) <= 4096
    pieces = [block[i:i + 500] for i in range(0, len(block), 500)]
    frames = [frame(HEADERS, END_STREAM, 1, pieces[0])] + [frame(CONTINUATION, 0, 1, p) for p in pieces[1:-1]]
    cl.send(b"".join(frames) + frame(CONTINUATION, END_HEADERS, 1, pieces[-1]))
    assert cl.reader.stream(1).status == 200


def test_hpack_bomb_limit_is_advertised(make_edge: Callable[..., Edge]) -> None:
    """max_header_list_size is what the server's SETTINGS announce."""
    cl = client(make_edge({"max_header_list_size": 8192}))
    assert settings_of(cl.frames[0])[S_MAX_HEADER_LIST_SIZE] == 8192


def test_too_many_concurrent_streams(make_edge: Callable[..., Edge], engine: str) -> None:
    """Four open streams under a limit of 4: the fifth is never served. edge refuses it (RST_STREAM
    REFUSED_STREAM, §5.1.2); the h2 library ends the connection (GOAWAY PROTOCOL_ERROR): a difference."""
    edge = make_edge({"max_concurrent_streams": 4})
    baseline = warm(edge)
    cl = client(edge, settings={S_INITIAL_WINDOW_SIZE: 0})  # the responses stay open
    assert settings_of(cl.frames[0])[S_MAX_CONCURRENT_STREAMS] == 4
    cl.send(b"".join(cl.headers(request_fields("/1m.bin")) for _ in range(4)))
    assert [cl.reader.stream(sid).status for sid in (1, 3, 5, 7)] == [200] * 4
    cl.send(cl.headers(request_fields("/1m.bin")))
    assert cl.reader.stream(9).status is None, "a stream over the advertised limit was served"
    if engine == "edge":
        assert cl.reader.resets() == [(9, REFUSED_STREAM)] and not cl.reader.goaways()
    else:
        ended_with(cl, PROTOCOL_ERROR)
    assert_recovered(edge, baseline)


def test_max_requests_sends_a_graceful_goaway_and_answers_the_streams_before_it(
        make_edge: Callable[..., Edge], root: Path) -> None:
    """max_requests = 5: GOAWAY(NO_ERROR) naming the fifth stream; the streams up to it complete; later ones
    are refused or ignored; the connection ends once they are answered."""
    edge = make_edge({"max_requests": 5})
    baseline = warm(edge)
    data = (root / "100k.bin").read_bytes()
    cl = client(edge, auto_window=False, settings={S_INITIAL_WINDOW_SIZE: MIB})
    cl.grant(8 * MIB)
    for _ in range(7):
        cl.send(cl.headers(request_fields("/100k.bin")))
    goaways = cl.reader.goaways()
    assert goaways and all(code == NO_ERROR for _, code in goaways), goaways
    last = goaways[-1][0]
    assert 9 <= last < 13, goaways
    for sid in (1, 3, 5, 7, 9, 11, 13):
        stream = cl.reader.stream(sid)
        if sid <= last:
            assert stream.status == 200 and stream.ended and bytes(stream.body) == data, sid
        else:
            assert stream.status is None and stream.reset in (None, REFUSED_STREAM), (sid, stream.reset)
    assert cl.conn.transport.eof_written, "the connection did not end after max_requests"
    assert not cl.violations
    assert_recovered(edge, baseline)


# -- h2c Upgrade (cleartext only: these connections have a real socket) ---------------------------------------------

UPGRADE_SETTINGS = base64.urlsafe_b64encode(struct.pack(">HIHI", 3, 100, 4, 65535)).rstrip(b"=")


def _upgrade(edge: Edge, target: str, method: str = "GET") -> tuple[bytes, H2Client]:
    """An h2c Upgrade for `target` (h2 checking the frames): the 101 head and the client, preface sent."""
    conn = edge.connect(tls=False)
    cl = H2Client(conn, start=False, check=True, upgrade=True)
    conn.send(f"{method} {target} HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              f"Upgrade: h2c\r\nHTTP2-Settings: ".encode() + cl.upgrade_settings + b"\r\n\r\n")
    head = conn.received.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    cl._seen = len(head)
    cl.send(PREFACE + settings_frame())
    return head, cl


def test_h2c_upgrade_answers_on_stream_1_then_more_streams(edge: Edge, root: Path) -> None:
    """Upgrade: h2c: 101, the server's SETTINGS first, the request answered on stream 1, then stream 3."""
    head, cl = _upgrade(edge, "/100k.bin")
    assert head == b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    assert cl.frames[0].kind == SETTINGS and not cl.frames[0].flags, "the server preface comes first after the 101"
    stream = cl.reader.stream(1)
    assert stream.status == 200 and stream.ended and bytes(stream.body) == (root / "100k.bin").read_bytes()
    follow = cl.get("/hello.txt")
    assert follow.sid == 3 and follow.status == 200 and not cl.violations
    cl.assert_conformant()


def test_h2c_upgrade_for_head(edge: Edge) -> None:
    """An upgraded HEAD: stream 1 has the length and no body."""
    _, cl = _upgrade(edge, "/1m.bin", "HEAD")
    stream = cl.reader.stream(1)
    assert stream.status == 200 and stream.headers["content-length"] == str(MIB) and not stream.body and stream.ended
    cl.assert_conformant()


def test_a_bad_http2_settings_value(edge: Edge, engine: str) -> None:
    """HTTP2-Settings that is not base64url: after the 101, edge's engine says GOAWAY(PROTOCOL_ERROR); the h2
    library decodes it leniently (non-alphabet characters dropped: no settings) and answers stream 1."""
    conn = edge.connect(tls=False)
    conn.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              b"HTTP2-Settings: !!!\r\n\r\n")
    head, _, rest = conn.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    cl = H2Client(conn, start=False, skip=len(head) + 4, upgrade=True)
    if engine == "edge":
        cl.read()
        assert cl.reader.goaways() and cl.reader.goaways()[-1][1] == PROTOCOL_ERROR
        assert cl.reader.stream(1).status is None and conn.transport.eof_written
    else:
        cl.send(PREFACE + settings_frame())
        assert cl.reader.stream(1).status == 200 and not cl.reader.goaways()


def test_upgrade_for_a_post_stays_http1(edge: Edge) -> None:
    """Upgrade: h2c on a POST is not taken: a 405 over HTTP/1.1."""
    conn = edge.connect(tls=False)
    conn.send(b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              b"HTTP2-Settings: " + UPGRADE_SETTINGS + b"\r\nContent-Length: 0\r\n\r\n")
    assert conn.received.startswith(b"HTTP/1.1 405 "), conn.received[:100]


# -- files are released when a stream or the connection goes away ----------------------------------------------------


def test_client_reset_stops_the_data_and_frees_the_file(make_edge: Callable[..., Edge], root: Path) -> None:
    """A download reset by the client: no DATA after the reset, its evicted file's fd closed; the connection goes on."""
    edge = make_edge(file_cache={"max_entries": 1})
    baseline = warm(edge)
    big = str((root / "big.bin").resolve())
    cl = client(edge, auto_window=False)
    stream = cl.get("/big.bin")
    assert len(stream.body) == 65_535
    assert h1_get(edge, "/100k.bin").status == 200  # evicts big.bin from the one-entry cache
    assert big in fd_targets(), "the in-flight transfer lost its file"
    cl.send(rst_stream(1, CANCEL))
    cl.grant(8 * MIB)
    assert cl.grant(8 * MIB, 1) == [] and len(stream.body) == 65_535 and not stream.ended, "DATA after our RST_STREAM"
    assert big not in fd_targets(), "the reset transfer kept the evicted file open"
    follow = cl.get("/hello.txt")
    assert follow.status is None or follow.status == 200
    cl.grant(1000, follow.sid)
    assert follow.status == 200 and follow.ended
    assert_recovered(edge, baseline)


def test_client_goaway_mid_download_releases_the_file(make_edge: Callable[..., Edge], root: Path) -> None:
    """A client GOAWAY while a body is being sent frees its file: with a one-entry cache the fd closes."""
    edge = make_edge(file_cache={"max_entries": 1})
    big = str((root / "big.bin").resolve())
    cl = client(edge, auto_window=False)
    cl.get("/big.bin")
    assert big in fd_targets()
    cl.send(goaway(0))
    assert cl.conn.transport.eof_written, "the server did not end the connection"
    assert h1_get(edge, "/hello.txt").status == 200  # evicts the big file from the one-entry cache
    assert big not in fd_targets(), "the file's fd leaked"


# -- RFC 8441: extended CONNECT, as the adapter judges it ----------------------------------------------------

#: An origin nobody listens on: with it the worker has tunnels, so SETTINGS_ENABLE_CONNECT_PROTOCOL is advertised.
NO_ORIGIN = {"origin": [{"url": "http://127.0.0.1:9"}]}
_WS = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":authority", b"x"),
       (b":path", b"/chat")]


def _without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in _WS if k != name]


#: name -> (tunnels on, request fields): each a malformed request, a stream PROTOCOL_ERROR (RFC 9113 §8.1.1).
BAD_EXTENDED_CONNECTS = {
    ":protocol without the setting": (False, _WS),
    ":protocol on a GET": (True, [(b":method", b"GET"), *_WS[1:]]),
    ":protocol on a POST": (True, [(b":method", b"POST"), *_WS[1:]]),
    "extended CONNECT without :path": (True, _without(b":path")),
    "extended CONNECT with an empty :path": (True, [*_without(b":path"), (b":path", b"")]),
    "extended CONNECT without :scheme": (True, _without(b":scheme")),
    "extended CONNECT without :authority": (True, _without(b":authority")),
    "two :protocol fields": (True, [*_WS, (b":protocol", b"websocket")]),
    ":protocol after a regular field": (True, [*_without(b":protocol"), (b"origin", b"o"), (b":protocol", b"websocket")]),
}


@pytest.mark.parametrize("tunnels", [False, True], ids=["no-tunnels", "tunnels"])
def test_settings_advertise_enable_connect_protocol_with_tunnels(make_edge: Callable[..., Edge],
                                                                 tunnels: bool) -> None:
    """RFC 8441 §3: 0x8 = 1 in edge's SETTINGS when it tunnels WebSockets (origins and [websocket] enabled),
    on both engines; not otherwise (h2 lists every setting: 0 there)."""
    edge = make_edge(**NO_ORIGIN) if tunnels else make_edge()
    cl = client(edge, check=True)
    assert settings_of(cl.frames[0]).get(8, 0) == (1 if tunnels else 0)
    off = make_edge(**NO_ORIGIN, websocket={"enabled": False})
    assert settings_of(client(off).frames[0]).get(8, 0) == 0


@pytest.mark.parametrize("name", BAD_EXTENDED_CONNECTS)
def test_a_malformed_extended_connect_is_a_stream_protocol_error(make_edge: Callable[..., Edge], name: str) -> None:
    """RFC 8441 §4: :protocol only after SETTINGS_ENABLE_CONNECT_PROTOCOL, only on CONNECT, which then has
    :scheme, :path and :authority; otherwise one RST_STREAM(PROTOCOL_ERROR), and the connection goes on."""
    tunnels, fields = BAD_EXTENDED_CONNECTS[name]
    edge = make_edge(**NO_ORIGIN) if tunnels else make_edge()
    cl = client(edge, auto_window=False)
    cl.send(frame(HEADERS, END_HEADERS, 1, cl.block(fields)))
    assert cl.reader.resets() == [(1, PROTOCOL_ERROR)], cl.reader.resets()
    assert cl.reader.stream(1).status is None and not cl.reader.goaways()
    cl.next_sid = 3
    assert cl.get("/hello.txt").status == 200, "the connection goes on"


@pytest.mark.parametrize("fields, status", [
    ([(b":method", b"CONNECT"), (b":authority", b"x:443")], 405),  # plain CONNECT: refused as before
    ([*_without(b":protocol"), (b":protocol", b"connect-udp")], 501),  # a protocol edge does not tunnel
    ([*_without(b":path"), (b":path", b"/hello.txt")], 405),  # the root's file takes no CONNECT
], ids=["plain-connect", "other-protocol", "root-file"])
def test_extended_connects_edge_answers_itself(make_edge: Callable[..., Edge], fields: list, status: int) -> None:
    """With tunnels on, a well-formed CONNECT that is no WebSocket to an origin gets a plain answer on its
    stream (END_STREAM), never a 2xx, which would tell the client its tunnel is up (RFC 9113 §8.5)."""
    edge = make_edge(**NO_ORIGIN)
    cl = client(edge, check=True)
    cl.send(frame(HEADERS, END_HEADERS, 1, cl.block(fields)))
    stream = cl.reader.stream(1)
    assert stream.status == status and stream.ended, (stream, cl.reader.resets())
    cl.next_sid = 3
    assert cl.get("/hello.txt").status == 200
