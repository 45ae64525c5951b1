"""DRY, XTC, dynamic temperature, top-n-sigma and the chain's order: the numpy steps on crafted inputs
against the rules written out, and the C chain against the numpy one, candidate for candidate."""
from __future__ import annotations

import math

import numpy as np
import pytest

from llamapy.errors import LlamapyError
from llamapy.generation.params import SamplerParams, samplers_from_letters, samplers_from_names
from llamapy.generation.sampling import (
    MT19937,
    Candidates,
    Sampler,
    apply_dry,
    apply_temp_ext,
    apply_top_n_sigma,
    apply_xtc,
)

A, B, C, D, Y, NL = 1, 2, 3, 4, 5, 9


def dry_params(**kw) -> SamplerParams:
    return SamplerParams(**{"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, **kw})


def dry_penalties(history, breakers=(), n_vocab=12, **kw) -> dict[int, float]:
    """token -> what DRY took off its logit (all logits 0 before)."""
    c = Candidates(np.zeros(n_vocab, dtype=np.float32))
    apply_dry(c, history, dry_params(**kw), breakers)
    return {int(t): -float(v) for t, v in zip(c.id, c.logit) if v != 0}


# ---- DRY -----------------------------------------------------------------------------------------

def test_dry_penalizes_the_tokens_that_would_extend_a_repeat():
    # a b c c b c y a b c: "a b c" repeats the start (then c), "b c" repeats (then c, then y), "c" alone
    # is too short; the tokens that followed the repeats: c (after a b c, length 3) and y (after b c, 2)
    hist = [A, B, C, C, B, C, Y, A, B, C]
    pen = dry_penalties(hist)
    assert set(pen) == {C, Y}
    assert pen[C] == pytest.approx(0.8 * 1.75 ** (3 - 2), rel=1e-6)
    assert pen[Y] == pytest.approx(0.8, rel=1e-6)  # length 2 = allowed length: base ** 0
    # allowed length 3: only the repeat of length 3 counts
    assert set(dry_penalties(hist, dry_allowed_length=3)) == {C}


def test_dry_window_breakers_and_off_switches():
    hist = [A, B, C, D, A, B]
    assert dry_penalties(hist) == {C: pytest.approx(0.8)}
    # a single-token breaker just before the repeat's end limits its length (here to 1: nothing)
    assert dry_penalties([A, B, C, D, NL, B], breakers=[[NL]]) == {}
    # ... and a breaker token is never penalized itself
    assert dry_penalties([A, NL, C, A, NL], breakers=[[C]]) == {}
    assert dry_penalties([A, NL, C, D, A, NL], breakers=[[C]]) == {}
    # a two-token breaker (NL then A) counts only when both are there in that order
    assert dry_penalties([A, B, C, D, NL, A, B], breakers=[[NL, A]]) == {}
    assert dry_penalties([A, B, C, D, NL, D, A, B], breakers=[[NL, A]]) == {C: pytest.approx(0.8)}
    # the window: the first A B falls out of the last 4 tokens
    assert dry_penalties(hist, dry_penalty_last_n=4) == {}
    assert dry_penalties(hist, dry_multiplier=0.0) == {}
    assert dry_penalties(hist, dry_penalty_last_n=0) == {}
    assert dry_penalties(hist, dry_base=0.5) == {}


def test_dry_exponent_is_clamped():
    hist = [A, B, C, D] * 60 + [A, B]
    pen = dry_penalties(hist, dry_base=3.0, dry_multiplier=1.0)
    max_exp = int(np.float32(88.7228391) / np.float32(math.log(np.float32(3.0))))
    assert pen[C] == pytest.approx(float(np.float32(3.0 ** max_exp)), rel=1e-6)


# ---- XTC, dynamic temperature, top-n-sigma ---------------------------------------------------------

def test_uniform_float_is_std_uniform_real_distribution_float():
    # libstdc++: one 32-bit draw / 2^32 in float (std::mt19937(42)'s first draws: see test_sampling)
    r = MT19937(42)
    assert r.canonical_float() == float(np.float32(1608637542) / np.float32(2.0**32))
    assert r.canonical_float() == float(np.float32(3421126067) / np.float32(2.0**32))


def test_xtc_drops_the_top_choices_but_the_last_of_them():
    logits = np.log(np.array([0.05, 0.4, 0.25, 0.2, 0.1], dtype=np.float32))
    c = Candidates(logits)
    apply_xtc(c, 1.0, 0.15, 1, MT19937(3))
    # at or above 0.15: 0.4, 0.25, 0.2 -> keep 0.2 and below
    assert c.id.tolist() == [3, 4, 0]
    for p, thr in ((1.0, 0.6), (0.0, 0.15), (1.0, 0.51)):  # nobody above / off / threshold > 0.5: off
        c = Candidates(logits)
        apply_xtc(c, p, thr, 1, MT19937(3))
        assert len(c) == 5
    # min_keep: dropping would leave fewer than 4
    c = Candidates(logits)
    apply_xtc(c, 1.0, 0.15, 4, MT19937(3))
    assert len(c) == 5


def test_xtc_runs_when_its_draw_is_at_most_the_probability():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    seen = MT19937(11)
    rng = MT19937(11)
    for _ in range(20):
        u = seen.canonical_float()
        c = Candidates(logits)
        apply_xtc(c, 0.5, 0.25, 1, rng)
        assert (len(c) == 2) == (u <= np.float32(0.5))


def test_dynamic_temperature_follows_the_entropy():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], dtype=np.float32)
    for temp, delta, exp in ((0.8, 0.5, 1.0), (1.0, 0.7, 2.0), (0.3, 0.5, 0.5)):
        p = np.exp(logits - logits.max())
        p /= p.sum()
        norm = float(-(p * np.log(p)).sum() / math.log(len(p)))
        t = max(0.0, temp - delta) + 2 * delta * norm ** exp if temp - delta > 0 else (temp + delta) * norm ** exp
        c = Candidates(logits)
        apply_temp_ext(c, temp, delta, exp)
        c.softmax()
        want = np.exp(np.sort(logits)[::-1] / t - logits.max() / t)
        np.testing.assert_allclose(c.p, want / want.sum(), rtol=1e-5)
    c = Candidates(logits)
    apply_temp_ext(c, 0.8, 0.0, 1.0)  # range 0: plain temperature
    np.testing.assert_array_equal(c.logit, (logits / np.float32(0.8)).astype(np.float32))


def test_top_n_sigma_keeps_logits_within_n_deviations_of_the_top():
    logits = np.array([5.0, 4.5, 1.0, 0.0, -2.0, 3.9], dtype=np.float32)
    for n in (0.5, 1.0, 2.0):
        c = Candidates(logits)
        apply_top_n_sigma(c, n)
        keep = logits >= logits.max() - n * logits.std()
        assert sorted(c.id[c.p > 0].tolist()) == sorted(np.nonzero(keep)[0].tolist())


# ---- the order -------------------------------------------------------------------------------------

def test_sampler_names_and_letters():
    assert SamplerParams().samplers == ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
    assert samplers_from_letters("edkypmxt") == SamplerParams().samplers
    assert samplers_from_names("top-k;nucleus;temp;;dry") == ["top_k", "top_p", "temperature", "dry"]
    with pytest.raises(LlamapyError, match="use names from penalties;dry;top_k;typ_p;top_p;min_p;xtc;temperature"):
        samplers_from_names("xyz")
    with pytest.raises(LlamapyError, match="top-k"):
        samplers_from_names("top-k", aliases=False)
    with pytest.raises(LlamapyError, match="letters from edkypmxt"):
        samplers_from_letters("kq")


def test_the_order_matters():
    # temperature before top-p widens what top-p keeps; after it, top-p cuts on the sharper distribution
    logits = np.array([3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    a = Sampler(SamplerParams(temp=3.0, top_p=0.7, min_p=0, samplers=["top_p", "temperature"]), 4,
                native=False).candidates(logits)
    b = Sampler(SamplerParams(temp=3.0, top_p=0.7, min_p=0, samplers=["temperature", "top_p"]), 4,
                native=False).candidates(logits)
    assert len(a) == 2 and len(b) == 3


# ---- the C chain against the numpy one -------------------------------------------------------------

BREAKERS = [[7], [11, 12], [20, 21, 22]]
PARAM_SETS = [
    dict(dry_multiplier=0.8),
    dict(dry_multiplier=1.5, dry_base=2.0, dry_allowed_length=1, repeat_penalty=1.2),
    dict(dry_multiplier=0.8, dry_penalty_last_n=12, top_k=0),
    dict(dry_multiplier=3.0, dry_base=1.1, dry_allowed_length=0, samplers=["top_k", "dry", "min_p", "temperature"]),
    dict(xtc_probability=0.5, xtc_threshold=0.05),
    dict(xtc_probability=1.0, xtc_threshold=0.02, min_keep=3, top_k=0, min_p=0.0),
    dict(dynatemp_range=0.5),
    dict(dynatemp_range=1.2, dynatemp_exponent=2.0, temp=1.0, top_k=100),
    dict(dry_multiplier=0.8, xtc_probability=0.5, xtc_threshold=0.05, dynatemp_range=0.4),
    dict(samplers=["temperature", "xtc", "min_p", "top_p", "typ_p", "top_k"], xtc_probability=0.7, typical_p=0.9),
    dict(samplers=[], temp=1.0),
    dict(samplers=["min_p", "penalties", "top_k", "dry"], dry_multiplier=1.0, repeat_penalty=1.3, min_p=0.01),
    dict(top_n_sigma=1.0),
    dict(top_n_sigma=0.5, top_k=0, temp=1.3),
]


@pytest.mark.parametrize("kw", PARAM_SETS, ids=[",".join(f"{k}={v}" for k, v in p.items()) for p in PARAM_SETS])
def test_native_chain_matches_numpy_chain(kw):
    """Same tokens draw for draw, and the same final candidates with the same probabilities."""
    rng = np.random.default_rng(5)
    n_vocab = 300
    # a history with repeats (so DRY has something to find) and the breakers in it
    phrase = rng.integers(0, 40, 6).tolist()
    history = (phrase + [7] + rng.integers(0, 40, 5).tolist() + phrase[:4] + [11, 12] + phrase + [20, 21, 22]
               + phrase[:3])
    params = dict(seed=1234, n_probs=n_vocab, **kw)
    fast = Sampler(SamplerParams(**params), n_vocab, dry_breakers=BREAKERS)
    slow = Sampler(SamplerParams(**params), n_vocab, native=False, dry_breakers=BREAKERS)
    for step in range(30):
        logits = (rng.standard_normal(n_vocab) * rng.uniform(0.5, 4)).astype(np.float32)
        if step % 3 == 0:  # a continuation of the phrase is likely: DRY's penalty decides
            logits[phrase[3]] += 6
        a, b = fast.sample(logits, history), slow.sample(logits, history)
        assert a == b, step
        assert [t for t, _ in fast.last_probs] == [t for t, _ in slow.last_probs], step
        np.testing.assert_allclose([p for _, p in fast.last_probs], [p for _, p in slow.last_probs], rtol=1e-6)
        history.append(a)


def test_dry_changes_the_choice_in_both_chains():
    """On logits where the repeat's next token is the favourite, DRY with a large multiplier moves it off."""
    history = [1, 2, 3, 4, 1, 2, 3]
    logits = np.zeros(10, dtype=np.float32)
    logits[4] = 5.0
    logits[5] = 4.0
    for native in (True, False):
        s = Sampler(SamplerParams(temp=0, dry_multiplier=3.0, dry_penalty_last_n=-1), 10, native=native)
        assert s.sample(logits, history) == 5
        s = Sampler(SamplerParams(temp=0), 10, native=native)
        assert s.sample(logits, history) == 4


def test_bad_sampler_settings():
    with pytest.raises(LlamapyError, match="dry-penalty-last-n"):
        Sampler(SamplerParams(dry_penalty_last_n=-2), 10)
    with pytest.raises(LlamapyError, match="unknown sampler 'nope'"):
        Sampler(SamplerParams(samplers=["top_k", "nope"]), 10)
    with pytest.raises(LlamapyError, match="out of the vocabulary"):
        Sampler(SamplerParams(dry_multiplier=1.0), 10, dry_breakers=[[3, 99]])


def test_history_window_covers_penalties_and_dry():
    assert SamplerParams().history_window(512) == 64
    assert SamplerParams(dry_multiplier=0.8).history_window(512) == 512
    assert SamplerParams(dry_multiplier=0.8, dry_penalty_last_n=100).history_window(512) == 100
    assert SamplerParams(repeat_last_n=0, samplers=["top_k"]).history_window(512) == 0
    assert SamplerParams(dry_multiplier=0.8, top_n_sigma=1.0).history_window(512) == 0


def test_cli_rejects_unknown_samplers_in_one_line(capsys):
    from llamapy.cli import main

    for args, allowed in ((["--samplers", "xyz"], "penalties;dry;top_k;typ_p;top_p;min_p;xtc;temperature"),
                          (["--sampling-seq", "kq"], "edkypmxt")):
        with pytest.raises(SystemExit) as e:
            main(["run", "-p", "hi", "-n", "1", *args])
        assert e.value.code != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and allowed in err and "Traceback" not in err


def test_dry_breakers_from_the_vocabulary(default_model):
    """A token holding a breaker breaks alone; a token ending in a breaker's start breaks when the rest
    of the breaker's tokens follow it."""
    from llamapy.generation.sampling import dry_breaker_sequences
    from llamapy.tokenizer.core import Tokenizer

    tok = Tokenizer.from_gguf(default_model)
    seqs = dry_breaker_sequences(tok, ["\n", "ing the"])
    singles = {s[0] for s in seqs if len(s) == 1}
    texts = [tok.token_to_piece(i, True) for i in range(tok.n_vocab)]
    assert singles == {i for i, w in enumerate(texts) if b"\n" in w or b"ing the" in w}
    ing = tok.encode("ing", add_special=False)
    assert len(ing) == 1
    assert [ing[0], *tok.encode(" the", add_special=False)] in seqs
    for s in seqs:
        if len(s) > 1:  # the head's text ends with the start of "ing the", the tail spells the rest
            head = texts[s[0]]
            rest = b"".join(texts[t] for t in s[1:])
            assert any(head.endswith(b"ing the"[:k]) and b"ing the"[k:] == rest for k in range(1, 8)), s
