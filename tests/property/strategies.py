"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

#: safetensors dtype name -> NumPy dtype (bf16 and fp8 through ml_dtypes)
NUMPY_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "U16": np.uint16,
    "F16": np.float16,
    "I32": np.int32,
    "F32": np.float32,
    "I64": np.int64,
    "F64": np.float64,
    "C64": np.complex64,
}


def _ml_dtypes() -> dict[str, object]:
    import ml_dtypes

    return {
        "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2,
    }


ALL_DTYPES = {**NUMPY_DTYPES, **_ml_dtypes()}

shapes = st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=4).map(tuple)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A dict of 1-5 arrays with random dtypes (bool, bf16 and fp8 included) and shapes (0-d and empty included)."""
    count = draw(st.integers(min_value=1, max_value=5))
    out: dict[str, np.ndarray] = {}
    for i in range(count):
        name = draw(st.sampled_from(sorted(ALL_DTYPES)))
        dtype = np.dtype(ALL_DTYPES[name])  # type: ignore[call-overload]
        shape = draw(shapes)
        size = int(np.prod(shape, dtype=np.int64))
        raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
        arr = np.frombuffer(raw, dtype=np.uint8)
        arr = (arr % 2).astype(np.bool_) if name == "BOOL" else arr.view(dtype)
        out[f"t{i}.{name.lower()}"] = np.ascontiguousarray(arr.reshape(shape))
    return out
