"""HTTP caching rules for a shared cache (RFC 9111): storability, freshness lifetime, age, stale windows."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from http import HTTPStatus

from .httpdate import parse_http_date_strict
from .sfv import SFError, parse_dictionary

#: Status codes a shared cache may store without explicit freshness (RFC 9110 §15.1, "heuristically cacheable").
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: What this cache stores at all (206 needs range-aware storage, which it does not keep); those not
#: heuristically cacheable (302, 303, 307) only with explicit freshness.
STORABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501})
#: Final status codes RFC 9110 defines (and 103-599 registered ones); any other is an extension code.
KNOWN_STATUSES = frozenset(s.value for s in HTTPStatus)
HEURISTIC_FRACTION = 0.1  # of (Date - Last-Modified), RFC 9111 §4.2.2's suggestion
HEURISTIC_MAX = 86_400.0

FRESH, STALE_REVALIDATE, STALE = "fresh", "stale-while-revalidate", "stale"
NEVER = float("-inf")  # a reuse window closed for good: now + NEVER is before any time


def reuse_windows(lifetime: float, initial_age: float, stale_while_revalidate: float, stale_if_error: float,
                  no_cache: bool, must_revalidate: bool, stored_at: float, now: float
                  ) -> tuple[float, float, float, float]:
    """(age, seconds it stays fresh, may be served while it is revalidated, may be served when the origin
    fails), counted from `now` on the clock `stored_at` is on; NEVER for a window closed for good.

    The one rule production (stored.StoredEntry) and Freshness use. Age: RFC 9111 §4.2.3. no-cache: never
    fresh, every reuse waits for validation (§5.2.2.4), so never served stale either; must-revalidate
    (and proxy-revalidate, s-maxage without a stale-* of its own) forbids serving it stale (§5.2.2.2);
    the stale-* windows (RFC 5861) open when freshness ends.
    """
    age = initial_age + max(0.0, now - stored_at)
    left = lifetime - age
    never_stale = must_revalidate or no_cache
    return (age, NEVER if no_cache else left, NEVER if never_stale else left + stale_while_revalidate,
            NEVER if never_stale else left + stale_if_error)


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
    if arg is None:
        return None
    return _delta_seconds(arg)


def _delta_seconds(arg: str) -> float | None:
    """delta-seconds (RFC 9111 §1.2.2): ASCII digits only, capped at 2^31; None if anything else."""
    if not arg.isascii() or not arg.isdigit():
        return None
    return float(min(int(arg), 2**31)) if len(arg) <= 10 else float(2**31)  # no int() of a huge string


#: CDN-Cache-Control members (RFC 9213 §2.2) this cache acts on, by the type their value must have.
_TARGETED_INTEGERS = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})
_TARGETED_FLAGS = frozenset({"no-store", "public", "must-revalidate", "proxy-revalidate"})
_TARGETED_FLAGS_OR_FIELDS = frozenset({"private", "no-cache"})


@functools.lru_cache(maxsize=256)  # the same few values come from an origin again and again
def parse_targeted(value: str) -> dict[str, str | None] | None:
    """A CDN-Cache-Control value (RFC 9213) as Cache-Control directives; None if it is to be ignored.

    The dictionary returned is shared between calls (cached): read it, never change it."""
    # RFC 9213 §2.2: a Dictionary Structured Field (RFC 8941 §3.2), several field lines being one dictionary
    # whose later duplicate keys overwrite earlier ones (RFC 8941 §4.2.2) - unlike Cache-Control's first-wins
    # here; a value that fails to parse, or is empty, is ignored as if absent (Cache-Control and Expires apply).
    try:
        members = parse_dictionary(value)
    except SFError:
        return None
    if not members:
        return None
    out: dict[str, str | None] = {}
    for name, (item, _params) in members.items():  # parameters are ignored (RFC 9213 §2.2)
        if name in _TARGETED_INTEGERS:
            # RFC 9213 §2.2: max-age and its kind are Integers; consumers SHOULD NOT coerce anything else
            # (a Decimal, a String, a negative number). Such a field is ignored whole, not just the member.
            if type(item) is not int or item < 0:
                return None
            out[name] = str(item)
        elif name in _TARGETED_FLAGS:
            if item is not True:  # RFC 9213 §2.2: no-store "always has a Boolean true value" (bare, or ?1)
                return None
            out[name] = None
        elif name in _TARGETED_FLAGS_OR_FIELDS:
            # RFC 9213 §2.2: no-cache is Boolean true or a String of comma-separated field names, and so is
            # private (RFC 9111 §5.2.2.7 gives it the same argument); either form then acts as in Cache-Control.
            if item is True:
                out[name] = None
            elif type(item) is str and _field_names(item):
                out[name] = item
            else:
                return None
        else:
            out[name] = None  # any other directive: present, its value unused (e.g. RFC 9213 §3.1's "none")
    return out


def _field_names(value: str) -> bool:
    """Whether `value` is a #field-name list (RFC 9110 §5.6.1, empty elements ignored) with at least one name."""
    names = [n for n in (e.strip(" \t") for e in value.split(",")) if n]
    return bool(names) and all(n.isascii() and all(c.isalnum() or c in _TCHAR for c in n) for n in names)


_TCHAR = "!#$%&'*+-.^_`|~"  # with ALPHA and DIGIT, a token's characters (RFC 9110 §5.6.2)


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

    def windows(self, stored_at: float, now: float) -> tuple[float, float, float, float]:
        """reuse_windows for this answer."""
        return reuse_windows(self.lifetime, self.initial_age, self.stale_while_revalidate, self.stale_if_error,
                             self.no_cache, self.must_revalidate, stored_at, now)

    def age(self, stored_at: float, now: float) -> float:
        """Current age: the initial age plus the time since it was stored."""
        return self.windows(stored_at, now)[0]

    def state(self, stored_at: float, now: float) -> str:
        """FRESH, STALE_REVALIDATE (serve it and refresh in the background) or STALE."""
        _, fresh, revalidate, _ = self.windows(stored_at, now)
        return FRESH if fresh > 0 else STALE_REVALIDATE if revalidate > 0 else STALE

    def usable_on_error(self, stored_at: float, now: float) -> bool:
        """Whether stale-if-error lets it be served when the origin fails."""
        return self.windows(stored_at, now)[3] > 0


def assess(status: int, headers: dict[str, str], request_time: float, response_time: float,
           default_ttl: float, *, authorized: bool = False) -> Freshness:
    """Apply RFC 9111 §3 and §4.2 to a response (header names lower-case) received at `response_time`.

    `headers` holds one value per name, the field lines of a repeated name joined with ", " (RFC 9110 §5.3).
    Expires, Date and Last-Modified are read by httpdate.parse_http_date_strict with `response_time` as the
    clock for RFC 850 years: Expires because RFC 9111 §5.3 makes anything but an exact HTTP-date "already
    expired"; Date and Last-Modified because they are subtracted from it and from each other (Expires - Date,
    Date - Last-Modified) and must be read by the same rule. An invalid Date is as if absent: the receipt time
    stands in (RFC 9110 §6.6.1); an invalid Last-Modified gives no heuristic (the default TTL applies).
    """
    # CDN-Cache-Control (RFC 9213 §2.1) speaks to CDN caches like this one: when it is valid and not empty,
    # Cache-Control and Expires are for the others (browsers, private caches) and are ignored here.
    targeted_raw = headers.get("cdn-cache-control")
    cc = parse_targeted(targeted_raw) if targeted_raw is not None else None
    targeted = cc is not None
    if cc is None:
        cc = parse_cache_control(headers.get("cache-control"))
    pragma_no_cache = not targeted and "cache-control" not in headers and \
        "no-cache" in headers.get("pragma", "").lower()
    date = parse_http_date_strict(headers["date"], response_time) if "date" in headers else None
    if date is None:
        date = response_time
    expires_raw = None if targeted else headers.get("expires")
    s_maxage = _seconds(cc, "s-maxage")
    max_age = _seconds(cc, "max-age")
    explicit = "s-maxage" in cc or "max-age" in cc or expires_raw is not None or "public" in cc
    storable = (
        # RFC 9111 §3: a final status this cache does not know (299, 499, 599) may be stored when the
        # answer's freshness is explicit; known codes outside STORABLE_STATUSES are not kept.
        (status in STORABLE_STATUSES or (status not in KNOWN_STATUSES and 200 <= status < 600))
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
        expires = parse_http_date_strict(expires_raw, response_time)
        # RFC 9111 §5.3: an invalid date (not exactly one of RFC 9110 §5.6.7's three forms; "0"; two Expires
        # lines, which arrive joined) is a time in the past: already stale.
        lifetime = max(0.0, expires - date) if expires is not None else 0.0
    elif "last-modified" in headers and status in HEURISTIC_STATUSES:
        modified = parse_http_date_strict(headers["last-modified"], response_time)
        if modified is None:
            lifetime = default_ttl
        else:
            lifetime = min(HEURISTIC_MAX, max(0.0, (date - modified) * HEURISTIC_FRACTION))
    else:
        lifetime = default_ttl
    age_value = 0.0
    age_header = headers.get("age")
    if age_header is not None:
        # RFC 9111 §5.1: a list (Age: 5, 7, or two field lines, which arrive joined) counts by its first member
        # (empty list elements ignored, RFC 9110 §5.6.1.2); if that is not delta-seconds, "a cache SHOULD
        # consider the response to be stale". Stale on arrival is lifetime 0, not a made-up huge age: the
        # age stays the one Date and the delay give (what Age is sent on with), and stale-while-revalidate
        # and stale-if-error windows count from arrival as for any stale answer (RFC 9111 §4.2.4, RFC 5861).
        first = next((m for m in (e.strip(" \t") for e in age_header.split(",")) if m), "")
        parsed_age = _delta_seconds(first)
        if parsed_age is None:
            lifetime = 0.0
        else:
            age_value = parsed_age
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
