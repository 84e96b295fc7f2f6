"""Starlette StaticFiles mounted at "/", served by uvicorn.

The directory comes from the BENCH_ROOT environment variable:

    BENCH_ROOT=DIR uvicorn --app-dir scripts/bench_peers starlette_app:app \
        --loop uvloop --http httptools --no-access-log
"""

import os

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

app = Starlette(routes=[Mount("/", app=StaticFiles(directory=os.environ["BENCH_ROOT"]))])
