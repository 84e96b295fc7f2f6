"""edge/storefaults.py: the reason of a failed store, and a log line per reason and interval."""

from __future__ import annotations

import errno

import pytest

from edge.storefaults import LOG_INTERVAL, REASONS, FaultLog, reason_of


@pytest.mark.parametrize("code, reason", [
    (errno.ENOSPC, "disk-full"), (errno.EFBIG, "disk-full"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only"),
    (errno.EIO, "io-error"), (errno.EACCES, "other"), (None, "other"),
])
def test_reason_of(code, reason):
    assert reason_of(OSError(code, "x")) == reason
    assert reason in REASONS


def test_one_line_per_reason_and_interval_counting_the_unsaid():
    log = FaultLog()
    first = log.failed("disk-full", "No space left on device", 100.0)
    assert first is not None and "disk-full: No space left on device" in first and "since" not in first
    assert [log.failed("disk-full", "No space left on device", 100.0 + t) for t in (1, 30, 59)] == [None] * 3
    assert log.failed("read-only", "Read-only file system", 101.0) is not None  # another reason: its own line
    again = log.failed("disk-full", "No space left on device", 100.0 + LOG_INTERVAL)
    assert again is not None and "4 failed stores since the last message" in again
    assert log.failed("disk-full", "No space left on device", 100.0 + LOG_INTERVAL + 1) is None
