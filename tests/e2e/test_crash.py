"""kill -9 during seal and unseal: no output, partial or hidden, outlives the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_BIG = 24 << 20  # bytes per tensor: large enough that the write is caught midway


def _wv(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "weightvault", *map(str, args)], check=True, capture_output=True, timeout=120)


def _kill_while_writing(args: list[str | Path], into: Path) -> None:
    """Start ``weightvault args``, wait until it holds an open output file in ``into`` with data, kill -9 it."""
    proc = subprocess.Popen([sys.executable, "-m", "weightvault", *map(str, args)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"the command ended before it could be killed: {err}")
            for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                    size = os.stat(fd).st_size
                except OSError:
                    continue
                if target.startswith(str(into)) and size > (4 << 20):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return
            time.sleep(0.002)
        pytest.fail("no output file appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def big_model(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A ~72 MiB safetensors file, its sealed form and the KEK that opens it."""
    rng = np.random.default_rng(3)
    plain = tmp_path / "src" / "model.safetensors"
    plain.parent.mkdir()
    save_file({f"w{i}": rng.integers(0, 255, _BIG, dtype=np.uint8) for i in range(3)}, str(plain))
    kek = tmp_path / "kek.json"
    _wv("keygen", "kek", kek)
    sealed = tmp_path / "sealed" / "model.wvlt"
    sealed.parent.mkdir()
    _wv("seal", plain, sealed, "-r", kek)
    return plain, sealed, kek


def test_killed_unseal_leaves_no_plaintext(tmp_path: Path, big_model: tuple[Path, Path, Path]) -> None:
    """Unsealing writes into an unnamed file: after kill -9 mid-write the output directory is empty."""
    _, sealed, kek = big_model
    out = tmp_path / "out"
    out.mkdir()
    _kill_while_writing(["unseal", sealed, out / "model.safetensors", "-i", kek], out)
    assert [] == os.listdir(out)


def test_killed_seal_leaves_nothing(tmp_path: Path, big_model: tuple[Path, Path, Path]) -> None:
    """A sealing process killed mid-write leaves no file beside its output, hidden or not."""
    plain, _, kek = big_model
    out = tmp_path / "out2"
    out.mkdir()
    _kill_while_writing(["seal", plain, out / "model.wvlt", "-r", kek], out)
    assert [] == os.listdir(out)


def test_killed_directory_unseal_is_swept_by_the_next_write(tmp_path: Path, big_model: tuple[Path, Path, Path]) -> None:
    """A killed model-directory unseal leaves only a locked-then-orphaned temporary, removed by the next writer."""
    plain, _, kek = big_model
    sealed_dir = tmp_path / "sealed-dir"
    _wv("seal", plain.parent, sealed_dir, "-r", kek)
    out_parent = tmp_path / "restored"
    out_parent.mkdir()
    _kill_while_writing(["unseal", sealed_dir, out_parent / "model", "-i", kek], out_parent)
    leftovers = os.listdir(out_parent)
    assert all(name.startswith(".model.wv-") and name.endswith(".partial") for name in leftovers)
    past = time.time() - 60
    for name in leftovers:
        os.utime(out_parent / name, (past, past))
    _wv("unseal", sealed_dir, out_parent / "model", "-i", kek)
    assert ["model"] == os.listdir(out_parent)
    assert plain.read_bytes() == (out_parent / "model" / "model.safetensors").read_bytes()
