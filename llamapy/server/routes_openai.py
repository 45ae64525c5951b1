"""OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings.

The official `openai` client works unchanged. With one model loaded, any `model` name is accepted.
Streams are server-sent events ending with `data: [DONE]`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from ..chat.reasoning import ReasoningStream, applies, opens_thought, split_reasoning
from ..chat.tool_parse import StreamParser
from ..chat.tool_parse import parse as parse_tool_calls
from .common import (
    Run,
    RunStream,
    ServerState,
    chat_prompt,
    completion_stops,
    gen_request,
    grammar_spec,
    n_predict_of,
    new_id,
    read_json,
    read_request,
    request_grammar,
    sse,
    tokenize_prompts,
)
from .embeddings import run_embeddings
from .errors import APIError, bad_request
from .routes_ollama import pick, release
from .scheduler import DoneEvent, GenResult, TokenEvent
from .schemas import ChatRequest, OAICompletionRequest, finite, validate
from .tools import messages_of, setup_grammar, tool_setup

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _token_text(backend, tok: int) -> tuple[str, list[int]]:
    b = backend.piece(tok)
    return b.decode("utf-8", "replace"), list(b)


def chat_logprobs(backend, probs: list[dict[str, Any]], top_n: int) -> dict[str, Any]:
    """OpenAI chat `logprobs`: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}."""
    content = []
    for p in probs:
        text, raw = _token_text(backend, p["id"])
        top = []
        for t, lp in p["top"][:top_n]:
            tt, tb = _token_text(backend, t)
            top.append({"token": tt, "logprob": finite(lp), "bytes": tb})
        content.append({"id": p["id"], "token": text, "logprob": finite(p["logprob"]), "bytes": raw,
                        "top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_logprobs(backend, probs: list[dict[str, Any]], top_n: int, offset: int = 0) -> dict[str, Any]:
    """OpenAI legacy completions `logprobs`: tokens, token_logprobs, top_logprobs, text_offset."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for p in probs:
        text, _ = _token_text(backend, p["id"])
        out["tokens"].append(text)
        out["token_logprobs"].append(finite(p["logprob"]))
        out["top_logprobs"].append({_token_text(backend, t)[0]: finite(lp) for t, lp in p["top"][:top_n]})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def usage(results: list[GenResult]) -> dict[str, int]:
    p = sum(r.n_prompt for r in results)
    c = sum(r.n_decoded for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _include_usage(stream_options: dict[str, Any] | None) -> bool:
    return bool(stream_options and stream_options.get("include_usage") is True)


def register(router: APIRouter, state: ServerState) -> None:
    b = state.backend

    async def models():
        data = [{"id": state.model_id, "object": "model", "created": state.created, "owned_by": "llamapy",
                 "meta": b.meta()}]
        if state.models is not None:  # and every model of the store, by name
            entries = await asyncio.to_thread(state.models.store.entries)
            data += [{"id": str(e.name), "object": "model", "created": int(e.modified), "owned_by": "llamapy"}
                     for e in entries]
        return {"object": "list", "data": data}

    router.add_api_route("/v1/models", models, methods=["GET"])
    router.add_api_route("/models", models, methods=["GET"])

    def _refuse_generation():
        if state.embedding_only:
            raise APIError(501, "this server was started with --embedding: completions are off")

    @router.post("/v1/completions")
    async def completions(request: Request):
        _refuse_generation()
        req = validate(OAICompletionRequest, await read_json(request))
        st, entry = await pick(state, req.model)
        try:
            if (req.n or 1) != 1 or (req.best_of or 1) != 1:
                raise bad_request("only one choice per prompt is supported (n = 1, best_of = 1)", "n")
            if req.echo:
                raise bad_request("echo is not supported", "echo")
            if req.suffix:
                raise bad_request("suffix is not supported", "suffix")
            grammar = await request_grammar(st, grammar_spec(req))
            prompts = await asyncio.to_thread(tokenize_prompts, st.backend, req.prompt)
            top_n = req.logprobs or 0
            n_probs = req.n_probs if req.n_probs else (max(1, top_n) if req.logprobs is not None else 0)
            gens = [gen_request(st, req, p, n_predict=n_predict_of(st, req.n_predict, req.max_tokens),
                                stop=completion_stops(st, req.stop, chat=False), n_probs=n_probs,
                                cache_prompt=req.cache_prompt, grammar=grammar) for p in prompts]
            cid, created, model = new_id("cmpl"), int(time.time()), st.model_name(req.model)
            head = {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": st.fingerprint}
            run = Run(st, gens, stream=bool(req.stream))
            if not req.stream:
                results = await run.results(request)
                choices = [{"text": r.content, "index": i,
                            "logprobs": completion_logprobs(st.backend, r.probs, top_n) if n_probs else None,
                            "finish_reason": r.finish_reason} for i, r in enumerate(results)]
                return JSONResponse({**head, "choices": choices, "usage": usage(results)})

            async def events():
                done: list[GenResult] = []
                offsets = [0] * len(gens)
                try:
                    async for ev in run.events():
                        if isinstance(ev, TokenEvent):
                            if not ev.text and ev.probs is None:
                                continue
                            lp = (completion_logprobs(st.backend, [ev.probs], top_n, offsets[ev.index])
                                  if ev.probs else None)
                            offsets[ev.index] += len(ev.text)
                            part = {**head, "choices": [{"text": ev.text, "index": ev.index, "logprobs": lp,
                                                         "finish_reason": None}]}
                            yield sse(part | ({"timings": ev.timings} if ev.timings is not None else {}))
                        elif isinstance(ev, DoneEvent):
                            done.append(ev.result)
                            last = {**head, "choices": [{"text": "", "index": ev.index, "logprobs": None,
                                                         "finish_reason": ev.result.finish_reason}]}
                            if len(done) == len(gens) and not _include_usage(req.stream_options):
                                last["usage"] = usage(done)
                            yield sse(last)
                    if _include_usage(req.stream_options):
                        yield sse({**head, "choices": [], "usage": usage(done)})
                except APIError as e:
                    yield sse(e.body())
                yield b"data: [DONE]\n\n"

            return RunStream(events(), run, "text/event-stream", SSE_HEADERS)
        finally:
            release(state, entry)

    async def chat_completions(request: Request):
        _refuse_generation()
        req = await read_request(request, ChatRequest)
        st, entry = await pick(state, req.model)
        try:
            if (req.n or 1) != 1:
                raise bad_request("only one choice is supported (n = 1)", "n")
            if req.top_logprobs and not req.logprobs:
                raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
            spec = grammar_spec(req, req.response_format)
            setup = None
            if req.tools or req.tool_choice not in (None, "none", "auto") \
                    or any(m.role == "tool" or m.tool_calls for m in req.messages):
                setup = await asyncio.to_thread(tool_setup, st, messages_of(req), req.tools or [], req.tool_choice,
                                                req.parallel_tool_calls, spec)
            if setup is not None and setup.active:
                grammar = await asyncio.to_thread(setup_grammar, st, setup)
                if grammar is None and spec is not None:  # a native format: "auto" with a response format
                    grammar = await request_grammar(st, spec)
                text = await asyncio.to_thread(chat_prompt, st, setup.messages, **setup.render_kwargs)
            else:
                grammar = await request_grammar(st, spec)
                msgs = setup.messages if setup is not None else req.messages
                text = await asyncio.to_thread(chat_prompt, st, msgs)
            fmt = setup.format if setup is not None and setup.active else None
            prompt = await asyncio.to_thread(st.backend.tokenize, text, add_special=True, parse_special=True)
            top_n = req.top_logprobs or 0
            n_probs = req.n_probs if req.n_probs else (max(1, top_n) if req.logprobs else 0)
            stops = completion_stops(st, req.stop, chat=True) + (setup.stops if fmt else [])
            gen = gen_request(st, req, prompt,
                              n_predict=n_predict_of(st, req.n_predict, req.max_completion_tokens, req.max_tokens),
                              stop=stops, n_probs=n_probs, cache_prompt=req.cache_prompt, grammar=grammar)
            cid, created, model = new_id("chatcmpl"), int(time.time()), st.model_name(req.model)
            thinks = applies(st.reasoning_format, getattr(st.template, "source", None))
            run = Run(st, [gen], stream=bool(req.stream))
            if not req.stream:
                (r,) = await run.results(request)
                message: dict[str, Any] = {"role": "assistant", "content": r.content}
                finish = r.finish_reason
                content = r.content
                if thinks and finish == "stop":  # as llama-server: an answer cut by the length limit stays whole
                    reasoning, content = split_reasoning(content)
                    if reasoning:
                        message["reasoning_content"] = reasoning
                    message["content"] = content
                if fmt is not None:
                    parsed = parse_tool_calls(content, fmt)
                    message["content"] = parsed.content
                    if parsed.tool_calls:
                        message["content"] = parsed.content or None
                        message["tool_calls"] = [c.openai() for c in parsed.tool_calls]
                        finish = "tool_calls" if finish == "stop" else finish
                choice = {"index": 0, "message": message,
                          "logprobs": chat_logprobs(st.backend, r.probs, top_n) if n_probs else None,
                          "finish_reason": finish}
                return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": model,
                                     "system_fingerprint": st.fingerprint, "choices": [choice],
                                     "usage": usage([r]), "timings": r.timings()})

            head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": st.fingerprint}

            def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
                return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                             "finish_reason": finish}]}

            parser = StreamParser(fmt) if fmt is not None else None
            thoughts = ReasoningStream(opens_thought(text)) if thinks else None

            def split_deltas(deltas: list[dict[str, str]]) -> tuple[dict[str, str], str]:
                """The reasoning deltas as one, and the content text of the thought stream's deltas."""
                thought = "".join(d.get("reasoning_content", "") for d in deltas)
                return ({"reasoning_content": thought} if thought else {}), "".join(d.get("content", "")
                                                                                     for d in deltas)

            async def events():
                yield sse(chunk({"role": "assistant", "content": ""}))
                try:
                    async for ev in run.events():
                        if isinstance(ev, TokenEvent) and thoughts is not None:
                            delta, said = split_deltas(thoughts.feed(ev.text))
                            if parser is not None:
                                if delta:
                                    yield sse(chunk(delta))
                                for d in parser.feed(said):
                                    yield sse(chunk(d))
                            elif delta or said or ev.probs is not None:
                                lp = chat_logprobs(st.backend, [ev.probs], top_n) if ev.probs else None
                                part = chunk(delta | ({"content": said} if said or not delta else {}), logprobs=lp)
                                yield sse(part | ({"timings": ev.timings} if ev.timings is not None else {}))
                        elif isinstance(ev, TokenEvent):
                            if parser is not None:
                                for d in parser.feed(ev.text):
                                    yield sse(chunk(d))
                            elif ev.text or ev.probs is not None:
                                lp = chat_logprobs(st.backend, [ev.probs], top_n) if ev.probs else None
                                part = chunk({"content": ev.text}, logprobs=lp)
                                yield sse(part | ({"timings": ev.timings} if ev.timings is not None else {}))
                        elif isinstance(ev, DoneEvent):
                            r = ev.result
                            finish = r.finish_reason
                            if thoughts is not None:
                                delta, said = split_deltas(thoughts.finish())
                                if delta:
                                    yield sse(chunk(delta))
                                if said and parser is not None:
                                    for d in parser.feed(said):
                                        yield sse(chunk(d))
                                elif said:
                                    yield sse(chunk({"content": said}))
                            if parser is not None:
                                deltas, parsed = parser.finish()
                                for d in deltas:
                                    yield sse(chunk(d))
                                if parsed.tool_calls and finish == "stop":
                                    finish = "tool_calls"
                            last = chunk({}, finish)
                            if not _include_usage(req.stream_options):
                                last["usage"] = usage([r])
                            last["timings"] = r.timings()
                            yield sse(last)
                            if _include_usage(req.stream_options):
                                yield sse({**head, "choices": [], "usage": usage([r])})
                except APIError as e:
                    yield sse(e.body())
                yield b"data: [DONE]\n\n"

            return RunStream(events(), run, "text/event-stream", SSE_HEADERS)
        finally:
            release(state, entry)

    router.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    router.add_api_route("/chat/completions", chat_completions, methods=["POST"])

    @router.post("/v1/embeddings")
    async def embeddings(request: Request):
        return JSONResponse(await run_embeddings(state, request, oai=True))
