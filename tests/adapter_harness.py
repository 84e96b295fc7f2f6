"""In-memory harness for edge's protocol adapters: a real Worker (no listener), a fake transport, frame tools.

`Edge` builds the real `edge.worker.Worker` over a document root on a fresh event loop, without serving
(no listening socket, no 1 Hz tick); its thread pool is replaced by an inline executor so file opens
finish within a few loop turns. `Conn` is one client connection to it: an `H1Connection` (which turns
itself into an `H2Connection` on the HTTP/2 preface, as in production) on a `MemoryTransport`.

Two body paths: `tls=True` (the default) makes the adapter pread + write file bodies through the
transport (everything it sends is recorded in order); `tls=False` gives the adapter a real
AF_UNIX socketpair, so file bodies go by sendfile(2) to the socket, and the transport's own writes go
to the same socket, in order, with the write-buffer semantics asyncio has (pause_writing above the
high-water mark, resume_writing at the low one). The client end of the pair is drained into
`Conn.received` every loop turn.

Parsers for what comes back: `parse_h1` (responses, with bodies framed by Content-Length or chunked)
and `H2Reader` (frames; header blocks decoded with hpack's Decoder); frame builders for requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hpack
import uvloop

from edge.config import Config, load
from edge.worker import Worker


from conftest import fill_www

OLD_MTIME = 1614834367  # 2021-03-04 05:06:07 UTC: a fixed, long-past modification time
JS = b"export function hi() { return 'hello from a.js'; }\n" * 40
RULE_VALUE = "public, max-age=31536000, immutable"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
QUIET_ROUNDS = 6  # loop turns without any transport activity after which a connection is settled
MAX_ROUNDS = 200_000


# -- the document root ------------------------------------------------------------------------------


def make_root(root: Path) -> Path:
    """A document root with every kind of file the adapter tables ask for; returns `root`."""
    fill_www(root)
    (root / "data.bin").write_bytes(os.urandom(100_000))
    os.utime(root / "data.bin", (OLD_MTIME, OLD_MTIME))
    (root / "a.js").write_bytes(JS)
    import gzip

    (root / "a.js.gz").write_bytes(gzip.compress(JS))
    (root / "a.js.br").write_bytes(b"\x1b\x4f\x08\x00" + os.urandom(200))
    (root / "assets").mkdir()
    (root / "assets" / "x.css").write_text("body { color: red }\n")
    (root / ".env").write_text("SECRET=1\n")
    os.mkfifo(root / "pipe")
    return root


HEADER_RULE = {"headers": [{"match": "/assets/*", "set": {"Cache-Control": RULE_VALUE}}]}


# -- the worker ---------------------------------------------------------------------------------------


class InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once, in the caller's thread: loads finish within a few loop turns."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Call `fn` now; its result (or exception) is in the returned, already finished future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the future, as a pool would
            future.set_exception(e)
        return future


def make_config(root: Path, settings: dict[str, Any] | None = None, engine: str | None = None) -> Config:
    """The configuration `edge serve --root root` would run with `settings` (TOML-shaped keys) in its file.

    `engine` forces [http2] engine; None leaves it to the defaults (and EDGE_HTTP2_ENGINE)."""
    config = load(None, {"root": str(root), **(settings or {})})
    if engine is not None:
        config = replace(config, http2=replace(config.http2, engine=engine))
    return config


class Edge:
    """A real `Worker` for `config` on a fresh uvloop event loop, serving no socket: connections are made here."""

    def __init__(self, config: Config) -> None:
        self.loop = uvloop.new_event_loop()
        self.config = config
        self.worker = Worker(config, self.loop)
        self.worker.executor.shutdown(wait=False)  # no thread was started yet: it has run nothing
        self.worker.executor = InlineExecutor()
        self.conns: list[Conn] = []
        self.errors: list[dict] = []  # what reached the loop's exception handler (a callback that raised)
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))

    def connect(self, *, tls: bool = True) -> Conn:
        """A new client connection (see the module docstring for `tls`)."""
        conn = Conn(self, tls=tls)
        self.conns.append(conn)
        return conn

    def sweep(self, advance: float) -> None:
        """The worker's once-a-second sweep as if `advance` seconds had passed (timeouts, delayed resets)."""
        now = self.loop.time() + advance
        for conn in list(self.worker.connections):
            conn.tick(now)
        for conn in self.conns:
            conn.settle()

    def close(self) -> None:
        """Drop every connection, close the file cache and the loop; AssertionError if a callback raised."""
        for conn in self.conns:
            conn.drop()
        self.loop.run_until_complete(asyncio.sleep(0))  # connection_lost callbacks already scheduled
        self.worker.cache.close()
        self.loop.close()
        assert not self.errors, f"exceptions in loop callbacks: {self.errors}"


# -- the transport ------------------------------------------------------------------------------------


class SocketStub:
    """What `get_extra_info("socket")` gives an adapter with no real socket: no fd, no options."""

    def fileno(self) -> int:
        """No descriptor (the TLS path never uses it)."""
        return -1

    def setsockopt(self, *args: Any) -> None:
        """Options (TCP_CORK) cannot be set: as on a socket that is gone."""
        raise OSError("no socket")


class MemoryTransport(asyncio.Transport):
    """An asyncio transport held in memory (or over a socketpair, see Conn) that records what happens to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | None = None) -> None:
        super().__init__()
        self.loop = loop
        self.sock = sock  # the server end of a socketpair (sendfile mode), or None
        self.protocol: asyncio.BaseProtocol | None = None
        self.out = bytearray()  # memory mode: everything written, in order
        self.buffer = bytearray()  # socket mode: written but not yet taken by the socket
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.write_paused = False
        self.reading_paused = False
        self.closing = False
        self.aborted = False
        self.eof_written = False
        self.lost = False
        self.lost_scheduled = False
        self.late_writes: list[bytes] = []  # writes after close(): nothing may follow the last response
        self.activity = 0  # bumped by every call: the harness settles when it stops changing
        self.inbox: list[bytes] = []  # client bytes held while reading is paused
        self.inbox_eof = False

    # -- asyncio.Transport ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes (copied: adapters reuse their buffers once the transport holds nothing)."""
        self.activity += 1
        if self.eof_written:
            raise RuntimeError("write() after write_eof()")
        chunk = bytes(data)
        if self.closing:
            self.late_writes.append(chunk)
        if self.lost or self.aborted:
            return
        if self.sock is None:
            self.out += chunk
            return
        self.buffer += chunk
        self.flush()
        if len(self.buffer) > self.high and not self.write_paused:
            self.write_paused = True
            self.protocol.pause_writing()

    def flush(self) -> None:
        """Socket mode: move buffered bytes into the socket as far as it takes them; resume the writer."""
        if self.sock is None or self.lost:
            return
        while self.buffer:
            try:
                n = self.sock.send(self.buffer)
            except BlockingIOError:
                break
            del self.buffer[:n]
        if self.write_paused and len(self.buffer) <= self.low:
            self.write_paused = False
            self.activity += 1
            self.protocol.resume_writing()
        if self.closing and not self.buffer:
            self._schedule_lost()

    def writelines(self, chunks: Iterable[bytes]) -> None:
        """Write each chunk."""
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        """TCP can half-close."""
        return True

    def write_eof(self) -> None:
        """Half-close: nothing more may be written."""
        self.activity += 1
        self.eof_written = True

    def close(self) -> None:
        """Close once the buffer is flushed; connection_lost follows on a later loop turn."""
        self.activity += 1
        self.closing = True
        if not self.buffer:
            self._schedule_lost()

    def abort(self) -> None:
        """Close now, dropping anything buffered."""
        self.activity += 1
        self.closing = self.aborted = True
        self.buffer.clear()
        self._schedule_lost()

    def is_closing(self) -> bool:
        """close() or abort() was called (or the connection is gone)."""
        return self.closing or self.lost

    def pause_reading(self) -> None:
        """Hold client bytes until resume_reading()."""
        self.activity += 1
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Deliver held client bytes again (on a later loop turn, as a transport reads)."""
        self.activity += 1
        self.reading_paused = False

    def is_reading(self) -> bool:
        """Not paused and not closing."""
        return not self.reading_paused and not self.closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The pause/resume marks (asyncio's defaults when None)."""
        self.high = 64 * 1024 if high is None else high
        self.low = (self.high // 4 if high is not None else 16 * 1024) if low is None else low

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet in the socket."""
        return len(self.buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high)."""
        return self.low, self.high

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """The protocol that gets what arrives from now on (HTTP/2 after the preface or an Upgrade)."""
        self.activity += 1
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The current protocol."""
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """`socket` (the socketpair end, or a stub) and `peername`; nothing else."""
        if name == "socket":
            return self.sock if self.sock is not None else SocketStub()
        if name == "peername":
            return ("192.0.2.1", 40000)
        return default

    # -- the client's side -----------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        """Bytes from the client: to the protocol now, or held while reading is paused."""
        if self.closing or self.lost:
            return  # a closed transport reads nothing more
        if self.reading_paused or self.inbox:
            self.inbox.append(data)
            return
        self.activity += 1
        self.protocol.data_received(data)

    def deliver_eof(self) -> None:
        """The client shut down its write side."""
        if self.closing or self.lost:
            return
        if self.reading_paused or self.inbox:
            self.inbox_eof = True
            return
        self._eof()

    def _eof(self) -> None:
        self.activity += 1
        if not self.protocol.eof_received():
            self.close()

    def turn(self) -> None:
        """One loop turn's I/O: held bytes go in when reading resumed (as one read, as the kernel coalesces)."""
        self.flush()
        if self.inbox and not self.reading_paused and not self.closing and not self.lost:
            data = b"".join(self.inbox)
            self.inbox.clear()
            self.activity += 1
            self.protocol.data_received(data)
        if self.inbox_eof and not self.inbox and not self.reading_paused and not self.closing and not self.lost:
            self.inbox_eof = False
            self._eof()

    def _schedule_lost(self) -> None:
        if not self.lost_scheduled:
            self.lost_scheduled = True
            self.loop.call_soon(self._lose)

    def _lose(self) -> None:
        self.activity += 1
        self.lost = True
        self.protocol.connection_lost(None)


class Conn:
    """One client connection to an `Edge`: send bytes, let the loop run until quiet, read what came back."""

    def __init__(self, edge: Edge, *, tls: bool = True) -> None:
        self.edge = edge
        self.peer: socket.socket | None = None
        sock = None
        if not tls:
            sock, self.peer = socket.socketpair()
            for s in (sock, self.peer):
                s.setblocking(False)
        self.transport = MemoryTransport(edge.loop, sock)
        self._received = bytearray()
        protocol = edge.worker.h1(edge.worker, tls=tls)  # (with origins, the class that passes other methods on)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)

    @property
    def protocol(self) -> asyncio.BaseProtocol:
        """The connection's current protocol (H1Connection, or H2Connection after a switch)."""
        return self.transport.protocol

    def send(self, data: bytes, *, settle: bool = True) -> None:
        """Client bytes as one segment, then (by default) run the loop until nothing more happens."""
        self.transport.deliver(data)
        if settle:
            self.settle()

    def send_eof(self) -> None:
        """The client half-closes, then the loop runs until quiet."""
        self.transport.deliver_eof()
        self.settle()

    def _drain(self) -> int:
        if self.peer is None:
            return 0
        got = 0
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return got
            except OSError:
                return got
            if not chunk:
                return got
            self._received += chunk
            got += len(chunk)

    def send_split(self, data: bytes, size: int = 1) -> None:
        """Client bytes in pieces of `size`, one loop turn after each (held while reading is paused), then settle."""
        for at in range(0, len(data), size):
            self.transport.deliver(data[at:at + size])
            self.turn()
        self.settle()

    def turn(self) -> None:
        """One turn of the loop, then the transport's I/O (held bytes in, socket drained)."""
        self.edge.loop.run_until_complete(asyncio.sleep(0))
        self.transport.turn()
        self._drain()

    def settle(self) -> None:
        """Run the loop until the adapter has nothing left to do (no transport activity for a few turns)."""
        loop = self.edge.loop
        quiet = 0
        for _ in range(MAX_ROUNDS):
            before = self.transport.activity
            loop.run_until_complete(asyncio.sleep(0))
            self.transport.turn()
            drained = self._drain()
            if self.transport.activity == before and not drained:
                quiet += 1
                if quiet >= QUIET_ROUNDS:
                    return
            else:
                quiet = 0
        raise AssertionError("the adapter never settled")

    @property
    def received(self) -> bytes:
        """Every byte the server sent so far, in order."""
        if self.peer is None:
            return bytes(self.transport.out)
        return bytes(self._received)

    @property
    def closed(self) -> bool:
        """The server closed the connection (and connection_lost was delivered)."""
        return self.transport.lost

    def drop(self) -> None:
        """The client goes away: connection_lost, and the socketpair is closed."""
        if not self.transport.lost and self.transport.protocol is not None:
            self.transport.lost = True
            self.transport.protocol.connection_lost(None)
        for s in (self.peer, self.transport.sock):
            if s is not None:
                s.close()


# -- HTTP/1.1 responses ---------------------------------------------------------------------------------

_DATE = re.compile(rb"\r\nDate: [^\r\n]*\r\n")


@dataclass
class H1Response:
    """One parsed HTTP/1.x response."""

    status: int
    head: bytes  # status line and fields, up to and including the blank line
    headers: list[tuple[str, str]]
    body: bytes
    informational: list[H1Response] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        """A field's value (repeated fields joined with ", "), by case-insensitive name."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else default

    @property
    def fields(self) -> dict[str, str]:
        """All fields by lower-case name."""
        out: dict[str, str] = {}
        for k, v in self.headers:
            key = k.lower()
            out[key] = out[key] + ", " + v if key in out else v
        return out

    @property
    def masked_head(self) -> bytes:
        """The head with the Date value replaced by `<date>` (for byte-exact comparisons)."""
        return _DATE.sub(b"\r\nDate: <date>\r\n", self.head, count=1)


def parse_h1(data: bytes, methods: Iterable[str] = ()) -> tuple[list[H1Response], bytes]:
    """Responses in `data` and the unparsed rest; `methods` (one per final response, GET after them)
    tells which had no body (HEAD). Bodies: none for HEAD, 1xx, 204, 304; chunked; else Content-Length."""
    methods = list(methods)
    out: list[H1Response] = []
    pending_1xx: list[H1Response] = []
    at = 0
    while True:
        end = data.find(b"\r\n\r\n", at)
        if end < 0:
            break
        head = data[at:end + 4]
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0] in ("HTTP/1.1", "HTTP/1.0") and len(parts) >= 2, lines[0]
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"bad field line {line!r}"
            headers.append((name, value.strip()))
        resp = H1Response(status, head, headers, b"")
        pos = end + 4
        if 100 <= status < 200:
            pending_1xx.append(resp)
            at = pos
            continue
        method = methods[len(out)] if len(out) < len(methods) else "GET"
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif resp.get("transfer-encoding") == "chunked":
            body, pos = _chunks(data, pos)
            if pos < 0:
                break
        else:
            length = int(resp.get("content-length", "0"))
            if len(data) < pos + length:
                break
            body = data[pos:pos + length]
            pos += length
        resp.body = body
        resp.informational = pending_1xx
        pending_1xx = []
        out.append(resp)
        at = pos
    return out, data[at:]


def _chunks(data: bytes, at: int) -> tuple[bytes, int]:
    body = b""
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return body, -1
        size = int(data[at:end].split(b";")[0], 16)
        at = end + 2
        if len(data) < at + size + 2:
            return body, -1
        if size == 0:
            return body, at + 2
        body += data[at:at + size]
        assert data[at + size:at + size + 2] == b"\r\n"
        at += size + 2


def request_bytes(target: str, *, method: str = "GET", host: str | None = "x", version: str = "HTTP/1.1",
                  fields: Iterable[tuple[str, str]] = ()) -> bytes:
    """A request head as bytes."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- HTTP/2 frames --------------------------------------------------------------------------------------

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, \
    REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = range(12)
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, \
    S_MAX_HEADER_LIST_SIZE = range(1, 7)


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame (RFC 9113 §4.1)."""
    return struct.pack(">HBBBI", len(payload) >> 8, len(payload) & 0xFF, kind, flags, sid) + payload


def settings_frame(values: dict[int, int] | None = None, *, ack: bool = False) -> bytes:
    """SETTINGS with `values` (or an ACK)."""
    payload = b"".join(struct.pack(">HI", k, v) for k, v in (values or {}).items())
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def window_update(sid: int, increment: int) -> bytes:
    """WINDOW_UPDATE for a stream (or 0: the connection)."""
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def rst_stream(sid: int, code: int) -> bytes:
    """RST_STREAM(code)."""
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def ping(opaque: bytes = b"12345678", *, ack: bool = False) -> bytes:
    """PING with 8 bytes of opaque data."""
    return frame(PING, ACK if ack else 0, 0, opaque)


def goaway(last: int, code: int = NO_ERROR) -> bytes:
    """GOAWAY(last, code)."""
    return frame(GOAWAY, 0, 0, struct.pack(">II", last, code))


def request_fields(path: str, method: str = "GET", authority: str = "edge.test",
                   extra: Iterable[tuple[str, str]] = ()) -> list[tuple[bytes, bytes]]:
    """Request pseudo-fields plus `extra` (lower-case names) as bytes."""
    return [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", authority.encode()),
            (b":path", path.encode("latin-1"))] + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]


@dataclass
class Frame:
    """A frame the server sent."""

    kind: int
    flags: int
    sid: int
    payload: bytes


@dataclass
class H2Stream:
    """What one stream got: final status and fields, 1xx heads, body, end, reset."""

    sid: int
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    informational: list[dict[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    data_frames: int = 0
    ended: bool = False
    reset: int | None = None


class H2Reader:
    """Splits what the server sent into frames and follows the streams (header blocks decoded with hpack)."""

    def __init__(self, *, follow: bool = True) -> None:
        self.follow = follow  # False: split frames only (streams and header blocks are not followed)
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []
        self.streams: dict[int, H2Stream] = {}
        self.rest = b""
        self._block: tuple[int, bytearray, bool] | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Parse `data` (after what came before); returns the new complete frames."""
        buf = self.rest + data
        new = []
        at = 0
        while len(buf) - at >= 9:
            high, low, kind, flags, sid = struct.unpack_from(">HBBBI", buf, at)
            length = (high << 8) | low
            if len(buf) - at - 9 < length:
                break
            f = Frame(kind, flags, sid & 0x7FFFFFFF, buf[at + 9:at + 9 + length])
            at += 9 + length
            new.append(f)
            if self.follow:
                self._follow(f)
        self.rest = buf[at:]
        self.frames += new
        return new

    def stream(self, sid: int) -> H2Stream:
        """The stream `sid` (created empty when nothing came on it yet)."""
        return self.streams.setdefault(sid, H2Stream(sid))

    def _follow(self, f: Frame) -> None:
        if f.kind == DATA:
            s = self.stream(f.sid)
            payload = f.payload[1:len(f.payload) - f.payload[0]] if f.flags & PADDED else f.payload
            s.body += payload
            s.data_frames += 1
            s.ended = s.ended or bool(f.flags & END_STREAM)
        elif f.kind in (HEADERS, CONTINUATION):
            if f.kind == HEADERS:
                assert self._block is None, "HEADERS inside another header block"
                self._block = (f.sid, bytearray(f.payload), bool(f.flags & END_STREAM))
            else:
                assert self._block is not None and self._block[0] == f.sid, "CONTINUATION out of place"
                self._block[1].extend(f.payload)
            if f.flags & END_HEADERS:
                sid, block, end = self._block
                self._block = None
                s = self.stream(sid)
                fields: dict[str, str] = {}
                for name, value in self.decoder.decode(bytes(block), raw=True):
                    key, val = name.decode("latin-1"), value.decode("latin-1")
                    fields[key] = fields[key] + ", " + val if key in fields else val
                status = int(fields.pop(":status", "0"))
                if 100 <= status < 200:
                    s.informational.append(fields)
                else:
                    s.status, s.headers = status, fields
                s.ended = s.ended or end
        elif f.kind == RST_STREAM:
            self.stream(f.sid).reset = struct.unpack(">I", f.payload)[0]

    def of(self, kind: int) -> list[Frame]:
        """The frames of one type, in order."""
        return [f for f in self.frames if f.kind == kind]

    def goaways(self) -> list[tuple[int, int]]:
        """(last_stream_id, error_code) of every GOAWAY."""
        return [struct.unpack(">II", f.payload[:8]) for f in self.of(GOAWAY)]

    def resets(self) -> list[tuple[int, int]]:
        """(stream id, error code) of every RST_STREAM."""
        return [(f.sid, struct.unpack(">I", f.payload)[0]) for f in self.of(RST_STREAM)]


def settings_of(f: Frame) -> dict[int, int]:
    """The settings a SETTINGS frame carries."""
    return dict(struct.unpack_from(">HI", f.payload, at) for at in range(0, len(f.payload) - 5, 6))


class H2Client:
    """A prior-knowledge HTTP/2 client on a `Conn`, frame by frame: HPACK with hpack's Encoder.

    `check=True` also runs the h2 library's client state machine over everything the server sends (as a
    conformance check of the server's frames: `h2_error` says what h2 found wrong). It is told what this
    client does through `headers`, `data`, WINDOW_UPDATE and RST_STREAM frames; frames built by hand with
    `frame()` for the other kinds are not shown to it (as a misbehaving client's would not be). `upgrade=True`
    (with start=False) prepares an h2c Upgrade: `upgrade_settings` is the HTTP2-Settings value to send.
    """

    def __init__(self, conn: Conn, *, settings: dict[int, int] | None = None, auto_window: bool = True,
                 start: bool = True, skip: int = 0, check: bool = False, upgrade: bool = False) -> None:
        self.conn = conn
        self.encoder = hpack.Encoder()
        self.reader = H2Reader()
        self.auto_window = auto_window
        self.next_sid = 3 if upgrade else 1
        self._seen = skip  # bytes of `received` that are not HTTP/2 (an Upgrade's 101)
        # Our view of the server's send windows (what we granted), to find DATA beyond them.
        self.initial_window = 65_535
        self.conn_window = 65_535
        self.windows: dict[int, int] = {1: 65_535} if upgrade else {}
        self.max_frame = 16_384
        self.violations: list[str] = []
        self._sent = H2Reader(follow=False)  # our own frames, parsed back for the accounting
        self._preface_left = len(PREFACE) if start or skip or upgrade else 0
        self.lib: Any = None
        self.h2_error: str | None = None
        self.upgrade_settings = b""
        if check:
            import h2.config
            import h2.connection
            import h2.settings

            self.lib = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            if settings:
                # As values already in force (we send them in our first SETTINGS, as h2 would): h2 read its
                # frame-size limit from the defaults when it was made, so that one is set here too.
                self.lib.local_settings = h2.settings.Settings(client=True, initial_values=settings)
                self.lib.max_inbound_frame_size = self.lib.local_settings.max_frame_size
                self.lib.incoming_buffer.max_frame_size = self.lib.local_settings.max_frame_size
            if upgrade:
                self.upgrade_settings = self.lib.initiate_upgrade_connection()
            else:
                self.lib.initiate_connection()
            self.lib.data_to_send()  # we write our own frames; h2 only follows
        if start:
            self.send(PREFACE + settings_frame(settings))

    def assert_conformant(self) -> None:
        """The h2 library (check=True) accepted every frame the server sent."""
        assert self.h2_error is None, self.h2_error
        assert self.lib is not None, "the h2 checker was not running"

    def _tell(self, call: Callable[[Any], Any], *quiet: type[Exception]) -> None:
        """Show the h2 checker what this client does (exceptions of the `quiet` kinds are ignored)."""
        if self.lib is None:
            return
        try:
            call(self.lib)
        except quiet:
            pass
        self.lib.data_to_send()

    def send(self, data: bytes) -> list[Frame]:
        """Raw bytes to the server as one segment, the loop run until quiet; returns the new frames."""
        self._account_sent(data)
        self.conn.send(data)
        return self.read()

    def _account_sent(self, data: bytes) -> None:
        if self._preface_left:
            cut = min(self._preface_left, len(data))
            self._preface_left -= cut
            data = data[cut:]
        for f in self._sent.feed(data):
            if f.kind == SETTINGS and not f.flags & ACK:
                values = settings_of(f)
                if S_INITIAL_WINDOW_SIZE in values:
                    delta = values[S_INITIAL_WINDOW_SIZE] - self.initial_window
                    self.initial_window += delta
                    for sid in self.windows:
                        self.windows[sid] += delta
                self.max_frame = values.get(S_MAX_FRAME_SIZE, self.max_frame)
            elif f.kind == WINDOW_UPDATE and len(f.payload) == 4:
                increment = struct.unpack(">I", f.payload)[0] & 0x7FFFFFFF
                if f.sid == 0:
                    self.conn_window += increment
                else:
                    self.windows[f.sid] = self.windows.get(f.sid, self.initial_window) + increment
                if increment:
                    self._tell(lambda lib, f=f, n=increment: lib.increment_flow_control_window(n, f.sid or None),
                               Exception)  # a stream h2 already closed: nothing to tell
            elif f.kind == RST_STREAM and len(f.payload) == 4:
                code = struct.unpack(">I", f.payload)[0]
                self._tell(lambda lib, f=f, code=code: lib.reset_stream(f.sid, code), Exception)
            elif f.kind == HEADERS:
                self.windows.setdefault(f.sid, self.initial_window)

    def read(self) -> list[Frame]:
        """The frames that arrived since the last read (with auto_window, their DATA is granted back)."""
        data = self.conn.received
        fresh = data[self._seen:]
        new = self.reader.feed(fresh)
        self._seen = len(data)
        if self.lib is not None and fresh:
            try:
                self.lib.receive_data(fresh)
            except Exception as e:  # noqa: BLE001 - from here on the frames speak for themselves
                self.h2_error = f"{type(e).__name__}: {e}"
                self.lib = None
            else:
                self.lib.data_to_send()
        for f in new:
            if f.kind == DATA:
                n = len(f.payload)
                if n > self.max_frame:
                    self.violations.append(f"DATA of {n} bytes on stream {f.sid} > max frame {self.max_frame}")
                self.conn_window -= n
                window = self.windows[f.sid] = self.windows.get(f.sid, self.initial_window) - n
                if self.conn_window < 0 or window < 0:
                    self.violations.append(f"DATA of {n} bytes on stream {f.sid} beyond the window "
                                           f"(connection {self.conn_window + n}, stream {window + n})")
        if self.auto_window:
            grants = b""
            for f in new:
                if f.kind == DATA and f.payload:
                    grants += window_update(0, len(f.payload))
                    if not f.flags & END_STREAM:
                        grants += window_update(f.sid, len(f.payload))
            if grants and not self.conn.closed and not self.conn.transport.closing:
                new += self.send(grants)
        return new

    def grant(self, increment: int, sid: int = 0) -> list[Frame]:
        """WINDOW_UPDATE for the connection (sid 0) or a stream; returns the frames it brought."""
        return self.send(window_update(sid, increment))

    def block(self, fields: list[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """An HPACK header block (our encoder's dynamic table follows what the server decoded)."""
        return self.encoder.encode(fields, huffman=huffman)

    def headers(self, fields: list[tuple[bytes, bytes]], *, sid: int | None = None, end_stream: bool = True) -> bytes:
        """A HEADERS frame (END_HEADERS) for a new stream (or `sid`); the stream id is taken."""
        if sid is None:
            sid = self.next_sid
            self.next_sid += 2
        self._tell(lambda lib: lib.send_headers(sid, fields, end_stream=end_stream))
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, self.block(fields))

    def data(self, sid: int, payload: bytes, *, end_stream: bool = False) -> bytes:
        """A DATA frame of request body."""
        self._tell(lambda lib: lib.send_data(sid, payload, end_stream=end_stream))
        return frame(DATA, END_STREAM if end_stream else 0, sid, payload)

    def get(self, path: str, method: str = "GET", extra: Iterable[tuple[str, str]] = ()) -> H2Stream:
        """One request on a new stream; returns that stream once the loop settled."""
        sid = self.next_sid
        self.send(self.headers(request_fields(path, method, extra=extra)))
        return self.reader.stream(sid)

    @property
    def frames(self) -> list[Frame]:
        """Every frame received so far."""
        return self.reader.frames
