"""`llamapy convert-lora`: a PEFT LoRA adapter to a GGUF adapter, as the reference's convert_lora_to_gguf.py.

The file: general.architecture, general.type = adapter, adapter.type = lora, the adapter's identity from its
model card (general.name, general.base_model.*, general.tags), adapter.lora.alpha, the quantization version;
then per adapted base tensor, in the adapter's order, `<gguf name>.lora_a` (A, ne [n_in, r]) and
`<gguf name>.lora_b` (B, ne [r, n_out]; q/k rows in GGUF's rotary order for llama). As the reference, the
halves are written in F32 whatever `--outtype` says (their names do not end in `.weight`, which the reference
keeps in F32), so f32, f16, bf16 and q8_0 give the same bytes as the reference. The GGUF format has one alpha
per adapter and takes r from each pair; where `use_rslora` or `alpha_pattern` make a pair's scale differ from
alpha / r, the difference is folded into its B (the reference ignores both).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import KEY_ARCH, KEY_QUANT_VERSION, KEY_TYPE, QUANT_VERSION, TensorType, ValueType
from . import ConvertResult
from .hf import read_config as read_hf_config
from .hf_archs import ARCHS
from .lazy import ArrayTensor, LazyTensor, RowPermutedTensor, rotary_permutation, to_f32
from .naming import fill_template, general_kvs, load_metadata
from .peft import PREFIX, _pattern_value, _weights
from .peft import read_config as read_adapter_config
from .tensor_names import hf_to_gguf
from .writer import PlannedTensor, write_gguf

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")
F32 = int(TensorType.F32)


def _base_name(key: str) -> str:
    """The base weight a key of the adapter belongs to (the reference's get_base_tensor_name)."""
    name = key.replace(PREFIX, "")
    for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B"):
        name = name.replace(suffix, ".weight")
    return name


def _base_heads(base: Path) -> tuple[dict, int, int]:
    cfg = read_hf_config(base)
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    n_head = cfg.get("num_attention_heads")
    if not isinstance(n_head, int) or isinstance(n_head, bool) or n_head <= 0:
        raise LlamapyError(f"{base / 'config.json'}: num_attention_heads is {n_head!r}")
    n_kv = cfg.get("num_key_value_heads") or n_head
    return cfg, n_head, n_kv


def convert_lora(adapter: str | os.PathLike, base: str | os.PathLike, outfile: str | os.PathLike | None = None,
                 outtype: str = "f16", *, log: Callable[[str], None] | None = None,
                 progress: bool = False) -> ConvertResult:
    """Write the GGUF adapter of a PEFT LoRA adapter directory; `base`: the base model's Hugging Face directory
    (its config.json is all that is read)."""
    say = log or (lambda _m: None)
    ot = str(outtype).lower()
    if ot not in OUTTYPES:
        raise LlamapyError(f"unknown --outtype '{outtype}': use one of {', '.join(OUTTYPES)}")
    d = Path(adapter)
    if not d.is_dir():
        raise LlamapyError(f"LoRA adapter {adapter}: no such directory")
    base_dir = Path(base)
    if not (base_dir / "config.json").is_file():
        raise LlamapyError(f"--base {base}: no config.json there (the base model's Hugging Face directory)")
    acfg = read_adapter_config(d)
    cfg, n_head, n_kv = _base_heads(base_dir)
    arch_name = cfg["architectures"][0]
    spec = ARCHS[arch_name]
    wpath, tensors = _weights(d)
    where = str(wpath)
    alpha = float(acfg["lora_alpha"])

    halves: dict[str, dict[str, LazyTensor]] = {}
    norms: list[tuple[str, LazyTensor]] = []
    for key, t in tensors.items():
        base_name = _base_name(key)
        is_a = ".lora_A.weight" in key or ".lora_embedding_A" in key
        is_b = ".lora_B.weight" in key or ".lora_embedding_B" in key
        if not is_a and not is_b:
            if ".base_layer.weight" in key or ".original_module." in key:
                continue
            if "_layernorm" in key or ".norm" in key:
                norms.append((base_name, t))
                continue
            hint = ""
            if ".embed_tokens." in key or ".lm_head." in key:
                hint = ("; the adapter replaces the embeddings (modules_to_save): merge it while converting "
                        "instead (llamapy convert BASE --lora ADAPTER)")
            raise LlamapyError(f"{where}: tensor '{key}' is not a lora_A or lora_B tensor{hint}")
        halves.setdefault(base_name, {})["a" if is_a else "b"] = t

    planned: list[PlannedTensor] = []
    total = 0
    for name, h in list(halves.items()) + [(n, {"norm": t}) for n, t in norms]:
        gguf = hf_to_gguf(name, spec.extras)
        if gguf is None or (spec.skip_lm_head and name == "lm_head.weight"):
            raise LlamapyError(f"{where}: can't map '{name}' to a {spec.gguf} tensor (an adapter for another "
                               "architecture?)")
        if "norm" in h:
            planned.append(PlannedTensor(gguf, h["norm"], F32))
            total += h["norm"].n_elements
            continue
        if "a" not in h or "b" not in h:
            raise LlamapyError(f"{where}: '{name}' has its lora_{'B' if 'a' in h else 'A'} but no "
                               f"lora_{'A' if 'a' not in h else 'B'}")
        a, b = h["a"], h["b"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1] or a.shape[0] == 0:
            raise LlamapyError(f"{where}: '{name}': lora_A {list(a.shape)} and lora_B {list(b.shape)} are not a "
                               "LoRA pair of rank 1 or more")
        r = a.shape[0]
        module = name[: -len(".weight")]
        r_cfg = _pattern_value(acfg.get("rank_pattern") or {}, module, acfg["r"], "rank_pattern", where)
        if r_cfg != r:
            raise LlamapyError(f"{where}: '{name}' has rank {r}, but adapter_config.json gives r = {r_cfg}")
        a_pat = float(_pattern_value(acfg.get("alpha_pattern") or {}, module, alpha, "alpha_pattern", where))
        true_scale = a_pat / math.sqrt(r) if acfg.get("use_rslora") else a_pat / r
        factor = true_scale / (alpha / r) if alpha else true_scale
        if factor != 1.0:
            b = ArrayTensor(to_f32(b.read(), b.dtype).astype(np.float32) * np.float32(factor), "F32", b.where)
        if spec.permute_qk and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = n_head if name.endswith("q_proj.weight") else n_kv
            b = RowPermutedTensor(b, rotary_permutation(b.shape[0], heads), b.where)
        if gguf == "token_embd.weight":  # as the reference: A transposed for the embeddings
            a = ArrayTensor(np.ascontiguousarray(a.read().T), a.dtype, a.where)
        planned.append(PlannedTensor(gguf + ".lora_a", a, F32))
        planned.append(PlannedTensor(gguf + ".lora_b", b, F32))
        total += math.prod(b.shape[:-1]) * a.shape[-1]
    if not planned:
        raise LlamapyError(f"{where}: no LoRA tensors")
    for p in planned:
        if p.src.dtype not in ("F32", "F16", "BF16", "F64"):
            raise LlamapyError(f"{p.src.where}: {p.src.dtype} values, not floating point")

    md = load_metadata(d, None, -total)
    if md.name is None:
        md.name = d.name
    label = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "auto": "GUESSED"}[ot]
    if outfile is None or Path(outfile).is_dir():
        from gguf.utility import naming_convention

        stem = naming_convention(md.name, md.basename, md.finetune, md.version, md.size_label, label,
                                 model_type="LoRA")
        out = (Path(outfile) if outfile is not None else d) / f"{stem}.gguf"
    else:
        out = Path(outfile)
        out = out.parent / fill_template(out.name, label)
    if out.exists() and any(out.resolve() == p.resolve() for p in (wpath, d / "adapter_config.json")):
        raise LlamapyError(f"{out}: the output would overwrite the input; choose another --outfile")
    s = ValueType.STRING
    kvs = [(KEY_ARCH, spec.gguf, s, None), (KEY_TYPE, "adapter", s, None), ("adapter.type", "lora", s, None)]
    kvs += general_kvs(md)
    kvs += [("adapter.lora.alpha", alpha, ValueType.FLOAT32, None),
            (KEY_QUANT_VERSION, QUANT_VERSION, ValueType.UINT32, None)]
    seconds = write_gguf(out, kvs, planned, progress=progress, log=say if log else None)
    return ConvertResult(out, "F32", len(planned), out.stat().st_size, seconds)
