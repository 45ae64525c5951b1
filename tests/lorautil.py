"""GGUF LoRA adapters and merged models for the tests, written with the project's GGUF writer in the layout
llama.cpp's converter writes: general.type = adapter, adapter.type = lora, adapter.lora.alpha, and for each
adapted tensor W (ne [n_in, n_out]) `<name>.lora_a` (ne [n_in, rank]) and `<name>.lora_b` (ne [rank, n_out])."""
from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType as T
from test_engine_models import write_tensors

from llamapy.ggufio.reader import GGUFReader
from llamapy.ggufio.writer import GGUFWriter
from llamapy.quants import dequantize, quantize

TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _stored(x: np.ndarray, ttype: int) -> tuple[np.ndarray, np.ndarray]:
    """(the bytes or array to write, the float32 values the file then holds)"""
    if ttype == T.F32:
        a = x.astype(np.float32)
        return a, a
    if ttype == T.F16:
        a = x.astype(np.float16)
        return a, a.astype(np.float32)
    q = quantize(ttype, x.astype(np.float32))
    return q, dequantize(ttype, q, x.shape[1])


def write_lora(path, base, *, rank: int = 4, alpha: float = 8.0, ttype: int = T.F32, seed: int = 1,
               arch: str = "llama", targets=TARGETS, b_std: float = 0.3, drop: tuple[str, ...] = (),
               reshape: dict | None = None, general_type: str = "adapter", extra: dict | None = None):
    """Write a random adapter over the base GGUF's tensors; the pairs as the file holds them:
    name -> (A (rank, n_in), B (n_out, rank)) float32. `drop`/`reshape`/`extra` make bad files."""
    rng = np.random.default_rng(seed)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    data: dict[str, tuple[tuple[int, ...], int, np.ndarray]] = {}
    with GGUFReader(base) as r:
        for name, t in r.tensors.items():
            parts = name.split(".")
            adapted = (len(parts) == 4 and parts[0] == "blk" and parts[2] in targets and parts[3] == "weight") or (
                name == "output.weight" and "output" in targets)
            if not adapted:
                continue
            n_in, n_out = t.shape[0], t.shape[1]
            a = rng.standard_normal((rank, n_in)) / np.sqrt(n_in)
            b = rng.standard_normal((n_out, rank)) * b_std
            bt = ttype if rank % 32 == 0 or ttype in (T.F32, T.F16) else T.F16  # B's rows are rank long
            a_raw, a_val = _stored(a, ttype)
            b_raw, b_val = _stored(b, bt)
            pairs[name] = (a_val, b_val)
            data[name + ".lora_a"] = ((n_in, rank), int(ttype), a_raw)
            data[name + ".lora_b"] = ((rank, n_out), int(bt), b_raw)
    for name, v in (extra or {}).items():
        data[name] = v
    with GGUFWriter(path) as w:
        w.add("general.architecture", arch)
        w.add("general.type", general_type)
        w.add("adapter.type", "lora")
        w.add("adapter.lora.alpha", float(alpha))
        write_tensors(w, data, drop, reshape)
    return str(path), pairs


def lora_terms(pairs, scale: float, alpha: float, rank: int) -> dict:
    """The numpy oracle's `lora` argument: name -> [(A, B, scale * alpha / rank)]"""
    return {n: [(a, b, scale * alpha / rank)] for n, (a, b) in pairs.items()}


def write_merged(path, base, adapters) -> str:
    """A copy of an F32 base with W + s * B @ A merged in numpy; adapters: [(pairs, effective scale)]."""
    with GGUFReader(base) as r, GGUFWriter(path) as w:
        for key, v in r.kv.items():
            if not key.startswith("GGUF.") and key != "general.alignment":
                w.add_value(key, v)
        for name, t in r.tensors.items():
            assert t.type == T.F32 or name not in adapters[0][0]
            w.add_tensor_info(name, t.shape, t.type)
        w.write_header()
        for name, t in r.tensors.items():
            x = np.array(t.data)
            for pairs, s in adapters:
                if name in pairs:
                    a, b = pairs[name]
                    x = (x.astype(np.float64) + s * (b.astype(np.float64) @ a.astype(np.float64))).astype(np.float32)
            w.write_tensor_data(name, x)
    return str(path)
