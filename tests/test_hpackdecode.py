"""edge/hpackdecode.py: the RFC 7541 Appendix C examples, every malformed case, the limits, and hpack as an oracle."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from edge import hpackdecode
from edge.hpackblock import encode_block
from edge.hpackdecode import Decoder, HeaderListTooLarge, HpackError

HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def fields(text: str) -> list[tuple[bytes, bytes]]:
    """'name: value' lines, as the RFC lists them, to (name, value) pairs."""
    out = []
    for line in text.strip().splitlines():
        name, _, value = line.strip().partition(": ")
        out.append((name.encode(), value.encode()))
    return out


# --- RFC 7541 Appendix C ---------------------------------------------------------------------------
# Each step: (hex of the block, the header list, the dynamic table after it newest first, its size).

C2 = [
    ("C.2.1", "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
     "custom-key: custom-header", "custom-key: custom-header", 55),
    ("C.2.2", "040c 2f73 616d 706c 652f 7061 7468", ":path: /sample/path", "", 0),
    ("C.2.3", "1008 7061 7373 776f 7264 0673 6563 7265 74", "password: secret", "", 0),
    ("C.2.4", "82", ":method: GET", "", 0),
]

REQUEST_1 = ":method: GET\n:scheme: http\n:path: /\n:authority: www.example.com"
REQUEST_2 = REQUEST_1 + "\ncache-control: no-cache"
REQUEST_3 = ":method: GET\n:scheme: https\n:path: /index.html\n:authority: www.example.com\ncustom-key: custom-value"
TABLE_1 = ":authority: www.example.com"
TABLE_2 = "cache-control: no-cache\n" + TABLE_1
TABLE_3 = "custom-key: custom-value\n" + TABLE_2

C3 = [  # requests without Huffman coding, one connection
    ("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", REQUEST_1, TABLE_1, 57),
    ("8286 84be 5808 6e6f 2d63 6163 6865", REQUEST_2, TABLE_2, 110),
    ("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65", REQUEST_3, TABLE_3, 164),
]
C4 = [  # the same requests with Huffman coding
    ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", REQUEST_1, TABLE_1, 57),
    ("8286 84be 5886 a8eb 1064 9cbf", REQUEST_2, TABLE_2, 110),
    ("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", REQUEST_3, TABLE_3, 164),
]

DATE_1 = "date: Mon, 21 Oct 2013 20:13:21 GMT"
DATE_2 = "date: Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = "location: https://www.example.com"
COOKIE = "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSE_1 = f":status: 302\ncache-control: private\n{DATE_1}\n{LOCATION}"
RESPONSE_2 = f":status: 307\ncache-control: private\n{DATE_1}\n{LOCATION}"
RESPONSE_3 = f":status: 200\ncache-control: private\n{DATE_2}\n{LOCATION}\ncontent-encoding: gzip\n{COOKIE}"
RTABLE_1 = f"{LOCATION}\n{DATE_1}\ncache-control: private\n:status: 302"
RTABLE_2 = f":status: 307\n{LOCATION}\n{DATE_1}\ncache-control: private"  # ":status: 302" evicted
RTABLE_3 = f"{COOKIE}\ncontent-encoding: gzip\n{DATE_2}"  # three more evicted

C5 = [  # responses without Huffman coding, 256-octet table
    ("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32"
     " 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", RESPONSE_1, RTABLE_1, 222),
    ("4803 3330 37c1 c0bf", RESPONSE_2, RTABLE_2, 222),
    ("88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970"
     " 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61"
     " 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31", RESPONSE_3, RTABLE_3, 215),
]
C6 = [  # the same responses with Huffman coding
    ("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad"
     " 1718 63c7 8f0b 97c8 e9ae 82ae 43d3", RESPONSE_1, RTABLE_1, 222),
    ("4883 640e ffc1 c0bf", RESPONSE_2, RTABLE_2, 222),
    ("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2"
     " e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
     RESPONSE_3, RTABLE_3, 215),
]

# The RFC's response examples assume a table already at 256 octets; a real peer gets there by a size
# update (§6.3) at the start of its first block after the SETTINGS change: 0x3f e1 01 = 31 + 225.
TO_256 = "3fe101"


@pytest.mark.parametrize("name, block, headers, table, size", C2, ids=[case[0] for case in C2])
def test_c2_single_representations(name, block, headers, table, size):
    decoder = Decoder()
    assert decoder.decode(unhex(block)) == fields(headers)
    assert decoder.dynamic_table == (fields(table) if table else [])
    assert decoder.table_size == size


@pytest.mark.parametrize("steps, max_table_size, prefix", [
    (C3, 4096, ""), (C4, 4096, ""), (C5, 256, TO_256), (C6, 256, TO_256),
], ids=["C.3", "C.4", "C.5", "C.6"])
def test_appendix_c_sequences(steps, max_table_size, prefix):
    decoder = Decoder(max_table_size=max_table_size)
    oracle = hpack.Decoder()
    for number, (block, headers, table, size) in enumerate(steps):
        data = unhex((prefix if number == 0 else "") + block)
        assert decoder.decode(data) == fields(headers)
        assert decoder.dynamic_table == fields(table)
        assert decoder.table_size == size
        assert decoder.table_capacity == max_table_size
        assert oracle.decode(data, raw=True) == fields(headers)  # the hex above is typed right


@pytest.mark.parametrize("text", [
    "www.example.com", "no-cache", "custom-key", "custom-value", "302", "private", "gzip",
    "Mon, 21 Oct 2013 20:13:21 GMT", "https://www.example.com",
    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
])
def test_c4_c6_huffman_strings_match_an_independent_encoder(text):
    """The Huffman hex typed above is what hpack's encoder makes of the same strings."""
    coded = HUFFMAN.encode(text.encode()).hex()
    assert any(coded in block.replace(" ", "") for block, *_ in C4 + C6)


# --- malformed blocks -----------------------------------------------------------------------------

MALFORMED = [
    ("80", "indexed field with index 0 (§6.1)"),
    ("be", "index 62: the dynamic table is empty"),
    ("ff00", "index 127, past the tables"),
    ("fff0ffffff0f", "index near 2^32, past the tables"),
    ("ff", "integer cut off after its prefix"),
    ("ff80", "integer cut off in its continuation"),
    ("ff8080808080", "integer cut off after 5 continuation octets"),
    ("ff808080808000", "integer of 6 continuation octets (§5.1 implementation limit)"),
    ("ffffffffff7f", "integer near 2^35, above 2^32-1"),
    ("7e0161", "literal name index 62: the dynamic table is empty"),
    ("0f2f0161", "4-bit name index 15+47 = 62: the dynamic table is empty"),
    ("1f2f0161", "never-indexed name index 62: the dynamic table is empty"),
    ("40", "literal with incremental indexing cut off before the name"),
    ("4003616263", "literal cut off before the value"),
    ("41", "indexed-name literal cut off before the value"),
    ("41036162", "value length 3, 2 octets left"),
    ("4005616263", "name length 5, 3 octets left"),
    ("00", "literal without indexing cut off"),
    ("10", "never-indexed literal cut off"),
    ("007f", "name length cut off in its continuation"),
    ("007fffffffff0f", "name length above 2^32-1"),
    ("007ff0ffffff07", "name length 2^31: past the block"),
    ("04ff", "value length cut off"),
    ("000161 84ffffffff", "Huffman: EOS (30 ones) inside the string (§5.2)"),
    ("000161 81ff", "Huffman: 8 bits of padding (§5.2)"),
    ("000161 821fff", "Huffman: 'a' then 11 bits of padding (§5.2)"),
    ("000161 8118", "Huffman: 'a' then padding of 0s (§5.2)"),
    ("000161 811c", "Huffman: 'a' then padding 100, not all 1s (§5.2)"),
    ("000161 81fe", "Huffman: 7 ones then a 0: a cut-off code, not padding (§5.2)"),
    ("0081ff 0161", "Huffman name with 8 bits of padding (§5.2)"),
    ("8220", "size update after a field (§4.2)"),
    ("82 3fe11f", "size update to 4096 after a field (§4.2)"),
    ("3fe21f", "size update to 4097, above the 4096 advertised (§6.3)"),
    ("3fffffffff0f", "size update near 2^32 (§6.3)"),
    ("3f", "size update cut off"),
]


@pytest.mark.parametrize("block, why", MALFORMED, ids=[why for _, why in MALFORMED])
def test_malformed_blocks_raise(block, why):
    with pytest.raises(HpackError) as caught:
        Decoder().decode(unhex(block))
    assert not isinstance(caught.value, HeaderListTooLarge)
    with pytest.raises(HPACKError):  # hpack agrees each is malformed
        hpack.Decoder().decode(unhex(block), raw=True)


@pytest.mark.parametrize("block, headers", [
    ("000161 811f", [(b"a", b"a")]),  # 'a' (00011) + 3 bits of 1s
    ("000161 80", [(b"a", b"")]),  # an empty Huffman string
    ("000161 00", [(b"a", b"")]),
    ("0000 00", [(b"", b"")]),  # an empty name is the engine's to reject, not HPACK's
    ("3fe11f 82", [(b":method", b"GET")]),  # size update to exactly 4096
    ("20 3fe11f 82", [(b":method", b"GET")]),  # two updates (§4.2: the smallest, then the final)
    ("20", []),  # a block of a size update alone
    ("", []),
    ("0f8080808000 0161", [(b"accept-charset", b"a")]),  # name index 15 in 5 continuation octets (overlong)
    ("ff808080800000", None),  # index 127 in 5 continuation octets: past the tables
    ("7f00 0161 0162", None),  # 6-bit name index 63: past the tables -> error
])
def test_edge_cases(block, headers):
    data = unhex(block)
    if headers is None:
        with pytest.raises(HpackError):
            Decoder().decode(data)
        return
    assert Decoder().decode(data) == headers


def test_huffman_padding_of_0_to_7_bits_is_accepted():
    pads = set()
    for text in (b"a", b"!", b"{", b"b", b"a{", b"ab", b"!{", b"!b", b"\x00", b"\xff", b"a9Z~\x7f"):
        coded = HUFFMAN.encode(text)
        pad = len(coded) * 8 - sum(REQUEST_CODES_LENGTH[c] for c in text)
        pads.add(pad)
        block = b"\x00\x01a" + bytes([0x80 | len(coded)]) + coded
        assert Decoder().decode(block) == [(b"a", text)]
    assert pads == set(range(8))


def test_huffman_agrees_with_hpack_on_every_short_string():
    """Every 1- and 2-octet Huffman string and a sample of 3-5 octet ones: same text, or both reject."""
    rng = random.Random(3)
    samples = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(3, 6))) for _ in range(5000)]
    samples += [s[:-1] + bytes([s[-1] | 0x3F]) for s in samples[-5000:]]  # endings more likely valid
    accepted = 0
    for coded in samples:
        try:
            expected = decode_huffman(coded)
        except HPACKError:
            with pytest.raises(HpackError):
                hpackdecode._huffman(coded)
            continue
        accepted += 1
        assert hpackdecode._huffman(coded) == expected, coded.hex()
    assert 1000 < accepted < len(samples) - 1000


def test_memoryview_and_bytearray_blocks():
    block = unhex(C4[0][0])
    assert Decoder().decode(memoryview(block)) == fields(REQUEST_1)
    assert Decoder().decode(bytearray(block)) == fields(REQUEST_1)
    assert Decoder().decode(memoryview(b"xx" + block)[2:]) == fields(REQUEST_1)


# --- limits ---------------------------------------------------------------------------------------

def test_size_update_above_the_advertised_limit():
    decoder = Decoder(max_table_size=8192)
    decoder.decode(unhex("3fe13f"))  # 31 + 8161 = 8192: allowed
    assert decoder.table_capacity == 8192
    with pytest.raises(HpackError):
        decoder.decode(unhex("3fe23f"))  # 8193


def test_size_update_in_the_middle_of_a_block():
    with pytest.raises(HpackError):
        Decoder().decode(unhex("82 20 82"))
    with pytest.raises(HpackError):
        Decoder().decode(unhex("4003616263 0378797a 20"))  # after a literal too


def test_lowered_limit_needs_an_update_first():
    """§4.2: once the peer has acknowledged a lower table size, its next block starts with a size update."""
    decoder = Decoder()
    decoder.decode(unhex("4003616263 0378797a"))  # an entry of 38 octets
    decoder.max_table_size = 100
    with pytest.raises(HpackError):
        decoder.decode(unhex("82"))
    decoder = Decoder()
    decoder.decode(unhex("4003616263 0378797a"))
    decoder.max_table_size = 100
    assert decoder.decode(unhex("3f45 be")) == [(b"abc", b"xyz")]  # 31 + 69 = 100; the entry survives
    assert decoder.table_capacity == 100
    assert decoder.decode(unhex("be")) == [(b"abc", b"xyz")]  # no further update needed
    decoder.max_table_size = 4096  # raising the limit asks for nothing
    assert decoder.decode(unhex("be")) == [(b"abc", b"xyz")]


def test_size_update_evicts_and_zero_empties():
    decoder = Decoder()
    decoder.decode(unhex(C3[0][0]))
    decoder.decode(unhex(C3[1][0]))
    assert decoder.table_size == 110
    decoder.decode(unhex("3f1a"))  # to 31 + 26 = 57: eviction from the end drops the oldest, :authority
    assert decoder.dynamic_table == [(b"cache-control", b"no-cache")]
    assert decoder.table_size == 53
    decoder.decode(unhex("20"))
    assert decoder.dynamic_table == [] and decoder.table_size == 0
    with pytest.raises(HpackError):
        decoder.decode(unhex("be"))
    decoder.decode(unhex("4003616263 0378797a"))  # a table of 0: nothing is added
    assert decoder.dynamic_table == []


def test_an_entry_larger_than_the_table_empties_it():
    decoder = Decoder(max_table_size=256)
    decoder.decode(unhex(TO_256 + "4003616263 0378797a"))
    assert decoder.table_size == 38
    big = b"v" * 250  # 3 + 250 + 32 > 256
    headers = decoder.decode(b"\x7e\x7f" + bytes([250 - 127]) + big)  # name index 62 ("abc"), value 250
    assert headers == [(b"abc", big)]
    assert decoder.dynamic_table == [] and decoder.table_size == 0


def test_new_entry_may_name_the_entry_it_evicts():
    """§4.4: the name is taken before the eviction that adding the entry causes."""
    decoder = Decoder(max_table_size=100)
    decoder.decode(unhex("3f45 4003616263 0378797a"))  # table of 100; abc: xyz is 38
    value = b"w" * 30  # abc + 30 + 32 = 65; 38 + 65 > 100 evicts abc: xyz
    assert decoder.decode(b"\x7e" + bytes([30]) + value) == [(b"abc", value)]
    assert decoder.dynamic_table == [(b"abc", value)]
    assert decoder.table_size == 65


def test_indexes_past_the_one_octet_prefix():
    """Dynamic entries at index 127 and beyond (a 7-bit prefix full, §5.1), and the first past the end."""
    decoder = Decoder()
    decoder.decode(b"".join(b"\x40\x01n\x02%02d" % i for i in range(70)))  # e0..e69, 35 octets each
    assert decoder.table_size == 70 * 35
    assert decoder.decode(b"\xfe") == [(b"n", b"05")]  # index 126 = 62 + 64: e69 - 64
    assert decoder.decode(b"\xff\x00") == [(b"n", b"04")]  # index 127
    assert decoder.decode(b"\xff\x04") == [(b"n", b"00")]  # index 131: e0, the oldest
    assert decoder.decode(b"\x7f\x44\x01z") == [(b"n", b"z")]  # name index 63 + 68 = 131 (6-bit prefix)
    assert decoder.decode(b"\xff\x05") == [(b"n", b"00")]  # the new entry pushed e0 to 132
    with pytest.raises(HpackError):
        decoder.decode(b"\xff\x06")  # index 133: one past the oldest


def test_never_indexed_and_without_indexing_leave_the_table_alone():
    decoder = Decoder()
    assert decoder.decode(unhex("0003616263 0378797a 1003616263 0378797a 04 0161")) == [
        (b"abc", b"xyz"), (b"abc", b"xyz"), (b":path", b"a")]
    assert decoder.dynamic_table == []


def test_header_list_too_large():
    decoder = Decoder(max_header_list_size=84)  # :method GET is 7 + 3 + 32 = 42
    assert decoder.decode(unhex("8282")) == [(b":method", b"GET")] * 2
    with pytest.raises(HeaderListTooLarge):
        Decoder(max_header_list_size=83).decode(unhex("8282"))
    with pytest.raises(HeaderListTooLarge):
        Decoder(max_header_list_size=79).decode(unhex("82 4003616263 0378797a"))  # 42 + 38 = 80
    assert Decoder(max_header_list_size=80).decode(unhex("82 4003616263 0378797a"))
    decoder = Decoder(max_table_size=1 << 20)  # 64 KiB by default: a 60 KB entry fits once, not twice
    value = b"x" * 60000
    assert decoder.decode(b"\x3f" + _tail((1 << 20) - 31) + b"\x40\x01a\x7f" + _tail(60000 - 127) + value)
    assert decoder.decode(b"\xbe") == [(b"a", value)]
    with pytest.raises(HeaderListTooLarge):  # indexed fields are counted too
        decoder.decode(b"\xbe\xbe")
    assert issubclass(HeaderListTooLarge, HpackError)


def _tail(value: int) -> bytes:
    """The continuation octets of a §5.1 integer (what follows a full prefix)."""
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_huge_integers():
    with pytest.raises(HpackError):
        Decoder().decode(b"\xff" + b"\xff" * 4 + b"\x0f")  # 127 + 2^32 - 1: above 2^32 - 1
    with pytest.raises(HpackError):
        Decoder().decode(b"\x00\x7f" + b"\x80" * 10 + b"\x01")  # overlong: never accepted past 5 octets
    with pytest.raises(HpackError):
        Decoder(max_table_size=(1 << 32) - 1).decode(b"\x3f" + _tail((1 << 32) - 31))  # 2^32: one too many
    decoder = Decoder(max_table_size=(1 << 32) - 1)
    assert decoder.decode(b"\x3f" + _tail((1 << 32) - 32)) == []  # 2^32 - 1 is the largest integer
    assert decoder.table_capacity == (1 << 32) - 1


def test_huffman_cache_stays_bounded():
    hpackdecode._CACHE.clear()
    rng = random.Random(7)
    for _ in range(hpackdecode._CACHE_ENTRIES * 2 + 10):
        text = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 40)))
        coded = HUFFMAN.encode(text)
        assert Decoder().decode(b"\x00\x01a" + bytes([0x80 | len(coded)]) + coded) == [(b"a", text)]
        assert len(hpackdecode._CACHE) <= hpackdecode._CACHE_ENTRIES
    long_text = b"z" * 400
    coded = HUFFMAN.encode(long_text)
    block = b"\x00\x01a\xff" + _tail(len(coded) - 127) + coded
    assert Decoder().decode(block) == [(b"a", long_text)]
    assert coded not in hpackdecode._CACHE  # long strings are not kept
    bad = bytes.fromhex("ffffffff")
    with pytest.raises(HpackError):
        Decoder().decode(b"\x00\x01a\x84" + bad)
    assert bad not in hpackdecode._CACHE  # nor failures


# --- hpack as a differential oracle ---------------------------------------------------------------

STATIC_NAMES = sorted({name for name, _ in HeaderTable.STATIC_TABLE})
STATIC_PAIRS = list(HeaderTable.STATIC_TABLE)


def random_field(rng: random.Random) -> tuple[bytes, bytes]:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(STATIC_PAIRS)
    if roll < 0.55:
        name = rng.choice(STATIC_NAMES)
    else:
        name = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz-_0123456789") for _ in range(rng.randrange(1, 24)))
    kind = rng.random()
    if kind < 0.1:
        value = b""
    elif kind < 0.15:
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))  # any octet, even 0 and 0xff
    elif kind < 0.22:
        value = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(200, 5000)))  # long, some > the table
    else:
        value = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 60)))
    return name, value


def random_list(rng: random.Random, earlier: list[tuple[bytes, bytes]]) -> list:
    """Up to 15 fields, some repeated from `earlier` (so the encoder refers to its dynamic table)."""
    headers = [rng.choice(earlier) if earlier and rng.random() < 0.4 else random_field(rng)
               for _ in range(rng.randrange(0, 16))]
    if headers and rng.random() < 0.2:  # sensitive: the never-indexed representation (§6.2.3)
        i = rng.randrange(len(headers))
        headers[i] = NeverIndexedHeaderTuple(*headers[i])
    return headers


def hpack_tables(oracle: hpack.Decoder) -> tuple[list[tuple[bytes, bytes]], int]:
    table = oracle.header_table
    return [tuple(entry) for entry in table.dynamic_entries], table._current_size


@pytest.mark.parametrize("seed", range(6))
def test_differential_against_hpack_on_one_connection(seed):
    rng = random.Random(seed)
    encoder = hpack.Encoder()
    oracle = hpack.Decoder(max_header_list_size=1 << 20)
    oracle.max_allowed_table_size = 8192
    decoder = Decoder(max_table_size=8192, max_header_list_size=1 << 20)
    earlier: list[tuple[bytes, bytes]] = []
    for _ in range(60):
        if rng.random() < 0.1:  # table size changes, sometimes two between blocks (§4.2)
            for _ in range(rng.choice((1, 1, 2))):
                encoder.header_table_size = rng.choice((0, 64, 256, 1000, 4096, 8192))
        if rng.random() < 0.1:  # a stateless block (literals without indexing, §6.2.2) between them
            block = encode_block([(n, v) for n, v in (random_field(rng) for _ in range(rng.randrange(1, 6)))])
        else:
            headers = random_list(rng, earlier)
            earlier += [tuple(h) for h in headers]
            block = encoder.encode(headers, huffman=rng.random() < 0.6)
        expected = [tuple(h) for h in oracle.decode(block, raw=True)]
        assert decoder.decode(block) == expected
        assert (decoder.dynamic_table, decoder.table_size) == hpack_tables(oracle)
        assert decoder.table_capacity == oracle.header_table_size


@pytest.mark.parametrize("seed", range(4))
def test_differential_header_list_limit(seed):
    rng = random.Random(100 + seed)
    for _ in range(40):
        encoder = hpack.Encoder()
        limit = rng.randrange(40, 800)
        oracle = hpack.Decoder(max_header_list_size=limit)
        decoder = Decoder(max_header_list_size=limit)
        for _ in range(5):
            block = encoder.encode(random_list(rng, []), huffman=rng.random() < 0.5)
            try:
                expected = oracle.decode(block, raw=True)
            except OversizedHeaderListError:
                with pytest.raises(HeaderListTooLarge):
                    decoder.decode(block)
                break
            assert decoder.decode(block) == [tuple(h) for h in expected]


def mutations(rng: random.Random, valid: list[bytes]) -> bytes:
    """Garbage: random octets, or a valid block flipped, cut, spliced, or with random Huffman bits."""
    kind = rng.randrange(6)
    if kind == 0 or not valid:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24)))
    block = bytearray(rng.choice(valid))
    if not block:
        return bytes([rng.randrange(256)])
    if kind == 1:
        for _ in range(rng.randrange(1, 4)):
            block[rng.randrange(len(block))] = rng.randrange(256)
    elif kind == 2:
        del block[rng.randrange(len(block)):]
    elif kind == 3:
        at = rng.randrange(len(block) + 1)
        block[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    elif kind == 4:
        block[rng.randrange(len(block))] ^= 1 << rng.randrange(8)
    else:  # a literal whose Huffman value is random bits: exercises padding and EOS rules
        bits = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
        if rng.random() < 0.5:
            bits = bits[:-1] + bytes([bits[-1] | rng.choice((0x01, 0x03, 0x07, 0x0F, 0x1F, 0x3F, 0x7F, 0xFF))])
        block += b"\x00\x01a" + bytes([0x80 | len(bits)]) + bits
    return bytes(block)


# Deliberate differences from hpack 4.2.0, none visible as an accept/reject difference:
# - integers: hpack accepts up to 5 continuation octets whatever the value (up to ~2^35); edge also
#   rejects values above 2^32-1. Every such value is an index past the tables, a string longer than
#   any block, or a size update above any limit, so hpack rejects those blocks too, a step later.
# - a limit lowered without a size update: hpack checks the table at the end of the block, edge at its
#   start (§4.2 puts the update there); either way the block is rejected.
# - the header list limit: hpack counts each field as it goes; edge counts literal fields as it goes and
#   indexed ones at the end (they copy nothing), so a block both oversized and malformed may raise the
#   other HpackError first. Both are connection errors.
@pytest.mark.parametrize("seed", range(5))
def test_differential_garbage(seed):
    rng = random.Random(1000 + seed)
    encoder = hpack.Encoder()
    valid: list[bytes] = []
    earlier: list[tuple[bytes, bytes]] = []
    for _ in range(40):
        headers = [h for h in random_list(rng, earlier) if len(h[1]) < 200]
        earlier += [tuple(h) for h in headers]
        valid.append(encoder.encode(headers, huffman=rng.random() < 0.7))
    valid += [unhex(block) for block, *_ in C3 + C4]
    oracle, decoder = hpack.Decoder(), Decoder()
    rejected = accepted = 0
    for _ in range(800):
        block = mutations(rng, valid)
        try:
            expected = oracle.decode(block, raw=True)
        except HPACKError:
            rejected += 1
            with pytest.raises(HpackError):
                decoder.decode(block)
            oracle, decoder = hpack.Decoder(), Decoder()  # the connection ends
            continue
        accepted += 1
        assert decoder.decode(block) == [tuple(h) for h in expected], block.hex()
        assert (decoder.dynamic_table, decoder.table_size) == hpack_tables(oracle)
    assert rejected > 300 and accepted > 40  # both sides of the comparison were exercised


def test_header_tuples_from_hpack_compare_as_plain_tuples():
    """hpack returns tuple subclasses; the oracle comparisons above rely on them equalling tuples."""
    assert HeaderTuple(b"a", b"b") == (b"a", b"b")
    assert NeverIndexedHeaderTuple(b"a", b"b") == (b"a", b"b")
