"""Meta's checkpoint layout: `consolidated.NN.pth` shards + `params.json` + `tokenizer.model`.

Shards split every tensor for model parallelism: `tok_embeddings`, `wo` and `w2` along axis 1, the
other matrices along axis 0, and each 1-D tensor is repeated (shard 0's is used). Hyperparameters come
from params.json, with the blanks filled the way the reference converter does: vocab size from the
embedding rows (`vocab_size: -1` in Llama 2), the FFN size from `w1`, the context length guessed from
norm_eps / rope_theta unless --ctx gives it. Meta's q/k rows are already in GGUF's rotary order.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import LlamapyError
from ..ggufio.constants import KEY_FILE_TYPE, ValueType
from ..model_args import ModelArgs
from ..util.jsonio import load_json_bounded
from .lazy import ConcatTensor, LazyTensor
from .peft import LoraPatch
from .source import ModelSource, dedup, find_first
from .tensor_names import META_SKIP, meta_to_gguf
from .torch_pickle import load_torch_file
from .vocab import Vocab, bpe_vocab, special_vocab, spm_vocab_legacy

U32, F32 = ValueType.UINT32, ValueType.FLOAT32
_SHARD_RE = re.compile(r"consolidated\.(\d+)\.pth$")


def is_meta_dir(d: Path) -> bool:
    return (d / "params.json").is_file()


def shard_paths(d: Path) -> list[Path]:
    """consolidated.00.pth ... in order; a single other *.pth / *.pt file if there are none."""
    found = {}
    for p in d.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    if found:
        missing = [i for i in range(max(found) + 1) if i not in found]
        if missing:
            raise LlamapyError(f"{d}: shard consolidated.{missing[0]:02}.pth is missing ({len(found)} shards found)")
        return [found[i] for i in sorted(found)]
    others = sorted(p for p in d.iterdir() if p.suffix in (".pth", ".pt") and p.is_file())
    if len(others) == 1:
        return others
    if others:
        raise LlamapyError(f"{d}: several checkpoints and no consolidated.NN.pth: {', '.join(p.name for p in others)}")
    raise LlamapyError(f"{d}: no consolidated.00.pth (or other .pth file) found beside params.json")


def _split_axis(name: str) -> int:
    if name.startswith("tok_embeddings.") or name.endswith((".attention.wo.weight", ".feed_forward.w2.weight")):
        return 1
    return 0


def merge_shards(shards: list[dict[str, LazyTensor]], paths: list[Path]) -> dict[str, LazyTensor]:
    """One tensor per name, joined across shards along the axis Meta split it on."""
    if len(shards) == 1:
        return dict(shards[0])
    names = list(dict.fromkeys(n for s in shards for n in s))
    out = {}
    for name in names:
        parts = []
        for s, p in zip(shards, paths):
            if name not in s:
                raise LlamapyError(f"{p}: tensor '{name}' is missing from this shard")
            parts.append(s[name])
        if len(parts[0].shape) <= 1:
            out[name] = parts[0]
            continue
        axis = _split_axis(name)
        for t, p in zip(parts, paths):
            if len(t.shape) != len(parts[0].shape) or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, parts[0].shape)) if i != axis
            ):
                raise LlamapyError(
                    f"{p}: tensor '{name}' has shape {list(t.shape)}, which can't join shard 0's "
                    f"{list(parts[0].shape)} along axis {axis}"
                )
            if t.dtype != parts[0].dtype:
                raise LlamapyError(f"{p}: tensor '{name}' is {t.dtype} here but {parts[0].dtype} in shard 0")
        out[name] = ConcatTensor(parts, axis, f"{name} (joined from {len(parts)} shards)")
    return out


def guess_ctx(norm_eps: float, rope_theta: float | None) -> int:
    """The reference's guess: CodeLlama (rope_theta 1e6) 16384, Llama 2 (norm_eps 1e-5) 4096, LLaMA 1 2048."""
    if rope_theta == 1000000:
        return 16384
    if norm_eps == 1e-05:
        return 4096
    return 2048


def read_params(path: Path, tensors: dict[str, LazyTensor], ctx: int | None,
                notes: list[str], patch: LoraPatch | None = None) -> tuple[ModelArgs, dict]:
    """params.json's hyperparameters (blanks filled from the checkpoint), and the file's own values."""
    try:
        cfg = load_json_bounded(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise LlamapyError(f"{path}: not valid JSON ({e})") from None
    if cfg.get("moe"):
        raise LlamapyError(f"{path}: mixture-of-experts checkpoints are not supported (llama only)")
    for key in ("dim", "n_layers", "n_heads", "norm_eps"):
        if key not in cfg:
            raise LlamapyError(f"{path}: '{key}' is missing")
    emb = tensors.get("tok_embeddings.weight")
    if emb is None:
        raise LlamapyError(f"{path.parent}: the checkpoint has no tok_embeddings.weight")
    vs = cfg.get("vocab_size")
    if patch is not None:  # the adapters merged in; the vocabulary is what they leave
        heads = cfg["n_heads"]
        kv_heads = cfg.get("n_kv_heads") or heads
        for name in list(tensors):
            tensors[name] = patch.tensor(name, tensors[name], "meta", heads, kv_heads)
        out = tensors.get("output.weight")
        patch.check_used(str(path.parent), {"embd": tensors["tok_embeddings.weight"].shape[0],
                                            "output": out.shape[0] if out is not None else None})
        if patch.n_vocab is not None and vs not in (None, -1, patch.n_vocab):
            notes.append(f"the LoRA adapter resizes the vocabulary from {vs} to {patch.n_vocab} tokens")
            vs = patch.n_vocab
    rows = tensors["tok_embeddings.weight"].shape[0]
    if vs is None or vs == -1:
        notes.append(f"params.json has vocab_size {vs if vs is not None else '(missing)'}; using {rows} "
                     f"from the rows of tok_embeddings")
    elif vs != rows:
        raise LlamapyError(f"{path}: vocab_size is {vs} but tok_embeddings.weight has {rows} rows")
    w1 = tensors.get("layers.0.feed_forward.w1.weight")
    if w1 is None:
        raise LlamapyError(f"{path.parent}: the checkpoint has no layers.0.feed_forward.w1.weight")
    n_ctx = ctx if ctx is not None else guess_ctx(cfg["norm_eps"], cfg.get("rope_theta"))
    return ModelArgs.from_meta_params(cfg, n_vocab=rows, n_ff=w1.shape[0], n_ctx=n_ctx), cfg


def arch_kvs(a: ModelArgs, rope_theta: bool, with_file_type: bool = True) -> list[tuple]:
    """The llama.* metadata the reference writes for a Meta checkpoint (rope.freq_base when params.json
    has rope_theta)."""
    out = [
        ("llama.vocab_size", a.n_vocab, U32, None),
        ("llama.context_length", a.n_ctx_train, U32, None),
        ("llama.embedding_length", a.n_embd, U32, None),
        ("llama.block_count", a.n_layer, U32, None),
        ("llama.feed_forward_length", a.n_ff, U32, None),
        ("llama.rope.dimension_count", a.head_dim, U32, None),
        ("llama.attention.head_count", a.n_head, U32, None),
        ("llama.attention.head_count_kv", a.n_head_kv, U32, None),
        ("llama.attention.layer_norm_rms_epsilon", a.norm_eps, F32, None),
    ]
    if rope_theta:
        out.append(("llama.rope.freq_base", a.rope_freq_base, F32, None))
    if with_file_type:
        out.append((KEY_FILE_TYPE, None, U32, None))
    return out


def find_vocab(model_dir: Path, vocab_dir: Path | None, vocab_type: str | None) -> Vocab:
    """tokenizer.model (or tokenizer.json for --vocab-type bpe) from --vocab-dir, the model dir or its parent."""
    dirs = dedup(([vocab_dir] if vocab_dir is not None else []) + [model_dir, model_dir.parent])
    kinds = [vocab_type] if vocab_type else ["spm", "bpe"]
    tried = []
    for kind in kinds:
        fname = "tokenizer.model" if kind == "spm" else "tokenizer.json"
        for d in dirs:
            p = d / fname
            tried.append(p)
            if p.is_file():
                if kind == "spm":
                    return spm_vocab_legacy(p)
                v = bpe_vocab(p, None)
                v.source = str(p)
                return v
    names = {"spm": "tokenizer.model", "bpe": "tokenizer.json"}
    find_first(tried, f"tokenizer ({' or '.join(names[k] for k in kinds)})")
    raise AssertionError("unreachable")


def load_meta(model_dir: Path, *, vocab_dir: Path | None = None, vocab_type: str | None = None,
              ctx: int | None = None, pad_vocab: bool = False, vocab_only: bool = False,
              skip_unknown: bool = False, patch: LoraPatch | None = None) -> ModelSource:
    """A Meta-layout model directory as a ModelSource (nothing but headers and the pickle read yet); `patch`:
    LoRA adapters merged into the tensors as they stream."""
    notes: list[str] = []
    params_path = model_dir / "params.json"
    vocab = find_vocab(model_dir, vocab_dir, vocab_type)
    notes.extend(vocab.notes)

    tensors: dict[str, LazyTensor] = {}
    originals: dict[str, LazyTensor] = {}
    paths: list[Path] = []
    if not vocab_only or pad_vocab:
        paths = shard_paths(model_dir)
        tensors = merge_shards([load_torch_file(str(p)) for p in paths], paths)
        originals = dict(tensors)  # as the checkpoint has them, before any adapter is merged
        params, cfg = read_params(params_path, tensors, ctx, notes, patch)
        rope_theta = cfg.get("rope_theta") is not None
    if vocab_only and not pad_vocab:  # placeholders: only the vocabulary is written
        params = ModelArgs(n_vocab=len(vocab), n_embd=1, n_layer=1, n_head=1, n_ff=1, n_ctx_train=1)
        rope_theta = False

    n_vocab_tok = len(vocab)
    if params.n_vocab != n_vocab_tok:
        if pad_vocab and params.n_vocab > n_vocab_tok:
            vocab.pad_to(params.n_vocab, "dummy")
            notes.append(f"padded the vocab from {n_vocab_tok} to {params.n_vocab} tokens (<dummy00001>...)")
        else:
            msg = (f"vocab size mismatch: the model has {params.n_vocab} tokens (tok_embeddings rows) but "
                   f"{vocab.source} has {n_vocab_tok}")
            if n_vocab_tok < params.n_vocab < n_vocab_tok + 20:
                msg += f"; most likely added_tokens.json is missing (it goes beside {vocab.source})"
            if n_vocab_tok < params.n_vocab:
                msg += "; add --pad-vocab to fill the difference with placeholder tokens"
            raise LlamapyError(msg)

    out: list[tuple[str, LazyTensor]] = []
    if not vocab_only:
        seen_blocks = set()
        for name, t in tensors.items():
            if name in META_SKIP:
                continue
            new = meta_to_gguf(name)
            if new is None:
                if skip_unknown:
                    notes.append(f"skipped unknown tensor '{name}'")
                    continue
                raise LlamapyError(f"{paths[0]}: unexpected tensor '{name}' (use --skip-unknown to leave it out)")
            if new.startswith("blk."):
                seen_blocks.add(int(new.split(".")[1]))
            out.append((new, t))
        if seen_blocks != set(range(params.n_layer)):
            raise LlamapyError(
                f"{params_path}: n_layers is {params.n_layer} but the checkpoint has blocks for "
                f"{len(seen_blocks)} layers"
            )
        emb = tensors["tok_embeddings.weight"]
        if emb.shape[1] != params.n_embd:
            raise LlamapyError(f"{params_path}: dim is {params.n_embd} but tok_embeddings.weight has "
                               f"{emb.shape[1]} columns")

    sv = special_vocab(model_dir, n_vocab_tok, load_merges=vocab.model == "gpt2")
    notes.extend(sv.notes)
    if vocab.model == "gpt2" and not sv.merges:
        sv2 = special_vocab(Path(vocab.source).parent, None, load_merges=True)
        sv.merges = sv2.merges

    first_wq = originals.get("layers.0.attention.wq.weight")
    default = "f16" if first_wq is not None and first_wq.dtype == "F16" else "f32"
    param_count = sum(t.n_elements for t in tensors.values())
    return ModelSource(
        layout="meta",
        model_dir=model_dir,
        tensors=out,
        args=params,
        arch_kvs=arch_kvs(params, rope_theta, with_file_type=not (vocab_only and not pad_vocab)),
        vocab=vocab,
        vocab_kvs=vocab.token_kvs() + sv.kvs(),
        param_count=param_count,
        first_dtype=first_wq.dtype if first_wq is not None else None,
        default_outtype=default,
        inputs=paths,
        notes=notes,
    )
