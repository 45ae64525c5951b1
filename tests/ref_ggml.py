"""A reference ggml build through ctypes: the K-quant test and benchmark compare llamapy's kernels with its own.

LLAMAPY_REF_GGML names the build's lib folder (libggml-base.so, libggml-cpu.so). Imported by
tests/test_quants_k.py and benchmarks/bench_kquants.py; it holds no tests itself.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import c_bool, c_char_p, c_float, c_int, c_int64, c_size_t, c_void_p

ENV = "LLAMAPY_REF_GGML"

# void vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc)
VecDot = ctypes.CFUNCTYPE(None, c_int, ctypes.POINTER(c_float), c_size_t, c_void_p, c_size_t, c_void_p, c_size_t,
                          c_int)
# void from_float(const float * x, void * y, int64_t k) (to_float has the same C shape, y -> x)
RowFn = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, c_int64)


class _InitParams(ctypes.Structure):  # struct ggml_init_params; ggml_init fills the fp16 table
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


class _BaseTraits(ctypes.Structure):  # struct ggml_type_traits
    _fields_ = [("type_name", c_char_p), ("blck_size", c_int64), ("blck_size_interleave", c_int64),
                ("type_size", c_size_t), ("is_quantized", c_bool), ("to_float", c_void_p),
                ("from_float_ref", c_void_p)]


class _CpuTraits(ctypes.Structure):  # struct ggml_type_traits_cpu
    _fields_ = [("from_float", c_void_p), ("vec_dot", c_void_p), ("vec_dot_type", c_int), ("nrows", c_int64)]


class RefGGML:
    """The reference's libggml-base and libggml-cpu, initialised, with typed accessors to its kernels."""

    def __init__(self, folder: str):
        self.folder = folder
        self.base = ctypes.CDLL(os.path.join(folder, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(os.path.join(folder, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        self.base.ggml_init.restype = c_void_p
        self.base.ggml_init.argtypes = [_InitParams]
        self.base.ggml_init(_InitParams(1024, None, True))
        self.base.ggml_get_type_traits.restype = ctypes.POINTER(_BaseTraits)
        self.base.ggml_quantize_chunk.restype = c_size_t
        self.base.ggml_quantize_chunk.argtypes = [c_int, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_void_p]
        self.cpu.ggml_cpu_init()
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_CpuTraits)

    def vec_dot(self, t: int):
        return VecDot(self.cpu.ggml_get_type_traits_cpu(t).contents.vec_dot)

    def from_float(self, t: int):
        """The CPU backend's row quantizer of type `t` (for Q8_K: the activations' quantizer)."""
        return RowFn(self.cpu.ggml_get_type_traits_cpu(t).contents.from_float)

    def to_float(self, t: int):
        return RowFn(self.base.ggml_get_type_traits(t).contents.to_float)

    def quantize_chunk(self, t: int, x, y, start: int, n_rows: int, n_per_row: int) -> int:
        """ggml_quantize_chunk without an importance matrix; x, y are addresses."""
        return self.base.ggml_quantize_chunk(t, x, y, start, n_rows, n_per_row, None)


def load() -> RefGGML | None:
    """The build LLAMAPY_REF_GGML names, or None when it is not set."""
    folder = os.environ.get(ENV)
    return RefGGML(folder) if folder else None
