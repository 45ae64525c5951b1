"""A llama-architecture model's hyperparameters (`ModelArgs`, from GGUF metadata) and the check that
a GGUF's tensors are the ones those hyperparameters call for, with the shapes they call for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LlamapyError
from .ggufio.constants import type_name
from .ggufio.reader import GGUFReader, TensorInfo

ARCH = "llama"
ROPE_SCALING_TYPES = ("none", "linear", "yarn")

# the reference's names for model sizes it recognises by layer count (llama_model_type_name)
_SIZE_BY_LAYERS = {16: "1B", 22: "1B", 26: "3B", 28: "3B", 36: "8B", 40: "13B", 48: "34B", 60: "30B"}

# general.file_type -> the name the reference prints (llama_model_ftype_name)
FILE_TYPE_NAMES = {
    0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K - Medium", 11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large",
    14: "Q4_K - Small", 15: "Q4_K - Medium", 16: "Q5_K - Small", 17: "Q5_K - Medium", 18: "Q6_K",
    21: "Q2_K - Small", 25: "IQ4_NL - 4.5 bpw", 32: "BF16",
}


@dataclass
class ModelArgs:
    """Hyperparameters of a llama-architecture model."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_head_kv: int = 0          # 0 -> n_head
    head_dim: int = 0           # 0 -> n_embd // n_head
    n_ctx_train: int = 2048
    norm_eps: float = 1e-5
    rope_freq_base: float = 10000.0
    rope_scaling: str = "linear"
    rope_freq_scale: float = 1.0  # 1 / rope.scaling.factor
    rope_attn_factor: float = 1.0
    n_ctx_orig_yarn: int = 0    # 0 -> n_ctx_train
    pooling_type: int = -1      # -1 unspecified, 0 none, 1 mean, 2 cls, 3 last

    def __post_init__(self):
        if self.n_head_kv == 0:
            self.n_head_kv = self.n_head
        if self.head_dim == 0 and self.n_head:
            self.head_dim = self.n_embd // self.n_head
        if self.n_ctx_orig_yarn == 0:
            self.n_ctx_orig_yarn = self.n_ctx_train

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    @classmethod
    def from_gguf(cls, r: GGUFReader) -> ModelArgs:
        """Read the hyperparameters from a GGUF's metadata; refuse other architectures in one line."""
        arch = r.get("general.architecture")
        if arch is None:
            raise LlamapyError(f"{r.path}: no general.architecture in the metadata; not a model GGUF")
        if arch != ARCH:
            raise LlamapyError(f"{r.path}: architecture '{arch}' is not supported (llamapy runs '{ARCH}' models)")

        def get(key: str, default=None, required: bool = False):
            v = r.get(f"{ARCH}.{key}")
            if v is None:
                if required:
                    raise LlamapyError(f"{r.path}: metadata {ARCH}.{key} is missing")
                return default
            if isinstance(v, np.ndarray):  # per-layer arrays: only uniform ones
                if v.size == 0 or (v != v.flat[0]).any():
                    raise LlamapyError(f"{r.path}: {ARCH}.{key} differs between layers, which llamapy doesn't support")
                v = v.flat[0].item()
            return v

        if get("expert_count", 0):
            raise LlamapyError(f"{r.path}: mixture-of-experts llama models ({ARCH}.expert_count) are not supported")
        n_vocab = get("vocab_size")
        if n_vocab is None:
            toks = r.get("tokenizer.ggml.tokens")
            te = r.tensors.get("token_embd.weight")
            n_vocab = len(toks) if toks is not None else (te.shape[1] if te is not None and len(te.shape) > 1 else 0)
        n_head = int(get("attention.head_count", required=True))
        n_embd = int(get("embedding_length", required=True))
        if n_head < 1 or n_embd < 1:
            raise LlamapyError(f"{r.path}: head_count {n_head} / embedding_length {n_embd} must be positive")
        scaling = get("rope.scaling.type", "linear")
        if scaling not in ROPE_SCALING_TYPES:
            raise LlamapyError(
                f"{r.path}: rope scaling type '{scaling}' is not supported ({', '.join(ROPE_SCALING_TYPES)})")
        factor = get("rope.scaling.factor") or get("rope.scale_linear") or 0.0
        args = cls(
            n_vocab=int(n_vocab),
            n_embd=n_embd,
            n_layer=int(get("block_count", required=True)),
            n_head=n_head,
            n_ff=int(get("feed_forward_length", required=True)),
            n_head_kv=int(get("attention.head_count_kv", n_head)),
            head_dim=int(get("attention.key_length", n_embd // n_head)),
            n_ctx_train=int(get("context_length", required=True)),
            norm_eps=float(get("attention.layer_norm_rms_epsilon", required=True)),
            rope_freq_base=float(get("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            rope_freq_scale=1.0 if not factor else 1.0 / float(factor),
            rope_attn_factor=float(get("rope.scaling.attn_factor", 1.0)),
            n_ctx_orig_yarn=int(get("rope.scaling.original_context_length", 0)),
            pooling_type=int(get("pooling_type", -1)),
        )
        args.check(r.path)
        v_len = get("attention.value_length")
        if v_len is not None and int(v_len) != args.head_dim:
            raise LlamapyError(f"{r.path}: key length {args.head_dim} != value length {v_len}, not a llama model")
        n_rot = get("rope.dimension_count")
        if n_rot is not None and int(n_rot) != args.head_dim:
            raise LlamapyError(f"{r.path}: rope.dimension_count {n_rot} must equal the head size {args.head_dim}")
        return args

    def check(self, where: str = "model") -> None:
        """Refuse hyperparameters that contradict each other."""
        for name in ("n_vocab", "n_embd", "n_layer", "n_head", "n_ff", "n_head_kv", "head_dim", "n_ctx_train"):
            if getattr(self, name) < 1:
                raise LlamapyError(f"{where}: {name} = {getattr(self, name)} must be positive")
        if self.n_head % self.n_head_kv:
            raise LlamapyError(f"{where}: head_count {self.n_head} is not a multiple of head_count_kv {self.n_head_kv}")
        if self.head_dim % 2:
            raise LlamapyError(f"{where}: head size {self.head_dim} must be even for RoPE")
        if not self.norm_eps > 0:
            raise LlamapyError(f"{where}: layer_norm_rms_epsilon {self.norm_eps} must be positive")

    def size_label(self) -> str:
        """The reference's size name (from the layer count), '?B' when it has none."""
        if self.n_layer == 32:
            return "3B" if self.n_vocab == 49152 else ("7B" if self.n_vocab < 40000 else "8B")
        if self.n_layer == 80:
            return "65B" if self.n_head == self.n_head_kv else "70B"
        return _SIZE_BY_LAYERS.get(self.n_layer, "?B")


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    required: bool = True
    vector: bool = False  # norm weights and biases: F32 vectors


def tensor_specs(a: ModelArgs) -> list[TensorSpec]:
    """Every tensor a llama model may have, with the shape (GGML order) its hyperparameters give."""
    specs = [
        TensorSpec("token_embd.weight", (a.n_embd, a.n_vocab)),
        TensorSpec("output_norm.weight", (a.n_embd,), vector=True),
        TensorSpec("output.weight", (a.n_embd, a.n_vocab), required=False),
        TensorSpec("rope_freqs.weight", (a.head_dim // 2,), required=False, vector=True),
    ]
    for i in range(a.n_layer):
        b = f"blk.{i}."
        specs += [
            TensorSpec(b + "attn_norm.weight", (a.n_embd,), vector=True),
            TensorSpec(b + "attn_q.weight", (a.n_embd, a.q_dim)),
            TensorSpec(b + "attn_k.weight", (a.n_embd, a.kv_dim)),
            TensorSpec(b + "attn_v.weight", (a.n_embd, a.kv_dim)),
            TensorSpec(b + "attn_output.weight", (a.q_dim, a.n_embd)),
            TensorSpec(b + "attn_q.bias", (a.q_dim,), required=False, vector=True),
            TensorSpec(b + "attn_k.bias", (a.kv_dim,), required=False, vector=True),
            TensorSpec(b + "attn_v.bias", (a.kv_dim,), required=False, vector=True),
            TensorSpec(b + "attn_output.bias", (a.n_embd,), required=False, vector=True),
            TensorSpec(b + "ffn_norm.weight", (a.n_embd,), vector=True),
            TensorSpec(b + "ffn_gate.weight", (a.n_embd, a.n_ff)),
            TensorSpec(b + "ffn_up.weight", (a.n_embd, a.n_ff)),
            TensorSpec(b + "ffn_down.weight", (a.n_ff, a.n_embd)),
            TensorSpec(b + "ffn_gate.bias", (a.n_ff,), required=False, vector=True),
            TensorSpec(b + "ffn_up.bias", (a.n_ff,), required=False, vector=True),
            TensorSpec(b + "ffn_down.bias", (a.n_embd,), required=False, vector=True),
        ]
    return specs


def _shape_hint(spec: TensorSpec, a: ModelArgs) -> str:
    n = spec.name
    if "attn_k" in n or "attn_v" in n:
        return f" (from head_count_kv {a.n_head_kv} x head size {a.head_dim})"
    if "ffn" in n and "norm" not in n:
        return f" (from feed_forward_length {a.n_ff})"
    if "token_embd" in n or n.startswith("output."):
        return f" (from vocabulary size {a.n_vocab})"
    return f" (from embedding_length {a.n_embd}, head_count {a.n_head})"


def check_tensors(r: GGUFReader, a: ModelArgs) -> dict[str, TensorInfo]:
    """The model's tensors by name, after checking each is present (when required) and of the right
    shape and type; one line naming the first problem otherwise."""
    from .engine.native import lib

    out: dict[str, TensorInfo] = {}
    for spec in tensor_specs(a):
        t = r.tensors.get(spec.name)
        if t is None:
            if spec.required:
                raise LlamapyError(f"{r.path}: tensor '{spec.name}' is missing")
            continue
        shape = tuple(t.shape)
        while len(shape) > len(spec.shape) and shape[-1] == 1:
            shape = shape[:-1]
        if shape != spec.shape:
            raise LlamapyError(
                f"{r.path}: tensor '{spec.name}' has shape {list(t.shape)}, expected {list(spec.shape)}"
                + _shape_hint(spec, a)
            )
        if spec.vector:
            if t.type != 0:
                raise LlamapyError(f"{r.path}: tensor '{spec.name}' is {t.type_name}; norms and biases must be F32")
        elif not lib.lp_type_supported(t.type) or lib.lp_vec_dot_type(t.type) < 0:
            raise LlamapyError(
                f"{r.path}: tensor '{spec.name}' has type {type_name(t.type)}, which llamapy can't compute with")
        out[spec.name] = t
    return out


def model_desc(r: GGUFReader, a: ModelArgs) -> str:
    """The reference's one-line model description: architecture, size, file type."""
    ft = r.get("general.file_type")
    ftype = FILE_TYPE_NAMES.get(int(ft), f"file type {ft}") if ft is not None else "unknown file type"
    return f"{ARCH} {a.size_label()} {ftype}"
