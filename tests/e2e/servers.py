"""Start weightvault services as real processes on loopback, and stop them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    args: Sequence[str],
    port: int | None,
    *,
    ready_path: str = "/",
    env: dict[str, str] | None = None,
    scheme: str = "http",
    verify: object = True,
    timeout_s: float = 30.0,
    uds: Path | None = None,
) -> Iterator[str]:
    """Run ``python -m weightvault <args>`` until the block ends; yields the base URL.

    Ready once ``ready_path`` answers on ``port`` (or, with ``uds``, on that Unix socket;
    the URL is then ``unix:<path>``).
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    full_env.update(env or {})
    # The server's output goes to a file, never to a pipe nobody drains: once a pipe's
    # 64 KiB fill up, the server's next log line blocks every thread that logs.
    output = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightvault", *args],
        stdout=output,
        stderr=subprocess.STDOUT,
        env=full_env,
    )
    base = f"unix:{uds}" if uds is not None else f"{scheme}://127.0.0.1:{port}"
    PROCESSES[base] = proc
    if isinstance(verify, str):
        import ssl

        verify = ssl.create_default_context(cafile=verify)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                output.seek(0)
                raise RuntimeError(f"server exited with {proc.returncode}: {output.read().decode(errors='replace')}")
            try:
                if uds is not None:
                    _get_unix(uds, ready_path)
                else:
                    httpx.get(base + ready_path, timeout=1.0, verify=verify)  # type: ignore[arg-type]
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    output.seek(0)
                    raise RuntimeError(
                        f"not ready in {timeout_s} s: {output.read().decode(errors='replace')}"
                    ) from None
                time.sleep(0.1)
        yield base
    finally:
        PROCESSES.pop(base, None)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        output.close()


#: The process behind each URL ``serve`` is running (drills kill them).
PROCESSES: dict[str, subprocess.Popen[bytes]] = {}


def _get_unix(path: Path, target: str) -> None:
    """GET over a Unix socket with a plain socket (httpx leaks one per refused connection);
    raises httpx.ConnectError unless the answer is 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            sock.sendall(f"GET {target} HTTP/1.0\r\nHost: sandbox\r\n\r\n".encode())
            status = sock.recv(64)
    except OSError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    if not status.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise httpx.ConnectError(f"not ready: {status[:40]!r}")


def set_rate_limit(base: Path, rate_per_second: float, burst: int) -> None:
    """Rewrite the per-principal rate limit in ``base/broker.toml`` (tests and benchmarks lift it)."""
    config = base / "broker.toml"
    text = re.sub(r"(?m)^rate_per_second = [\d.]+", f"rate_per_second = {rate_per_second}", config.read_text())
    config.write_text(re.sub(r"(?m)^burst = \d+", f"burst = {burst}", text))


def serve_broker(base: Path, *, replica: str | None = None, **kwargs: Any) -> Any:
    """``serve`` for ``weightvault broker serve --config base/broker.toml`` on a free port, ready at /v1/health."""
    port = free_port()
    named = ["--replica", replica] if replica is not None else []
    return serve(
        ["broker", "serve", "--config", str(base / "broker.toml"), "--port", str(port), *named],
        port,
        ready_path="/v1/health",
        **kwargs,
    )
