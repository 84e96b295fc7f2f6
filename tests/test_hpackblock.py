"""Stateless HPACK blocks (edge/hpackblock.py) decode to the same list, leave the decoder's table empty."""

from __future__ import annotations

import pytest
from hpack import Decoder

from edge.hpackblock import encode_block, encode_field


@pytest.mark.parametrize("headers", [
    [(b":status", b"200"), (b"server", b"edge"), (b"content-type", b"text/plain; charset=utf-8"),
     (b"content-length", b"1024"), (b"etag", b'"a-b-c"'), (b"x-custom", b"v" * 300)],
    [(b":status", b"404")],
    [(b":status", b"206"), (b"content-range", b"bytes 0-9/100"), (b"cache-control", b"")],
    [(b":status", b"103"), (b"link", b"</s.css>; rel=preload")],
    [(b"x-" + b"n" * 200, b"y" * 5000)],  # lengths past the 7-bit and 4-bit prefixes
])
def test_round_trip_through_a_real_decoder(headers):
    decoder = Decoder()
    block = encode_block(headers)
    assert decoder.decode(block, raw=True) == headers
    assert len(decoder.header_table.dynamic_entries) == 0, "a stateless block must not add table entries"
    # The same bytes decode the same way again: the block can be cached and reused.
    assert decoder.decode(block, raw=True) == headers


def test_static_matches_are_single_bytes():
    assert encode_field(b":status", b"200") == b"\x88"
    assert encode_field(b":status", b"404") == b"\x8d"
    assert encode_field(b"content-type", b"x") == b"\x0f\x10\x01x"  # name index 31, 4-bit prefix
