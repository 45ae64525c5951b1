"""llama-perplexity's saved logits and KL divergence: `--kl-divergence-base FILE` (or `--save-all-logits FILE`)
writes each scored token's log-probabilities (16 bits a value) while perplexity runs; `--kl-divergence` then
scores another model (or another engine, or other settings) against that file, as the reference does to
measure what quantization costs.

The file is the reference's own, so the two tools read each other's files (all little-endian):
    "_logits_", n_ctx (u32), n_vocab (i32), n_chunk (i32), the tokens (n_chunk * n_ctx, i32), then for each
    chunk n_ctx - 1 - n_ctx/2 rows of 2*ceil(n_vocab/2) + 4 u16: a row starts with two f32 (scale and the
    least log-probability kept, min_lp), then value i is round((logit_i - min_logit) / scale), so that
    log p_i = scale * value_i + min_lp; logits 16 or more below the top are stored as 0.
The tokens are the text's own (not the BOS each chunk starts with), so `--kl-divergence` needs no -f.
"""
from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from .errors import LlamapyError
from .util.fileio import atomic_write

MAGIC = b"_logits_"
_HEAD = struct.Struct("<8sIii")
MAX_CTX = 1 << 24      # larger n_ctx / n_chunk are not a file either tool writes


def row_width(n_vocab: int) -> int:
    """u16 values per stored row: the two f32 of the row's head first, the vocabulary padded to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def scored(n_ctx: int) -> int:
    """Rows scored (and stored) per chunk: the predictions of the second half, but for the chunk's last."""
    return n_ctx - 1 - n_ctx // 2


def _log_sum_exp(logits: np.ndarray, mx: np.ndarray) -> np.ndarray:
    """log sum exp(logit - max) per row: exp in f32, the sum in f64, the log rounded to f32 (the reference's)."""
    return np.log(np.exp(logits - mx[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)


def encode_rows(logits: np.ndarray) -> np.ndarray:
    """The stored rows of `logits` (rows, n_vocab) as the reference computes them (f32 arithmetic)."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    rows, n_vocab = logits.shape
    out = np.zeros((rows, row_width(n_vocab)), dtype=np.uint16)
    mx = logits.max(axis=1)
    mn = np.maximum(logits.min(axis=1), mx - np.float32(16))
    min_lp = (mn - mx) - _log_sum_exp(logits, mx)
    scale = (mx - mn) / np.float32(65535)
    head = out[:, :4].view(np.float32)   # two f32 per row
    head[:, 0] = scale
    head[:, 1] = min_lp
    live = scale != 0                     # a row of equal logits stays all zeros, as the reference leaves it
    if live.any():
        x, lo = logits[live], mn[live, None]
        inv = (np.float32(1) / scale[live])[:, None]
        q = np.rint(inv * (x - lo)).astype(np.int64) & 0xFFFF   # round half to even, kept to 16 bits
        out[live, 4:4 + n_vocab] = np.where(x > lo, q, 0)
    return out


def decode_rows(stored: np.ndarray, n_vocab: int) -> np.ndarray:
    """log p of every token (rows, n_vocab) from stored rows (f32, as the reference)."""
    head = np.ascontiguousarray(stored[:, :4]).view(np.float32)
    return head[:, :1] * stored[:, 4:4 + n_vocab].astype(np.float32) + head[:, 1:2]


class LogitsWriter:
    """Writes the saved-logits file of a perplexity run, chunk after chunk. A context manager: the file
    appears (atomically) when the block ends without an error; an error leaves no file behind."""

    def __init__(self, path: str, n_ctx: int, n_vocab: int, n_chunk: int, tokens: Sequence[int]):
        if len(tokens) < n_chunk * n_ctx:
            raise LlamapyError(f"{path}: {n_chunk} chunks of {n_ctx} need {n_chunk * n_ctx} tokens")
        self.path, self.n_ctx, self.n_vocab, self.n_chunk = path, n_ctx, n_vocab, n_chunk
        self._stack = ExitStack()
        self._written = 0
        try:
            self._f = self._stack.enter_context(atomic_write(path, "wb"))
        except OSError as e:
            raise LlamapyError(f"failed to open {path} for writing: {e.strerror}") from None
        self._f.write(_HEAD.pack(MAGIC, n_ctx, n_vocab, n_chunk))
        self._f.write(np.asarray(tokens[:n_chunk * n_ctx], dtype="<i4").tobytes())

    def add(self, logits: np.ndarray) -> None:
        """One chunk's scored rows: the logits of its positions n_ctx/2 .. n_ctx-2."""
        if logits.shape != (scored(self.n_ctx), self.n_vocab):
            raise LlamapyError(f"saved logits: a chunk has {scored(self.n_ctx)} rows of {self.n_vocab}, "
                               f"not {logits.shape}")
        self._f.write(encode_rows(logits).astype("<u2").tobytes())
        self._written += 1

    def __enter__(self) -> LogitsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and self._written != self.n_chunk:
            exc = LlamapyError(f"{self.path}: {self._written} of {self.n_chunk} chunks written")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._stack.__exit__(exc_type, exc, tb))


@dataclass
class SavedLogits:
    path: str
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray
    offset: int                     # where the first chunk's rows start

    def check_vocab(self, n_vocab: int) -> None:
        if n_vocab != self.n_vocab:
            raise LlamapyError(f"{self.path}: inconsistent vocabulary ({self.n_vocab} in the file vs "
                               f"{n_vocab} in the model)")

    def chunk(self, i: int) -> np.ndarray:
        """Chunk i's stored rows (rows, row_width), each row's head checked (a finite scale >= 0 and
        min_lp <= 0)."""
        rows = scored(self.n_ctx)
        width = row_width(self.n_vocab)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + i * rows * width * 2)
                data = f.read(rows * width * 2)
        except OSError as e:
            raise LlamapyError(f"{self.path}: failed reading log-probs for chunk {i}: {e.strerror}") from None
        if len(data) != rows * width * 2:
            raise LlamapyError(f"{self.path}: failed reading log-probs for chunk {i}")
        stored = np.frombuffer(data, dtype="<u2").reshape(rows, width)
        head = np.ascontiguousarray(stored[:, :4]).view(np.float32)
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(head).all(axis=1) & (head[:, 0] >= 0) & (head[:, 1] <= 0))
        if bad.any():
            r = int(np.argmax(bad))
            raise LlamapyError(f"{self.path}: chunk {i}, row {r}: scale {head[r, 0]!r} and least log-prob "
                               f"{head[r, 1]!r} are not a row of log-probabilities (corrupt file?)")
        return stored


def read_saved(path: str) -> SavedLogits:
    """Open and check a saved-logits file: the header's sizes against the file's length, the tokens against
    the vocabulary. The rows are read chunk by chunk (`SavedLogits.chunk`)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEAD.size)
            if len(head) < 8 or head[:8] != MAGIC:
                raise LlamapyError(f"{path} does not look like a file containing log-probabilities")
            if len(head) < _HEAD.size:
                raise LlamapyError(f"{path}: failed reading n_ctx, n_vocab, n_chunk (the file ends at {size} bytes)")
            _, n_ctx, nv, n_chunk = _HEAD.unpack(head)
            if not 3 <= n_ctx <= MAX_CTX:
                raise LlamapyError(f"{path}: n_ctx {n_ctx} out of range (3..{MAX_CTX})")
            if not 1 <= n_chunk <= MAX_CTX:
                raise LlamapyError(f"{path}: n_chunk {n_chunk} out of range (1..{MAX_CTX})")
            if not 1 <= nv <= 1 << 30:
                raise LlamapyError(f"{path}: n_vocab {nv} out of range")
            n_tok = n_ctx * n_chunk
            need = _HEAD.size + 4 * n_tok + n_chunk * scored(n_ctx) * row_width(nv) * 2
            if size != need:
                what = "cut short" if size < need else "has trailing bytes"
                raise LlamapyError(f"{path}: {size} bytes, but {n_chunk} chunks of {n_ctx} tokens with a vocabulary "
                                   f"of {nv} take {need}: the file {what}")
            tokens = np.frombuffer(f.read(4 * n_tok), dtype="<i4").astype(np.int32)
    except OSError as e:
        raise LlamapyError(f"failed to open {path}: {e.strerror}") from None
    if tokens.min() < 0 or tokens.max() >= nv:
        raise LlamapyError(f"{path}: a token id outside the vocabulary of {nv}")
    return SavedLogits(path, n_ctx, nv, n_chunk, tokens, _HEAD.size + 4 * n_tok)


@dataclass
class KLDStats:
    """The reference's running sums; nll in nats, p = probability of the text's next token."""
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[float] = field(default_factory=list)
    p_diff_values: list[float] = field(default_factory=list)

    def add(self, logits: np.ndarray, stored: np.ndarray, targets: np.ndarray) -> None:
        """Score rows of logits (rows, n_vocab) against their stored base rows; targets: the next tokens.
        Per row in f32 as the reference (the sums in f64)."""
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        n_vocab = logits.shape[1]
        idx = np.arange(len(targets))
        mx = logits.max(axis=1)
        norm = mx + _log_sum_exp(logits, mx)                 # log of the softmax's denominator
        nll = norm - logits[idx, targets]                    # f32 like everything per row
        base_lp = decode_rows(stored, n_vocab)
        nll_base = -base_lp[idx, targets]
        kept = base_lp > np.float32(-16)
        terms = np.exp(base_lp) * ((base_lp - logits) + norm[:, None])
        kld = np.where(kept, terms, np.float32(0)).sum(axis=1, dtype=np.float64)
        p_diff = np.exp(-nll) - np.exp(-nll_base)

        def total(v: np.ndarray) -> float:
            return float(v.astype(np.float64).sum())

        # the reference squares and multiplies the f32 values in f32, then sums in f64
        self.sum_nll += total(nll)
        self.sum_nll2 += total(nll * nll)
        self.sum_nll_base += total(nll_base)
        self.sum_nll_base2 += total(nll_base * nll_base)
        self.sum_nll_nll_base += total(nll * nll_base)
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        pd2 = (p_diff * p_diff).astype(np.float64)
        self.sum_p_diff += total(p_diff)
        self.sum_p_diff2 += float(pd2.sum())
        self.sum_p_diff4 += float((pd2 * pd2).sum())
        self.max_p_diff = max(self.max_p_diff, float(np.abs(p_diff).max(initial=0)))
        self.n_same_top += int((logits.argmax(axis=1) == base_lp.argmax(axis=1)).sum())
        self.count += len(targets)
        self.kld_values.extend(kld.astype(np.float32).tolist())
        self.p_diff_values.extend(p_diff.tolist())

    # -- the reference's figures ------------------------------------------------------------------------------
    @staticmethod
    def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
        if n < 1:
            return 0.0, 0.0
        f = s / n
        df = s2 / n - f * f
        return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

    def _cov(self) -> float:
        n = self.count
        if n < 10:
            return 0.0
        return (self.sum_nll_nll_base / n - (self.sum_nll / n) * (self.sum_nll_base / n)) / (n - 1)

    def ppl(self) -> tuple[float, float]:
        m, u = self._mean_unc(self.sum_nll, self.sum_nll2, self.count)
        return math.exp(m), math.exp(m) * u

    def ppl_base(self) -> tuple[float, float]:
        m, u = self._mean_unc(self.sum_nll_base, self.sum_nll_base2, self.count)
        return math.exp(m), math.exp(m) * u

    def log_ppl_ratio(self) -> tuple[float, float]:
        m, u = self._mean_unc(self.sum_nll, self.sum_nll2, self.count)
        mb, ub = self._mean_unc(self.sum_nll_base, self.sum_nll_base2, self.count)
        return m - mb, math.sqrt(max(0.0, u * u + ub * ub - 2 * self._cov()))

    def kld(self) -> tuple[float, float]:
        return self._mean_unc(self.sum_kld, self.sum_kld2, self.count)

    def p_diff_rms(self) -> tuple[float, float]:
        m, u = self._mean_unc(self.sum_p_diff2, self.sum_p_diff4, self.count)
        rms = math.sqrt(max(m, 0.0))
        return rms, (0.5 / rms * u if rms else 0.0)

    def same_top(self) -> tuple[float, float]:
        p = self.n_same_top / self.count if self.count else 0.0
        return p, math.sqrt(p * (1 - p) / (self.count - 1)) if self.count > 1 else 0.0

    def chunk_line(self, i: int) -> str:
        (ppl, pu), (lr, lru), (k, ku) = self.ppl(), self.log_ppl_ratio(), self.kld()
        (rms, rmsu), (top, topu) = self.p_diff_rms(), self.same_top()
        return (f"{i:4d}    {ppl:9.4f} ± {pu:9.4f}    {lr:10.5f} ± {lru:10.5f}    {k:10.5f} ± {ku:10.5f}"
                f"    {100 * rms:6.3f} ± {100 * rmsu:6.3f} %    {100 * top:6.3f} ± {100 * topu:6.3f} %")

    def summary(self) -> str:
        """The reference's closing statistics (empty under 100 scored tokens, as it prints none)."""
        if self.count < 100:
            return ""
        kv = sorted(self.kld_values)
        pv = sorted(self.p_diff_values)
        (ppl, pu), (pb, pbu) = self.ppl(), self.ppl_base()
        _, u = self._mean_unc(self.sum_nll, self.sum_nll2, self.count)
        _, ub = self._mean_unc(self.sum_nll_base, self.sum_nll_base2, self.count)
        cov = self._cov()
        lr, lru = self.log_ppl_ratio()
        ratio = math.exp(lr)
        diff_unc = math.sqrt(max(0.0, pu * pu + pbu * pbu - 2 * ppl * pb * cov))
        k, ku = self.kld()
        pm, pmu = self._mean_unc(self.sum_p_diff, self.sum_p_diff2, self.count)
        rms, rmsu = self.p_diff_rms()
        top, topu = self.same_top()
        lines = [
            "====== Perplexity statistics ======",
            f"Mean PPL(Q)                   : {ppl:10.6f} ± {pu:10.6f}",
            f"Mean PPL(base)                : {pb:10.6f} ± {pbu:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * cov / (u * ub) if u * ub else 0.0:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {lr:10.6f} ± {lru:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {ratio:10.6f} ± {ratio * lru:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {ppl - pb:10.6f} ± {diff_unc:10.6f}",
            "",
            "====== KL divergence statistics ======",
            f"Mean    KLD: {k:10.6f} ± {ku:10.6f}",
            f"Maximum KLD: {kv[-1]:10.6f}",
            f"99.9%   KLD: {percentile(kv, 0.999):10.6f}",
            f"99.0%   KLD: {percentile(kv, 0.990):10.6f}",
            f"Median  KLD: {median(kv):10.6f}",
            f"10.0%   KLD: {percentile(kv, 0.100):10.6f}",
            f" 5.0%   KLD: {percentile(kv, 0.050):10.6f}",
            f" 1.0%   KLD: {percentile(kv, 0.010):10.6f}",
            f"Minimum KLD: {kv[0]:10.6f}",
            "",
            "====== Token probability statistics ======",
            f"Mean    Δp: {100 * pm:6.3f} ± {100 * pmu:5.3f} %",
            f"Maximum Δp: {100 * pv[-1]:6.3f}%",
            *(f"{label}   Δp: {100 * percentile(pv, f):6.3f}%" for label, f in (
                ("99.9%", 0.999), ("99.0%", 0.99), ("95.0%", 0.95), ("90.0%", 0.90), ("75.0%", 0.75))),
            f"Median  Δp: {100 * median(pv):6.3f}%",
            *(f"{label}   Δp: {100 * percentile(pv, f):6.3f}%" for label, f in (
                ("25.0%", 0.25), ("10.0%", 0.10), (" 5.0%", 0.05), (" 1.0%", 0.01), (" 0.1%", 0.001))),
            f"Minimum Δp: {100 * pv[0]:6.3f}%",
            f"RMS Δp    : {100 * rms:6.3f} ± {100 * rmsu:5.3f} %",
            f"Same top p: {100 * top:6.3f} ± {100 * topu:5.3f} %",
        ]
        return "\n".join(lines) + "\n"


def percentile(v: list[float], fraction: float) -> float:
    """The reference's interpolated percentile of sorted values."""
    if fraction <= 0:
        return v[0]
    if fraction >= 1:
        return v[-1]
    p = fraction * (len(v) - 1)
    i = int(p)
    p -= i
    return (1 - p) * v[i] + p * v[min(i + 1, len(v) - 1)]


def median(v: list[float]) -> float:
    n = len(v)
    return 0.5 * (v[n // 2] + v[n // 2 - 1]) if n % 2 == 0 else v[n // 2]


def scored_chunks(llm, tokens, n_ctx: int, n_chunk: int, n_seq: int, bos_id: int | None):
    """(chunk index, logits of its scored second half, their target tokens) for each chunk of n_ctx tokens,
    each from an empty cache as the reference scores them (n_seq chunks at a time as separate sequences; a
    chunk's logits do not depend on its neighbours); bos_id, if given, replaces each chunk's first token."""
    first = n_ctx // 2
    for i in range(0, n_chunk, n_seq):
        items = []
        for s in range(min(n_seq, n_chunk - i)):
            chunk = tokens[(i + s) * n_ctx:(i + s + 1) * n_ctx].copy()
            if bos_id is not None:
                chunk[0] = bos_id
            items.append((s, chunk))
        llm.kv_clear()
        for s, logits in enumerate(llm.eval_batch(items, first_output=first)):
            c = i + s
            yield c, logits[:-1], tokens[c * n_ctx + first + 1:(c + 1) * n_ctx]


CHUNK_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
                "Δp RMS            Same top p")


def kl_divergence(llm, saved: SavedLogits, bos_id: int | None, out: TextIO, chunks: int = -1,
                  n_seq: int = 1) -> KLDStats:
    """Score `llm` against saved base log-probabilities, each chunk from an empty cache as the reference
    (n_seq chunks at a time as separate sequences; a chunk's logits do not depend on its neighbours)."""
    saved.check_vocab(llm.n_vocab)
    n_ctx = saved.n_ctx
    if llm.n_ctx < n_ctx:
        raise LlamapyError(f"{saved.path} has been computed with {n_ctx}, while the current context is "
                           f"{llm.n_ctx}. Increase it with -c and retry")
    n_chunk = saved.n_chunk if chunks < 0 else min(chunks, saved.n_chunk)
    n_seq = max(1, min(n_seq, llm.n_seq_max))
    stats = KLDStats()
    for c, logits, targets in scored_chunks(llm, saved.tokens, n_ctx, n_chunk, n_seq, bos_id):
        stats.add(logits, saved.chunk(c), targets)
        out.write("\n" + CHUNK_HEADER + "\n" + stats.chunk_line(c + 1) + "\n")
        out.flush()
    out.write("\n" + stats.summary())
    out.flush()
    return stats
