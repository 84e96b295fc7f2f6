"""Tests of the shared-memory stats block (edge.stats): slots, real cross-process sharing, retirement, totals."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from edge.stats import (
    BYTES_OUT,
    CONNECTIONS_ACTIVE,
    CONNECTIONS_TOTAL,
    COUNTERS,
    CPU,
    ERRORS,
    FC_ENTRIES,
    FC_EVICTIONS,
    FC_HITS,
    FC_MISSES,
    FIELDS,
    GENERATION,
    NAMES,
    NODE,
    PID,
    R1XX,
    R2XX,
    R3XX,
    R4XX,
    R5XX,
    H2_2XX,
    RETIRED,
    SERVING,
    STARTED_MS,
    STARTING,
    STATE,
    STATUS_FIELD,
    StatsBlock,
)

COUNTER_NAMES = [NAMES[i] for i in COUNTERS]
GAUGE_NAMES = ["connections_active", "file_cache_entries"]


@pytest.fixture
def block() -> StatsBlock:
    """A block with room for the retired slot and three workers."""
    # Left to GC rather than close(): a failing test's traceback still holds slot views, and close() refuses
    # while views exist (close() has its own test below).
    return StatsBlock(4)


def fill(block: StatsBlock, index: int, base: int) -> None:
    """Write a distinct value into every counter and gauge of slot `index` (base, base+1, ...)."""
    s = block.slot(index)
    for offset, i in enumerate(sorted(NAMES)):
        s[i] = base + offset


def in_child(body: Callable[[], None]) -> int:
    """Run `body` in a forked child that leaves with os._exit; returns the child's exit code (0 = body returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_capacity_must_leave_room_for_a_worker() -> None:
    """A block needs the retired slot plus at least one worker slot."""
    with pytest.raises(ValueError):
        StatsBlock(1)


def test_claim_stamps_identity_and_state(block: StatsBlock) -> None:
    """claim writes generation, CPU, node, a start time and STARTING; everything else starts at zero."""
    before = int(time.time() * 1000)
    index = block.claim(generation=7, cpu=3, node=1)
    after = int(time.time() * 1000)
    s = block.slot(index)
    assert index != RETIRED
    assert (s[GENERATION], s[CPU], s[NODE], s[STATE]) == (7, 3, 1, STARTING)
    assert before <= s[STARTED_MS] <= after
    assert s[PID] == 0
    assert all(s[i] == 0 for i in NAMES)


def test_claim_returns_distinct_slots_and_raises_when_full(block: StatsBlock) -> None:
    """Each claim takes a different worker slot; the fourth claim in a 4-slot block has none left."""
    slots = [block.claim(1, cpu, 0) for cpu in range(3)]
    assert sorted(slots) == [1, 2, 3]
    with pytest.raises(RuntimeError, match="all 3 worker stats slots are in use"):
        block.claim(1, 9, 0)


def test_claim_reuses_a_released_slot_with_zeroed_counters(block: StatsBlock) -> None:
    """A slot freed by release is claimed again, without the previous worker's counters or identity."""
    first = block.claim(1, 0, 0)
    fill(block, first, 100)
    block.slot(first)[PID] = 4242
    block.release(first)
    again = block.claim(2, 5, 1)
    assert again == first
    s = block.slot(again)
    assert (s[PID], s[GENERATION], s[CPU], s[NODE]) == (0, 2, 5, 1)
    assert all(s[i] == 0 for i in NAMES)


def test_slot_index_out_of_range(block: StatsBlock) -> None:
    """slot() refuses indexes outside the block."""
    with pytest.raises(IndexError):
        block.slot(4)
    with pytest.raises(IndexError):
        block.slot(-1)


def test_slots_do_not_overlap(block: StatsBlock) -> None:
    """Writing every field of one slot leaves its neighbours untouched."""
    a, b, c = (block.claim(1, cpu, 0) for cpu in range(3))
    s = block.slot(b)
    for i in range(FIELDS):
        s[i] = -1
    for other in (RETIRED, a, c):
        o = block.slot(other)
        assert all(o[i] == 0 for i in NAMES), other
    assert block.slot(a)[CPU] == 0 and block.slot(c)[CPU] == 2


def test_a_forked_child_writes_are_seen_by_the_parent(block: StatsBlock) -> None:
    """The mapping is MAP_SHARED: counters a forked worker writes into its slot appear in the parent."""
    index = block.claim(generation=1, cpu=0, node=0)

    def worker() -> None:
        s = block.slot(index)
        s[PID] = os.getpid()
        s[STATE] = SERVING
        s[R2XX] += 40
        s[R4XX] += 2
        s[BYTES_OUT] += 123_456_789_012  # beyond 32 bits: the fields are int64
        s[CONNECTIONS_TOTAL] += 5
        s[CONNECTIONS_ACTIVE] = 3

    pid_seen_before = block.slot(index)[PID]
    assert in_child(worker) == 0
    s = block.slot(index)
    assert pid_seen_before == 0
    assert s[PID] not in (0, os.getpid())
    assert s[STATE] == SERVING
    assert (s[R2XX], s[R4XX], s[BYTES_OUT], s[CONNECTIONS_TOTAL], s[CONNECTIONS_ACTIVE]) == (
        40, 2, 123_456_789_012, 5, 3)
    totals = block.totals()
    assert totals["requests"] == 42
    assert totals["bytes_out"] == 123_456_789_012


def test_two_children_write_their_own_slots(block: StatsBlock) -> None:
    """Two forked workers writing at once each land in their own slot; the parent sums both."""
    slots = [block.claim(1, cpu, 0) for cpu in (0, 1)]
    pids = []
    for n, index in enumerate(slots, start=1):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                s = block.slot(index)
                for _ in range(1000 * n):
                    s[R2XX] += 1
                    s[BYTES_OUT] += 10
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert [block.slot(i)[R2XX] for i in slots] == [1000, 2000]
    assert block.totals()["responses_2xx"] == 3000
    assert block.totals()["bytes_out"] == 30_000


def test_release_folds_counters_but_not_gauges(block: StatsBlock) -> None:
    """release adds the counters to the retired slot, drops the gauges and frees the slot."""
    index = block.claim(1, 0, 0)
    fill(block, index, 10)
    expected = {i: block.slot(index)[i] for i in COUNTERS}
    block.release(index)
    retired = block.slot(RETIRED)
    assert {i: retired[i] for i in COUNTERS} == expected
    assert retired[CONNECTIONS_ACTIVE] == 0
    assert retired[FC_ENTRIES] == 0
    assert block.workers() == []
    assert all(block.slot(index)[i] == 0 for i in range(FIELDS))


def test_totals_never_go_backwards_when_a_worker_dies(block: StatsBlock) -> None:
    """Counters summed by totals() stay put across a worker's release; its gauges leave with it."""
    dying, living = block.claim(1, 0, 0), block.claim(1, 1, 0)
    fill(block, dying, 1_000)
    fill(block, living, 5)
    before = block.totals()
    block.release(dying)
    after = block.totals()
    for name in COUNTER_NAMES + ["requests"]:
        assert after[name] == before[name], name
    live = block.slot(living)
    assert after["connections_active"] == live[CONNECTIONS_ACTIVE]
    assert after["file_cache_entries"] == live[FC_ENTRIES]
    assert before["connections_active"] > after["connections_active"]

    # A replacement worker starts from zero and adds on top of the retired totals.
    replacement = block.claim(2, 0, 0)
    block.slot(replacement)[R2XX] += 3
    assert block.totals()["responses_2xx"] == after["responses_2xx"] + 3

    # The second worker dies too: still nothing lost.
    block.release(living)
    block.release(replacement)
    final = block.totals()
    for name in COUNTER_NAMES:
        expected = after[name] + (3 if name == "responses_2xx" else 0)
        assert final[name] == expected, name
    assert final["connections_active"] == 0 and final["file_cache_entries"] == 0


def test_totals_of_several_live_workers(block: StatsBlock) -> None:
    """totals() sums every counter and gauge over live workers and the retired slot."""
    a, b = block.claim(1, 0, 0), block.claim(1, 1, 0)
    block.slot(a)[R1XX], block.slot(a)[R3XX], block.slot(a)[R5XX] = 1, 2, 3
    block.slot(b)[R5XX], block.slot(b)[ERRORS] = 4, 6
    block.slot(a)[FC_HITS], block.slot(b)[FC_MISSES], block.slot(b)[FC_EVICTIONS] = 7, 8, 9
    block.slot(a)[CONNECTIONS_ACTIVE], block.slot(b)[CONNECTIONS_ACTIVE] = 2, 5
    block.slot(RETIRED)[R2XX] = 100
    totals = block.totals()
    assert set(totals) == set(NAMES.values()) | {"requests"} | {f"http1_responses_{c}xx" for c in "12345"}
    assert totals["responses_1xx"] == 1
    assert totals["responses_2xx"] == 100
    assert totals["responses_3xx"] == 2
    assert totals["responses_5xx"] == 7
    assert totals["requests"] == 110
    block.slot(b)[H2_2XX] = 5  # HTTP/2 responses are counted apart and added in
    both = block.totals()
    assert (both["responses_2xx"], both["http1_responses_2xx"], both["h2_responses_2xx"]) == (105, 100, 5)
    assert both["requests"] == 115
    assert totals["errors"] == 6
    assert (totals["file_cache_hits"], totals["file_cache_misses"], totals["file_cache_evictions"]) == (7, 8, 9)
    assert totals["connections_active"] == 7


def test_free_slots_do_not_count_in_totals(block: StatsBlock) -> None:
    """Values left in a slot whose state is FREE are not summed (only claimed slots are workers)."""
    block.slot(2)[R2XX] = 999  # never claimed: state FREE
    assert block.totals()["responses_2xx"] == 0
    assert block.workers() == []


def test_workers_lists_only_slots_in_use(block: StatsBlock) -> None:
    """workers() reports each claimed slot with its identity, state and every counter and gauge by name."""
    a = block.claim(generation=3, cpu=2, node=1)
    b = block.claim(generation=3, cpu=4, node=0)
    block.claim(generation=3, cpu=5, node=0)
    block.release(b)
    s = block.slot(a)
    s[PID] = 1234
    s[STATE] = SERVING
    s[R2XX], s[R4XX], s[BYTES_OUT], s[FC_ENTRIES] = 10, 1, 2048, 17
    rows = block.workers()
    assert [row["slot"] for row in rows] == [a, 3]
    row = rows[0]
    assert set(row) == {"slot", "pid", "generation", "cpu", "numa_node", "started", "state", "requests",
                        *NAMES.values(), *(f"http1_responses_{c}xx" for c in "12345")}
    assert (row["pid"], row["generation"], row["cpu"], row["numa_node"]) == (1234, 3, 2, 1)
    assert row["state"] == "serving"
    assert rows[1]["state"] == "starting"
    assert (row["responses_2xx"], row["responses_4xx"], row["requests"]) == (10, 1, 11)
    assert row["bytes_out"] == 2048
    assert row["file_cache_entries"] == 17
    assert abs(row["started"] - time.time()) < 60


@pytest.mark.parametrize("code, field", [
    (100, R1XX), (101, R1XX), (199, R1XX), (200, R2XX), (206, R2XX), (299, R2XX), (300, R3XX), (304, R3XX),
    (399, R3XX), (400, R4XX), (404, R4XX), (499, R4XX), (500, R5XX), (503, R5XX), (599, R5XX),
])
def test_status_field_maps_codes_to_their_class(code: int, field: int) -> None:
    """STATUS_FIELD sends each status code to the counter of its class."""
    assert STATUS_FIELD[code] == field
    assert NAMES[STATUS_FIELD[code]] == f"responses_{code // 100}xx"


def test_status_field_covers_exactly_100_to_599() -> None:
    """Every code from 100 to 599 is mapped, and nothing outside that range."""
    assert set(STATUS_FIELD) == set(range(100, 600))
    assert 99 not in STATUS_FIELD and 600 not in STATUS_FIELD
    assert set(STATUS_FIELD.values()) == {R1XX, R2XX, R3XX, R4XX, R5XX}


def test_close_unmaps_once_views_are_gone() -> None:
    """close() succeeds once the slot views handed out are released; the block is then unusable."""
    stats = StatsBlock(2)
    view = stats.slot(1)
    view[R2XX] = 1
    del view
    stats.close()
    with pytest.raises(ValueError):
        stats.slot(1)
