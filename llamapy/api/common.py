"""The pieces of the `Llama` API besides the class: constants, logits processor and stopping criteria lists,
saved states and the prompt cache, argument checks and small numeric helpers."""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..generation.sequence import common_prefix

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"
GGML_TYPE_F16 = 1  # the default KV cache type (type_k / type_v take any of engine.load.KV_CACHE_TYPES)

LogitsProcessor = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], npt.NDArray[np.single]]
StoppingCriteria = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], bool]

# llama-cpp-python's chat_format names -> llamapy's built-in templates (llama.cpp's names, also accepted)
CHAT_FORMATS = {
    "llama-2": "llama2-sys",
    "llama-3": "llama3",
    "chatml": "chatml",
    "qwen": "chatml",
    "mistral-instruct": "mistral-v1",
    "gemma": "gemma",
    "zephyr": "zephyr",
    "vicuna": "vicuna",
    "openchat": "openchat",
    "alpaca": "alpaca",
    "phi-3": "phi3",
    "chatglm3": "chatglm3",
}


class LogitsProcessorList(list[LogitsProcessor]):
    """Logits processors applied in order: each gets (input_ids, scores) and returns the new scores."""

    def __call__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(list[StoppingCriteria]):
    """Stopping criteria: the generation stops when any returns True for (input_ids, logits)."""

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        return any(criteria(input_ids, logits) for criteria in self)


# -- state and cache -----------------------------------------------------------------------------------------
class LlamaState:
    """A saved context: the token ids in the KV cache, the logits after them, and in `llama_state` the KV cache
    itself in llamapy's state format (engine/state.py: the tokens, the KV types, the model's hash; checked when
    loaded, so a state of another model is refused)."""

    def __init__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single], n_tokens: int,
                 llama_state: bytes = b"", llama_state_size: int = 0, seed: int = LLAMA_DEFAULT_SEED) -> None:
        self.input_ids = input_ids
        self.scores = scores
        self.n_tokens = n_tokens
        self.llama_state = llama_state
        self.llama_state_size = llama_state_size
        self.seed = seed

    @property
    def nbytes(self) -> int:
        """Memory the state holds (what a cache's capacity counts)."""
        return int(self.input_ids.nbytes + self.scores.nbytes + len(self.llama_state))


class BaseLlamaCache:
    """A prompt cache: saved states keyed by their token ids, found by the longest shared prefix."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        self.capacity_bytes = capacity_bytes

    @property
    def cache_size(self) -> int:
        """Bytes the cached states hold."""
        raise NotImplementedError

    def _cached_keys(self) -> Iterable[tuple[int, ...]]:
        """The token ids of the states held, oldest first."""
        raise NotImplementedError

    def _longest_prefix_key(self, key: Sequence[int]) -> tuple[int, ...] | None:
        """The held key (the oldest of equals) sharing the longest non-empty token prefix with `key`, else None."""
        wanted = tuple(key)
        best, best_len = None, 0
        for k in self._cached_keys():
            n = common_prefix(k, wanted)
            if n > best_len:
                best, best_len = k, n
        return best

    def _find_prefix_key(self, key: Sequence[int]) -> tuple[int, ...]:
        found = self._longest_prefix_key(key)
        if found is None:
            raise KeyError("no cached state shares a prefix with these tokens")
        return found

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        raise NotImplementedError

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._longest_prefix_key(key) is not None

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        raise NotImplementedError


class LlamaRAMCache(BaseLlamaCache):
    """States kept in memory, least recently used dropped first once they pass `capacity_bytes`."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.cache_state: OrderedDict[tuple[int, ...], LlamaState] = OrderedDict()

    @property
    def cache_size(self) -> int:
        return sum(s.nbytes for s in self.cache_state.values())

    def _cached_keys(self) -> Iterable[tuple[int, ...]]:
        return self.cache_state

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        found = self._find_prefix_key(key)
        self.cache_state.move_to_end(found)
        return self.cache_state[found]

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        k = tuple(key)
        if k in self.cache_state:
            del self.cache_state[k]
        self.cache_state[k] = value
        while self.cache_size > self.capacity_bytes and len(self.cache_state) > 0:
            self.cache_state.popitem(last=False)


LlamaCache = LlamaRAMCache


# -- argument checks -----------------------------------------------------------------------------------------
def _int(name: str, v: object, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    i = int(v)
    if (lo is not None and i < lo) or (hi is not None and i > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ValueError(f"{name} must be {rng}, got {i}")
    return i


def _float(name: str, v: object, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    f = float(v)
    if math.isnan(f) or (lo is not None and f < lo) or (hi is not None and f > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ValueError(f"{name} must be {rng}, got {f}")
    return f


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a string or a list of strings")
    return [s for s in stop if s]


def _not_yet(name: str, what: str) -> ValueError:
    return ValueError(f"{name}: {what} is not supported yet")


# -- helpers -------------------------------------------------------------------------------------------------
def _string_metadata(raw: dict[str, Any]) -> dict[str, str]:
    """GGUF metadata as llama.cpp's llama_model_meta_val_str gives it: scalars as text, arrays left out."""
    out = {}
    for k, v in raw.items():
        if isinstance(v, (list, tuple, np.ndarray)):
            continue
        if isinstance(v, (bool, np.bool_)):
            out[k] = "true" if v else "false"
        elif isinstance(v, (float, np.floating)):
            out[k] = f"{float(v):f}"
        elif isinstance(v, bytes):
            out[k] = v.decode("utf-8", errors="replace")
        else:
            out[k] = str(v)
    return out


def _log_softmax(row: Any) -> npt.NDArray[np.float64]:
    x = np.asarray(row, dtype=np.float64)
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))  # type: ignore[no-any-return]


def _normalized(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
