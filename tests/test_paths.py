"""Table-driven tests of request-target normalisation (edge.paths)."""

import pytest

from edge.paths import BadTarget, has_dot_segment, location_for, normalize_path, split_target

NORMAL = [
    (b"/", "/"),
    (b"/a/b.txt", "/a/b.txt"),
    (b"/a//b", "/a/b"),
    (b"//a///b/", "/a/b/"),
    (b"/a/./b", "/a/b"),
    (b"/a/b/../c", "/a/c"),
    (b"/a/b/..", "/a/"),
    (b"/a/%2e%2e/b", "/b"),
    (b"/a%2fb", "/a/b"),
    (b"/caf%C3%A9", "/caf\u00e9"),
    (b"/%2541", "/%41"),  # decoded once only
    (b"/sp%20ace", "/sp ace"),
    (b"/.", "/"),
    (b"/x/.", "/x/"),
    (b"/%ff", "/\udcff"),  # undecodable bytes survive as surrogates, as os.fsdecode does
]

BAD = [
    (b"/..", 400),
    (b"/../etc/passwd", 400),
    (b"/a/../../etc/passwd", 400),
    (b"/%2e%2e/etc/passwd", 400),
    (b"/..%2fetc%2fpasswd", 400),
    (b"/%2e%2e%2f%2e%2e%2fetc", 400),
    (b"/a%00b", 400),
    (b"/a\x00b", 400),
    (b"/a\\..\\b", 400),
    (b"/a%5c..%5cb", 400),
    (b"/%zz", 400),
    (b"/%4", 400),
]


@pytest.mark.parametrize("raw, expected", NORMAL)
def test_normalize(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw, status", BAD)
def test_hostile(raw, status):
    with pytest.raises(BadTarget) as info:
        normalize_path(raw)
    assert info.value.status == status


SPLIT = [
    (b"/a?b=1", (b"/a", b"b=1")),
    (b"/a", (b"/a", b"")),
    (b"/a?", (b"/a", b"")),
    (b"http://example.com/x/y?q", (b"/x/y", b"q")),
    (b"HTTPS://example.com", (b"/", b"")),
    (b"http://example.com?q=1", (b"/", b"q=1")),
    (b"http://evil/../../etc/passwd", (b"/../../etc/passwd", b"")),  # normalize_path then refuses it
]


@pytest.mark.parametrize("target, expected", SPLIT)
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize("target", [b"*", b"a/b", b"ftp://x/y", b"", b"/a#frag"])
def test_split_target_refuses(target):
    with pytest.raises(BadTarget) as info:
        split_target(target)
    assert info.value.status == 400


def test_absolute_form_cannot_escape():
    path, _ = split_target(b"http://evil/../../etc/passwd")
    with pytest.raises(BadTarget):
        normalize_path(path)


@pytest.mark.parametrize("path, dotted", [("/.env", True), ("/a/.git/config", True), ("/a/b.txt", False),
                                          ("/a.b/c", False), ("/", False)])
def test_dot_segments(path, dotted):
    assert has_dot_segment(path) is dotted


@pytest.mark.parametrize("path, query, expected", [
    ("/dir/", b"", b"/dir/"),
    ("/a b/", b"x=1", b"/a%20b/?x=1"),
    ("/caf\u00e9/", b"", b"/caf%C3%A9/"),
    ("/\r\nSet-Cookie:x/", b"", b"/%0D%0ASet-Cookie:x/"),
])
def test_location_is_safe(path, query, expected):
    assert location_for(path, query) == expected
