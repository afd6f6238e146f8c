"""End to end with the real all-MiniLM-L6-v2 weights: seal, load through transformers, compare embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from weightvault import KEK, FileKey, HPKEIdentity, HPKEKem, seal_model_dir
from weightvault.errors import FormatError
from weightvault.loaders import torch as wv_torch
from weightvault.loaders import transformers as wv_transformers

SENTENCES = ["Model weights are the crown jewels.", "A sealed file never loads when tampered with."]


def _embed(model: torch.nn.Module, tokenizer: object) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1)


@pytest.fixture(scope="module")
def sealed_minilm(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HPKEIdentity]:
    ident = HPKEIdentity.generate(HPKEKem.MLKEM768_X25519)
    out = tmp_path_factory.mktemp("minilm") / "sealed"
    seal_model_dir(minilm_dir, out, file_key=FileKey.generate(), recipients=[ident.recipient])
    return out, ident


def test_sealed_minilm_gives_identical_embeddings(minilm_dir: Path, sealed_minilm: tuple[Path, HPKEIdentity]) -> None:
    """The sealed model loaded through transformers embeds exactly like the plain model."""
    sealed, ident = sealed_minilm
    plain_model = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    plain_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    model = wv_transformers.from_pretrained(transformers.AutoModel, sealed, [ident]).eval()
    tokenizer = wv_transformers.load_tokenizer(sealed, [ident])
    expected = _embed(plain_model, plain_tok)
    actual = _embed(model, tokenizer)
    assert (2, 384) == tuple(actual.shape)
    assert torch.equal(expected, actual)
    assert type(plain_model) is type(model)


def test_sealed_minilm_state_dict_matches(minilm_dir: Path, sealed_minilm: tuple[Path, HPKEIdentity]) -> None:
    """Every tensor of the sealed MiniLM equals the plain file's tensor."""
    from safetensors.torch import load_file

    sealed, ident = sealed_minilm
    expected = load_file(str(minilm_dir / "model.safetensors"))
    actual = wv_torch.load_model(sealed, [ident])
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_tampered_minilm_never_loads(sealed_minilm: tuple[Path, HPKEIdentity], tmp_path: Path) -> None:
    """One flipped byte in the sealed weights stops transformers loading; no model is returned."""
    import shutil

    sealed, ident = sealed_minilm
    copy = tmp_path / "copy"
    shutil.copytree(sealed, copy)
    weights = copy / "model.safetensors.wvlt"
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        wv_transformers.from_pretrained(transformers.AutoModel, copy, [ident])
    with pytest.raises(Exception):  # noqa: B017 - stock transformers must not load it in any way
        transformers.AutoModel.from_pretrained(str(copy))


def test_wrong_identity_cannot_load_minilm(sealed_minilm: tuple[Path, HPKEIdentity]) -> None:
    """A key that is not a recipient opens nothing."""
    from weightvault.errors import NoMatchingRecipientError

    sealed, _ = sealed_minilm
    with pytest.raises(NoMatchingRecipientError):
        wv_transformers.from_pretrained(transformers.AutoModel, sealed, [KEK.generate()])
