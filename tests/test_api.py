"""`from llamapy import Llama`: llama-cpp-python's high-level API on the default model.

The examples of llama-cpp-python's README, the return shapes checked against the TypedDicts of
llamapy.api.llama_types, greedy text checked against `llamapy run --temp 0`, the state round trip, the
callbacks, thread safety, Ctrl-C in a stream, and bad input.
"""
from __future__ import annotations

import io
import math
import subprocess
import sys
import threading
import types
import typing

import numpy as np
import pytest

from llamapy.api import llama_types as T

PLANETS = "Q: Name the planets in the solar system? A: "


# -- checking a value against a TypedDict --------------------------------------------------------------------
def conforms(value, tp, where="value"):
    """Assert that value has the keys and value types tp (a TypedDict or a typing expression) says."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return
    if isinstance(tp, type) and typing.is_typeddict(tp):
        assert isinstance(value, dict), f"{where}: expected a dict, got {type(value).__name__}"
        hints = typing.get_type_hints(tp, include_extras=True)
        required = tp.__required_keys__
        for k in required:
            assert k in value, f"{where}: key {k!r} missing"
        for k, v in value.items():
            assert k in hints, f"{where}: unexpected key {k!r}"
            conforms(v, hints[k], f"{where}.{k}")
        return
    if origin is typing.NotRequired or origin is typing.Required:
        return conforms(value, typing.get_args(tp)[0], where)
    if origin is typing.Literal:
        assert value in typing.get_args(tp), f"{where}: {value!r} not in {typing.get_args(tp)}"
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            try:
                conforms(value, alt, where)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: {value!r:.80} matches none of {tp}: {errors}")
    if origin is list:
        assert isinstance(value, list), f"{where}: expected a list, got {type(value).__name__}"
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            conforms(v, item, f"{where}[{i}]")
        return
    if origin is dict:
        assert isinstance(value, dict), f"{where}: expected a dict"
        kt, vt = typing.get_args(tp)
        for k, v in value.items():
            conforms(k, kt, f"{where} key")
            conforms(v, vt, f"{where}[{k!r}]")
        return
    if tp is type(None):
        assert value is None, f"{where}: expected None, got {value!r}"
        return
    if tp is float:
        assert isinstance(value, (float, int)) and not isinstance(value, bool), f"{where}: expected float"
        return
    assert isinstance(value, tp), f"{where}: expected {tp}, got {type(value).__name__}"


def test_conforms_catches_a_wrong_shape():
    good = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    conforms(good, T.CompletionUsage)
    with pytest.raises(AssertionError):
        conforms({**good, "total_tokens": "3"}, T.CompletionUsage)
    with pytest.raises(AssertionError):
        conforms({"prompt_tokens": 1, "completion_tokens": 2}, T.CompletionUsage)


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(default_model):
    from llamapy import Llama

    with Llama(model_path=default_model, n_ctx=512, embedding=True, verbose=False) as m:
        yield m


def test_import_llamapy_stays_light():
    code = "import sys, llamapy; print('llamapy.api' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    import llamapy
    from llamapy import Llama, LlamaRAMCache  # noqa: F401
    with pytest.raises(AttributeError):
        llamapy.NoSuchThing  # noqa: B018


# -- the README's examples -----------------------------------------------------------------------------------
def test_readme_completion_with_stop_and_echo(llm):
    out = llm(PLANETS, max_tokens=32, stop=["Q:", "\n"], echo=True, temperature=0)
    conforms(out, T.CreateCompletionResponse)
    choice = out["choices"][0]
    assert choice["text"].startswith(PLANETS)
    generated = choice["text"][len(PLANETS):]
    assert generated.strip()
    assert "\n" not in generated and "Q:" not in generated
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    u = out["usage"]
    assert u["prompt_tokens"] == len(llm.tokenize(PLANETS.encode(), special=True))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # the same completion without a stop ends at the token budget, with the stop string in it
    free = llm(PLANETS, max_tokens=32, temperature=0)
    assert free["choices"][0]["finish_reason"] == "length"
    assert free["usage"]["completion_tokens"] == 32
    assert free["choices"][0]["text"].startswith(generated)
    if choice["finish_reason"] == "stop":
        rest = free["choices"][0]["text"][len(generated):]
        assert rest.startswith("\n") or rest.startswith("Q:")


def test_suffix_without_fim_tokens_is_appended(llm):
    assert llm._tok.fim_pre_id is None  # SmolLM2 has no fill-in-the-middle tokens
    out = llm("def add(a, b):", suffix="\n# end", max_tokens=4, temperature=0)
    plain = llm("def add(a, b):", max_tokens=4, temperature=0)
    assert out["choices"][0]["text"] == plain["choices"][0]["text"] + "\n# end"


def test_greedy_completion_equals_llamapy_run(llm, default_model):
    from llamapy.generation.params import SamplerParams
    from llamapy.run import run

    prompt = "The capital of France is"
    out, err = io.StringIO(), io.StringIO()
    n = run(model=default_model, prompt=prompt, n_predict=24, ctx_size=512, display_prompt=False,
            sampling=SamplerParams(temp=0), out=out, err=err)
    ref = out.getvalue().removesuffix("\n\n").removesuffix(" [end of text]\n")
    llm.reset()  # the prompt evaluated in one batch, as run does
    got = llm(prompt, max_tokens=24, temperature=0)
    assert got["choices"][0]["text"] == ref
    assert got["usage"]["completion_tokens"] == n


def test_streaming_gives_the_same_text_in_chunks(llm):
    llm(PLANETS, max_tokens=1)  # both calls below then reuse the prompt's prefix the same way
    whole = llm(PLANETS, max_tokens=20, temperature=0)["choices"][0]["text"]
    chunks = list(llm(PLANETS, max_tokens=20, temperature=0, stream=True))
    for c in chunks:
        conforms(c, T.CreateCompletionStreamResponse)
        assert "usage" not in c
    assert len(chunks) >= 5
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len({c["id"] for c in chunks}) == 1


def test_seeds(llm, default_model):
    from llamapy import Llama

    def sample(m, **kw):
        m.reset()  # each from an empty cache: the same evaluation every time
        return m(PLANETS, max_tokens=12, **kw)["choices"][0]["text"]

    a = sample(llm, seed=1234)
    assert sample(llm, seed=1234) == a
    others = {sample(llm, seed=s) for s in (1, 2, 3)}
    assert len(others | {a}) > 1  # sampling at temperature 0.8 depends on the seed
    with Llama(default_model, n_ctx=128, seed=1234, verbose=False) as m:  # the object's seed, for every call
        assert sample(m) == a
        assert sample(m) == a


def test_logprobs_of_generated_and_echoed_tokens(llm):
    out = llm("The capital of France is", max_tokens=6, temperature=0, logprobs=3)
    conforms(out, T.CreateCompletionResponse)
    lp = out["choices"][0]["logprobs"]
    n = out["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    for tok, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert logprob <= 0.0
        assert tok in top and len(top) <= 4
        assert top[tok] == logprob == max(top.values())  # greedy: the token chosen is the most likely
        assert math.isclose(sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-9, True)
    assert lp["text_offset"][0] == len("The capital of France is")
    echoed = llm("The capital of France is", max_tokens=4, temperature=0, logprobs=2, echo=True)
    elp = echoed["choices"][0]["logprobs"]
    n_prompt = echoed["usage"]["prompt_tokens"]
    assert elp["token_logprobs"][0] is None and elp["top_logprobs"][0] is None
    assert len(elp["tokens"]) == n_prompt + echoed["usage"]["completion_tokens"]
    assert all(v is not None and v <= 0 for v in elp["token_logprobs"][1:])
    assert elp["text_offset"][:2] == [0, len(elp["tokens"][0])]
    # the generated part of the echo has the logprobs of the plain call
    assert elp["token_logprobs"][n_prompt:] == pytest.approx(lp["token_logprobs"][:4], abs=1e-5)


def test_chat_completion_and_its_stream(llm):
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
    # each call below starts from an empty cache: a prompt whose prefix is reused has its last token
    # evaluated alone, which rounds differently from a batch and can flip a near tie (as in llama.cpp)
    llm.reset()
    out = llm.create_chat_completion(messages=msgs, temperature=0, max_tokens=24)
    conforms(out, T.CreateChatCompletionResponse)
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"].strip()
    # the model's template (SmolLM2's Jinja), then a completion that stops at the end of the turn
    rendered = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    llm.reset()
    plain = llm(rendered, max_tokens=24, temperature=0, stop=["<|im_end|>"])
    assert plain["choices"][0]["text"] == msg["content"]
    assert plain["usage"] == out["usage"]
    assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion"
    llm.reset()
    chunks = list(llm.create_chat_completion(messages=msgs, temperature=0, max_tokens=24, stream=True))
    for c in chunks:
        conforms(c, T.CreateChatCompletionStreamResponse)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == msg["content"]
    # the end of turn is not in the text, and response_format text is the default
    assert "<|im_end|>" not in msg["content"]
    llm.reset()
    same = llm.create_chat_completion(messages=msgs, temperature=0, max_tokens=24, response_format={"type": "text"})
    assert same["choices"][0]["message"]["content"] == msg["content"]


def test_chat_logprobs_and_openai_types(llm):
    pytest.importorskip("openai")
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    msgs = [{"role": "user", "content": "Say hello."}]
    out = llm.create_chat_completion(messages=msgs, temperature=0, max_tokens=5, logprobs=True, top_logprobs=2)
    conforms(out, T.CreateChatCompletionResponse)
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]
    assert all(len(c["top_logprobs"]) <= 3 and c["logprob"] <= 0 for c in content)
    typed = llm.create_chat_completion_openai_v1(messages=msgs, temperature=0, max_tokens=5)
    assert isinstance(typed, ChatCompletion)
    assert typed.choices[0].message.content == out["choices"][0]["message"]["content"]
    streamed = list(llm.create_chat_completion_openai_v1(messages=msgs, temperature=0, max_tokens=5, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in streamed)


def test_chat_format_by_llama_cpp_python_name(default_model):
    from llamapy import Llama

    with Llama(default_model, n_ctx=256, chat_format="llama-2", verbose=False) as m:
        assert m._chat_template().family == "llama2-sys"
    with pytest.raises(ValueError, match="chat_format 'no-such-format'"):
        Llama(default_model, chat_format="no-such-format", verbose=False)


def test_embeddings(llm):
    out = llm.create_embedding("Hello, world!")
    conforms(out, T.CreateEmbeddingResponse)
    vec = np.array(out["data"][0]["embedding"])
    assert vec.shape == (llm.n_embd(),)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    ids = llm.tokenize(b"Hello, world!")
    assert out["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vec, llm._eng.embed(ids), atol=1e-6)  # the server's /v1/embeddings vector
    both = llm.embed(["Hello, world!", "Goodbye"])
    assert len(both) == 2 and both[0] == pytest.approx(out["data"][0]["embedding"], abs=1e-6)
    raw = np.array(llm.embed("Hello, world!", normalize=False))
    assert np.linalg.norm(raw) > 1.5
    np.testing.assert_allclose(raw / np.linalg.norm(raw), vec, atol=1e-5)
    many = llm.create_embedding(["a", "b", "c"])
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    long_text = "word " * 600
    assert len(llm.embed(long_text)) == llm.n_embd()  # truncated to n_batch
    with pytest.raises(ValueError, match="exceed batch size"):
        llm.embed(long_text, truncate=False)


def test_embed_needs_embedding_true(default_model):
    from llamapy import Llama

    with Llama(default_model, n_ctx=128, verbose=False) as m:
        with pytest.raises(RuntimeError, match="embedding=True"):
            m.embed("x")


def test_tokenize_round_trips(llm):
    for text in [b"Hello, world!", b" leading space", "糖果的制作步骤 ✓ émigré".encode(), b"a\n\tb"]:
        ids = llm.tokenize(text)
        assert all(isinstance(t, int) for t in ids)
        assert llm.detokenize(ids) == text
    special = llm.tokenize(b"<|im_start|>user", special=True)
    plain = llm.tokenize(b"<|im_start|>user", special=False)
    assert len(special) < len(plain)
    assert llm.detokenize(special) == b"user"
    assert llm.detokenize(special, special=True) == b"<|im_start|>user"
    with pytest.raises(TypeError, match="bytes"):
        llm.tokenize("text")
    assert llm.n_vocab() == 49152 and llm.n_ctx() == 512 and llm.n_embd() == 576
    assert llm.token_eos() == 2 and llm.token_bos() == 1
    assert llm.metadata["general.architecture"] == "llama"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in llm.metadata.items())
    assert "tokenizer.ggml.tokens" not in llm.metadata  # arrays are left out, as llama.cpp does


# -- low level -----------------------------------------------------------------------------------------------
def test_eval_sample_generate(llm):
    prompt = llm.tokenize(b"The capital of France is")
    llm.reset()
    assert llm.n_tokens == 0
    llm.eval(prompt)
    assert list(llm.input_ids) == prompt and llm.scores.shape == (1, llm.n_vocab())
    tok = llm.sample(temp=0)
    assert tok == int(np.argmax(llm.scores[-1]))
    greedy = llm(prompt, max_tokens=8, temperature=0)["choices"][0]["text"]
    got = []
    for t in llm.generate(prompt, temp=0):
        got.append(t)
        if len(got) == 8:
            break
    assert got[0] == tok
    assert llm.detokenize(got).decode() == greedy


def test_save_and_load_state_give_the_same_next_logits(llm):
    llm.reset()
    llm("The quick brown fox", max_tokens=6, temperature=0)  # a prompt batch, then tokens one by one
    state = llm.save_state()
    assert state.n_tokens == llm.n_tokens and state.scores.shape == (1, llm.n_vocab())
    nxt = llm.tokenize(b" and", add_bos=False)
    llm.eval(nxt)
    expected = llm.scores[-1].copy()
    llm.reset()
    llm.eval(llm.tokenize(b"Something else entirely"))
    llm.load_state(state)
    assert list(llm.input_ids) == list(state.input_ids)
    np.testing.assert_array_equal(llm.scores[-1], state.scores[-1])
    llm.eval(nxt)
    np.testing.assert_array_equal(llm.scores[-1], expected)


def test_logits_all_keeps_every_row(default_model, llm):
    from llamapy import Llama

    ids = llm.tokenize(b"The capital of France is")
    with Llama(default_model, n_ctx=128, logits_all=True, verbose=False) as m:
        m.eval(ids)
        assert m.scores.shape == (len(ids), m.n_vocab())
        llm.reset()
        llm.eval(ids)
        np.testing.assert_array_equal(m.scores[-1], llm.scores[-1])
        out = m("The capital of France is", max_tokens=3, temperature=0, logprobs=1, echo=True)
        n = out["usage"]["total_tokens"] - 1  # the last token sampled is not evaluated
        assert m.n_tokens == n and m.scores.shape == (n, m.n_vocab())
        np.testing.assert_array_equal(m.scores[len(ids) - 1], llm.scores[-1])


def test_ram_cache(llm):
    from llamapy import LlamaRAMCache

    cache = LlamaRAMCache(capacity_bytes=10 << 20)
    llm.set_cache(cache)
    try:
        a = llm("The capital of France is", max_tokens=5, temperature=0)
        assert len(cache.cache_state) == 1
        key = next(iter(cache.cache_state))
        assert llm.tokenize(b"The capital of France is") == list(key[:5])
        llm("Completely different", max_tokens=3, temperature=0)
        b = llm("The capital of France is", max_tokens=5, temperature=0)
        assert a["choices"][0]["text"] == b["choices"][0]["text"]
        assert llm.tokenize(b"The capital of France") in cache
        assert cache[llm.tokenize(b"The capital")].n_tokens >= 5
        with pytest.raises(KeyError):
            cache[[12345, 6789]]
    finally:
        llm.set_cache(None)
    small = LlamaRAMCache(capacity_bytes=1)
    small[[1, 2]] = llm.save_state()
    assert len(small.cache_state) == 0


def test_logits_processor_and_stopping_criteria(llm):
    from llamapy import LogitsProcessorList, StoppingCriteriaList

    target = llm.tokenize(b" banana", add_bos=False)[0]
    seen = []

    def only_banana(input_ids, scores):
        seen.append(len(input_ids))
        out = np.full_like(scores, -np.inf)
        out[target] = 0.0
        return out

    out = llm("I like", max_tokens=4, logits_processor=LogitsProcessorList([only_banana]))
    assert out["choices"][0]["text"] == " banana" * 4
    n_prompt = out["usage"]["prompt_tokens"]
    assert seen == [n_prompt, n_prompt + 1, n_prompt + 2, n_prompt + 3]

    def after_three(input_ids, logits):
        return len(input_ids) >= n_prompt + 3

    out = llm("I like", max_tokens=10, temperature=0, stopping_criteria=StoppingCriteriaList([after_three]))
    assert out["usage"]["completion_tokens"] == 3
    assert out["choices"][0]["finish_reason"] == "stop"


# -- robustness ----------------------------------------------------------------------------------------------
def test_ctrl_c_in_a_stream_leaves_the_object_usable(llm):
    llm(PLANETS, max_tokens=1)  # every call below then reuses the prompt's prefix the same way
    expected = llm(PLANETS, max_tokens=10, temperature=0)["choices"][0]["text"]
    calls = []

    def interrupt(input_ids, logits):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return False

    it = llm(PLANETS, max_tokens=10, temperature=0, stream=True, stopping_criteria=interrupt)
    with pytest.raises(KeyboardInterrupt):
        for _ in it:
            pass
    it2 = llm(PLANETS, max_tokens=10, temperature=0, stream=True)
    next(it2)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the caller holds a chunk
        it2.throw(KeyboardInterrupt)
    assert llm(PLANETS, max_tokens=10, temperature=0)["choices"][0]["text"] == expected


def test_a_call_during_a_stream_ends_the_stream(llm):
    it = llm(PLANETS, max_tokens=10, temperature=0, stream=True)
    next(it)
    llm("Hello", max_tokens=2)
    with pytest.raises(RuntimeError, match="another call"):
        next(it)


def test_threads_take_turns(llm):
    llm(PLANETS, max_tokens=1)  # every call below then reuses the prompt's prefix the same way
    expected = llm(PLANETS, max_tokens=12, temperature=0)["choices"][0]["text"]
    results, errors = [], []

    def work():
        try:
            results.append(llm(PLANETS, max_tokens=12, temperature=0)["choices"][0]["text"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [expected] * 3


def test_bad_input_gets_a_clear_error(llm, default_model):
    from llamapy import Llama

    too_long = "word " * 600
    n = len(llm.tokenize(too_long.encode(), special=True))
    with pytest.raises(ValueError, match=rf"^Requested tokens \({n}\) exceed context window of 512$"):
        llm(too_long)
    with pytest.raises(TypeError, match="max_tokens"):
        llm("x", max_tokens="5")
    with pytest.raises(ValueError, match="temperature"):
        llm("x", temperature=float("nan"))
    with pytest.raises(ValueError, match="top_p"):
        llm("x", top_p=-1)
    with pytest.raises(ValueError, match="mirostat_mode"):
        llm("x", mirostat_mode=3)
    with pytest.raises(TypeError, match="prompt"):
        llm(3.5)
    with pytest.raises(ValueError, match="token id 99999999"):
        llm([1, 99999999])
    with pytest.raises(TypeError, match="stop"):
        llm("x", stop=5)
    with pytest.raises(ValueError, match="logit_bias"):
        llm("x", logit_bias={10**9: 1.0})
    with pytest.raises(TypeError, match="logit_bias"):
        llm("x", logit_bias={5: "high"})
    with pytest.raises(ValueError, match="grammar: line 1, column 10"):  # GBNF literals take double quotes
        llm("x", grammar="root ::= 'a'")
    with pytest.raises(TypeError, match="grammar must be a LlamaGrammar"):
        llm("x", grammar=5)
    with pytest.raises(ValueError, match="response_format: type must be"):
        llm.create_chat_completion([{"role": "user", "content": "hi"}], response_format={"type": "yaml"})
    with pytest.raises(ValueError, match=r"tools\[0\].function.name"):
        llm.create_chat_completion([{"role": "user", "content": "hi"}],
                                   tools=[{"type": "function", "function": {"name": "bad name"}}])
    with pytest.raises(TypeError, match="messages"):
        llm.create_chat_completion(["hi"])
    with pytest.raises(ValueError, match="Model path does not exist"):
        Llama("/no/such/model.gguf", verbose=False)
    with pytest.raises(ValueError, match="K cache type 99"):
        Llama(default_model, type_k=99, verbose=False)
    with pytest.raises(RuntimeError, match="Failed to initialize LoRA adapter from lora path: adapter.gguf: .*no such"):
        Llama(default_model, lora_path="adapter.gguf", verbose=False)
    with pytest.raises(TypeError, match="draft_model must be a LlamaDraftModel"):
        Llama(default_model, draft_model=object(), verbose=False)
    with pytest.raises(ValueError, match="n_ctx"):
        Llama(default_model, n_ctx=-5, verbose=False)
    # still usable after all that
    assert llm("The capital of France is", max_tokens=2, temperature=0)["usage"]["completion_tokens"] == 2


def test_gpu_arguments_are_accepted_and_rope_overrides_warn(default_model):
    from llamapy import Llama

    with Llama(default_model, n_ctx=64, n_gpu_layers=-1, main_gpu=0, offload_kqv=True, flash_attn=True,
               type_k=1, verbose=False) as m:
        assert m.n_ctx() == 64
    with pytest.warns(UserWarning, match="rope_freq_base"):
        Llama(default_model, n_ctx=64, rope_freq_base=20000.0, verbose=False).close()


def test_pickle_loads_the_model_again(default_model):
    import pickle

    from llamapy import Llama

    with Llama(default_model, n_ctx=96, seed=7, verbose=False) as m:
        text = m("Hello", max_tokens=4)["choices"][0]["text"]
        copy = pickle.loads(pickle.dumps(m))
    with copy:
        assert copy.n_ctx() == 96 and copy.n_tokens == 0
        assert copy("Hello", max_tokens=4)["choices"][0]["text"] == text


def test_close_and_vocab_only(default_model):
    from llamapy import Llama

    m = Llama(default_model, n_ctx=64, verbose=False)
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        m("x")
    m.close()  # twice is fine
    with Llama(default_model, vocab_only=True, verbose=False) as v:
        assert v.detokenize(v.tokenize(b"Hello world")) == b"Hello world"
        with pytest.raises(RuntimeError, match="vocab_only"):
            v("Hello")
