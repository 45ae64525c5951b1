"""A readable numpy forward pass of a llama model (and its relatives, by the traits in ModelArgs): the
oracle the C engine is tested against.

Slow and simple: the whole sequence at once, no KV cache, weights dequantized to float32 by the
`gguf` package's own numpy code (independent of llamapy's kernels). Two switches make it round
where the engine rounds, so tests can hold the engine to a tight tolerance:

- `kv_f16`: q, K, V and the attention probabilities pass through float16, as in the reference
  engine's F16 KV cache (its default);
- `act_round`: each matmul input is rounded the way the weight's dot product sees it
  (Q8_0 / Q8_1 / Q8_K blocks, F16, BF16), as the engine's activation quantization does.

`kv_types` (type_k, type_v) models a KV cache of other types instead of kv_f16: each K and V row is
stored (quantized and dequantized by the numpy references of `llamapy.quants`); q is rounded to K's
vec_dot type (fp16 for an F16 K) and the probabilities to fp16 only for an F16 V, as the engine does.
"""
from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

from ..ggufio.reader import GGUFReader
from ..model_args import ModelArgs, check_tensors

# the activation format each weight type is dotted with (ggml's vec_dot_type)
VEC_DOT_TYPE = {
    T.F32: T.F32, T.F16: T.F16, T.BF16: T.BF16,
    T.Q4_0: T.Q8_0, T.Q5_0: T.Q8_0, T.Q8_0: T.Q8_0, T.IQ4_NL: T.Q8_0,
    T.Q4_1: T.Q8_1, T.Q5_1: T.Q8_1,
    T.Q2_K: T.Q8_K, T.Q3_K: T.Q8_K, T.Q4_K: T.Q8_K, T.Q5_K: T.Q8_K, T.Q6_K: T.Q8_K,
}


def load_weights(path: str) -> tuple[ModelArgs, dict[str, np.ndarray], dict[str, int]]:
    """ModelArgs, every tensor as float32 in numpy order ((rows, row length) for matrices), and types."""
    with GGUFReader(path) as r:
        args = ModelArgs.from_gguf(r)
        tensors = check_tensors(r, args)
        weights, types = {}, {}
        for name, t in tensors.items():
            w = dequantize(np.array(t.raw), T(t.type)).astype(np.float32)
            weights[name] = w.reshape(tuple(reversed(t.shape))).squeeze() if len(t.shape) == 1 else w.reshape(
                t.n_rows, t.shape[0])
            types[name] = t.type
    if "output.weight" not in weights:
        weights["output.weight"] = weights["token_embd.weight"]
        types["output.weight"] = types["token_embd.weight"]
    for i in range(args.n_layer):  # fused tensors split into the separate ones
        b = f"blk.{i}."
        if args.fused_qkv:
            qkv, t = weights.pop(b + "attn_qkv.weight"), types.pop(b + "attn_qkv.weight")
            q_end, k_end = args.q_dim, args.q_dim + args.kv_dim
            for name, rows in (("attn_q", qkv[:q_end]), ("attn_k", qkv[q_end:k_end]), ("attn_v", qkv[k_end:])):
                weights[b + name + ".weight"], types[b + name + ".weight"] = rows, t
        if args.fused_gate_up:
            gu, t = weights[b + "ffn_up.weight"], types[b + "ffn_up.weight"]
            weights[b + "ffn_gate.weight"], weights[b + "ffn_up.weight"] = gu[:args.n_ff], gu[args.n_ff:]
            types[b + "ffn_gate.weight"] = t
    return args, weights, types


def round_activation(x: np.ndarray, vtype: int) -> np.ndarray:
    """x (.., n) as the engine hands it to a dot product with activations of type vtype."""
    x = x.astype(np.float32)
    if vtype == T.F32:
        return x
    if vtype == T.F16:
        return x.astype(np.float16).astype(np.float32)
    if vtype == T.BF16:
        u = x.view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.astype(np.uint32).view(np.float32)
    bs = 256 if vtype == T.Q8_K else 32
    b = x.reshape(-1, bs)
    if vtype == T.Q8_K:
        # scale from the signed value of largest magnitude: -127 / that value
        imax = np.abs(b).argmax(axis=1)
        mx = b[np.arange(len(b)), imax]
        with np.errstate(divide="ignore"):
            iscale = np.where(mx == 0, 0, np.float32(-127) / mx).astype(np.float32)
        q = np.minimum(127, np.round(iscale[:, None] * b))
        d = np.where(iscale == 0, 0, np.float32(1) / np.where(iscale == 0, 1, iscale)).astype(np.float32)
        return (q * d[:, None]).astype(np.float32).reshape(x.shape)
    amax = np.abs(b).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d == 0, 0, np.float32(1) / np.where(d == 0, 1, d)).astype(np.float32)
    q = np.round(b * idv[:, None])
    d16 = d.astype(np.float16).astype(np.float32)
    return (q * d16[:, None]).astype(np.float32).reshape(x.shape)


def cache_row(x: np.ndarray, ttype: int) -> np.ndarray:
    """x (n, n_head_kv, head_dim) as a KV cache of ttype holds it: each position's row stored and read back."""
    from .. import quants

    rows = x.reshape(x.shape[0], -1).astype(np.float32)
    return quants.dequantize(ttype, quants.quantize(ttype, rows), rows.shape[1]).reshape(x.shape)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = (x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)).astype(np.float32) * w


def rope_tables(args: ModelArgs, pos: np.ndarray, freq_factors: np.ndarray | None = None,
                ext_factor: float = 0.0, beta_fast: float = 32.0, beta_slow: float = 1.0, local: bool = False):
    """cos, sin (n_tokens, head_dim // 2) of each position: RoPE with linear / YaRN scaling; `local`: that
    of the sliding-window layers (their own base, no scaling)."""
    if local:
        args = ModelArgs(**{**args.__dict__, "rope_freq_base": args.rope_freq_base_swa or args.rope_freq_base,
                            "rope_freq_scale": 1.0, "rope_attn_factor": 1.0})
        ext_factor = 0.0
    d = args.head_dim
    i = np.arange(d // 2)
    theta_extrap = pos[:, None].astype(np.float64) * args.rope_freq_base ** (-2.0 * i / d)
    if freq_factors is not None:
        theta_extrap = theta_extrap / freq_factors
    theta_interp = args.rope_freq_scale * theta_extrap
    theta, mscale = theta_interp, args.rope_attn_factor
    if ext_factor != 0.0:
        def corr_dim(n_rot):
            return d * np.log(args.n_ctx_orig_yarn / (n_rot * 2 * np.pi)) / (2 * np.log(args.rope_freq_base))
        lo = max(0.0, np.floor(corr_dim(beta_fast)))
        hi = min(d - 1.0, np.ceil(corr_dim(beta_slow)))
        ramp = 1 - np.clip((i - lo) / max(0.001, hi - lo), 0, 1)
        mix = ramp * ext_factor
        theta = theta_interp * (1 - mix) + theta_extrap * mix
        mscale *= 1.0 + 0.1 * np.log(1.0 / args.rope_freq_scale)
    return np.cos(theta) * mscale, np.sin(theta) * mscale


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool = False) -> np.ndarray:
    """Rotate the adjacent pairs (2i, 2i+1) of every head, or with `neox` the pairs (i, i + head_dim/2).
    x: (n_tokens, n_heads, head_dim)."""
    h = x.shape[-1] // 2
    lo, hi = (slice(0, h), slice(h, None)) if neox else (slice(0, None, 2), slice(1, None, 2))
    x0, x1 = x[..., lo], x[..., hi]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., lo] = x0 * c - x1 * s
    out[..., hi] = x0 * s + x1 * c
    return out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))).astype(np.float32)


def is_swa_layer(args: ModelArgs, i: int) -> bool:
    return args.n_swa > 0 and (args.swa_pattern <= 0 or (i + 1) % args.swa_pattern != 0)


def activate(args: ModelArgs, g: np.ndarray) -> np.ndarray:
    return gelu_tanh(g) if args.act == "gelu" else g / (1 + np.exp(-g))


def moe_ffn(args: ModelArgs, w: dict[str, np.ndarray], b: str, xn: np.ndarray, mm,
            trace: dict | None = None) -> np.ndarray:
    """Mixture of experts: each token through the n_expert_used experts of highest router probability,
    weighted by it (renormalized when expert_weights_norm), plus the shared expert under a sigmoid gate."""
    f = args.n_ff_exp
    logits = xn.astype(np.float64) @ w[b + "ffn_gate_inp.weight"].astype(np.float64).T      # (n, n_expert)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    sel = np.argsort(-p, axis=1, kind="stable")[:, :args.n_expert_used]
    wt = np.take_along_axis(p, sel, axis=1)
    if trace is not None:  # the experts each layer used
        trace[b] = {int(e) for e in np.unique(sel)}
    if args.expert_weights_norm:
        wt = wt / wt.sum(axis=1, keepdims=True)
    out = np.zeros_like(xn)
    for e in np.unique(sel):
        rows = np.nonzero((sel == e).any(axis=1))[0]
        xe = xn[rows]
        g = mm(b + "ffn_gate_exps.weight", xe, slice(e * f, (e + 1) * f))
        u = mm(b + "ffn_up_exps.weight", xe, slice(e * f, (e + 1) * f))
        d = mm(b + "ffn_down_exps.weight", activate(args, g) * u, slice(e * args.n_embd, (e + 1) * args.n_embd))
        out[rows] += wt[rows][sel[rows] == e][:, None] * d
    if args.n_ff_shexp:
        g = mm(b + "ffn_gate_shexp.weight", xn)
        u = mm(b + "ffn_up_shexp.weight", xn)
        d = mm(b + "ffn_down_shexp.weight", activate(args, g) * u)
        gate = xn.astype(np.float64) @ w[b + "ffn_gate_inp_shexp.weight"].astype(np.float64)
        out += (1 / (1 + np.exp(-gate)))[:, None].astype(np.float32) * d
    return out


def forward(args: ModelArgs, w: dict[str, np.ndarray], tokens, types: dict[str, int] | None = None,
            kv_f16: bool = True, act_round: bool = True, yarn_ext_factor: float = 0.0,
            trace: dict | None = None, lora: dict | None = None,
            kv_types: tuple[int, int] | None = None, cvec: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Logits (n_tokens, n_vocab) of tokens at positions 0..n-1 of one sequence; `trace` gets the experts
    each mixture-of-experts layer picked ("blk.N." -> set); `lora`: tensor name -> [(A, B, scale)] low-rank
    pairs added beside the product (scale * B (A x) on the unrounded activations, as the engine does);
    `cvec`: layer -> the control vector row added to the residual stream after that layer."""
    tokens = np.asarray(tokens)
    n = len(tokens)
    f16 = (lambda a: a.astype(np.float16).astype(np.float32)) if kv_f16 else (lambda a: a)
    round_q = round_k = round_v = round_p = f16
    if kv_types is not None:
        tk, tv = (T(t) for t in kv_types)
        round_q = lambda a: round_activation(a, VEC_DOT_TYPE[tk])  # noqa: E731
        round_k, round_v = (lambda a: cache_row(a, tk)), (lambda a: cache_row(a, tv))
        round_p = f16 if tv == T.F16 else (lambda a: a)

    def mm(name: str, x: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        x0 = x
        if act_round and types is not None:
            x = round_activation(x, VEC_DOT_TYPE[T(types[name])])
        y = x.astype(np.float64) @ w[name][rows].astype(np.float64).T
        for a, b_, sc in (lora or {}).get(name, ()):
            y = y + sc * ((x0.astype(np.float64) @ a.astype(np.float64).T) @ b_[rows].astype(np.float64).T)
        return y.astype(np.float32)

    def bias(name: str):
        return w.get(name, 0.0)

    pos = np.arange(n)
    ropes = {local: rope_tables(args, pos, w.get("rope_freqs.weight"), ext_factor=yarn_ext_factor, local=local)
             for local in (False, True)}
    scale = args.attn_scale or 1.0 / np.sqrt(args.head_dim)
    group = args.n_head // args.n_head_kv
    causal = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
    window = np.where(pos[:, None] - pos[None, :] >= max(args.n_swa, 1), -np.inf, 0).astype(np.float32) + causal

    x = w["token_embd.weight"][tokens].astype(np.float32)                   # (n, n_embd)
    if args.embd_scaled:
        x = x * np.float32(np.sqrt(args.n_embd))
    for i in range(args.n_layer):
        b = f"blk.{i}."
        swa = is_swa_layer(args, i)
        cos, sin = ropes[swa and bool(args.rope_freq_base_swa)]
        xn = rms_norm(x, w[b + "attn_norm.weight"], args.norm_eps)
        q = (mm(b + "attn_q.weight", xn) + bias(b + "attn_q.bias")).reshape(n, args.n_head, args.head_dim)
        k = (mm(b + "attn_k.weight", xn) + bias(b + "attn_k.bias")).reshape(n, args.n_head_kv, args.head_dim)
        v = (mm(b + "attn_v.weight", xn) + bias(b + "attn_v.bias")).reshape(n, args.n_head_kv, args.head_dim)
        if args.qk_norm:
            q = rms_norm(q, w[b + "attn_q_norm.weight"], args.norm_eps)
            k = rms_norm(k, w[b + "attn_k_norm.weight"], args.norm_eps)
        q, k = apply_rope(q, cos, sin, args.rope_neox), apply_rope(k, cos, sin, args.rope_neox)
        q, k, v = round_q(q), round_k(k), round_v(v)
        k = np.repeat(k, group, axis=1)                                         # (n, n_head, head_dim)
        v = np.repeat(v, group, axis=1)
        s = np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64)).astype(np.float32)
        s = s * np.float32(scale)                                               # (n_head, n, n)
        if args.attn_softcap:
            s = (args.attn_softcap * np.tanh(s / args.attn_softcap)).astype(np.float32)
        s = s + (window if swa else causal)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p = round_p(p / p.sum(axis=-1, keepdims=True))
        att = np.einsum("hqk,khd->qhd", p.astype(np.float64), v.astype(np.float64)).astype(np.float32)
        o = mm(b + "attn_output.weight", att.reshape(n, args.q_dim)) + bias(b + "attn_output.bias")
        if args.post_norms:
            o = rms_norm(o, w[b + "post_attention_norm.weight"], args.norm_eps)
        x = x + o

        xn = rms_norm(x, w[b + "ffn_norm.weight"], args.norm_eps)
        if args.n_expert:
            o = moe_ffn(args, w, b, xn, mm, trace)
        else:
            g = mm(b + "ffn_gate.weight", xn) + bias(b + "ffn_gate.bias")
            u = mm(b + "ffn_up.weight", xn) + bias(b + "ffn_up.bias")
            o = mm(b + "ffn_down.weight", activate(args, g) * u) + bias(b + "ffn_down.bias")
        if args.post_norms:
            o = rms_norm(o, w[b + "post_ffw_norm.weight"], args.norm_eps)
        x = x + o
        if cvec is not None and i in cvec:
            x = x + cvec[i].astype(np.float32)

    xn = rms_norm(x, w["output_norm.weight"], args.norm_eps)
    logits = mm("output.weight", xn)                                            # (n, n_vocab)
    if args.final_softcap:
        logits = (args.final_softcap * np.tanh(logits / args.final_softcap)).astype(np.float32)
    return logits
