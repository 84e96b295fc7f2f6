"""A tiny ASGI static-file app for hypercorn (HTTP/2 rows of scripts/bench).

It does per request what Starlette's StaticFiles does for the uvicorn peer,
without the framework: map the path under BENCH_ROOT (no "..", no symlinks
out), stat the file, answer 404 when it is not a regular file, and send it
with Content-Type, Content-Length, Last-Modified and ETag, read from disk in
64 KiB chunks (Starlette's FileResponse chunk size).  hypercorn offers no
zero-copy send extension, so the body goes through the app.

    BENCH_ROOT=DIR hypercorn --worker-class uvloop scripts/bench_peers/hypercorn_app:app
"""

import mimetypes
import os
import stat
from email.utils import formatdate

ROOT = os.path.realpath(os.environ["BENCH_ROOT"])
CHUNK = 64 << 10

NOT_FOUND = b"Not Found"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = os.path.realpath(os.path.join(ROOT, scope["path"].lstrip("/")))
    st = None
    if (path == ROOT or path.startswith(ROOT + os.sep)) and scope["method"] in ("GET", "HEAD"):
        try:
            st = os.stat(path)
        except OSError:
            st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(NOT_FOUND)).encode())]})
        await send({"type": "http.response.body", "body": NOT_FOUND})
        return
    ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    headers = [(b"content-type", ctype.encode()),
               (b"content-length", str(st.st_size).encode()),
               (b"last-modified", formatdate(st.st_mtime, usegmt=True).encode()),
               (b"etag", f'"{st.st_mtime_ns:x}-{st.st_size:x}"'.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    with open(path, "rb") as f:
        left = st.st_size
        while True:
            chunk = f.read(min(CHUNK, left)) if left > 0 else b""
            left -= len(chunk)
            more = left > 0 and bool(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                return
