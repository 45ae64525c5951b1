"""Control vectors (llama.cpp's --control-vector, --control-vector-scaled, --control-vector-layer-range).

A control vector file is a GGUF of 1-D F32 tensors `direction.N` (N >= 1), each n_embd long: after layer N
(0-based) the forward step adds it, times the file's scale, to every token's residual stream. Several files
(and several tensors of one layer in a file) add up. As the reference applies them: layers from the range's
start (default 1) to its end (default the model's layer count), never layer 0.
"""
from __future__ import annotations

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import TensorType
from ..ggufio.reader import GGUFReader
from ..util.safe_text import printable

__all__ = ["read_control_vectors", "layers_to_apply"]


def _read_one(path: str, scale: float) -> tuple[int, dict[int, np.ndarray]]:
    """(n_embd, layer -> direction * scale) of one file."""
    try:
        reader = GGUFReader(path)
    except LlamapyError as e:
        raise LlamapyError(f"control vector {e}") from None
    except OSError as e:
        raise LlamapyError(f"control vector {path}: {e.strerror}") from None
    n_embd = -1
    out: dict[int, np.ndarray] = {}
    with reader:
        for t in reader.tensors.values():
            head, _, idx = t.name.partition(".")
            if head != "direction" or not idx.isdigit():
                raise LlamapyError(f"control vector {path}: tensor '{printable(t.name, 80)}' is not direction.N")
            layer = int(idx)
            if layer == 0:
                raise LlamapyError(f"control vector {path}: direction.0 (layer indexes start at 1)")
            if t.type != TensorType.F32:
                raise LlamapyError(f"control vector {path}: {t.name} is not F32")
            if len(t.shape) != 1:
                raise LlamapyError(f"control vector {path}: {t.name} is not 1-D")
            if n_embd == -1:
                n_embd = int(t.shape[0])
            elif t.shape[0] != n_embd:
                raise LlamapyError(f"control vector {path}: {t.name} has {t.shape[0]} values, not {n_embd}")
            v = np.array(t.data, dtype=np.float32).reshape(-1) * np.float32(scale)
            out[layer] = out[layer] + v if layer in out else v
    if n_embd == -1:
        raise LlamapyError(f"control vector {path}: no direction tensors")
    return n_embd, out


def read_control_vectors(files: list[tuple[str, float]], n_embd: int) -> dict[int, np.ndarray]:
    """layer -> the sum of the files' scaled directions for it; each file must fit the model's n_embd."""
    total: dict[int, np.ndarray] = {}
    for path, scale in files:
        n, dirs = _read_one(path, scale)
        if n != n_embd:
            raise LlamapyError(f"control vector {path}: {n} values per direction, the model's n_embd is {n_embd}")
        for layer, v in dirs.items():
            total[layer] = total[layer] + v if layer in total else v
    return total


def layers_to_apply(dirs: dict[int, np.ndarray], n_layer: int,
                    layer_range: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """The directions the step adds: layers 1 .. n_layer - 1 inside the range (start <= 0: 1; end <= 0: the
    layer count), as the reference applies them."""
    start, end = layer_range if layer_range is not None else (0, 0)
    start = 1 if start <= 0 else start
    end = n_layer if end <= 0 else end
    return {l: v for l, v in dirs.items() if 1 <= l < n_layer and start <= l <= end}
