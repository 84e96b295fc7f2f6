"""Cache-Status field values (RFC 9211) this cache sends, built from their parts, never patched as bytes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

CACHE_NAME = b"edge"


@dataclass(frozen=True)
class CacheStatus:
    """One Cache-Status member for this cache: hit, or why it forwarded and what came of it (RFC 9211 §2)."""

    hit: bool = False
    fwd: str | None = None  # why it went to the origin: "miss", "stale" (§2.2)
    fwd_status: int = 0  # the origin's status, when it differs from the one sent (§2.3)
    stored: bool = False  # the answer is (being) stored (§2.5)
    collapsed: bool = False  # served by another request's forward (§2.6)
    ttl: int | None = None  # seconds of freshness left (§2.4)
    detail: str | None = None  # edge's own word (§2.8): stale-while-revalidate, stale-if-error, store-failed...

    def encode(self) -> bytes:
        """The field value, e.g. b"edge; fwd=miss; stored"."""
        return _encode(self)

    def joined(self) -> CacheStatus:
        """The same forward, for a request that joined it (collapsed)."""
        return replace(self, collapsed=True)


@lru_cache(maxsize=256)  # a few dozen distinct values; ttl varies, bounded by the cache
def _encode(status: CacheStatus) -> bytes:
    parts = [CACHE_NAME]
    if status.hit:
        parts.append(b"hit")
    if status.fwd is not None:
        parts.append(b"fwd=" + status.fwd.encode("ascii"))
    if status.fwd_status:
        parts.append(b"fwd-status=%d" % status.fwd_status)
    if status.stored:
        parts.append(b"stored")
    if status.collapsed:
        parts.append(b"collapsed")
    if status.ttl is not None:
        parts.append(b"ttl=%d" % status.ttl)
    if status.detail is not None:
        parts.append(b"detail=" + status.detail.encode("ascii"))
    return b"; ".join(parts)
