"""`Llama`'s sampling, generation and completions (the class is in llama.py)."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..generation.sequence import common_prefix
from . import llama_types as T
from .base import LlamaBase
from .common import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    _float,
    _int,
    _log_softmax,
    _stops,
)
from .grammar import LlamaGrammar, constraint_of


class LlamaCompletion(LlamaBase):
    """Sampling, generation and text completion on a loaded model."""

    # -- low level: sampling and generation ------------------------------------------------------------------
    def _sampler(self, *, temp: float, top_k: int, top_p: float, min_p: float, typical_p: float,
                 repeat_penalty: float, frequency_penalty: float, presence_penalty: float, mirostat_mode: int,
                 mirostat_tau: float, mirostat_eta: float, seed: int | None, logit_bias: dict[int, float] | None,
                 fresh: bool = True) -> Any:
        from ..generation.params import SamplerParams
        from ..generation.sampling import Sampler

        params = SamplerParams(
            temp=_float("temperature", temp), top_k=_int("top_k", top_k), top_p=_float("top_p", top_p, 0.0),
            min_p=_float("min_p", min_p, 0.0), typical_p=_float("typical_p", typical_p, 0.0),
            repeat_penalty=_float("repeat_penalty", repeat_penalty, 0.0),
            repeat_last_n=self.last_n_tokens_size,
            frequency_penalty=_float("frequency_penalty", frequency_penalty),
            presence_penalty=_float("presence_penalty", presence_penalty),
            mirostat=_int("mirostat_mode", mirostat_mode, 0, 2),
            mirostat_tau=_float("mirostat_tau", mirostat_tau), mirostat_eta=_float("mirostat_eta", mirostat_eta),
            seed=_int("seed", self._seed if seed is None else seed, -1, 0xFFFFFFFF),
            logit_bias=self._logit_bias(logit_bias))
        params.top_k = max(params.top_k, 0)
        if fresh:
            return Sampler(params, self._n_vocab, eog_ids=self._eog)
        key = tuple(sorted((k, str(v)) for k, v in vars(params).items()))
        if key not in self._samplers:
            self._samplers = {key: Sampler(params, self._n_vocab, eog_ids=self._eog)}
        return self._samplers[key]

    def _logit_bias(self, bias: dict[int, float] | None) -> dict[int, float]:
        if bias is None:
            return {}
        if not isinstance(bias, dict):
            raise TypeError("logit_bias must be a dict {token_id: bias}")
        out = {}
        for k, v in bias.items():
            tok = _int("logit_bias key", int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k,
                       0, self._n_vocab - 1)
            out[tok] = _float(f"logit_bias[{tok}]", v)
        return out

    def sample(self, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
               temp: float = 0.80, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
               presence_penalty: float = 0.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
               mirostat_eta: float = 0.1, mirostat_tau: float = 5.0, penalize_nl: bool = True,
               logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
               grammar: Any | None = None, idx: int | None = None) -> int:
        """Sample the next token from the last evaluated position's logits (the penalties look back on the
        KV cache's tokens). tfs_z and penalize_nl are accepted and ignored (llama.cpp dropped them)."""
        eng = self._engine()
        matcher = None
        if grammar is not None:
            if not isinstance(grammar, LlamaGrammar):
                raise TypeError("grammar must be a LlamaGrammar")
            matcher = grammar._matcher(self._tok, self._n_vocab)
        with self._lock:
            if idx is not None and self._logits_all and self._scores_buf is not None:
                logits = self._scores_buf[_int("idx", idx, 0, max(0, eng.n_past(0) - 1))]
            elif self._last_logits is None:
                raise RuntimeError("sample: nothing evaluated yet; call eval() first")
            else:
                logits = self._last_logits
            ids = eng.tokens(0)
            if logits_processor is not None:
                logits = np.asarray(logits_processor(np.asarray(ids, dtype=np.intc), logits.copy()), np.single)
            if matcher is not None:  # the grammar's mask, then the sampler; the grammar advances with the token
                logits = matcher.apply(np.array(logits, dtype=np.single))
            sampler = self._sampler(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                    repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                    presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                    mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=None,
                                    logit_bias=None, fresh=False)
            n = self.last_n_tokens_size
            hist = ids if n < 0 else ids[-n:] if n > 0 else []
            token = int(sampler.sample(logits, hist))
            if matcher is not None:
                matcher.accept(token)
            return token

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
                 stopping_criteria: StoppingCriteriaList | StoppingCriteria | None = None,
                 grammar: Any | None = None) -> Iterator[int]:
        """Evaluate tokens and yield sampled tokens, each evaluated when the next is asked for, end-of-text
        tokens included (the caller decides when to stop), until the context is full or a stopping criterion
        says so. reset=True reuses the longest prefix the KV cache shares with tokens; reset=False continues
        after what the cache holds."""
        from ..generation.sequence import Sequence as GenSequence

        eng = self._engine()
        constraint = constraint_of(grammar, self._tok, self._n_vocab)
        ids = self._check_tokens("tokens", tokens)
        sampler = self._sampler(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=None, logit_bias=None)

        def run() -> Iterator[int]:
            with self._lock:
                prompt = ids if reset else eng.tokens(0) + ids
            if len(prompt) > self._n_ctx:
                raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self._n_ctx}")
            seq = GenSequence(sampler, self._n_ctx, n_predict=-2, ctx_shift=False, constraint=constraint)
            for step, _ in self._drive(seq, prompt, True, logits_processor, stopping_criteria):
                if step.stop == "criteria":
                    return
                yield step.token

        return run()

    def _drive(self, seq: Any, prompt: list[int], reuse: bool, processor: Any, stopping: Any,
               prompt_rows: list[Any] | None = None) -> Iterator[Any]:
        """Run one sequence of the generation core on sequence 0 of the engine: evaluate the prompt after the
        prefix the cache shares, then yield each Step and evaluate its token when the next one is asked for.
        A stopping criterion yields Step(-1, stop="criteria")."""
        from ..generation.sequence import Step
        from ..generation.speculative import DraftedRows

        eng = self._engine()
        spec = DraftedRows(eng, self._drafter, 0, self._keep_rows if self._logits_all else None) \
            if self._drafter is not None else None
        with self._lock:
            self._epoch += 1
            epoch = self._epoch
            self._check_open()
            todo = seq.start(prompt, eng.tokens(0) if reuse else ())
            eng.kv_truncate(0, seq.n_past)
            if prompt_rows is not None:
                rows = eng.eval_all_logits(todo, 0)
                seq.evaluated(len(todo))
                prompt_rows.append(rows)
                if self._logits_all:
                    if self._scores_buf is None:
                        self._scores_buf = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)
                    self._scores_buf[seq.n_past - len(todo):seq.n_past] = rows
                logits = rows[-1]
                self._last_logits = logits
            else:
                logits = self._eval(eng, todo, seq, prompt=True)
        while True:
            with self._lock:
                if self._epoch != epoch:
                    raise RuntimeError("this stream was ended: another call used the Llama object before it finished")
                if stopping is not None or processor is not None:
                    toks = eng.tokens(0)   # up to the last evaluated token (not a draft's rows beyond it)
                    ids = np.asarray(toks[:len(toks) - spec.pending] if spec is not None else toks, dtype=np.intc)
                    if processor is not None:
                        logits = np.asarray(processor(ids, logits.copy()), dtype=np.single)
                    if stopping is not None and stopping(ids, logits):
                        step = Step(-1, stop="criteria")
                        seq.timings.stop_reason = "criteria"
                    else:
                        step = seq.feed(logits)
                else:
                    step = seq.feed(logits)
                if spec is not None:   # a drafted token sampled keeps its verified row; else the rows go
                    spec.settle(seq, step.token, bool(step.stop))
            yield step, logits
            if step.stop:
                return
            with self._lock:
                if self._epoch != epoch:
                    raise RuntimeError("this stream was ended: another call used the Llama object before it finished")
                if spec is not None:
                    logits = spec.eval_next(seq, step.token)
                    self._last_logits = logits
                else:
                    logits = self._eval(eng, [step.token], seq, prompt=False)

    # -- completions -----------------------------------------------------------------------------------------
    def _prompt_tokens(self, prompt: str | list[int], suffix: str | None) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt.encode("utf-8"), special=True) if prompt else []
            if not ids:
                bos = self.token_bos()
                ids = [bos] if bos >= 0 else []
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = self._check_tokens("prompt", prompt)
        else:
            raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        tok = self._tok
        if suffix is not None and tok.fim_pre_id is not None and tok.fim_suf_id is not None \
                and tok.fim_mid_id is not None:
            if not isinstance(prompt, str):
                raise TypeError("suffix needs a text prompt")
            pre = [tok.fim_pre_id] + self.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            suf = [tok.fim_suf_id] + self.tokenize(suffix.encode("utf-8"), add_bos=False, special=True)
            head = [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []
            ids = head + (suf + pre if self.spm_infill else pre + suf) + [tok.fim_mid_id]
        if not ids:
            raise ValueError("prompt is empty (no tokens) and the model has no BOS token")
        return ids

    def _completion(self, prompt: str | list[int], suffix: str | None, max_tokens: int | None, temperature: float,
                    top_p: float, min_p: float, typical_p: float, logprobs: int | None, echo: bool,
                    stop: str | list[str] | None, frequency_penalty: float, presence_penalty: float,
                    repeat_penalty: float, top_k: int, seed: int | None, mirostat_mode: int, mirostat_tau: float,
                    mirostat_eta: float, model: str | None, stopping_criteria: Any, logits_processor: Any,
                    grammar: Any, logit_bias: dict[int, float] | None, stream: bool
                    ) -> Iterator[T.CreateCompletionStreamResponse]:
        """The completion as stream chunks (create_completion joins them when not streaming)."""
        from ..generation.sequence import Sequence as GenSequence

        eng = self._engine()
        constraint = constraint_of(grammar, self._tok, self._n_vocab)
        if suffix is not None and not isinstance(suffix, str):
            raise TypeError("suffix must be a string")
        if max_tokens is not None:
            max_tokens = _int("max_tokens", max_tokens)
        if logprobs is not None:
            logprobs = _int("logprobs", logprobs, 0, self._n_vocab)
        stops = _stops(stop)
        ids = self._prompt_tokens(prompt, suffix)
        if len(ids) >= self._n_ctx:
            raise ValueError(f"Requested tokens ({len(ids)}) exceed context window of {self._n_ctx}")
        n_predict = self._n_ctx - len(ids) if max_tokens is None or max_tokens <= 0 else \
            min(max_tokens, self._n_ctx - len(ids))
        sampler = self._sampler(temp=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=seed,
                                logit_bias=logit_bias)
        tok = self._tok
        eog = self._eog
        seq = GenSequence(sampler, self._n_ctx, is_eog=eog.__contains__, piece=lambda t: tok.token_to_piece(t, False),
                          n_predict=n_predict, ctx_shift=False, stop=stops, constraint=constraint)
        prompt_text = prompt if isinstance(prompt, str) else self.detokenize(ids).decode("utf-8", "replace")
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": model if model is not None else self.model_path}
        want_prompt_rows = bool(echo and logprobs is not None)
        prompt_rows: list[Any] | None = [] if want_prompt_rows else None

        def chunk(text: str, lp: T.CompletionLogprobs | None, finish: str | None) -> T.CreateCompletionResponse:
            return {**head, "choices": [{"text": text, "index": 0, "logprobs": lp,  # type: ignore[typeddict-item]
                                         "finish_reason": finish}]}

        def run() -> Iterator[T.CreateCompletionStreamResponse]:
            if self.cache is not None:
                with self._lock:
                    try:
                        item = self.cache[ids]
                        if common_prefix(list(item.input_ids), ids) > common_prefix(eng.tokens(0), ids):
                            self._load_state(eng, item)
                    except KeyError:
                        pass
            steps = self._drive(seq, ids, not want_prompt_rows, logits_processor, stopping_criteria, prompt_rows)
            offset = len(prompt_text)
            n_gen = 0
            finish = "length"
            first = True
            for step, logits in steps:
                if first and echo:
                    first = False
                    lp0 = self._prompt_logprobs(ids, prompt_rows[0], logprobs) if prompt_rows else None
                    yield chunk(prompt_text, lp0, None)
                first = False
                if step.stop in ("eog", "criteria"):
                    finish = "stop"
                    break
                n_gen += 1
                if step.stop == "word":
                    finish = "stop"
                elif step.stop == "grammar":
                    finish = "stop"
                if logprobs is not None:
                    piece = tok.token_to_piece(step.token, False).decode("utf-8", errors="ignore")
                    lp = self._token_logprobs([step.token], [logits], logprobs, [piece], offset)
                    offset += len(piece)
                    if step.text or not step.stop:
                        yield chunk(step.text, lp, None)
                elif step.text:
                    yield chunk(step.text, None, None)
                if step.stop:
                    break
            tail = seq.flush()
            if suffix is not None and tok.fim_mid_id is None:
                tail += suffix
            if tail:
                yield chunk(tail, None, None)
            if self.cache is not None:
                with self._lock:
                    self.cache[eng.tokens(0)] = self._save_state()
            last = chunk("", None, finish)
            last["usage"] = {"prompt_tokens": len(ids), "completion_tokens": n_gen,
                             "total_tokens": len(ids) + n_gen}
            yield last

        return run()

    def _token_logprobs(self, tokens: list[int], rows: list[Any], n_top: int, pieces: list[str] | None,
                        offset: int) -> T.CompletionLogprobs:
        out: T.CompletionLogprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for i, (t, row) in enumerate(zip(tokens, rows)):
            piece = pieces[i] if pieces is not None else \
                self._tok.token_to_piece(t, False).decode("utf-8", errors="ignore")
            lp = _log_softmax(row)
            top: dict[str, float] = {}
            if n_top > 0:
                idx = np.argpartition(-lp, n_top - 1)[:n_top] if n_top < len(lp) else np.arange(len(lp))
                for j in idx[np.argsort(-lp[idx], kind="stable")]:
                    key = self._tok.token_to_piece(int(j), False).decode("utf-8", errors="ignore")
                    top.setdefault(key, float(lp[j]))
            top[piece] = float(lp[t])
            out["tokens"].append(piece)
            out["token_logprobs"].append(float(lp[t]))
            out["top_logprobs"].append(top)
            out["text_offset"].append(offset)
            offset += len(piece)
        return out

    def _prompt_logprobs(self, ids: list[int], rows: Any, n_top: int | None) -> T.CompletionLogprobs:
        pieces = [self._tok.token_to_piece(t, False).decode("utf-8", errors="ignore") for t in ids]
        out = self._token_logprobs(ids[1:], list(rows[:-1]), n_top or 0, pieces[1:], len(pieces[0]))
        out["tokens"].insert(0, pieces[0])
        out["token_logprobs"].insert(0, None)
        out["top_logprobs"].insert(0, None)
        out["text_offset"].insert(0, 0)
        return out

    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = [],  # noqa: B006 - llama-cpp-python's signature
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: StoppingCriteriaList | StoppingCriteria | None = None,
        logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
        grammar: Any | None = None,
        logit_bias: dict[int, float] | None = None,
    ) -> T.CreateCompletionResponse | Iterator[T.CreateCompletionStreamResponse]:
        """Complete a prompt (text or token ids): a CreateCompletionResponse, or with stream=True an iterator of
        chunks. max_tokens None or <= 0: until the context is full. suffix: fill-in-the-middle when the model
        has FIM tokens, else appended to the text. logprobs: how many top tokens to list per token (prompt
        tokens too with echo). tfs_z is accepted and ignored."""
        chunks = self._completion(prompt, suffix, max_tokens, temperature, top_p, min_p, typical_p, logprobs, echo,
                                  stop, frequency_penalty, presence_penalty, repeat_penalty, top_k, seed,
                                  mirostat_mode, mirostat_tau, mirostat_eta, model, stopping_criteria,
                                  logits_processor, grammar, logit_bias, stream)
        if stream:
            return _strip_usage(chunks)
        with self._lock:
            return _join_completion(chunks, logprobs is not None)

    __call__ = create_completion  # llm(prompt, ...): create_completion (see there)


def _strip_usage(chunks: Iterator[T.CreateCompletionStreamResponse]) -> Iterator[T.CreateCompletionStreamResponse]:
    for c in chunks:
        c.pop("usage", None)
        yield c


def _join_completion(chunks: Iterator[T.CreateCompletionStreamResponse], with_logprobs: bool
                     ) -> T.CreateCompletionResponse:
    """One response from a completion's chunks."""
    text: list[str] = []
    lp: T.CompletionLogprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    last: T.CreateCompletionResponse | None = None
    for c in chunks:
        ch = c["choices"][0]
        text.append(ch["text"])
        if ch["logprobs"] is not None:
            part = ch["logprobs"]
            lp["tokens"].extend(part["tokens"])
            lp["token_logprobs"].extend(part["token_logprobs"])
            lp["top_logprobs"].extend(part["top_logprobs"])
            lp["text_offset"].extend(part["text_offset"])
        last = c
    assert last is not None
    choice: T.CompletionChoice = {"text": "".join(text), "index": 0, "logprobs": lp if with_logprobs else None,
                                  "finish_reason": last["choices"][0]["finish_reason"]}
    return {"id": last["id"], "object": "text_completion", "created": last["created"], "model": last["model"],
            "choices": [choice], "usage": last["usage"]}
