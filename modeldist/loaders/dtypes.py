"""safetensors dtype names -> numpy (with ml_dtypes) and torch dtypes.

Sub-byte dtypes (F4, F6_*) are packed several to a byte in safetensors: no framework here has a
per-element view of them, so asking for one is a ``DtypeError`` naming the tensor.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import DtypeError

__all__ = ["numpy_dtype", "torch_dtype"]

_NUMPY = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64", "F64": "float64",
    "C64": "complex64",
}
_ML_DTYPES = {
    "BF16": "bfloat16", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
_TORCH = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
    "F64": "float64", "C64": "complex64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
}


@lru_cache(maxsize=None)
def numpy_dtype(name: str):
    import numpy as np

    if name in _NUMPY:
        return np.dtype(_NUMPY[name]).newbyteorder("<")
    if name in _ML_DTYPES:
        import ml_dtypes

        dt = getattr(ml_dtypes, _ML_DTYPES[name], None)
        if dt is not None:
            return np.dtype(dt)
    raise DtypeError(f"dtype {name} has no numpy representation (packed sub-byte or unknown to ml_dtypes)")


@lru_cache(maxsize=None)
def torch_dtype(name: str):
    import torch

    dt = getattr(torch, _TORCH.get(name, ""), None) if name in _TORCH else None
    if dt is None:
        raise DtypeError(f"dtype {name} has no torch {torch.__version__} representation")
    return dt
