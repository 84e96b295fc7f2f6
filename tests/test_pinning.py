"""Tests of worker placement and pinning (edge.pinning): assign, worker_count, real affinity and NUMA policy."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.pinning import (
    SO_INCOMING_CPU,
    Placement,
    assign,
    pin,
    set_preferred_node,
    steer_connections,
    worker_count,
)
from edge.topology import Topology, discover

# A two-node machine: CPUs 0-3 on node 0, 4-7 on node 1.
TWO_NODES = Topology(cpus=tuple(range(8)), node_of={cpu: cpu // 4 for cpu in range(8)})


def fs(*cpus: int) -> frozenset[int]:
    """A CPU set."""
    return frozenset(cpus)


def fake_sysfs(tmp_path: Path, nodes: dict[int, str]) -> str:
    """A sysfs tree with devices/system/node/nodeN/cpulist for each node."""
    base = tmp_path / "devices" / "system" / "node"
    base.mkdir(parents=True)
    for node, cpulist in nodes.items():
        (base / f"node{node}").mkdir()
        (base / f"node{node}" / "cpulist").write_text(cpulist + "\n")
    return str(tmp_path)


def in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `body` in a forked child, so this process keeps its affinity and memory policy; returns its result."""
    # The child sends {"ok": result} or {"error": ..., "errno": ...} back as JSON over a pipe, then os._exit.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            try:
                out = {"ok": body()}
            except BaseException as e:  # noqa: BLE001 -- report anything (a failed assert too) to the parent
                out = {"error": f"{type(e).__name__}: {e}", "errno": getattr(e, "errno", None)}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def policies() -> list[str]:
    """The memory policy column of every mapping in /proc/self/numa_maps."""
    with open("/proc/self/numa_maps") as f:
        return [line.split()[1] for line in f if line.strip()]


# -- assign ---------------------------------------------------------------------------------------


def test_auto_gives_each_worker_one_cpu_and_its_node() -> None:
    """'auto': worker i runs on the i-th usable CPU, with that CPU's NUMA node."""
    placements = assign("auto", TWO_NODES, 8)
    assert placements == [Placement(fs(cpu), cpu // 4) for cpu in range(8)]
    assert [p.cpu for p in placements] == list(range(8))


def test_auto_with_fewer_workers_uses_the_first_cpus() -> None:
    """Fewer workers than CPUs: the first CPUs in order."""
    assert assign("auto", TWO_NODES, 3) == [Placement(fs(0), 0), Placement(fs(1), 0), Placement(fs(2), 0)]


def test_auto_wraps_around_when_workers_exceed_cpus() -> None:
    """More workers than CPUs: placements start again from the first CPU."""
    placements = assign("auto", TWO_NODES, 11)
    assert [p.cpu for p in placements] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
    assert [p.node for p in placements] == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]


def test_auto_uses_only_cpus_in_the_affinity_mask(tmp_path: Path) -> None:
    """Under a cpuset (affinity {1, 5, 6}), 'auto' places workers on exactly those CPUs."""
    topo = discover(fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}), affinity={1, 5, 6})
    assert assign("auto", topo, 4) == [Placement(fs(1), 0), Placement(fs(5), 1), Placement(fs(6), 1),
                                       Placement(fs(1), 0)]


def test_off_leaves_every_worker_unpinned() -> None:
    """'off': one unpinned placement per worker."""
    placements = assign("off", TWO_NODES, 5)
    assert placements == [Placement(None, None)] * 5
    assert all(p.cpu == -1 and p.describe() == "unpinned" for p in placements)


def test_explicit_sets_are_used_in_turn() -> None:
    """Explicit CPU sets go to workers in order, wrapping around; each gets its set's node."""
    sets = (fs(0, 1), fs(4, 5, 6, 7), fs(3))
    placements = assign(sets, TWO_NODES, 5)
    assert placements == [Placement(fs(0, 1), 0), Placement(fs(4, 5, 6, 7), 1), Placement(fs(3), 0),
                          Placement(fs(0, 1), 0), Placement(fs(4, 5, 6, 7), 1)]


@pytest.mark.parametrize("cpus, node", [
    (fs(0, 1, 2, 3), 0),
    (fs(4, 5, 6, 7), 1),
    (fs(3, 4, 5), 1),  # two of three CPUs on node 1
    (fs(0, 1, 7), 0),  # two of three on node 0
    (fs(3, 4), 0),  # a tie goes to the lower node
    (fs(2, 3, 6, 7), 0),
    (fs(7), 1),
    (fs(*range(8)), 0),
])
def test_node_of_a_set_is_its_majority_node(cpus: frozenset[int], node: int) -> None:
    """A set's NUMA node is where most of its CPUs are (lowest node on a tie)."""
    [placement] = assign((cpus,), TWO_NODES, 1)
    assert placement == Placement(cpus, node)


def test_node_choice_from_a_discovered_topology(tmp_path: Path) -> None:
    """The same majority rule on a topology read from a fake two-node, 8-CPU sysfs tree."""
    topo = discover(fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}), affinity=set(range(8)))
    placements = assign((fs(1, 2), fs(5, 6, 0), fs(3, 4)), topo, 3)
    assert [p.node for p in placements] == [0, 1, 0]


@pytest.mark.parametrize("sets, named", [
    ((fs(0), fs(9)), "CPU 9 "),
    ((fs(7, 8, 9, 10),), "CPU 8-10 "),
    ((fs(2), fs(3, 64)), "CPU 64 "),
])
def test_a_cpu_outside_the_topology_is_refused(sets: tuple[frozenset[int], ...], named: str) -> None:
    """A set naming a CPU the process may not use raises ValueError naming that CPU and cpu_affinity."""
    with pytest.raises(ValueError) as caught:
        assign(sets, TWO_NODES, 4)
    message = str(caught.value)
    assert message.startswith("cpu_affinity:")
    assert named in message
    assert "usable: 0-7" in message


def test_a_cpu_outside_the_affinity_mask_is_refused(tmp_path: Path) -> None:
    """CPU 6 exists in sysfs but the cpuset allows only 0-5: it is refused, and named."""
    topo = discover(fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}), affinity=set(range(6)))
    with pytest.raises(ValueError, match=r"CPU 6 .*usable: 0-5"):
        assign((fs(5), fs(6)), topo, 2)
    assert assign((fs(5), fs(4)), topo, 2) == [Placement(fs(5), 1), Placement(fs(4), 1)]


# -- worker_count and Placement -------------------------------------------------------------------


def test_worker_count() -> None:
    """'auto' is one worker per usable CPU; a number is taken as is."""
    assert worker_count("auto", TWO_NODES) == 8
    assert worker_count(3, TWO_NODES) == 3
    assert worker_count(20, TWO_NODES) == 20
    assert worker_count("auto", Topology(cpus=(1, 5, 6), node_of={1: 0, 5: 1, 6: 1})) == 3


@pytest.mark.parametrize("placement, cpu, text", [
    (Placement(fs(3), 0), 3, "cpu 3 node 0"),
    (Placement(fs(6), 1), 6, "cpu 6 node 1"),
    (Placement(fs(2, 3), 1), -1, "cpus 2-3 node 1"),
    (Placement(fs(0, 2, 3, 7), 0), -1, "cpus 0,2-3,7 node 0"),
    (Placement(None, None), -1, "unpinned"),
])
def test_placement_cpu_and_describe(placement: Placement, cpu: int, text: str) -> None:
    """cpu is the one CPU of a single-CPU placement (else -1); describe() is the banner's wording."""
    assert placement.cpu == cpu
    assert placement.describe() == text


# -- pin and set_preferred_node, in a forked child ------------------------------------------------


def test_pin_sets_affinity_and_preferred_node() -> None:
    """A child pinned to one of its CPUs runs only there and prefers that CPU's NUMA node's memory."""
    before = os.sched_getaffinity(0)
    cpu = max(before)
    node = discover().node_of[cpu]
    preferred_here = f"prefer:{node}" in policies()

    def child() -> dict[str, Any]:
        warning = pin(Placement(fs(cpu), node))
        return {"warning": warning, "affinity": sorted(os.sched_getaffinity(0)), "policies": policies()}

    result = in_child(child)
    assert "error" not in result, result
    out = result["ok"]
    assert out["affinity"] == [cpu]
    if out["warning"] is not None:
        pytest.skip(f"the kernel refuses set_mempolicy here: {out['warning']}")
    assert f"prefer:{node}" in out["policies"]
    assert out["policies"][0] == f"prefer:{node}"
    assert os.sched_getaffinity(0) == before, "the test process itself was re-pinned"
    assert (f"prefer:{node}" in policies()) == preferred_here, "the test process's memory policy changed"


def test_pin_to_a_cpu_set() -> None:
    """A multi-CPU placement sets exactly that affinity mask."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip("needs at least two usable CPUs")
    cpus = fs(*usable[-2:])
    node = discover().node_of[usable[-1]]

    def child() -> dict[str, Any]:
        os.sched_setaffinity(0, {usable[0]})  # start narrower, so pin() has to widen the mask
        narrowed = sorted(os.sched_getaffinity(0))
        pin(Placement(cpus, node), mempolicy=False)
        return {"narrowed": narrowed, "affinity": sorted(os.sched_getaffinity(0)), "policies": policies()}

    result = in_child(child)
    assert "error" not in result, result
    out = result["ok"]
    assert out["narrowed"] == [usable[0]]
    assert out["affinity"] == sorted(cpus)
    assert not any(p.startswith("prefer:") for p in out["policies"]), "mempolicy=False still set a policy"


def test_pin_unpinned_placement_changes_nothing() -> None:
    """pin() of an unpinned placement returns None and leaves affinity and memory policy alone."""
    first = min(os.sched_getaffinity(0))

    def child() -> dict[str, Any]:
        os.sched_setaffinity(0, {first})  # a mask pin() would have to change if it touched affinity at all
        return {"warning": pin(Placement(None, None)), "affinity": sorted(os.sched_getaffinity(0)),
                "policies": policies()}

    result = in_child(child)
    assert "error" not in result, result
    out = result["ok"]
    assert out["warning"] is None
    assert out["affinity"] == [first]
    assert not any(p.startswith("prefer:") for p in out["policies"])


def test_set_preferred_node_none_restores_default() -> None:
    """set_preferred_node(node) shows as prefer:<node> in numa_maps; set_preferred_node(None) restores default."""
    node = discover().node_of[max(os.sched_getaffinity(0))]

    def child() -> dict[str, Any]:
        try:
            set_preferred_node(node)
        except OSError as e:
            return {"refused": e.strerror}
        preferred = policies()
        set_preferred_node(None)
        return {"preferred": preferred, "restored": policies()}

    result = in_child(child)
    assert "error" not in result, result
    out = result["ok"]
    if "refused" in out:
        pytest.skip(f"the kernel refuses set_mempolicy here: {out['refused']}")
    assert out["preferred"][0] == f"prefer:{node}"
    assert out["restored"][0] == "default"
    assert not any(p.startswith("prefer:") for p in out["restored"])


def test_set_preferred_node_refuses_a_node_that_does_not_exist() -> None:
    """A node with no memory online is an OSError (EINVAL), not a silent success."""
    base = "/sys/devices/system/node"
    names = os.listdir(base) if os.path.isdir(base) else []
    known = [int(name[4:]) for name in names if name.startswith("node") and name[4:].isdigit()]
    missing = max(known, default=0) + 1

    def child() -> dict[str, Any]:
        set_preferred_node(missing)
        return {"policies": policies()}

    result = in_child(child)
    if result.get("errno") == errno.EPERM:
        pytest.skip("the kernel refuses set_mempolicy here")
    assert "ok" not in result, f"set_preferred_node({missing}) succeeded: {result}"
    assert result["errno"] == errno.EINVAL, result


# -- steer_connections ----------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real TCP socket listening on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def test_steer_connections_sets_so_incoming_cpu(listener: socket.socket) -> None:
    """A single-CPU placement sets SO_INCOMING_CPU on the listener to that CPU (read back from the kernel)."""
    cpu = max(os.sched_getaffinity(0))
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, cpu)
        except OSError as e:
            pytest.skip(f"the kernel refuses SO_INCOMING_CPU: {e.strerror}")
    assert listener.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU) == -1
    assert steer_connections(listener, Placement(fs(cpu), 0)) is True
    assert listener.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU) == cpu


@pytest.mark.parametrize("placement", [Placement(None, None), Placement(fs(0, 1), 0)])
def test_steer_connections_needs_a_single_cpu(listener: socket.socket, placement: Placement) -> None:
    """Unpinned or multi-CPU placements return False and leave SO_INCOMING_CPU unset."""
    assert steer_connections(listener, placement) is False
    assert listener.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU) == -1


def test_so_incoming_cpu_constant_matches_the_platform() -> None:
    """The option number used is the platform's SO_INCOMING_CPU where Python knows it."""
    if not hasattr(socket, "SO_INCOMING_CPU"):
        pytest.skip("this Python does not define socket.SO_INCOMING_CPU")
    assert SO_INCOMING_CPU == socket.SO_INCOMING_CPU
