"""Real servers for remote sealed weights, started on loopback: nginx, an S3 server (moto), a lying server.

Used by the tests and by bench/remote_load.py. Each is a context manager that yields the
base URL (or, for S3, the endpoint) and stops the process when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

__all__ = ["lying_server", "moto_s3", "nginx", "require_nginx"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args!r} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=2, verify=False)  # readiness only; the tests check certificates
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def require_nginx() -> str:
    """nginx's path; skips the test without it, fails under CI=true."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


_NGINX_CONF = """
worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream wvlt; application/json json; }}
    server {{
        listen 127.0.0.1:{port}{ssl};
        {tls}
        root {root};
        location / {{ }}
    }}
}}
"""


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files in ``directory`` (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@contextlib.contextmanager
def nginx(root: Path, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """nginx serving ``root`` (range requests, ETags) on a loopback port; yields ``http://127.0.0.1:PORT``
    (``https://`` with ``tls``: a certificate and its key)."""
    binary = require_nginx()
    prefix = Path(tempfile.mkdtemp(prefix="wv-nginx-"))
    port = _free_port()
    # As root, nginx's workers would drop to nobody, who may not read the test's files.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    ssl = " ssl" if tls else ""
    directives = f"ssl_certificate {tls[0].resolve()}; ssl_certificate_key {tls[1].resolve()};" if tls else ""
    conf.write_text(
        _NGINX_CONF.format(prefix=prefix, port=port, root=root.resolve(), user=user, ssl=ssl, tls=directives)
    )
    log = prefix / "stderr.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(prefix)], stdout=out, stderr=subprocess.STDOUT)
    scheme = "https" if tls else "http"
    try:
        _wait_http(f"{scheme}://127.0.0.1:{port}/", proc, log)
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(prefix, ignore_errors=True)


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """An S3-compatible server (moto in server mode); yields its endpoint URL."""
    pytest.importorskip("moto")
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wv-moto-"))
    log = workdir / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def lying_server(root: Path) -> Iterator[str]:
    """tests/lying_http.py serving ``root``; yields its base URL (modes are the first path segment)."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wv-lying-"))
    log = workdir / "server.log"
    script = Path(__file__).with_name("lying_http.py")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root.resolve()), str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/stats", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
