"""Link rel=preload parsing and the per-page hints (103 Early Hints, HTTP/2 push): edge/hints.py and Site.hints."""

from __future__ import annotations

import pytest

from edge.config import HeaderRule, PushConfig
from edge.core import Site
from edge.hints import PageHints, Preload, page_hints, parse_preloads, same_origin_path


@pytest.mark.parametrize("value, expected", [
    ("</a.css>; rel=preload; as=style", [Preload("/a.css", False)]),
    ('</a.css>; rel="preload"; as=style, </b.js>; rel=preload; as=script; nopush',
     [Preload("/a.css", False), Preload("/b.js", True)]),
    ("</x>; rel=preconnect", []),
    ('</a,b.css>; rel="preload"', [Preload("/a,b.css", False)]),
    ('</q.css>; title="a, b"; rel=preload', [Preload("/q.css", False)]),
    ("</m.css>; rel=\"stylesheet preload\"", [Preload("/m.css", False)]),
    ("<https://cdn.example/x.js>; rel=preload", [Preload("https://cdn.example/x.js", False)]),
    ("garbage, ; rel=preload", []),
    ("", []),
])
def test_parse_preloads(value: str, expected: list[Preload]) -> None:
    assert parse_preloads(value) == expected


@pytest.mark.parametrize("uri, ok", [
    ("/a.css", True), ("//evil.example/a.css", False), ("https://x/a", False), ("a.css", False),
    ("/a b", False), ("/a\r\nX: y", False),
])
def test_same_origin_path(uri: str, ok: bool) -> None:
    assert same_origin_path(uri) is ok


def test_page_hints_merges_table_and_links_dedupes_and_caps() -> None:
    links = [b"</s.css>; rel=preload; as=style, </n.js>; rel=preload; nopush",
             b"<//other/x.js>; rel=preload", b"</a.js>; rel=preload"]
    hints = page_hints(("/a.js", "/t.js"), links, limit=3)
    assert hints == PageHints(links=(links[0], links[1], links[2]), push=("/a.js", "/t.js", "/s.css"))


def test_page_hints_none_when_nothing_to_say() -> None:
    assert page_hints((), [b"</x>; rel=preconnect"], limit=8) is None


def test_page_hints_limit_zero_keeps_the_links_for_103() -> None:
    hints = page_hints((), [b"</s.css>; rel=preload"], limit=0)
    assert hints == PageHints(links=(b"</s.css>; rel=preload",), push=())


class _NoCache:
    """Site.hints never touches the file cache; anything else would fail here."""

    def __getattr__(self, name: str):
        raise AssertionError(f"hints() used the cache ({name})")


def test_site_hints_from_push_table_index_and_header_rules() -> None:
    rules = (HeaderRule("/index.html", (("Link", "</s.css>; rel=preload; as=style"),)),
             HeaderRule("/*.css", (("Cache-Control", "max-age=60"),)))
    site = Site(_NoCache(), header_rules=rules, push=PushConfig((("/index.html", ("/app.js",)),), 8))
    assert site.has_hints
    page = site.hints(b"/index.html?v=1")
    assert page == PageHints(links=(b"</s.css>; rel=preload; as=style",), push=("/app.js", "/s.css"))
    # "/" is the directory's index page: the table entry for /index.html applies to it.
    assert site.hints(b"/").push == ("/app.js",)
    assert site.hints(b"/s.css") is None
    assert site.hints(b"/../etc/passwd") is None  # a bad target has no hints (it gets its error)
    assert site.hints(b"/index.html") is page  # memoised


def test_site_without_push_or_link_rules_has_no_hints() -> None:
    site = Site(_NoCache(), header_rules=(HeaderRule("/*", (("X-A", "b"),)),))
    assert not site.has_hints
