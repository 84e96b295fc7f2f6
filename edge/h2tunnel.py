"""WebSocket over HTTP/2 (RFC 8441) in the HTTP/2 adapter: an extended CONNECT stream as a tunnel to an origin.

The adapter (edge/http2.py) advertises SETTINGS_ENABLE_CONNECT_PROTOCOL when the worker has tunnels, checks
the request (`:protocol` only then, and only on a CONNECT with :scheme, :path and :authority, RFC 8441 §4)
and hands the stream here with `extended_connect`. A `TunnelStream` is then the stream for the worker's
Tunnels (edge/tunnel.py: the root's answer or an origin's, the limit, the origin's Upgrade) and, once the
origin said 101, the stream side of its StreamRelay (edge/relay.py): DATA frames out within the windows,
the stream's window given back as the origin takes the bytes, and how the stream ends. The same code runs
over either engine (edge/h2engine.py, edge/h2lib.py): it only uses their common methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .core import Plan, Request
from .exchange import client_address
from .h2engine import CANCEL, CONNECT_ERROR, DATA, NO_ERROR, frame_head
from .hpackblock import encode_block
from .relay import DONE, ERROR, StreamRelay
from .stats import H2_STATUS_FIELD

if TYPE_CHECKING:
    from .http2 import H2Connection

MAX_DATA = 65_536  # bytes of one DATA frame at most, whatever larger frames the peer allows (as the adapter)
_EARLY_MAX = 1 << 20  # client bytes held before the origin's answer (the stream's window bounds them first)


def extended_connect(conn: H2Connection, sid: int, req: Request, fields: Sequence[tuple[bytes, bytes]],
                     protocol: bytes, ended: bool) -> None:
    """An extended CONNECT the adapter found well-formed, on stream `sid`: `:protocol = websocket` goes to the
    worker's tunnels as the GET `req` (target = :path); any other protocol is not served here (501)."""
    if protocol != b"websocket":  # RFC 8441 §4: the :protocol names what the tunnel carries; edge has one
        conn._respond(sid, req, conn.w.site.error(501))
        return
    req.method = b"GET"  # RFC 8441 §5: what the origin receives, and what the root would answer
    if conn.w.wants_client:  # ip-hash balancing: the origin is chosen by the client's network
        req.client = client_address(conn.transport, conn.peer)
    stream = conn.ws[sid] = TunnelStream(conn, sid, req, ended)
    regular = [(name, value) for name, value in fields if name[:1] != b":"]
    conn.w.tunnels.start_stream(stream, req, regular)


def pump_all(conn: H2Connection) -> None:
    """Windows may have opened (WINDOW_UPDATE, SETTINGS, the connection's transport drained): every relayed
    stream sends what waits."""
    for stream in list(conn.ws.values()):
        if stream.relay is not None:
            stream.relay.pump()


def end_all(conn: H2Connection) -> None:
    """The connection ends (a GOAWAY, a connection error, its close): so does every tunnel on it."""
    for stream in list(conn.ws.values()):
        stream.cancel()


class TunnelStream:
    """One extended CONNECT stream: Tunnels' client while the origin is asked, then a StreamRelay's stream."""

    __slots__ = ("conn", "sid", "req", "relay", "early", "early_bytes", "client_ended", "sent_end", "closed")

    def __init__(self, conn: H2Connection, sid: int, req: Request, ended: bool) -> None:
        self.conn = conn
        self.sid = sid
        self.req = req
        self.relay: StreamRelay | None = None
        self.early: list[tuple[bytes, int, bool]] = []  # DATA before the relay: (data, flow length, end)
        self.early_bytes = 0
        self.client_ended = ended  # the client's END_STREAM came (with the HEADERS, or in a DATA frame)
        self.sent_end = False  # our END_STREAM went out
        self.closed = False
        if ended:
            self.early.append((b"", 0, True))

    # -- the client's frames (from the adapter) ---------------------------------------------------

    def received(self, data: bytes, flow: int, end: bool) -> None:
        """A DATA frame on the stream. The connection's window comes back at once (the bytes are held by this
        stream, within its own window, RFC 9113 §6.9: with edge's engine; the h2 reference engine gives it with
        the stream's); the stream's as the origin takes them (StreamRelay, engine.stream_credit)."""
        conn = self.conn
        if flow:
            conn.engine.acknowledge_connection(flow)
        if end:
            self.client_ended = True
        if self.relay is not None:
            self.relay.from_stream(data, flow, end)
            return
        self.early.append((data, flow, end))
        self.early_bytes += len(data)
        if self.early_bytes > _EARLY_MAX:  # a stream window far beyond edge's: more than it may send
            conn._reset(self.sid, CANCEL, conn.w.loop.time())

    def cancel(self) -> None:
        """The stream was reset (by the client or by edge), or its connection ends: the tunnel ends with it."""
        if self.closed:
            return
        self.closed = True
        self.conn.ws.pop(self.sid, None)
        self.early = []
        if self.relay is not None:
            self.relay.end(ERROR)  # the origin's connection is closed (RFC 9113 §8.5: abruptly)

    # -- for Tunnels (tunnel.StreamUpgrading) -----------------------------------------------------

    def upgrade_alive(self) -> bool:
        """The stream and its connection are still open."""
        conn = self.conn
        return not self.closed and conn.transport is not None and not conn.lingering and conn.engine.is_open(self.sid)

    def answer_upgrade(self, req: Request, plan: Plan) -> None:
        """Not a tunnel (the root's answer, the origin's refusal, an error): the stream's plain answer."""
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        conn.ws.pop(self.sid, None)
        self.early = []
        if conn.transport is None or conn.lingering:
            return
        conn._respond(self.sid, req, plan)
        conn._pump()

    def accept(self, fields: list[tuple[bytes, bytes]]) -> TunnelStream:
        """RFC 8441 §5: `:status 200` (the origin's 101) with `fields`; the stream stays open both ways."""
        conn = self.conn
        w = conn.w
        dated = any(name == b"date" for name, _ in fields)  # the origin's Date, else edge's: one of them
        conn.engine.send_headers(self.sid, encode_block([(b":status", b"200"), *fields]) + (b"" if dated else w.date_h2),
                                 False)
        conn._flush()
        w.stats[H2_STATUS_FIELD[200]] += 1
        if w.log is not None:
            w.log.write(conn.peer, b"CONNECT", self.req.target or b"-", b"HTTP/2.0", 200, 0, b"-", b"-")
        return self

    def attach(self, relay: StreamRelay) -> None:
        """The relay carries the stream from now on: the client's DATA so far goes to it, in order."""
        self.relay = relay
        early, self.early = self.early, []
        for data, flow, end in early:
            relay.from_stream(data, flow, end)
        if self.closed or relay.done:
            return
        self.conn.with_body.discard(self.sid)  # read here, not left to the adapter's unread-body rule

    # -- for StreamRelay (relay.StreamSide) -------------------------------------------------------

    def window(self) -> int:
        """Bytes DATA frames may carry now; 0 while the connection's transport is full; -1 when gone."""
        conn = self.conn
        if self.closed or conn.transport is None or conn.lingering:
            return -1
        engine = conn.engine
        if not engine.is_open(self.sid):
            return -1
        if conn.paused:
            return 0
        # Below 0 when the client lowered SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 §6.9.2): nothing to send yet,
        # not a stream gone.
        return max(0, engine.window(self.sid))

    def send(self, data: bytes, end: bool) -> None:
        """`data` as DATA frames (each within the peer's SETTINGS_MAX_FRAME_SIZE), END_STREAM on the last when
        `end`, accounted in the engine and written at once."""
        conn = self.conn
        engine = conn.engine
        sid = self.sid
        cap = min(engine.max_frame_size, MAX_DATA)
        chunks: list[bytes] = []
        at, total = 0, len(data)
        while True:
            size = min(cap, total - at)
            last = end and at + size >= total
            chunks.append(frame_head(size, DATA, engine.sent_data(sid, size, last), sid))
            chunks.append(data[at:at + size] if size != total else data)
            at += size
            if at >= total:
                break
        if end:
            self.sent_end = True
        conn._emit(*chunks)
        conn._flush()

    def credit(self, n: int) -> None:
        """Give the client `n` bytes of the stream's window back (the origin took them)."""
        if not self.closed:
            self.conn.engine.stream_credit(self.sid, n)
            self.conn._flush()

    def finish(self, reason: str) -> None:
        """The relay ended. DONE: END_STREAM unless sent already, then RST_STREAM(NO_ERROR) if the client's side
        is still open (the origin is gone: RFC 9113 §8.1 lets a server ask it to stop); an origin failure is
        RST_STREAM(CONNECT_ERROR) (§8.5); an idle or stopped tunnel, RST_STREAM(CANCEL). A stream that was reset
        already, or whose connection ends (cancel), gets nothing more."""
        conn = self.conn
        cancelled = self.closed
        self.closed = True
        sid = self.sid
        if conn.ws.get(sid) is self:
            del conn.ws[sid]
        conn.open.discard(sid)
        conn.with_body.discard(sid)
        if cancelled or conn.transport is None or conn.lingering:
            return
        engine = conn.engine
        if reason == DONE:
            if not self.sent_end and engine.is_open(sid):
                self.send(b"", True)
            if not self.client_ended:
                engine.reset(sid, NO_ERROR)
        else:
            engine.reset(sid, CONNECT_ERROR if reason == ERROR else CANCEL)  # nothing on a stream already closed
        conn._flush()
        conn._pump()  # (a draining connection whose last tunnel this was closes now)
