"""Shared-memory stats: one fixed-size slot of int64 counters per worker, written lock-free by its owner."""

from __future__ import annotations

import mmap
import time

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

FIELDS = 25
PUBLISHED = range(R1XX, FIELDS)  # what a worker copies from its own counters into its slot
# Monotonic: folded into the retired slot when a worker ends.
COUNTERS = (*range(R1XX, FC_EVICTIONS + 1), *range(CACHE_HITS, ORIGIN_ERRORS + 1))
SLOT_BYTES = 256  # 4 cache lines: a worker's writes never share a line with another worker's
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
}

# Status code -> the slot index its class is counted in (built once; the hot path only indexes).
STATUS_FIELD = {code: R1XX + code // 100 - 1 for code in range(100, 600)}


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
            row["requests"] = sum(s[i] for i in range(R1XX, R5XX + 1))
            out.append(row)
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
        out["requests"] = sum(out[NAMES[i]] for i in range(R1XX, R5XX + 1))
        return out

    def close(self) -> None:
        """Unmap the block (slot views handed out must be gone first)."""
        self._all.release()
        self._map.close()
