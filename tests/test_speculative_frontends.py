"""Speculative decoding in every front end of the generation core: the interactive session (`chat`, `run -i`),
the Python API (`draft_model=`, LlamaPromptLookupDecoding) and the server with a draft model: greedy text
identical to the text without a draft, with drafts made and accepted."""
from __future__ import annotations

import io
import os
import subprocess
import sys

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
