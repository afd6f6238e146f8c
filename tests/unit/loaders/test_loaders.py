"""Loading sealed files into PyTorch and NumPy: equality with safetensors, lazy access, partial grants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as st_load_numpy
from safetensors.torch import load_file as st_load_torch

from tests.helpers import SealedCase
from weightvault import SealedFile
from weightvault.errors import KeyAccessError, KeyMismatchError, PayloadError
from weightvault.format.keys import FileKey
from weightvault.loaders import numpy as wv_numpy
from weightvault.loaders import torch as wv_torch


def test_torch_load_file_equals_safetensors(sealed_case: SealedCase) -> None:
    """Every tensor loaded from the sealed file equals safetensors' tensor: dtype, shape and bits."""
    expected = st_load_torch(str(sealed_case.plain))
    actual = wv_torch.load_file(sealed_case.sealed, [sealed_case.kek])
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert tensor.dtype == actual[name].dtype
        assert tensor.shape == actual[name].shape
        assert torch.equal(tensor, actual[name])


def test_numpy_load_file_equals_safetensors(sealed_case: SealedCase) -> None:
    """The NumPy loader matches safetensors.numpy."""
    expected = st_load_numpy(str(sealed_case.plain))
    actual = wv_numpy.load_file(sealed_case.sealed, sealed_case.file_key)
    assert expected.keys() == actual.keys()
    for name, arr in expected.items():
        assert arr.dtype == actual[name].dtype
        np.testing.assert_array_equal(arr, actual[name])


def test_loaded_tensors_own_writable_memory(sealed_case: SealedCase) -> None:
    """Loaded tensors are ordinary writable CPU tensors, independent of the file."""
    tensors = wv_torch.load_file(sealed_case.sealed, sealed_case.file_key)
    weight = tensors["layer.0.weight"]
    weight.add_(1.0)
    sealed_case.sealed.unlink()
    assert torch.isfinite(weight).all()


def test_safe_open_lazy_access_and_slices(sealed_case: SealedCase) -> None:
    """safe_open lists names and metadata, and slices equal the slices of the full tensor."""
    expected = st_load_torch(str(sealed_case.plain))
    with wv_torch.safe_open(sealed_case.sealed, [sealed_case.kek]) as f:
        assert set(expected) == set(f.keys())
        assert {"format": "pt", "note": "test"} == f.metadata()
        whole = f.get_tensor("layer.1.weight")
        assert torch.equal(expected["layer.1.weight"], whole)
        sl = f.get_slice("layer.0.weight")
        assert [96, 512] == sl.get_shape()
        assert "F32" == sl.get_dtype()
        assert torch.equal(expected["layer.0.weight"][40:50, 100:300], sl[40:50, 100:300])
        assert torch.equal(expected["layer.0.weight"][:, 7], sl[:, 7])
        assert torch.equal(expected["scalar"], f.get_slice("scalar")[()])
        assert (0, 4) == tuple(f.get_slice("empty")[:].shape)


def test_slice_decrypts_only_covered_chunks(sealed_case: SealedCase) -> None:
    """A slice inside the first chunk still loads when a later chunk of the same tensor is corrupt."""
    with SealedFile(sealed_case.sealed) as sealed:
        opened = sealed.unlock(sealed_case.file_key)
        start, _ = opened.layout.data_range(opened.entry("layer.0.weight"))
    data = bytearray(sealed_case.sealed.read_bytes())
    data[start + (2 << 16) + 5] ^= 1  # third chunk
    sealed_case.sealed.write_bytes(bytes(data))
    expected = st_load_torch(str(sealed_case.plain))["layer.0.weight"]
    with wv_torch.safe_open(sealed_case.sealed, sealed_case.file_key) as f:
        rows = 65536 // (512 * 4)
        assert torch.equal(expected[:rows], f.get_slice("layer.0.weight")[:rows])
        with pytest.raises(PayloadError):
            f.get_slice("layer.0.weight")[rows * 2 + 1 :]
        with pytest.raises(PayloadError):
            f.get_tensor("layer.0.weight")


def test_numpy_safe_open(sealed_case: SealedCase) -> None:
    """The NumPy safe_open serves tensors and slices."""
    expected = st_load_numpy(str(sealed_case.plain))
    with wv_numpy.safe_open(sealed_case.sealed, sealed_case.file_key) as f:
        np.testing.assert_array_equal(expected["layer.0.bias"], f.get_tensor("layer.0.bias"))
        np.testing.assert_array_equal(expected["layer.0.weight"][3:9, ::5], f.get_slice("layer.0.weight")[3:9, ::5])


def test_partial_grant_loads_only_its_tensors(sealed_case: SealedCase) -> None:
    """A grant for two tensors loads exactly those; asking for another is refused."""
    with SealedFile(sealed_case.sealed) as sealed:
        table = sealed.public_table()
        file_id = sealed.preamble.file_id
    wanted = [e for e in table.tensors if e.name in ("layer.0.weight", "mask")]
    grant = sealed_case.file_key.tensor_keys(file_id, [e.index for e in wanted])
    loaded = wv_torch.load_file(sealed_case.sealed, grant)
    assert {"layer.0.weight", "mask"} == set(loaded)
    expected = st_load_torch(str(sealed_case.plain))
    assert torch.equal(expected["mask"], loaded["mask"])
    with wv_torch.safe_open(sealed_case.sealed, grant) as f, pytest.raises(KeyAccessError):
        f.get_tensor("layer.1.weight")


def test_partial_grant_with_a_wrong_tensor_secret_is_refused(sealed_case: SealedCase) -> None:
    """A grant whose tensor secret does not match the header's commitment is refused at open."""
    from weightvault.format import TensorKeys

    with SealedFile(sealed_case.sealed) as sealed:
        file_id = sealed.preamble.file_id
    good = sealed_case.file_key.tensor_keys(file_id, [0])
    bad = TensorKeys(file_id, good.header_secret(), {0: b"\x42" * 32})
    with pytest.raises(KeyMismatchError, match="tensor #0"):
        wv_torch.load_file(sealed_case.sealed, bad)


def test_torch_bf16_fp8_and_bool(tmp_path: Path, file_key) -> None:  # type: ignore[no-untyped-def]
    """bf16, fp8 and bool tensors survive sealing bit for bit."""
    from safetensors.torch import save_file

    from weightvault.sealing import seal_safetensors

    src = {
        "bf16": torch.randn(7, 9).to(torch.bfloat16),
        "fp8": torch.randn(33).to(torch.float8_e4m3fn),
        "fp8b": torch.randn(3, 3).to(torch.float8_e5m2),
        "flag": torch.tensor([True, False, True]),
        "i64": torch.arange(5, dtype=torch.int64),
    }
    plain, sealed = tmp_path / "p.safetensors", tmp_path / "p.wvlt"
    save_file(src, str(plain))
    seal_safetensors(plain, sealed, file_key=file_key)
    loaded = wv_torch.load_file(sealed, file_key)
    for name, tensor in src.items():
        assert tensor.dtype == loaded[name].dtype
        assert torch.equal(tensor.view(torch.uint8), loaded[name].view(torch.uint8))
    arrays = wv_numpy.load_file(sealed, file_key)
    assert "bfloat16" == str(arrays["bf16"].dtype)
    assert arrays["bf16"].tobytes() == src["bf16"].view(torch.uint8).numpy().tobytes()


def test_load_model_merges_shards(tmp_path: Path, kek, file_key) -> None:  # type: ignore[no-untyped-def]
    """load_model returns the union of every shard's tensors."""
    from tests.unit.sealing.test_roundtrip import _sharded_model
    from weightvault import seal_model_dir

    src = _sharded_model(tmp_path)
    seal_model_dir(src, tmp_path / "s", file_key=file_key, recipients=[kek])
    state = wv_torch.load_model(tmp_path / "s", [kek])
    assert {"a.weight", "b.weight", "b.bias"} == set(state)


@pytest.mark.parametrize("seal_files", [False, True])
def test_the_tokenizer_keeps_its_chat_templates(tmp_path: Path, seal_files: bool) -> None:
    """transformers saves the chat template beside the tokenizer (chat_template.jinja, and named ones in
    additional_chat_templates/): a sealed model's tokenizer must have them, or a chat server formats
    conversations as a bare transcript."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from weightvault.loaders.transformers import load_tokenizer
    from weightvault.sealing import seal_model_dir

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    plain.chat_template = {"default": template, "tool_use": "TOOLS " + template}
    src = tmp_path / "plain"
    plain.save_pretrained(src)
    (src / "config.json").write_text('{"model_type": "bert"}')
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(4, dtype=np.float32)}, str(src / "model.safetensors"))
    written = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert {"chat_template.jinja", "additional_chat_templates/tool_use.jinja"} <= written
    key = FileKey.generate()
    seal_model_dir(src, tmp_path / "sealed", file_key=key, seal_files=seal_files)
    loaded = load_tokenizer(tmp_path / "sealed", key)
    expected = transformers.AutoTokenizer.from_pretrained(src)
    assert expected.chat_template == loaded.chat_template
    assert isinstance(loaded.chat_template, dict)
    assert loaded.chat_template["tool_use"].startswith("TOOLS ")
