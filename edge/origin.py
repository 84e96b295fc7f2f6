"""The origin client: a key's origin from the ring, bounded keep-alive pools, one retry on the next node.

HTTP/1.1 over asyncio protocols with httptools parsing the responses. aiohttp's client was the
first choice; measured against an nginx origin it cost about 280 µs of CPU per request, more than
a whole cache miss may cost (the miss path is measured against nginx proxy_cache), where this
client costs a fraction of that. Bodies stream: a response hands its body on in chunks as they
arrive and stops reading from the origin while its reader lags behind.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from .balance import CONSISTENT, LEAST_CONN, Balancer
from .health import POOL_FIELDS, POOL_IDLE, POOL_IN_USE, POOL_OPEN, POOL_OPENED, pick_origins
from .ring import Ring

#: Connection-specific fields (RFC 9110 §7.6.1): never forwarded in either direction.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
HOP_BY_HOP_BYTES = frozenset(name.encode("ascii") for name in HOP_BY_HOP)  # the same, as header names arrive


def connection_options(value: bytes) -> set[bytes]:
    """The lower-cased names a Connection field lists (RFC 9110 §7.6.1): each is hop-by-hop too."""
    return {option.strip(b" \t").lower() for option in value.split(b",")}


def end_to_end(fields: Sequence[tuple[bytes, bytes]], dropped: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """`fields` (names as sent) without those `dropped` names (lower-case) and those a Connection field among
    them lists (RFC 9110 §7.6.1), for a head carried on whole (a passed request, an upgrade's answer)."""
    nominated: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            nominated |= connection_options(value)
    return [(name, value) for name, value in fields
            if name.lower() not in dropped and name.lower() not in nominated]


#: Fields of an origin's answer never passed on as they came: the framing (edge writes its own, RFC 9112 §6),
#: Server (edge's own, as for every answer) and Surrogate-Key (purge tags, never for clients).
NOT_RETURNED = frozenset({b"content-length", b"server", b"surrogate-key"})


def join_cookies(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 request's fields for an HTTP/1.1 hop: its cookie crumbs as one Cookie field joined with "; "
    (RFC 9113 §8.2.3; many applications read only the first of several Cookie lines); `fields` itself when
    there is at most one."""
    cookies = [value for name, value in fields if name == b"cookie"]
    if len(cookies) < 2:
        return fields
    joined = [pair for pair in fields if pair[0] != b"cookie"]
    joined.append((b"cookie", b"; ".join(cookies)))
    return joined


def relayed_head(method: bytes, target: bytes, fields: Sequence[tuple[bytes, bytes]], host: bytes, via: bytes,
                 own: bytes) -> bytes:
    """The head of a client's request carried on to an origin as it came (a passed-through method, a
    WebSocket upgrade): every end-to-end field as sent (Authorization and Cookie too), Host and Via as for
    any origin request, and `own`, the lines edge writes itself for this hop (the body's framing; Connection
    and Upgrade, an upgrade being per hop, RFC 9110 §7.8).

    RFC 9110 §7.6.1: hop-by-hop fields and those the client's Connection names stay behind; §7.6.3: Via
    lists the client's hops, then edge."""
    client_via = [value for name, value in fields if name.lower() == b"via"]
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)]
    lines.extend(b"%s: %s\r\n" % field for field in end_to_end(fields, _NOT_PASSED))
    lines.append(own)
    lines.append(b"Via: %s\r\n\r\n" % b", ".join([*client_via, via]))
    return b"".join(lines)

#: Transfer codings edge undoes when an origin applies them without chunked (RFC 9112 §7; the body then ends
#: with the connection, §6.3 rule 4): zlib reads gzip and deflate (zlib-wrapped) streams alike.
_DECODED_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate"})
IDEMPOTENT = frozenset({"GET", "HEAD"})
#: RFC 9110 §9.2.2: the methods whose request may be sent again without a different effect.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
#: A passed-through request's client fields edge never sends on: hop-by-hop ones (RFC 9110 §7.6.1), and those
#: it writes itself: Host and Via (as for every origin request), the body's framing (RFC 9112 §6: edge frames
#: the body it forwards) and Expect (edge answers 100-continue itself when it starts reading the body).
_NOT_PASSED = HOP_BY_HOP_BYTES | {b"host", b"via", b"content-length", b"transfer-encoding", b"expect"}
UPLOAD_HIGH = 256 * 1024  # request body bytes buffered towards an origin before edge stops taking more
KEEPALIVE = 30.0  # seconds an idle pooled connection is kept (origins commonly close after 60-75 s)
HIGH_WATER = 1 << 20  # body bytes buffered for a slow reader before reading from the origin pauses


class OriginError(Exception):
    """No origin gave an answer: `timeout` tells a 504 from a 502."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class TruncatedBody(OriginError):
    """The origin closed or failed before the whole body arrived (never cache it, never pass it as complete)."""


class BodyFailed(Exception):
    """The client's request body could not be passed on: malformed (400), too large (413), stalled (408), or the
    client left (0). Never the origin's failure (its circuit is not charged, no other origin is tried)."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or f"request body failed ({status})")
        self.status = status


class _Dropped(ConnectionError):

    """A reused keep-alive connection closed before any byte of the answer: safe to ask again at once."""


@dataclass(frozen=True)
class Upstream:
    """One origin: its base URL, weight and the Host header it wants (default: its own authority)."""

    url: str
    weight: int = 1
    host_header: str | None = None

    @property
    def authority(self) -> str:
        """host[:port] of the URL."""
        return urlsplit(self.url).netloc


class Fetched:
    """An origin's response: status and header fields at once, the body as it arrives (read()).

    `headers` are (lower-case name, value) bytes pairs, hop-by-hop fields left out.
    """

    def __init__(self, index: int, conn: _Conn, hints: Callable[[list[tuple[bytes, bytes]]], None] | None = None) -> None:
        self.index = index
        self._conn = conn
        self.hints = hints  # hears the fields of each 103 Early Hints before the answer (RFC 8297)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.nominated: set[bytes] = set()  # the names its Connection field lists (RFC 9110 §7.6.1)
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._head: asyncio.Future = conn.loop.create_future()
        self.complete = False
        self.error: OriginError | None = None
        self.any_byte = False
        self.dropped = False  # a reused connection closed before any byte: the request may be sent again

    # -- fed by the connection ---------------------------------------------------------------------

    def _headers_done(self, status: int) -> None:
        self.status = status
        if not self._head.done():
            self._head.set_result(None)

    def _data(self, chunk: bytes) -> None:
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        if self.error is not None:
            return  # already failed (e.g. aborted by us): a late end must not make it look complete
        self.complete = True
        self._wake()

    def _fail(self, error: OriginError) -> None:
        if self.complete or self.error is not None:
            return
        self.error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the puller ------------------------------------------------------------------------

    async def head(self) -> None:
        """Wait for the status line and header fields (OriginError if the origin fails first)."""
        await self._head

    async def read(self) -> bytes:
        """The next piece of the body as it arrives, b"" after the last; TruncatedBody if it ends short or stalls.

        A method, not an async generator: those are registered with the loop one by one, which costs
        the miss path more than the loop here.
        """
        while True:
            if self._buffer:
                chunk = self._buffer.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= HIGH_WATER // 2:
                    self._conn.resume()
                return chunk
            if self.complete:
                return b""
            if self.error is not None:
                raise TruncatedBody(f"origin body cut short: {self.error}")
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Done with the response: the connection goes back to its pool if the exchange ended cleanly."""
        self._conn.finished(self)


class _Conn(asyncio.Protocol):
    """One keep-alive connection to an origin: writes a request, parses its response with httptools."""

    def __init__(self, pool: _HostPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Fetched | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self.last_data = 0.0
        self.interim = False
        self.framed = False  # Content-Length or chunked: the end is known without the connection closing
        self.decoder = None  # a zlib decompressor for a gzip/deflate transfer coding (no chunked)
        self.paused = False
        self.pool_reused = False  # the current request went out on a connection used before
        # A request body streaming to the origin (upload()): its task, whether it is under way, the waiter for
        # room in the transport's buffer. The read timeout does not run while it is (the body has its own).
        self.uploader: asyncio.Task | None = None
        self.uploading = False
        self.write_paused = False
        self.room: asyncio.Future | None = None

    # -- asyncio -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        self.transport = transport

    def data_received(self, data: bytes) -> None:  # noqa: D102
        response = self.response
        if response is None:
            self.transport.abort()  # bytes nobody asked for: this connection is not in a known state
            return
        response.any_byte = True
        self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.reusable = False
            response._fail(OriginError(f"bad response from {self.pool.upstream.url}: {e}"))
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.closed = True
        self.reusable = False
        self._unwatch()
        self._room()
        if self.uploader is not None:
            self.uploader.cancel()
        response = self.response
        if response is None:
            self.pool.lost_idle(self)  # the origin closed a kept-alive connection: gone from the pool at once
            return
        if response.complete:
            return
        if response.status and not self.framed and exc is None:
            decoder = self.decoder
            if decoder is not None:
                tail = decoder.flush()
                if not decoder.eof:  # a transfer-coded body cut short
                    response._fail(OriginError(f"{self.pool.upstream.url}: transfer-coded body cut short"))
                    return
                if tail:
                    response._data(tail)
            response._end()  # a body delimited by the connection's close (RFC 9112 §6.3 rules 4 and 8)
        elif not response.any_byte and self.pool_reused:
            response._fail(OriginError("dropped"))
            response.dropped = True
        else:
            response._fail(OriginError(f"connection to {self.pool.upstream.url} lost"))

    def pause_writing(self) -> None:  # noqa: D102 - the origin is not taking the request body as fast
        self.write_paused = True

    def resume_writing(self) -> None:  # noqa: D102
        self.write_paused = False
        self._room()

    def _room(self) -> None:
        room = self.room
        if room is not None and not room.done():
            room.set_result(None)

    def upload(self, body, chunked: bool) -> None:  # noqa: ANN001 - a passthrough.RequestBody
        """Stream `body` (async read() -> bytes, b"" at its end) to the origin after the request head, chunked
        or as is (its Content-Length was sent), as the origin takes it; the answer may come meanwhile."""
        self.transport.set_write_buffer_limits(high=UPLOAD_HIGH)
        self.uploading = True
        self.uploader = self.loop.create_task(self._upload(body, chunked))

    async def _upload(self, body, chunked: bool) -> None:  # noqa: ANN001
        """upload()'s task: a failed body fails the answer (BodyFailed), an origin that stops taking bytes for
        read_timeout fails it as a timeout; either way the connection is dropped, never reused half-written."""
        response = self.response
        timeout = self.pool.read_timeout
        try:
            while chunk := await body.read():
                if self.closed:
                    return
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.last_data = self.loop.time()
                if self.write_paused and not self.closed:
                    self.room = self.loop.create_future()
                    try:
                        async with asyncio.timeout(timeout):
                            await self.room
                    except TimeoutError:
                        raise OriginError(f"{self.pool.upstream.url}: took no request body for {timeout:g} s",
                                          timeout=True) from None
                    finally:
                        self.room = None
            if not self.closed:
                if chunked:
                    self.transport.write(b"0\r\n\r\n")  # RFC 9112 §7.1: the last chunk, no trailer fields
                self.last_data = self.loop.time()  # the read timeout runs from the body's end
            self.uploading = False
        except Exception as e:  # noqa: BLE001 - whatever stops the body fails this one exchange, never the worker
            if not isinstance(e, (BodyFailed, OriginError)):
                e = OriginError(f"{self.pool.upstream.url}: request body not sent: {e!r}")
            self.reusable = False
            if response is not None:
                response._fail(e)  # noqa: SLF001 - a BodyFailed reaches whoever waits for the answer
            if not self.closed:
                self.closed = True
                self.transport.abort()  # the origin must not take a cut body for a whole one
        finally:
            self.uploader = None

    def pause(self) -> None:
        """Stop reading until the body's reader catches up."""
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read again."""
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_data = self.loop.time()
            self.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        name = name.lower()
        if name == b"content-length":
            self.framed = True
        elif name == b"transfer-encoding":
            self._transfer_coding(value)
        if name not in HOP_BY_HOP_BYTES:
            self.response.headers.append((name, value))
        elif name == b"connection":  # RFC 9110 §7.6.1: the fields it names are hop-by-hop too (removed below;
            # those always dropped were never kept, so "keep-alive" or "close" costs no second pass)
            self.response.nominated |= connection_options(value) - HOP_BY_HOP_BYTES

    def on_headers_complete(self) -> None:  # noqa: D102
        status = self.parser.get_status_code()
        response = self.response
        if status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            if status == 103 and response.hints is not None and response.headers:
                response.hints([(k, v) for k, v in response.headers if k not in response.nominated])
            response.headers.clear()  # a 1xx's fields are never the answer's (nor stored)
            response.nominated.clear()
            self.framed = False
            self.decoder = None
            return
        if response.nominated:  # never stored, never sent to a client (RFC 9110 §7.6.1), wherever they came
            response.headers = [(k, v) for k, v in response.headers if k not in response.nominated]
        response._headers_done(status)

    def _transfer_coding(self, value: bytes) -> None:
        """Transfer-Encoding (RFC 9112 §6.1): chunked last frames the body; otherwise it ends with the
        connection (§6.3 rule 4) and its codings are undone here (gzip, deflate; identity is none), so
        what is streamed and stored is the content; any other coding fails the response (edge cannot read it)."""
        codings = [c.strip().lower() for c in value.split(b",") if c.strip()]
        if codings and codings[-1] == b"chunked":
            self.framed = True
            return
        applied = [c for c in codings if c != b"identity"]
        if not applied:
            return
        if len(applied) > 1 or applied[0] not in _DECODED_CODINGS:
            raise OriginError(f"{self.pool.upstream.url}: transfer coding {value.decode('latin-1')!r} not supported")
        self.decoder = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or zlib header, whichever comes

    def on_body(self, body: bytes) -> None:  # noqa: D102
        if self.decoder is not None:
            try:
                body = self.decoder.decompress(body)
            except zlib.error as e:
                raise OriginError(f"{self.pool.upstream.url}: bad transfer-coded body: {e}") from None
            if not body:
                return
        self.response._data(body)

    def on_message_complete(self) -> None:  # noqa: D102
        if self.interim:
            self.interim = False
            return
        self._unwatch()
        self.reusable = self.parser.should_keep_alive()
        self.response._end()

    # -- requests ----------------------------------------------------------------------------------

    def send(self, request: bytes, reused: bool,
             hints: Callable[[list[tuple[bytes, bytes]]], None] | None = None) -> Fetched:
        """Write a request; its response is read from here on (`hints` hears each 103's fields)."""
        response = Fetched(self.pool.index, self, hints)
        self.response = response
        self.pool_reused = reused
        self.reusable = False
        self.interim = False
        self.framed = False
        self.decoder = None
        self.last_data = self.loop.time()
        self.pool.watch(self)
        self.transport.write(request)
        return response

    def stalled(self, now: float) -> bool:
        """The read timeout (asked by the pool's sweep): no byte for read_timeout seconds fails the response.

        True once the connection needs no more watching."""
        response = self.response
        if response is None or response.complete or response.error is not None:
            return True
        if self.uploading or self.paused or now - self.last_data < self.pool.read_timeout:
            return False  # (a request body still going out watches its own time: _upload; a paused one waits
            # for its reader, a passed answer's slow client: the time runs again from resume())
        response._fail(OriginError(f"{self.pool.upstream.url}: no answer for {self.pool.read_timeout:g} s",
                                   timeout=True))
        self.transport.abort()
        return True

    def _unwatch(self) -> None:
        self.pool.busy.discard(self)

    def finished(self, response: Fetched) -> None:
        """The reader let go of `response`: keep the connection if it ended cleanly, else drop it."""
        if self.response is not response:
            return
        self.response = None
        self._unwatch()
        if self.uploader is not None:
            self.uploader.cancel()  # the answer is over before the request body: this connection is done
            self.reusable = False
        reusable = response.complete and self.reusable and not self.closed and not self.uploading
        if not reusable and not self.closed:
            self.closed = True
            self.transport.abort()
        self.resume()
        self.pool.release(self, reusable)


class _HostPool:
    """Keep-alive connections to one origin, at most `limit` at a time; requests beyond it queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, index: int, upstream: Upstream, limit: int,
                 connect_timeout: float, read_timeout: float, figures: memoryview | None = None) -> None:
        self.loop = loop
        self.index = index
        self.upstream = upstream
        parts = urlsplit(upstream.url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: list[_Conn] = []
        self.count = 0  # open or opening connections
        #: Requests under way to this origin (waiting for a connection included) and tunnels (OriginPool.track):
        #: what least-conn balances by.
        self.active = 0
        #: This worker's pool figures for the admin endpoint (health.pool_figures), from `at` on; None: not kept.
        self.figures = figures
        self.at = index * POOL_FIELDS
        self.waiters: deque[asyncio.Future] = deque()
        # Connections waiting for an answer, swept for stalls a few times per read timeout: one timer
        # for the pool, not one per request (a timer per request was a measurable part of a cache miss).
        self.busy: set[_Conn] = set()
        self.sweep_every = min(1.0, read_timeout / 4)
        self.sweeper: asyncio.TimerHandle | None = None

    def watch(self, conn: _Conn) -> None:
        """Check `conn` for a stalled answer until it ends."""
        self.busy.add(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.sweep_every, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self.busy if c.stalled(now)]:
            self.busy.discard(conn)
        self.sweeper = self.loop.call_later(self.sweep_every, self._sweep) if self.busy else None

    def publish(self) -> None:
        """Write the pool's gauges (open or opening, idle, in use) to this worker's shared figures."""
        figures = self.figures
        if figures is not None:
            at, idle = self.at, len(self.idle)
            figures[at + POOL_OPEN] = self.count
            figures[at + POOL_IDLE] = idle
            figures[at + POOL_IN_USE] = self.count - idle

    async def acquire(self, fresh: bool = False) -> tuple[_Conn, bool]:
        """A connection to send on: (an idle one, True) or (a new one, False); counted active until release().
        `fresh`: a new one whatever is idle (an idle one is closed when the pool is full, to make room)."""
        self.active += 1
        now = self.loop.time()
        if fresh and self.idle and self.count >= self.limit:
            self._discard(self.idle.pop(0))  # the oldest idle one
        while self.idle and not fresh:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE:
                self.publish()
                return conn, True
            self._discard(conn)
        if self.count >= self.limit:
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                conn = await asyncio.wait_for(waiter, self.connect_timeout)
            except BaseException as e:
                self.active -= 1
                if isinstance(e, asyncio.TimeoutError):
                    raise OriginError(f"{self.upstream.url}: all {self.limit} connections busy", timeout=True) \
                        from None
                raise
            if conn is not None:
                self.publish()
                return conn, True
        else:
            self.count += 1
        return await self._connect(), False

    async def _connect(self) -> _Conn:
        self.publish()
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout)
        except BaseException:
            self.count -= 1
            self.active -= 1
            self._wake_one(None)
            self.publish()
            raise
        if self.figures is not None:
            self.figures[self.at + POOL_OPENED] += 1
        return conn

    def release(self, conn: _Conn, reusable: bool) -> None:
        """Take a connection back: to a queued request, to the idle list, or closed."""
        self.active -= 1
        if reusable:
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = self.loop.time()
            self.idle.append(conn)
            self.publish()
            return
        self.count -= 1
        self._wake_one(None)
        self.publish()

    def lost_idle(self, conn: _Conn) -> None:
        """An idle connection was closed by the origin: it no longer counts (nor shows) as open."""
        if conn in self.idle:
            self.idle.remove(conn)
            self.count -= 1
            self._wake_one(None)
            self.publish()

    def _wake_one(self, conn: _Conn | None) -> None:
        """A slot opened: the first queued request may open a connection of its own."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.count += 1
                waiter.set_result(conn)
                return

    def _discard(self, conn: _Conn) -> None:
        if not conn.closed:
            conn.closed = True
            conn.transport.close()
        self.count -= 1

    def close(self) -> None:
        """Close every idle connection (those in use close when their response is let go)."""
        for conn in self.idle:
            self._discard(conn)
        self.idle.clear()
        self.publish()
        if self.sweeper is not None and not self.busy:
            self.sweeper.cancel()
            self.sweeper = None


class OriginPool:
    """Sends a request to its origin by the balancing policy (edge/balance.py), with keep-alive pools and a
    bounded retry."""

    def __init__(self, upstreams: Sequence[Upstream], *, connect_timeout: float = 2.0, read_timeout: float = 10.0,
                 forward_headers: Sequence[str] = (), limit_per_origin: int = 64, via: str = "1.1 edge",
                 balance: str = CONSISTENT, figures: memoryview | None = None) -> None:
        self.upstreams = list(upstreams)
        self.ring = Ring([(u.url, u.weight) for u in self.upstreams])
        self.forward = frozenset(h.lower() for h in forward_headers) - HOP_BY_HOP
        self.via = via
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit = limit_per_origin
        self.pools: list[_HostPool] | None = None
        #: The policy of fetch() ([proxy] balance); order() takes any policy (tunnels: [websocket] balance).
        self.balance = balance
        self.balancers: dict[str, Balancer] = {}
        #: This worker's pool figures in shared memory (health.pool_figures), None: not published.
        self.figures = figures

    def _pools(self) -> list[_HostPool]:
        if self.pools is None:
            loop = asyncio.get_running_loop()
            self.pools = [_HostPool(loop, i, u, self.limit, self.connect_timeout, self.read_timeout, self.figures)
                          for i, u in enumerate(self.upstreams)]
        return self.pools

    def order(self, policy: str, key: bytes = b"", client: str | None = None,
              eligible: Callable[[int], bool] = lambda i: True) -> list[int]:
        """Origin indexes to try by `policy`, best first (then health.pick_origins): by cache `key` (consistent),
        `client` address (ip-hash), this worker's active requests and tunnels (least-conn) or weights.

        `eligible(i)` must not change state (no breaker trial taken): round-robin and least-conn skip the others."""
        balancer = self.balancers.get(policy)
        if balancer is None:
            balancer = self.balancers[policy] = Balancer(policy, self.ring, [u.weight for u in self.upstreams])
        active = ()
        if policy == LEAST_CONN and self.pools is not None:
            active = [pool.active for pool in self.pools]
        return balancer.order(key, client, active, eligible)

    def track(self, index: int, delta: int) -> None:
        """A tunnel (or another long exchange outside fetch()) to origin `index` opened (+1) or ended (-1):
        least-conn counts it as active."""
        self._pools()[index].active += delta

    def request_headers(self, upstream: Upstream, incoming: Sequence[tuple[str, str]],
                        extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
        """Host, Via, the listed client fields (never hop-by-hop ones), then `extra` (e.g. validators).

        A field the client's own Connection field names is hop-by-hop (RFC 9110 §7.6.1) and stays behind."""
        out = {"Host": upstream.host_header or upstream.authority, "Via": self.via}
        nominated: set[bytes] = set()
        for name, value in incoming:
            if name.lower() == "connection":
                nominated |= connection_options(value.encode("latin-1"))
        for name, value in incoming:
            if name.lower() in self.forward and name.lower().encode("latin-1") not in nominated:
                out[name] = value
        for name, value in extra:
            out[name] = value
        return out

    def passed_request(self, pool: _HostPool, method: bytes, target: str, fields: Sequence[tuple[bytes, bytes]],
                       framing: bytes) -> bytes:
        """The head of a passed-through request (edge/passthrough.py): relayed_head with the pool's origin, then
        `framing` (the body's Content-Length or Transfer-Encoding line, or nothing)."""
        host = (pool.upstream.host_header or pool.upstream.authority).encode("latin-1")
        return relayed_head(method, (pool.prefix + target).encode("latin-1"), fields, host,
                            self.via.encode("latin-1"), framing)

    def _request(self, pool: _HostPool, method: str, target: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {pool.prefix}{target} HTTP/1.1\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def fetch(self, key: bytes, method: str, target: str, incoming: Sequence[tuple[str, str]] = (),
                    extra: Sequence[tuple[str, str]] = (), healthy: Callable[[int], bool] = lambda i: True,
                    on_failure: Callable[[int], None] = lambda i: None, up: Callable[[int], bool] | None = None,
                    failed_status: Callable[[int], bool] = lambda status: False,
                    hints: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
                    client: str | None = None, eligible: Callable[[int], bool] | None = None,
                    passed: tuple[Sequence[tuple[bytes, bytes]], bytes] | None = None, body=None) -> Fetched:  # noqa: ANN001
        """The response of the first healthy origin for the request; an idempotent one is retried once on the next.

        `passed`: a passed-through request (edge/passthrough.py), its client fields and framing line (see
        passed_request; `incoming` and `extra` are not used then), with its `body` streamed after the head
        (None: no body). RFC 9110 §9.2.2: one that cannot be sent again whole (a body, which is read from the
        client as it goes, or a method that is not idempotent) goes on a fresh connection, never a pooled one,
        so no "kept-alive connection closed under it" can happen to it and nothing calls for a second try; the
        next origin is asked only when no connection could be made (nothing was sent). BodyFailed: the
        client's body failed (not the origin's failure).

        The origins are ordered by the pool's policy (order(): `key`, the `client` address, active counts);
        `eligible(i)`, a side-effect-free `healthy` (default: `up`), is what round-robin and least-conn skip by.

        `target` is the path and query, percent-encoded. `healthy(i)`: the active check and the breaker
        allow origin i; `up(i)`: the active check alone, the last resort when no origin is healthy (see
        health.pick_origins; None: no last resort). `on_failure` hears of each origin that refused,
        reset, timed out or answered a status `failed_status` says is the origin's failure (for the
        circuit breaker); such an answer is retried on the next origin like a refused connection.
        """
        replayable = passed is None or (body is None and method.encode("latin-1") in IDEMPOTENT_METHODS)
        most = 2 if method in IDEMPOTENT or passed is not None else 1
        order = self.order(self.balance, key, client, eligible or up or (lambda i: True))
        tries = pick_origins(order, healthy, up or (lambda i: False), most)
        if not tries:
            raise OriginError("no healthy origin")
        pools = self._pools()
        timed_out = False
        failure = "no origin tried"
        for n, index in enumerate(tries):
            pool = pools[index]
            if passed is None:
                request = self._request(pool, method, target, self.request_headers(pool.upstream, incoming, extra))
            else:
                request = self.passed_request(pool, method.encode("latin-1"), target, *passed)
            try:
                response = await self._exchange(pool, request, hints, body, replayable)
            except (OSError, asyncio.TimeoutError, OriginError) as e:
                timed_out = isinstance(e, asyncio.TimeoutError) or getattr(e, "timeout", False)
                failure = f"{pool.upstream.url}: {type(e).__name__}: {e}"
                on_failure(index)
                if getattr(e, "sent", False) and not replayable:
                    break  # RFC 9110 §9.2.2: sent once, never again (the origin may have acted on it)
                continue
            if n + 1 < len(tries) and failed_status(response.status) and replayable:
                # A status the operator counts as the origin's failure is treated like a refused connection:
                # dropped, counted, and the next origin asked (nginx proxy_next_upstream http_502 counts and
                # retries together). The last origin's answer goes to the client as it is, as nginx does.
                response.close()
                on_failure(index)
                timed_out = False
                failure = f"{pool.upstream.url}: answered {response.status}"
                continue
            return response
        raise OriginError(failure, timeout=timed_out)

    async def _exchange(self, pool: _HostPool, request: bytes,
                        hints: Callable[[list[tuple[bytes, bytes]]], None] | None = None, body=None,  # noqa: ANN001
                        replayable: bool = True) -> Fetched:
        """Send on a pooled connection and wait for the head; a reused one found dropped is replaced once.
        Not `replayable`: on a fresh connection, once (an OriginError after the request went says `sent`)."""
        for _ in range(2):
            conn, reused = await pool.acquire(fresh=not replayable)
            response = conn.send(request, reused, hints)
            if body is not None:
                conn.upload(body, chunked=body.length is None)
            try:
                await response.head()
                return response
            except OriginError as e:
                response.close()
                if not replayable:
                    e.sent = True
                    raise
                if not response.dropped:
                    raise
            except BaseException:
                response.close()  # BodyFailed (the client's body), or cancelled: the connection is dropped
                raise
        raise OriginError(f"{pool.upstream.url}: connections keep dropping")


    async def close(self) -> None:
        """Close every pooled connection."""
        for pool in self.pools or ():
            pool.close()
