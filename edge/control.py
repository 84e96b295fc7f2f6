"""The node's control channel: JSON datagrams between the admin endpoint and each worker, acknowledged.

Every process binds an abstract-namespace unix datagram socket named after the supervisor's pid and
its own (`\\0edge-<supervisor>-<pid>`), so the admin endpoint reaches the workers of its node
whatever restarts and reloads have changed, knowing only their pids (from the shared stats), and no
file is left behind. A worker answers each command to the sender's address with the same `id`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import inspect
from collections.abc import Awaitable, Callable, Iterable


MAX_DATAGRAM = 256 * 1024  # a purge of many paths fits in one datagram
#: The "pid" of the manager's request socket (`\0edge-<supervisor>-0`: no process has pid 0), where a worker
#: asks the node for a purge (an invalidation after an unsafe method, edge/passthrough.py), whatever the
#: manager's own pid after its restarts.
MANAGER = 0


def address(supervisor: int, pid: int) -> bytes:
    """The abstract socket name of process `pid` in the node of `supervisor`."""
    return b"\0edge-%d-%d" % (supervisor, pid)


def bind(supervisor: int, pid: int | None = None) -> socket.socket:
    """This process's control socket (non-blocking, large buffers)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(address(supervisor, os.getpid() if pid is None else pid))
    return sock


def serve(loop: asyncio.AbstractEventLoop, sock: socket.socket,
          handle: Callable[[dict], dict | Awaitable[dict]]) -> None:
    """Answer every command arriving on `sock` with handle(command) (worker side, on its event loop); a handle
    that returns an awaitable is answered when it is done (the manager's purges)."""

    def send(reply: dict, sender: bytes) -> None:
        if sender:
            try:
                sock.sendto(json.dumps(reply).encode(), sender)
            except OSError:
                pass  # the asker is gone

    async def later(pending: Awaitable[dict], ident: object, sender: bytes) -> None:
        try:
            reply = await pending
            reply["id"] = ident
        except Exception as e:  # noqa: BLE001 - a failed command gets an error answer
            reply = {"id": ident, "error": f"{type(e).__name__}: {e}"}
        send(reply, sender)

    def readable() -> None:
        while True:
            try:
                data, sender = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            ident = None
            try:
                command = json.loads(data)
                ident = command.get("id")
                reply = handle(command)
                if inspect.isawaitable(reply):
                    task = loop.create_task(later(reply, ident, sender))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    continue
                reply["id"] = ident
            except Exception as e:  # noqa: BLE001 - a bad command gets an error answer, never kills the worker
                reply = {"id": ident, "error": f"{type(e).__name__}: {e}"}
            if sender:
                try:
                    sock.sendto(json.dumps(reply).encode(), sender)
                except OSError:
                    pass  # the asker is gone

    tasks: set[asyncio.Task] = set()
    loop.add_reader(sock.fileno(), readable)


class Asker:
    """Sends a command to several processes and gathers their answers (admin side)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, supervisor: int, *, anonymous: bool = False) -> None:
        """`anonymous`: a socket of its own under a name the kernel picks (a worker, whose own name its command
        socket holds, asking the manager)."""
        self.loop = loop
        self.supervisor = supervisor
        if anonymous:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self.sock.bind(b"")  # Linux autobind: a unique abstract name, so the answer finds its way back
        else:
            self.sock = bind(supervisor)
        self.next_id = 0
        self.waiting: dict[int, tuple[set[int], dict[int, dict], asyncio.Future]] = {}
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, sender = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            try:
                reply = json.loads(data)
                pid = int(sender.rsplit(b"-", 1)[1])
            except (ValueError, IndexError):
                continue
            pending = self.waiting.get(reply.get("id"))
            if pending is None:
                continue
            left, answers, done = pending
            if pid in left:
                left.discard(pid)
                answers[pid] = reply
                if not left and not done.done():
                    done.set_result(None)

    async def ask(self, pids: Iterable[int], command: dict, timeout: float) -> tuple[dict[int, dict], set[int]]:
        """Send `command` to each pid; (answers by pid, pids that did not answer within `timeout`)."""
        self.next_id += 1
        ident = self.next_id
        data = json.dumps({**command, "id": ident}).encode()
        left: set[int] = set()
        answers: dict[int, dict] = {}
        for pid in pids:
            try:
                self.sock.sendto(data, address(self.supervisor, pid))
                left.add(pid)
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # no such worker any more (it ended between the stats read and now)
            except OSError as e:
                answers[pid] = {"error": str(e)}
        done = self.loop.create_future()
        if not left:
            return answers, set()
        self.waiting[ident] = (left, answers, done)
        try:
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            del self.waiting[ident]
        return answers, set(left)

    def close(self) -> None:
        """Stop listening."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
