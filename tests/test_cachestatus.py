"""edge/cachestatus.py: every Cache-Status value edge sends, from its parts (RFC 9211)."""

from __future__ import annotations

import pytest

from edge.cachestatus import CacheStatus
from edge.pull import (COLLAPSED, HIT_STALE_REVALIDATE, MISS, MISS_STORE_FAILED, MISS_STORED, REVALIDATED,
                       STALE_ERROR, STALE_NOT_STORED, STALE_REFETCHED, STALE_STORE_FAILED)


@pytest.mark.parametrize(("status", "value"), [
    (CacheStatus(hit=True, ttl=42), b"edge; hit; ttl=42"),
    (CacheStatus(hit=True, ttl=-3), b"edge; hit; ttl=-3"),
    (MISS, b"edge; fwd=miss"),
    (MISS_STORED, b"edge; fwd=miss; stored"),
    (COLLAPSED, b"edge; fwd=miss; stored; collapsed"),
    (MISS_STORE_FAILED, b"edge; fwd=miss; detail=store-failed"),
    (HIT_STALE_REVALIDATE, b"edge; hit; fwd=stale; detail=stale-while-revalidate"),
    (STALE_ERROR, b"edge; fwd=stale; detail=stale-if-error"),
    (CacheStatus(fwd="stale", fwd_status=503, detail="stale-if-error"),
     b"edge; fwd=stale; fwd-status=503; detail=stale-if-error"),
    (REVALIDATED, b"edge; fwd=stale; fwd-status=304"),
    (STALE_NOT_STORED, b"edge; fwd=stale"),
    (STALE_REFETCHED, b"edge; fwd=stale; stored"),
    (STALE_STORE_FAILED, b"edge; fwd=stale; detail=store-failed"),
    (STALE_REFETCHED.joined(), b"edge; fwd=stale; stored; collapsed"),
    (CacheStatus(fwd="miss", detail="unreachable"), b"edge; fwd=miss; detail=unreachable"),
])
def test_encode(status: CacheStatus, value: bytes) -> None:
    """The parameters in one fixed order after the cache's name, each only when it says something."""
    assert status.encode() == value
