"""Speculative decoding in every front end of the generation core: the interactive session (`chat`, `run -i`),
the Python API (`draft_model=`, LlamaPromptLookupDecoding) and the server with a draft model: greedy text
identical to the text without a draft, with drafts made and accepted."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from llamapy.chat.interactive import InteractiveOptions, run_interactive
from llamapy.engine.engine import Engine
from llamapy.generation.params import SamplerParams
from llamapy.generation.sampling import Sampler
from llamapy.generation.speculative import DraftParams, LookupDrafter, ModelDrafter

# a task whose answer repeats the prompt, so prompt lookup has drafts to offer
SENTENCE = "The old lighthouse keeper climbed the spiral stairs every evening to light the great lamp."
TURNS = f"Repeat this sentence exactly: {SENTENCE}\nNow repeat it once more.\n"


@pytest.fixture(scope="module")
def draft_q4_0(default_model, tmp_path_factory):
    """A draft for the default model: its weights requantized to Q4_0."""
    from llamapy import quantize as Q

    path = tmp_path_factory.mktemp("draft") / "draft-q4_0.gguf"
    Q.quantize_file(default_model, path, Q.F.MOSTLY_Q4_0, 2, allow_requantize=True)
    return str(path)


def _chat(model, drafter_of=None, stdin=TURNS, n_predict=48):
    """A two-turn greedy chat on the default model through the interactive loop; (stdout, stderr, timings)."""
    with Engine(model, n_ctx=512, n_threads=2) as llm:
        drafter = drafter_of(llm) if drafter_of is not None else None
        opts = InteractiveOptions(prompt="You are a helpful assistant.", interactive=True, conversation=True,
                                  n_predict=n_predict)
        from llamapy.chat.interactive import chat_template_for_session
        from llamapy.chat.templates import ChatTemplate

        opts.chat_template = chat_template_for_session(ChatTemplate.for_model(llm.metadata))
        sampler = Sampler(SamplerParams(temp=0.0), llm.n_vocab, tokenizer=llm.tokenizer)
        out, err = io.StringIO(), io.StringIO()
        status = run_interactive(llm, sampler, opts, stdin=io.StringIO(stdin), stdout=out, stderr=err,
                                 drafter=drafter)
        assert status == 0
        tokens = llm.tokens(0)
        if drafter is not None and drafter_of is not None and isinstance(drafter, ModelDrafter):
            drafter.engine.close()
    return out.getvalue(), err.getvalue(), tokens


def _drafted(err: str) -> tuple[int, int]:
    line = next(x for x in err.splitlines() if "tokens drafted" in x)
    words = line.split()
    return int(words[words.index("drafted,") - 2]), int(words[words.index("accepted") - 1])


@pytest.fixture(scope="module")
def plain_chat(default_model):
    return _chat(default_model)


def test_interactive_lookup_same_chat(default_model, plain_chat):
    out, err, tokens = _chat(default_model, lambda llm: LookupDrafter(DraftParams()))
    assert out == plain_chat[0]
    assert tokens == plain_chat[2]   # the cache holds the same tokens: no rejected draft row is left behind
    drafted, accepted = _drafted(err)
    assert drafted > 0 and 0 < accepted <= drafted
    assert SENTENCE.split()[3] in out


def test_interactive_draft_model_same_chat(default_model, draft_q4_0, plain_chat):
    out, err, tokens = _chat(default_model, lambda llm: ModelDrafter(Engine(draft_q4_0, n_ctx=512, n_threads=2),
                                                                     DraftParams(n_max=8, p_min=0.0)))
    assert out == plain_chat[0] and tokens == plain_chat[2]
    drafted, accepted = _drafted(err)
    assert drafted > 0 and 0 < accepted <= drafted


def _cli(*args, stdin=None):
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "llamapy", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=300)


@pytest.mark.parametrize("verb", [("chat",), ("run", "-cnv")])
def test_cli_chat_lookup_same_answers(default_model, verb):
    base = (*verb, "-m", default_model, "-p", "You are a helpful assistant.", "--temp", "0", "-n", "40",
            "-c", "512")
    a = _cli(*base, stdin=TURNS)
    b = _cli(*base, "--lookup", stdin=TURNS)
    assert a.returncode == b.returncode == 0, b.stderr[-800:]
    assert a.stdout == b.stdout
    assert "tokens drafted" in b.stderr and "tokens drafted" not in a.stderr
    assert "speculative: prompt lookup" in b.stderr


# -- the Python API --------------------------------------------------------------------------------------------------


def test_prompt_lookup_decoding_drafts():
    from llamapy.llama_speculative import LlamaPromptLookupDecoding

    d = LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=3)
    ids = np.array([5, 6, 7, 8, 9, 5, 6, 1, 2, 5, 6], dtype=np.intc)
    # the last 2-gram (5, 6) first occurs at 0: the 3 ids after it
    assert d(ids).tolist() == [7, 8, 9]
    # no 2-gram match: the 1-gram (4) that ends the ids is found at 1
    assert d(np.array([3, 4, 2, 4], dtype=np.intc)).tolist() == [2, 4]
    assert d(np.array([1, 2, 3], dtype=np.intc)).tolist() == []
    with pytest.raises(ValueError, match="num_pred_tokens"):
        LlamaPromptLookupDecoding(num_pred_tokens=0)


@pytest.fixture(scope="module")
def api_plain(default_model):
    from llamapy import Llama

    with Llama(default_model, n_ctx=512, n_threads=2, verbose=False) as llm:
        msgs = [{"role": "user", "content": f"Repeat this sentence exactly: {SENTENCE}"}]
        chat = llm.create_chat_completion(msgs, max_tokens=60, temperature=0)
        text = llm(f"Copy: {SENTENCE}\nCopy:", max_tokens=60, temperature=0)["choices"][0]["text"]
        gen = [t for _, t in zip(range(40), llm.generate(llm.tokenize(SENTENCE.encode()), temp=0.0))]
    return msgs, chat, text, gen


@pytest.mark.parametrize("where", ["llama_speculative", "api"])
def test_api_prompt_lookup_same_output(default_model, api_plain, where):
    if where == "api":
        from llamapy.api import Llama, LlamaPromptLookupDecoding
    else:
        from llamapy import Llama
        from llamapy.llama_speculative import LlamaPromptLookupDecoding

    msgs, chat, text, gen = api_plain
    calls = []

    class Counting(LlamaPromptLookupDecoding):
        def __call__(self, input_ids, /, **kwargs):
            out = super().__call__(input_ids, **kwargs)
            calls.append(len(out))
            return out

    with Llama(default_model, n_ctx=512, n_threads=2, verbose=False,
               draft_model=Counting(num_pred_tokens=10)) as llm:
        got = llm.create_chat_completion(msgs, max_tokens=60, temperature=0)
        assert got["choices"][0]["message"] == chat["choices"][0]["message"]
        assert got["usage"] == chat["usage"]
        assert llm(f"Copy: {SENTENCE}\nCopy:", max_tokens=60, temperature=0)["choices"][0]["text"] == text
        n_tokens = llm.n_tokens
        assert n_tokens == len(llm.tokenize(f"Copy: {SENTENCE}\nCopy:".encode())) + 59  # no draft row left over
        assert [t for _, t in zip(range(40), llm.generate(llm.tokenize(SENTENCE.encode()), temp=0.0))] == gen
    assert sum(calls) > 0   # drafts were made (and the outputs equal whether they were kept or not)


def test_api_draft_with_logits_all_and_stopping(default_model):
    """Verified rows go into `scores` as evaluated ones do; a stopping criterion sees the evaluated ids only."""
    from llamapy import Llama, StoppingCriteriaList
    from llamapy.llama_speculative import LlamaPromptLookupDecoding

    prompt = f"Copy: {SENTENCE}\nCopy:"
    seen = {}

    def stopping_of(key):
        def stop(ids, logits):
            seen.setdefault(key, []).append(ids.tolist())
            return False
        return stop

    outs = []
    for key, draft in (("plain", None), ("draft", LlamaPromptLookupDecoding(num_pred_tokens=8))):
        with Llama(default_model, n_ctx=256, n_threads=2, verbose=False, logits_all=True, draft_model=draft) as llm:
            r = llm(prompt, max_tokens=30, temperature=0, stopping_criteria=StoppingCriteriaList([stopping_of(key)]))
            n = llm.n_tokens
            outs.append((r["choices"][0]["text"], n, llm.scores[:n].copy()))
    assert outs[0][0] == outs[1][0] and outs[0][1] == outs[1][1]
    np.testing.assert_array_equal(outs[0][2], outs[1][2])
    assert seen["plain"] == seen["draft"]


# -- the server ------------------------------------------------------------------------------------------------------


def test_serve_draft_model_same_text_and_timings(default_model, draft_q4_0, tmp_path):
    """`llamapy serve -md DRAFT` (a real process): the same greedy text as a server without a draft, on the
    llama.cpp and OpenAI routes, timings with draft_n / draft_n_accepted; two slots at once both served."""
    import concurrent.futures as cf

    import httpx
    from serverutil import free_port, stop, wait_for_health

    def serve(*extra):
        port = free_port()
        log = open(tmp_path / f"serve-{port}.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "llamapy", "serve", "-m", default_model, "--port", str(port),
                                 "-c", "1024", "-np", "2", "-t", "2", *extra], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        wait_for_health(proc, url, 120, "llamapy serve", log)
        return proc, url, log

    prompt = f"Copy this sentence: {SENTENCE}\nCopy:"
    chat = {"messages": [{"role": "user", "content": f"Repeat this sentence exactly: {SENTENCE}"}],
            "max_tokens": 40, "temperature": 0}
    results = []
    for extra in ((), ("-md", draft_q4_0, "--draft-max", "8", "--draft-p-min", "0.5")):
        proc, url, log = serve(*extra)
        try:
            with httpx.Client(timeout=300) as c:
                r = c.post(url + "/completion", json={"prompt": prompt, "n_predict": 48, "temperature": 0}).json()
                o = c.post(url + "/v1/chat/completions", json=chat).json()
            with cf.ThreadPoolExecutor(2) as ex, httpx.Client(timeout=300) as c:
                both = list(ex.map(lambda p, u=url: c.post(u + "/completion", json={
                    "prompt": p, "n_predict": 32, "temperature": 0}).json(), [prompt, "Once upon a time"]))
        finally:
            stop(proc)
            log.close()
        results.append((r, o, both))
    (r0, o0, b0), (r1, o1, b1) = results
    assert r1["content"] == r0["content"] and r1["tokens_predicted"] == r0["tokens_predicted"] == 48
    assert o1["choices"][0]["message"]["content"] == o0["choices"][0]["message"]["content"]
    # two slots at once: both served to their budget (slots batched together are not bitwise the one-slot
    # steps even without a draft, so their text is not compared)
    assert [x["tokens_predicted"] for x in b1] == [x["tokens_predicted"] for x in b0] == [32, 32]
    t = r1["timings"]
    assert t["draft_n"] > 0 and 0 < t["draft_n_accepted"] <= t["draft_n"]
    assert "draft_n" not in r0["timings"]
