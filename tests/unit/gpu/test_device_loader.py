"""The device loading path (kernels under the Triton interpreter): same tensors, same failures as the CPU path."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import SealedCase, kernel_device, make_sealed_case, require_module
from weightvault import KEK, AEADSuite, FileKey
from weightvault.errors import KeyMismatchError, PayloadError, UnsupportedError, WeightVaultError
from weightvault.sealing.reader import SealedFile

require_module("triton")
DEVICE = kernel_device()

from weightvault.gpu.pipeline import load_to_device  # noqa: E402
from weightvault.loaders import torch as wv_torch  # noqa: E402


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> SealedCase:
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("gpu")
    rng = np.random.default_rng(7)
    plain = tmp / "m.safetensors"
    save_file(
        {
            "empty": np.zeros((0, 3), dtype=np.float32),
            "one": np.array([7], dtype=np.uint8),
            "odd": rng.integers(-128, 127, size=65_537, dtype=np.int8),  # two chunks, the last of 1 byte
            "multi": rng.standard_normal((3, 11_000)).astype(np.float32),  # 132,000 bytes: three chunks
            "half": rng.standard_normal((7, 9)).astype(np.float16),
        },
        str(plain),
    )
    return make_sealed_case(tmp, plain, FileKey.generate(), KEK.generate(), AEADSuite.CHACHA20_POLY1305)


def test_device_path_gives_the_same_tensors_as_the_cpu_path(case: SealedCase) -> None:
    ours = {k: v.cpu() for k, v in wv_torch.load_file(case.sealed, case.kek, DEVICE, kernels=True).items()}
    reference = wv_torch.load_file(case.sealed, case.kek, kernels=False)
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert tensor.dtype == ours[name].dtype
        assert tensor.shape == ours[name].shape
        assert torch.equal(tensor, ours[name]), name


def _cpu_and_device_errors(path: Path, keys: object) -> tuple[WeightVaultError, WeightVaultError]:
    errors = []
    for kernels in (False, True):
        with pytest.raises(WeightVaultError) as info:
            wv_torch.load_file(path, keys, DEVICE if kernels else "cpu", kernels=kernels)  # type: ignore[arg-type]
        errors.append(info.value)
    return errors[0], errors[1]


def _tampered(case: SealedCase, tmp_path: Path, edit: object) -> Path:
    data = case.bytes()
    edit(data)  # type: ignore[operator]
    out = tmp_path / "t.wvlt"
    out.write_bytes(bytes(data))
    return out


def _data_offset(case: SealedCase, name: str) -> int:
    with SealedFile(case.sealed) as sealed:
        opened = sealed.unlock(case.kek)
        return opened.layout.data_range(opened.entry(name))[0]


def test_a_flipped_byte_fails_identically(case: SealedCase, tmp_path: Path) -> None:
    at = _data_offset(case, "multi") + 70_000  # second chunk

    def flip(data: bytearray) -> None:
        data[at] ^= 0x20

    cpu, device = _cpu_and_device_errors(_tampered(case, tmp_path, flip), case.kek)
    assert type(cpu) is type(device) is PayloadError
    assert str(cpu) == str(device) == "tensor 'multi': chunk 1 failed authentication"


def test_swapped_chunks_fail_identically(case: SealedCase, tmp_path: Path) -> None:
    start = _data_offset(case, "multi")
    size = 1 << 16

    def swap(data: bytearray) -> None:
        a, b = data[start : start + size], data[start + size : start + 2 * size]
        data[start : start + size], data[start + size : start + 2 * size] = b, a

    cpu, device = _cpu_and_device_errors(_tampered(case, tmp_path, swap), case.kek)
    assert str(cpu) == str(device)
    assert isinstance(device, PayloadError)


def test_truncation_and_wrong_key_fail_before_any_kernel(case: SealedCase, tmp_path: Path) -> None:
    def cut(data: bytearray) -> None:
        del data[-5000:]

    cpu, device = _cpu_and_device_errors(_tampered(case, tmp_path, cut), case.kek)
    assert (type(cpu), str(cpu)) == (type(device), str(device))
    cpu, device = _cpu_and_device_errors(case.sealed, FileKey.generate())
    assert type(cpu) is type(device)
    assert isinstance(device, KeyMismatchError | WeightVaultError)


def test_a_failed_load_leaves_nothing_in_device_memory(case: SealedCase, tmp_path: Path) -> None:
    at = _data_offset(case, "odd") + 65_536  # the 1-byte last chunk of "odd"

    def flip(data: bytearray) -> None:
        data[at] ^= 0x01

    buffers: list[torch.Tensor] = []

    def allocate(n: int) -> torch.Tensor:
        buffers.append(torch.full((n,), 0x5A, dtype=torch.uint8, device=DEVICE))
        return buffers[-1]

    with SealedFile(_tampered(case, tmp_path, flip)) as sealed:
        opened = sealed.unlock(case.kek)
        with pytest.raises(PayloadError, match="'odd': chunk 1"):
            load_to_device(opened, opened.entries, DEVICE, allocate=allocate)
    assert len(buffers) == 5
    assert all(int(b.count_nonzero()) == 0 for b in buffers)


def test_aes_files_use_the_cpu_path(tmp_path: Path, case: SealedCase) -> None:
    aes = make_sealed_case(tmp_path, case.plain, FileKey.generate(), KEK.generate(), AEADSuite.AES_256_GCM)
    with pytest.raises(UnsupportedError, match="chacha20-poly1305"):
        wv_torch.load_file(aes.sealed, aes.kek, DEVICE, kernels=True)
    assert "multi" in wv_torch.load_file(aes.sealed, aes.kek)  # automatic choice: the CPU path


def test_transformers_model_through_the_device_kernels(tmp_path: Path) -> None:
    """A (tiny) sealed transformers model decrypted by the kernels gives the plain model's outputs."""
    transformers = require_module("transformers")
    from weightvault.loaders import transformers as wv_transformers
    from weightvault.sealing import SealOptions, seal_model_dir

    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    plain = transformers.BertModel(config).eval()
    plain.save_pretrained(str(tmp_path / "plain"))
    key = FileKey.generate()
    seal_model_dir(
        tmp_path / "plain",
        tmp_path / "sealed",
        file_key=key,
        options=SealOptions(AEADSuite.CHACHA20_POLY1305, chunk_log2=16),
    )
    ours = wv_transformers.from_pretrained(
        transformers.BertModel, tmp_path / "sealed", key, device=DEVICE, kernels=True
    ).eval()
    theirs = plain.state_dict()
    for name, tensor in ours.state_dict().items():
        assert tensor.device.type == DEVICE.type, name
        assert torch.equal(tensor.cpu(), theirs[name]), name
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        reference = plain.to(DEVICE)(ids.to(DEVICE)).last_hidden_state
        assert torch.equal(reference, ours(ids.to(DEVICE)).last_hidden_state)


def test_tags_are_checked_while_later_tensors_are_still_being_copied(
    case: SealedCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verify pass overlaps the copies: tensor 0's MAC starts before the last tensor has arrived."""
    import threading

    from weightvault.gpu import aead, pipeline

    first_mac = threading.Event()
    real = aead.poly1305_tags

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        first_mac.set()
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "poly1305_tags", recording)
    with SealedFile(case.sealed) as sealed:
        opened = sealed.unlock(case.kek)
        entries = opened.entries
        copied: list[int] = []
        seen_before_last: list[bool] = []

        def progress(n: int) -> None:
            copied.append(n)
            if len(copied) == sum(1 for e in entries if e.nbytes) - 1:
                # Hold the reader before the last piece until a MAC has been launched;
                # a copy-everything-then-verify pipeline would time out here.
                seen_before_last.append(first_mac.wait(timeout=30))

        out = load_to_device(opened, entries, DEVICE, progress=progress)
    assert seen_before_last == [True]
    assert set(out) == {e.name for e in entries}


def test_a_reader_failure_stops_the_load_and_wipes_every_buffer(case: SealedCase) -> None:
    buffers: list[torch.Tensor] = []

    def allocate(n: int) -> torch.Tensor:
        buffers.append(torch.full((n,), 0x5A, dtype=torch.uint8, device=DEVICE))
        return buffers[-1]

    def progress(n: int) -> None:
        raise OSError("disk went away")

    with SealedFile(case.sealed) as sealed:
        opened = sealed.unlock(case.kek)
        with pytest.raises(OSError, match="disk went away"):
            load_to_device(opened, opened.entries, DEVICE, progress=progress, allocate=allocate)
    assert len(buffers) == 5
    assert all(int(b.count_nonzero()) == 0 for b in buffers)


def test_an_allocation_failure_wipes_what_was_already_allocated(case: SealedCase) -> None:
    buffers: list[torch.Tensor] = []

    def allocate(n: int) -> torch.Tensor:
        if len(buffers) == 3:
            raise MemoryError("device full")
        buffers.append(torch.full((n,), 0x5A, dtype=torch.uint8, device=DEVICE))
        return buffers[-1]

    with SealedFile(case.sealed) as sealed:
        opened = sealed.unlock(case.kek)
        with pytest.raises(MemoryError):
            load_to_device(opened, opened.entries, DEVICE, allocate=allocate)
    assert len(buffers) == 3
    assert all(int(b.count_nonzero()) == 0 for b in buffers)
