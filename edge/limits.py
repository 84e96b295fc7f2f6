"""Process limits: raising the open-file limit a server (or a load generator) needs."""

from __future__ import annotations

import resource


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (to `wanted` when unlimited); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
