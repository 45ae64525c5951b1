"""LoRA adapters in GGUF (what `convert-lora` and the reference's converter write), applied at run time.

An adapter file has `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` and, for each
adapted base tensor W (ne0 = n_in, ne1 = n_out), the pair `<name>.lora_a` (ne [n_in, rank]) and
`<name>.lora_b` (ne [rank, n_out]) in F32, F16, BF16 or a quantized type. The step adds
scale * B (A x) beside W x; the scale is the user's scale times alpha / rank (the user's scale alone when
alpha is 0), as the reference computes it. The engine keeps a pair in F16 when the file has both halves in
F16 (half the bytes a step reads), in F32 otherwise (other types dequantized), one user scale per adapter
and alpha / rank per pair, so switching scales costs nothing.

Checked as the reference checks (one line naming the tensor): the file's type and architecture, tensors that
are neither `.lora_a`/`.lora_b` nor a norm (norms are skipped), pairs missing a half, base tensors that do not
exist, shapes that do not fit the base tensor, lora_a not transposed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import TensorType
from ..ggufio.reader import GGUFReader, TensorInfo
from ..util.safe_text import printable as safe_text

__all__ = ["LoraAdapter", "read_adapter"]

F16 = int(TensorType.F16)


@dataclass
class LoraAdapter:
    """One adapter: its pairs by base tensor name, A (rank, n_in) and B (n_out, rank), both float16 or both
    float32; `scale` the user's scale now in effect; `mult(rank)` the factor alpha / rank of a pair."""

    path: str
    alpha: float
    scale: float
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    engine_arrays: list = field(default_factory=list, repr=False)  # what the C engine points at

    def mult(self, rank: int) -> float:
        return self.alpha / rank if self.alpha else 1.0


def pack_b(b: np.ndarray) -> np.ndarray:
    """B (rows, rank) in the engine's layout: blocks of 8 rows (zero rows added up to a multiple of 8), each
    block its rank columns of 8 values one after the other, so a step reads B front to back."""
    rows, rank = b.shape
    padded = np.zeros(((rows + 7) // 8 * 8, rank), dtype=b.dtype)
    padded[:rows] = b
    return np.ascontiguousarray(padded.reshape(-1, 8, rank).transpose(0, 2, 1))


def _f32(t: TensorInfo) -> np.ndarray:
    """The tensor as float32 in numpy order (rows = ne1)."""
    from ..ggufio.constants import PLAIN_DTYPES

    if t.type in PLAIN_DTYPES:
        return np.asarray(t.data, dtype=np.float32).reshape(t.n_rows, t.shape[0])
    from ..quants import dequantize

    return dequantize(t.type, t.raw, t.shape[0]).reshape(t.n_rows, t.shape[0])


def read_adapter(path: str, base: GGUFReader, base_tensors: dict[str, TensorInfo], scale: float = 1.0) -> LoraAdapter:
    """Read and check a GGUF LoRA adapter against the base model; LlamapyError (one line) when it does not fit."""
    import os

    shown = safe_text(str(path))
    if not os.path.isfile(path):
        raise LlamapyError(f"LoRA adapter {shown}: no such file")
    try:
        r = GGUFReader(path)
    except LlamapyError as e:
        raise LlamapyError(f"LoRA adapter {shown}: {e}") from None
    try:
        return _read(r, shown, base, base_tensors, scale, path)
    finally:
        r.close()


def _read(r: GGUFReader, shown: str, base: GGUFReader, base_tensors: dict[str, TensorInfo], scale: float,
          path: str) -> LoraAdapter:
    def fail(msg: str) -> LlamapyError:
        return LlamapyError(f"LoRA adapter {shown}: {msg}")

    gtype = r.get("general.type")
    if gtype is None:
        raise fail("not an adapter: general.type is missing")
    if gtype != "adapter":
        raise fail(f"general.type is {safe_text(str(gtype))!r}, expected 'adapter'")
    arch, base_arch = r.architecture, base.architecture
    if arch != base_arch:
        raise fail(f"architecture {safe_text(str(arch))!r} does not match the model's {safe_text(str(base_arch))!r}")
    atype = r.get("adapter.type")
    if atype != "lora":
        raise fail(f"adapter.type is {safe_text(str(atype))!r}, expected 'lora'")
    alpha = r.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not np.isfinite(alpha):
        raise fail(f"adapter.lora.alpha is not a number: {safe_text(repr(alpha))}")
    alpha = float(alpha)

    halves: dict[str, dict[str, TensorInfo]] = {}
    for name, t in r.tensors.items():
        for suffix in (".lora_a", ".lora_b"):
            if name.endswith(suffix):
                halves.setdefault(name[: -len(suffix)], {})[suffix[-1]] = t
                break
        else:
            if name.endswith("_norm.weight"):
                continue  # as the reference: norms of an adapter are not applied
            raise fail(f"tensor '{safe_text(name)}' has an unexpected suffix (want .lora_a or .lora_b)")
    if not halves:
        raise fail("no .lora_a/.lora_b tensor pairs")

    out = LoraAdapter(path=path, alpha=alpha, scale=scale)
    for name, pair in halves.items():
        shown_name = safe_text(name)
        if "a" not in pair or "b" not in pair:
            raise fail(f"tensor pair for '{shown_name}' is missing its lora_{'a' if 'a' not in pair else 'b'}")
        w = base_tensors.get(name)
        if w is None:
            raise fail(f"tensor '{shown_name}' does not exist in the model (another base model?)")
        a, b = pair["a"], pair["b"]
        if name == "token_embd.weight":
            raise fail(f"tensor '{shown_name}': LoRA on the token embeddings is not supported")
        if len(w.shape) > 2 or len(a.shape) != 2 or len(b.shape) != 2:
            raise fail(f"tensor '{shown_name}': LoRA on a {len(w.shape)}-d tensor is not supported")
        n_out = w.shape[1] if len(w.shape) > 1 else 1
        if a.shape[0] != w.shape[0] or b.shape[1] != n_out:
            raise fail(f"tensor '{shown_name}' has incorrect shape: lora_a {list(a.shape)}, lora_b {list(b.shape)} "
                       f"for a base tensor of {list(w.shape)} (another base model?)")
        if a.shape[1] > 256:
            raise fail(f"tensor '{shown_name}': rank {a.shape[1]} is above the 256 llamapy supports")
        if a.shape[1] != b.shape[0]:
            raise fail(f"tensor '{shown_name}': lora_a {list(a.shape)} and lora_b {list(b.shape)} disagree on the "
                       "rank (lora_a not transposed?)")
        try:
            if a.type == b.type == F16:
                am = np.asarray(a.data, dtype=np.float16).reshape(a.n_rows, a.shape[0])
                bm = np.asarray(b.data, dtype=np.float16).reshape(b.n_rows, b.shape[0])
            else:
                am, bm = _f32(a), _f32(b)
        except LlamapyError as e:
            raise fail(f"tensor '{shown_name}': {e}") from None
        if not (np.isfinite(am).all() and np.isfinite(bm).all()):
            raise fail(f"tensor '{shown_name}' holds NaN or infinite values")
        out.pairs[name] = (np.ascontiguousarray(am), np.ascontiguousarray(bm))
    return out
