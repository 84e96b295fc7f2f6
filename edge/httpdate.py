"""HTTP dates (RFC 9110 §5.6.7): formatting, a lenient parser and a strict one.

Which callers use which, and why:

- ``parse_http_date_strict`` (exactly the three forms of RFC 9110 §5.6.7, RFC 850's two-digit year read
  against a reference time): ``freshness.assess`` for a response's Expires, Date and Last-Modified.
  RFC 9111 §5.3 makes every Expires that is not an HTTP-date mean "already expired", so a value a lenient
  parser would have guessed at must not give an origin's answer a lifetime; Date and Last-Modified are
  subtracted from (or compared with) Expires and each other there, so they are read by the same rule.
- ``parse_http_date`` (lenient: the three forms with any spacing, any day name, a comma or not): request
  fields and stored validators, where a guess does no harm and RFC 9110 §5.6.7 asks recipients to be
  robust - If-Modified-Since, If-Unmodified-Since and If-Range (edge/conditional.py), the stored Date for
  If-Range (edge/core.py), a stored or revalidated Last-Modified compared with itself (edge/stored.py,
  edge/pull.py). Its two-digit years stay 1970-2069 (it has no clock; a request date is about now).
"""

from __future__ import annotations

import calendar
import functools
import re
import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.lower(): i + 1 for i, m in enumerate(_MONTHS)}
_STRICT_MONTH = {m: i + 1 for i, m in enumerate(_MONTHS)}  # case-sensitive: %s"Jan" (RFC 9110 §5.6.7)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# RFC 9110 §5.6.7, to the letter: one SP between parts, case-sensitive names, "GMT", nothing before or after
# (fullmatch). [0-9], not \d, which would take other scripts' digits.
_NAMES = "|".join(_MONTHS)
_CLOCK = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(rf"(?:{'|'.join(_DAYS)}), ([0-9]{{2}}) ({_NAMES}) ([0-9]{{4}}) {_CLOCK} GMT")
_RFC850 = re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
                     rf"([0-9]{{2}})-({_NAMES})-([0-9]{{2}}) {_CLOCK} GMT")
_ASCTIME = re.compile(rf"(?:{'|'.join(_DAYS)}) ({_NAMES}) ([0-9]{{2}}| [0-9]) {_CLOCK} ([0-9]{{4}})")


def format_http_date(seconds: float) -> str:
    """Format a Unix time as an IMF-fixdate, e.g. 'Sun, 06 Nov 1994 08:49:37 GMT'."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


@functools.lru_cache(maxsize=1024)  # the same Date and Last-Modified values come back again and again
def parse_http_date(value: str | bytes) -> int | None:
    """Parse an HTTP date leniently (the three forms, loose spacing, any day name) to Unix seconds; None if invalid."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    parts = value.replace(",", " ").split()
    try:
        if len(parts) == 6 and parts[5] == "GMT":  # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
            day, month, year, clock = parts[1], parts[2], parts[3], parts[4]
        elif len(parts) == 4 and parts[3] == "GMT":  # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
            day, month, year = parts[1].split("-")
            clock = parts[2]
            year = str(int(year) + (1900 if int(year) >= 70 else 2000)) if len(year) == 2 else year
        elif len(parts) == 5:  # asctime: Sun Nov  6 08:49:37 1994
            month, day, clock, year = parts[1], parts[2], parts[3], parts[4]
        else:
            return None
        hour, minute, second = (int(x) for x in clock.split(":"))
        mon = _MONTH_NUMBER.get(month.lower())
        if mon is None or len(clock) != 8:
            return None
        if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61 and 1 <= int(day) <= 31):
            return None
        return calendar.timegm((int(year), mon, int(day), hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None


def parse_http_date_strict(value: str | bytes, now: float) -> int | None:
    """Parse exactly an IMF-fixdate, RFC 850 or asctime date (RFC 9110 §5.6.7) to Unix seconds; None if invalid.

    `now` (Unix seconds) places an RFC 850 two-digit year: RFC 9110 §5.6.7 - a year that appears to be more
    than 50 years in the future is the most recent past year with the same last two digits.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")  # non-ASCII never matches the patterns
    parsed = _strict(value)
    if parsed is None or isinstance(parsed, int):
        return parsed
    # RFC 850's year, placed in the 100 years around `now`: (now - 50 years, now + 50 years]. One more than 50
    # years ahead is the most recent past year with those two digits (RFC 9110 §5.6.7's MUST); one 50 years
    # or more behind is read as the coming one (what the RFC leaves open: "appears to be" is the nearest).
    t = time.gmtime(now)
    year = t.tm_year - t.tm_year % 100 + parsed[0]
    rest = parsed[1:]
    clock = (t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
    if (year, *rest) > (t.tm_year + 50, *clock):
        year -= 100
    elif (year, *rest) <= (t.tm_year - 50, *clock):
        year += 100
    if rest[0] == 2 and rest[1] == 29 and not calendar.isleap(year):
        return None  # the 29th of February of a year that has none
    return calendar.timegm((year, *rest, 0, 0, 0))


@functools.lru_cache(maxsize=1024)  # per origin response: Date, Expires and Last-Modified values repeat
def _strict(value: str) -> int | tuple[int, int, int, int, int, int] | None:
    """Unix seconds of an exact HTTP-date with a four-digit year; for RFC 850's two-digit year,
    (yy, month, day, hour, minute, second) to be placed by the caller's clock; None if invalid."""
    m = _IMF_FIXDATE.fullmatch(value)
    if m is not None:
        day, month, year, hour, minute, second = m.groups()
    else:
        m = _RFC850.fullmatch(value)
        if m is not None:
            day, month, year, hour, minute, second = m.groups()
        else:
            m = _ASCTIME.fullmatch(value)
            if m is None:
                return None
            month, day, hour, minute, second, year = m.groups()
    y, mon, d, h, mi, s = int(year), _STRICT_MONTH[month], int(day), int(hour), int(minute), int(second)
    two_digit = len(year) == 2
    # The day name is not checked against the date: it says nothing the date does not, and a wrong one
    # comes from an origin whose date is otherwise exact (RFC 9110 §5.6.7 defines it only as syntax; a
    # wrong day name is the sender's error, not a reason to call a well-formed date invalid).
    # second may be 60 (RFC 9110 §5.6.7: "00:00:00 - 23:59:60 (leap second)"); year 0000 does not exist.
    if h > 23 or mi > 59 or s > 60 or d < 1 or (y < 1 and not two_digit):
        return None
    if d > _DAYS_IN_MONTH[mon - 1] and not (mon == 2 and d == 29 and (two_digit or calendar.isleap(y))):
        return None  # 31 Apr, 30 Feb, 29 Feb 2023 (a two-digit year's 29 Feb is checked once placed)
    if two_digit:
        return y, mon, d, h, mi, s
    return calendar.timegm((y, mon, d, h, mi, s, 0, 0, 0))
