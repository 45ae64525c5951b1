from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert-lora")
    def convert_lora(
        adapter: str = typer.Argument(..., help="PEFT LoRA adapter directory (adapter_config.json + "
                                                "adapter_model.safetensors or adapter_model.bin)."),
        base: str = typer.Option(..., "--base", help="The base model's Hugging Face directory (only its "
                                                     "config.json is read)."),
        outfile: str | None = typer.Option(None, "--outfile", help="Output path (default: a name like the "
                                              "reference's, in the adapter directory); {ftype} is filled in."),
        outtype: str = typer.Option("f16", "--outtype", help="f32, f16, bf16, q8_0 or auto, as the reference "
                                    "converter (which writes the LoRA halves in F32 for each of them)."),
        verbose: bool = typer.Option(False, "--verbose", help="One line per tensor; tracebacks on errors."),
        base_model_id: str | None = typer.Option(None, "--base-model-id", hidden=True),
        no_lazy: bool = typer.Option(False, "--no-lazy", hidden=True),
        dry_run: bool = typer.Option(False, "--dry-run", hidden=True),
        big_endian: bool = typer.Option(False, "--bigendian", "--big-endian", hidden=True),
    ):
        """Convert a PEFT LoRA adapter to a GGUF adapter (for --lora at run time, or export-lora)."""
        import sys

        from ..convert.lora_gguf import convert_lora as run
        from ..errors import LlamapyError
        from ..util.safe_text import printable

        del no_lazy
        if base_model_id is not None:
            raise LlamapyError("--base-model-id needs the Hugging Face hub; download the base model's config.json "
                               "and pass its directory as --base")
        if big_endian:
            raise LlamapyError("big-endian GGUF output is not supported")
        if dry_run:
            raise LlamapyError("--dry-run is not supported")

        def log(msg: str) -> None:
            print(printable(msg, 1000), file=sys.stderr)

        res = run(adapter, base, outfile, outtype, log=log if verbose else None, progress=not verbose)
        log(f"wrote {res.path} ({res.n_tensors} tensors, {res.nbytes / (1 << 20):.1f} MiB) in {res.seconds:.1f} s")
