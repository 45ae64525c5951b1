"""llama-server's own endpoints: /completion, /tokenize, /detokenize, /embedding, /health, /props, ..."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, PlainTextResponse

from .. import __version__
from .common import (
    Run,
    RunStream,
    ServerState,
    chat_prompt,
    check_token_ids,
    completion_stops,
    gen_request,
    grammar_spec,
    json_off_loop,
    lora_scales,
    n_predict_of,
    read_json,
    read_request,
    request_grammar,
    sampler_settings,
    sse,
    tokenize_mixed,
    tokenize_prompts,
)
from .embeddings import run_embeddings
from .errors import APIError, bad_request
from .infill import check_body, fim_ids, format_infill
from .scheduler import DoneEvent, GenResult, TokenEvent
from .schemas import (
    ApplyTemplateRequest,
    CompletionRequest,
    DetokenizeRequest,
    LoraScale,
    TokenizeRequest,
    finite,
    validate,
)


def piece_json(backend, tok: int) -> dict[str, Any]:
    b = backend.piece(tok)
    return {"id": tok, "token": b.decode("utf-8", "replace"), "bytes": list(b)}


def probs_json(backend, p: dict[str, Any]) -> dict[str, Any]:
    """One entry of llama-server's `completion_probabilities` (`prob`/`top_probs` with post_sampling_probs)."""
    if p.get("post"):
        return {
            **piece_json(backend, p["id"]),
            "prob": p["prob"],
            "top_probs": [{**piece_json(backend, t), "prob": pr} for t, pr in p["top"]],
        }
    return {
        **piece_json(backend, p["id"]),
        "logprob": finite(p["logprob"]),
        "top_logprobs": [{**piece_json(backend, t), "logprob": finite(lp)} for t, lp in p["top"]],
    }


def generation_settings(state: ServerState, req: CompletionRequest | None, gen: Any | None) -> dict[str, Any]:
    """llama-server's `generation_settings`: the parameters a completion really ran with."""
    p = gen.sampling if gen is not None else sampler_settings(state, req)
    n_predict = gen.n_predict if gen is not None else state.default_n_predict
    return {
        "n_ctx": state.backend.n_ctx,
        "n_predict": n_predict,
        "model": state.model_id,
        "seed": p.seed if p.seed >= 0 else 0xFFFFFFFF,
        "temperature": p.temp,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "typical_p": p.typical_p,
        "repeat_last_n": p.repeat_last_n,
        "repeat_penalty": p.repeat_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "dynatemp_range": p.dynatemp_range,
        "dynatemp_exponent": p.dynatemp_exponent,
        "xtc_probability": p.xtc_probability,
        "xtc_threshold": p.xtc_threshold,
        "dry_multiplier": p.dry_multiplier,
        "dry_base": p.dry_base,
        "dry_allowed_length": p.dry_allowed_length,
        "dry_penalty_last_n": p.dry_penalty_last_n,
        "dry_sequence_breakers": list(p.dry_sequence_breakers),
        "mirostat": p.mirostat,
        "mirostat_tau": p.mirostat_tau,
        "mirostat_eta": p.mirostat_eta,
        "stop": gen.stop if gen is not None else [],
        "max_tokens": n_predict,
        "n_keep": state.n_keep,
        "ignore_eos": p.ignore_eos,
        "stream": bool(req.stream) if req is not None and req.stream is not None else False,
        "logit_bias": [{"token": t, "bias": finite(b)} for t, b in p.logit_bias.items()],
        "n_probs": gen.n_probs if gen is not None else 0,
        "min_keep": p.min_keep,
        "samplers": list(p.samplers),
        "n_discard": 0,
        "grammar": "",
        "grammar_trigger_words": [],
        "grammar_trigger_tokens": [],
        "preserved_tokens": [],
        "chat_format": "Content-only",
        "speculative.n_max": 16,
        "speculative.n_min": 5,
        "speculative.p_min": 0.9,
        "timings_per_token": bool(gen.timings_per_token) if gen is not None else False,
        "post_sampling_probs": bool(gen.post_sampling_probs) if gen is not None else False,
        "lora": [{"id": i, "scale": s} for i, s in enumerate(gen.lora if gen is not None else
                                                              getattr(state.backend, "lora_scales", []))],
    }


def completion_json(state: ServerState, req: CompletionRequest, gen, r: GenResult, stream: bool) -> dict[str, Any]:
    """llama-server's final /completion object (content empty when it was streamed)."""
    b = state.backend
    out = {
        "index": 0,
        "content": "" if stream else r.content,
        "tokens": [] if stream or not req.return_tokens else r.tokens,
        "id_slot": r.id_slot,
        "stop": True,
        "model": state.model_name(req.model),
        "tokens_predicted": r.n_decoded,
        "tokens_evaluated": r.n_prompt,
        "generation_settings": generation_settings(state, req, gen),
        "prompt": b.detokenize(gen.prompt),
        "has_new_line": "\n" in r.content,
        "truncated": r.truncated,
        "stop_type": r.stop_type,
        "stopping_word": r.stopping_word,
        "tokens_cached": r.n_cached,
        "timings": r.timings(),
    }
    if not stream and gen.n_probs > 0:
        out["completion_probabilities"] = [probs_json(b, p) for p in r.probs]
    return out


def validate_lora_entry(entry: Any, i: int) -> LoraScale:
    """One {"id", "scale"} entry of a POST /lora-adapters body, or a 400 naming it."""
    if not isinstance(entry, dict):
        raise bad_request(f"[{i}]: each entry must be an object with 'id' and 'scale'")
    try:
        return LoraScale.model_validate(entry)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise bad_request(f"[{i}].{loc}: {err['msg']}") from None


def register(router: APIRouter, state: ServerState) -> None:
    b = state.backend

    @router.get("/health")
    async def health():
        s = state.scheduler
        return {"status": "ok", "slots_idle": s.free_slots(), "slots_processing": s.busy_slots(),
                "requests_waiting": s.n_waiting()}

    @router.get("/slots")
    async def slots():
        """llama-server's slot monitor: what each slot is doing and how much of its context is cached."""
        if not state.slots_enabled:
            raise APIError(501, "This server does not support slots endpoint. Start it with `--slots`")
        out = []
        for s in state.scheduler.slots:
            job, seq = s.job, s.seq
            out.append({"id": s.id, "n_ctx": b.n_ctx, "is_processing": job is not None,
                        "n_prompt_tokens": seq.n_prompt if job and seq else 0,
                        "next_token": {"has_next_token": job is not None,
                                       "n_decoded": len(seq.generated) if seq else 0}})
        return out

    @router.post("/slots/{id_slot}")
    async def slots_action(id_slot: str, request: Request, action: str = ""):
        """llama-server's slot save / restore / erase (--slot-save-path)."""
        from .slot_files import slot_action

        body = await read_json(request) if action in ("save", "restore") and state.slot_save_path else None
        return await slot_action(state, id_slot, action, body)

    @router.get("/props")
    async def props():
        tpl = state.template
        return {
            "default_generation_settings": {
                "id": 0, "id_task": -1, "n_ctx": b.n_ctx, "speculative": False, "is_processing": False,
                "params": generation_settings(state, None, None), "prompt": "",
            },
            "total_slots": len(state.scheduler.slots),
            "model_path": state.model_path,
            "chat_template": tpl.source if getattr(tpl, "source", None) else tpl.name,
            "build_info": f"llamapy-{__version__}",
        }

    @router.get("/metrics")
    async def metrics():
        if not state.metrics_enabled or state.metrics is None:
            raise APIError(501, "This server does not support metrics endpoint. Start it with `--metrics`")
        text = state.metrics.render(state.scheduler, b)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4",
                                 headers={"Process-Start-Time-Unix": str(state.metrics.t_start)})

    @router.post("/props")
    async def set_props(request: Request):
        if not state.props_writable:
            raise APIError(501, "This server does not support changing global properties. Start it with `--props`")
        await read_json(request)  # the reference changes nothing yet either: it checks the body and says success
        return {"success": True}

    @router.get("/lora-adapters")
    async def lora_adapters():
        """The LoRA adapters loaded with --lora / --lora-scaled: id, path and the scale requests get."""
        return [{"id": i, "path": path, "scale": scale}
                for i, (path, scale) in enumerate(zip(b.lora_paths, b.lora_scales))]

    @router.post("/lora-adapters")
    async def set_lora_adapters(request: Request):
        """Set the scales requests without a `lora` field get: [{"id": 0, "scale": 0.5}, ...]; adapters not
        listed get 0, as llama-server does."""
        body = await read_json(request)
        if not isinstance(body, list):
            raise bad_request("Request body must be an array")
        entries = [validate_lora_entry(e, i) for i, e in enumerate(body)]
        b.lora_scales = list(lora_scales(state, entries))
        return {"success": True}

    async def rerank(request: Request):
        raise APIError(501, "This server does not support reranking. Start it with `--reranking` and without "
                            "`--embedding`")

    for path in ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking"):
        router.add_api_route(path, rerank, methods=["POST"])

    async def completion(request: Request):
        if state.embedding_only:
            raise APIError(501, "this server was started with --embedding: completions are off")
        req = validate(CompletionRequest, await read_json(request))
        grammar = await request_grammar(state, grammar_spec(req))
        prompts = await asyncio.to_thread(tokenize_prompts, b, req.prompt)
        return await complete(request, req, prompts, grammar)

    async def infill(request: Request):
        """llama-server's /infill: fill in between input_prefix and input_suffix with the model's FIM tokens."""
        if state.embedding_only:
            raise APIError(501, "this server was started with --embedding: completions are off")
        fim_ids(b.tok)
        data = await read_json(request)
        prefix, suffix, extra, prompt = check_body(data)
        req = validate(CompletionRequest, {k: v for k, v in data.items() if k not in (
            "input_prefix", "input_suffix", "input_extra", "prompt")})
        grammar = await request_grammar(state, grammar_spec(req))
        n_predict = n_predict_of(state, req.n_predict, req.max_tokens)
        ids = await asyncio.to_thread(format_infill, b, prefix, suffix, extra, prompt, n_predict, state.spm_infill)
        return await complete(request, req, [ids], grammar)

    router.add_api_route("/infill", infill, methods=["POST"])

    async def complete(request: Request, req: CompletionRequest, prompts: list[list[int]], grammar=None):
        n_predict = n_predict_of(state, req.n_predict, req.max_tokens)
        stops = completion_stops(state, req.stop, chat=False)
        gens = [gen_request(state, req, p, n_predict=n_predict, stop=stops, n_probs=req.n_probs or 0,
                            cache_prompt=req.cache_prompt, id_slot=req.id_slot, grammar=grammar) for p in prompts]
        stream = bool(req.stream)
        run = Run(state, gens, stream=stream)
        if not stream:
            results = await run.results(request)
            out = [completion_json(state, req, g, r, False) | {"index": i}
                   for i, (g, r) in enumerate(zip(gens, results))]
            return JSONResponse(out[0] if len(out) == 1 else out)

        async def events():
            n_sent = [0] * len(gens)
            try:
                async for ev in run.events():
                    if isinstance(ev, TokenEvent):
                        n_sent[ev.index] += ev.token >= 0
                        chunk = {"index": ev.index, "content": ev.text, "tokens": [ev.token] if ev.token >= 0 else [],
                                 "stop": False, "id_slot": -1, "tokens_predicted": n_sent[ev.index],
                                 "tokens_evaluated": len(gens[ev.index].prompt)}
                        if ev.probs is not None:
                            chunk["completion_probabilities"] = [probs_json(b, ev.probs)]
                        if ev.timings is not None:
                            chunk["timings"] = ev.timings
                        yield sse(chunk)
                    elif isinstance(ev, DoneEvent):
                        yield sse(completion_json(state, req, gens[ev.index], ev.result, True) | {"index": ev.index})
            except APIError as e:
                yield sse(e.body()["error"], event="error")

        return RunStream(events(), run, "text/event-stream", {"Cache-Control": "no-cache"})

    router.add_api_route("/completion", completion, methods=["POST"])
    router.add_api_route("/completions", completion, methods=["POST"])

    @router.post("/tokenize")
    async def tokenize(request: Request):
        req = validate(TokenizeRequest, await read_json(request))
        if not isinstance(req.content, (str, list)):
            raise APIError(400, "content must be a string or a list of token ids and strings", "content")
        toks = await asyncio.to_thread(tokenize_mixed, b, req.content, req.add_special, "content")
        if not req.with_pieces:
            return await json_off_loop({"tokens": toks})
        out = []
        for t in toks:
            piece = b.piece(t, special=True)
            try:
                out.append({"id": t, "piece": piece.decode("utf-8")})
            except UnicodeDecodeError:
                out.append({"id": t, "piece": list(piece)})
        return {"tokens": out}

    @router.post("/detokenize")
    async def detokenize(request: Request):
        req = validate(DetokenizeRequest, await read_json(request))
        check_token_ids(req.tokens, b.n_vocab, "tokens")
        return {"content": b.detokenize(req.tokens)}

    @router.post("/apply-template")
    async def apply_template(request: Request):
        req = await read_request(request, ApplyTemplateRequest)
        return {"prompt": await asyncio.to_thread(chat_prompt, state, req.messages)}

    async def embedding(request: Request):
        data = await run_embeddings(state, request, oai=False)
        return JSONResponse(data)

    router.add_api_route("/embedding", embedding, methods=["POST"])
    router.add_api_route("/embeddings", embedding, methods=["POST"])


