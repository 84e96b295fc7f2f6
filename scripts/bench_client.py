"""Load clients for scripts/bench (stdlib only).

Three clients live here:

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

Both are single-threaded selectors loops.  Run standalone for debugging:

    python scripts/bench_client.py bulk  127.0.0.1 8080 /1m.bin 1048576 --seconds 5
    python scripts/bench_client.py idle  127.0.0.1 8080 /1k.bin 1024 --count 5000
"""

from __future__ import annotations

import argparse
import errno
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
    """Open ``count`` connections, do one complete GET on each, keep them idle."""

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

    def open(self) -> int:
        """Establish the connections; returns how many are idle and usable."""
        req = request_bytes(self.host, self.port, self.path)
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
            sel.register(s, selectors.EVENT_WRITE, ["connecting", bytearray(), 0])

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
                    st = key.data
                    if st[0] == "connecting":
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            sel.unregister(s)
                            s.close()
                            active -= 1
                            self._err(f"connect: {errno.errorcode.get(err, err)}")
                            continue
                        try:
                            s.send(req)
                        except OSError as e:
                            sel.unregister(s)
                            s.close()
                            active -= 1
                            self._err(f"send: {e.__class__.__name__}")
                            continue
                        st[0] = "reading"
                        sel.modify(s, selectors.EVENT_READ, st)
                        continue
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        sel.unregister(s)
                        s.close()
                        active -= 1
                        self._err(f"recv: {e.__class__.__name__}")
                        continue
                    if not data:
                        sel.unregister(s)
                        s.close()
                        active -= 1
                        self._err("closed before response completed")
                        continue
                    buf = st[1]
                    buf += data
                    idx = buf.find(b"\r\n\r\n")
                    if idx < 0:
                        continue
                    status, clen, chunked, close = parse_head(bytes(buf[:idx]))
                    try:
                        body = decode_body(bytes(buf[idx + 4:]), chunked, clen)
                    except (ClientError, ValueError) as e:
                        body, bad = b"", f"bad response: {e}"
                    else:
                        bad = ""
                    if body is None:
                        continue
                    sel.unregister(s)
                    active -= 1
                    if bad or status != 200 or len(body) != self.expect_len:
                        s.close()
                        self._err(bad or f"status {status} length {len(body)}")
                    elif close:
                        s.close()
                        self._err("server sent Connection: close")
                    else:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bulk")
    i = sub.add_parser("idle")
    for p in (b, i):
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("path")
        p.add_argument("length", type=int, help="expected body length")
    b.add_argument("--seconds", type=float, default=10)
    b.add_argument("--conns", type=int, default=4)
    i.add_argument("--count", type=int, default=5000)
    i.add_argument("--hold", type=float, default=5, help="seconds to keep them open")
    a = ap.parse_args(argv)
    raise_nofile()
    if a.cmd == "bulk":
        r = bulk_download(a.host, a.port, a.path, a.length, a.seconds, a.conns)
        r["MB_per_s"] = r["bytes"] / r["elapsed"] / 1e6
        print(json.dumps(r))
    else:
        ic = IdleConnections(a.host, a.port, a.path, a.length, a.count)
        n = ic.open()
        print(json.dumps({"idle": n, "failed": ic.failed, "errors": ic.errors}))
        time.sleep(a.hold)
        print(json.dumps({"alive_after_hold": ic.alive()}))
        ic.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
