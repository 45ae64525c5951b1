"""Token sampling: the reference's sampler chain, step for step.

Chain (mirostat 0): logit bias -> the steps in `SamplerParams.samplers` order (by default penalties ->
DRY -> top-k -> typical -> top-p -> min-p -> XTC -> temperature, dynamic when dynatemp_range > 0) -> draw.
With top_n_sigma >= 0: logit bias -> top-k -> temperature -> top-n-sigma -> draw. Mirostat 1/2: logit
bias -> temperature -> mirostat. The draw uses the same generator as the reference (std::mt19937 seeded
with the seed, std::discrete_distribution over the candidates' probabilities), and XTC a second one
seeded alike (std::uniform_real_distribution<float>), so a seed picks the same token from the same logits.
`temp <= 0` keeps only the most likely token: greedy.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import LlamapyError
from .params import SAMPLER_NAMES, SamplerParams

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

    def canonical_float(self) -> float:
        """std::uniform_real_distribution<float>(0, 1): one draw, in float."""
        v = np.float32(self.next_u32()) / np.float32(2.0**32)
        return float(v if v < 1.0 else np.nextafter(np.float32(1.0), np.float32(0.0)))

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
    pos = np.full(int(c.id.max()) + 1 if len(c) else 0, -1, dtype=np.int64)  # token -> its candidate
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
    from ..native import ffi, lib

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
            c.keep(top_k_indices(c.logit, k))  # equal logits by position, as the C chain
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


def apply_temp_ext(c: Candidates, temp: float, delta: float, exponent: float) -> None:
    """Temperature; with delta > 0, between temp - delta and temp + delta as the candidates' normalised
    entropy (to the power `exponent`) says."""
    if delta <= 0:
        apply_temp(c, temp)
        return
    if len(c) <= 1:
        return
    min_t, max_t = max(np.float32(0), np.float32(temp) - np.float32(delta)), np.float32(temp) + np.float32(delta)
    max_entropy = -np.float32(math.log(np.float32(1) / np.float32(len(c))))
    c.softmax()
    entropy = np.float32(0)
    for pi in c.p:  # in float, in order
        if pi > 0:
            entropy = np.float32(entropy - np.float32(pi * np.float32(math.log(pi))))
    norm = np.float32(entropy / max_entropy)
    apply_temp(c, float(np.float32(min_t + np.float32((max_t - min_t) * np.float32(norm ** np.float32(exponent))))))


def apply_xtc(c: Candidates, probability: float, threshold: float, min_keep: int, rng: MT19937) -> None:
    """Exclude the top choices: with the given probability (one draw from `rng` whenever it runs on two or
    more candidates), drop all candidates at or above the threshold but the least likely of them."""
    if probability <= 0 or threshold > 0.5 or len(c) < 2:
        return
    if rng.canonical_float() > np.float32(probability):
        return
    c.softmax()
    last = 0
    for i in range(len(c)):
        if c.p[i] >= np.float32(threshold):
            last = i
        else:
            break
    if len(c) - last >= max(min_keep, 0) and last > 0:
        c.keep(slice(last, None))


def apply_top_n_sigma(c: Candidates, n: float) -> None:
    """Keep the logits within n standard deviations of the largest."""
    mx = c.logit.max()
    total = np.float32(0)
    for v in c.logit:
        total = np.float32(total + v)
    mean = np.float32(total / np.float32(len(c)))
    acc = np.float32(0)
    for v in c.logit:
        d = float(np.float32(v - mean))
        acc = np.float32(float(acc) + d * d)
    sd = np.float32(math.sqrt(np.float32(acc / np.float32(len(c)))))
    lim = np.float32(mx - np.float32(np.float32(n) * sd))
    c.logit = np.where(c.logit < lim, np.float32(-np.inf), c.logit).astype(np.float32)
    c.softmax()


# ---- DRY ("don't repeat yourself") ---------------------------------------------------------------

MAX_BREAKER_CHARS = 40  # a sequence breaker is cut to this many bytes
MAX_BREAKER_TAIL = 20   # and its tokenized tail to this many tokens


_TEXTS: dict = {}


def _token_texts(tokenizer) -> list[bytes]:
    """Every token's text as the reference detokenizes it alone (special tokens spelled out); kept per
    tokenizer."""
    hit = _TEXTS.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    from ..tokenizer import bpe

    words = []
    clean = tokenizer.model == "gpt2" and tokenizer.pre not in bpe.NO_CLEAN_SPACES
    for i in range(tokenizer.n_vocab):
        w = tokenizer.token_to_piece(i, True)
        if tokenizer.add_space_prefix and w.startswith(b" "):
            w = w[1:]
        if clean:
            w = bpe.clean_spaces(w)
        words.append(w)
    _TEXTS[id(tokenizer)] = (tokenizer, words)
    return words


def dry_breaker_sequences(tokenizer, breakers: Sequence[str]) -> list[list[int]]:
    """The token sequences (text order) that break a DRY repeat, as the reference finds them: every token
    whose text holds a breaker, alone; and every token whose text ends with the start of a breaker,
    followed by the tokens of the breaker's rest."""
    words = _token_texts(tokenizer)
    out: list[list[int]] = []
    for text in breakers:
        br = text.encode("utf-8", "surrogateescape")[:MAX_BREAKER_CHARS]
        if not br:
            continue
        tails: dict[int, list[tuple[int, ...]]] = {}
        for tok, w in enumerate(words):
            if br in w:
                seqs = tails.setdefault(tok, [])
                if () not in seqs:
                    seqs.append(())
                continue
            pos = w.find(br[:1])
            while pos >= 0:
                n = min(len(br), len(w) - pos)
                if w[pos:pos + n] == br[:n]:
                    rest = br[n:].decode("utf-8", "surrogateescape")
                    tail = tuple(tokenizer.encode(rest, add_special=False, parse_special=False)[:MAX_BREAKER_TAIL])
                    seqs = tails.setdefault(tok, [])
                    if tail not in seqs:
                        seqs.append(tail)
                pos = w.find(br[:1], pos + 1)
        for tok, seqs in tails.items():
            out.extend([tok, *t] for t in seqs)
    return out


def apply_dry(c: Candidates, history: Sequence[int], p: SamplerParams, breakers: Sequence[Sequence[int]]) -> None:
    """DRY: a token that would extend a repeat of the history longer than dry_allowed_length loses
    multiplier * base ** (length - allowed length) from its logit; a sequence breaker ends repeats."""
    if not p.dry_enabled():
        return
    last_n = p.dry_penalty_last_n
    h = list(history)[-last_n:] if last_n > 0 else list(history)
    n = len(h)
    if n <= p.dry_allowed_length:
        return

    def rat(i: int) -> int:  # i tokens back from the end
        return h[n - 1 - i]

    by_head: dict[int, list[tuple[int, ...]]] = {}
    for seq in breakers:
        by_head.setdefault(int(seq[0]), []).append(tuple(int(t) for t in seq[1:]))
    # a breaker too close to the end limits how long a repeat may be
    rep_limit = n
    for i in range(n):
        longest = -1
        for tail in by_head.get(rat(i), ()):
            if longest < len(tail) <= i and all(tail[o] == rat(i - o - 1) for o in range(len(tail))):
                longest = len(tail)
        if longest >= 0:
            rep_limit = i - longest
            break
    if rep_limit < p.dry_allowed_length:
        return
    # rep[k]: how many tokens ending k back from the end repeat the end of the history (plainly, not Z-boxes)
    longest_rep: dict[int, int] = {}
    for k in range(1, n):
        m = 0
        while m + k < n and rat(m) == rat(m + k):
            m += 1
        m = min(m, rep_limit)
        if m >= p.dry_allowed_length:
            tok = rat(k - 1)  # the token that followed the repeat
            longest_rep[tok] = max(longest_rep.get(tok, -1), m)
    c.sorted = False
    max_exp = 0
    base = np.float32(p.dry_base)
    if base > np.float32(1.000001):
        max_exp = int(np.float32(88.7228391) / np.float32(math.log(base)))
    for i, tok in enumerate(c.id.tolist()):
        if tok not in longest_rep or () in by_head.get(tok, ()):
            continue
        e = longest_rep[tok] - p.dry_allowed_length
        if max_exp > 0 and e > max_exp:
            e = max_exp
        pen = np.float32(float(np.float32(p.dry_multiplier)) * math.pow(float(base), e))
        c.logit[i] = np.float32(c.logit[i] - pen)


_BREAKERS: dict = {}


def _cached_breakers(tokenizer, texts: tuple[str, ...]) -> list[list[int]]:
    """dry_breaker_sequences, computed once per tokenizer and breaker list (it reads the whole vocabulary)."""
    key = (id(tokenizer), texts)
    hit = _BREAKERS.get(key)
    if hit is None or hit[0] is not tokenizer:
        hit = _BREAKERS[key] = (tokenizer, dry_breaker_sequences(tokenizer, texts))
    return hit[1]


def _f32(x: float) -> float:
    """x rounded to float32 (the reference samples in float)."""
    return float(np.float32(x))


class Sampler:
    """Picks the next token from logits; holds the generator and mirostat state of one sequence.

    The chain runs in C (csrc/sampler.c, one call per token); `native=False` runs the same steps in
    numpy below, the readable version the C one is tested against.
    DRY's sequence breakers are texts; `tokenizer` turns them into token sequences (without one they are
    none), or `dry_breakers` gives the token sequences themselves.
    """

    def __init__(self, params: SamplerParams, n_vocab: int, eog_ids: Iterable[int] = (), native: bool = True,
                 tokenizer=None, dry_breakers: Sequence[Sequence[int]] | None = None):
        params.check()
        self.params = params
        self.n_vocab = n_vocab
        self.seed = resolve_seed(params.seed)
        self.rng = MT19937(self.seed)
        self.xtc_rng = MT19937(self.seed)
        if dry_breakers is None:
            dry_breakers = []
            if params.dry_enabled() and tokenizer is not None and params.dry_sequence_breakers:
                dry_breakers = _cached_breakers(tokenizer, tuple(params.dry_sequence_breakers))
        self.dry_breakers = [list(map(int, b)) for b in dry_breakers if len(b)]
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
        from ..native import ffi, lib

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
        cp.dry_multiplier, cp.dry_base = p.dry_multiplier, p.dry_base
        cp.dry_allowed_length, cp.dry_penalty_last_n = p.dry_allowed_length, p.dry_penalty_last_n
        cp.xtc_probability, cp.xtc_threshold = p.xtc_probability, p.xtc_threshold
        cp.dynatemp_range, cp.dynatemp_exponent = p.dynatemp_range, p.dynatemp_exponent
        cp.top_n_sigma = p.top_n_sigma
        cp.n_samplers = len(p.samplers)
        for i, name in enumerate(p.samplers):
            cp.samplers[i] = SAMPLER_NAMES.index(name)
        self._cp = cp
        if self.dry_breakers:
            flat = [v for b in self.dry_breakers for v in (len(b), *b)]
            if lib.lp_sampler_set_dry_breakers(self._c, ffi.new("int32_t[]", flat), len(flat)) != 0:
                raise LlamapyError("DRY sequence breakers: a token id out of the vocabulary, or out of memory")
        self._bias_ids = ffi.new("int32_t[]", list(self.bias)) if self.bias else ffi.NULL
        self._bias_vals = ffi.new("float[]", list(self.bias.values())) if self.bias else ffi.NULL
        # the history the chain looks back on (-1: all it is given)
        uses = p.mirostat == 0 and p.top_n_sigma < 0
        pen = uses and "penalties" in p.samplers and p.repeat_last_n != 0 and (
            p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0)
        dry = uses and "dry" in p.samplers and p.dry_enabled()
        wins = ([p.repeat_last_n] if pen else []) + ([p.dry_penalty_last_n] if dry else [])
        self._penalize = bool(wins)
        self._hist_n = -1 if -1 in wins else max(wins, default=0)
        self._hist = ffi.new("int32_t[]", max(1, self._hist_n))
        self._n_keep_probs = max(1, p.n_probs)
        self._cand_ids = ffi.new("int32_t[]", self._n_keep_probs)
        self._cand_p = ffi.new("float[]", self._n_keep_probs)
        self._n_cand = ffi.new("int32_t *")

    @property
    def mu(self) -> float:
        """Mirostat's current target surprise."""
        if self._c is not None:
            from ..native import lib

            return float(lib.lp_sampler_mu(self._c))
        return self._mu

    def reset(self) -> None:
        """Start over: the generator from its seed, mirostat's mu from 2 * tau."""
        self.rng = MT19937(self.seed)
        self.xtc_rng = MT19937(self.seed)
        self._mu = _f32(2.0 * self.params.mirostat_tau)
        if self._c is not None:
            from ..native import lib

            lib.lp_sampler_reset(self._c, self.seed, self._mu)

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> Candidates:
        """The candidates left after every step of the chain but the draw (softmaxed). XTC, when it runs,
        draws from its generator."""
        p = self.params
        if len(logits) != self.n_vocab:
            raise LlamapyError(f"sampler: {len(logits)} logits, expected {self.n_vocab}")
        c = Candidates(logits)
        apply_logit_bias(c, self.bias)
        if p.mirostat != 0:
            apply_temp(c, p.temp)
        elif p.top_n_sigma >= 0:
            apply_top_k(c, p.top_k)
            apply_temp(c, p.temp)
            apply_top_n_sigma(c, p.top_n_sigma)
        else:
            for name in p.samplers:
                if name == "penalties":
                    apply_penalties(c, history, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty,
                                    p.presence_penalty)
                elif name == "dry":
                    apply_dry(c, history, p, self.dry_breakers)
                elif name == "top_k":
                    apply_top_k(c, p.top_k)
                elif name == "typ_p":
                    apply_typical(c, p.typical_p, p.min_keep)
                elif name == "top_p":
                    apply_top_p(c, p.top_p, p.min_keep)
                elif name == "min_p":
                    apply_min_p(c, p.min_p, p.min_keep)
                elif name == "xtc":
                    apply_xtc(c, p.xtc_probability, p.xtc_threshold, p.min_keep, self.xtc_rng)
                elif name == "temperature":
                    apply_temp_ext(c, p.temp, p.dynatemp_range, p.dynatemp_exponent)
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
        from ..native import ffi, lib

        p = self.params
        hist, n_hist = ffi.NULL, 0
        if self._penalize and len(history):
            recent = list(history[-self._hist_n:]) if self._hist_n > 0 else list(history)
            if self._hist_n < 0:
                hist = ffi.new("int32_t[]", recent)
            else:
                hist = self._hist
                hist[0:len(recent)] = recent
            n_hist = len(recent)
        x = logits if isinstance(logits, np.ndarray) and logits.dtype == np.float32 else np.asarray(logits, np.float32)
        tok = lib.lp_sampler_sample(self._c, self._cp, ffi.from_buffer("float[]", np.ascontiguousarray(x)),
                                    self._bias_ids, self._bias_vals, len(self.bias), hist, n_hist,
                                    self._n_keep_probs, self._cand_ids, self._cand_p, self._n_cand)
        if tok < 0:
            raise LlamapyError("sampler: out of memory")
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
