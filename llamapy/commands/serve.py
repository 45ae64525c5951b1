"""`llamapy serve`: llama-server's command line (and its LLAMA_ARG_* variables); a thin parser over
llamapy.server.serve()."""
from __future__ import annotations

import json
import os

import typer

from ..errors import LlamapyError
from .options import COMMON, SAMPLING, SERVER, LlamaCommand, with_options
from .options_draft import SPECULATIVE, draft_options

TABLES = (COMMON, SERVER, SAMPLING, SPECULATIVE)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "on", "enabled")


def read_api_keys(path: str) -> list[str]:
    """Every non-empty line of the file is a key, as llama-server's --api-key-file reads it."""
    try:
        with open(path, encoding="utf-8") as f:
            keys = [line.rstrip("\r\n") for line in f]
    except OSError as e:
        raise LlamapyError(f"{path}: can't read the API keys: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LlamapyError(f"{path}: the API key file is not UTF-8 text") from None
    keys = [k for k in keys if k]
    if not keys:
        raise LlamapyError(f"{path}: no API key in the file (one key a line)")
    return keys


def server_grammar(grammar: str | None, grammar_file: str | None, json_schema: str | None):
    """--grammar, --grammar-file or -j as the GrammarSpec of requests that give no grammar (None: none given)."""
    from ..grammar.options import check_options, read_grammar_file
    from ..server.common import GrammarSpec

    check_options(grammar, grammar_file, json_schema)
    if grammar_file is not None:
        return GrammarSpec("gbnf", read_grammar_file(grammar_file), f"--grammar-file '{grammar_file}'")
    if grammar is not None:
        return GrammarSpec("gbnf", grammar, "--grammar")
    if json_schema is not None:
        try:
            schema = json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise LlamapyError(f"-j/--json-schema: not JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
        if not isinstance(schema, (dict, bool)):
            raise LlamapyError("-j/--json-schema: a JSON schema must be an object")
        return GrammarSpec("json_schema", schema, "-j/--json-schema")
    return None


def register(app: typer.Typer) -> None:
    @app.command("serve", cls=LlamaCommand, context_settings={"help_option_names": ["-h", "--help", "--usage"]})
    @with_options(*TABLES, env=True, skip=("file", "binary_file"))
    def serve(
        max_queue: int = typer.Option(32, "--max-queue", help="Requests that may wait for a slot before 503.",
                                      rich_help_panel="Server"),
        max_body: int = typer.Option(4 << 20, "--max-body", help="Largest request body in bytes (413 above).",
                                     rich_help_panel="Server"),
        **opts,
    ):
        """Serve the model over HTTP: llama-server's API, OpenAI's /v1 and Ollama's /api, and a chat page.

        The sampling options set the defaults of requests that don't give their own."""
        from ..engine.load import ubatch
        from ..server import serve as run_server
        from .option_values import apply_process_options, load_options, resolve_hf_model, sampler_params
        from .options import announce

        reasoning_format = opts.pop("reasoning_format") or "deepseek"  # used here: no note
        default_grammar = server_grammar(opts["grammar"], opts["grammar_file"], opts["json_schema"])
        announce(opts, *TABLES)
        api_key: list[str] = [opts["api_key"]] if opts["api_key"] else []  # both add keys, as llama-server
        if opts["api_key_file"]:
            api_key += read_api_keys(opts["api_key_file"])
        if max_queue < 0:
            raise LlamapyError("--max-queue must be >= 0")
        if not (opts["timeout"] > 0 and opts["read_timeout"] > 0):
            raise LlamapyError("--timeout and --read-timeout must be positive numbers of seconds")
        if max_body < 1024:
            raise LlamapyError("--max-body must be at least 1024 bytes")
        if bool(opts["ssl_key_file"]) != bool(opts["ssl_cert_file"]):
            raise LlamapyError("HTTPS needs both --ssl-key-file and --ssl-cert-file")
        for name in ("ssl_key_file", "ssl_cert_file"):
            if opts[name] and not os.path.isfile(opts[name]):
                raise LlamapyError(f"--{name.replace('_', '-')} {opts[name]}: no such file")
        if opts["path"] and not os.path.isdir(opts["path"]):
            raise LlamapyError(f"--path {opts['path']}: no such folder")
        slot_save_path = opts["slot_save_path"]
        if slot_save_path:
            if os.path.exists(slot_save_path) and not os.path.isdir(slot_save_path):
                raise LlamapyError(f"--slot-save-path {slot_save_path}: not a folder")
            try:
                os.makedirs(slot_save_path, exist_ok=True)
            except OSError as e:
                raise LlamapyError(f"--slot-save-path {slot_save_path}: can't create it: {e.strerror}") from None
        if opts["reranking"]:
            raise LlamapyError("--reranking: the model has no rerank head (llamapy's llama models have none); "
                               "reranking needs a model with a classifier output")
        sampling = sampler_params(opts)
        sampling.check()
        keep_alive = None
        if opts["keep_alive"] is not None:
            from ..server.manager import parse_keep_alive

            keep_alive = parse_keep_alive(opts["keep_alive"], "--keep-alive")
        allow = []
        for d in opts["allow_path"] or ():
            if not os.path.isdir(d):
                raise LlamapyError(f"--allow-path {d}: no such folder")
            allow.append(os.path.realpath(d))
        speculative = draft_options(opts)
        apply_process_options(opts)
        resolve_hf_model(opts)
        load = load_options(opts)
        run_server(
            host=opts["host"], port=opts["port"], verbose=opts["verbose"], model_path=opts["model"],
            timeout=opts["timeout"], read_timeout=opts["read_timeout"],
            cors_origins=tuple(opts["cors_origin"] or ()),
            n_ctx=opts["ctx_size"], n_parallel=opts["parallel"], n_threads=opts["threads"],
            n_batch=ubatch(opts["batch_size"], load), api_key=api_key, alias=opts["alias"],
            chat_template=opts["chat_template"], chat_template_file=opts["chat_template_file"],
            embedding=opts["embedding"], n_predict=opts["n_predict"], max_queue=max_queue, max_body=max_body,
            sampling=sampling, ctx_shift=opts["context_shift"] and not _env_flag("LLAMA_ARG_NO_CONTEXT_SHIFT"),
            load=load, ssl_keyfile=opts["ssl_key_file"], ssl_certfile=opts["ssl_cert_file"], speculative=speculative,
            endpoints=dict(
                metrics_enabled=opts["metrics"], slots_enabled=opts["slots"] and not
                _env_flag("LLAMA_ARG_NO_ENDPOINT_SLOTS"), props_writable=opts["props"], webui=not opts["no_webui"],
                static_path=opts["path"], threads_http=opts["threads_http"], n_keep=opts["keep"],
                spm_infill=opts["spm_infill"], model_writes=not opts["no_model_writes"], allow_paths=tuple(allow),
                slot_save_path=slot_save_path or None, reasoning_format=reasoning_format,
                default_grammar=default_grammar,
            ),
            models_max=opts["models_max"], keep_alive=keep_alive,
        )
