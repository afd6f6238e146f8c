"""The vLLM loader's options (parsed without vLLM: the plugin imports vLLM only when vLLM loads it)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

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
