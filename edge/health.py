"""Origin health: active checks with rise/fall thresholds, a passive circuit breaker, a shared health table."""

from __future__ import annotations

import asyncio
import mmap
import time
from collections.abc import Callable, Collection, Sequence

import aiohttp

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class ActiveHealth:
    """An origin's health from periodic checks: down after `fall` failures in a row, up after `rise` successes."""

    def __init__(self, rise: int = 2, fall: int = 3, healthy: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall
        self.healthy = healthy
        self.streak = 0  # consecutive results that disagree with the current state

    def record(self, ok: bool) -> bool:
        """Count one check; returns True when this check changed the state."""
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.healthy = ok
            self.streak = 0
            return True
        return False


class CircuitBreaker:
    """Passive checks on real traffic: `threshold` failures in a row open it; after `cooldown` seconds one
    trial request is let through (half-open); its success closes the circuit, its failure opens it again."""

    def __init__(self, threshold: int = 5, cooldown: float = 10.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trial = False  # a half-open trial request is in flight
        self.trial_at = 0.0

    def allow(self, now: float) -> bool:
        """Whether a request may go to this origin now."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self.state = HALF_OPEN
            self.trial = False
        if self.trial and now - self.trial_at < self.cooldown:
            return False  # one trial at a time; a trial never reported back (not tried after all) expires
        self.trial = True
        self.trial_at = now
        return True

    def admits(self, now: float) -> bool:
        """Whether allow() would let a request through now, without taking the half-open trial (a peek)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now - self.opened_at >= self.cooldown
        return not self.trial or now - self.trial_at >= self.cooldown

    def record(self, ok: bool, now: float) -> None:
        """The outcome of a request that allow() let through."""
        if ok:
            self.state = CLOSED
            self.failures = 0
            self.trial = False
            return
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state = OPEN
            self.opened_at = now
            self.trial = False


def counts_against_origin(status: int, failure_statuses: Collection[int] = ()) -> bool:
    """Whether an origin's answer with `status` is a failure of the origin itself (passive check)."""
    # A status outside 100-599 is not HTTP (RFC 9110 §15): the origin is broken, as with an unparseable
    # head, which nginx counts whatever proxy_next_upstream says (invalid_header). Any real status, 5xx
    # included, is the origin's answer about one resource: it counts only if the operator listed it in
    # health.failure_statuses, as nginx counts http_502 only when proxy_next_upstream names it. Counting
    # 5xx answers by default let a few failing pages of an origin open its circuit and turn the site into 502s.
    return not 100 <= status <= 599 or status in failure_statuses


def pick_origins(order: Sequence[int], allowed: Callable[[int], bool], up: Callable[[int], bool],
                 most: int) -> list[int]:
    """The first `most` origins of `order` to try: those `allowed` (active check and breaker), else the `up` ones."""
    # `allowed(i)` is asked only until enough are found: a breaker's allow() may hand out its half-open trial.
    tries: list[int] = []
    for i in order:
        if allowed(i):
            tries.append(i)
            if len(tries) == most:
                return tries
    if tries:
        return tries
    # The breaker alone never leaves no origin to try. `up(i)` is the active check's published state (the
    # shared HealthTable the manager writes); the breaker's state (each worker's own CircuitBreaker, from
    # its own traffic) is left out. So the origins the active check has not marked down still get the
    # request, in ring order: a 502 for every request of the site would be worse than asking an origin
    # that failed a few requests. nginx does the same for a single server (max_fails is ignored there).
    # With every origin marked down by the active check, the list is empty: a quick 502.
    return [i for i in order if up(i)][:most]


# One row of int64 per origin in the shared table.
HEALTHY, LAST_CHECK_MS, LATENCY_US, CHECKS_OK, CHECKS_FAILED = range(5)
ROW = 8  # int64 fields per row, room to grow


class HealthTable:
    """Active-check results in shared memory (mapped before fork): the supervisor writes, workers read."""

    def __init__(self, origins: int) -> None:
        self.origins = origins
        self._map = mmap.mmap(-1, max(1, origins) * ROW * 8, flags=mmap.MAP_SHARED)
        self._rows = memoryview(self._map).cast("q")
        for i in range(origins):
            self._rows[i * ROW + HEALTHY] = 1  # healthy until a check says otherwise

    def healthy(self, index: int) -> bool:
        """The last published active state of an origin."""
        return bool(self._rows[index * ROW + HEALTHY])

    def publish(self, index: int, healthy: bool, ok: bool, latency: float) -> None:
        """Record one check of origin `index` (supervisor side)."""
        base = index * ROW
        rows = self._rows
        rows[base + HEALTHY] = int(healthy)
        rows[base + LAST_CHECK_MS] = int(time.time() * 1000)
        rows[base + LATENCY_US] = int(latency * 1e6)
        rows[base + (CHECKS_OK if ok else CHECKS_FAILED)] += 1

    def row(self, index: int) -> dict[str, float | int | bool]:
        """One origin's published figures."""
        base = index * ROW
        r = self._rows
        return {"healthy": bool(r[base + HEALTHY]), "last_check": r[base + LAST_CHECK_MS] / 1000,
                "latency": r[base + LATENCY_US] / 1e6, "checks_ok": r[base + CHECKS_OK],
                "checks_failed": r[base + CHECKS_FAILED]}


async def check(session: aiohttp.ClientSession, url: str, timeout: float) -> tuple[bool, float]:
    """GET `url`: (a 2xx or 3xx within `timeout`, seconds taken)."""
    start = time.monotonic()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as r:
            await r.read()
            ok = 200 <= r.status < 400
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        ok = False
    return ok, time.monotonic() - start


class OriginCounters:
    """Exchanges with each origin by outcome and its keep-alive pool's figures, one row per worker stats slot,
    in shared memory (lock-free: each worker writes only its own row; row 0 keeps the counts of workers
    that have ended, never their gauges)."""

    def __init__(self, slots: int, origins: int) -> None:
        self.slots = slots
        self.origins = origins
        self.width = origins * (2 + POOL_FIELDS)
        self._map = mmap.mmap(-1, slots * self.width * 8, flags=mmap.MAP_SHARED)  # pages appear when touched
        self._all = memoryview(self._map).cast("q")

    def row(self, slot: int) -> memoryview:
        """A worker's row: [2 * origin] ok, [2 * origin + 1] failed, then its pool figures (pool_figures)."""
        return self._all[slot * self.width:(slot + 1) * self.width]

    def release(self, slot: int) -> None:
        """Fold an ended worker's counts into row 0 and clear its row; its gauges just drop (supervisor side)."""
        row, retired = self.row(slot), self.row(0)
        pools = 2 * self.origins
        for i in range(len(row)):
            if i < pools or (i - pools) % POOL_FIELDS == POOL_OPENED:
                retired[i] += row[i]
            row[i] = 0

    def totals(self) -> list[tuple[int, int]]:
        """(ok, failed) per origin, over every row."""
        data, width = self._all, self.width
        return [(sum(data[2 * origin::width]), sum(data[2 * origin + 1::width])) for origin in range(self.origins)]

    def pools(self) -> list[dict[str, int]]:
        """Each origin's pooled connections, summed over the workers: open, idle, in_use, opened_total."""
        data, width, base = self._all, self.width, 2 * self.origins
        out = []
        for origin in range(self.origins):
            at = base + origin * POOL_FIELDS
            out.append({name: sum(data[at + field::width]) for name, field in
                        (("open", POOL_OPEN), ("idle", POOL_IDLE), ("in_use", POOL_IN_USE),
                         ("opened_total", POOL_OPENED))})
        return out


# A worker's keep-alive pool figures per origin, after the exchange counts of its OriginCounters row.
POOL_OPEN, POOL_IDLE, POOL_IN_USE, POOL_OPENED = range(4)  # gauges (open or opening, idle, in use), a total
POOL_FIELDS = 4


def pool_figures(row: memoryview) -> memoryview:
    """The pool part of a worker's OriginCounters row: [POOL_FIELDS * origin + POOL_*]."""
    origins = len(row) // (2 + POOL_FIELDS)
    return row[2 * origins:]
