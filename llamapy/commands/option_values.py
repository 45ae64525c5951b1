"""What parsed options build: the SamplerParams, the engine's LoadOptions, the process settings (-C/-Cr, --prio).

The option tables themselves are in options.py; a command's function calls these with its parsed options."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import LlamapyError
from ..generation.params import SamplerParams, samplers_from_letters, samplers_from_names
from ..util.safe_text import printable
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
        check_tensors=opts["check_tensors"], lora=lora_adapters(opts),
        lora_init_without_apply=bool(opts.get("lora_init_without_apply")), type_k=opts.get("cache_type_k") or "f16",
        type_v=opts.get("cache_type_v") or "f16", control_vectors=control_vectors(opts),
        cvec_layer_range=cvec_layer_range(opts.get("control_vector_layer_range")),
    )


def cvec_layer_range(value: Any) -> tuple[int, int] | None:
    """--control-vector-layer-range START END as two ints."""
    if value is None:
        return None
    try:
        start, end = (int(v) for v in value)
    except ValueError:
        raise LlamapyError(f"--control-vector-layer-range {' '.join(printable(str(v)) for v in value)}: give two "
                           "layer numbers") from None
    return start, end


def control_vectors(opts: Mapping[str, Any]) -> list[tuple[str, float]]:
    """--control-vector FILE (scale 1) and --control-vector-scaled FILE SCALE, as (path, scale)."""
    import math

    out = [(path, 1.0) for path in opts.get("control_vector") or ()]
    for path, scale in opts.get("control_vector_scaled") or ():
        try:
            value = float(scale)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise LlamapyError(f"--control-vector-scaled {printable(path)} {printable(scale)}: the scale must be "
                               "a number")
        out.append((path, value))
    return out


def lora_adapters(opts: Mapping[str, Any]) -> list[tuple[str, float]]:
    """--lora FILE (scale 1) then --lora-scaled FILE SCALE, in the order given: (path, scale) each."""
    import math

    out = [(path, 1.0) for path in opts.get("lora") or ()]
    for path, scale in opts.get("lora_scaled") or ():
        try:
            value = float(scale)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise LlamapyError(f"--lora-scaled {printable(path)} {printable(scale)}: the scale must be a number")
        out.append((path, value))
    return out


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


def resolve_hf_model(opts: dict) -> None:
    """-hf USER/REPO[:QUANT] (with -hff FILE, -hft TOKEN): the model pulled into the store the first time,
    then opts["model"] set to its GGUF. Nothing happens without -hf; -hff alone is an error."""
    repo, file = opts.get("hf_repo"), opts.get("hf_file")
    if not repo:
        if file:
            raise LlamapyError("-hff FILE names a file of the -hf repository: give -hf USER/REPO too")
        return
    if opts.get("model"):
        raise LlamapyError("give -m or -hf, not both")
    import os

    if opts.get("hf_token"):
        os.environ["HF_TOKEN"] = opts["hf_token"]
    from rich.console import Console

    from ..store.pull import hf_model
    from ._storeui import byte_progress, printable

    err = Console(stderr=True, highlight=False)
    with byte_progress(err, "pulling") as progress:
        opts["model"] = hf_model(repo, file, progress=progress,
                                 log=lambda m: err.print(printable(m), markup=False))


def rope_scale_precedence(ctx, args: list[str]) -> None:
    """--rope-scale N and --rope-freq-scale F both set one value (1/N or F), as in llama.cpp: the one given
    last on the command line wins; a command-line value beats a LLAMA_ARG_* one; of two variables,
    LLAMA_ARG_ROPE_FREQ_SCALE wins (llama.cpp reads the variables in its table's order, --rope-scale first).
    load_options applies rope_scale over rope_freq_scale, so rope_scale is dropped when the other wins."""
    if ctx.params.get("rope_scale") is None or "rope_freq_scale" not in ctx.params:
        return
    src = {n: getattr(ctx.get_parameter_source(n), "name", "DEFAULT") for n in ("rope_scale", "rope_freq_scale")}
    if src["rope_freq_scale"] == "DEFAULT":
        return

    def last(flag: str) -> int:
        return max((i for i, a in enumerate(args) if a.replace("_", "-").split("=", 1)[0] == flag), default=-1)

    cl = "COMMANDLINE"
    if src["rope_freq_scale"] == cl and src["rope_scale"] == cl:
        freq_wins = last("--rope-freq-scale") > last("--rope-scale")
    else:
        freq_wins = src["rope_freq_scale"] == cl or src["rope_scale"] != cl
    if freq_wins:
        ctx.params["rope_scale"] = None
