"""edge/relay.py alone: SpliceRelay and CopyRelay between real loopback TCP connections in one uvloop loop.

Each case builds client <-> [a | relay | b] <-> server from two accepted loopback connections, drives the
client and server ends with the loop's socket calls, and ends by checking that every fd it made is
closed again (/proc/self/fd).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from edge.relay import (
    DONE,
    ERROR,
    IDLE,
    STOPPED,
    CopyRelay,
    RelayGroup,
    SpliceRelay,
    StreamRelay,
)

MiB = 1 << 20


def open_fds() -> set[tuple[str, str]]:
    """This process's open file descriptors with what each refers to (sockets and pipes by inode)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass  # the listing's own fd, gone already
    return out


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    """Run one test coroutine in a fresh uvloop loop and check it leaves no fd of its own behind."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # libuv's one per-process pipe is made
        runner.run(asyncio.sleep(0))
    before = open_fds()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro_fn())
    leaked = open_fds() - before  # (other tests' threads may close fds meanwhile: only new ones count)
    assert not leaked, f"fds leaked: {leaked}"


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection, non-blocking."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        out = socket.create_connection(listener.getsockname())
        inner, _ = listener.accept()
    for s in (out, inner):
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return out, inner


def chain() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """(client, a, b, server): client<->a and b<->server are connections; the relay joins a and b."""
    client, a = tcp_pair()
    b, server = tcp_pair()
    return client, a, b, server


async def recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes (fails on an early end of file)."""
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, min(n - len(out), MiB))
        assert chunk, f"end of file after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


async def recv_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until end of file (or a reset); returns what came."""
    out = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, MiB)
            except ConnectionResetError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (in the loop) until predicate() holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def close_all(*socks: socket.socket) -> None:
    """Close test-side sockets."""
    for s in socks:
        s.close()


# -- the splice relay ---------------------------------------------------------------------------------------


def test_splice_both_ways_and_prefix_order() -> None:
    """Bytes go both ways; `to_b`/`to_a` go before anything spliced; counters count each way."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = chain()
        group = RelayGroup(loop)
        ended = []
        relay = SpliceRelay(group, a, b, to_b=b"early-", to_a=b"HEAD-", on_end=ended.append)
        await loop.sock_sendall(client, b"hello")
        assert await recv_exact(loop, server, 11) == b"early-hello"
        await loop.sock_sendall(server, b"world")
        assert await recv_exact(loop, client, 10) == b"HEAD-world"
        assert relay.moved == [11, 10] and group.moved == [11, 10] and len(group) == 1 and group.opened == 1
        client.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)
        assert await recv_eof(loop, server) == b""
        assert await recv_eof(loop, client) == b""
        await until(lambda: relay.done)
        assert relay.reason == DONE and ended == [relay] and len(group) == 0
        close_all(client, server)

    run(main)


def test_splice_8mib_each_way_concurrently() -> None:
    """8 MiB each way at once arrive whole and in order."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = chain()
        relay = SpliceRelay(RelayGroup(loop), a, b)
        up, down = os.urandom(8 * MiB), os.urandom(8 * MiB)
        got = await asyncio.gather(loop.sock_sendall(client, up), loop.sock_sendall(server, down),
                                   recv_exact(loop, server, len(up)), recv_exact(loop, client, len(down)))
        assert got[2] == up and got[3] == down
        assert relay.moved == [len(up), len(down)]
        close_all(client, server)
        await until(lambda: relay.done)
        assert relay.reason in (DONE, ERROR)

    run(main)


def test_splice_back_pressure() -> None:
    """A destination that does not read: the relay stops reading, the source's send buffer fills, nothing grows."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = chain()
        for s in (a, b, server):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        relay = SpliceRelay(RelayGroup(loop), a, b)
        stream = os.urandom(16 * MiB)
        sent = 0
        full_since = None
        async with asyncio.timeout(10):
            while True:  # write without blocking until the client's send buffer stays full
                try:
                    sent += client.send(stream[sent:sent + 64 * 1024])
                    full_since = None
                except BlockingIOError:
                    if full_since is None:
                        full_since = loop.time()
                    elif loop.time() - full_since > 0.5:
                        break
                    await asyncio.sleep(0.02)
        moved = relay.moved[0]
        way = relay.ways[0]
        assert not way.reading and way.writing, "the relay must wait for the destination, not read the source"
        assert way.inpipe > 0  # what it holds is one pipe's worth at most, in the kernel
        await asyncio.sleep(0.3)
        assert relay.moved[0] == moved, "nothing may move while the destination does not read"
        assert sent - moved > 0  # the rest waits in the client's send buffer and a's receive buffer
        # The destination reads again: every byte arrives, once, in order.
        data = await recv_exact(loop, server, sent)
        assert data == stream[:sent]
        assert relay.moved[0] == sent
        close_all(client, server)
        await until(lambda: relay.done)

    run(main)


@pytest.mark.parametrize("first", ["client", "server"])
def test_splice_half_close(first: str) -> None:
    """One side's end of file reaches the other as a half-close; the other way keeps working until it ends too."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = chain()
        relay = SpliceRelay(RelayGroup(loop), a, b)
        closer, other = (client, server) if first == "client" else (server, client)
        await loop.sock_sendall(closer, b"last words")
        closer.shutdown(socket.SHUT_WR)
        assert await recv_eof(loop, other) == b"last words"
        assert not relay.done
        direction = 0 if first == "client" else 1
        await until(lambda: relay.ended[direction])
        # The other direction still carries bytes.
        await loop.sock_sendall(other, b"x" * 100_000)
        assert await recv_exact(loop, closer, 100_000) == b"x" * 100_000
        other.shutdown(socket.SHUT_WR)
        assert await recv_eof(loop, closer) == b""
        await until(lambda: relay.done)
        assert relay.reason == DONE
        close_all(client, server)

    run(main)


@pytest.mark.parametrize("side", ["client", "server"])
def test_splice_reset_ends_both(side: str) -> None:
    """A reset on one side ends the relay and closes the other side's connection."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = chain()
        relay = SpliceRelay(RelayGroup(loop), a, b)
        await loop.sock_sendall(client, b"ping")
        assert await recv_exact(loop, server, 4) == b"ping"
        resetter, other = (client, server) if side == "client" else (server, client)
        resetter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resetter.close()  # RST
        assert await recv_eof(loop, other) == b""
        await until(lambda: relay.done)
        assert relay.reason == ERROR
        other.close()

    run(main)


def test_splice_idle_timeout() -> None:
    """No byte either way for the idle timeout ends the relay; traffic keeps it alive."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = chain()
        group = RelayGroup(loop, idle_timeout=0.4, sweep=0.05)
        relay = SpliceRelay(group, a, b)
        for _ in range(6):  # 0.6 s of traffic every 0.1 s: not idle
            await loop.sock_sendall(client, b".")
            assert await recv_exact(loop, server, 1) == b"."
            await asyncio.sleep(0.1)
        assert not relay.done
        started = loop.time()
        assert await recv_eof(loop, client) == b""
        assert await recv_eof(loop, server) == b""
        assert relay.reason == IDLE and 0.3 <= loop.time() - started < 2.0
        close_all(client, server)

    run(main)


def test_group_close_stops_every_relay() -> None:
    """RelayGroup.close ends every relay (a worker's drain deadline) and closes their connections."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        group = RelayGroup(loop, idle_timeout=60)
        chains = [chain() for _ in range(20)]
        relays = [SpliceRelay(group, a, b) for _, a, b, _ in chains]
        assert len(group) == 20
        group.close()
        assert len(group) == 0 and all(r.reason == STOPPED for r in relays)
        for client, _, _, server in chains:
            assert await recv_eof(loop, client) == b""
            close_all(client, server)

    run(main)


def test_splice_peer_gone_at_start() -> None:
    """A side already closed when the relay starts: it ends at once, without leaking."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a, b, server = chain()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await asyncio.sleep(0.05)
        relay = SpliceRelay(RelayGroup(loop), a, b, to_a=b"x" * 10)
        await until(lambda: relay.done)
        assert await recv_eof(loop, server) == b""
        server.close()

    run(main)


# -- the copying relay ---------------------------------------------------------------------------------------


class _Holder(asyncio.Protocol):
    """A transport's protocol until the relay takes it over: reading paused at once, nothing lost."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        transport.pause_reading()


async def plain_transport(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Transport:
    """An asyncio transport over an accepted socket, reading paused."""
    transport, _ = await loop.connect_accepted_socket(_Holder, sock=sock)
    return transport


async def tls_chain(loop: asyncio.AbstractEventLoop, cert: tuple) -> tuple:
    """(client reader/writer over TLS, server-side TLS transport a, plain transport b, server socket)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    accepted: asyncio.Future = loop.create_future()

    def factory() -> asyncio.Protocol:
        class Accept(_Holder):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                if not accepted.done():
                    accepted.set_result(transport)

        return Accept()

    srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl._create_unverified_context())
    a = await accepted
    srv.close()
    await srv.wait_closed()
    b_sock, server = tcp_pair()
    b = await plain_transport(loop, b_sock)
    return reader, writer, a, b, server


def test_copy_plain_both_ways_back_pressure_half_close() -> None:
    """The copying relay on plain transports: 8 MiB each way, back-pressure, half-close each way, counters."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a_sock, b_sock, server = chain()
        for s in (a_sock, b_sock, server):  # small kernel buffers: back-pressure shows within a few MiB
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        a, b = await plain_transport(loop, a_sock), await plain_transport(loop, b_sock)
        relay = CopyRelay(RelayGroup(loop), a, b, to_a=b"HEAD-", high=64 * 1024)
        assert await recv_exact(loop, client, 5) == b"HEAD-"
        up, down = os.urandom(8 * MiB), os.urandom(8 * MiB)
        got = await asyncio.gather(loop.sock_sendall(client, up), loop.sock_sendall(server, down),
                                   recv_exact(loop, server, len(up)), recv_exact(loop, client, len(down)))
        assert got[2] == up and got[3] == down and relay.moved == [len(up), len(down) + 5]
        # Back-pressure: the server stops reading; the relay's buffer toward it stays bounded.
        chunk = os.urandom(64 * 1024)
        send_task = loop.create_task(loop.sock_sendall(client, chunk * 160))  # 10 MiB
        await asyncio.sleep(1.0)
        moved = relay.moved[0]
        await asyncio.sleep(0.3)
        assert relay.moved[0] == moved, "reading stops while the destination's buffer is full"
        assert b.get_write_buffer_size() <= 64 * 1024 + MiB
        assert not send_task.done()
        data = await recv_exact(loop, server, len(chunk) * 160)
        await send_task
        assert data == chunk * 160
        # Half-close client -> server, then the other way.
        client.shutdown(socket.SHUT_WR)
        assert await recv_eof(loop, server) == b""
        await loop.sock_sendall(server, b"after")
        assert await recv_exact(loop, client, 5) == b"after"
        assert not relay.done
        server.shutdown(socket.SHUT_WR)
        assert await recv_eof(loop, client) == b""
        await until(lambda: relay.done)
        assert relay.reason == DONE
        close_all(client, server)
        await asyncio.sleep(0.05)  # the transports' connection_lost

    run(main)


def test_copy_reset_and_idle() -> None:
    """The copying relay: a reset ends both; idle ends it."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        group = RelayGroup(loop, idle_timeout=0.3, sweep=0.05)
        client, a_sock, b_sock, server = chain()
        relay = CopyRelay(group, await plain_transport(loop, a_sock), await plain_transport(loop, b_sock))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        assert await recv_eof(loop, client) == b""
        await until(lambda: relay.done)
        assert relay.reason == ERROR
        client.close()
        client, a_sock, b_sock, server = chain()
        relay = CopyRelay(group, await plain_transport(loop, a_sock), await plain_transport(loop, b_sock))
        assert await recv_eof(loop, client) == b""
        assert relay.reason == IDLE
        close_all(client, server)
        await asyncio.sleep(0.05)

    run(main)


def test_copy_tls_client(tls_cert) -> None:
    """A TLS client side: bytes pass through the SSL transport both ways; its end of file ends the relay."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader, writer, a, b, server = await tls_chain(loop, tls_cert)
        relay = CopyRelay(RelayGroup(loop), a, b, to_a=b"HEAD-")
        assert await reader.readexactly(5) == b"HEAD-"
        up, down = os.urandom(8 * MiB), os.urandom(8 * MiB)

        async def send_up() -> None:
            writer.write(up)
            await writer.drain()

        got = await asyncio.gather(send_up(), loop.sock_sendall(server, down), recv_exact(loop, server, len(up)),
                                   reader.readexactly(len(down)))
        assert got[2] == up and got[3] == down
        # The origin side half-closes: TLS cannot, so the relay flushes and ends.
        await loop.sock_sendall(server, b"bye")
        server.shutdown(socket.SHUT_WR)
        assert await reader.read() == b"bye"
        await until(lambda: relay.done)
        assert relay.reason == DONE
        assert await recv_eof(loop, server) == b""
        writer.close()
        server.close()
        await asyncio.sleep(0.1)

    run(main)


# -- an HTTP/2 stream and a transport (RFC 8441) ---------------------------------------------------------------


class WindowedStream:
    """A StreamSide whose send window the test opens: it keeps the DATA sent, the window given back, and how it
    finished (the HTTP/2 adapter's side is tests/test_websocket_h2.py's)."""

    def __init__(self, window: int = 0) -> None:
        self.open = window
        self.data = bytearray()
        self.ended = False
        self.credited = 0
        self.finished: str | None = None

    def window(self) -> int:  # noqa: D102
        return -1 if self.finished is not None else self.open

    def send(self, data: bytes, end: bool) -> None:  # noqa: D102
        assert len(data) <= self.open and not self.ended, "DATA beyond the window, or after END_STREAM"
        self.open -= len(data)
        self.data += data
        self.ended = end

    def credit(self, n: int) -> None:  # noqa: D102
        self.credited += n

    def finish(self, reason: str) -> None:  # noqa: D102
        self.finished = reason


def test_stream_relay_windows_back_pressure_and_half_close() -> None:
    """Origin -> stream: nothing beyond the window, the origin not read while bytes wait; stream -> origin: the
    window comes back only as the origin's transport takes the bytes; half-close both ways ends it (DONE)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        origin_sock, server = tcp_pair()
        for s in (origin_sock, server):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        stream = WindowedStream(window=5)
        relay = StreamRelay(RelayGroup(loop), stream, await plain_transport(loop, origin_sock), to_stream=b"HEAD-more",
                            high=64 * 1024)
        assert bytes(stream.data) == b"HEAD-" and relay.paused  # the rest waits for window; no reading meanwhile
        down = os.urandom(4 * MiB)
        send_task = loop.create_task(loop.sock_sendall(server, down))
        await asyncio.sleep(0.5)
        # Nothing read from the origin while the window is shut (the kernel holds what it sent).
        assert len(stream.data) == 5 and len(relay.pending) == 4
        stream.open = 8 * MiB
        relay.pump()
        await send_task
        await until(lambda: len(stream.data) == 5 + 4 + len(down))
        assert bytes(stream.data) == b"HEAD-more" + down
        # Stream -> origin, the origin not reading: the window stops coming back once its buffer is full.
        chunk = os.urandom(16 * 1024)
        for _ in range(64):  # 1 MiB, far beyond the transport's 64 KiB mark and the kernel buffers
            relay.from_stream(chunk, len(chunk) + 10, False)  # (+10: padding counts too)
        await asyncio.sleep(0.2)
        assert relay.full and stream.credited < 64 * (len(chunk) + 10)
        assert await recv_exact(loop, server, 64 * len(chunk)) == chunk * 64
        await until(lambda: stream.credited == 64 * (len(chunk) + 10))
        # Half-close: the origin's end of file is END_STREAM; the stream's end is the origin's end of file.
        server.shutdown(socket.SHUT_WR)
        await until(lambda: stream.ended)
        assert not relay.done
        relay.from_stream(b"last", 4, True)
        assert await recv_eof(loop, server) == b"last"
        await until(lambda: relay.done)
        assert relay.reason == DONE and stream.finished == DONE and relay.moved == [64 * len(chunk) + 4, 9 + len(down)]
        server.close()
        await asyncio.sleep(0.05)

    run(main)


def test_stream_relay_ends_on_an_origin_reset_or_a_stream_gone() -> None:
    """The origin's reset ends the relay (ERROR, the stream told); so does a stream that can carry no more."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        origin_sock, server = tcp_pair()
        stream = WindowedStream(window=1000)
        relay = StreamRelay(RelayGroup(loop), stream, await plain_transport(loop, origin_sock))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        await until(lambda: relay.done)
        assert relay.reason == ERROR and stream.finished == ERROR
        origin_sock, server = tcp_pair()
        stream = WindowedStream(window=0)
        relay = StreamRelay(RelayGroup(loop), stream, await plain_transport(loop, origin_sock))
        await loop.sock_sendall(server, b"for a stream that is gone")
        await until(lambda: len(relay.pending) > 0)
        stream.finished = "reset"  # window() is -1 from now on
        relay.pump()
        assert relay.reason == ERROR
        assert await recv_eof(loop, server) == b""
        server.close()
        await asyncio.sleep(0.05)

    run(main)
