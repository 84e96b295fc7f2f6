"""edge/variants.py: Vary parsing, the fields variants are selected by, value normalisation, suffixes, families."""

from __future__ import annotations

import pytest

from edge.variants import (CODING, Families, family, indexed_key, keyed_names, normalise, select, signature, suffix,
                           vary_names)


@pytest.mark.parametrize(("value", "names"), [
    (None, frozenset()),
    ("", frozenset()),
    ("Accept-Encoding", frozenset({"accept-encoding"})),
    ("accept-language, Accept-Encoding", frozenset({"accept-language", "accept-encoding"})),
    ("Accept-Language,,  Cookie ,", frozenset({"accept-language", "cookie"})),
    ("*", None),
    ("Accept-Language, *", None),  # RFC 9110 §12.5.5: "*" anywhere: no request matches
])
def test_vary_names(value: str | None, names: frozenset[str] | None) -> None:
    """Names are lower-cased and deduplicated; `*` means never reusable."""
    assert vary_names(value) == names


@pytest.mark.parametrize(("names", "forwarded", "keyed"), [
    ({"accept-encoding"}, set(), ("accept-encoding",)),
    ({"accept-language"}, {"accept-language"}, ("accept-language",)),
    ({"accept-language"}, set(), None),  # never sent to the origin: the answer suits only clients without it
    ({"user-agent", "accept-encoding", "accept-language"}, {"accept-language"}, None),
    ({"accept-encoding", "accept-language"}, {"accept-language"}, ("accept-encoding", "accept-language")),
    (set(), set(), ()),
])
def test_keyed_names(names: set[str], forwarded: set[str], keyed: tuple[str, ...] | None) -> None:
    """Accept-Encoding and forwarded fields select variants, in a stable order; any other field: not stored."""
    assert keyed_names(frozenset(names), frozenset(forwarded)) == keyed


@pytest.mark.parametrize(("name", "lines", "normal"), [
    ("accept-language", ["en-US, fr;q=0.5"], "en-us,fr;q=0.5"),
    ("accept-language", ["en-US", " fr;q=0.5 "], "en-us,fr;q=0.5"),  # several lines are one list
    ("accept-language", ["EN-us,FR;q=0.5"], "en-us,fr;q=0.5"),
    ("x-tenant", ["Blue , Green"], "Blue,Green"),  # case kept where it is not known to be insignificant
    ("x-tenant", [""], ""),
])
def test_normalise(name: str, lines: list[str], normal: str) -> None:
    """Values that mean the same compare equal (RFC 9111 §4.1), and only those."""
    assert normalise(name, lines) == normal


LANG = ("accept-language",)


def test_suffix_of_coding_only_is_the_coding() -> None:
    """The layout edge has always used for Vary: Accept-Encoding stays."""
    assert suffix((CODING,), "br, gzip", [(b"Accept-Language", b"en")]) == "br, gzip"


def test_suffix_selects_by_normalised_values() -> None:
    """Equal after normalisation: one variant; different: two; absent differs from empty."""
    a = suffix(LANG, "identity", [(b"Accept-Language", b"en-US, fr")])
    b = suffix(LANG, "identity", [(b"accept-language", b"EN-us,fr")])
    c = suffix(LANG, "identity", [(b"Accept-Language", b"de")])
    absent = suffix(LANG, "identity", [])
    empty = suffix(LANG, "identity", [(b"Accept-Language", b"")])
    assert a == b
    assert len({a, c, absent, empty}) == 4
    assert a.startswith("v" + signature(LANG) + ".")


def test_suffix_with_coding_and_field() -> None:
    """With Accept-Encoding among the names, the coding takes part in the selection."""
    names = ("accept-encoding", "accept-language")
    fields = [(b"Accept-Language", b"en")]
    assert suffix(names, "br", fields) != suffix(names, "gzip", fields)
    assert suffix(names, "br", fields) == suffix(names, "br", list(fields))


@pytest.mark.parametrize(("key", "found"), [
    ("/a", None),
    ("/a\0", ("/a", None)),  # a marker
    ("/a\0gzip", ("/a", "")),
    ("/a?x=1\0v0a1b2c3d.0011223344556677", ("/a?x=1", "0a1b2c3d")),
])
def test_family(key: str, found: tuple[str, str] | None) -> None:
    """A variant's key names its base key and its Vary set's signature."""
    assert family(key) == found


def test_select_and_indexed_key() -> None:
    """core and the puller find a variant the same way; the coding is asked only when it selects."""
    fields = [(b"Accept-Language", b"en")]
    key, name, coding = select("accept-language", b"/a", "n", "br", fields)
    tail = suffix(("accept-language",), "br", fields)
    assert (key, name, coding) == (b"/a\0" + tail.encode(), "n\0" + tail, None)
    assert select("accept-encoding", b"/a", "n", "br", fields) == (b"/a\0br", "n\0br", "br")
    assert select("accept-encoding,accept-language", b"/a", "n", "gzip", fields)[2] == "gzip"
    assert indexed_key("/a", True) == "/a\0" and indexed_key("/a", False) == "/a"


def test_families_cap_and_replacement() -> None:
    """Beyond the cap the oldest variant goes; a variant of another Vary set displaces the old set."""
    fams = Families(limit=2)
    assert fams.add("m", "/a\0") == []  # the marker under the base key is not a variant
    assert fams.add("d1", "/a\0v00000001.aa") == []
    assert fams.add("d2", "/a\0v00000001.bb") == []
    assert fams.add("d3", "/a\0v00000001.cc") == ["d1"]
    assert fams.add("d3", "/a\0v00000001.cc") == []  # stored again: no duplicate
    assert fams.add("e1", "/a\0v00000002.aa") == ["d2", "d3"]
    assert fams.add("g1", "/b\0gzip") == []  # another key: its own family
    fams.discard("e1")
    fams.discard("e1")
    assert len(fams) == 1 and "/a" not in fams.by_base
    assert fams.add("h1", "/b\0br") == []
    assert sorted(fams.add("plain", "/b")) == ["g1", "h1"]  # an answer without Vary now: the variants go
    assert len(fams) == 0
