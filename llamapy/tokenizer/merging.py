"""What the SentencePiece and BPE tokenizers share (llama.cpp's llm_tokenizer_spm and llm_tokenizer_bpe):
the symbol merging loop (neighbouring symbols merge, the best-ranked pair first, until no pair ranks), the
symbols' token ids, and the word cache."""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any


def merge_symbols(sym: list[Any], rank: Callable[[Any, Any], Any]) -> list[Any]:
    """Merge neighbours of `sym` (strings or bytes) in place and return it; a symbol merged into its left
    neighbour becomes empty. rank(a, b): the pair's rank, lowest first (ties: the leftmost pair), or None
    when the pair does not merge."""
    n = len(sym)
    if n == 0:
        return sym
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        r = rank(sym[i], sym[i + 1])
        if r is not None:
            heap.append((r, i, i + 1, len(sym[i]) + len(sym[i + 1])))
    heapq.heapify(heap)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        ls, rs = sym[left], sym[right]
        if not ls or not rs or len(ls) + len(rs) != size:  # stale: one side has merged since
            continue
        merged = ls + rs
        sym[left] = merged
        sym[right] = rs[:0]
        nx = nxt[right]
        nxt[left] = nx
        if nx >= 0:
            prv[nx] = left
        p = prv[left]
        if p >= 0:
            r = rank(sym[p], merged)
            if r is not None:
                heapq.heappush(heap, (r, p, left, len(sym[p]) + len(merged)))
        if nx >= 0:
            r = rank(merged, sym[nx])
            if r is not None:
                heapq.heappush(heap, (r, left, nx, len(merged) + len(sym[nx])))
    return sym


def uncached(owner: Any, words: list[str], limit: int) -> tuple[dict[str, Any], list[str]]:
    """owner.cache (word -> ids) and the words missing from it. When they would not fit in `limit`, the cache
    starts over as a new dict (other threads keep reading the old one) and every word is missing."""
    cache: dict[str, Any] = owner.cache
    missing = [w for w in set(words) if w not in cache]
    if missing and len(cache) + len(missing) > limit:
        owner.cache = cache = {}
        missing = list(set(words))
    return cache, missing


def symbol_ids(sym: list[Any], vocab: dict[Any, int], fallback: Callable[[Any], Iterable[int]]) -> list[int]:
    """The token ids of merged symbols: a symbol's own id, else what fallback(symbol) gives (its bytes')."""
    out: list[int] = []
    for s in sym:
        if not s:
            continue
        t = vocab.get(s)
        if t is not None:
            out.append(t)
        else:
            out.extend(fallback(s))
    return out
