"""A small HTTP/2 client (h2c prior knowledge or h2 over TLS) on the h2 library that honours a graceful GOAWAY.

httpcore, and the h2 library itself, end every open stream when a GOAWAY arrives, even GOAWAY(NO_ERROR, 2^31-1),
the first step of a graceful shutdown (RFC 9113 §6.8) after which the server still answers every stream it has.
Here GOAWAY frames are taken out of the byte stream before h2 sees them: streams up to the frame's last stream id
go on to their end, later ones fail with Refused (never processed: safe to retry on a new connection), and no new
stream starts on that connection. Used by scripts/soak.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

GOAWAY = 0x7
FRAME_HEADER = 9
WINDOW = 1 << 24  # our receive window, connection and streams


class StreamFailed(Exception):
    """A stream ended without a complete response: `reason` is "conn" (nothing usable came) or "truncated"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Refused(StreamFailed):
    """The server never processed the stream (its id is above a GOAWAY's last stream id): safe to retry."""

    def __init__(self, detail: str) -> None:
        super().__init__("conn", detail)


@dataclass
class Answer:
    """A complete response: status, header fields (lower-case names; the last of repeated ones) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Stream:
    done: asyncio.Future
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


def _retrieved(done: asyncio.Future) -> None:
    if not done.cancelled():
        done.exception()


class H2Connection:
    """One client connection: requests multiplexed as streams; closed once it goes away and its streams ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, scheme: str) -> None:
        self.reader, self.writer, self.authority, self.scheme = reader, writer, authority, scheme
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0, h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW - 65_535)
        self.streams: dict[int, _Stream] = {}
        self.goaway: int | None = None  # the lowest last stream id of the GOAWAYs received
        self.closed = False
        self.requests = 0
        self._flush()
        self.reading = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None = None) -> H2Connection:
        """Connect (TLS with ALPN h2 when `tls` is given) and send the preface."""
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if alpn != "h2":
                writer.close()
                raise StreamFailed("conn", f"ALPN chose {alpn!r}, not h2")
        return cls(reader, writer, f"{host}:{port}", "https" if tls else "http")

    @property
    def usable(self) -> bool:
        """May a new stream start here?"""
        return not self.closed and self.goaway is None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
        """Send one request (no body) and wait for its whole response."""
        if not self.usable:
            raise Refused("the connection is going away")
        sid = self.h2.get_next_available_stream_id()
        stream = _Stream(asyncio.get_running_loop().create_future())
        stream.done.add_done_callback(_retrieved)  # a failure nobody awaits any more (the caller was cancelled)
        self.streams[sid] = stream
        self.requests += 1
        fields = [(":method", method), (":scheme", self.scheme), (":authority", self.authority), (":path", path),
                  *((k.lower(), v) for k, v in (headers or {}).items())]
        self.h2.send_headers(sid, fields, end_stream=True)
        self._flush()
        return await stream.done

    def close(self) -> None:
        """Close the connection now; open streams fail."""
        self._fail_all("conn", "closed by the client")
        self.closed = True
        self.reading.cancel()
        self.writer.close()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = await self.reader.read(1 << 18)
                if not data:
                    break
                buffer += data
                while len(buffer) >= FRAME_HEADER:
                    end = FRAME_HEADER + int.from_bytes(buffer[:3], "big")
                    if len(buffer) < end:
                        break
                    frame, buffer = buffer[:end], buffer[end:]
                    if frame[3] == GOAWAY:
                        self._went_away(frame)
                    else:
                        self._handle(self.h2.receive_data(frame))
                self._flush()
                if self.goaway is not None and not self.streams:
                    break
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError) as e:
            self._fail_all("conn", f"{type(e).__name__}: {e}")
        finally:
            self.closed = True
            self._fail_all("conn", "connection closed")
            self.writer.close()

    def _went_away(self, frame: bytes) -> None:
        last = int.from_bytes(frame[9:13], "big") & 0x7FFF_FFFF
        code = int.from_bytes(frame[13:17], "big")
        self.goaway = last if self.goaway is None else min(self.goaway, last)
        for sid in [s for s in self.streams if s > self.goaway]:
            self._end(sid, Refused(f"stream {sid} refused by GOAWAY(last {last}, code {code})"))
        if code:
            self._fail_all("conn", f"GOAWAY with error code {code}")

    def _handle(self, events: list) -> None:
        for event in events:
            sid = getattr(event, "stream_id", 0)
            stream = self.streams.get(sid)
            if stream is None:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                stream.headers = {k.lower(): v for k, v in event.headers}
                stream.status = int(stream.headers.pop(":status"))
            elif isinstance(event, h2.events.DataReceived):
                stream.chunks.append(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                self._end(sid, Answer(stream.status, stream.headers, b"".join(stream.chunks)))
            elif isinstance(event, h2.events.StreamReset):
                self._end(sid, StreamFailed("truncated" if stream.status else "conn",
                                            f"stream {sid} reset, code {event.error_code}"))

    def _end(self, sid: int, outcome: Answer | Exception) -> None:
        stream = self.streams.pop(sid)
        if stream.done.done():
            return
        if isinstance(outcome, Exception):
            stream.done.set_exception(outcome)
        else:
            stream.done.set_result(outcome)

    def _fail_all(self, reason: str, detail: str) -> None:
        for sid in list(self.streams):
            got = self.streams[sid].status
            self._end(sid, StreamFailed("truncated" if got else reason, f"stream {sid}: {detail}"))


class H2Client:
    """Requests over one HTTP/2 connection at a time: a new one once the current goes away or is `lifetime` old."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None, lifetime: float = 30.0) -> None:
        self.host, self.port, self.tls, self.lifetime = host, port, tls, lifetime
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
        self.conn: H2Connection | None = None
        self.born = 0.0
        self.old: list[H2Connection] = []
        self._connecting = asyncio.Lock()

    async def _current(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        async with self._connecting:
            conn = self.conn
            if conn is None or not conn.usable or loop.time() - self.born > self.lifetime:
                if conn is not None:
                    self.old.append(conn)
                self.conn = conn = await H2Connection.open(self.host, self.port, self.tls)
                self.born = loop.time()
            self._close_idle()
            return conn

    def _close_idle(self) -> None:
        for conn in list(self.old):
            if not conn.streams:
                conn.close()
                self.old.remove(conn)

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[Answer, int]:
        """The answer, and how many times it was retried because a GOAWAY refused it (at most twice)."""
        for attempt in range(3):
            try:
                conn = await self._current()
            except OSError as e:
                raise StreamFailed("conn", f"connect: {e}") from e
            try:
                return await conn.request(method, path, headers), attempt
            except Refused:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close every connection."""
        for conn in [*self.old, *([self.conn] if self.conn else [])]:
            conn.close()
            await asyncio.gather(conn.reading, return_exceptions=True)
        self.old, self.conn = [], None
