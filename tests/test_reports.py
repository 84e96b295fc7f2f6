"""Workers' reports to the cache manager: records survive framing, and go in batches."""

from __future__ import annotations

import asyncio
import socket

import pytest

from edge import reports

NAME = "0123456789abcdef" * 2


def test_records_round_trip_whatever_the_key_holds():
    key = "/a b?q=\n\x00identity\xe9"  # spaces, a newline, the Vary separator, a latin-1 byte
    data = reports.pack([reports.stored(NAME, 1024, key, ["t1", "grp:x"]), reports.used(NAME),
                         reports.stored(NAME, 0, "", [])])
    assert list(reports.parse(data)) == [("S", NAME, 1024, key, ["t1", "grp:x"]), ("U", NAME, 0, "", []),
                                         ("S", NAME, 0, "", [])]


def test_a_record_that_is_not_one_is_skipped_and_a_cut_frame_ends_the_datagram():
    good = reports.used(NAME)
    data = reports.pack([b"S " + NAME.encode() + b" -1 0\n", b"U " + NAME.upper().encode(), good])
    assert [r[0] for r in reports.parse(data)] == ["U"]
    assert list(reports.parse(reports.pack([good])[:-1])) == []
    assert list(reports.parse(b"\x00\x00")) == []


def _received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(reports.DATAGRAM))
        except BlockingIOError:
            return out


def test_reports_wait_for_each_other_then_go_in_one_datagram():
    theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        reporter = reports.Reporter(asyncio.get_running_loop(), ours)
        for i in range(3):
            reporter.add(reports.stored(NAME, i, f"/k{i}", []))
        early = _received(theirs)
        await asyncio.sleep(reports.FLUSH_DELAY * 3)
        return early, _received(theirs)

    early, late = asyncio.run(scenario())
    assert early == []
    assert len(late) == 1
    assert [r[3] for r in reports.parse(late[0])] == ["/k0", "/k1", "/k2"]
    theirs.close()
    ours.close()


def test_a_full_datagram_goes_at_once_and_an_oversized_record_is_dropped():
    theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    theirs.setblocking(False)

    async def scenario() -> list[bytes]:
        reporter = reports.Reporter(asyncio.get_running_loop(), ours)
        reporter.add(reports.stored(NAME, 0, "/x" * (reports.DATAGRAM // 2), []))  # too big: dropped
        big = "/" + "y" * 8000
        for _ in range(10):  # ~80 KB: more than one datagram holds
            reporter.add(reports.stored(NAME, 1, big, []))
        sent = _received(theirs)  # the first datagram went when the next record would not fit
        reporter.flush()
        return sent + _received(theirs)

    datagrams = asyncio.run(scenario())
    assert len(datagrams) == 2 and all(len(d) <= reports.DATAGRAM for d in datagrams)
    keys = [r[3] for d in datagrams for r in reports.parse(d)]
    assert len(keys) == 10 and all(k.startswith("/yyy") for k in keys)
    theirs.close()
    ours.close()


def test_without_a_manager_reports_go_nowhere():
    async def scenario() -> None:
        reporter = reports.Reporter(asyncio.get_running_loop(), None)
        reporter.add(reports.used(NAME))
        reporter.flush()
        assert reporter.pending == [] and reporter.timer is None

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [0, 1, 10**12])
def test_sizes_survive(size: int):
    assert next(reports.parse(reports.pack([reports.stored(NAME, size, "/k", [])])))[2] == size


def _fill(sock: socket.socket) -> None:
    """Fill the manager's queue: the next datagram cannot be sent."""
    while True:
        try:
            sock.send(b"z" * 4096)
        except BlockingIOError:
            return


@pytest.mark.parametrize("more", [True, False], ids=["with-the-next-batch", "alone"])
def test_a_datagram_that_could_not_go_is_followed_by_a_reconcile(more: bool):
    theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)
    ours.setblocking(False)
    _fill(ours)

    async def scenario() -> list[bytes]:
        reporter = reports.Reporter(asyncio.get_running_loop(), ours)
        reporter.add(reports.stored(NAME, 1, "/lost", []))
        reporter.flush()
        assert reporter.lost
        while _received(theirs):  # the manager catches up
            pass
        if more:  # the next batch carries it
            reporter.add(reports.stored(NAME, 2, "/next", []))
            reporter.flush()
        else:  # nothing else to report: it goes on its own
            await asyncio.sleep(reports.RETRY_DELAY * 2)
        assert not reporter.lost
        return _received(theirs)

    [datagram] = asyncio.run(scenario())
    expected = [("S", "/next"), ("R", "")] if more else [("R", "")]
    assert [(r[0], r[3]) for r in reports.parse(datagram)] == expected
    theirs.close()
    ours.close()
