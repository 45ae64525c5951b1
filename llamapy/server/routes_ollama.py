"""Ollama-compatible endpoints: /api/generate, /api/chat (NDJSON streams), /api/embed, /api/tags, /api/show, ...

Many local tools speak Ollama's API. A request naming a model of the store gets that model (manager.py);
any other name gets the server's own model (-m, or the default model). The store's verbs (/api/tags, /api/show,
/api/ps, /api/create, /api/pull, ...) are in routes_store.py.
Durations are nanoseconds, as Ollama reports them; streaming is on unless `"stream": false`.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from .. import __version__
from ..chat.tool_parse import StreamParser
from ..chat.tool_parse import parse as parse_tool_calls
from ..errors import LlamapyError
from .common import (
    Run,
    RunStream,
    ServerState,
    chat_prompt,
    check_token_ids,
    completion_stops,
    gen_request,
    n_predict_of,
    ndjson,
    ollama_format_spec,
    read_json,
    read_request,
    request_grammar,
)
from .embeddings import embed
from .errors import APIError, bad_request
from .scheduler import DoneEvent, GenResult, TokenEvent
from .schemas import (
    ChatMessage,
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaOptions,
    validate,
)
from .tools import messages_of, setup_grammar, tool_setup


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _final(r: GenResult, t0: float, context: list[int] | None = None) -> dict[str, Any]:
    ms = 1_000_000
    out = {
        "done": True,
        "done_reason": r.finish_reason,
        "total_duration": int((asyncio.get_running_loop().time() - t0) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": r.n_prompt,
        "prompt_eval_duration": int(r.t_prompt_ms * ms),
        "eval_count": r.n_decoded,
        "eval_duration": int(r.t_gen_ms * ms),
    }
    if context is not None:
        out["context"] = context
    return out


async def pick(state: ServerState, model: str | None, keep_alive: Any = None) -> tuple[ServerState, Any]:
    """The state that answers for `model` (a stored model, loaded if needed; else the server's own) and the
    manager's entry to release() once the request's jobs are submitted."""
    if state.models is None:
        return state, None
    return await state.models.acquire(model, keep_alive)


def release(state: ServerState, entry: Any) -> None:
    if state.models is not None:
        state.models.release(entry)


def _details(b) -> dict[str, Any]:
    m = b.meta()
    n = m.get("n_params", 0)
    size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
    arch = b.metadata.get("general.architecture", "")
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else None,
            "parameter_size": size, "quantization_level": b.file_type_name()}


def register(router: APIRouter, state: ServerState) -> None:
    def refuse_generation():
        if state.embedding_only:
            raise APIError(501, "this server was started with --embedding: completions are off")

    def options(st: ServerState, o: OllamaOptions | None) -> tuple[OllamaOptions, int, Any]:
        """Sampling options, the token limit and the stop strings (num_ctx is fixed when the model loads)."""
        o = o or OllamaOptions()
        return o, n_predict_of(st, o.num_predict), o.stop

    async def run(st: ServerState, request: Request, req: Any, prompt_text: str, chat: bool, with_context: bool,
                  context: list[int] | None = None, setup: Any = None):
        b = st.backend
        o, n_predict, stop = options(st, req.options)
        fmt = setup.format if setup is not None and setup.active else None
        grammar = await asyncio.to_thread(setup_grammar, st, setup) if fmt else None
        if grammar is None:
            grammar = await request_grammar(st, ollama_format_spec(req.format))
        if fmt:
            stop = (list(stop) if isinstance(stop, list) else [stop] if stop else []) + setup.stops
        prompt = check_token_ids(context, b.n_vocab, "context") if context else []
        prompt = prompt + await asyncio.to_thread(b.tokenize, prompt_text, add_special=not prompt, parse_special=True)
        gen = gen_request(st, o, prompt, n_predict=n_predict, stop=completion_stops(st, stop, chat=True),
                          grammar=grammar)
        model = st.model_name(req.model)
        t0 = asyncio.get_running_loop().time()
        job = Run(st, [gen], stream=req.stream)
        key = "message" if chat else "response"

        def body(text: str) -> Any:
            return {"role": "assistant", "content": text} if chat else text

        def with_calls(r: GenResult, msg: dict[str, Any], parsed: Any) -> dict[str, Any]:
            if parsed.tool_calls:
                msg["tool_calls"] = [c.ollama() for c in parsed.tool_calls]
            return msg

        if not req.stream:
            (r,) = await job.results(request)
            ctx = prompt + r.tokens if with_context else None
            out = body(r.content)
            if fmt:
                parsed = parse_tool_calls(r.content, fmt)
                out = with_calls(r, body(parsed.content), parsed)
            return JSONResponse({"model": model, "created_at": _now(), key: out, **_final(r, t0, ctx)})

        parser = StreamParser(fmt) if fmt else None

        async def events():
            try:
                async for ev in job.events():
                    if isinstance(ev, TokenEvent) and ev.text:
                        if parser is not None:  # content as it comes; calls once whole (as Ollama sends them)
                            for d in parser.feed(ev.text):
                                if d.get("content"):
                                    yield ndjson({"model": model, "created_at": _now(), key: body(d["content"]),
                                                  "done": False})
                            continue
                        yield ndjson({"model": model, "created_at": _now(), key: body(ev.text), "done": False})
                    elif isinstance(ev, DoneEvent):
                        r = ev.result
                        if parser is not None:
                            deltas, parsed = parser.finish()
                            rest = "".join(d.get("content", "") for d in deltas)
                            if rest or parsed.tool_calls:
                                yield ndjson({"model": model, "created_at": _now(),
                                              key: with_calls(r, body(rest), parsed), "done": False})
                        ctx = prompt + r.tokens if with_context else None
                        yield ndjson({"model": model, "created_at": _now(), key: body(""), **_final(r, t0, ctx)})
            except APIError as e:
                yield ndjson({"error": e.message})

        return RunStream(events(), job, "application/x-ndjson")

    async def loaded_only(req: Any, key: str, empty: Any) -> JSONResponse:
        """Ollama's empty request: it loads the model (or, with keep_alive 0, unloads it)."""
        if state.models is not None and req.keep_alive is not None and req.model:
            from .manager import parse_keep_alive

            try:
                ka = parse_keep_alive(req.keep_alive)
            except LlamapyError as e:
                raise bad_request(str(e), "keep_alive") from None
            if ka == 0:
                await state.models.unload(req.model)
                return JSONResponse({"model": req.model, "created_at": _now(), key: empty, "done": True,
                                     "done_reason": "unload"})
        st, entry = await pick(state, req.model, req.keep_alive)
        release(state, entry)
        return JSONResponse({"model": st.model_name(req.model), "created_at": _now(), key: empty, "done": True,
                             "done_reason": "load"})

    @router.post("/api/generate")
    async def generate(request: Request):
        refuse_generation()
        req = validate(OllamaGenerateRequest, await read_json(request))
        if req.images:
            raise bad_request("images are not supported (text only)", "images")
        if not req.prompt:  # Ollama: an empty prompt just loads the model
            return await loaded_only(req, "response", "")
        st, entry = await pick(state, req.model, req.keep_alive)
        try:
            if req.raw:
                text = req.prompt
            else:
                msgs = ([ChatMessage(role="system", content=req.system)] if req.system else [])
                text = await asyncio.to_thread(chat_prompt, st, [*msgs, ChatMessage(role="user", content=req.prompt)])
            return await run(st, request, req, text, chat=False, with_context=True, context=req.context)
        finally:
            release(state, entry)

    @router.post("/api/chat")
    async def chat(request: Request):
        refuse_generation()
        req = await read_request(request, OllamaChatRequest)
        if not req.messages:
            return await loaded_only(req, "message", {"role": "assistant", "content": ""})
        st, entry = await pick(state, req.model, req.keep_alive)
        try:
            setup = None
            if req.tools or any(m.role == "tool" or m.tool_calls for m in req.messages):
                spec = ollama_format_spec(req.format)
                setup = await asyncio.to_thread(tool_setup, st, messages_of(req), req.tools or [], None, True, spec)
            msgs = setup.messages if setup is not None else req.messages
            extra = setup.render_kwargs if setup is not None and setup.active else {}
            text = await asyncio.to_thread(chat_prompt, st, msgs, **extra)
            return await run(st, request, req, text, chat=True, with_context=False, setup=setup)
        finally:
            release(state, entry)

    @router.post("/api/embed")
    async def embed_(request: Request):
        req = validate(OllamaEmbedRequest, await read_json(request))
        t0 = asyncio.get_running_loop().time()
        st, entry = await pick(state, req.model, req.keep_alive)
        try:
            results = await embed(st, request, req.input, "input")
        finally:
            release(state, entry)
        return {"model": st.model_name(req.model), "embeddings": [v.tolist() for v, _ in results],
                "total_duration": int((asyncio.get_running_loop().time() - t0) * 1e9), "load_duration": 0,
                "prompt_eval_count": sum(n for _, n in results)}

    @router.post("/api/embeddings")
    async def embeddings_(request: Request):
        req = validate(OllamaEmbedRequest, await read_json(request))
        st, entry = await pick(state, req.model, req.keep_alive)
        try:
            ((v, _),) = await embed(st, request, req.prompt, "prompt")
        finally:
            release(state, entry)
        return {"embedding": v.tolist()}

    @router.get("/api/version")
    async def version():
        return {"version": __version__}
