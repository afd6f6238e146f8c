"""Property tests: round trips over dtypes and shapes, and parsers that raise only FormatError."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from tests.property.strategies import tensors
from weightvault import AEADSuite, FileKey
from weightvault.errors import FormatError, HeaderError
from weightvault.format import HeaderTable, Preamble
from weightvault.format.manifest import ModelManifest
from weightvault.format.recipients import decode_recipients_region
from weightvault.loaders import numpy as wv_numpy
from weightvault.sealing import SealOptions, seal_safetensors, unseal_file

KEY = FileKey(bytes(range(7, 39)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=tensors(), suite=st.sampled_from(list(AEADSuite)), sealed_metadata=st.booleans())
def test_seal_load_unseal_round_trip(arrays: dict[str, np.ndarray], suite: AEADSuite, sealed_metadata: bool) -> None:
    """decrypt(encrypt(x)) == x bit for bit for every dtype and shape, and unsealing is byte-identical."""
    with tempfile.TemporaryDirectory() as tmp:
        plain, sealed, back = Path(tmp) / "p.safetensors", Path(tmp) / "s.wvlt", Path(tmp) / "b.safetensors"
        save_file(arrays, str(plain))
        seal_safetensors(plain, sealed, file_key=KEY, options=SealOptions(suite, 16, sealed_metadata))
        loaded = wv_numpy.load_file(sealed, KEY)
        assert arrays.keys() == loaded.keys()
        for name, arr in arrays.items():
            assert arr.shape == loaded[name].shape
            assert arr.tobytes() == loaded[name].tobytes()
        unseal_file(sealed, back, KEY)
        assert plain.read_bytes() == back.read_bytes()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=200))
def test_preamble_parser_raises_only_format_errors(data: bytes) -> None:
    """Arbitrary bytes either parse as a preamble or raise a FormatError."""
    with contextlib.suppress(FormatError):
        Preamble.from_bytes(b"\x89WVLT\r\n\x1a" + data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values, raw=st.binary(max_size=64))
def test_header_and_manifest_parsers_raise_only_format_errors(doc: object, raw: bytes) -> None:
    """Header, manifest and recipients parsers reject any JSON or bytes with FormatError only."""
    import json

    for blob in (json.dumps(doc).encode(), raw):
        for parse in (HeaderTable.from_bytes, ModelManifest.from_bytes):
            with contextlib.suppress(FormatError):
                parse(blob)
        with contextlib.suppress(HeaderError):
            decode_recipients_region(len(blob).to_bytes(4, "little") + blob + bytes(40))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_flipping_any_bit_raises_a_format_error(position: int, bit: int) -> None:
    """A random bit flip anywhere in a sealed file makes the load raise; nothing is returned."""
    with tempfile.TemporaryDirectory() as tmp:
        plain, sealed = Path(tmp) / "p.safetensors", Path(tmp) / "s.wvlt"
        save_file({"w": np.arange(3000, dtype=np.float32), "b": np.ones(7, np.int8)}, str(plain))
        seal_safetensors(plain, sealed, file_key=KEY, options=SealOptions(chunk_log2=16))
        data = bytearray(sealed.read_bytes())
        data[position % len(data)] ^= 1 << bit
        sealed.write_bytes(bytes(data))
        from weightvault.errors import WeightVaultError

        try:
            wv_numpy.load_file(sealed, KEY)
        except WeightVaultError:
            return
        raise AssertionError(f"flip at {position % len(data)} bit {bit} was not detected")
