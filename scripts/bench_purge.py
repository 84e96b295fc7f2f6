"""Purge latency with a big disk cache: scripts/bench --rows purge (run with the edge venv's python).

Fills a cache directory with N stored objects (default 100,000), starts edge with 2 workers in
front of it, loads some of them into the workers' file caches, then times POST /purge on the admin
endpoint: one path at a time (acknowledged by every worker), a prefix, a tag. Prints markdown.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.diskcache import DiskCache, Meta


def fill(cache_dir: Path, objects: int) -> float:
    """Store `objects` small objects as edge would (body + xattr metadata); seconds taken."""
    started = time.monotonic()
    store = DiskCache(str(cache_dir), 1 << 40, report=lambda *a: None)
    now = time.time()
    for i in range(objects):
        writer = store.writer(f"/obj/{i}".encode())
        writer.write(b"x" * 100)
        writer.commit(Meta(key=f"/obj/{i}", status=200, headers=[("content-type", "text/plain")], length=100,
                           stored_at=now, request_time=now, lifetime=86400.0, initial_age=0.0,
                           tags=[f"t{i % 1000}"]))
    return time.monotonic() - started


class Admin:
    """A keep-alive connection to the admin endpoint."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: dict) -> tuple[int, dict, float]:
        start = time.perf_counter()
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data), time.perf_counter() - start


def main() -> int:
    """Run the measurement and print its markdown."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--edge", default=str(Path(sys.executable).parent / "edge"))
    a = ap.parse_args()
    tmp = Path(a.tmp or tempfile.mkdtemp(prefix="edge-purge-"))
    cache_dir, root = tmp / "purge-cache", tmp / "purge-root"
    root.mkdir(parents=True, exist_ok=True)
    filled = fill(cache_dir, a.objects)
    proc = subprocess.Popen([a.edge, "serve", "--root", str(root), "--host", "127.0.0.1", "--port", "0",
                             "--workers", "2", "--origin", "http://127.0.0.1:9", "--cache-dir", str(cache_dir),
                             "--admin", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = "".join(proc.stdout.readline() for _ in range(5))
        port = int(re.search(r"listening on http://[^:]+:(\d+)", banner).group(1))
        admin = re.search(r"admin=(\S+)", banner).group(1)
        indexed = re.search(r"(\d+) objects, \d+ bytes \(indexed in ([\d.]+) s\)", proc.stderr.readline())
        # Load objects into both workers' file caches (fresh connections spread over the workers).
        for i in range(2000):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", f"/obj/{i}")
            r = c.getresponse()
            r.read()
            c.close()
            assert r.status == 200, (i, r.status)
        client = Admin(admin)
        path_times, purged = [], []
        for k in range(a.samples):
            status, body, took = client.post("/purge", {"paths": [f"/obj/{k * 37}"]})
            assert status == 200, body
            path_times.append(took)
            purged.append(body["purged"])
        _, prefix_body, prefix_took = client.post("/purge", {"prefix": "/obj/9999"})
        _, tag_body, tag_took = client.post("/purge", {"tags": ["t123"]})
        _, all_body, all_took = client.post("/purge", {"all": True})
    finally:
        proc.terminate()
        proc.wait(30)
        if a.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    ms = sorted(t * 1000 for t in path_times)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    print("## Purge with a big disk cache")
    print()
    print(f"{a.objects:,} objects stored on disk ({filled:.1f} s to write them); edge with 2 workers indexed them "
          f"at start in {indexed.group(2) if indexed else '?'} s; 2,000 of them loaded into the workers' file "
          "caches first. Each figure is POST /purge on the admin endpoint, answered once every worker "
          "acknowledged (keep-alive connection, sequential).")
    print()
    print("| purge | objects purged | latency |")
    print("|---|---:|---:|")
    print(f"| one path ({a.samples} in turn) | {statistics.median(purged):.0f} each | median "
          f"{statistics.median(ms):.2f} ms, p95 {p95:.2f} ms, max {ms[-1]:.2f} ms |")
    print(f"| prefix /obj/9999 | {prefix_body['purged']} | {prefix_took * 1000:.2f} ms |")
    print(f"| tag t123 | {tag_body['purged']} | {tag_took * 1000:.2f} ms |")
    print(f"| all | {all_body['purged']} | {all_took * 1000:.2f} ms |")
    print()
    print(f"Target: one path acknowledged by every worker in under 50 ms: "
          f"{'met' if p95 < 50 else 'NOT met'} (p95 {p95:.2f} ms).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
