"""Embeddings: /v1/embeddings (OpenAI) and /embedding (llama-server), computed on the engine thread."""
from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from starlette.requests import Request

from .common import Run, ServerState, read_json, tokenize_prompts
from .errors import bad_request
from .schemas import MAX_EMBED_INPUTS, EmbeddingRequest, validate


def _token_lists(state: ServerState, raw: Any, what: str) -> list[list[int]]:
    """The inputs to embed as token lists (text, ids, or a list of either), each checked for size."""
    if isinstance(raw, list) and len(raw) > MAX_EMBED_INPUTS:
        raise bad_request(f"'{what}' has {len(raw)} inputs; at most {MAX_EMBED_INPUTS} per request", what)
    token_lists = tokenize_prompts(state.backend, raw, add_special=True, what=what)
    n_max = state.backend.n_ctx_embed
    for toks in token_lists:
        if not toks:
            raise bad_request("an input is empty", what)
        if len(toks) > n_max:
            raise bad_request(f"an input has {len(toks)} tokens; at most {n_max} can be embedded", what)
    return token_lists


async def embed(state: ServerState, request: Request, raw: Any, what: str) -> list[tuple[np.ndarray, int]]:
    """(vector, number of tokens) of each input, computed on the engine thread."""
    token_lists = await asyncio.to_thread(_token_lists, state, raw, what)
    return await Run(state, embeds=token_lists).results(request)


async def run_embeddings(state: ServerState, request: Request, oai: bool) -> Any:
    """POST /v1/embeddings (`input`, OpenAI's answer) and /embedding (`content`: llama-server's answer)."""
    from .routes_ollama import pick, release

    req = validate(EmbeddingRequest, await read_json(request))
    st, entry = await pick(state, req.model)
    try:
        return await _run_embeddings(st, request, req, oai)
    finally:
        release(state, entry)


async def _run_embeddings(state: ServerState, request: Request, req: EmbeddingRequest, oai: bool) -> Any:
    if req.dimensions is not None and req.dimensions != state.backend.n_embd:
        raise bad_request(f"dimensions: this model's embeddings have {state.backend.n_embd} dimensions", "dimensions")
    if req.input is not None:
        results = await embed(state, request, req.input, "input")
    elif req.content is not None:
        results, oai = await embed(state, request, req.content, "content"), False
    else:
        raise bad_request("'input' or 'content' must be given", "input")
    if not oai:
        return [{"index": i, "embedding": [vec.tolist()]} for i, (vec, _) in enumerate(results)]
    data = []
    for i, (vec, _) in enumerate(results):
        if req.encoding_format == "base64":
            emb: Any = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
        else:
            emb = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n_tokens = sum(n for _, n in results)
    return {
        "object": "list",
        "data": data,
        "model": state.model_name(req.model),
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
