"""HTTP/1.1 adapter tables, in memory: request bytes in, response bytes out, through edge's real Worker.

Each row sends bytes (one segment, several, or cut byte by byte) to an `H1Connection` on the harness's
MemoryTransport and checks the responses in order (status, fields, body; some heads byte for byte with
the Date masked), that nothing else came, and whether the connection ended. Rows run over both body
paths: pread + write (as over TLS) and sendfile(2) to a socketpair (as over cleartext TCP).

The second half is static-file semantics through the adapter (index files, hostile paths, dotfiles,
symlinks, validators and preconditions, ranges, content types, precompressed variants, header rules):
the rows tests/test_static.py ran against an `edge serve` process, with the same assertions.
"""

from __future__ import annotations

import gzip
import os
import re
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import pytest

from conftest import parse_byteranges

from adapter_harness import (
    HEADER_RULE,
    JS,
    OLD_MTIME,
    PREFACE,
    RULE_VALUE,
    SETTINGS,
    Conn,
    Edge,
    H1Response,
    H2Reader,
    make_config,
    make_root,
    parse_h1,
    settings_frame,
)

IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT$")
SECRET = b"TOP-SECRET-outside-the-root\n"
MODES = ["tls", "sendfile"]


# -- the document root and the worker ----------------------------------------------------------------


def minimal_png() -> bytes:
    """A real 1x1 RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harness's root plus what the static rows look at; a secret file lives beside the root."""
    base = tmp_path_factory.mktemp("h1io")
    www = make_root(base / "www")
    (base / "secret.txt").write_bytes(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "file.txt").write_bytes(SECRET)
    (www / ".env").write_text("API_KEY=dotenv-value\n")
    (www / ".git").mkdir()
    (www / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (www / "sub" / ".hidden").write_text("hidden\n")
    (www / "link-in.txt").symlink_to("hello.txt")
    (www / "link-out.txt").symlink_to(base / "secret.txt")
    (www / "linkdir").symlink_to(base / "outside", target_is_directory=True)
    (www / "weird").mkdir()
    (www / "weird" / "index.html").mkdir()  # an "index file" that is a directory
    for name, data in {"a.html": b"<p>x</p>\n", "a.css": b"p{}\n", "b.js": b"let x;\n", "a.mjs": b"export {};\n",
                       "a.json": b"{}\n", "a.wasm": b"\x00asm\x01\x00\x00\x00", "a.webp": b"RIFF\x00\x00\x00\x00WEBP",
                       "a.avif": b"\x00\x00\x00\x1cftypavif", "a.woff2": b"wOF2\x00\x01\x00\x00",
                       "a.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>\n', "picture": minimal_png(),
                       "README": b"Just some plain text, no extension at all.\nSecond line.\n"}.items():
        (www / name).write_bytes(data)
    future = time.time() + 86400
    (www / "future.txt").write_text("from the future\n")
    os.utime(www / "future.txt", (future, future))
    return www


@pytest.fixture
def make_edge(root: Path) -> Iterator[Callable[..., Edge]]:
    """A factory of in-memory workers over `root` (settings: TOML-shaped keys); all closed afterwards."""
    made: list[Edge] = []

    def make(settings: dict | None = None) -> Edge:
        edge = Edge(make_config(root, {**HEADER_RULE, **(settings or {})}))
        made.append(edge)
        return edge

    yield make
    for edge in made:
        edge.close()


@pytest.fixture
def edge(make_edge: Callable[..., Edge]) -> Edge:
    """A worker with the default configuration (plus the /assets/* header rule)."""
    return make_edge()


# -- helpers -------------------------------------------------------------------------------------------


def get(path: str, host: str = "x", extra: str = "", method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    """A request head as bytes."""
    return f"{method} {path} {version}\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")


def assert_common(resp: H1Response, edge: Edge) -> None:
    """Date (an IMF-fixdate: the worker's current one), Server and Content-Length are on every response."""
    fields = resp.fields
    assert IMF_FIXDATE.match(fields.get("date", "")), resp.head
    assert fields["date"] == edge.worker.date_value.decode("ascii"), (fields["date"], edge.worker.date_value)
    assert fields.get("server"), resp.head
    assert fields.get("content-length", "").isdigit(), resp.head


def assert_alive(edge: Edge) -> None:
    """The worker still answers a fresh connection."""
    conn = edge.connect()
    conn.send(get("/hello.txt"))
    (resp,), rest = parse_h1(conn.received)
    assert (resp.status, resp.body, rest) == (200, b"hello world\n", b"")


def exchange(edge: Edge, data: bytes, *, mode: str = "tls",
             methods: tuple[str, ...] = ()) -> tuple[list[H1Response], Conn]:
    """Send `data` as one segment on a fresh connection; the complete responses and the connection."""
    conn = edge.connect(tls=mode == "tls")
    conn.send(data)
    responses, rest = parse_h1(conn.received, methods)
    assert rest == b"", f"bytes after the last complete response: {rest[:200]!r}"
    return responses, conn


def fetch(edge: Edge, target: str, fields: dict[str, str] | None = None, method: str = "GET") -> H1Response:
    """One request on a fresh connection; its (only) response, with the common fields checked."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (fields or {}).items())
    (resp,), _ = exchange(edge, get(target, extra=extra, method=method), methods=(method,))
    assert_common(resp, edge)
    return resp


# -- the protocol table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    """One expected response: status, body (bytes, a file under the root, or (file, first, end)), fields."""

    status: int
    body: bytes | str | tuple[str, int, int] | None = None
    method: str = "GET"
    fields: tuple[tuple[str, str], ...] = ()  # exact values
    absent: tuple[str, ...] = ()
    present: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """Client segments (each sent, then the loop settles), the answers in order, and the end."""

    segments: tuple[bytes, ...]
    answers: tuple[Want, ...]
    closed: bool
    eof: bool = False  # the client half-closes after its last segment
    absent_bytes: tuple[bytes, ...] = ()  # must appear nowhere in what the server sent


HELLO = Want(200, b"hello world\n", absent=("connection",))
CLOSE = (("Connection", "close"),)
ALLOW = (("Allow", "GET, HEAD"),)
BAD = Want(400, b"400 Bad Request\n", fields=CLOSE)
NO_LEAK = (b"<h1>home</h1>", b"hello world")


def _methods_row(method: str) -> Row:
    return Row((f"{method} /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(),),
               (Want(405, b"405 Method Not Allowed\n", fields=ALLOW),), closed=method == "BREW")


_DEEP = 150
_DEEP_PATHS = ["/hello.txt", "/1k.bin", "/nope", "/index.html"]
_DEEP_BODY = {"/hello.txt": b"hello world\n", "/1k.bin": "1k.bin", "/index.html": "index.html"}
_SMUGGLED = get("/index.html")

BAD_REQUESTS = {  # each: 400, Connection: close, one answer, nothing else
    "garbage-request-line": b"HELLO\r\n\r\n",
    "garbage-binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "missing-target": b"GET HTTP/1.1\r\nHost: x\r\n\r\n",
    "cl-and-te": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "te-and-cl": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                  b"0\r\n\r\nGET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "duplicate-cl": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
                     b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "conflicting-cl": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
                       b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "negative-cl": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "non-digit-cl": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "plus-sign-cl": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
    "version-3.7": b"GET /hello.txt HTTP/3.7\r\nHost: x\r\n\r\n",
    "version-2.0": b"GET /hello.txt HTTP/2.0\r\nHost: x\r\n\r\n",
    "version-1.2": b"GET /hello.txt HTTP/1.2\r\nHost: x\r\n\r\n",
    "version-lower-case": b"GET /hello.txt http/1.1\r\nHost: x\r\n\r\n",
    "version-missing (HTTP/0.9 shape)": b"GET /hello.txt\r\n\r\n",
    "missing-host": b"GET /hello.txt HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "two-hosts-http10": b"GET /hello.txt HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    "space-in-header-name": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    "space-before-colon": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Thing : 1\r\n\r\n",
    "obs-fold": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n",
    "nul-in-field-value": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    "bare-lf-line-ends": b"GET /hello.txt HTTP/1.1\nHost: x\n\n",
    "preface-look-alike": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
}

EVERY = [  # (target, extra fields, method, status): every answer has Date, Server, Content-Length
    ("/hello.txt", "", "GET", 200),
    ("/hello.txt", "", "HEAD", 200),
    ("/", "", "GET", 200),
    ("/1m.bin", "", "GET", 200),
    ("/1k.bin", "Range: bytes=0-9\r\n", "GET", 206),
    ("/1k.bin", "Range: bytes=0-9,20-29\r\n", "GET", 206),
    ("/1k.bin", "Range: bytes=5000-\r\n", "GET", 416),
    ("/sub", "", "GET", 301),
    ("/missing", "", "GET", 404),
    ("/noindex/", "", "GET", 404),
    ("/hello.txt", "", "DELETE", 405),
    ("/hello.txt", "If-None-Match: *\r\n", "GET", 304),
    ("/hello.txt", "If-Match: \"nope\"\r\n", "GET", 412),
    ("/../etc/passwd", "", "GET", 400),
]

ROWS: dict[str, Row] = {
    "keep-alive: one request at a time": Row(
        (get("/hello.txt"), get("/"), get("/1k.bin"), get("/100k.bin"), get("/sub/"), get("/hello.txt")),
        (HELLO, Want(200, "index.html", absent=("connection",)), Want(200, "1k.bin", absent=("connection",)),
         Want(200, "100k.bin", absent=("connection",)), Want(200, "sub/index.html", absent=("connection",)), HELLO),
        closed=False),
    "pipelined: answered in order": Row(
        (get("/hello.txt") + get("/1m.bin") + get("/missing.txt") + get("/1k.bin", method="HEAD") + get("/1k.bin")
         + get("/index.html") + get("/1m.bin", extra="Range: bytes=10-19\r\n"),),
        (HELLO, Want(200, "1m.bin"), Want(404, b"404 Not Found\n"),
         Want(200, b"", "HEAD", fields=(("Content-Length", "1024"),)), Want(200, "1k.bin"), Want(200, "index.html"),
         Want(206, ("1m.bin", 10, 20))),
        closed=False),
    "pipelined: deeper than the parse queue": Row(
        (b"".join(get(_DEEP_PATHS[i % 4] + f"?i={i}") for i in range(_DEEP)),),
        tuple(Want(404) if _DEEP_PATHS[i % 4] == "/nope" else Want(200, _DEEP_BODY[_DEEP_PATHS[i % 4]])
              for i in range(_DEEP)),
        closed=False),
    "pipelined: then half-close, all answered, then closed": Row(
        (get("/hello.txt") + get("/100k.bin") + get("/nope"),),
        (HELLO, Want(200, "100k.bin"), Want(404)), closed=True, eof=True),
    "pipelined: garbage after a good request": Row(
        (get("/hello.txt") + b"NOT HTTP AT ALL\r\n\r\n" + get("/index.html"),),
        (HELLO, BAD), closed=True, absent_bytes=(b"<h1>home</h1>",)),
    "pipelined: nothing after Connection: close is answered": Row(
        (get("/hello.txt", extra="Connection: close\r\n") + get("/index.html"),),
        (Want(200, b"hello world\n", fields=CLOSE),), closed=True, absent_bytes=(b"<h1>home</h1>",)),
    "HTTP/1.0 closes by default": Row(
        (b"GET /hello.txt HTTP/1.0\r\n\r\n",), (Want(200, b"hello world\n", fields=CLOSE),), closed=True),
    "HTTP/1.0 keep-alive keeps the connection": Row(
        (b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         b"GET /1k.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         b"GET /hello.txt HTTP/1.0\r\n\r\n"),
        (Want(200, b"hello world\n", fields=(("Connection", "keep-alive"),)),
         Want(200, "1k.bin", fields=(("Connection", "keep-alive"),)),
         Want(200, b"hello world\n", fields=(("Connection", "keep-alive"),)),
         Want(200, b"hello world\n", fields=CLOSE)),
        closed=True),
    "HTTP/1.0 without Host is fine": Row(
        (b"GET /hello.txt HTTP/1.0\r\n\r\n",), (Want(200, b"hello world\n", fields=CLOSE),), closed=True),
    "Connection: close is honoured": Row(
        (get("/hello.txt"), get("/hello.txt", extra="Connection: close\r\n")),
        (HELLO, Want(200, b"hello world\n", fields=CLOSE)), closed=True),
    "HEAD: fields, no body": Row(
        (get("/100k.bin", method="HEAD"), get("/hello.txt"), get("/missing", method="HEAD"), get("/hello.txt")),
        (Want(200, b"", "HEAD", fields=(("Content-Length", "102400"), ("Content-Type", "application/octet-stream")),
              present=("etag", "last-modified")),
         HELLO, Want(404, b"", "HEAD", fields=(("Content-Length", "14"),)), HELLO),
        closed=False),
    **{f"method {m}: 405 with Allow": _methods_row(m) for m in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW")},
    "POST with a body: 405, the body is not a request": Row(
        ((b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(_SMUGGLED)) + _SMUGGLED,),
        (Want(405, b"405 Method Not Allowed\n", fields=ALLOW + CLOSE),), closed=True, absent_bytes=(b"<h1>home</h1>",)),
    "GET with a Content-Length body: answered, then closed unread": Row(
        (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + _SMUGGLED,),
        (Want(200, b"hello world\n", fields=CLOSE),), closed=True, absent_bytes=(b"<h1>home</h1>",)),
    "GET with a chunked body: answered, then closed unread": Row(
        (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
         + _SMUGGLED,),
        (Want(200, b"hello world\n", fields=CLOSE),), closed=True, absent_bytes=(b"<h1>home</h1>",)),
    "Expect: 100-continue on a GET: no 100, the answer": Row(
        (get("/hello.txt", extra="Expect: 100-continue\r\n"), get("/hello.txt")), (HELLO, HELLO), closed=False,
        absent_bytes=(b" 100 ",)),
    "Expect: 100-continue with a body: no 100, 405, closed": Row(
        (b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",),
        (Want(405, fields=ALLOW + CLOSE),), closed=True, absent_bytes=(b" 100 ",)),
    "Upgrade: websocket is answered as HTTP/1.1, then closed": Row(
        (get("/hello.txt", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n") + _SMUGGLED,),
        (Want(200, b"hello world\n", fields=CLOSE),), closed=True, absent_bytes=(b"<h1>home</h1>",)),
    "empty Host on HTTP/1.1 is a Host": Row(
        (b"GET /hello.txt HTTP/1.1\r\nHost:\r\n\r\n",), (HELLO,), closed=False),
    "target over 8 KiB: 414": Row(
        (get("/" + "a" * (8 * 1024 + 10)),), (Want(414, b"414 URI Too Long\n", fields=CLOSE),), closed=True),
    "target just under 8 KiB": Row((get("/hello.txt?" + "q" * (8 * 1024 - 200)),), (HELLO,), closed=False),
    "head over 64 KiB: 431": Row(
        (get("/hello.txt", extra="".join(f"X-Filler-{i}: {'v' * 90}\r\n" for i in range(800))),),
        (Want(431, b"431 Request Header Fields Too Large\n", fields=CLOSE),), closed=True),
    "head under 64 KiB": Row(
        (get("/hello.txt", extra="".join(f"X-Filler-{i}: {'v' * 90}\r\n" for i in range(400))),), (HELLO,),
        closed=False),
    **{f"malformed: {name}": Row((data,), (BAD,), closed=True, absent_bytes=NO_LEAK)
       for name, data in BAD_REQUESTS.items()},
    "a bad request after a good one": Row(
        (get("/hello.txt"), b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        (HELLO, BAD), closed=True),
    **{f"every answer: {method} {target} {extra.strip()}".rstrip(): Row(
        # (a 400 for the path, not the framing, keeps the connection)
        (get(target, extra=extra, method=method),), (Want(status, method=method),), closed=False)
       for target, extra, method, status in EVERY},
    "first segment 'P', then OST: not the HTTP/2 preface": Row(
        (b"P", b"OST /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"), (Want(405, fields=ALLOW),), closed=False),
    "first segment 'PU', then T: not the HTTP/2 preface": Row(
        (b"PU", b"T /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"), (Want(405, fields=ALLOW),), closed=False),
}


def _body(root: Path, want: Want) -> bytes | None:
    if isinstance(want.body, str):
        return (root / want.body).read_bytes()
    if isinstance(want.body, tuple):
        name, first, end = want.body
        return (root / name).read_bytes()[first:end]
    return want.body


def check_row(edge: Edge, root: Path, row: Row, conn: Conn) -> None:
    """What `conn` received is exactly the row's answers, and the connection ended (or not) as it says."""
    responses, rest = parse_h1(conn.received, [w.method for w in row.answers])
    assert [r.status for r in responses] == [w.status for w in row.answers], conn.received[:600]
    assert rest == b"", f"more than the expected answers: {rest[:300]!r}"
    for resp, want in zip(responses, row.answers):
        assert_common(resp, edge)
        assert not resp.informational, resp.informational[0].head
        body = _body(root, want)
        if body is not None:
            assert resp.body == body, (want, resp.body[:100])
        if want.method != "HEAD" and resp.status != 304:
            assert int(resp.fields["content-length"]) == len(resp.body)
        for name, value in want.fields:
            assert resp.get(name) == value, (name, resp.head)
        for name in want.absent:
            assert resp.get(name) is None, (name, resp.head)
        for name in want.present:
            assert resp.get(name), (name, resp.head)
    for needle in row.absent_bytes:
        assert needle not in conn.received, needle
    assert conn.transport.late_writes == [], "bytes written after close()"
    if row.closed:
        assert conn.closed, "the connection should have been closed"
    else:
        assert not conn.transport.is_closing(), "the connection should stay open"
    assert_alive(edge)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(ROWS))
def test_row_in_segments(edge: Edge, root: Path, name: str, mode: str) -> None:
    """Each segment as one read, the loop settled after each: the row's answers, in order, and its end."""
    row = ROWS[name]
    conn = edge.connect(tls=mode == "tls")
    for segment in row.segments:
        conn.send(segment)
    if row.eof:
        conn.send_eof()
    check_row(edge, root, row, conn)


@pytest.mark.parametrize("name", [n for n, r in ROWS.items() if sum(map(len, r.segments)) <= 128 * 1024])
def test_row_cut_byte_by_byte(edge: Edge, root: Path, name: str) -> None:
    """The same rows with every segment cut into 1-byte reads (64-byte reads past 2 KiB): the same answers."""
    row = ROWS[name]
    conn = edge.connect()
    for segment in row.segments:
        conn.send_split(segment, 1 if len(segment) <= 2048 else 64)
    if row.eof:
        conn.send_eof()
    check_row(edge, root, row, conn)


def test_http10_close_option_wins_over_keep_alive(edge: Edge) -> None:
    """HTTP/1.0 with both tokens: 'close' decides (RFC 9112 §9.3), so the answer says close and the connection ends."""
    responses, conn = exchange(edge, b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
    assert responses[0].status == 200
    assert responses[0].get("connection") == "close"
    assert conn.closed


def test_http11_close_option_wins_over_keep_alive(edge: Edge) -> None:
    """HTTP/1.1 with 'keep-alive, close': the connection ends after the answer."""
    responses, conn = exchange(edge, get("/hello.txt", extra="Connection: keep-alive, close\r\n"))
    assert [(r.status, r.get("connection")) for r in responses] == [(200, "close")]
    assert conn.closed


# -- byte-exact heads ------------------------------------------------------------------------------------

DATA_LM = formatdate(OLD_MTIME, usegmt=True)


def _exact(status_line: str, *fields: str, connection: str | None = None) -> bytes:
    lines = [status_line, "Date: <date>", "Server: edge", *fields]
    if connection is not None:
        lines.append(f"Connection: {connection}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_DATA_FIELDS = ("Content-Type: application/octet-stream", "Content-Length: 100000", f"Last-Modified: {DATA_LM}",
                "ETag: <etag>", "Accept-Ranges: bytes")

EXACT = {  # request bytes -> the head, byte for byte (Date and the file's ETag masked)
    "200": (get("/data.bin"), _exact("HTTP/1.1 200 OK", *_DATA_FIELDS)),
    "HEAD 200": (get("/data.bin", method="HEAD"), _exact("HTTP/1.1 200 OK", *_DATA_FIELDS)),
    "HTTP/1.0 keep-alive": (b"GET /data.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                            _exact("HTTP/1.1 200 OK", *_DATA_FIELDS, connection="keep-alive")),
    "HTTP/1.0": (b"GET /data.bin HTTP/1.0\r\n\r\n", _exact("HTTP/1.1 200 OK", *_DATA_FIELDS, connection="close")),
    "304": (get("/data.bin", extra="If-None-Match: *\r\n"),
            _exact("HTTP/1.1 304 Not Modified", "ETag: <etag>", "Content-Length: 100000")),
    "206": (get("/data.bin", extra="Range: bytes=10-19\r\n"),
            _exact("HTTP/1.1 206 Partial Content", "Content-Type: application/octet-stream", "Content-Length: 10",
                   f"Last-Modified: {DATA_LM}", "ETag: <etag>", "Accept-Ranges: bytes",
                   "Content-Range: bytes 10-19/100000")),
    "416": (get("/data.bin", extra="Range: bytes=200000-\r\n"), None),
    "404": (get("/missing"), _exact("HTTP/1.1 404 Not Found", "Content-Type: text/plain; charset=utf-8",
                                    "Content-Length: 14")),
    "405": (get("/data.bin", method="DELETE"), _exact("HTTP/1.1 405 Method Not Allowed",
                                                      "Content-Type: text/plain; charset=utf-8", "Content-Length: 23",
                                                      "Allow: GET, HEAD")),
    "400": (b"HELLO\r\n\r\n", _exact("HTTP/1.1 400 Bad Request", "Content-Type: text/plain; charset=utf-8",
                                     "Content-Length: 16", connection="close")),
    "414": (get("/" + "a" * 9000), _exact("HTTP/1.1 414 URI Too Long", "Content-Type: text/plain; charset=utf-8",
                                          "Content-Length: 17", connection="close")),
    "301": (get("/sub?x=1"), _exact("HTTP/1.1 301 Moved Permanently", "Content-Type: text/plain; charset=utf-8",
                                    "Content-Length: 22", "Location: /sub/?x=1")),
}


@pytest.mark.parametrize("name", [n for n, (_, head) in EXACT.items() if head is not None])
def test_heads_are_byte_exact(edge: Edge, name: str) -> None:
    """Status line and fields byte for byte, in order (Date and ETag masked)."""
    data, expected = EXACT[name]
    method = data.split(b" ", 1)[0].decode()
    (resp,), _ = exchange(edge, data, methods=(method,))
    etag = resp.get("etag")
    head = resp.masked_head
    if etag is not None:
        assert re.fullmatch(r'"[^"]+"', etag), etag  # strong
        head = head.replace(f"ETag: {etag}\r\n".encode(), b"ETag: <etag>\r\n")
    assert head == expected


def test_416_names_the_size(edge: Edge) -> None:
    """416 carries Content-Range: bytes */size and a plain body."""
    (resp,), _ = exchange(edge, EXACT["416"][0])
    assert resp.status == 416 and resp.get("content-range") == "bytes */100000"
    assert int(resp.get("content-length")) == len(resp.body) > 0


# -- switching to HTTP/2, sendfile, stats ----------------------------------------------------------------


def test_the_http2_preface_may_come_a_byte_at_a_time(edge: Edge) -> None:
    """The preface cut into 24 reads, then SETTINGS: the server's SETTINGS come first, then its ACK."""
    conn = edge.connect()
    conn.send_split(PREFACE, 1)
    conn.send(settings_frame())
    reader = H2Reader()
    frames = reader.feed(conn.received)
    assert [(f.kind, f.flags) for f in frames] == [(SETTINGS, 0), (SETTINGS, 1)]
    assert reader.rest == b""


@pytest.mark.parametrize("mode, sendfile_calls", [("sendfile", True), ("tls", False)])
def test_the_body_path_of_each_mode(edge: Edge, root: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                                    sendfile_calls: bool) -> None:
    """Cleartext sends file bodies with sendfile(2), TLS with pread + write: the harness runs both paths."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", counting)
    (resp,), _ = exchange(edge, get("/1m.bin"), mode=mode)
    assert resp.body == (root / "1m.bin").read_bytes()
    assert bool(calls) == sendfile_calls


def test_sendfile_waits_for_a_full_socket(edge: Edge, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cleartext: with the socket full, sendfile stops and goes on once the client reads (the loop's writer)."""
    dups: list[int] = []
    real = os.dup

    def counting(fd: int) -> int:
        dups.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "dup", counting)
    conn = edge.connect(tls=False)
    conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.send(get("/1m.bin") + get("/hello.txt"))
    responses, rest = parse_h1(conn.received)
    assert [r.status for r in responses] == [200, 200] and rest == b""
    assert responses[0].body == (root / "1m.bin").read_bytes() and responses[1].body == b"hello world\n"
    assert dups == [conn.transport.sock.fileno()], "the transfer never waited for the socket (no watched dup)"


def test_counters_follow_the_answers(edge: Edge) -> None:
    """The worker's counters: one connection, three answers by status, the bytes written."""
    from edge.stats import BYTES_OUT, CONNECTIONS_ACTIVE, CONNECTIONS_TOTAL, STATUS_FIELD

    stats = edge.worker.stats
    responses, conn = exchange(edge, get("/hello.txt") + get("/missing") + get("/hello.txt", method="HEAD"),
                               methods=("GET", "GET", "HEAD"))
    assert [r.status for r in responses] == [200, 404, 200]
    assert stats[CONNECTIONS_TOTAL] == 1 and stats[CONNECTIONS_ACTIVE] == 1
    assert stats[STATUS_FIELD[200]] == 2 and stats[STATUS_FIELD[404]] == 1
    assert stats[BYTES_OUT] == len(conn.received)
    conn.drop()
    assert stats[CONNECTIONS_ACTIVE] == 0


# -- static semantics through the adapter (as tests/test_static.py ran them end to end) ----------------------


def test_index_html_for_root_and_subdirectory(edge: Edge, root: Path) -> None:
    """/ and /sub/ are their index.html files."""
    r = fetch(edge, "/")
    assert r.status == 200 and r.body == (root / "index.html").read_bytes()
    assert r.get("content-type").startswith("text/html")
    r = fetch(edge, "/sub/")
    assert r.status == 200 and r.body == (root / "sub" / "index.html").read_bytes()


def test_directory_without_slash_redirects_with_query(edge: Edge) -> None:
    """A directory without its slash: 301 to it, the query kept; following it gives the index."""
    r = fetch(edge, "/sub")
    assert r.status == 301 and r.get("location") == "/sub/"
    r = fetch(edge, "/sub?x=1&y=two")
    assert r.status == 301 and r.get("location") == "/sub/?x=1&y=two"
    r = fetch(edge, fetch(edge, "/sub?x=1").get("location"))
    assert r.status == 200 and r.body == b"<p>sub</p>\n"


def test_directory_without_index_is_404_not_a_listing(edge: Edge) -> None:
    """No index file: 404, no listing; the files in it are still served."""
    r = fetch(edge, "/noindex/")
    assert r.status == 404 and b"a.txt" not in r.body
    assert fetch(edge, "/noindex/a.txt").body == b"a\n"


HOSTILE = [
    "/../secret.txt", "/../../secret.txt", "/sub/../../secret.txt", "/./../secret.txt", "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt", "/.%2e/secret.txt", "/%2e./secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt",
    "/sub%2f..%2f..%2fsecret.txt", "/%2f..%2fsecret.txt", "/..\\secret.txt", "/..%5csecret.txt",
    "/sub\\..\\..\\secret.txt", "//etc/passwd", "/../../../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/hello.txt%00", "/hello.txt%00.html", "/%00/../secret.txt", "/%zz",
    "/%2", "/..%c0%afsecret.txt", "/%252e%252e/secret.txt", "http://x/../../secret.txt",
    "http://x/..%2f..%2fsecret.txt", "secret.txt", "*",
]


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_paths_never_leave_the_root(edge: Edge, target: str) -> None:
    """Traversal in every spelling: 400 or 404, never a byte from outside the root."""
    r = fetch(edge, target)
    assert r.status in (400, 404), (target, r.status)
    assert SECRET not in r.body and b"root:" not in r.body
    assert_alive(edge)


def test_absolute_filesystem_path_with_double_slash_stays_in_root(edge: Edge, root: Path) -> None:
    """/<absolute path of the secret> is looked up under the root: 404."""
    r = fetch(edge, "/" + str(root.parent / "secret.txt"))
    assert r.status == 404 and SECRET not in r.body


def test_encoded_but_harmless_paths_still_work(edge: Edge) -> None:
    """Percent-encoded dot segments that stay inside, and encoded letters, are served."""
    assert fetch(edge, "/sub/%2e%2e/hello.txt").body == b"hello world\n"
    assert fetch(edge, "/%68ello.txt").body == b"hello world\n"


def test_absolute_form_target_is_served(edge: Edge) -> None:
    """An absolute-form target (RFC 9112 §3.2.2) is its path."""
    r = fetch(edge, "http://example.com/hello.txt")
    assert (r.status, r.body) == (200, b"hello world\n")
    r = fetch(edge, "http://example.com/sub/?a=1")
    assert (r.status, r.body) == (200, b"<p>sub</p>\n")


@pytest.mark.parametrize("target", ["/.env", "/.git/config", "/sub/.hidden", "/%2eenv", "/.git/"])
def test_dotfiles_are_404_by_default(edge: Edge, target: str) -> None:
    """Dotfiles and dot directories: 404 by default."""
    r = fetch(edge, target)
    assert r.status == 404
    assert b"dotenv-value" not in r.body and b"bare" not in r.body and b"hidden" not in r.body


def test_dotfiles_served_when_configured(make_edge: Callable[..., Edge]) -> None:
    """serve_dotfiles = true serves them; traversal is still 400."""
    edge = make_edge({"serve_dotfiles": True})
    assert (fetch(edge, "/.env").status, fetch(edge, "/.env").body) == (200, b"API_KEY=dotenv-value\n")
    assert fetch(edge, "/.git/config").body == b"[core]\n\tbare = false\n"
    assert fetch(edge, "/sub/.hidden").body == b"hidden\n"
    assert fetch(edge, "/../secret.txt").status == 400


def test_symlinks_inside_root_by_default(edge: Edge) -> None:
    """Default policy: a link inside the root is followed, links out of it are 404."""
    r = fetch(edge, "/link-in.txt")
    assert (r.status, r.body) == (200, b"hello world\n")
    for target in ("/link-out.txt", "/linkdir/file.txt"):
        r = fetch(edge, target)
        assert r.status == 404 and SECRET not in r.body, target


def test_symlinks_never(make_edge: Callable[..., Edge]) -> None:
    """follow_symlinks = "never": every link is 404; plain files are served."""
    edge = make_edge({"follow_symlinks": "never"})
    for target in ("/link-in.txt", "/link-out.txt", "/linkdir/file.txt"):
        r = fetch(edge, target)
        assert r.status == 404 and SECRET not in r.body and r.body != b"hello world\n", target
    assert fetch(edge, "/hello.txt").body == b"hello world\n"


def test_symlinks_always(make_edge: Callable[..., Edge]) -> None:
    """follow_symlinks = "always": links anywhere are followed; ../ in the path is still 400."""
    edge = make_edge({"follow_symlinks": "always"})
    assert fetch(edge, "/link-in.txt").body == b"hello world\n"
    assert (fetch(edge, "/link-out.txt").status, fetch(edge, "/link-out.txt").body) == (200, SECRET)
    assert fetch(edge, "/linkdir/file.txt").body == SECRET
    assert fetch(edge, "/../secret.txt").status == 400


def test_fifo_is_404_and_does_not_hang(edge: Edge) -> None:
    """A FIFO is not a regular file: 404, and the pipelined request after it is answered."""
    responses, _ = exchange(edge, get("/pipe") + get("/hello.txt"))
    assert [(r.status, r.body if r.status == 200 else b"") for r in responses] == [(404, b""), (200, b"hello world\n")]
    assert fetch(edge, "/pipe").status == 404


def test_index_that_is_a_directory_is_404(edge: Edge) -> None:
    """An index.html that is a directory is no index."""
    assert fetch(edge, "/weird/").status == 404


def test_validators_present(edge: Edge, root: Path) -> None:
    """A strong ETag, Last-Modified from the file, Accept-Ranges, the whole body."""
    r = fetch(edge, "/data.bin")
    assert r.status == 200 and r.body == (root / "data.bin").read_bytes()
    assert re.fullmatch(r'"[^"]+"', r.get("etag"))
    assert parsedate_to_datetime(r.get("last-modified")).timestamp() == OLD_MTIME
    assert r.get("accept-ranges") == "bytes"


def test_last_modified_never_later_than_date(edge: Edge) -> None:
    """RFC 9110 §8.8.2.1: a modification time in the future is replaced by the message's Date."""
    r = fetch(edge, "/future.txt")
    assert r.status == 200 and r.body == b"from the future\n"
    assert parsedate_to_datetime(r.get("last-modified")) <= parsedate_to_datetime(r.get("date"))


def _etag(edge: Edge, path: str = "/data.bin", fields: dict[str, str] | None = None) -> str:
    return fetch(edge, path, fields).get("etag")


@pytest.mark.parametrize("form", ["exact", "weak", "list", "star"])
def test_if_none_match_gives_304_without_body(edge: Edge, form: str) -> None:
    """If-None-Match in four forms: 304 with the ETag and no body (the pipelined next answer follows at once)."""
    etag = _etag(edge)
    value = {"exact": etag, "weak": "W/" + etag, "list": f'"nope", W/"other", {etag}', "star": "*"}[form]
    responses, _ = exchange(edge, get("/data.bin", extra=f"If-None-Match: {value}\r\n") + get("/hello.txt"))
    assert [r.status for r in responses] == [304, 200]
    assert responses[0].get("etag") == etag and responses[0].body == b""
    assert responses[1].body == b"hello world\n"


def test_if_none_match_mismatch_gives_200(edge: Edge, root: Path) -> None:
    """No listed tag matches: the whole body."""
    r = fetch(edge, "/data.bin", {"If-None-Match": '"something-else", W/"x"'})
    assert r.status == 200 and r.body == (root / "data.bin").read_bytes()


def test_if_modified_since(edge: Edge, root: Path) -> None:
    """If-Modified-Since at or after the mtime: 304; before it: 200; not a date: ignored."""
    http_date = lambda s: formatdate(s, usegmt=True)  # noqa: E731
    r = fetch(edge, "/data.bin", {"If-Modified-Since": http_date(OLD_MTIME)})
    assert r.status == 304 and r.body == b"" and r.get("etag") == _etag(edge)
    assert fetch(edge, "/data.bin", {"If-Modified-Since": http_date(OLD_MTIME + 86400)}).status == 304
    r = fetch(edge, "/data.bin", {"If-Modified-Since": http_date(OLD_MTIME - 1)})
    assert r.status == 200 and r.body == (root / "data.bin").read_bytes()
    assert fetch(edge, "/data.bin", {"If-Modified-Since": "not a date"}).status == 200


def test_if_match_and_if_unmodified_since(edge: Edge, root: Path) -> None:
    """If-Match compares strongly; If-Unmodified-Since before the mtime fails."""
    etag = _etag(edge)
    http_date = lambda s: formatdate(s, usegmt=True)  # noqa: E731
    assert fetch(edge, "/data.bin", {"If-Match": '"stale"'}).status == 412
    assert fetch(edge, "/data.bin", {"If-Match": "W/" + etag}).status == 412
    r = fetch(edge, "/data.bin", {"If-Match": etag})
    assert r.status == 200 and r.body == (root / "data.bin").read_bytes()
    assert fetch(edge, "/data.bin", {"If-Match": "*"}).status == 200
    assert fetch(edge, "/data.bin", {"If-Unmodified-Since": http_date(OLD_MTIME - 60)}).status == 412
    assert fetch(edge, "/data.bin", {"If-Unmodified-Since": http_date(OLD_MTIME)}).status == 200


def test_precondition_precedence(edge: Edge) -> None:
    """RFC 9110 §13.2.2: If-Match before If-Unmodified-Since, If-None-Match before If-Modified-Since."""
    etag = _etag(edge)
    http_date = lambda s: formatdate(s, usegmt=True)  # noqa: E731
    assert fetch(edge, "/data.bin", {"If-None-Match": '"other"',
                                     "If-Modified-Since": http_date(OLD_MTIME)}).status == 200
    assert fetch(edge, "/data.bin", {"If-None-Match": etag,
                                     "If-Modified-Since": http_date(OLD_MTIME - 3600)}).status == 304
    assert fetch(edge, "/data.bin", {"If-Match": etag,
                                     "If-Unmodified-Since": http_date(OLD_MTIME - 3600)}).status == 200
    assert fetch(edge, "/data.bin", {"If-Match": '"other"', "If-None-Match": etag}).status == 412
    assert fetch(edge, "/data.bin", {"If-Unmodified-Since": http_date(OLD_MTIME - 3600),
                                     "If-None-Match": etag}).status == 412


@pytest.mark.parametrize("spec,first,last", [("bytes=0-99", 0, 99), ("bytes=100-", 100, 99_999),
                                             ("bytes=-100", 99_900, 99_999), ("bytes=99999-", 99_999, 99_999),
                                             ("bytes=500-200000", 500, 99_999)])
@pytest.mark.parametrize("mode", MODES)
def test_single_range(make_edge: Callable[..., Edge], root: Path, spec: str, first: int, last: int, mode: str) -> None:
    """One range: 206 with Content-Range and exactly those bytes (both body paths)."""
    edge = make_edge()
    (r,), _ = exchange(edge, get("/data.bin", extra=f"Range: {spec}\r\n"), mode=mode)
    assert r.status == 206
    assert r.get("content-range") == f"bytes {first}-{last}/100000"
    assert int(r.get("content-length")) == last - first + 1
    assert r.body == (root / "data.bin").read_bytes()[first:last + 1]
    assert r.get("accept-ranges") == "bytes"


@pytest.mark.parametrize("mode", MODES)
def test_multiple_ranges_are_multipart_byteranges(make_edge: Callable[..., Edge], root: Path, mode: str) -> None:
    """Several ranges: multipart/byteranges with a part per range, its Content-Range and bytes."""
    data = (root / "data.bin").read_bytes()
    (r,), _ = exchange(make_edge(), get("/data.bin", extra="Range: bytes=0-9, 1000-1999,-50\r\n"), mode=mode)
    assert r.status == 206 and r.get("content-type").startswith("multipart/byteranges")
    assert r.get("content-range") is None and int(r.get("content-length")) == len(r.body)
    parts = parse_byteranges(r.body, r.get("content-type"))
    assert [(p[0], p[1], p[2]) for p in parts] == [(0, 9, 100_000), (1000, 1999, 100_000), (99_950, 99_999, 100_000)]
    for first, last, _, ctype, chunk in parts:
        assert chunk == data[first:last + 1] and ctype == "application/octet-stream"


def test_unsatisfiable_range_is_416(edge: Edge) -> None:
    """Ranges wholly past the end: 416 with Content-Range: bytes */size."""
    for spec in ("bytes=100000-", "bytes=200000-300000", "bytes=100000-,100001-"):
        r = fetch(edge, "/data.bin", {"Range": spec})
        assert r.status == 416 and r.get("content-range") == "bytes */100000", spec


def test_too_many_ranges_give_full_200(edge: Edge, root: Path) -> None:
    """More than 16 ranges: the whole body; 16 are served as ranges."""
    r = fetch(edge, "/data.bin", {"Range": "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17))})
    assert r.status == 200 and r.body == (root / "data.bin").read_bytes()
    assert fetch(edge, "/data.bin", {"Range": "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(16))}
                 ).status == 206


def test_overlapping_ranges_past_the_size_give_full_200(edge: Edge, root: Path) -> None:
    """Overlapping ranges adding up past the size: the whole body."""
    r = fetch(edge, "/data.bin", {"Range": "bytes=0-60000,1000-70000"})
    assert r.status == 200 and r.body == (root / "data.bin").read_bytes()
    assert fetch(edge, "/data.bin", {"Range": "bytes=0-,0-,0-"}).status == 200


def test_invalid_range_is_ignored(edge: Edge) -> None:
    """A Range that does not parse is ignored: 200 with the whole body."""
    for spec in ("bytes=abc", "items=0-5", "bytes=9-3"):
        r = fetch(edge, "/data.bin", {"Range": spec})
        assert r.status == 200 and len(r.body) == 100_000, spec


def test_if_range(edge: Edge, root: Path) -> None:
    """If-Range: the strong ETag or the exact date allows the range; else (weak, stale) the whole body."""
    data = (root / "data.bin").read_bytes()
    etag = _etag(edge)
    http_date = lambda s: formatdate(s, usegmt=True)  # noqa: E731
    r = fetch(edge, "/data.bin", {"Range": "bytes=0-9", "If-Range": etag})
    assert r.status == 206 and r.body == data[:10]
    r = fetch(edge, "/data.bin", {"Range": "bytes=0-9", "If-Range": '"stale-etag"'})
    assert r.status == 200 and r.body == data
    assert fetch(edge, "/data.bin", {"Range": "bytes=0-9", "If-Range": "W/" + etag}).status == 200
    r = fetch(edge, "/data.bin", {"Range": "bytes=0-9", "If-Range": http_date(OLD_MTIME)})
    assert r.status == 206 and r.body == data[:10]
    r = fetch(edge, "/data.bin", {"Range": "bytes=0-9", "If-Range": http_date(OLD_MTIME - 10)})
    assert r.status == 200 and r.body == data


@pytest.mark.parametrize("name,expected", [
    ("a.html", "text/html; charset=utf-8"), ("a.css", "text/css; charset=utf-8"),
    ("b.js", "text/javascript; charset=utf-8"), ("a.mjs", "text/javascript; charset=utf-8"),
    ("a.json", "application/json"), ("a.wasm", "application/wasm"), ("a.webp", "image/webp"),
    ("a.avif", "image/avif"), ("a.woff2", "font/woff2"), ("a.svg", "image/svg+xml"), ("picture", "image/png"),
    ("README", "text/plain"), ("hello.txt", "text/plain; charset=utf-8"),
])
def test_content_types(edge: Edge, root: Path, name: str, expected: str) -> None:
    """Content-Type by extension (or by sniffing: the PNG, the plain text); binary types have no charset."""
    r = fetch(edge, "/" + name)
    assert r.status == 200 and r.body == (root / name).read_bytes()
    ctype = r.get("content-type")
    if ";" in expected:
        assert ctype.replace(" ", "").lower() == expected.replace(" ", "").lower()
    else:
        assert ctype.split(";")[0].strip().lower() == expected
    if expected in ("image/png", "application/wasm", "image/webp", "image/avif", "font/woff2"):
        assert "charset" not in ctype


@pytest.mark.parametrize("accept,coding", [
    ("br, gzip", "br"), ("gzip, br", "br"), ("gzip", "gzip"), ("br;q=0, gzip", "gzip"),
    ("br;q=0.4, gzip;q=0.9", "gzip"), ("identity", None), ("deflate", None), (None, None),
])
def test_precompressed_variants(edge: Edge, root: Path, accept: str | None, coding: str | None) -> None:
    """Accept-Encoding picks a.js.br, a.js.gz or a.js; Vary: Accept-Encoding on each."""
    r = fetch(edge, "/a.js", {"Accept-Encoding": accept} if accept is not None else {})
    assert r.status == 200
    assert "accept-encoding" in r.get("vary", "").lower()
    assert r.get("content-type") == "text/javascript; charset=utf-8"
    assert int(r.get("content-length")) == len(r.body)
    if coding is None:
        assert r.get("content-encoding") is None and r.body == JS
    else:
        assert r.get("content-encoding") == coding
        assert r.body == (root / ("a.js.br" if coding == "br" else "a.js.gz")).read_bytes()
    if coding == "gzip":
        assert gzip.decompress(r.body) == JS


def test_variants_have_distinct_etags_and_revalidate_separately(edge: Edge) -> None:
    """Each variant has its own ETag; one variant's tag does not validate another."""
    tags = {accept: _etag(edge, "/a.js", {"Accept-Encoding": accept}) for accept in ("br", "gzip", "identity")}
    assert len(set(tags.values())) == 3, tags
    r = fetch(edge, "/a.js", {"Accept-Encoding": "br", "If-None-Match": tags["br"]})
    assert r.status == 304 and r.get("etag") == tags["br"]
    assert "accept-encoding" in r.get("vary", "").lower()
    r = fetch(edge, "/a.js", {"Accept-Encoding": "identity", "If-None-Match": tags["br"]})
    assert r.status == 200 and r.body == JS


def test_vary_on_plain_file_with_variants_only(edge: Edge) -> None:
    """Vary only where variants exist."""
    assert fetch(edge, "/hello.txt", {"Accept-Encoding": "gzip"}).get("vary") is None
    assert "accept-encoding" in fetch(edge, "/a.js", method="HEAD").get("vary", "").lower()


def test_header_rules(edge: Edge) -> None:
    """A [[headers]] rule sets its field on 200, 304 and 206 of matching paths only."""
    r = fetch(edge, "/assets/x.css")
    assert r.status == 200 and r.body == b"body { color: red }\n" and r.get("cache-control") == RULE_VALUE
    r2 = fetch(edge, "/assets/x.css", {"If-None-Match": r.get("etag")})
    assert r2.status == 304 and r2.get("cache-control") == RULE_VALUE
    r3 = fetch(edge, "/assets/x.css", {"Range": "bytes=0-3"})
    assert r3.status == 206 and r3.get("cache-control") == RULE_VALUE
    r4 = fetch(edge, "/hello.txt")
    assert r4.status == 200 and r4.get("cache-control") is None
