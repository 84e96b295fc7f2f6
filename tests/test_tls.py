"""TLS: ALPN (h2, http/1.1), TLS 1.2+ only, session resumption across workers, certificate errors at start,
certificate renewal on SIGHUP. Certificates are made per test run with the openssl command."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from conftest import Client, EdgeProcess, H2Client, make_cert, needs_openssl, request
from test_supervisor import socket_owners, wait_for

pytestmark = needs_openssl
MIB = 1 << 20


@pytest.fixture
def tls_server(edge, tls_args) -> EdgeProcess:
    return edge(*tls_args)


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def presented(server: EdgeProcess) -> bytes:
    """The certificate a new TLS connection is shown (DER)."""
    sock = server.connect_tls()
    try:
        return sock.getpeercert(binary_form=True)
    finally:
        sock.close()


def get(sock, target: str, close: bool = False) -> tuple[int, dict[str, str], bytes]:
    client = Client(sock)
    extra = "Connection: close\r\n" if close else ""
    client.send(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
    return client.response()


def run_serve(www: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "serve", "--root", str(www), "--host", "127.0.0.1",
                           "--port", "0", "--workers", "1", *args], capture_output=True, text=True, timeout=30)


def assert_tls_error(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("edge: tls"), lines[0]


# -- the listener and ALPN ------------------------------------------------------------------------------


def test_the_banner_names_both_listeners_and_plaintext_still_serves(tls_server):
    assert tls_server.tls_port and tls_server.tls_port != tls_server.port
    assert tls_server.tls_url == f"https://127.0.0.1:{tls_server.tls_port}"
    assert request(tls_server, "/hello.txt")[0] == 200


def test_alpn_h2_serves_http2(tls_server, www: Path, tls_cert):
    sock = tls_server.connect_tls(["h2", "http/1.1"], cafile=tls_cert[0])
    assert sock.selected_alpn_protocol() == "h2"
    assert sock.version() in ("TLSv1.2", "TLSv1.3")
    client = H2Client(sock)
    client.start()
    a, b = client.request("/1m.bin"), client.request("/hello.txt")
    assert bytes(client.response(a).body) == (www / "1m.bin").read_bytes()
    assert client.response(b).status == 200 and bytes(client.streams[b].body) == b"hello world\n"
    assert client.h2_error is None and not client.violations
    client.close()


def test_the_server_prefers_h2_whatever_the_client_order(tls_server):
    sock = tls_server.connect_tls(["http/1.1", "h2"])
    assert sock.selected_alpn_protocol() == "h2"
    sock.close()


def test_alpn_http11_serves_big_files_and_ranges_byte_exact(tls_server, www: Path, tls_cert):
    data = os.urandom(5 * MIB + 7)
    (www / "5m.bin").write_bytes(data)
    sock = tls_server.connect_tls(["http/1.1"], cafile=tls_cert[0], timeout=20)
    assert sock.selected_alpn_protocol() == "http/1.1"
    status, headers, body = get(sock, "/5m.bin")
    assert status == 200 and body == data
    client = Client(sock)
    client.send(b"GET /5m.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1000000-2999999\r\n\r\n")
    status, headers, body = client.response()
    assert status == 206 and headers["content-range"] == f"bytes 1000000-2999999/{len(data)}"
    assert body == data[1000000:3000000]
    status, _, body = get(sock, "/hello.txt", close=True)
    assert status == 200 and body == b"hello world\n"
    sock.close()


@pytest.mark.parametrize("protocols", [None, ["spdy/3.1"]], ids=["no ALPN", "no common protocol"])
def test_without_alpn_agreement_it_is_http11(tls_server, protocols):
    sock = tls_server.connect_tls(protocols)
    assert sock.selected_alpn_protocol() is None
    status, _, body = get(sock, "/hello.txt", close=True)
    assert status == 200 and body == b"hello world\n"
    sock.close()


def test_h2c_upgrade_is_not_offered_over_tls(tls_server):
    sock = tls_server.connect_tls(["http/1.1"])
    client = Client(sock)
    client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    status, _, body = client.response()
    assert status == 200 and body == b"hello world\n"
    sock.close()


# -- protocol versions ----------------------------------------------------------------------------------


def old_tls_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context that speaks only `version` (old versions re-enabled at security level 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


def handshake_with_a_permissive_server(ctx: ssl.SSLContext, tls_cert) -> str:
    """Control: the same client context against a local server that allows TLS 1.0 and up."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    server_ctx.set_ciphers("ALL:@SECLEVEL=0")
    server_ctx.load_cert_chain(*tls_cert)
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                done.wait(5)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with ctx.wrap_socket(socket.create_connection(listener.getsockname(), timeout=5)) as s:
            return s.version()
    finally:
        done.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("version, name", [(ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")])
def test_tls_10_and_11_are_refused(tls_server, tls_cert, version, name):
    ctx = old_tls_context(version)
    assert handshake_with_a_permissive_server(ctx, tls_cert) == name, "the client cannot speak it at all"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw = socket.create_connection((tls_server.host, tls_server.tls_port), timeout=5)
        try:
            ctx.wrap_socket(raw).close()
        finally:
            raw.close()
    # The refusal costs the server nothing: it goes on serving.
    sock = tls_server.connect_tls(["http/1.1"])
    assert get(sock, "/hello.txt", close=True)[0] == 200
    sock.close()


@needs_openssl
@pytest.mark.parametrize("version, offer, chosen", [
    ("-tls1_2", ["-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"], "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("-tls1_2", ["-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"], "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("-tls1_3", ["-ciphersuites", "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"], "TLS_AES_128_GCM_SHA256"),
    ("-tls1_3", ["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"], "TLS_CHACHA20_POLY1305_SHA256"),
], ids=["1.2-aes128-first", "1.2-aes256-first", "1.3-aes128-first", "1.3-chacha-first"])
def test_the_clients_cipher_order_stands(tls_server, version, offer, chosen):
    # A browser's AES-128-GCM is cheaper per byte than the AES-256 OpenSSL's own order (and Python's
    # server preference) would impose; the client knows whether it has AES hardware.
    done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tls_server.tls_port}", version, *offer],
                          input=b"", capture_output=True, timeout=20)
    out = done.stdout.decode("latin-1")
    assert f"Cipher is {chosen}" in out or f"Cipher    : {chosen}" in out, out[-1500:]


@pytest.mark.parametrize("version, name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_tls_12_and_13_are_served(tls_server, version, name):
    sock = tls_server.connect_tls(["h2", "http/1.1"], maximum_version=version, minimum_version=version)
    assert sock.version() == name and sock.selected_alpn_protocol() == "h2"
    if version == ssl.TLSVersion.TLSv1_2:
        cipher = sock.cipher()[0]
        assert "ECDHE" in cipher and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    sock.close()


# -- session resumption ---------------------------------------------------------------------------------


def worker_of(server: EdgeProcess, sock: socket.socket) -> int:
    """The worker pid holding the server end of the TLS connection `sock`."""
    owners = socket_owners(server.worker_pids())
    port = sock.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            remote_port = int(fields[2].split(":")[1], 16)
            if local_port == server.tls_port and remote_port == port and fields[9] in owners:
                return owners[fields[9]]
    raise AssertionError("connection not found in /proc/net/tcp")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_sessions_resume_on_either_worker(edge, tls_args, tls_cert, version):
    server = edge("--workers", "2", *tls_args)
    workers = set(server.worker_pids())
    assert len(workers) == 2
    ctx = ssl.create_default_context(cafile=str(tls_cert[0]))
    ctx.maximum_version = version
    ctx.set_alpn_protocols(["http/1.1"])

    def connect(session):
        raw = socket.create_connection((server.host, server.tls_port), timeout=5)
        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
        try:
            owner = worker_of(server, sock)
            assert get(sock, "/hello.txt")[0] == 200  # reading also takes in TLS 1.3 session tickets
            return sock.session_reused, sock.session, owner
        finally:
            sock.close()

    def visit(session, cpu: int):
        # The kernel tends to hand a connection to the worker on the CPU it came from: connect from
        # each CPU in turn so that both workers are reached.
        result: list = []

        def run() -> None:
            os.sched_setaffinity(0, {cpu})  # this thread only
            try:
                result.append(connect(session))
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                result.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(15)
        assert result, "the connection hung"
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    cpus = sorted(os.sched_getaffinity(0))
    reused, session, minted_by = visit(None, cpus[0])
    assert not reused
    seen: set[int] = set()
    crossed = 0
    for i in range(40):
        reused, fresh, owner = visit(session, cpus[(i + 1) % len(cpus)])
        assert reused, f"session from worker {minted_by} not resumed on worker {owner}"
        seen.add(owner)
        crossed += owner != minted_by
        if fresh is not None:
            session, minted_by = fresh, owner
        if seen == workers and crossed >= 2:
            break
    assert seen == workers, f"only worker(s) {seen} were reached"
    assert crossed >= 2, "no session moved from one worker to the other"


# -- certificate errors at start ------------------------------------------------------------------------


def test_missing_certificate_or_key_file_is_one_line_and_exit_2(www: Path, tls_cert, tmp_path: Path):
    cert, key = tls_cert
    assert_tls_error(run_serve(www, "--tls-port", "0", "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(key)))
    assert_tls_error(run_serve(www, "--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "no.key")))


def test_a_bad_certificate_or_a_key_of_another_certificate_is_one_line_and_exit_2(www: Path, tls_cert,
                                                                                   tmp_path: Path):
    cert, key = tls_cert
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    assert_tls_error(run_serve(www, "--tls-port", "0", "--tls-cert", str(garbage), "--tls-key", str(key)))
    _, other_key = make_cert(tmp_path / "other", name="other")
    out = run_serve(www, "--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert_tls_error(out)


@pytest.mark.parametrize("args", [("--tls-port", "0"), ("--tls-port", "0", "--tls-key", "k.pem"),
                                  ("--tls-cert", "c.pem", "--tls-key", "k.pem")],
                         ids=["port only", "no cert", "no port"])
def test_tls_flags_go_together(www: Path, args):
    assert_tls_error(run_serve(www, *args))


def test_the_tls_table_of_the_config_file(edge, tls_cert, tmp_path: Path):
    cert, key = tls_cert
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[tls]\nport = 0\ncert = "{cert}"\nkey = "{key}"\n')
    server = edge(config=cfg)
    sock = server.connect_tls(["h2"], cafile=cert)
    assert sock.selected_alpn_protocol() == "h2"
    sock.close()
    cfg.write_text(f'[tls]\nport = 0\ncert = "{cert}"\n')
    out = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(cfg)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("edge: tls"), out.stderr


# -- renewal --------------------------------------------------------------------------------------------


def install(src: tuple[Path, Path], live: tuple[Path, Path]) -> None:
    """Put a certificate and key in place the way a renewal tool does (write aside, rename over)."""
    for a, b in zip(src, live):
        tmp = b.with_suffix(".new")
        shutil.copyfile(a, tmp)
        os.replace(tmp, b)


def test_sighup_picks_up_a_renewed_certificate(edge, tmp_path: Path):
    old = make_cert(tmp_path / "old", name="edge-old", serial=1001)
    new = make_cert(tmp_path / "new", name="edge-new", serial=2002)
    live = (tmp_path / "live.crt", tmp_path / "live.key")
    install(old, live)
    server = edge("--tls-port", "0", "--tls-cert", str(live[0]), "--tls-key", str(live[1]))
    assert presented(server) == der(old[0])
    install(new, live)
    time.sleep(0.2)
    assert presented(server) == der(old[0]), "the certificate changed before the reload"
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: presented(server) == der(new[0]), 15), "still the old certificate after SIGHUP"
    assert wait_for(lambda: "generation 2 serving" in server.stderr(), 5), server.stderr()

    def verified_serial() -> str | None:
        # An old worker may still be closing its listener for a moment after the reload says so.
        try:
            sock = server.connect_tls(["h2"], cafile=new[0])  # verifies against the new certificate
        except ssl.SSLError:
            return None
        try:
            return sock.getpeercert()["serialNumber"]
        finally:
            sock.close()

    assert wait_for(lambda: verified_serial() == "07D2", 10)  # 2002


def test_sighup_with_a_broken_certificate_keeps_the_old_one(edge, tmp_path: Path):
    old = make_cert(tmp_path / "old", name="edge-old")
    live = (tmp_path / "live.crt", tmp_path / "live.key")
    install(old, live)
    server = edge("--tls-port", "0", "--tls-cert", str(live[0]), "--tls-key", str(live[1]))
    workers = server.worker_pids()
    live[0].write_text("-----BEGIN CERTIFICATE-----\ntruncated\n")
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload failed" in server.stderr(), 10), server.stderr()
    assert "tls" in server.stderr().split("reload failed", 1)[1].splitlines()[0]
    assert server.worker_pids() == workers
    assert presented(server) == der(old[0])


def test_a_handshake_under_way_when_a_reload_begins_is_finished_by_the_old_worker(tls_server):
    """A TLS connection the old worker accepted, its handshake not yet done when SIGHUP drains that worker:
    the worker waits for it (it is not a connection of its own until ALPN chose its protocol) and answers
    it, instead of leaving and cutting it (a reload drops no connection)."""
    server = tls_server
    old_workers = set(server.worker_pids())
    raw = socket.create_connection((server.host, server.tls_port), timeout=10)  # accepted; no ClientHello yet
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: set(server.worker_pids()) - old_workers, 10), "no new worker"
    time.sleep(0.5)  # the old worker drains meanwhile: without this connection it would be gone by now
    ctx = ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    tls = ctx.wrap_socket(raw, server_hostname=server.host)
    tls.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    assert tls.recv(65536).startswith(b"HTTP/1.1 200 "), "the old worker answered"
    tls.close()
