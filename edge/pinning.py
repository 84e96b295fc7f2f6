"""Worker placement: which CPUs and NUMA node each worker gets, and pinning a process to them."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
from dataclasses import dataclass

from .topology import Topology, format_cpulist

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
_SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 270}
SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)


@dataclass(frozen=True)
class Placement:
    """Where one worker runs: a CPU set and its NUMA node, or None for both when pinning is off."""

    cpus: frozenset[int] | None
    node: int | None

    @property
    def cpu(self) -> int:
        """The worker's CPU when pinned to exactly one, else -1 (for stats and SO_INCOMING_CPU)."""
        return next(iter(self.cpus)) if self.cpus is not None and len(self.cpus) == 1 else -1

    def describe(self) -> str:
        """'cpu 3 node 0', 'cpus 2-3 node 1' or 'unpinned'."""
        if self.cpus is None:
            return "unpinned"
        word = "cpu" if len(self.cpus) == 1 else "cpus"
        return f"{word} {format_cpulist(set(self.cpus))} node {self.node}"


def worker_count(setting: int | str, topology: Topology) -> int:
    """`workers = N` as is; `auto` is one per CPU the process may run on."""
    return len(topology.cpus) if setting == "auto" else int(setting)


def assign(setting: str | tuple[frozenset[int], ...], topology: Topology, workers: int) -> list[Placement]:
    """Placements for `workers` workers under `cpu_affinity` ("auto", "off" or CPU sets, used in turn).

    Raises ValueError when a listed CPU is not one this process may use.
    """
    if setting == "off":
        return [Placement(None, None)] * workers
    if setting == "auto":
        sets = [frozenset({cpu}) for cpu in topology.cpus]
    else:
        sets = list(setting)
        usable = set(topology.cpus)
        for cpus in sets:
            outside = set(cpus) - usable
            if outside:
                raise ValueError(f"cpu_affinity: CPU {format_cpulist(outside)} is not usable here "
                                 f"(usable: {format_cpulist(usable)})")
    out = []
    for i in range(workers):
        cpus = sets[i % len(sets)]
        out.append(Placement(cpus, _majority_node(cpus, topology)))
    return out


def _majority_node(cpus: frozenset[int], topology: Topology) -> int:
    counts: dict[int, int] = {}
    for cpu in cpus:
        node = topology.node_of.get(cpu, 0)
        counts[node] = counts.get(node, 0) + 1
    return min(counts, key=lambda node: (-counts[node], node))


def set_preferred_node(node: int | None) -> None:
    """Prefer memory from NUMA `node` for this process (None restores the default policy).

    Raises OSError (EPERM in many containers, ENOSYS where the call is unknown).
    """
    number = _SYS_SET_MEMPOLICY.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, "set_mempolicy is not known on this architecture")
    libc = ctypes.CDLL(None, use_errno=True)
    if node is None:
        result = libc.syscall(number, MPOL_DEFAULT, None, 0)
    else:
        words = node // 64 + 1
        mask = (ctypes.c_ulong * words)()
        mask[node // 64] = 1 << (node % 64)
        # The kernel drops one from maxnode (a historical quirk libnuma also works around).
        result = libc.syscall(number, MPOL_PREFERRED, mask, words * 64 + 1)
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def pin(placement: Placement, *, mempolicy: bool = True) -> str | None:
    """Pin this process to its CPUs and prefer its node's memory; returns a warning instead of failing."""
    if placement.cpus is None:
        return None
    os.sched_setaffinity(0, placement.cpus)
    if mempolicy and placement.node is not None:
        try:
            set_preferred_node(placement.node)
        except OSError as e:
            return f"NUMA memory policy not set ({e.strerror}); workers run pinned to CPUs only"
    return None


def steer_connections(sock: socket.socket, placement: Placement) -> bool:
    """Ask the kernel to prefer this worker's socket for connections that arrive on its CPU (SO_INCOMING_CPU)."""
    if placement.cpu < 0:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, placement.cpu)
    except OSError:
        return False
    return True
