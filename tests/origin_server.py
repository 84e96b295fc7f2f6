"""A real origin server for tests (aiohttp.web): `python tests/origin_server.py` prints its port, then serves."""

from __future__ import annotations

import asyncio
import socket
import sys

from aiohttp import web


def make_app(port_of: list[int]) -> web.Application:
    """Routes: /obj/NAME (names itself and its port), /echo (request headers as JSON), /healthz, /slow, /cut, /big."""

    async def obj(request: web.Request) -> web.Response:
        body = f"{request.match_info['name']}@{port_of[0]}".encode()
        return web.Response(body=body, headers={"Cache-Control": "max-age=60", "X-Origin": str(port_of[0]),
                                                "Keep-Alive": "timeout=5", "Surrogate-Key": "a b"})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers))

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        request.transport.close()  # the origin dies mid-body
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(1 << 20)})
        await response.prepare(request)
        for i in range(16):
            await response.write(bytes([i]) * 65536)
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/obj/{name}", obj), web.get("/echo", echo), web.get("/healthz", healthz), web.get("/slow", slow),
                    web.get("/cut", cut), web.get("/big", big)])
    return app


def main() -> None:
    """Listen on a free loopback port, print it, serve until killed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # before the port is printed: a client may connect at once (the backlog holds it)
    port = sock.getsockname()[1]
    print(port, flush=True)
    web.run_app(make_app([port]), sock=sock, print=None, handle_signals=True)


if __name__ == "__main__":
    sys.exit(main())
