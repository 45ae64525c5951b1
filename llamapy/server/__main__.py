"""`python -m llamapy.server`: llama-cpp-python's server command line, served by `llamapy serve`.

    python -m llamapy.server --model model.gguf --n_ctx 2048 --port 8000
    python -m llamapy.server --config_file models.json     # {"host", "port", "models": [{"model", ...}]}

The options are llama-cpp-python's (with underscores; the dashed spellings work too) and its defaults
(port 8000, n_ctx 2048). GPU options are accepted and ignored. llamapy serves one model per process: a
config file listing several serves the first and says so.
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any

from ..errors import LlamapyError

# options that take a value and change nothing on a CPU-only engine (or that llamapy decides itself)
IGNORED_WITH_VALUE = ("n_gpu_layers", "split_mode", "main_gpu", "tensor_split", "rpc_servers", "n_threads_batch",
                      "n_ubatch", "rope_scaling_type", "rope_freq_base", "rope_freq_scale", "yarn_ext_factor",
                      "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx", "type_k", "type_v",
                      "numa", "cache_type", "cache_size", "hf_tokenizer_config_path",
                      "hf_pretrained_model_name_or_path", "hf_model_repo_id", "clip_model_path", "pooling_type",
                      "last_n_tokens_size", "logits_all", "use_mmap", "use_mlock", "offload_kqv", "flash_attn",
                      "cache", "interrupt_requests", "disable_ping_events", "root_path", "ssl_keyfile",
                      "ssl_certfile", "draft_model", "draft_model_num_pred_tokens", "lora_base", "lora_path",
                      "seed")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """A bad option: one line on stderr, exit status 2."""
        print(f"error: {message} (see python -m llamapy.server --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m llamapy.server",
                description="llama-cpp-python's server options, served by llamapy serve")

    def opt(name: str, **kw: Any) -> None:
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        p.add_argument(*flags, dest=name, **kw)

    opt("model", help="the GGUF model to serve (default: llamapy's default model)")
    opt("model_alias", help="the model name /v1/models lists")
    opt("n_ctx", type=int, help="context size (default 2048)")
    opt("n_batch", type=int, help="batch size (default 512)")
    opt("n_threads", type=int, help="threads (default: physical cores)")
    opt("chat_format", help="chat format (llama-cpp-python's names, or a llama.cpp template name)")
    opt("embedding", type=_bool, help="accepted: embeddings are always served")
    opt("verbose", type=_bool, help="log requests")
    opt("host", help="address to listen on (default localhost)")
    opt("port", type=int, help="port (default 8000)")
    opt("api_key", help="require this API key (Authorization: Bearer ...)")
    opt("config_file", help="a JSON (or YAML) file of server settings and a list of models")
    for name in IGNORED_WITH_VALUE:
        opt(name, help=argparse.SUPPRESS)
    return p


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def read_config(path: str) -> dict[str, Any]:
    """A llama-cpp-python config file: JSON, or YAML (.yaml/.yml, needs pyyaml)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise LlamapyError(f"--config_file {path}: {e.strerror}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise LlamapyError(f"--config_file {path}: reading YAML needs pyyaml (pip install pyyaml)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise LlamapyError(f"--config_file {path}: not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LlamapyError(f"--config_file {path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise LlamapyError(f"--config_file {path}: expected an object of settings")
    return data


def settings(argv: list[str] | None = None) -> dict[str, Any]:
    """The server's settings from the command line (and config file): serve()'s keyword arguments."""
    args = _parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    ignored = sorted(k for k in given if k in IGNORED_WITH_VALUE)
    if ignored:
        print(f"note: {', '.join('--' + k for k in ignored)}: accepted, no effect in llamapy", file=sys.stderr)
    merged: dict[str, Any] = {}
    if "config_file" in given:
        cfg = read_config(given["config_file"])
        models = cfg.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise LlamapyError("--config_file: 'models' must be a list of objects")
        merged.update({k: v for k, v in cfg.items() if k != "models"})
        if models:
            if len(models) > 1:
                names = ", ".join(str(m.get("model_alias") or m.get("model")) for m in models[1:])
                print(f"note: llamapy serves one model per process: serving the first of {len(models)} "
                      f"(not {names}); start one server per model", file=sys.stderr)
            merged.update(models[0])
    merged.update({k: v for k, v in given.items() if k != "config_file"})
    model = merged.get("model")
    if model is not None and not isinstance(model, str):
        raise LlamapyError("model: expected a path")
    chat_template = None
    if merged.get("chat_format"):
        from ..api.llama import CHAT_FORMATS

        chat_template = CHAT_FORMATS.get(merged["chat_format"], merged["chat_format"])
    port = merged.get("port", 8000)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise LlamapyError(f"port: expected 0..65535, got {port!r}")
    n_ctx = merged.get("n_ctx", 2048)
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
        raise LlamapyError(f"n_ctx: expected a non-negative integer, got {n_ctx!r}")
    return {
        "host": str(merged.get("host", "localhost")),
        "port": port,
        "verbose": bool(merged.get("verbose", False)),
        "model_path": model,
        "alias": merged.get("model_alias"),
        "n_ctx": n_ctx,
        "n_batch": int(merged.get("n_batch", 512)),
        "n_threads": merged.get("n_threads"),
        "api_key": merged.get("api_key"),
        "chat_template": chat_template,
    }


def main(argv: list[str] | None = None) -> int:
    from . import serve

    try:
        serve(**settings(argv))
    except LlamapyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
