"""The Hugging Face layout: `config.json` + `model*.safetensors` or `pytorch_model*.bin` + a tokenizer.

Supported architectures: LlamaForCausalLM and MistralForCausalLM (TinyLlama, SmolLM, Chinese-LLaMA /
Alpaca and the like are llama), MixtralForCausalLM, Qwen2/Qwen3 (dense and MoE), Gemma 2/3 (text) and
Phi-3 (see hf_archs.py). Hugging Face stores llama's q/k rows in rotate-half order; they are permuted
into GGUF's interleaved-pair order as they stream. Per-expert weights are stacked into one 3-D tensor
per layer and kind, written where the reference writes it (when the layer's last expert weight is read).
Tensors are walked in the reference converter's order (parts sorted by name, safetensors keys sorted),
so the output matches it tensor for tensor.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import KEY_FILE_TYPE, ValueType
from ..model_args import HF_KEYS, ModelArgs, hf_find
from ..util.jsonio import load_json_bounded
from .hf_archs import ARCHS, SUPPORTED_ARCHITECTURES, HFArch, arch_kvs
from .lazy import (
    ArrayTensor,
    FirstRowsTensor,
    LazyTensor,
    PlusOneTensor,
    RowPermutedTensor,
    StackedTensor,
    rotary_permutation,
)
from .peft import LoraPatch
from .safetensors_io import load_safetensors
from .source import ModelSource, dedup, find_first
from .tensor_names import HF_EXPERT_RE, HF_EXPERTS, HF_SKIP_SUFFIXES, hf_to_gguf
from .torch_pickle import load_torch_file
from .vocab import Vocab, bpe_kind, bpe_vocab, special_vocab, spm_vocab_hf, spm_vocab_phi3

U32, F32, STR, BOOL = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING, ValueType.BOOL


def is_hf_dir(d: Path) -> bool:
    return (d / "config.json").is_file()


def read_config(d: Path) -> dict:
    path = d / "config.json"
    try:
        cfg = load_json_bounded(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise LlamapyError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise LlamapyError(f"{path}: expected a JSON object")
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if not isinstance(arch, str) or arch not in ARCHS:
        raise LlamapyError(
            f"{path}: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    rp = cfg.get("rope_parameters")  # transformers 5 writes rope_theta there, not at the top
    if "rope_theta" not in cfg and isinstance(rp, dict) and isinstance(rp.get("rope_theta"), (int, float)):
        cfg["rope_theta"] = rp["rope_theta"]
    return cfg


def part_paths(d: Path) -> tuple[list[Path], str]:
    """Weight files in the reference's order: model*.safetensors, else pytorch_model*.bin."""
    st = sorted(p for p in d.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors"))
    if st:
        return st, "safetensors"
    bins = sorted(p for p in d.iterdir() if p.name.startswith("pytorch_model") and p.name.endswith(".bin"))
    if bins:
        return bins, "bin"
    raise LlamapyError(
        f"{d}: no weights found; tried {d / 'model*.safetensors'} and {d / 'pytorch_model*.bin'}"
    )


def _check_index(d: Path, kind: str, found: dict[str, Path]):
    index = d / ("model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json")
    if not index.is_file():
        return
    try:
        weight_map = load_json_bounded(index.read_text(encoding="utf-8")).get("weight_map")
    except ValueError as e:
        raise LlamapyError(f"{index}: not valid JSON ({e})") from None
    if not isinstance(weight_map, dict):
        raise LlamapyError(f"{index}: no weight_map")
    missing = sorted(set(weight_map) - set(found))
    extra = sorted(set(found) - set(weight_map))
    if missing:
        files = sorted({str(weight_map[n]) for n in missing})
        raise LlamapyError(f"{index}: {len(missing)} tensors are missing (files {', '.join(files)} absent or "
                           f"incomplete), e.g. '{missing[0]}'")
    if extra:
        raise LlamapyError(f"{index}: the weight files hold tensors the index doesn't list, e.g. '{extra[0]}'")


def llama3_rope_factors(cfg: dict, rope: dict, head_dim: int) -> np.ndarray:
    """Per-frequency scaling of Llama 3.1's long-context RoPE (written as rope_freqs.weight)."""
    base = cfg.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    lo_f, hi_f = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings", 8192))
    lo_wl, hi_wl = old_ctx / lo_f, old_ctx / hi_f
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1)
        elif wl > lo_wl:
            out.append(factor)
        else:
            smooth = (old_ctx / wl - lo_f) / (hi_f - lo_f)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _tokenizer_class(d: Path) -> str | None:
    tc = d / "tokenizer_config.json"
    try:
        return load_json_bounded(tc.read_text(encoding="utf-8")).get("tokenizer_class") if tc.is_file() else None
    except (ValueError, AttributeError):
        raise LlamapyError(f"{tc}: not a JSON object") from None


def find_hf_vocab(model_dir: Path, vocab_dir: Path | None, vocab_type: str | None,
                  vocab_size: int | None, phi3: bool = False) -> tuple[Vocab, Path]:
    """The tokenizer the reference would pick: tokenizer.model (SentencePiece), else tokenizer.json (BPE)."""
    dirs = dedup(([vocab_dir] if vocab_dir is not None else []) + [model_dir])
    spm_paths = [d / "tokenizer.model" for d in dirs]
    bpe_paths = [d / "tokenizer.json" for d in dirs]
    if vocab_type in (None, "spm"):
        for p in spm_paths:
            if p.is_file():
                return (spm_vocab_phi3 if phi3 else spm_vocab_hf)(p, p.parent, vocab_size), p.parent
        if vocab_type == "spm":
            find_first(spm_paths, "tokenizer.model")
    for p in bpe_paths:
        if p.is_file():
            if vocab_type is None and bpe_kind(p) == "spm-bpe":
                raise LlamapyError(
                    f"{p} is a SentencePiece-style tokenizer (byte fallback) without its tokenizer.model; "
                    f"put tokenizer.model in {p.parent} (or pass --vocab-dir)"
                )
            return bpe_vocab(p, vocab_size), p.parent
    find_first(spm_paths + bpe_paths if vocab_type is None else bpe_paths,
               "tokenizer (tokenizer.model or tokenizer.json)" if vocab_type is None else "tokenizer.json")
    raise AssertionError("unreachable")


def hf_arch_kvs(a: ModelArgs, cfg: dict, ctx_given: bool) -> list[tuple]:
    """The llama.* metadata the reference writes for a Hugging Face model: each key when config.json
    sets it (the context length also when --ctx gives it), in the reference's order."""
    def has(*keys: str) -> bool:
        return hf_find(cfg, keys, optional=True) is not None

    kvs: list[tuple] = [("llama.block_count", a.n_layer, U32, None)]
    if ctx_given or has(*HF_KEYS["n_ctx"]):
        kvs.append(("llama.context_length", a.n_ctx_train, U32, None))
    if has(*HF_KEYS["n_embd"]):
        kvs.append(("llama.embedding_length", a.n_embd, U32, None))
    if has(*HF_KEYS["n_ff"]):
        kvs.append(("llama.feed_forward_length", a.n_ff, U32, None))
    kvs.append(("llama.attention.head_count", a.n_head, U32, None))
    if has("num_key_value_heads"):
        kvs.append(("llama.attention.head_count_kv", a.n_head_kv, U32, None))
    if has("rope_theta"):
        kvs.append(("llama.rope.freq_base", a.rope_freq_base, F32, None))
    if has("rms_norm_eps"):
        kvs.append(("llama.attention.layer_norm_rms_epsilon", a.norm_eps, F32, None))
    eps = hf_find(cfg, ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"), optional=True)
    if eps is not None:
        kvs.append(("llama.attention.layer_norm_epsilon", eps, F32, None))
    for key, name in (("expert_count", "num_local_experts"), ("expert_used_count", "num_experts_per_tok")):
        if cfg.get(name) is not None:  # Mixtral
            kvs.append((f"llama.{key}", cfg[name], U32, None))
    if has("head_dim"):
        kvs.append(("llama.attention.key_length", a.head_dim, U32, None))
        kvs.append(("llama.attention.value_length", a.head_dim, U32, None))
    kvs.append((KEY_FILE_TYPE, None, U32, None))
    kvs.append(("llama.vocab_size", a.n_vocab, U32, None))
    kvs.append(("llama.rope.dimension_count", a.head_dim, U32, None))
    rope = cfg.get("rope_scaling")
    if isinstance(rope, dict) and "factor" in rope and rope.get("type") == "linear":
        kvs.append(("llama.rope.scaling.type", "linear", STR, None))
        kvs.append(("llama.rope.scaling.factor", rope["factor"], F32, None))
    return kvs


def load_hf(model_dir: Path, *, vocab_dir: Path | None = None, vocab_type: str | None = None,
            ctx: int | None = None, pad_vocab: bool = False, vocab_only: bool = False,
            skip_unknown: bool = False, patch: LoraPatch | None = None) -> ModelSource:
    """A Hugging Face model directory as a ModelSource (headers read, no weights yet); `patch`: LoRA
    adapters merged into the tensors as they stream."""
    del pad_vocab  # the reference pads a short tokenizer to config.json's vocab_size by itself
    cfg_path = model_dir / "config.json"
    cfg = read_config(model_dir)
    spec: HFArch = ARCHS[cfg["architectures"][0]]
    if spec.text_part and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    args = ModelArgs.from_hf_config(cfg, where=str(cfg_path), n_ctx=ctx)
    args.arch = spec.gguf
    if not args.n_head_kv:
        args.n_head_kv = args.n_head
    n_expert = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    if not isinstance(n_expert, int) or isinstance(n_expert, bool) or n_expert < 0:
        raise LlamapyError(f"{cfg_path}: the expert count {n_expert!r} is not a count")
    args.n_expert = n_expert
    notes: list[str] = []
    early: list[tuple] = []

    tensors: list[tuple[str, LazyTensor]] = []
    inputs: list[Path] = []
    first_dtype = None
    embd_rows = None
    if not vocab_only:
        inputs, kind = part_paths(model_dir)
        found: dict[str, Path] = {}
        rope = cfg.get("rope_scaling") or {}
        if spec.gguf == "llama" and isinstance(rope, dict) and str(rope.get("rope_type", "")).lower() == "llama3":
            tensors.append(("rope_freqs.weight", ArrayTensor(llama3_rope_factors(cfg, rope, args.head_dim), "F32",
                                                             "rope_freqs (generated)")))
        if spec.gguf == "phi3":
            early, extra = phi3_rope_factors(cfg, str(cfg_path))
            tensors.extend(extra)
        expert_re = HF_EXPERT_RE.get(spec.experts) if spec.experts else None
        pending: dict[int, dict[tuple[str, int], LazyTensor]] = {}
        for part in inputs:
            items = load_safetensors(str(part)) if kind == "safetensors" else load_torch_file(str(part))
            for name, t in items.items():
                if name in found:
                    raise LlamapyError(f"{part}: tensor '{name}' is also in {found[name]}")
                found[name] = part
                if first_dtype is None:
                    first_dtype = t.dtype
                if patch is not None:
                    t = patch.tensor(name, t, "hf")
                if name.endswith(HF_SKIP_SUFFIXES) or (spec.skip_lm_head and name == "lm_head.weight"):
                    continue
                if spec.text_part:
                    if name.startswith(_VISION_PREFIXES):
                        continue
                    name = name.replace("language_model.", "")
                m = expert_re.match(name) if expert_re is not None else None
                if m is not None:
                    tensors.extend(_expert_tensors(pending, m, t, args.n_expert, str(part)))
                    continue
                new = hf_to_gguf(name, spec.extras)
                if new is None:
                    if skip_unknown:
                        notes.append(f"skipped unknown tensor '{name}'")
                        continue
                    raise LlamapyError(
                        f"{part}: can't map tensor '{name}' to {spec.gguf} (use --skip-unknown to leave it out)"
                    )
                if spec.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
                    t = RowPermutedTensor(t, rotary_permutation(t.shape[0], args.n_head), t.where)
                elif spec.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
                    t = RowPermutedTensor(t, rotary_permutation(t.shape[0], args.n_head_kv), t.where)
                if spec.norm_plus_one and name.endswith("norm.weight"):
                    t = PlusOneTensor(t, t.where)
                if new == "token_embd.weight":
                    embd_rows = t.shape[0]
                tensors.append((new, t))
        left = sorted(n for d in pending.values() for n in d)
        if left:
            raise LlamapyError(f"{model_dir}: incomplete experts: layer {left[0][1]} lacks some of the "
                               f"{args.n_expert} experts' weights")
        _check_index(model_dir, kind, found)
        if patch is not None:
            rows = {"embd": embd_rows, "output": next((t.shape[0] for n, t in tensors if n == "output.weight"), None)}
            patch.check_used(str(model_dir), rows)
        if embd_rows is None:
            raise LlamapyError(f"{model_dir}: the weights have no model.embed_tokens.weight")

    vocab_size = cfg.get("vocab_size")
    if patch is not None and patch.n_vocab is not None and patch.n_vocab != vocab_size:
        notes.append(f"the LoRA adapter resizes the vocabulary from {vocab_size} to {patch.n_vocab} tokens")
        vocab_size = patch.n_vocab
        cfg = {**cfg, "vocab_size": vocab_size}
    trim_embd = spec.gguf == "gemma3"  # the reference cuts the embeddings to the vocabulary it reads
    if vocab_size is None and not trim_embd:
        vocab_size = embd_rows
    elif (vocab_size is not None and embd_rows is not None and embd_rows != vocab_size
          and not (trim_embd and embd_rows > vocab_size)):
        raise LlamapyError(f"{cfg_path}: vocab_size is {vocab_size} but model.embed_tokens.weight has "
                           f"{embd_rows} rows")
    if vocab_type is None:
        vocab_type = {"spm": "spm", "phi3": "spm", "bpe": "bpe"}.get(spec.vocab)
        if spec.vocab == "phi3" and _tokenizer_class(vocab_dir or model_dir) == "GPT2Tokenizer":
            vocab_type = "bpe"
    vocab, tok_dir = find_hf_vocab(model_dir, vocab_dir, vocab_type, vocab_size,
                                   phi3=spec.vocab == "phi3" and vocab_type == "spm")
    notes.extend(vocab.notes)
    if vocab_size is None:
        vocab_size = len(vocab)
    if trim_embd and embd_rows is not None:
        if embd_rows < len(vocab):
            raise LlamapyError(f"{model_dir}: the embeddings have {embd_rows} rows for {len(vocab)} tokens")
        tensors = [(n, FirstRowsTensor(t, len(vocab), t.where) if n == "token_embd.weight" and embd_rows > len(vocab)
                    else t) for n, t in tensors]
    if len(vocab) != vocab_size:
        raise LlamapyError(f"vocab size mismatch: the model has {vocab_size} tokens but {vocab.source} has "
                           f"{len(vocab)}")

    args.n_vocab = vocab_size
    if spec.gguf == "llama":
        kvs = hf_arch_kvs(args, cfg, ctx_given=ctx is not None)
    else:
        kvs = arch_kvs(cfg["architectures"][0], cfg, str(cfg_path))
        if ctx is not None:
            kvs = [(k, ctx, *rest) if k.endswith(".context_length") else (k, v, *rest) for k, v, *rest in kvs]

    sv = special_vocab(tok_dir, len(vocab) if vocab.model == "llama" else None, load_merges=vocab.model == "gpt2")
    notes.extend(sv.notes)
    if vocab.model == "gpt2" and not sv.merges:
        notes.append(f"{tok_dir}: no merges found; the tokenizer may not work")
    vocab_kvs = vocab.token_kvs() + sv.kvs()
    if spec.gguf == "llama":
        vocab_kvs += _llama_vocab_extras(tok_dir, vocab_size, vocab_kvs)
    elif spec.vocab == "spm":
        vocab_kvs.append(("tokenizer.ggml.add_space_prefix", False, BOOL, None))  # as the reference (Gemma)

    return ModelSource(
        layout="hf",
        model_dir=model_dir,
        args=args,
        tensors=tensors,
        arch_kvs=kvs,
        vocab=vocab,
        vocab_kvs=vocab_kvs,
        param_count=sum(t.n_elements for _, t in tensors),
        first_dtype=first_dtype,
        default_outtype="f16",
        inputs=inputs,
        notes=notes,
        early_kvs=early,
    )


_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "multimodal_projector.", "vision_model.")


def phi3_rope_factors(cfg: dict, where: str) -> tuple[list[tuple], list[tuple[str, LazyTensor]]]:
    """Phi-3's long-context RoPE: the attention factor (metadata) and the long/short frequency factors
    (rope_factors_long/short.weight), as the reference computes them; nothing without rope_scaling."""
    rope = cfg.get("rope_scaling")
    if rope is None:
        return [], []
    n_embd, n_head = cfg.get("hidden_size") or cfg.get("n_embd"), cfg.get("num_attention_heads") or cfg.get("n_head")
    n_ctx = cfg.get("n_positions") or cfg.get("max_position_embeddings")
    orig = cfg.get("original_max_position_embeddings")
    kind = str(rope.get("type", "")).lower() if isinstance(rope, dict) else ""
    if not kind:
        raise LlamapyError(f"{where}: rope_scaling has no type")
    scale = n_ctx / orig
    if kind in ("su", "longrope"):
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    elif kind == "yarn":
        attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise LlamapyError(f"{where}: Phi-3 rope scaling type '{kind}' is not supported (su, longrope, yarn)")
    long_f, short_f = rope.get("long_factor"), rope.get("short_factor")
    if long_f is None or short_f is None:
        raise LlamapyError(f"{where}: rope_scaling needs long_factor and short_factor")
    half = n_embd // n_head / 2
    if len(long_f) != len(short_f) or len(long_f) != half:
        raise LlamapyError(f"{where}: rope_scaling long_factor and short_factor must each have {half:g} values")
    kvs = [("phi3.rope.scaling.attn_factor", attn_factor, F32, None)]
    return kvs, [(f"rope_factors_{n}.weight", ArrayTensor(np.array(f, dtype=np.float32), "F32", f"rope {n} factors"))
                 for n, f in (("long", long_f), ("short", short_f))]


def _expert_tensors(pending: dict, m, t: LazyTensor, n_expert: int, where: str) -> list[tuple[str, LazyTensor]]:
    """Collect one expert's weight; once a layer has all of them, its stacked tensors in the reference's order."""
    bid, xid, kind = int(m.group(1)), int(m.group(2)), m.group(3)
    if not 0 <= xid < n_expert:
        raise LlamapyError(f"{where}: expert {xid} of layer {bid} is beyond the {n_expert} experts config.json has")
    layer = pending.setdefault(bid, {})
    layer[(kind, xid)] = t
    table = next(tab for tab in HF_EXPERTS.values() if kind in tab)
    if len(layer) < n_expert * len(table):
        return []
    del pending[bid]
    out = []
    for k, gguf in table.items():
        if any((k, x) not in layer for x in range(n_expert)):
            raise LlamapyError(f"{where}: layer {bid} lacks some experts' {k} weights")
        out.append((f"blk.{bid}.{gguf}.weight",
                    StackedTensor([layer[(k, x)] for x in range(n_expert)], f"{where}: blk.{bid}.{gguf}")))
    return out


def _llama_vocab_extras(tok_dir: Path, vocab_size: int, before: list[tuple]) -> list[tuple]:
    """What the reference's llama class adds after the vocabulary (`before`)."""
    vocab_kvs: list[tuple] = []
    if vocab_size == 32016:  # CodeLlama's infill tokens
        code = special_vocab(tok_dir, None, load_merges=False, types=("prefix", "suffix", "middle", "eot"))
        for typ, tid in zip(("prefix", "suffix", "middle", "eot"), (32007, 32008, 32009, 32010)):
            code.set_id(typ, tid, None)
        code.add.clear()
        code.chat_template = None
        vocab_kvs += code.kvs()
    tc_path = tok_dir / "tokenizer_config.json"
    if tc_path.is_file():
        tc = load_json_bounded(tc_path.read_text(encoding="utf-8"), tc_path)
        if "add_prefix_space" in tc:
            vocab_kvs.append(("tokenizer.ggml.add_space_prefix", bool(tc["add_prefix_space"]), BOOL, None))
    if vocab_size == 49152 and not any(k[0] == "tokenizer.ggml.add_bos_token" for k in before + vocab_kvs):
        vocab_kvs.append(("tokenizer.ggml.add_bos_token", False, BOOL, None))  # as the reference (granite)

    return vocab_kvs
