"""HTTP dates (RFC 9110 §5.6.7): formatting and lenient parsing of the three historic forms."""

from __future__ import annotations

import calendar
import functools
import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.lower(): i + 1 for i, m in enumerate(_MONTHS)}


def format_http_date(seconds: float) -> str:
    """Format a Unix time as an IMF-fixdate, e.g. 'Sun, 06 Nov 1994 08:49:37 GMT'."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


@functools.lru_cache(maxsize=1024)  # the same Date and Last-Modified values come back again and again
def parse_http_date(value: str | bytes) -> int | None:
    """Parse an HTTP date (IMF-fixdate, RFC 850 or asctime) to Unix seconds; None if invalid."""
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
