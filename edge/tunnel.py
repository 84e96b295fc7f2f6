"""WebSocket over HTTP/1.1 (RFC 6455 §4, RFC 9110 §7.8): an upgrade the root does not answer goes to an origin.

The adapter hands over a parsed upgrade request (`Tunnels.start`). The exchange looks at the root only
(exchange.upgrade: a tunnel is never a stored answer); when the root has no such file, a fresh connection
(never a pooled one: it never returns to the pool) goes to an origin with the request line, the client's
end-to-end fields, Host and Via as for any origin request, and Connection/Upgrade. The origin's answer:
a 101 goes to the client as it came (status line and fields), then both connections become a relay
(edge/relay.py: splice for plain sockets, copying when TLS is on either side); anything else goes to the
client as a plain, uncached answer, and the connection closes.

WebSocket over HTTP/2 (RFC 8441) takes the same road from its adapter (edge/h2tunnel.py, `start_stream`):
an extended CONNECT with `:protocol = websocket` becomes the same HTTP/1.1 Upgrade to the origin (GET, the
client's fields, and a Sec-WebSocket-Key edge makes: HTTP/2 clients send none, RFC 8441 §5), under the same
limit, origin choice and counters. A 101 whose Sec-WebSocket-Accept matches that key (RFC 6455 §4.2.2)
becomes `:status 200` on the stream, then a StreamRelay (edge/relay.py) between the stream and the origin;
anything else is the stream's plain answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from .cachestatus import CacheStatus
from .config import Config
from .core import Plan, Request, text_plan
from .exchange import Services, upgrade
from .health import pick_origins
from .origin import HOP_BY_HOP_BYTES, NOT_RETURNED, OriginError, end_to_end, join_cookies, relayed_head
from .paths import BadTarget, split_target
from .relay import CopyRelay, RelayGroup, SpliceRelay, StreamRelay, StreamSide
from .stats import TUNNEL_BYTES_DOWN, TUNNEL_BYTES_UP, TUNNELS_OPEN, TUNNELS_TOTAL

MAX_ANSWER_BODY = 1 << 20  # body bytes of an origin's non-101 answer, read whole before it goes on (else 502)
_UPGRADE_LINES = b"Connection: upgrade\r\nUpgrade: websocket\r\n"  # edge's own: an upgrade is per hop (RFC 9110 §7.8)
#: Origin answer fields edge does not pass on with a plain (non-101) answer: hop-by-hop ones and the framing
#: it writes itself (the body goes with its own Content-Length).
_NOT_RETURNED = HOP_BY_HOP_BYTES | NOT_RETURNED
_BYPASS = CacheStatus(fwd="bypass").encode()  # RFC 9211 §2.2: the cache does not handle upgrades
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class Upgrading(Protocol):
    """What the adapter's connection offers while its upgrade is decided (edge/http1.py H1Connection)."""

    tls: bool

    def answer_upgrade(self, req: Request, plan: Plan) -> None:
        """Send `plan` as the answer to the upgrade request, then close the connection."""

    def take_over(self, req: Request, splice: bool) -> socket.socket | asyncio.Transport:
        """Leave HTTP/1.1 after a 101: a socket of its own when `splice` allows and it is plain TCP (a dup; its
        transport is dropped), else its transport (TLS) for a copying relay."""

    def upgrade_alive(self) -> bool:
        """The client is still connected."""


class StreamUpgrading(Protocol):
    """What the HTTP/2 adapter offers for an extended CONNECT's stream (edge/h2tunnel.py TunnelStream)."""

    def answer_upgrade(self, req: Request, plan: Plan) -> None:
        """Send `plan` as the stream's answer (not a tunnel: it ends with END_STREAM)."""

    def upgrade_alive(self) -> bool:
        """The stream and its connection are still open."""

    def accept(self, fields: list[tuple[bytes, bytes]]) -> StreamSide:
        """`:status 200` with `fields` on the stream (RFC 8441 §5); the stream side for its relay."""

    def attach(self, relay: StreamRelay) -> None:
        """The relay that carries the stream from now on (the client's DATA so far goes to it)."""


def accept_value(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept an origin must answer `key` with (RFC 6455 §4.2.2 item 5.4)."""
    return base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())  # noqa: S324 - the protocol's hash


def parse_head(raw: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """(method, target, fields) of an upgrade request's whole head, or None unless `raw` is exactly that."""
    collector = _HeadFields()
    parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade as e:
        if e.args and e.args[0] != len(raw):
            return None
        return parser.get_method(), collector.url, collector.fields
    except httptools.HttpParserError:
        return None
    return None  # no upgrade where the adapter saw one: the head was not rebuilt right


class _HeadFields:
    """httptools callbacks that keep a request head's target and fields, names as sent."""

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:  # noqa: D102
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        self.fields.append((name, value))


class OriginAnswer(asyncio.Protocol):
    """An origin connection until its answer: a 101's head (then reading pauses), or a whole other answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future = loop.create_future()
        self.status = 0
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.after = b""  # bytes the origin sent after its 101 head (its first frames)
        self.interim = False
        self.framed = False  # Content-Length or chunked: the body's end is known without the close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self.done.done():
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            if self.status != 101:
                self._fail(OriginError(f"origin switched protocols with a {self.status}"))
                return
            self.transport.pause_reading()  # the rest is the relay's to read
            self.after = data[offset:]
            self.done.set_result(None)
        except httptools.HttpParserError as e:
            self._fail(OriginError(f"bad answer from the origin: {e}"))
        except OriginError as e:
            self._fail(e)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        if self.done.done():
            return
        if self.status >= 200 and not self.framed and exc is None:
            self.done.set_result(None)  # a body delimited by the close (RFC 9112 §6.3 rule 8)
        else:
            self._fail(OriginError("the origin closed the connection before its answer was whole"))

    def _fail(self, error: OriginError) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def on_status(self, reason: bytes) -> None:  # noqa: D102
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        lower = name.lower()
        if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:  # noqa: D102
        self.status = self.parser.get_status_code()
        if self.status < 200 and self.status != 101:
            self.interim = True  # 100, 103: the answer follows (RFC 9110 §15.2)

    def on_body(self, body: bytes) -> None:  # noqa: D102
        self.body += body
        if len(self.body) > MAX_ANSWER_BODY:
            raise OriginError(f"the origin's {self.status} answer to an upgrade is over {MAX_ANSWER_BODY} bytes")

    def on_message_complete(self) -> None:  # noqa: D102
        if self.interim:
            self.interim = False
            self.fields = []
            self.reason = b""
            self.framed = False
            return
        if self.status != 101 and not self.done.done():
            self.done.set_result(None)

    def head(self) -> bytes:
        """The 101's status line and fields as the origin sent them."""
        return b"HTTP/1.1 101 %s\r\n%s\r\n" % (self.reason or b"Switching Protocols",
                                              b"".join(b"%s: %s\r\n" % f for f in self.fields))

    def end_to_end(self) -> list[tuple[bytes, bytes]]:
        """The answer's fields without hop-by-hop ones and those its Connection names (RFC 9110 §7.6.1), and
        without Content-Length; names lower-cased (as HTTP/2 needs them)."""
        return [(name.lower(), value) for name, value in end_to_end(self.fields, _NOT_RETURNED)]

    def plan(self, server: bytes) -> Plan:
        """A non-101 answer as a plan for the client: its status, end-to-end fields and body, never stored."""
        headers = [(b"server", server), *self.end_to_end()]
        dated = any(name == b"date" for name, _ in headers)
        body = bytes(self.body)
        headers.append((b"content-length", b"%d" % len(body)))
        headers.append((b"cache-status", _BYPASS))
        status = self.status if 200 <= self.status <= 599 else 502
        return Plan(status, headers, (body,) if body else (), len(body), dated=dated)


class _Opening:
    """Where an upgrade's origin exchange got to (for _open's clean-up)."""

    __slots__ = ("answer", "taken", "relayed")

    def __init__(self) -> None:
        self.answer: OriginAnswer | None = None  # the origin connection, once made
        self.taken = False  # the client connection left HTTP/1.1 (no plain answer can follow)
        self.relayed = False  # a relay owns the origin connection


class Tunnels:
    """A worker's WebSocket tunnels: the origin handshake, the per-worker limit, the relays and their figures."""

    def __init__(self, w: Services, config: Config) -> None:
        self.w = w
        self.loop = w.loop
        self.puller = w.puller
        self.pool = w.puller.pool
        self.max = config.websocket.max_tunnels
        self.balance = config.websocket.balance
        self.group = RelayGroup(w.loop, config.websocket.idle_timeout)
        self.connect_timeout = config.proxy.connect_timeout
        self.read_timeout = config.proxy.read_timeout
        self.server = config.server_name.encode("latin-1")
        self.opening = 0  # upgrades waiting for an origin's answer (they count against max_tunnels)
        self.tasks: set[asyncio.Task] = set()
        #: Per origin: host, port, TLS context (https), path prefix, Host field.
        self.origins: list[tuple[str, int, ssl.SSLContext | None, bytes, bytes]] = []
        for upstream in self.pool.upstreams:
            parts = urlsplit(upstream.url)
            tls = parts.scheme == "https"
            host = self.pool.request_headers(upstream, ())["Host"]
            self.origins.append((parts.hostname or "", parts.port or (443 if tls else 80),
                                 ssl.create_default_context() if tls else None,
                                 parts.path.rstrip("/").encode("latin-1"), host.encode("latin-1")))
        self.via = self.pool.via.encode("latin-1")
        # RFC 9110 §7.6.3: Via names the protocol edge received: HTTP/2 for an extended CONNECT.
        self.via_h2 = b"2 " + self.via[4:] if self.via.startswith(b"1.1 ") else self.via

    @property
    def open(self) -> int:
        """Tunnels open now, and upgrades waiting for their origin."""
        return len(self.group) + self.opening

    def start(self, client: Upgrading, req: Request, head: bytes, rest: bytes) -> None:
        """Answer an upgrade request: from the root when it has the target, else through an origin.

        `head` is the request's head as it came (the adapter's parser keeps only the fields it reads);
        `rest`, the bytes the client sent after it (its first frames): they go first once the tunnel is up."""
        upgrade(self.w, req, lambda plan: client.answer_upgrade(req, plan),
                lambda: self._tunnel(client, req, head, rest), client.upgrade_alive)

    def _tunnel(self, client: Upgrading, req: Request, head: bytes, rest: bytes) -> None:
        """The root has no such file: through an origin, within the limit."""
        site = self.w.site
        if self.open >= self.max:
            client.answer_upgrade(req, site.error(503))  # [websocket] max_tunnels
            return
        parsed = parse_head(head)
        if parsed is None or parsed[0] != req.method or parsed[1] != req.target:
            # The head reached edge in pieces it did not keep: its fields cannot be passed on whole.
            client.answer_upgrade(req, site.error(400))
            return
        try:
            path, query = split_target(req.target)  # origin-form for the origin (absolute-form is cut)
        except BadTarget:
            client.answer_upgrade(req, site.error(400))
            return
        target = path + (b"?" + query if query else b"")
        self._spawn(client, req, target, parsed[2], rest, None)

    def start_stream(self, client: StreamUpgrading, req: Request, fields: Sequence[tuple[bytes, bytes]]) -> None:
        """Answer an extended CONNECT with `:protocol = websocket` (RFC 8441 §5): `req` is its GET (target =
        :path), `fields` the client's regular fields. The root answers when it has the target (a 2xx there
        would tell the client its tunnel is up, RFC 9113 §8.5: 405, the file takes no CONNECT), else an origin.
        """
        def answer(plan: Plan) -> None:
            client.answer_upgrade(req, self.w.site.method_not_allowed if 200 <= plan.status < 300 else plan)

        upgrade(self.w, req, answer, lambda: self._tunnel_stream(client, req, fields), client.upgrade_alive)

    def _tunnel_stream(self, client: StreamUpgrading, req: Request, fields: Sequence[tuple[bytes, bytes]]) -> None:
        """The root has no such file: the origin gets an HTTP/1.1 Upgrade, within the limit."""
        if self.open >= self.max:
            client.answer_upgrade(req, self.w.site.error(503))  # [websocket] max_tunnels
            return
        try:
            path, query = split_target(req.target)
        except BadTarget:
            client.answer_upgrade(req, self.w.site.error(400))
            return
        target = path + (b"?" + query if query else b"")
        # RFC 8441 §5: no Sec-WebSocket-Key (nor Accept) over HTTP/2: edge makes the key of its own hop.
        # RFC 9113 §8.2.3: cookie crumbs are joined with "; " for HTTP/1.1.
        key = base64.b64encode(os.urandom(16))
        passed = join_cookies([(name, value) for name, value in fields if name != b"sec-websocket-key"])
        if not any(name == b"sec-websocket-version" for name, _ in passed):
            passed.append((b"sec-websocket-version", b"13"))  # RFC 6455 §4.1 item 9: the origin needs one
        passed.append((b"sec-websocket-key", key))
        self._spawn(client, req, target, passed, b"", key)

    def _spawn(self, client: Upgrading | StreamUpgrading, req: Request, target: bytes,
               fields: Sequence[tuple[bytes, bytes]], rest: bytes, key: bytes | None) -> None:
        """Start the origin exchange of an upgrade (counted against max_tunnels while it waits)."""
        self.opening += 1
        task = self.loop.create_task(self._open(client, req, target, fields, rest, key))
        self.tasks.add(task)
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.opening -= 1

    def choose_origins(self, req: Request) -> list[int]:
        """THE place a tunnel's origin is chosen: the origins to try, best first (the next only when the first
        refuses the connection), by `[websocket] balance` (edge/balance.py: least-conn by default, which
        counts this worker's open tunnels per origin), healthy origins only (health.pick_origins)."""
        key = req.target.split(b"?", 1)[0]
        order = self.pool.order(self.balance, key, getattr(req, "client", None), self.puller._eligible)
        return pick_origins(order, self.puller._healthy, self.puller._up, 2)

    async def _open(self, client: Upgrading | StreamUpgrading, req: Request, target: bytes,
                    fields: Sequence[tuple[bytes, bytes]], rest: bytes, key: bytes | None = None) -> None:
        """Connect, ask, and either relay (101) or answer the client with what the origin said. `key`: the
        Sec-WebSocket-Key edge made for an HTTP/2 stream (RFC 8441); None for an HTTP/1.1 upgrade."""
        state = _Opening()
        try:
            await self._exchange(client, req, target, fields, rest, state, key)
        except Exception as e:  # noqa: BLE001 - one broken tunnel is a 502 for its client, never a dead worker
            print(f"edge: worker {os.getpid()}: tunnel failed: {e!r}", file=sys.stderr, flush=True)
            if not state.taken and client.upgrade_alive():
                client.answer_upgrade(req, text_plan(502, [(b"cache-status", _BYPASS)], self.server))
        finally:
            answer = state.answer
            if answer is not None and not state.relayed and answer.transport is not None:
                answer.transport.abort()

    async def _exchange(self, client: Upgrading | StreamUpgrading, req: Request, target: bytes,
                        fields: Sequence[tuple[bytes, bytes]], rest: bytes, state: _Opening,
                        key: bytes | None = None) -> None:
        """_open's steps, which record in `state` the origin connection and whether a relay took it."""
        error: Exception = OriginError("no healthy origin")
        answer: OriginAnswer | None = None
        index = -1
        for index in self.choose_origins(req):
            host, port, context, prefix, host_field = self.origins[index]
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, answer = await self.loop.create_connection(
                        lambda: OriginAnswer(self.loop), host, port, ssl=context,
                        server_hostname=host if context is not None else None)
            except (OSError, TimeoutError, ssl.SSLError) as e:  # refused, unreachable: nothing was sent, try the next
                self.puller._origin_result(index, False)
                error = e
                continue
            break
        if answer is None:
            status = 504 if isinstance(error, TimeoutError) else 502
            client.answer_upgrade(req, text_plan(status, [(b"cache-status", _BYPASS)], self.server))
            return
        state.answer = answer
        via = self.via if key is None else self.via_h2
        answer.transport.write(relayed_head(req.method, prefix + target, fields, host_field, via, _UPGRADE_LINES))
        try:
            async with asyncio.timeout(self.read_timeout):
                await answer.done
        except (OriginError, TimeoutError) as e:
            self.puller._origin_result(index, False)
            status = 504 if isinstance(e, TimeoutError) else 502
            client.answer_upgrade(req, text_plan(status, [(b"cache-status", _BYPASS)], self.server))
            return
        self.puller._origin_result(index, True)
        if not client.upgrade_alive():
            return
        if answer.status != 101:
            if key is not None and 200 <= answer.status < 300:
                # The origin ignored the Upgrade: its 2xx on the stream would tell the client its tunnel is up
                # (RFC 9113 §8.5, RFC 8441 §5), as a 2xx of the root would (405 there, see start_stream).
                client.answer_upgrade(req, text_plan(502, [(b"cache-status", _BYPASS)], self.server))
                return
            client.answer_upgrade(req, answer.plan(self.server))
            return
        if key is not None:
            accepts = [value.strip() for name, value in answer.fields if name.lower() == b"sec-websocket-accept"]
            if accepts != [accept_value(key)]:  # RFC 6455 §4.2.2: not an answer to this handshake
                raise OriginError("the origin's Sec-WebSocket-Accept does not match edge's key")
            state.taken = True
            state.relayed = self._relay_stream(client, answer, index)
            return
        state.taken = True
        state.relayed = self._relay(client, req, answer, rest, index)

    def _relay_stream(self, client: StreamUpgrading, answer: OriginAnswer, index: int) -> bool:
        """RFC 8441 §5: the origin's 101 becomes `:status 200` on the stream (with its end-to-end fields but
        Sec-WebSocket-Accept), then the stream and the origin's connection are a StreamRelay, which counts as
        active on origin `index` (least-conn) until it ends."""
        pool = self.pool
        side = client.accept([f for f in answer.end_to_end() if f[0] != b"sec-websocket-accept"])
        pool.track(index, 1)
        relay = StreamRelay(self.group, side, answer.transport, to_stream=answer.after,
                            on_end=lambda _relay: pool.track(index, -1))
        client.attach(relay)
        return True

    def _relay(self, client: Upgrading, req: Request, answer: OriginAnswer, rest: bytes, index: int) -> bool:
        """Both connections switch to a relay; the origin's 101 head and first frames go to the client first,
        the client's first frames to the origin. True once the relay owns the origin's connection, which
        counts as active on origin `index` (least-conn) until the relay ends."""
        origin = answer.transport
        pool = self.pool

        tracked = False

        def ended(_relay: object) -> None:
            pool.track(index, -1)

        to_client = answer.head() + answer.after
        plain = origin.get_extra_info("sslcontext") is None and not origin.get_write_buffer_size()
        downstream = client.take_over(req, plain)
        try:
            if type(downstream) is socket.socket:
                upstream = socket.socket(fileno=os.dup(origin.get_extra_info("socket").fileno()))
                origin.abort()  # uvloop forgets its socket; the dup keeps the connection
                pool.track(index, 1)
                tracked = True
                SpliceRelay(self.group, downstream, upstream, to_b=rest, to_a=to_client, on_end=ended)
            else:  # TLS on either side: the bytes pass through the transports
                pool.track(index, 1)
                tracked = True
                CopyRelay(self.group, downstream, origin, to_b=rest, to_a=to_client, on_end=ended)
            return True
        except OSError as e:  # no fds left for the pipes or the dup: both connections close
            print(f"edge: worker {os.getpid()}: tunnel not started: {e}", file=sys.stderr, flush=True)
            if tracked:
                pool.track(index, -1)  # counted just before the relay that could not start
            if type(downstream) is socket.socket:
                downstream.close()
            else:
                downstream.abort()
            return False

    def publish(self, stats: list[int]) -> None:
        """Copy the tunnel figures into the worker's counters (published with them once a second)."""
        group = self.group
        stats[TUNNELS_OPEN] = len(group)
        stats[TUNNELS_TOTAL] = group.opened
        stats[TUNNEL_BYTES_UP] = group.moved[0]
        stats[TUNNEL_BYTES_DOWN] = group.moved[1]

    def close(self) -> None:
        """End every tunnel and every upgrade still waiting for its origin (a worker's drain deadline)."""
        for task in list(self.tasks):
            task.cancel()
        self.group.close()
