"""LlamaDiskCache: llama-cpp-python's prompt cache kept in a folder, so states outlive the process.

One file per state, `<hash of its tokens>.lpcache`: a NumPy .npz (read without pickles) of the token ids, the
logits, the seed and the KV state in llamapy's state format (checked against the model when loaded, so a file
from another model is refused there, not trusted). Lookup is by the longest shared token prefix, as in
llama-cpp-python, whose disk cache also takes an entry out when it is read (the completion stores its final
state back); the oldest files go first once the folder passes capacity_bytes. Files are written atomically.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence

import numpy as np

from .common import LLAMA_DEFAULT_SEED, BaseLlamaCache, LlamaState

SUFFIX = ".lpcache"


class LlamaDiskCache(BaseLlamaCache):
    """States saved in `cache_dir`, least recently written dropped first once they pass `capacity_bytes`."""

    def __init__(self, cache_dir: str = ".cache/llama_cache", capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.cache_dir = os.fspath(cache_dir)
        os.makedirs(self.cache_dir, exist_ok=True)
        self._keys: dict[tuple[int, ...], str] = {}
        for name in sorted(os.listdir(self.cache_dir)):
            if name.endswith(SUFFIX):
                ids = self._read_ids(os.path.join(self.cache_dir, name))
                if ids is not None:
                    self._keys[ids] = name

    @staticmethod
    def _read_ids(path: str) -> tuple[int, ...] | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                return tuple(int(t) for t in z["input_ids"])
        except (OSError, ValueError, KeyError, EOFError):
            return None  # not one of ours, or damaged: ignored

    @property
    def cache_size(self) -> int:
        total = 0
        for name in self._keys.values():
            try:
                total += os.path.getsize(os.path.join(self.cache_dir, name))
            except OSError:
                pass
        return total

    def _cached_keys(self) -> Iterable[tuple[int, ...]]:
        return self._keys

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        found = self._find_prefix_key(key)
        path = os.path.join(self.cache_dir, self._keys.pop(found))
        try:
            with np.load(path, allow_pickle=False) as z:
                ids = np.asarray(z["input_ids"], dtype=np.intc)
                state = LlamaState(input_ids=ids, scores=np.asarray(z["scores"], dtype=np.single), n_tokens=len(ids),
                                   llama_state=bytes(z["llama_state"].tobytes()),
                                   llama_state_size=int(z["llama_state"].size), seed=int(z["seed"][0]))
        except (OSError, ValueError, KeyError, EOFError, IndexError):
            raise KeyError(f"cached state {os.path.basename(path)} can't be read") from None
        finally:
            try:
                os.remove(path)
            except OSError:
                pass
        return state

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        from ..util.fileio import atomic_write

        k = tuple(int(t) for t in key)
        name = hashlib.sha256(np.asarray(k, dtype=np.int64).tobytes()).hexdigest()[:32] + SUFFIX
        buf = io.BytesIO()
        seed = value.seed if value.seed is not None else LLAMA_DEFAULT_SEED
        np.savez(buf, input_ids=np.asarray(k, dtype=np.int32), scores=np.asarray(value.scores, dtype=np.float32),
                 llama_state=np.frombuffer(bytes(value.llama_state), dtype=np.uint8),
                 seed=np.asarray([seed], dtype=np.uint64))
        with atomic_write(os.path.join(self.cache_dir, name)) as f:
            f.write(buf.getvalue())
        self._keys.pop(k, None)
        self._keys[k] = name
        while self.cache_size > self.capacity_bytes and len(self._keys) > 1:
            oldest = next(iter(self._keys))
            try:
                os.remove(os.path.join(self.cache_dir, self._keys.pop(oldest)))
            except OSError:
                pass
