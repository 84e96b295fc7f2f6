"""Disk-cache store failures: the reason an OSError gives, and a log that says each reason once per interval."""

from __future__ import annotations

import errno

#: The reasons a store fails, as /metrics labels them (edge_cache_store_errors_total{reason=...}).
REASONS = ("disk-full", "quota", "read-only", "io-error", "other")
_BY_ERRNO = {errno.ENOSPC: "disk-full", errno.EDQUOT: "quota", errno.EROFS: "read-only", errno.EIO: "io-error",
             errno.EFBIG: "disk-full"}
LOG_INTERVAL = 60.0  # seconds between two log lines about one reason


def reason_of(error: OSError) -> str:
    """The REASONS label of a failed write, open, xattr or rename."""
    return _BY_ERRNO.get(error.errno, "other")


class FaultLog:
    """Decides when a store failure is worth a log line: the first of each reason, then at most one per
    LOG_INTERVAL, saying how many happened since the last line (a full disk fails every miss)."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.last: dict[str, float] = {}  # reason -> when it was last logged
        self.unsaid: dict[str, int] = {}  # reason -> failures since then

    def failed(self, reason: str, error: str, now: float) -> str | None:
        """Count one failure at `now`; the line to log, or None while its reason was logged recently."""
        count = self.unsaid.get(reason, 0) + 1
        last = self.last.get(reason)
        if last is not None and now - last < self.interval:
            self.unsaid[reason] = count
            return None
        self.last[reason] = now
        self.unsaid[reason] = 0
        since = f"; {count} failed stores since the last message" if last is not None else ""
        return (f"cannot store in the disk cache ({reason}: {error}): answers still reach their clients whole, "
                f"nothing is stored until the disk takes writes again{since}")
