"""Consistent hashing (edge/ring.py): determinism, spread, minimal movement, failover order."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from edge.ring import VNODES_PER_WEIGHT, Ring, point

KEYS = [f"/objects/{i}.bin?v={i % 7}".encode() for i in range(10_000)]
ORIGINS = [(f"http://origin-{c}:8080", 1) for c in "abcd"]


def owners(ring: Ring) -> list[int]:
    """The owner of every test key."""
    return [ring.lookup(k) for k in KEYS]


def test_point_is_blake2b_not_the_salted_builtin_hash():
    code = "from edge.ring import point; print(point(b'/a'))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "random")}
    assert len(runs) == 1 and int(runs.pop()) == point(b"/a")


def test_the_same_origin_list_maps_every_key_the_same_way():
    assert owners(Ring(ORIGINS)) == owners(Ring(list(ORIGINS)))


def test_spread_over_equal_origins_is_within_15_percent():
    counts = Counter(owners(Ring(ORIGINS)))
    ideal = len(KEYS) / len(ORIGINS)
    for index in range(len(ORIGINS)):
        assert abs(counts[index] - ideal) <= 0.15 * ideal, counts


def test_weights_scale_the_share():
    ring = Ring([("http://big", 3), ("http://small", 1)])
    counts = Counter(owners(ring))
    assert 0.65 <= counts[0] / len(KEYS) <= 0.85, counts
    assert len(ring._points) == 4 * VNODES_PER_WEIGHT


@pytest.mark.parametrize("removed", range(4))
def test_removing_one_of_n_moves_only_its_keys(removed):
    before = owners(Ring(ORIGINS))
    rest = [o for i, o in enumerate(ORIGINS) if i != removed]
    after = [ORIGINS.index(rest[i]) for i in owners(Ring(rest))]
    moved = sum(b != a for b, a in zip(before, after))
    ideal = len(KEYS) / len(ORIGINS)
    assert abs(moved - ideal) <= 0.30 * ideal, moved
    assert all(b == a for b, a in zip(before, after) if b != removed), "a key of a surviving origin moved"


def test_adding_one_moves_about_one_in_n_plus_one():
    before = owners(Ring(ORIGINS))
    grown = ORIGINS + [("http://origin-e:8080", 1)]
    after = owners(Ring(grown))
    moved = sum(b != a for b, a in zip(before, after))
    ideal = len(KEYS) / len(grown)
    assert abs(moved - ideal) <= 0.30 * ideal, moved
    assert all(a == 4 for b, a in zip(before, after) if b != a), "keys moved between old origins"


def test_a_down_origin_fails_over_to_the_next_one_clockwise():
    ring = Ring(ORIGINS)
    for key in KEYS[:500]:
        order = ring.candidates(key)
        assert sorted(order) == [0, 1, 2, 3]
        assert ring.lookup(key) == order[0]
        assert ring.lookup(key, lambda i, down=order[0]: i != down) == order[1]
    assert ring.lookup(KEYS[0], lambda i: False) is None


def test_bad_rings_are_refused():
    with pytest.raises(ValueError):
        Ring([])
    with pytest.raises(ValueError, match="weight"):
        Ring([("http://a", 0)])
