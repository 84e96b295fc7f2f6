"""exchange's rules shared by both adapters: what goes out without a body, and the byte counts logged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge.core import Plan
from edge.exchange import HEADLESS, body_parts, outline
from edge.stored import STREAMED, Growth


def _entry(size: int, growing: bool) -> SimpleNamespace:
    """A stand-in for a FileEntry: outline and body_parts read only its size and growth."""
    return SimpleNamespace(size=size, growth=Growth(STREAMED) if growing else None)


BODY = (b"0123456789",)
FILE = ((0, 4096),)
OPEN = ((0, STREAMED),)

# (method, status, parts, length, entry) -> (bodiless, count)
OUTLINE = [
    pytest.param(b"GET", 200, BODY, 10, None, (False, 10), id="inline body"),
    pytest.param(b"GET", 200, FILE, 4096, _entry(4096, False), (False, 4096), id="file range"),
    pytest.param(b"HEAD", 200, FILE, 4096, _entry(4096, False), (True, 0), id="HEAD: head only (RFC 9110 9.3.2)"),
    pytest.param(b"GET", 304, (), 0, None, (True, 0), id="304: head only (RFC 9110 15.4.5)"),
    pytest.param(b"GET", 304, FILE, 4096, _entry(4096, False), (True, 0), id="304 with parts still bodiless"),
    pytest.param(b"GET", 204, (), 0, None, (True, 0), id="no parts"),
    pytest.param(b"GET", 200, OPEN, STREAMED, _entry(123, True), (False, HEADLESS), id="still growing: count waits"),
    pytest.param(b"GET", 200, OPEN, STREAMED, _entry(123, False), (False, 123), id="streamed, stored since"),
    pytest.param(b"HEAD", 200, OPEN, STREAMED, _entry(123, True), (True, 0), id="HEAD of a growing body"),
    pytest.param(b"GET", 200, OPEN, STREAMED, None, (False, 0), id="streamed without entry"),
]


@pytest.mark.parametrize(("method", "status", "parts", "length", "entry", "expected"), OUTLINE)
def test_outline(method: bytes, status: int, parts: tuple, length: int, entry: object, expected: tuple) -> None:
    """Both adapters send a body and count its bytes exactly as outline says."""
    assert outline(Plan(status, [], parts, length, entry), method) == expected


def test_body_parts_cuts_a_settled_streamed_length() -> None:
    """A body planned while it streamed and stored whole since is sent with its stored size."""
    plan = Plan(200, [], (b"head", (0, STREAMED)), STREAMED, _entry(777, False))
    assert body_parts(plan) == [b"head", (0, 777)]


def test_body_parts_keeps_a_growing_body_open() -> None:
    """A body still growing keeps its STREAMED length: the transfer follows the file."""
    plan = Plan(200, [], OPEN, STREAMED, _entry(5, True))
    assert body_parts(plan) is OPEN
    fixed = Plan(200, [], FILE, 4096, _entry(4096, False))
    assert body_parts(fixed) is FILE
