"""What parsed options build: the SamplerParams, the engine's LoadOptions, the process settings (-C/-Cr, --prio).

The option tables themselves are in options.py; a command's function calls these with its parsed options."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import LlamapyError
from ..generation.params import SamplerParams, samplers_from_letters, samplers_from_names
from .options import _PARSED, _SAMPLER_DEFAULTS, SAMPLING


def parse_logit_bias(items: list[str] | None) -> dict[int, float]:
    """`TOKEN_ID(+/-)BIAS` strings (`15043+1`, `2-inf`) as a dict."""
    out: dict[int, float] = {}
    for item in items or []:
        s = item.strip()
        for i in range(1, len(s)):
            if s[i] in "+-" and s[:i].strip().lstrip("-").isdigit():
                try:
                    bias = float(s[i + 1:])
                except ValueError:
                    break
                out[int(s[:i])] = bias if s[i] == "+" else -bias
                break
        else:
            raise LlamapyError(f"--logit-bias '{item}': expected TOKEN_ID(+/-)BIAS, like 15043+1")
        if int(s[:i]) not in out:
            raise LlamapyError(f"--logit-bias '{item}': expected TOKEN_ID(+/-)BIAS, like 15043+1")
    return out


def sampler_params(opts: Mapping[str, Any]) -> SamplerParams:
    """The SamplerParams that parsed SAMPLING options ask for."""
    kw = {o.field: opts[o.name] for o in SAMPLING if o.field is not None and o.name not in _PARSED}
    kw["logit_bias"] = parse_logit_bias(opts["logit_bias"])
    if kw["dry_base"] < 1.0:  # as the reference: ignored
        kw["dry_base"] = _SAMPLER_DEFAULTS["dry_base"]
    if opts.get("dry_sequence_breaker"):
        breakers: list[str] = []
        for b in opts["dry_sequence_breaker"]:
            breakers = [] if b == "none" else [*breakers, b]
        kw["dry_sequence_breakers"] = breakers
    if opts.get("samplers") is not None and opts.get("sampling_seq") is not None:
        raise LlamapyError("give one of --samplers and --sampling-seq")
    if opts.get("samplers") is not None:
        kw["samplers"] = samplers_from_names(opts["samplers"])
    elif opts.get("sampling_seq") is not None:
        kw["samplers"] = samplers_from_letters(opts["sampling_seq"])
    return SamplerParams(**kw)


def load_options(opts: Mapping[str, Any]):
    """The engine's LoadOptions (RoPE overrides, --override-kv, --mlock, --no-mmap, -ub) from parsed COMMON options."""
    from ..engine.load import LoadOptions, parse_override_kv

    freq_scale = opts["rope_freq_scale"]
    if opts["rope_scale"] is not None:
        if opts["rope_scale"] <= 0:
            raise LlamapyError(f"--rope-scale {opts['rope_scale']}: must be > 0")
        freq_scale = 1.0 / opts["rope_scale"]
    return LoadOptions(
        n_ubatch=opts["ubatch_size"], rope_scaling=opts["rope_scaling"], rope_freq_base=opts["rope_freq_base"],
        rope_freq_scale=freq_scale, yarn_orig_ctx=opts["yarn_orig_ctx"], yarn_ext_factor=opts["yarn_ext_factor"],
        yarn_attn_factor=opts["yarn_attn_factor"], yarn_beta_slow=opts["yarn_beta_slow"],
        yarn_beta_fast=opts["yarn_beta_fast"], override_kv=parse_override_kv(opts["override_kv"]),
        mlock=opts["mlock"], mmap=not opts["no_mmap"], pooling=opts.get("pooling"),
        check_tensors=opts["check_tensors"], type_k=opts.get("cache_type_k") or "f16",
        type_v=opts.get("cache_type_v") or "f16",
    )


def apply_process_options(opts: Mapping[str, Any]) -> None:
    """-C/-Cr (CPU affinity, inherited by the threads started after) and --prio, before the engine starts."""
    from .system import parse_cpu_mask, parse_cpu_range, set_priority

    if opts.get("threads") == 0:
        raise LlamapyError("-t 0: use at least 1 thread (-1: one per physical core)")
    for name, flag in (("ctx_size", "-c"), ("batch_size", "-b")):
        if opts.get(name) is not None and opts[name] < (0 if name == "ctx_size" else 1):
            raise LlamapyError(f"{flag} {opts[name]}: must be {'>= 0' if name == 'ctx_size' else '>= 1'}")
    cpus: set[int] = set()
    if opts.get("cpu_mask"):
        cpus |= parse_cpu_mask(opts["cpu_mask"])
    if opts.get("cpu_range"):
        cpus |= parse_cpu_range(opts["cpu_range"])
    if cpus:
        import os

        try:
            os.sched_setaffinity(0, cpus)
        except (OSError, ValueError) as e:
            raise LlamapyError(f"-C/-Cr: can't run on CPUs {sorted(cpus)}: {getattr(e, 'strerror', None) or e}") \
                from None
    if opts.get("prio"):
        set_priority(opts["prio"])
