"""A real origin server for tests (aiohttp.web): `python tests/origin_server.py` prints its port, then serves.

Every request except the control routes (`/_...`) is counted and logged with its header fields, so a
test can ask the origin itself what reached it (GET /_stats). Control routes flip its behaviour:

  /_stats                    {"counts": {path?query: n}, "log": [{"path", "method", "headers"}], "waiting": [...],
                             "peak": {path?query: most requests for it answered at once},
                             "passed": [what each /pass/NAME request received, as its answer says]}

  /_health/ok, /_health/fail what /healthz answers (200 or 503)
  /_fail/NAME/on|off         /gen/NAME answers 500 (or ?status=N) while on
  /_bump/NAME                /gen/NAME gets a new version (new body, new ETag)
  /_release/NAME             lets the second half of /gate/NAME go out (or, with ?cut=1, the origin hang up)
  /_notmod/NAME?FIELD=VALUE  fields that /gen/NAME's 304 answers send instead of its 200's

  /_vary/NAME?value=V        /lang/NAME answers with Vary: V from now on

/lang/NAME varies on ?vary= (Accept-Language by default) and names the request's Accept-Language in its body.

/pass/NAME takes any method (passed through by edge, edge/passthrough.py): it reads the whole body and answers
JSON {"method", "path", "headers": [[name, value]...], "sha256", "length"} of what it received; the query shapes
the answer: status, location (Location), clocation (Content-Location), cc (Cache-Control), size (the body is
pattern(NAME, size) instead), die (the origin hangs up after reading that many body bytes, answering nothing),
cut (it hangs up halfway through its answer of `size` bytes).

"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import socket
import sys
from collections import Counter

from aiohttp import web

GATE_TIMEOUT = 30.0  # a /gate body nobody releases finishes anyway (a failed test must not hang the origin)


def pattern(name: str, size: int) -> bytes:
    """The deterministic body of /stream/NAME and /gate/NAME (tests compute the same bytes)."""
    return random.Random(name).randbytes(size)


def gen_body(name: str, port: int, version: int, size: int = 0) -> bytes:
    """The body of /gen/NAME: names itself, its origin and its version, padded to `size` bytes."""
    head = f"{name}@{port} v{version}\n".encode()
    if size > len(head):
        head += b"." * (size - len(head))
    return head


def vary_body(name: str) -> bytes:
    """The identity body of /vary/NAME (its gzip variant is gzip.compress of it)."""
    return f"{name}: the plain representation\n".encode() * 40


def make_app(port_of: list[int]) -> web.Application:
    """Routes: /obj/NAME (names itself and its port), /echo (request headers as JSON), /healthz, /slow, /cut, /big,
    /gen/NAME (headers from the query), /vary/NAME, /stream/NAME, /gate/NAME, control routes, and /ANY.txt."""
    state = {"healthy": True, "fail": {}, "vary": {}, "version": Counter(), "gates": {}, "waiting": set(), "gate_seen": Counter(),
             "notmod": {}, "passed": []}
    counts: Counter = Counter()
    log: list[dict] = []

    inflight: Counter = Counter()
    peak: Counter = Counter()  # the most requests for a path?query the origin was answering at once

    @web.middleware
    async def record(request: web.Request, handler):
        if request.path.startswith("/_"):
            return await handler(request)
        target = request.raw_path
        counts[target] += 1
        log.append({"path": target, "method": request.method, "headers": dict(request.headers)})
        inflight[target] += 1
        peak[target] = max(peak[target], inflight[target])
        try:
            return await handler(request)
        finally:
            inflight[target] -= 1

    def gate(name: str) -> asyncio.Event:
        return state["gates"].setdefault(name, asyncio.Event())

    async def obj(request: web.Request) -> web.Response:
        body = f"{request.match_info['name']}@{port_of[0]}".encode()
        return web.Response(body=body, headers={"Cache-Control": "max-age=60", "X-Origin": str(port_of[0]),
                                                "Keep-Alive": "timeout=5", "Surrogate-Key": "a b"})

    async def healthz(request: web.Request) -> web.Response:
        if state["healthy"]:
            return web.Response(text="ok")
        return web.Response(status=503, text="down")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers))

    async def slow(request: web.Request) -> web.Response:
        """Nothing, not even the head, for `delay` seconds; then "late" (with Cache-Control from cc)."""
        await asyncio.sleep(float(request.query.get("delay", "3")))
        cc = request.query.get("cc")
        return web.Response(text="late", headers={"Cache-Control": cc} if cc else None)

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000", "Cache-Control": "max-age=60"})
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

    async def gen(request: web.Request) -> web.Response:
        """A response shaped by the query: cc, status, etag (1: a versioned strong ETag), lm, expires, cookie, vary,
        tags (Surrogate-Key), size."""
        name = request.match_info["name"]
        q = request.query
        version = state["version"][name]
        headers = {"X-Origin": str(port_of[0]), "X-Version": str(version), "Content-Type": "text/plain"}
        if name in state["fail"]:
            return web.Response(status=state["fail"][name], text="origin failure\n", headers=headers)
        if "cc" in q:
            headers["Cache-Control"] = q["cc"]
        if "lm" in q:
            headers["Last-Modified"] = q["lm"]
        if "expires" in q:
            headers["Expires"] = q["expires"]
        if "cookie" in q:
            headers["Set-Cookie"] = q["cookie"]
        if "vary" in q:
            headers["Vary"] = q["vary"]
        if "tags" in q:
            headers["Surrogate-Key"] = q["tags"]
        etag = f'"{name}-v{version}"' if q.get("etag") else None
        if etag:
            headers["ETag"] = etag
            if request.headers.get("If-None-Match") == etag:
                headers.update(state["notmod"].get(name, {}))
                return web.Response(status=304, headers=headers)
        body = gen_body(name, port_of[0], version, int(q.get("size", "0")))
        return web.Response(status=int(q.get("status", "200")), body=body, headers=headers)

    async def vary(request: web.Request) -> web.Response:
        """Varies on Accept-Encoding: gzip when the request lists gzip, identity otherwise."""
        body = vary_body(request.match_info["name"])
        headers = {"Vary": "Accept-Encoding", "Cache-Control": "max-age=60", "Content-Type": "text/plain",
                   "X-Origin": str(port_of[0])}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def lang(request: web.Request) -> web.Response:
        """Varies on what ?vary= names (Accept-Language by default); the body names the request's Accept-Language."""
        name = request.match_info["name"]
        asked = request.headers.get("Accept-Language", "-")
        body = f"{name} lang={asked} v{state['version'][name]}\n".encode()
        vary = state["vary"].get(name) or request.query.get("vary", "Accept-Language")
        headers = {"Vary": vary, "Cache-Control": "max-age=60",
                   "Content-Type": "text/plain", "X-Origin": str(port_of[0])}
        return web.Response(body=body, headers=headers)

    async def stream(request: web.Request) -> web.StreamResponse:
        """pattern(NAME, size) in `chunk`-byte writes with `delay` seconds between them (Cache-Control from cc),
        the first one `first` seconds after the head."""
        q = request.query
        size, chunk, delay = int(q.get("size", str(1 << 20))), int(q.get("chunk", "65536")), float(q.get("delay", "0.05"))
        body = pattern(request.match_info["name"], size)
        headers = {"Cache-Control": q.get("cc", "max-age=60"), "Content-Type": "application/octet-stream"}
        if not q.get("chunked"):  # chunked=1: no Content-Length, the length is known only at the end
            headers["Content-Length"] = str(size)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await asyncio.sleep(float(q.get("first", "0")))
        for i in range(0, size, chunk):
            await response.write(body[i:i + chunk])
            await asyncio.sleep(delay)
        await response.write_eof()
        return response

    async def gated(request: web.Request) -> web.StreamResponse:
        """The first half of pattern(NAME, size) at once; the rest only after /_release/NAME.

        With cut=1 the origin dies instead of sending the second half (the body stays short of its length);
        with chunked=1 it sends no Content-Length (HTTP/1.1 chunked: the length is known only at the end);
        with late=1 every request after the first waits for the release before sending anything.
        """
        name = request.match_info["name"]
        size = int(request.query.get("size", "131072"))
        body = pattern(name, size)
        state["gate_seen"][name] += 1
        if request.query.get("late") and state["gate_seen"][name] > 1:
            await asyncio.wait_for(gate(name).wait(), GATE_TIMEOUT)
        headers = {"Cache-Control": "max-age=60", "Content-Type": "application/octet-stream"}
        if not request.query.get("chunked"):
            headers["Content-Length"] = str(size)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(body[:size // 2])
        state["waiting"].add(name)
        try:
            await asyncio.wait_for(gate(name).wait(), GATE_TIMEOUT)
        except TimeoutError:
            pass
        finally:
            state["waiting"].discard(name)
        if request.query.get("cut"):
            request.transport.close()
            return response
        await response.write(body[size // 2:])
        await response.write_eof()
        return response

    async def seq(request: web.Request) -> web.Response:
        """A new body on every request: how many times /seq/NAME has been asked for (fresh for 10 minutes)."""
        name = request.match_info["name"]
        state["version"]["seq/" + name] += 1
        return web.Response(text=f"{name} #{state['version']['seq/' + name]}\n",
                            headers={"Cache-Control": "max-age=600"})

    async def passed(request: web.Request) -> web.StreamResponse:
        """Any method: what it received (see the module docstring), the body read as it streams in."""
        q = request.query
        digest = hashlib.sha256()
        length = 0
        die = int(q["die"]) if "die" in q else -1
        while chunk := await request.content.read(1 << 16):
            digest.update(chunk)
            length += len(chunk)
            if 0 <= die <= length:
                request.transport.abort()  # the origin dies in the middle of the request
                raise asyncio.CancelledError
        headers = {"X-Origin": str(port_of[0])}
        for key, field in (("location", "Location"), ("clocation", "Content-Location"), ("cc", "Cache-Control")):
            if key in q:
                headers[field] = q[key]
        status = int(q.get("status", "200"))
        if "cut" in q:  # the origin dies in the middle of its answer: half of pattern(NAME, size), then it hangs up
            size = int(q.get("size", "1000000"))
            response = web.StreamResponse(status=status, headers={**headers, "Content-Length": str(size)})
            await response.prepare(request)
            await response.write(pattern(request.match_info["name"], size)[:size // 2])
            request.transport.close()
            return response
        if "size" in q:
            return web.Response(status=status, body=pattern(request.match_info["name"], int(q["size"])),
                                headers=headers, content_type="application/octet-stream")
        received = {"method": request.method, "path": request.raw_path,
                    "headers": [[k, v] for k, v in request.headers.items()], "sha256": digest.hexdigest(),
                    "length": length}
        state["passed"].append(received)
        return web.json_response(received, status=status, headers=headers)

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text=f"origin {request.path}\n", headers={"Cache-Control": "max-age=60",
                                                                      "X-Origin": str(port_of[0])})

    # -- control ------------------------------------------------------------------------------------

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"counts": dict(counts), "log": log, "waiting": sorted(state["waiting"]),
                                  "peak": dict(peak), "passed": state["passed"]})

    async def set_health(request: web.Request) -> web.Response:
        state["healthy"] = request.match_info["how"] == "ok"
        return web.Response(text="done")

    async def set_fail(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.match_info["how"] == "on":
            state["fail"][name] = int(request.query.get("status", "500"))
        else:
            state["fail"].pop(name, None)
        return web.Response(text="done")

    async def set_vary(request: web.Request) -> web.Response:
        state["vary"][request.match_info["name"]] = request.query["value"]
        return web.Response(text="ok\n")

    async def bump(request: web.Request) -> web.Response:
        state["version"][request.match_info["name"]] += 1
        return web.Response(text="done")

    async def release(request: web.Request) -> web.Response:
        gate(request.match_info["name"]).set()
        return web.Response(text="done")

    async def notmod(request: web.Request) -> web.Response:
        state["notmod"][request.match_info["name"]] = dict(request.query)
        return web.Response(text="done")

    app = web.Application(middlewares=[record])
    app.add_routes([web.get("/obj/{name}", obj), web.get("/echo", echo), web.get("/healthz", healthz),
                    web.get("/slow", slow), web.get("/cut", cut), web.get("/big", big), web.get("/gen/{name}", gen),
                    web.get("/vary/{name}", vary), web.get("/lang/{name}", lang), web.get("/stream/{name}", stream), web.get("/gate/{name}", gated), web.get("/seq/{name}", seq),
                    web.get("/_stats", stats), web.get("/_health/{how:ok|fail}", set_health),
                    web.get("/_fail/{name}/{how:on|off}", set_fail), web.get("/_bump/{name}", bump), web.get("/_vary/{name}", set_vary),
                    web.get("/_release/{name}", release),
                    web.get("/_notmod/{name}", notmod), web.get("/{name:[^/_][^/]*\\.txt}", anything),
                    web.route("*", "/pass/{name}", passed)])

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
