"""swtpm for tests: a CA and a TPM state made once per run, a fresh TPM per test, stopped by PID.

Each test copies the template state into its own directory and starts
``swtpm socket`` on free loopback ports with an absolute state path (a relative
one makes swtpm fail at startup). Stopping sends TPM2_Shutdown first, as an
orderly power-off would, so that the TPM clock stays "safe" across restarts.
Without swtpm the tests skip with the reason locally and fail in CI (CI=true).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TSS2_LOG", "all+NONE")

TOOLS = ("swtpm", "swtpm_setup", "swtpm_localca")


def _free_port_pair() -> int:
    """A free loopback port whose successor is free too."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no pair of adjacent free ports on loopback")


def require_swtpm() -> None:
    """Skip (locally) or fail (CI) when swtpm or tpm2-pytss is missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        missing.append("tpm2-pytss")
    if missing:
        message = f"swtpm tests need {', '.join(missing)} (apt-get install swtpm swtpm-tools tpm2-tools libtss2-dev)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class TPMTemplate:
    """A manufactured TPM state and the CA that certified its EK."""

    state: Path
    root_cert: Path
    issuer_cert: Path
    setup_config: Path

    def manufacture(self, state: Path) -> Path:
        """Another TPM from the same manufacturer: fresh seeds, a new EK certified by the same CA."""
        state.mkdir(parents=True)
        _setup(self.setup_config, state)
        return state


def _setup(config: Path, state: Path) -> None:
    subprocess.run(
        [
            "swtpm_setup",
            "--tpm2",
            "--config",
            str(config),
            "--tpmstate",
            str(state.resolve()),
            "--createek",
            "--decryption",
            "--create-ek-cert",
            "--create-platform-cert",
            "--pcr-banks",
            "sha256",
            "--overwrite",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def make_template(base: Path, name: str = "ca") -> TPMTemplate:
    """Create a local CA and a TPM state whose EK certificate it issued."""
    ca = (base / name).resolve()
    (ca / "localca").mkdir(parents=True)
    (ca / "state").mkdir()
    (ca / "swtpm-localca.conf").write_text(
        f"statedir = {ca}/localca\nsigningkey = {ca}/localca/signkey.pem\n"
        f"issuercert = {ca}/localca/issuercert.pem\ncertserial = {ca}/localca/certserial\n"
    )
    (ca / "swtpm_setup.conf").write_text(
        f"create_certs_tool = {shutil.which('swtpm_localca')}\ncreate_certs_tool_config = {ca}/swtpm-localca.conf\n"
        "create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n"
    )
    _setup(ca / "swtpm_setup.conf", ca / "state")
    return TPMTemplate(
        ca / "state",
        ca / "localca" / "swtpm-localca-rootca-cert.pem",
        ca / "localca" / "issuercert.pem",
        ca / "swtpm_setup.conf",
    )


class SWTPM:
    """One running software TPM."""

    def __init__(self, state: Path) -> None:
        self.state = state.resolve()
        self.port = 0
        self.ctrl = 0
        self.pid: int | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> SWTPM:
        # The swtpm TCTI always finds the control channel at port + 1.
        self.port = _free_port_pair()
        self.ctrl = self.port + 1
        pidfile = self.state.parent / f"{self.state.name}.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.ctrl},bindaddr=127.0.0.1",
                "--flags",
                "startup-clear,not-need-init",
                "--daemon",
                "--pid",
                f"file={pidfile}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("swtpm did not write its pid file")
            time.sleep(0.02)
        self.pid = int(pidfile.read_text().strip())
        return self

    def stop(self, orderly: bool = True) -> None:
        if self.pid is None:
            return
        if orderly:
            import tpm2_pytss

            with contextlib.suppress(Exception):  # stopping anyway
                esapi = tpm2_pytss.ESAPI(self.tcti)
                esapi.shutdown(tpm2_pytss.TPM2_SU.CLEAR)
                esapi.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        self.pid = None

    def restart(self) -> SWTPM:
        """An orderly reboot: the reset counter increases and PCRs return to zero."""
        self.stop()
        return self.start()

    def snapshot(self, to: Path) -> Path:
        """Copy the persisted state (take it while the TPM is stopped)."""
        shutil.copytree(self.state, to)
        return to

    def restore(self, snapshot: Path) -> None:
        shutil.rmtree(self.state)
        shutil.copytree(snapshot, self.state)
