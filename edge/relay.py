"""Byte relays between two connections (tunnels): splice(2) through a pipe each way, or copying through transports.

One set of life rules for both variants (`Relay`): a direction ends when its source's end of file has
reached the destination as a half-close; the relay ends when both directions have ended, when either
side fails or resets, when no byte moved either way for the group's idle timeout, or when it is stopped.
Ending closes both connections (and the pipes); it happens once.

- `SpliceRelay`: two connected non-blocking TCP sockets. Each direction moves bytes socket -> pipe ->
  socket with os.splice (the bytes never enter Python), driven by the event loop's add_reader/add_writer.
  A direction reads its source only while its pipe is empty and its destination takes bytes, so at most
  one pipe's worth is in flight per direction, held by the kernel.
- `CopyRelay`: two asyncio transports, at least one of them not a plain socket (TLS: the bytes must pass
  through the SSL layer, which splice cannot). Each side's bytes are written to the other's transport;
  a transport whose write buffer passes its high-water mark pauses reading on the other side.
- `StreamRelay`: an HTTP/2 stream (RFC 8441: a WebSocket over an extended CONNECT) and an asyncio transport
  to the origin. The stream's DATA goes to the transport; the client gets its stream window back only as
  the transport takes the bytes. The origin's bytes go out as DATA within the stream's and connection's
  send windows; while they do not fit, the origin is not read.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import Protocol

PIPE_BYTES = 1 << 16  # bytes spliced into a pipe per read (Linux's default pipe capacity)
BURST = 16  # pipe-fulls one direction moves per callback before the loop turns (fairness among tunnels)
COPY_HIGH = 256 * 1024  # a transport's buffered bytes above which its source stops being read
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)

# Why a relay ended (Relay.reason).
DONE, IDLE, ERROR, STOPPED = "done", "idle", "error", "stopped"
#: Seconds a transport of a relay that ended normally has to flush what it still buffers before it is aborted:
#: a peer that never reads would otherwise hold its fd and buffer for good (no relay watches it any more).
CLOSE_GRACE = 10.0


class RelayGroup:
    """The relays of one owner (a worker): their idle sweep and byte counters, summed as they move."""

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float | None = None,
                 sweep: float | None = None) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout  # seconds without a byte either way; None: no idle limit
        self.sweep_every = sweep if sweep is not None else min(1.0, (idle_timeout or 4.0) / 4)
        self.relays: set[Relay] = set()
        self.opened = 0  # relays ever started
        self.moved = [0, 0]  # bytes relayed a -> b and b -> a, every relay of the group
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.relays)

    def add(self, relay: Relay) -> None:
        """Count a relay that started, and watch it for idleness."""
        self.relays.add(relay)
        self.opened += 1
        if self._sweeper is None and self.idle_timeout is not None:
            self._sweeper = self.loop.call_later(self.sweep_every, self._sweep)

    def discard(self, relay: Relay) -> None:
        """A relay ended."""
        self.relays.discard(relay)

    def _sweep(self) -> None:
        """End every relay idle for idle_timeout (one timer for the group, not one per relay)."""
        now = self.loop.time()
        limit = self.idle_timeout
        for relay in [r for r in self.relays if now - r.last >= limit]:
            relay.end(IDLE)
        self._sweeper = self.loop.call_later(self.sweep_every, self._sweep) if self.relays else None

    def close(self) -> None:
        """End every relay (STOPPED) and the sweep."""
        for relay in list(self.relays):
            relay.end(STOPPED)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class Relay:
    """The life rules every relay variant shares: directions, counters, the idle clock, one end."""

    __slots__ = ("group", "loop", "ended", "moved", "last", "reason", "on_end")

    def __init__(self, group: RelayGroup, on_end: Callable[[Relay], None] | None = None) -> None:
        self.group = group
        self.loop = group.loop
        self.ended = [False, False]  # direction 0: a -> b, direction 1: b -> a
        self.moved = [0, 0]  # bytes relayed each way
        self.last = self.loop.time()  # when a byte last moved either way
        self.reason: str | None = None  # set once the relay has ended
        self.on_end = on_end
        group.add(self)

    @property
    def done(self) -> bool:
        """Whether the relay has ended."""
        return self.reason is not None

    def _moved(self, direction: int, n: int) -> None:
        """`n` bytes reached the destination of `direction`."""
        self.moved[direction] += n
        self.group.moved[direction] += n
        self.last = self.loop.time()

    def _direction_ended(self, direction: int) -> None:
        """The source's end of file reached the destination as a half-close; both ended: the relay ends."""
        self.ended[direction] = True
        if self.ended[1 - direction]:
            self.end(DONE)

    def end(self, reason: str) -> None:
        """End the relay (once): close both connections and everything the variant holds."""
        if self.reason is not None:
            return
        self.reason = reason
        self.group.discard(self)
        try:
            self._release(reason)
        finally:
            if self.on_end is not None:
                self.on_end(self)

    def _release(self, reason: str) -> None:  # pragma: no cover - every variant has its own
        raise NotImplementedError


def let_go(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, reason: str) -> None:
    """Close a relay's transport at its end: at once after an error, an idle timeout or a shutdown (nobody
    waits for what is buffered); after a normal end once what is buffered is sent, within CLOSE_GRACE s."""
    if reason != DONE:
        transport.abort()
        return
    transport.close()
    if transport.get_write_buffer_size():
        loop.call_later(CLOSE_GRACE, transport.abort)  # nothing if it closed by then


# -- splice(2) between two sockets ------------------------------------------------------------------------


class _Splice:
    """One direction of a SpliceRelay: src socket -> pipe -> dst socket, plus user-space bytes to send first."""

    __slots__ = ("relay", "direction", "src", "dst", "dst_sock", "rp", "wp", "inpipe", "head", "eof",
                 "reading", "writing")

    def __init__(self, relay: SpliceRelay, direction: int, src: socket.socket, dst: socket.socket,
                 head: bytes) -> None:
        self.relay = relay
        self.direction = direction
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.rp, self.wp = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.inpipe = 0  # bytes in the pipe, not yet written to dst
        self.head = head  # bytes (a 101 head, early frames) that go to dst before anything spliced
        self.eof = False
        self.reading = False  # a reader is registered on src
        self.writing = False  # a writer is registered on dst

    def pump(self) -> None:
        """Move bytes until the source has none or the destination takes none; then wait for that side."""
        relay = self.relay
        if relay.reason is not None:
            return
        try:
            for _ in range(BURST):
                if self.head:
                    try:
                        n = os.write(self.dst, self.head)
                    except BlockingIOError:
                        self._want_write()
                        return
                    self.head = self.head[n:]
                    relay._moved(self.direction, n)
                    continue
                if self.inpipe:
                    try:
                        n = os.splice(self.rp, self.dst, self.inpipe, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        self._want_write()  # back-pressure: no reading while the destination is full
                        return
                    self.inpipe -= n
                    relay._moved(self.direction, n)
                    continue
                if self.eof:
                    # The pipe is drained: the source's end of file becomes the destination's (half-close).
                    self._unwatch()
                    self.dst_sock.shutdown(socket.SHUT_WR)
                    relay._direction_ended(self.direction)
                    return
                try:
                    n = os.splice(self.src, self.wp, PIPE_BYTES, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    self._want_read()
                    return
                if n == 0:
                    self.eof = True
                else:
                    self.inpipe = n
            # A burst's worth moved: give the other tunnels a turn, then go on (the watches are level-triggered).
            if self.head or self.inpipe:
                self._want_write()
            else:
                self._want_read()
        except OSError as e:
            if e.errno in _AGAIN:
                if self.head or self.inpipe:
                    self._want_write()
                else:
                    self._want_read()
                return
            relay.end(ERROR)  # reset, broken pipe, ...: either side's failure ends both

    def _want_read(self) -> None:
        loop = self.relay.loop
        if self.writing:
            self.writing = False
            loop.remove_writer(self.dst)
        if not self.reading:
            self.reading = True
            loop.add_reader(self.src, self.pump)

    def _want_write(self) -> None:
        loop = self.relay.loop
        if self.reading:
            self.reading = False
            loop.remove_reader(self.src)
        if not self.writing:
            self.writing = True
            loop.add_writer(self.dst, self.pump)

    def _unwatch(self) -> None:
        loop = self.relay.loop
        if self.reading:
            self.reading = False
            loop.remove_reader(self.src)
        if self.writing:
            self.writing = False
            loop.remove_writer(self.dst)

    def close(self) -> None:
        """Stop watching and close the pipe."""
        self._unwatch()
        for fd in (self.rp, self.wp):
            try:
                os.close(fd)
            except OSError:
                pass
        self.rp = self.wp = -1


class SpliceRelay(Relay):
    """A relay between two connected, non-blocking TCP sockets, zero-copy: splice(2) through a pipe each way.

    `to_b` / `to_a` are bytes already read from the other side (a handshake's leftovers) that go first.
    The relay owns the sockets from here on and closes them when it ends.
    """

    __slots__ = ("a", "b", "ways")

    def __init__(self, group: RelayGroup, a: socket.socket, b: socket.socket, *, to_b: bytes = b"",
                 to_a: bytes = b"", on_end: Callable[[Relay], None] | None = None) -> None:
        self.a = a
        self.b = b
        self.ways: list[_Splice] = []
        a.setblocking(False)
        b.setblocking(False)
        try:
            self.ways.append(_Splice(self, 0, a, b, to_b))
            self.ways.append(_Splice(self, 1, b, a, to_a))
        except OSError:  # no fds left for the pipes: close what was made, and the sockets
            for way in self.ways:
                way.close()
            a.close()
            b.close()
            raise
        Relay.__init__(self, group, on_end)
        for way in self.ways:
            way.pump()

    def _release(self, reason: str) -> None:
        for way in self.ways:
            way.close()
        for sock in (self.a, self.b):
            try:
                sock.close()
            except OSError:
                pass


# -- copying through asyncio transports ----------------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One transport of a CopyRelay: what it receives is written to the other side's transport."""

    __slots__ = ("relay", "direction", "transport", "other", "paused", "eof")

    def __init__(self, relay: CopyRelay, direction: int, transport: asyncio.Transport) -> None:
        self.relay = relay
        self.direction = direction  # of the bytes it receives: 0 a -> b, 1 b -> a
        self.transport = transport
        self.other: _Side | None = None
        self.paused = False  # its reading is paused (the other side's buffer is full)
        self.eof = False

    def data_received(self, data: bytes) -> None:  # noqa: D102
        relay = self.relay
        if relay.reason is not None:
            return
        self.other.transport.write(data)
        relay._moved(self.direction, len(data))

    def eof_received(self) -> bool:  # noqa: D102
        relay = self.relay
        self.eof = True
        if relay.reason is not None:
            return False
        out = self.other.transport
        if out.is_closing():
            relay.end(DONE)
            return False
        if out.can_write_eof():
            out.write_eof()  # after its buffered bytes (asyncio and uvloop flush first): the half-close passes
            relay._direction_ended(self.direction)
            # Keep our side open for the other direction, where it can stay half-open (not TLS: asyncio's
            # SSL transport closes after its peer's end of file whatever this returns).
            return not relay.done and self.transport.can_write_eof()
        # The other side cannot half-close (TLS): its buffered bytes are flushed and the relay ends.
        relay.end(DONE)
        return False

    def pause_writing(self) -> None:  # noqa: D102 - our transport is full: stop reading the other side
        other = self.other
        if not other.paused and self.relay.reason is None:
            other.paused = True
            other.transport.pause_reading()

    def resume_writing(self) -> None:  # noqa: D102
        other = self.other
        if other.paused and self.relay.reason is None:
            other.paused = False
            other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.relay.end(DONE if exc is None and self.eof else ERROR)


class CopyRelay(Relay):
    """A relay between two asyncio transports (TLS on either side): bytes are copied, under the same rules.

    The transports are taken over (their protocols replaced) and their reading resumed; `to_b` / `to_a` are
    written first. Back-pressure: each transport's write buffer is limited to `high` bytes, above which the
    other side stops being read. Half-close passes with write_eof where the destination can (plain TCP);
    where it cannot (TLS), the source's end of file ends the relay after the destination's buffer is flushed.
    """

    __slots__ = ("sides",)

    def __init__(self, group: RelayGroup, a: asyncio.Transport, b: asyncio.Transport, *, to_b: bytes = b"",
                 to_a: bytes = b"", on_end: Callable[[Relay], None] | None = None, high: int = COPY_HIGH) -> None:
        Relay.__init__(self, group, on_end)
        side_a, side_b = _Side(self, 0, a), _Side(self, 1, b)
        side_a.other, side_b.other = side_b, side_a
        self.sides = (side_a, side_b)
        for side in self.sides:
            # The protocol first: a buffer already over the new limit pauses this side, not the old protocol.
            side.transport.set_protocol(side)
            side.transport.set_write_buffer_limits(high=high, low=high // 4)
        if to_b:
            b.write(to_b)
            self._moved(0, len(to_b))
        if to_a:
            a.write(to_a)
            self._moved(1, len(to_a))
        for side in self.sides:
            if side.transport.is_closing():
                self.end(ERROR)  # one side went away during the handshake
                return
        for side in self.sides:
            side.transport.resume_reading()

    def _release(self, reason: str) -> None:
        for side in self.sides:
            let_go(self.loop, side.transport, reason)


# -- an HTTP/2 stream and a transport (RFC 8441) ---------------------------------------------------------------


class StreamSide(Protocol):
    """The HTTP/2 stream of a StreamRelay, as its adapter offers it (edge/h2tunnel.py TunnelStream)."""

    def window(self) -> int:
        """Bytes DATA frames may carry now (the stream's and the connection's send windows, RFC 9113 §6.9.1;
        0 while the connection's own transport is full); -1 once the stream can carry no more."""

    def send(self, data: bytes, end: bool) -> None:
        """`data` as DATA frames on the stream (at most window() bytes); `end`: END_STREAM on the last."""

    def credit(self, n: int) -> None:
        """Give the client `n` bytes of the stream's receive window back (WINDOW_UPDATE, RFC 9113 §6.9)."""

    def finish(self, reason: str) -> None:
        """The relay ended for `reason` (DONE, IDLE, ERROR, STOPPED): close the stream accordingly."""


class _OriginSide(asyncio.Protocol):
    """The transport of a StreamRelay: what it receives goes to the stream."""

    __slots__ = ("relay",)

    def __init__(self, relay: StreamRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self.relay._from_origin(data)

    def eof_received(self) -> bool:  # noqa: D102
        return self.relay._origin_eof()

    def pause_writing(self) -> None:  # noqa: D102 - the origin takes no more: the client's window waits
        self.relay.full = True

    def resume_writing(self) -> None:  # noqa: D102
        self.relay._drained()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.relay._origin_lost(exc)


class StreamRelay(Relay):
    """A relay between an HTTP/2 stream (`stream`, direction 0 is its DATA to the origin) and an asyncio
    transport, under the same rules, with HTTP/2 flow control both ways (RFC 9113 §5.2).

    Client -> origin: each DATA's bytes are written to the transport; the stream's window is given back
    (`stream.credit`) at once while the transport's buffer is under `high`, else when it drains. So the
    client never has more than one stream window (plus `high`) in flight. The adapter gives the connection's
    window back itself, at once (edge's engine): the bytes are held here, and one slow origin must not stall
    the connection's other streams.
    Origin -> client: what the transport delivers goes out as DATA within the windows; what does not fit
    waits here (one read's worth) and the transport is not read until it is sent. Half-close passes both
    ways: END_STREAM becomes write_eof (where the transport can; a TLS one cannot, and the relay then ends
    after its buffer is flushed, as CopyRelay does), the origin's end of file becomes END_STREAM.
    The transport is taken over (its protocol replaced, its reading resumed); `to_stream`: bytes the origin
    sent already (after its 101), which go first.
    """

    __slots__ = ("stream", "transport", "pending", "owed", "full", "paused", "origin_eof", "origin_gone")

    def __init__(self, group: RelayGroup, stream: StreamSide, transport: asyncio.Transport, *,
                 to_stream: bytes = b"", on_end: Callable[[Relay], None] | None = None,
                 high: int = COPY_HIGH) -> None:
        self.stream = stream
        self.transport = transport
        self.pending = bytearray()  # origin bytes the stream's windows have no room for yet
        self.owed = 0  # stream window the client is owed for bytes the transport has not taken yet
        self.full = False  # the transport's buffer is over `high`
        self.paused = False  # the transport's reading is paused (pending bytes wait for window)
        self.origin_eof = False
        self.origin_gone = False
        Relay.__init__(self, group, on_end)
        transport.set_protocol(_OriginSide(self))  # first: see CopyRelay
        transport.set_write_buffer_limits(high=high, low=high // 4)
        if transport.is_closing():
            self.end(ERROR)  # the origin went away during the handshake
            return
        self.paused = not transport.is_reading()  # (a handshake leaves it paused; pump() decides from here)
        if to_stream:
            self._from_origin(to_stream)
        else:
            self.pump()

    # client -> origin

    def from_stream(self, data: bytes, flow: int, end: bool) -> None:
        """A DATA frame's `data` from the client (`flow`: its flow-controlled length, padding included);
        `end`: it carried END_STREAM, which half-closes the origin's side (RFC 9113 §8.5)."""
        if self.reason is not None:
            return
        gone = self.origin_gone or self.transport.is_closing()  # closed after its end of file: dropped
        if data and not gone:
            self.transport.write(data)
            self._moved(0, len(data))
        if flow:
            if self.full and not gone:
                self.owed += flow  # given back when the transport drains (_drained)
            else:
                self.stream.credit(flow)
        if end and not self.ended[0]:
            transport = self.transport
            if gone:
                self._direction_ended(0)
            elif transport.can_write_eof():
                transport.write_eof()  # after its buffered bytes
                self._direction_ended(0)
            else:
                self.end(DONE)  # a TLS origin cannot half-close: its buffer is flushed, and the relay ends

    def _drained(self) -> None:
        """The transport's buffer fell under its low mark: the client gets the window it is owed."""
        self.full = False
        if self.owed and self.reason is None:
            owed, self.owed = self.owed, 0
            self.stream.credit(owed)

    # origin -> client

    def _from_origin(self, data: bytes) -> None:
        if self.reason is not None:
            return
        self.pending += data
        self.pump()

    def pump(self) -> None:
        """Send what waits within the stream's windows (the adapter calls it when they open); the origin is
        read only while nothing waits; once its end of file is reached and all is sent, END_STREAM."""
        if self.reason is not None:
            return
        pending = self.pending
        while pending:
            window = self.stream.window()
            if window < 0:
                self.end(ERROR)  # the stream is gone (reset, or its connection)
                return
            if window == 0:
                break
            n = min(window, len(pending))
            self.stream.send(bytes(pending[:n]), False)
            del pending[:n]
            self._moved(1, n)
            if self.reason is not None:
                return
        if pending:
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()  # back-pressure: nothing more until the window opens
            return
        if self.origin_eof:
            if not self.ended[1]:
                self.stream.send(b"", True)  # the origin's end of file: END_STREAM (needs no window, §6.9)
                self._direction_ended(1)
            if self.origin_gone and self.reason is None:
                self.end(DONE)  # the origin closed both ways: the client's side has nowhere to go
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()

    def _origin_eof(self) -> bool:
        self.origin_eof = True
        if self.reason is not None:
            return False
        self.pump()
        # Keep the transport open for the client's direction (half-open), where it can stay so.
        return self.reason is None and self.transport.can_write_eof()

    def _origin_lost(self, exc: Exception | None) -> None:
        self.origin_gone = True
        if self.reason is not None:
            return
        if exc is not None or not self.origin_eof:
            self.end(ERROR)  # a reset, or a close without its end of file first
        else:
            self.pump()  # what waits still goes to the client, then END_STREAM, then the end

    def _release(self, reason: str) -> None:
        self.pending = bytearray()
        let_go(self.loop, self.transport, reason)
        self.stream.finish(reason)
