"""How a model is loaded, beyond its file: llama.cpp's context and model parameters that the command line
sets (RoPE overrides, --override-kv, --mlock, --no-mmap, -ub), applied as the reference applies them."""
from __future__ import annotations

import sys

from ..errors import LlamapyError

YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0


class LoadOptions:
    """llama_context_params' RoPE fields and llama_model_params' loading switches, with the reference's
    "not set" values: 0 for the base and scale (the model's), -1 for the YaRN mix (from the scaling type).
    (A plain class: a dataclass compiles its methods at import, a cost every run would pay.)"""

    __slots__ = ("n_ubatch", "rope_scaling", "rope_freq_base", "rope_freq_scale", "yarn_orig_ctx",
                 "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_slow", "yarn_beta_fast", "override_kv", "mlock",
                 "mmap", "pooling", "check_tensors", "lora", "lora_init_without_apply", "type_k", "type_v",
                 "control_vectors", "cvec_layer_range")

    def __init__(self, *, n_ubatch: int | None = None, rope_scaling: str | None = None, rope_freq_base: float = 0.0,
                 rope_freq_scale: float = 0.0, yarn_orig_ctx: int = 0, yarn_ext_factor: float = -1.0,
                 yarn_attn_factor: float = 1.0, yarn_beta_slow: float = YARN_BETA_SLOW,
                 yarn_beta_fast: float = YARN_BETA_FAST, override_kv: dict | None = None, mlock: bool = False,
                 mmap: bool = True, pooling: str | None = None, check_tensors: bool = False,
                 lora: list[tuple[str, float]] | None = None, lora_init_without_apply: bool = False,
                 type_k: int | str = "f16", type_v: int | str = "f16",
                 control_vectors: list[tuple[str, float]] | None = None,
                 cvec_layer_range: tuple[int, int] | None = None):
        self.n_ubatch = n_ubatch                # most tokens per forward step (None: the caller's n_batch)
        self.rope_scaling = rope_scaling        # none, linear, yarn; None: the model's
        self.rope_freq_base = rope_freq_base
        self.rope_freq_scale = rope_freq_scale
        self.yarn_orig_ctx = yarn_orig_ctx
        self.yarn_ext_factor = yarn_ext_factor
        self.yarn_attn_factor = yarn_attn_factor
        self.yarn_beta_slow = yarn_beta_slow
        self.yarn_beta_fast = yarn_beta_fast
        self.override_kv = override_kv or {}    # key -> GGUFValue
        self.mlock = mlock
        self.mmap = mmap
        self.pooling = pooling                  # embeddings: mean, cls, last (None: the model's)
        self.check_tensors = check_tensors      # scan the weights for NaN / infinite values at load
        self.lora = list(lora or [])            # GGUF LoRA adapters (path, scale), applied at run time
        self.lora_init_without_apply = lora_init_without_apply  # load them with scale 0
        self.type_k = kv_cache_type(type_k, "K")  # KV cache types, as ggml type ids
        self.type_v = kv_cache_type(type_v, "V")
        self.control_vectors = list(control_vectors or [])  # control vector GGUFs (path, scale), summed
        self.cvec_layer_range = cvec_layer_range  # (start, end) layers they apply to; None: 1 .. n_layer

    def __repr__(self) -> str:
        return "LoadOptions(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


# the KV cache types the engine stores (the reference's set for -ctk/-ctv): name -> ggml type id
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6, "q5_1": 7}
KV_TYPE_NAMES = {v: k for k, v in KV_CACHE_TYPES.items()}


def kv_cache_type(value: int | str, which: str = "K") -> int:
    """A KV cache type given by name (f16, q8_0, ...; any case) or ggml type id, as its id; LlamapyError if unknown."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in KV_TYPE_NAMES:
            return value
    elif isinstance(value, str) and value.strip().lower() in KV_CACHE_TYPES:
        return KV_CACHE_TYPES[value.strip().lower()]
    raise LlamapyError(f"unsupported {which} cache type {value!r}; use one of {', '.join(KV_CACHE_TYPES)}")


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


class RopeParams:
    """The RoPE settings a context runs with."""

    __slots__ = ("freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast", "beta_slow", "n_ctx_orig")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw[k])


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


# byte offsets of the fp16 scales in one block of each type whose scales ggml_validate_row_data checks
# (TQ1_0 and TQ2_0 keep theirs at the end of the block; IQ1_M's packed scale is not checked here)
_SCALES = {2: (0,), 3: (0, 2), 6: (0,), 7: (0, 2), 8: (0,), 10: (80, 82), 11: (108,), 12: (0, 2), 13: (0, 2),
           14: (208,), 16: (0,), 17: (0,), 18: (0,), 19: (0,), 20: (0,), 21: (0,), 22: (0,), 23: (0,), 34: (52,),
           35: (64,)}


def check_tensor_values(reader, tensors: dict) -> None:
    """--check-tensors: every float weight finite, every block scale of a quantized one finite (and, as the
    reference checks, no NaN in bf16); the first bad tensor is named."""
    import numpy as np

    from ..ggufio.constants import TYPE_SIZES

    for name, t in tensors.items():
        raw = np.frombuffer(reader._mmap, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        if t.type == 0:      # F32
            ok = np.isfinite(raw.view(np.float32)).all()
        elif t.type == 1:    # F16
            ok = np.isfinite(raw.view(np.float16)).all()
        elif t.type == 30:   # BF16: exponent all ones is inf or NaN
            ok = not ((raw.view(np.uint16) & 0x7F80) == 0x7F80).any()
        elif t.type in _SCALES:
            blocks = raw.reshape(-1, TYPE_SIZES[t.type][1])
            ok = all(np.isfinite(np.ascontiguousarray(blocks[:, o:o + 2]).view(np.float16)).all()
                     for o in _SCALES[t.type])
        elif t.type == 15:   # Q8_K: a float32 scale first
            ok = np.isfinite(np.ascontiguousarray(raw.reshape(-1, TYPE_SIZES[15][1])[:, :4]).view(np.float32)).all()
        else:
            ok = True
        if not ok:
            raise LlamapyError(f"tensor '{name}' has invalid data (NaN or infinite values)")


def _libc():
    import ctypes
    import ctypes.util

    return ctypes, ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def mlock(address: int, size: int) -> bool:
    """Lock [address, address + size) in RAM; a warning (and False) when the system refuses."""
    ctypes, libc = _libc()
    if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(size)) == 0:
        return True
    import os

    err = ctypes.get_errno()
    print(f"warning: failed to mlock {size}-byte buffer: {os.strerror(err)}; "
          "try increasing RLIMIT_MEMLOCK ('ulimit -l' as root)", file=sys.stderr)
    return False


def munlock(address: int, size: int) -> None:
    ctypes, libc = _libc()
    libc.munlock(ctypes.c_void_p(address), ctypes.c_size_t(size))
