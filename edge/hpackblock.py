"""Stateless HPACK (RFC 7541): header blocks that use only the static table, so one block can be reused."""

from __future__ import annotations

from hpack.table import HeaderTable

# Static table (1-based): full (name, value) matches are sent as one index; names alone as a reference.
_FULL = {pair: i + 1 for i, pair in enumerate(HeaderTable.STATIC_TABLE)}
_NAME: dict[bytes, int] = {}
for _i, (_name, _) in enumerate(HeaderTable.STATIC_TABLE):
    _NAME.setdefault(_name, _i + 1)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer with an N-bit prefix; `first` holds the pattern bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """A string literal without Huffman coding."""
    return _integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field: an indexed static entry, else a literal without indexing (§6.2.2) — never touches a table."""
    index = _FULL.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    index = _NAME.get(name)
    if index is not None:
        return _integer(index, 4, 0) + _string(value)
    return b"\x00" + _string(name) + _string(value)


def encode_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole header block from lower-case (name, value) pairs."""
    return b"".join(encode_field(name, value) for name, value in headers)
