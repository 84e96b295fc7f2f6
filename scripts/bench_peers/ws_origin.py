"""The origin of scripts/bench's tunnel rows: WebSocket echo, sink and source, and a POST sink.

One process, one asyncio loop (uvloop when installed), one BufferedProtocol whose reads all land in a
single preallocated 1 MiB buffer (the loop is single-threaded and every read is consumed before the
next one), so that the origin costs as little as Python allows and is not what a row measures:

    GET /1k.bin                1 KiB of bytes (what scripts/bench probes a proxy with), max-age=3600
    GET /healthz               200 "ok" (edge's active health check)
    GET /ws/echo   + Upgrade   RFC 6455 handshake, then every data frame back unmasked as one frame of
                               the same opcode (unmasking: one big-int XOR, C speed); ping -> pong;
                               close -> close
    GET /ws/sink   + Upgrade   binary frames counted, payloads skipped (never unmasked); a text frame
                               "count" is answered with a text frame "<payload bytes> <frames>"
    GET /ws/source + Upgrade   binary frames of --source-size bytes (unmasked, as a server sends
                               them), back to back under the transport's flow control, until the
                               client sends anything or closes
    POST (any path)            the body read (Content-Length or chunked) and dropped, then 200 "ok\\n";
                               with "X-Bench-Digest: sha256" the answer is the body's SHA-256 (hex)

HTTP/1.1 keep-alive throughout; anything else gets 404 (unknown path) or 400 (a malformed request).

    python ws_origin.py --host 127.0.0.1 --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import resource
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_BUF = bytearray(1 << 20)      # every read of every connection lands here, consumed at once
READ_VIEW = memoryview(READ_BUF)
MAX_HEAD = 64 << 10
ONE_K = os.urandom(1024)
SOURCE_HIGH = 4 << 20              # write buffer high-water mark of a /ws/source tunnel


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked frame (server to client), FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def unmask(key: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


def answer(status: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


OK = answer("200 OK", b"ok\n", "Content-Type: text/plain\r\n")
ONE_K_ANSWER = answer("200 OK", ONE_K, "Content-Type: application/octet-stream\r\n"
                      "Cache-Control: max-age=3600\r\n")


class Conn(asyncio.BufferedProtocol):
    __slots__ = ("app", "t", "mode", "pend", "left", "digest", "keep", "chunk", "skip", "fhead",
                 "fopcode", "fmask", "fbody", "frames", "bytes", "paused")

    def __init__(self, app: "App") -> None:
        self.app = app
        self.mode = "head"            # head, body, chunked, echo, sink, source
        self.pend = bytearray()       # bytes kept between reads (a partial head or frame header)
        self.left = 0                 # body bytes still to read (mode body), or payload bytes (ws)
        self.digest = None
        self.keep = True
        self.frames = 0
        self.bytes = 0
        self.paused = False

    def connection_made(self, transport) -> None:
        self.t = transport

    def connection_lost(self, exc) -> None:
        self.mode = "closed"

    def get_buffer(self, sizehint: int):
        return READ_VIEW

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == "source":
            self.pump()

    def buffer_updated(self, n: int) -> None:
        try:
            mode = self.mode
            if mode == "echo":
                buf = READ_BUF
                if not self.left and not self.pend and n >= 6:   # fast path: one whole small frame
                    b0, b1 = buf[0], buf[1]
                    if n < 132 and b1 & 0x80 and (b1 & 0x7F) == n - 6 and (b0 & 0x0F) in (1, 2):
                        self.t.write(bytes((b0 & 0x8F, n - 6)) + unmask(buf[2:6], buf[6:n]))
                        return
                self.ws_data(READ_VIEW[:n], echo=True)
            elif mode == "sink":
                self.ws_data(READ_VIEW[:n], echo=False)
            elif mode == "source":
                self.t.close()        # the client is done
                self.mode = "closed"
            else:
                self.http_data(READ_VIEW[:n])
        except Exception as e:  # noqa: BLE001  a bad request or frame: close the connection
            print(f"ws_origin: {e.__class__.__name__}: {e}", flush=True)
            self.t.close()
            self.mode = "closed"

    # ---- HTTP/1.1 ---------------------------------------------------------
    def http_data(self, data: memoryview) -> None:
        while data:
            if self.mode == "body":
                take = min(self.left, len(data))
                if self.digest is not None:
                    self.digest.update(data[:take])
                self.left -= take
                data = data[take:]
                if self.left == 0:
                    self.body_done()
                continue
            if self.mode == "chunked":
                data = self.chunked_data(data)
                continue
            if self.mode != "head":
                return
            pend = self.pend
            start = max(0, len(pend) - 3)
            pend += data
            end = pend.find(b"\r\n\r\n", start)
            if end < 0:
                if len(pend) > MAX_HEAD:
                    raise ValueError("request head too large")
                return
            head = bytes(pend[:end])
            data = memoryview(bytes(pend[end + 4:]))
            pend.clear()
            self.request(head)
            if self.mode in ("echo", "sink"):
                if data:
                    self.ws_data(data, echo=self.mode == "echo")
                return
            if self.mode == "source":
                return

    def request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            raise ValueError(f"bad request line {lines[0][:80]!r}")
        method, target, version = parts
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ValueError(f"bad field line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            fields[name] = fields[name] + b", " + value if name in fields else value
        conn = fields.get(b"connection", b"").lower()
        self.keep = version == b"HTTP/1.1" and b"close" not in conn
        path = target.split(b"?", 1)[0]
        if method == b"POST" or method == b"PUT":
            self.digest = hashlib.sha256() if fields.get(b"x-bench-digest") == b"sha256" else None
            if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
                self.mode, self.chunk, self.skip = "chunked", "size", 0
                return
            self.left = int(fields.get(b"content-length", b"0"))
            self.mode = "body"
            if self.left == 0:
                self.body_done()
            return
        if method != b"GET":
            self.reply(answer("405 Method Not Allowed", b"", "Allow: GET, POST, PUT\r\n"))
            return
        if b"websocket" in fields.get(b"upgrade", b"").lower() and path.startswith(b"/ws/"):
            kind = path[4:].decode("latin-1")
            key = fields.get(b"sec-websocket-key")
            if kind not in ("echo", "sink", "source") or not key:
                self.reply(answer("400 Bad Request", b"no such tunnel or no key\n"))
                return
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                         + accept.encode() + b"\r\n\r\n")
            self.mode, self.left, self.fhead = kind, 0, None
            if kind == "source":
                self.t.set_write_buffer_limits(high=SOURCE_HIGH)
                self.pump()
            return
        if path == b"/1k.bin":
            self.reply(ONE_K_ANSWER)
        elif path == b"/healthz":
            self.reply(OK)
        else:
            self.reply(answer("404 Not Found", b"not found\n"))

    def chunked_data(self, data: memoryview) -> memoryview:
        """One step of a chunked body: a size line, chunk data, or the CRLF after it."""
        if self.chunk == "data":
            take = min(self.skip, len(data))
            if self.digest is not None:
                self.digest.update(data[:take])
            self.skip -= take
            if self.skip == 0:
                self.chunk = "crlf"
            return data[take:]
        pend = self.pend
        pend += data
        end = pend.find(b"\r\n")
        if end < 0:
            if len(pend) > 4096:
                raise ValueError("chunk line too long")
            return memoryview(b"")
        line = bytes(pend[:end])
        rest = memoryview(bytes(pend[end + 2:]))
        pend.clear()
        if self.chunk == "crlf":
            if line:
                raise ValueError("no CRLF after chunk data")
            self.chunk = "size"
        elif self.chunk == "size":
            size = int(line.split(b";", 1)[0], 16)
            if size:
                self.chunk, self.skip = "data", size
            else:
                self.chunk = "trailers"
        elif self.chunk == "trailers" and not line:
            self.body_done()
        return rest

    def body_done(self) -> None:
        self.mode = "head"
        if self.digest is not None:
            body = self.digest.hexdigest().encode()
            self.digest = None
            self.reply(answer("200 OK", body, "Content-Type: text/plain\r\n"))
        else:
            self.reply(OK)

    def reply(self, data: bytes) -> None:
        if not self.keep:
            data = data.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
        self.t.write(data)
        if not self.keep:
            self.t.close()
            self.mode = "closed"

    # ---- WebSocket ----------------------------------------------------------
    def ws_data(self, data: memoryview, echo: bool) -> None:
        """Frames from the client: echoed (echo) or counted (sink).  ``fhead`` is the frame under way
        (opcode, mask key, payload bytes kept for echo), ``left`` its payload bytes still to come."""
        while data:
            if self.left:
                take = min(self.left, len(data))
                if echo or self.fopcode != 2:
                    self.fbody += data[:take]
                else:
                    self.bytes += take
                self.left -= take
                data = data[take:]
                if self.left == 0:
                    self.frame_done(echo)
                continue
            pend = self.pend
            if not pend and len(data) >= 6:   # common case: the whole header in this read
                b1 = data[1]
                hl = 2 + (2 if b1 & 0x7F == 126 else 8 if b1 & 0x7F == 127 else 0) + 4
                if len(data) >= hl:
                    hdr, data = bytes(data[:hl]), data[hl:]
                    self.start_frame(hdr)
                    continue
            pend += data
            data = memoryview(b"")
            if len(pend) < 2:
                return
            b1 = pend[1]
            hl = 2 + (2 if b1 & 0x7F == 126 else 8 if b1 & 0x7F == 127 else 0) + 4
            if len(pend) < hl:
                return
            hdr, data = bytes(pend[:hl]), memoryview(bytes(pend[hl:]))
            pend.clear()
            self.start_frame(hdr)

    def start_frame(self, hdr: bytes) -> None:
        b0, b1 = hdr[0], hdr[1]
        if not b1 & 0x80:
            raise ValueError("unmasked frame from the client")
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack_from("!H", hdr, 2)[0]
        elif n == 127:
            n = struct.unpack_from("!Q", hdr, 2)[0]
        self.fopcode, self.fmask, self.fbody, self.left = b0 & 0x0F, hdr[-4:], bytearray(), n
        self.fhead = b0
        if n == 0:
            self.frame_done(self.mode == "echo")

    def frame_done(self, echo: bool) -> None:
        op = self.fopcode
        if op == 8:                                  # close: answer it, then close
            self.t.write(frame(8, unmask(self.fmask, bytes(self.fbody))[:2]))
            self.t.close()
            self.mode = "closed"
            return
        if op == 9:                                  # ping
            self.t.write(frame(10, unmask(self.fmask, bytes(self.fbody))))
            return
        if op == 10:
            return
        if echo:
            payload = unmask(self.fmask, bytes(self.fbody))
            self.t.write(bytes([self.fhead & 0x8F]) + frame(op, payload)[1:])
            self.fbody = bytearray()
            return
        self.frames += 1
        if op == 1:                                  # sink: a text frame asks for the count
            if unmask(self.fmask, bytes(self.fbody)) == b"count":
                self.frames -= 1
                self.t.write(frame(1, f"{self.bytes} {self.frames}".encode()))
            self.fbody = bytearray()

    def pump(self) -> None:
        """Source: frames back to back while the transport takes them."""
        data = self.app.source_frame
        t = self.t
        while not self.paused and self.mode == "source" and not t.is_closing():
            t.write(data)


class App:
    def __init__(self, source_size: int) -> None:
        self.source_frame = frame(2, os.urandom(source_size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--source-size", type=int, default=1 << 20,
                    help="payload bytes of each /ws/source frame")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        loop = uvloop.new_event_loop()
        kind = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = asyncio.new_event_loop()
        kind = "asyncio"
    asyncio.set_event_loop(loop)
    app = App(a.source_size)
    server = loop.run_until_complete(loop.create_server(
        lambda: Conn(app), a.host, a.port, backlog=4096, reuse_address=True))
    print(f"ws_origin ({kind}) listening on http://{a.host}:{a.port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
