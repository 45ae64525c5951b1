from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        model: str = typer.Argument(..., help="Model directory: Meta (params.json + consolidated.*.pth) or "
                                              "Hugging Face (config.json + safetensors/.bin)."),
        ftype: str | None = typer.Argument(None, help="Old numeric output type: 0 = f32, 1 = f16.",
                                              show_default=False),
        outfile: str | None = typer.Option(None, "--outfile", help="Output path (default: a name like "
                                              "the reference's, in the model directory); {ftype} is filled in."),
        outtype: str | None = typer.Option(None, "--outtype", help="f32, f16, bf16, q8_0, auto, or any "
                                              "quantize type (q4_k_m, q4_0, ...); any case. Default: f16 "
                                              "(Hugging Face), the checkpoint's type (Meta)."),
        vocab_dir: str | None = typer.Option(None, "--vocab-dir", help="Directory holding tokenizer.model "
                                                "if it isn't beside the model (or its parent)."),
        vocab_type: str | None = typer.Option(None, "--vocab-type", help="spm or bpe (default: spm if "
                                                 "tokenizer.model exists, else bpe)."),
        vocab_only: bool = typer.Option(False, "--vocab-only", help="Write only the tokenizer metadata."),
        pad_vocab: bool = typer.Option(False, "--pad-vocab", help="Pad a tokenizer that is smaller than the "
                                       "embedding rows with placeholder tokens."),
        ctx: int | None = typer.Option(None, "--ctx", help="Training context length (default: from the "
                                          "config, or guessed for Meta checkpoints)."),
        model_name: str | None = typer.Option(None, "--model-name", help="general.name to write."),
        metadata: str | None = typer.Option(None, "--metadata", help="JSON file overriding general.* "
                                               "metadata."),
        skip_unknown: bool = typer.Option(False, "--skip-unknown", help="Leave out tensors that don't map "
                                          "to llama instead of failing."),
        lora: str | None = typer.Option(None, "--lora", help="PEFT LoRA adapter directories (comma-separated, "
                                           "applied in order) merged into the weights while converting."),
        lora_scale: float = typer.Option(1.0, "--lora-scale", help="Scale of the merged --lora adapters."),
        threads: int | None = typer.Option(None, "--threads", "-t", help="Threads for quantizing."),
        verbose: bool = typer.Option(False, "--verbose", help="One line per tensor; tracebacks on errors."),
        concurrency: int | None = typer.Option(None, "--concurrency", hidden=True),
        use_temp_file: bool = typer.Option(False, "--use-temp-file", hidden=True),
        no_lazy: bool = typer.Option(False, "--no-lazy", hidden=True),
        big_endian: bool = typer.Option(False, "--bigendian", "--big-endian", hidden=True),
    ):
        """Convert a Meta checkpoint or a Hugging Face model to GGUF (streamed; no torch needed)."""
        import sys

        from ..convert import convert as run_convert
        from ..errors import LlamapyError
        from ..util.safe_text import printable

        del concurrency, use_temp_file, no_lazy  # accepted for the reference's command lines; streaming makes them moot
        if big_endian:
            raise LlamapyError("big-endian GGUF output is not supported")
        if ftype is not None:
            if ftype not in ("0", "1"):
                raise LlamapyError(f"unexpected argument '{ftype}': the old numeric output type is 0 (f32) or 1 (f16)")
            if outtype is not None and outtype.lower() not in (("f32", "fp32") if ftype == "0" else ("f16", "fp16")):
                raise LlamapyError(f"output type {ftype} conflicts with --outtype {outtype}")
            outtype = outtype or ftype

        def log(msg: str) -> None:  # notes name tensors and files from the model: escaped and bounded
            print(printable(msg, 1000), file=sys.stderr)

        res = run_convert(
            model, outfile, outtype, vocab_dir=vocab_dir, vocab_type=vocab_type, vocab_only=vocab_only,
            pad_vocab=pad_vocab, ctx=ctx, model_name=model_name, metadata=metadata, skip_unknown=skip_unknown,
            n_threads=threads, progress=not verbose, log=log, verbose=verbose, lora=lora, lora_scale=lora_scale,
        )
        mib = res.nbytes / (1 << 20)
        what = "vocab" if vocab_only else f"{res.outtype}, {res.n_tensors} tensors"
        log(f"wrote {res.path} ({what}, {mib:.1f} MiB) in {res.seconds:.1f} s")
