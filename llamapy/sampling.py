"""Token sampling: the reference's sampler chain, step for step.

Default chain (mirostat 0): logit bias -> penalties -> top-k -> typical -> top-p -> min-p ->
temperature -> draw. Mirostat 1/2: logit bias -> temperature -> mirostat. The draw uses the same
generator as the reference (std::mt19937 seeded with the seed, std::discrete_distribution over the
candidates' probabilities), so a seed picks the same token from the same logits.
`temp <= 0` keeps only the most likely token: greedy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .errors import LlamapyError

DEFAULT_SEED = 0xFFFFFFFF  # the reference's "pick a random seed"
MIROSTAT_M = 100


@dataclass
class SamplerParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64           # -1: the whole history
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1                    # -1: random
    logit_bias: dict = field(default_factory=dict)   # token id -> bias (float('-inf') bans it)
    ignore_eos: bool = False
    n_probs: int = 0
    min_keep: int = 0

    def check(self) -> None:
        if self.mirostat not in (0, 1, 2):
            raise LlamapyError(f"--mirostat {self.mirostat}: use 0, 1 or 2")
        if self.repeat_last_n < -1:
            raise LlamapyError(f"--repeat-last-n {self.repeat_last_n}: use -1 (whole context) or more")


class MT19937:
    """std::mt19937 with std::generate_canonical<double, 53> and std::discrete_distribution (libstdc++)."""

    def __init__(self, seed: int):
        self._rs = np.random.RandomState(seed & 0xFFFFFFFF)

    def next_u32(self) -> int:
        return int(self._rs.randint(0, 2**32, dtype=np.uint64))

    def canonical(self) -> float:
        lo = self.next_u32()
        hi = self.next_u32()
        v = (lo + hi * 2.0**32) / 2.0**64
        return v if v < 1.0 else math.nextafter(1.0, 0.0)

    def discrete(self, probs: np.ndarray) -> int:
        if len(probs) < 2:  # libstdc++ keeps no table for fewer than two weights and draws nothing
            return 0
        w = probs.astype(np.float64)
        cp = np.cumsum(w / np.cumsum(w)[-1])  # normalised, then summed, in order
        cp[-1] = 1.0
        return int(np.searchsorted(cp, self.canonical(), side="left"))


def resolve_seed(seed: int) -> int:
    """The seed to use: the given one, or a random one for -1 (as the reference)."""
    if seed < 0 or seed == DEFAULT_SEED:
        return int(time.time_ns() & 0xFFFFFFFF) ^ int.from_bytes(np.random.bytes(4), "little")
    return seed & 0xFFFFFFFF


class Candidates:
    """The reference's llama_token_data_array: ids, logits and probabilities, and whether they are sorted."""

    def __init__(self, logits: np.ndarray):
        self.logit = np.asarray(logits, dtype=np.float32).copy()
        self.id = np.arange(len(self.logit), dtype=np.int64)
        self.p = np.zeros(len(self.logit), dtype=np.float32)
        self.sorted = False

    def __len__(self) -> int:
        return len(self.id)

    def keep(self, idx) -> None:
        self.id, self.logit, self.p = self.id[idx], self.logit[idx], self.p[idx]

    def sort(self) -> None:
        if not self.sorted:
            self.keep(np.argsort(-self.logit, kind="stable"))
            self.sorted = True

    def softmax(self) -> None:
        self.sort()
        with np.errstate(invalid="ignore", over="ignore"):
            # float32 differences, exp rounded from double: the reference's expf to the last bit, nearly always
            e = np.exp((self.logit - self.logit[0]).astype(np.float64)).astype(np.float32)
        e[np.isnan(e)] = 0.0
        total = np.cumsum(e, dtype=np.float32)[-1]  # summed in order, in float32
        self.p = (e / total).astype(np.float32)


# ---- the chain's steps (each mirrors a reference sampler) ------------------------------------

def apply_logit_bias(c: Candidates, bias: dict) -> None:
    for tok, b in bias.items():
        if 0 <= tok < len(c):
            c.logit[tok] += np.float32(b)


def apply_penalties(c: Candidates, history: Sequence[int], last_n: int, repeat: float, freq: float,
                    present: float) -> None:
    if last_n == 0 or (repeat == 1.0 and freq == 0.0 and present == 0.0):
        return
    recent = list(history)[-last_n:] if last_n > 0 else list(history)
    if not recent:
        return
    toks, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    pos = np.full(len(c), -1, dtype=np.int64)
    pos[c.id] = np.arange(len(c))
    ok = (toks >= 0) & (toks < len(pos))
    toks, counts = toks[ok], counts[ok]
    where = pos[toks]
    keep = where >= 0
    where, counts = where[keep], counts[keep].astype(np.float32)
    lg = c.logit[where]
    lg = np.where(lg <= 0, lg * np.float32(repeat), lg / np.float32(repeat)).astype(np.float32)
    c.logit[where] = lg - (counts * np.float32(freq) + np.float32(present))
    c.sorted = False


def apply_top_k(c: Candidates, k: int) -> None:
    if k <= 0:
        k = len(c)
    k = min(k, len(c))
    if not c.sorted:
        if k < len(c):
            part = np.argpartition(-c.logit, k - 1)[:k]
            c.keep(part[np.argsort(-c.logit[part], kind="stable")])
        else:
            c.keep(np.argsort(-c.logit, kind="stable"))
        c.sorted = True
    else:
        c.keep(slice(0, k))


def apply_typical(c: Candidates, p: float, min_keep: int) -> None:
    if p >= 1.0:
        return
    c.softmax()
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(c.p.astype(np.float64)).astype(np.float32)
        terms = (-c.p * logp).astype(np.float32)
    entropy = np.cumsum(terms, dtype=np.float32)[-1]  # summed in order, in float32
    shifted = np.abs(-logp - entropy)
    order = np.argsort(shifted, kind="stable")
    cum = np.cumsum(c.p[order], dtype=np.float32)
    # the reference compares i >= min_keep - 1 in unsigned arithmetic: with min_keep 0 it never cuts
    first_i = (min_keep - 1) if min_keep > 0 else len(order)
    hits = np.nonzero((cum > np.float32(p)) & (np.arange(len(order)) >= first_i))[0]
    last = int(hits[0]) + 1 if len(hits) else len(order)
    c.keep(order[:last])
    c.sorted = False


def apply_top_p(c: Candidates, p: float, min_keep: int) -> None:
    if p >= 1.0:
        return
    c.softmax()
    cum = np.cumsum(c.p, dtype=np.float32)
    hits = np.nonzero((cum >= np.float32(p)) & (np.arange(1, len(c) + 1) >= min_keep))[0]
    if len(hits):
        c.keep(slice(0, int(hits[0]) + 1))


def apply_min_p(c: Candidates, p: float, min_keep: int) -> None:
    if p <= 0.0 or not len(c):
        return
    if not c.sorted:
        min_logit = np.float32(c.logit.max() + np.float32(math.log(p)))
        sel = np.nonzero(c.logit >= min_logit)[0]
        if len(sel) >= min_keep:
            c.keep(sel)
            return
        c.sort()
    min_logit = np.float32(c.logit[0] + np.float32(math.log(p)))
    i = 1
    while i < len(c) and not (c.logit[i] < min_logit and i >= min_keep):
        i += 1
    c.keep(slice(0, i))


def apply_temp(c: Candidates, temp: float) -> None:
    if temp <= 0.0:
        best = int(np.argmax(c.logit))  # the first of equal maxima, as the reference
        lg = np.full(len(c), -np.inf, dtype=np.float32)
        lg[best] = c.logit[best]
        c.logit = lg
        return
    c.logit = (c.logit / np.float32(temp)).astype(np.float32)


class Sampler:
    """Picks the next token from logits; holds the generator and mirostat state of one sequence."""

    def __init__(self, params: SamplerParams, n_vocab: int, eog_ids: Iterable[int] = ()):
        params.check()
        self.params = params
        self.n_vocab = n_vocab
        self.seed = resolve_seed(params.seed)
        self.rng = MT19937(self.seed)
        self.mu = 2.0 * params.mirostat_tau
        self.bias = {int(t): float(b) for t, b in params.logit_bias.items()}
        if params.ignore_eos:
            for t in eog_ids:
                self.bias[int(t)] = float("-inf")
        self.last_probs: list[tuple[int, float]] = []

    def reset(self) -> None:
        """Start over: the generator from its seed, mirostat's mu from 2 * tau."""
        self.rng = MT19937(self.seed)
        self.mu = 2.0 * self.params.mirostat_tau

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> Candidates:
        """The candidates left after every step of the chain but the draw (softmaxed)."""
        p = self.params
        if len(logits) != self.n_vocab:
            raise LlamapyError(f"sampler: {len(logits)} logits, expected {self.n_vocab}")
        c = Candidates(logits)
        apply_logit_bias(c, self.bias)
        if p.mirostat == 0:
            apply_penalties(c, history, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
            apply_top_k(c, p.top_k)
            apply_typical(c, p.typical_p, p.min_keep)
            apply_top_p(c, p.top_p, p.min_keep)
            apply_min_p(c, p.min_p, p.min_keep)
        apply_temp(c, p.temp)
        c.softmax()
        return c

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The next token id."""
        p = self.params
        c = self.candidates(logits, history)
        if p.mirostat == 1:
            n = min(MIROSTAT_M - 1, len(c) - 1)
            if n > 0:
                i = np.arange(n, dtype=np.float32)
                t = np.log((i + 2) / (i + 1)).astype(np.float32)
                with np.errstate(divide="ignore", invalid="ignore"):
                    b = np.log(c.p[:n] / c.p[1:n + 1]).astype(np.float32)
                s_hat = float(np.sum(t * b, dtype=np.float32) / np.sum(t * t, dtype=np.float32))
            else:
                s_hat = 1.0
            eps = s_hat - 1
            try:
                k = ((eps * 2.0 ** self.mu) / (1 - self.n_vocab ** (-eps))) ** (1 / s_hat)
            except (ZeroDivisionError, OverflowError):
                k = float("inf")
            k = int(k) if math.isfinite(k) and k < 2**31 else len(c)
            apply_top_k(c, max(k, 1))
            c.softmax()
        elif p.mirostat == 2:
            with np.errstate(divide="ignore"):
                surprise = -np.log2(c.p)
            over = np.nonzero(surprise > self.mu)[0]
            c.keep(slice(0, max(1, int(over[0]) if len(over) else len(c))))
            c.softmax()
        idx = self.rng.discrete(c.p)
        if p.mirostat:
            self.mu -= p.mirostat_eta * (-math.log2(float(c.p[idx])) - p.mirostat_tau)
        if p.n_probs > 0:
            n = min(p.n_probs, len(c))
            self.last_probs = [(int(c.id[i]), float(c.p[i])) for i in range(n)]
        return int(c.id[idx])
