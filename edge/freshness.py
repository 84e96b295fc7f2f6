"""HTTP caching rules for a shared cache (RFC 9111): storability, freshness lifetime, age, stale windows."""

from __future__ import annotations

from dataclasses import dataclass

from .httpdate import parse_http_date

#: Status codes a shared cache may store without explicit freshness (RFC 9110 §15.1, "heuristically cacheable").
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: What this cache stores at all (206 needs range-aware storage, which it does not keep); those not
#: heuristically cacheable (302, 303, 307) only with explicit freshness.
STORABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501})
HEURISTIC_FRACTION = 0.1  # of (Date - Last-Modified), RFC 9111 §4.2.2's suggestion
HEURISTIC_MAX = 86_400.0

FRESH, STALE_REVALIDATE, STALE = "fresh", "stale-while-revalidate", "stale"


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives of a Cache-Control field, lower-cased names; quoted arguments unquoted; duplicates: first wins."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    for item in _split_commas(value):
        name, eq, arg = item.strip().partition("=")
        name = name.strip().lower()
        if not name or name in out:
            continue
        arg = arg.strip()
        if len(arg) >= 2 and arg[0] == arg[-1] == '"':
            arg = arg[1:-1]
        out[name] = arg if eq else None
    return out


def _split_commas(value: str) -> list[str]:
    if '"' not in value:
        return value.split(",")  # the usual case, without a walk over every character
    out, start, quoted = [], 0, False
    for i, c in enumerate(value):
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return out


def _seconds(directives: dict[str, str | None], name: str) -> float | None:
    """A delta-seconds argument (RFC 9111 §1.2.2): digits only; anything else is as if absent."""
    arg = directives.get(name)
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    return float(min(int(arg), 2**31))


@dataclass(frozen=True)
class Freshness:
    """What a stored response's headers say about its reuse, computed once when it is stored."""

    storable: bool
    lifetime: float  # seconds fresh after its age was zero
    initial_age: float  # corrected initial age when received (RFC 9111 §4.2.3)
    stale_while_revalidate: float
    stale_if_error: float
    no_cache: bool  # must be revalidated before each reuse
    must_revalidate: bool  # never served stale (not even on error)

    def age(self, stored_at: float, now: float) -> float:
        """Current age: the initial age plus the time since it was stored."""
        return self.initial_age + max(0.0, now - stored_at)

    def state(self, stored_at: float, now: float) -> str:
        """FRESH, STALE_REVALIDATE (serve it and refresh in the background) or STALE."""
        if self.no_cache:
            return STALE
        age = self.age(stored_at, now)
        if age < self.lifetime:
            return FRESH
        if not self.must_revalidate and age < self.lifetime + self.stale_while_revalidate:
            return STALE_REVALIDATE
        return STALE

    def usable_on_error(self, stored_at: float, now: float) -> bool:
        """Whether stale-if-error lets it be served when the origin fails."""
        if self.must_revalidate:
            return False
        return self.age(stored_at, now) < self.lifetime + self.stale_if_error


def assess(status: int, headers: dict[str, str], request_time: float, response_time: float,
           default_ttl: float, *, authorized: bool = False) -> Freshness:
    """Apply RFC 9111 §3 and §4.2 to a response (header names lower-case) received at `response_time`."""
    # CDN-Cache-Control (RFC 9213) speaks to CDN caches like this one: when it says anything, Cache-Control
    # and Expires are for the others (browsers, private caches) and are ignored here.
    cc = parse_cache_control(headers.get("cdn-cache-control"))
    targeted = bool(cc)
    if not targeted:
        cc = parse_cache_control(headers.get("cache-control"))
    pragma_no_cache = not targeted and "cache-control" not in headers and \
        "no-cache" in headers.get("pragma", "").lower()
    date = parse_http_date(headers["date"]) if "date" in headers else None
    if date is None:
        date = response_time
    expires_raw = None if targeted else headers.get("expires")
    s_maxage = _seconds(cc, "s-maxage")
    max_age = _seconds(cc, "max-age")
    explicit = "s-maxage" in cc or "max-age" in cc or expires_raw is not None or "public" in cc
    storable = (
        status in STORABLE_STATUSES
        and "no-store" not in cc
        and "private" not in cc
        and (not authorized or "public" in cc or s_maxage is not None or "must-revalidate" in cc)
        and (status in HEURISTIC_STATUSES or explicit)
    )
    if s_maxage is not None:
        lifetime = s_maxage
    elif "s-maxage" in cc:
        lifetime = 0.0  # invalid: stale at once (RFC 9111 §4.2.1 encourages it), not the default TTL
    elif max_age is not None:
        lifetime = max_age
    elif "max-age" in cc:
        lifetime = 0.0
    elif expires_raw is not None:
        expires = parse_http_date(expires_raw)
        lifetime = max(0.0, expires - date) if expires is not None else 0.0  # invalid Expires: already stale
    elif "last-modified" in headers and status in HEURISTIC_STATUSES:
        modified = parse_http_date(headers["last-modified"])
        if modified is None:
            lifetime = default_ttl
        else:
            lifetime = min(HEURISTIC_MAX, max(0.0, (date - modified) * HEURISTIC_FRACTION))
    else:
        lifetime = default_ttl
    age_header = headers.get("age", "")
    age_value = float(min(int(age_header), 2**31)) if age_header.isascii() and age_header.isdigit() else 0.0
    apparent_age = max(0.0, response_time - date)
    corrected_age = age_value + max(0.0, response_time - request_time)
    stale_while_revalidate = _seconds(cc, "stale-while-revalidate") or 0.0
    stale_if_error = _seconds(cc, "stale-if-error") or 0.0
    # s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10), but an explicit stale-while-revalidate or
    # stale-if-error beside it is the origin's word for this case ("s-maxage=1, stale-while-revalidate=59"
    # is the common CDN pattern, honoured by Varnish, nginx and the CDNs); must-revalidate still wins.
    implied = "s-maxage" in cc and not (stale_while_revalidate or stale_if_error)
    return Freshness(
        storable=storable,
        lifetime=lifetime,
        initial_age=max(apparent_age, corrected_age),
        stale_while_revalidate=stale_while_revalidate,
        stale_if_error=stale_if_error,
        no_cache="no-cache" in cc or pragma_no_cache,
        must_revalidate="must-revalidate" in cc or "proxy-revalidate" in cc or implied,
    )


def cache_status(*, hit: bool, fwd: str | None = None, stored: bool = False, ttl: float | None = None,
                 detail: str | None = None) -> bytes:
    """A Cache-Status field value (RFC 9211) naming this cache 'edge'."""
    parts = ["edge"]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if stored:
        parts.append("stored")
    if ttl is not None:
        parts.append(f"ttl={int(ttl)}")
    if detail is not None:
        parts.append(f"detail={detail}")
    return "; ".join(parts).encode("ascii")
