"""CPU and NUMA topology: which CPUs this process may use and the NUMA node of each."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_NODE_DIR = re.compile(r"^node(\d+)$")


def parse_cpulist(text: str) -> set[int]:
    """Parse a kernel CPU list such as '0-3,8,10-11' (empty or whitespace means no CPUs)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"bad CPU list item {part!r}")
        lo = int(first)
        hi = int(last) if dash else lo
        if hi < lo:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(lo, hi + 1))
    return cpus


def format_cpulist(cpus: set[int] | list[int]) -> str:
    """Format CPUs the way the kernel does: sorted, runs collapsed ('0-3,8')."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True)
class Topology:
    """The usable CPUs, in order, and the NUMA node each belongs to."""

    cpus: tuple[int, ...]
    node_of: dict[int, int]

    @property
    def nodes(self) -> dict[int, tuple[int, ...]]:
        """NUMA node -> its usable CPUs."""
        out: dict[int, list[int]] = {}
        for cpu in self.cpus:
            out.setdefault(self.node_of[cpu], []).append(cpu)
        return {node: tuple(cpus) for node, cpus in sorted(out.items())}

    def describe(self) -> str:
        """One line for the start-up banner, e.g. '4 CPUs: node0 0-1, node1 4-5'."""
        nodes = ", ".join(f"node{n} {format_cpulist(list(c))}" for n, c in self.nodes.items())
        return f"{len(self.cpus)} CPUs: {nodes}"


def discover(sysfs: str = "/sys", affinity: set[int] | None = None) -> Topology:
    """Read NUMA nodes from `sysfs`/devices/system/node and intersect with the affinity mask.

    `affinity` defaults to os.sched_getaffinity(0), so cpusets and taskset are respected.
    CPUs that no node lists (or no NUMA information at all) count as node 0.
    """
    allowed = set(os.sched_getaffinity(0)) if affinity is None else set(affinity)
    node_of: dict[int, int] = {}
    base = os.path.join(sysfs, "devices", "system", "node")
    try:
        names = os.listdir(base)
    except OSError:
        names = []
    for name in sorted(names):
        m = _NODE_DIR.match(name)
        if not m:
            continue
        try:
            with open(os.path.join(base, name, "cpulist")) as f:
                cpus = parse_cpulist(f.read())
        except (OSError, ValueError):
            continue
        for cpu in cpus:
            node_of.setdefault(cpu, int(m.group(1)))
    usable = sorted(allowed)
    return Topology(cpus=tuple(usable), node_of={cpu: node_of.get(cpu, 0) for cpu in usable})
