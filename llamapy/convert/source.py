"""What a checkpoint layout hands to the writer: GGUF-named lazy tensors and metadata in order."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LlamapyError
from ..model_args import ModelArgs
from .lazy import LazyTensor
from .vocab import Vocab

KV = tuple  # (key, value, ValueType, element ValueType | None); general.file_type's value is None in arch_kvs
# until the output type is known


@dataclass
class ModelSource:
    layout: str  # "meta" or "hf"
    model_dir: Path
    args: ModelArgs  # the hyperparameters, as the metadata states them
    tensors: list[tuple[str, LazyTensor]]  # GGUF names, in the order the reference writes them
    arch_kvs: list[KV]  # llama.* (and the general.file_type slot) in the reference's order
    vocab: Vocab | None
    vocab_kvs: list[KV]  # tokenizer.* in the reference's order
    param_count: int  # what the reference counts for the size label
    first_dtype: str | None  # the dtype "auto" looks at
    default_outtype: str  # when --outtype is not given
    inputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    early_kvs: list[KV] = field(default_factory=list)  # written right after general.architecture (Phi-3's
    # rope attn_factor, which the reference adds while it generates tensors, before the other metadata)


def find_first(paths: list[Path], what: str) -> Path:
    """The first existing file among `paths`, or an error listing every path tried."""
    for p in paths:
        if p.is_file():
            return p
    raise LlamapyError(f"no {what} found; tried: {', '.join(str(p) for p in paths)}")


def dedup(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out
