"""Cache keys (edge/cachekey.py): query kept, ignored or filtered; stable digests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.cachekey import KeyRule, digest


def test_keep_is_path_plus_raw_query():
    assert KeyRule().key("/a.css", b"v=2&x=1") == b"/a.css?v=2&x=1"
    assert KeyRule().key("/a.css", b"") == b"/a.css"


def test_ignore_drops_the_query():
    assert KeyRule("ignore").key("/a.css", b"v=2") == b"/a.css"


def test_a_list_keeps_only_those_names_in_a_fixed_order():
    rule = KeyRule(("v", "lang"))
    assert rule.key("/a", b"utm_source=x&v=2&lang=en") == rule.key("/a", b"lang=en&v=2&fbclid=y")
    assert rule.key("/a", b"lang=en&v=2") == b"/a?lang=en&v=2"
    assert rule.key("/a", b"utm_source=x") == b"/a"
    assert rule.key("/a", b"v=1") != rule.key("/a", b"v=2")


def test_a_bad_rule_is_refused():
    with pytest.raises(ValueError):
        KeyRule("sometimes")


def test_digest_is_stable_across_processes():
    code = "from edge.cachekey import digest; print(digest(b'/a?v=1'))"
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONHASHSEED": s}).stdout.strip() for s in ("1", "2")}
    assert out == {digest(b"/a?v=1")} and len(digest(b"/a")) == 32
