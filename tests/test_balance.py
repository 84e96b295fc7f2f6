"""Balancing policies (edge/balance.py): table tests of each policy, then each one end to end through a real
`edge serve` in front of real origins (HTTP servers answering every request uncacheable, so every request
reaches an origin), checking the spread the origins saw."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import Client

from edge.balance import (
    Balancer,
    SmoothWeighted,
    client_prefix,
    ip_hash,
    least_conn,
    round_robin,
)
from edge.health import pick_origins
from edge.ring import Ring

NAMES = [f"http://origin-{c}:8080" for c in "abc"]


def ring(weights=(1, 1, 1)) -> Ring:
    """A ring of the test origins with `weights`."""
    return Ring(list(zip(NAMES, weights)))


# -- round robin -----------------------------------------------------------------------------------------------------


def test_smooth_weighted_sequence_is_nginxs_for_5_1_1():
    rr = SmoothWeighted([5, 1, 1])
    picks = "".join("abc"[round_robin(rr)[0]] for _ in range(14))
    assert picks == "aabacaa" * 2  # ngx_http_upstream_round_robin.c's own example, and it repeats


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 2, 1), (5, 1, 1), (1, 10)])
def test_round_robin_shares_follow_the_weights_within_10_percent(weights):
    rr = SmoothWeighted(weights)
    counts = Counter(round_robin(rr)[0] for _ in range(300))
    for index, weight in enumerate(weights):
        ideal = 300 * weight / sum(weights)
        assert abs(counts[index] - ideal) <= 0.1 * ideal, counts


def test_round_robin_skips_an_ineligible_origin_and_the_others_share_its_part_by_weight():
    rr = SmoothWeighted([2, 1, 1])
    counts = Counter(round_robin(rr, lambda i: i != 0)[0] for _ in range(300))
    assert counts == {1: 150, 2: 150}
    assert rr.current[0] == 0  # a skipped origin's current weight is left alone (nginx skips down peers)


def test_round_robin_order_lists_every_origin_once_the_ineligible_last():
    rr = SmoothWeighted([1, 1, 1])
    for _ in range(10):
        order = round_robin(rr, lambda i: i != 1)
        assert sorted(order) == [0, 1, 2] and order[-1] == 1
    assert sorted(round_robin(rr, lambda i: False)) == [0, 1, 2]  # nobody eligible: pick_origins' last resort


# -- least connections -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights, active, first", [
    ((1, 1, 1), (4, 1, 2), 1),
    ((4, 1, 1), (4, 2, 2), 0),  # 4/4 = 1 request per unit of weight beats 2/1
    ((1, 1, 1), (0, 5, 0), None),  # a tie between 0 and 2: either, never the loaded one
    ((1, 2), (3, 5), 1),  # 5/2 < 3/1
])
def test_least_conn_picks_the_least_loaded_per_weight(weights, active, first):
    order = least_conn(SmoothWeighted(weights), active)
    if first is None:
        assert order[0] in (0, 2)
    else:
        assert order[0] == first
    loads = [active[i] / weights[i] for i in order]
    assert loads == sorted(loads) and sorted(order) == list(range(len(weights)))


def test_least_conn_ties_go_round_robin_by_weight():
    rr = SmoothWeighted([2, 1, 1])
    picks = "".join("abc"[least_conn(rr, [0, 0, 0])[0]] for _ in range(8))
    assert picks == "abcaabca"  # smooth weighted round robin among the tied: a twice per b and c
    assert Counter(least_conn(rr, [3, 1, 1])[0] for _ in range(10)) == {1: 5, 2: 5}  # a is not tied


def test_least_conn_skips_an_ineligible_origin_even_when_it_is_idle():
    order = least_conn(SmoothWeighted([1, 1, 1]), [0, 3, 2], lambda i: i != 0)
    assert order == [2, 1, 0]


# -- ip hash ---------------------------------------------------------------------------------------------------------


def test_client_prefix_is_the_24_or_the_64():
    assert client_prefix("10.1.2.3") == bytes([10, 1, 2])
    assert client_prefix("::ffff:10.1.2.200") == bytes([10, 1, 2])  # IPv4-mapped: keyed as the IPv4 client
    assert client_prefix("2001:db8:1:2:aaaa::1") == bytes.fromhex("20010db800010002")
    assert client_prefix("fe80::1%eth0") == bytes.fromhex("fe80000000000000")
    assert client_prefix("not an address") is None and client_prefix(None) is None and client_prefix("") is None


def test_ip_hash_keeps_every_address_of_a_24_on_one_origin():
    r = ring()
    for net in range(40):
        orders = {tuple(ip_hash(r, f"10.{net}.7.{host}")) for host in range(256)}
        assert len(orders) == 1, net
    owners = Counter(ip_hash(r, f"10.{net}.7.1")[0] for net in range(256))
    assert len(owners) == 3 and min(owners.values()) > 40, owners  # the networks spread over the origins


def test_ip_hash_keeps_an_ipv6_64_on_one_origin():
    r = ring()
    first = {ip_hash(r, f"2001:db8:0:42:{host:x}::{host:x}")[0] for host in range(1, 500, 7)}
    assert len(first) == 1
    owners = Counter(ip_hash(r, f"2001:db8:0:{net:x}::1")[0] for net in range(300))
    assert len(owners) == 3, owners


def test_ip_hash_moves_to_the_rings_next_origin_when_the_owner_is_ineligible():
    r = ring()
    balancer = Balancer("ip-hash", r, [1, 1, 1])
    for net in range(30):
        client = f"192.168.{net}.9"
        order = balancer.order(b"/any", client)
        assert order == r.candidates(bytes([192, 168, net]))
        owner, successor = order[0], order[1]
        assert pick_origins(order, lambda i: True, lambda i: True, 1) == [owner]
        assert pick_origins(order, lambda i: i != owner, lambda i: True, 1) == [successor]
        # Other addresses of the /24 follow it to the same origin.
        assert pick_origins(balancer.order(b"/other", f"192.168.{net}.250"), lambda i: i != owner,
                            lambda i: True, 1) == [successor]


def test_ip_hash_without_a_client_address_goes_round_robin():
    balancer = Balancer("ip-hash", ring(), [1, 1, 1])
    assert Counter(balancer.order(b"/k", None)[0] for _ in range(30)) == {0: 10, 1: 10, 2: 10}


def test_consistent_is_the_ring_by_cache_key():
    r = ring((1, 2, 1))
    balancer = Balancer("consistent", r, [1, 2, 1])
    for i in range(200):
        key = f"/objects/{i}".encode()
        assert balancer.order(key, "10.0.0.1", [9, 0, 0]) == r.candidates(key)


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        Balancer("random", ring(), [1, 1, 1])


# -- end to end ------------------------------------------------------------------------------------------------------


class ScriptedOrigin:
    """A real HTTP/1.1 origin (http.server, keep-alive, in a thread): every GET answered `no-store` with its port
    in X-Origin, after `delay` seconds; requests counted (health checks aside). `dead`: connections closed unanswered."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.hits = 0
        self.dead = False
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # the head and the body are two writes

            def do_GET(self) -> None:  # noqa: N802
                if outer.dead:
                    self.close_connection = True
                    return
                if self.path != "/healthz":
                    with outer.lock:
                        outer.hits += 1
                    if outer.delay:
                        time.sleep(outer.delay)
                body = b"%d\n" % outer.port
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Origin", str(outer.port))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kill(self) -> None:
        """Refuse new connections and close the kept-alive ones unanswered."""
        self.dead = True
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    """A factory of scripted origins: scripted(delay=0.0) -> ScriptedOrigin; all stopped afterwards."""
    started: list[ScriptedOrigin] = []

    def start(delay: float = 0.0) -> ScriptedOrigin:
        origin = ScriptedOrigin(delay)
        started.append(origin)
        return origin

    yield start
    for origin in started:
        if not origin.dead:
            origin.kill()


@pytest.fixture
def balanced(edge, tmp_path: Path):
    """Start edge (one worker) in front of origins with weights: balanced([(origin, weight)], "round-robin")."""

    def start(weighted, policy: str):
        config = "".join(f'[[origin]]\nurl = "{o.url}"\nweight = {w}\n\n' for o, w in weighted)
        config += f'[proxy]\nbalance = "{policy}"\n'
        path = tmp_path / "balance.toml"
        path.write_text(config)
        return edge("--workers", "1", "--cache-dir", str(tmp_path / "cache"), config=path)

    return start


def ask(client: Client, host: str, target: str) -> int:
    """One GET on a kept-alive connection; the port of the origin that answered it."""
    client.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status, headers, _ = client.response()
    assert status == 200, (status, headers)
    return int(headers["x-origin"])


def from_address(server, source: str) -> Client:
    """A connection to `server` from the loopback address `source` (127.0.0.0/8 is all local)."""
    return Client(socket.create_connection((server.host, server.port), timeout=10, source_address=(source, 0)))


def test_round_robin_end_to_end_follows_the_weights(balanced, scripted):
    a, b, c = scripted(), scripted(), scripted()
    server = balanced([(a, 3), (b, 2), (c, 1)], "round-robin")
    client = Client(server.connect(timeout=10))
    seen = Counter(ask(client, server.host, f"/rr/{i}") for i in range(300))
    client.close()
    for origin, weight in ((a, 3), (b, 2), (c, 1)):
        ideal = 300 * weight / 6
        assert abs(seen[origin.port] - ideal) <= 0.1 * ideal, seen
        assert abs(origin.hits - ideal) <= 0.1 * ideal, (origin.port, origin.hits)


def test_least_conn_end_to_end_avoids_a_slow_origin(balanced, scripted):
    slow, fast = scripted(delay=0.4), scripted()
    server = balanced([(slow, 1), (fast, 1)], "least-conn")
    seen: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + 1.5  # every client asks until then: no tail of lone requests (a lone request
    # finds both origins idle, a tie, which goes round robin)

    def run(n: int) -> None:
        client = Client(server.connect(timeout=10))
        i = 0
        while time.monotonic() < deadline:
            port = ask(client, server.host, f"/lc/{n}/{i}")
            i += 1
            with lock:
                seen[port] += 1
        client.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    total = sum(seen.values())
    assert total >= 100 and seen[slow.port] == slow.hits and seen[fast.port] == fast.hits, seen
    # Round robin would send the slow origin half of them; least-conn sends it a request only while it is
    # no busier than the fast one: about one at a time, a few in all.
    assert seen[slow.port] <= 0.1 * total, seen


def test_ip_hash_end_to_end_keeps_a_24_on_one_origin_and_moves_it_when_that_origin_dies(balanced, scripted):
    origins = [scripted(), scripted(), scripted()]
    server = balanced([(o, 1) for o in origins], "ip-hash")
    r = Ring([(o.url, 1) for o in origins])
    by_port = {o.port: o for o in origins}
    owners = {}
    for source in ("127.0.0.5", "127.0.0.77", *(f"127.0.{net}.5" for net in range(1, 9))):
        client = from_address(server, source)
        ports = {ask(client, server.host, f"/ip/{source}/{i}") for i in range(5)}
        client.close()
        assert len(ports) == 1, (source, ports)
        port = ports.pop()
        net = source.rsplit(".", 1)[0]
        assert by_port[port] is origins[r.candidates(bytes(int(x) for x in net.split(".")))[0]], source
        owners.setdefault(net, set()).add(port)
    assert len(owners["127.0.0"]) == 1  # 127.0.0.5 and 127.0.0.77 share a /24: one origin
    assert len({p for ports in owners.values() for p in ports}) >= 2  # the other networks spread
    # The /24's origin dies: its clients move to the ring's next origin, and stay there.
    first, second = r.candidates(bytes([127, 0, 0]))[:2]
    origins[first].kill()
    for source in ("127.0.0.5", "127.0.0.77"):
        client = from_address(server, source)
        assert {ask(client, server.host, f"/ip/after/{source}/{i}") for i in range(5)} == {origins[second].port}
        client.close()
