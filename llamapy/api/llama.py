"""`Llama`: llama-cpp-python's high-level API on llamapy's engine and generation core.

    from llamapy import Llama
    llm = Llama(model_path="model.gguf", n_ctx=2048)
    out = llm("Q: Name the planets in the solar system. A: ", max_tokens=32, stop=["Q:", "\\n"], echo=True)

The names, keyword arguments, defaults and return shapes are llama-cpp-python's (v0.3); the shapes are in
`llama_types`. Generation runs on llamapy's generation core (`generation.sequence.Sequence`): this module
drives one sequence on the engine, the way `llamapy run` does.

Thread safety: one call at a time per `Llama`. Calls are serialized by a lock, so a second thread waits for
the call in progress. A streaming iterator holds the model only between its chunks: another call that uses
the KV cache (a completion, `eval`, `generate`, `reset`, `load_state`) made before the stream finished ends
that stream, whose next chunk raises RuntimeError. Ctrl-C (KeyboardInterrupt) during a stream leaves the
object usable.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, overload

import numpy as np

from ..errors import LlamapyError
from ..grammar import Vocabulary
from . import llama_types as T
from .common import CHAT_FORMATS as CHAT_FORMATS  # the server's --chat_format names
from .common import (
    LLAMA_DEFAULT_SEED,
    BaseLlamaCache,
    LlamaCache,
    LlamaRAMCache,
    LlamaState,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    _int,
    _normalized,
    _stops,
)
from .completion import LlamaCompletion, _join_completion
from .disk_cache import LlamaDiskCache as LlamaDiskCache
from .grammar import LlamaGrammar
from .speculative import LlamaDraftModel as LlamaDraftModel
from .speculative import LlamaPromptLookupDecoding as LlamaPromptLookupDecoding


class Llama(LlamaCompletion):
    """A GGUF model loaded for completion, chat and embeddings, with llama-cpp-python's API.

    Arguments with an effect: model_path (a GGUF path, or a model name llamapy's model store resolves),
    n_ctx (0: the model's training context), n_batch / n_ubatch (the engine's batch is the smaller),
    n_threads, seed, vocab_only (tokenizer only), embedding, logits_all (keep every position's logits in
    `scores`), pooling_type, last_n_tokens_size (the penalties' window), chat_format, chat_handler, verbose.
    Accepted for compatibility, without effect: the GPU arguments (n_gpu_layers, split_mode, main_gpu,
    tensor_split, rpc_servers, offload_kqv, flash_attn, op_offload, swa_full), use_mmap (the file is always
    mapped), use_mlock, numa, n_threads_batch (one thread pool does both), no_perf, spm_infill; the RoPE
    and YaRN overrides (rope_scaling_type, rope_freq_base, rope_freq_scale, yarn_*) and kv_overrides: the
    engine reads these from the GGUF, and a non-default value gets a warning.
    lora_path / lora_scale: a GGUF LoRA adapter applied at run time with that scale (times its alpha / rank),
    beside the weights as loaded; lora_base is accepted and not needed (the adapter's products are added to
    the quantized model's, nothing is merged). A bad adapter raises RuntimeError naming the tensor.
    type_k / type_v: the KV cache types, as ggml type ids or names (f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl,
    q5_0, q5_1); another value is a ValueError.
    draft_model: speculative decoding, a LlamaDraftModel (`LlamaPromptLookupDecoding(num_pred_tokens=10)`
    from llamapy.llama_speculative) or any callable from the token ids so far to drafted ids; the drafts are
    verified in one batched step and kept only where the sampled token is the drafted one (greedy output is
    unchanged). Not supported yet (ValueError): tokenizer.

    One call at a time: a second thread waits for the call in progress (see the module docstring about
    streams). `close()` or a `with` block frees the model now; a closed Llama raises RuntimeError.
    """

    def _chat_template(self) -> Any:
        if self._template is None:
            from ..chat.templates import ChatTemplate

            self._template = ChatTemplate.for_model(self._raw_meta)
        return self._template

    def create_chat_completion(
        self,
        messages: list[T.ChatCompletionRequestMessage] | list[dict[str, Any]],
        functions: list[dict[str, Any]] | None = None,
        function_call: Any | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any | None = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = [],  # noqa: B006 - llama-cpp-python's signature
        seed: int | None = None,
        response_format: T.ChatCompletionRequestResponseFormat | dict[str, Any] | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
        grammar: Any | None = None,
        logit_bias: dict[int, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
    ) -> T.CreateChatCompletionResponse | Iterator[T.CreateChatCompletionStreamResponse]:
        """Answer a conversation: the messages rendered with the chat template (chat_format, else the model's
        own, else chatml), completed until the template's end of turn. With stream=True, an iterator of
        chunks (a role delta first, content deltas, then the finish reason). grammar: a LlamaGrammar the answer
        follows. response_format: {"type": "json_object"} (optionally with "schema") or {"type": "json_schema",
        "json_schema": {"schema": ...}}: JSON that validates. tools / tool_choice (and the older functions /
        function_call): the model's tool-call format from its chat template; message.tool_calls and
        finish_reason "tool_calls" when it calls (streamed as delta.tool_calls); with tool_choice "required"
        or a named function the call's arguments follow the function's parameter schema."""
        self._check_open()
        if self.chat_handler is not None:
            return self.chat_handler(  # type: ignore[no-any-return]
                llama=self, messages=messages, functions=functions, function_call=function_call, tools=tools,
                tool_choice=tool_choice, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                typical_p=typical_p, stream=stream, stop=stop, seed=seed, response_format=response_format,
                max_tokens=max_tokens, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                repeat_penalty=repeat_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
                logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias, logprobs=logprobs,
                top_logprobs=top_logprobs)
        if functions:
            tools = [*(tools or []), *({"type": "function", "function": f} for f in functions)]
            if tool_choice is None and isinstance(function_call, (str, dict)):
                tool_choice = function_call if isinstance(function_call, str) else \
                    {"type": "function", "function": function_call}
        schema: Any = None
        if response_format is not None:
            if not isinstance(response_format, dict):
                raise TypeError("response_format must be a dict such as {'type': 'json_object'}")
            kind = response_format.get("type", "text")
            if kind == "json_object":
                given = response_format.get("schema")
                schema = given if given is not None else {"type": "object"}
            elif kind == "json_schema":
                wrapper = response_format.get("json_schema")
                if not isinstance(wrapper, dict):
                    raise ValueError("response_format: json_schema must be a dict {'name', 'schema', 'strict'}")
                schema = wrapper.get("schema", {"type": "object"})
            elif kind != "text":
                raise ValueError(f"response_format: type must be 'text', 'json_object' or 'json_schema', not {kind!r}")
            if schema is not None and grammar is not None:
                raise ValueError("give response_format or grammar, not both")
            if schema is not None:
                grammar = LlamaGrammar.from_json_schema(schema)
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise TypeError("messages: each message must be a dict with a 'role' string")
        if top_logprobs is not None:
            top_logprobs = _int("top_logprobs", top_logprobs, 0, 20)
        template = self._chat_template()
        msgs = [dict(m, role="system") if m["role"] == "developer" else dict(m) for m in messages]
        fmt = None
        extra: dict[str, Any] = {}
        extra_stops: list[str] = []
        if tools or tool_choice is not None or any(m["role"] == "tool" or m.get("tool_calls") for m in msgs):
            if tools and grammar is not None and schema is None:
                raise ValueError("give tools or grammar, not both")
            from ..chat.tool_calls import prepare

            try:
                setup = prepare(getattr(template, "source", None), msgs, tools or [], tool_choice, False, schema)
            except LlamapyError as e:
                raise ValueError(str(e)) from None
            msgs = setup.messages
            if setup.active:
                fmt, extra, extra_stops = setup.format, setup.render_kwargs, setup.stops
                try:
                    compiled = setup.grammar(Vocabulary.for_tokenizer(self._tok, self._n_vocab))
                except LlamapyError as e:
                    raise ValueError(str(e)) from None
                grammar = compiled if compiled is not None else grammar
        try:
            text = template.render(msgs, add_generation_prompt=True, **extra)
        except LlamapyError as e:
            raise ValueError(f"messages: {e}") from None
        stops = _stops(stop) + [s for s in template.stop_strings if s] + extra_stops
        ids = self.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        chunks = self._completion(ids, None, max_tokens, temperature, top_p, min_p, typical_p,
                                  (top_logprobs or 0) if logprobs else None, False, stops, frequency_penalty,
                                  presence_penalty, repeat_penalty, top_k, seed, mirostat_mode, mirostat_tau,
                                  mirostat_eta, model, None, logits_processor, grammar, logit_bias, stream)
        if stream:
            return _chat_chunks(chunks, fmt)
        with self._lock:
            return _chat_response(_join_completion(chunks, bool(logprobs)), fmt)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """create_chat_completion returning the `openai` package's types (ChatCompletion, or an iterator of
        ChatCompletionChunk with stream=True); needs `pip install openai`."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("create_chat_completion_openai_v1 needs the openai package: pip install openai") \
                from None
        stream = kwargs.get("stream", False)
        out = self.create_chat_completion(*args, **kwargs)
        if stream:
            return (ChatCompletionChunk(**c) for c in out)  # type: ignore[arg-type]
        return ChatCompletion(**out)  # type: ignore[arg-type]

    # -- embeddings ------------------------------------------------------------------------------------------
    @overload
    def embed(self, input: str, normalize: bool = ..., truncate: bool = ...,
              return_count: Literal[False] = ...) -> list[float] | list[list[float]]: ...

    @overload
    def embed(self, input: list[str], normalize: bool = ..., truncate: bool = ...,
              return_count: Literal[False] = ...) -> list[list[float]] | list[list[list[float]]]: ...

    @overload
    def embed(self, input: str | list[str], normalize: bool = ..., truncate: bool = ...,
              *, return_count: Literal[True]) -> tuple[Any, int]: ...

    def embed(self, input: str | list[str], normalize: bool = True, truncate: bool = True,
              return_count: bool = False) -> Any:
        """Embeddings of a text (a list of floats) or of a list of texts (a list of those). Pooled as the GGUF
        or pooling_type says (unspecified: mean); pooling_type 0 (none) gives one vector per token instead.
        normalize: L2-normalised. truncate: inputs longer than n_batch tokens are cut to n_batch (else a
        ValueError). return_count: also return the number of tokens embedded."""
        eng = self._engine()
        if not self._embedding:
            raise RuntimeError("Llama model must be created with embedding=True to call this method")
        single = isinstance(input, str)
        texts: list[str] = [input] if isinstance(input, str) else input
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("input must be a string or a list of strings")
        pooling = self.pooling_type if self.pooling_type >= 0 else self._model_pooling
        limit = min(self.n_batch, self._n_ctx)
        out: list[Any] = []
        total = 0
        for t in texts:
            ids = self.tokenize(t.encode("utf-8"))
            if not ids:
                raise ValueError("input: an input is empty (no tokens)")
            if len(ids) > limit:
                if not truncate:
                    raise ValueError(f"Requested tokens ({len(ids)}) exceed batch size of {limit}")
                ids = ids[:limit]
            total += len(ids)
            with self._lock:
                h = np.asarray(eng.hidden_states(ids), dtype=np.float64)
            if pooling == 0:
                vecs = [_normalized(v) if normalize else v for v in h]
                out.append([v.astype(np.float32).tolist() for v in vecs])
                continue
            v = h[0] if pooling == 2 else h[-1] if pooling == 3 else h.mean(axis=0)
            out.append((_normalized(v) if normalize else v).astype(np.float32).tolist())
        result = out[0] if single else out
        return (result, total) if return_count else result

    def create_embedding(self, input: str | list[str], model: str | None = None) -> T.CreateEmbeddingResponse:
        """OpenAI-shaped embeddings of a text or a list of texts (normalised, see embed)."""
        data, n = self.embed(input, return_count=True)
        vectors = [data] if isinstance(input, str) else data
        return {"object": "list",
                "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
                "model": model if model is not None else self.model_path,
                "usage": {"prompt_tokens": n, "total_tokens": n}}


def _chat_logprobs(lp: T.CompletionLogprobs | None) -> T.ChatCompletionLogprobs | None:
    if lp is None:
        return None
    content: list[T.ChatCompletionLogprobToken] = []
    for tok, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        content.append({"token": tok, "logprob": float(logprob or 0.0), "bytes": list(tok.encode("utf-8")),
                        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                                         for t, v in (top or {}).items()]})
    return {"content": content, "refusal": None}


def _chat_response(c: T.CreateCompletionResponse, fmt: str | None = None) -> T.CreateChatCompletionResponse:
    ch = c["choices"][0]
    message: dict[str, Any] = {"role": "assistant", "content": ch["text"]}
    finish: Any = ch["finish_reason"]
    if fmt is not None:
        from ..chat.tool_parse import parse

        parsed = parse(ch["text"], fmt)
        message["content"] = parsed.content
        if parsed.tool_calls:
            message["content"] = parsed.content or None
            message["tool_calls"] = [tc.openai() for tc in parsed.tool_calls]
            finish = "tool_calls" if finish == "stop" else finish
    return {"id": "chat" + c["id"], "object": "chat.completion", "created": c["created"], "model": c["model"],
            "choices": [{"index": 0, "message": message,  # type: ignore[typeddict-item]
                         "logprobs": _chat_logprobs(ch["logprobs"]), "finish_reason": finish}],
            "usage": c["usage"]}


def _chunk(c: T.CreateCompletionStreamResponse, delta: dict[str, Any], finish: Any = None, logprobs: Any = None
           ) -> T.CreateChatCompletionStreamResponse:
    """The chat chunk of completion chunk `c` that carries `delta`."""
    return {"id": "chat" + c["id"], "model": c["model"], "created": c["created"], "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                         "finish_reason": finish}]}


def _chat_chunks(chunks: Iterator[T.CreateCompletionStreamResponse], fmt: str | None = None
                 ) -> Iterator[T.CreateChatCompletionStreamResponse]:
    """Chat chunks of a streamed completion; with a tool-call format `fmt`, content and delta.tool_calls as
    they parse."""
    parser = None
    if fmt is not None:
        from ..chat.tool_parse import StreamParser

        parser = StreamParser(fmt)
    first = True
    for c in chunks:
        if first:
            first = False
            yield _chunk(c, {"role": "assistant"})
        ch = c["choices"][0]
        if parser is None:
            if ch["finish_reason"] is not None:
                yield _chunk(c, {}, ch["finish_reason"])
            elif ch["text"]:
                yield _chunk(c, {"content": ch["text"]}, logprobs=_chat_logprobs(ch["logprobs"]))
            continue
        if ch["finish_reason"] is not None:
            deltas, parsed = parser.finish()
        else:
            deltas, parsed = parser.feed(ch["text"]), None
        for d in deltas:
            yield _chunk(c, d)
        if parsed is not None:
            finish = "tool_calls" if parsed.tool_calls and ch["finish_reason"] == "stop" else ch["finish_reason"]
            yield _chunk(c, {}, finish)


__all__ = ["LLAMA_DEFAULT_SEED", "BaseLlamaCache", "Llama", "LlamaCache", "LlamaDiskCache", "LlamaDraftModel",
           "LlamaGrammar", "LlamaPromptLookupDecoding", "LlamaRAMCache", "LlamaState", "LogitsProcessor",
           "LogitsProcessorList", "StoppingCriteria", "StoppingCriteriaList"]
