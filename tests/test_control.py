"""edge/control.py: acknowledged JSON datagrams between the admin endpoint and workers, in one process.

The asker binds the name of this process's pid; the "workers" here are sockets bound under made-up pids
of a made-up supervisor (a number no real edge node has), served on the same event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket

import pytest

from edge import control


@pytest.fixture
def supervisor() -> int:
    return random.randrange(10**8, 10**9)  # never a real pid: no clash with edge nodes running beside


def fake_pids(n: int) -> list[int]:
    base = random.randrange(10**6, 10**7)
    return [base + i for i in range(n)]


def run(coro):
    return asyncio.run(coro)


def test_address_names_supervisor_and_pid():
    assert control.address(12, 345) == b"\0edge-12-345"


def test_bind_uses_the_abstract_namespace(supervisor):
    sock = control.bind(supervisor, 4242)
    try:
        assert sock.getsockname() == b"\0edge-%d-4242" % supervisor
        assert sock.type & socket.SOCK_DGRAM
        with pytest.raises(OSError):
            control.bind(supervisor, 4242)  # one process per name
    finally:
        sock.close()


def test_ask_gathers_every_answer(supervisor):
    async def main():
        loop = asyncio.get_running_loop()
        pids = fake_pids(3)
        seen: list[tuple[int, dict]] = []
        socks = []
        for pid in pids:
            sock = control.bind(supervisor, pid)
            socks.append(sock)
            control.serve(loop, sock, lambda cmd, pid=pid: seen.append((pid, cmd)) or {"dropped": pid % 7})
        asker = control.Asker(loop, supervisor)
        try:
            answers, missing = await asker.ask(pids, {"op": "purge", "paths": ["/a"]}, 5.0)
            assert missing == set()
            assert set(answers) == set(pids)
            for pid in pids:
                assert answers[pid]["dropped"] == pid % 7
            assert sorted(p for p, _ in seen) == sorted(pids)
            assert all(cmd["op"] == "purge" and cmd["paths"] == ["/a"] and "id" in cmd for _, cmd in seen)
            # a second round gets a new id and its own answers
            again, missing = await asker.ask(pids[:1], {"op": "ping"}, 5.0)
            assert set(again) == {pids[0]} and missing == set()
            assert again[pids[0]]["id"] != answers[pids[0]]["id"]
        finally:
            asker.close()
            for sock in socks:
                loop.remove_reader(sock.fileno())
                sock.close()

    run(main())


def test_ask_skips_processes_that_are_gone_and_reports_silent_ones(supervisor):
    async def main():
        loop = asyncio.get_running_loop()
        live, silent, gone = fake_pids(3)
        serving = control.bind(supervisor, live)
        control.serve(loop, serving, lambda cmd: {})
        mute = control.bind(supervisor, silent)  # bound, never answers (a stopped worker)
        asker = control.Asker(loop, supervisor)
        try:
            answers, missing = await asker.ask([live, silent, gone], {"op": "ping"}, 0.5)
            assert set(answers) == {live}
            assert missing == {silent}, "a process without a socket ended: not waited for"
            answers, missing = await asker.ask([gone], {"op": "ping"}, 5.0)
            assert answers == {} and missing == set()
        finally:
            asker.close()
            loop.remove_reader(serving.fileno())
            serving.close()
            mute.close()

    run(main())


def test_a_late_answer_to_an_earlier_question_is_ignored(supervisor):
    async def main():
        loop = asyncio.get_running_loop()
        [pid] = fake_pids(1)
        worker = control.bind(supervisor, pid)  # answered by hand below
        asker = control.Asker(loop, supervisor)
        try:
            answers, missing = await asker.ask([pid], {"op": "ping"}, 0.2)
            assert missing == {pid}
            first = json.loads(worker.recv(control.MAX_DATAGRAM))
            task = loop.create_task(asker.ask([pid], {"op": "ping"}, 5.0))
            await asyncio.sleep(0.05)
            second = json.loads(worker.recv(control.MAX_DATAGRAM))
            assert second["id"] != first["id"]
            worker.sendto(json.dumps({"id": first["id"], "stale": True}).encode(), control.address(supervisor, os.getpid()))
            worker.sendto(json.dumps({"id": second["id"], "fresh": True}).encode(),
                          control.address(supervisor, os.getpid()))
            answers, missing = await task
            assert missing == set() and answers[pid].get("fresh") is True
        finally:
            asker.close()
            worker.close()

    run(main())


def test_serve_answers_a_failing_command_with_an_error(supervisor):
    async def main():
        loop = asyncio.get_running_loop()
        [pid] = fake_pids(1)
        sock = control.bind(supervisor, pid)

        def handle(cmd):
            if cmd.get("op") != "ping":
                raise ValueError(f"unknown command {cmd.get('op')!r}")
            return {}

        control.serve(loop, sock, handle)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.bind(b"\0edge-test-client-%d" % random.randrange(10**9))
        client.setblocking(False)
        try:
            client.sendto(b"not json", control.address(supervisor, pid))
            reply = json.loads(await asyncio.wait_for(loop.sock_recv(client, 65536), 5))
            assert "error" in reply, "a bad datagram gets an error answer; the worker lives on"
            client.sendto(json.dumps({"op": "ping", "id": 7}).encode(), control.address(supervisor, pid))
            assert json.loads(await asyncio.wait_for(loop.sock_recv(client, 65536), 5)) == {"id": 7}
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            client.close()

    run(main())


def test_an_error_answer_reaches_the_asker(supervisor):
    async def main():
        loop = asyncio.get_running_loop()
        [pid] = fake_pids(1)
        sock = control.bind(supervisor, pid)

        def handle(cmd):
            raise ValueError(f"unknown command {cmd.get('op')!r}")

        control.serve(loop, sock, handle)
        asker = control.Asker(loop, supervisor)
        try:
            answers, missing = await asker.ask([pid], {"op": "frobnicate"}, 1.0)
            assert missing == set(), "the worker did answer (with an error)"
            assert "frobnicate" in answers[pid]["error"]
        finally:
            asker.close()
            loop.remove_reader(sock.fileno())
            sock.close()

    run(main())
