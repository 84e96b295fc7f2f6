# edge: a CDN edge node. Multi-stage: wheels are built in the first stage, the runtime stage
# gets only the installed packages (no compiler, no sources, no tests).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edge ./edge
# Wheels for edge and every dependency (binary wheels from PyPI: nothing is compiled here).
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# libmagic1: python-magic's content sniffing for files without a known extension. Its version is not
# pinned (DL3008): the base image's Debian release fixes it, and a pin breaks at each point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 edge \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin edge \
    && mkdir -p /var/www /var/cache/edge /etc/edge \
    && chown 10001:10001 /var/cache/edge
COPY conf/container.toml /etc/edge/edge.toml
# No .pyc writes (the root filesystem may be read-only), logs straight out.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 8443 9090
VOLUME ["/var/www", "/var/cache/edge"]
# The admin endpoint's /healthz, wherever EDGE_ADMIN put it (0.0.0.0 is reached on loopback).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; a = os.environ.get('EDGE_ADMIN') or '127.0.0.1:9090'; a = a.replace('0.0.0.0:', '127.0.0.1:').replace('[::]:', '[::1]:'); sys.exit(urllib.request.urlopen('http://' + a + '/healthz', timeout=2).status != 200)"]
# Exec form: the supervisor is the process that gets SIGTERM (drain) and SIGHUP (reload).
ENTRYPOINT ["edge"]
CMD ["serve", "--config", "/etc/edge/edge.toml"]
