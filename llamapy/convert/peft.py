"""PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors` or `.bin`), read without torch.

An adapter holds, per adapted module M of the base (Hugging Face names, `base_model.model.` in front):
`M.lora_A.weight` (r, n_in) and `M.lora_B.weight` (n_out, r) for a linear layer, `M.lora_embedding_A`
(r, n_vocab) and `M.lora_embedding_B` (n_embd, r) for an embedding, and full replacements for the modules
in `modules_to_save` (`M.weight`, or `M.base_layer.weight` for an embedding PEFT saved whole). Merged as
PEFT's `merge_and_unload` does: W += scale * s * B @ A (transposed for an embedding), s = alpha / r, or
alpha / sqrt(r) with `use_rslora`, r and alpha per module from `rank_pattern` / `alpha_pattern`.
`.bin` adapters go through the restricted unpickler (torch_pickle.py): a pickle that reaches for anything
but tensors is refused before it runs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LlamapyError
from ..util.jsonio import load_json_bounded
from .lazy import LazyTensor, RowPermutedTensor, rotary_permutation, to_f32
from .safetensors_io import load_safetensors
from .torch_pickle import load_torch_file

PREFIX = "base_model.model."
# the module names a llama base has (the last part of a module's path), what target_modules may name
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                 "lm_head")
# Hugging Face parameter names -> Meta's, for adapters over a Meta checkpoint
_HF_TO_META_BLOCK = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
_HF_TO_META_GLOBAL = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}
_BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def hf_to_meta(name: str) -> str | None:
    m = _BLOCK_RE.match(name)
    if m:
        new = _HF_TO_META_BLOCK.get(m.group(2))
        return None if new is None else f"layers.{m.group(1)}.{new}.{m.group(3)}"
    base, _, suffix = name.rpartition(".")
    return f"{_HF_TO_META_GLOBAL[base]}.{suffix}" if base in _HF_TO_META_GLOBAL else None


@dataclass
class LoraPair:
    a: LazyTensor  # (r, n_in); for an embedding (r, n_vocab)
    b: LazyTensor  # (n_out, r); for an embedding (n_embd, r)
    scale: float  # the user's scale times alpha / r (or alpha / sqrt(r))
    embedding: bool  # the delta is (B @ A) transposed
    where: str

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the weight the pair adds to."""
        if self.embedding:
            return (self.a.shape[1], self.b.shape[0])
        return (self.b.shape[0], self.a.shape[1])


@dataclass
class PeftAdapter:
    path: Path
    ops: dict[str, list[tuple[str, object]]] = field(default_factory=dict)  # HF param name -> [("add", LoraPair)
    # | ("replace", LazyTensor)] in the order they apply
    tokenizer_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _pattern_value(patterns: dict, module: str, default, what: str, where: str):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module's path."""
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error as e:
            raise LlamapyError(f"{where}: {what} key {key!r} is not a valid pattern ({e})") from None
    return default


def _number(cfg: dict, key: str, where: str, default=None, integer: bool = False):
    v = cfg.get(key, default)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise LlamapyError(f"{where}: '{key}' is {v!r}, expected a{'n integer' if integer else ' number'}")
    return v


def read_config(d: Path) -> dict:
    path = d / "adapter_config.json"
    if not path.is_file():
        raise LlamapyError(f"{d}: not a PEFT adapter (no adapter_config.json)")
    try:
        cfg = load_json_bounded(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise LlamapyError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise LlamapyError(f"{path}: expected a JSON object")
    where = str(path)
    ptype = cfg.get("peft_type", "LORA")
    if ptype != "LORA":
        raise LlamapyError(f"{where}: peft_type is {ptype!r}; only LORA adapters can be merged")
    if cfg.get("use_dora"):
        raise LlamapyError(f"{where}: use_dora is set; DoRA adapters are not supported (plain LoRA only)")
    if cfg.get("lora_bias"):
        raise LlamapyError(f"{where}: lora_bias is set; LoRA biases are not supported")
    r = _number(cfg, "r", where, integer=True)
    if r <= 0:
        raise LlamapyError(f"{where}: 'r' is {r}; a LoRA rank must be at least 1")
    _number(cfg, "lora_alpha", where)
    for key in ("rank_pattern", "alpha_pattern"):
        v = cfg.get(key) or {}
        if not isinstance(v, dict):
            raise LlamapyError(f"{where}: '{key}' is not an object")
        for k, x in v.items():
            if isinstance(x, bool) or not isinstance(x, (int, float)) or (key == "rank_pattern" and x <= 0):
                raise LlamapyError(f"{where}: {key} '{k}' is {x!r}, expected a positive number")
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        for t in targets:
            if not isinstance(t, str) or (t not in LLAMA_MODULES and t.rsplit(".", 1)[-1] not in LLAMA_MODULES):
                raise LlamapyError(f"{where}: target_modules names {t!r}, which a llama model has no module of "
                                   f"(known: {', '.join(LLAMA_MODULES)})")
    elif targets is not None and not isinstance(targets, str):
        raise LlamapyError(f"{where}: 'target_modules' is {type(targets).__name__}, expected a list or a pattern")
    saved = cfg.get("modules_to_save") or []
    if not isinstance(saved, list) or not all(isinstance(s, str) for s in saved):
        raise LlamapyError(f"{where}: 'modules_to_save' is not a list of names")
    return cfg


def _weights(d: Path) -> tuple[Path, dict[str, LazyTensor]]:
    st, bin_ = d / "adapter_model.safetensors", d / "adapter_model.bin"
    if st.is_file():
        return st, load_safetensors(str(st))
    if bin_.is_file():
        return bin_, load_torch_file(str(bin_))
    raise LlamapyError(f"{d}: no adapter weights; tried {st} and {bin_}")


_LORA_SUFFIXES = {".lora_A.weight": ("a", False), ".lora_B.weight": ("b", False),
                  ".lora_embedding_A": ("a", True), ".lora_embedding_B": ("b", True)}


def load_peft(adapter: str | Path, scale: float = 1.0) -> PeftAdapter:
    """Read and check a PEFT LoRA adapter directory (headers only; tensors stay lazy)."""
    d = Path(adapter)
    if d.is_file() and d.name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        d = d.parent
    if not d.is_dir():
        raise LlamapyError(f"LoRA adapter {adapter}: no such directory")
    cfg = read_config(d)
    wpath, tensors = _weights(d)
    where = str(wpath)
    out = PeftAdapter(path=d, files=[d / "adapter_config.json", wpath])
    if (d / "tokenizer.model").is_file():
        out.tokenizer_dir = d
    if cfg.get("fan_in_fan_out"):
        out.notes.append(f"{d}: fan_in_fan_out is set, but a llama model's layers are Linear (stored out x in); "
                         "ignored, as PEFT ignores it for Linear layers")
    r0, alpha0 = cfg["r"], cfg["lora_alpha"]
    rslora = bool(cfg.get("use_rslora"))
    halves: dict[str, dict[str, tuple[LazyTensor, bool]]] = {}
    saved_names = tuple(cfg.get("modules_to_save") or ())
    for key, t in tensors.items():
        if not key.startswith(PREFIX):
            raise LlamapyError(f"{where}: tensor '{key}' does not start with '{PREFIX}' (not a PEFT LoRA adapter?)")
        name = key[len(PREFIX):].replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")
        for suffix, (half, emb) in _LORA_SUFFIXES.items():
            if name.endswith(suffix):
                halves.setdefault(name[: -len(suffix)], {})[half] = (t, emb)
                break
        else:
            if name.endswith(".lora_B.bias"):
                raise LlamapyError(f"{where}: tensor '{key}' is a LoRA bias; LoRA biases are not supported")
            if ".original_module." in name:
                continue  # the base's own layer, kept beside the trained copy of a module to save
            if name.endswith(".base_layer.weight"):
                name = name[: -len(".base_layer.weight")] + ".weight"
            module = name.rpartition(".")[0]
            leaf = module.rsplit(".", 1)[-1]
            if "lora_" in name or not name.endswith((".weight", ".bias")):
                raise LlamapyError(f"{where}: tensor '{key}' is neither a lora_A/lora_B half nor a saved module")
            if leaf not in saved_names and module not in saved_names and not key.endswith(".base_layer.weight"):
                raise LlamapyError(f"{where}: tensor '{key}' is a full weight, but '{leaf}' is not in "
                                   "modules_to_save")
            out.ops[name] = [("replace", t)]  # PEFT may save a module twice (M.weight, M.modules_to_save.weight)
    for module, h in halves.items():
        if "a" not in h or "b" not in h:
            raise LlamapyError(f"{where}: '{module}' has its lora_{'B' if 'a' in h else 'A'} but no "
                               f"lora_{'A' if 'a' not in h else 'B'}")
        (a, emb), (b, _) = h["a"], h["b"]
        shown = f"{where}: '{module}'"
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise LlamapyError(f"{shown}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not matrices")
        for x, what in ((a, "lora_A"), (b, "lora_B")):
            if x.dtype not in ("F32", "F16", "BF16", "F64"):
                raise LlamapyError(f"{shown}: {what} holds {x.dtype}, not floating point values")
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, r0, "rank_pattern", str(d / "adapter_config.json"))
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, alpha0, "alpha_pattern",
                               str(d / "adapter_config.json"))
        if a.shape[0] == 0 or b.shape[1] == 0:
            raise LlamapyError(f"{shown}: rank 0 (lora_A {list(a.shape)}, lora_B {list(b.shape)})")
        if a.shape[0] != b.shape[1]:
            raise LlamapyError(f"{shown}: lora_A {list(a.shape)} and lora_B {list(b.shape)} disagree on the rank")
        if a.shape[0] != r:
            raise LlamapyError(f"{shown}: rank {a.shape[0]} in the weights, but adapter_config.json gives r = {r}")
        s = alpha / math.sqrt(r) if rslora else alpha / r
        pair = LoraPair(a, b, float(scale) * s, emb, shown)
        out.ops.setdefault(module + ".weight", []).append(("add", pair))
    if not out.ops:
        raise LlamapyError(f"{where}: no LoRA tensors")
    return out


def _f32(a: np.ndarray, dtype: str) -> np.ndarray:
    return to_f32(a, dtype).astype(np.float32, copy=False)


class MergedTensor(LazyTensor):
    """A base weight with adapters applied in order: replaced by a saved module, or W += scale * B @ A;
    computed in float32 a range of rows at a time (only the LoRA halves are read whole, and they are small)."""

    def __init__(self, base: LazyTensor, ops: list[tuple[str, object]], where: str, vocab_rows: bool = False):
        """`vocab_rows`: the embeddings or the output layer, whose saved copy may have other rows."""
        self.base = base
        self.ops = ops
        self.where = where
        shape = base.shape
        for kind, x in ops:
            if kind == "replace":
                assert isinstance(x, LazyTensor)
                if x.shape[1:] != tuple(shape[1:]) or (x.shape[0] != shape[0] and not vocab_rows):
                    raise LlamapyError(f"{x.where}: a saved module of shape {list(x.shape)} for a base tensor of "
                                       f"{list(shape)} (an adapter for another model?)")
                shape = x.shape
            else:
                assert isinstance(x, LoraPair)
                if x.shape != tuple(shape):
                    raise LlamapyError(f"{x.where}: lora_A {list(x.a.shape)} and lora_B {list(x.b.shape)} make a "
                                       f"{list(x.shape)} update for a base tensor of {list(shape)} (an adapter for "
                                       "another model?)")
        self.shape = tuple(shape)
        self.dtype = "F32"
        self._start = max((i for i, (k, _) in enumerate(ops) if k == "replace"), default=-1)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        if self._start >= 0:
            src = self.ops[self._start][1]
            assert isinstance(src, LazyTensor)
        else:
            src = self.base
        from .outtype import rows_to_f32

        x = rows_to_f32(src.rows(r0, r1), src.dtype)
        if x.dtype != np.float32 or not x.flags.writeable or not x.flags.c_contiguous:
            x = np.array(x, dtype=np.float32)
        for kind, p in self.ops[self._start + 1:]:
            assert kind == "add" and isinstance(p, LoraPair)
            a = _f32(p.a.read(), p.a.dtype)
            if p.embedding:
                b = _f32(p.b.read(), p.b.dtype)
                x += np.float32(p.scale) * (a[:, r0:r1].T @ b.T)
            else:
                b = _f32(p.b.rows(r0, r1), p.b.dtype)
                x += np.float32(p.scale) * (b @ a)  # the order PEFT computes in: (B @ A) * scaling
        return x


class LoraPatch:
    """Adapters to merge into a base model's tensors as convert streams them (names in the base's layout)."""

    def __init__(self, adapters: list[PeftAdapter]):
        self.adapters = adapters
        self.ops: dict[str, list[tuple[str, object]]] = {}
        for ad in adapters:
            for name, ops in ad.ops.items():
                self.ops.setdefault(name, []).extend(ops)
        self.used: set[str] = set()

    @property
    def tokenizer_dir(self) -> Path | None:
        dirs = [a.tokenizer_dir for a in self.adapters if a.tokenizer_dir is not None]
        return dirs[-1] if dirs else None

    @property
    def n_vocab(self) -> int | None:
        """The embedding rows after the adapters, when one of them replaces the embeddings."""
        ops = self.ops.get("model.embed_tokens.weight", [])
        reps = [x for k, x in ops if k == "replace"]
        return reps[-1].shape[0] if reps else None  # type: ignore[attr-defined]

    def tensor(self, name: str, t: LazyTensor, layout: str, n_head: int = 0, n_head_kv: int = 0) -> LazyTensor:
        """`t` (named `name` in the base's layout) with the adapters merged, or `t` itself."""
        hf = name
        if layout == "meta":
            hf = self._meta_names().get(name, "")
        ops = self.ops.get(hf)
        if not ops:
            return t
        self.used.add(hf)
        if layout == "meta" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = n_head if hf.endswith("q_proj.weight") else n_head_kv
            ops = [_permuted(op, heads) for op in ops]
        return MergedTensor(t, ops, f"{t.where} (merged with LoRA)",
                            vocab_rows=hf in ("model.embed_tokens.weight", "lm_head.weight"))

    def _meta_names(self) -> dict[str, str]:
        out = {}
        for hf in self.ops:
            meta = hf_to_meta(hf)
            if meta is not None:
                out[meta] = hf
        return out

    def check_used(self, base: str, rows: dict[str, int] | None = None) -> None:
        """Every adapted or saved module must have met its base tensor."""
        for name in self.ops:
            if name not in self.used:
                raise LlamapyError(f"LoRA adapter: '{name}' has no tensor of that name in {base} (an adapter for "
                                   "another model?)")
        if rows:
            emb, out = rows.get("embd"), rows.get("output")
            if emb is not None and out is not None and emb != out:
                raise LlamapyError(f"LoRA adapter: the embeddings have {emb} rows but the output layer {out}; an "
                                   "adapter that resizes the vocabulary must save both (modules_to_save)")


def _permuted(op: tuple[str, object], heads: int) -> tuple[str, object]:
    """An op over a Hugging Face q/k weight, for Meta's (= GGUF's) interleaved row order."""
    kind, x = op
    if kind == "replace":
        assert isinstance(x, LazyTensor)
        return kind, RowPermutedTensor(x, rotary_permutation(x.shape[0], heads), x.where)
    assert isinstance(x, LoraPair)
    if x.embedding:
        return op
    b = RowPermutedTensor(x.b, rotary_permutation(x.b.shape[0], heads), x.b.where)
    return kind, LoraPair(x.a, b, x.scale, False, x.where)


def load_patch(adapters: list[str], scale: float = 1.0) -> LoraPatch:
    if not adapters:
        raise LlamapyError("--lora names no adapter")
    return LoraPatch([load_peft(a, scale) for a in adapters])
