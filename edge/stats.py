"""Shared-memory stats: one fixed-size slot of int64 counters per worker, written lock-free by its owner."""

from __future__ import annotations

import mmap
import time

from .storefaults import REASONS

# Field indexes inside a slot. Identity fields first, then counters, then gauges.
PID, GENERATION, CPU, NODE, STARTED_MS, STATE = range(6)
R1XX, R2XX, R3XX, R4XX, R5XX = range(6, 11)
BYTES_OUT = 11
CONNECTIONS_TOTAL = 12
ERRORS = 13
FC_HITS, FC_MISSES, FC_EVICTIONS = 14, 15, 16
CONNECTIONS_ACTIVE = 17
FC_ENTRIES = 18
# Origin pull: cache outcomes, origin requests, and this worker's circuit breakers (bit i: origin i).
CACHE_HITS, CACHE_MISSES, CACHE_STALE, ORIGIN_REQUESTS, ORIGIN_ERRORS = range(19, 24)
CIRCUITS_OPEN = 24
# HTTP/2 responses by class (R1XX..R5XX count HTTP/1.x; the "responses_*" totals add both).
H2_1XX, H2_2XX, H2_3XX, H2_4XX, H2_5XX = range(25, 30)
# Response time of requests that waited for a file open or the disk cache/origin, by upper bound;
# the rest were answered in the loop turn that parsed them (counted as the fastest bucket when read).
DURATION_BOUNDS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
DURATION_BUCKETS = tuple(range(30, 30 + len(DURATION_BOUNDS) + 1))  # the last one: above 5 s
DURATION_SUM_US = 38  # microseconds, summed over the waiting requests
# Disk-cache stores that failed, by reason (edge/storefaults.py REASONS, in that order).
STORE_DISK_FULL, STORE_QUOTA, STORE_READ_ONLY, STORE_IO_ERROR, STORE_OTHER = range(39, 44)
STORE_ERRORS = dict(zip(REASONS, range(STORE_DISK_FULL, STORE_OTHER + 1)))
# Tunnels (WebSocket, edge/tunnel.py): opened, bytes relayed client -> origin and origin -> client; open now (a gauge).
TUNNELS_TOTAL, TUNNEL_BYTES_UP, TUNNEL_BYTES_DOWN, TUNNELS_OPEN = range(44, 48)

FIELDS = 48
PUBLISHED = range(R1XX, FIELDS)  # what a worker copies from its own counters into its slot
# Monotonic: folded into the retired slot when a worker ends.
COUNTERS = (*range(R1XX, FC_EVICTIONS + 1), *range(CACHE_HITS, ORIGIN_ERRORS + 1), *range(H2_1XX, TUNNELS_OPEN))
SLOT_BYTES = 512  # 8 cache lines: a worker's writes never share a line with another worker's
RETIRED = 0  # slot 0 keeps the counters of workers that have ended, so sums never go backwards

FREE, STARTING, SERVING, DRAINING = range(4)
STATE_NAMES = ("free", "starting", "serving", "draining")

NAMES = {
    R1XX: "responses_1xx", R2XX: "responses_2xx", R3XX: "responses_3xx", R4XX: "responses_4xx",
    R5XX: "responses_5xx", BYTES_OUT: "bytes_out", CONNECTIONS_TOTAL: "connections_total", ERRORS: "errors",
    FC_HITS: "file_cache_hits", FC_MISSES: "file_cache_misses", FC_EVICTIONS: "file_cache_evictions",
    CONNECTIONS_ACTIVE: "connections_active", FC_ENTRIES: "file_cache_entries",
    CACHE_HITS: "cache_hits", CACHE_MISSES: "cache_misses", CACHE_STALE: "cache_stale",
    ORIGIN_REQUESTS: "origin_requests", ORIGIN_ERRORS: "origin_errors", CIRCUITS_OPEN: "circuits_open",
    H2_1XX: "h2_responses_1xx", H2_2XX: "h2_responses_2xx", H2_3XX: "h2_responses_3xx", H2_4XX: "h2_responses_4xx",
    H2_5XX: "h2_responses_5xx", DURATION_SUM_US: "duration_sum_us",
    **{field: f"duration_bucket_{i}" for i, field in enumerate(DURATION_BUCKETS)},
    **{field: "store_errors_" + reason.replace("-", "_") for reason, field in STORE_ERRORS.items()},
    TUNNELS_TOTAL: "tunnels_total", TUNNEL_BYTES_UP: "tunnel_bytes_up", TUNNEL_BYTES_DOWN: "tunnel_bytes_down",
    TUNNELS_OPEN: "tunnels_open",
}

# Status code -> the slot index its class is counted in (built once; the hot path only indexes).
STATUS_FIELD = {code: R1XX + code // 100 - 1 for code in range(100, 600)}
H2_STATUS_FIELD = {code: H2_1XX + code // 100 - 1 for code in range(100, 600)}


def _with_sums(row: dict) -> dict:
    """Add the all-protocol response counts and the request count to a row of raw fields."""
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        row[f"http1_responses_{cls}"] = row[f"responses_{cls}"]
        row[f"responses_{cls}"] += row[f"h2_responses_{cls}"]
    row["requests"] = sum(row[f"responses_{cls}"] for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"))
    return row


class StatsBlock:
    """An anonymous shared mapping made before fork: slot 0 is the retired totals, 1..capacity-1 are workers."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("capacity must leave room for the retired slot and one worker")
        self.capacity = capacity
        self._map = mmap.mmap(-1, capacity * SLOT_BYTES, flags=mmap.MAP_SHARED)
        self._all = memoryview(self._map).cast("q")
        self._stride = SLOT_BYTES // 8

    def slot(self, index: int) -> memoryview:
        """The int64 fields of one slot, as a writable view into the shared mapping."""
        if not 0 <= index < self.capacity:
            raise IndexError(index)
        start = index * self._stride
        return self._all[start:start + FIELDS]

    def claim(self, generation: int, cpu: int, node: int) -> int:
        """Take a free worker slot (supervisor side, before fork) and stamp its identity; returns its index."""
        for index in range(1, self.capacity):
            s = self.slot(index)
            if s[STATE] == FREE:
                for i in range(FIELDS):
                    s[i] = 0
                s[GENERATION], s[CPU], s[NODE] = generation, cpu, node
                s[STARTED_MS] = int(time.time() * 1000)
                s[STATE] = STARTING
                return index
        raise RuntimeError(f"all {self.capacity - 1} worker stats slots are in use")

    def release(self, index: int) -> None:
        """Fold an ended worker's counters into the retired slot and free its slot (supervisor side)."""
        if index == RETIRED:
            raise ValueError("the retired slot is not a worker's")
        s = self.slot(index)
        retired = self.slot(RETIRED)
        for i in COUNTERS:
            retired[i] += s[i]
        for i in range(FIELDS):
            s[i] = 0

    def workers(self) -> list[dict[str, int | float | str]]:
        """A snapshot of every slot in use: identity, state and every counter and gauge."""
        out = []
        for index in range(1, self.capacity):
            s = self.slot(index)
            if s[STATE] == FREE:
                continue
            row: dict[str, int | float | str] = {"slot": index, "pid": s[PID], "generation": s[GENERATION],
                                         "cpu": s[CPU], "numa_node": s[NODE], "started": s[STARTED_MS] / 1000,
                                         "state": STATE_NAMES[s[STATE]]}
            row.update({name: s[i] for i, name in NAMES.items()})
            out.append(_with_sums(row))
        return out

    def totals(self) -> dict[str, int]:
        """Every counter summed over live workers and the retired slot; gauges over live workers."""
        out = {name: 0 for name in NAMES.values()}
        for index in range(self.capacity):
            s = self.slot(index)
            if index != RETIRED and s[STATE] == FREE:
                continue
            for i, name in NAMES.items():
                out[name] += s[i]
        return _with_sums(out)

    def close(self) -> None:
        """Unmap the block (slot views handed out must be gone first)."""
        self._all.release()
        self._map.close()
