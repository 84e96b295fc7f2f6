"""TokenBucket: the burst allowance, the refill rate, the cap at the burst, and the cost of an event."""

from __future__ import annotations

import pytest

from edge.ratelimit import TokenBucket


def takes(bucket: TokenBucket, now: float, n: int, cost: float = 1.0) -> int:
    """How many of `n` take() calls at time `now` succeed."""
    return sum(bucket.take(now, cost) for _ in range(n))


def test_a_fresh_bucket_allows_exactly_the_burst_at_once():
    bucket = TokenBucket(rate=10, burst=5, now=100.0)
    assert takes(bucket, 100.0, 5) == 5
    assert not bucket.take(100.0)
    assert not bucket.take(100.0), "a refused take must not go negative or recover by itself"


def test_tokens_refill_at_the_rate():
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert takes(bucket, 0.0, 5) == 5
    assert not bucket.take(0.05), "half a token after 50 ms at 10/s"
    assert bucket.take(0.1), "one token after 100 ms at 10/s (50 ms of it accrued before the refusal)"
    assert not bucket.take(0.1)
    assert takes(bucket, 0.4, 10) == 3, "300 ms later: three more"


def test_refill_is_capped_at_the_burst():
    bucket = TokenBucket(rate=100, burst=20, now=0.0)
    assert takes(bucket, 0.0, 20) == 20
    assert takes(bucket, 3600.0, 1000) == 20, "an hour idle buys the burst, not 360000 events"


def test_a_sustained_rate_at_the_limit_is_allowed_and_above_it_refused():
    rate, burst = 64.0, 10  # powers of two: the clock readings below are exact binary fractions
    at_limit = TokenBucket(rate, burst, 0.0)
    # One event every 1/rate seconds for ~8 s, after spending the burst: every one fits.
    assert takes(at_limit, 0.0, burst) == burst
    assert all(at_limit.take(i / rate) for i in range(1, 513))
    over = TokenBucket(rate, burst, 0.0)
    # Twice the rate for 8 s: burst + rate * 8 s fit, the rest are refused.
    allowed = sum(over.take(i / (2 * rate)) for i in range(1025))
    assert allowed == burst + 512, allowed


def test_cost_spends_several_tokens_and_a_too_costly_event_spends_none():
    bucket = TokenBucket(rate=1, burst=10, now=0.0)
    assert bucket.take(0.0, cost=4)
    assert bucket.take(0.0, cost=4)
    assert not bucket.take(0.0, cost=4), "2 tokens left, 4 asked"
    assert bucket.take(0.0, cost=2), "the refused take left the 2 tokens in place"
    assert not bucket.take(0.0, cost=0.5)
    assert bucket.take(0.5, cost=0.5)


def test_cost_larger_than_the_burst_never_fits():
    bucket = TokenBucket(rate=1000, burst=3, now=0.0)
    assert not bucket.take(10.0, cost=4)
    assert bucket.take(10.0, cost=3)


@pytest.mark.parametrize("rate, burst", [(0.5, 1), (100.0, 200), (10.0, 50)])
def test_events_allowed_over_a_window_are_burst_plus_rate_times_time(rate: float, burst: int):
    bucket = TokenBucket(rate, burst, 0.0)
    allowed = 0
    steps = 2048
    span = 16.0  # clock readings i/128: exact binary fractions
    for i in range(steps + 1):  # far more attempts than could fit
        now = span * i / steps
        while bucket.take(now):
            allowed += 1
    assert allowed == int(burst + rate * span), allowed


def test_time_going_backwards_does_not_mint_tokens():
    bucket = TokenBucket(rate=10, burst=5, now=10.0)
    assert takes(bucket, 10.0, 5) == 5
    assert not bucket.take(9.0)
    assert not bucket.take(9.5), "the clock only got back to where it was"
