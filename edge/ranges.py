"""Range requests (RFC 9110 §14): parsing a byte-ranges specifier against a representation's size."""

from __future__ import annotations

MAX_RANGES = 16

#: Returned by parse_range when the header is valid but no range overlaps the representation (416).
UNSATISFIABLE: list[tuple[int, int]] = []


def parse_range(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """Turn a Range value into [(offset, length), ...]; None means serve the whole representation.

    An unknown unit, bad syntax, more than MAX_RANGES ranges, or ranges that overlap
    to more than the size (range amplification) all give None; a valid header none of
    whose ranges is satisfiable gives UNSATISFIABLE.
    """
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    specs = spec.split(b",")
    if len(specs) > MAX_RANGES:
        return None
    out: list[tuple[int, int]] = []
    valid_any = False
    for item in specs:
        item = item.strip(b" \t")
        if not item:
            continue  # empty list elements are allowed (RFC 9110 §5.6.1)
        first, dash, last = item.partition(b"-")
        if not dash or not _digits(first, last):
            return None
        valid_any = True
        if first:
            start = int(first)
            if last:
                end = int(last)
                if end < start:
                    return None
                end = min(end, size - 1)
            else:
                end = size - 1
            if start >= size:
                continue
            out.append((start, end - start + 1))
        else:
            suffix = int(last)
            if suffix == 0 or size == 0:
                continue
            length = min(suffix, size)
            out.append((size - length, length))
    if not valid_any:
        return None
    if not out:
        return UNSATISFIABLE
    if len(out) > 1 and sum(length for _, length in out) > size:
        return None
    return out


def _digits(first: bytes, last: bytes) -> bool:
    if not first and not last:
        return False
    return (not first or first.isdigit()) and (not last or last.isdigit()) and len(first) < 20 and len(last) < 20


def content_range(offset: int, length: int, size: int) -> bytes:
    """The Content-Range value for one satisfied range."""
    return b"bytes %d-%d/%d" % (offset, offset + length - 1, size)
