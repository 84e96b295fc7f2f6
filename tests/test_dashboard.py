"""The admin dashboard (edge/dashboard.py) in headless Chromium: it loads, lists every worker, its charts update."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test installs it)")


def dom_after(url: str, seconds: int = 5) -> str:
    """The page's DOM after `seconds` of (virtual) time: its timers and fetches have run."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--virtual-time-budget={seconds * 1000}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_dashboard_shows_every_worker_and_its_charts_update(edge):
    server = edge("--workers", "2", "--admin-token", "s3cret")
    for _ in range(10):
        assert request(server, "/hello.txt")[0] == 200
    dom = dom_after(f"{server.admin_url}/#token=s3cret")
    rows = {int(pid) for pid in re.findall(r'<tr data-pid="(\d+)"', dom)}
    assert rows == set(server.worker_pids()), "one row per worker"
    polls = int(re.search(r'data-polls="(\d+)"', dom).group(1))
    assert polls >= 3, "the page keeps polling /status"
    points = {m.group(1): int(m.group(2)) for m in re.finditer(r'id="(\w+)"[^>]*data-points="(\d+)"', dom)}
    assert points["rps"] == points["bps"] == polls * 2, points  # a point per worker per poll: the charts move
    assert points["hit"] == polls
    assert '<div id="error"></div>' in dom, "the page reports no error"


def test_without_the_token_the_page_gets_no_data(edge):
    server = edge("--admin-token", "s3cret")
    dom = dom_after(f"{server.admin_url}/", seconds=2)
    assert "<tr data-pid=" not in dom  # /status said 401: no data, a form for the token instead
    assert "a token is needed" in dom and '<form id="login">' in dom
    assert "loading..." in dom
