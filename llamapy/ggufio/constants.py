"""GGUF facts as data: value types, tensor types, block sizes and the metadata keys llamapy uses.

Tensor-type ids and block sizes come from the `gguf` package (the format's own Python library), so a
new type there is known here without a second table to keep in sync.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from enum import IntEnum

import numpy as np


def _gguf_constants():
    """The `gguf` package's constants module. Importing `gguf.constants` runs the package's __init__, which
    also loads its reader, writer, vocabulary (sentencepiece) and metadata (yaml) modules: ~60 ms at every
    start of a command, none of it needed to read a model. So unless the package is already imported, the
    module's own file is loaded by itself, under a private name; its enums are IntEnums, which compare and
    hash as the package's do."""
    name = "llamapy._gguf_constants"
    if name in sys.modules:
        return sys.modules[name]
    if "gguf" not in sys.modules:
        try:
            spec = importlib.util.find_spec("gguf")
            path = os.path.join(spec.submodule_search_locations[0], "constants.py")
            cspec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(cspec)
            sys.modules[name] = mod  # pickle finds the enums' module by name
            cspec.loader.exec_module(mod)
            return mod
        except Exception:  # noqa: BLE001 - any surprise (a new layout of the package): the plain import
            sys.modules.pop(name, None)
    from gguf import constants

    return constants


_gc = _gguf_constants()
GGML_QUANT_SIZES, GGMLQuantizationType = _gc.GGML_QUANT_SIZES, _gc.GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numpy dtype (little-endian) of each scalar value type
SCALAR_DTYPES: dict[ValueType, np.dtype] = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("<u1"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}

TensorType = GGMLQuantizationType

# type -> (values per block, bytes per block)
TYPE_SIZES: dict[int, tuple[int, int]] = {int(k): v for k, v in GGML_QUANT_SIZES.items()}

# numpy dtype of the element for plain (non-block) tensor types
PLAIN_DTYPES: dict[int, np.dtype] = {
    int(TensorType.F32): np.dtype("<f4"),
    int(TensorType.F16): np.dtype("<f2"),
    int(TensorType.BF16): np.dtype("<u2"),
    int(TensorType.F64): np.dtype("<f8"),
    int(TensorType.I8): np.dtype("<i1"),
    int(TensorType.I16): np.dtype("<i2"),
    int(TensorType.I32): np.dtype("<i4"),
    int(TensorType.I64): np.dtype("<i8"),
}


def type_name(t: int) -> str:
    try:
        return TensorType(t).name
    except ValueError:
        return f"type{t}"


def row_nbytes(t: int, n: int) -> int:
    blck, size = TYPE_SIZES[t]
    return n // blck * size


# Metadata keys
KEY_ARCH = "general.architecture"
KEY_ALIGNMENT = "general.alignment"
KEY_NAME = "general.name"
KEY_FILE_TYPE = "general.file_type"
KEY_TYPE = "general.type"
KEY_QUANT_VERSION = "general.quantization_version"

QUANT_VERSION = 2  # GGML_QNT_VERSION: the value of general.quantization_version in a quantized file
