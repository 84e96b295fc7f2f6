"""Structured Field Values (edge/sfv.py, RFC 8941): the RFC's examples and edge cases of our own."""

from __future__ import annotations

import pytest

from edge.sfv import SFError, Token, parse_dictionary, parse_item, parse_list

T = Token


def plain(members):
    """Members or items with their parameters, every Token marked ("T:name") so a token never equals a string."""
    if isinstance(members, dict):
        return {k: plain(v) for k, v in members.items()}
    if isinstance(members, list):
        return [plain(v) for v in members]
    if isinstance(members, tuple):
        return tuple(plain(v) for v in members)
    if isinstance(members, Token):
        return f"T:{members}"
    return members


@pytest.mark.parametrize("value, parsed", [
    # RFC 8941 §3.2's examples
    ('en="Applepie", da=:w4ZibGV0w6ZydGUK:', {"en": ("Applepie", {}), "da": ("Æbletærte\n".encode(), {})}),
    ("a=?0, b, c; foo=bar", {"a": (False, {}), "b": (True, {}), "c": (True, {"foo": "T:bar"})}),
    ("rating=1.5, feelings=(joy sadness)",
     {"rating": (1.5, {}), "feelings": ([("T:joy", {}), ("T:sadness", {})], {})}),
    ("a=(1 2), b=3, c=4;aa=bb, d=(5 6);valid",
     {"a": ([(1, {}), (2, {})], {}), "b": (3, {}), "c": (4, {"aa": "T:bb"}),
      "d": ([(5, {}), (6, {})], {"valid": True})}),
    ("foo=1, bar=2", {"foo": (1, {}), "bar": (2, {})}),  # (two field lines "foo=1" and "bar=2", combined)
    # CDN-Cache-Control as origins send it
    ("max-age=60, stale-while-revalidate=30", {"max-age": (60, {}), "stale-while-revalidate": (30, {})}),
    ("no-store", {"no-store": (True, {})}),
    ('private="set-cookie, x-id"', {"private": ("set-cookie, x-id", {})}),
    # our own
    ("", {}),
    ("   ", {}),
    ("  a=1  ", {"a": (1, {})}),  # leading and trailing SP
    ("a=1,\tb=2", {"a": (1, {}), "b": (2, {})}),  # OWS around the comma may be a tab
    ("a=1\t ,  b=2", {"a": (1, {}), "b": (2, {})}),
    ("a=1, a=2", {"a": (2, {})}),  # a later duplicate overwrites (§4.2.2)
    ("a;x=1;x=2", {"a": (True, {"x": 2})}),  # so does a parameter's
    ("a=(), b=( 1  2 )", {"a": ([], {}), "b": ([(1, {}), (2, {})], {})}),
    ("a=(1;p 2);q=?0", {"a": ([(1, {"p": True}), (2, {})], {"q": False})}),
    ("a=-0, b=-1.5, c=999999999999999, d=123456789012.123",
     {"a": (0, {}), "b": (-1.5, {}), "c": (999999999999999, {}), "d": (123456789012.123, {})}),
    ('a="q\\"uote\\\\", b=""', {"a": ('q"uote\\', {}), "b": ("", {})}),
    ('a="it\'s ~ ok!"', {"a": ("it's ~ ok!", {})}),
    ("a=*tok:/x.y, b=Z", {"a": ("T:*tok:/x.y", {}), "b": ("T:Z", {})}),
    ("a=:YQ:, b=:YQ==:, c=::", {"a": (b"a", {}), "b": (b"a", {}), "c": (b"", {})}),  # padding may be missing
    ("*star=?1, a.b_c-d*=1", {"*star": (True, {}), "a.b_c-d*": (1, {})}),
    ("a=1;  p=2", {"a": (1, {"p": 2})}),  # SP after ";"
])
def test_dictionary(value, parsed):
    assert plain(parse_dictionary(value)) == parsed


def test_types_are_told_apart():
    d = parse_dictionary('i=1, b=?1, t=tok, s="tok", f=1.0')
    assert type(d["i"][0]) is int and type(d["b"][0]) is bool and d["b"][0] is True
    assert type(d["t"][0]) is Token and type(d["s"][0]) is str and type(d["f"][0]) is float
    assert list(parse_dictionary("a=1, b=2, a=3")) == ["a", "b"]  # an overwritten key keeps its place


@pytest.mark.parametrize("value", [
    "a=1,",  # a trailing comma
    "a=1, ",
    "a=1,,b=2",  # an empty member
    ",a=1",
    "A=1",  # keys are lower case
    "a=1, Max-Age=2",
    "1a=1",  # a key starts with a letter or "*"
    "-a=1",
    "a=1 b=2",  # no comma
    "a=1;b=2 c",
    "a=1 ;p=1",  # parameters follow the item at once
    "a=1;P=1",
    "a=1;",
    "\ta=1",  # only SP may lead
    "a=",
    "a=1.",  # a decimal needs a fraction
    "a=1.1234",  # at most three fraction digits
    "a=1234567890123.1",  # at most twelve integer digits in a decimal
    "a=1234567890123456",  # at most fifteen digits in an integer
    "a=-",
    "a=--1",
    "a=- 1",
    "a=1e3",
    'a="\\x"',  # only \" and \\ are escapes
    'a="unterminated',
    'a="tab\there"',  # no control characters in a string
    'a="\x7f"',
    "a=é",  # not ASCII
    'a="é"',
    "a=?",
    "a=?2",
    "a=?true",
    "a=:abc$:",  # not base64
    "a=:YQ=b:",  # "=" inside
    "a=:YQ",
    "a=(1 2",  # an inner list without its ")"
    "a=(1,2)",
    "a=(1\t2)",  # only SP inside an inner list
    "a=(1)(2)",
    "a=((1))",  # no nesting
    'a=%"display"',  # RFC 9651's Display String and Date are not RFC 8941
    "a=@1659578233",
    "a=1\x00",
])
def test_dictionary_errors(value):
    with pytest.raises(SFError):
        parse_dictionary(value)


@pytest.mark.parametrize("value, parsed", [
    ("sugar, tea, rum", [("T:sugar", {}), ("T:tea", {}), ("T:rum", {})]),  # RFC 8941 §3.1
    ('("foo" "bar"), ("baz"), ("bat" "one"), ()',
     [([("foo", {}), ("bar", {})], {}), ([("baz", {})], {}), ([("bat", {}), ("one", {})], {}), ([], {})]),
    ('("foo"; a=1;b=2);lvl=5, ("bar" "baz");lvl=1',
     [([("foo", {"a": 1, "b": 2})], {"lvl": 5}), ([("bar", {}), ("baz", {})], {"lvl": 1})]),
    ('abc;a=1;b=2; cde_456, (ghi;jk=4 l);q="9";r=w',
     [("T:abc", {"a": 1, "b": 2, "cde_456": True}),
      ([("T:ghi", {"jk": 4}), ("T:l", {})], {"q": "9", "r": "T:w"})]),
    ("", []),
    ("1, 1", [(1, {}), (1, {})]),  # a list keeps duplicates
])
def test_list(value, parsed):
    assert plain(parse_list(value)) == parsed


@pytest.mark.parametrize("value", ["a,", "a b", "(a", "a;", "a, ,b"])
def test_list_errors(value):
    with pytest.raises(SFError):
        parse_list(value)


@pytest.mark.parametrize("value, parsed", [
    ("5; foo=bar", (5, {"foo": "T:bar"})),  # RFC 8941 §3.3
    ("42", (42, {})),
    ("4.5", (4.5, {})),
    ('"hello world"', ("hello world", {})),
    ("foo123/456", ("T:foo123/456", {})),
    (":cHJldGVuZCB0aGlzIGlzIGJpbmFyeSBjb250ZW50Lg==:", (b"pretend this is binary content.", {})),
    ("?1", (True, {})),
])
def test_item(value, parsed):
    assert plain(parse_item(value)) == parsed


@pytest.mark.parametrize("value", ["", "1 2", "(1)", "a=1", "1,2"])
def test_item_errors(value):
    with pytest.raises(SFError):
        parse_item(value)
