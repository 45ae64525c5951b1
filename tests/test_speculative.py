"""Speculative decoding (generation/speculative.py): greedy output identical to plain greedy with a draft
model and with prompt lookup, the accept/reject rule keeping the target's distribution (chi-square on a
tiny model), a draft with another vocabulary or --draft-max 0 refused in one line, the server's timings."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from test_engine_models import write_random_llama

from llamapy.engine.engine import Engine
from llamapy.errors import LlamapyError
from llamapy.generation.generate import steps
from llamapy.generation.params import SamplerParams
from llamapy.generation.sampling import Sampler
from llamapy.generation.sequence import Sequence, Timings
from llamapy.generation.speculative import DraftParams, LookupDrafter, ModelDrafter, check_vocab

PROMPT = "Here is a list of the planets of the solar system, each with one line about it:\n1. Mercury"


def _generate(llm, ids, n, drafter=None, params=None, seed=0):
    params = params or SamplerParams(temp=0.0)
    params.seed = seed
    t = Timings()
    seq = Sequence(Sampler(params, llm.n_vocab), llm.n_ctx, n_predict=n, ignore_eos=True, timings=t)
    out = [s.token for s in steps(llm, seq, ids, reuse_prefix=False, drafter=drafter)]
    return out, t


@pytest.fixture(scope="module")
def target(default_model):
    with Engine(default_model, n_ctx=512, n_threads=2) as llm:
        yield llm


@pytest.fixture(scope="module")
def plain(target):
    ids = target.tokenizer.encode(PROMPT, add_special=True, parse_special=True)
    out, _ = _generate(target, ids, 200)
    assert len(out) == 200
    return ids, out


def test_exact_rows_match_one_token_steps(target, plain):
    """A verify batch gives each row bitwise the logits of a one-token step (the default batch does not)."""
    ids, out = plain
    target.kv_clear()
    target.eval(ids)
    single = np.array([target.eval([t]) for t in out[:12]])
    target.kv_clear()
    target.eval(ids)
    rows = target.eval_verify(out[:12])
    np.testing.assert_array_equal(rows, single)


def test_exact_rows_f16_target(default_model, tmp_path_factory):
    """The same on an F16 target (its batch rows use the F16 several-rows kernel): bitwise one-token steps."""
    from llamapy import quantize as Q

    path = tmp_path_factory.mktemp("f16") / "target-f16.gguf"
    Q.quantize_file(default_model, path, Q.F.MOSTLY_F16, 2, allow_requantize=True)
    with Engine(str(path), n_ctx=256, n_threads=2) as llm:
        ids = llm.tokenizer.encode(PROMPT, add_special=True, parse_special=True)
        toks = [int(t) for t in llm.tokenizer.encode(" Venus, Earth, Mars, Jupiter", add_special=False)]
        llm.eval(ids)
        single = np.array([llm.eval([t]) for t in toks])
        llm.kv_clear()
        llm.eval(ids)
        np.testing.assert_array_equal(llm.eval_verify(toks), single)


def test_lookup_greedy_identical(target, plain):
    ids, out = plain
    got, t = _generate(target, ids, 200, LookupDrafter(DraftParams()))
    assert got == out
    assert t.draft_n > 0 and 0 < t.draft_n_accepted < t.draft_n  # drafts were both kept and refused
    assert target.n_past(0) == len(ids) + 199  # the refused rows are gone from the cache


def test_draft_model_greedy_identical(target, plain, default_model, tmp_path_factory):
    from llamapy import quantize as Q

    ids, out = plain
    path = tmp_path_factory.mktemp("draft") / "draft-q4_0.gguf"
    Q.quantize_file(default_model, path, Q.F.MOSTLY_Q4_0, 2, allow_requantize=True)
    with Engine(str(path), n_ctx=512, n_threads=2) as d:
        check_vocab(target, d)
        got, t = _generate(target, ids, 200, ModelDrafter(d, DraftParams(n_max=8, p_min=0.0)))
    assert got == out
    assert t.draft_n > 0 and 0 < t.draft_n_accepted < t.draft_n


def _chi2_crit(k: int, z: float = 3.09) -> float:
    """The chi-square quantile at p = 0.001 for k degrees of freedom (Wilson-Hilferty)."""
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


class _FixedDrafter:
    """Always drafts the same tokens: some draws keep them, most refuse them."""

    def __init__(self, toks):
        self.toks = list(toks)
        self.params = DraftParams(n_max=len(self.toks))

    def draft(self, context, n):
        return self.toks[:n]


def test_accept_reject_keeps_target_distribution(tmp_path):
    """Two tokens sampled with a draft verified in one step: the pairs follow the target's p(t1) p(t2 | t1)
    within a chi-square bound (p = 0.001). (The random model's logits span ~40, so a temperature of 10
    spreads the draws over many tokens.)"""
    path = write_random_llama(tmp_path / "tiny.gguf", n_vocab=16, seed=3)
    temp = 10.0
    params = SamplerParams(temp=temp, top_k=0, top_p=1.0, min_p=0.0)
    with Engine(path, n_ctx=32, n_threads=1) as llm:
        prompt = [1, 5, 7]
        p1 = _softmax(llm.eval(prompt) / temp)
        joint = np.zeros((16, 16))
        for a in range(16):
            llm.kv_clear()
            llm.eval(prompt)
            joint[a] = p1[a] * _softmax(llm.eval([a]) / temp)
        t1 = int(np.argmax(p1))
        drafter = _FixedDrafter([int(np.argmax(joint[t1]))])
        n = 4000
        counts = np.zeros((16, 16))
        accepted = drafted = 0
        for i in range(n):
            llm.kv_clear()
            out, t = _generate(llm, prompt, 2, drafter, SamplerParams(**vars(params)), seed=i + 1)
            counts[out[0], out[1]] += 1
            accepted += t.draft_n_accepted
            drafted += t.draft_n
    assert drafted == n and 0 < accepted < n
    exp = joint.ravel() * n
    obs = counts.ravel()
    big = exp >= 5
    e = np.append(exp[big], exp[~big].sum())
    o = np.append(obs[big], obs[~big].sum())
    chi2 = float(((o - e) ** 2 / e).sum())
    assert chi2 < _chi2_crit(len(e) - 1), (chi2, len(e))
    # the same test sees a wrong rule: keeping every draft token skews the pairs far past the bound
    skew = counts.copy()
    moved = skew[t1].sum() - skew[t1, drafter.toks[0]]
    skew[t1] = 0
    skew[t1, drafter.toks[0]] = moved + counts[t1, drafter.toks[0]]
    o2 = np.append(skew.ravel()[big], skew.ravel()[~big].sum())
    assert float(((o2 - e) ** 2 / e).sum()) > _chi2_crit(len(e) - 1)


def _softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def test_other_vocabulary_refused(tmp_path, target):
    path = write_random_llama(tmp_path / "tiny.gguf")
    with Engine(path, n_ctx=32, n_threads=1) as d, pytest.raises(LlamapyError) as e:
        check_vocab(target, d)
    assert "\n" not in str(e.value) and "vocab" in str(e.value)


def _cli(*args):
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "llamapy", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_other_vocabulary_one_line(tmp_path, default_model):
    path = write_random_llama(tmp_path / "tiny.gguf")
    r = _cli("run", "-m", default_model, "-md", path, "-p", "hi", "-n", "4", "-c", "64")
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "vocab" in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("extra", [("--lookup",), ()])
def test_cli_draft_max_zero_one_line(extra):
    r = _cli("run", "-p", "hi", "-n", "4", "--draft-max", "0", *extra)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["error: --draft-max 0: a draft needs at least 1 token"]


def test_cli_lookup_same_output_and_summary(default_model):
    base = ("run", "-m", default_model, "-p", PROMPT, "-n", "60", "--temp", "0", "-c", "256")
    a = _cli(*base)
    b = _cli(*base, "--lookup")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    assert "tokens drafted" in b.stderr and "tokens drafted" not in a.stderr


def test_server_timings_report_drafts(default_model):
    from starlette.testclient import TestClient

    from llamapy.server import build_state
    from llamapy.server.app import create_app

    spec = dict(model_draft=None, lookup=True, draft=DraftParams(), ctx_size_draft=None, threads_draft=None)
    state = build_state(default_model, n_ctx=512, n_threads=2, speculative=spec)
    body = {"prompt": PROMPT, "n_predict": 60, "temperature": 0}
    with TestClient(create_app(state)) as c:
        r = c.post("/completion", json=body).json()
    t = r["timings"]
    assert t["draft_n"] > 0 and 0 <= t["draft_n_accepted"] <= t["draft_n"]
    plain = build_state(default_model, n_ctx=512, n_threads=2)
    with TestClient(create_app(plain)) as c:
        r2 = c.post("/completion", json=body).json()
    assert r2["content"] == r["content"] and "draft_n" not in r2["timings"]
