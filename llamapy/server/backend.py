"""The model as the server sees it: `llamapy.llama.Llama` behind the small interface the scheduler uses.

Only the engine thread calls eval_batch / cache_tokens / truncate / embed / make_sampler.
tokenize / detokenize / piece are pure reads of the vocabulary and are called from any thread.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np


class EngineBackend:
    """Adapter over a loaded `Llama` (n_seq_max slots, each with n_ctx positions)."""

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
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        self._eog = {t for t in range(self.n_vocab) if self.tok.is_eog(t)} if self.n_vocab <= 1 << 20 else None
        self._meta: dict[str, Any] | None = None

    # --- engine thread -----------------------------------------------------------------------------
    def eval_batch(self, items: list[tuple[int, list[int]]]) -> list[np.ndarray]:
        return self.llm.eval_batch(items)

    def cache_tokens(self, seq: int) -> list[int]:
        return list(self.llm.tokens(seq))

    def truncate(self, seq: int, n: int) -> None:
        if n <= 0:
            self.llm.kv_clear(seq)
        else:
            self.llm.kv_truncate(seq, n)

    def embed(self, tokens: list[int]) -> np.ndarray:
        return np.asarray(self.llm.embed(tokens), dtype=np.float32)

    def make_sampler(self, params: dict[str, Any]) -> Any:
        from ..sampling import Sampler, SamplerParams

        return Sampler(SamplerParams(**params), self.n_vocab, eog_ids=sorted(self._eog or ()))

    # --- vocabulary (any thread) ---------------------------------------------------------------------
    def is_eog(self, token: int) -> bool:
        return token in self._eog if self._eog is not None else bool(self.tok.is_eog(token))

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (a special token's text too), cached."""
        p = self._pieces[token]
        if p is None:
            p = self.tok.token_to_piece(token, special=True)
            if isinstance(p, str):
                p = p.encode("utf-8")
            self._pieces[token] = p
        return p

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special=add_special, parse_special=parse_special))

    def detokenize(self, tokens: list[int], special: bool = True) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace") if special else \
            self.tok.decode(tokens)

    # --- facts -----------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """llama-server's model `meta`: vocab_type, n_vocab, n_ctx_train, n_embd, n_params, size."""
        if self._meta is None:
            from ..gguf_reader import GGUFReader

            path = self.llm.model_path
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
