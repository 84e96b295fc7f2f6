"""Tests of CPU/NUMA discovery (edge.topology) against fake sysfs trees."""

import os

import pytest

from edge.topology import discover, format_cpulist, parse_cpulist


@pytest.mark.parametrize("text, cpus", [
    ("0-3", {0, 1, 2, 3}), ("0,2,4", {0, 2, 4}), ("0-1,8-9\n", {0, 1, 8, 9}), ("", set()), ("\n", set()),
    ("5", {5}),
])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "1-", "-2", "1-x"])
def test_parse_cpulist_refuses(text):
    with pytest.raises(ValueError):
        parse_cpulist(text)


@pytest.mark.parametrize("cpus, text", [({0, 1, 2, 3}, "0-3"), ({0, 2, 3, 8}, "0,2-3,8"), (set(), "")])
def test_format_cpulist(cpus, text):
    assert format_cpulist(cpus) == text
    assert parse_cpulist(text) == cpus


def fake_sysfs(tmp_path, nodes: dict[int, str]):
    base = tmp_path / "devices" / "system" / "node"
    base.mkdir(parents=True)
    for node, cpulist in nodes.items():
        (base / f"node{node}").mkdir()
        (base / f"node{node}" / "cpulist").write_text(cpulist + "\n")
    (base / "possible").write_text("0-1\n")  # a file beside the node dirs is ignored
    return str(tmp_path)


def test_two_nodes_eight_cpus(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"})
    topo = discover(sysfs, affinity=set(range(8)))
    assert topo.cpus == tuple(range(8))
    assert topo.nodes == {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}
    assert topo.describe() == "8 CPUs: node0 0-3, node1 4-7"


def test_cpuset_subset_and_offline_cpus(tmp_path):
    # CPUs 2 and 3 are offline (no node lists them); the cpuset allows 1, 3, 5, 6.
    sysfs = fake_sysfs(tmp_path, {0: "0-1", 1: "4-7"})
    topo = discover(sysfs, affinity={1, 5, 6})
    assert topo.cpus == (1, 5, 6)
    assert topo.node_of == {1: 0, 5: 1, 6: 1}
    assert topo.nodes == {0: (1,), 1: (5, 6)}


def test_no_numa_information_is_node_0(tmp_path):
    topo = discover(str(tmp_path), affinity={0, 1})
    assert topo.node_of == {0: 0, 1: 0}
    assert topo.describe() == "2 CPUs: node0 0-1"


def test_unreadable_node_is_skipped(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: "0-1", 1: "garbage"})
    assert discover(sysfs, affinity={0, 1, 2}).node_of == {0: 0, 1: 0, 2: 0}


def test_this_machine():
    topo = discover()
    assert set(topo.cpus) == os.sched_getaffinity(0)
    assert all(node >= 0 for node in topo.node_of.values())
