"""Balancing policies (pure): the order in which a request tries the origins, best first.

Every policy answers a list of origin indexes, its first choice then the fallbacks, and
`health.pick_origins` then applies health and the retry count to that list, as for the ring alone.
`eligible(i)` is the side-effect-free "may it be asked now" of the caller (active check up, circuit
not open); the stateful policies use it to skip origins, the ring policies do not need it (an
ineligible origin is skipped by pick_origins, and its successor on the ring takes the request).

How a down (or circuit-open) origin's share moves:

- consistent: each of its keys goes to the next distinct origin clockwise from the key on the ring,
  so its keys spread over the others about in proportion to their weights, no other key moves, and
  its keys come back to it (and to its warm cache) when it is up again.
- ip-hash: the same, with the client's /24 (IPv4) or /64 (IPv6) as the key: each of its networks
  moves to the ring's next origin and comes back when it is up.
- round-robin: it is skipped and takes no part in the pick (its current weight stays where it was,
  as nginx leaves a down peer's), so the others share its requests in proportion to their weights.
- least-conn: it is skipped; its requests go to whichever others are least loaded per weight.

A request that arrives with no usable client address under ip-hash is balanced round robin, as
nginx's ip_hash does for clients that are not IPv4 or IPv6.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from .ring import Ring

CONSISTENT, ROUND_ROBIN, LEAST_CONN, IP_HASH = "consistent", "round-robin", "least-conn", "ip-hash"
POLICIES = (CONSISTENT, ROUND_ROBIN, LEAST_CONN, IP_HASH)


def _anyone(index: int) -> bool:
    return True


class SmoothWeighted:
    """nginx's smooth weighted round robin state: one current weight per origin."""

    __slots__ = ("weights", "current")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = list(weights)
        self.current = [0] * len(self.weights)

    def pick(self, among: Iterable[int]) -> int | None:
        """One pick among the origins `among` (None if it is empty)."""
        # ngx_http_upstream_get_peer (ngx_http_upstream_round_robin.c): every candidate's current_weight
        # grows by its effective_weight, the largest wins (the first of equals), and the winner gives back
        # the total. Over sum(weights) picks each origin gets exactly its weight, interleaved (5/1/1 gives
        # a a b a c a a). nginx also lowers effective_weight after failures; here the circuit breaker and
        # the active check take an origin out instead, so effective_weight is the configured weight.
        current, weights = self.current, self.weights
        best = -1
        total = 0
        for i in among:
            current[i] += weights[i]
            total += weights[i]
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return best


def round_robin(rr: SmoothWeighted, eligible: Callable[[int], bool] = _anyone) -> list[int]:
    """Smooth weighted round robin: the pick among the eligible, then the others that would be picked next."""
    n = len(rr.weights)
    up = [i for i in range(n) if eligible(i)]
    first = rr.pick(up)
    if first is None:
        return list(range(n))  # nobody eligible: pick_origins' last resort decides
    current = rr.current
    rest = sorted((i for i in up if i != first), key=lambda i: (-current[i], i))
    return [first, *rest, *(i for i in range(n) if i not in up)]


def least_conn(rr: SmoothWeighted, active: Sequence[int],
               eligible: Callable[[int], bool] = _anyone) -> list[int]:
    """Fewest active requests per unit of weight first; equals are picked by smooth weighted round robin."""
    # ngx_http_upstream_get_least_conn_peer: the least conns/weight wins (compared as conns_a * weight_b <
    # conns_b * weight_a, no division); when several share the least, weighted round robin among them.
    weights = rr.weights
    n = len(weights)
    up = [i for i in range(n) if eligible(i)]
    if not up:
        return list(range(n))
    best = up[0]
    ties = [best]
    for i in up[1:]:
        mine, theirs = active[i] * weights[best], active[best] * weights[i]
        if mine < theirs:
            best, ties = i, [i]
        elif mine == theirs:
            ties.append(i)
    first = rr.pick(ties) if len(ties) > 1 else best
    rest = sorted((i for i in up if i != first), key=lambda i: (active[i] / weights[i], i))
    return [first, *rest, *(i for i in range(n) if i not in up)]


def client_prefix(address: str | None) -> bytes | None:
    """The network ip-hash keys a client by: the first 3 bytes of IPv4 (/24), the first 8 of IPv6 (/64)."""
    # nginx's ip_hash hashes the first three octets of an IPv4 address (and the whole IPv6 address); a /64
    # is one site or subscriber in IPv6 (RFC 6177), as a /24 is usually one network in IPv4. An IPv4 client
    # seen through an IPv4-mapped IPv6 socket (::ffff:a.b.c.d, RFC 4291 §2.5.5.2) is keyed as IPv4.
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is None:
            return ip.packed[:8]
        ip = mapped
    return ip.packed[:3]


def ip_hash(ring: Ring, address: str | None) -> list[int] | None:
    """The ring's order from the client's network (client_prefix); None when the address is not usable."""
    prefix = client_prefix(address)
    return None if prefix is None else ring.candidates(prefix)


class Balancer:
    """One policy over one origin list, with the state its picks keep (round robin's current weights)."""

    __slots__ = ("policy", "ring", "rr")

    def __init__(self, policy: str, ring: Ring, weights: Sequence[int]) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown balancing policy {policy!r}")
        self.policy = policy
        self.ring = ring
        self.rr = SmoothWeighted(weights)

    def order(self, key: bytes, client: str | None = None, active: Sequence[int] = (),
              eligible: Callable[[int], bool] = _anyone) -> list[int]:
        """Origin indexes to try, best first: by cache `key`, `client` address or `active` counts per policy."""
        policy = self.policy
        if policy == CONSISTENT:
            return self.ring.candidates(key)
        if policy == IP_HASH:
            found = ip_hash(self.ring, client)
            if found is not None:
                return found
            return round_robin(self.rr, eligible)
        if policy == LEAST_CONN:
            return least_conn(self.rr, active or [0] * len(self.rr.weights), eligible)
        return round_robin(self.rr, eligible)
