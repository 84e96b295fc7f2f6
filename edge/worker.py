"""A worker process: one uvloop event loop serving a listening socket, with its file cache and clock."""

from __future__ import annotations

import asyncio
import gc
import bisect
import signal
import socket
import ssl
import sys
import time
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import uvloop

from . import control
from .accesslog import AccessLog
from .cachekey import KeyRule
from .config import Config
from .core import Fetch, Miss, Plan, Request, Site
from .filecache import FileCache, Resolver
from .http1 import _FIELDS as H1_FIELDS
from .http1 import FORWARD, H1Connection, H1PassConnection
from .http2 import H2Connection
from .health import HealthTable
from .hpackblock import encode_field
from .httpdate import format_http_date
from .limits import raise_nofile
from .purge import Purge, purge_cache
from .tls import AlpnDispatch
from .stats import CACHE_HITS, DRAINING, DURATION_BOUNDS, DURATION_BUCKETS, DURATION_SUM_US, FC_ENTRIES, FC_EVICTIONS, FC_HITS, FC_MISSES, FIELDS, PUBLISHED, SERVING, STATE

DRAIN_IDLE_GRACE = 1.0  # seconds an idle keep-alive connection may still send one last request when draining
GC_YOUNG = 20_000  # allocations between young-generation collections (CPython default: 700)
GC_OLDER = 20  # young collections per middle one, and middle ones per full one (default: 10)


def make_listener(host: str, port: int, *, reuseport: bool = False, backlog: int = 4096) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (IPv6 when `host` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def cache_budget(max_entries: int, nofile: int) -> int:
    """How many open-file cache entries fit in the fd limit, keeping half of it for connections."""
    return min(max_entries, max(16, nofile // 2))


class Worker:
    """Per-process serving state: loop, site semantics, file cache, connections and the 1 Hz tick."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, stats: memoryview | None = None,
                 health: HealthTable | None = None, events: socket.socket | None = None, solo: bool = False,
                 supervisor: int = 0, origin_counts: memoryview | None = None) -> None:
        self.config = config
        # Counters live in a plain list (an increment costs a third of one into shared memory) and are
        # published to this worker's slot of the supervisor's shared block once a second.
        self.stats = [0] * FIELDS
        self.shared = stats if stats is not None else memoryview(array("q", bytes(8 * FIELDS)))
        self.loop = loop
        self.header_timeout = config.header_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.send_timeout = config.send_timeout
        # Each tunnel holds 6 fds (two sockets, two pipes): room for [websocket] max_tunnels of them too.
        tunnel_fds = 6 * config.websocket.max_tunnels if config.origins and config.websocket.enabled else 0
        nofile = raise_nofile(config.file_cache.max_entries * 2 + 1024 + tunnel_fds)
        entries = cache_budget(config.file_cache.max_entries, nofile)
        if entries < config.file_cache.max_entries:
            print(f"edge: file_cache.max_entries lowered to {entries} to fit RLIMIT_NOFILE={nofile}",
                  file=sys.stderr, flush=True)
        self.resolver = Resolver(config.root, config.follow_symlinks, config.index, config.file_cache.inline_max)
        self.cache = FileCache(self.resolver, entries, config.file_cache.valid)
        self.site = Site(self.cache, serve_dotfiles=config.serve_dotfiles, header_rules=config.headers,
                         server_name=config.server_name, push=config.push, index=config.index,
                         cache_keys=KeyRule(config.cache.query) if config.origins else None)
        self.early_hints = config.early_hints and self.site.has_hints
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edge-io")
        self.puller = None
        #: The supervisor's pid when run under one: the control channel is named after it.
        self.supervisor = supervisor
        #: Request fields passed on to origins (lower-case bytes); the HTTP/1.1 parser's field table with them.
        # Authorization always goes (RFC 9111 §3.5: such a request is the origin's to answer, see pull.py).
        self.forward = frozenset({*(h.encode("latin-1") for h in config.proxy.forward_headers), b"authorization"}) \
            - H1_FIELDS.keys() if config.origins else frozenset()  # fields core or framing reads are never passed on
        self.h1_fields = {**H1_FIELDS, **{name: FORWARD for name in self.forward}}
        #: A balancing policy keys origins by the client's address (ip-hash): adapters set Request.client.
        self.wants_client = bool(config.origins) and "ip-hash" in (config.proxy.balance, config.websocket.balance)
        # (Connection is a framing field of the HTTP/1.1 adapter, which also hands it to origin.py: the
        # fields it names are never passed on, RFC 9110 §7.6.1.)
        if config.origins:
            from .pull import Puller

            self.puller = Puller(config, loop, self.cache, self.site, self.executor, self.stats, health, events, solo,
                                 origin_counts)
        #: Other methods than GET and HEAD, passed through to origins (edge/passthrough.py); None without origins.
        self.passer = None
        #: The HTTP/1.1 connection class: with origins, one that keeps every field of a passed request.
        self.h1: type[H1Connection] = H1Connection
        if self.puller is not None:
            from .passthrough import Passer

            self.passer = Passer(self, config)
            self.h1 = H1PassConnection
        self.connections: set[H1Connection] = set()
        #: TLS connections still in their handshake -> when it times out: a drain waits for them too (they are not
        #: in `connections` until their protocol is chosen, and a reload must not cut one it accepted).
        self.handshakes: dict[AlpnDispatch, float] = {}
        #: WebSocket upgrades to origins and their relays (edge/tunnel.py); None: upgrades are answered as plain
        #: HTTP/1.1 (no origins, or [websocket] enabled = false).
        self.tunnels = None
        if self.puller is not None and config.websocket.enabled:
            from .tunnel import Tunnels

            self.tunnels = Tunnels(self, config)
        self.log = AccessLog(config.access_log) if config.access_log else None
        self.date_line = b""
        self._tick_handle: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Future | None = None
        self._update_date()

    def _update_date(self) -> None:
        self.date_value = format_http_date(time.time()).encode("ascii")
        self.date_h2 = encode_field(b"date", self.date_value)
        self.date_line = b"Date: " + self.date_value + b"\r\n"

    def _tick(self) -> None:
        """Once a second: refresh the Date line, enforce timeouts, flush the access log."""
        self._update_date()
        now = self.loop.time()
        for conn in list(self.connections):
            conn.tick(now)
        self._handshaking(now)
        if self.log is not None:
            self.log.flush()
        self._publish()
        wall = time.time()
        self._tick_handle = self.loop.call_later(1.0 - (wall % 1.0) + 0.001, self._tick)

    def _publish(self) -> None:
        """Copy the counters (and the file cache's) to the shared slot: once a second, and at the end."""
        stats, cache, shared = self.stats, self.cache, self.shared
        stats[FC_HITS] = cache.hits
        stats[FC_MISSES] = cache.misses
        stats[FC_EVICTIONS] = cache.evictions
        stats[FC_ENTRIES] = len(cache)
        stats[CACHE_HITS] = self.site.store_hits
        if self.tunnels is not None:
            self.tunnels.publish(stats)
        for i in PUBLISHED:
            shared[i] = stats[i]

    def still_missing(self, req: Request, miss: Miss, now: float) -> Plan | Fetch | None:
        """The answer to a Miss for a cached 404 due for its recheck when one stat says the path is still
        missing (FileCache.still_missing); None: load it off the loop."""
        missing = self.cache.still_missing(miss.path, now)
        if missing is None:
            return None
        return self.site.respond(req, missing, miss.query, miss.path, now)

    async def serve(self, sock: socket.socket, on_ready: Callable[[], None] | None = None,
                    tls_sock: socket.socket | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        """Serve `sock` (and `tls_sock` with `tls_context`) until SIGTERM/SIGINT, then drain."""
        loop = self.loop
        servers = [await loop.create_server(lambda: self.h1(self), sock=sock, backlog=4096)]
        if tls_sock is not None:
            servers.append(await loop.create_server(self._tls_protocol, sock=tls_sock, backlog=4096,
                                                    ssl=tls_context, ssl_handshake_timeout=self.header_timeout))
        self._stopping = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        control_sock = None
        if self.supervisor:
            control_sock = control.bind(self.supervisor)
            control.serve(loop, control_sock, self.command)
        self._tick()
        self.shared[STATE] = SERVING
        if on_ready is not None:
            on_ready()
        await self._stopping
        self.shared[STATE] = DRAINING
        for server in servers:
            server.close()
        grace = loop.time() + DRAIN_IDLE_GRACE
        for conn in list(self.connections):
            conn.shutdown(grace)
        deadline = loop.time() + self.config.shutdown_timeout
        # Open tunnels keep working until they end or shutdown_timeout (a reload's old worker, or SIGTERM).
        tunnels = self.tunnels
        while (self.connections or self._handshaking(loop.time()) or (tunnels is not None and tunnels.open)) \
                and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if tunnels is not None:
            tunnels.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._publish()
        if self.passer is not None:
            self.passer.close()
        if self.puller is not None:
            await self.puller.close()
        if control_sock is not None:
            loop.remove_reader(control_sock.fileno())
            control_sock.close()
        self.cache.close()
        if self.log is not None:
            self.log.close()
        self.executor.shutdown(wait=False)

    # -- the one place a connection's protocol is chosen or switched ---------------------------------

    def start_h2(self, transport: asyncio.Transport, data: bytes) -> None:
        """Go on with an HTTP/2 connection whose first bytes were its preface (prior knowledge, RFC 9113 §3.3)."""
        H2Connection(self).take_over(transport, data)

    def upgrade_h2(self, transport: asyncio.Transport, settings: bytes, req: Request, rest: bytes) -> None:
        """Go on over HTTP/2 after `101 Switching Protocols` (h2c Upgrade), answering `req` on stream 1."""
        H2Connection(self).upgrade(transport, settings, req, rest)

    def _tls_protocol(self) -> AlpnDispatch:
        """A TLS connection just accepted: counted as handshaking until ALPN's choice (or its timeout)."""
        def chosen(alpn: str | None) -> asyncio.Protocol:
            self.handshakes.pop(dispatch, None)
            proto = self.alpn_protocol(alpn)
            if self.shared[STATE] == DRAINING:  # accepted before the drain, shaken hands after: drained too
                self.loop.call_soon(proto.shutdown, self.loop.time() + DRAIN_IDLE_GRACE)  # after connection_made
            return proto

        dispatch = AlpnDispatch(chosen)
        self.handshakes[dispatch] = self.loop.time() + self.header_timeout  # the ssl_handshake_timeout
        return dispatch

    def _handshaking(self, now: float) -> bool:
        """Forget handshakes past their timeout (a failed one says nothing); whether any is still under way."""
        handshakes = self.handshakes
        if handshakes:
            for dispatch in [d for d, until in handshakes.items() if until <= now]:
                del handshakes[dispatch]
        return bool(handshakes)

    def alpn_protocol(self, chosen: str | None) -> asyncio.Protocol:
        """The protocol of a TLS connection by the ALPN protocol its handshake chose."""
        return H2Connection(self, secure=True) if chosen == "h2" else self.h1(self, tls=True)


    def observe(self, seconds: float) -> None:
        """Count the response time of a request that had to wait (a file open, the disk cache, an origin)."""
        stats = self.stats
        stats[DURATION_BUCKETS[bisect.bisect_left(DURATION_BOUNDS, seconds)]] += 1
        stats[DURATION_SUM_US] += int(seconds * 1_000_000)

    def command(self, command: dict) -> dict:
        """A command from the admin endpoint (control channel): purge, or ping."""
        op = command.get("op")
        if op == "purge":
            purge = Purge.from_json(command)
            if self.puller is not None:
                self.puller.reports.flush()  # the manager reads them before it purges the disk a second time
                self.puller.purged(purge)
            return {"dropped": purge_cache(self.cache, purge)}
        if op == "ping":
            return {}
        raise ValueError(f"unknown command {op!r}")

    def _reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log (after logrotate moved it)."""
        if self.log is not None:
            self.log.flush()
            self.log.reopen()

    def _request_stop(self) -> None:
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)


def tune_gc() -> None:
    """Collect cycles rarely: objects made at start are frozen out of every collection, and the young
    generation is collected every GC_YOUNG allocations, not every 700.

    A cache miss allocates a few hundred objects, nearly all freed by reference counting; with the
    default thresholds the cycle collector took about a tenth of a worker's CPU on the proxy-miss row
    (perf), most of it re-scanning the long-lived file-cache entries in full collections.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, GC_OLDER, GC_OLDER)


def run(config: Config, sock: socket.socket, stats: memoryview | None = None,
        on_ready: Callable[[], None] | None = None, tls_sock: socket.socket | None = None,
        tls_context: ssl.SSLContext | None = None, health: HealthTable | None = None,
        events: socket.socket | None = None, solo: bool = False, supervisor: int = 0,
        origin_counts: memoryview | None = None) -> None:
    """Run one worker on `sock` (and `tls_sock`) in a fresh uvloop event loop until it is told to stop.

    `solo`: it is the node's only worker (origin fetches need no cross-process coordination).
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        worker = Worker(config, runner.get_loop(), stats, health, events, solo, supervisor, origin_counts)
        tune_gc()
        runner.run(worker.serve(sock, on_ready, tls_sock, tls_context))
