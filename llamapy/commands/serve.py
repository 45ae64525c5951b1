from __future__ import annotations

from typing import Optional

import typer

from ..errors import LlamapyError
from .options import CONTEXT_SHIFT, SAMPLING, sampler_params, with_options


def register(app: typer.Typer) -> None:
    @app.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
    @with_options(SAMPLING, [CONTEXT_SHIFT])
    def serve(
        model: Optional[str] = typer.Option(None, "-m", "--model", help="GGUF model (default: the default model)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free port)."),
        ctx_size: int = typer.Option(4096, "-c", "--ctx-size", "--n_ctx",
                                     help="Context size, split over the slots (0: the model's)."),
        parallel: int = typer.Option(1, "-np", "--parallel", help="Slots: requests decoded together."),
        threads: Optional[int] = typer.Option(None, "-t", "--threads", "--n_threads", help="CPU threads."),
        batch_size: int = typer.Option(512, "-b", "--batch-size", "-ub", "--ubatch-size",
                                       help="Tokens per forward step."),
        n_predict: int = typer.Option(-1, "-n", "--n-predict", "--predict",
                                      help="Default token limit of a request (-1: until the end or the context)."),
        api_key: Optional[str] = typer.Option(None, "--api-key", "--api_key", envvar="LLAMA_API_KEY",
                                              help="Require 'Authorization: Bearer KEY'."),
        api_key_file: Optional[str] = typer.Option(None, "--api-key-file", help="Read the API key from a file."),
        alias: Optional[str] = typer.Option(None, "-a", "--alias", "--model_alias",
                                            help="Model name the API reports."),
        chat_template: Optional[str] = typer.Option(None, "--chat-template",
                                                    help="Built-in template name or Jinja text."),
        chat_template_file: Optional[str] = typer.Option(None, "--chat-template-file",
                                                         help="Jinja chat template read from a file."),
        embedding: bool = typer.Option(False, "--embedding", "--embeddings",
                                       help="Embeddings only (completion endpoints answer 501)."),
        max_queue: int = typer.Option(32, "--max-queue", help="Requests that may wait for a slot before 503."),
        max_body: int = typer.Option(4 << 20, "--max-body", help="Largest request body in bytes (413 above)."),
        timeout: float = typer.Option(600, "-to", "--timeout",
                                      help="Drop a client that reads nothing of the answer for this many seconds."),
        read_timeout: float = typer.Option(30, "--read-timeout",
                                           help="Seconds a request's headers and body may take to arrive."),
        cors_origin: Optional[list[str]] = typer.Option(None, "--cors-origin",
                                                        help="Web origin allowed to call a server without "
                                                             "--api-key (repeatable)."),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Log every request."),
        n_gpu_layers: Optional[int] = typer.Option(None, "-ngl", "--n-gpu-layers", "--gpu-layers", hidden=True),
        jinja: bool = typer.Option(False, "--jinja", hidden=True),
        flash_attn: bool = typer.Option(False, "-fa", "--flash-attn", hidden=True),
        cont_batching: bool = typer.Option(False, "-cb", "--cont-batching", hidden=True),
        **opts,
    ):
        """Serve the model over HTTP: llama-server's API, OpenAI's /v1 and Ollama's /api, and a chat page.

        The sampling options set the defaults of requests that don't give their own."""
        import sys

        from ..server import serve as run_server

        if api_key_file:
            try:
                with open(api_key_file, encoding="utf-8") as f:
                    api_key = f.readline().strip()
            except OSError as e:
                raise LlamapyError(f"{api_key_file}: can't read the API key: {e.strerror}") from None
            if not api_key:
                raise LlamapyError(f"{api_key_file}: the first line is empty; put the key there")
        if n_gpu_layers is not None:
            print("note: -ngl ignored (llamapy runs on the CPU)", file=sys.stderr)
        for name, v in (("port", port), ("--max-queue", max_queue)):
            if v < 0:
                raise LlamapyError(f"{name} must be >= 0")
        if not (timeout > 0 and read_timeout > 0):
            raise LlamapyError("--timeout and --read-timeout must be positive numbers of seconds")
        if max_body < 1024:
            raise LlamapyError("--max-body must be at least 1024 bytes")
        sampling = sampler_params(opts)
        sampling.check()
        run_server(
            host=host, port=port, verbose=verbose, timeout=timeout, read_timeout=read_timeout,
            cors_origins=tuple(cors_origin or ()), model_path=model, n_ctx=ctx_size, n_parallel=parallel,
            n_threads=threads, n_batch=batch_size, api_key=api_key, alias=alias, chat_template=chat_template,
            chat_template_file=chat_template_file,
            embedding=embedding, n_predict=n_predict, max_queue=max_queue, max_body=max_body,
            sampling=sampling, ctx_shift=opts["context_shift"],
        )
