"""How a model is loaded, beyond its file: llama.cpp's context and model parameters that the command line
sets (RoPE overrides, --override-kv, --mlock, --no-mmap, -ub), applied as the reference applies them."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass, field

from ..errors import LlamapyError

YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0


@dataclass
class LoadOptions:
    """llama_context_params' RoPE fields and llama_model_params' loading switches, with the reference's
    "not set" values: 0 for the base and scale (the model's), -1 for the YaRN mix (from the scaling type)."""

    n_ubatch: int | None = None          # most tokens per forward step (None: the caller's n_batch)
    rope_scaling: str | None = None      # none, linear, yarn; None: the model's
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    yarn_orig_ctx: int = 0
    yarn_ext_factor: float = -1.0
    yarn_attn_factor: float = 1.0
    yarn_beta_slow: float = YARN_BETA_SLOW
    yarn_beta_fast: float = YARN_BETA_FAST
    override_kv: dict = field(default_factory=dict)   # key -> GGUFValue
    mlock: bool = False
    mmap: bool = True
    pooling: str | None = None  # embeddings: mean, cls, last (None: the model's)


def ubatch(batch_size: int, load: LoadOptions | None) -> int:
    """The tokens of one forward step: -b capped by -ub (512, the reference's default, when not given)."""
    return min(batch_size, load.n_ubatch if load is not None and load.n_ubatch else 512)


POOLING_TYPES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def apply_pooling(args, pooling: str | None, where: str) -> None:
    """--pooling over the GGUF's pooling type (the vectors llamapy gives are pooled: mean, cls or last)."""
    if pooling is None:
        return
    if pooling == "rank":
        raise LlamapyError(f"--pooling rank: {where} has no rerank head (a classifier output); use a reranking model")
    if pooling == "none":
        raise LlamapyError("--pooling none (one vector per token) is not supported yet; use mean, cls or last")
    args.pooling_type = POOLING_TYPES[pooling]


@dataclass
class RopeParams:
    freq_base: float
    freq_scale: float
    ext_factor: float
    attn_factor: float
    beta_fast: float
    beta_slow: float
    n_ctx_orig: int


def rope_params(args, load: LoadOptions) -> RopeParams:
    """The RoPE settings of a context: the model's (ModelArgs) with the overrides (llama_init_from_model's rules)."""
    scaling = load.rope_scaling or args.rope_scaling
    freq_scale = load.rope_freq_scale or args.rope_freq_scale
    if scaling == "none":
        freq_scale = 1.0
    ext = load.yarn_ext_factor
    if ext < 0:
        ext = 1.0 if scaling == "yarn" else 0.0
    return RopeParams(
        freq_base=load.rope_freq_base or args.rope_freq_base, freq_scale=freq_scale, ext_factor=ext,
        attn_factor=load.yarn_attn_factor * args.rope_attn_factor, beta_fast=load.yarn_beta_fast,
        beta_slow=load.yarn_beta_slow, n_ctx_orig=load.yarn_orig_ctx or args.n_ctx_orig_yarn,
    )


def parse_override_kv(items: list[str] | None) -> dict:
    """--override-kv KEY=TYPE:VALUE strings (TYPE int, float, bool, str) as metadata values."""
    from ..ggufio.constants import ValueType
    from ..ggufio.reader import GGUFValue

    out = {}
    for item in items or []:
        key, sep, rest = item.partition("=")
        kind, colon, text = rest.partition(":")
        if not sep or not key or len(key) >= 128 or not colon:
            raise LlamapyError(f"--override-kv '{item}': expected KEY=TYPE:VALUE, TYPE int, float, bool or str")
        try:
            if kind == "int":
                value = GGUFValue(int(text), ValueType.INT64)
            elif kind == "float":
                value = GGUFValue(float(text), ValueType.FLOAT64)
            elif kind == "bool":
                if text not in ("true", "false"):
                    raise LlamapyError(f"--override-kv '{item}': a bool is true or false")
                value = GGUFValue(text == "true", ValueType.BOOL)
            elif kind == "str":
                if len(text) > 127:
                    raise LlamapyError(f"--override-kv '{item}': a str value is at most 127 characters")
                value = GGUFValue(text, ValueType.STRING)
            else:
                raise LlamapyError(f"--override-kv '{item}': type '{kind}' is not one of int, float, bool, str")
        except ValueError:
            raise LlamapyError(f"--override-kv '{item}': '{text}' is not a valid {kind}") from None
        out[key] = value
    return out


def apply_overrides(reader, overrides: dict) -> None:
    """Replace the reader's metadata values (what the model, tokenizer and template read) by the overrides;
    a value of another kind than the file's (a string for a number) is refused, as the reference does."""
    from ..ggufio.constants import ValueType

    def kind(t) -> str:
        if t == ValueType.BOOL:
            return "bool"
        if t == ValueType.STRING:
            return "str"
        if t in (ValueType.FLOAT32, ValueType.FLOAT64):
            return "float"
        return "array" if t == ValueType.ARRAY else "int"

    for key, value in overrides.items():
        old = reader.kv.get(key)
        if old is not None and kind(old.type) != kind(value.type):
            raise LlamapyError(f"--override-kv {key}: the model's value is a {kind(old.type)}, "
                               f"not a {kind(value.type)}")
        reader.kv[key] = value


def mlock(address: int, size: int) -> bool:
    """Lock [address, address + size) in RAM; a warning (and False) when the system refuses."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(size)) == 0:
        return True
    import os

    err = ctypes.get_errno()
    print(f"warning: failed to mlock {size}-byte buffer: {os.strerror(err)}; "
          "try increasing RLIMIT_MEMLOCK ('ulimit -l' as root)", file=sys.stderr)
    return False


def munlock(address: int, size: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.munlock(ctypes.c_void_p(address), ctypes.c_size_t(size))
