"""llama-server's /infill: a fill-in-the-middle prompt from the model's FIM tokens, laid out as the reference
lays it out (the repo-level pattern: extra files first, then [PRE]prefix+prompt [SUF]suffix [MID])."""
from __future__ import annotations

from typing import Any

from .errors import APIError, bad_request

# "\n\n--- snippet ---\n\n": the reference's separator of extra chunks when the model has no file separator
SNIPPET = "\n\n--- snippet ---\n\n"


def fim_ids(tok) -> tuple[int, int, int]:
    """The model's prefix, suffix and middle tokens, or a 501 naming the missing ones."""
    pre, suf, mid = tok.fim_pre_id, tok.fim_suf_id, tok.fim_mid_id
    missing = "".join(f"{what} token is missing. " for what, t in (("prefix", pre), ("suffix", suf),
                                                                     ("middle", mid)) if t is None)
    if missing:
        raise APIError(501, f"Infill is not supported by this model: {missing}")
    return pre, suf, mid


def check_body(data: Any) -> tuple[str, str, list[dict[str, str]], str]:
    """input_prefix, input_suffix, input_extra and prompt of an /infill body (400s with the reference's words)."""
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", "input_prefix")
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise bad_request('"prompt" must be a string', "prompt")
    for key in ("input_prefix", "input_suffix"):
        if key not in data:
            raise bad_request(f'"{key}" is required', key)
        if not isinstance(data[key], str):
            raise bad_request(f'"{key}" must be a string', key)
    extra = data.get("input_extra", [])
    ok = isinstance(extra, list) and all(
        isinstance(c, dict) and isinstance(c.get("text", ""), str) and isinstance(c.get("filename", "tmp"), str)
        for c in extra)
    if not ok:
        raise bad_request('"input_extra" must be an array of {"filename": string, "text": string}', "input_extra")
    return data["input_prefix"], data["input_suffix"], extra, prompt


def format_infill(backend, prefix: str, suffix: str, extra: list[dict[str, str]], prompt: str, n_predict: int,
                  spm: bool = False) -> list[int]:
    """The token ids of an infill prompt (the reference's format_infill)."""
    tok = backend.tok
    pre, suf, mid = fim_ids(tok)

    def enc(text: str) -> list[int]:
        return backend.tokenize(text, add_special=False, parse_special=False)

    t_prompt, t_prefix, t_suffix = enc(prompt), enc(prefix), enc(suffix)
    rep, sep = getattr(tok, "fim_rep_id", None), getattr(tok, "fim_sep_id", None)
    t_extra: list[int] = []
    if rep is not None:
        t_extra += [rep] + enc("myproject\n")
    for chunk in extra:
        if sep is not None:
            t_extra += [sep] + enc(chunk.get("filename", "tmp") + "\n")
        else:
            t_extra += enc(SNIPPET)
        t_extra += enc(chunk.get("text", ""))
    if sep is not None:
        t_extra += [sep] + enc("filename\n")

    n_batch, n_ctx = backend.n_batch, backend.n_ctx
    n_prefix = min(len(t_prefix), 3 * (n_batch // 4))
    n_suffix = min(len(t_suffix), max(0, n_batch // 4 - (2 + len(t_prompt))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * max(n_predict, 0)), len(t_extra))
    head = [pre] + t_prefix[len(t_prefix) - n_prefix:] + t_prompt
    tail = [suf] + t_suffix[:n_suffix]
    first, second = (tail, head) if spm else (head, tail)
    if getattr(backend, "add_bos", False) and tok.bos_id is not None:
        first = [tok.bos_id] + first
    return (t_extra[len(t_extra) - n_extra:] if n_extra else []) + first + second + [mid]
