"""What every endpoint shares: the server state, reading bodies, building a generation, running jobs."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import LlamapyError
from ..generation.params import SamplerParams, samplers_from_letters, samplers_from_names
from .errors import APIError, bad_request
from .scheduler import DoneEvent, ErrorEvent, GenRequest, Job, Scheduler, TokenEvent
from .schemas import M, Sampling, parse_json, stop_list, validate

# a request's sampling field -> the SamplerParams field it sets (llama-server's, OpenAI's and Ollama's
# `options` use the same names); a field the request leaves out keeps the server's default (serve --temp ...)
REQUEST_FIELDS = {
    "temperature": "temp",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "seed": "seed",
    "ignore_eos": "ignore_eos",
    "dry_multiplier": "dry_multiplier",
    "dry_base": "dry_base",
    "dry_allowed_length": "dry_allowed_length",
    "dry_penalty_last_n": "dry_penalty_last_n",
    "dry_sequence_breakers": "dry_sequence_breakers",
    "xtc_probability": "xtc_probability",
    "xtc_threshold": "xtc_threshold",
    "dynatemp_range": "dynatemp_range",
    "dynatemp_exponent": "dynatemp_exponent",
    "samplers": "samplers",  # a list of names, or a string of letters
}


@dataclass
class ServerState:
    """Everything the routes need, built once by `serve`."""

    backend: Any  # backend.EngineBackend
    scheduler: Scheduler
    template: Any  # chat_templates.ChatTemplate
    model_id: str  # what /v1/models lists: --alias, else the model file as given
    model_path: str
    api_key: str | list[str] | None = None  # one key or several (--api-key-file)
    max_body: int = 4 << 20
    embedding_only: bool = False
    default_n_predict: int = -1
    sampling: SamplerParams = field(default_factory=SamplerParams)  # what a request's missing fields get
    created: int = field(default_factory=lambda: int(time.time()))
    fingerprint: str = ""
    metrics_enabled: bool = False  # --metrics: /metrics answers
    slots_enabled: bool = True     # --no-slots: /slots answers 501
    props_writable: bool = False   # --props: POST /props changes settings
    webui: bool = True             # --no-webui: no chat page at /
    static_path: str | None = None  # --path: static files at /
    threads_http: int = -1         # --threads-http: worker threads for blocking work (-1: the default)
    n_keep: int = 0                # --keep: the default of a request's n_keep
    spm_infill: bool = False       # --spm-infill: /infill lays out suffix, prefix, middle
    metrics: Any = None            # metrics.Metrics, counting from the start
    model_n_predict: int = -1      # a stored model's num_predict: the token limit when a request gives none
    models: Any = None             # manager.ModelManager: the store's models, by name
    model_writes: bool = True      # --no-model-writes: /api/create, /api/copy, /api/delete, /api/pull refused
    allow_paths: tuple[str, ...] = ()  # --allow-path: folders a remote /api/create may read files from
    store: Any = None              # the model store (store.store.Store), None: the default one
    slot_save_path: str | None = None  # --slot-save-path: the folder POST /slots/{id}?action=save writes to
    reasoning_format: str = "deepseek"  # --reasoning-format: a chat answer's <think> part to reasoning_content
    default_grammar: Any = None    # --grammar/--grammar-file/-j: the GrammarSpec of requests that give none

    def model_name(self, requested: str | None) -> str:
        """The `model` a response reports: the name the client asked for (any name is accepted), else ours."""
        return requested or self.model_id


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (the size limit is enforced by the middleware as it is read); a large
    body is parsed off the event loop, so other requests (/health) are answered meanwhile."""
    body = await request.body()
    return parse_json(body) if len(body) < OFF_LOOP_BYTES else await asyncio.to_thread(parse_json, body)


OFF_LOOP_BYTES = 64 << 10


async def read_request(request: Request, model: type[M]) -> M:
    """The body parsed and validated as `model`; a large one (75,000 chat messages) off the event loop."""
    body = await request.body()
    if len(body) < OFF_LOOP_BYTES:
        return validate(model, parse_json(body))
    return await asyncio.to_thread(lambda: validate(model, parse_json(body)))


async def json_off_loop(data: Any) -> Response:
    """A JSON response serialized off the event loop (a /tokenize answer can hold a million ids)."""
    body = await asyncio.to_thread(json.dumps, data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body, media_type="application/json")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# --- turning a request into a GenRequest ---------------------------------------------------------------


def check_token_ids(ids: list[Any], n_vocab: int, what: str) -> list[int]:
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int):
            raise bad_request(f"{what}: token ids must be integers, got {json.dumps(t)}", what)
        if not 0 <= t < n_vocab:
            raise bad_request(f"{what}: token id {t} is out of range [0, {n_vocab})", what)
    return ids


def tokenize_mixed(backend, prompt: Any, add_special: bool, what: str = "prompt") -> list[int]:
    """A string, or a list mixing token ids and strings, as token ids (BOS only before a leading string)."""
    if isinstance(prompt, str):
        return backend.tokenize(prompt, add_special=add_special, parse_special=True)
    out: list[int] = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            out += backend.tokenize(p, add_special=add_special and i == 0, parse_special=True)
        else:
            out += check_token_ids([p], backend.n_vocab, what)
    return out


def _is_piece(p: Any) -> bool:
    return isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool))


def tokenize_prompts(backend, prompt: Any, add_special: bool = True, what: str = "prompt") -> list[list[int]]:
    """llama-server's prompt shapes: "text", [ids], [ids and "text"], or a list of those (several prompts)."""
    if prompt is None:
        raise bad_request(f"'{what}' is required", what)
    if isinstance(prompt, str):
        return [tokenize_mixed(backend, prompt, add_special, what)]
    if not isinstance(prompt, list):
        raise bad_request(f"'{what}' must be a string, a list of token ids, or a list of prompts", what)
    if all(_is_piece(p) for p in prompt) and any(not isinstance(p, str) for p in prompt):
        return [tokenize_mixed(backend, prompt, add_special, what)]  # one prompt: ids, or ids and text
    if len(prompt) == 0:
        raise bad_request(f"'{what}' is empty", what)
    from .schemas import MAX_PROMPTS

    if len(prompt) > MAX_PROMPTS:
        raise bad_request(f"'{what}' has {len(prompt)} prompts; at most {MAX_PROMPTS} per request", what)
    out = []
    for p in prompt:
        if isinstance(p, str) or (isinstance(p, list) and all(_is_piece(x) for x in p)):
            out.append(tokenize_mixed(backend, p, add_special, what))
        else:
            raise bad_request(f"each element of '{what}' must be a string or a list of token ids and strings", what)
    return out


def parse_logit_bias(backend, raw: Any) -> dict[int, float]:
    """OpenAI's {"id": bias} or llama-server's [[id or "text", bias or false], ...] as {id: bias}."""
    out: dict[int, float] = {}
    if raw is None:
        return out
    if isinstance(raw, dict):
        for k, v in raw.items():
            try:
                tok = int(k)
            except ValueError:
                raise bad_request(f"logit_bias: key {k!r} is not a token id", "logit_bias") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
                raise bad_request(f"logit_bias: bias for {k} must be a number in [-100, 100]", "logit_bias")
            out[check_token_ids([tok], backend.n_vocab, "logit_bias")[0]] = float(v)
        return out
    if not isinstance(raw, list):
        raise bad_request("logit_bias must be an object {token_id: bias} or a list of [token, bias]", "logit_bias")
    for el in raw:
        if not (isinstance(el, list) and len(el) == 2):
            raise bad_request("logit_bias: each entry must be [token id or text, bias or false]", "logit_bias")
        key, v = el
        if v is False:
            bias = float("-inf")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf"):
            bias = float(v)
        else:
            raise bad_request("logit_bias: a bias must be a finite number or false", "logit_bias")
        if isinstance(key, str):
            toks = backend.tokenize(key, add_special=False, parse_special=False)
        else:
            toks = check_token_ids([key], backend.n_vocab, "logit_bias")
        for t in toks:
            out[t] = bias
    return out


def sampler_settings(state: ServerState, m: Sampling | Any) -> SamplerParams:
    """The SamplerParams of a request: its sampling fields (REQUEST_FIELDS) over the server's defaults."""
    given = {f: v for k, f in REQUEST_FIELDS.items() if (v := getattr(m, k, None)) is not None}
    p = replace(state.sampling, **given)
    p.top_k = max(p.top_k, 0)
    if p.repeat_last_n == -1:
        p.repeat_last_n = state.backend.n_ctx
    if p.dry_penalty_last_n == -1:
        p.dry_penalty_last_n = state.backend.n_ctx
    if p.dry_base < 1.0:
        p.dry_base = state.sampling.dry_base
    if "dry_sequence_breakers" in given and not p.dry_sequence_breakers:
        raise bad_request("dry_sequence_breakers must be a non-empty array of strings", "dry_sequence_breakers")
    if isinstance(p.samplers, str):
        try:
            p.samplers = samplers_from_letters(p.samplers)
        except LlamapyError as e:
            raise bad_request(str(e).replace("--sampling-seq", "samplers"), "samplers") from None
    elif "samplers" in given:
        try:
            p.samplers = samplers_from_names(";".join(p.samplers), aliases=False)
        except LlamapyError as e:
            raise bad_request(str(e).replace("--samplers", "samplers"), "samplers") from None
    p.seed = -1 if p.seed < 0 else p.seed & 0xFFFFFFFF
    p.ignore_eos = bool(p.ignore_eos)
    return p


# --- constrained output: grammar, json_schema, response_format, Ollama's format ----------------------------


@dataclass(frozen=True)
class GrammarSpec:
    """What a request asks its output to follow: kind "gbnf" (GBNF text), "json_schema" (a schema) or
    "json_object" (any JSON object); `param` names the request field, for a 400."""

    kind: str
    value: Any
    param: str


def _schema(value: Any, param: str) -> GrammarSpec:
    if not isinstance(value, (dict, bool)):
        raise bad_request(f"{param}: a JSON schema must be an object", param)
    return GrammarSpec("json_schema", value, param)


def grammar_spec(m: Any, response_format: dict[str, Any] | None = None) -> GrammarSpec | None:
    """llama-server's `grammar` and `json_schema` (the grammar wins when both are given, as there) and
    OpenAI's `response_format` (json_object, or json_schema with its `schema`), or None."""
    grammar, schema = getattr(m, "grammar", None), getattr(m, "json_schema", None)
    fmt = None
    if response_format is not None:
        kind = response_format.get("type", "text")
        if kind == "json_object":  # llama-server also takes a `schema` here
            given = response_format.get("schema")
            fmt = GrammarSpec("json_object", None, "response_format") if given is None else \
                _schema(given, "response_format.schema")
        elif kind == "json_schema":
            wrapper = response_format.get("json_schema")
            if not isinstance(wrapper, dict):
                raise bad_request("response_format.json_schema must be an object {\"name\", \"schema\", \"strict\"}",
                                  "response_format")
            given = wrapper.get("schema")
            fmt = GrammarSpec("json_object", None, "response_format") if given is None else \
                _schema(given, "response_format.json_schema.schema")
        elif kind not in ("text", None):
            raise bad_request(f"response_format type must be one of \"text\", \"json_object\" or \"json_schema\", "
                              f"not {json.dumps(kind)[:80]}", "response_format")
    if fmt is not None:
        if grammar:
            raise bad_request("give response_format or grammar, not both", "grammar")
        return fmt
    if grammar:
        return GrammarSpec("gbnf", grammar, "grammar")
    if schema is not None:
        return _schema(schema, "json_schema")
    return None


def ollama_format_spec(fmt: Any) -> GrammarSpec | None:
    """Ollama's `format`: "json" (any JSON object) or a JSON schema object."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return GrammarSpec("json_object", None, "format")
    if isinstance(fmt, dict):
        return GrammarSpec("json_schema", fmt, "format")
    raise bad_request('format must be "json" or a JSON schema object', "format")


def compile_spec(backend, spec: GrammarSpec):
    """The spec compiled for the model's vocabulary (llamapy.grammar caches it by content), its first mask
    computed here so that the engine thread never builds lexer tables; a GrammarError is a 400."""
    from ..grammar import GrammarError, Vocabulary, compile_gbnf, compile_json_object, compile_json_schema

    vocab = Vocabulary.for_tokenizer(backend.tok, backend.n_vocab)
    try:
        if spec.kind == "gbnf":
            g = compile_gbnf(spec.value, vocab)
        elif spec.kind == "json_schema":
            g = compile_json_schema(spec.value, vocab)
        else:
            g = compile_json_object(vocab)
    except GrammarError as e:
        raise bad_request(str(e), spec.param) from None
    g.matcher().bitmask()
    return g


async def request_grammar(state: ServerState, spec: GrammarSpec | None):
    """The compiled grammar of a request (None: unconstrained), compiled off the event loop; a request that
    gives none gets the server's (--grammar, --grammar-file, -j), as llama-server's defaults."""
    if spec is None:
        spec = state.default_grammar
    if spec is None:
        return None
    if state.embedding_only:
        raise APIError(501, "this server was started with --embedding: completions are off")
    return await asyncio.to_thread(compile_spec, state.backend, spec)


def n_predict_of(state: ServerState, *values: int | None) -> int:
    """The first given token limit (n_predict, max_tokens, ...), capped by the server's -n when that is set;
    -1 (and llama-server's -2) mean "until the end of text or of the slot's context"."""
    n = next((v for v in values if v is not None), getattr(state, "model_n_predict", -1))
    n = -1 if n < 0 else n
    cap = state.default_n_predict
    return cap if cap >= 0 and (n < 0 or n > cap) else n


def keep_of(state: ServerState, prompt: list[int]) -> int:
    """Positions a context shift keeps: the BOS, and --keep prompt tokens after it (-1: the whole prompt)."""
    bos = int(getattr(state.backend, "add_bos", False))
    keep = len(prompt) if state.n_keep < 0 else bos + state.n_keep
    return min(max(keep, bos), len(prompt))


def gen_request(state: ServerState, m: Any, prompt: list[int], *, n_predict: int, stop: list[str],
                n_probs: int = 0, cache_prompt: bool | None = None, id_slot: int | None = None,
                grammar: Any = None) -> GenRequest:
    """A GenRequest after the checks every endpoint makes: the prompt fits the slot's context.
    grammar: a compiled grammar (request_grammar) the output follows; each job gets its own matcher."""
    n_ctx = state.backend.n_ctx
    if not prompt:
        raise bad_request("the prompt is empty (no tokens)", "prompt")
    if len(prompt) >= n_ctx:
        raise bad_request(
            f"the request exceeds the available context size: the prompt has {len(prompt)} tokens; "
            f"the context of a slot holds {n_ctx} "
            "(start the server with a larger -c or fewer -np)", "prompt")
    params = sampler_settings(state, m)
    post = bool(getattr(m, "post_sampling_probs", None)) and n_probs > 0
    if post:  # the sampler reports every candidate left after its chain (usually a few)
        params.n_probs = state.backend.n_vocab
    raw_bias = getattr(m, "logit_bias", None)
    if raw_bias is not None:
        params.logit_bias = parse_logit_bias(state.backend, raw_bias)
    return GenRequest(
        prompt=prompt, sampling=params, n_predict=n_predict, stop=stop, n_probs=n_probs,
        lora=lora_scales(state, getattr(m, "lora", None)),
        cache_prompt=True if cache_prompt is None else cache_prompt,
        id_slot=-1 if id_slot is None else id_slot, n_keep=keep_of(state, prompt),
        timings_per_token=bool(getattr(m, "timings_per_token", None)), post_sampling_probs=post,
        grammar=grammar,
    )


def lora_scales(state: ServerState, entries: list[Any] | None) -> tuple[float, ...]:
    """The adapter scales a request runs with, as llama-server: without a `lora` field the server's; with
    one, the scale of each adapter listed ({"id", "scale"}) and 0 for the others; an unknown id is a 400."""
    base = list(getattr(state.backend, "lora_scales", []))
    if entries is None:
        return tuple(base)
    out = [0.0] * len(base)
    for e in entries:
        if not 0 <= e.id < len(out):
            raise bad_request(f"invalid adapter id {e.id} (the server has {len(out)} LoRA adapters)", "lora")
        out[e.id] = float(e.scale)
    return tuple(out)


def chat_prompt(state: ServerState, messages: list[Any], **extra: Any) -> str:
    """Messages rendered with the server's chat template (a template error is a 400); `extra` (tools, ...)
    goes to a Jinja template."""
    msgs = []
    for msg in messages:
        d = msg.model_dump(exclude_none=True) if hasattr(msg, "model_dump") else dict(msg)
        if d["role"] == "developer":  # OpenAI's newer name for the system role; templates know "system"
            d["role"] = "system"
        if isinstance(d.get("content"), list):
            for part in d["content"]:
                if part.get("type") != "text":
                    raise bad_request(f"message content of type '{part.get('type')}' is not supported (text only)",
                                      "messages")
        msgs.append(d)
    try:
        return state.template.render(msgs, add_generation_prompt=True, **extra)
    except LlamapyError as e:
        raise bad_request(str(e), "messages") from None


def completion_stops(state: ServerState, stop: Any, chat: bool) -> list[str]:
    stops = stop_list(stop)
    if chat:
        stops += [s for s in state.template.stop_strings if s and s not in stops]
    return stops


# --- running jobs --------------------------------------------------------------------------------------


class Run:
    """Jobs submitted together for one HTTP request, and the queue their events arrive on."""

    def __init__(self, state: ServerState, reqs: list[GenRequest] | None = None,
                 embeds: list[list[int]] | None = None, stream: bool = False):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        if reqs is not None:
            self.jobs = [Job(loop, self.queue, i, gen=r, stream=stream) for i, r in enumerate(reqs)]
        else:
            self.jobs = [Job(loop, self.queue, i, embed=t) for i, t in enumerate(embeds or [])]
        self.scheduler = state.scheduler
        self.scheduler.submit(self.jobs)  # 503 when the queue is full

    def cancel(self) -> None:
        for j in self.jobs:
            j.cancelled = True

    async def events(self) -> AsyncIterator[TokenEvent | DoneEvent]:
        """Every event until all jobs are done; an engine error is raised; leaving early cancels the jobs."""
        left = len(self.jobs)
        try:
            while left:
                ev = await self.queue.get()
                if isinstance(ev, ErrorEvent):
                    raise ev.error
                if isinstance(ev, DoneEvent):
                    left -= 1
                yield ev
        finally:
            self.cancel()

    async def results(self, request: Request) -> list[Any]:
        """Wait for every job's result; a client that disconnects cancels them."""
        watcher = asyncio.create_task(self._watch(request))
        out: list[Any] = [None] * len(self.jobs)
        try:
            async for ev in self.events():
                if ev is _DISCONNECTED:
                    raise APIError(499, "client disconnected")
                if isinstance(ev, DoneEvent):
                    out[ev.index] = ev.result
        finally:
            watcher.cancel()
            self.cancel()
        return out

    async def _watch(self, request: Request) -> None:
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                self.cancel()
                self.queue.put_nowait(_DISCONNECTED)
                return


class _Disconnected:
    pass


_DISCONNECTED = _Disconnected()


def sse(data: Any, event: str = "data") -> bytes:
    """One server-sent event."""
    return f"{event}: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def ndjson(data: Any) -> bytes:
    return (json.dumps(data, ensure_ascii=False) + "\n").encode()




class RunStream(StreamingResponse):
    """A streamed response whose jobs are cancelled however it ends (finished, failed, or client gone)."""

    def __init__(self, content: Any, run: Run, media_type: str, headers: dict[str, str] | None = None):
        super().__init__(content, media_type=media_type, headers=headers)
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.cancel()
