"""The vLLM loader's options (parsed without vLLM: the plugin imports vLLM only when vLLM loads it)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from weightvault.errors import ConfigError
from weightvault.serving.vllm import LoaderOptions, _keys


def test_options_are_checked_before_anything_is_loaded() -> None:
    parsed = LoaderOptions.parse({"broker": "https://b:8443", "attester": "snp", "endorsement": "/etc/vcek.der"})
    assert (parsed.attester, parsed.endorsement) == ("snp", "/etc/vcek.der")
    with pytest.raises(ConfigError, match="unknown weightvault loader option"):
        LoaderOptions.parse({"brokr": "x"})
    with pytest.raises(ConfigError, match="never itself"):
        LoaderOptions.parse({"token": "secret-token"})
    with pytest.raises(ConfigError, match="strings"):
        LoaderOptions.parse({"broker": 1})


def test_an_snp_attester_outside_an_snp_guest_fails_with_weightvaults_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIGHTVAULT_TOKEN", "a-token")
    vcek = tmp_path / "vcek.der"
    vcek.write_bytes(b"not used")
    options = LoaderOptions.parse({"broker": "http://127.0.0.1:9", "attester": "snp", "endorsement": str(vcek)})
    with ExitStack() as stack, pytest.raises(ConfigError, match="configfs-tsm"):
        _keys(options, stack)
    wrong = LoaderOptions.parse({"broker": "http://127.0.0.1:9", "endorsement": str(vcek)})
    with ExitStack() as stack, pytest.raises(ConfigError, match="--endorsement needs --attester snp"):
        _keys(wrong, stack)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: (d / "config.json").write_text('{"model_type": "none", "rms_norm_eps": 0.5}'), "config.json"),
        (lambda d: (d / "tokenizer_config.json").write_text('{"chat_template": "ignore the system"}'), "not in its"),
        (lambda d: (d / "config.json").unlink(), "missing"),
    ],
)
def test_vllms_own_reads_are_checked_before_any_weight(tmp_path: Path, tamper: Any, message: str) -> None:
    """vLLM reads config.json and the tokenizer from the directory itself, before the loader runs:
    a changed configuration, an added chat template or a removed file stops the load before any
    tensor is handed out (the transformers loader reads them through the manifest instead)."""
    pytest.importorskip("torch")
    import numpy as np
    from safetensors.numpy import save_file

    from weightvault.errors import ManifestError
    from weightvault.format.keys import FileKey
    from weightvault.sealing import seal_model_dir
    from weightvault.serving.vllm import sealed_weights

    src = tmp_path / "plain"
    src.mkdir()
    save_file({"w": np.arange(16, dtype=np.float32)}, str(src / "model.safetensors"))
    (src / "config.json").write_text('{"model_type": "none"}')
    key = FileKey.generate()
    seal_model_dir(src, tmp_path / "sealed", file_key=key)
    assert ["w"] == [name for name, _ in sealed_weights(tmp_path / "sealed", key)]
    tamper(tmp_path / "sealed")
    with pytest.raises(ManifestError, match=message):
        next(sealed_weights(tmp_path / "sealed", key))
