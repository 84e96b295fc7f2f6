"""Table-driven tests of Range parsing (edge.ranges)."""

import pytest

from edge.ranges import UNSATISFIABLE, content_range, parse_range

SIZE = 1000

CASES = [
    (b"bytes=0-99", [(0, 100)]),
    (b"bytes=100-", [(100, 900)]),
    (b"bytes=-100", [(900, 100)]),
    (b"bytes=-5000", [(0, 1000)]),
    (b"bytes=0-5000", [(0, 1000)]),
    (b"bytes=999-999", [(999, 1)]),
    (b"bytes=0-0,-1", [(0, 1), (999, 1)]),
    (b"bytes= 0-9 , 20-29", [(0, 10), (20, 10)]),
    (b"BYTES=0-9", [(0, 10)]),
    (b"bytes=0-9,,20-29", [(0, 10), (20, 10)]),
    (b"bytes=0-9,5000-6000", [(0, 10)]),  # the unsatisfiable one is dropped
    (b"bytes=1000-", UNSATISFIABLE),
    (b"bytes=1000-2000,3000-", UNSATISFIABLE),
    (b"bytes=-0", UNSATISFIABLE),
    (b"items=0-9", None),
    (b"bytes", None),
    (b"bytes=a-b", None),
    (b"bytes=5-1", None),
    (b"bytes=-", None),
    (b"bytes=1-2-3", None),
    (b"bytes=+1-2", None),
    (b"bytes=,", None),
    (b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(17)), None),  # more than 16 ranges
    (b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(16)), [(i, 1) for i in range(16)]),
    (b"bytes=0-999,0-999", None),  # overlapping to more than the size: amplification
    (b"bytes=0-499,250-749", [(0, 500), (250, 500)]),  # overlapping but not past the size
    (b"bytes=99999999999999999999-", None),  # absurdly long numbers are refused, not parsed
]


@pytest.mark.parametrize("value, expected", CASES)
def test_parse_range(value, expected):
    result = parse_range(value, SIZE)
    assert result == expected
    if expected is UNSATISFIABLE:
        assert result is UNSATISFIABLE


def test_empty_representation_has_nothing_to_satisfy():
    assert parse_range(b"bytes=-5", 0) is UNSATISFIABLE
    assert parse_range(b"bytes=0-", 0) is UNSATISFIABLE


def test_content_range():
    assert content_range(0, 100, 1000) == b"bytes 0-99/1000"
    assert content_range(999, 1, 1000) == b"bytes 999-999/1000"
