"""Saved logits and KL divergence (`perplexity --kl-divergence-base FILE` / `--kl-divergence`): the reference's
file format written and read back, corrupt files refused in one line, the statistics on known inputs, and
the command on the default model. With LLAMAPY_REF_PERPLEXITY=/path/to/llama-perplexity, the two tools'
files are compared byte for byte and each tool reads the other's."""
from __future__ import annotations

import math
import os
import struct
import subprocess

import numpy as np
import pytest
from cliutil import cli
from conftest import shared_path

from llamapy.errors import LlamapyError
from llamapy.kl_divergence import KLDStats, LogitsWriter, decode_rows, encode_rows, read_saved, row_width, scored

REF = os.environ.get("LLAMAPY_REF_PERPLEXITY")


def _logits(rng, rows, n_vocab, spread=4.0):
    return (rng.standard_normal((rows, n_vocab)) * spread).astype(np.float32)


def _log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_rows_keep_log_probabilities_to_16_bits():
    rng = np.random.default_rng(0)
    x = _logits(rng, 5, 301)
    x[1] = 0.0               # all equal: stored as zeros with scale 0, log p = min_lp = -log(n)
    x[2, :10] = -40.0        # far below the top: stored as 0, read as the least kept log-prob
    stored = encode_rows(x)
    assert stored.shape == (5, row_width(301)) and row_width(301) == 306
    lp = decode_rows(stored, 301)
    want = _log_softmax(x)
    kept = want > want.max(axis=1, keepdims=True) - 16
    assert np.abs(lp - want)[kept].max() < 16 / 65535   # half a step of (max - min) / 65535, and f32 rounding
    assert np.allclose(lp[1], -math.log(301), atol=1e-5)
    assert (stored[1, 4:] == 0).all() and (stored[2, 4:14] == 0).all()
    assert (stored[:, 4 + 301:] == 0).all()            # the padding to an even count


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    n_ctx, n_vocab, n_chunk = 16, 51, 3
    tokens = rng.integers(0, n_vocab, n_ctx * n_chunk + 5).tolist()
    chunks = [_logits(rng, scored(n_ctx), n_vocab) for _ in range(n_chunk)]
    path = tmp_path / "base.kld"
    with LogitsWriter(str(path), n_ctx, n_vocab, n_chunk, tokens) as w:
        for c in chunks:
            w.add(c)
    data = path.read_bytes()
    assert data[:8] == b"_logits_" and struct.unpack("<Iii", data[8:20]) == (n_ctx, n_vocab, n_chunk)
    assert len(data) == 20 + 4 * n_ctx * n_chunk + n_chunk * scored(n_ctx) * row_width(n_vocab) * 2
    saved = read_saved(str(path))
    assert (saved.n_ctx, saved.n_vocab, saved.n_chunk) == (n_ctx, n_vocab, n_chunk)
    assert saved.tokens.tolist() == tokens[:n_ctx * n_chunk]
    for i, c in enumerate(chunks):
        assert (saved.chunk(i) == encode_rows(c)).all()


def test_writer_leaves_no_file_when_a_run_fails(tmp_path):
    path = tmp_path / "base.kld"
    with pytest.raises(RuntimeError):
        with LogitsWriter(str(path), 8, 10, 2, list(range(10)) * 2) as w:
            w.add(np.zeros((scored(8), 10), np.float32))
            raise RuntimeError("interrupted")
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(LlamapyError, match="1 of 2 chunks written"):
        with LogitsWriter(str(path), 8, 10, 2, list(range(10)) * 2) as w:
            w.add(np.zeros((scored(8), 10), np.float32))
    assert not list(tmp_path.iterdir())


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "good.kld"
    with LogitsWriter(str(path), 8, 10, 2, rng.integers(0, 10, 16).tolist()) as w:
        for _ in range(2):
            w.add(_logits(rng, scored(8), 10))
    return path.read_bytes()


def _corrupt(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


@pytest.mark.parametrize("change,message", [
    (lambda d: b"", "does not look like a file containing log-probabilities"),
    (lambda d: b"_logitz_" + d[8:], "does not look like a file containing log-probabilities"),
    (lambda d: d[:14], "failed reading n_ctx, n_vocab, n_chunk"),
    (lambda d: d[:-1], "cut short"),
    (lambda d: d + b"\0\0", "has trailing bytes"),
    (lambda d: _corrupt(d, 8, struct.pack("<I", 2)), "n_ctx 2 out of range"),
    (lambda d: _corrupt(d, 8, struct.pack("<I", 0xFFFFFFFF)), "out of range"),
    (lambda d: _corrupt(d, 12, struct.pack("<i", -5)), "n_vocab -5 out of range"),
    (lambda d: _corrupt(d, 16, struct.pack("<i", 0)), "n_chunk 0 out of range"),
    (lambda d: _corrupt(d, 16, struct.pack("<i", 1 << 20)), "cut short"),
    (lambda d: _corrupt(d, 20, struct.pack("<i", 10)), "a token id outside the vocabulary of 10"),
    (lambda d: _corrupt(d, 20, struct.pack("<i", -1)), "a token id outside the vocabulary"),
])
def test_corrupt_files_are_refused_in_one_line(tmp_path, good, change, message):
    path = tmp_path / "bad.kld"
    path.write_bytes(change(good))
    with pytest.raises(LlamapyError, match=message) as e:
        read_saved(str(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("head,message", [
    (struct.pack("<ff", float("nan"), -3.0), "not a row of log-probabilities"),
    (struct.pack("<ff", -1e-4, -3.0), "not a row of log-probabilities"),
    (struct.pack("<ff", 1e-4, 5.0), "not a row of log-probabilities"),
    (struct.pack("<ff", 1e-4, float("-inf")), "not a row of log-probabilities"),
])
def test_corrupt_rows_are_refused(tmp_path, good, head, message):
    path = tmp_path / "bad.kld"
    rows_at = 20 + 4 * 16 + scored(8) * row_width(10) * 2 + 2 * row_width(10)  # chunk 1, row 1
    path.write_bytes(_corrupt(good, rows_at, head))
    saved = read_saved(str(path))
    saved.chunk(0)
    with pytest.raises(LlamapyError, match=f"chunk 1, row 1: .*{message}"):
        saved.chunk(1)


def test_statistics_against_a_direct_computation():
    rng = np.random.default_rng(3)
    base = _logits(rng, 150, 40)
    q = base + rng.standard_normal(base.shape).astype(np.float32) * 0.3
    targets = rng.integers(0, 40, 150)
    st = KLDStats()
    st.add(q, encode_rows(base), targets)
    p_base, lq = np.exp(_log_softmax(base)), _log_softmax(q)
    kld = (p_base * (np.log(p_base) - lq)).sum(axis=1)
    assert st.count == 150
    assert abs(st.kld()[0] - kld.mean()) < 1e-3 * kld.mean() + 1e-4
    p_diff = np.exp(lq[np.arange(150), targets]) - p_base[np.arange(150), targets]
    assert abs(st.max_p_diff - np.abs(p_diff).max()) < 1e-3
    assert st.n_same_top == int((q.argmax(1) == base.argmax(1)).sum())
    assert abs(math.log(st.ppl()[0]) - (-lq[np.arange(150), targets]).mean()) < 1e-5
    text = st.summary()
    assert "Mean    KLD:" in text and "Same top p:" in text and text.count("99.0%   KLD") == 1
    same = KLDStats()
    same.add(base, encode_rows(base), targets)
    assert abs(same.kld()[0]) < 1e-5 and same.same_top()[0] == 1.0 and same.max_p_diff < 1e-3
    assert KLDStats().summary() == ""  # too few values, as the reference prints no summary


def test_perplexity_saves_and_scores_against_itself(default_model, capsys, tmp_path):
    text = shared_path("testdata", "text", "python-license.txt")
    base = tmp_path / "base.kld"
    code, out, err = cli(capsys, "perplexity", "-f", str(text), "-c", "64", "--chunks", "4",
                         "--kl-divergence-base", str(base))
    assert code == 0, err
    assert "saving all logits to" in err and "Final estimate: PPL = " in out
    saved = read_saved(str(base))
    assert (saved.n_ctx, saved.n_chunk, saved.n_vocab) == (64, 4, 49152)
    code, out, err = cli(capsys, "perplexity", "--kl-divergence", "--kl-divergence-base", str(base), "-b", "128")
    assert code == 0, err
    assert out.count("chunk             PPL") == 4
    vals = {line.split(":")[0].strip(): line.split(":")[1] for line in out.splitlines() if ":" in line}
    assert abs(float(vals["Mean    KLD"].split("±")[0])) < 1e-5
    assert vals["Same top p"].strip().startswith("100.000")


def test_kl_divergence_refusals(default_model, capsys, tmp_path):
    code, _, err = cli(capsys, "perplexity", "--kl-divergence")
    assert code == 1 and "--kl-divergence-base FILE" in err
    code, _, err = cli(capsys, "perplexity", "--kl-divergence", "--kl-divergence-base", str(tmp_path / "none"))
    assert code == 1 and "failed to open" in err and "Traceback" not in err
    small = tmp_path / "small.kld"
    with LogitsWriter(str(small), 8, 10, 1, list(range(8))) as w:
        w.add(np.zeros((scored(8), 10), np.float32))
    code, _, err = cli(capsys, "perplexity", "--kl-divergence", "--kl-divergence-base", str(small))
    assert code == 1 and "inconsistent vocabulary (10 in the file vs 49152 in the model)" in err


@pytest.mark.skipif(not REF, reason="set LLAMAPY_REF_PERPLEXITY to the reference llama-perplexity")
def test_each_tool_reads_the_others_file(default_model, capsys, tmp_path):
    """On the default model (the same AVX2 kernels) the two base files are byte-identical."""
    from llamapy.native import kernels_active

    text = shared_path("testdata", "text", "python-license.txt")
    ours, theirs = tmp_path / "ours.kld", tmp_path / "theirs.kld"
    code, _, err = cli(capsys, "perplexity", "-f", str(text), "-c", "128", "--chunks", "3",
                       "--kl-divergence-base", str(ours))
    assert code == 0, err
    r = subprocess.run([REF, "-m", default_model, "-f", str(text), "-c", "128", "--chunks", "3", "-t", "2",
                        "--kl-divergence-base", str(theirs)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    if kernels_active() == "avx2+fma+f16c":
        assert ours.read_bytes() == theirs.read_bytes()
    code, out, err = cli(capsys, "perplexity", "--kl-divergence", "--kl-divergence-base", str(theirs))
    assert code == 0, err
    kld = float(out.split("Mean    KLD:")[1].split("±")[0])
    assert abs(kld) < 1e-5 and "Same top p: 100.000" in out
    r = subprocess.run([REF, "-m", default_model, "--kl-divergence", "--kl-divergence-base", str(ours), "-c", "128",
                        "-t", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    kld = float(r.stdout.split("Mean    KLD:")[1].split("±")[0]) if "Mean    KLD:" in r.stdout else \
        float(r.stderr.split("Mean    KLD:")[1].split("±")[0])
    assert abs(kld) < 1e-5
