"""The sampling settings of one generation: one dataclass, the reference's defaults written once.

Kept free of numpy so the command line can read the defaults without loading it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LlamapyError

# the chain's steps: the reference's names for --samplers and a request's "samplers", and its letters for
# --sampling-seq (and a "samplers" string)
SAMPLER_NAMES = ("penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
SAMPLER_LETTERS = {"e": "penalties", "d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "m": "min_p",
                   "x": "xtc", "t": "temperature"}
# the other spellings --samplers takes (a request's list takes only the names above)
SAMPLER_ALIASES = {"top-k": "top_k", "top-p": "top_p", "nucleus": "top_p", "typical-p": "typ_p",
                   "typical": "typ_p", "typ-p": "typ_p", "typ": "typ_p", "min-p": "min_p", "temp": "temperature"}
DEFAULT_SAMPLERS = ("penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
DEFAULT_DRY_BREAKERS = ("\n", ":", "\"", "*")


def samplers_from_names(text: str, aliases: bool = True) -> list[str]:
    """The chain order of a `;`-separated list of names (--samplers)."""
    out = []
    for name in filter(None, text.split(";")):
        key = SAMPLER_ALIASES.get(name, name) if aliases else name
        if key not in SAMPLER_NAMES:
            raise LlamapyError(f"--samplers: unknown sampler '{name}'; use names from {';'.join(SAMPLER_NAMES)}")
        out.append(key)
    return out


def samplers_from_letters(text: str) -> list[str]:
    """The chain order of a string of letters (--sampling-seq)."""
    bad = [ch for ch in text if ch not in SAMPLER_LETTERS]
    if bad:
        raise LlamapyError(f"--sampling-seq: unknown sampler letter '{bad[0]}'; use letters from "
                           f"{''.join(SAMPLER_LETTERS)}")
    return [SAMPLER_LETTERS[ch] for ch in text]


@dataclass
class SamplerParams:
    """llama.cpp's common_params_sampling (the fields llamapy implements), with its defaults."""

    temp: float = 0.8                 # <= 0: greedy
    top_k: int = 40                   # <= 0: off
    top_p: float = 0.95               # 1.0: off
    min_p: float = 0.05               # 0.0: off
    typical_p: float = 1.0            # 1.0: off
    repeat_penalty: float = 1.0       # 1.0: off
    repeat_last_n: int = 64           # -1: the whole history
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0                 # 0 off, 1 or 2
    mirostat_tau: float = 5.0         # target entropy (--mirostat-ent)
    mirostat_eta: float = 0.1         # learning rate (--mirostat-lr)
    seed: int = -1                    # -1: random
    logit_bias: dict = field(default_factory=dict)   # token id -> bias (float('-inf') bans it)
    ignore_eos: bool = False
    n_probs: int = 0
    min_keep: int = 0
    dry_multiplier: float = 0.0       # 0.0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2       # repeats longer than this are penalized
    dry_penalty_last_n: int = -1      # 0: off, -1: the context
    dry_sequence_breakers: list = field(default_factory=lambda: list(DEFAULT_DRY_BREAKERS))
    xtc_probability: float = 0.0      # 0.0: off
    xtc_threshold: float = 0.1        # > 0.5: off
    dynatemp_range: float = 0.0       # 0.0: off
    dynatemp_exponent: float = 1.0
    top_n_sigma: float = -1.0         # < 0: off
    samplers: list = field(default_factory=lambda: list(DEFAULT_SAMPLERS))   # the chain's order

    def dry_enabled(self) -> bool:
        return self.dry_multiplier != 0.0 and self.dry_base >= 1.0 and self.dry_penalty_last_n != 0

    def history_window(self, n_ctx: int) -> int:
        """How many of the latest tokens the penalties and DRY look back on (0: none)."""
        wins = [self.repeat_last_n if self.mirostat == 0 and self.top_n_sigma < 0 and "penalties" in self.samplers
                else 0]
        if self.mirostat == 0 and self.top_n_sigma < 0 and "dry" in self.samplers and self.dry_enabled():
            wins.append(self.dry_penalty_last_n)
        return n_ctx if -1 in wins else max(wins)

    def check(self) -> None:
        if self.mirostat not in (0, 1, 2):
            raise LlamapyError(f"--mirostat {self.mirostat}: use 0, 1 or 2")
        if self.repeat_last_n < -1:
            raise LlamapyError(f"--repeat-last-n {self.repeat_last_n}: use -1 (whole context) or more")
        if self.dry_penalty_last_n < -1:
            raise LlamapyError(f"--dry-penalty-last-n {self.dry_penalty_last_n}: use -1 (whole context) or more")
        bad = [n for n in self.samplers if n not in SAMPLER_NAMES]
        if bad:
            raise LlamapyError(f"samplers: unknown sampler '{bad[0]}'; use names from {';'.join(SAMPLER_NAMES)}")
        if len(self.samplers) > 16:
            raise LlamapyError(f"samplers: {len(self.samplers)} steps; at most 16")

    def describe(self) -> str:
        """The settings as the reference's log prints them ("sampler params: ...")."""
        return (f"\trepeat_last_n = {self.repeat_last_n}, repeat_penalty = {self.repeat_penalty:.3f}, "
                f"frequency_penalty = {self.frequency_penalty:.3f}, presence_penalty = {self.presence_penalty:.3f}\n"
                f"\tdry_multiplier = {self.dry_multiplier:.3f}, dry_base = {self.dry_base:.3f}, "
                f"dry_allowed_length = {self.dry_allowed_length}, dry_penalty_last_n = {self.dry_penalty_last_n}\n"
                f"\ttop_k = {self.top_k}, top_p = {self.top_p:.3f}, min_p = {self.min_p:.3f}, "
                f"xtc_probability = {self.xtc_probability:.3f}, xtc_threshold = {self.xtc_threshold:.3f}, "
                f"typical_p = {self.typical_p:.3f}, top_n_sigma = {self.top_n_sigma:.3f}, temp = {self.temp:.3f}\n"
                f"\tmirostat = {self.mirostat}, mirostat_lr = {self.mirostat_eta:.3f}, "
                f"mirostat_ent = {self.mirostat_tau:.3f}")
