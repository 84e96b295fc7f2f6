"""HTTP/2 end to end: a real `edge serve`, a frame-level client (h2 + hyperframe), curl, httpx, nghttp, h2load.

Same answers as HTTP/1.1 for the same requests; flow control (windows, interleaving, a client that
never opens its window); resets freeing files; every abuse limit of [http2] (each ends the
connection with GOAWAY, after which the worker serves others with its fds back to baseline);
graceful GOAWAY after max_requests, on idle and on SIGTERM; h2c Upgrade; TLS with ALPN h2.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, PriorityFrame, RstStreamFrame,
                              SettingsFrame)

from conftest import EdgeProcess, H2Client, H2Stream, h2_get, request, wait_for
from test_robustness import fd_targets, settled_fds

MIB = 1 << 20
CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
needs_nghttp = pytest.mark.skipif(NGHTTP is None, reason="nghttp is not installed (apt nghttp2-client)")
needs_h2load = pytest.mark.skipif(H2LOAD is None, reason="h2load is not installed (apt nghttp2-client)")

NO_ERROR = ErrorCodes.NO_ERROR
PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
CALM = ErrorCodes.ENHANCE_YOUR_CALM
REFUSED = ErrorCodes.REFUSED_STREAM
OLD_MTIME = calendar.timegm((2021, 3, 4, 5, 6, 7, 0, 0, 0))
JS = b"export function hi() { return 'hello from a.js'; }\n" * 40
RULE_VALUE = "public, max-age=31536000, immutable"


# -- helpers ------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"edge-{len(list(tmp_path.glob('edge-*.toml')))}.toml"
    path.write_text(text)
    return path


def http2_config(tmp_path: Path, **limits: object) -> Path:
    """A config file with an [http2] table (plus top-level keys passed as top_<name>)."""
    top = {k[4:]: v for k, v in limits.items() if k.startswith("top_")}
    lines = [f"{k} = {v!r}" for k, v in top.items()]
    lines.append("[http2]")
    lines += [f"{k} = {v!r}" for k, v in limits.items() if not k.startswith("top_")]
    return write_config(tmp_path, "\n".join(lines) + "\n")


WARM = ("/1m.bin", "/100k.bin", "/1k.bin", "/hello.txt")


def warm(server: EdgeProcess) -> int:
    """Load HTTP/2 in the worker and the test files in its open-file cache; returns the settled fd count.

    Every cached file holds an fd, so the baseline is taken with the files the tests touch already
    cached (the last one, /hello.txt, is also the last one assert_recovered asks for).
    """
    for target in WARM:
        assert h2_get(server, target, method="HEAD").status == 200
    return settled_fds(server)


def assert_recovered(server: EdgeProcess, baseline: int) -> None:
    """The worker still serves HTTP/2 and HTTP/1.1 clients, and its fd count is back to `baseline`."""
    stream = h2_get(server, "/1k.bin")
    assert stream.status == 200 and len(stream.body) == 1024
    assert request(server, "/hello.txt")[0] == 200
    assert settled_fds(server) == baseline, fd_targets(server.worker_pid)


def ended_with(client: H2Client, code: int, timeout: float = 10.0) -> None:
    """The server sent GOAWAY(code) and closed the connection."""
    assert client.closed(timeout), f"still open; GOAWAY: {client.goaway_info()}"
    assert client.goaways, "closed without GOAWAY"
    assert client.goaways[-1].error_code == code, \
        f"GOAWAY {ErrorCodes(client.goaways[-1].error_code).name}, expected {ErrorCodes(code).name}"


def raw_request(client: H2Client, target: str, *, end_stream: bool = True, method: str = "GET") -> int:
    """HEADERS built by hand (h2 not asked, so no client-side limit applies); returns the stream id."""
    sid = client.next_raw_sid()
    flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
    client.send_frames([HeadersFrame(sid, data=client.encode(client.headers_for(target, method)), flags=flags)])
    return sid


def first_index(frames: list, kind: type, sid: int, flag: str | None = None) -> int:
    for i, f in enumerate(frames):
        if type(f) is kind and f.stream_id == sid and (flag is None or flag in f.flags):
            return i
    raise AssertionError(f"no {kind.__name__} {flag or ''} on stream {sid}")


# -- a site with every kind of answer -----------------------------------------------------------------


@pytest.fixture
def site(www: Path, tmp_path: Path) -> Path:
    """Extra files in the root and a config with a [[headers]] rule; returns the config path."""
    (www / "data.bin").write_bytes(os.urandom(100_000))
    os.utime(www / "data.bin", (OLD_MTIME, OLD_MTIME))
    (www / "a.js").write_bytes(JS)
    (www / "a.js.gz").write_bytes(gzip.compress(JS))
    (www / "a.js.br").write_bytes(b"\x1b\x4f\x08\x00" + os.urandom(200))
    (www / "assets").mkdir()
    (www / "assets" / "x.css").write_text("body { color: red }\n")
    (www / ".env").write_text("SECRET=1\n")
    return write_config(tmp_path, f'[[headers]]\nmatch = "/assets/*"\nset = {{ "Cache-Control" = "{RULE_VALUE}" }}\n')


@pytest.fixture
def srv(edge, site: Path) -> EdgeProcess:
    return edge(config=site)


REPRESENTATION = ("content-type", "content-length", "content-encoding", "content-range", "vary", "etag",
                  "last-modified", "accept-ranges", "cache-control", "allow", "location", "server")

# (request method, target, header fields, expected status)
SAME_ANSWERS = {
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
def test_same_answer_as_http1(srv, www: Path, case: str):
    method, target, fields, status = SAME_ANSWERS[case]
    h1_status, h1, h1_body = request(srv, target, method=method, headers=fields)
    stream = h2_get(srv, target, fields, method)
    assert h1_status == status, f"HTTP/1.1 said {h1_status}"
    assert stream.status == status, f"HTTP/2 said {stream.status} {stream.headers}"
    for name in REPRESENTATION:
        assert stream.headers.get(name) == h1.get(name), f"{name}: h2 {stream.headers.get(name)!r}, h1 {h1.get(name)!r}"
    assert bytes(stream.body) == h1_body
    assert "date" in stream.headers
    for name in ("connection", "keep-alive", "transfer-encoding", "upgrade"):
        assert name not in stream.headers, f"connection-specific field {name} in an HTTP/2 response"
    if method == "HEAD" or status == 304:
        assert stream.data_frames == 0 and not stream.body
    elif "content-length" in stream.headers:
        assert len(stream.body) == int(stream.headers["content-length"])


def test_get_is_the_file_and_head_has_its_length(srv, www: Path):
    data = (www / "1m.bin").read_bytes()
    stream = h2_get(srv, "/1m.bin")
    assert stream.status == 200 and bytes(stream.body) == data
    assert stream.headers["content-length"] == str(len(data))
    head = h2_get(srv, "/1m.bin", method="HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(len(data)) and not head.body


def test_precompressed_variants_and_header_rule(srv, www: Path):
    br = h2_get(srv, "/a.js", {"accept-encoding": "gzip, br"})
    assert br.headers["content-encoding"] == "br" and bytes(br.body) == (www / "a.js.br").read_bytes()
    gz = h2_get(srv, "/a.js", {"accept-encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip" and gzip.decompress(bytes(gz.body)) == JS
    plain = h2_get(srv, "/a.js", {"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and bytes(plain.body) == JS
    for s in (br, gz, plain):
        assert "accept-encoding" in s.headers["vary"].lower()
    rule = h2_get(srv, "/assets/x.css")
    assert rule.headers["cache-control"] == RULE_VALUE
    assert "cache-control" not in h2_get(srv, "/hello.txt").headers


def test_304_by_etag_and_ranges(srv, www: Path):
    data = (www / "data.bin").read_bytes()
    etag = h2_get(srv, "/data.bin").headers["etag"]
    assert h2_get(srv, "/data.bin", {"if-none-match": etag}).status == 304
    assert h2_get(srv, "/data.bin", {"if-none-match": '"other"'}).status == 200
    one = h2_get(srv, "/data.bin", {"range": "bytes=100-199"})
    assert one.status == 206 and one.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert bytes(one.body) == data[100:200]
    multi = h2_get(srv, "/data.bin", {"range": "bytes=0-9,500-599"})
    assert multi.status == 206 and multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert data[:10] in multi.body and data[500:600] in multi.body
    assert int(multi.headers["content-length"]) == len(multi.body)
    bad = h2_get(srv, "/data.bin", {"range": "bytes=200000-"})
    assert bad.status == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    stale = h2_get(srv, "/data.bin", {"range": "bytes=0-9", "if-range": '"not-the-etag"'})
    assert stale.status == 200 and bytes(stale.body) == data


def test_connection_preface_and_settings_exchange(server):
    client = H2Client.connect(server)
    assert client.wait(lambda: any(type(f) is SettingsFrame and "ACK" in f.flags for f in client.frames), 5)
    first = client.frames[0]
    assert type(first) is SettingsFrame and "ACK" not in first.flags, "the server preface is a SETTINGS frame"
    assert first.settings.get(SettingCodes.MAX_CONCURRENT_STREAMS) == 128
    assert first.settings.get(SettingCodes.MAX_HEADER_LIST_SIZE) == 65536
    sid = client.request("/hello.txt")
    assert client.response(sid).status == 200
    assert client.h2_error is None
    client.close()


def test_a_request_body_gets_the_answer_then_rst_stream_no_error(srv):
    client = H2Client.connect(srv)
    sid = client.request("/hello.txt", "POST", end_stream=False)
    client.conn.send_data(sid, b"x" * 1000, end_stream=False)
    client.flush()
    assert client.wait(lambda: client.streams[sid].done, 10)
    stream = client.streams[sid]
    assert stream.status == 405 and stream.headers["allow"] == "GET, HEAD"
    assert client.wait(lambda: stream.reset is not None, 5), "no RST_STREAM after the complete answer"
    assert stream.ended, "the answer must be complete before the reset"
    assert stream.reset == NO_ERROR
    assert client.h2_error is None
    sid2 = client.request("/hello.txt")
    assert client.response(sid2).status == 200, "the connection goes on"
    client.close()


@pytest.mark.parametrize("trailer", [
    (b":path", b"/other"), (b"X-Upper", b"v"), (b"connection", b"close"), (b"te", b"gzip"), (b"x-bad", b"a\nb"),
], ids=["pseudo-field", "uppercase", "connection", "te-not-trailers", "newline"])
def test_malformed_trailers_reset_the_stream(srv, trailer):
    # RFC 9113 §8.1: trailers are checked like other fields; a malformed request is a stream error (§8.1.1).
    client = H2Client.connect(srv, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1024}, auto_window=False)
    # A body that cannot finish (the window stays shut): the stream is still open when the trailers come.
    sid = client.request("/1m.bin", end_stream=False)
    client.conn.send_data(sid, b"x" * 10)
    client.flush()
    assert client.wait(lambda: client.streams[sid].status == 200, 10)
    client.send_frames([HeadersFrame(sid, data=client.encode([trailer]), flags=["END_HEADERS", "END_STREAM"])])
    assert client.wait(lambda: client.streams[sid].reset is not None, 10)
    assert client.streams[sid].reset == PROTOCOL_ERROR
    assert client.h2_error is None
    sid2 = client.request("/hello.txt")
    assert client.wait(lambda: client.streams[sid2].status == 200, 10), "the connection goes on"
    client.close()


# -- malformed requests ---------------------------------------------------------------------------------


NO_AUTHORITY = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/hello.txt")]


def test_host_instead_of_authority_is_enough(server):
    client = H2Client.connect(server)
    sid = client.request("/", raw_headers=NO_AUTHORITY + [(b"host", b"edge.test")])
    stream = client.response(sid)
    assert stream.status == 200 and bytes(stream.body) == b"hello world\n"
    client.close()


def test_missing_authority_and_host_ends_the_request_not_with_a_success(server):
    client = H2Client.connect(server)
    sid = client.request("/", raw_headers=NO_AUTHORITY)
    stream = client.streams[sid]
    client.wait(lambda: stream.done or client.eof, 10)
    assert stream.status in (None, 400), stream.status
    assert stream.status == 400 or stream.reset == PROTOCOL_ERROR or client.goaway_info()[1] == PROTOCOL_ERROR
    client.close()


def test_missing_authority_and_host_is_400_and_the_connection_goes_on(server, www: Path):
    client = H2Client.connect(server)
    big = client.request("/1m.bin")
    sid = client.request("/", raw_headers=NO_AUTHORITY)
    assert client.response(sid).status == 400
    assert bytes(client.response(big).body) == (www / "1m.bin").read_bytes(), "another stream was cut"
    assert not client.goaways
    client.close()


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
}


@pytest.mark.parametrize("case", BAD_HEADS)
def test_bad_pseudo_headers_are_a_stream_or_connection_error(server, case: str):
    baseline = warm(server)
    client = H2Client.connect(server)
    sid = client.next_raw_sid()
    client.send_frames([HeadersFrame(sid, data=client.encode(BAD_HEADS[case]), flags=["END_HEADERS", "END_STREAM"])])
    stream = client.streams[sid]
    client.wait(lambda: stream.done or client.eof or bool(client.goaways), 10)
    assert stream.status is None or stream.status == 400, f"a malformed request was answered {stream.status}"
    if stream.status is None:
        stream_error = stream.reset == PROTOCOL_ERROR
        connection_error = bool(client.goaways) and client.goaways[-1].error_code == PROTOCOL_ERROR
        assert stream_error or connection_error, (stream.reset, client.goaway_info())
        if connection_error:
            assert client.closed(5)
    client.close()
    assert_recovered(server, baseline)


# -- flow control -------------------------------------------------------------------------------------


def test_a_tiny_window_is_respected_and_the_file_arrives_exactly(server, www: Path):
    data = (www / "1m.bin").read_bytes()
    client = H2Client.connect(server, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1024}, auto_window=False)
    sid = client.request("/1m.bin")
    stream = client.streams[sid]
    grants = [1024, 7000, 16384, 50_000, 3, 65_535]
    rounds = 0
    while not stream.done:
        assert client.wait(lambda: stream.done or client.windows[sid] == 0 or client.conn_window == 0, 10), \
            f"no progress after {len(stream.body)} bytes (window {client.windows[sid]}, conn {client.conn_window})"
        if stream.done:
            break
        if rounds == 0:
            assert len(stream.body) == 1024 and stream.data_frames >= 1, "the first flight is exactly the window"
            # Nothing more comes while the window is shut.
            client.pump(0.3)
            assert len(stream.body) == 1024
        step = grants[rounds % len(grants)]
        if client.windows[sid] == 0:
            client.grant(step, sid)
        if client.conn_window < 65_535:
            client.grant(65_535 - client.conn_window)
        rounds += 1
    assert stream.status == 200 and bytes(stream.body) == data
    assert not client.violations, client.violations
    assert client.h2_error is None
    assert rounds > 20
    client.close()


def test_the_connection_window_bounds_all_streams_together(server, www: Path):
    client = H2Client.connect(server, auto_window=False,
                              settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    a, b = client.request("/1m.bin"), client.request("/100k.bin")
    assert client.wait(lambda: client.conn_window == 0, 10), client.conn_window
    client.pump(0.3)
    received = len(client.streams[a].body) + len(client.streams[b].body)
    assert received == 65_535 and not client.violations, client.violations
    client.grant(4 * MIB)
    assert client.response(a).status == 200 and client.response(b).status == 200
    assert bytes(client.streams[a].body) == (www / "1m.bin").read_bytes()
    assert bytes(client.streams[b].body) == (www / "100k.bin").read_bytes()
    assert not client.violations, client.violations
    client.close()


def test_max_frame_size_is_respected(server, www: Path):
    big = 65_536
    client = H2Client.connect(server, settings={SettingCodes.MAX_FRAME_SIZE: big,
                                                SettingCodes.INITIAL_WINDOW_SIZE: 4 * MIB})
    client.grant(8 * MIB)
    sid = client.request("/1m.bin")
    stream = client.response(sid)
    assert bytes(stream.body) == (www / "1m.bin").read_bytes()
    sizes = [f.body_len for f in client.frames if type(f) is DataFrame]
    assert max(sizes) <= big and not client.violations
    assert max(sizes) > 16_384, "bigger frames once the peer allows them"
    client.close()
    default = H2Client.connect(server)
    default.response(default.request("/1m.bin"))
    assert max(f.body_len for f in default.frames if type(f) is DataFrame) <= 16_384
    default.close()


def test_two_downloads_on_one_connection_interleave(server, www: Path):
    data = (www / "1m.bin").read_bytes()
    client = H2Client.connect(server)
    client.grant(16 * MIB)  # the 64 KiB stream windows, not the connection's, pace the two
    a = client.request("/1m.bin")
    b = client.request("/1m.bin")
    for sid in (a, b):
        assert bytes(client.response(sid).body) == data
    frames = client.frames
    end_a = first_index(frames, DataFrame, a, "END_STREAM")
    end_b = first_index(frames, DataFrame, b, "END_STREAM")
    first_end = min(end_a, end_b)
    assert first_index(frames, DataFrame, a) < first_end and first_index(frames, DataFrame, b) < first_end
    before = [f.stream_id for f in frames[:first_end] if type(f) is DataFrame]
    # Round-robin: both streams carried a good share of the bytes before either finished.
    assert before.count(a) > 10 and before.count(b) > 10, (before.count(a), before.count(b), client.log(200))
    assert not client.violations and client.h2_error is None
    client.close()




def test_streams_share_a_scarce_connection_window(server, www: Path):
    client = H2Client.connect(server, auto_window=False, settings={SettingCodes.INITIAL_WINDOW_SIZE: 2 * MIB})
    a, b = client.request("/1m.bin"), client.request("/1m.bin")
    assert client.wait(lambda: client.conn_window == 0, 10)
    for _ in range(40):  # the connection window reopens 16 KiB at a time
        client.grant(16_384)
        assert client.wait(lambda: client.conn_window == 0, 10)
    got_a, got_b = len(client.streams[a].body), len(client.streams[b].body)
    assert not client.violations
    assert got_a + got_b == 65_535 + 40 * 16_384
    assert min(got_a, got_b) > (got_a + got_b) // 4, f"stream {a}: {got_a} bytes, stream {b}: {got_b} bytes"
    client.close()


def test_a_client_that_keeps_its_window_small_costs_no_memory_then_the_stall_ends_it(edge, www: Path,
                                                                                       tmp_path: Path):
    with open(www / "64m.bin", "wb") as f:
        f.truncate(64 * MIB)
    server = edge(config=http2_config(tmp_path, stall_timeout=2.0))
    assert h2_get(server, "/64m.bin", method="HEAD").status == 200  # the file's fd is in the cache now
    baseline = warm(server)
    before = server.rss()
    client = H2Client.connect(server, auto_window=False)  # 64 KiB windows, opened only by what we read
    sid = client.request("/64m.bin")
    stream = client.streams[sid]
    peak = before
    while len(stream.body) < 8 * MIB:
        assert client.wait(lambda: client.windows[sid] == 0 or client.conn_window == 0, 10)
        got = 65_535 - client.windows[sid]
        client.grant(got, sid)
        client.grant(65_535 - client.conn_window)
        peak = max(peak, server.rss())
    assert not client.violations, client.violations
    assert peak - before < 8 * MIB, f"worker RSS grew by {(peak - before) >> 10} KiB for a 64 MiB response"
    # Now the client stops opening its window: the stall timeout ends the connection.
    assert client.wait(lambda: client.windows[sid] == 0 or client.conn_window == 0, 10)
    stalled = time.monotonic()
    ended_with(client, CALM, timeout=15)
    waited = time.monotonic() - stalled
    assert waited > 1.0, f"ended after {waited:.1f} s, well before the 2 s stall timeout"
    assert not stream.ended and len(stream.body) < 64 * MIB
    assert server.rss() - before < 8 * MIB
    client.close()
    assert_recovered(server, baseline)


def test_client_reset_stops_the_data_and_frees_the_file(edge, www: Path, tmp_path: Path):
    big = www / "big.bin"
    big.write_bytes(os.urandom(4 * MIB))
    server = edge(config=write_config(tmp_path, "[file_cache]\nmax_entries = 1\n"))
    baseline = warm(server)
    worker = server.worker_pid
    client = H2Client.connect(server, auto_window=False)
    sid = client.request("/big.bin")
    stream = client.streams[sid]
    assert client.wait(lambda: client.windows[sid] == 0, 10)
    # Another file evicts big.bin from the one-entry cache; the transfer still holds its fd.
    assert request(server, "/100k.bin")[0] == 200
    assert str(big) in fd_targets(worker), "the in-flight transfer lost its file"
    client.reset(sid)
    client.grant(8 * MIB)
    client.grant(8 * MIB, sid)
    got = len(stream.body)
    client.pump(0.5)
    assert len(stream.body) == got, "DATA after our RST_STREAM"
    assert not stream.ended
    deadline = time.monotonic() + 5
    while str(big) in fd_targets(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(big) not in fd_targets(worker), "the reset transfer kept the evicted file open"
    # The connection itself goes on.
    sid2 = client.request("/hello.txt")
    client.grant(1000, sid2)
    assert client.response(sid2).status == 200
    client.close()
    assert_recovered(server, baseline)


# -- abuse limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True], ids=["uncached targets", "cached file"])
def test_rapid_reset_ends_the_connection_with_enhance_your_calm(edge, tmp_path: Path, cached: bool):
    server = edge(config=http2_config(tmp_path, reset_rate=10.0, reset_burst=20))
    baseline = warm(server)
    client = H2Client.connect(server)
    frames = []
    for i in range(200):
        sid = client.next_raw_sid()
        block = client.encode(client.headers_for("/1m.bin" if cached else f"/nothing/{i}"))
        frames += [HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]), RstStreamFrame(sid, 8)]
    client.send_frames(frames)
    ended_with(client, CALM)
    client.close()
    assert_recovered(server, baseline)


def test_a_stream_reset_in_the_same_read_as_the_next_request(server):
    # The reset stream is gone from h2 by the time its request is answered (h2 parsed the whole read
    # first): answering it must not break the connection.
    client = H2Client.connect(server)
    assert client.response(client.request("/hello.txt")).status == 200  # cached now
    first = client.next_raw_sid()
    second = client.next_raw_sid()
    block = client.encode(client.headers_for("/hello.txt"))
    client.send_frames([HeadersFrame(first, data=block, flags=["END_HEADERS", "END_STREAM"]),
                        RstStreamFrame(first, 8),
                        HeadersFrame(second, data=client.encode(client.headers_for("/hello.txt")),
                                     flags=["END_HEADERS", "END_STREAM"])])
    assert client.response(second).status == 200
    assert not client.goaways and not client.eof
    client.close()


def test_a_few_resets_are_fine(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, reset_rate=10.0, reset_burst=20))
    client = H2Client.connect(server)
    for _ in range(15):
        sid = client.request("/1m.bin")
        client.reset(sid)
    sid = client.request("/hello.txt")
    assert client.response(sid).status == 200
    assert not client.goaways and not client.eof
    client.close()


def test_ping_flood(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, ping_rate=1.0, ping_burst=10))
    baseline = warm(server)
    client = H2Client.connect(server)
    client.send_frames([PingFrame(0, opaque_data=b"%08d" % i) for i in range(5)])
    assert client.wait(lambda: sum(type(f) is PingFrame and "ACK" in f.flags for f in client.frames) == 5, 5), \
        "a few PINGs are answered"
    client.send_frames([PingFrame(0, opaque_data=b"%08d" % i) for i in range(100)])
    ended_with(client, CALM)
    client.close()
    assert_recovered(server, baseline)


def test_settings_flood(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, settings_rate=1.0, settings_burst=10))
    baseline = warm(server)
    client = H2Client.connect(server)
    client.send_frames([SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 65_535 + i})
                        for i in range(100)])
    ended_with(client, CALM)
    client.close()
    assert_recovered(server, baseline)


def test_empty_data_flood(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, empty_data_rate=10.0, empty_data_burst=20))
    baseline = warm(server)
    client = H2Client.connect(server, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = raw_request(client, "/1m.bin", end_stream=False)  # a request with a body: it stays open
    client.send_frames([DataFrame(sid, b"") for _ in range(10)])
    client.pump(0.3)
    assert not client.goaways and not client.eof, "ten empty DATA frames are within the burst"
    client.send_frames([DataFrame(sid, b"") for _ in range(200)])
    ended_with(client, CALM)
    client.close()
    assert_recovered(server, baseline)


def test_priority_flood(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, priority_rate=10.0, priority_burst=50))
    baseline = warm(server)
    client = H2Client.connect(server)
    client.send_frames([PriorityFrame(2 * i + 1, depends_on=0, stream_weight=15) for i in range(20)])
    client.pump(0.3)
    assert not client.goaways and not client.eof, "20 PRIORITY frames are within the burst"
    client.send_frames([PriorityFrame(2 * i + 1, depends_on=0, stream_weight=15) for i in range(20, 1000)])
    ended_with(client, CALM)
    client.close()
    assert_recovered(server, baseline)


@pytest.mark.parametrize("piece, code", [(1000, CALM), (1, PROTOCOL_ERROR)],
                         ids=["bytes over max_header_block_size", "frame count"])
def test_continuation_flood(edge, tmp_path: Path, piece: int, code: int):
    server = edge(config=http2_config(tmp_path, max_header_block_size=4096))
    baseline = warm(server)
    client = H2Client.connect(server)
    sid = client.next_raw_sid()
    block = client.encode(client.headers_for("/hello.txt"))
    frames = [HeadersFrame(sid, data=block, flags=["END_STREAM"])]  # no END_HEADERS: CONTINUATION follows
    frames += [ContinuationFrame(sid, data=b"\x00" * piece) for _ in range(300)]  # never END_HEADERS
    client.send_frames(frames)
    ended_with(client, code)
    assert client.streams[sid].status is None
    client.close()
    assert_recovered(server, baseline)


@pytest.mark.parametrize("interloper", [
    lambda sid: PriorityFrame(sid, depends_on=0, stream_weight=15),
    lambda sid: RstStreamFrame(sid, error_code=0),
    lambda sid: PingFrame(0, opaque_data=b"12345678"),
    lambda sid: GoAwayFrame(0, last_stream_id=0),
    lambda sid: HeadersFrame(sid + 2, data=b"\x82", flags=["END_HEADERS"]),
    lambda sid: ContinuationFrame(sid + 2, data=b"\x82", flags=["END_HEADERS"]),  # another stream's
], ids=["priority", "rst_stream", "ping", "goaway", "headers", "continuation-of-another-stream"])
def test_any_frame_inside_a_header_block_is_a_protocol_error_not_a_traceback(edge, interloper):
    # RFC 9113 §6.10: a header block is a contiguous sequence of frames, nothing interleaved.
    server = edge()
    baseline = warm(server)
    client = H2Client.connect(server)
    sid = client.next_raw_sid()
    block = client.encode(client.headers_for("/hello.txt"))
    client.send_frames([HeadersFrame(sid, data=block[:2], flags=["END_STREAM"]), interloper(sid)])
    ended_with(client, PROTOCOL_ERROR)
    client.close()
    assert_recovered(server, baseline)
    assert "Traceback" not in server.stderr()


def test_a_header_block_at_the_limit_is_served(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, max_header_block_size=4096))
    client = H2Client.connect(server)
    sid = client.next_raw_sid()
    block = client.encode(client.headers_for("/hello.txt", headers={"x-pad": "p" * 3000}), huffman=False)
    assert 3000 < len(block) <= 4096
    pieces = [block[i:i + 500] for i in range(0, len(block), 500)]
    frames = [HeadersFrame(sid, data=pieces[0], flags=["END_STREAM"])]
    frames += [ContinuationFrame(sid, data=p) for p in pieces[1:-1]]
    frames.append(ContinuationFrame(sid, data=pieces[-1], flags=["END_HEADERS"]))
    client.send_frames(frames)
    assert client.response(sid).status == 200
    client.close()


def test_hpack_bomb_over_max_header_list_size(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, max_header_list_size=8192))
    baseline = warm(server)
    client = H2Client.connect(server)
    assert client.wait(lambda: bool(client.frames), 5)
    assert client.frames[0].settings.get(SettingCodes.MAX_HEADER_LIST_SIZE) == 8192
    sid = client.next_raw_sid()
    # One 4000-byte field enters the dynamic table, then 100 one-byte references to it: 4 KB on the
    # wire, 400 KB decoded.
    fields = client.headers_for("/hello.txt") + [(b"x-bomb", b"a" * 4000)] * 100
    block = client.encode(fields)
    assert len(block) < 4400
    client.send_frames([HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"])])
    ended_with(client, CALM)
    assert client.streams[sid].status is None
    client.close()
    assert_recovered(server, baseline)


def test_too_many_concurrent_streams(edge, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, max_concurrent_streams=4))
    baseline = warm(server)
    client = H2Client.connect(server, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})  # responses stay open
    assert client.wait(lambda: bool(client.frames), 5)
    assert client.frames[0].settings.get(SettingCodes.MAX_CONCURRENT_STREAMS) == 4
    first = [raw_request(client, "/1m.bin") for _ in range(4)]
    assert client.wait(lambda: all(client.streams[s].status == 200 for s in first), 10)
    extra = raw_request(client, "/1m.bin")
    client.wait(lambda: client.streams[extra].done or client.eof, 10)
    assert client.streams[extra].status is None, "a stream over the advertised limit was served"
    refused = client.streams[extra].reset in (PROTOCOL_ERROR, REFUSED)
    assert refused or client.goaway_info() is not None and client.goaway_info()[1] in (PROTOCOL_ERROR, CALM), \
        (client.streams[extra].reset, client.goaway_info())
    client.close()
    assert_recovered(server, baseline)


def test_max_requests_sends_a_graceful_goaway_and_answers_the_streams_before_it(edge, www: Path,
                                                                                  tmp_path: Path):
    server = edge(config=http2_config(tmp_path, max_requests=5))
    baseline = warm(server)
    data = (www / "100k.bin").read_bytes()
    # Windows open for everything up front and SETTINGS acknowledged before the requests: the client
    # has nothing left to send while it reads (see the next test for a client that has).
    client = H2Client.connect(server, auto_window=False, settings={SettingCodes.INITIAL_WINDOW_SIZE: MIB})
    client.grant(8 * MIB)
    assert client.wait(lambda: settings_exchanged(client), 5)
    sids = [client.request("/100k.bin") for _ in range(7)]
    assert sids == [1, 3, 5, 7, 9, 11, 13]
    assert client.closed(10), "the connection did not close after max_requests"
    graceful(client, 9)
    last = client.goaways[-1].last_stream_id
    assert last < 13, "the server took every stream: no request limit"
    for sid in sids:
        stream = client.streams[sid]
        if sid <= last:
            assert stream.status == 200 and stream.ended and bytes(stream.body) == data, \
                f"stream {sid}: {len(stream.body)} bytes\n{client.log()}\n{server.stderr()}"
        else:
            assert stream.status is None, f"stream {sid} after GOAWAY(last_stream_id={last}) was answered"
            assert stream.reset in (None, REFUSED), stream.reset
    assert not client.violations
    client.close()
    assert_recovered(server, baseline)




def test_the_last_response_before_max_requests_arrives_whole_while_the_client_pings(edge, www: Path,
                                                                                     tmp_path: Path):
    data = os.urandom(16 * MIB)
    (www / "16m.bin").write_bytes(data)
    server = edge(config=http2_config(tmp_path, max_requests=1))
    client = small_buffer_client(server, auto_window=False, settings={SettingCodes.INITIAL_WINDOW_SIZE: 32 * MIB})
    client.grant(32 * MIB)
    sid = client.request("/16m.bin")
    stream = client.streams[sid]
    pings = 0

    def done() -> bool:
        nonlocal pings
        if len(stream.body) >= pings * MIB:  # a PING per MiB read, as clients measuring the RTT do
            client.send_frames([PingFrame(0, opaque_data=b"%08d" % pings)])
            pings += 1
        return stream.done

    assert client.wait(done, 30), f"{len(stream.body)} of {len(data)} bytes, then eof={client.eof}\n{client.log(8)}"
    assert hashlib.sha256(stream.body).digest() == hashlib.sha256(data).digest()
    graceful(client, sid)
    client.close()


def test_an_idle_connection_is_closed_after_keepalive_timeout(edge):
    server = edge("--keepalive-timeout", "1")
    baseline = warm(server)
    client = H2Client.connect(server)
    silent = H2Client.connect(server)  # preface only, never a request
    sid = client.request("/hello.txt")
    assert client.response(sid).status == 200
    answered = time.monotonic()
    client.pump(0.5)
    assert not client.eof, "closed at once instead of after the keep-alive timeout"
    assert client.closed(6), "an idle HTTP/2 connection stayed open"
    assert time.monotonic() - answered >= 0.9
    graceful(client, sid)
    assert silent.closed(6)
    graceful(silent, 0)
    client.close()
    silent.close()
    assert settled_fds(server) == baseline


def test_an_open_stream_is_not_an_idle_connection(edge, www: Path, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, top_keepalive_timeout=1.0, stall_timeout=30.0))
    client = H2Client.connect(server, auto_window=False)
    sid = client.request("/1m.bin")
    assert client.wait(lambda: client.windows[sid] == 0, 5)
    client.pump(2.5)  # longer than the keep-alive timeout, with a response still owed
    assert not client.eof and not client.goaways
    client.grant(2 * MIB)
    client.grant(2 * MIB, sid)
    assert bytes(client.response(sid).body) == (www / "1m.bin").read_bytes()
    client.close()


# -- graceful stop --------------------------------------------------------------------------------------


def small_buffer_client(server: EdgeProcess, **kw) -> H2Client:
    """A prior-knowledge client whose socket has a 64 KiB receive buffer (a slow reader)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    client = H2Client(sock, **kw)
    client.start()
    return client


def settings_exchanged(client: H2Client) -> bool:
    """The server's SETTINGS arrived (and were acknowledged by h2) and our own were acknowledged."""
    settings = [f for f in client.frames if type(f) is SettingsFrame]
    return any("ACK" in f.flags for f in settings) and any("ACK" not in f.flags for f in settings)


def graceful(client: H2Client, sid: int) -> None:
    """Every GOAWAY was NO_ERROR and the last one still covers stream `sid`."""
    assert client.goaways, "no GOAWAY"
    assert all(g.error_code == NO_ERROR for g in client.goaways), [g.error_code for g in client.goaways]
    assert client.goaways[-1].last_stream_id >= sid, client.goaway_info()


def sigterm_mid_download(edge, www: Path, big_connection_window: bool = False, pause: float = 0.0,
                         **kw) -> tuple[EdgeProcess, H2Client, H2Stream, bytes]:
    """Start a 32 MiB HTTP/2 download with a slow reader, SIGTERM the server once 1 MiB arrived."""
    data = os.urandom(32 * MIB)
    (www / "32m.bin").write_bytes(data)
    server = edge()
    client = small_buffer_client(server, **kw)
    if not client.auto_window:
        client.grant(64 * MIB)
    elif big_connection_window:
        client.grant(16 * MIB)
    sid = client.request("/32m.bin")
    stream = client.streams[sid]
    assert client.wait(lambda: len(stream.body) >= MIB, 10)
    server.proc.send_signal(signal.SIGTERM)
    assert client.wait(lambda: bool(client.goaways), 10), "no GOAWAY on SIGTERM"
    assert not stream.done, "the download was over before the GOAWAY: nothing was in flight"
    assert server.alive()
    time.sleep(pause)  # a client that stops reading for a while
    return server, client, stream, data


def test_sigterm_lets_an_http2_download_finish_with_goaway_no_error(edge, www: Path):
    # Windows large enough for the whole file: the client sends nothing while it downloads.
    server, client, stream, data = sigterm_mid_download(
        edge, www, auto_window=False, settings={SettingCodes.INITIAL_WINDOW_SIZE: 64 * MIB})
    assert client.wait(lambda: stream.done, 30), f"{len(stream.body)} of {len(data)} bytes, eof={client.eof}"
    assert stream.ended and hashlib.sha256(stream.body).digest() == hashlib.sha256(data).digest()
    graceful(client, stream.sid)
    assert client.closed(10)
    assert server.proc.wait(15) == 0
    client.close()


def test_sigterm_drain_with_a_client_that_keeps_opening_its_window(edge, www: Path):
    # A browser-like client: large windows (8 MiB per stream, 16 MiB for the connection) kept open
    # with a WINDOW_UPDATE for every DATA frame it reads, so it is still sending when the last DATA
    # frame leaves the server; it stalls for 2.5 s after the first GOAWAY, so the drain's final
    # GOAWAY comes while the response is still owed.
    server, client, stream, data = sigterm_mid_download(
        edge, www, settings={SettingCodes.INITIAL_WINDOW_SIZE: 8 * MIB}, big_connection_window=True, pause=2.5)
    assert client.wait(lambda: stream.done, 30), \
        f"{len(stream.body)} of {len(data)} bytes, then eof={client.eof} (a reset loses the tail)"
    assert stream.ended and hashlib.sha256(stream.body).digest() == hashlib.sha256(data).digest()
    graceful(client, stream.sid)
    assert client.closed(10)
    assert server.proc.wait(15) == 0
    client.close()


# -- h2c Upgrade ----------------------------------------------------------------------------------------


def test_h2c_upgrade_answers_on_stream_1_then_more_streams(server, www: Path):
    client = H2Client(server.connect())
    head, stream = client.upgrade("/100k.bin")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert re.search(rb"(?im)^upgrade:\s*h2c\s*$", head)
    client.response(1)
    assert stream.status == 200 and bytes(stream.body) == (www / "100k.bin").read_bytes()
    assert type(client.frames[0]) is SettingsFrame, "the server preface comes first after the 101"
    sid = client.request("/hello.txt")
    assert sid == 3 and client.response(sid).status == 200
    assert client.h2_error is None and not client.violations
    client.close()


def test_h2c_upgrade_for_head(server, www: Path):
    client = H2Client(server.connect())
    _, stream = client.upgrade("/1m.bin", method="HEAD")
    client.response(1)
    assert stream.status == 200 and stream.headers["content-length"] == str(MIB) and not stream.body
    client.close()


def test_upgrade_for_a_post_stays_http1(server):
    sock = server.connect()
    sock.sendall(b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                 b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 0\r\n\r\n")
    data = b""
    sock.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 405 "), data[:100]


# -- real clients ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_srv(edge, site: Path, tls_args) -> EdgeProcess:
    return edge(*tls_args, config=site)


def run_curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([CURL, "-sS", "--max-time", "20", *args], capture_output=True, timeout=timeout)


@needs_curl
@pytest.mark.parametrize("mode", ["--http2-prior-knowledge", "--http2"])
def test_curl_over_cleartext(srv, www: Path, tmp_path: Path, mode: str):
    out = tmp_path / "body"
    r = run_curl(mode, "-o", str(out), "-w", "%{http_version} %{http_code}", srv.url + "/1m.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"2 200"
    assert out.read_bytes() == (www / "1m.bin").read_bytes()
    r = run_curl(mode, "-w", "%{http_version} %{http_code}", "-o", str(out), "-r", "10-19", srv.url + "/data.bin")
    assert r.stdout == b"2 206" and out.read_bytes() == (www / "data.bin").read_bytes()[10:20]


@needs_curl
def test_curl_http2_over_tls(tls_srv, www: Path, tmp_path: Path, tls_cert):
    out = tmp_path / "body"
    r = run_curl("-k", "--http2", "-o", str(out), "-w", "%{http_version} %{http_code}", tls_srv.tls_url + "/1m.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"2 200" and out.read_bytes() == (www / "1m.bin").read_bytes()
    r = run_curl("--cacert", str(tls_cert[0]), "--http2", "-o", str(out), "-w", "%{http_version} %{http_code}",
                 "-H", "Accept-Encoding: gzip", tls_srv.tls_url + "/a.js")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"2 200" and gzip.decompress(out.read_bytes()) == JS


@needs_curl
def test_curl_http11_over_tls_big_file_and_range(tls_srv, www: Path, tmp_path: Path, tls_cert):
    data = os.urandom(5 * MIB + 123)
    (www / "5m.bin").write_bytes(data)
    out = tmp_path / "body"
    ca = ("--cacert", str(tls_cert[0]))
    r = run_curl(*ca, "--http1.1", "-o", str(out), "-w", "%{http_version} %{http_code}", tls_srv.tls_url + "/5m.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"1.1 200"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    r = run_curl(*ca, "--http1.1", "-o", str(out), "-w", "%{http_version} %{http_code}", "-r", "1048570-3145727",
                 tls_srv.tls_url + "/5m.bin")
    assert r.stdout == b"1.1 206" and out.read_bytes() == data[1048570:3145728]
    # Several files on one keep-alive connection.
    r = run_curl(*ca, "--http1.1", "-w", "%{num_connects} ", "-o", "/dev/null", "-o", "/dev/null",
                 tls_srv.tls_url + "/1m.bin", tls_srv.tls_url + "/hello.txt")
    assert r.stdout.split() == [b"1", b"0"]


def test_httpx_http2_over_tls(tls_srv, www: Path, tls_cert):
    ctx = ssl.create_default_context(cafile=str(tls_cert[0]))
    with httpx.Client(http2=True, verify=ctx, base_url=tls_srv.tls_url, timeout=10) as client:
        r = client.get("/1m.bin")
        assert r.http_version == "HTTP/2" and r.status_code == 200
        assert r.content == (www / "1m.bin").read_bytes()
        r = client.get("/data.bin", headers={"Range": "bytes=5-9"})
        assert r.status_code == 206 and r.content == (www / "data.bin").read_bytes()[5:10]
        r = client.get("/missing")
        assert r.status_code == 404 and r.http_version == "HTTP/2"
        r = client.get("/assets/x.css")
        assert r.headers["cache-control"] == RULE_VALUE


@needs_nghttp
def test_nghttp_prior_knowledge(srv):
    r = subprocess.run([NGHTTP, "-nv", srv.url + "/hello.txt"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    m = re.search(r"recv \(stream_id=(\d+)\) :status: 200", r.stdout)
    assert m, r.stdout
    assert f"recv DATA frame <length=12, flags=0x01, stream_id={m.group(1)}>" in r.stdout, r.stdout
    r = subprocess.run([NGHTTP, srv.url + "/hello.txt"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"hello world\n"


def h2load(url: str, *extra: str) -> str:
    r = subprocess.run([H2LOAD, "-n", "2000", "-c", "4", "-m", "10", *extra, url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@needs_h2load
def test_h2load_over_h2c(srv):
    out = h2load(srv.url + "/hello.txt")
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out
    assert h2_get(srv, "/hello.txt").status == 200


@needs_h2load
def test_h2load_over_tls(tls_srv):
    out = h2load(tls_srv.tls_url + "/1k.bin")
    assert "Application protocol: h2" in out, out
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out


def test_client_goaway_mid_download_releases_the_file(edge, www: Path, tmp_path: Path):
    """A client GOAWAY while a body is being sent frees its file: with a one-entry cache the fd must close."""
    cfg = tmp_path / "one.toml"
    cfg.write_text("[file_cache]\nmax_entries = 1\n")
    (www / "8m.bin").write_bytes(os.urandom(8 * MIB))
    server = edge(config=cfg)
    big = str((www / "8m.bin").resolve())
    client = H2Client.connect(server, auto_window=False)
    client.request("/8m.bin")
    assert wait_for(lambda: big in fd_targets(server.worker_pid), 5)
    client.send_frames([GoAwayFrame(0, last_stream_id=0, error_code=0)])
    assert client.closed(10)
    client.close()
    assert request(server, "/hello.txt")[0] == 200  # evicts the big file from the one-entry cache
    assert wait_for(lambda: big not in fd_targets(server.worker_pid), 5), "the file's fd leaked"


def test_a_drain_while_a_failed_connection_lingers_stops_cleanly(edge):
    # After a connection error the connection lingers (GOAWAY out, reading until the peer closes): a drain
    # then must not write to it again.
    server = edge()
    sock = server.connect()
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                     + b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"1234567")  # a PING of 7 bytes
        sock.settimeout(5)
        time.sleep(0.3)
        assert b"\x07\x00\x00\x00\x00\x00" in sock.recv(1000), "GOAWAY"
        assert server.stop(signal.SIGTERM) == 0
    finally:
        sock.close()
    assert "Traceback" not in server.stderr() and "RuntimeError" not in server.stderr(), server.stderr()[-1500:]
    assert "served 0 requests, 0 bytes" not in server.stderr(), "the worker's stats were lost"


def test_a_window_made_negative_by_settings_resumes_when_it_opens(server):
    # RFC 9113 §6.9.2: lowering SETTINGS_INITIAL_WINDOW_SIZE can make a stream's window negative; the
    # stream waits until WINDOW_UPDATEs bring it above 0 again (it was dropped as if closed).
    client = H2Client.connect(server, settings={SettingCodes.INITIAL_WINDOW_SIZE: 3}, auto_window=False)
    try:
        sid = client.request("/hello.txt")
        assert client.wait(lambda: len(client.streams[sid].body) == 3, 10)
        client.send_frames([SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 2})])  # window -1
        client.pump(0.3)
        client.grant(2, sid)  # +1: 1 byte may go
        assert client.wait(lambda: len(client.streams[sid].body) == 4, 10)
        client.grant(100, sid)
        assert client.wait(lambda: client.streams[sid].done, 10)
        assert bytes(client.streams[sid].body) == b"hello world\n"
    finally:
        client.close()
