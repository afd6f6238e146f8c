"""Decryption and encryption on every core: same bytes as one thread, verify-then-release, clean failure."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from weightvault import KEK, AEADSuite, FileKey, SealedFile, SealOptions, seal_safetensors
from weightvault.errors import PayloadError
from weightvault.format import HeaderKind
from weightvault.loaders import numpy as wv_numpy
from weightvault.loaders._host import host_buffer
from weightvault.sealing import reader
from weightvault.sealing.unseal import unseal_file
from weightvault.sealing.workers import resolve_workers, usable_cpus

KEY = FileKey(bytes(range(1, 33)))


@pytest.fixture
def many_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A file of several multi-chunk tensors at 64 KiB chunks, with runs of 2 chunks: many runs per tensor."""
    monkeypatch.setattr(reader, "_RUN_BYTES", 128 << 10)
    rng = np.random.default_rng(11)
    tensors: dict[str, np.ndarray] = {
        "a": rng.integers(0, 255, 700_000, dtype=np.uint8),
        "b": rng.standard_normal(50_000, dtype=np.float32),
        "c": rng.integers(0, 255, 65_536 * 3, dtype=np.uint8),  # ends exactly on a chunk boundary
        "empty": np.zeros(0, dtype=np.float16),
        "tiny": np.arange(3, dtype=np.int64),
    }
    plain = tmp_path / "p.safetensors"
    save_file(tensors, str(plain))
    sealed = tmp_path / "s.wvlt"
    seal_safetensors(plain, sealed, file_key=KEY, options=SealOptions(AEADSuite.CHACHA20_POLY1305, 16, workers=2))
    return plain, sealed


@pytest.mark.parametrize("workers", [1, 2])
def test_every_worker_count_gives_the_same_tensors(many_runs: tuple[Path, Path], workers: int) -> None:
    """Loads, slices, verification and unsealing agree with the plaintext whatever the thread count."""
    plain, sealed = many_runs
    from safetensors.numpy import load_file

    expected = load_file(str(plain))
    got = wv_numpy.load_file(sealed, KEY, workers=workers)
    assert set(expected) == set(got)
    for name, array in expected.items():
        np.testing.assert_array_equal(array, got[name])
    with wv_numpy.safe_open(sealed, KEY, workers=workers) as f:
        np.testing.assert_array_equal(expected["a"][65_000:400_001], f.get_slice("a")[65_000:400_001])
    with SealedFile(sealed) as s, s.unlock(KEY) as opened:
        opened.verify(workers=workers)
    out = sealed.with_name(f"back-{workers}.safetensors")
    unseal_file(sealed, out, KEY, workers=workers)
    assert plain.read_bytes() == out.read_bytes()


def test_a_failure_in_one_worker_releases_nothing(
    many_runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad chunk in a middle run: the load raises, every destination is zeroed, no worker thread survives."""
    _, sealed = many_runs
    with SealedFile(sealed) as s, s.unlock(KEY) as opened:
        start, _ = opened.layout.data_range(opened.entry("a"))
    data = bytearray(sealed.read_bytes())
    data[start + 5 * 65_536 + 10] ^= 1  # chunk 5 of "a": the third of its six runs
    sealed.write_bytes(bytes(data))
    handed_out: list[memoryview] = []

    def spy(nbytes: int) -> object:
        buf = host_buffer(nbytes)
        handed_out.append(memoryview(buf))
        return buf

    monkeypatch.setattr(wv_numpy, "host_buffer", spy)
    with pytest.raises(PayloadError, match="chunk 5"):
        wv_numpy.load_file(sealed, KEY, workers=2)
    assert len(handed_out) == 5
    assert all(not any(b) for b in handed_out)
    assert not [t for t in threading.enumerate() if t.name.startswith(("wv-decrypt", "wv-verify"))]
    with pytest.raises(PayloadError):
        unseal_file(sealed, sealed.with_name("never.safetensors"), KEY)
    assert not sealed.with_name("never.safetensors").exists()


def test_worker_counts_are_checked() -> None:
    """Zero or negative is an error; more than the usable CPUs is capped with a warning."""
    assert usable_cpus() == resolve_workers(None)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            resolve_workers(bad)
    with pytest.raises(TypeError):
        resolve_workers(1.5)  # type: ignore[arg-type]
    with pytest.warns(RuntimeWarning, match="CPUs are usable"):
        assert usable_cpus() == resolve_workers(usable_cpus() + 7)


def test_parallel_sealing_writes_what_one_thread_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fixed file id, sealing with one or two threads (and small runs) gives identical bytes."""
    from weightvault.sealing import writer
    from weightvault.sealing.safetensors_source import read_safetensors_source

    monkeypatch.setattr(writer, "_BLOCK_BYTES", 64 << 10)
    plain = tmp_path / "p.safetensors"
    save_file({"w": np.arange(300_000, dtype=np.float32), "z": np.zeros(0, dtype=np.uint8)}, str(plain))
    source = read_safetensors_source(plain)
    outputs = []
    for workers in (1, 2):
        dst = tmp_path / f"s{workers}.wvlt"
        writer._seal(
            src=plain,
            dst=dst,
            kind=HeaderKind.SAFETENSORS,
            sources=[writer._Source(t.spec, source.data_start + t.begin) for t in source.tensors],
            metadata=source.metadata,
            safetensors_header=source.header_text,
            file_key=KEY,
            recipients=[KEK(bytes(range(32, 64)))],
            options=SealOptions(chunk_log2=16, workers=workers),
            overwrite=False,
            progress=None,
            _file_id=bytes(range(64, 96)),
        )
        outputs.append(dst.read_bytes())
    # KEK stanzas use a random salt: compare everything after the recipients region.
    with SealedFile(tmp_path / "s1.wvlt") as s:
        after = s.preamble.header_offset
    assert outputs[0][after:] == outputs[1][after:]
