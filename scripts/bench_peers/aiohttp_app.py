"""aiohttp serving a directory with web.static (default asyncio loop, no access log).

    python aiohttp_app.py --root DIR --host 127.0.0.1 --port 8080
"""

import argparse

from aiohttp import web


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    app = web.Application()
    app.router.add_static("/", a.root)
    print(f"aiohttp listening on http://{a.host}:{a.port}", flush=True)
    web.run_app(app, host=a.host, port=a.port, access_log=None, print=None,
                backlog=4096, keepalive_timeout=600.0)


if __name__ == "__main__":
    main()
