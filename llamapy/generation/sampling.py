"""Token sampling: the reference's sampler chain, step for step.

Default chain (mirostat 0): logit bias -> penalties -> top-k -> typical -> top-p -> min-p ->
temperature -> draw. Mirostat 1/2: logit bias -> temperature -> mirostat. The draw uses the same
generator as the reference (std::mt19937 seeded with the seed, std::discrete_distribution over the
candidates' probabilities), so a seed picks the same token from the same logits.
`temp <= 0` keeps only the most likely token: greedy.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import LlamapyError
from .params import SamplerParams

DEFAULT_SEED = 0xFFFFFFFF  # the reference's "pick a random seed"
MIROSTAT_M = 100


class MT19937:
    """std::mt19937 with std::generate_canonical<double, 53> and std::discrete_distribution (libstdc++)."""

    def __init__(self, seed: int):
        self._seed = seed & 0xFFFFFFFF
        self._rs = None  # made on the first draw: numpy.random costs ~15 ms to import, and the C chain draws itself

    def next_u32(self) -> int:
        if self._rs is None:
            self._rs = np.random.RandomState(self._seed)
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
        return int(time.time_ns() & 0xFFFFFFFF) ^ int.from_bytes(os.urandom(4), "little")
    return seed & 0xFFFFFFFF


class Candidates:
    """The reference's llama_token_data_array: ids, logits and probabilities, and whether they are sorted."""

    def __init__(self, logits: np.ndarray, ids: np.ndarray | None = None, sorted: bool = False):
        self.logit = np.array(logits, dtype=np.float32)
        self.id = np.arange(len(self.logit), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        self.p = np.zeros(len(self.logit), dtype=np.float32)
        self.sorted = sorted

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


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits, largest first (equal ones by index), without sorting them all."""
    from ..engine.native import ffi, lib

    x = np.ascontiguousarray(logits, dtype=np.float32)
    idx = np.empty(min(k, len(x)), dtype=np.int32)
    m = lib.lp_top_k(ffi.from_buffer("float[]", x), len(x), k, ffi.from_buffer("int32_t[]", idx))
    return idx[:m]


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


def _f32(x: float) -> float:
    """x rounded to float32 (the reference samples in float)."""
    return float(np.float32(x))


class Sampler:
    """Picks the next token from logits; holds the generator and mirostat state of one sequence.

    The chain runs in C (csrc/engine_sample.c, one call per token); `native=False` runs the same steps in
    numpy below, the readable version the C one is tested against.
    """

    def __init__(self, params: SamplerParams, n_vocab: int, eog_ids: Iterable[int] = (), native: bool = True):
        params.check()
        self.params = params
        self.n_vocab = n_vocab
        self.seed = resolve_seed(params.seed)
        self.rng = MT19937(self.seed)
        self._mu = _f32(2.0 * params.mirostat_tau)
        self.bias = {int(t): float(b) for t, b in params.logit_bias.items()}
        if params.ignore_eos:
            for t in eog_ids:
                self.bias[int(t)] = float("-inf")
        self.last_probs: list[tuple[int, float]] = []
        self._c = None
        if native:
            self._init_native()

    def _init_native(self) -> None:
        from ..engine.native import ffi, lib

        p = self.params
        c = lib.lp_sampler_new(self.seed, self.n_vocab)
        if c == ffi.NULL:
            raise LlamapyError(f"out of memory for a sampler over {self.n_vocab} tokens")
        self._c = ffi.gc(c, lib.lp_sampler_free)
        lib.lp_sampler_reset(self._c, self.seed, self._mu)
        cp = ffi.new("lp_sampler_params *")
        cp.temp, cp.top_k, cp.top_p, cp.min_p, cp.typical_p = p.temp, p.top_k, p.top_p, p.min_p, p.typical_p
        cp.repeat_penalty, cp.repeat_last_n = p.repeat_penalty, p.repeat_last_n
        cp.presence_penalty, cp.frequency_penalty = p.presence_penalty, p.frequency_penalty
        cp.mirostat, cp.mirostat_tau, cp.mirostat_eta = p.mirostat, p.mirostat_tau, p.mirostat_eta
        cp.min_keep = p.min_keep
        self._cp = cp
        self._bias_ids = ffi.new("int32_t[]", list(self.bias)) if self.bias else ffi.NULL
        self._bias_vals = ffi.new("float[]", list(self.bias.values())) if self.bias else ffi.NULL
        self._hist = ffi.new("int32_t[]", max(1, p.repeat_last_n if p.repeat_last_n > 0 else 1))
        self._penalize = p.mirostat == 0 and p.repeat_last_n != 0 and (
            p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0)
        self._n_keep_probs = max(1, p.n_probs)
        self._cand_ids = ffi.new("int32_t[]", self._n_keep_probs)
        self._cand_p = ffi.new("float[]", self._n_keep_probs)
        self._n_cand = ffi.new("int32_t *")

    @property
    def mu(self) -> float:
        """Mirostat's current target surprise."""
        if self._c is not None:
            from ..engine.native import lib

            return float(lib.lp_sampler_mu(self._c))
        return self._mu

    def reset(self) -> None:
        """Start over: the generator from its seed, mirostat's mu from 2 * tau."""
        self.rng = MT19937(self.seed)
        self._mu = _f32(2.0 * self.params.mirostat_tau)
        if self._c is not None:
            from ..engine.native import lib

            lib.lp_sampler_reset(self._c, self.seed, self._mu)

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> Candidates:
        """The candidates left after every step of the chain but the draw (softmaxed)."""
        p = self.params
        if len(logits) != self.n_vocab:
            raise LlamapyError(f"sampler: {len(logits)} logits, expected {self.n_vocab}")
        if p.mirostat == 0 and 0 < p.top_k < len(logits):
            # top-k first on the whole vocabulary (in C), after the bias and penalties that precede it
            lg = np.asarray(logits, dtype=np.float32)
            penalize = p.repeat_last_n != 0 and len(history) > 0 and (
                p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0)
            if self.bias or penalize:
                full = Candidates(lg)
                apply_logit_bias(full, self.bias)
                apply_penalties(full, history, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty,
                                p.presence_penalty)
                lg = full.logit
            idx = top_k_indices(lg, p.top_k)
            c = Candidates(lg[idx], ids=idx, sorted=True)
        else:
            c = Candidates(logits)
            apply_logit_bias(c, self.bias)
            if p.mirostat == 0:
                apply_penalties(c, history, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty,
                                p.presence_penalty)
                apply_top_k(c, p.top_k)
        if p.mirostat == 0:
            apply_typical(c, p.typical_p, p.min_keep)
            apply_top_p(c, p.top_p, p.min_keep)
            apply_min_p(c, p.min_p, p.min_keep)
        apply_temp(c, p.temp)
        c.softmax()
        return c

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The next token id."""
        if len(logits) != self.n_vocab:
            raise LlamapyError(f"sampler: {len(logits)} logits, expected {self.n_vocab}")
        if self._c is not None:
            return self._sample_native(logits, history)
        return self._sample_numpy(logits, history)

    def _sample_native(self, logits: np.ndarray, history: Sequence[int]) -> int:
        from ..engine.native import ffi, lib

        p = self.params
        hist, n_hist = ffi.NULL, 0
        if self._penalize and len(history):
            recent = list(history[-p.repeat_last_n:]) if p.repeat_last_n > 0 else list(history)
            if p.repeat_last_n < 0:
                hist = ffi.new("int32_t[]", recent)
            else:
                hist = self._hist
                hist[0:len(recent)] = recent
            n_hist = len(recent)
        x = logits if isinstance(logits, np.ndarray) and logits.dtype == np.float32 else np.asarray(logits, np.float32)
        tok = lib.lp_sampler_sample(self._c, self._cp, ffi.from_buffer("float[]", np.ascontiguousarray(x)),
                                    self._bias_ids, self._bias_vals, len(self.bias), hist, n_hist,
                                    self._n_keep_probs, self._cand_ids, self._cand_p, self._n_cand)
        if p.n_probs > 0:
            self.last_probs = [(int(self._cand_ids[i]), float(self._cand_p[i])) for i in range(self._n_cand[0])]
        return int(tok)

    def _sample_numpy(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.params
        c = self.candidates(logits, history)
        if p.mirostat == 1:  # in float, as the reference
            n = min(MIROSTAT_M - 1, len(c) - 1)
            tb = tt = np.float32(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                for i in range(n):
                    t = np.float32(_f32(math.log(_f32((i + 2) / (i + 1)))))
                    ratio = float(c.p[i] / c.p[i + 1])
                    b = np.float32(_f32(math.log(ratio)) if ratio > 0 else (-np.inf if ratio == 0 else np.nan))
                    tb = np.float32(tb + np.float32(t * b))
                    tt = np.float32(tt + np.float32(t * t))
                s_hat = np.float32(tb / tt)
            eps = np.float32(s_hat - 1)
            try:
                k = _f32((float(eps) * _f32(2.0 ** self._mu)) / _f32(1 - _f32(float(self.n_vocab) ** -float(eps))))
                k = _f32(k ** _f32(1 / float(s_hat)))
            except (ZeroDivisionError, OverflowError, ValueError):
                k = float("inf")
            kk = int(k) if 1 <= k < 2**31 else (1 if k < 1 else len(c))
            apply_top_k(c, kk)
            c.softmax()
        elif p.mirostat == 2:
            with np.errstate(divide="ignore"):
                surprise = -np.log2(c.p.astype(np.float64)).astype(np.float32)
            over = np.nonzero(surprise > np.float32(self._mu))[0]
            c.keep(slice(0, max(1, int(over[0]) if len(over) else len(c))))
            c.softmax()
        idx = self.rng.discrete(c.p)
        if p.mirostat:
            e = _f32(_f32(-math.log2(float(c.p[idx]))) - _f32(p.mirostat_tau))
            self._mu = _f32(self._mu - _f32(_f32(p.mirostat_eta) * e))
        if p.n_probs > 0:
            n = min(p.n_probs, len(c))
            self.last_probs = [(int(c.id[i]), float(c.p[i])) for i in range(n)]
        return int(c.id[idx])
