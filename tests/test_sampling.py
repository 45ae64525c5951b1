"""The sampler chain on fixed logits: which candidates each step keeps, with their exact probabilities,
and the reference's generator (std::mt19937 + std::discrete_distribution) draw for draw."""
from __future__ import annotations

import math

import numpy as np
import pytest

from llamapy.errors import LlamapyError
from llamapy.generation.sampling import (
    MT19937,
    Candidates,
    Sampler,
    SamplerParams,
    apply_min_p,
    apply_penalties,
    apply_temp,
    apply_top_k,
    apply_top_p,
    apply_typical,
)

LOGITS = np.array([1.0, 3.0, 2.0, 0.5, 4.0, -1.0], dtype=np.float32)


def softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=np.float64) - max(x))
    return e / e.sum()


def test_mt19937_is_std_mt19937():
    # std::mt19937 gen(42); gen() x3, and std::discrete_distribution<>({.1,.2,.3,.4}) x10 from a fresh gen(42)
    r = MT19937(42)
    assert [r.next_u32() for _ in range(3)] == [1608637542, 3421126067, 4083286876]
    r = MT19937(42)
    p = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    assert "".join(str(r.discrete(p)) for _ in range(10)) == "3132202213"


def test_discrete_single_weight_draws_nothing():
    r = MT19937(5)
    assert r.discrete(np.array([1.0], dtype=np.float32)) == 0
    assert r.next_u32() == MT19937(5).next_u32()


def test_softmax_sorts_and_normalises():
    c = Candidates(LOGITS)
    c.softmax()
    assert c.id.tolist() == [4, 1, 2, 0, 3, 5]
    np.testing.assert_allclose(c.p, softmax(sorted(LOGITS, reverse=True)), rtol=1e-6)


def test_top_k():
    c = Candidates(LOGITS)
    apply_top_k(c, 2)
    assert c.id.tolist() == [4, 1] and c.sorted
    c.softmax()
    np.testing.assert_allclose(c.p, softmax([4.0, 3.0]), rtol=1e-6)
    c = Candidates(LOGITS)
    apply_top_k(c, 0)  # 0: keep all, sorted
    assert c.id.tolist() == [4, 1, 2, 0, 3, 5]


def test_top_p_keeps_the_smallest_set_reaching_p():
    p = softmax(sorted(LOGITS, reverse=True))  # 0.6364, 0.2341, 0.0861, ...
    c = Candidates(LOGITS)
    apply_top_p(c, 0.85, 1)
    assert c.id.tolist() == [4, 1]
    assert p[0] + p[1] >= 0.85 > p[0]
    c = Candidates(LOGITS)
    apply_top_p(c, 1.0, 1)
    assert len(c) == 6 and not c.sorted  # 1.0: untouched


def test_min_p():
    # keep logit >= max + ln(p): with p = 0.3, 4 + ln 0.3 = 2.796 -> tokens 4 (4.0) and 1 (3.0)
    c = Candidates(LOGITS)
    apply_min_p(c, 0.3, 1)
    assert sorted(c.id.tolist()) == [1, 4]
    c = Candidates(LOGITS)
    apply_top_k(c, 6)
    apply_min_p(c, 0.1, 1)  # sorted path: 4 + ln 0.1 = 1.697 -> 4, 1, 2
    assert c.id.tolist() == [4, 1, 2]


def test_typical():
    c = Candidates(LOGITS)
    apply_typical(c, 0.5, 0)  # min_keep 0 never cuts (as the reference's unsigned compare)
    assert len(c) == 6
    c = Candidates(LOGITS)
    apply_typical(c, 0.5, 1)
    p = softmax(sorted(LOGITS, reverse=True))
    h = -(p * np.log(p)).sum()
    order = np.argsort(np.abs(-np.log(p) - h), kind="stable")
    n = int(np.argmax(np.cumsum(p[order]) > 0.5)) + 1
    ids = np.array([4, 1, 2, 0, 3, 5])[order[:n]]
    assert c.id.tolist() == ids.tolist() and not c.sorted


def test_temperature():
    c = Candidates(LOGITS)
    apply_temp(c, 0.5)
    np.testing.assert_array_equal(c.logit, LOGITS / np.float32(0.5))
    c = Candidates(np.array([1.0, 5.0, 5.0, 2.0], dtype=np.float32))
    apply_temp(c, 0.0)  # greedy: the first maximum stays, the rest -inf
    assert c.logit[1] == 5.0 and np.isneginf(c.logit[[0, 2, 3]]).all()


def test_penalties():
    c = Candidates(np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32))
    apply_penalties(c, [0, 1, 1, 3], last_n=64, repeat=2.0, freq=0.25, present=0.5)
    # positive logits divided, negative multiplied, then count * freq + present subtracted
    np.testing.assert_array_equal(c.logit, np.array([2.0 / 2 - 0.25 - 0.5, -2.0 * 2 - 0.5 - 0.5, 1.0,
                                                     0.5 / 2 - 0.25 - 0.5], dtype=np.float32))
    c = Candidates(np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32))
    apply_penalties(c, [0, 1, 1, 3], last_n=1, repeat=2.0, freq=0.0, present=0.0)  # only the last token
    np.testing.assert_array_equal(c.logit, np.array([2.0, -2.0, 1.0, 0.25], dtype=np.float32))


def test_sampler_chain_probabilities():
    s = Sampler(SamplerParams(temp=0.5, top_k=3, top_p=1.0, min_p=0.0, seed=1), len(LOGITS))
    c = s.candidates(LOGITS)
    assert c.id.tolist() == [4, 1, 2]
    np.testing.assert_allclose(c.p, softmax(np.array([4.0, 3.0, 2.0]) / 0.5), rtol=1e-6)


def test_default_chain_on_fixed_logits():
    # defaults: top-k 40, top-p 0.95, min-p 0.05 (4 + ln .05 = 1.004: drops 0.5 and -1), temp 0.8
    s = Sampler(SamplerParams(seed=1), len(LOGITS))
    c = s.candidates(LOGITS)
    assert c.id.tolist() == [4, 1, 2]
    np.testing.assert_allclose(c.p, softmax(np.array([4.0, 3.0, 2.0]) / 0.8), rtol=1e-6)


def test_greedy_and_logit_bias():
    s = Sampler(SamplerParams(temp=0.0, seed=3), len(LOGITS))
    assert s.sample(LOGITS) == 4
    s = Sampler(SamplerParams(temp=0.0, logit_bias={4: float("-inf"), 5: 4.5}), len(LOGITS))
    assert s.sample(LOGITS) == 5
    s = Sampler(SamplerParams(temp=0.0, ignore_eos=True), len(LOGITS), eog_ids=[4])
    assert s.sample(LOGITS) == 1


def test_seed_determinism_and_logprobs():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 3
    def run(seed):
        s = Sampler(SamplerParams(seed=seed, n_probs=3), len(logits))
        return [s.sample(logits) for _ in range(30)], s.last_probs
    a, probs = run(123)
    assert run(123)[0] == a and run(124)[0] != a
    assert len(probs) == 3 and probs[0][1] >= probs[1][1] >= probs[2][1]
    assert abs(sum(p for _, p in probs)) <= 1.0 + 1e-6


def test_mirostat_v2_updates_mu():
    s = Sampler(SamplerParams(mirostat=2, mirostat_tau=5.0, mirostat_eta=0.1, temp=1.0, seed=9), len(LOGITS))
    assert s.mu == 10.0
    tok = s.sample(LOGITS)
    p = softmax(LOGITS)  # every candidate's surprise is below mu = 10: none cut
    assert s.mu == pytest.approx(10.0 - 0.1 * (-math.log2(p[tok]) - 5.0), rel=1e-6)


def test_mirostat_v1_runs_and_is_seeded():
    logits = np.random.default_rng(1).standard_normal(500).astype(np.float32) * 2
    def run():
        s = Sampler(SamplerParams(mirostat=1, seed=4), len(logits))
        return [s.sample(logits) for _ in range(20)]
    assert run() == run()


def test_bad_params():
    with pytest.raises(LlamapyError, match="--mirostat 3"):
        Sampler(SamplerParams(mirostat=3), 10)
    with pytest.raises(LlamapyError, match="5 logits, expected 10"):
        Sampler(SamplerParams(), 10).sample(np.zeros(5, np.float32))


PARAM_SETS = [
    dict(), dict(temp=0.0), dict(temp=1.3, top_k=0, top_p=0.9, min_p=0.0),
    dict(top_k=5, top_p=0.5, min_p=0.2), dict(typical_p=0.6, min_keep=1), dict(typical_p=0.6),
    dict(repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.4, repeat_last_n=8),
    dict(repeat_penalty=1.5, repeat_last_n=-1, top_k=0),
    dict(logit_bias={3: 5.0, 7: float("-inf")}), dict(mirostat=1, temp=0.9), dict(mirostat=2, mirostat_tau=3.0),
    dict(top_k=200, top_p=0.99, min_p=0.01, temp=2.0),
]


@pytest.mark.parametrize("kw", PARAM_SETS,
                         ids=[",".join(f"{k}={v}" for k, v in p.items()) or "defaults" for p in PARAM_SETS])
def test_native_chain_matches_numpy_chain(kw):
    """The C sampler (what generation uses) and the numpy one pick the same tokens, draw for draw."""
    rng = np.random.default_rng(11)
    n_vocab = 700
    history = rng.integers(0, n_vocab, 40).tolist()
    fast = Sampler(SamplerParams(seed=99, n_probs=4, **kw), n_vocab)
    slow = Sampler(SamplerParams(seed=99, n_probs=4, **kw), n_vocab, native=False)
    for step in range(25):
        logits = (rng.standard_normal(n_vocab) * rng.uniform(0.5, 4)).astype(np.float32)
        a, b = fast.sample(logits, history), slow.sample(logits, history)
        assert a == b, step
        assert [t for t, _ in fast.last_probs] == [t for t, _ in slow.last_probs]
        np.testing.assert_allclose([p for _, p in fast.last_probs], [p for _, p in slow.last_probs], rtol=1e-5)
        history.append(a)
    assert fast.mu == pytest.approx(slow.mu, rel=1e-5)
