"""`llamapy convert`: Meta checkpoints and Hugging Face models to GGUF, streamed, without torch.

    from llamapy.convert import convert
    result = convert("models/llama-2-7b-chat", outtype="f16", vocab_dir="../llama", outfile="out.gguf")

Layouts: Meta (`consolidated.NN.pth` + `params.json` + `tokenizer.model`, see meta.py) and Hugging
Face (`config.json` + safetensors or `.bin` + tokenizer, see hf.py). Output: GGUF v3 with the metadata
and tensor names the reference converters write; `outtype` f32, f16, bf16, q8_0, auto, or any
llama-quantize type, quantized on the fly.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LlamapyError
from ..ggufio.constants import KEY_FILE_TYPE, KEY_QUANT_VERSION, QUANT_VERSION, ValueType
from .hf import is_hf_dir, load_hf
from .meta import is_meta_dir, load_meta
from .naming import default_filename, fill_template, general_kvs, load_metadata, params_size_label
from .outtype import OutType, parse_outtype, resolve_auto
from .source import ModelSource
from .writer import fill_file_type, kv_list, plan_tensors, write_gguf


@dataclass
class ConvertResult:
    path: Path
    outtype: str  # "F16", "Q4_K_M", ...
    n_tensors: int
    nbytes: int  # size of the file
    seconds: float
    notes: list[str] = field(default_factory=list)


def _model_dir(model: str | os.PathLike) -> Path:
    p = Path(model)
    if p.is_file() and p.suffix in (".pth", ".pt", ".safetensors", ".bin"):
        p = p.parent
    if not p.exists():
        raise LlamapyError(f"{model}: no such model directory")
    if not p.is_dir():
        raise LlamapyError(f"{model}: not a model directory")
    return p


def load_source(model_dir: Path, **kw) -> ModelSource:
    """The layout of `model_dir` (Hugging Face if config.json is there, else Meta's params.json)."""
    if is_hf_dir(model_dir):
        return load_hf(model_dir, **kw)
    if is_meta_dir(model_dir):
        return load_meta(model_dir, **kw)
    raise LlamapyError(
        f"{model_dir}: not a model directory; tried {model_dir / 'config.json'} (Hugging Face) and "
        f"{model_dir / 'params.json'} (Meta)"
    )


def _identity(src: ModelSource, model_name: str | None, override: Path | None, vocab_only: bool):
    """(general.* metadata, size label for the file name), as the reference converter of the layout derives
    them: the Hugging Face one counts the tensors it writes, the Meta one the checkpoint's and names the
    file with the directory's own size label when it has one."""
    if src.layout == "hf":
        total = sum(t.n_elements for _, t in src.tensors)
        md = load_metadata(src.model_dir, model_name, total, override)
        if md.name is None:
            md.name = src.model_dir.name
        if md.size_label is None and total > 0:
            exps = [t for n, t in src.tensors if "_exps." in n]
            shared = total - sum(t.n_elements for t in exps)
            expert_params = sum(t.n_elements // t.shape[-3] for t in exps)
            n_expert = sum(t.shape[-3] for t in exps) // len(exps) if exps else 0
            md.size_label = params_size_label(total, shared, expert_params, n_expert)
        return md, md.size_label
    md = load_metadata(src.model_dir, model_name, 0, override)
    if md.name is None:
        md.name = src.model_dir.name
    computed = params_size_label(src.param_count) if not vocab_only else None
    file_label = md.size_label if md.size_label is not None else computed
    if not vocab_only:
        md.size_label = computed
    return md, file_label


def _metadata(src: ModelSource, general: list[tuple], ot: OutType) -> list[tuple]:
    """All key/values in the order the reference writes them."""
    hf = src.layout == "hf"
    kvs = _all_kvs(src, general, ot, hf)
    return kvs[:1] + src.early_kvs + kvs[1:]


def _all_kvs(src: ModelSource, general: list[tuple], ot: OutType, hf: bool) -> list[tuple]:
    if ot.is_mix:
        # what `llamapy quantize` makes of this converter's F32 file: its metadata, with the
        # quantization version and file type moved to the end
        arch = [kv for kv in src.arch_kvs if kv[0] != KEY_FILE_TYPE]
        return kv_list(src.args.arch, general, hf, arch, src.vocab_kvs, quant_version=False) + [
            (KEY_QUANT_VERSION, QUANT_VERSION, ValueType.UINT32, None),
            (KEY_FILE_TYPE, ot.file_type, ValueType.UINT32, None)]
    has_file_type = any(k == KEY_FILE_TYPE for k, *_ in src.arch_kvs)
    arch = fill_file_type(src.arch_kvs, ot.file_type) if has_file_type else src.arch_kvs
    return kv_list(src.args.arch, general, hf, arch, src.vocab_kvs, quant_version=hf)


def convert(
    model: str | os.PathLike,
    outfile: str | os.PathLike | None = None,
    outtype: str | None = None,
    *,
    vocab_dir: str | os.PathLike | None = None,
    vocab_type: str | None = None,
    vocab_only: bool = False,
    pad_vocab: bool = False,
    ctx: int | None = None,
    model_name: str | None = None,
    metadata: str | os.PathLike | None = None,
    skip_unknown: bool = False,
    n_threads: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
    lora: str | os.PathLike | list[str | os.PathLike] | None = None,
    lora_scale: float = 1.0,
) -> ConvertResult:
    """Convert a Meta or Hugging Face model directory to one GGUF file; returns where it went.

    `lora`: PEFT LoRA adapter directories (a list, or one path / a comma-separated string) merged into the
    weights in that order as they stream, each at `lora_scale`; an adapter's tokenizer.model replaces the
    base's (unless `vocab_dir` is given).

    `log` receives one-line notes (and, with `verbose`, a line per tensor); `progress` shows a bar on a
    terminal."""
    model_dir = _model_dir(model)
    if vocab_type is not None and vocab_type not in ("spm", "bpe"):
        raise LlamapyError(f"unknown --vocab-type '{vocab_type}': use spm or bpe")
    vdir = Path(vocab_dir) if vocab_dir is not None else None
    if vdir is not None and not vdir.is_dir():
        raise LlamapyError(f"--vocab-dir {vdir}: no such directory")
    ot: OutType | None = parse_outtype(outtype) if outtype is not None else None

    patch = None
    say = log or (lambda _m: None)
    if lora is not None:
        from .peft import load_patch

        names = lora.split(",") if isinstance(lora, str) else [lora] if isinstance(lora, os.PathLike) else lora
        if not math.isfinite(lora_scale):
            raise LlamapyError(f"--lora-scale {lora_scale} is not a finite number")
        patch = load_patch([str(n) for n in names if str(n)], lora_scale)
        for ad in patch.adapters:
            for note in ad.notes:
                say(f"note: {note}")
        if vdir is None and patch.tokenizer_dir is not None:
            vdir = patch.tokenizer_dir
            say(f"note: using the adapter's tokenizer ({vdir / 'tokenizer.model'})")
    src = load_source(model_dir, vocab_dir=vdir, vocab_type=vocab_type, ctx=ctx, pad_vocab=pad_vocab,
                      vocab_only=vocab_only, skip_unknown=skip_unknown,
                      **({"patch": patch} if patch is not None else {}))
    if patch is not None:
        src.inputs += [f for ad in patch.adapters for f in ad.files]
    for note in src.notes:
        say(f"note: {note}")

    if ot is None:
        ot = parse_outtype(src.default_outtype)
    if ot.name == "auto":
        ot = resolve_auto(src.first_dtype or "F32")
        say(f"note: --outtype auto chose {ot.label} from the first tensor ({src.first_dtype})")

    md, file_label = _identity(src, model_name, Path(metadata) if metadata else None, vocab_only)
    if outfile is None:
        out = model_dir / default_filename(md, file_label, ot.label, vocab_only)
    else:
        out = Path(outfile)
        if out.is_dir():
            out = out / default_filename(md, file_label, ot.label, vocab_only)
        else:
            out = out.parent / fill_template(out.name, ot.label)
    if any(out.resolve() == p.resolve() for p in src.inputs):
        raise LlamapyError(f"{out}: the output would overwrite the input; choose another --outfile")

    kvs = _metadata(src, general_kvs(md), ot)
    planned = [] if vocab_only else plan_tensors(src.tensors, ot, src.args)
    seconds = write_gguf(out, kvs, planned, n_threads=n_threads, progress=progress,
                         log=log if verbose else None)
    return ConvertResult(out, ot.label, len(planned), out.stat().st_size, seconds, list(src.notes))


__all__ = ["ConvertResult", "convert", "load_source", "parse_outtype"]
