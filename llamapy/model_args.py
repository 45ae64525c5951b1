"""A model's hyperparameters (`ModelArgs`, from GGUF metadata, Meta's params.json or a Hugging Face
config.json) and the check that a GGUF's tensors are the ones those hyperparameters call for, with the
shapes they call for.

llama's relatives run on the same forward step; what sets each apart is a set of traits (`ARCH_TRAITS`
and the metadata read in `ModelArgs.from_gguf`): biases, per-head q/k norms, NEOX RoPE, post-attention
and post-FFN norms, GELU, scaled embeddings, soft-capping, sliding-window layers, fused tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import LlamapyError
from .ggufio.constants import KEY_ARCH, KEY_FILE_TYPE, type_name
from .ggufio.filetypes import ftype_label
from .ggufio.reader import GGUFReader, TensorInfo

ARCH = "llama"

# the traits of each architecture llamapy runs, beyond what its metadata says (see ModelArgs)
ARCH_TRAITS: dict[str, dict] = {
    "llama": {},
    "qwen2": {"rope_neox": True},
    "qwen3": {"rope_neox": True, "qk_norm": True},
    "gemma2": {"rope_neox": True, "post_norms": True, "act": "gelu", "embd_scaled": True, "swa_pattern": 2},
    "gemma3": {"rope_neox": True, "qk_norm": True, "post_norms": True, "act": "gelu", "embd_scaled": True,
               "swa_pattern": 6, "rope_freq_base_swa": 10000.0},
    "phi3": {"rope_neox": True},
    "qwen2moe": {"rope_neox": True},
    "qwen3moe": {"rope_neox": True, "qk_norm": True, "expert_weights_norm": True},
}
SUPPORTED_ARCHS = tuple(ARCH_TRAITS)
ROPE_SCALING_TYPES = ("none", "linear", "yarn")

# the reference's names for model sizes it recognises by layer count (llama_model_type_name)
_SIZE_BY_LAYERS = {16: "1B", 22: "1B", 26: "3B", 28: "3B", 36: "8B", 40: "13B", 48: "34B", 60: "30B"}


def hf_find(cfg: dict, keys: tuple[str, ...], optional: bool = False, where: str = ""):
    """The first of `keys` a Hugging Face config sets (the reference converter's find_hparam)."""
    for k in keys:
        if k in cfg:
            return cfg[k]
    if optional:
        return None
    raise LlamapyError(f"{where}: none of {', '.join(keys)} is set")


# config.json keys the reference converter reads each hyperparameter from, first found wins
HF_KEYS = {
    "n_layer": ("n_layers", "num_hidden_layers", "n_layer", "num_layers"),
    "n_embd": ("hidden_size", "n_embd"),
    "n_head": ("num_attention_heads", "n_head"),
    "n_ctx": ("max_position_embeddings", "n_ctx"),
    "n_ff": ("intermediate_size", "n_inner"),
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
    n_expert: int = 0
    arch: str = ARCH
    # architecture traits (all off: llama)
    rope_neox: bool = False          # RoPE pairs (i, i + head_dim/2) rather than (2i, 2i+1)
    qk_norm: bool = False            # attn_q_norm / attn_k_norm: RMSNorm of each head of q and k
    post_norms: bool = False         # post_attention_norm / post_ffw_norm before each residual add
    act: str = "silu"                # FFN activation of the gate: silu or gelu (tanh approximation)
    embd_scaled: bool = False        # token embeddings times sqrt(n_embd)
    attn_scale: float = 0.0          # scale of q.k; 0 -> 1/sqrt(head_dim)
    attn_softcap: float = 0.0        # 0: none
    final_softcap: float = 0.0
    n_swa: int = 0                   # sliding window of the local layers (0: none)
    swa_pattern: int = 0             # layer l global when (l + 1) % swa_pattern == 0 (0: all local)
    rope_freq_base_swa: float = 0.0  # RoPE base of the local layers (0: rope_freq_base)
    fused_qkv: bool = False          # attn_qkv holds q, k, v rows one after the other
    fused_gate_up: bool = False      # ffn_up holds the gate rows, then the up rows
    # mixture of experts (n_expert > 0): top n_expert_used of the router's softmax, plus a shared expert
    n_expert_used: int = 0
    n_ff_exp: int = 0                # FFN length of each expert
    n_ff_shexp: int = 0              # of the shared expert (0: none)
    expert_weights_norm: bool = False  # the chosen experts' weights renormalized to sum 1

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
    def from_gguf(cls, r: GGUFReader, strict: bool = True) -> ModelArgs:
        """Read the hyperparameters from a GGUF's metadata; refuse other architectures in one line.

        With `strict` False, any architecture is read and nothing is checked: what a missing key leaves
        is 0, and a per-layer array gives its first layer's value (as the reference quantizer reads
        a file it only rewrites)."""
        if not strict:
            return cls._from_any_gguf(r)
        arch = r.get(KEY_ARCH)
        if arch is None:
            raise LlamapyError(f"{r.path}: no general.architecture in the metadata; not a model GGUF")
        if arch not in ARCH_TRAITS:
            raise LlamapyError(f"{r.path}: architecture '{arch}' is not supported "
                               f"(llamapy runs {', '.join(SUPPORTED_ARCHS)})")

        def get(key: str, default=None, required: bool = False):
            v = r.get(f"{arch}.{key}")
            if v is None:
                if required:
                    raise LlamapyError(f"{r.path}: metadata {arch}.{key} is missing")
                return default
            if isinstance(v, np.ndarray):  # per-layer arrays: only uniform ones
                if v.size == 0 or (v != v.flat[0]).any():
                    raise LlamapyError(f"{r.path}: {arch}.{key} differs between layers, which llamapy doesn't support")
                v = v.flat[0].item()
            return v

        n_expert = int(get("expert_count", 0))
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
            n_ff=int(get("feed_forward_length", required=not n_expert) or get("expert_feed_forward_length", 0)),
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
            arch=arch,
            **ARCH_TRAITS[arch],
        )
        if n_expert:
            args.n_expert = n_expert
            args.n_expert_used = int(get("expert_used_count", 0))
            args.n_ff_exp = int(get("expert_feed_forward_length", args.n_ff))
            args.n_ff_shexp = int(get("expert_shared_feed_forward_length", 0))
            if arch == "llama":  # Mixtral
                args.expert_weights_norm = True
            args.expert_weights_norm = bool(get("expert_weights_norm", args.expert_weights_norm))
            if not 1 <= args.n_expert_used <= n_expert or args.n_ff_exp < 1:
                raise LlamapyError(f"{r.path}: {arch}.expert_used_count {args.n_expert_used} must be 1 to expert_count "
                                   f"{n_expert}, expert_feed_forward_length {args.n_ff_exp} positive")
        elif arch.endswith("moe"):
            raise LlamapyError(f"{r.path}: metadata {arch}.expert_count is missing")
        if arch in ("gemma2", "gemma3"):
            # the 27B models scale queries by n_embd / n_head, the others by the head size
            if args.n_layer in (46, 62):
                args.attn_scale = 1.0 / math.sqrt(n_embd / n_head)
            args.n_swa = int(get("attention.sliding_window", 4096 if arch == "gemma2" else 0))
            if arch == "gemma2":
                args.attn_softcap = float(get("attn_logit_softcapping", 50.0))
                args.final_softcap = float(get("final_logit_softcapping", 30.0))
            if args.n_swa < 1:
                raise LlamapyError(f"{r.path}: metadata {arch}.attention.sliding_window is missing")
        if arch == "phi3":
            args.n_swa = int(get("attention.sliding_window", 0))
            args.fused_qkv = "blk.0.attn_qkv.weight" in r.tensors
            args.fused_gate_up = "blk.0.ffn_gate.weight" not in r.tensors
            if "rope_factors_long.weight" in r.tensors:
                raise LlamapyError(f"{r.path}: Phi-3's long-context RoPE (rope_factors_long) is not supported")
        args.check(r.path)
        v_len = get("attention.value_length")
        if v_len is not None and int(v_len) != args.head_dim:
            raise LlamapyError(f"{r.path}: key length {args.head_dim} != value length {v_len}, not a llama model")
        n_rot = get("rope.dimension_count")
        if n_rot is not None and int(n_rot) != args.head_dim:
            raise LlamapyError(f"{r.path}: rope.dimension_count {n_rot} must equal the head size {args.head_dim}")
        return args

    @classmethod
    def _from_any_gguf(cls, r: GGUFReader) -> ModelArgs:
        arch = r.architecture or ARCH

        def get(key: str, default: int = 0) -> int:
            v = r.get(f"{arch}.{key}", default)
            if isinstance(v, np.ndarray):
                v = int(v[0]) if len(v) else default
            return int(v or 0)

        n_head = get("attention.head_count")
        return cls(n_vocab=get("vocab_size"), n_embd=get("embedding_length"), n_layer=get("block_count"),
                   n_head=n_head, n_ff=get("feed_forward_length"), n_head_kv=get("attention.head_count_kv", n_head),
                   n_ctx_train=get("context_length"), n_expert=get("expert_count"), arch=arch)

    @classmethod
    def from_meta_params(cls, cfg: dict, *, n_vocab: int, n_ff: int, n_ctx: int) -> ModelArgs:
        """From Meta's params.json (dim, n_layers, n_heads, n_kv_heads, norm_eps, rope_theta); the values it
        leaves out come from the checkpoint (vocabulary, FFN size) and the converter (context length)."""
        n_head = cfg["n_heads"]
        rope_theta = cfg.get("rope_theta")
        return cls(n_vocab=n_vocab, n_embd=cfg["dim"], n_layer=cfg["n_layers"], n_head=n_head, n_ff=n_ff,
                   n_head_kv=cfg.get("n_kv_heads") or n_head, n_ctx_train=n_ctx, norm_eps=cfg["norm_eps"],
                   rope_freq_base=rope_theta if rope_theta is not None else 10000.0)

    @classmethod
    def from_hf_config(cls, cfg: dict, *, where: str, n_vocab: int = 0, n_ctx: int | None = None) -> ModelArgs:
        """From a Hugging Face config.json, reading each value from the keys the reference converter does.
        What the config leaves out stays 0 (or the default); `n_ctx` overrides its context length."""
        n_layer = hf_find(cfg, HF_KEYS["n_layer"], where=where)
        n_head = hf_find(cfg, HF_KEYS["n_head"], where=where)
        if n_ctx is None:
            n_ctx = hf_find(cfg, HF_KEYS["n_ctx"], optional=True)
        rope = cfg.get("rope_scaling")
        factor = rope.get("factor") if isinstance(rope, dict) and rope.get("type") == "linear" else None
        eps, theta = cfg.get("rms_norm_eps"), cfg.get("rope_theta")
        return cls(
            n_vocab=n_vocab,
            n_embd=hf_find(cfg, HF_KEYS["n_embd"], optional=True) or 0,
            n_layer=n_layer,
            n_head=n_head,
            n_ff=hf_find(cfg, HF_KEYS["n_ff"], optional=True) or 0,
            n_head_kv=cfg.get("num_key_value_heads") or 0,
            head_dim=cfg.get("head_dim") or 0,
            n_ctx_train=n_ctx if n_ctx is not None else 0,
            norm_eps=eps if eps is not None else 1e-5,
            rope_freq_base=theta if theta is not None else 10000.0,
            rope_freq_scale=1.0 / factor if isinstance(factor, (int, float)) and factor else 1.0,
        )

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

    def size_label(self, n_params: int = 0, n_active: int = 0) -> str:
        """The reference's size name: from the layer count for the architectures its build has, as it names
        them ('?B' where it has no name); for the later ones (qwen3, qwen3moe, gemma3) the parameter count,
        total.Aactive for a mixture of experts (n_params / n_active: counted from the tensors)."""
        n, e = self.n_layer, self.n_expert
        if self.arch in _COUNTED_SIZES:
            if not n_params:
                return "?B"
            return params_label(n_params) + (f".A{params_label(n_active)}" if e and n_active else "")
        if self.arch == "llama":
            if e == 8:
                return {32: "8x7B", 56: "8x22B"}.get(n, "?B")
            if n == 32:
                return "3B" if self.n_vocab == 49152 else ("7B" if self.n_vocab < 40000 else "8B")
            if n == 80:
                return "65B" if self.n_head == self.n_head_kv else "70B"
            return _SIZE_BY_LAYERS.get(n, "?B")
        if self.arch == "qwen2":
            if n == 24:
                return "0.5B" if self.n_embd == 1024 else "1B"
            if n == 28:
                return "1.5B" if self.n_embd == 1536 else "7B"
            if n == 40:
                return "4B" if self.n_head == 20 else "13B"
            return {32: "7B", 36: "3B", 48: "14B", 64: "32B", 80: "70B"}.get(n, "?B")
        if self.arch == "qwen2moe":
            return {24: "A2.7B", 28: "57B.A14B"}.get(n, "?B")
        if self.arch == "gemma2":
            return {26: "2B", 42: "9B", 46: "27B"}.get(n, "?B")
        if self.arch == "phi3":
            return {24: "1B", 32: "3B", 40: "14B"}.get(n, "?B")
        return "?B"


def params_label(n: int) -> str:
    """A parameter count as a size: 0.8B, 135M, 12K."""
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


_COUNTED_SIZES = ("qwen3", "qwen3moe", "gemma3")  # after the reference's build: no names to follow


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    required: bool = True
    vector: bool = False  # norm weights and biases: F32 vectors


def _matmuls(prefix: str, dims: tuple[tuple[str, int, int], ...]) -> list[TensorSpec]:
    """Each (name, n_in, n_out) as a weight (n_in, n_out), then each one's optional bias (n_out,)."""
    weights = [TensorSpec(f"{prefix}{name}.weight", (n_in, n_out)) for name, n_in, n_out in dims]
    return weights + [TensorSpec(f"{prefix}{name}.bias", (n_out,), required=False, vector=True)
                      for name, _, n_out in dims]


def tensor_specs(a: ModelArgs) -> list[TensorSpec]:
    """Every tensor the model may have (by its traits), with the shape (GGML order) its hyperparameters give."""
    specs = [
        TensorSpec("token_embd.weight", (a.n_embd, a.n_vocab)),
        TensorSpec("output_norm.weight", (a.n_embd,), vector=True),
        TensorSpec("output.weight", (a.n_embd, a.n_vocab), required=False),
        TensorSpec("rope_freqs.weight", (a.head_dim // 2,), required=False, vector=True),
    ]
    for i in range(a.n_layer):
        b = f"blk.{i}."
        if a.fused_qkv:
            attn = (("attn_qkv", a.n_embd, a.q_dim + 2 * a.kv_dim), ("attn_output", a.q_dim, a.n_embd))
        else:
            attn = (("attn_q", a.n_embd, a.q_dim), ("attn_k", a.n_embd, a.kv_dim), ("attn_v", a.n_embd, a.kv_dim),
                    ("attn_output", a.q_dim, a.n_embd))
        if a.n_expert:
            ffn = ()
            e, f = a.n_expert, a.n_ff_exp
            specs += [TensorSpec(b + "ffn_gate_inp.weight", (a.n_embd, e)),
                      TensorSpec(b + "ffn_gate_exps.weight", (a.n_embd, f, e)),
                      TensorSpec(b + "ffn_up_exps.weight", (a.n_embd, f, e)),
                      TensorSpec(b + "ffn_down_exps.weight", (f, a.n_embd, e))]
            if a.n_ff_shexp:
                fs = a.n_ff_shexp
                specs += [TensorSpec(b + "ffn_gate_inp_shexp.weight", (a.n_embd,)),  # F32 or F16
                          TensorSpec(b + "ffn_gate_shexp.weight", (a.n_embd, fs)),
                          TensorSpec(b + "ffn_up_shexp.weight", (a.n_embd, fs)),
                          TensorSpec(b + "ffn_down_shexp.weight", (fs, a.n_embd))]
        elif a.fused_gate_up:
            ffn = (("ffn_up", a.n_embd, 2 * a.n_ff), ("ffn_down", a.n_ff, a.n_embd))
        else:
            ffn = (("ffn_gate", a.n_embd, a.n_ff), ("ffn_up", a.n_embd, a.n_ff), ("ffn_down", a.n_ff, a.n_embd))
        specs += [TensorSpec(b + "attn_norm.weight", (a.n_embd,), vector=True), *_matmuls(b, attn),
                  TensorSpec(b + "ffn_norm.weight", (a.n_embd,), vector=True), *_matmuls(b, ffn)]
        if a.qk_norm:
            specs += [TensorSpec(b + "attn_q_norm.weight", (a.head_dim,), vector=True),
                      TensorSpec(b + "attn_k_norm.weight", (a.head_dim,), vector=True)]
        if a.post_norms:
            specs += [TensorSpec(b + "post_attention_norm.weight", (a.n_embd,), vector=True),
                      TensorSpec(b + "post_ffw_norm.weight", (a.n_embd,), vector=True)]
    return specs


def _shape_hint(spec: TensorSpec, a: ModelArgs) -> str:
    n = spec.name
    if "_exps" in n or "ffn_gate_inp." in n:
        return f" (from expert_count {a.n_expert}, expert_feed_forward_length {a.n_ff_exp})"
    if "shexp" in n:
        return f" (from expert_shared_feed_forward_length {a.n_ff_shexp})"
    if n.endswith("_norm.weight") and "attn_" in n:
        return f" (from the head size {a.head_dim})"
    if "attn_k" in n or "attn_v" in n or "attn_qkv" in n:
        return f" (from head_count_kv {a.n_head_kv} x head size {a.head_dim})"
    if "ffn" in n and "norm" not in n:
        return f" (from feed_forward_length {a.n_ff})"
    if "token_embd" in n or n.startswith("output."):
        return f" (from vocabulary size {a.n_vocab})"
    return f" (from embedding_length {a.n_embd}, head_count {a.n_head})"


def check_tensors(r: GGUFReader, a: ModelArgs) -> dict[str, TensorInfo]:
    """The model's tensors by name, after checking each is present (when required) and of the right
    shape and type; one line naming the first problem otherwise."""
    from .native import lib

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
    return f"{a.arch} {file_size_label(r, a)} {ftype_label(r.get(KEY_FILE_TYPE))}"


def file_size_label(r: GGUFReader, a: ModelArgs) -> str:
    """The size name of the file's model (`ModelArgs.size_label`, with the parameters counted where needed)."""
    n_params = n_active = 0
    if a.arch in _COUNTED_SIZES:
        for name, t in r.tensors.items():
            n_params += t.n_elements
            n_active += t.n_elements * a.n_expert_used // a.n_expert if "_exps." in name else t.n_elements
    return a.size_label(n_params, n_active)
