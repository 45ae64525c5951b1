"""The model as the server sees it: `llamapy.engine.engine.Engine` behind the small interface the scheduler uses.

Only the engine thread calls eval_batch / cache_tokens / truncate / context_shift / embed / make_sampler.
tokenize / detokenize / piece are pure reads of the vocabulary and are called from any thread.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..generation.params import SamplerParams


class EngineBackend:
    """Adapter over a loaded `Engine` (n_seq_max slots, each with n_ctx positions)."""

    def __init__(self, llm: Any, n_batch: int = 512):
        self.llm = llm
        self.tok = llm.tokenizer
        self.metadata: dict[str, Any] = llm.metadata
        self.n_ctx = int(llm.n_ctx)
        self.n_ctx_embed = int(llm.n_ctx)
        self.n_slots = int(llm.n_seq_max)
        self.n_batch = int(n_batch)
        self.n_vocab = int(llm.n_vocab)
        self.n_embd = int(llm.n_embd)
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._eog = frozenset(int(t) for t in getattr(self.tok, "eog_ids", ()))
        self.add_bos = bool(getattr(self.tok, "add_bos", False))  # a context shift keeps the BOS
        self._meta: dict[str, Any] | None = None
        # LoRA adapters: their files and the scales requests without a `lora` field get (POST /lora-adapters)
        loras = getattr(llm, "loras", [])
        self.lora_paths: list[str] = [ad.path for ad in loras]
        self.lora_scales: list[float] = [ad.scale for ad in loras]

    # --- engine thread -----------------------------------------------------------------------------
    def eval_batch(self, items: list[tuple[int, list[int]]], last_rows: list[int] | None = None) -> list[np.ndarray]:
        return self.llm.eval_batch(items, last_rows=last_rows)

    def set_lora(self, scales: tuple[float, ...]) -> None:
        """The adapter scales of the next steps (one set per batch: the scheduler batches alike slots only)."""
        self.llm.set_lora_scales(scales)

    def cache_tokens(self, seq: int) -> list[int]:
        return list(self.llm.tokens(seq))

    def truncate(self, seq: int, n: int) -> None:
        if n <= 0:
            self.llm.kv_clear(seq)
        else:
            self.llm.kv_truncate(seq, n)

    def embed(self, tokens: list[int]) -> np.ndarray:
        return np.asarray(self.llm.embed(tokens), dtype=np.float32)

    def context_shift(self, seq: int, n_keep: int, n_discard: int) -> None:
        self.llm.context_shift(seq, n_keep, n_discard)

    def make_sampler(self, params: SamplerParams) -> Any:
        from ..generation.sampling import Sampler

        return Sampler(params, self.n_vocab, eog_ids=sorted(self._eog), tokenizer=self.tok)

    # --- vocabulary (any thread) ---------------------------------------------------------------------
    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of a token as generated text shows it: control tokens are empty (llama-server
        without --special); with `special`, their text."""
        key = (token, special)
        p = self._pieces.get(key)
        if p is None:
            p = self._pieces[key] = bytes(self.tok.token_to_piece(token, special=special))
        return p

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special=add_special, parse_special=parse_special))

    def detokenize(self, tokens: list[int]) -> str:
        """The text of token ids, special tokens written out (llama-server's /detokenize)."""
        return b"".join(self.piece(t, special=True) for t in tokens).decode("utf-8", "replace")

    # --- facts -----------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """llama-server's model `meta`: vocab_type, n_vocab, n_ctx_train, n_embd, n_params, size."""
        if self._meta is None:
            from ..ggufio.reader import GGUFReader

            path = self.llm.model_path
            n_params, size = getattr(self.llm, "n_params", None), getattr(self.llm, "model_size", None)
            if n_params is None or size is None:
                with GGUFReader(path) as r:
                    n_params = sum(t.n_elements for t in r.tensors.values())
                    size = sum(t.nbytes for t in r.tensors.values())
            arch = self.metadata.get("general.architecture", "llama")
            model = self.metadata.get("tokenizer.ggml.model", "")
            self._meta = {
                "vocab_type": {"llama": 1, "gpt2": 2, "bert": 3, "t5": 4, "rwkv": 5}.get(model, 0),
                "n_vocab": self.n_vocab,
                "n_ctx_train": int(self.metadata.get(f"{arch}.context_length", 0)),
                "n_embd": self.n_embd,
                "n_params": n_params,
                "size": size,
                "file_size": os.path.getsize(path),
            }
        return self._meta

    def file_type_name(self) -> str:
        """The quantization, as llama.cpp names it (general.file_type), e.g. "Q4_1"."""
        ft = self.metadata.get("general.file_type")
        try:
            from gguf import LlamaFileType

            return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")
        except (TypeError, ValueError, ImportError):
            return "unknown"
