"""HPACK decoding (RFC 7541) for the server side of edge's HTTP/2 engine: sans-I/O, strict, fast.

One `Decoder` per connection turns each complete header block (a HEADERS payload with its
CONTINUATIONs joined) into a list of (name, value) byte pairs, keeping the dynamic table in step with
the peer's encoder. Fields come back as the peer sent them: no str decoding, no lowercasing, no field
syntax checks (the engine validates fields). Anything RFC 7541 forbids raises `HpackError`, a
COMPRESSION_ERROR after which the connection must end (RFC 9113 §4.3), so nothing is promised about a
decoder's use after an error.

Speed: one loop over the block's octets with the tables in local variables. The static and dynamic
tables share one list whose slot for index i is 128 + i, so a one-octet indexed field (0x81-0xFE,
the commonest representation after the first request) is looked up by its own octet. Huffman strings
go through a byte-at-a-time state machine over the code tree (rows built lazily from hpack's code
table) and a small bounded cache of recently decoded strings, since every new connection from the same
browsers repeats the same Huffman-coded user-agent, accept and sec-ch-ua values.
"""

from __future__ import annotations

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

__all__ = ["Decoder", "HeaderListTooLarge", "HpackError"]


class HpackError(Exception):
    """A header block RFC 7541 forbids: a COMPRESSION_ERROR (RFC 9113 §4.3); the connection must end."""


class HeaderListTooLarge(HpackError):
    """The decoded header list is larger than max_header_list_size (counted as RFC 9113 §6.5.2 says)."""


# --- integers (§5.1) -------------------------------------------------------------------------------

_MAX_INTEGER = (1 << 32) - 1  # §5.1: "Integer encodings that exceed implementation limits ... MUST be
_MAX_SHIFT = 28  # treated as decoding errors": at most 5 continuation octets (enough for 32 bits), ≤ 2^32-1


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The rest of a §5.1 integer whose N-bit prefix was full (`value` = 2^N - 1): (integer, next position).

    Reads past the end raise IndexError, which `Decoder.decode` turns into HpackError.
    """
    shift = 0
    while True:
        octet = data[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        if octet < 0x80:
            break
        shift += 7
        if shift > _MAX_SHIFT:
            raise HpackError("integer longer than 5 continuation octets (RFC 7541 §5.1)")
    if value > _MAX_INTEGER:
        raise HpackError("integer above 2**32-1 (RFC 7541 §5.1)")
    return value, pos


# --- Huffman (§5.2, Appendix B) ------------------------------------------------------------------
#
# The decoder is a state machine whose states are the 256 internal nodes of the code tree (the root is
# "between symbols"), plus a dead state entered on EOS. A state's row has 257 items: for each input
# octet, (next state's row, the symbols completed on the way as bytes); item 256 says whether a string
# may end in that state (§5.2: the root, or up to 7 bits of 1s into the EOS code — padding longer than
# 7 bits, padding that is not all 1s, and EOS itself are decoding errors). The code is complete (every
# bit sequence is a path in the tree), so EOS is the only invalid code. Import builds only the tree; rows
# start empty and are filled on first use (about 60 of the 257 carry ordinary ASCII header text, at
# about 0.2 ms each), so memory follows the traffic: about 1 MB typically, 4.6 MB with every row made.

_EOS = 256
_PAD_DEPTH = 7


def _code_tree() -> list[list[int]]:
    """The code tree: node -> [child for bit 0, child for bit 1]; a child ≥ 0 is a node, ~symbol a leaf."""
    nodes: list[list[int]] = [[0, 0]]
    for symbol in range(257):
        code, length = REQUEST_CODES[symbol], REQUEST_CODES_LENGTH[symbol]
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            child = nodes[node][bit]
            if child == 0:  # 0 (the root) is never a child, so it marks "not made yet"
                child = len(nodes)
                nodes.append([0, 0])
                nodes[node][bit] = child
            node = child
        nodes[node][code & 1] = ~symbol
    return nodes


_TREE = _code_tree()
_DEAD = len(_TREE)  # the state after EOS: absorbs everything, never accepting
_ACCEPTING = {0}
_node = 0
for _ in range(_PAD_DEPTH):
    _node = _TREE[_node][1]
    _ACCEPTING.add(_node)
del _node

_ROWS: list[list] = [[] for _ in range(_DEAD + 1)]
_ROW_STATE = {id(row): state for state, row in enumerate(_ROWS)}
_NIBBLES: list[list[tuple[int, bytes]]] = []  # state -> 16 x (next state, symbols), made on first use
_ROOT = _ROWS[0]


def _nibbles() -> list[list[tuple[int, bytes]]]:
    """The nibble-at-a-time transitions every row is composed from (made once)."""
    if not _NIBBLES:
        for start in range(_DEAD):
            moves = []
            for nibble in range(16):
                state, out = start, bytearray()
                for shift in (3, 2, 1, 0):
                    child = _TREE[state][(nibble >> shift) & 1]
                    if child >= 0:
                        state = child
                    elif ~child == _EOS:  # §5.2: EOS in a string is a decoding error
                        state = _DEAD
                        break
                    else:
                        out.append(~child)
                        state = 0
                moves.append((state, bytes(out)))
            _NIBBLES.append(moves)
        _NIBBLES.append([(_DEAD, b"")] * 16)
    return _NIBBLES


def _fill(row: list) -> None:
    """Fill an empty state row: two nibble steps per octet, then the may-end-here flag."""
    nibbles = _nibbles()
    state = _ROW_STATE[id(row)]
    items: list = []
    for middle, high in nibbles[state]:
        items.extend([(_ROWS[end], high + low) for end, low in nibbles[middle]])
    items.append(state in _ACCEPTING)
    row[:] = items


_CACHE: dict[bytes, bytes] = {}  # encoded -> decoded, for short strings; cleared when full
_CACHE_ENTRIES = 1024
_CACHE_LONGEST = 128  # encoded octets: bounds the cache to about half a megabyte


def _huffman(data: bytes) -> bytes:
    """Decode a Huffman-coded string literal (§5.2), remembering short ones in the cache."""
    row = _ROOT
    parts: list[bytes] = []
    append = parts.append
    for octet in data:
        try:
            row, symbols = row[octet]
        except IndexError:  # a row not made yet (3.11 try blocks cost nothing until they catch)
            _fill(row)
            row, symbols = row[octet]
        append(symbols)
    if not row:
        _fill(row)
    if not row[256]:
        raise HpackError("Huffman string with EOS, or padding that is not 0-7 bits of 1s (RFC 7541 §5.2)")
    decoded = b"".join(parts)
    if len(data) <= _CACHE_LONGEST:
        if len(_CACHE) >= _CACHE_ENTRIES:
            _CACHE.clear()
        _CACHE[data] = decoded
    return decoded


# --- tables (§2.3, §4) ---------------------------------------------------------------------------

_BASE = 128  # index i lives in slot 128 + i, so an indexed field's first octet (0x80 | i) is its slot
_DYNAMIC = _BASE + len(HeaderTable.STATIC_TABLE) + 1  # slot of dynamic index 62 (the newest entry)
_ENTRY_OVERHEAD = 32  # §4.1
_INITIAL_TABLE_SIZE = 4096  # RFC 9113 §6.5.2: SETTINGS_HEADER_TABLE_SIZE before any SETTINGS
_SLOTS: tuple = (None,) * (_BASE + 1) + tuple(HeaderTable.STATIC_TABLE)  # slot 128 is index 0: invalid
_STATIC_LARGEST = max(len(name) + len(value) + _ENTRY_OVERHEAD for name, value in HeaderTable.STATIC_TABLE)


class Decoder:
    """The receiving half of one connection's HPACK context: decodes its header blocks in arrival order.

    `max_table_size` is the SETTINGS_HEADER_TABLE_SIZE in force: raise it when you advertise more; lower
    it only once the peer has acknowledged the lower value (RFC 9113 §6.5.3) — the peer's next block must
    then begin with a size update that fits it (RFC 7541 §4.2), or decoding fails. The table itself
    starts at 4096 octets (RFC 9113 §6.5.2) whatever the limit, and moves only by the peer's updates.
    """

    __slots__ = ("max_table_size", "max_header_list_size", "_slots", "_table_size", "_capacity", "_largest")

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 65536) -> None:
        """A fresh context: an empty dynamic table of 4096 octets."""
        self.max_table_size = max_table_size
        self.max_header_list_size = max_header_list_size
        self._slots: list = list(_SLOTS)  # slot 128 + i -> (name, value) of index i; dynamic newest first
        self._table_size = 0  # §4.1: the dynamic entries' sizes summed
        self._capacity = _INITIAL_TABLE_SIZE  # §4.2: the maximum size the encoder last chose
        self._largest = _STATIC_LARGEST  # no entry either table ever held is larger (bounds indexed fields)

    @property
    def dynamic_table(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table's entries, newest (index 62) first."""
        return self._slots[_DYNAMIC:]

    @property
    def table_size(self) -> int:
        """The dynamic table's size in §4.1 octets (each entry: name + value + 32)."""
        return self._table_size

    @property
    def table_capacity(self) -> int:
        """The dynamic table's maximum size as the peer's encoder last set it (§4.2)."""
        return self._capacity

    def decode(self, block: bytes | memoryview) -> list[tuple[bytes, bytes]]:
        """Decode one complete header block into (name, value) pairs; HpackError if it breaks RFC 7541."""
        data = block if type(block) is bytes else bytes(block)
        end = len(data)
        capacity = self._capacity
        if capacity > self.max_table_size and not (end and data[0] & 0xE0 == 0x20):
            # §4.2: a lowered limit must be met by a size update at the start of the next block.
            raise HpackError(f"dynamic table of {capacity} octets not shrunk to {self.max_table_size} by a"
                             " size update at the start of the block (RFC 7541 §4.2)")
        slots = self._slots
        used = self._table_size
        largest = self._largest
        limit = self.max_header_list_size
        cached = _CACHE.get
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        total = 0  # RFC 9113 §6.5.2 size (name + value + 32) of the literal fields so far
        pos = 0
        try:  # an IndexError below: the block ends inside a representation, or an index is past the tables
            while pos < end:
                octet = data[pos]
                if 0x80 < octet < 0xFF:  # §6.1 indexed field, index 1-126: the octet is its own slot
                    append(slots[octet])
                    pos += 1
                    continue
                pos += 1
                if octet & 0x80:  # §6.1 indexed field, index 0 or ≥ 127
                    if octet == 0x80:
                        raise HpackError("indexed field with index 0 (RFC 7541 §6.1)")
                    index, pos = _integer(data, pos, 0x7F)
                    append(slots[_BASE + index])
                    continue
                if octet & 0x40:  # §6.2.1 literal with incremental indexing: 6-bit name index
                    index = octet & 0x3F
                    if index == 0x3F:
                        index, pos = _integer(data, pos, 0x3F)
                    indexing = True
                elif octet & 0x20:  # §6.3 dynamic table size update
                    if headers:  # §4.2: only at the beginning of a header block
                        raise HpackError("dynamic table size update after a field (RFC 7541 §4.2)")
                    capacity = octet & 0x1F
                    if capacity == 0x1F:
                        capacity, pos = _integer(data, pos, 0x1F)
                    if capacity > self.max_table_size:  # §6.3: above the limit is a decoding error
                        raise HpackError(f"dynamic table size update to {capacity}, above the"
                                         f" {self.max_table_size} advertised (RFC 7541 §6.3)")
                    while used > capacity:  # §4.3: evict from the end until it fits
                        name, value = slots.pop()
                        used -= len(name) + len(value) + _ENTRY_OVERHEAD
                    continue
                else:  # §6.2.2 without indexing (0000), §6.2.3 never indexed (0001): 4-bit name index
                    index = octet & 0x0F
                    if index == 0x0F:
                        index, pos = _integer(data, pos, 0x0F)
                    indexing = False
                if index:
                    name = slots[_BASE + index][0]
                else:  # §5.2 name string: H bit, 7-bit length, octets
                    octet = data[pos]
                    pos += 1
                    length = octet & 0x7F
                    if length == 0x7F:
                        length, pos = _integer(data, pos, 0x7F)
                    stop = pos + length
                    if stop > end:
                        raise HpackError("string literal runs past the end of the block (RFC 7541 §5.2)")
                    name = data[pos:stop]
                    pos = stop
                    if octet & 0x80:
                        name = cached(name) or _huffman(name)
                # §5.2 value string: parsed inline like the name above (a call per string costs more than
                # the rest of a literal's decoding on this path).
                octet = data[pos]
                pos += 1
                length = octet & 0x7F
                if length == 0x7F:
                    length, pos = _integer(data, pos, 0x7F)
                stop = pos + length
                if stop > end:
                    raise HpackError("string literal runs past the end of the block (RFC 7541 §5.2)")
                value = data[pos:stop]
                pos = stop
                if octet & 0x80:
                    value = cached(value) or _huffman(value)
                field = (name, value)
                append(field)
                size = len(name) + len(value) + _ENTRY_OVERHEAD
                total += size
                if total > limit:
                    raise HeaderListTooLarge(f"decoded header list over {limit} octets (RFC 9113 §6.5.2)")
                if indexing:  # §4.4: add the entry, evicting from the end first
                    if size > capacity:  # larger than the whole table: it empties the table, is not added
                        del slots[_DYNAMIC:]
                        used = 0
                    else:
                        used += size
                        while used > capacity:
                            name, value = slots.pop()
                            used -= len(name) + len(value) + _ENTRY_OVERHEAD
                        slots.insert(_DYNAMIC, field)
                        if size > largest:
                            largest = size
        except IndexError:
            raise HpackError("header block truncated inside a representation, or an index past the static"
                             " and dynamic tables (RFC 7541 §2.3.3)") from None
        finally:
            self._table_size = used
            self._capacity = capacity
            self._largest = largest
        # Indexed fields were not counted one by one (they copy nothing, so memory stays bounded by the
        # block's length): each is at most `largest`, and they are counted exactly only if that could matter.
        if total + len(headers) * largest > limit:
            total = sum([len(name) + len(value) for name, value in headers]) + _ENTRY_OVERHEAD * len(headers)
            if total > limit:
                raise HeaderListTooLarge(f"decoded header list over {limit} octets (RFC 9113 §6.5.2)")
        return headers
