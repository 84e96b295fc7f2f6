"""Trivial RSGI app for granian; the files are served by granian's own static
route (--static-path-route /static --static-path-mount DIR), not by this code.
Anything that reaches the app gets a 404."""


async def app(scope, proto):
    proto.response_str(404, [("content-type", "text/plain")], "not found\n")
