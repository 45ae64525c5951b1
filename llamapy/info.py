"""`llamapy info`: what a GGUF file holds: metadata, tensors, totals."""
from __future__ import annotations

import json
import platform
from collections import Counter
from typing import Any

import numpy as np

from .ggufio.constants import ValueType
from .ggufio.reader import GGUFReader, GGUFValue
from .util.safe_text import json_escape_unsafe, printable, rich_text

ARRAY_SHOWN = 8


def _plain(v: GGUFValue, full: bool) -> Any:
    if v.type != ValueType.ARRAY:
        return v.value
    vals = v.value
    if isinstance(vals, np.ndarray):
        vals = vals.tolist()
    else:
        vals = [_plain(x, full) if isinstance(x, GGUFValue) else x for x in vals]
    if full or len(vals) <= ARRAY_SHOWN:
        return vals
    return {"type": f"array of {v.subtype.name}", "length": len(vals), "head": vals[:ARRAY_SHOWN]}


def summarize(path: str, with_tensors: bool = True) -> dict:
    """A plain-data description of a GGUF file (what `info --json` prints)."""
    with GGUFReader(path) as r:
        n_params = sum(t.n_elements for t in r.tensors.values())
        n_bytes = sum(t.nbytes for t in r.tensors.values())
        out = {
            "file": path,
            "version": r.version,
            "alignment": r.alignment,
            "file_size": r.size,
            "metadata": {k: _plain(v, False) for k, v in r.kv.items()},
            "n_tensors": len(r.tensors),
            "tensor_types": dict(Counter(t.type_name for t in r.tensors.values()).most_common()),
            "n_params": n_params,
            "tensor_bytes": n_bytes,
            "bits_per_weight": round(8 * n_bytes / n_params, 4) if n_params else 0.0,
            "architecture": arch_traits(r),
        }
        if with_tensors:
            out["tensors"] = [
                {"name": t.name, "shape": list(t.shape), "type": t.type_name, "bytes": t.nbytes}
                for t in r.tensors.values()
            ]
    return out


def arch_traits(r: GGUFReader) -> dict:
    """How llamapy runs the file's architecture: its traits (what sets it apart from llama), or why not."""
    from .errors import LlamapyError
    from .model_args import ARCH_TRAITS, SUPPORTED_ARCHS, ModelArgs, file_size_label

    name = r.architecture
    if name not in ARCH_TRAITS:
        return {"name": name, "supported": False, "error": f"llamapy runs {', '.join(SUPPORTED_ARCHS)}"}
    try:
        a = ModelArgs.from_gguf(r)
    except LlamapyError as e:
        return {"name": name, "supported": False, "error": str(e)}
    base = ModelArgs(n_vocab=1, n_embd=1, n_layer=1, n_head=1, n_ff=1)
    traits = {k: getattr(a, k) for k in ("rope_neox", "qk_norm", "post_norms", "act", "embd_scaled", "attn_scale",
                                          "attn_softcap", "final_softcap", "n_swa", "swa_pattern",
                                          "rope_freq_base_swa", "fused_qkv", "fused_gate_up")
              if getattr(a, k) != getattr(base, k)}
    return {"name": name, "supported": True, "size": file_size_label(r, a), "traits": traits}


def system_info() -> dict:
    from . import __version__
    from .native import kernels_active, kernels_best

    return {
        "llamapy": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "kernels_active": kernels_active(),
        "kernels_best": kernels_best(),
    }


def _fmt_value(v: Any) -> str:
    if isinstance(v, dict) and "length" in v:
        head = ", ".join(repr(x) for x in v["head"])
        return printable(f"[{head}, ...] ({v['length']} x {v['type'].split()[-1]})")
    s = repr(v) if isinstance(v, str) else str(v)
    return printable(s if len(s) <= 100 else s[:97] + "...")


def print_info(info: dict, console) -> None:
    """The tables `llamapy info` prints. Keys, values and names are the file's data: shown as Text (never
    Rich markup), with control and bidi characters escaped."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text.assemble((printable(info["file"]), "bold"), f": GGUF v{info['version']}, "
                                f"{info['file_size']:,} bytes"))
    meta = Table(title="metadata", show_header=True, header_style="bold")
    meta.add_column("key")
    meta.add_column("value", overflow="fold")
    for k, v in info["metadata"].items():
        meta.add_row(rich_text(k, 200), Text(_fmt_value(v)))
    console.print(meta)
    if "tensors" in info:
        tt = Table(title="tensors", show_header=True, header_style="bold")
        tt.add_column("name")
        tt.add_column("shape")
        tt.add_column("type")
        tt.add_column("bytes", justify="right")
        for t in info["tensors"]:
            tt.add_row(rich_text(t["name"], 200), " x ".join(map(str, t["shape"])), t["type"], f"{t['bytes']:,}")
        console.print(tt)
    arch = info.get("architecture")
    if arch:
        if arch["supported"]:
            traits = ", ".join(f"{k}={v}" for k, v in arch["traits"].items()) or "llama's"
            console.print(f"architecture {arch['name']} ({arch['size']}): runs, traits {traits}", markup=False)
        else:
            console.print(f"architecture {arch['name']}: llamapy can't run it" +
                          (f" ({arch['error']})" if "error" in arch else ""), markup=False)
    types = ", ".join(f"{k} x{v}" for k, v in info["tensor_types"].items())
    console.print(
        f"{info['n_tensors']} tensors ({types}); {info['n_params'] / 1e6:.2f}M parameters; "
        f"{info['tensor_bytes'] / 2**20:.2f} MiB; {info['bits_per_weight']:.2f} bits per weight"
    )


def to_json(info: dict) -> str:
    """JSON text with non-ASCII kept, but C1 controls, bidi overrides and lone surrogates as \\u escapes
    (JSON itself only escapes C0), so the JSON is safe on a terminal and the same data."""
    return json_escape_unsafe(json.dumps(info, indent=2, ensure_ascii=False, default=str))
