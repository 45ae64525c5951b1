"""`llamapy export-lora`: GGUF LoRA adapters merged into a GGUF model, as llama-export-lora."""
from __future__ import annotations

from typing import Optional

import typer

from .options import LlamaCommand, Opt, with_options

_P = "Export LoRA"
TABLE = [
    Opt("model", ("-m", "--model"), "The base model (GGUF, any weight type).", Optional[str], None, panel=_P),
    Opt("lora", ("--lora",), "GGUF LoRA adapter, scale 1 (repeatable).", Optional[list[str]], None, panel=_P),
    Opt("lora_scaled", ("--lora-scaled",), "GGUF LoRA adapter and its scale (repeatable; after the --lora ones).",
        Optional[list[tuple[str, str]]], None, panel=_P),
    Opt("output", ("-o", "--output"), "The merged model.", str, "ggml-lora-merged-f16.gguf", panel=_P),
    Opt("outtype", ("--outtype",), "Type of the merged tensors (f32, f16, bf16, q8_0, q4_0, ...; base: each in "
        "its base tensor's type). Default: as llama-export-lora, F32 for an F32 base tensor, else F16.",
        Optional[str], None, panel=_P),
    Opt("threads", ("-t", "--threads"), "Threads for quantizing.", Optional[int], None, panel=_P),
    Opt("verbose", ("-v", "--verbose"), "A line per merged tensor.", bool, False, panel=_P),
]


def register(app: typer.Typer) -> None:
    @app.command("export-lora", cls=LlamaCommand)
    @with_options(TABLE)
    def export_lora(**opts):
        """Merge GGUF LoRA adapters into a GGUF model, as llama-export-lora."""
        import sys

        from ..convert.export_lora import export_lora as run
        from ..errors import LlamapyError
        from ..util.safe_text import printable
        from .option_values import lora_adapters

        def log(msg: str) -> None:
            print(printable(msg, 1000), file=sys.stderr)

        if not opts.get("model"):
            raise LlamapyError("-m MODEL is required (the base model's GGUF)")
        adapters = lora_adapters(opts)
        res = run(opts["model"], adapters, opts["output"], opts.get("outtype"), n_threads=opts.get("threads"),
                  log=log if opts.get("verbose") else None)
        log(f"merged {res.n_merged} tensors with {len(adapters)} LoRA adapter{'s' if len(adapters) > 1 else ''}; "
            f"wrote {res.path} ({res.n_tensors} tensors, {res.nbytes / (1 << 20):.1f} MiB) in {res.seconds:.1f} s")
