"""Real servers for remote sealed weights, started on loopback: nginx, an S3 server (moto), a lying server.

Used by the tests and by bench/remote_load.py. Each is a context manager that yields the
base URL (or, for S3, the endpoint) and stops the process when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import free_port

__all__ = ["lying_server", "moto_s3", "nginx", "require_nginx"]


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


@contextlib.contextmanager
def _process(cmd: list[str], workdir: Path, ready_url: str) -> Iterator[None]:
    """Run ``cmd`` (output to ``workdir``/out.log) until the block ends; ready once ``ready_url`` answers.
    ``workdir`` is removed afterwards."""
    log = workdir / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(ready_url, proc, log)
        yield
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


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


@contextlib.contextmanager
def nginx(root: Path, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """nginx serving ``root`` (range requests, ETags) on a loopback port; yields ``http://127.0.0.1:PORT``
    (``https://`` with ``tls``: a certificate and its key)."""
    binary = require_nginx()
    prefix = Path(tempfile.mkdtemp(prefix="wv-nginx-"))
    port = free_port()
    # As root, nginx's workers would drop to nobody, who may not read the test's files.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    ssl = " ssl" if tls else ""
    directives = f"ssl_certificate {tls[0].resolve()}; ssl_certificate_key {tls[1].resolve()};" if tls else ""
    conf.write_text(
        _NGINX_CONF.format(prefix=prefix, port=port, root=root.resolve(), user=user, ssl=ssl, tls=directives)
    )
    scheme = "https" if tls else "http"
    with _process([binary, "-c", str(conf), "-p", str(prefix)], prefix, f"{scheme}://127.0.0.1:{port}/"):
        yield f"{scheme}://127.0.0.1:{port}"


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """An S3-compatible server (moto in server mode); yields its endpoint URL."""
    pytest.importorskip("moto")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wv-moto-"))
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _process(cmd, workdir, f"http://127.0.0.1:{port}/"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def lying_server(root: Path) -> Iterator[str]:
    """tests/lying_http.py serving ``root``; yields its base URL (modes are the first path segment)."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wv-lying-"))
    script = Path(__file__).with_name("lying_http.py")
    cmd = [sys.executable, str(script), str(root.resolve()), str(port)]
    with _process(cmd, workdir, f"http://127.0.0.1:{port}/stats"):
        yield f"http://127.0.0.1:{port}"
