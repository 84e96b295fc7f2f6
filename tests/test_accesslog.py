"""The access log: combined format lines for answered requests, flushed within about a second."""

import re
import time

from conftest import request

LINE = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "(\S+) (\S+) (HTTP/1\.[01])" '
                  r'(\d{3}) (\d+) "([^"]*)" "([^"]*)"$')


def wait_for_lines(path, n, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= n:
                return lines
        time.sleep(0.1)
    return path.read_text().splitlines() if path.exists() else []


def test_combined_format(edge, tmp_path):
    log = tmp_path / "access.log"
    server = edge("--access-log", str(log))
    request(server, "/hello.txt", headers={"User-Agent": "tester/1", "Referer": "http://r/"})
    request(server, "/missing")
    request(server, "/hello.txt", method="HEAD")
    request(server, "/1k.bin", headers={"User-Agent": 'quote"and\\slash'}, version="HTTP/1.0")
    lines = wait_for_lines(log, 4)
    assert len(lines) == 4, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert parsed[0].groups() == ("GET", "/hello.txt", "HTTP/1.1", "200", "12", "http://r/", "tester/1")
    assert parsed[1].group(4) == "404"
    assert parsed[2].group(1) == "HEAD" and parsed[2].group(5) == "0"  # no body was sent
    assert parsed[3].group(3) == "HTTP/1.0" and parsed[3].group(5) == "1024"
    assert parsed[3].group(7) == "quote\\x22and\\x5Cslash"  # one request stays one parsable line


def test_no_log_by_default(server, www):
    assert request(server, "/hello.txt")[0] == 200
    assert not any(p.name.endswith(".log") for p in www.parent.iterdir())
