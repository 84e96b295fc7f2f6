"""A token bucket: how many events a peer may cause per second, with a burst allowance."""

from __future__ import annotations


class TokenBucket:
    """Allows `burst` events at once and `rate` per second after that; take() says whether one more fits."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are enough (refilled for the time since the last call)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens if tokens < self.burst else self.burst
        self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True
