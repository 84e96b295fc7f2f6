"""Origin health (edge/health.py): rise/fall, the circuit breaker, the shared table, real checks."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from edge.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    ActiveHealth,
    CircuitBreaker,
    HealthTable,
    check,
    counts_against_origin,
    pick_origins,
)

HERE = Path(__file__).resolve().parent


def test_fall_then_rise():
    h = ActiveHealth(rise=2, fall=3)
    assert [h.record(False) for _ in range(3)] == [False, False, True] and not h.healthy
    assert h.record(True) is False and not h.healthy  # one success is not enough
    assert h.record(False) is False  # and a failure resets the streak
    assert [h.record(True) for _ in range(2)] == [False, True] and h.healthy


def test_flapping_does_not_flip_the_state():
    h = ActiveHealth(rise=2, fall=2)
    for ok in [False, True] * 10:
        assert h.record(ok) is False
    assert h.healthy


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError):
        ActiveHealth(rise=0)


def test_circuit_opens_after_threshold_then_half_opens_after_cooldown():
    cb = CircuitBreaker(threshold=3, cooldown=10)
    for t in range(3):
        assert cb.allow(t)
        cb.record(False, t)
    assert cb.state == OPEN and not cb.allow(5)
    assert cb.allow(13) and cb.state == HALF_OPEN  # one trial after the cool-down
    assert not cb.allow(13.1), "only one trial request while half-open"
    cb.record(False, 14)
    assert cb.state == OPEN and not cb.allow(20)
    assert cb.allow(24.5)
    cb.record(True, 25)
    assert cb.state == CLOSED and cb.allow(25) and cb.allow(25)


def test_a_trial_never_reported_back_expires_after_a_cooldown():
    # allow() may grant a trial to an origin the client then does not use (the first choice answered).
    cb = CircuitBreaker(threshold=1, cooldown=10)
    cb.record(False, 0)
    assert cb.allow(10) and cb.state == HALF_OPEN
    assert not cb.allow(19.9)
    assert cb.allow(20.1), "a lost trial must not keep the circuit half-open for ever"


def test_a_success_resets_the_failure_count():
    cb = CircuitBreaker(threshold=3, cooldown=1)
    for ok in (False, False, True, False, False):
        cb.record(ok, 0)
    assert cb.state == CLOSED


# (status, health.failure_statuses, counts against the origin)
STATUS_VERDICTS = [
    (200, (), False),
    (404, (), False),
    (500, (), False),  # the default: a 5xx is the origin's answer, passed on, never the breaker's business
    (502, (), False),
    (503, (), False),
    (504, (), False),
    (500, (502, 503, 504), False),  # only the listed statuses count
    (502, (502, 503, 504), True),
    (503, (503,), True),
    (500, (500,), True),
    (404, (500,), False),
    (99, (), True),  # not an HTTP status at all (RFC 9110 §15: 100-599): a broken origin
    (600, (), True),
    (999, (500,), True),
    (100, (), False),
    (599, (), False),
]


@pytest.mark.parametrize("status, listed, verdict", STATUS_VERDICTS,
                         ids=[f"{s}-{'-'.join(map(str, listed)) or 'default'}" for s, listed, _ in STATUS_VERDICTS])
def test_which_statuses_count_against_the_origin(status, listed, verdict):
    assert counts_against_origin(status, frozenset(listed)) is verdict


# (ring order, allowed by active check and breaker, up by the active check, most) -> origins to try
PICKS = [
    ("all healthy: the first two", [2, 0, 1], {0, 1, 2}, {0, 1, 2}, 2, [2, 0]),
    ("one try for other methods", [2, 0, 1], {0, 1, 2}, {0, 1, 2}, 1, [2]),
    ("the breaker skips its open origin", [2, 0, 1], {0, 1}, {0, 1, 2}, 2, [0, 1]),
    ("one allowed is enough: no last resort", [2, 0, 1], {1}, {0, 1, 2}, 2, [1]),
    ("single origin, circuit open: still asked", [0], set(), {0}, 2, [0]),
    ("every circuit open: the up ones, ring order", [1, 0], set(), {0, 1}, 2, [1, 0]),
    ("every circuit open: most still holds", [2, 0, 1], set(), {0, 1, 2}, 1, [2]),
    ("circuits open, one marked down: the other", [1, 0], set(), {0}, 2, [0]),
    ("single origin marked down by the active check", [0], set(), set(), 2, []),
    ("every origin down: nothing to try (a quick 502)", [1, 0], set(), set(), 2, []),
]


@pytest.mark.parametrize("order, allowed, up, most, expected", [p[1:] for p in PICKS], ids=[p[0] for p in PICKS])
def test_which_origins_a_request_tries(order, allowed, up, most, expected):
    asked = []

    def allow(i: int) -> bool:
        asked.append(i)
        return i in allowed

    assert pick_origins(order, allow, up.__contains__, most) == expected
    if len([i for i in order if i in allowed]) >= most:  # a breaker is asked only until enough are found
        assert asked == order[:order.index(expected[-1]) + 1]


def test_a_single_origin_is_never_cut_off_by_its_open_breaker_alone():
    """The breaker opens (counted as before), but the last origin the active check keeps up is still asked."""
    cb = CircuitBreaker(threshold=2, cooldown=10)
    health = HealthTable(1)

    def tries(now: float) -> list[int]:
        return pick_origins([0], lambda i: health.healthy(i) and cb.allow(now), health.healthy, 2)

    for t in (0, 1):
        assert tries(t) == [0]
        cb.record(False, t)
    assert cb.state == OPEN and not cb.allow(2)
    assert tries(2) == [0]
    cb.record(True, 3)  # a success through the last resort closes it
    assert cb.state == CLOSED
    health.publish(0, healthy=False, ok=False, latency=0.0)  # the active check, not the breaker, takes it out
    assert tries(4) == []


def test_the_table_is_shared_with_forked_workers():
    table = HealthTable(2)
    assert table.healthy(0) and table.healthy(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a "worker" reads what the "supervisor" publishes after the fork
        os.close(w)
        os.read(r, 1)
        os._exit(0 if (table.healthy(0), table.healthy(1)) == (True, False) else 1)
    os.close(r)
    table.publish(1, healthy=False, ok=False, latency=0.25)
    os.write(w, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    row = table.row(1)
    assert row["checks_failed"] == 1 and row["latency"] == 0.25 and not row["healthy"]


@pytest.fixture
def origin():
    """One real origin server; yields its base URL."""
    proc = subprocess.Popen([sys.executable, str(HERE / "origin_server.py")], stdout=subprocess.PIPE, text=True)
    yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    proc.kill()
    proc.wait()


def test_checks_against_real_origins(origin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def main():
        async with aiohttp.ClientSession() as session:
            assert (await check(session, origin + "/healthz", 2))[0] is True
            assert (await check(session, origin + "/obj/missing-is-fine", 2))[0] is True
            assert (await check(session, dead + "/healthz", 2))[0] is False
            ok, took = await check(session, origin + "/slow", 0.3)
            assert ok is False and took < 2
            assert (await check(session, origin + "/nope", 2))[0] is False  # 404

    asyncio.run(main())


def test_origin_counters_per_worker_fold_into_the_retired_row():
    from edge.health import OriginCounters

    counts = OriginCounters(slots=4, origins=2)
    a, b = counts.row(1), counts.row(2)
    a[0] += 3  # worker 1: 3 ok with origin 0
    a[3] += 1  # and one failure with origin 1
    b[0] += 2
    assert counts.totals() == [(5, 0), (0, 1)]
    counts.release(1)  # worker 1 ended: its counts stay in the totals
    assert counts.totals() == [(5, 0), (0, 1)]
    assert not any(counts.row(1))


def test_breaker_admits_is_allow_without_taking_the_trial():
    """admits() (what round-robin and least-conn skip by) says what allow() would, and changes nothing."""
    cb = CircuitBreaker(threshold=1, cooldown=10)
    assert cb.admits(0.0)
    cb.record(False, 0.0)  # open
    assert not cb.admits(5.0) and not cb.allow(5.0)
    assert cb.admits(10.0) and cb.admits(10.0)  # asked twice: still no trial taken
    assert cb.state == "open" and not cb.trial
    assert cb.allow(10.0)  # the half-open trial
    assert not cb.admits(11.0)  # one trial at a time
    assert cb.admits(20.0)  # a trial that never reported back expires


def test_origin_counters_pool_gauges_drop_and_opened_totals_fold_on_release():
    """Issue 17: pool figures summed over workers; an ended worker's gauges go, its opened total stays."""
    from edge.health import POOL_FIELDS, POOL_IDLE, POOL_IN_USE, POOL_OPEN, POOL_OPENED, OriginCounters, pool_figures

    counts = OriginCounters(slots=4, origins=2)
    a, b = pool_figures(counts.row(1)), pool_figures(counts.row(2))
    a[POOL_OPEN], a[POOL_IDLE], a[POOL_IN_USE], a[POOL_OPENED] = 3, 2, 1, 7
    b[POOL_OPEN], b[POOL_IDLE], b[POOL_OPENED] = 1, 1, 2
    b[POOL_FIELDS + POOL_OPENED] = 4  # origin 1
    counts.row(1)[0] += 5  # exchange counts beside them are untouched
    assert counts.pools() == [{"open": 4, "idle": 3, "in_use": 1, "opened_total": 9},
                              {"open": 0, "idle": 0, "in_use": 0, "opened_total": 4}]
    counts.release(1)
    assert counts.pools()[0] == {"open": 1, "idle": 1, "in_use": 0, "opened_total": 9}
    assert counts.totals() == [(5, 0), (0, 0)]
    counts.release(2)
    assert counts.pools() == [{"open": 0, "idle": 0, "in_use": 0, "opened_total": 9},
                              {"open": 0, "idle": 0, "in_use": 0, "opened_total": 4}]
