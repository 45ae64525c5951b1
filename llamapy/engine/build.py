"""Building the C engine from a GGUF model: its parameter struct (dimensions, RoPE/YaRN, the architecture's
traits, KV cache types), the default thread count, the memory its weights are read from (mapped or read,
locked or not) and the weight slot(s) each tensor fills."""
from __future__ import annotations

import os

from ..errors import LlamapyError
from ..model_args import ModelArgs
from ..util.threads import sane_threads
from .load import KV_TYPE_NAMES, LoadOptions, RopeParams, mlock, rope_params

__all__ = ["fill_params", "physical_cores", "set_weights", "slot_parts", "weight_memory"]

# GGUF tensor name suffix -> engine weight slot (see csrc/llamapy.h)
_LAYER_SLOTS = {
    "attn_norm.weight": "LP_W_ATTN_NORM", "attn_q.weight": "LP_W_Q", "attn_k.weight": "LP_W_K",
    "attn_v.weight": "LP_W_V", "attn_output.weight": "LP_W_O", "attn_q.bias": "LP_W_Q_B",
    "attn_k.bias": "LP_W_K_B", "attn_v.bias": "LP_W_V_B", "attn_output.bias": "LP_W_O_B",
    "ffn_norm.weight": "LP_W_FFN_NORM", "ffn_gate.weight": "LP_W_GATE", "ffn_up.weight": "LP_W_UP",
    "ffn_down.weight": "LP_W_DOWN", "ffn_gate.bias": "LP_W_GATE_B", "ffn_up.bias": "LP_W_UP_B",
    "ffn_down.bias": "LP_W_DOWN_B", "attn_q_norm.weight": "LP_W_Q_NORM", "attn_k_norm.weight": "LP_W_K_NORM",
    "post_attention_norm.weight": "LP_W_POST_ATTN_NORM", "post_ffw_norm.weight": "LP_W_POST_FFN_NORM",
    "ffn_gate_inp.weight": "LP_W_GATE_INP", "ffn_gate_exps.weight": "LP_W_GATE_EXPS",
    "ffn_up_exps.weight": "LP_W_UP_EXPS", "ffn_down_exps.weight": "LP_W_DOWN_EXPS",
    "ffn_gate_inp_shexp.weight": "LP_W_GATE_INP_SHEXP", "ffn_gate_shexp.weight": "LP_W_GATE_SHEXP",
    "ffn_up_shexp.weight": "LP_W_UP_SHEXP", "ffn_down_shexp.weight": "LP_W_DOWN_SHEXP",
}
# fused tensors: the slots their consecutive row ranges go to (rows of each, from the model's dimensions)
_FUSED_SLOTS = {
    "attn_qkv.weight": (("LP_W_Q", "q_dim"), ("LP_W_K", "kv_dim"), ("LP_W_V", "kv_dim")),
}
_FUSED_FFN_SLOTS = (("LP_W_GATE", "n_ff"), ("LP_W_UP", "n_ff"))


def slot_parts(name: str, t, args: ModelArgs) -> list[tuple[str, int, int, int]]:
    """The engine slots a tensor fills: (slot, layer, first row, rows); a fused tensor fills several."""
    if name in _GLOBAL_SLOTS:
        return [(_GLOBAL_SLOTS[name], -1, 0, t.n_rows)]
    _, i, suffix = name.split(".", 2)
    split = _FUSED_SLOTS.get(suffix) or (_FUSED_FFN_SLOTS if suffix == "ffn_up.weight" and args.fused_gate_up else None)
    if split is None:
        return [(_LAYER_SLOTS[suffix], int(i), 0, t.n_rows)]
    parts, row = [], 0
    for slot_name, dim in split:  # a fused tensor: each slot points at its rows
        rows = getattr(args, dim)
        parts.append((slot_name, int(i), row, rows))
        row += rows
    return parts


_GLOBAL_SLOTS = {
    "token_embd.weight": "LP_W_TOKEN_EMBD", "output_norm.weight": "LP_W_OUTPUT_NORM",
    "output.weight": "LP_W_OUTPUT", "rope_freqs.weight": "LP_W_ROPE_FREQS",
}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads not counted)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "core_id") as f:
                core = f.read().strip()
            with open(base + "physical_package_id") as f:
                pkg = f.read().strip()
        except OSError:
            return len(allowed)
        cores.add((pkg, core))
    return max(1, len(cores))


def fill_params(p, args: ModelArgs, load: LoadOptions, n_ctx: int, n_seq: int, n_batch: int,
                n_threads: int | None) -> RopeParams:
    """Fill an `lp_engine_params` for the model; the RoPE settings in effect (n_seq counts the scratch sequence)."""
    p.n_vocab, p.n_embd, p.n_layer = args.n_vocab, args.n_embd, args.n_layer
    p.n_head, p.n_head_kv, p.head_dim, p.n_ff = args.n_head, args.n_head_kv, args.head_dim, args.n_ff
    p.n_ctx, p.n_seq, p.n_batch = n_ctx, n_seq, n_batch
    p.n_threads = sane_threads(n_threads) if n_threads and n_threads > 0 else physical_cores()
    p.norm_eps = args.norm_eps
    p.attn_scale = args.attn_scale
    rope = rope_params(args, load)
    p.rope_freq_base, p.rope_freq_scale = rope.freq_base, rope.freq_scale
    p.yarn_ext_factor, p.yarn_attn_factor = rope.ext_factor, rope.attn_factor
    p.yarn_beta_fast, p.yarn_beta_slow = rope.beta_fast, rope.beta_slow
    p.n_ctx_orig = rope.n_ctx_orig
    a = p.arch
    a.rope_neox = int(args.rope_neox)
    a.act_gelu = int(args.act == "gelu")
    a.embd_scale = args.n_embd ** 0.5 if args.embd_scaled else 0.0
    a.attn_softcap = args.attn_softcap
    a.final_softcap = args.final_softcap
    a.n_swa = args.n_swa
    a.swa_pattern = args.swa_pattern
    a.rope_freq_base_swa = args.rope_freq_base_swa
    a.n_expert, a.n_expert_used = args.n_expert, args.n_expert_used
    a.expert_weights_norm = int(args.expert_weights_norm)
    a.n_ff_exp, a.n_ff_shexp = args.n_ff_exp, args.n_ff_shexp
    p.type_k, p.type_v = load.type_k, load.type_v
    for which, t in (("K", load.type_k), ("V", load.type_v)):
        block = 1 if t in (0, 1, 30) else 32  # the float types, or blocks of 32 (q8_0 ... iq4_nl)
        if args.head_dim % block:
            raise LlamapyError(f"{which} cache type {KV_TYPE_NAMES[t]}: head size {args.head_dim} is not a "
                               f"multiple of its block size {block}")
    return rope


def weight_memory(r, model_path: str, load: LoadOptions):
    """The model file's bytes as the engine reads its weights: (a char[] over the file's mapping, or with
    --no-mmap over a copy read into memory; that copy (None when mapped), to keep alive as long as the engine;
    (address, size) when --mlock locked them in RAM, else None)."""
    from ..native import ffi

    weights = None
    if load.mmap:
        base = ffi.from_buffer(r._mmap)  # char[] over the whole file
    else:  # --no-mmap: the file read into memory of our own
        weights = bytearray(r.size)
        with open(model_path, "rb") as f:
            f.readinto(memoryview(weights))
        base = ffi.from_buffer(weights)
    locked = None
    if load.mlock:
        addr = int(ffi.cast("uintptr_t", base))
        if mlock(addr, len(base)):
            locked = (addr, len(base))
    return base, weights, locked


def set_weights(eng, base, tensors: dict, args: ModelArgs, model_path: str) -> None:
    """Point the engine's weight slots at the tensors' data (`base`: the file's bytes); a one-line error when the
    engine refuses one."""
    from ..native import ffi, lib

    for name, t in tensors.items():
        row_bytes = t.nbytes // t.n_rows
        for slot_name, layer, row, rows in slot_parts(name, t, args):
            data = base + t.offset + row * row_bytes
            if lib.lp_engine_set_weight(eng, getattr(lib, slot_name), layer, data, t.type, t.shape[0], rows) != 0:
                msg = ffi.string(lib.lp_engine_error(eng)).decode()
                raise LlamapyError(f"{model_path}: tensor '{name}': {msg}")
