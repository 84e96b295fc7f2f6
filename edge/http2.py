"""HTTP/2 adapter: an engine's events in (edge's own, or the h2 library's); core's plans out as HEADERS and
flow-controlled, interleaved DATA."""

from __future__ import annotations

import asyncio
import os
import re
import struct

from . import h2engine
from .h2engine import (
    DATA_EVENT,
    ENHANCE_YOUR_CALM as CALM,
    GOAWAY,
    INTERNAL_ERROR as INTERNAL,
    NO_ERROR,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    REFUSED_STREAM as REFUSED,
    REQUEST,
    RESET,
    SETTINGS,
    STREAM_ERROR,
    TRAILERS,
    ConnectionFailed,
    Engine,
    RefusedPush,
)
from .core import SEMANTIC_FIELDS, Miss, Pass, Plan, Request, apply_field
from .origin import join_cookies
from .passthrough import RequestBody, expects_continue

from .exchange import HEADLESS, Services, begin, body_parts, client_address, finish, outline
from .stored import STREAMED, streamed_sent
from .filecache import FileEntry
from .hints import PageHints
from .hpackblock import encode_block
from .h2tunnel import TunnelStream, end_all, extended_connect, pump_all
from .ratelimit import TokenBucket
from .stats import BYTES_OUT, CONNECTIONS_ACTIVE, CONNECTIONS_TOTAL, ERRORS, H2_STATUS_FIELD

PREFACE = h2engine.PREFACE
BATCH = 256 * 1024  # bytes of DATA framed per turn of the loop before yielding to other connections
WRITE_HIGH = 512 * 1024  # transport buffer above which framing pauses
READ_CHUNK = 16_384  # default SETTINGS_MAX_FRAME_SIZE; bigger frames only when the peer allows them
MAX_FRAME = 65_536
MAX_REQUESTED = 1024
MAX_STREAM_ID = (1 << 31) - 1
LINGER = 2.0
UNREAD_GRACE = 1.0  # seconds an answered stream may go on sending its request body before RST_STREAM(NO_ERROR)
_FRAME_HEAD = struct.Struct(">BHBBI")  # 24-bit length (high byte, low 16 bits), type, flags, stream id
DATA_TYPE = 0x0
_FORBIDDEN_BYTE = re.compile(rb"[\r\n\0]").search  # in a field value: malformed (§8.2.1); 4x cheaper than 3 `in`s
_CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                  b"upgrade", b"te"})
_STATUS = {code: b"%d" % code for code in range(100, 600)}


def _forbidden_regular(name: bytes, value: bytes) -> bool:
    """A regular field HTTP/2 does not allow: connection-specific (RFC 9113 §8.2.2; TE only as "trailers")
    or a name with uppercase letters (§8.2.1)."""
    return (name in _CONNECTION_SPECIFIC and (name != b"te" or value != b"trailers")) or name.lower() != name


def _malformed_trailers(fields: list[tuple[bytes, bytes]]) -> bool:
    """Trailer fields that make the request malformed (RFC 9113 §8.1): pseudo-fields (§8.3), an empty
    name, CR/LF/NUL in a value (§8.2.1), or a field _forbidden_regular names."""
    return any(not name or name[0] == 58 or _FORBIDDEN_BYTE(value) or _forbidden_regular(name, value)
               for name, value in fields)

def make_engine(limits, connect_protocol: bool = False) -> Engine:  # noqa: ANN001 - config.Http2Config
    """The HTTP/2 engine `[http2] engine` names: edge's own, or the h2 library as the reference.
    `connect_protocol`: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3; WebSocket tunnels are on)."""
    kwargs = dict(max_concurrent_streams=limits.max_concurrent_streams, max_header_list_size=limits.max_header_list_size,
                  max_header_block_size=limits.max_header_block_size, enable_connect_protocol=connect_protocol)
    if limits.engine == "h2":
        from .h2lib import LibEngine

        return LibEngine(**kwargs)  # type: ignore[return-value] - the same methods and events
    return Engine(**kwargs)


class _Out:
    """A response body on its way out: parts (bytes or (offset, length) of `entry`) and progress."""

    __slots__ = ("sid", "parts", "index", "done", "entry", "blocked", "growth", "starved", "watching", "log")

    def __init__(self, sid: int, parts: tuple, entry: FileEntry | None) -> None:
        self.sid = sid
        self.parts = parts
        self.index = 0
        self.done = 0
        self.entry = entry
        self.blocked = 0.0  # when the peer's window closed on it (0: not blocked)
        self.growth = entry.growth if entry is not None else None  # body still arriving from an origin
        self.starved = False  # framed all of the body there is so far: wait for growth
        self.watching = False  # a growth waiter is registered
        self.log: tuple | None = None  # (method, target, status): the access log line waits for the length

    def at_streamed_end(self) -> bool:
        """A STREAMED body that ended is all framed: only its empty END_STREAM frame is left, which needs no
        flow-control window (RFC 9113 §6.9.1)."""
        growth = self.growth
        if growth is None or not growth.done or self.index != len(self.parts) - 1:
            return False
        part = self.parts[self.index]
        return type(part) is tuple and part[1] >= STREAMED and part[0] + self.done >= growth.available


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection (h2c by prior knowledge or Upgrade, or TLS with ALPN h2)."""

    def __init__(self, worker: Services, *, secure: bool = False) -> None:
        self.w = worker
        self.secure = secure
        self.limits = limits = worker.config.http2
        self.transport: asyncio.Transport | None = None
        #: RFC 8441: extended CONNECT is advertised and taken when the worker tunnels WebSockets to origins.
        self.connect_protocol = getattr(worker, "tunnels", None) is not None
        self.engine = make_engine(limits, self.connect_protocol)
        self.ws: dict[int, TunnelStream] = {}  # extended CONNECT streams (edge/h2tunnel.py), opening or relayed
        now = worker.loop.time()
        self.resets = TokenBucket(limits.reset_rate, limits.reset_burst, now)
        self.pings = TokenBucket(limits.ping_rate, limits.ping_burst, now)
        self.settings = TokenBucket(limits.settings_rate, limits.settings_burst, now)
        self.empty = TokenBucket(limits.empty_data_rate, limits.empty_data_burst, now)
        self.priority = TokenBucket(limits.priority_rate, limits.priority_burst, now)
        self.wbuf: list[bytes] = []  # frames built here, waiting for the next flush
        self.out: dict[int, _Out] = {}  # streams with body left to send, in round-robin order
        self.open: set[int] = set()  # streams we still owe a response (loading or sending)
        self.with_body: set[int] = set()  # client streams that carry a request body we do not read
        #: Passed requests' bodies still arriving (edge/passthrough.py), read as their origins take them.
        self.bodies: dict[int, RequestBody] = {}
        # Answered streams whose request body still arrives: reset at the time given (see _finished).
        self.unread: dict[int, float] = {}
        # :path of every request the client made on this connection (bounded): never pushed to it.
        self.requested: set[bytes] = set()
        self.requests = 0
        #: The HTTP/1.1 request of an h2c upgrade, answered on stream 1 once the client's preface is in.
        self.upgraded: Request | None = None
        self.goaway = 0  # last stream id announced in our graceful GOAWAY (0: none sent)
        self.goaway_final = False  # the announced id is the real last one: close once it is answered
        self.final_at = 0.0  # when the second GOAWAY of a drain goes out
        self.lingering = False  # our last frame is out: reading (and dropping) only so it reaches the peer
        self.linger_until = 0.0
        self.paused = False
        self.paused_at = 0.0
        self.scheduled = False
        self.buf: bytearray | None = None  # the DATA batch buffer, kept while the transport does not hold it
        self.last_active = now
        self.peer = None

    # -- becoming the protocol of a transport -----------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102 - TLS with ALPN h2
        stats = self.w.stats
        stats[CONNECTIONS_TOTAL] += 1
        stats[CONNECTIONS_ACTIVE] += 1
        self._attach(transport)
        self.engine.initiate()
        self._flush()

    def take_over(self, transport: asyncio.Transport, data: bytes) -> None:
        """Continue a cleartext connection whose first bytes were the HTTP/2 preface (prior knowledge)."""
        self._attach(transport)
        transport.set_protocol(self)
        self.engine.initiate()
        self._flush()
        if data:
            self.data_received(data)
        transport.resume_reading()

    def upgrade(self, transport: asyncio.Transport, settings: bytes, req: Request, rest: bytes) -> None:
        """Continue after `101 Switching Protocols` (Upgrade: h2c): answer the HTTP/1.1 request on stream 1."""
        self._attach(transport)
        transport.set_protocol(self)
        try:
            self.engine.initiate_upgrade(settings)
        except ConnectionFailed as e:  # a bad HTTP2-Settings value is the client's protocol error
            self._die(e.code)
            return
        self._flush()
        self.open.add(1)
        self.requests = 1
        # The response waits for the client's connection preface: a client reading the 101 may not
        # hold much more in the same buffer (curl refuses more than 32 KiB after the 101's head).
        self.upgraded = req
        if rest:
            self.data_received(rest)
        transport.resume_reading()

    def _attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_HIGH // 4)
        self.w.connections.add(self)
        if self.w.log is not None:
            self.peer = transport.get_extra_info("peername")

    # -- input ------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self.transport is None or self.lingering:
            return
        try:
            events = self.engine.receive(data)
        except ConnectionFailed as e:
            self._die(e.code)
            return
        now = self.w.loop.time()
        self.last_active = now
        if self.upgraded is not None:
            req, self.upgraded = self.upgraded, None
            self._answer(1, req)
        for event in events:
            kind = event[0]
            if kind == REQUEST:
                self._request(event[1], event[2], event[3], now)
            elif kind == DATA_EVENT and self.ws and event[1] in self.ws:  # a WebSocket tunnel's bytes (RFC 8441)
                if not event[3] and not event[4] and not self.empty.take(now):
                    return self._die(CALM)
                self.ws[event[1]].received(event[2], event[3], event[4])
            elif kind == TRAILERS and self.ws and event[1] in self.ws:  # trailers end a tunnel's client side
                if _malformed_trailers(event[2]):
                    self._reset(event[1], PROTOCOL_ERROR, now)
                else:
                    self.ws[event[1]].received(b"", 0, True)
            elif kind == DATA_EVENT:
                body = self.bodies.get(event[1]) if self.bodies else None
                if body is not None:  # a passed request's body: on to its origin (edge/passthrough.py)
                    self._body_data(body, event)
                    if not event[3] and not event[4] and not self.empty.take(now):
                        return self._die(CALM)
                elif event[3]:
                    self.engine.acknowledge(event[1], event[3])
                elif not event[4] and not self.empty.take(now):
                    return self._die(CALM)
                if event[4]:
                    self.with_body.discard(event[1])
                    if self.unread:
                        self.unread.pop(event[1], None)
            elif kind == TRAILERS:
                if _malformed_trailers(event[2]):
                    self._reset(event[1], PROTOCOL_ERROR, now)  # a stream error (§8.1.1)
                elif self.bodies and event[1] in self.bodies:
                    self.bodies.pop(event[1]).end()  # a passed body's end (its trailer fields are not passed on)
            elif kind == RESET or kind == STREAM_ERROR:
                self._cancel(event[1])
                if not self.resets.take(now):
                    return self._die(CALM)
            elif kind == PING:
                if not self.pings.take(now):
                    return self._die(CALM)
            elif kind == SETTINGS:
                if not self.settings.take(now):
                    return self._die(CALM)
            elif kind == PRIORITY:
                if not self.priority.take(now):
                    return self._die(CALM)
            elif kind == GOAWAY:  # the peer's GOAWAY: nothing more goes out
                for sid in list(self.out):
                    self._cancel(sid)  # releases the files (their refs keep evicted fds open)
                self.open.clear()
                self._drop_bodies()
                if self.ws:
                    end_all(self)
                self._flush()
                self._linger()  # closing with its later frames unread would answer them with a RST
                return
            if self.transport is None:
                return
        self._pump()
        if self.ws:
            pump_all(self)  # windows may have opened for the tunnels (WINDOW_UPDATE, SETTINGS)

    def _request(self, sid: int, fields: list[tuple[bytes, bytes]], ended: bool, now: float) -> None:
        if self.goaway and sid > self.goaway:
            self._reset(sid, REFUSED, now)  # sent after our GOAWAY: safe for the client to retry elsewhere
            return
        if not ended:
            self.with_body.add(sid)
        # RFC 9113 §8.2-8.3 checks, done here in the one pass over the fields (h2's own validation
        # makes several passes and was a sixth of the CPU time of a small request).
        method = path = authority = scheme = protocol = None
        regular = malformed = False
        req = Request(b"", b"")
        forward = self.w.forward  # request fields passed on to origins (usually none)
        req_forward = None
        for name, value in fields:
            if not name or _FORBIDDEN_BYTE(value):
                malformed = True
                break
            if name[0] == 58:  # b":"
                if regular:
                    malformed = True  # a pseudo-header after a regular field
                elif name == b":method" and method is None:
                    method = value
                elif name == b":path" and path is None:
                    path = value
                elif name == b":scheme" and scheme is None:
                    scheme = value
                elif name == b":authority" and authority is None:
                    authority = value
                elif name == b":protocol" and protocol is None:
                    protocol = value  # RFC 8441 §4 (checked below)
                else:
                    malformed = True  # unknown or repeated pseudo-header
            else:
                regular = True
                field = SEMANTIC_FIELDS.get(name)
                if field is not None:
                    apply_field(req, field, value)
                elif name == b"host":
                    if authority is None:
                        authority = value
                elif name in forward:
                    if req_forward is None:
                        req_forward = req.forward = []
                    req_forward.append((name, value))
                elif _forbidden_regular(name, value):
                    malformed = True
        if req_forward is not None:
            req.forward = join_cookies(req_forward)  # Cookie among [proxy] forward_headers
        if protocol is not None and not (self.connect_protocol and method == b"CONNECT" and scheme and path
                                         and authority):
            # RFC 8441 §4: :protocol only after our SETTINGS_ENABLE_CONNECT_PROTOCOL, only on a CONNECT, which
            # then has :scheme, :path and :authority; otherwise the request is malformed (RFC 9113 §8.1.1).
            malformed = True
        if malformed or method is None or (method != b"CONNECT" and (scheme is None or not path)):
            self._reset(sid, PROTOCOL_ERROR, now)  # a malformed request is a stream error (§8.1.1)
            return
        self.open.add(sid)
        self.requests += 1
        if self.requests >= self.limits.max_requests and not self.goaway_final:
            self._send_goaway(sid)
        req.method = method or b""
        req.target = path or b""
        if protocol is not None:
            extended_connect(self, sid, req, fields, protocol, ended)  # a WebSocket over HTTP/2 (RFC 8441)
            return
        if not authority or not path:
            # RFC 9113 §8.3.1: :authority or Host is required (CONNECT, without :path, is not served).
            plan = self.w.site.method_not_allowed if method == b"CONNECT" else self.w.site.error(400)
            self._respond(sid, req, plan)
            return
        if method != b"GET" and method != b"HEAD" and self.w.passer is not None:
            if not self._pass_request(sid, req, fields, authority, ended):
                return
        hints = None
        if self.w.site.has_hints:
            if len(self.requested) >= MAX_REQUESTED:
                self.requested.clear()
            self.requested.add(path)  # so a push never duplicates what the client fetches itself
            if method == b"GET":
                hints = self._hints(sid, req, authority)
        if hints is not None:
            misses = [m for m in (self._resolve(asset) for asset in hints.push) if type(m) is Miss]
            if misses:  # open the assets first, so only files that exist are promised
                self._warm(misses, lambda: self._answer(sid, req, (hints, authority)))
                return
            self._answer(sid, req, (hints, authority))
            return
        self._answer(sid, req)

    # -- passed requests' bodies (edge/passthrough.py) ---------------------------------------------

    def _pass_request(self, sid: int, req: Request, fields: list[tuple[bytes, bytes]], authority: bytes,
                      ended: bool) -> bool:
        """A method that passes through to an origin: every regular field goes on as sent, the authority as
        its Host; its body (unless the head ended the stream) is read as its DATA frames come. False when it
        was answered at once: a content-length over [proxy] max_body_size (413, the body never read)."""
        forward = join_cookies([pair for pair in fields if pair[0][0] != 58 and pair[0] != b"host"])
        forward.append((b"host", authority))
        req.forward = forward
        if ended:
            return True
        declared = next((value for name, value in fields if name == b"content-length"), None)  # (engine-checked)
        body = self.w.passer.body(int(declared) if declared is not None else None)
        if body is None:
            self._respond(sid, req, self.w.site.error(413))
            return False
        body.owner = sid
        body.taken = lambda n: self._taken(sid, n)
        if expects_continue(forward):
            body.start = lambda: self._continue(sid)
        self.bodies[sid] = body
        return True

    def _body_data(self, body: RequestBody, event: tuple) -> None:
        """A DATA frame of a passed body: the connection's window comes back at once (each stream's window
        bounds what waits), the stream's only as the origin takes the bytes (RequestBody.taken): a slow
        origin slows its client down, and nothing waits here beyond a window (RFC 9113 §6.9)."""
        sid, data, flow, end = event[1], event[2], event[3], event[4]
        engine = self.engine
        if flow:
            engine.acknowledge_connection(flow)
            if flow > len(data):
                engine.acknowledge_stream(sid, flow - len(data))  # the padding: nothing to pass on
        if data and not body.feed(data):
            engine.acknowledge_stream(sid, len(data))  # not wanted (over the limit, or answered already)
        if end:
            del self.bodies[sid]
            body.end()

    def _drop_bodies(self) -> None:
        """The connection ends: every passed body still arriving fails (their origin exchanges end)."""
        bodies, self.bodies = self.bodies, {}
        for body in bodies.values():
            body.fail(0)

    def _taken(self, sid: int, n: int) -> None:
        """`n` bytes of stream `sid`'s body went on to its origin: its window is given back."""
        if self.transport is not None:
            self.engine.acknowledge_stream(sid, n)
            self._flush()

    def _continue(self, sid: int) -> None:
        """RFC 9110 §10.1.1 (RFC 9113 §8.1): 100 (Continue) for `Expect: 100-continue` when the origin
        connection is about to read the body."""
        if sid in self.open and self.transport is not None and self.engine.is_open(sid):
            self.engine.send_headers(sid, encode_block([(b":status", b"100")]), False, informational=True)
            self._flush()

    def _hints(self, sid: int, req: Request, authority: bytes) -> PageHints | None:
        """The page's hints: 103 Early Hints go out at once; pushes only when the client allows them."""
        hints = self.w.site.hints(req.target)
        if hints is None:
            return None
        if self.w.early_hints and hints.links:
            block = encode_block([(b":status", b"103"), *((b"link", v) for v in hints.links)])
            self.engine.send_headers(sid, block, False, informational=True)
        if not hints.push or not self.engine.push_enabled:
            return None
        return hints

    def _resolve(self, path: str) -> Plan | Miss:
        return self.w.site.resolve(Request(b"GET", path.encode("latin-1")), self.w.loop.time())

    def _warm(self, misses: list[Miss], then) -> None:  # noqa: ANN001
        """Load `misses` into the file cache off the loop, then call `then` (once, when all are done)."""
        w = self.w
        left = [len(misses)]

        def one(fut: asyncio.Future, miss: Miss) -> None:
            try:
                w.cache.store(miss.path, fut.result(), w.loop.time())
            except Exception:  # noqa: BLE001, S110 - an asset that cannot be opened is simply not pushed
                pass
            left[0] -= 1
            if left[0] == 0 and self.transport is not None:
                then()
                self._pump()

        for miss in misses:
            fut = w.loop.run_in_executor(w.executor, w.resolver.load, miss.path, None)
            fut.add_done_callback(lambda f, m=miss: one(f, m))

    def _answer(self, sid: int, req: Request, push: tuple[PageHints, bytes] | None = None) -> None:
        w = self.w
        now = w.loop.time()
        plan = begin(w, req, now)
        if type(plan) is not Plan:  # a file to open off the loop, or the puller: answered later
            if type(plan) is Pass:
                plan.body = self.bodies.get(sid)  # (None: it has none, or it is over already)
            if w.wants_client:  # ip-hash balancing: the origin is chosen by the client's network
                req.client = client_address(self.transport, self.peer)
            finish(w, req, plan, now, lambda answer: self._delivered(sid, req, answer, push),
                   lambda: sid in self.open and self.transport is not None,
                   interim=lambda fields: self._origin_hints(sid, fields))
            return
        self._respond(sid, req, plan, push)

    def _origin_hints(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        """An origin's 103 Early Hints for a stream still waiting for its answer (RFC 8297): on at once."""
        if sid in self.open and self.transport is not None and self.engine.is_open(sid):
            self.engine.send_headers(sid, encode_block([(b":status", b"103"), *fields]), False, informational=True)
            self._flush()

    def _delivered(self, sid: int, req: Request, plan: Plan, push: tuple[PageHints, bytes] | None) -> None:
        """The plan of a stream that waited (file opened off the loop, or the puller): answer it now."""
        self._respond(sid, req, plan, push)
        self._pump()

    def _promise(self, sid: int, hints: PageHints, authority: bytes) -> list[tuple[int, Request, Plan]]:
        """PUSH_PROMISE each asset that exists and that the client is not already requesting."""
        requested = self.requested
        scheme = b"https" if self.secure else b"http"
        promised = []
        for asset in hints.push:
            target = asset.encode("latin-1")
            if target in requested:
                continue
            plan = self._resolve(asset)
            if type(plan) is not Plan or plan.status != 200:
                continue
            fields = [(b":method", b"GET"), (b":scheme", scheme), (b":authority", authority), (b":path", target)]
            try:
                psid = self.engine.push(sid, fields, encode_block(fields))
            except RefusedPush:
                break  # the client's stream limit, or it turned push off meanwhile
            self.open.add(psid)
            promised.append((psid, Request(b"GET", target), plan))
        return promised

    # -- output -----------------------------------------------------------------------------------

    def _respond(self, sid: int, req: Request, plan: Plan, push: tuple[PageHints, bytes] | None = None) -> None:
        w = self.w
        engine = self.engine
        promised = self._promise(sid, *push) if push is not None and plan.status == 200 else ()
        cache = plan.cache
        if cache is None:
            cache = plan.cache = {}
        block = cache.get("h2")
        if block is None:
            block = cache["h2"] = encode_block([(b":status", _STATUS[plan.status]), *plan.headers])
        parts = plan.parts
        bodiless, count = outline(plan, req.method)
        small = not bodiless and len(parts) == 1 and type(parts[0]) is bytes
        if not engine.is_open(sid):
            self.open.discard(sid)  # the client reset or closed the stream meanwhile
            return
        # The header block is the plan's, encoded once with the static table only (never the
        # dynamic one, so it stays valid for every connection); only the Date field is added, unless
        # the plan has its own (a stored response's).
        if not plan.dated:
            block += w.date_h2
        engine.send_headers(sid, block, bodiless)
        w.stats[H2_STATUS_FIELD[plan.status]] += 1
        if w.log is not None and count != HEADLESS:  # a growing body's line waits for its end (_log_streamed)
            w.log.write(self.peer, req.method or b"-", req.target or b"-", b"HTTP/2.0", plan.status, count,
                        b"-", b"-")
        if bodiless:
            self._finished(sid)
        elif small and len(parts[0]) <= min(engine.window(sid), engine.max_frame_size):
            body = parts[0]  # one frame, now
            n = len(body)
            self._emit(_FRAME_HEAD.pack(n >> 16, n & 0xFFFF, DATA_TYPE, engine.sent_data(sid, n, True), sid), body)
            self._finished(sid)
        else:
            entry = plan.entry
            if entry is not None:
                entry.acquire()
            out = self.out[sid] = _Out(sid, body_parts(plan), entry)
            if count == HEADLESS and w.log is not None:
                out.log = (req.method or b"-", req.target or b"-", plan.status)
        for psid, preq, pplan in promised:
            self._respond(psid, preq, pplan)

    def _emit(self, *chunks: bytes) -> None:
        """Queue frames built here behind whatever the engine has queued, to go out at the next flush."""
        pending = self.engine.data_to_send()
        if pending:
            self.wbuf.append(pending)
        self.wbuf.extend(chunks)

    def _finished(self, sid: int) -> None:
        self.open.discard(sid)
        if self.bodies:
            body = self.bodies.pop(sid, None)
            if body is not None:
                body.abandon()  # answered whole before its body ended: the rest is not read (see below)
        if sid in self.with_body:
            # RFC 9113 §8.1: the answer is complete while the request body still comes; the server MAY
            # then ask the client to stop with RST_STREAM(NO_ERROR). It does so at the next sweep, a
            # second on: a short body finishes first and the stream ends as any other, and frames the
            # client sent meanwhile meet a half-closed stream (validated as such) instead of racing a
            # reset. What the client sends meanwhile is bounded by the stream's window (64 KiB), which
            # is no longer given back once the answer is out (engine.acknowledge).
            self.with_body.discard(sid)
            self.unread[sid] = self.w.loop.time() + UNREAD_GRACE

    def _pump(self) -> None:
        """Frame DATA for the streams with body left, one frame each in turn, up to BATCH bytes; then write.

        DATA frames are built here, straight into one buffer per batch (file bytes pread into place:
        one copy), and accounted in the engine's state (Engine.sent_data). The buffer is reused while
        the transport takes each batch whole (no zero-filled 384 KiB per batch), and dropped when it
        keeps one or no body is left to send (an idle connection holds none).
        """
        self.scheduled = False
        out = self.out
        transport = self.transport
        if out and not self.paused and transport is not None:
            self._flush()  # HEADERS queued so far precede the DATA framed below
            engine = self.engine
            cap = min(engine.max_frame_size, MAX_FRAME)
            buf = self.buf or bytearray(BATCH + 2 * MAX_FRAME)
            self.buf = None
            view = memoryview(buf)
            pos = 0
            moved = True
            while moved and out and pos < BATCH:
                moved = False
                for sid in list(out):
                    stream = out[sid]
                    if not engine.is_open(sid):  # closed meanwhile
                        self._cancel(sid)
                        continue
                    window = engine.window(sid)  # below 0 when the peer lowered INITIAL_WINDOW_SIZE (§6.9.2)
                    if window <= 0 and not stream.at_streamed_end():
                        if not stream.blocked:
                            stream.blocked = self.w.loop.time()
                        if stream.growth is not None and not stream.growth.done:
                            # A body of unknown length may end while its window is shut: its empty
                            # END_STREAM frame needs no window, so the end must wake the stream too.
                            self._watch(stream)
                        continue
                    stream.blocked = 0.0
                    if stream.starved:
                        continue
                    pending = engine.data_to_send()
                    if pending:  # the engine's frames (HEADERS, WINDOW_UPDATE...) go out before our DATA
                        if pos + len(pending) + 9 + cap > len(buf):
                            self._write(view[:pos])
                            self._write(pending)
                            view.release()
                            buf = bytearray(BATCH + 2 * MAX_FRAME)
                            view = memoryview(buf)
                            pos = 0
                        else:
                            view[pos:pos + len(pending)] = pending
                            pos += len(pending)
                    # The only stream with a body takes the batch in frames read by one preadv; several
                    # take turns, a frame each.
                    frames = max(1, (BATCH - pos) // (cap + 9)) if len(out) == 1 else 1
                    pos = self._frame(stream, window, cap, frames, view, pos)
                    if stream.starved:
                        continue
                    if sid in out:
                        out[sid] = out.pop(sid)  # to the back: the next turn starts with the others
                    moved = True
                    if pos >= BATCH:
                        break
            self._write(view[:pos])
            view.release()
            if out and self.transport is not None and not self.transport.get_write_buffer_size():
                self.buf = buf  # the transport took it all: nothing refers to it, fill it again
            if out and pos >= BATCH and not self.scheduled:
                self.scheduled = True
                self.w.loop.call_soon(self._pump)  # let other connections have the loop
        self._flush()
        if self.goaway_final and not self.open and not self.out and self.transport is not None:
            self._linger()

    def _frame(self, stream: _Out, window: int, cap: int, frames: int, view: memoryview, pos: int) -> int:
        """Put up to `frames` DATA frames of `stream` (at most `cap` bytes each, `window` in all) at view[pos];
        file bytes go in with one preadv for all of them. Returns the new position."""
        part = stream.parts[stream.index]
        done = stream.done
        sid = stream.sid
        if type(part) is bytes:
            n = min(window, cap, len(part) - done)
            view[pos + 9:pos + 9 + n] = part[done:done + n]
            sizes = [n]
            length = len(part)
        else:
            offset, length = part
            want = min(window, cap * frames, length - done)
            growth = stream.growth
            if growth is not None:
                if growth.failed:  # the origin cut the body short: so is this response
                    self._reset(sid, INTERNAL, self.w.loop.time())
                    return pos
                want = min(want, growth.available - offset - done)
                if want <= 0 and growth.done:
                    length = done  # a STREAMED body ended here: an empty DATA frame ends the stream
                elif want <= 0:
                    stream.starved = True
                    growth.caught_up()
                    self._watch(stream)
                    return pos
            sizes = [cap] * (want // cap) + ([want % cap] if want % cap else []) if want > 0 else [0]
            at, slots = pos, []
            for size in sizes:
                slots.append(view[at + 9:at + 9 + size])
                at += 9 + size
            try:
                n = os.preadv(stream.entry.fd, slots, offset + done) if want > 0 else 0
            except OSError:
                n = -1
            if n != max(want, 0):  # the file shrank under us: never let a short body pass as complete
                self.w.cache.purge(stream.entry.path)
                self._reset(sid, INTERNAL, self.w.loop.time())
                return pos
        engine = self.engine
        for size in sizes:
            last = False
            done += size
            if done < length:
                stream.done = done
            else:
                stream.index += 1
                stream.done = 0
                last = stream.index == len(stream.parts)
            _FRAME_HEAD.pack_into(view, pos, size >> 16, size & 0xFFFF, DATA_TYPE, engine.sent_data(sid, size, last), sid)
            pos += 9 + size
        if last:
            del self.out[sid]
            if stream.log is not None:
                self._log_streamed(stream)
            if stream.entry is not None:
                stream.entry.release()
            self._finished(sid)
        return pos

    def _watch(self, stream: _Out) -> None:
        """Wake this stream at the next change of its growing body (once, however often asked)."""
        if not stream.watching:
            stream.watching = True
            stream.growth.wait(lambda: self._grown(stream))

    def _grown(self, stream: _Out) -> None:
        """More of an origin body is on disk (or it failed): frame on at the next turn."""
        stream.starved = False
        stream.watching = False
        if not self.scheduled and self.transport is not None:
            self.scheduled = True
            self.w.loop.call_soon(self._pump)

    def _write(self, data: bytes | memoryview) -> None:
        """Hand `data` to the transport."""
        if data and self.transport is not None:
            self.w.stats[BYTES_OUT] += len(data)
            self.transport.write(data)

    def _flush(self) -> None:
        """Write our queued frames and the engine's, in order, in one write (none once lingering)."""
        if self.lingering:
            return
        data = self.engine.data_to_send()
        wbuf = self.wbuf
        if wbuf:
            if data:
                wbuf.append(data)
            data = b"".join(wbuf)
            wbuf.clear()
        if data and self.transport is not None:
            self.w.stats[BYTES_OUT] += len(data)
            self.transport.write(data)

    def _cancel(self, sid: int) -> None:
        """Forget a stream the peer reset (or we did): stop sending, release its file."""
        stream = self.out.pop(sid, None)
        if stream is not None and stream.log is not None:
            self._log_streamed(stream)
        if stream is not None and stream.entry is not None:
            stream.entry.release()
        self.open.discard(sid)
        self.with_body.discard(sid)
        if self.unread:
            self.unread.pop(sid, None)
        if self.bodies:
            body = self.bodies.pop(sid, None)
            if body is not None:
                body.fail(0)  # the stream is gone: so is its body (its origin exchange ends)
        if self.ws:
            tunnel = self.ws.get(sid)
            if tunnel is not None:
                tunnel.cancel()  # the stream is gone: its tunnel ends (the origin's connection closes)

    def _log_streamed(self, stream: _Out) -> None:
        """The access log line of a body whose length was unknown when its response began."""
        sent = streamed_sent(stream.parts, stream.index, stream.done, stream.growth)
        self.w.log.write(self.peer, *stream.log[:2], b"HTTP/2.0", stream.log[2], sent, b"-", b"-")

    def _reset(self, sid: int, code: int, now: float) -> None:
        """Reset a stream from our side; these count against the reset budget too (MadeYouReset)."""
        self._cancel(sid)
        self.w.stats[ERRORS] += 1
        self.engine.reset(sid, code)
        if not self.resets.take(now):
            self._die(CALM)

    def _send_goaway(self, last: int, *, final: bool = True) -> None:
        """Graceful GOAWAY: streams up to `last` are still answered; later ones are refused."""
        self.goaway = max(last, 1)
        self.goaway_final = final
        self.engine.goaway(last)
        self._flush()

    def _die(self, code: int) -> None:
        """End the connection now with GOAWAY(code) and free everything it held.

        Whatever the engine queued in reply to the offending batch (PING ACKs of a flood...) is dropped.
        Then the connection lingers, reading and discarding, for LINGER seconds: closing with
        unread input would make the kernel send a RST that can destroy the GOAWAY in flight.
        """
        transport = self.transport
        if transport is None or self.lingering:
            return
        self.w.stats[ERRORS] += 1
        self.wbuf.clear()
        self.engine.close(code)
        self._flush()
        self._drop_bodies()
        if self.ws:
            end_all(self)
        for sid in list(self.out):
            self._cancel(sid)
        self.open.clear()
        self._linger()

    def _linger(self) -> None:
        """Half-close after our last frame and drop what the peer still sends, until it closes or LINGER.

        Closing with unread input makes the kernel answer with a RST, which can destroy the end of
        a response or the GOAWAY still in flight (a client's late WINDOW_UPDATE or PING is enough).
        """
        transport = self.transport
        if transport is None:
            return
        self.lingering = True
        if transport.can_write_eof():
            transport.write_eof()
            self.linger_until = self.w.loop.time() + LINGER
        else:
            transport.close()

    # -- flow control of our own writes -----------------------------------------------------------

    def pause_writing(self) -> None:  # noqa: D102
        self.paused = True
        self.paused_at = self.w.loop.time()

    def resume_writing(self) -> None:  # noqa: D102
        self.paused = False
        self._pump()
        if self.ws:
            pump_all(self)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        w = self.w
        w.connections.discard(self)
        w.stats[CONNECTIONS_ACTIVE] -= 1
        self._drop_bodies()
        if self.ws:
            end_all(self)
        for sid in list(self.out):
            self._cancel(sid)
        self.open.clear()
        self.transport = None

    def eof_received(self) -> bool:  # noqa: D102
        return False

    # -- the worker's 1 Hz sweep and shutdown -----------------------------------------------------

    def tick(self, now: float) -> None:
        """Idle timeout, zero-window stall timeout, send timeout; close a drained connection."""
        if self.transport is None:
            return
        if self.lingering:
            if now >= self.linger_until:
                self.transport.close()
            return
        if self.paused and now - self.paused_at > self.w.send_timeout:
            self.transport.abort()
            return
        stall = self.limits.stall_timeout
        for stream in self.out.values():
            if stream.blocked and now - stream.blocked > stall:
                self._die(CALM)
                return
        if self.unread:
            for sid, until in list(self.unread.items()):
                if now >= until:
                    del self.unread[sid]
                    self.engine.reset(sid, NO_ERROR)  # nothing happens if the stream has ended meanwhile
            self._flush()
        if self.final_at and now >= self.final_at:
            self.final_at = 0.0
            self._send_goaway(self.engine.highest_inbound)
        if not self.open and not self.out:
            if self.goaway_final or now - self.last_active > self.w.keepalive_timeout:
                if not self.goaway_final:
                    self._send_goaway(self.engine.highest_inbound)
                self._linger()

    def shutdown(self, idle_deadline: float) -> None:
        """Graceful stop in two steps (RFC 9113 §6.8): GOAWAY(2^31-1) now, so requests already on their
        way are still taken; the real last stream id about a second later; close once those are answered.
        """
        if self.transport is None or self.goaway or self.lingering:
            return  # (lingering: our last frame, a GOAWAY, is out already)
        self._send_goaway(MAX_STREAM_ID, final=False)
        self.final_at = idle_deadline
