"""Fuzzing, seeded and time-bounded: malformed and borderline HTTP/1.1 and HTTP/2 (h2c) input to a real edge.

Each test starts one edge (one worker) on loopback and sends generated cases, each on its own
connection, until its time budget is spent. Case NAME is made by random.Random(f"{seed}/{NAME}") alone,
so every case replays on its own; a failure names the seed, the case and the bytes sent:

    EDGE_FUZZ_SEED=7 .venv/bin/python -m pytest tests/test_fuzz.py   # another seed (default 1)
    EDGE_FUZZ_CASES="w3 812"  ...                                    # only these cases of the seed
    EDGE_FUZZ_SECONDS=5 ...                                          # budget per test (default 20, at most 60)

Cases w0, w1, ... warm the worker up (a quarter of the budget), then the baseline of its fds and RSS
is taken, then cases 0, 1, ... run. Every connection must end well, and nothing may hang:

- HTTP/1.1: every answer is well framed (status line, fields, Content-Length body) and not 5xx, or the
  server closes without one; a head over a limit (target 8 KiB, head 64 KiB) gets a 4xx or a close
  without the client half-closing first.
- HTTP/2 (edge's engine; the h2 library's too with EDGE_FUZZ_ENGINES="edge h2"): the server's frames
  parse, its header blocks decode, no 5xx, no INTERNAL_ERROR, and it acknowledges the PING that ends
  each case or ends the connection (a GOAWAY with an error code is followed by the close). Half the
  connections follow the rules (a malformed header list is a stream error at worst), so the engine
  gets deep into its states; the others break rules now and then, or often.

After the run: the same worker process, its fds back at the baseline, its RSS within RSS_SLACK of
it, no traceback on stderr, and a plain request still served.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import socket
import struct
import time
from dataclasses import dataclass

import hpack
import pytest

from conftest import H2Client, EdgeProcess, h2_get, read_until_closed, request, wait_for
from test_robustness import fd_targets, rst_close, settled_fds

MIB = 1 << 20
SEED = int(os.environ.get("EDGE_FUZZ_SEED", "1"))
BUDGET = min(float(os.environ.get("EDGE_FUZZ_SECONDS", "20")), 60.0)
ONLY = os.environ.get("EDGE_FUZZ_CASES", "").replace(",", " ").split()
HEADER_TIMEOUT = 30  # the server's: longer than ANSWER_TIMEOUT, so its timeout cannot pass for an answer
ANSWER_TIMEOUT = 8.0  # silence this long after a case's last byte is a hang
RSS_SLACK = 4 * MIB
MAX_FAILURES = 5  # kinds of failure: then the run stops early
ERROR_LOG = re.compile(r"Traceback|Fatal error|Exception in callback|exception was never retrieved")
ERROR_LINE = re.compile(r"^[\w.]*(?:Error|Exception)\b.*$", re.M)  # the last line of a traceback


@dataclass
class Case:
    """One connection's input, how it ends, and what its answer may be."""

    writes: list[bytes]
    end: str = "shut"  # shut: half-close, read to EOF · wait: read to EOF, no half-close · drop, rst · ping (HTTP/2)
    over: bool = False  # an HTTP/1.1 head over a limit: a 4xx or a close
    max_frame: int = 16_384  # HTTP/2: the largest frame and HPACK table size we allowed the server
    table: int = 4096
    ping: bytes = b""  # HTTP/2: the opaque data of the PING that ends the case

    def shown(self) -> str:
        """The bytes sent, for a failure message (long ones abridged)."""
        data = b"".join(self.writes)
        text = repr(data) if len(data) <= 700 else f"{data[:500]!r} ... {data[-150:]!r} ({len(data)} bytes)"
        return f"{len(self.writes)} write(s), end={self.end}: {text}"


# -- the driver -------------------------------------------------------------------------------------

def fuzz(server: EdgeProcess, make, run) -> None:
    """Warm up, take the baseline, run cases until the budget is spent, then check the worker's health."""
    started = time.monotonic()
    pid = server.banner[0][0]
    failures: dict[str, list] = {}  # kind of failure -> [how many cases, the first one's report]
    seen = [0]  # how much of stderr was already searched

    def one(name: str) -> None:
        case = make(random.Random(f"{SEED}/{name}"))
        try:
            run(server, case)
        except Exception as e:  # noqa: BLE001 - an assertion, a parse error, a timeout: this case failed
            kind = kind_of(f"{type(e).__name__}: {e}")
            failures.setdefault(kind, [0, f"case {name}: {type(e).__name__}: {e}\n    sent {case.shown()}"])[0] += 1
        err = server.stderr()
        if ERROR_LOG.search(err, seen[0]):
            new = err[seen[0]:]
            kind = kind_of((ERROR_LINE.findall(new) or ["stderr"])[-1])
            report = f"case {name} (or the one before) logged:\n{new[-2500:]}\n    sent {case.shown()}"
            failures.setdefault(kind, [0, report])[0] += 1
        seen[0] = len(err)

    names = iter(ONLY)
    if not ONLY:
        for n in itertools.count():
            if time.monotonic() - started > BUDGET / 4 or len(failures) >= MAX_FAILURES:
                break
            one(f"w{n}")
        names = (str(n) for n in itertools.count())
    fds, rss = settled_fds(server), server.rss()
    ran = 0
    for name in names:
        if time.monotonic() - started > BUDGET or len(failures) >= MAX_FAILURES:
            break
        one(name)
        ran += 1

    problems = [f"[{count} case(s)] {report}" for count, report in failures.values()]
    if not server.alive():
        problems.append(f"the server exited ({server.proc.returncode})")
    elif server.worker_pids() != [pid]:
        problems.append(f"worker {pid} is gone; workers now {server.worker_pids()}")
    else:
        if not wait_for(lambda: server.fds() == fds, 10):
            problems.append(f"worker fds {server.fds()}, baseline {fds}: {sorted(fd_targets(pid))}")
        grown = server.rss() - rss
        if grown > RSS_SLACK:
            problems.append(f"worker RSS grew by {grown / MIB:.1f} MiB over {ran} cases")
        if request(server, "/hello.txt")[0] != 200 or h2_get(server, "/hello.txt").status != 200:
            problems.append("/hello.txt is no longer served")
    err = server.stderr()
    if ERROR_LOG.search(err):
        problems.append(f"stderr has tracebacks; distinct errors: {sorted(set(ERROR_LINE.findall(err)))}")
    assert not problems, (f"{len(problems)} problem(s) after {ran} cases{'' if ONLY else ' (+ warm-up)'}; replay with "
                          f"EDGE_FUZZ_SEED={SEED} EDGE_FUZZ_CASES='<name>'\n" + "\n".join(problems))


def kind_of(error: str) -> str:
    """What failures of one kind share: the start of the message without its numbers and quoted names."""
    return re.sub(r"'[^']*'|\d+", "_", error)[:48]


def warm(server: EdgeProcess) -> None:
    """Every target once, so the open-file cache holds them all before any baseline."""
    for target in TARGETS:
        request(server, target.decode("latin-1"))


def split(rng: random.Random, data: bytes) -> list[bytes]:
    """Cut the input into writes: mostly one, sometimes a few, sometimes byte by byte at the start."""
    r = rng.random()
    if r < 0.7 or len(data) < 2:
        return [data]
    if r < 0.75:
        n = min(len(data) - 1, 48)
        return [data[i:i + 1] for i in range(n)] + [data[n:]]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 5))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


# -- HTTP/1.1 -------------------------------------------------------------------------------------

TARGETS = [b"/", b"/index.html", b"/hello.txt", b"/1k.bin", b"/100k.bin", b"/sub/", b"/sub", b"/noindex/",
           b"/noindex/a.txt", b"/missing.html", b"/hello.txt?a=1&b=%20", b"/%2e%2e/%2e%2e/etc/passwd",
           b"/sub/../hello.txt", b"*", b"http://edge.test/hello.txt", b"/%00", b"/caf\xc3\xa9", b"//hello.txt"]
METHODS = [b"GET"] * 8 + [b"HEAD"] * 2 + [b"POST", b"PUT", b"OPTIONS", b"DELETE", b"CONNECT", b"TRACE", b"BREW", b"get"]
FIELDS = [b"Range: bytes=0-9", b"Range: bytes=-5", b"Range: bytes=0-0,2-3,5-", b"Range: bytes=99999-",
          b"Range: chars=1-2", b"If-None-Match: *", b'If-None-Match: W/"x", "y"', b'If-Range: "x"',
          b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT", b"If-Modified-Since: yesterday",
          b"Accept-Encoding: gzip, br;q=0.5, *;q=0", b"Accept: */*", b"Connection: close", b"Connection: keep-alive",
          b"Connection: Upgrade", b"Upgrade: websocket", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
          b"Expect: 100-continue", b"User-Agent: fuzz/1.0", b"Referer: http://x/", b"Cookie: a=b",
          b"Cache-Control: no-cache", b"TE: trailers", b"Content-Length: 0", b"Host: second.example"]
FRAMING = [b"Content-Length: 5\r\nTransfer-Encoding: chunked", b"Transfer-Encoding: chunked\r\nContent-Length: 5",
           b"Content-Length: 5\r\nContent-Length: 6", b"Content-Length: 5\r\nContent-Length: 5",
           b"Content-Length: 5, 5", b"Content-Length: -1", b"Content-Length: abc", b"Content-Length: 0x10",
           b"Content-Length: +5", b"Content-Length: 99999999999999999999999", b"Content-Length:  5 ",
           b"Transfer-Encoding: chunked",
           b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked, gzip", b"Transfer-Encoding: identity",
           b"Transfer-Encoding: xchunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
           b"Transfer-Encoding : chunked", b"Transfer-Encoding:\tchunked", b"Content-Length: 0\r\nContent-Length: 0"]
BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n",
          b"ffffffffffffffffffff\r\n", b"5\r\nhel", b"-1\r\n\r\n", b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n",
          b"5\r\nhelloXX0\r\n\r\n", b"5\nhello\n0\n\n", b"0\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: smuggled\r\n\r\n"]
VERSIONS = [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.", b"HTTP/11.1", b"HTTPS/1.1", b"http/1.1", b"",
            b"HTTP/1.1 x", b"HTTP/1.10", b"HTTP/\xff.1"]
SPICE = [b"\x00", b"\r", b"\n", b"\x7f", b"\t", b" ", b":", b"\xff", b"\x80", b"\r\n", b"\r\n\r\n", b"\x1b", b"%",
         b'"', b",", b";", b"\r\n ", b"\x00\r\n"]
CTLS = bytes([*range(32), 127])


def h1_request(rng: random.Random) -> bytes:
    """A valid request (or nearly: the method, target and fields come from lists with odd members)."""
    version = b"HTTP/1.1" if rng.random() < 0.9 else b"HTTP/1.0"
    lines = [b"%s %s %s" % (rng.choice(METHODS), rng.choice(TARGETS), version)]
    if rng.random() < 0.95:
        lines.append(b"Host: edge.test")
    lines += rng.sample(FIELDS, rng.choice([0, 0, 1, 2, 4]))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _junk(rng: random.Random) -> bytes:
    """A spice (a CTL, CR, LF, a separator...) or a few random bytes."""
    return rng.choice(SPICE) if rng.random() < 0.6 else rng.randbytes(rng.randint(1, 24))


def _first_eol(d: bytearray) -> int:
    """Where the request line ends (or the end)."""
    i = d.find(b"\r\n")
    return len(d) if i < 0 else i


def _blank(d: bytearray) -> int:
    """Where the head's fields end (before its blank line), or the end."""
    i = d.find(b"\r\n\r\n")
    return len(d) if i < 0 else i + 2


def m_flip(rng, d):
    """Flip a few bits anywhere."""
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(d))
        d[i] ^= 1 << rng.randrange(8)


def m_line(rng, d):
    """Random bytes into the request line."""
    i = rng.randint(0, _first_eol(d))
    d[i:i] = _junk(rng)


def m_field(rng, d):
    """Random bytes into a field (name, colon or value)."""
    i = rng.randint(min(_first_eol(d) + 2, len(d)), _blank(d))
    d[i:i] = _junk(rng)


def m_ctl(rng, d):
    """A control character (NUL, another CTL, DEL) in place of a byte of the head."""
    d[rng.randrange(_blank(d))] = rng.choice(CTLS)


def m_eol(rng, d):
    """One CRLF becomes a bare CR, a bare LF or something like them."""
    ends = [m.start() for m in re.finditer(b"\r\n", d)]
    if ends:
        i = rng.choice(ends)
        d[i:i + 2] = rng.choice([b"\r", b"\n", b"\n\r", b"\r\r\n", b"\r\n\r"])


def m_fold(rng, d):
    """An obs-fold: a continuation line after a field (or after the request line)."""
    i = _first_eol(d) + 2
    ends = [m.end() for m in re.finditer(b"\r\n", d) if i <= m.end() < _blank(d) + 1]
    i = rng.choice(ends) if ends else i
    d[i:i] = rng.choice([b" folded\r\n", b"\tx: y\r\n", b" \r\n", b"\t\r\n", b"  Host: edge.test\r\n"])


def m_many(rng, d):
    """Many fields (borderline: a few thousand stay under the 64 KiB head limit)."""
    n = rng.choice([50, 100, 1000, 3000])
    i = _blank(d)
    d[i:i] = b"".join(b"X-Fuzz-%d: %d\r\n" % (k, k) for k in range(n))


def m_big(rng, d):
    """One big field, around the 64 KiB head limit."""
    n = rng.choice([1000, 8191, 8192, 32_768, 65_000, 65_536 - len(d) - 12, 65_536 - len(d) - 8])
    i = _blank(d)
    d[i:i] = b"X-Big: " + b"v" * max(n, 0) + b"\r\n"


def m_target(rng, d):
    """A target around the 8 KiB limit."""
    m = re.match(rb"(\S*) (\S*)", d)
    if m:
        d[m.start(2):m.end(2)] = b"/" + b"t" * (rng.choice([8180, 8191, 8192, 8193, 8300]) - 1)


def m_version(rng, d):
    """A wrong or odd protocol version."""
    i = d.find(b"HTTP/1.")
    if 0 <= i < _first_eol(d):
        d[i:i + 8] = rng.choice(VERSIONS)


def m_space(rng, d):
    """Odd whitespace: around the colon, in the request line, blank lines before the request."""
    r = rng.randrange(4)
    if r == 0 and b": " in d:
        i = d.find(b": ", rng.randrange(len(d)) // 2)
        i = i if i >= 0 else d.find(b": ")
        d[i:i + 2] = rng.choice([b" : ", b":", b" :", b":\t\t", b": \x0b"])
    elif r == 1:
        i = d.find(b" ")
        if 0 <= i < _first_eol(d):
            d[i:i + 1] = rng.choice([b"  ", b"\t", b"", b" \x00 "])
    elif r == 2:
        d[0:0] = rng.choice([b"\r\n", b"\r\n\r\n", b"\n", b" "])
    else:
        d[_blank(d):_blank(d)] = b"X-Trailing-Space: v \t\r\n"


def m_framing(rng, d):
    """Conflicting or broken message framing (Content-Length, Transfer-Encoding, chunked), with a body."""
    i = _blank(d)
    d[i:i] = rng.choice(FRAMING) + b"\r\n"
    d += rng.choice(BODIES)


def m_cut(rng, d):
    """Truncate: the request is never complete."""
    del d[rng.randint(1, max(1, len(d) - 1)):]


def m_dup(rng, d):
    """A line twice."""
    lines = d.split(b"\r\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    d[:] = b"\r\n".join(lines)


def m_delete(rng, d):
    """A few bytes gone."""
    i = rng.randrange(len(d))
    del d[i:i + rng.randint(1, 8)]


MUTATORS = [(m_flip, 12), (m_line, 8), (m_field, 8), (m_ctl, 8), (m_eol, 8), (m_fold, 6), (m_many, 2), (m_big, 2),
            (m_target, 2), (m_version, 5), (m_space, 6), (m_framing, 10), (m_cut, 5), (m_dup, 4), (m_delete, 4)]


def h1_over(rng: random.Random) -> Case:
    """A head over a limit (target 8 KiB, head 64 KiB), complete or never ending: refused without more input."""
    host = b"GET / HTTP/1.1\r\nHost: edge.test\r\n"
    n = rng.randint(70_000, 300_000)
    kind = rng.randrange(7)
    if kind == 0:
        data = b"GET /" + b"a" * rng.randint(9000, 40_000) + b" HTTP/1.1\r\nHost: edge.test\r\n\r\n"
    elif kind == 1:
        data = b"GET /" + b"a" * n  # a target that never ends
    elif kind in (2, 3):
        data = host + b"X-Big: " + b"b" * n + (b"\r\n\r\n" if kind == 2 else b"")  # 3: a value that never ends
    elif kind in (4, 5):
        fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * rng.randint(1, 60)) for i in range(n // 30))
        data = host + fields + (b"\r\n" if kind == 4 else b"")  # 5: fields that never end
    else:
        data = host + b"X" * n  # a field name that never ends
    return Case(split(rng, data) if rng.random() < 0.5 else [data], end="wait", over=True)


def h1_case(rng: random.Random) -> Case:
    """One connection: a (mutated) request, or a pipeline of them, or a head over a limit."""
    if rng.random() < 0.08:
        return h1_over(rng)
    requests = []
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 6)):
        d = bytearray(h1_request(rng))
        mutators, weights = zip(*MUTATORS)
        for mutate in rng.choices(mutators, weights, k=rng.choice([0, 1, 1, 1, 2, 3])):
            if d:
                mutate(rng, d)
        requests.append(bytes(d))
    data = b"".join(requests) or b"\r\n"
    return Case(split(rng, data), end=rng.choices(["shut", "drop", "rst"], [90, 5, 5])[0])


STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\x20-\x7e]*")
FIELD_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?([\t\x20-\x7e\x80-\xff]*)")


def h1_statuses(data: bytes, head_possible: bool) -> list[int]:
    """The statuses of the responses in `data`, asserting that each is well framed and none is cut short."""
    statuses, pos = [], 0
    while pos < len(data):
        assert data.startswith(b"HTTP/1.", pos), f"not an HTTP/1.x response at byte {pos}: {data[pos:pos + 200]!r}"
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"response head cut short at byte {pos}: {data[pos:pos + 200]!r}"
        first, *lines = data[pos:end].split(b"\r\n")
        m = STATUS_LINE.fullmatch(first)
        assert m, f"bad status line at byte {pos}: {first[:200]!r}"
        fields: dict[bytes, bytes] = {}
        for line in lines:
            f = FIELD_LINE.fullmatch(line)
            assert f, f"bad field line in a {m[1].decode()} response: {line[:200]!r}"
            assert f[1].lower() not in fields or f[1].lower() != b"content-length", "two Content-Length fields"
            fields[f[1].lower()] = f[2]
        status = int(m[1])
        statuses.append(status)
        pos = end + 4
        if status == 101:
            break  # the rest speaks another protocol
        if status < 200 or status in (204, 304):
            continue
        assert b"transfer-encoding" not in fields, f"{status} with Transfer-Encoding from a static root"
        length = fields.get(b"content-length", b"")
        assert length.isdigit(), f"{status} without a valid Content-Length: {data[pos - 200:pos]!r}"
        if head_possible and (pos == len(data) or data.startswith(b"HTTP/1.1 ", pos)):
            continue  # an answer to HEAD
        assert pos + int(length) <= len(data), f"{status} body cut short: {len(data) - pos} of {length.decode()} bytes"
        pos += int(length)
    return statuses


def run_h1(server: EdgeProcess, case: Case) -> None:
    """Send one case on a fresh connection and check what comes back (HTTP/1.1, or nothing)."""
    sock = server.connect(ANSWER_TIMEOUT)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i, chunk in enumerate(case.writes):
                if i:
                    time.sleep(0.001)
                sock.sendall(chunk)
            if case.end == "shut":
                sock.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise AssertionError(f"the server read nothing for {ANSWER_TIMEOUT:.0f} s, nor closed") from None
        except OSError:
            pass  # the server closed (or reset) already: what it answered is still checked
        if case.end in ("drop", "rst"):
            if case.end == "rst":
                rst_close(sock)
            return
        try:
            data = read_until_closed(sock, ANSWER_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"neither an answer and a close nor a close within {ANSWER_TIMEOUT:.0f} s") from None
    finally:
        sock.close()
    statuses = h1_statuses(data, b"HEAD" in b"".join(case.writes))
    assert all(s < 500 for s in statuses), f"5xx answer: {statuses}"
    if case.over:
        assert statuses == [] or (len(statuses) == 1 and 400 <= statuses[0] < 500), f"over a limit, yet {statuses}"


def test_http1_fuzz(edge):
    """Malformed and borderline HTTP/1.1, one connection a case: well-framed answers or closes, a healthy worker."""
    server = edge("--header-timeout", str(HEADER_TIMEOUT))
    warm(server)
    fuzz(server, h1_case, run_h1)


# -- HTTP/2 ---------------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
SETTINGS_OK = {1: [0, 4096, 65_536], 2: [0, 1], 3: [0, 1, 100], 4: [0, 1, 65_535, 2**31 - 1], 5: [16_384, 2**24 - 1],
               6: [1, 65_536, 2**32 - 1], 8: [0, 1], 0x99: [7]}  # 0x99: unknown, to be ignored
SETTINGS_BAD = {2: [2, 2**32 - 1], 4: [2**31, 2**32 - 1], 5: [0, 16_383, 2**24]}
H2_METHODS = [b"GET"] * 6 + [b"HEAD", b"POST", b"CONNECT", b"OPTIONS", b"BREW", b"get", b""]
BAD_FIELDS = [(b":foo", b"x"), (b":path", b"/again"), (b"X-Upper", b"v"), (b"connection", b"close"),
              (b"keep-alive", b"5"), (b"te", b"gzip"), (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
              (b"x-bad", b"a\r\nb"), (b"x-nul", b"a\x00b"), (b"", b"v"), (b"host", b"other.example"),
              (b"x-big", b"v" * 5000), (b"x-huge", b"v" * 70_000), (b"content-length", b"7")]
HPACK_GARBAGE = [b"\x3f\xe1\xff\x03", b"\xff\xff\xff\xff\x7f", b"\x80", b"\x00\x85\xff\xff\xff\xff\xff",
                 b"\x40\x7f\xff\xff\xff\x0f", b"\x20\x82\x84", b"\xbe"]
SIMPLE = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"edge.test"), (b":path", b"/hello.txt")]


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One frame on the wire (the stream id's reserved bit may be set)."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + (sid & 0xFFFFFFFF).to_bytes(4, "big") + payload


def h2_fields(rng: random.Random) -> list[tuple[bytes, bytes]]:
    """A request header list: mostly valid, sometimes malformed (RFC 9113 §8.2-8.3)."""
    fields = [(b":method", rng.choice(H2_METHODS)), (b":scheme", rng.choice([b"http", b"http", b"https", b""])),
              (b":authority", rng.choice([b"edge.test", b"127.0.0.1", b"", b"a" * 300])),
              (b":path", rng.choice(TARGETS))]
    fields += [tuple(f.lower().split(b": ", 1)) for f in rng.sample(FIELDS, rng.choice([0, 0, 1, 3]))]
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        fields.insert(rng.randrange(len(fields) + 1), rng.choice(BAD_FIELDS))
    if rng.random() < 0.05:
        del fields[rng.randrange(4)]
    if rng.random() < 0.03:
        fields += [(b"x-many-%d" % i, b"v") for i in range(rng.choice([100, 2000]))]
    return fields


def h2_case(rng: random.Random) -> Case:
    """One HTTP/2 connection: preface, SETTINGS, a run of frames, then a PING (or a drop mid-frame).

    How hostile the connection is comes first: half follow the rules (a malformed header list is at
    worst a stream error), so the server gets deep into its states; the others break rules now and
    then or often (each such choice is `bad()`).
    """
    case = Case([], end="ping", ping=rng.randbytes(8))
    hostility = rng.choice([0, 0, 0.05, 0.3])
    enc = hpack.Encoder()
    next_sid = [1]
    opened: list[int] = []  # streams with a request body still to come
    window = [65_535]  # what the server's connection window has room for (it may grant more: not counted)

    def bad() -> bool:
        """Whether this choice breaks a rule."""
        return rng.random() < hostility

    def sid() -> int:
        """A new stream id, or (bad) even, zero, decreasing or reused, the last, with the reserved bit, any."""
        if not bad():
            next_sid[0] += 2
            return next_sid[0] - 2
        return rng.choice([0, 2, 4, max(1, next_sid[0] - 4), max(1, next_sid[0] - 2), 2**31 - 1, 2**31 + 1,
                           rng.randrange(2**32)])

    def used() -> int:
        """A stream opened before (0 if none yet), or (bad) any: idle, even, zero."""
        if bad():
            return rng.choice([0, 1, 3, next_sid[0], 2, rng.randrange(2**31)])
        return rng.randrange(1, next_sid[0], 2) if next_sid[0] > 1 else 0

    def body(n: int) -> int:
        """How much of n bytes of DATA fit the connection's window (bad: n, whatever the window)."""
        n = n if bad() else max(0, min(n, window[0] - 21))  # 21: the most padding adds
        window[0] -= n + 21
        return n

    def settings() -> bytes:
        """A SETTINGS payload (bad: with a value out of range); what it allows the server is noted."""
        items = []
        for k in rng.sample(list(SETTINGS_OK), rng.randint(0, 4)):
            v = rng.choice(SETTINGS_BAD[k] if k in SETTINGS_BAD and bad() else SETTINGS_OK[k])
            items.append((k, v))
            if k == 5 and v < 2**24:
                case.max_frame = max(case.max_frame, v)
            if k == 1:
                case.table = max(case.table, v)
        return b"".join(struct.pack(">HI", k, v) for k, v in items)

    def padded(flags: int, payload: bytes) -> tuple[int, bytes]:
        """Sometimes padding (bad: longer than the frame)."""
        if rng.random() < 0.8:
            return flags, payload
        n = rng.randint(0, 20)
        pad = n + len(payload) + rng.randint(1, 5) if bad() else n
        return flags | PADDED, bytes([min(pad, 255)]) + payload + b"\0" * n

    def header_frames(s: int, block: bytes, flags: int, pieces: int = 1, interrupt: bytes = b"") -> bytes:
        """HEADERS plus CONTINUATION frames for a block in `pieces`, `interrupt` after the HEADERS."""
        size = max(1, min(16_000, -(-len(block) // pieces)))  # room for priority and padding
        parts = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
        first = parts[0]
        if rng.random() < 0.1:  # with a priority (bad: on itself)
            flags |= PRIORITY_FLAG
            first = struct.pack(">IB", s if bad() else rng.choice([0, 2**31]), rng.randrange(256)) + first
        flags, first = padded(flags | (END_HEADERS if len(parts) == 1 else 0), first)
        out = [frame(HEADERS, flags, s, first)]
        for i, part in enumerate(parts[1:], 2):
            out.append(frame(CONTINUATION, END_HEADERS if i == len(parts) else 0, s, part))
        if interrupt:
            out.insert(1, interrupt)
        return b"".join(out)

    def block() -> bytes:
        """An HPACK block of a request header list (Huffman coding, slow in Python, only for small ones)."""
        fields = h2_fields(rng)
        return enc.encode(fields, huffman=rng.random() < 0.5 and sum(len(v) + 32 for _, v in fields) < 2000)

    def request() -> bytes:
        """A request on a new stream: with END_STREAM, or a body now or later (or never)."""
        s, end = sid(), rng.random() < 0.7
        out = header_frames(s, block(), END_STREAM if end else 0, 1 if rng.random() < 0.8 else rng.randint(2, 5))
        if not end and rng.random() < 0.5:
            opened.append(s)
        elif not end:
            size, n = rng.choice([0, 10, 16_000]), rng.choice([1, 3, 5])
            for i in range(n):
                flags, payload = padded(END_STREAM if i == n - 1 else 0, b"y" * body(size))
                out += frame(DATA, flags, s, payload)
        return out

    def data() -> bytes:
        """DATA on a stream whose body is still to come (bad: on any)."""
        valid = opened and not bad()
        if not valid and not hostility:
            return b""
        s = opened.pop(rng.randrange(len(opened))) if valid else used()
        flags, payload = padded(rng.choice([0, END_STREAM]), rng.randbytes(body(rng.choice([0, 5, 100]))))
        if valid and not flags & END_STREAM:
            opened.append(s)
        return frame(DATA, flags, s, payload)

    def reset() -> bytes:
        """RST_STREAM with any error code on a stream opened before (bad: on any)."""
        s = used()
        if s in opened:
            opened.remove(s)
        return frame(RST_STREAM, 0, s, struct.pack(">I", rng.randrange(14))[:wrong(4)]) if s or hostility else b""

    def other(s: int) -> bytes:
        """A frame that may not come inside the header block of stream s."""
        return rng.choice([frame(PING, 0, 0, b"\0" * 8), frame(DATA, 0, s, b"x"), frame(SETTINGS, 0, 0),
                           frame(HEADERS, END_HEADERS, s + 2, block()), frame(CONTINUATION, END_HEADERS, s + 2, b""),
                           frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)), frame(PRIORITY, 0, s, b"\0" * 5),
                           frame(RST_STREAM, 0, s, b"\0\0\0\x08"), frame(0x42, 0, 0, b"ext"),
                           frame(GOAWAY, 0, 0, b"\0" * 8), frame(PUSH_PROMISE, END_HEADERS, s, b"\0\0\0\x02")])

    def interrupted() -> bytes:
        """A header block with another frame before its CONTINUATION."""
        s = sid()
        return header_frames(s, block(), END_STREAM, rng.randint(2, 4), interrupt=other(s))

    def flood() -> bytes:
        """Many small frames: PING, SETTINGS, rapid reset, empty DATA, PRIORITY, CONTINUATION (bad: garbage)."""
        n, kind = rng.choice([60, 250, 600]), rng.randrange(6 if hostility else 5)
        if kind == 0:
            return frame(PING, 0, 0, b"\0" * 8) * n
        if kind == 1:
            return frame(SETTINGS, 0, 0) * n
        s = sid()
        if kind == 2:  # rapid reset
            next_sid[0] += 2 * n
            return b"".join(frame(HEADERS, END_HEADERS | END_STREAM, s + 2 * i, enc.encode(SIMPLE))
                            + frame(RST_STREAM, 0, s + 2 * i, b"\0\0\0\x08") for i in range(n))
        if kind == 3:
            return frame(HEADERS, END_HEADERS, s, block()) + frame(DATA, 0, s) * n
        if kind == 4:
            return frame(PRIORITY, 0, s, b"\0\0\0\0\x10") * n + header_frames(s, block(), END_STREAM, n)
        return frame(HEADERS, 0, s, block()) + b"".join(frame(CONTINUATION, 0, s, rng.randbytes(rng.randint(0, 200)))
                                                         for _ in range(n))  # (bad) a CONTINUATION flood

    def wrong(n: int) -> int:
        """A payload length: n, or (bad) not the one the frame type has."""
        return rng.choice([0, 1, n - 1, n + 1, 2 * n]) if bad() else n

    rules = [  # (weight, maker), those that follow the rules unless bad() says otherwise
        (30, request),
        (6, data),
        (3, lambda: frame(PRIORITY, 0, used() or sid(),
                          struct.pack(">IB", rng.choice([1, 2**31 | 3]) if bad() else 0, 16)[:wrong(5)])),
        (4, reset),
        (5, lambda: frame(SETTINGS, ACK if bad() else 0, 1 if bad() else 0,
                          settings() + (rng.randbytes(rng.randint(1, 5)) if bad() else b""))),
        (4, lambda: frame(PING, rng.choice([0, ACK]), 1 if bad() else 0, rng.randbytes(wrong(8)))),
        (5, lambda: frame(WINDOW_UPDATE, 0, rng.choice([0, used()]), struct.pack(
            ">I", rng.choice([0, 2**31 - 1, 2**31]) if bad() else rng.randint(1, 65_536))[:wrong(4)])),
        (5, lambda: frame(rng.randint(10, 255), rng.randrange(256), rng.randrange(2**32),  # unknown: ignored
                          rng.randbytes(rng.randint(0, 64)))),
        (2, flood),
    ]
    broken = [  # rules broken on purpose, in hostile connections only
        (6, interrupted),
        (4, lambda: frame(HEADERS, END_HEADERS | END_STREAM, sid(),
                          rng.choice([rng.randbytes(rng.randint(1, 40)), rng.choice(HPACK_GARBAGE)]))),
        (3, lambda: frame(CONTINUATION, rng.choice([0, END_HEADERS]), used(), rng.randbytes(rng.randint(0, 20)))),
        (2, lambda: frame(PUSH_PROMISE, END_HEADERS, used(), struct.pack(">I", 2) + block())),
        (6, lambda: frame(rng.randrange(10), rng.randrange(256), used(), rng.randbytes(rng.randint(0, 40)))),
        (2, lambda: frame(rng.choice([DATA, HEADERS, PING, 0x30]), 0, 1, b"z" * rng.randint(16_385, 20_000))),
        (1, lambda: frame(GOAWAY, 0, rng.choice([0, 1]), struct.pack(">II", used(), rng.randrange(14))[:wrong(8)])),
    ]
    weights, makers = zip(*(rules + broken if hostility else rules))
    out = PREFACE
    if rng.random() < 0.03:
        out = bytearray(out)
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        case.end = "shut"  # not HTTP/2 any more: an HTTP/1.1 answer, or a close
    r = rng.random()
    out += frame(SETTINGS, 0, 0, settings()) if r < 0.95 or not hostility else frame(PING, 0, 0, b"\0" * 8) \
        if r < 0.97 else b""
    for maker in rng.choices(makers, weights, k=rng.choice([1, 2, 4, 8, 16])):
        out += maker()
    if case.end == "ping" and rng.random() < 0.08:  # go away in the middle of a frame
        out += frame(rng.randrange(12), 0, 1, rng.randbytes(30))[:rng.randrange(1, 30)]
        case.end = rng.choice(["drop", "rst"])
    elif case.end == "ping":  # the PING ACK proves all was read; after a GOAWAY of ours, the close does
        out += frame(GOAWAY, 0, 0, struct.pack(">II", used(), 0)) if rng.random() < 0.05 else \
            frame(PING, 0, 0, case.ping)
    case.writes = split(rng, bytes(out))
    return case


def run_h2(server: EdgeProcess, case: Case) -> None:
    """Send one HTTP/2 case and check the server's frames until it acknowledges the last PING or closes."""
    if case.end != "ping":
        return run_h1(server, case)
    client = H2Client(server.connect(ANSWER_TIMEOUT), auto_window=False)
    client.decoder.max_allowed_table_size = case.table
    client.conn.initiate_connection()  # h2's view (an oracle while it can follow); its preface is not sent
    client.conn.data_to_send()
    try:
        for i, chunk in enumerate(case.writes):
            if i:
                time.sleep(0.001)
            client.send(chunk)
        def done() -> bool:
            """The server closed, or acknowledged our last PING (so it read everything before it)."""
            return client.eof or any(type(f).__name__ == "PingFrame" and "ACK" in f.flags and
                                     f.opaque_data == case.ping for f in client.frames)

        assert client.wait(done, ANSWER_TIMEOUT), \
            f"neither the PING ACK nor a close within {ANSWER_TIMEOUT:.0f} s; received:\n{client.log(20)}"
        if any(g.error_code for g in client.goaways):
            assert client.closed(ANSWER_TIMEOUT), f"still open after GOAWAY {client.goaway_info()}"
    finally:
        client.close()
    left = client._buf  # bytes of an incomplete frame (the client keeps no other record of them)
    assert not (client.eof and left), f"the connection ended inside a frame: {bytes(left[:60])!r}"
    for f in client.frames:
        assert type(f).__name__ != "ExtensionFrame", f"a frame of unknown type {f.type} from the server"
        assert f.body_len <= case.max_frame, f"{type(f).__name__} of {f.body_len} bytes > {case.max_frame}"
        assert getattr(f, "error_code", 0) != 2, f"INTERNAL_ERROR: {client.log(20)}"
    for s in client.streams.values():
        assert s.status is None or 200 <= s.status < 500, f"stream {s.sid}: status {s.status}\n{client.log(20)}"


# edge's own engine; EDGE_FUZZ_ENGINES="edge h2" adds the h2 library's (the reference: its agreement with
# edge's is tests/test_h2diff.py's job, and its connections are reference cycles that wait for the
# worker's rare full collections, so its RSS drifts by several MiB before it levels off).
@pytest.mark.parametrize("engine", os.environ.get("EDGE_FUZZ_ENGINES", "edge").split())
def test_http2_fuzz(edge, tmp_path, engine):
    """Random and hostile HTTP/2 frames over h2c: frames that parse, no hang, a healthy worker."""
    config = tmp_path / "edge.toml"
    config.write_text(f'[http2]\nengine = "{engine}"\n')
    server = edge("--header-timeout", str(HEADER_TIMEOUT), config=config)
    warm(server)
    for target in (b"/hello.txt", b"/1k.bin", b"/missing.html"):
        h2_get(server, target.decode())
    fuzz(server, h2_case, run_h2)
