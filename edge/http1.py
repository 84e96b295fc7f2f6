"""HTTP/1.1 adapter: httptools parses bytes into requests; plans go out as header bytes plus sendfile(2)."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket

import httptools

from .core import ACCEPT_ENCODING, REASONS, SEMANTIC_FIELDS, Pass, Plan, Request, apply_field
from .exchange import HEADLESS, Services, begin, body_parts, client_address, finish, outline
from .passthrough import CONTINUE, expects_continue

from .stored import STREAMED, streamed_sent
from .filecache import FileEntry
from .stats import BYTES_OUT, CONNECTIONS_ACTIVE, CONNECTIONS_TOTAL, ERRORS, STATUS_FIELD

MAX_TARGET = 8 * 1024
MAX_HEAD = 64 * 1024
LINE_HOLD = MAX_TARGET + 64  # bytes of an unfinished first request line held before the parser sees them
MAX_QUEUE = 64  # pipelined requests parsed ahead of the responses before reading pauses
LINGER = 2.0  # seconds a connection closing with a passed request's body unread still drops its bytes (_linger)

SENDFILE_CHUNK = 1 << 30
CORK_MIN = 1 << 20
TLS_CHUNK = 64 * 1024
TLS_HIGH = 256 * 1024

# Interesting request header fields -> small ints (the rest are skipped without allocation): core's
# semantic fields first, then the ones framing and logging need.
_CONTENT_LENGTH, _TRANSFER_ENCODING, _HOST, _USER_AGENT, _REFERER, _UPGRADE, _HTTP2_SETTINGS, _CONNECTION, FORWARD = \
    range(7, 16)
_FIELDS = {**SEMANTIC_FIELDS, b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING,
           b"host": _HOST, b"user-agent": _USER_AGENT, b"referer": _REFERER, b"upgrade": _UPGRADE,
           b"http2-settings": _HTTP2_SETTINGS, b"connection": _CONNECTION}

_SPECIAL_CASE = {b"etag": b"ETag", b"www-authenticate": b"WWW-Authenticate", b"content-md5": b"Content-MD5"}

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

CONN_KEEP = b""
CONN_CLOSE = b"Connection: close\r\n"
CONN_KEEP_10 = b"Connection: keep-alive\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"  # a body whose length is known only at its end (STREAMED)
LAST_CHUNK = b"0\r\n\r\n"

# Connection states, for the timeout sweep.
IDLE, HEAD, BUSY = 0, 1, 2


_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} [^ \r\n]+ HTTP/1\.[01]\r?\n")


def _unknown_method_line(data: bytes, completed: int) -> bool:
    """True when the request httptools refused for its method has a well-formed request line.

    httptools knows a fixed set of methods; a valid but unknown token (BREW) deserves 405,
    garbage deserves 400. The refused request starts after the heads of the `completed`
    requests before it in this chunk (none of which had a body: bodies end the connection).
    """
    start = 0
    for _ in range(completed):
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            return False
        start = end + 4
    return _REQUEST_LINE.match(data, start) is not None


def _skip_heads(data: bytes, count: int) -> int:
    """Where the request head after the first `count` heads of `data` starts (they had no body); -1 if not found."""
    start = 0
    for _ in range(count):
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            return -1
        start = end + 4
    return start


def _cork(transport: asyncio.Transport, on: int) -> bool:
    """Set TCP_CORK on the transport's socket; True when it took."""
    try:
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, on)
        return True
    except (OSError, AttributeError):
        return False  # the peer is gone; the transfer's own error handling takes over


class _Abort(Exception):
    """Raised from a parser callback to stop parsing with an error status."""


_TITLES: dict[bytes, bytes] = {}


def _bad_version_or_host(version: str, host_seen: int) -> bool:
    """A request edge answers 400: an HTTP version other than 1.0 and 1.1, or not exactly one Host field in
    HTTP/1.1 (at most one in 1.0) (RFC 9112 §2.3, §3.2)."""
    if version == "1.1":
        return host_seen != 1
    return version != "1.0" or host_seen > 1


def _early_hints_head(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A 103 Early Hints interim response (RFC 8297) carrying `fields`: edge's own Link values or an origin's."""
    return b"HTTP/1.1 103 Early Hints\r\n" + b"".join(b"%s: %s\r\n" % (_title(k), v) for k, v in fields) + b"\r\n"


def _title(name: bytes) -> bytes:
    title = _TITLES.get(name)
    if title is None:
        title = _SPECIAL_CASE.get(name) or b"-".join(word.capitalize() for word in name.split(b"-"))
        if len(_TITLES) < 4096:  # origin responses bring arbitrary names: memoise only a bounded set
            _TITLES[name] = title
    return title


def serialize_head(plan: Plan, connection: bytes) -> bytes:
    """The HTTP/1.1 header block of `plan` after the Date line, ending with the blank line."""
    lines = [b"%s: %s\r\n" % (_title(name), value) for name, value in plan.headers]
    lines.append(connection)
    lines.append(b"\r\n")
    return b"".join(lines)


_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason.encode("ascii")) for code, reason in REASONS.items()}


class Pending(Request):
    """A parsed request waiting for its turn to be answered (responses go out in order).

    It is core's Request plus the HTTP/1 framing facts, in one object: one allocation a request.
    """

    # upgrade and h2_settings are set only when sent (read with getattr on the rare upgrade path); raw only
    # when the head came in more than one read (its pieces so far, for an upgrade's tunnel: _keep_head).
    # The head's framing facts live here, not on the connection, so an idle connection holds none.
    # length and coding (the Content-Length and Transfer-Encoding values) are set only when sent, body only on
    # a passed-through request that has one (edge/passthrough.py).
    __slots__ = ("keep_alive", "version10", "plan", "ua", "referer", "upgrade", "h2_settings", "cl_seen",
                 "has_body", "host_seen", "close", "raw", "length", "coding", "body")

    def __init__(self, target: bytes) -> None:
        Request.__init__(self, b"", target)  # keep_alive and version10 are set when the head is complete
        self.plan: Plan | None = None
        self.ua = b"-"
        self.referer = b"-"
        self.cl_seen = False  # a Content-Length field was seen (a second one is refused)
        self.has_body = False  # Content-Length > 0 or Transfer-Encoding: a body edge does not read
        self.host_seen = 0  # Host fields seen (RFC 9112 §3.2: exactly one in HTTP/1.1)
        self.close = False  # Connection names "close": it wins over "keep-alive", whatever the version (RFC 9112 §9.3)


def _failed(plan: Plan) -> Pending:
    pending = Pending(b"")
    pending.plan = plan
    pending.keep_alive = pending.version10 = False
    return pending


class H1Connection(asyncio.Protocol):
    """One HTTP/1.x connection: parse, queue, answer in order, send files zero-copy."""

    passes = False  # other methods go to an origin (H1PassConnection): a class attribute, not a slot

    __slots__ = ("w", "transport", "parser", "fd", "queue", "state", "deadline", "in_message", "closing",
                 "write_paused", "busy", "req", "head_size", "error", "xfer", "dup", "peer", "last_progress", "reading_paused", "completed", "corked",
                 "tls", "fields", "line", "held", "tunnel", "body", "reader", "unread")

    def __init__(self, worker: Services, *, tls: bool = False) -> None:
        self.w = worker
        self.tls = tls  # bytes must pass through the TLS layer: pread + write instead of sendfile
        self.fields = worker.h1_fields  # _FIELDS plus the fields this worker forwards to origins
        self.transport: asyncio.Transport | None = None
        # The parser (~0.5 KiB) exists only while a request is in flight: idle keep-alive
        # connections stay small, and making one costs well under a microsecond.
        self.parser: httptools.HttpRequestParser | None = None
        self.fd = -1
        self.queue: list[Pending] | None = None  # made by the first request: an idle connection holds none
        self.state = IDLE
        self.deadline = 0.0
        self.in_message = False
        self.closing = False
        self.write_paused = False
        self.busy = False
        self.req: Pending | None = None  # the request whose head is being parsed
        self.head_size = 0
        self.error = 0
        self.xfer: _Transfer | None = None
        self.dup = -1
        self.peer = None
        self.last_progress = 0.0
        self.reading_paused = False
        self.completed = 0  # requests completed in the chunk being parsed
        self.corked = False
        self.line = 0  # bytes of the request-head line still unfinished (the parser buffers them)
        self.held = b""  # the start of a request line, too short to tell HTTP/2's preface or a method by
        self.body = None  # the passed-through request body being read (edge/passthrough.RequestBody)

    # -- asyncio protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno()
        # high=0: the protocol is paused whenever anything is buffered, so "not paused" means the
        # kernel has every byte we wrote and sendfile may write to the socket directly.
        if self.tls:
            transport.set_write_buffer_limits(high=TLS_HIGH, low=TLS_HIGH // 4)
        else:
            transport.set_write_buffer_limits(high=0, low=0)
        w = self.w
        self.deadline = w.loop.time() + w.header_timeout
        w.connections.add(self)
        stats = w.stats
        stats[CONNECTIONS_TOTAL] += 1
        stats[CONNECTIONS_ACTIVE] += 1
        if w.log is not None:
            self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self.error:
            if self.body is not None and getattr(self, "reader", None) is not None:
                self.reader.feed(data)  # the body of a passed request that offered an Upgrade (_BodyReader)
            return
        parser = self.parser
        if parser is None:
            if self.held:
                data = self.held + data
                self.held = b""
            if data[0] == 0x50 and not self.queue and not self.busy:  # "P": the HTTP/2 preface, or POST, PUT...
                if len(data) < 24 and PREFACE.startswith(data):
                    self.held = data  # too short to tell yet: wait for the rest
                    return
                if data.startswith(PREFACE):
                    self._switch_to_h2(data)  # HTTP/2 with prior knowledge (RFC 9113 §3.3)
                    return
            if len(data) <= LINE_HOLD and b"\n" not in data:
                # A request line still unfinished waits here for its end, so the parser sees it whole:
                # only a whole line tells an unknown method (405) from garbage (400), however it was cut.
                self.held = data
                if self.state == IDLE:  # the header timeout runs from its first byte
                    self.state = HEAD
                    self.deadline = self.w.loop.time() + self.w.header_timeout
                return
            parser = self.parser = httptools.HttpRequestParser(self)
        # The head is bounded as it arrives: httptools reports a field only when its line ends and
        # buffers the pieces until then, so a line that never ends is counted here, before the
        # parser sees it (complete fields and the target are counted by the callbacks).
        if data[-1] == 10:  # the usual read: whole lines (a keep-alive request, a pipelined batch)
            self.line = 0
        elif self.body is not None:  # (a passed request's body: no head line to bound, RFC 9112 §6)
            self.line = 0
        else:
            newline = data.rfind(b"\n")
            if newline < 0 and self.line + len(data) + self.head_size > MAX_HEAD:
                self._fail(431)  # RFC 6585 §5
                data = b""
            else:
                self.line = self.line + len(data) if newline < 0 else len(data) - newline - 1
        if data:
            self.completed = 0
            try:
                parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:  # inline: every request's path
                if self._parse_error(e, data):
                    return  # the connection is HTTP/2 now
            if self.line and self.line + self.head_size > MAX_HEAD and not self.error:
                self._fail(431)  # the read ended inside a line that already passes the limit
        if self.queue and not self.busy and not self.write_paused:
            self._pump()
        elif self.in_message and self.req is not None and not self.error:
            self._keep_head(data)  # a head that goes on in the next read (never the usual whole-request read)

    def _parse_error(self, e: Exception, data: bytes) -> bool:
        """Answer what the parser refused (its error answer is queued). True after an h2c upgrade."""
        if isinstance(e, httptools.HttpParserInvalidMethodError):
            self._fail(405 if _unknown_method_line(data, self.completed) else 400)
        elif isinstance(e, httptools.HttpParserUpgrade):
            if self._h2c_upgrade(data[e.args[0]:] if e.args else b""):
                return True
            # Any other upgrade: the request is answered as HTTP/1.1, then the connection closes (a WebSocket
            # one goes to the worker's tunnels when it has them: the root's answer, or an origin's).
            if self.queue:
                self.queue[-1].keep_alive = False
            self.error = -1
            self._pause_reading()
            reader = getattr(self, "reader", None)
            if reader is not None:  # a passed request's body after an Upgrade offer edge ignores
                reader.feed(data[e.args[0]:] if e.args else b"")
                if self.body is not None and not self.body.paused:
                    self._body_resume()
            elif getattr(self.w, "tunnels", None) is not None and e.args:
                self._websocket(data, e.args[0])
        elif self.body is not None and not self.error:
            # A passed request's body the parser refused (a bad chunk, RFC 9112 §7.1): its exchange answers
            # 400 (or cuts its answer short), and nothing more is read.
            self.body.fail(400)
            self.error = -1
            self._pause_reading()
        else:  # callback errors (_Abort) arrive wrapped in a subclass
            if self.error == 0:
                self.error = 400
            if self.error > 0:
                self._fail(self.error)
            else:
                self._pause_reading()
        return False

    def _switch_to_h2(self, data: bytes) -> None:
        self.w.connections.discard(self)
        self.closing = True
        self.w.start_h2(self.transport, data)

    def _h2c_upgrade(self, rest: bytes) -> bool:
        """Upgrade: h2c (RFC 7540 §3.2): 101, then the request is answered on HTTP/2 stream 1."""
        if not self.queue or len(self.queue) != 1 or self.busy or self.tls:
            return False
        pending = self.queue[0]
        settings = getattr(pending, "h2_settings", None)
        tokens = {t.strip().lower() for t in getattr(pending, "upgrade", b"").split(b",")}
        if b"h2c" not in tokens or settings is None or pending.method not in (b"GET", b"HEAD") or pending.has_body:
            return False
        self.queue = None
        self.parser = None
        self.w.connections.discard(self)
        self.closing = True
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        pending.plan = None
        self.w.upgrade_h2(self.transport, settings, pending, rest)
        return True

    # -- WebSocket upgrades (RFC 6455 §4): handed to the worker's tunnels (edge/tunnel.py) -------------------

    def _keep_head(self, data: bytes) -> None:
        """A read ended inside a request head: keep its bytes so far (an upgrade passes every field on)."""
        req = self.req
        raw = getattr(req, "raw", None)
        if raw is None:
            start = _skip_heads(data, self.completed)  # the heads answered before it in this read
            req.raw = [data[start:] if start >= 0 else b""]
        else:
            raw.append(data)  # a list: a head trickling in byte by byte costs no quadratic copying

    def _websocket(self, data: bytes, offset: int) -> None:
        """The request just parsed asks for Upgrade: websocket: once the answers before it are out, the
        tunnels take it (the root answers it, or an origin does). Anything else stays a plain answer."""
        queue = self.queue
        if not queue:
            return
        pending = queue[-1]
        # RFC 6455 §4.1: a GET; RFC 9110 §7.8: an HTTP/1.0 request's Upgrade is ignored; §4.2.1: "websocket"
        # is matched case-insensitively among the Upgrade tokens.
        if pending.plan is not None or pending.method != b"GET" or pending.version10:
            return
        if b"websocket" not in {t.strip().lower() for t in getattr(pending, "upgrade", b"").split(b",")}:
            return
        raw = getattr(pending, "raw", None)
        if raw is None:
            start = _skip_heads(data, self.completed - 1)
            head = data[start:offset] if start >= 0 else b""
        else:
            head = b"".join(raw) + data[:offset]
            pending.raw = None
        del queue[-1]
        self.tunnel = (pending, head, data[offset:])
        if not queue and not self.busy and not self.write_paused:
            self._start_tunnel()

    def _start_tunnel(self) -> None:
        pending, head, rest = self.tunnel
        self.tunnel = None
        self.busy = True  # until the tunnel's answer (the sweep leaves a busy connection alone)
        self.w.tunnels.start(self, pending, head, rest)

    def answer_upgrade(self, req: Pending, plan: Plan) -> None:
        """The upgrade's answer when it is not a tunnel (the root's file, an origin's refusal, an error):
        sent as any answer, then the connection closes."""
        self.busy = False
        if not self._alive():
            return
        req.keep_alive = False
        req.plan = plan
        self.queue = [req]
        self._pump()

    def upgrade_alive(self) -> bool:
        """The client is still connected (its upgrade waits for an origin)."""
        return self._alive()

    def take_over(self, req: Pending, splice: bool) -> socket.socket | asyncio.Transport:
        """The origin said 101: this connection leaves HTTP/1.1 for a relay. With `splice`, over plain TCP: a
        dup of its socket, and the transport is aborted so uvloop forgets it (the dup keeps the connection;
        reading was paused at the upgrade, so every later byte waits in the kernel for the relay). Else (TLS)
        the transport itself, for a copying relay."""
        w = self.w
        transport = self.transport
        dup = -1
        if splice and not self.tls and not transport.get_write_buffer_size():
            try:
                dup = os.dup(self.fd)  # first: on EMFILE the connection is closed as any other, not left behind
            except OSError:
                transport.abort()
                raise
        w.stats[STATUS_FIELD[101]] += 1
        if w.log is not None:
            self._access(req, 101, 0)
        w.connections.discard(self)
        self.closing = True
        self.parser = None
        self.queue = None
        if dup >= 0:
            sock = socket.socket(fileno=dup)
            transport.abort()  # connection_lost still comes, and counts the connection as closed
            return sock
        w.stats[CONNECTIONS_ACTIVE] -= 1  # its protocol changes: connection_lost will not reach this one
        return transport

    def eof_received(self) -> bool:  # noqa: D102
        if self.body is not None:
            self.body.fail(400)  # the client ended its side inside a passed request's body: it is incomplete
        if self.queue or self.busy:
            self.closing = True
            return True  # half-close: answer what was asked, then close
        return False

    def pause_writing(self) -> None:  # noqa: D102
        self.write_paused = True
        self.last_progress = self.w.loop.time()

    def _pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:  # noqa: D102
        self.write_paused = False
        if self.xfer is not None and (self.tls or self.xfer.chunked):
            if self._drive_buffered() and not self.transport.is_closing():
                self._pump()
            return
        if not self.busy and not self.transport.is_closing():
            self._pump()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.w.connections.discard(self)
        self.w.stats[CONNECTIONS_ACTIVE] -= 1
        # The parser and this connection refer to each other (and an aborted head's buffers hang on
        # the parser): break the cycle, or it all waits for a full collection, which is rare here.
        self.parser = None
        self.req = None
        self.queue = None
        self.closing = True
        self.corked = False  # the socket is gone: nothing to uncork
        if self.xfer is not None:
            self._end_transfer()
        if self.body is not None:
            self.body.fail(0)  # the client left inside a passed request's body: its origin exchange ends
            self.body = None
            self.reader = None

    # -- parser callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:  # noqa: D102
        self.in_message = True
        if self.state == IDLE:
            self.state = HEAD
            self.deadline = self.w.loop.time() + self.w.header_timeout
        self.head_size = 0
        self.req = Pending(b"")

    def on_url(self, url: bytes) -> None:  # noqa: D102
        req = self.req
        target = req.target = req.target + url if req.target else url
        if len(target) > MAX_TARGET:
            self.error = 414
            raise _Abort
        self.head_size += len(url)
        if self.passes:  # a worker with origins: the method is known from here on (H1PassConnection)
            method = self.parser.get_method()
            if method != b"GET" and method != b"HEAD":
                self.fields = PASS_FIELDS  # until its head ends (_pass_head)
                req.has_body = PASSING

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            self.error = 431
            raise _Abort
        field = self.fields.get(name.lower())
        if field is None:
            return
        req = self.req
        if field <= ACCEPT_ENCODING:
            apply_field(req, field, value)
        elif field == _CONTENT_LENGTH:
            if req.cl_seen:
                self.error = 400
                raise _Abort
            req.cl_seen = True
            req.length = value
            if value.strip() not in (b"0", b""):
                req.has_body = True
        elif field == _TRANSFER_ENCODING:
            req.has_body = True
            coding = getattr(req, "coding", None)
            req.coding = value if coding is None else coding + b"," + value
        elif field == _HOST:
            req.host_seen += 1
        elif field == _USER_AGENT:
            req.ua = value
        elif field == _REFERER:
            req.referer = value
        elif field == _UPGRADE:
            req.upgrade = value
        elif field == _HTTP2_SETTINGS:
            req.h2_settings = value
        elif field == _CONNECTION:
            options = value.lower()
            if b"close" in options and any(t.strip() == b"close" for t in options.split(b",")):
                req.close = True
            if self.w.forward:  # the fields it names are never passed on (RFC 9110 §7.6.1, origin.py)
                forward = getattr(req, "forward", None)
                if forward is None:
                    forward = req.forward = []
                forward.append((name, value))
        else:
            forward = getattr(req, "forward", None)
            if forward is None:
                forward = req.forward = []
            forward.append((name, value))

    def on_headers_complete(self) -> None:  # noqa: D102
        self.state = BUSY
        self.head_size = 0  # what follows in this read belongs to the next head
        if self.req.has_body:
            if self.fields is PASS_FIELDS:
                self._pass_head()  # a method passed through to an origin (H1PassConnection)
                return
            # No method here takes a body: answer now, close after, and never read the body
            # (a huge or endless upload must not keep the connection busy).
            self.on_message_complete()
            self.error = -1
            raise _Abort

    def on_message_complete(self) -> None:  # noqa: D102
        if self.error:
            return  # after a request that ends the connection, nothing more is answered
        self.in_message = False
        self.completed += 1
        parser = self.parser
        pending = self.req
        if pending is None:  # the end of a passed request's body (the request was queued at its head)
            self._body_end()
            return
        self.req = None
        pending.method = parser.get_method()
        version = parser.get_http_version()
        version10 = pending.version10 = version == "1.0"
        pending.keep_alive = parser.should_keep_alive() and not pending.has_body and not self.closing \
            and not pending.close
        if _bad_version_or_host(version, pending.host_seen):
            pending.plan = self.w.site.error(400)
            pending.keep_alive = False
            self.error = -1
        queue = self.queue
        if queue is None:
            queue = self.queue = []
        queue.append(pending)
        if not pending.keep_alive:
            self.error = -1  # RFC 9112 §9.6: nothing after a closing request is read or answered
        if len(queue) >= MAX_QUEUE:
            self._pause_reading()

    # -- passed-through requests (edge/passthrough.py): their bodies stream to an origin ------------

    def _pass_head(self) -> None:
        """on_headers_complete for a request whose method passes through (H1PassConnection marked it): the
        field table goes back to the worker's; one with a body is queued now, so its exchange can start while
        the body arrives (an error status at once: answered, and the body never read)."""
        self.fields = self.w.h1_fields
        req = self.req
        forward = getattr(req, "forward", None) or ()
        for name, value in forward:  # (kept there for the origin; counted and logged from there)
            lower = name.lower()
            if lower == b"host":
                req.host_seen += 1
            elif lower == b"user-agent":
                req.ua = value
            elif lower == b"referer":
                req.referer = value
        if req.has_body is not True:
            req.has_body = False  # (PASSING): no body; queued at on_message_complete as any request
            return
        refused = self._pass_body(req, forward)
        if refused is not None:
            req.plan = refused
            self.on_message_complete()  # answered at once, closed after, the body never read (as for GET)
            self.error = -1
            self.unread = True  # (set only here: read with getattr) the close after the answer lingers
            raise _Abort

    def _pass_body(self, req: Pending, forward: list[tuple[bytes, bytes]] | tuple) -> Plan | None:
        """Queue `req` with a RequestBody the parser's on_body feeds (None); or the answer to give at once, its
        body unread: its framing is refused, its declared length is over [proxy] max_body_size, or core does
        not pass it (CONNECT, TRACE, a bad target)."""
        parser = self.parser
        site = self.w.site
        version = parser.get_http_version()
        version10 = req.version10 = version == "1.0"
        if _bad_version_or_host(version, req.host_seen):
            return site.error(400)
        req.method = parser.get_method()
        step = site.passing(req)
        if type(step) is not Pass:
            return step
        coding = getattr(req, "coding", None)
        length = None
        if coding is not None:
            # RFC 9112 §6.3: Transfer-Encoding with Content-Length is a framing conflict (the way requests are
            # smuggled past a proxy): 400 and close; so is Transfer-Encoding in HTTP/1.0 (§6.1).
            if req.cl_seen or version10:
                return site.error(400)
            if [c.strip() for c in coding.lower().split(b",")] != [b"chunked"]:
                return site.error(501)  # §6.1: a coding edge does not understand (it reads and re-frames chunked)
        else:
            try:
                length = int(req.length)
            except ValueError:
                return site.error(400)  # (httptools has refused a malformed one already)
        body = self.w.passer.body(length)
        if body is None:
            return site.error(413)  # RFC 9110 §15.5.14: Content-Length says it is over [proxy] max_body_size
        body.owner = req
        body.pause = self._pause_reading
        body.resume = self._body_resume
        if not version10 and expects_continue(forward):
            body.start = lambda: self._continue(req)
        req.body = self.body = body
        req.keep_alive = parser.should_keep_alive() and not self.closing and not req.close
        if parser.should_upgrade():
            # RFC 9110 §7.8: edge ignores the Upgrade offer (curl offers h2c with a POST body), but httptools
            # stops at this head as if the protocol changed, its body unread: a parser of its own reads it.
            self.reader = _BodyReader(self, length)
        self.req = None  # on_message_complete, at the body's end, sees this and ends the body (_body_end)
        self.line = 0  # the bytes after the head in this read are body, not a head line
        queue = self.queue
        if queue is None:
            queue = self.queue = []
        queue.append(req)
        if len(queue) >= MAX_QUEUE:
            self._pause_reading()
        return None

    def on_body(self, body: bytes) -> None:  # noqa: D102 - only a passed request's body is read (_pass_body)
        if not self.body.feed(body):  # over [proxy] max_body_size, or its exchange no longer wants it
            self.error = -1  # nothing more is read: the answer goes out, then the connection closes
            self._pause_reading()

    def _body_end(self) -> None:
        """The passed request's body ended (RFC 9112 §6.3: its Content-Length, or the last chunk)."""
        if getattr(self, "reader", None) is not None:
            return  # httptools skipped the body of a head with Upgrade: the _BodyReader reads it and ends it
        body, self.body = self.body, None
        self.line = 0  # (what follows in this read is the next head: counted from the next read on)
        if body is not None:
            body.end()
            if not body.owner.keep_alive:
                self.error = -1  # RFC 9112 §9.6: nothing after a closing request is read or answered

    def _body_resume(self) -> None:
        """The origin took the body bytes waiting for it: read the client again (unless something else holds
        reading: an error, or the queue is full)."""
        if self.reading_paused and (not self.error or self.body is not None) and self.transport is not None and \
                (self.queue is None or len(self.queue) < MAX_QUEUE):
            self.reading_paused = False
            self.transport.resume_reading()

    def _pass_start(self, pending: Pending, step: Pass) -> bool:
        """A passed request's exchange starts: it gets its body, if any. True when that body is still arriving
        (reading goes on, within its own bounds, instead of pausing as for any request that waits)."""
        body = getattr(pending, "body", None)
        if body is None:
            return False
        step.body = body
        if body.done:
            return False
        if not body.paused:
            self._body_resume()  # (a request before it may have paused reading while it waited)
        return True

    def _linger(self) -> None:
        """Close after an answer given before the request's body was all read (413, an early origin answer),
        without the client losing it: closing with its body still arriving would send a reset that can destroy
        the answer in flight (RFC 9112 §9.6). So: half-close, and drop what the client still sends until it
        closes, or for LINGER seconds (the sweep closes it then), as nginx's lingering close."""
        body, self.body = self.body, None
        self.reader = None
        self.unread = False
        if body is not None:
            body.abandon()
        transport = self.transport
        if transport is None:
            return
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        self.error = -1  # data_received drops everything from here on
        self.state = IDLE
        self.deadline = self.w.loop.time() + LINGER
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    def _continue(self, pending: Pending) -> None:
        """RFC 9110 §10.1.1: the 100 (Continue) a client that sent `Expect: 100-continue` waits for, now that
        the origin connection is about to read the body."""
        if self._alive() and self.queue and self.queue[0] is pending:
            self.transport.write(CONTINUE)

    # -- answering --------------------------------------------------------------------------------

    def _fail(self, status: int) -> None:
        """Queue an error answer for the malformed request, stop reading, close after it."""
        self.error = status
        self.w.stats[ERRORS] += 1
        if self.queue is None:
            self.queue = []
        self.queue.append(_failed(self.w.site.error(status)))
        self.in_message = False
        self._pause_reading()

    def _pump(self) -> None:
        """Answer queued requests in order until one must wait (miss, slow socket)."""
        w = self.w
        queue = self.queue
        while queue and not self.busy and not self.write_paused:
            pending = queue[0]
            plan = pending.plan
            if plan is None:
                if w.early_hints and pending.method == b"GET" and not pending.version10:
                    self._early_hints(pending)
                now = w.loop.time()
                plan = begin(w, pending, now)
                if type(plan) is not Plan:  # a file to open off the loop, or the puller: answered later
                    if w.wants_client:  # ip-hash balancing: the origin is chosen by the client's network
                        pending.client = client_address(self.transport, self.peer)
                    self.busy = True
                    if type(plan) is not Pass or not self._pass_start(pending, plan):
                        self._pause_reading()
                    finish(w, pending, plan, now, lambda answer: self._delivered(pending, answer), self._alive,
                           interim=lambda fields: self._origin_hints(pending, fields))
                    return
                if self.write_paused:  # the 103 is still buffered: the response waits for it
                    pending.plan = plan
                    return
            del queue[0]
            self._send(pending, plan)
        if self.busy or self.write_paused or queue:
            return
        if self.closing or self.error:
            if getattr(self, "tunnel", None) is not None:  # an upgrade waited for the answers before it
                self._start_tunnel()
            elif self.body is not None or getattr(self, "unread", False):
                self._linger()  # a passed request's body is still coming, or was refused unread
            elif self.transport is not None:
                self.transport.close()
            return
        if not self.in_message:
            self.state = IDLE
            self.deadline = w.loop.time() + w.keepalive_timeout
            self.parser = None
            self.queue = None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def _alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def _delivered(self, pending: Pending, plan: Plan) -> None:
        """The plan of a request that waited (file opened off the loop, or the puller): answer it in turn."""
        self.busy = False
        body = self.body
        if body is not None and body.owner is pending:
            pending.keep_alive = False  # answered before its whole body was read: the connection ends with it
        if self.queue:
            self._answer_loaded(pending, plan)

    def _answer_loaded(self, pending: Pending, plan: Plan) -> None:
        if self.write_paused:  # bytes (a 103) still buffered: sendfile must not overtake them
            pending.plan = plan
            return
        del self.queue[0]
        self._send(pending, plan)
        if not self.busy:
            self._pump()

    def _early_hints(self, pending: Pending) -> None:
        """103 Early Hints with the page's Link rel=preload values, before the response is ready."""
        hints = self.w.site.hints(pending.target)
        if hints is not None and hints.links:
            self.transport.write(_early_hints_head([(b"link", v) for v in hints.links]))

    def _origin_hints(self, pending: Pending, fields: list[tuple[bytes, bytes]]) -> None:
        """An origin's 103 Early Hints for the request being waited on (RFC 8297), written at once; never
        to an HTTP/1.0 client, which knows no 1xx (RFC 9110 §15.2)."""
        if pending.version10 or not self.queue or self.queue[0] is not pending or not self._alive():
            return
        self.transport.write(_early_hints_head(fields))

    def _send(self, pending: Pending, plan: Plan) -> None:
        """Write one response: header block, then inline bytes or file ranges."""
        w = self.w
        keep_alive = pending.keep_alive and not self.closing
        streamed = plan.length >= STREAMED
        if streamed and pending.version10:
            keep_alive = False  # HTTP/1.0 has no chunked coding: the body ends when the connection does
        if not keep_alive:
            conn = CONN_CLOSE
            self.closing = True
        else:
            conn = CONN_KEEP_10 if pending.version10 else CONN_KEEP
        chunked = streamed and not pending.version10
        if chunked:
            conn += CHUNKED
        heads = plan.cache
        if heads is None:
            heads = plan.cache = {}
        head = heads.get(conn)
        if head is None:
            head = heads[conn] = serialize_head(plan, conn)
        status_line = _STATUS_LINES[plan.status]
        stats = w.stats
        stats[STATUS_FIELD[plan.status]] += 1
        entry = plan.entry
        parts = plan.parts
        bodiless, count = outline(plan, pending.method)
        if w.log is not None and count != HEADLESS:  # a growing body's line waits for its end (_end_transfer)
            self._access(pending, plan.status, count)
        if bodiless:
            data = b"".join((status_line, b"" if plan.dated else w.date_line, head))
            stats[BYTES_OUT] += len(data)
            self.transport.write(data)
            return
        if len(parts) == 1 and type(parts[0]) is bytes:
            data = b"".join((status_line, b"" if plan.dated else w.date_line, head, parts[0]))
            stats[BYTES_OUT] += len(data)
            self.transport.write(data)
            return
        entry.acquire()
        head = status_line + (b"" if plan.dated else w.date_line) + head
        self.last_progress = w.loop.time()  # the send timeout counts from here, whichever way the body goes
        parts = body_parts(plan)
        growing = count == HEADLESS
        if chunked:
            # Still arriving from an origin, its length unknown: chunks as the file grows, and a cut-off
            # origin leaves the last chunk unsent, so the client sees the body as incomplete.
            stats[BYTES_OUT] += len(head)
            self.transport.write(head)
            self.xfer = _Transfer(entry, list(parts))
            self.xfer.chunked = True
            if growing and w.log is not None:
                self.xfer.log = (pending, plan.status)
            self.busy = True
            self._drive_buffered()
            return
        stats[BYTES_OUT] += len(head) + (0 if growing else count)
        self.xfer = _Transfer(entry, [head, *parts])
        if growing:
            self.xfer.streamed = True  # HTTP/1.0: its body's bytes are counted when it ends
            if w.log is not None:
                self.xfer.log = (pending, plan.status)
        if self.tls:
            self.busy = True
            self._drive_buffered()
            return
        if plan.length >= CORK_MIN:
            # Big bodies: cork so only full segments leave while sendfile runs (as nginx's
            # tcp_nopush); uncorking at the end flushes the tail.
            self.corked = _cork(self.transport, 1)
        self.busy = True
        self._advance(self.fd)

    def _drive_buffered(self) -> bool:
        """Over TLS, or chunked: pread the file in pieces and write them until the transport's buffer is full.

        True when the whole response has been written.
        """
        xfer = self.xfer
        transport = self.transport
        while not self.write_paused:
            chunk = xfer.read(TLS_CHUNK)
            if chunk is None:
                if xfer.failed:
                    self._abort_transfer()
                    return False
                if xfer.starved:
                    xfer.starved = False
                    xfer.growth.caught_up()
                    xfer.growth.wait(self._grown)
                    return False
                if xfer.chunked:
                    transport.write(LAST_CHUNK)
                self._end_transfer()
                return True
            if xfer.chunked:
                self.w.stats[BYTES_OUT] += len(chunk)
                transport.write(b"".join((b"%x\r\n" % len(chunk), chunk, b"\r\n")))
            else:
                transport.write(chunk)
        self.last_progress = self.w.loop.time()
        return False

    def _wait_writable(self) -> None:
        """The socket is full: watch a dup of its fd (uvloop will not let us watch the transport's own)."""
        self._pause_reading()
        self.dup = os.dup(self.fd)
        self.w.loop.add_writer(self.dup, self._on_writable)

    def _advance(self, sock: int) -> bool:
        """Drive the transfer; on its end go on with the queue. True when it ended."""
        xfer = self.xfer
        if xfer.drive(sock):
            self._end_transfer()
            return True
        if xfer.failed:
            self._abort_transfer()
        elif xfer.starved:
            # The body is still arriving from an origin: stop watching the socket until it grows.
            xfer.starved = False
            if self.dup >= 0:
                self.w.loop.remove_writer(self.dup)
            xfer.growth.caught_up()
            xfer.growth.wait(self._grown)
        elif self.dup < 0:
            self._wait_writable()
        return False

    def _grown(self) -> None:
        """More of an origin body is on disk (or it failed): send on."""
        if self.xfer is None:
            return
        self.last_progress = self.w.loop.time()
        if self.tls or self.xfer.chunked:
            if not self.write_paused and self._drive_buffered() and not self.transport.is_closing():
                self._pump()
            return
        if self.dup >= 0:
            self.w.loop.add_writer(self.dup, self._on_writable)  # the socket may be full: wait for room
            return
        if self._advance(self.fd) and self.transport is not None and not self.transport.is_closing():
            self._pump()

    def _on_writable(self) -> None:
        xfer = self.xfer
        if xfer is None:
            return
        if self._advance(self.dup):
            if self.transport is not None and not self.transport.is_closing():
                self._pump()
        else:
            self.last_progress = self.w.loop.time()

    def _access(self, pending: Pending, status: int, sent: int) -> None:
        """Record one answered request in the access log, `sent` body bytes (exchange.outline's count)."""
        self.w.log.write(self.peer, pending.method or b"-", pending.target or b"-",
                         b"HTTP/1.0" if pending.version10 else b"HTTP/1.1", status, sent, pending.referer, pending.ua)

    def _end_transfer(self) -> None:
        xfer = self.xfer
        self.xfer = None
        self.busy = False
        if self.corked:
            self.corked = False
            _cork(self.transport, 0)
        if xfer is not None:
            if xfer.streamed or xfer.log is not None:
                sent = streamed_sent(xfer.parts, xfer.index, xfer.done, xfer.growth)
                if xfer.streamed:
                    self.w.stats[BYTES_OUT] += sent
                if xfer.log is not None:
                    self._access(*xfer.log, sent)
            xfer.entry.release()
        if self.dup >= 0:
            self.w.loop.remove_writer(self.dup)
            os.close(self.dup)
            self.dup = -1

    def _abort_transfer(self) -> None:
        """The client went away or the file shrank under us: never let a short body pass as complete."""
        xfer = self.xfer
        stats = self.w.stats
        stats[ERRORS] += 1
        if xfer is not None:
            stats[BYTES_OUT] -= xfer.unsent()  # a STREAMED body counts only what went (_end_transfer)
            if xfer.truncated:
                self.w.cache.purge(xfer.entry.path)
        self._end_transfer()
        self.closing = True
        self.queue = None
        if self.transport is not None:
            self.transport.abort()

    def tick(self, now: float) -> None:
        """Called by the worker's once-a-second sweep: enforce header, keep-alive and send timeouts."""
        if self.xfer is not None or self.write_paused:
            if now - self.last_progress > self.w.send_timeout:
                self._abort_transfer()
            return
        if now < self.deadline or self.busy or self.queue:
            return
        if self.state == HEAD and self.transport is not None:
            self.error = 408
            timed_out = _failed(self.w.site.error(408))
            self._send(timed_out, timed_out.plan)
            self.transport.close()
        elif self.state == IDLE and self.transport is not None:
            self.transport.close()

    def shutdown(self, idle_deadline: float) -> None:
        """Graceful stop: the next response says Connection: close; an idle connection closes at `idle_deadline`.

        Not closing idle connections at once leaves no window in which a client's next request
        meets a connection that is already gone (that would fail requests during a reload).
        """
        self.closing = True
        if self.state == IDLE:
            self.deadline = min(self.deadline, idle_deadline)


class _BodyReader:
    """Reads the body of a passed request whose head offered an Upgrade edge ignores (RFC 9110 §7.8): httptools
    treats such a head as the end of HTTP/1.1 and skips its body, so this parser of its own, fed the same
    framing (RFC 9112 §6.3), reads it from the bytes after the head. The connection closes after the answer."""

    __slots__ = ("conn", "parser", "done")

    def __init__(self, conn: H1Connection, length: int | None) -> None:
        self.conn = conn
        self.done = False
        self.parser = httptools.HttpRequestParser(self)
        framing = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
        self.parser.feed_data(b"PUT / HTTP/1.1\r\nHost: body\r\n" + framing + b"\r\n")

    def feed(self, data: bytes) -> None:
        """Body bytes (then whatever followed them, which is never read)."""
        if self.done or not data:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.done:  # a bad chunk (RFC 9112 §7.1): its exchange answers 400
                self.done = True
                conn = self.conn
                conn.reader = None
                if conn.body is not None:
                    conn.body.fail(400)
                    conn._pause_reading()

    def on_body(self, data: bytes) -> None:  # noqa: D102
        self.conn.on_body(data)

    def on_message_complete(self) -> None:  # noqa: D102
        self.done = True
        conn = self.conn
        conn.reader = None
        conn._body_end()
        raise _Abort  # what follows the body is not read (the connection closes after the answer)


class _PassFields(dict):
    """The field table of a request whose method passes through to an origin: every field goes on as sent
    (FORWARD), whatever its name, but the framing ones the adapter reads (RFC 9112 §6) and Connection (its
    close, and the fields it names, which stay behind: RFC 9110 §7.6.1)."""

    def get(self, name: bytes, default: int | None = None) -> int:  # noqa: D102
        return dict.get(self, name, FORWARD)


PASS_FIELDS = _PassFields({b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING,
                           b"connection": _CONNECTION})
PASSING = 2  # Pending.has_body of a passed request until its head ends (truthy: on_headers_complete looks)


class H1PassConnection(H1Connection):
    """An HTTP/1.x connection of a worker with origins: a request whose method is not GET or HEAD keeps every
    header field (its origin gets them, edge/passthrough.py) and may have a body, which is read as it streams.

    The method is known from the request line on: on_url asks for it only on these connections (static workers,
    which pass nothing through, use H1Connection and skip it)."""

    __slots__ = ()
    passes = True


class _Transfer:
    """The parts of one response still to write: header bytes and (offset, length) file ranges."""


    __slots__ = ("entry", "parts", "index", "done", "failed", "truncated", "growth", "starved", "chunked",
                 "streamed", "log")

    def __init__(self, entry: FileEntry, parts: list) -> None:
        self.entry = entry
        self.growth = entry.growth  # a stored.Growth while the body still arrives from an origin
        self.starved = False  # the writer is ahead of the body on disk: wait for growth
        self.parts = parts
        self.index = 0
        self.done = 0  # bytes of parts[index] already written
        self.failed = False
        self.truncated = False
        self.chunked = False  # each piece of the body is framed as a chunk (its length is STREAMED)
        self.streamed = False  # a STREAMED body sent as is (HTTP/1.0): its bytes are counted at its end
        self.log: tuple | None = None  # (pending, plan): the access log line waits for the body's length

    def read(self, most: int) -> bytes | None:
        """The next piece of the response as bytes (file ranges by pread); None at the end or on failure."""
        parts = self.parts
        if self.index >= len(parts):
            return None
        part = parts[self.index]
        if type(part) is bytes:
            self.index += 1
            return part
        offset, length = part
        growth = self.growth
        if growth is not None:
            if growth.failed:
                self.failed = True
                return None
            most = min(most, growth.available - offset - self.done)
            if most <= 0:
                if growth.done:  # a STREAMED body ended here
                    self.index += 1
                    self.done = 0
                    return self.read(TLS_CHUNK)
                self.starved = True
                return None
        try:
            data = os.pread(self.entry.fd, min(most, length - self.done), offset + self.done)
        except OSError:
            data = b""
        if not data:  # end of file before the promised length: the file shrank
            self.failed = self.truncated = True
            return None
        self.done += len(data)
        if self.done == length:
            self.index += 1
            self.done = 0
        return data

    def unsent(self) -> int:
        """Bytes of the response not yet written."""
        left = -self.done
        for part in self.parts[self.index:]:
            left += len(part) if type(part) is bytes else part[1] if part[1] < STREAMED else 0
        return max(left, 0)

    def drive(self, sock: int) -> bool:
        """Write as much as the socket takes; True when everything went, False on EAGAIN or failure."""
        parts = self.parts
        src = self.entry.fd
        try:
            while self.index < len(parts):
                part = parts[self.index]
                if type(part) is bytes:
                    n = os.write(sock, part[self.done:] if self.done else part)
                    remaining = len(part) - self.done - n
                else:
                    offset, length = part
                    todo = length - self.done
                    growth = self.growth
                    if growth is not None:
                        if growth.failed:
                            self.failed = True  # the origin cut the body short: so is this response
                            return False
                        room = growth.available - offset - self.done
                        if room <= 0:
                            if growth.done:  # a STREAMED body ended here (HTTP/1.0: the close ends it)
                                self.index += 1
                                self.done = 0
                                continue
                            self.starved = True
                            return False
                        if room < todo:
                            n = os.sendfile(sock, src, offset + self.done, room)
                            if n == 0:
                                self.failed = True
                                return False
                            self.done += n
                            continue
                    n = os.sendfile(sock, src, offset + self.done, min(todo, SENDFILE_CHUNK))
                    if n == 0:  # end of file before the promised length: the file shrank
                        self.failed = self.truncated = True
                        return False
                    remaining = todo - n
                if remaining:
                    self.done += n
                    continue
                self.index += 1
                self.done = 0
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return False
            self.failed = True
            return False
