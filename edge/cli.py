"""The `edge` command line: serve, check-config, purge, status, --version."""

from __future__ import annotations

import argparse
import sys

from . import __version__, adminclient
from .adminclient import DEFAULT_ADMIN
from .config import Config, ConfigError, load


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2 like config errors."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge", description="A static-file CDN edge node.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve files over HTTP")
    serve.add_argument("--root", help="directory to serve (default: the current directory)")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free port)")
    serve.add_argument("--workers", help="worker processes: N or auto, one per usable CPU (default auto)")
    serve.add_argument("--cpu-affinity", dest="cpu_affinity",
                       help='pin workers: auto (one CPU each), off, or CPU sets such as "0 1 2-3" (default auto)')
    serve.add_argument("--config", help="TOML config file; flags override it")
    serve.add_argument("--tls-port", type=int, dest="tls_port", help="port of the TLS listener (h2 and http/1.1)")
    serve.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate chain for TLS")
    serve.add_argument("--tls-key", dest="tls_key", help="PEM private key for TLS")
    serve.add_argument("--admin", metavar="HOST:PORT",
                       help="admin endpoint: purge, status, metrics, healthz (default 127.0.0.1:9090; off to disable)")
    serve.add_argument("--admin-token", dest="admin_token",
                       help="bearer token for the admin endpoint (or EDGE_ADMIN_TOKEN); needed to listen beyond loopback")
    serve.add_argument("--origin", action="append", dest="origins", metavar="URL",
                       help="origin server for what the root does not have (repeatable; weight 1 each)")
    serve.add_argument("--cache-dir", dest="cache_dir",
                       help="disk cache of origin responses (default /var/cache/edge if writable, else ~/.cache/edge)")
    serve.add_argument("--cache-max-size", dest="cache_max_size", help="disk cache size limit, e.g. 10G (default 10G)")
    serve.add_argument("--health-path", dest="health_path", help="path of the origins' active health check (/healthz)")
    serve.add_argument("--health-interval", type=float, dest="health_interval",
                       help="seconds between active health checks of each origin (default 5)")
    serve.add_argument("--header-timeout", type=float, dest="header_timeout",
                       help="seconds for a whole request head to arrive (default 10)")
    serve.add_argument("--keepalive-timeout", type=float, dest="keepalive_timeout",
                       help="seconds an idle keep-alive connection stays open (default 75)")
    serve.add_argument("--access-log", dest="access_log", help="access log file, or - for stdout (default off)")

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")

    for name, text in (("purge", "purge paths, a prefix, tags or everything (every worker, the disk cache)"),
                       ("status", "a summary of a node's workers, origins and cache")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin endpoint URL (default {DEFAULT_ADMIN})")
        cmd.add_argument("--token", help="bearer token (default: $EDGE_ADMIN_TOKEN)")
        if name == "purge":
            which = cmd.add_mutually_exclusive_group()
            which.add_argument("--prefix", help="every path starting with this")
            which.add_argument("--tag", action="append", help="objects with this Surrogate-Key tag (repeatable)")
            which.add_argument("--all", action="store_true", help="everything")
            cmd.add_argument("--fleet", metavar="NAME[:PORT]",
                             help="purge on every address NAME resolves to (A/AAAA), in parallel")
            cmd.add_argument("paths", nargs="*", metavar="PATH")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    keys = ("root", "host", "port", "workers", "cpu_affinity", "header_timeout", "keepalive_timeout", "access_log",
            "admin", "admin_token")
    out = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    tls = {key: getattr(args, f"tls_{key}") for key in ("port", "cert", "key") if getattr(args, f"tls_{key}") is not None}
    if tls:
        out["tls"] = tls
    if args.origins:
        out["origins"] = args.origins
    for table, names in (("cache", ("dir", "max_size")), ("health", ("path", "interval"))):
        fields = {n: getattr(args, f"{table}_{n}") for n in names if getattr(args, f"{table}_{n}") is not None}
        if fields:
            out[table] = fields
    return out


def serve(config: Config, config_path: str | None, overrides: dict) -> int:
    """Run the supervisor: listeners, pinned workers, reloads; returns when stopped."""
    from .supervisor import Supervisor

    return Supervisor(config, config_path, overrides).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "purge":
            return adminclient.purge(args)
        if args.command == "status":
            return adminclient.status(args)
        if args.command == "check-config":
            load(args.file)
            print(f"{args.file}: ok")
            return 0
        overrides = _overrides(args)
        config = load(args.config, overrides)
    except ConfigError as e:
        print(f"edge: {e}", file=sys.stderr)
        return 2
    return serve(config, args.config, overrides)


if __name__ == "__main__":
    sys.exit(main())
