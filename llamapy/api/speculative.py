"""llama-cpp-python's `llama_cpp.llama_speculative`: draft models for `Llama(draft_model=...)`.

A draft model is called with the token ids so far (the prompt, the generated tokens and the one just sampled)
and returns the ids it guesses come next. The target verifies them in one batched step through the
generation core's speculative rows (generation/speculative.py): a drafted token is kept only where the token
sampled from the target is that token, so greedy output is the same as without a draft, token for token.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding"]


class LlamaDraftModel(abc.ABC):
    """What `Llama(draft_model=...)` takes: called with the ids so far, returns the drafted ids."""

    @abc.abstractmethod
    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        raise NotImplementedError()


class LlamaPromptLookupDecoding(LlamaDraftModel):
    """Prompt lookup decoding: the last n-gram of the ids (max_ngram_size tokens down to one) is looked for in
    the earlier ids, and the num_pred_tokens ids that followed its first occurrence with a continuation are
    the draft (llama-cpp-python's rule)."""

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10):
        for name, v in (("max_ngram_size", max_ngram_size), ("num_pred_tokens", num_pred_tokens)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.max_ngram_size = int(max_ngram_size)
        self.num_pred_tokens = int(num_pred_tokens)

    @staticmethod
    def find_candidate_pred_tokens(input_ids: npt.NDArray[np.intc], max_ngram_size: int,
                                   num_pred_tokens: int) -> npt.NDArray[np.intc]:
        ids = np.asarray(input_ids, dtype=np.intc)
        n = len(ids)
        for size in range(min(max_ngram_size, n - 1), 0, -1):
            windows = np.lib.stride_tricks.sliding_window_view(ids, size)
            starts = np.flatnonzero((windows == ids[n - size:]).all(axis=1)) + size
            starts = starts[starts < n]   # an occurrence with at least one id after it
            if len(starts):
                s = int(starts[0])
                return ids[s:s + num_pred_tokens]
        return np.array([], dtype=np.intc)

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        return self.find_candidate_pred_tokens(input_ids, self.max_ngram_size, self.num_pred_tokens)


class CallableDrafter:
    """A draft_model (any callable from ids to ids) as the generation core's drafter."""

    def __init__(self, model: Any):
        from ..generation.speculative import DraftParams

        if not callable(model):
            raise TypeError(f"draft_model must be a LlamaDraftModel (a callable from token ids to token ids), "
                            f"got {type(model).__name__}")
        self.model = model
        self.params = DraftParams(n_max=1 << 30)   # as many as it gives, within the context and the batch

    def draft(self, context: Sequence[int], n: int, seq_id: int = 0) -> list[int]:
        out = self.model(np.asarray(context, dtype=np.intc))
        return [int(t) for t in np.asarray(out).ravel()[:n]]

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
