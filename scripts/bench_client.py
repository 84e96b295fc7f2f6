"""Load clients for scripts/bench (stdlib only, but for hpack in the h2c idle client and uvloop,
when installed, in ws_echo).

These clients live here:

* ``bulk_download`` -- K keep-alive connections that GET one large file over
  and over, reading up to 1 MiB per ``recv_into`` on sockets with a large
  SO_RCVBUF, for a fixed wall-clock time.  It checks every completed body
  has the expected length and reports payload bytes received.  wrk reads
  8 KiB at a time and is the bottleneck for large files; this is not.

* ``concurrent_gets`` -- N connections each send one GET for the same URL
  at once, and every response is read whole (status, fields, length,
  SHA-256): the coalescing row of the proxy benchmark.

* ``IdleConnections`` -- opens N keep-alive connections, completes one GET on
  each (so the server has really accepted and served them), then keeps them
  open and idle until closed.  Used to measure server RSS per idle
  connection.

* ``H2IdleConnections`` -- the same over HTTP/2 by prior knowledge (h2c):
  client preface, an empty SETTINGS and one GET (HEADERS, END_STREAM) sent in
  one write, the whole response read (status 200 and every DATA byte), the
  server's SETTINGS acknowledged, then idle.  The bytes it sends are built
  once for all connections; the request's HPACK block is encoded once with the
  ``hpack`` package (the one import outside the stdlib, made only here).

* WebSocket clients for the tunnel rows (RFC 6455, raw sockets, frames built and
  masked beforehand): ``ws_echo`` (N tunnels, one message in flight on each,
  every echo compared byte for byte; one asyncio loop, uvloop when installed),
  ``ws_echo_check`` (a few large echoes through one tunnel), ``ws_bulk_up`` (one
  tunnel, frames back to back to a counting origin), ``ws_bulk_down`` (one
  tunnel, frames from the origin read and their headers checked) and
  ``WsIdleTunnels`` (IdleConnections' loop: N tunnels, one echo each, then idle).

All but ws_echo are single-threaded blocking or selectors loops.  Run standalone for debugging:

    python scripts/bench_client.py bulk    127.0.0.1 8080 /1m.bin 1048576 --seconds 5
    python scripts/bench_client.py idle    127.0.0.1 8080 /1k.bin 1024 --count 5000
    python scripts/bench_client.py h2idle  127.0.0.1 8080 /1k.bin 1024 --count 5000
    python scripts/bench_client.py wsecho  127.0.0.1 8080 /ws/echo --tunnels 64 --seconds 5
    python scripts/bench_client.py wsup    127.0.0.1 8080 /ws/sink --seconds 5
    python scripts/bench_client.py wsdown  127.0.0.1 8080 /ws/source --seconds 5
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import errno
import hashlib
import json
import os
import selectors
import socket
import sys
import time

READ_CHUNK = 1 << 20          # bytes per recv_into for bulk downloads
RCVBUF = 8 << 20              # requested SO_RCVBUF (kernel caps it at rmem_max*2)
MAX_HEAD = 64 << 10           # give up on a response head larger than this


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from edge.limits import raise_nofile as _raise_nofile  # noqa: E402  (edge/limits.py needs only the stdlib)


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for the load generator (many idle connections)."""
    return _raise_nofile(want)


class ClientError(Exception):
    pass


def request_bytes(host: str, port: int, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"User-Agent: edge-bench\r\nAccept: */*\r\n\r\n").encode("ascii")


def parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """Return (status, content_length, chunked, close) for a response head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ClientError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    clen = None
    chunked = False
    close = parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            clen = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection":
            if b"close" in value:
                close = True
            elif b"keep-alive" in value:
                close = False
    return status, clen, chunked, close


# --------------------------------------------------------------------------
# bulk downloads


class _BulkConn:
    """One keep-alive connection's response parser (Content-Length or chunked)."""

    __slots__ = ("sock", "phase", "head", "clen", "got", "close_after",
                 "chunked", "chunk_left", "ctl", "ctl_state")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.reset()

    def reset(self) -> None:
        self.phase = "head"
        self.head = bytearray()
        self.clen = 0
        self.got = 0
        self.close_after = False
        self.chunked = False
        self.chunk_left = 0
        self.ctl = bytearray()
        self.ctl_state = "size"

    def feed(self, data, pos: int, n: int) -> bool:
        """Consume body bytes data[pos:n]; True when the response is complete.

        ``data`` is a bytearray (the 1 MiB receive buffer or the head buffer).
        """
        if not self.chunked:
            take = n - pos
            if self.got + take > self.clen:
                raise ClientError(f"more bytes than Content-Length {self.clen} "
                                  "(unexpected data after the body)")
            self.got += take
            return self.got == self.clen
        while pos < n:
            if self.chunk_left:
                take = min(self.chunk_left, n - pos)
                pos += take
                self.got += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.ctl_state = "crlf"
                continue
            idx = data.find(b"\n", pos, n)
            if idx < 0:
                self.ctl += data[pos:n]
                if len(self.ctl) > 4096:
                    raise ClientError("bad chunked encoding (control line too long)")
                return False
            self.ctl += data[pos:idx + 1]
            pos = idx + 1
            line = bytes(self.ctl).strip()
            self.ctl.clear()
            if self.ctl_state == "crlf":
                if line:
                    raise ClientError("bad chunked encoding (no CRLF after chunk data)")
                self.ctl_state = "size"
            elif self.ctl_state == "size":
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise ClientError(f"bad chunk size line {line[:40]!r}") from None
                if size:
                    self.chunk_left = size
                else:
                    self.ctl_state = "trailer"
            elif not line:           # blank line after the trailers: done
                if pos != n:
                    raise ClientError("unexpected data after a chunked body")
                return True
        return False


def _open_bulk_socket(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Must be set before connect() so the window scale is negotiated for it.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(10)
    s.connect((host, port))
    s.setblocking(False)
    return s


def bulk_download(host: str, port: int, path: str, expect_len: int,
                  seconds: float, conns: int = 4) -> dict:
    """GET ``path`` repeatedly on ``conns`` keep-alive connections for ``seconds``.

    Returns a dict with bytes (body payload bytes received inside the window,
    including partial bodies cut off at the end), responses (complete ones),
    elapsed, reconnects, chunked (responses that were chunked) and rcvbuf
    (effective SO_RCVBUF).  Raises ClientError on a wrong status, a wrong
    body length, a broken connection or a server that stalls for 10 s.
    """
    req = request_bytes(host, port, path)
    sel = selectors.DefaultSelector()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    total = 0
    responses = 0
    reconnects = 0
    chunked = 0
    state = [_BulkConn() for _ in range(conns)]

    def start(c: _BulkConn, fresh: bool) -> None:
        if fresh:
            if c.sock is not None:
                sel.unregister(c.sock)
                c.sock.close()
            c.sock = _open_bulk_socket(host, port)
            sel.register(c.sock, selectors.EVENT_READ, c)
        c.reset()
        c.sock.sendall(req)  # tiny; never blocks on an idle keep-alive socket

    t0 = time.perf_counter()
    for c in state:
        start(c, True)
    rcvbuf = state[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    deadline = t0 + seconds
    last_progress = t0
    try:
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            if now - last_progress > 10:
                raise ClientError("no data from server for 10 s")
            for key, _ in sel.select(min(0.2, deadline - now)):
                c: _BulkConn = key.data
                try:
                    n = c.sock.recv_into(view, READ_CHUNK)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    n = 0
                if n == 0:
                    if c.phase == "head" and not c.head and responses:
                        # server closed an idle keep-alive connection between requests
                        reconnects += 1
                        start(c, True)
                        continue
                    raise ClientError(f"connection closed mid-response "
                                      f"({c.got} of {expect_len} body bytes)")
                last_progress = time.perf_counter()
                before = c.got
                if c.phase == "head":
                    c.head += view[:n]
                    idx = c.head.find(b"\r\n\r\n")
                    if idx < 0:
                        if len(c.head) > MAX_HEAD:
                            raise ClientError("response head too large")
                        continue
                    status, clen, is_chunked, close = parse_head(bytes(c.head[:idx]))
                    if status != 200:
                        raise ClientError(f"HTTP status {status} for {path}")
                    if not is_chunked and clen is None:
                        raise ClientError("response with neither Content-Length nor chunked")
                    if clen is not None and not is_chunked and clen != expect_len:
                        raise ClientError(f"Content-Length {clen}, expected {expect_len}")
                    c.clen = expect_len if is_chunked else clen
                    c.chunked = is_chunked
                    c.close_after = close
                    c.phase = "body"
                    done = c.feed(c.head, idx + 4, len(c.head))
                else:
                    done = c.feed(buf, 0, n)
                total += c.got - before
                if done:
                    if c.got != expect_len:
                        raise ClientError(f"body of {c.got} bytes, expected {expect_len}")
                    responses += 1
                    chunked += c.chunked
                    if c.close_after:
                        reconnects += 1
                        start(c, True)
                    else:
                        start(c, False)
    finally:
        elapsed = time.perf_counter() - t0
        for c in state:
            if c.sock is not None:
                try:
                    sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
                c.sock.close()
        sel.close()
    return {"bytes": total, "responses": responses, "elapsed": elapsed,
            "reconnects": reconnects, "chunked": chunked, "rcvbuf": rcvbuf,
            "conns": conns}


def decode_body(rest: bytes, chunked: bool, clen: int | None) -> bytes | None:
    """Whole body from a complete small response, or None if more bytes are needed."""
    if not chunked:
        if clen is None:
            raise ClientError("response with neither Content-Length nor chunked")
        return rest[:clen] if len(rest) >= clen else None
    body = bytearray()
    pos = 0
    while True:
        nl = rest.find(b"\r\n", pos)
        if nl < 0:
            return None
        size = int(rest[pos:nl].split(b";", 1)[0], 16)
        pos = nl + 2
        if size == 0:
            end = rest.find(b"\r\n\r\n", pos - 2)
            return bytes(body) if end >= 0 else None
        if len(rest) < pos + size + 2:
            return None
        body += rest[pos:pos + size]
        pos += size + 2


# --------------------------------------------------------------------------
# concurrent requests for one URL


def head_fields(head: bytes) -> dict[str, str]:
    """The header fields of a response head, names lowercased (repeats joined with ', ')."""
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        k = name.strip().lower().decode("latin-1")
        v = value.strip().decode("latin-1")
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def concurrent_gets(host: str, port: int, path: str, count: int,
                    timeout: float = 60.0) -> dict:
    """Open ``count`` connections, then send one GET for ``path`` on each as
    fast as possible (all requests are out before any response is read) and
    read every response to its end.

    Returns {"responses": [...], "errors": {what: n}, "elapsed": s, "send_spread": s}
    where each response is {"status", "fields" (lowercased names), "length",
    "sha256", "seconds" (from the first send to the last byte)}.  Nothing is
    raised for a bad response or a broken connection: they are counted in
    "errors" (a response still incomplete at ``timeout`` too).
    """
    import hashlib
    req = request_bytes(host, port, path)
    sel = selectors.DefaultSelector()
    errors: dict[str, int] = {}
    responses: list[dict] = []
    socks: list[socket.socket] = []

    def err(what: str) -> None:
        errors[what] = errors.get(what, 0) + 1

    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(10)
        try:
            s.connect((host, port))
        except OSError as e:
            s.close()
            err(f"connect: {e.__class__.__name__}")
            continue
        s.setblocking(False)
        socks.append(s)
    t0 = time.perf_counter()
    for s in socks:
        try:
            s.sendall(req)   # tiny: never blocks on a fresh socket
        except OSError as e:
            err(f"send: {e.__class__.__name__}")
            s.close()
            continue
        # per connection: raw bytes, head end, parser, fields
        sel.register(s, selectors.EVENT_READ, {"raw": bytearray(), "head": None, "conn": None,
                                                "status": 0, "fields": {}})
    send_spread = time.perf_counter() - t0
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    deadline = t0 + timeout
    try:
        while sel.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                for _ in list(sel.get_map()):
                    err(f"no complete response after {timeout:g} s")
                break
            for key, _ in sel.select(min(1.0, left)):
                s, st = key.fileobj, key.data
                try:
                    n = s.recv_into(view, READ_CHUNK)   # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError as e:
                    n, what = 0, f"recv: {e.__class__.__name__}"
                else:
                    what = "connection closed before the response was complete"
                if n == 0:
                    err(what)
                    sel.unregister(s)
                    s.close()   # type: ignore[union-attr]
                    continue
                st["raw"] += view[:n]
                try:
                    if st["head"] is None:
                        idx = st["raw"].find(b"\r\n\r\n")
                        if idx < 0:
                            if len(st["raw"]) > MAX_HEAD:
                                raise ClientError("response head too large")
                            continue
                        head = bytes(st["raw"][:idx])
                        status, clen, chunked, _ = parse_head(head)
                        if not chunked and clen is None:
                            raise ClientError("response with neither Content-Length nor chunked")
                        c = _BulkConn()
                        c.chunked, c.clen = chunked, (clen or 0)
                        st.update(head=idx + 4, conn=c, status=status, fields=head_fields(head))
                        done = c.feed(st["raw"], idx + 4, len(st["raw"]))
                    else:
                        done = st["conn"].feed(buf, 0, n)
                except (ClientError, ValueError) as e:
                    err(f"bad response: {e}")
                    sel.unregister(s)
                    s.close()   # type: ignore[union-attr]
                    continue
                if not done:
                    continue
                sel.unregister(s)
                s.close()   # type: ignore[union-attr]
                c = st["conn"]
                rest = bytes(st["raw"][st["head"]:])
                body = decode_body(rest, c.chunked, None if c.chunked else c.clen) or b""
                responses.append({"status": st["status"], "fields": st["fields"],
                                  "length": len(body),
                                  "sha256": hashlib.sha256(body).hexdigest(),
                                  "seconds": time.perf_counter() - t0})
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return {"responses": responses, "errors": errors, "elapsed": time.perf_counter() - t0,
            "send_spread": send_spread}


# --------------------------------------------------------------------------
# idle keep-alive connections


class IdleConnections:
    """Open ``count`` connections, do one complete GET on each, keep them idle.

    The connect/send/read loop is shared with H2IdleConnections; a subclass says what
    goes out first (``first_bytes``), what it keeps per connection (``new_state``)
    and when a response is whole and right (``received``)."""

    def __init__(self, host: str, port: int, path: str, expect_len: int,
                 count: int, in_flight: int = 200, timeout: float = 120.0) -> None:
        self.host, self.port, self.path = host, port, path
        self.expect_len = expect_len
        self.count = count
        self.in_flight = in_flight
        self.timeout = timeout
        self.idle: list[socket.socket] = []
        self.failed = 0
        self.errors: dict[str, int] = {}

    def _err(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1

    def first_bytes(self) -> bytes:
        """What every connection sends once connected: the GET."""
        return request_bytes(self.host, self.port, self.path)

    def new_state(self) -> object:
        """Per-connection response state: the bytes read so far."""
        return bytearray()

    def received(self, s: socket.socket, buf: bytearray, data: bytes) -> str | None:
        """Take ``data``: None while the response is incomplete, "" when it is
        whole and right (the connection goes idle), else why it failed."""
        buf += data
        idx = buf.find(b"\r\n\r\n")
        if idx < 0:
            return None
        status, clen, chunked, close = parse_head(bytes(buf[:idx]))
        try:
            body = decode_body(bytes(buf[idx + 4:]), chunked, clen)
        except (ClientError, ValueError) as e:
            return f"bad response: {e}"
        if body is None:
            return None
        if status != 200 or len(body) != self.expect_len:
            return f"status {status} length {len(body)}"
        return "server sent Connection: close" if close else ""

    def open(self) -> int:
        """Establish the connections; returns how many are idle and usable."""
        first = self.first_bytes()
        sel = selectors.DefaultSelector()
        started = 0
        active = 0
        deadline = time.monotonic() + self.timeout

        def launch() -> None:
            nonlocal started, active
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            # small buffers: the idle connections should cost the client little
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            err = s.connect_ex((self.host, self.port))
            started += 1
            if err not in (0, errno.EINPROGRESS):
                s.close()
                self._err(f"connect: {errno.errorcode.get(err, err)}")
                return
            active += 1
            sel.register(s, selectors.EVENT_WRITE, [True, self.new_state()])

        def drop(s: socket.socket, what: str) -> None:
            nonlocal active
            sel.unregister(s)
            s.close()
            active -= 1
            self._err(what)

        try:
            while len(self.idle) + self.failed < self.count:
                while active < self.in_flight and started < self.count:
                    launch()
                if time.monotonic() > deadline:
                    raise ClientError(
                        f"timed out with {len(self.idle)} of {self.count} connections idle")
                if active == 0:
                    continue
                for key, _ in sel.select(1.0):
                    s: socket.socket = key.fileobj  # type: ignore[assignment]
                    connecting, state = key.data
                    if connecting:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            drop(s, f"connect: {errno.errorcode.get(err, err)}")
                            continue
                        try:
                            sent = s.send(first)
                        except OSError as e:
                            drop(s, f"send: {e.__class__.__name__}")
                            continue
                        if sent != len(first):   # ~100 bytes on a fresh socket
                            drop(s, "short send of the request")
                            continue
                        sel.modify(s, selectors.EVENT_READ, [False, state])
                        continue
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        drop(s, f"recv: {e.__class__.__name__}")
                        continue
                    if not data:
                        drop(s, "closed before response completed")
                        continue
                    try:
                        verdict = self.received(s, state, data)
                    except OSError as e:   # an answer to the server (SETTINGS ACK...) failed
                        drop(s, f"send: {e.__class__.__name__}")
                        continue
                    if verdict is None:
                        continue
                    if verdict:
                        drop(s, verdict)
                        continue
                    sel.unregister(s)
                    active -= 1
                    self.idle.append(s)
        finally:
            # anything still in the selector is half-done: drop it
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()
        return len(self.idle)

    def alive(self) -> int:
        """How many idle connections are still open (server has not closed them)."""
        n = 0
        for s in self.idle:
            try:
                data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                n += 1
                continue
            except OSError:
                continue
            if data:
                n += 1  # unexpected bytes, but still open
        return n

    def close(self) -> None:
        for s in self.idle:
            try:
                s.close()
            except OSError:
                pass
        self.idle.clear()


# --------------------------------------------------------------------------
# idle HTTP/2 connections (h2c by prior knowledge)

H2_MAGIC = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_PING, H2_GOAWAY, H2_CONTINUATION = \
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
H2_END_STREAM, H2_ACK, H2_END_HEADERS, H2_PADDED, H2_PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream.to_bytes(4, "big") + payload)


def h2_preface(host: str, port: int, path: str) -> bytes:
    """Client preface + empty SETTINGS + HEADERS (GET ``path``, stream 1, END_STREAM):
    what every connection sends first, identical for all of them (each connection
    starts with fresh HPACK tables, so one encoding serves every one)."""
    import hpack  # third-party: only this client needs it (in .bench-venv through h2)

    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                    (":authority", f"{host}:{port}"), (":path", path),
                                    ("user-agent", "edge-bench"), ("accept", "*/*")])
    return (H2_MAGIC + h2_frame(H2_SETTINGS, 0, 0)
            + h2_frame(H2_HEADERS, H2_END_STREAM | H2_END_HEADERS, 1, block))


H2_SETTINGS_ACK = h2_frame(H2_SETTINGS, H2_ACK, 0)


class _H2Conn:
    """Response state of one connection while its GET is in flight."""

    __slots__ = ("buf", "block", "status", "body", "done", "error")

    def __init__(self) -> None:
        self.buf = b""             # unparsed bytes (less than one whole frame)
        self.block = bytearray()   # header block of stream 1 (HEADERS + CONTINUATION)
        self.status = 0
        self.body = 0              # DATA payload bytes of stream 1 (padding excluded)
        self.done = False          # stream 1 ended (END_STREAM seen)
        self.error = ""


class H2IdleConnections(IdleConnections):
    """Open ``count`` h2c connections, do one complete GET on each, keep them idle.

    Same interface as IdleConnections (open, alive, close, idle, failed, errors).
    """

    def __init__(self, host: str, port: int, path: str, expect_len: int,
                 count: int, in_flight: int = 200, timeout: float = 120.0) -> None:
        super().__init__(host, port, path, expect_len, count, in_flight, timeout)
        self.leftover: dict[socket.socket, bytes] = {}   # bytes after the last whole frame

    def first_bytes(self) -> bytes:
        """The client preface, an empty SETTINGS and the GET on stream 1."""
        return h2_preface(self.host, self.port, self.path)

    def new_state(self) -> _H2Conn:
        """The frames' parse state and stream 1's response."""
        return _H2Conn()

    def received(self, s: socket.socket, c: _H2Conn, data: bytes) -> str | None:
        """Parse frames (answering SETTINGS and PING); "" once stream 1 ended with a 200 of the right length."""
        self._frames(s, c, data)
        if c.error:
            return c.error
        if not c.done:
            return None
        if c.status != 200 or c.body != self.expect_len:
            return f"status {c.status} length {c.body}"
        if c.buf:
            self.leftover[s] = c.buf
        return ""

    def _frames(self, s: socket.socket, c: _H2Conn, data: bytes) -> None:
        """Parse the whole frames in c.buf + data; answer SETTINGS; note the response."""
        buf = c.buf + data if c.buf else data
        pos, n = 0, len(buf)
        while n - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if n - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            if kind == H2_SETTINGS:
                if not flags & H2_ACK:
                    s.send(H2_SETTINGS_ACK)   # 9 bytes: never blocks here
            elif kind == H2_PING:
                if not flags & H2_ACK:
                    s.send(h2_frame(H2_PING, H2_ACK, 0, payload))
            elif kind == H2_GOAWAY:
                code = int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else -1
                c.error = c.error or f"GOAWAY error code {code}"
            elif sid != 1:
                continue   # WINDOW_UPDATE, PRIORITY, ... of the connection or another stream
            elif kind == H2_RST_STREAM:
                c.error = c.error or f"RST_STREAM error code {int.from_bytes(payload, 'big')}"
            elif kind in (H2_HEADERS, H2_CONTINUATION):
                if kind == H2_HEADERS:
                    pad = payload[0] if flags & H2_PADDED else 0
                    start = (1 if flags & H2_PADDED else 0) + (5 if flags & H2_PRIORITY else 0)
                    payload = payload[start:len(payload) - pad]
                c.block += payload
                if flags & H2_END_HEADERS:
                    if not c.status:   # the response head (a trailer block would follow DATA)
                        import hpack
                        try:
                            fields = hpack.Decoder().decode(bytes(c.block), raw=True)
                        except Exception as e:  # noqa: BLE001 - hpack's own errors
                            c.error = c.error or f"bad header block: {e.__class__.__name__}"
                        else:
                            st = dict(fields).get(b":status", b"0")
                            c.status = int(st) if st.isdigit() else -1
                    c.block.clear()
                if flags & H2_END_STREAM:
                    c.done = True
            elif kind == H2_DATA:
                pad = payload[0] + 1 if flags & H2_PADDED and payload else 0
                c.body += len(payload) - pad
                if flags & H2_END_STREAM:
                    c.done = True
        c.buf = buf[pos:]

    def alive(self) -> int:
        """How many idle connections are still open: not closed by the server and
        no GOAWAY from it (what arrived since the response is read and parsed)."""
        n = 0
        for s in self.idle:
            c = _H2Conn()
            c.buf = self.leftover.pop(s, b"")
            closed = False
            while True:
                try:
                    data = s.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError:
                    closed = True
                    break
                if not data:
                    closed = True
                    break
                try:
                    self._frames(s, c, data)
                except OSError:
                    closed = True
                    break
            if c.buf:
                self.leftover[s] = c.buf
            if not closed and not c.error:
                n += 1
        return n

    def close(self) -> None:
        super().close()
        self.leftover.clear()


# --------------------------------------------------------------------------
# WebSocket tunnels (RFC 6455): the tunnel rows


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_key() -> tuple[bytes, bytes]:
    """A fresh Sec-WebSocket-Key and the Sec-WebSocket-Accept that answers it."""
    key = base64.b64encode(os.urandom(16))
    return key, base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_upgrade_request(host: str, port: int, path: str, key: bytes) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: edge-bench\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Origin: http://edge-bench\r\nSec-WebSocket-Key: ").encode() + key + b"\r\n\r\n"


def ws_check_101(head: bytes, accept: bytes) -> str:
    """"" when ``head`` (a response head, CRLFCRLF excluded) switches to a WebSocket with the
    right Sec-WebSocket-Accept, else why not (the status line of a refusal)."""
    first = head.split(b"\r\n", 1)[0]
    parts = first.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"101":
        return f"handshake refused: {first[:100].decode('latin-1')!r}"
    fields = head_fields(head)
    if fields.get("upgrade", "").lower() != "websocket":
        return f"101 without Upgrade: websocket ({fields.get('upgrade')!r})"
    if fields.get("sec-websocket-accept", "").encode() != accept:
        return f"101 with a wrong Sec-WebSocket-Accept {fields.get('sec-websocket-accept')!r}"
    return ""


def ws_mask(key: bytes, data: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``key`` (masking and unmasking are the same)."""
    n = len(data)
    if not n:
        return b""
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


def _ws_len(n: int) -> bytes:
    if n < 126:
        return bytes((n,))
    if n < 1 << 16:
        return bytes((126,)) + n.to_bytes(2, "big")
    return bytes((127,)) + n.to_bytes(8, "big")


def ws_client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """A masked frame, FIN set (client to server); a random mask key unless given."""
    key = key or os.urandom(4)
    ln = _ws_len(len(payload))
    return bytes((0x80 | opcode, ln[0] | 0x80)) + ln[1:] + key + ws_mask(key, payload)


def ws_server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked frame, FIN set: what an origin sends, and so what comes back through a relay."""
    return bytes((0x80 | opcode,)) + _ws_len(len(payload)) + payload


def _ws_connect(host: str, port: int, path: str, timeout: float,
                rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A blocking socket with the upgrade done; returns it and the bytes that came after the 101."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        key, accept = ws_key()
        s.sendall(ws_upgrade_request(host, port, path, key))
        buf = bytearray()
        while True:
            data = s.recv(65536)
            if not data:
                raise ClientError(f"connection closed during the handshake ({bytes(buf[:100])!r})")
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_HEAD:
                raise ClientError("handshake answer head too large")
        why = ws_check_101(bytes(buf[:end]), accept)
        if why:
            raise ClientError(why)
        return s, bytes(buf[end + 4:])
    except BaseException:
        s.close()
        raise


def _new_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    try:
        import uvloop  # in .bench-venv; plain asyncio otherwise
        return uvloop.new_event_loop(), f"uvloop {uvloop.__version__}"
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"


class _EchoJob:
    def __init__(self, loop: asyncio.AbstractEventLoop, tunnels: int) -> None:
        self.loop = loop
        self.running = False
        self.count = 0
        self.error: str | None = None
        self.waiting = tunnels            # handshakes still to finish, then echoes in flight
        self.ready = loop.create_future()
        self.done = loop.create_future()
        self.last = 0.0
        self.rtt = array.array("d")

    def fail(self, msg: str) -> None:
        if self.error is None:
            self.error = msg
        for f in (self.ready, self.done):
            if not f.done():
                f.set_exception(ClientError(msg))

    def one_less(self, fut: asyncio.Future) -> None:
        self.waiting -= 1
        if self.waiting == 0 and not fut.done():
            fut.set_result(None)


class _EchoTunnel(asyncio.Protocol):
    """One tunnel of ws_echo: handshake, then send a frame, wait for its echo, compare, repeat."""

    def __init__(self, job: _EchoJob, idx: int, request: bytes, accept: bytes,
                 frames: list[bytes], echoes: list[bytes]) -> None:
        self.job, self.idx, self.request, self.accept = job, idx, request, accept
        self.frames, self.echoes = frames, echoes
        self.phase = "handshake"          # handshake, ready, echo, stopped
        self.buf = bytearray()
        self.i = 0
        self.expect = b""
        self.sent = 0.0
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.t = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if self.phase != "closing":
            self.job.fail(f"tunnel {self.idx}: connection closed in phase {self.phase}"
                          + (f" ({exc})" if exc else ""))

    def start(self) -> None:
        self.phase = "echo"
        self.expect = self.echoes[0]
        self.sent = time.perf_counter()
        self.t.write(self.frames[0])

    def data_received(self, data: bytes) -> None:
        if self.phase == "echo":
            if not self.buf and data == self.expect:
                pass
            else:
                buf = self.buf
                buf += data
                exp = self.expect
                if len(buf) < len(exp):
                    if buf != exp[:len(buf)]:
                        self.wrong(bytes(buf))
                    return
                if buf != exp:
                    self.wrong(bytes(buf))
                    return
                buf.clear()
            job = self.job
            now = time.perf_counter()
            job.count += 1
            job.rtt.append(now - self.sent)
            job.last = now
            if job.running:
                self.i = i = (self.i + 1) % len(self.frames)
                self.expect = self.echoes[i]
                self.sent = now
                self.t.write(self.frames[i])
            else:
                self.phase = "stopped"
                job.one_less(job.done)
            return
        if self.phase != "handshake":
            self.job.fail(f"tunnel {self.idx}: {len(data)} unexpected bytes in phase "
                          f"{self.phase}: {data[:40]!r}")
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.job.fail(f"tunnel {self.idx}: handshake answer head too large")
            return
        why = ws_check_101(bytes(self.buf[:end]), self.accept)
        if not why and len(self.buf) > end + 4:
            why = f"{len(self.buf) - end - 4} bytes after the 101 before any frame was sent"
        if why:
            self.job.fail(f"tunnel {self.idx}: {why}")
            return
        self.buf.clear()
        self.phase = "ready"
        self.job.one_less(self.job.ready)

    def wrong(self, got: bytes) -> None:
        exp = self.expect
        at = next((k for k in range(min(len(got), len(exp))) if got[k] != exp[k]),
                  min(len(got), len(exp)))
        self.job.fail(f"tunnel {self.idx}: echo differs from the message sent at byte {at} "
                      f"(got {len(got)} bytes {got[max(0, at - 4):at + 12].hex()}, expected "
                      f"{len(exp)} bytes {exp[max(0, at - 4):at + 12].hex()})")


def ws_echo(host: str, port: int, path: str, tunnels: int, seconds: float, size: int = 64,
            variants: int = 8, timeout: float = 15.0, on_start=None) -> dict:
    """``tunnels`` WebSocket tunnels to ``path`` (an echo origin behind the server), all opened
    first, then each sends one binary message of ``size`` bytes, waits for its echo, compares it
    byte for byte with what an unmasked echo of that message must be, and sends the next, for
    ``seconds``; messages in flight at the end are awaited and checked too.  Each tunnel cycles
    through ``variants`` different random messages, each frame built (and masked) beforehand.
    One process, one asyncio loop (uvloop when installed).  ``on_start()``, when given, is called
    once every tunnel is open, just before the first message.  Returns round_trips, elapsed (first
    send to last echo), rtt_p50_ms, rtt_p99_ms and loop; any wrong byte, refused handshake or
    closed tunnel raises ClientError."""
    loop, kind = _new_loop()
    job = _EchoJob(loop, tunnels)
    protos: list[_EchoTunnel] = []

    def make(idx: int) -> _EchoTunnel:
        key, accept = ws_key()
        payloads = [os.urandom(size) for _ in range(variants)]
        p = _EchoTunnel(job, idx, ws_upgrade_request(host, port, path, key), accept,
                        [ws_client_frame(2, m) for m in payloads],
                        [ws_server_frame(2, m) for m in payloads])
        protos.append(p)
        return p

    async def run() -> float:
        await asyncio.wait_for(asyncio.gather(*(loop.create_connection(
            lambda i=i: make(i), host, port) for i in range(tunnels))), timeout)
        await asyncio.wait_for(job.ready, timeout)
        job.waiting = tunnels
        job.running = True
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        for p in protos:
            p.start()

        def stop() -> None:
            job.running = False
        loop.call_later(seconds, stop)
        await asyncio.wait_for(job.done, seconds + timeout)
        return t0

    try:
        t0 = loop.run_until_complete(run())
    except asyncio.TimeoutError:
        raise ClientError(job.error or f"timed out ({sum(p.phase == 'handshake' for p in protos)} "
                          f"tunnels still in the handshake, {job.waiting} waiting)") from None
    finally:
        for p in protos:
            p.phase = "closing"
            if p.t is not None:
                p.t.close()
        for f in (job.ready, job.done):   # a failure's exception, raised below, counts as seen
            if f.done() and not f.cancelled():
                f.exception()
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()
    if job.error:
        raise ClientError(job.error)
    rtt = sorted(job.rtt)
    return {"round_trips": job.count, "elapsed": job.last - t0, "tunnels": tunnels, "size": size,
            "rtt_p50_ms": rtt[len(rtt) // 2] * 1e3 if rtt else None,
            "rtt_p99_ms": rtt[min(len(rtt) - 1, int(len(rtt) * 0.99))] * 1e3 if rtt else None,
            "loop": kind}


def ws_echo_check(host: str, port: int, path: str, size: int, count: int,
                  timeout: float = 30.0) -> int:
    """``count`` messages of ``size`` random bytes through one tunnel, each echo compared byte
    for byte (the large-frame check before the bulk rows); returns the bytes echoed."""
    s, rest = _ws_connect(host, port, path, timeout, rcvbuf=RCVBUF)
    try:
        if rest:
            raise ClientError(f"{len(rest)} bytes after the 101 before any frame was sent")
        for k in range(count):
            payload = os.urandom(size)
            s.sendall(ws_client_frame(2, payload))
            want = ws_server_frame(2, payload)
            got = bytearray()
            while len(got) < len(want):
                data = s.recv(min(len(want) - len(got), READ_CHUNK))
                if not data:
                    raise ClientError(f"closed after {len(got)} of {len(want)} echo bytes")
                got += data
            if got != want:
                at = next(i for i in range(len(want)) if got[i] != want[i])
                raise ClientError(f"echo {k + 1} of {size} bytes differs at byte {at}")
        s.sendall(ws_client_frame(8, (1000).to_bytes(2, "big")))
        return count * size
    finally:
        s.close()


def ws_bulk_up(host: str, port: int, path: str, seconds: float, frame_size: int = 1 << 20,
               timeout: float = 30.0, on_start=None) -> dict:
    """One tunnel to a sink origin: binary frames of ``frame_size`` bytes (built and masked once)
    sent back to back for ``seconds``, then a text frame "count" that the origin answers with the
    payload bytes and frames it received, which must be all of them.  Returns bytes (payload the
    origin counted), frames, elapsed (first send to the origin's count).  ``on_start()`` is called
    once the tunnel is open, before the first frame."""
    s, rest = _ws_connect(host, port, path, timeout)
    try:
        if rest:
            raise ClientError(f"{len(rest)} bytes after the 101 before any frame was sent")
        data = ws_client_frame(2, os.urandom(frame_size))
        n = 0
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            s.sendall(data)
            n += 1
        s.sendall(ws_client_frame(1, b"count"))
        got = bytearray()
        while True:
            chunk = s.recv(4096)
            if not chunk:
                raise ClientError(f"closed before the origin's count ({bytes(got)!r})")
            got += chunk
            if len(got) >= 2 and len(got) >= 2 + (got[1] & 0x7F):
                break
        elapsed = time.perf_counter() - t0
        if got[0] != 0x81 or got[1] & 0x80 or (got[1] & 0x7F) > 125:
            raise ClientError(f"origin's count is not a small text frame: {bytes(got[:40])!r}")
        counted, frames = map(int, got[2:2 + (got[1] & 0x7F)].split())
        if counted != n * frame_size or frames != n:
            raise ClientError(f"the origin counted {counted} bytes in {frames} frames, "
                              f"sent {n * frame_size} bytes in {n} frames")
        try:
            s.sendall(ws_client_frame(8, (1000).to_bytes(2, "big")))
        except OSError:
            pass
        return {"bytes": counted, "frames": n, "elapsed": elapsed, "frame_size": frame_size}
    finally:
        s.close()


def ws_bulk_down(host: str, port: int, path: str, seconds: float, frame_size: int = 1 << 20,
                 timeout: float = 30.0, on_start=None) -> dict:
    """One tunnel from a source origin that sends binary frames of ``frame_size`` bytes back to
    back: read for ``seconds`` (1 MiB recv_into, large SO_RCVBUF), every frame header checked
    (FIN + binary, unmasked, ``frame_size`` long).  Returns bytes (payload received inside the
    window, the partial last frame included), frames (complete ones), elapsed.  ``on_start()`` is
    called once the tunnel is open (the origin sends from its 101 on)."""
    s, rest = _ws_connect(host, port, path, timeout, rcvbuf=RCVBUF)
    if on_start is not None:
        on_start()
    want = bytes((0x82,)) + _ws_len(frame_size)   # FIN + binary, unmasked, the length
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    hdr = bytearray()
    left = 0
    total = frames = 0

    def feed(data) -> None:
        nonlocal left, total, frames
        pos, n = 0, len(data)
        while pos < n:
            if left:
                take = min(left, n - pos)
                left -= take
                total += take
                pos += take
                if left == 0:
                    frames += 1
                continue
            take = min(len(want) - len(hdr), n - pos)
            hdr.extend(data[pos:pos + take])
            pos += take
            if len(hdr) == len(want):
                if hdr != want:
                    raise ClientError(f"frame {frames + 1}: header {bytes(hdr).hex()}, expected "
                                      f"{want.hex()} (FIN binary unmasked, {frame_size} bytes)")
                hdr.clear()
                left = frame_size

    try:
        t0 = time.perf_counter()
        deadline = t0 + seconds
        feed(rest)
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            n = s.recv_into(view)
            if not n:
                raise ClientError(f"tunnel closed after {frames} frames")
            feed(view[:n])
        return {"bytes": total, "frames": frames, "elapsed": now - t0, "frame_size": frame_size,
                "rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}
    finally:
        s.close()


class WsIdleTunnels(IdleConnections):
    """``count`` WebSocket tunnels to an echo origin, each with one message echoed and checked
    byte for byte (so that the tunnel really runs end to end), then left idle: the RSS row
    of tunnels.  The connect/send/read loop is IdleConnections'."""

    def __init__(self, host: str, port: int, path: str, count: int, size: int = 16,
                 **kw) -> None:
        super().__init__(host, port, path, 0, count, **kw)
        self.key, self.accept = ws_key()
        payload = os.urandom(size)
        self.frame = ws_client_frame(2, payload)
        self.echo = ws_server_frame(2, payload)

    def first_bytes(self) -> bytes:
        return ws_upgrade_request(self.host, self.port, self.path, self.key)

    def new_state(self) -> list:
        return [False, bytearray()]       # upgraded yet, bytes read

    def received(self, s: socket.socket, st: list, data: bytes) -> str | None:
        buf = st[1]
        buf += data
        if not st[0]:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return None if len(buf) < MAX_HEAD else "handshake answer head too large"
            why = ws_check_101(bytes(buf[:end]), self.accept)
            if why:
                return why
            if len(buf) > end + 4:
                return "bytes after the 101 before any frame was sent"
            st[0] = True
            buf.clear()
            s.send(self.frame)            # a few bytes on a fresh socket
            return None
        if len(buf) < len(self.echo):
            return None if self.echo.startswith(buf) else "echo differs"
        return "" if buf == self.echo else "echo differs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bulk")
    i = sub.add_parser("idle")
    i2 = sub.add_parser("h2idle")
    for p in (b, i, i2):
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("path")
        p.add_argument("length", type=int, help="expected body length")
    b.add_argument("--seconds", type=float, default=10)
    b.add_argument("--conns", type=int, default=4)
    for p in (i, i2):
        p.add_argument("--count", type=int, default=5000)
        p.add_argument("--hold", type=float, default=5, help="seconds to keep them open")
    ws = {name: sub.add_parser(name) for name in ("wsecho", "wsup", "wsdown")}
    for p in ws.values():
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("path")
        p.add_argument("--seconds", type=float, default=10)
    ws["wsecho"].add_argument("--tunnels", type=int, default=64)
    ws["wsecho"].add_argument("--size", type=int, default=64)
    a = ap.parse_args(argv)
    raise_nofile()
    if a.cmd in ws:
        if a.cmd == "wsecho":
            r = ws_echo(a.host, a.port, a.path, a.tunnels, a.seconds, a.size)
            r["round_trips_per_s"] = r["round_trips"] / r["elapsed"]
        else:
            r = (ws_bulk_up if a.cmd == "wsup" else ws_bulk_down)(a.host, a.port, a.path, a.seconds)
            r["MB_per_s"] = r["bytes"] / r["elapsed"] / 1e6
        print(json.dumps(r))
        return 0
    if a.cmd == "bulk":
        r = bulk_download(a.host, a.port, a.path, a.length, a.seconds, a.conns)
        r["MB_per_s"] = r["bytes"] / r["elapsed"] / 1e6
        print(json.dumps(r))
    else:
        cls = H2IdleConnections if a.cmd == "h2idle" else IdleConnections
        ic = cls(a.host, a.port, a.path, a.length, a.count)
        n = ic.open()
        print(json.dumps({"idle": n, "failed": ic.failed, "errors": ic.errors}))
        time.sleep(a.hold)
        print(json.dumps({"alive_after_hold": ic.alive()}))
        ic.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
