"""`llamapy export-lora`: GGUF LoRA adapters merged into a GGUF model, as llama-export-lora.

For each base tensor W that the adapters adapt: W (dequantized to float32) + sum over the adapters of
scale * B @ A, scale = the user's scale times alpha / rank (the user's scale alone when alpha is 0), added in
the order given; every other tensor is copied as it is. As the reference, a merged tensor is written in F32
when W is F32 and in F16 otherwise, and general.file_type becomes MOSTLY_F16. `outtype` writes the merged
tensors in another type instead (f32, f16, bf16, q8_0 or a quantize type such as q4_0; rows that do not
fill the type's blocks fall back to F16) and sets general.file_type to it; `outtype="base"` writes each
merged tensor in its base tensor's own type (a quantized model stays quantized as it was) and keeps
general.file_type. The metadata is the base's, in its order, general.file_type moved to the end and the
tensors in name order (as the reference writes them). Work goes a range of rows at a time; the output is
written atomically.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import KEY_FILE_TYPE, TYPE_SIZES, TensorType, ValueType
from ..ggufio.reader import GGUFReader, TensorInfo
from ..ggufio.writer import GGUFWriter
from ..util.safe_text import printable

CHUNK_ELEMENTS = 16 * 1024 * 1024  # float32 values of a base tensor merged at once
MOSTLY_F16 = 1


@dataclass
class ExportResult:
    path: Path
    n_tensors: int
    n_merged: int
    nbytes: int
    seconds: float


def _rows_f32(t: TensorInfo, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of a GGUF tensor as float32 (n, ne0)."""
    from ..native import ffi, lib

    raw = np.ascontiguousarray(t.raw[r0:r1])
    n = (r1 - r0) * t.shape[0]
    out = np.empty((r1 - r0, t.shape[0]), dtype=np.float32)
    if t.type == TensorType.F32:
        return raw.view(np.float32).reshape(out.shape).copy()
    if lib.lp_dequantize_row(int(t.type), ffi.from_buffer(raw), ffi.from_buffer("float *", out), n) != 0:
        raise LlamapyError(f"tensor '{printable(t.name)}': can't read type {t.type_name} as float")
    return out


BASE = -1  # --outtype base: each merged tensor in its base tensor's type


def _out_type(base_type: int, outtype: int | None, row_len: int) -> int:
    if outtype == BASE:
        return base_type
    if outtype is None:
        return int(TensorType.F32) if base_type == TensorType.F32 else int(TensorType.F16)
    if row_len % TYPE_SIZES[outtype][0]:
        return int(TensorType.F16)
    return outtype


def _parse_outtype(text: str | None) -> tuple[int | None, int | None]:
    """(the merged tensors' type, general.file_type) of --outtype; (None, None): the reference's choice."""
    if text is None:
        return None, None
    if str(text).strip().lower() == "base":
        return BASE, None
    from ..ggufio.filetypes import QUANT_OPTIONS, parse_ftype

    opt = parse_ftype(str(text).strip().lower())
    if opt is None or opt.name == "COPY" or opt.tensor_type is None:
        names = ", ".join(o.name.lower() for o in QUANT_OPTIONS if o.name != "COPY")
        raise LlamapyError(f"unknown --outtype '{printable(str(text))}': use base or one of {names}")
    return int(opt.tensor_type), int(opt.ftype)


def export_lora(model: str | os.PathLike, adapters: list[tuple[str, float]], outfile: str | os.PathLike,
                outtype: str | None = None, *, n_threads: int | None = None,
                log: Callable[[str], None] | None = None) -> ExportResult:
    """Merge GGUF LoRA adapters ((path, scale) each, in order) into the GGUF model `model`; write `outfile`."""
    from ..engine.lora import read_adapter

    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    if not adapters:
        raise LlamapyError("no adapter given: use --lora FILE or --lora-scaled FILE SCALE")
    mtype, ftype = _parse_outtype(outtype)
    out = Path(outfile)
    if not os.path.isfile(model):
        raise LlamapyError(f"{printable(str(model))}: no such model file")
    for p in [model] + [a for a, _ in adapters]:
        if out.exists() and os.path.exists(p) and os.path.samefile(out, p):
            raise LlamapyError(f"{printable(str(out))}: the output would overwrite an input; choose another -o")
    with GGUFReader(model) as base:
        if base.get("split.count") is not None:
            raise LlamapyError(f"{printable(str(model))}: split models are not supported; merge the parts first")
        if base.get("general.type") == "adapter":
            raise LlamapyError(f"{printable(str(model))}: this is a LoRA adapter, not a model (-m takes the base)")
        loaded = [read_adapter(str(p), base, base.tensors, scale) for p, scale in adapters]
        terms: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
        for ad in loaded:
            for name, (a, b) in ad.pairs.items():
                terms.setdefault(name, []).append((a, b, ad.scale * ad.mult(a.shape[0])))
        types = {n: (_out_type(t.type, mtype, t.shape[0]) if n in terms else t.type) for n, t in base.tensors.items()}
        with GGUFWriter(out, alignment=int(base.get("general.alignment", 32))) as w:
            for key, v in base.kv.items():
                if not key.startswith("GGUF.") and key not in ("general.alignment", KEY_FILE_TYPE):
                    w.add_value(key, v)
            # as the reference sets it: removed from its place and added at the end
            if mtype == BASE:
                if base.get(KEY_FILE_TYPE) is not None:
                    w.add_value(KEY_FILE_TYPE, base.kv[KEY_FILE_TYPE])
            else:
                w.add(KEY_FILE_TYPE, ftype if ftype is not None else MOSTLY_F16, ValueType.UINT32)
            order = sorted(base.tensors, key=lambda n: n.encode())  # the reference walks a map by name
            for name in order:
                w.add_tensor_info(name, base.tensors[name].shape, types[name])
            w.write_header()
            for name in order:
                t = base.tensors[name]
                if name not in terms:
                    w.write_tensor_data(name, t.raw.reshape(-1))
                    continue
                say(f"merging {name} ({len(terms[name])} adapter{'s' if len(terms[name]) > 1 else ''})")
                w.write_tensor_data(name, _merge(t, terms[name], types[name], n_threads))
    return ExportResult(out, len(types), len(terms), out.stat().st_size, time.perf_counter() - t0)


def _merge(t: TensorInfo, terms: list[tuple[np.ndarray, np.ndarray, float]], ttype: int,
           n_threads: int | None) -> np.ndarray:
    from .outtype import encode_rows

    step = max(1, CHUNK_ELEMENTS // max(1, t.shape[0]))
    parts = []
    for r0 in range(0, t.n_rows, step):
        r1 = min(t.n_rows, r0 + step)
        x = _rows_f32(t, r0, r1)
        for a, b, scale in terms:
            x += np.float32(scale) * (b[r0:r1].astype(np.float32) @ a.astype(np.float32))
        parts.append(encode_rows(x, "F32", ttype, n_threads))
    return np.concatenate(parts)
