"""Table-driven tests of Accept-Encoding negotiation (edge.negotiation)."""

import pytest

from edge.negotiation import choose_encoding, parse_accept_encoding

BOTH = ("br", "gzip")

CASES = [
    (None, BOTH, None),
    (b"", BOTH, None),
    (b"gzip, deflate, br", BOTH, "br"),
    (b"gzip", BOTH, "gzip"),
    (b"br", ("gzip",), None),
    (b"br;q=0, gzip", BOTH, "gzip"),
    (b"br;q=0.5, gzip;q=0.8", BOTH, "gzip"),
    (b"br;q=0.8, gzip;q=0.8", BOTH, "br"),
    (b"*", BOTH, "br"),
    (b"*;q=0", BOTH, None),
    (b"*, br;q=0", BOTH, "gzip"),
    (b"identity", BOTH, None),
    (b"gzip;q=0.5, identity;q=1", BOTH, None),
    (b"gzip;q=0.5, identity;q=0", BOTH, "gzip"),
    (b"x-gzip", BOTH, "gzip"),
    (b"GZIP", BOTH, "gzip"),
    (b"gzip;q=nonsense", BOTH, None),
    (b"gzip;q=2", BOTH, None),
    (b"deflate", BOTH, None),
]


@pytest.mark.parametrize("accept, available, expected", CASES)
def test_choose_encoding(accept, available, expected):
    assert choose_encoding(accept, available) == expected


def test_parse_q_values():
    assert parse_accept_encoding(b"br;q=0.3, gzip ; q=1.0 , identity;q=0") == {"br": 0.3, "gzip": 1.0, "identity": 0.0}
