"""Origin pull in a worker: disk-cache lookups, coalesced origin fetches streamed to disk and to clients at once.

A request core could not answer from memory arrives as a core.Fetch. The puller loads the object's
metadata from the disk cache (off the loop), serves it if fresh, serves it stale while refreshing it
(stale-while-revalidate), or fetches it. One fetch per key runs at a time on the whole node: within
a worker by a dict of flights, across workers by a byte-range lock on tmp/locks; the fetching worker
writes the body to tmp/<digest>.fetch with the response head in an extended attribute, so the others
follow that file as it grows (edge/follow.py; no file of its own for the head: an inode made and removed per miss
cost more than the rest of publishing it).
Every client reads the body from that file (sendfile), never from the network buffer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import aiofiles.os

from . import reports
from .cachekey import KeyRule, digest
from .cachestatus import CacheStatus
from .conditional import weak_match
from .config import Config
from .core import REASONS, Fetch, Plan, Request, Site, authorizes, store_name, text_plan
from .diskcache import (
    DiskCache,
    Meta,
    Writer,
    read_meta,
    rewrite_meta,
)
from .filecache import OPEN_FLAGS, FileCache
from .follow import PASS, TIMED_OUT, Follower, HitForMiss, KeyLocks
from .freshness import assess
from .health import CLOSED, CircuitBreaker, HealthTable, counts_against_origin, pool_figures
from .httpdate import format_http_date, parse_http_date
from .origin import Fetched, OriginError, OriginPool, Upstream
from .purge import Purge
from .reports import Reporter
from .stats import (
    CACHE_MISSES,
    CACHE_STALE,
    CIRCUITS_OPEN,
    ORIGIN_ERRORS,
    ORIGIN_REQUESTS,
    STORE_ERRORS,
)
from .storefaults import FaultLog, reason_of
from .stored import (
    DROPPED_BYTES,
    DROPPED_FIELDS,
    NOT_ON_DISK,
    STREAMED,
    Growth,
    StoredEntry,
    normalise_coding,
)
from .variants import keyed_names, select, suffix, vary_names

_rewrite_meta = aiofiles.os.wrap(rewrite_meta)  # a 304's metadata update, run on aiofiles' thread pool
PURGE_MEMORY = 10.0  # seconds a worker remembers a purge it acknowledged (see Puller.purged)
SPILL_GRACE = 1.0  # seconds a spilled body's memory file stays open for followers after its fetch ends
ROOM_REQUEST_INTERVAL = 1.0  # seconds between two asks to the manager to make room after failed stores

HIT_STALE_REVALIDATE = CacheStatus(hit=True, fwd="stale", detail="stale-while-revalidate")
STALE_ERROR = CacheStatus(fwd="stale", detail="stale-if-error")  # forwarded, failed: not a hit (RFC 9211 §2.1)
REVALIDATED = CacheStatus(fwd="stale", fwd_status=304)
MISS_STORED = CacheStatus(fwd="miss", stored=True)  # being stored: the body streams to its clients and the disk at once
MISS = CacheStatus(fwd="miss")
MISS_STORE_FAILED = CacheStatus(fwd="miss", detail="store-failed")  # storable, but the disk refuses it: streamed only
STALE_STORE_FAILED = CacheStatus(fwd="stale", detail="store-failed")
STALE_NOT_STORED = CacheStatus(fwd="stale")  # was stale; the origin's new answer may not be stored
COLLAPSED = MISS_STORED.joined()
STALE_REFETCHED = CacheStatus(fwd="stale", stored=True)
STALE_COLLAPSED = STALE_REFETCHED.joined()  # a stale copy, refreshed by another worker's fetch it followed


class Outcome:
    """What a fetch gave the requests waiting on it: an entry to serve with its Cache-Status, or an error plan."""

    __slots__ = ("entry", "cache_status", "plan", "shared")

    def __init__(self, entry: StoredEntry | None = None, cache_status: CacheStatus | None = None,
                 plan: Plan | None = None, shared: bool = True) -> None:
        self.entry = entry
        self.cache_status = cache_status
        self.plan = plan
        self.shared = shared  # False: a private answer, only for the request that caused the fetch


class Flight:
    """One fetch of a key in this worker; requests for the key that arrive meanwhile wait() for its outcome."""

    __slots__ = ("loop", "outcome", "waiters", "hold", "claimed", "started", "locked", "listeners")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started = loop.time()
        self.outcome: Outcome | None = None  # set once, by resolve()
        self.waiters: list[asyncio.Future[Outcome]] = []
        self.hold: StoredEntry | None = None  # the flight's own reference on a growing entry
        self.claimed = False
        self.locked = -1  # the node-wide lock slot this flight holds, if any
        self.listeners: list[Callable[[list[tuple[bytes, bytes]]], None]] = []  # its requests' 103 writers

    def hint(self, fields: list[tuple[bytes, bytes]]) -> None:
        """A 103 Early Hints from the origin: to every request still waiting for the answer (never stored)."""
        if self.outcome is None:
            for listener in self.listeners:
                listener(fields)

    def claim(self) -> bool:
        """True for the first request to take a private answer (the one that caused the fetch)."""
        first = not self.claimed
        self.claimed = True
        return first

    def wait(self) -> asyncio.Future[Outcome]:
        """One request's share of the outcome: cancelling it (its client left) touches no other waiter."""
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def resolve(self, outcome: Outcome) -> None:
        """Hand `outcome` to every waiter still there, taking a reference on its entry for each (they release it)."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        entry = outcome.entry
        for waiter in self.waiters:
            if not waiter.done():
                if entry is not None:
                    entry.acquire()
                waiter.set_result(outcome)
        self.waiters.clear()
        self.listeners.clear()


def _header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


class Puller:
    """A worker's side of origin pull: disk cache reads, flights, origin requests, circuit breakers."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, cache: FileCache, site: Site,
                 executor, stats: list[int], health: HealthTable | None = None,  # noqa: ANN001
                 events: socket.socket | None = None, solo: bool = False,
                 origin_counts: memoryview | None = None) -> None:
        self.loop = loop
        #: This worker's row of the node's per-origin exchange counters (ok, failed) in shared memory.
        self.origin_counts = origin_counts
        #: The only worker of the node: no other process fetches, so no lock and no published head.
        self.solo = solo
        self.cache = cache
        self.site = site
        self.executor = executor
        self.stats = stats
        self.health = health
        self.reports = Reporter(loop, events)
        self.default_ttl = config.cache.default_ttl
        self.inline_max = config.file_cache.inline_max
        self.follow_timeout = config.proxy.connect_timeout + config.proxy.read_timeout
        self.read_timeout = config.proxy.read_timeout
        self.store = DiskCache(config.cache.dir, config.cache.max_size, report=self._stored,
                               min_free=config.cache.min_free)
        self.faults = FaultLog()
        self.room_asked = float("-inf")
        self.keys = KeyRule(config.cache.query)
        upstreams = [Upstream(o.url, o.weight, o.host_header) for o in config.origins]
        self.pool = OriginPool(upstreams, connect_timeout=config.proxy.connect_timeout,
                               read_timeout=config.proxy.read_timeout, limit_per_origin=config.proxy.max_connections,
                               forward_headers=(*config.proxy.forward_headers, "Authorization"), via=f"1.1 {config.server_name}",
                               balance=config.proxy.balance,
                               figures=pool_figures(origin_counts) if origin_counts is not None else None)
        self.breakers = [CircuitBreaker(config.health.failures, config.health.cooldown) for _ in upstreams]
        #: Origin statuses that count against the origin's circuit (health.failure_statuses; none by default).
        self.failure_statuses = frozenset(config.health.failure_statuses)
        self.flights: dict[str, Flight] = {}
        #: Purges this worker acknowledged, oldest first: (loop time, wall time, purge).
        self.recent_purges: list[tuple[float, float, Purge]] = []
        self.running: set[Flight] = set()  # every fetch under way, private ones too
        self.locks = KeyLocks(os.path.join(self.store.tmp_dir, "locks"))
        #: Keys whose last answer may not be stored, for every worker of the node (hit-for-miss).
        self.uncacheable = HitForMiss(os.path.join(self.store.tmp_dir, "hit-for-miss"))
        self.tasks: set[asyncio.Task] = set()
        self.follower = Follower(loop, self.store, self.locks, self.follow_timeout, self.read_timeout, self._spawn)

    # -- node-wide bookkeeping ---------------------------------------------------------------------

    def _stored(self, name: str, size: int, key: str, tags: list[str]) -> None:
        self.reports.add(reports.stored(name, size, key, tags))

    def _store_failed(self, reason: str, error: str) -> None:
        """One store the disk refused: counted, logged once per reason and interval, and the manager asked
        to make room (evict) at most once per ROOM_REQUEST_INTERVAL."""
        self.stats[STORE_ERRORS[reason]] += 1
        now = self.loop.time()
        line = self.faults.failed(reason, error, now)
        if line is not None:
            print(f"edge: worker {os.getpid()}: {line}", file=sys.stderr, flush=True)
        if now - self.room_asked >= ROOM_REQUEST_INTERVAL:
            self.room_asked = now
            self.reports.add(reports.MAKE_ROOM)

    def _unlock(self, flight: Flight) -> None:
        """Give the key's node-wide lock back (before the fetch ends, when other workers need not wait)."""
        if flight.locked >= 0:
            self.locks.unlock(flight.locked)
            flight.locked = -1

    def _up(self, index: int) -> bool:
        """Not marked down by the active check (the node's shared table); the breaker is not asked."""
        return self.health is None or self.health.healthy(index)

    def _eligible(self, index: int) -> bool:
        """Up, and this worker's breaker would let a request through (a peek: no half-open trial is taken)."""
        return self._up(index) and self.breakers[index].admits(self.loop.time())

    def _healthy(self, index: int) -> bool:
        """Up, and this worker's breaker lets a request through (it may take the half-open trial)."""
        return self._up(index) and self.breakers[index].allow(self.loop.time())

    def _status_failed(self, status: int) -> bool:
        """Whether an origin's answer with `status` counts against it (and is retried on the next origin)."""
        return counts_against_origin(status, self.failure_statuses)

    def _origin_result(self, index: int, ok: bool) -> None:
        if self.origin_counts is not None:
            self.origin_counts[2 * index + (0 if ok else 1)] += 1
        breaker = self.breakers[index]
        breaker.record(ok, self.loop.time())
        bit = 1 << index
        mask = self.stats[CIRCUITS_OPEN]
        self.stats[CIRCUITS_OPEN] = mask & ~bit if breaker.state == CLOSED else mask | bit

    def purged(self, purge: Purge) -> None:
        """A purge was acknowledged. Remembered for PURGE_MEMORY seconds (and as long as a fetch that began
        before it runs): fetches under way store nothing it names (they still answer their requests), and
        an object it names stored before it is not loaded from disk even if its file is still there (the
        manager removes late-reported objects only after every worker acknowledged)."""
        now = self.loop.time()
        oldest = min([now - PURGE_MEMORY, *(flight.started for flight in self.running)])
        self.recent_purges = [r for r in self.recent_purges if r[0] >= oldest]
        self.recent_purges.append((now, time.time(), purge))

    def _purged_since(self, started: float, key: str, tags: list[str]) -> bool:
        """Has a purge of `key` been acknowledged since loop time `started`?"""
        return any(t >= started and p.matches_key(key, tags) for t, _, p in self.recent_purges)

    def _purged_after(self, meta: Meta) -> bool:
        """Was a purge of this stored object acknowledged after it was stored?"""
        return any(wall >= meta.stored_at and p.matches_key(meta.key, meta.tags) for _, wall, p in self.recent_purges)

    # -- serving -----------------------------------------------------------------------------------

    async def serve(self, req: Request, fetch: Fetch,
                    interim: Callable[[list[tuple[bytes, bytes]]], None] | None = None) -> Plan:
        """The plan for a request core sent here; its entry (if any) holds one reference the adapter releases.
        `interim` hears the fields of an origin's 103 Early Hints while the request waits for its answer."""
        try:
            return await self._serve(req, fetch, interim)
        except Exception:  # noqa: BLE001 - one broken object or fetch is a 500 for its request, not a dead worker
            return self.site.error(500)

    async def _serve(self, req: Request, fetch: Fetch, interim: Callable | None) -> Plan:
        fetch.forward = getattr(req, "forward", None) or ()
        client = getattr(req, "client", None)  # set by the adapters only when a policy is ip-hash
        if client is not None:
            fetch.client = client
        if fetch.forward and authorizes(fetch.forward):
            # RFC 9111 §3.5, as Varnish by default: an authorised request never takes a stored answer and
            # joins nobody's fetch; what it gets is stored only if the answer says it may be shared.
            self.stats[CACHE_MISSES] += 1
            return await self._private(req, fetch, interim)
        entry = fetch.entry
        if entry is not None and entry.dead:
            # Retired (refreshed by a flight, purged, evicted) since core handed it over: its fd may be closed.
            entry = None
        if entry is None or self.loop.time() - entry.checked >= self.site.store_valid:
            entry = await self._from_disk(fetch)
            if entry is not None and entry.vary:
                fetch.key, fetch.name, fetch.coding = select(entry.vary, fetch.key, fetch.name, _coding(req),
                                                             fetch.forward)
                entry = self.cache.peek(fetch.name)
                if entry is None or self.loop.time() - entry.checked >= self.site.store_valid:
                    entry = await self._from_disk(fetch)
        now = self.loop.time()
        if entry is not None and not entry.vary:
            if now < entry.fresh_until:
                self.site.store_hits += 1
                return _held(self.site.stored(req, entry, now))
            if now < entry.revalidate_until:
                self.stats[CACHE_STALE] += 1
                self._flight(fetch, entry, background=True)  # this request gets the stale copy meanwhile
                return _held(self.site.stored(req, entry, now, HIT_STALE_REVALIDATE.encode()))
        else:
            entry = None
        self.stats[CACHE_MISSES] += 1
        if entry is None and self.uncacheable.marked(fetch.digest, self.loop.time()):
            return await self._private(req, fetch, interim)  # its last answer could not be shared: no use waiting
        flight = self._flight(fetch, entry)
        outcome = flight.outcome
        if outcome is None:
            if interim is not None:
                flight.listeners.append(interim)
            outcome = await flight.wait()
        elif outcome.entry is not None:
            outcome.entry.acquire()
        first = flight.claim()
        status = outcome.cache_status
        if outcome.shared and not first and status is not None and status.fwd is not None and not status.hit \
                and not status.collapsed:
            outcome = Outcome(outcome.entry, status.joined())  # served by another request's forward
        elif status is None and outcome.entry is not None:
            # Another worker had refreshed it: read from the disk, a hit after all.
            self.stats[CACHE_MISSES] -= 1
            self.site.store_hits += 1
        if not outcome.shared and (outcome.entry is None or not first):
            if outcome.entry is not None:
                outcome.entry.release()
            # A private answer was for the request that caused it: this one is asked of the origin itself.
            return await self._private(req, fetch, interim)
        return self._planned(req, outcome)

    async def _private(self, req: Request, fetch: Fetch, interim: Callable | None = None) -> Plan:
        """Ask the origin for this request alone (not under the key's lock, joined by nobody)."""
        own = Flight(self.loop)
        if interim is not None:
            own.listeners.append(interim)
        self._spawn(self._run(own, fetch, None, private=True))
        return self._planned(req, await own.wait())

    def _planned(self, req: Request, outcome: Outcome) -> Plan:
        if outcome.plan is not None:
            return outcome.plan
        status = outcome.cache_status
        plan = self.site.stored(req, outcome.entry, self.loop.time(), status.encode() if status is not None else None)
        if plan.entry is not outcome.entry:  # an error plan (412...) does not use the entry
            outcome.entry.release()
        return plan

    def _spawn(self, coro) -> asyncio.Task:  # noqa: ANN001
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _flight(self, fetch: Fetch, stale: StoredEntry | None, background: bool = False) -> Flight:
        flight = self.flights.get(fetch.name)
        if flight is None:
            flight = self.flights[fetch.name] = Flight(self.loop)
            flight.claimed = background  # a refresh nobody waits for: no request may take a private answer
            if stale is not None:
                stale.acquire()  # kept open through the revalidation even if the file cache drops it
            self._spawn(self._run(flight, fetch, stale))
        return flight

    # -- the disk cache ----------------------------------------------------------------------------

    async def _from_disk(self, fetch: Fetch) -> StoredEntry | None:
        """The stored object for fetch.key, checked against the disk (it may be new, refreshed, purged)."""
        old = self.cache.peek(fetch.name)
        if old is None and not os.access(self.store.paths(fetch.digest)[0], os.F_OK):
            # A plain miss: one access() here costs less than a trip to the I/O pool (and than a stat, which
            # fills a stat result and raises).
            return None
        found = await self.loop.run_in_executor(self.executor, self._open_stored, fetch.key, fetch.name, old)
        current = self.cache.peek(fetch.name)
        if current is not old or (old is not None and old.dead):
            # The file cache changed under the name while the disk was asked: a flight of this worker stored a
            # newer copy, or a refresh, purge or eviction retired `old`, whose fd may be closed by now. Served
            # (or put back), it gave a head and no body. What the cache holds now is the newest there is.
            if found is not None and found is not old:
                found.retire()
            return current if current is not None else await self._from_disk(fetch)
        if found is not None and found is not old and self.recent_purges and self._purged_after(found.meta):
            found.retire()  # purged, its file not yet removed: as good as gone
            found = None
        now = self.loop.time()
        if found is None:
            if old is not None:
                self.cache.purge(fetch.name)
            return None
        if found is old:
            old.checked = now
        self.cache.store(fetch.name, found, now)
        self.reports.add(reports.used(fetch.digest))
        return found

    def _open_stored(self, key: bytes, name: str, old: StoredEntry | None) -> StoredEntry | None:
        """(Executor) open the stored body and metadata of `key`; `old` itself when nothing changed."""
        body_path, meta_path = self.store.paths(digest(key))
        try:
            body_st = os.stat(body_path)
        except OSError:
            return None
        if old is not None and not old.dead and old.changed == body_st.st_ctime_ns and old.same_file(body_st):
            return old  # the same file, its metadata untouched (setting it changes the ctime)
        meta = read_meta(body_path, meta_path)
        if meta is None or meta.key != key.decode("latin-1"):
            return None
        try:
            fd = os.open(body_path, OPEN_FLAGS)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_size != meta.length:
                os.close(fd)
                return None
            entry = StoredEntry(name, body_path, fd, st, meta, self.loop.time(), time.time(), st.st_ctime_ns)
            if 0 < st.st_size <= self.inline_max:
                body = os.pread(fd, st.st_size, 0)
                if len(body) == st.st_size:
                    entry.body = body
        except OSError:
            os.close(fd)
            return None
        return entry

    # -- fetching ----------------------------------------------------------------------------------

    async def _run(self, flight: Flight, fetch: Fetch, stale: StoredEntry | None, private: bool = False) -> None:
        """Fetch `fetch.key` once for the node: as the fetcher holding its lock, or following another worker."""
        name = fetch.digest
        slot = KeyLocks.slot(name)
        original = stale  # _flight took a reference on it
        self.running.add(flight)
        try:
            if private:  # not under the key's lock: nothing published for other workers
                await self._fetch(flight, fetch, None, name, publish=False)
                return
            waited = False
            while not self.solo and not self.locks.try_lock(slot):
                waited = True
                outcome = await self._follow(fetch, name, slot, stale is not None)
                if outcome is not None:
                    flight.resolve(outcome)
                    return
            if not self.solo:
                flight.locked = slot
            try:
                held = self.cache.peek(fetch.name)
                if (held is not None and held is not stale and not held.vary
                        and self.loop.time() < held.fresh_until):
                    # A flight of this worker stored it while this request looked at the disk.
                    flight.resolve(Outcome(held, COLLAPSED))
                    return
                if waited or (not self.solo and self._changed_on_disk(fetch, stale)):  # stored by another worker
                    entry = await self._from_disk(fetch)
                    if entry is not None and not entry.vary and self.loop.time() < entry.fresh_until:
                        # Joined another worker's fetch, or found what one stored earlier (a hit).
                        flight.resolve(Outcome(entry, COLLAPSED if waited else None))
                        return
                    if entry is not None and not entry.vary:
                        # The newer copy is revalidated now, and may be served (stale-if-error, a 304): it needs
                        # a reference of its own, as `original` has, or a refresh may close its fd meanwhile.
                        entry.acquire()
                        if original is not None:
                            original.release()
                        stale = original = entry
                await self._fetch(flight, fetch, stale, name)
            finally:
                self._unlock(flight)
        except Exception:  # noqa: BLE001 - the waiters get a 502 rather than hang
            flight.resolve(Outcome(plan=self._error(502, "error")))
        finally:
            self.running.discard(flight)
            if self.flights.get(fetch.name) is flight:
                del self.flights[fetch.name]
            if flight.hold is not None:
                flight.hold.release()
            if original is not None:
                original.release()

    def _changed_on_disk(self, fetch: Fetch, stale: StoredEntry | None) -> bool:
        """One stat: has an object for the key been stored since `stale` (or at all)?"""
        try:
            changed = os.stat(self.store.paths(fetch.digest)[0]).st_ctime_ns
        except OSError:
            return False
        return stale is None or changed != stale.changed

    def _error(self, status: int, detail: str, stale: bool = False) -> Plan:
        label = CacheStatus(fwd="stale" if stale else "miss", detail=detail)
        return text_plan(status, [(b"cache-status", label.encode())], self.site.server)

    async def _fetch(self, flight: Flight, fetch: Fetch, stale: StoredEntry | None, name: str,
                     publish: bool = True, conditional: bool = True) -> None:
        """Ask the origin; stream the body into a temp file that every waiter reads as it grows.

        The listed client fields (proxy.forward_headers) of the request that started the fetch go along.
        A `stale` object is revalidated (`conditional`) unless a 304 could not refresh it.
        """
        extra = [("Accept-Encoding", fetch.coding or "identity")]
        if stale is not None and conditional:
            if stale.etag:
                extra.append(("If-None-Match", stale.etag.decode("latin-1")))
            lm = next((v for k, v in stale.stored_headers if k == b"last-modified"), None)
            if lm is not None:
                extra.append(("If-Modified-Since", lm.decode("latin-1")))
        target = fetch.path + ("?" + fetch.query.decode("latin-1") if fetch.query else "")
        incoming = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in fetch.forward]
        request_time = time.time()
        self.stats[ORIGIN_REQUESTS] += 1
        try:
            fetched = await self.pool.fetch(fetch.key, "GET", target, incoming, extra=extra, healthy=self._healthy,
                                            hints=flight.hint,
                                            on_failure=lambda i: self._origin_result(i, False), up=self._up,
                                            failed_status=self._status_failed, eligible=self._eligible,
                                            client=getattr(fetch, "client", None))
        except OriginError as e:
            self.stats[ORIGIN_ERRORS] += 1
            self._failed(flight, stale, 504 if e.timeout else 502, "timeout" if e.timeout else "unreachable")
            return
        followed = name if publish and not self.solo else None
        try:
            again = await self._answer(flight, fetch, stale, fetched, request_time, followed, conditional)
        finally:
            fetched.close()  # the connection goes back to its pool, or is dropped, whatever happened
        if again:  # a 304 that cannot refresh the stored object: the whole response, then
            await self._fetch(flight, fetch, stale, name, publish, conditional=False)

    async def _answer(self, flight: Flight, fetch: Fetch, stale: StoredEntry | None, fetched: Fetched,
                      request_time: float, followed: str | None, conditional: bool = True) -> bool:
        """Judge the origin's answer (304, error, storable or not) and pass its body on; True when it was a
        304 that does not refresh `stale` (asked again without conditions)."""
        now, wall = self.loop.time(), time.time()
        status = fetched.status
        # One exchange, one outcome for the breaker. A status in health.failure_statuses (or no HTTP status
        # at all) counts now; any other answer, 5xx included, is the origin's answer and passes on as it
        # is. Its success is counted once the exchange is over: for a body, only when it arrived whole
        # (a torn body is a failure; a success counted at the head first would reset the failures in a
        # row, and a dying origin that cuts every body would never open its circuit).
        failed = self._status_failed(status)
        if failed:
            self._origin_result(fetched.index, False)
        fields = fetched.headers
        if not any(k == b"date" for k, _ in fields):  # RFC 9110 §6.6.1: the time it arrived, then
            fields = [*fields, (b"date", format_http_date(wall).encode("ascii"))]
        text = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in fields]
        headers = [pair for pair in text if pair[0] not in DROPPED_FIELDS]
        raw = _header_dict(text)
        if stale is not None and status == 304 and conditional:
            self._origin_result(fetched.index, True)  # no body: the exchange is over
            return not await self._refreshed(flight, fetch, stale, headers, raw, request_time, wall)
        if status >= 500 and stale is not None and now < stale.error_until:
            if not failed:  # the origin answered (its body is not read): only the stale copy is served
                self._origin_result(fetched.index, True)
            self.stats[ORIGIN_ERRORS] += 1
            self._failed(flight, stale, 502, "origin-error", origin_status=status)
            return False
        if status not in REASONS or status < 200 or status == 304:
            if not failed:  # an HTTP status edge does not pass on; not a broken origin
                self._origin_result(fetched.index, True)
            self._failed(flight, stale, 502, "bad-status")
            return False
        authorized = authorizes(fetch.forward)
        fresh = assess(status, raw, request_time, wall, self.default_ttl, authorized=authorized)
        keyed = self._keyed(raw)  # None: Vary: *, or a field edge does not forward (edge/variants.py)
        # Stale on arrival, with no validator to revalidate it by and no stale-* window: storing it would
        # only write a file per request (as nginx, a zero lifetime is not kept).
        reusable = (fresh.lifetime > fresh.initial_age and not fresh.no_cache) or "etag" in raw \
            or "last-modified" in raw or fresh.stale_while_revalidate > 0 or fresh.stale_if_error > 0
        storable = fresh.storable and reusable and "set-cookie" not in raw and keyed is not None
        if storable:
            self.uncacheable.clear(fetch.digest)
        elif status < 500 and not authorized:  # an error is not the key's nature; coalescing spares the origin
            self.uncacheable.mark(fetch.digest, now)
        length_field = raw.get("content-length")
        length = int(length_field) if length_field is not None and length_field.isdigit() else None
        if length is None and status == 204:
            length = 0  # no body, whatever the framing
        # Stored under the key plus the suffix its Vary fields select for this request, with a marker under
        # the key naming the fields (written when they are new to the key); without Vary, under the key
        # itself, which also replaces a marker (the manager then drops the variants: edge/variants.py).
        base_key = fetch.key.partition(b"\0")[0]
        base_name = fetch.name if base_key == fetch.key else store_name(base_key)
        if keyed:
            tail = suffix(keyed, fetch.coding or "identity", fetch.forward)
            key, name = base_key + b"\0" + tail.encode("latin-1"), base_name + "\0" + tail
        else:
            key, name = base_key, base_name
        marker = (base_key, ",".join(keyed)) if keyed and key != fetch.key else None
        meta = Meta(key=key.decode("latin-1"), status=status, headers=headers, length=length or 0,
                    stored_at=wall, request_time=request_time, lifetime=fresh.lifetime,
                    initial_age=fresh.initial_age, stale_while_revalidate=fresh.stale_while_revalidate,
                    stale_if_error=fresh.stale_if_error, no_cache=fresh.no_cache,
                    must_revalidate=fresh.must_revalidate, tags=raw.get("surrogate-key", "").split())
        writer = self.store.writer(key, fetch.digest if key == fetch.key else None, followed, length)
        meta_data: bytes | None = None
        entry = None
        if writer.failed is not None:
            self._unlock(flight)  # nothing to follow on disk: other workers' requests fetch for themselves
        try:
            # Readers use pread/sendfile at explicit offsets: the writer's own open file serves them too,
            # and the entry closes it after the last of them.
            entry = StoredEntry(name, writer.tmp, writer.fd, NOT_ON_DISK, meta, now, wall,
                                stored_headers=[pair for pair in fields if pair[0] not in DROPPED_BYTES])
            writer.detach()
            entry.acquire()
            flight.hold = entry
            if not storable:
                cache_status = MISS if stale is None else STALE_NOT_STORED
            elif writer.failed is not None:  # known before the answer goes out: it says so
                cache_status = MISS_STORE_FAILED if stale is None else STALE_STORE_FAILED
            else:
                cache_status = MISS_STORED if stale is None else STALE_REFETCHED
            if followed is not None:
                # Other workers follow this fetch by its head: the metadata, whether the answer may be
                # shared and whether its length is known.
                if length is not None:
                    meta_data = meta.dumps()  # final already: the length is known, so commit uses it too
                writer.publish_head(storable, length is not None, meta_data or meta.dumps())
            # Every waiter is answered now and reads the body from the file as it grows; one whose
            # length is known only at its end goes out chunked (STREAMED) until it is stored.
            entry.growth = Growth(STREAMED if length is None else length)
            if length is None:
                entry.size = STREAMED
            flight.resolve(Outcome(entry, cache_status, shared=storable))
            small: list[bytes] | None = [] if length is not None and length <= self.inline_max else None
            try:
                while chunk := await fetched.read():
                    writer.write(chunk)
                    if small is not None:
                        small.append(chunk)
                    if entry.growth is not None:
                        entry.growth.grew(writer.written)
            except OriginError:
                self.stats[ORIGIN_ERRORS] += 1
                if not failed:  # a failed status was counted already
                    self._origin_result(fetched.index, False)
                raise
            if not failed:
                self._origin_result(fetched.index, True)
            if length is None:
                entry.size = meta.length = writer.written
                entry.growth.finish(writer.written)
                if writer.headed:  # other workers' followers learn where the body ends (stored or not)
                    meta_data = meta.dumps()
                    writer.publish_head(storable, True, meta_data)
            entry.growth = None
            entry.plans.clear()
            # Publishing is a few metadata syscalls: done here, it costs less than a trip to the I/O pool
            # (measured on the miss path); only a 304's metadata rewrite goes off the loop.
            if storable and self.recent_purges and self._purged_since(flight.started, meta.key, meta.tags):
                storable = False  # purged while it was being fetched: served to its requests, not kept
            published = self._commit(writer, meta, marker, meta_data, entry.fd) if storable else None
        except BaseException as e:
            # A cut-off origin, a bug: the readers are cut off and nothing partial is kept. (A disk that
            # refuses the body is not one of these: the writer goes on in memory.)
            if entry is not None:
                if entry.growth is not None:
                    entry.growth.fail()
                entry.retire()
            writer.abort()
            if isinstance(e, OriginError):
                self._failed(flight, stale, 502, "truncated")
                return False
            raise
        finally:
            if storable and writer.failed is not None:
                self._store_failed(writer.failed, writer.error)
            if writer.spill_fd >= 0:
                self.loop.call_later(SPILL_GRACE, os.close, writer.spill_fd)
        if published is None:
            writer.abort()
            entry.retire()  # served to its own requests from the open fd, then closed
            return False
        entry.published(*published)
        if small is not None and 0 < entry.size <= self.inline_max:  # like a small local file: one write with its head
            entry.body = b"".join(small)
        if marker is not None:
            self._forget_variants(base_name, replaced=b"\0" in fetch.key)
        now = self.loop.time()
        entry.checked = now
        self.cache.store(entry.path, entry, now)
        return False

    def _forget_variants(self, base_name: str, replaced: bool) -> None:
        """A new marker was stored: this worker drops its copy of the old one and, when the key's Vary
        fields changed (`replaced`), its copies of the variants they selected (the manager removes their
        files), so its next request reads the new marker. Other workers see it at their next disk check."""
        self.cache.purge(base_name)
        if replaced:
            prefix = base_name + "\0"
            for old in [n for n in self.cache.names() if n.startswith(prefix)]:
                self.cache.purge(old)

    def _failed(self, flight: Flight, stale: StoredEntry | None, status: int, detail: str,
                origin_status: int = 0) -> None:
        """The origin gave nothing usable (`origin_status`: the 5xx it answered): stale-if-error when
        allowed, else a short 502/504 (504 for a stale object that must be revalidated, RFC 9111 §5.2.2.2)."""
        if flight.outcome is not None:
            return
        if stale is not None and self.loop.time() < stale.error_until:
            self.stats[CACHE_STALE] += 1
            flight.resolve(Outcome(stale, replace(STALE_ERROR, fwd_status=origin_status)))
            return
        if stale is not None and stale.meta.must_revalidate and detail == "unreachable":
            status = 504
        flight.resolve(Outcome(plan=self._error(status, detail, stale is not None)))

    async def _refreshed(self, flight: Flight, fetch: Fetch, stale: StoredEntry, headers: list[tuple[str, str]],
                         raw: dict[str, str], request_time: float, wall: float) -> bool:
        """A 304 for a stale object: merge its fields into the stored ones (RFC 9111 §4.3.4), store, serve.

        False, changing nothing, when the 304 is not about the stored response (another validator) or
        makes it one that may not be stored (no-store, private, a Vary not kept): the caller asks again."""
        etag = raw.get("etag")
        if etag is not None:
            if not weak_match([etag.strip().encode("latin-1")], stale.etag):
                return False
        elif "last-modified" in raw and stale.last_modified is not None and \
                parse_http_date(raw["last-modified"]) != stale.last_modified:
            return False
        headers = [(k, v) for k, v in headers if k != "set-cookie"]  # never stored for everyone
        fresh_names = {k for k, _ in headers}
        merged = [(k, v) for k, v in stale.meta.headers if k not in fresh_names] + headers
        judged = _header_dict(merged)
        judged.update({k: raw[k] for k in ("date", "age") if k in raw})  # the 304's own Date and Age count
        fresh = assess(stale.status, judged, request_time, wall, self.default_ttl, authorized=authorizes(fetch.forward))
        if not fresh.storable or self._keyed(judged) != self._keyed(_header_dict(stale.meta.headers)):
            return False
        meta = replace(stale.meta, headers=merged, stored_at=wall, request_time=request_time,
                       lifetime=fresh.lifetime, initial_age=fresh.initial_age,
                       stale_while_revalidate=fresh.stale_while_revalidate, stale_if_error=fresh.stale_if_error,
                       no_cache=fresh.no_cache, must_revalidate=fresh.must_revalidate)
        try:
            changed = await _rewrite_meta(*self.store.paths(fetch.digest), meta)  # off the loop
        except FileNotFoundError:
            changed = None  # purged or evicted while the origin answered: served this once, not kept
        except OSError as e:
            changed = None  # the disk refuses the new metadata: served refreshed this once, reloaded next time
            self._store_failed(reason_of(e), e.strerror or str(e))
        now = self.loop.time()
        # Refreshed in place: transfers under way hold their own plans, which refresh() drops from the entry.
        stale.stored_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in merged]
        stale.etag = next((v for k, v in stale.stored_headers if k == b"etag"), b"")
        stale.dated = any(k == b"date" for k, _ in stale.stored_headers)
        lm = next((v for k, v in stale.stored_headers if k == b"last-modified"), None)
        stale.last_modified = parse_http_date(lm) if lm is not None else None
        stale.refresh(meta, now, time.time())
        stale.checked = now
        if changed is None:
            self.cache.purge(stale.path)
        else:
            stale.changed = changed
            if not stale.dead:  # evicted from this worker's cache meanwhile: served once, loaded afresh next time
                self.cache.store(stale.path, stale, now)
        flight.resolve(Outcome(stale, REVALIDATED))
        return True

    def _keyed(self, fields: dict[str, str]) -> tuple[str, ...] | None:
        """The Vary fields of an answer that select its variants; None when it may not be stored for its Vary
        (`*`, or a field edge does not forward)."""
        names = vary_names(fields.get("vary"))
        return None if names is None else keyed_names(names, self.pool.forward)

    def _commit(self, writer: Writer, meta: Meta, marker: tuple[bytes, str] | None,
                meta_data: bytes | None, fd: int) -> tuple[str, os.stat_result] | None:
        """Publish a complete body (open as `fd`) and its metadata: (body path, its fstat), or None.

        With `marker` (base key, Vary fields), also record that the key varies by those fields: an empty
        object under the base key whose metadata names them, so later requests look up their own variant.
        """
        if not writer.commit(meta, meta_data):
            return None
        body, _ = self.store.paths(writer.name)
        if marker is not None:
            base, names = marker
            Writer(self.store, base).commit(replace(meta, key=base.decode("latin-1"), status=200, headers=[],
                                                    length=0, vary=names, tags=list(meta.tags)))
        try:
            st = os.fstat(fd)  # the renamed file itself (the rename set its ctime): no path lookup
        except OSError:
            return None
        if st.st_nlink == 0:
            return None  # purged or evicted at once: serve it from the open fd, do not keep it
        return body, st

    async def _follow(self, fetch: Fetch, name: str, slot: int, had_stale: bool) -> Outcome | None:
        """Another worker holds the key's lock: its fetch as this flight's outcome (follow.Follower), or None
        once the lock is free. `had_stale`: this request found a stale copy, so its forward was a
        refresh (RFC 9211 §2.2 fwd=stale), whichever worker made it."""
        found = await self.follower.follow(fetch.key, fetch.name, name, slot)
        if found is None:
            return None
        if found is PASS:
            return Outcome(shared=False)  # not for sharing: each request asks the origin itself
        if found is TIMED_OUT:
            return Outcome(plan=self._error(504, "timeout"))
        return Outcome(found, STALE_COLLAPSED if had_stale else COLLAPSED)

    async def close(self) -> None:
        """Stop fetching: cancel flights, close the origin connections and the lock file."""
        for task in list(self.tasks):
            task.cancel()
        await self.pool.close()
        self.locks.close()
        self.uncacheable.close()
        self.reports.flush()


def _coding(req: Request) -> str:
    return normalise_coding(req.accept_encoding)


def _held(plan: Plan) -> Plan:
    """Take the reference on the plan's entry that the adapter releases after responding."""
    if plan.entry is not None:
        plan.entry.acquire()
    return plan


__all__ = ["Puller", "KeyLocks", "store_name"]
