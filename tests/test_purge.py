"""edge/purge.py: what a purge body may say, what a purge matches, and the manager's key/tag index."""

from __future__ import annotations

import json

import pytest

from edge.purge import (
    MAX_DEPTH,
    MAX_ITEMS,
    BadPurge,
    Purge,
    PurgeIndex,
    key_path,
    nests_within,
    parse_purge,
    purge_cache,
)


def parse(body) -> Purge:
    return parse_purge(body if isinstance(body, bytes) else json.dumps(body).encode())


# -- parse_purge ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body, expected", [
    ({"paths": ["/a"]}, Purge(paths=("/a",))),
    ({"paths": ["/a", "/b/c.txt"]}, Purge(paths=("/a", "/b/c.txt"))),
    ({"paths": ["/a", "/a", "/b"]}, Purge(paths=("/a", "/b"))),  # duplicates go, order stays
    ({"paths": ["/a?x=1"]}, Purge(paths=("/a",))),  # a query is not part of what a purge names
    ({"paths": ["/a%20b"]}, Purge(paths=("/a b",))),  # decoded once, as the file cache keys paths
    ({"paths": ["/a%25b"]}, Purge(paths=("/a%b",))),  # ... once only
    ({"paths": ["/x/../y/./z"]}, Purge(paths=("/y/z",))),  # normalised
    ({"paths": ["//dir//"]}, Purge(paths=("/dir/",))),  # a trailing slash is kept
    ({"prefix": "/img/"}, Purge(prefix="/img/")),
    ({"prefix": "/"}, Purge(prefix="/")),
    ({"prefix": "/a%20b/"}, Purge(prefix="/a b/")),
    ({"tags": ["a", "b-c", "a"]}, Purge(tags=frozenset({"a", "b-c"}))),
    ({"all": True}, Purge(all=True)),
])
def test_parse_purge_accepts(body, expected):
    assert parse(body) == expected


def test_parse_purge_accepts_the_most_items():
    assert len(parse({"paths": [f"/{i}" for i in range(MAX_ITEMS)]}).paths) == MAX_ITEMS


@pytest.mark.parametrize("body", [
    b"not json",
    b"",
    b"\xff\xfe",
    b"[1, 2]",
    b'"/a"',
    b"null",
    {},
    {"path": ["/a"]},  # unknown key
    {"paths": ["/a"], "extra": 1},  # unknown key beside a known one
    {"paths": ["/a"], "prefix": "/b"},  # two kinds
    {"paths": []},
    {"tags": []},
    {"paths": "/a"},  # not a list
    {"paths": {"/a": 1}},
    {"paths": ["a"]},  # no leading slash
    {"paths": ["/a", 1]},
    {"paths": ["/.."]},  # escapes the root
    {"paths": ["/a%zz"]},  # bad percent-encoding
    {"paths": ["/a%00b"]},  # NUL
    {"paths": [f"/{i}" for i in range(MAX_ITEMS + 1)]},
    {"prefix": "img/"},
    {"prefix": ""},
    {"prefix": ["/a"]},
    {"prefix": None},
    {"tags": ["a b"]},  # a space
    {"tags": ["a\tb"]},
    {"tags": [""]},
    {"tags": [1]},
    {"tags": "a"},
    {"all": False},
    {"all": 1},
    {"all": "true"},
])
def test_parse_purge_rejects(body):
    with pytest.raises(BadPurge) as e:
        parse(body)
    assert str(e.value), "every refusal says why"


@pytest.mark.parametrize("body, limit, within", [
    (b"1", 0, True),
    (b"[]", 0, False),
    (b"[]", 1, True),
    (b"[[], {}, []]", 2, True),
    (b'{"a": {"b": [[]]}}', 4, True),
    (b'{"a": {"b": [[]]}}', 3, False),  # "{[]}" loses one level a pass, not two
    (b'{"paths": ["/a[b", "/\\"[[["]}', 2, True),  # brackets and escaped quotes inside strings don't count
    (b'{"paths": ["/a[b"]}', 1, False),
    (b'"[[[[', 0, True),  # an unterminated string hides what follows (json.loads refuses it)
    (b"[" * 100_000, MAX_DEPTH, False),
    (b"[]" * 100_000, 1, True),
    (b"]]", 4, False),  # brackets that do not pair up
])
def test_nests_within(body, limit, within):
    assert nests_within(body, limit) is within


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"paths": [[[[["/a"]]]]]}', b"[" * 100_000 + b"]" * 100_000])
def test_parse_purge_refuses_deep_nesting_before_decoding(body):
    with pytest.raises(BadPurge, match="nests deeper"):
        parse_purge(body)


def test_purge_round_trips_through_its_command_form():
    for purge in (Purge(paths=("/a b", "/c")), Purge(prefix="/p/"), Purge(tags=frozenset({"x", "y"})),
                  Purge(all=True)):
        assert Purge.from_json(json.loads(json.dumps(purge.to_json()))) == purge


# -- matching -------------------------------------------------------------------------------------


def test_key_path_drops_the_query_and_the_vary_suffix():
    assert key_path("/a") == "/a"
    assert key_path("/a?x=1") == "/a"
    assert key_path("/a\0gzip") == "/a"
    assert key_path("/a?x=1\0identity") == "/a"


def test_paths_match_local_paths_exactly():
    purge = parse({"paths": ["/a b", "/dir/"]})
    assert purge.matches_path("/a b")
    assert purge.matches_path("/dir/")
    assert not purge.matches_path("/a b/c")
    assert not purge.matches_path("/dir")
    assert not purge.matches_path("/a%20b"), "local paths are cached decoded"


def test_paths_match_origin_keys_with_any_query_or_coding():
    purge = parse({"paths": ["/gen/x"]})
    for key in ("/gen/x", "/gen/x?cc=max-age%3D60", "/gen/x\0gzip", "/gen/x?v=2\0identity"):
        assert purge.matches_key(key), key
    for key in ("/gen/xy", "/gen/x/", "/gen", "/other?p=/gen/x"):
        assert not purge.matches_key(key), key


def test_a_decoded_path_matches_the_percent_encoded_key():
    purge = parse({"paths": ["/a b"]})
    assert purge.matches_key("/a%20b")
    assert purge.matches_key("/a%20b?q=1\0gzip")
    assert not purge.matches_key("/a b")
    assert parse({"paths": ["/a%20b"]}).matches_key("/a%20b"), "an encoded purge path is the same path"
    assert parse({"paths": ["/caf\u00e9"]}).matches_key("/caf%C3%A9")
    assert parse({"paths": ["/a%3Fb"]}).matches_key("/a%3Fb?q"), "an encoded '?' is part of the path"
    assert not parse({"paths": ["/a%3Fb"]}).matches_key("/a?b")


def test_prefix_matches_paths_and_keys():
    purge = parse({"prefix": "/img/"})
    assert purge.matches_path("/img/a.png") and purge.matches_path("/img/")
    assert not purge.matches_path("/img") and not purge.matches_path("/images/a.png")
    assert purge.matches_key("/img/a.png?w=100") and purge.matches_key("/img/b\0gzip")
    assert not purge.matches_key("/x?next=/img/")
    spaced = parse({"prefix": "/my dir/"})
    assert spaced.matches_path("/my dir/f") and spaced.matches_key("/my%20dir/f")
    assert not spaced.matches_key("/my dir/f")


def test_tags_match_only_tagged_objects():
    purge = parse({"tags": ["a", "b"]})
    assert purge.matches_key("/x", ["b", "z"])
    assert purge.matches_key("/y", ("a",))
    assert not purge.matches_key("/x", ["c"])
    assert not purge.matches_key("/x")
    assert not purge.matches_key("/a"), "a tag purge names tags, not paths"


def test_all_matches_everything():
    purge = parse({"all": True})
    assert purge.matches_path("/anything") and purge.matches_key("/k?q\0gzip", ["t"]) and purge.matches_key("/k")


# -- purge_cache (a worker's file cache) ----------------------------------------------------------


class FakeEntry:
    def __init__(self, tags=()):
        self.tags = list(tags)


class FakeCache:
    """The slice of FileCache that purge_cache uses."""

    def __init__(self, entries: dict) -> None:
        self.entries = dict(entries)

    def names(self):
        return list(self.entries)

    def peek(self, name):
        return self.entries.get(name)

    def purge(self, name=None):
        if name is None:
            n = len(self.entries)
            self.entries.clear()
            return n
        return 1 if self.entries.pop(name, None) is not None else 0


def fake_cache() -> FakeCache:
    return FakeCache({"/a b": FakeEntry(), "/img/x.png": FakeEntry(), "/other": FakeEntry(),
                      "\0/a%20b?q=1": FakeEntry(["t"]), "\0/img/y\0gzip": FakeEntry(["u"]),
                      "\0/keep": FakeEntry(["v"])})


@pytest.mark.parametrize("body, gone", [
    ({"paths": ["/a b"]}, {"/a b", "\0/a%20b?q=1"}),
    ({"prefix": "/img/"}, {"/img/x.png", "\0/img/y\0gzip"}),
    ({"tags": ["t", "u"]}, {"\0/a%20b?q=1", "\0/img/y\0gzip"}),  # local files carry no tags
    ({"all": True}, None),
])
def test_purge_cache_drops_what_the_purge_names(body, gone):
    cache = fake_cache()
    before = set(cache.entries)
    dropped = purge_cache(cache, parse(body))
    gone = before if gone is None else gone
    assert set(cache.entries) == before - gone
    assert dropped == len(gone)


# -- PurgeIndex (the manager's index of the disk cache) ---------------------------------------------


def index() -> PurgeIndex:
    idx = PurgeIndex()
    idx.add("d1", "/a%20b", ["t1"])
    idx.add("d2", "/a%20b?v=2", ["t2"])
    idx.add("d3", "/img/x\0gzip", ["t1", "t3"])
    idx.add("d4", "/img/x\0identity", ["t1", "t3"])
    idx.add("d5", "/imgs/y", [])
    idx.add("d6", "/other", ["t3"])
    return idx


@pytest.mark.parametrize("body, names", [
    ({"paths": ["/a b"]}, {"d1", "d2"}),
    ({"paths": ["/a%20b"]}, {"d1", "d2"}),
    ({"paths": ["/img/x", "/other"]}, {"d3", "d4", "d6"}),
    ({"paths": ["/img"]}, set()),
    ({"prefix": "/img/"}, {"d3", "d4"}),
    ({"prefix": "/img"}, {"d3", "d4", "d5"}),
    ({"prefix": "/a "}, {"d1", "d2"}),
    ({"tags": ["t1"]}, {"d1", "d3", "d4"}),
    ({"tags": ["t2", "t3"]}, {"d2", "d3", "d4", "d6"}),
    ({"tags": ["nope"]}, set()),
    ({"all": True}, {"d1", "d2", "d3", "d4", "d5", "d6"}),
])
def test_purge_index_selects(body, names):
    assert index().select(parse(body)) == names


def test_purge_index_discard_forgets_an_object_everywhere():
    idx = index()
    assert len(idx) == 6
    idx.discard("d3")
    idx.discard("d3")  # twice is harmless
    idx.discard("unknown")
    assert len(idx) == 5
    assert idx.select(parse({"tags": ["t1"]})) == {"d1", "d4"}
    assert idx.select(parse({"paths": ["/img/x"]})) == {"d4"}
    idx.discard("d4")
    assert "/img/x" not in idx.by_path and "t1" in idx.by_tag and "t3" in idx.by_tag
    idx.discard("d1")
    assert "t1" not in idx.by_tag, "an emptied tag leaves no set behind"
    assert idx.select(parse({"all": True})) == {"d2", "d5", "d6"}


def test_purge_index_add_reindexes_a_stored_again_object():
    idx = index()
    idx.add("d1", "/a%20b", ["t9"])  # the same object stored again with other tags
    assert len(idx) == 6
    assert idx.select(parse({"tags": ["t1"]})) == {"d3", "d4"}
    assert idx.select(parse({"tags": ["t9"]})) == {"d1"}
    assert idx.select(parse({"paths": ["/a b"]})) == {"d1", "d2"}
