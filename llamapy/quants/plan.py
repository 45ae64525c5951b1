"""The per-tensor type plan of llama-quantize (llama_tensor_get_type and the loop around it), as a pure
function of the tensors' names, shapes and types, the model's hyperparameters and the options.

`llamapy quantize` plans a GGUF's tensors with it; `llamapy convert --outtype q4_k_m` plans the
checkpoint's tensors (as the F32 file it would otherwise write) with it, so both give the same types.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import LlamapyError
from ..ggufio.constants import TYPE_SIZES, TensorType, type_name
from ..ggufio.filetypes import DEFAULT_TYPE
from ..ggufio.filetypes import LlamaFtype as F
from ..ggufio.reader import TensorInfo
from ..model_args import ModelArgs

T = TensorType

QUANTIZED = {int(t) for t in TYPE_SIZES if t not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)}


def blck_size(t: int) -> int:
    return TYPE_SIZES[int(t)][0]


def _name(t: int) -> str:
    return type_name(t).lower()


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers the K-quant mixes give more bits: the first and last eighth, and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer_of(name: str) -> int | None:
    m = re.match(r"blk\.([+-]?\d+)\.", name)
    return int(m.group(1)) if m else None


def tensor_type_for(name: str, shape: tuple[int, ...], ftype: int, n_layer: int, *,
                    i_attn_v: int | None = None, n_attn_v: int | None = None, i_ffn: int | None = None,
                    n_gqa: int = 1, n_expert: int = 0, arch: str = "llama", has_output: bool = True,
                    is_70b: bool = False, output_tensor_type: int | None = None) -> int:
    """The type the reference's mix gives one weight (llama_tensor_get_type), for a K-quant or legacy ftype.

    `shape` is in GGML order (shape[0] is the row length). The reference counts attn_v and ffn_* tensors
    in file order; those counts (`i_attn_v`, `i_ffn`) default to the layer in the name, which is what they
    are in any file sorted by layer. A row length the chosen type can't hold falls back as the reference
    does (Q2_K/Q3_K -> IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16).
    """
    new_type = int(DEFAULT_TYPE[ftype])
    layer = _layer_of(name)
    i_attn_v = layer if i_attn_v is None else i_attn_v
    i_ffn = layer if i_ffn is None else i_ffn
    n_attn_v = n_layer if n_attn_v is None else n_attn_v
    nx = shape[0]
    falcon = arch == "falcon"

    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        if output_tensor_type is not None:
            new_type = output_tensor_type
        elif falcon or nx % blck_size(new_type):
            new_type = T.Q8_0
        elif new_type != T.Q8_0:
            new_type = T.Q6_K
    elif name == "token_embd.weight":
        pass  # only the IQ1/IQ2/IQ3 and TQ mixes change it
    elif "attn_v.weight" in name:
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q4_K if n_gqa >= 4 else T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new_type = T.Q5_K if i_attn_v < 2 else T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L or ftype == F.MOSTLY_IQ4_NL and n_gqa >= 4:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(i_attn_v, n_attn_v):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and i_attn_v < 4:
            new_type = T.Q5_K
        if is_70b and new_type in (T.Q3_K, T.Q4_K):
            new_type = T.Q5_K
        if n_expert == 8:
            new_type = T.Q8_0
    elif "attn_k.weight" in name:
        if n_expert == 8:
            new_type = T.Q8_0
    elif "attn_q.weight" in name:
        pass
    elif "ffn_down" in name:
        i_layer = i_ffn
        if n_expert > 1:
            i_layer = layer
            if i_layer is None:
                raise LlamapyError(f"can't tell the layer of tensor {name}")
            if not 0 <= i_layer < n_layer:
                raise LlamapyError(f"bad layer {i_layer} for tensor {name}: must be in [0, {n_layer})")
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new_type = (T.Q5_K if i_layer < n_layer // 16
                        else T.Q4_K if not falcon or use_more_bits(i_layer, n_layer) else T.Q3_K)
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K if falcon else T.Q5_K
        elif ftype == F.MOSTLY_Q4_K_M:
            if falcon:
                new_type = (T.Q6_K if i_layer < n_layer // 16
                            else T.Q5_K if use_more_bits(i_layer, n_layer) else T.Q4_K)
            elif use_more_bits(i_layer, n_layer):
                new_type = T.Q6_K
        elif i_layer < n_layer // 8 and ftype == F.MOSTLY_IQ4_NL:
            new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q5_K_M and use_more_bits(i_layer, n_layer):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and not falcon and i_layer < n_layer // 8:
            new_type = T.Q5_K
    elif "attn_output.weight" in name:
        if not falcon:
            if n_expert == 8:
                if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL,
                             F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M):
                    new_type = T.Q5_K
            else:
                if ftype == F.MOSTLY_Q2_K:
                    new_type = T.Q3_K
                elif ftype == F.MOSTLY_Q3_K_M:
                    new_type = T.Q4_K
                elif ftype == F.MOSTLY_Q3_K_L:
                    new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K
    elif "attn_qkv.weight" in name:
        if ftype in (F.MOSTLY_Q3_K_M, F.MOSTLY_Q3_K_L):
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q4_K_M:
            new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q5_K_M:
            new_type = T.Q6_K

    if nx % blck_size(new_type):
        fallback = {T.Q2_K: T.IQ4_NL, T.Q3_K: T.IQ4_NL, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
        if new_type not in fallback:
            raise LlamapyError(f"tensor {name}: row length {nx} is not a multiple of {_name(new_type)}'s "
                               f"block size {blck_size(new_type)}, and that type has no fallback")
        new_type = fallback[new_type]
        if nx % blck_size(new_type):
            new_type = T.F16
    return int(new_type)


# -- planning a file ----------------------------------------------------------------------------------------
@dataclass
class QuantizeParams:
    ftype: int
    n_threads: int | None = None
    allow_requantize: bool = False
    quantize_output_tensor: bool = True
    only_copy: bool = False
    pure: bool = False
    output_tensor_type: int | None = None
    token_embedding_type: int | None = None


@dataclass
class TensorPlan:
    info: TensorInfo
    shape: tuple[int, ...]  # as written: trailing 1s dropped, as GGML writes n_dims
    new_type: int
    quantize: bool  # False: the bytes are copied

    @property
    def new_nbytes(self) -> int:
        blck, size = TYPE_SIZES[self.new_type]
        return self.info.n_elements // blck * size


def _n_dims(shape: tuple[int, ...]) -> int:
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return n


def reference_order(names: Iterable[str]) -> list[str]:
    """Tensors in the order the reference's loader keeps them: by the layer in 'blk.N.' (none first), then name."""
    def key(name: str):
        layer = _layer_of(name)
        return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))

    return sorted(names, key=key)


def _should_quantize(name: str, shape: tuple[int, ...], params: QuantizeParams) -> bool:
    if not name.endswith("weight") or _n_dims(shape) < 2 or "_norm.weight" in name:
        return False
    if name == "output.weight" and not params.quantize_output_tensor:
        return False
    if params.only_copy:
        return False
    excluded = ("ffn_gate_inp.weight", "ssm_conv1d.weight", "time_mix_first.weight", "time_mix_w1.weight",
                "time_mix_w2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
                "time_mix_lerp_fused.weight", "attn_rel_b.weight")
    if any(e in name for e in excluded):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def _mix_counter(name: str) -> str | None:
    """Which of the reference's per-kind counters a tensor advances when its type is chosen."""
    if "attn_v.weight" in name:
        return "attn_v"
    if "attn_k.weight" in name or "attn_q.weight" in name:
        return None
    return "ffn_down" if "ffn_down" in name else None


ConvertCheck = Callable[[str, int, int], None]  # (tensor name, from type, to type): raises if it can't be done


def plan(tensors: Mapping[str, TensorInfo], args: ModelArgs, params: QuantizeParams,
         check: ConvertCheck | None = None) -> list[TensorPlan]:
    """Each tensor's new type, in output order; refuses (before anything is written) what can't be done.

    `tensors` gives each tensor's name, shape (GGML order) and current type; `args` the hyperparameters the
    mix looks at (arch, n_layer, n_head, n_head_kv, n_expert); `check` is asked about each conversion."""
    if params.ftype not in DEFAULT_TYPE:
        raise LlamapyError(f"file type {params.ftype} can't be written by llamapy")
    default_type = int(DEFAULT_TYPE[params.ftype])
    n_layer, n_head, n_head_kv = args.n_layer, args.n_head, args.n_head_kv
    n_gqa = n_head // n_head_kv if n_head_kv else 0
    is_70b = args.arch in ("llama", "qwen2") and n_layer == 80 and n_head != n_head_kv
    names = reference_order(tensors)
    has_output = "output.weight" in tensors
    n_attn_v = sum(1 for n in names if any(k in n for k in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")))
    i_attn_v = i_ffn_down = 0

    plans = []
    for name in names:
        info = tensors[name]
        shape = info.shape[: _n_dims(info.shape)]
        quantize = _should_quantize(name, info.shape, params)
        new_type = info.type
        if quantize:
            new_type = default_type
            if not params.pure and default_type in QUANTIZED:
                new_type = tensor_type_for(
                    name, shape, params.ftype, n_layer, i_attn_v=i_attn_v, n_attn_v=n_attn_v, i_ffn=i_ffn_down,
                    n_gqa=n_gqa, n_expert=args.n_expert, arch=args.arch, has_output=has_output, is_70b=is_70b,
                    output_tensor_type=params.output_tensor_type)
                counter = _mix_counter(name)
                i_attn_v += counter == "attn_v"
                i_ffn_down += counter == "ffn_down"
            if params.token_embedding_type is not None and name == "token_embd.weight":
                new_type = params.token_embedding_type
            if params.output_tensor_type is not None and name == "output.weight":
                new_type = params.output_tensor_type
            quantize = info.type != new_type
        if quantize:
            if info.shape[0] % blck_size(new_type):
                raise LlamapyError(f"tensor {name}: row length {info.shape[0]} is not a multiple of "
                                   f"{_name(new_type)}'s block size {blck_size(new_type)}")
            if info.type in QUANTIZED and not params.allow_requantize:
                raise LlamapyError(f"tensor {name} is already quantized ({_name(info.type)}): requantizing "
                                   "loses quality; pass --allow-requantize to do it anyway")
            if check is not None:
                check(name, info.type, new_type)
        plans.append(TensorPlan(info, shape, int(new_type), quantize))
    return plans
