"""The generation core (llamapy.generation.sequence) on a scripted byte-level model, and the one option table.

The model's vocabulary is the 256 bytes plus an end-of-text token (256); its logits favour whatever the
test scripts, so every rule is checked with exact tokens: prefix reuse, stop strings held back and cut,
end of generation and ignore_eos, the token budget, context shift (kept positions, what is dropped) and
its absence, and a constraint's mask, accept and end.
"""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from llamapy.generation.generate import generate
from llamapy.generation.params import SamplerParams
from llamapy.generation.sequence import Sequence

EOS = 256
N_VOCAB = 257


class Greedy:
    """The highest logit; records what it was given."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def sample(self, logits, history):
        self.seen.append(np.array(logits))
        return int(np.argmax(logits))


class ScriptLM:
    """Predicts the bytes of `script` in turn (then EOS), whatever it is fed; keeps a token cache."""

    def __init__(self, script: bytes, n_ctx: int = 64):
        self.script, self.n_ctx, self.n_vocab = list(script), n_ctx, N_VOCAB
        self.cache: list[int] = []
        self.i = 0
        self.shifts: list[tuple[int, int]] = []
        self.evals: list[list[int]] = []

    def tokens(self, seq_id=0):
        return list(self.cache)

    def kv_truncate(self, seq_id, n):
        del self.cache[n:]

    def context_shift(self, seq_id, n_keep, n_discard):
        self.shifts.append((n_keep, n_discard))
        del self.cache[n_keep:n_keep + n_discard]

    def eval(self, tokens, seq_id=0):
        assert len(self.cache) + len(tokens) <= self.n_ctx, "context overflow"
        self.cache += list(tokens)
        self.evals.append(list(tokens))
        x = np.zeros(N_VOCAB, dtype=np.float32)
        x[self.script[self.i] if self.i < len(self.script) else EOS] = 10.0
        x[ord("a")] = max(x[ord("a")], 1.0)  # the runner-up when something is banned
        self.i += 1
        return x


def run_core(llm: ScriptLM, prompt: bytes, **kw) -> tuple[Sequence, list, str]:
    """Drive a Sequence by hand (as the server does); returns it, its steps and the text shown."""
    seq = Sequence(Greedy(), llm.n_ctx, is_eog=lambda t: t == EOS, piece=lambda t: bytes([t]) if t < 256 else b"",
                   **kw)
    todo = seq.start(list(prompt), llm.tokens())
    llm.kv_truncate(0, seq.n_past)
    logits = llm.eval(todo)
    seq.evaluated(len(todo))
    steps, shown = [], ""
    while True:
        step = seq.feed(logits)
        steps.append(step)
        shown += step.text
        if step.stop:
            return seq, steps, shown + seq.flush()
        if step.shift:
            llm.context_shift(0, *step.shift)
        logits = llm.eval([step.token])
        seq.evaluated(1)


def test_prefix_reuse_evaluates_only_what_is_new():
    llm = ScriptLM(b"xy")
    llm.cache = list(b"hello world")
    seq = Sequence(Greedy(), 64)
    assert seq.start(list(b"hello there"), llm.tokens()) == list(b"there")
    assert (seq.n_past, seq.n_reused, seq.n_prompt) == (6, 6, 11)
    # the whole prompt cached: its last token is evaluated again, for the logits
    assert seq.start(list(b"hello"), list(b"hello world")) == list(b"o")
    assert seq.start(list(b"hello"), ()) == list(b"hello")


def test_stop_string_is_held_back_then_cut_and_utf8_stays_whole():
    seq, steps, shown = run_core(ScriptLM("é and ST".encode() + b"OP more"), b">", stop=["STOP"])
    assert shown == "é and " and seq.content == "é and "
    assert [s.text for s in steps[:3]] == ["", "é", " "]  # the character is shown once it is whole
    assert steps[-1].stop == "word" and steps[-1].stop_word == "STOP" and not steps[-1].truncated
    assert "".join(s.text for s in steps[-4:]) == ""  # "S", "ST", "STO" were held back, then cut
    assert seq.n_tokens_kept() == len("é and ".encode())
    # held text that never becomes a stop string comes out at the end
    seq, steps, shown = run_core(ScriptLM(b"abST"), b">", stop=["STOP"])
    assert steps[-1].stop == "eog" and shown == "abST"


def test_end_of_generation_ignore_eos_and_the_budget():
    seq, steps, shown = run_core(ScriptLM(b"hi"), b">")
    assert shown == "hi" and steps[-1].stop == "eog" and steps[-1].token == EOS and steps[-1].text == ""
    assert seq.generated == [ord("h"), ord("i"), EOS] and seq.timings.stop_reason == "eog"
    seq, steps, shown = run_core(ScriptLM(b"hi"), b">", ignore_eos=True, n_predict=5)
    assert [s.token for s in steps] == [ord("h"), ord("i"), EOS, EOS, EOS]
    assert steps[-1].stop == "limit" and not steps[-1].truncated
    seq, steps, shown = run_core(ScriptLM(b"hello"), b">", n_predict=3)
    assert shown == "hel" and steps[-1].stop == "limit"


def test_context_shift_keeps_n_keep_and_drops_half_the_rest():
    llm = ScriptLM(b"0123456789" * 4, n_ctx=16)
    seq, steps, shown = run_core(llm, b"KEEPprompt", n_keep=4, n_predict=30)
    assert shown == ("0123456789" * 3)[:30] and steps[-1].stop == "limit"
    # the context fills at 15 positions (one left for the next token): keep 4, drop (15 - 4) // 2 = 5
    assert llm.shifts[0] == (4, 5) and all(k == 4 for k, _ in llm.shifts)
    assert [s.shift for s in steps if s.shift] == llm.shifts
    assert llm.cache[:4] == list(b"KEEP") and seq.n_past == len(llm.cache) and seq.timings.n_shifts == len(llm.shifts)


@pytest.mark.parametrize("kw", [{"ctx_shift": False, "n_predict": 30}, {"n_predict": -2}])
def test_without_shifting_a_full_context_ends_the_generation(kw):
    llm = ScriptLM(b"0123456789" * 4, n_ctx=16)
    seq, steps, shown = run_core(llm, b"KEEPprompt", n_keep=4, **kw)
    assert shown == "012345" and steps[-1].stop == "context" and steps[-1].truncated
    assert not llm.shifts and len(llm.cache) == 15


def test_cap_unlimited_ends_an_endless_generation_at_the_context_size():
    llm = ScriptLM(b"0123456789" * 4, n_ctx=16)
    seq, steps, shown = run_core(llm, b"KEEPprompt", cap_unlimited=True, ignore_eos=True)
    assert shown == "012345" and steps[-1].stop == "limit" and steps[-1].truncated


class OnlyDigitsThenDone:
    """A fake constraint: digits only, done after three of them."""

    def __init__(self):
        self.accepted: list[int] = []

    def mask(self):
        m = np.zeros(N_VOCAB, dtype=bool)
        m[ord("0"):ord("9") + 1] = True
        return m

    def accept(self, token: int) -> None:
        assert ord("0") <= token <= ord("9"), "the mask must have been applied"
        self.accepted.append(token)

    def is_done(self) -> bool:
        return len(self.accepted) == 3


def test_a_constraint_masks_the_logits_sees_each_token_and_ends_the_generation():
    c = OnlyDigitsThenDone()
    llm = ScriptLM(b"x7y8z9w")  # the model prefers letters; the constraint allows digits only
    seq, steps, shown = run_core(llm, b">", constraint=c)
    assert c.accepted == [ord(ch) for ch in shown] and len(shown) == 3 and shown.isdigit()
    assert steps[-1].stop == "grammar"
    assert np.isneginf(seq.sampler.seen[0][ord("x")]) and seq.sampler.seen[0][ord("0")] == 0.0
    # mask() returning None allows everything
    c2 = OnlyDigitsThenDone()
    c2.mask = lambda: None
    c2.accept = c2.accepted.append
    seq, steps, shown = run_core(ScriptLM(b"abc"), b">", constraint=c2)
    assert shown == "abc" and steps[-1].stop == "grammar"


def test_the_pull_driver_yields_tokens_and_shifts_the_engine():
    llm = ScriptLM(b"0123456789" * 4, n_ctx=16)
    shifts = []
    toks = list(generate(llm, list(b"KEEPprompt"), SamplerParams(temp=0), n_predict=20, n_keep=4, eog_ids=[EOS],
                         sampler=Greedy(), on_context_shift=lambda k, d: shifts.append((k, d))))
    assert bytes(toks) == (b"0123456789" * 2)
    assert shifts == llm.shifts and shifts[0] == (4, 5)
    llm = ScriptLM(b"ok")
    assert bytes(generate(llm, list(b">"), SamplerParams(temp=0), eog_ids=[EOS], sampler=Greedy())) == b"ok"


# --- the one option table ------------------------------------------------------------------------------

SAMPLING_ARGS = ["--temp", "0.5", "-s", "3", "--top_k", "7", "--mirostat_lr", "0.2", "--mirostat-ent", "4",
                 "--logit-bias", "15043+1", "-l", "2-inf", "--repeat-last-n", "16", "--ignore-eos"]
EXPECTED = SamplerParams(temp=0.5, seed=3, top_k=7, mirostat_eta=0.2, mirostat_tau=4.0,
                         logit_bias={15043: 1.0, 2: float("-inf")}, repeat_last_n=16, ignore_eos=True)


def test_run_chat_and_serve_take_the_same_sampling_options(monkeypatch):
    import llamapy.chat.interactive_start as interactive
    import llamapy.run
    import llamapy.server
    from llamapy.cli import app

    got = {}
    monkeypatch.setattr(llamapy.run, "run", lambda **kw: got.setdefault("run", kw))
    monkeypatch.setattr(interactive, "start", lambda **kw: got.setdefault("chat", kw) and 0)
    monkeypatch.setattr(llamapy.server, "serve", lambda **kw: got.setdefault("serve", kw))
    runner = CliRunner()
    for argv in (["run", "-p", "x"], ["chat", "-mli", "--verbose", "--no-context-shift"], ["serve"]):
        r = runner.invoke(app, argv + SAMPLING_ARGS)
        assert r.exit_code == 0, r.output
    assert got["run"]["sampling"] == got["chat"]["sampling"] == got["serve"]["sampling"] == EXPECTED
    assert got["chat"]["multiline_input"] is True and got["chat"]["ctx_shift"] is False
    assert got["run"]["ctx_shift"] is True and got["serve"]["ctx_shift"] is True
    # no option given: the dataclass's defaults, written once
    got.clear()
    assert runner.invoke(app, ["serve", "--no-context-shift"]).exit_code == 0
    assert got["serve"]["sampling"] == SamplerParams() and got["serve"]["ctx_shift"] is False
    r = runner.invoke(app, ["chat", "--logit-bias", "oops"])
    assert r.exit_code != 0 and "TOKEN_ID(+/-)BIAS" in str(r.exception)


def test_serve_sampling_options_are_the_defaults_of_requests():
    from types import SimpleNamespace

    from llamapy.server.common import sampler_settings
    from llamapy.server.schemas import CompletionRequest, OllamaOptions

    state = SimpleNamespace(sampling=SamplerParams(temp=0.7, top_k=5, seed=9), backend=SimpleNamespace(n_ctx=128))
    p = sampler_settings(state, CompletionRequest(prompt="x"))
    assert (p.temp, p.top_k, p.seed, p.top_p) == (0.7, 5, 9, SamplerParams().top_p)
    p = sampler_settings(state, CompletionRequest(prompt="x", temperature=0.2, repeat_last_n=-1))
    assert (p.temp, p.top_k, p.repeat_last_n) == (0.2, 5, 128)
    p = sampler_settings(state, OllamaOptions(top_k=3, mirostat_eta=0.3))
    assert (p.temp, p.top_k, p.mirostat_eta) == (0.7, 3, 0.3)
    assert state.sampling.temp == 0.7 and state.sampling.top_k == 5  # the defaults are not changed
