"""Tiny Hugging Face / Meta llama models with PEFT LoRA adapters made by PEFT itself, and PEFT's own merge
(`merge_and_unload`) saved as a Hugging Face model: the oracle of merging while converting."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from test_convert_util import TINY, hf_config, meta_params, meta_to_hf, meta_weights, save_hf, save_meta, train_spm

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_hf(d: Path, spm_model: Path, n_vocab: int, seed: int = 3, fmt: str = "safetensors", hp: dict = TINY) -> Path:
    w = meta_to_hf(meta_weights(n_vocab, seed=seed, hp=hp), hp)
    save_hf(d, w, hf_config(n_vocab, hp), fmt=fmt)
    shutil.copy(spm_model, d / "tokenizer.model")
    return d


def base_meta(d: Path, spm_model: Path, n_vocab: int, seed: int = 3, n_shards: int = 1) -> tuple[Path, Path]:
    """A Meta checkpoint (float32) and the same weights as a Hugging Face model (what PEFT trains over)."""
    w = meta_weights(n_vocab, seed=seed)
    save_meta(d / "meta", w, meta_params(), dtype="f32", n_shards=n_shards)
    shutil.copy(spm_model, d / "meta" / "tokenizer.model")
    hf = d / "hf"
    save_hf(hf, meta_to_hf(w), hf_config(n_vocab))
    shutil.copy(spm_model, hf / "tokenizer.model")
    return d / "meta", hf


def _load(model_dir: Path):
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)


def make_adapter(base_dir: Path, out: Path, *, r: int = 4, alpha: float = 8, targets=None, seed: int = 0,
                 rslora: bool = False, rank_pattern=None, alpha_pattern=None, modules_to_save=None,
                 new_vocab: int | None = None, tokenizer: Path | None = None, safetensors: bool = True,
                 fan_in_fan_out: bool = False, over=None) -> Path:
    """A LoRA adapter with random (nonzero) A and B over the HF model in `base_dir` (or `over`: an earlier
    adapter's merged model); `new_vocab` resizes the embeddings first, as Chinese-LLaMA's training does."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = over if over is not None else _load(base_dir)
    if new_vocab is not None:
        model.resize_token_embeddings(new_vocab, mean_resizing=False)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or ALL, use_rslora=rslora,
                     rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {},
                     modules_to_save=modules_to_save, init_lora_weights=False, fan_in_fan_out=fan_in_fan_out)
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.2)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    pm.save_pretrained(str(out), safe_serialization=safetensors)
    if tokenizer is not None:
        shutil.copy(tokenizer, out / "tokenizer.model")
    return out


def peft_merged(base_dir: Path, adapters: list[Path], out: Path, tokenizer: Path) -> Path:
    """PEFT's merge_and_unload of the adapters in order, saved as a Hugging Face model (safetensors)."""
    import torch
    from peft import PeftModel

    model = _load(base_dir)
    for a in adapters:
        rows = _saved_rows(a)
        if rows is not None and rows != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(rows, mean_resizing=False)
        model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    with torch.no_grad():
        model.save_pretrained(str(out), safe_serialization=True)
    shutil.copy(tokenizer, out / "tokenizer.model")
    return out


def _saved_rows(adapter: Path) -> int | None:
    from safetensors import safe_open

    st = adapter / "adapter_model.safetensors"
    if st.is_file():
        with safe_open(str(st), "pt") as f:
            for k in f.keys():
                if "embed_tokens" in k and "lora" not in k:
                    return f.get_slice(k).get_shape()[0]
        return None
    import torch

    sd = torch.load(adapter / "adapter_model.bin", weights_only=True)
    for k, v in sd.items():
        if "embed_tokens" in k and "lora" not in k:
            return v.shape[0]
    return None


def spm_of_size(path: Path, n: int) -> Path:
    return train_spm(path, vocab_size=n)


def assert_same_tensors(a, b, atol: float = 2e-6) -> None:
    from test_convert_util import gguf_f32_tensors

    ta, tb = gguf_f32_tensors(a), gguf_f32_tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert ta[name].shape == tb[name].shape, name
        np.testing.assert_allclose(ta[name], tb[name], rtol=0, atol=atol, err_msg=name)


__all__ = ["ALL", "TINY", "assert_same_tensors", "base_hf", "base_meta", "make_adapter", "peft_merged",
           "spm_of_size"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def extend_spm(src: Path, dst: Path, n_total: int) -> list[str]:
    """A copy of a SentencePiece model with Chinese pieces added up to `n_total` (as Chinese-LLaMA merged its
    Chinese vocabulary into LLaMA's: NORMAL pieces of score 0 after the original ones); the pieces added. The
    pieces go at the end of the protobuf, where a repeated field's later entries follow the earlier ones."""
    import struct

    import sentencepiece as spm

    have = set(spm.SentencePieceProcessor(model_file=str(src)).IdToPiece(i)
               for i in range(spm.SentencePieceProcessor(model_file=str(src)).vocab_size()))
    n_new = n_total - len(have)
    chars = [chr(c) for c in range(0x4E00, 0x9FA6)]
    pieces: list[str] = []
    for c in chars:
        if len(pieces) == n_new:
            break
        if c not in have:
            pieces.append(c)
    i = 0
    while len(pieces) < n_new:  # then words of two characters
        pieces.append(chars[i // len(chars)] + chars[i % len(chars)])
        i += 1
    out = bytearray(src.read_bytes())
    for p in pieces:
        raw = p.encode()
        msg = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", 0.0) + b"\x18\x01"
        out += b"\x0a" + _varint(len(msg)) + msg
    dst.write_bytes(bytes(out))
    assert spm.SentencePieceProcessor(model_file=str(dst)).vocab_size() == n_total
    return pieces
