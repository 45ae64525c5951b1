"""The sampling settings of one generation: one dataclass, the reference's defaults written once.

Kept free of numpy so the command line can read the defaults without loading it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LlamapyError


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

    def check(self) -> None:
        if self.mirostat not in (0, 1, 2):
            raise LlamapyError(f"--mirostat {self.mirostat}: use 0, 1 or 2")
        if self.repeat_last_n < -1:
            raise LlamapyError(f"--repeat-last-n {self.repeat_last_n}: use -1 (whole context) or more")

    def describe(self) -> str:
        """The settings as the reference's log prints them ("sampler params: ...")."""
        return (f"\trepeat_last_n = {self.repeat_last_n}, repeat_penalty = {self.repeat_penalty:.3f}, "
                f"frequency_penalty = {self.frequency_penalty:.3f}, presence_penalty = {self.presence_penalty:.3f}\n"
                f"\ttop_k = {self.top_k}, top_p = {self.top_p:.3f}, min_p = {self.min_p:.3f}, "
                f"typical_p = {self.typical_p:.3f}, temp = {self.temp:.3f}\n"
                f"\tmirostat = {self.mirostat}, mirostat_lr = {self.mirostat_eta:.3f}, "
                f"mirostat_ent = {self.mirostat_tau:.3f}")
