"""Cache keys for origin objects: path plus query, with the query kept whole, ignored, or filtered to a list."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode


class KeyRule:
    """How a request's query takes part in its cache key: "keep" (default), "ignore", or a list of names kept."""

    def __init__(self, query: str | tuple[str, ...] = "keep") -> None:
        if isinstance(query, str) and query not in ("keep", "ignore"):
            raise ValueError(f"query rule must be 'keep', 'ignore' or a list of names, got {query!r}")
        self.query = query

    def key(self, path: str, query: bytes) -> bytes:
        """The cache key of `path` (already normalised) with its raw `query` (without '?')."""
        rule = self.query
        if not query or rule == "ignore":
            return path.encode()
        if rule == "keep":
            return path.encode() + b"?" + query
        kept = [(k, v) for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k in rule]
        if not kept:
            return path.encode()
        kept.sort()  # the same parameters in another order are the same object
        return path.encode() + b"?" + urlencode(kept).encode("latin-1")


def digest(key: bytes) -> str:
    """The object's name on disk: 32 hex digits of BLAKE2b of its key (stable across processes and nodes)."""
    return hashlib.blake2b(key, digest_size=16).hexdigest()
