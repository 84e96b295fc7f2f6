"""One request's life for every protocol: resolve, open a file off the loop or ask the puller, plan, observe.

The adapters (HTTP/1.1, HTTP/2) call `begin` for each request and, when it cannot be answered from
memory, `finish`, which brings the plan back through their `deliver` callback. They type against
`Services`, the few things an adapter needs from its worker, not the worker itself; the worker also
switches a connection's protocol (HTTP/2 by prior knowledge, h2c Upgrade, ALPN), so the adapters never
import each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from .core import Fetch, Miss, Pass, Plan, Request, Site
from .filecache import FileCache, FileEntry, Lookup, NotFound, Resolver
from .stored import STREAMED, settled


class Services(Protocol):
    """What an adapter needs from its worker: clocks, semantics, caches, the origin side, limits, stats."""

    loop: asyncio.AbstractEventLoop
    site: Site
    cache: FileCache
    resolver: Resolver
    executor: Executor
    puller: Any  # pull.Puller, when origins are configured
    passer: Any  # passthrough.Passer, when origins are configured: other methods go to them
    config: Any  # config.Config
    stats: list[int]
    connections: set
    log: Any  # accesslog.AccessLog or None
    header_timeout: float
    keepalive_timeout: float
    send_timeout: float
    early_hints: bool
    tunnels: Any  # tunnel.Tunnels when WebSocket upgrades go to origins, else None
    wants_client: bool  # an origin balancing policy keys by the client's address (ip-hash): Request.client
    h1_fields: dict[bytes, int]
    forward: frozenset[bytes]
    date_h2: bytes
    date_value: bytes
    date_line: bytes

    def still_missing(self, req: Request, miss: Miss, now: float) -> Plan | Fetch | None: ...  # noqa: D102

    def observe(self, seconds: float) -> None: ...  # noqa: D102

    def start_h2(self, transport: asyncio.Transport, data: bytes) -> None:
        """Go on with an HTTP/2 connection whose first bytes were its preface (prior knowledge)."""

    def upgrade_h2(self, transport: asyncio.Transport, settings: bytes, req: Request, rest: bytes) -> None:
        """Go on over HTTP/2 after `101 Switching Protocols`, answering `req` on stream 1."""


HEADLESS = -1  # outline's count for a body still growing: its log line and byte count wait for its end


def outline(plan: Plan, method: bytes) -> tuple[bool, int]:
    """How `plan` goes out for a request with `method`: (bodiless, body bytes to count and log now).

    Bodiless: RFC 9110 §9.3.2 (HEAD) and §15.4.5 (304) send the head only; a plan without parts has no
    body either. The count is the body's length, the stored size for a body planned while it streamed
    (STREAMED) and complete since, or HEADLESS while it still grows (its length known only at its end).
    """
    if not plan.parts or method == b"HEAD" or plan.status == 304:
        return True, 0
    if plan.length < STREAMED:
        return False, plan.length
    entry = plan.entry
    if entry is None:
        return False, 0
    return False, HEADLESS if entry.growth is not None else entry.size


def body_parts(plan: Plan) -> tuple | list:
    """The parts a transfer sends: a plan made while its body streamed, and stored whole since, gets
    its STREAMED length cut to the stored size (a body still growing keeps it: the transfer follows)."""
    entry = plan.entry
    if plan.length >= STREAMED and entry is not None and entry.growth is None:
        return settled(plan.parts, entry.size)
    return plan.parts


def client_address(transport: asyncio.BaseTransport | None, peer: Any = None) -> str | None:
    """The client's IP address as text (from `peer`, the peername if already read), None if it has none."""
    if peer is None and transport is not None:
        peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None


def begin(w: Services, req: Request, now: float) -> Plan | Miss | Fetch:
    """The plan, when memory has what it takes; else what must happen off the loop (a Miss: open the
    file; a Fetch: the disk cache or an origin), for `finish`."""
    plan = w.site.resolve(req, now)
    if type(plan) is Miss:
        plan = w.still_missing(req, plan, now) or plan
    return plan


def finish(w: Services, req: Request, step: Miss | Fetch | Pass, started: float, deliver: Callable[[Plan], None],
           alive: Callable[[], bool], old: FileEntry | None | bool = True,
           interim: Callable[[list[tuple[bytes, bytes]]], None] | None = None) -> None:
    """Carry `step` through to a plan and hand it to `deliver` (once, later); `alive()` false means the
    client is gone: no plan is made for it, and `deliver` is not called. `old`: the entry to revalidate
    (True: the cache's stale one). A plan from the puller holds an entry reference, released after deliver.
    `interim` sends the fields of an origin's 103 Early Hints to the client meanwhile (never stored).
    """
    if type(step) is Fetch:
        task = w.loop.create_task(w.puller.serve(req, step, interim))
        task.add_done_callback(lambda t: _pulled(w, t, started, deliver, alive))
        return
    if type(step) is Pass:  # a method other than GET and HEAD, to an origin with its body (edge/passthrough.py)
        task = w.loop.create_task(w.passer.serve(req, step, alive, interim))
        task.add_done_callback(lambda t: _pulled(w, t, started, deliver, alive))
        return
    miss = step

    def loaded(found: Lookup) -> None:
        now = w.loop.time()
        plan = w.site.respond(req, found, miss.query, miss.path, now)
        if type(plan) is Fetch:
            finish(w, req, plan, started, deliver, alive, interim=interim)
            return
        w.observe(now - started)
        deliver(plan)

    load(w, miss, w.cache.stale(miss.path) if old is True else old, loaded, alive)


def load(w: Services, miss: Miss, old: FileEntry | None, then: Callable[[Lookup], None],
         alive: Callable[[], bool]) -> None:
    """Look `miss.path` up under the root off the loop (revalidating `old`), store what was found in the
    file cache, and hand it to `then` on the loop, unless the client is gone (`alive()` false) by then."""
    def stored(fut: asyncio.Future) -> None:
        try:
            found = w.cache.store(miss.path, fut.result(), w.loop.time())
        except LookupError:  # the entry was evicted while it was being revalidated: load it afresh
            load(w, miss, None, then, alive)
            return
        except Exception:  # noqa: BLE001 - an unreadable file is a 500 for its request, not a dead worker
            found = NotFound(500)
        if alive():
            then(found)

    w.loop.run_in_executor(w.executor, w.resolver.load, miss.path, old).add_done_callback(stored)


def upgrade(w: Services, req: Request, answer: Callable[[Plan], None], tunnel: Callable[[], None],
            alive: Callable[[], bool]) -> None:
    """An Upgrade request's life (RFC 9110 §7.8): the root's answer when it has the target (`answer`, as any
    request), else `tunnel()` to an origin; the disk cache is never asked (a tunnel is not a stored answer)."""
    now = w.loop.time()
    step = w.site.resolve(req, now, root_only=True)
    if type(step) is Plan:
        answer(step)
    elif type(step) is not Miss:  # None: the root has no such file
        tunnel()
    else:
        def loaded(found: Lookup) -> None:
            plan = w.site.root_answer(req, found, step.query, step.path, w.loop.time())
            if plan is None:
                tunnel()
            else:
                answer(plan)

        load(w, step, w.cache.stale(step.path), loaded, alive)


def _pulled(w: Services, task: asyncio.Task, started: float, deliver: Callable[[Plan], None],
            alive: Callable[[], bool]) -> None:
    plan = task.result()  # serve() answers every failure with an error plan
    w.observe(w.loop.time() - started)
    try:
        if alive():
            deliver(plan)
    finally:
        if plan.entry is not None:
            plan.entry.release()  # the puller's reference; a transfer holds its own
